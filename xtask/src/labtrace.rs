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
/// Machine names, as `report --json` gives them (`fastkexec::record::phases::PhaseDef::id`).
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

/// Staged mode's point, asserted on QEMU's instruction clock (`--icount`, where the figure is
/// deterministic): `machine_kexec` → the purgatory (the kernel's relocation, which copies one
/// trampoline page, and the trampoline's check of the staged image) under this. Measured there:
/// 0.048 ms on every lab kernel, against 8.6–23 ms of copying in uncompressed mode.
pub const STAGED_ICOUNT_LIMIT_MS: f64 = 1.0;

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

/// What the host's serial log saw of a traced run, in host ms after `FKLAB: exec` (which
/// `trace` prints right before it stamps the request, the report's origin): stamps taken by
/// the host as each line's first byte arrived, independent of every clock in the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostLines {
    /// The old kernel's `kexec_core: Starting new kernel`.
    pub starting_new_kernel: Option<f64>,
    /// The new kernel's first line (`Linux version`, through earlyprintk).
    pub first_new_kernel_line: Option<f64>,
    /// The new init's first line (`FKLAB: init round=2`).
    pub new_init: Option<f64>,
}

/// One serial line the report's phase boundaries must place where the host saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BoundaryCheck {
    /// The serial line.
    pub line: &'static str,
    /// Where the kernel prints it, between which two report boundaries.
    pub between: String,
    /// The host's stamp of the line, ms after `FKLAB: exec`.
    pub host_ms: Option<f64>,
    /// The report's window for it: `[from_ms, to_ms]` after its origin.
    pub from_ms: Option<f64>,
    pub to_ms: Option<f64>,
    /// Slack on both sides: 5 % of `host_ms` or 20 ms (serial latency, TCG).
    pub tolerance_ms: Option<f64>,
    /// The host's stamp lies in the window, within the tolerance.
    pub within: bool,
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
    /// The report's phase boundaries against lines of the serial log that the host stamped
    /// (`Starting new kernel`: after the old kernel's syscore shutdown, before its machine
    /// shutdown; the new kernel's first line: after the purgatory's jump, before the new
    /// kernel's clock zero). Empty when there is nothing to compare (see `within_tolerance`).
    pub boundaries: Vec<BoundaryCheck>,
    /// Every boundary holds (`None`: no comparison).
    pub boundaries_agree: Option<bool>,
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
    /// A bound `kexec_to_purgatory_ms` must stay under (staged mode on the instruction clock:
    /// [`STAGED_ICOUNT_LIMIT_MS`]), and whether it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kexec_to_purgatory_limit_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kexec_to_purgatory_within_limit: Option<bool>,
}

impl TraceCheck {
    /// Whether round 2's report says what this run had to show, and agrees with the host's
    /// stopwatch wherever the two are compared (the total, and the phase boundaries the serial
    /// log can place).
    pub fn ok(&self) -> bool {
        let status_ok = self.record_status.as_deref() == Some(self.expected_status.as_str());
        let rc_ok = if self.expected_status == "ok" {
            self.report_rc == Some(0)
        } else {
            // No usable record: report still shows what it can, and exits 3 (README: "nothing to report").
            self.report_rc == Some(3)
        };
        status_ok
            && rc_ok
            && self.missing_phases.is_empty()
            && self.within_tolerance != Some(false)
            && self.boundaries_agree != Some(false)
            && self.kexec_to_purgatory_within_limit != Some(false)
    }

    /// Asks `machine_kexec` → purgatory to stay under `limit_ms` (a missing figure fails).
    pub fn limit_kexec_to_purgatory(&mut self, limit_ms: f64) {
        self.kexec_to_purgatory_limit_ms = Some(limit_ms);
        self.kexec_to_purgatory_within_limit =
            Some(self.kexec_to_purgatory_ms.is_some_and(|v| v < limit_ms));
    }

    /// Why `ok` is false, for the run's `error`.
    pub fn problem(&self) -> String {
        let mut v = vec![format!(
            "record {} (wanted {}), exit status {:?}",
            self.record_status.as_deref().unwrap_or("none"),
            self.expected_status,
            self.report_rc
        )];
        if !self.missing_phases.is_empty() {
            v.push(format!("missing phases: {:?}", self.missing_phases));
        }
        if self.within_tolerance == Some(false) {
            v.push(format!(
                "total {:.1} ms vs host {:.1} ms, off by more than {:.1} ms",
                self.total_ms.unwrap_or(f64::NAN),
                self.host_exec_to_new_init_ms.unwrap_or(f64::NAN),
                self.tolerance_ms.unwrap_or(f64::NAN)
            ));
        }
        for b in self.boundaries.iter().filter(|b| !b.within) {
            v.push(boundary_text(b));
        }
        if self.kexec_to_purgatory_within_limit == Some(false) {
            v.push(format!(
                "machine_kexec → purgatory {} ms, not under {:.3} ms",
                self.kexec_to_purgatory_ms
                    .map_or_else(|| "unmeasured".to_string(), |v| format!("{v:.3}")),
                self.kexec_to_purgatory_limit_ms.unwrap_or(f64::NAN)
            ));
        }
        v.join("; ")
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

/// Compares a report with the host stopwatch. `host` is `None` when the host's clock does not
/// time the guest's (`--icount`): then nothing is compared.
pub fn check(
    report: Option<&Value>,
    rc: Option<i32>,
    host: Option<HostLines>,
    damage: Option<Damage>,
    loaded: Loaded,
) -> TraceCheck {
    let host_exec_to_new_init_ms = host.and_then(|h| h.new_init);
    let (expected_status, required): (&str, Vec<&str>) = match (loaded, damage) {
        (Loaded::File, _) => ("missing", FILE_MODE_PHASES.to_vec()),
        (_, Some(d)) => (d.expected_status(), Vec::new()),
        (Loaded::Uncompressed, None) => ("ok", REQUIRED_PHASES.to_vec()),
        (Loaded::Staged, None) => ("ok", [REQUIRED_PHASES, STAGED_PHASES].concat()),
    };
    let total_ns = report
        .and_then(|r| r.get("total_ns"))
        .and_then(Value::as_u64);
    let phases = report_phases(report);
    let total_ms = total_ns.map(|n| n as f64 / 1e6);
    let diff_ms = match (total_ms, host_exec_to_new_init_ms) {
        (Some(t), Some(h)) => Some(t - h),
        _ => None,
    };
    let tolerance_ms = host_exec_to_new_init_ms.map(tolerance);
    // Only a whole record, timed from the request `trace` stamped right after it printed
    // `FKLAB: exec`, spans what the host's stamps span.
    let origin_is_exec =
        report.and_then(|r| r.get("origin")).and_then(Value::as_str) == Some("request");
    let boundaries = match host {
        Some(h) if expected_status == "ok" && origin_is_exec => boundary_checks(&phases, &h),
        _ => Vec::new(),
    };
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
        boundaries: boundaries.clone(),
        boundaries_agree: (!boundaries.is_empty()).then(|| boundaries.iter().all(|b| b.within)),
        missing_phases: required
            .iter()
            .filter(|n| !phases.iter().any(|p| p.name == **n))
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
        kexec_to_purgatory_limit_ms: None,
        kexec_to_purgatory_within_limit: None,
    }
}

/// Slack for comparing a report figure with a host stamp `host_ms` after `FKLAB: exec`.
fn tolerance(host_ms: f64) -> f64 {
    (host_ms * TOLERANCE_SHARE).max(TOLERANCE_MS)
}

/// A phase of the report JSON, in ms after its origin.
#[derive(Debug, Clone, PartialEq)]
struct JsonPhase {
    /// The machine name (older reports' labels mapped to it).
    name: String,
    start_ms: f64,
    end_ms: f64,
}

fn report_phases(report: Option<&Value>) -> Vec<JsonPhase> {
    report
        .and_then(|r| r.get("phases"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    let name = p.get("name")?.as_str()?;
                    let start = p.get("start_ns")?.as_u64()?;
                    let dur = p.get("duration_ns")?.as_u64()?;
                    Some(JsonPhase {
                        name: fastkexec::record::phases::canonical_id(name)
                            .unwrap_or(name)
                            .to_string(),
                        start_ms: start as f64 / 1e6,
                        end_ms: start.saturating_add(dur) as f64 / 1e6,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The serial lines whose place the report's boundaries predict, against the host's stamps.
///
/// `kexec_core: Starting new kernel` is printed by `kernel_kexec()` after `syscore_shutdown()`
/// returned and right before `machine_shutdown()`: the report must put it after the last
/// measured phase before `machine_shutdown` and before that phase starts. The new kernel's
/// first line (`Linux version`, earlyprintk) comes after the purgatory jumped to it and before
/// its TSC clock starts (the clock zero, where `kernel_boot` starts): the report must put it
/// in `kernel_early_boot`. The probes' and the purgatory's TSC stamps against the host's
/// serial stamps: wrong clock math, a mis-ordered or mis-assigned mark, or a span charged to
/// the wrong side of the handoff moves a boundary away from its line, whatever the total.
fn boundary_checks(phases: &[JsonPhase], host: &HostLines) -> Vec<BoundaryCheck> {
    let find = |id: &str| phases.iter().position(|p| p.name == id);
    let shutdown = find("machine_shutdown");
    let before_shutdown = shutdown.and_then(|i| {
        phases
            .get(..i)?
            .iter()
            .rev()
            .find(|p| p.name != fastkexec::record::phases::UNATTRIBUTED)
    });
    let early = find("kernel_early_boot");
    let purgatory = find("purgatory");
    let boot = find("kernel_boot");
    let one = |line: &'static str,
               between: String,
               host_ms: Option<f64>,
               from_ms: Option<f64>,
               to_ms: Option<f64>| {
        let tolerance_ms = host_ms.map(tolerance);
        let within = match (host_ms, from_ms, to_ms, tolerance_ms) {
            (Some(h), Some(a), Some(b), Some(t)) => a - t <= h && h <= b + t,
            _ => false,
        };
        BoundaryCheck {
            line,
            between,
            host_ms,
            from_ms,
            to_ms,
            tolerance_ms,
            within,
        }
    };
    vec![
        one(
            "kexec_core: Starting new kernel",
            format!(
                "the end of {} and the start of machine_shutdown",
                before_shutdown.map_or("-", |p| p.name.as_str())
            ),
            host.starting_new_kernel,
            before_shutdown.map(|p| p.end_ms),
            shutdown.and_then(|i| phases.get(i)).map(|p| p.start_ms),
        ),
        one(
            "Linux version (the new kernel's first line)",
            "the start of kernel_early_boot (the purgatory's jump) and the start of kernel_boot \
             (the new kernel's clock zero)"
                .into(),
            host.first_new_kernel_line,
            early
                .and_then(|i| phases.get(i))
                .map(|p| p.start_ms)
                .or_else(|| purgatory.and_then(|i| phases.get(i)).map(|p| p.end_ms)),
            boot.and_then(|i| phases.get(i)).map(|p| p.start_ms),
        ),
    ]
}

fn boundary_text(b: &BoundaryCheck) -> String {
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    format!(
        "`{}` at host {} ms, the report puts it between {} ms and {} ms ({}) ± {} ms",
        b.line,
        f(b.host_ms),
        f(b.from_ms),
        f(b.to_ms),
        b.between,
        f(b.tolerance_ms)
    )
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
            .unwrap_or_default()
            + &match c.boundaries_agree {
                Some(true) => ", serial lines where the phases put them".to_string(),
                Some(false) => format!(
                    ", PHASE BOUNDARIES DISAGREE WITH THE SERIAL LOG: {}",
                    c.boundaries
                        .iter()
                        .filter(|b| !b.within)
                        .map(boundary_text)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                None => String::new(),
            },
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

    /// A report JSON whose phases tile the timeline from the request.
    fn report_json(total: u64, phases: &[(&str, u64)], status: &str) -> String {
        let mut at = 0;
        let ps: Vec<Value> = phases
            .iter()
            .map(|(n, d)| {
                let p = serde_json::json!({"name": n, "start_ns": at, "duration_ns": d});
                at += d;
                p
            })
            .collect();
        serde_json::json!({
            "record": {"status": status, "tracer_self_ns": 50_000},
            "origin": "request",
            "phases": ps,
            "total_ns": total,
            "spans": {"to_run_init_ns": 300_000_000u64}
        })
        .to_string()
    }

    fn host(new_init: f64) -> Option<HostLines> {
        Some(HostLines {
            new_init: Some(new_init),
            ..Default::default()
        })
    }

    /// Phases and host stamps of a real run (6.12, uncompressed, TCG: target/lab/run.json of
    /// 2026-12-06): `FKLAB: exec` at host 20306.832 ms, `Starting new kernel` 20342.218,
    /// `Linux version` 20865.686, `FKLAB: init round=2` 26616.955.
    const REAL: &[(&str, u64)] = &[
        ("userspace_shutdown", 8_202_679),
        ("reboot_syscall", 1_671_103),
        ("reboot_notifiers", 6_828_341),
        ("device_shutdown", 11_464_563),
        ("unattributed", 1_420_692),
        ("cpu_migration", 1_205_943),
        ("unattributed", 1_048_128),
        ("syscore_shutdown", 2_072_711),
        ("unattributed", 1_962_498),
        ("machine_shutdown", 3_696_935),
        ("unattributed", 1_984_139),
        ("relocation", 413_639_519),
        ("purgatory", 78_246),
        ("kernel_early_boot", 138_504_269),
        ("kernel_boot", 5_356_933_027),
        ("user_space", 364_242_001),
    ];
    const REAL_TOTAL: u64 = 6_314_954_794;
    const REAL_HOST: HostLines = HostLines {
        starting_new_kernel: Some(20342.218 - 20306.832),
        first_new_kernel_line: Some(20865.686 - 20306.832),
        new_init: Some(6310.122535),
    };

    fn real(phases: &[(&str, u64)]) -> TraceCheck {
        let json: Value = serde_json::from_str(&report_json(REAL_TOTAL, phases, "ok")).unwrap();
        check(
            Some(&json),
            Some(0),
            Some(REAL_HOST),
            None,
            Loaded::Uncompressed,
        )
    }

    /// Lengthens phase `longer` by `ns` and shortens the later phase `shorter` as much: the
    /// tiles stay contiguous and the total stays what it was, so only an independent check
    /// can notice that the phases between them moved.
    fn moved(longer: &str, shorter: &str, ns: u64) -> Vec<(&'static str, u64)> {
        let mut v = REAL.to_vec();
        let a = v.iter().position(|(n, _)| *n == longer).unwrap();
        let b = v.iter().position(|(n, _)| *n == shorter).unwrap();
        assert!(a < b && v[b].1 > ns);
        v[a].1 += ns;
        v[b].1 -= ns;
        v
    }

    #[test]
    fn phase_boundaries_are_checked_against_the_serial_log() {
        let c = real(REAL);
        assert_eq!(c.within_tolerance, Some(true));
        assert_eq!(c.boundaries_agree, Some(true), "{:?}", c.boundaries);
        assert!(c.ok(), "{}", c.problem());
        assert!(summary(&c).contains("where the phases put them"));
        // The new kernel's clock zero placed 94 ms early (kernel_boot starts at 500 ms, its
        // first line came at 558.9 ms): same total, same tiling, caught.
        let c = real(&moved("kernel_boot", "user_space", 0));
        assert!(c.ok(), "moving nothing changes nothing");
        let mut early_zero = REAL.to_vec();
        early_zero[13].1 -= 93_779_766;
        early_zero[14].1 += 93_779_766;
        let c = real(&early_zero);
        assert_eq!(c.within_tolerance, Some(true), "the total cannot see it");
        assert_eq!(c.boundaries_agree, Some(false));
        assert!(!c.ok());
        assert!(c.problem().contains("Linux version"), "{}", c.problem());
        assert!(summary(&c).contains("DISAGREE"));
        // The purgatory's jump placed after the new kernel had printed (relocation charged
        // 135 ms of early boot).
        let c = real(&moved("relocation", "kernel_early_boot", 135_000_000));
        assert!(!c.ok() && c.problem().contains("Linux version"));
        // syscore_shutdown charged 34 ms of the relocation: it now ends at 69.9 ms, but
        // `Starting new kernel`, printed after it, came at 35.4 ms.
        let c = real(&moved("syscore_shutdown", "relocation", 34_000_000));
        assert_eq!(c.boundaries_agree, Some(false));
        assert!(
            c.problem().contains("Starting new kernel"),
            "{}",
            c.problem()
        );
        // A line the host never saw is no evidence for the report: not ok.
        let json: Value = serde_json::from_str(&report_json(REAL_TOTAL, REAL, "ok")).unwrap();
        let blind = HostLines {
            first_new_kernel_line: None,
            ..REAL_HOST
        };
        let c = check(
            Some(&json),
            Some(0),
            Some(blind),
            None,
            Loaded::Uncompressed,
        );
        assert!(!c.ok());
        // Older reports named phases by their labels.
        let labelled: Vec<(&str, u64)> = REAL
            .iter()
            .map(|&(n, d)| (fastkexec::record::phases::label(n), d))
            .collect();
        assert!(real(&labelled).ok());
        // Without the host's clock (--icount) nothing is compared.
        let c = check(Some(&json), Some(0), None, None, Loaded::Uncompressed);
        assert_eq!((c.within_tolerance, c.boundaries_agree), (None, None));
        assert!(c.ok());
    }

    #[test]
    fn staged_relocation_limit_on_the_instruction_clock() {
        let mut phases: Vec<(&str, u64)> =
            REQUIRED_PHASES.iter().map(|n| (*n, 50_000_000)).collect();
        phases.push(("trampoline", 44_000));
        let with_span = |ns: u64| {
            let mut v: Value =
                serde_json::from_str(&report_json(350_044_000, &phases, "ok")).unwrap();
            v["spans"]["kexec_to_purgatory_ns"] = ns.into();
            v
        };
        // 0.048 ms, as measured (icount: no host comparison).
        let mut c = check(
            Some(&with_span(48_000)),
            Some(0),
            None,
            None,
            Loaded::Staged,
        );
        c.limit_kexec_to_purgatory(STAGED_ICOUNT_LIMIT_MS);
        assert_eq!(c.kexec_to_purgatory_within_limit, Some(true));
        assert!(c.ok(), "{}", c.problem());
        // A staged load that copied the kernel at exec (uncompressed: 21 ms) fails.
        let mut c = check(
            Some(&with_span(21_200_000)),
            Some(0),
            None,
            None,
            Loaded::Staged,
        );
        c.limit_kexec_to_purgatory(STAGED_ICOUNT_LIMIT_MS);
        assert!(!c.ok());
        assert!(
            c.problem().contains("not under 1.000 ms"),
            "{}",
            c.problem()
        );
        // No figure at all is no evidence.
        let mut v = with_span(0);
        v["spans"]
            .as_object_mut()
            .unwrap()
            .remove("kexec_to_purgatory_ns");
        let mut c = check(Some(&v), Some(0), None, None, Loaded::Staged);
        c.limit_kexec_to_purgatory(STAGED_ICOUNT_LIMIT_MS);
        assert!(!c.ok());
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
        // Serial lines where these phases put them: `Starting new kernel` between
        // cpu_migration's end (100 ms) and machine_shutdown (100 ms), the first line between
        // kernel_early_boot's start (none here: the purgatory's end, 200 ms) and kernel_boot's
        // start (250 ms).
        let lines_ok = HostLines {
            starting_new_kernel: Some(101.0),
            first_new_kernel_line: Some(240.0),
            new_init: Some(340.0),
        };
        let c = check(r.as_ref(), rc, Some(lines_ok), None, Loaded::Uncompressed);
        assert!(c.missing_phases.is_empty());
        assert_eq!(c.diff_ms, Some(10.0));
        assert_eq!(c.tolerance_ms, Some(20.0));
        assert_eq!(c.within_tolerance, Some(true));
        assert!(c.ok(), "{}", c.problem());
        // 5 % of a long run is more than 20 ms; a 50 ms disagreement on 600 ms is not ok.
        let c = check(r.as_ref(), rc, host(600.0), None, Loaded::Uncompressed);
        assert_eq!(c.tolerance_ms, Some(30.0));
        assert_eq!(c.within_tolerance, Some(false));
        assert!(!c.ok(), "timing decides ok");
        assert!(c.problem().contains("off by more than 30.0 ms"));
        assert!(summary(&c).contains("OUTSIDE"));
        // A staged run must show the trampoline too.
        let c = check(r.as_ref(), rc, Some(lines_ok), None, Loaded::Staged);
        assert_eq!(c.missing_phases, ["trampoline"]);
        assert!(!c.ok());
    }

    #[test]
    fn missing_phases_and_damage_verdicts() {
        let json = report_json(100, &[("device_shutdown", 60)], "ok");
        let v = [
            "FKLAB: report-begin",
            json.as_str(),
            "FKLAB: report-end rc=0",
        ];
        let (r, rc) = extract(&lines(&v));
        let c = check(r.as_ref(), rc, None, None, Loaded::Uncompressed);
        assert!(c.missing_phases.contains(&"relocation".to_string()));
        assert!(!c.ok());
        // A damaged record must be refused with exit status 3; no comparison then.
        let json = report_json(10, &[("kernel_boot", 10)], "torn");
        let v = [
            "FKLAB: report-begin",
            json.as_str(),
            "FKLAB: report-end rc=3",
        ];
        let (r, rc) = extract(&lines(&v));
        let c = check(
            r.as_ref(),
            rc,
            host(1.0),
            Some(Damage::HeaderByte),
            Loaded::Uncompressed,
        );
        assert!(c.ok());
        assert_eq!((c.within_tolerance, c.boundaries_agree), (None, None));
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
        assert!(check(r.as_ref(), rc, host(1.0), None, Loaded::File).ok());
        assert!(!check(r.as_ref(), rc, host(1.0), None, Loaded::Uncompressed).ok());
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
