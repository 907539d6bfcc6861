//! From a reported reboot to the histograms: what `fastkexec report` folds into the state
//! directory that `fastkexec export` and `serve` read.
//!
//! One sample per phase per boot, under the phase's machine name ([`crate::record::phases::PhaseDef::id`]);
//! the loader mode is the one the record carries ([`crate::record::handoff::Record::load_mode`]).

use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::metrics::histogram::{
    self, Boot, Fold, Phase, State, UnitLevel, UnitSample, MAX_UNIT_HISTOGRAMS,
};
use crate::record::report::Report;
use crate::{Error, Result};

/// The `mode` of a boot whose record did not say how its kernel was loaded.
pub const UNKNOWN_MODE: &str = "unknown";

/// The boot `rep` describes, for [`histogram::fold_boot`]: `boot_id` is the new kernel's
/// `/proc/sys/kernel/random/boot_id`, `report_unix_ns` the wall-clock time the report was
/// made (the reboot request lies `spans.to_report_ns` before it). A report without a usable
/// record has nothing to fold: only the new kernel's own phases, no reboot.
pub fn boot_from_report(rep: &Report, boot_id: &str, report_unix_ns: u64) -> Result<Boot> {
    if !rep.has_record() {
        return Err(Error::InvalidBoot {
            boot_id: boot_id.to_string(),
            problem: format!(
                "the report has no usable trace record ({}): there is no reboot to fold",
                rep.record.status
            ),
        });
    }
    // The request was this long before the report ran (past the end mark, if one was used).
    let since_request = rep.spans.to_report_ns.unwrap_or(rep.total_ns);
    // The timeline may name a phase more than once (gaps between probes are each
    // `unattributed`); a histogram takes one sample per phase per boot.
    let mut phases: Vec<Phase> = Vec::new();
    for p in &rep.phases {
        match phases.iter_mut().find(|q| q.name == p.name) {
            Some(q) => q.duration_ns = q.duration_ns.saturating_add(p.duration_ns),
            None => phases.push(Phase::new(p.name.clone(), p.duration_ns)),
        }
    }
    Ok(Boot {
        boot_id: boot_id.to_string(),
        phases,
        total_ns: rep.total_ns,
        reboot_unix_ns: report_unix_ns.saturating_sub(since_request),
        mode: rep
            .record
            .mode
            .map_or_else(|| UNKNOWN_MODE.to_string(), |m| m.to_string()),
        units: Vec::new(),
    })
}

/// The `n` slowest units of each level of `rep` (as far as it lists them: `report --top`), for
/// per-unit histograms; `n` is capped at [`MAX_UNIT_HISTOGRAMS`].
pub fn unit_samples(rep: &Report, n: usize) -> Vec<UnitSample> {
    let n = n.min(MAX_UNIT_HISTOGRAMS);
    let stop = rep.units_stop.iter().flat_map(|u| &u.slowest).take(n);
    let start = rep.units_start.iter().flat_map(|u| &u.slowest).take(n);
    stop.map(|u| UnitSample {
        level: UnitLevel::Stop,
        unit: u.unit.clone(),
        duration_ns: u.duration_ns,
    })
    .chain(start.map(|u| UnitSample {
        level: UnitLevel::Start,
        unit: u.unit.clone(),
        duration_ns: u.duration_ns,
    }))
    .collect()
}

/// Folds the reboot `rep` describes into the histograms in `dir`, once per boot id (this
/// boot's, read under `root`), with per-unit histograms for its `unit_histograms` slowest units
/// of each level (0: none). Returns what happened and the state after it.
pub fn fold_report(
    rep: &Report,
    root: &Path,
    dir: &Path,
    unit_histograms: usize,
) -> Result<(Fold, State)> {
    let path = root.join("proc/sys/kernel/random/boot_id");
    let boot_id = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut boot = boot_from_report(rep, boot_id.trim(), now)?;
    boot.units = unit_samples(rep, unit_histograms);
    histogram::fold_boot(dir, &boot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::export::{render, Format};
    use crate::record::handoff::tests::{header, nodes, pages, with_trampoline};
    use crate::record::handoff::{parse, HeaderInfo};
    use crate::record::report::tests::{events, inputs, tsc};
    use crate::record::report::{build, Report};
    use fastkexec_common::flags;

    const BOOT: &str = "11111111-2222-3333-4444-555555555555";

    /// The report of a staged reboot whose record says so: the lab-like 6.1 timeline of the
    /// report tests (request at mono 5 ms, init mark at mono 335 ms), with the trampoline at
    /// mono 12.4 .. 12.9 ms and the purgatory at 13 .. 13.5 ms.
    fn staged_report(mode_bits: u32) -> Report {
        let h = HeaderInfo {
            flags: header(2).flags | mode_bits,
            ..header(2)
        };
        let p = pages(&h, &events(), Some((tsc(13_000_000), tsc(13_500_000))));
        let p = with_trampoline(p, tsc(12_400_000), tsc(12_900_000));
        build(&inputs(Ok(parse(&nodes(&p)).unwrap())))
    }

    /// `name{labels} value` lines of Prometheus text.
    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn a_staged_record_exports_mode_staged_and_one_sample_per_phase() {
        let rep = staged_report(flags::LOAD_STAGED);
        assert!(rep.has_record(), "{:?}", rep.record);
        // Report at unix 1_800_000_000 s: 410 ms after the request (the report ran at mono
        // 415 ms, the request was at mono 5 ms).
        let boot = boot_from_report(&rep, BOOT, 1_800_000_000_000_000_000).unwrap();
        assert_eq!(boot.mode, "staged");
        assert_eq!(boot.reboot_unix_ns, 1_800_000_000_000_000_000 - 410_000_000);
        assert_eq!(boot.total_ns, 330_000_000);
        // Hand-checked from the fixture's stamps (the report tests' 6.1 timeline).
        let expect: &[(&str, u64)] = &[
            ("userspace_shutdown", 1_000_000),
            ("reboot_syscall", 100_000),
            ("reboot_notifiers", 900_000),
            ("device_shutdown", 3_000_000),
            // device_shutdown return → cpu migration, cpu migration return → machine_shutdown,
            // its return → machine_kexec: 10 µs + 980 µs + 100 µs, one sample.
            ("unattributed", 1_090_000),
            ("cpu_migration", 10_000),
            ("machine_shutdown", 1_000_000),
            ("relocation", 300_000),
            ("trampoline", 600_000),
            ("purgatory", 500_000),
            ("kernel_early_boot", 1_500_000),
            ("kernel_boot", 300_000_000),
            ("user_space", 20_000_000),
        ];
        let got: Vec<(&str, u64)> = boot
            .phases
            .iter()
            .map(|p| (p.name.as_str(), p.duration_ns))
            .collect();
        assert_eq!(got, expect);
        assert_eq!(expect.iter().map(|(_, d)| d).sum::<u64>(), boot.total_ns);

        let mut st = State::new();
        assert_eq!(st.fold(&boot).unwrap(), Fold::Folded);
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let text = render(format, &st).unwrap();
            assert_eq!(
                sample(&text, "fastkexec_last_reboot_info{mode=\"staged\"}"),
                Some("1"),
                "{text}"
            );
            assert!(!text.contains("uncompressed"), "{text}");
            assert_eq!(
                sample(
                    &text,
                    "fastkexec_last_reboot_phase_seconds{phase=\"trampoline\"}"
                ),
                Some("0.0006")
            );
            assert_eq!(
                sample(
                    &text,
                    "fastkexec_phase_duration_seconds_count{phase=\"kernel_early_boot\"}"
                ),
                Some("1")
            );
            assert_eq!(
                sample(
                    &text,
                    "fastkexec_phase_duration_seconds_count{phase=\"unattributed\"}"
                ),
                Some("1")
            );
        }
    }

    #[test]
    fn the_mode_comes_from_the_record_whatever_it_says() {
        let mode = |bits| {
            boot_from_report(&staged_report(bits), BOOT, 1)
                .unwrap()
                .mode
        };
        assert_eq!(mode(flags::LOAD_STAGED), "staged");
        assert_eq!(mode(flags::LOAD_UNCOMPRESSED), "uncompressed");
        // An older tracer's record: its trampoline stamps say staged.
        assert_eq!(mode(flags::LOAD_UNKNOWN), "staged");
        assert_eq!(mode(flags::LOAD_MASK), UNKNOWN_MODE);
    }

    #[test]
    fn a_report_without_a_record_is_not_folded() {
        let mut rep = staged_report(flags::LOAD_STAGED);
        rep.record.status = "missing";
        let err = boot_from_report(&rep, BOOT, 1).unwrap_err().to_string();
        assert!(err.contains("no usable trace record (missing)"), "{err}");
    }

    #[test]
    fn fold_report_reads_the_boot_id_under_root_and_folds_once() {
        let root = tempfile::tempdir().unwrap();
        let ids = root.path().join("proc/sys/kernel/random");
        fs::create_dir_all(&ids).unwrap();
        fs::write(ids.join("boot_id"), format!("{BOOT}\n")).unwrap();
        let state = tempfile::tempdir().unwrap();
        let rep = staged_report(flags::LOAD_STAGED);
        let (f, st) = fold_report(&rep, root.path(), state.path(), 0).unwrap();
        assert_eq!(f, Fold::Folded);
        assert!(st.contains(BOOT));
        assert_eq!(st.last().unwrap().mode, "staged");
        let (f, st) = fold_report(&rep, root.path(), state.path(), 0).unwrap();
        assert_eq!((f, st.boots()), (Fold::AlreadyFolded, 1));
        let err = fold_report(&rep, state.path(), state.path(), 0).unwrap_err();
        assert!(err.to_string().contains("boot_id"), "{err}");
    }
}
