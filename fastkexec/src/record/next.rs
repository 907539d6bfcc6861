//! "Where to look next": the few largest single contributors across every
//! level of the report (a unit stopping or starting, a device, a reboot
//! notifier, an initcall of the new kernel, the loader's own phases), each with its share of the blackout.
//!
//! Only measured durations of this reboot are listed. Units overlap each other
//! (and a stopping unit lies inside "userspace shutdown"), so the shares are
//! not meant to add up: each says how much of the blackout that one item
//! spans.

use std::fmt;

use serde::Serialize;

use crate::record::report::Report;

/// Phases the loader itself causes, and what removes or shrinks them. A record measures only
/// the mode it ran, so the figure for the other mode is the lab's, said as such (README,
/// "Staged against uncompressed, with the tracer on"), never presented as this machine's.
const LOADER_PHASES: [(&str, &str); 3] = [
    (
        "relocation",
        "`--mode staged` copies the image into place at load, before the reboot: measured in \
         fastkexec's lab at 0.048 ms machine_kexec → purgatory against 8.6–23 ms uncompressed \
         (QEMU instruction clock, Debian 6.1/6.12/7.x), not on this machine",
    ),
    (
        "trampoline",
        "the staged trampoline's check of the staged image (~0.045 ms in fastkexec's lab, QEMU \
         instruction clock); an uncompressed load has none but copies the whole image at exec",
    ),
    (
        "purgatory",
        "the purgatory's checksum of the segments, there only with `load --verify`",
    ),
];

/// One contributor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contributor {
    /// `unit_stop`, `unit_start`, `device`, `notifier`, `initcall` or `phase`.
    pub level: &'static str,
    pub name: String,
    pub duration_ns: u64,
    /// Of the report's total.
    pub share: f64,
    /// For loader phases: what removes or shrinks it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<&'static str>,
}

/// The `n` largest contributors of a report, largest first.
pub fn contributors(rep: &Report, n: usize) -> Vec<Contributor> {
    let mut all: Vec<(&'static str, String, u64, Option<&'static str>)> = Vec::new();
    if let Some(u) = &rep.units_stop {
        // Only the part on the timeline counts: in follow mode the timeline starts at
        // reboot(2), after most units stopped.
        all.extend(u.slowest.iter().map(|s| {
            let end = s.start_ns.saturating_add_unsigned(s.duration_ns);
            let on = u64::try_from(end.saturating_sub(s.start_ns.max(0))).unwrap_or(0);
            ("unit_stop", s.unit.clone(), on, None)
        }));
    }
    if let Some(u) = &rep.units_start {
        all.extend(
            u.slowest
                .iter()
                .map(|s| ("unit_start", s.unit.clone(), s.duration_ns, None)),
        );
    }
    all.extend(
        rep.devices
            .iter()
            .map(|d| ("device", d.device.clone(), d.duration_ns, None)),
    );
    all.extend(
        rep.notifiers
            .iter()
            .map(|d| ("notifier", d.symbol.clone(), d.duration_ns, None)),
    );
    all.extend(
        rep.initcalls
            .top
            .iter()
            .map(|c| ("initcall", c.func.clone(), c.duration_ns, None)),
    );
    for p in &rep.phases {
        if let Some((_, why)) = LOADER_PHASES.iter().find(|(id, _)| *id == p.name) {
            all.push(("phase", p.name.clone(), p.duration_ns, Some(*why)));
        }
    }
    all.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.1.cmp(&b.1)));
    all.into_iter()
        .filter(|c| c.2 > 0)
        .take(n)
        .map(|(level, name, duration_ns, remedy)| Contributor {
            level,
            name,
            duration_ns,
            share: if rep.total_ns > 0 {
                duration_ns as f64 / rep.total_ns as f64
            } else {
                0.0
            },
            remedy,
        })
        .collect()
}

/// The text report's closing section.
pub struct WhereNext<'a>(pub &'a [Contributor]);

impl fmt::Display for WhereNext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "where to look next (largest single items; they may overlap, shares do not add up):"
        )?;
        for c in self.0 {
            let level = match c.level {
                "unit_stop" => "unit stop",
                "unit_start" => "unit start",
                l => l,
            };
            write!(
                f,
                "  {:>10.3} ms {:>5.1}%  {level} {}",
                c.duration_ns as f64 / 1e6,
                c.share * 100.0,
                c.name
            )?;
            if let Some(r) = c.remedy {
                write!(f, " — {r}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::report::build;
    use crate::record::report::tests::{events, good_record, inputs};

    #[test]
    fn the_largest_items_of_every_level_come_first_with_their_share() {
        let rep = build(&inputs(Ok(good_record(&events()))));
        let next = contributors(&rep, 5);
        assert_eq!(next.len(), 5);
        for w in next.windows(2) {
            assert!(w[0].duration_ns >= w[1].duration_ns, "{w:?}");
        }
        // The relocation (mono 12.1 ms → the purgatory at 13 ms) is a loader phase: it says
        // what to try, and whose figure that is.
        let reloc = next.iter().find(|c| c.name == "relocation").unwrap();
        assert_eq!(reloc.level, "phase");
        assert!(reloc.remedy.is_some());
        let dev = next.iter().find(|c| c.level == "device").unwrap();
        let share = dev.duration_ns as f64 / rep.total_ns as f64;
        assert!((dev.share - share).abs() < 1e-12);
        let text = WhereNext(&next).to_string();
        assert!(text.contains("--mode staged"), "{text}");
        assert!(text.contains("not on this machine"), "{text}");
    }

    #[test]
    fn a_unit_counts_only_on_the_timeline() {
        use crate::record::units_stop::{UnitStop, UnitsStop};
        let mut rep = build(&inputs(Ok(good_record(&events()))));
        let unit = |name: &str, start_ns: i64, duration_ns: u64| UnitStop {
            unit: name.into(),
            start_ns,
            end_ns: Some(start_ns + duration_ns as i64),
            duration_ns,
        };
        // Follow mode: the timeline starts at reboot(2), after these began.
        rep.units_stop = Some(UnitsStop {
            count: 2,
            slowest: vec![
                unit("before.service", -900_000_000, 800_000_000),
                unit("across.service", -100_000_000, 400_000_000),
            ],
            chain: Vec::new(),
            chain_ns: 0,
            cap_hit_at: None,
        });
        let next = contributors(&rep, 10);
        assert!(next.iter().all(|c| c.name != "before.service"));
        let across = next.iter().find(|c| c.name == "across.service").unwrap();
        assert_eq!(across.duration_ns, 300_000_000);
    }

    #[test]
    fn nothing_measured_nothing_listed() {
        let rep = build(&inputs(Err(crate::record::handoff::RecordError::Missing(
            "test".into(),
        ))));
        assert!(contributors(&rep, 5).iter().all(|c| c.level == "phase"));
        assert_eq!(WhereNext(&[]).to_string(), "");
    }
}
