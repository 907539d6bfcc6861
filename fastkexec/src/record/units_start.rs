//! Units starting: systemd's own timestamps of this boot (the ones
//! `systemd-analyze blame` / `time` read over D-Bus, gathered by
//! `host::systemd`) placed on the report's TSC timeline, and the moment the
//! default target was reached, where the report's total ends when PID 1 is
//! systemd.
//!
//! systemd stamps CLOCK_MONOTONIC of this boot in µs; this kernel's
//! CLOCK_MONOTONIC → TSC fit (taken when `report` runs) turns them into TSC.

use std::fmt;

use serde::Serialize;

pub use crate::host::systemd::{Pid1, SystemdTimes, UnitTimes};
use crate::record::clock::Fit;

/// One unit's start on the timeline (offsets from the report's origin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitStart {
    pub unit: String,
    pub start_ns: u64,
    pub duration_ns: u64,
}

/// The unit level of the new boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitsStart {
    pub default_target: String,
    /// Offset of "default target reached" (`None`: not reached yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_target_ns: Option<u64>,
    /// Offset of systemd's own start (`UserspaceTimestampMonotonic`).
    pub userspace_ns: u64,
    /// Units that started in this boot, up to the default target.
    pub count: usize,
    /// Units whose start began after the default target was reached (not listed).
    pub after_target: usize,
    /// The slowest (at most `--top`), longest first.
    pub slowest: Vec<UnitStart>,
}

/// Maps this boot's CLOCK_MONOTONIC µs onto TSC ticks.
pub fn tsc_of_us(now_fit: &Fit, us: u64) -> i128 {
    now_fit.tsc_at(us.saturating_mul(1000))
}

/// The level: `offset` maps TSC ticks to ns from the report's origin.
pub fn build(
    t: &SystemdTimes,
    now_fit: &Fit,
    offset: impl Fn(i128) -> u64,
    top: usize,
) -> UnitsStart {
    let at = |us: u64| offset(tsc_of_us(now_fit, us));
    // Target 0 is "not reached": nothing is left out then.
    let end = (t.default_target_us > 0).then_some(t.default_target_us);
    let mut after_target = 0;
    let mut started: Vec<UnitStart> = Vec::new();
    for u in &t.units {
        let Some(us) = start_us(u) else {
            continue;
        };
        // A unit whose start began once the default target was reached (a unit ordered after
        // it) lies past the timeline's end: counted, not listed.
        if end.is_some_and(|e| u.inactive_exit_us > e) {
            after_target += 1;
            continue;
        }
        started.push(UnitStart {
            unit: u.unit.clone(),
            start_ns: at(u.inactive_exit_us),
            duration_ns: us.saturating_mul(1000),
        });
    }
    let count = started.len();
    // Ties by name, so two reports of one boot list the same units.
    started.sort_by(|a, b| {
        b.duration_ns
            .cmp(&a.duration_ns)
            .then_with(|| a.unit.cmp(&b.unit))
    });
    started.truncate(top);
    UnitsStart {
        default_target: t.default_target.clone(),
        default_target_ns: (t.default_target_us > 0).then(|| at(t.default_target_us)),
        userspace_ns: at(t.userspace_us),
        count,
        after_target,
        slowest: started,
    }
}

/// A unit's start as `systemd-analyze blame` times it (µs): InactiveExit → ActiveEnter, or →
/// InactiveEnter for one that went inactive without being active (a finished oneshot); `None`
/// for a unit that did not start in this boot.
pub fn start_us(u: &UnitTimes) -> Option<u64> {
    if u.inactive_exit_us == 0 {
        return None;
    }
    if u.active_enter_us >= u.inactive_exit_us {
        Some(u.active_enter_us - u.inactive_exit_us)
    } else if u.inactive_enter_us >= u.inactive_exit_us {
        Some(u.inactive_enter_us - u.inactive_exit_us)
    } else {
        None
    }
}

impl fmt::Display for UnitsStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "units starting ({} units{}; systemd's InactiveExit → ActiveEnter, as systemd-analyze \
             blame; systemd started at {:.3} ms{}):",
            self.count,
            if self.after_target > 0 {
                format!(", {} more after the default target", self.after_target)
            } else {
                String::new()
            },
            self.userspace_ns as f64 / 1e6,
            match self.default_target_ns {
                Some(d) => format!(
                    ", {} reached at {:.3} ms",
                    self.default_target,
                    d as f64 / 1e6
                ),
                None => format!(", {} not reached yet", self.default_target),
            }
        )?;
        writeln!(f, "  slowest units to start:")?;
        for u in &self.slowest {
            writeln!(
                f,
                "    {:>10.3} ms  {}  (from {:.3} ms)",
                u.duration_ns as f64 / 1e6,
                u.unit,
                u.start_ns as f64 / 1e6
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::clock::Fit;

    pub(crate) fn fit() -> Fit {
        // 2 GHz, CLOCK_MONOTONIC 0 at TSC 1_000_000.
        Fit::from_rate(1_000_000, 0, 2e9).unwrap()
    }

    pub(crate) fn times() -> SystemdTimes {
        SystemdTimes {
            userspace_us: 1_000_000,
            finish_us: 4_000_000,
            default_target: "multi-user.target".into(),
            default_target_us: 3_900_000,
            units: vec![
                UnitTimes {
                    unit: "slow-start.service".into(),
                    inactive_exit_us: 1_800_000,
                    active_enter_us: 3_850_000,
                    inactive_enter_us: 0,
                },
                UnitTimes {
                    unit: "fast.service".into(),
                    inactive_exit_us: 1_800_000,
                    active_enter_us: 1_810_000,
                    inactive_enter_us: 0,
                },
                // A oneshot that went inactive again: timed to its InactiveEnter.
                UnitTimes {
                    unit: "oneshot.service".into(),
                    inactive_exit_us: 2_000_000,
                    active_enter_us: 0,
                    inactive_enter_us: 2_300_000,
                },
                // Ordered after the default target: past the end.
                UnitTimes {
                    unit: "after.service".into(),
                    inactive_exit_us: 3_950_000,
                    active_enter_us: 9_950_000,
                    inactive_enter_us: 0,
                },
                // Never started in this boot.
                UnitTimes {
                    unit: "unused.service".into(),
                    inactive_exit_us: 0,
                    active_enter_us: 0,
                    inactive_enter_us: 0,
                },
            ],
        }
    }

    #[test]
    fn monotonic_us_lands_on_the_tsc() {
        assert_eq!(tsc_of_us(&fit(), 0), 1_000_000);
        assert_eq!(tsc_of_us(&fit(), 1), 1_002_000);
    }

    #[test]
    fn the_slow_starter_comes_first_and_the_target_is_placed() {
        // Origin at TSC 0: offset in ns = ticks / 2.
        let u = build(&times(), &fit(), |t| (t / 2) as u64, 5);
        assert_eq!((u.count, u.after_target), (3, 1));
        assert_eq!(u.slowest[0].unit, "slow-start.service");
        // blame's rule for a oneshot that is inactive again: InactiveExit → InactiveEnter.
        assert_eq!(u.slowest[1].unit, "oneshot.service");
        assert_eq!(u.slowest[1].duration_ns, 300_000_000);
        assert!(u.slowest.iter().all(|s| s.unit != "after.service"));
        assert!(u.to_string().contains("1 more after the default target"));
        assert_eq!(u.slowest[0].duration_ns, 2_050_000_000);
        assert_eq!(u.slowest[0].start_ns, 500_000 + 1_800_000_000);
        assert_eq!(u.default_target_ns, Some(500_000 + 3_900_000_000));
        assert!(u.to_string().contains("multi-user.target reached at"));
    }

    /// systemd's real answers (tests/fixtures/systemd/): `manager`/`unit NAME` then busctl's
    /// `{"type":"t","data":N}`, two lines each, in the order the module documents.
    fn lab_fixture() -> SystemdTimes {
        let text = include_str!("../../tests/fixtures/systemd/slow-units-6.12.busctl");
        let mut manager = Vec::new();
        let mut units: Vec<(String, Vec<u64>)> = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (who, json) = line.split_at(line.find('{').unwrap());
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            let n = v["data"].as_u64().unwrap();
            match who.trim().strip_prefix("unit ") {
                None => manager.push(n),
                Some(u) => match units.iter_mut().find(|(name, _)| name == u) {
                    Some((_, vals)) => vals.push(n),
                    None => units.push((u.to_string(), vec![n])),
                },
            }
        }
        SystemdTimes {
            userspace_us: manager[0],
            finish_us: manager[1],
            default_target: "graphical.target".into(),
            default_target_us: units
                .iter()
                .find(|(u, _)| u == "graphical.target")
                .unwrap()
                .1[1],
            units: units
                .into_iter()
                .map(|(unit, v)| UnitTimes {
                    unit,
                    inactive_exit_us: v[0],
                    active_enter_us: v[1],
                    inactive_enter_us: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn the_lab_systems_own_answers_place_the_slow_starter_and_the_target() {
        let t = lab_fixture();
        let u = build(&t, &fit(), |t| (t / 2) as u64, 5);
        // The 2 s ExecStartPre= unit, stretched by TCG on a loaded host, as systemd saw it
        // (the report of that boot listed the same 9738.370 ms).
        assert_eq!(u.slowest[0].unit, "fklab-slow-start.service");
        assert_eq!(u.slowest[0].duration_ns, 9_738_370_000);
        // A Type=simple service is active the moment it leaves inactive: zero, listed last.
        assert_eq!(u.slowest.last().unwrap().duration_ns, 0);
        assert_eq!(u.default_target_ns, Some(500_000 + 108_143_379_000));
        // The boot was not finished (the lab's driver unit still ran): finish 0.
        assert_eq!(t.finish_us, 0);
    }

    #[test]
    fn a_target_not_reached_is_said() {
        let mut t = times();
        t.default_target_us = 0;
        let u = build(&t, &fit(), |t| (t / 2) as u64, 1);
        assert_eq!(u.default_target_ns, None);
        assert_eq!(u.slowest.len(), 1);
        assert!(u.to_string().contains("not reached yet"));
    }
}
