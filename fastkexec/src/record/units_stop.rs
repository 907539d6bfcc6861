//! Units stopping: the old kernel's `unit_stop` / `unit_gone` stamps (see
//! `trace::units`) as one interval per systemd unit, the slowest ones, and the
//! chain of intervals that held the shutdown longest.
//!
//! Units stop in parallel, so their durations do not add up to anything: the
//! chain is found by walking back from `reboot(2)` — the interval that ended
//! last before it, then the one that ended last before that interval began,
//! and so on. Each link of the chain was still running when the next could
//! (as far as the stamps tell) have started; the gaps between links are time
//! no unit explains (systemd-shutdown's unmounting, for one).

use std::collections::HashMap;
use std::fmt;

use fastkexec_common::{state, Event, EventKind};
use serde::Serialize;

/// One unit's stop, offsets from the report's origin (negative: before it,
/// e.g. in follow mode, whose timeline starts at `reboot(2)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitStop {
    /// The cgroup's name: `foo.service`, `session-1.scope`, ...
    pub unit: String,
    /// PID 1's first signal to one of its tasks.
    pub start_ns: i64,
    /// Its cgroup's removal; `None` if it was still there at `reboot(2)`
    /// (systemd-shutdown's kill spree leaves cgroups behind).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_ns: Option<i64>,
    /// `end_ns - start_ns`, or up to `reboot(2)` when it has no end.
    pub duration_ns: u64,
}

/// The unit level of the shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitsStop {
    /// Units whose stop was stamped.
    pub count: usize,
    /// The slowest (at most `--top`), longest first.
    pub slowest: Vec<UnitStop>,
    /// The chain that held the shutdown longest, in time order.
    pub chain: Vec<UnitStop>,
    /// Sum of the chain's durations (its links do not overlap).
    pub chain_ns: u64,
    /// The unit table filled up: units after this name were not stamped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap_hit_at: Option<String>,
}

/// A unit's interval on the old kernel's CLOCK_MONOTONIC (the events' clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub unit: String,
    pub start: u64,
    pub end: Option<u64>,
}

/// Pairs `unit_stop` with `unit_gone` by cgroup address (an address can be
/// reused by a later cgroup: each stop pairs with the next removal after it).
/// The name a cgroup is listed under: its kernfs name, or `/` for the root cgroup, whose name
/// is empty (PID 1 signals tasks there too: kernel threads' neighbours, systemd-shutdown's
/// kill spree).
pub fn cgroup_name(b: &[u8]) -> String {
    if b.is_empty() {
        ROOT_CGROUP.to_string()
    } else {
        String::from_utf8_lossy(b).into_owned()
    }
}

/// How the root cgroup is named.
pub const ROOT_CGROUP: &str = "/";

pub fn intervals(events: &[Event]) -> Vec<Interval> {
    let mut evs: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.kind(), EventKind::UNIT_STOP | EventKind::UNIT_GONE))
        .collect();
    evs.sort_by_key(|e| e.ts_ns);
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut out: Vec<Interval> = Vec::new();
    for e in evs {
        if e.kind() == EventKind::UNIT_STOP {
            open.insert(e.arg, out.len());
            out.push(Interval {
                unit: cgroup_name(e.name_bytes()),
                start: e.ts_ns,
                end: None,
            });
        } else if let Some(i) = open.remove(&e.arg) {
            if let Some(iv) = out.get_mut(i) {
                iv.end = Some(e.ts_ns);
            }
        }
    }
    out
}

/// Indices into `ivs` of the chain that held the shutdown longest, in time
/// order, ending before `until` (the `reboot(2)` stamp).
pub fn chain(ivs: &[Interval], until: u64) -> Vec<usize> {
    let mut out = Vec::new();
    let mut t = until;
    loop {
        let next = ivs
            .iter()
            .enumerate()
            .filter_map(|(i, iv)| iv.end.filter(|&e| e <= t && iv.start < e).map(|e| (e, i)))
            // Ties: the longer interval explains more.
            .max_by_key(|&(e, i)| (e, std::cmp::Reverse(ivs.get(i).map_or(0, |iv| iv.start))));
        let Some((_, i)) = next else { break };
        let Some(iv) = ivs.get(i) else { break };
        out.push(i);
        t = iv.start;
    }
    out.reverse();
    out
}

/// The unit level from a record's events. `offset` maps an event's clock to
/// the report's origin; `reboot` is the `reboot(2)` stamp (events' clock).
pub fn build(
    events: &[Event],
    probe_state: u64,
    reboot: Option<u64>,
    offset: impl Fn(u64) -> i64,
    top: usize,
) -> Option<UnitsStop> {
    let ivs = intervals(events);
    let cap_hit_at = events
        .iter()
        .find(|e| e.kind() == EventKind::UNIT_CAP)
        .map(|e| String::from_utf8_lossy(e.name_bytes()).into_owned())
        .or_else(|| (probe_state & state::UNITS_FULL != 0).then(|| "?".into()));
    if ivs.is_empty() && cap_hit_at.is_none() {
        return None;
    }
    let until = reboot.unwrap_or_else(|| ivs.iter().filter_map(|iv| iv.end).max().unwrap_or(0));
    let stop = |iv: &Interval| UnitStop {
        unit: iv.unit.clone(),
        start_ns: offset(iv.start),
        end_ns: iv.end.map(&offset),
        duration_ns: iv.end.unwrap_or(until).saturating_sub(iv.start),
    };
    let links = chain(&ivs, until);
    let chain: Vec<UnitStop> = links.iter().filter_map(|&i| ivs.get(i)).map(stop).collect();
    let chain_ns = chain.iter().map(|u| u.duration_ns).sum();
    let mut slowest: Vec<UnitStop> = ivs.iter().map(stop).collect();
    slowest.sort_by_key(|u| std::cmp::Reverse(u.duration_ns));
    slowest.truncate(top);
    Some(UnitsStop {
        count: ivs.len(),
        slowest,
        chain,
        chain_ns,
        cap_hit_at,
    })
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

impl fmt::Display for UnitsStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "units stopping ({} units; PID 1's first signal → cgroup removed):",
            self.count
        )?;
        writeln!(f, "  slowest units to stop:")?;
        for u in &self.slowest {
            writeln!(
                f,
                "    {:>10.3} ms  {}  (from {:.3} ms{})",
                u.duration_ns as f64 / 1e6,
                u.unit,
                ms(u.start_ns),
                if u.end_ns.is_none() {
                    ", cgroup still there at reboot(2)"
                } else {
                    ""
                }
            )?;
        }
        writeln!(
            f,
            "  chain that held the shutdown longest ({:.3} ms in {} units, walking back from \
             reboot(2)):",
            self.chain_ns as f64 / 1e6,
            self.chain.len()
        )?;
        for u in &self.chain {
            writeln!(
                f,
                "    {:>10.3} → {:>10.3} ms  {}",
                ms(u.start_ns),
                ms(u.end_ns.unwrap_or(u.start_ns)),
                u.unit
            )?;
        }
        if let Some(at) = &self.cap_hit_at {
            writeln!(
                f,
                "  the unit table was full at {at}: units after it were not stamped (at most {})",
                fastkexec_common::UNIT_MAX
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, ts: u64, cg: u64, name: &str) -> Event {
        let mut e = Event::ZERO;
        e.kind = kind.0;
        e.ts_ns = ts;
        e.arg = cg;
        e.name[..name.len()].copy_from_slice(name.as_bytes());
        e
    }

    /// The shape of a systemd shutdown: three services stop in parallel
    /// (one slow), then a mount-like unit ordered after them, then reboot(2).
    fn shutdown() -> Vec<Event> {
        vec![
            ev(EventKind::UNIT_STOP, 1_000, 0xa, "fast.service"),
            ev(EventKind::UNIT_STOP, 1_100, 0xb, "slow-stop.service"),
            ev(EventKind::UNIT_STOP, 1_200, 0xc, "mid.service"),
            ev(EventKind::UNIT_GONE, 2_000, 0xa, "fast.service"),
            ev(EventKind::UNIT_GONE, 5_000, 0xc, "mid.service"),
            ev(EventKind::UNIT_GONE, 1_501_100, 0xb, "slow-stop.service"),
            ev(EventKind::UNIT_STOP, 1_502_000, 0xd, "late.service"),
            ev(EventKind::UNIT_GONE, 1_600_000, 0xd, "late.service"),
            // systemd-shutdown's kill spree: never removed.
            ev(EventKind::UNIT_STOP, 1_700_000, 0xe, "session-1.scope"),
            ev(EventKind::REBOOT_ENTER, 1_800_000, 1, "systemd-shutdow"),
        ]
    }

    #[test]
    fn stops_pair_with_their_removals() {
        let ivs = intervals(&shutdown());
        assert_eq!(ivs.len(), 5);
        let slow = ivs.iter().find(|i| i.unit == "slow-stop.service").unwrap();
        assert_eq!((slow.start, slow.end), (1_100, Some(1_501_100)));
        let scope = ivs.iter().find(|i| i.unit == "session-1.scope").unwrap();
        assert_eq!(scope.end, None);
    }

    #[test]
    fn a_reused_cgroup_address_pairs_each_stop_with_its_own_removal() {
        let evs = vec![
            ev(EventKind::UNIT_STOP, 10, 0xa, "one.service"),
            ev(EventKind::UNIT_GONE, 20, 0xa, "one.service"),
            ev(EventKind::UNIT_STOP, 30, 0xa, "two.service"),
            ev(EventKind::UNIT_GONE, 70, 0xa, "two.service"),
        ];
        let ivs = intervals(&evs);
        assert_eq!(ivs.len(), 2);
        assert_eq!(
            (ivs[1].unit.as_str(), ivs[1].start, ivs[1].end),
            ("two.service", 30, Some(70))
        );
    }

    #[test]
    fn the_slowest_unit_comes_first_and_the_chain_runs_through_it() {
        let evs = shutdown();
        let u = build(&evs, 0, Some(1_800_000), |t| t as i64 - 1_000, 3).unwrap();
        assert_eq!(u.count, 5);
        // The scope has no end: it counts up to reboot(2) but is no chain link.
        assert_eq!(u.slowest[0].unit, "slow-stop.service");
        assert_eq!(u.slowest[0].duration_ns, 1_500_000);
        assert_eq!(u.slowest[0].start_ns, 100);
        assert_eq!(u.slowest.len(), 3);
        let names: Vec<&str> = u.chain.iter().map(|c| c.unit.as_str()).collect();
        assert_eq!(names, ["slow-stop.service", "late.service"]);
        assert_eq!(u.chain_ns, 1_500_000 + 98_000);
        assert_eq!(u.cap_hit_at, None);
    }

    #[test]
    fn parallel_units_are_not_summed() {
        // Ten units of 1 ms each, all at once: the chain is one of them.
        let mut evs = Vec::new();
        for i in 0..10u64 {
            evs.push(ev(EventKind::UNIT_STOP, 100 + i, i + 1, "par.service"));
            evs.push(ev(
                EventKind::UNIT_GONE,
                1_000_100 + i,
                i + 1,
                "par.service",
            ));
        }
        let u = build(&evs, 0, Some(2_000_000), |t| t as i64, 10).unwrap();
        assert_eq!(u.chain.len(), 1);
        assert_eq!(u.chain_ns, 1_000_000);
        assert_eq!(u.chain[0].start_ns, 109);
    }

    #[test]
    fn a_full_table_is_said() {
        let mut evs = shutdown();
        evs.push(ev(EventKind::UNIT_CAP, 1_650_000, 0xf, "overflow.scope"));
        let u = build(&evs, state::UNITS_FULL, Some(1_800_000), |t| t as i64, 5).unwrap();
        assert_eq!(u.cap_hit_at.as_deref(), Some("overflow.scope"));
        assert!(u
            .to_string()
            .contains("unit table was full at overflow.scope"));
    }

    #[test]
    fn no_unit_events_no_level() {
        let evs = vec![ev(EventKind::REBOOT_ENTER, 5, 1, "kexec")];
        assert_eq!(build(&evs, 0, Some(5), |t| t as i64, 5), None);
    }

    #[test]
    fn the_root_cgroup_is_named_slash() {
        assert_eq!(cgroup_name(b""), ROOT_CGROUP);
        assert_eq!(cgroup_name(b"init.scope"), "init.scope");
        let iv = intervals(&[ev(EventKind::UNIT_STOP, 5, 1, "")]);
        assert_eq!(iv[0].unit, "/");
    }
}
