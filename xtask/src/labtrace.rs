//! `cargo xtask lab run --trace`: round 1 runs `fastkexec trace --exec`
//! instead of load + exec, round 2 runs `fastkexec report --json` and prints
//! it on serial between `FKLAB: report-begin` and `FKLAB: report-end rc=N`.
//! This module turns those lines into the lab JSON's `report` and `trace`
//! (the comparison with the host stopwatch).
//!
//! The host stopwatch `exec_to_new_init` runs from the `FKLAB: exec` line
//! (printed by `trace` itself right before it stamps the reboot request) to
//! the new init's first line (`FKLAB: init round=2`); round 2 writes
//! `FKLAB: new-init` to /dev/kmsg as its first command and the report ends
//! its timeline there (`--until-kmsg`), so `total_ns` covers the same span.

use serde::Serialize;
use serde_json::Value;

/// Keeps the guest's printk clock on the TSC (see [`cmdline_words`]).
pub const TSC_RELIABLE: &str = "tsc=reliable";

/// The phases the acceptance asks every traced uncompressed run to show.
/// Machine names, as `report --json` gives them (`fastkexec::phases::PhaseDef::id`).
pub const REQUIRED_PHASES: &[&str] = &[
    "device_shutdown",
    "cpu_migration",
    "machine_shutdown",
    "relocation",
    "purgatory",
    "kernel_boot",
    "user_space",
];

/// What a staged run shows besides [`REQUIRED_PHASES`]: the trampoline
/// between `machine_kexec` and the purgatory.
pub const STAGED_PHASES: &[&str] = &["trampoline"];

/// How the traced kernel was loaded: what round 2's report can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// kexec_file_load: no record can come along.
    File,
    Uncompressed,
    /// The trampoline stamps its own phase too.
    Staged,
}

/// Phases a file-mode run can show: the record cannot ride along there, so
/// the report must say "missing" and show only the new kernel's own phases.
pub const FILE_MODE_PHASES: &[&str] = &["kernel_boot", "user_space"];

/// Agreement asked between `total_ns` and the host stopwatch: 5 % or 20 ms,
/// whichever is larger.
pub const TOLERANCE_SHARE: f64 = 0.05;
pub const TOLERANCE_MS: f64 = 20.0;

/// A deliberate defect in the record, and what round 2 must then say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Damage {
    /// Flip a byte of the sealed header: report must say "torn".
    HeaderByte,
    /// Seal with another boot id: report must say "stale".
    OtherBoot,
}

impl Damage {
    pub fn arg(self) -> &'static str {
        match self {
            Damage::HeaderByte => "header-byte",
            Damage::OtherBoot => "other-boot",
        }
    }

    fn expected_status(self) -> &'static str {
        match self {
            Damage::HeaderByte => "torn",
            Damage::OtherBoot => "stale",
        }
    }
}

/// Kernel command-line words that turn tracing on for both rounds.
///
/// `tsc=reliable`: QEMU's TCG vCPUs do not advertise a constant TSC, so a
/// multi-CPU guest marks its TSC unstable at boot; the printk clock then
/// follows jiffies through early boot, and under TCG jiffies lose time, so
/// printk time stops being a linear function of the TSC (seen: 2 s off over
/// 7 s). Real hardware (constant_tsc) and KVM guests (kvm-clock) keep the
/// printk clock on the TSC; `tsc=reliable` makes the TCG guest do the same.
/// Untraced runs compared with traced ones need the same word (`--append`).
pub fn cmdline_words(trace: bool, damage: Option<Damage>, lean: bool, follow: bool) -> Vec<String> {
    let mut v = Vec::new();
    if trace {
        v.push("fklab.trace=1".to_string());
        v.push(TSC_RELIABLE.to_string());
        if lean {
            v.push("fklab.lean=1".to_string());
        }
        if follow {
            v.push("fklab.follow=1".to_string());
        }
        if let Some(d) = damage {
            v.push(format!("fklab.damage={}", d.arg()));
        }
    }
    v
}

/// The traced run's figures, next to the host's.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceCheck {
    /// Exit status of `fastkexec report --json` in round 2.
    pub report_rc: Option<i32>,
    /// `record.status` of the report (`ok`, `missing`, `torn`, `stale`).
    pub record_status: Option<String>,
    /// What the record status had to be (`ok`, or the damage's verdict).
    pub expected_status: String,
    /// `total_ns` of the report, ms.
    pub total_ms: Option<f64>,
    /// The sum of the phase durations equals `total_ns`.
    pub phases_sum_to_total: bool,
    pub missing_phases: Vec<String>,
    /// The host stopwatch over the same span.
    pub host_exec_to_new_init_ms: Option<f64>,
    /// `total_ms - host_exec_to_new_init_ms`.
    pub diff_ms: Option<f64>,
    pub tolerance_ms: Option<f64>,
    pub within_tolerance: Option<bool>,
    /// `report.spans.to_run_init_ns` in ms (request → "Run /init").
    pub to_run_init_ms: Option<f64>,
    /// `report.spans.kexec_to_purgatory_ns` in ms: `machine_kexec` → the
    /// purgatory's entry (relocation, and a staged load's trampoline).
    pub kexec_to_purgatory_ms: Option<f64>,
    /// Time the probes measured inside themselves, ms.
    pub tracer_self_ms: Option<f64>,
}

impl TraceCheck {
    /// Whether round 2's report says what this run had to show.
    pub fn ok(&self) -> bool {
        let status_ok = self.record_status.as_deref() == Some(self.expected_status.as_str());
        let rc_ok = if self.expected_status == "ok" {
            self.report_rc == Some(0)
        } else {
            // No usable record: report still shows what it can, and exits 3 (README: "nothing to report").
            self.report_rc == Some(3)
        };
        status_ok && rc_ok && self.phases_sum_to_total && self.missing_phases.is_empty()
    }
}

/// The text table round 2's `fastkexec report` printed before the JSON run
/// (after the `FKLAB: initrd=` line), for people.
pub fn table(lines: &[(f64, String)]) -> Vec<String> {
    let Some(start) = lines
        .iter()
        .position(|(_, l)| l.starts_with("FKLAB: initrd="))
    else {
        return Vec::new();
    };
    lines
        .iter()
        .skip(start + 1)
        .take_while(|(_, l)| l != "FKLAB: report-begin" && l != "FKLAB: svg-begin")
        .map(|(_, l)| l.clone())
        .collect()
}

/// The JSON between the report markers, and the report's exit status.
pub fn extract(lines: &[(f64, String)]) -> (Option<Value>, Option<i32>) {
    let Some(begin) = lines.iter().position(|(_, l)| l == "FKLAB: report-begin") else {
        return (None, None);
    };
    let rest = lines.get(begin + 1..).unwrap_or(&[]);
    let Some(end) = rest
        .iter()
        .position(|(_, l)| l.starts_with("FKLAB: report-end"))
    else {
        return (None, None);
    };
    let rc = rest
        .get(end)
        .and_then(|(_, l)| l.strip_prefix("FKLAB: report-end rc="))
        .and_then(|v| v.trim().parse().ok());
    // The JSON object itself: a stray console line (a kernel message) before
    // or after it must not spoil it.
    let body = rest.get(..end).unwrap_or(&[]);
    let first = body.iter().position(|(_, l)| l.starts_with('{'));
    let last = body.iter().rposition(|(_, l)| l.trim_end().ends_with('}'));
    let json = match (first, last) {
        (Some(a), Some(b)) if a <= b => body
            .get(a..=b)
            .unwrap_or(&[])
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    };
    (serde_json::from_str(&json).ok(), rc)
}

/// Compares a report with the host stopwatch.
pub fn check(
    report: Option<&Value>,
    rc: Option<i32>,
    host_exec_to_new_init_ms: Option<f64>,
    damage: Option<Damage>,
    loaded: Loaded,
) -> TraceCheck {
    let (expected_status, required): (&str, Vec<&str>) = match (loaded, damage) {
        (Loaded::File, _) => ("missing", FILE_MODE_PHASES.to_vec()),
        (_, Some(d)) => (d.expected_status(), Vec::new()),
        (Loaded::Uncompressed, None) => ("ok", REQUIRED_PHASES.to_vec()),
        (Loaded::Staged, None) => ("ok", [REQUIRED_PHASES, STAGED_PHASES].concat()),
    };
    let total_ns = report
        .and_then(|r| r.get("total_ns"))
        .and_then(Value::as_u64);
    let phases: Vec<(String, u64)> = report
        .and_then(|r| r.get("phases"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    Some((
                        p.get("name")?.as_str()?.to_string(),
                        p.get("duration_ns")?.as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let sum: u64 = phases.iter().map(|(_, d)| d).sum();
    let total_ms = total_ns.map(|n| n as f64 / 1e6);
    let diff_ms = match (total_ms, host_exec_to_new_init_ms) {
        (Some(t), Some(h)) => Some(t - h),
        _ => None,
    };
    let tolerance_ms = host_exec_to_new_init_ms.map(|h| (h * TOLERANCE_SHARE).max(TOLERANCE_MS));
    let ms_at = |ptr: &str| {
        report
            .and_then(|r| r.pointer(ptr))
            .and_then(Value::as_u64)
            .map(|n| n as f64 / 1e6)
    };
    TraceCheck {
        report_rc: rc,
        record_status: report
            .and_then(|r| r.pointer("/record/status"))
            .and_then(Value::as_str)
            .map(str::to_string),
        expected_status: expected_status.to_string(),
        total_ms,
        phases_sum_to_total: total_ns.is_some() && Some(sum) == total_ns,
        missing_phases: required
            .iter()
            .filter(|n| !phases.iter().any(|(p, _)| p == *n))
            .map(|n| n.to_string())
            .collect(),
        host_exec_to_new_init_ms,
        diff_ms,
        tolerance_ms,
        // Only a whole record spans what the host stopwatch spans.
        within_tolerance: match (diff_ms, tolerance_ms, expected_status) {
            (Some(d), Some(t), "ok") => Some(d.abs() <= t),
            _ => None,
        },
        to_run_init_ms: ms_at("/spans/to_run_init_ns"),
        kexec_to_purgatory_ms: ms_at("/spans/kexec_to_purgatory_ns"),
        tracer_self_ms: ms_at("/record/tracer_self_ns"),
    }
}

/// One line for the run summary.
pub fn summary(c: &TraceCheck) -> String {
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1} ms"));
    format!(
        " · trace: record {} total {} vs host {} (diff {}, {}){}{}",
        c.record_status.as_deref().unwrap_or("-"),
        f(c.total_ms),
        f(c.host_exec_to_new_init_ms),
        f(c.diff_ms),
        match c.within_tolerance {
            Some(true) => "within tolerance",
            Some(false) => "OUTSIDE tolerance",
            None => "no comparison",
        },
        c.kexec_to_purgatory_ms
            .map(|v| format!(", machine_kexec → purgatory {v:.3} ms"))
            .unwrap_or_default(),
        if c.missing_phases.is_empty() {
            String::new()
        } else {
            format!(", missing phases: {}", c.missing_phases.join(", "))
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<(f64, String)> {
        v.iter()
            .enumerate()
            .map(|(i, l)| (i as f64, l.to_string()))
            .collect()
    }

    fn report_json(total: u64, phases: &[(&str, u64)], status: &str) -> String {
        let ps: Vec<Value> = phases
            .iter()
            .map(|(n, d)| serde_json::json!({"name": n, "start_ns": 0, "duration_ns": d}))
            .collect();
        serde_json::json!({
            "record": {"status": status, "tracer_self_ns": 50_000},
            "phases": ps,
            "total_ns": total,
            "spans": {"to_run_init_ns": 300_000_000u64}
        })
        .to_string()
    }

    #[test]
    fn report_between_markers_is_checked_against_the_host() {
        let phases: Vec<(&str, u64)> = REQUIRED_PHASES.iter().map(|n| (*n, 50_000_000)).collect();
        let json = report_json(350_000_000, &phases, "ok");
        // Pretty-printed JSON spans many serial lines.
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(&json).unwrap()).unwrap();
        let mut v = vec!["FKLAB: init round=2", "FKLAB: report-begin", "[ 5.1] stray"];
        v.extend(pretty.lines());
        v.push("FKLAB: report-end rc=0");
        let (r, rc) = extract(&lines(&v));
        assert_eq!(rc, Some(0));
        let t = table(&lines(&[
            "FKLAB: initrd=ok",
            "a table",
            "FKLAB: report-begin",
            "{}",
        ]));
        assert_eq!(t, ["a table"]);
        let c = check(r.as_ref(), rc, Some(340.0), None, Loaded::Uncompressed);
        assert!(c.phases_sum_to_total && c.missing_phases.is_empty());
        assert_eq!(c.diff_ms, Some(10.0));
        assert_eq!(c.tolerance_ms, Some(20.0));
        assert_eq!(c.within_tolerance, Some(true));
        assert!(c.ok());
        // 5 % of a long run is more than 20 ms.
        let c = check(r.as_ref(), rc, Some(600.0), None, Loaded::Uncompressed);
        assert_eq!(c.tolerance_ms, Some(30.0));
        assert_eq!(c.within_tolerance, Some(false));
        assert!(c.ok(), "timing does not decide ok");
        assert!(summary(&c).contains("OUTSIDE"));
        // A staged run must show the trampoline too.
        let c = check(r.as_ref(), rc, Some(340.0), None, Loaded::Staged);
        assert_eq!(c.missing_phases, ["trampoline"]);
        assert!(!c.ok());
    }

    #[test]
    fn missing_phases_bad_sums_and_damage_verdicts() {
        let json = report_json(100, &[("device_shutdown", 60)], "ok");
        let v = [
            "FKLAB: report-begin",
            json.as_str(),
            "FKLAB: report-end rc=0",
        ];
        let (r, rc) = extract(&lines(&v));
        let c = check(r.as_ref(), rc, Some(1.0), None, Loaded::Uncompressed);
        assert!(!c.phases_sum_to_total);
        assert!(c.missing_phases.contains(&"relocation".to_string()));
        assert!(!c.ok());
        // A damaged record must be refused with exit status 3.
        let json = report_json(10, &[("kernel_boot", 10)], "torn");
        let v = [
            "FKLAB: report-begin",
            json.as_str(),
            "FKLAB: report-end rc=3",
        ];
        let (r, rc) = extract(&lines(&v));
        assert!(check(
            r.as_ref(),
            rc,
            None,
            Some(Damage::HeaderByte),
            Loaded::Uncompressed
        )
        .ok());
        assert!(!check(
            r.as_ref(),
            rc,
            None,
            Some(Damage::OtherBoot),
            Loaded::Uncompressed
        )
        .ok());
        assert!(!check(
            r.as_ref(),
            Some(0),
            None,
            Some(Damage::HeaderByte),
            Loaded::Uncompressed
        )
        .ok());
        // File mode: "missing" with the new kernel's own phases.
        let json = report_json(30, &[("kernel_boot", 10), ("user_space", 20)], "missing");
        let v = [
            "FKLAB: report-begin",
            json.as_str(),
            "FKLAB: report-end rc=3",
        ];
        let (r, rc) = extract(&lines(&v));
        assert!(check(r.as_ref(), rc, Some(1.0), None, Loaded::File).ok());
        assert!(!check(r.as_ref(), rc, Some(1.0), None, Loaded::Uncompressed).ok());
        // No markers, no report.
        assert_eq!(extract(&lines(&["FKLAB: done"])), (None, None));
        assert_eq!(
            cmdline_words(true, Some(Damage::OtherBoot), false, false),
            ["fklab.trace=1", TSC_RELIABLE, "fklab.damage=other-boot"]
        );
        assert!(cmdline_words(false, Some(Damage::OtherBoot), true, true).is_empty());
        let w = cmdline_words(true, None, true, true);
        assert!(
            w.contains(&"fklab.lean=1".to_string()) && w.contains(&"fklab.follow=1".to_string())
        );
    }
}
