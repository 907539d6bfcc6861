//! `cargo xtask bench`: every lab mode side by side on one machine in one
//! sitting, interleaved so that drift (thermal, other load) hits every mode
//! alike; then a JSON record, a markdown table and a stacked-bar chart.
//!
//! Figures come from the lab's JSON (`RunReport`), read as JSON on purpose:
//! a run traced with `--trace` carries `report.phases`, an untraced one only
//! the host stopwatch, and both kinds are summarised the same way.

use crate::chart::{self, Bar, Chart};
use crate::initramfs::Tools;
use crate::kernels::KernelInfo;
use crate::lab::{self, Mode, RunOptions, RunReport};
use crate::util::{lab_dir, output, step, write_atomic};
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Every figure's ratio is taken against this mode.
pub const BASELINE: &str = "kexec-tools-l";

/// Host stopwatch figures: key in `RunReport.host_ms`, label for people.
pub const HOST_FIGURES: &[(&str, &str)] = &[
    (
        "exec_to_first_new_kernel_line",
        "exec → first new-kernel line",
    ),
    ("exec_to_new_init", "exec → new init"),
    ("load", "load"),
];

/// The chart's segments for a run without phases.
const TO_FIRST_LINE: &str = "exec → first new-kernel line";
const TO_NEW_INIT: &str = "first line → new init";

/// Lab modes that exist to test failure paths, not to be benchmarked.
fn test_only(name: &str) -> bool {
    name.ends_with("-panic")
        || name.ends_with("-replaced")
        || name.ends_with("-hangup")
        || name.ends_with("-verify")
        || name.ends_with("-mismatch")
}

/// Every benchmarkable lab mode, in the lab's own order.
pub fn default_modes() -> Vec<Mode> {
    Mode::value_variants()
        .iter()
        .copied()
        .filter(|m| !test_only(m.name()))
        .collect()
}

/// A mode by the name the lab's reports and tables use (`kexec-tools-l-i`),
/// or by clap's spelling of the variant (`kexec-tools-li`).
pub fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::value_variants()
        .iter()
        .copied()
        .find(|m| m.name() == s || m.to_possible_value().is_some_and(|v| v.matches(s, false)))
        .ok_or_else(|| {
            let names: Vec<&str> = Mode::value_variants().iter().map(|m| m.name()).collect();
            format!("unknown mode `{s}`; modes: {}", names.join(", "))
        })
}

/// Whether `--trace` applies to a mode: the modes lab/round1.sh can run
/// under `fastkexec trace --exec` (a test keeps the two in step).
pub fn traced(mode: Mode) -> bool {
    matches!(
        mode,
        Mode::FastkexecFile | Mode::FastkexecUncompressed | Mode::FastkexecStaged
    )
}

/// Round-robin order: round 1 of every mode, then round 2, ...
pub fn schedule<T: Copy>(modes: &[T], runs: usize) -> Vec<(usize, T)> {
    (1..=runs)
        .flat_map(|r| modes.iter().map(move |&m| (r, m)))
        .collect()
}

/// One lab run as the bench sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub mode: String,
    /// 1-based round.
    pub round: usize,
    pub ok: bool,
    pub error: Option<String>,
    /// Host wall time of the whole run (boot to power-off), seconds.
    pub wall_s: f64,
    /// The lab's JSON for this run; null when the run could not start.
    pub report: Value,
    #[serde(skip)]
    pub host_ms: BTreeMap<String, f64>,
    /// `report.phases` as (name, ms), in the report's order; a name that
    /// comes more than once (`unattributed` gaps) is summed at its first place.
    #[serde(skip)]
    pub phases_ms: Vec<(String, f64)>,
    #[serde(skip)]
    pub trace_total_ms: Option<f64>,
    /// `report.spans.kexec_to_purgatory_ns` in ms.
    #[serde(skip)]
    pub kexec_to_purgatory_ms: Option<f64>,
}

impl Sample {
    pub fn from_report(round: usize, wall_s: f64, r: &RunReport) -> Result<Self> {
        let v = serde_json::to_value(r).context("serialising the lab report")?;
        Ok(Self::from_value(r.mode.name(), round, wall_s, v))
    }

    /// Reads the figures out of a lab JSON; absent or malformed ones are
    /// simply absent (the run's own `ok` says whether it counts).
    pub fn from_value(mode: &str, round: usize, wall_s: f64, report: Value) -> Self {
        let mut host_ms = BTreeMap::new();
        for (key, _) in HOST_FIGURES {
            if let Some(v) = report
                .pointer(&format!("/host_ms/{key}"))
                .and_then(Value::as_f64)
            {
                host_ms.insert(key.to_string(), v);
            }
        }
        let mut phases_ms: Vec<(String, f64)> = Vec::new();
        let listed = report.pointer("/report/phases").and_then(Value::as_array);
        for p in listed.into_iter().flatten() {
            let (Some(name), Some(ns)) = (
                p.get("name").and_then(Value::as_str),
                p.get("duration_ns").and_then(Value::as_f64),
            ) else {
                continue;
            };
            match phases_ms.iter_mut().find(|(n, _)| n == name) {
                Some((_, ms)) => *ms += ns / 1e6,
                None => phases_ms.push((name.to_string(), ns / 1e6)),
            }
        }
        let trace_total_ms = report
            .pointer("/report/total_ns")
            .and_then(Value::as_f64)
            .map(|ns| ns / 1e6);
        let kexec_to_purgatory_ms = report
            .pointer("/report/spans/kexec_to_purgatory_ns")
            .and_then(Value::as_f64)
            .map(|ns| ns / 1e6);
        Self {
            mode: mode.to_string(),
            round,
            ok: report.get("ok").and_then(Value::as_bool).unwrap_or(false),
            error: report
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string),
            wall_s,
            report,
            host_ms,
            phases_ms,
            trace_total_ms,
            kexec_to_purgatory_ms,
        }
    }

    /// A run that never produced a report (QEMU would not start, ...).
    pub fn failed(mode: &str, round: usize, wall_s: f64, error: String) -> Self {
        Self {
            mode: mode.to_string(),
            round,
            ok: false,
            error: Some(error),
            wall_s,
            report: Value::Null,
            host_ms: BTreeMap::new(),
            phases_ms: vec![],
            trace_total_ms: None,
            kexec_to_purgatory_ms: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Median (mean of the middle two for an even count), min and max; `None`
/// for no values.
pub fn stat(values: &[f64]) -> Option<Stat> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let (&min, &max) = (v.first()?, v.last()?);
    let upper = *v.get(n / 2)?;
    let median = if n % 2 == 1 {
        upper
    } else {
        (*v.get(n / 2 - 1)? + upper) / 2.0
    };
    Some(Stat {
        n,
        median,
        min,
        max,
    })
}

/// `value ÷ baseline`, when both exist and the baseline is not zero.
pub fn ratio(value: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    let (v, b) = (value?, baseline?);
    (b > 0.0 && v.is_finite()).then(|| v / b)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// Key (`host_ms` field or phase name).
    pub name: String,
    pub label: String,
    /// Over the mode's successful runs, in ms.
    pub ms: Option<Stat>,
    /// Median ÷ the baseline mode's median of the same figure.
    pub ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub round: usize,
    pub error: String,
    pub serial_log: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeSummary {
    pub mode: String,
    pub runs: usize,
    pub ok: usize,
    pub failed: usize,
    pub failures: Vec<Failure>,
    pub host_ms: Vec<Figure>,
    /// Empty when no successful run of this mode carried a trace.
    pub phases_ms: Vec<Figure>,
    /// `report.total_ns` of traced runs, in ms.
    pub trace_total_ms: Option<Figure>,
    /// `machine_kexec` → the purgatory's entry of traced runs, in ms.
    pub kexec_to_purgatory_ms: Option<Figure>,
}

impl ModeSummary {
    fn host(&self, key: &str) -> Option<Stat> {
        self.host_ms
            .iter()
            .find(|f| f.name == key)
            .and_then(|f| f.ms)
    }
}

/// Statistics per mode over its successful runs; failed runs are counted
/// and listed with their errors, never folded into the figures.
pub fn summarise(modes: &[String], samples: &[Sample]) -> Vec<ModeSummary> {
    let mut out: Vec<ModeSummary> = modes
        .iter()
        .map(|mode| {
            let all: Vec<&Sample> = samples.iter().filter(|s| &s.mode == mode).collect();
            let good: Vec<&Sample> = all.iter().copied().filter(|s| s.ok).collect();
            let failures = all
                .iter()
                .filter(|s| !s.ok)
                .map(|s| Failure {
                    round: s.round,
                    error: s
                        .error
                        .clone()
                        .unwrap_or_else(|| "round 2 report incomplete or wrong".into()),
                    serial_log: s
                        .report
                        .get("serial_log")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                })
                .collect();
            let host_ms = HOST_FIGURES
                .iter()
                .map(|(key, label)| {
                    let v: Vec<f64> = good
                        .iter()
                        .filter_map(|s| s.host_ms.get(*key).copied())
                        .collect();
                    Figure {
                        name: key.to_string(),
                        label: label.to_string(),
                        ms: stat(&v),
                        ratio: None,
                    }
                })
                .collect();
            let mut names: Vec<&str> = Vec::new();
            for s in &good {
                for (n, _) in &s.phases_ms {
                    if !names.contains(&n.as_str()) {
                        names.push(n);
                    }
                }
            }
            let phases_ms = names
                .iter()
                .map(|name| {
                    // A run without this phase contributes nothing to it.
                    let v: Vec<f64> = good
                        .iter()
                        .flat_map(|s| s.phases_ms.iter().filter(|(n, _)| n == name))
                        .map(|(_, ms)| *ms)
                        .collect();
                    Figure {
                        name: name.to_string(),
                        label: name.to_string(),
                        ms: stat(&v),
                        ratio: None,
                    }
                })
                .collect();
            let totals: Vec<f64> = good.iter().filter_map(|s| s.trace_total_ms).collect();
            let trace_total_ms = stat(&totals).map(|st| Figure {
                name: "total".into(),
                label: "total (trace)".into(),
                ms: Some(st),
                ratio: None,
            });
            let spans: Vec<f64> = good
                .iter()
                .filter_map(|s| s.kexec_to_purgatory_ms)
                .collect();
            let kexec_to_purgatory_ms = stat(&spans).map(|st| Figure {
                name: "kexec_to_purgatory".into(),
                label: "machine_kexec → purgatory entry".into(),
                ms: Some(st),
                ratio: None,
            });
            ModeSummary {
                mode: mode.clone(),
                runs: all.len(),
                ok: good.len(),
                failed: all.len() - good.len(),
                failures,
                host_ms,
                phases_ms,
                trace_total_ms,
                kexec_to_purgatory_ms,
            }
        })
        .collect();
    let base = out.iter().find(|s| s.mode == BASELINE).cloned();
    if let Some(base) = base {
        let median_of = |figs: &[Figure], name: &str| {
            figs.iter()
                .find(|f| f.name == name)
                .and_then(|f| f.ms)
                .map(|s| s.median)
        };
        for s in &mut out {
            for f in &mut s.host_ms {
                f.ratio = ratio(f.ms.map(|m| m.median), median_of(&base.host_ms, &f.name));
            }
            for f in &mut s.phases_ms {
                f.ratio = ratio(f.ms.map(|m| m.median), median_of(&base.phases_ms, &f.name));
            }
            if let Some(f) = &mut s.trace_total_ms {
                let b = base
                    .trace_total_ms
                    .as_ref()
                    .and_then(|t| t.ms)
                    .map(|m| m.median);
                f.ratio = ratio(f.ms.map(|m| m.median), b);
            }
        }
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub host_kernel: String,
    pub qemu_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelFacts {
    pub name: String,
    pub suite: String,
    pub release: String,
    pub version: String,
    pub packages: Vec<String>,
}

/// Everything needed to reproduce and to judge a bench.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub command: String,
    pub date_utc: String,
    pub machine: Machine,
    pub accel: String,
    pub guest_memory: String,
    pub guest_smp: u32,
    /// The lab VM's devices, memory use and initrd size (`lab::Machine::describe`); empty in
    /// benches from before it was recorded (the bare VM).
    #[serde(default)]
    pub guest_vm: String,
    pub kernel: KernelFacts,
    pub modes: Vec<String>,
    pub runs_per_mode: usize,
    pub trace: bool,
}

#[derive(Debug, Serialize)]
pub struct BenchJson<'a> {
    pub schema_version: u32,
    /// False while the bench is still running (the file is rewritten after every run).
    pub complete: bool,
    pub meta: &'a Meta,
    pub summary: Vec<ModeSummary>,
    pub runs: &'a [Sample],
}

/// The `model name` of the first CPU in /proc/cpuinfo text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch.
pub fn utc_date(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days over 400-year eras of 146097 days, with March as the
    // first month so the leap day falls at a year's end.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let qemu = output(
        "qemu-system-x86_64 --version",
        Command::new("qemu-system-x86_64").arg("--version"),
    )
    .ok()
    .and_then(|o| o.lines().next().map(str::to_string))
    .unwrap_or_else(|| "unknown".into());
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
        host_kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        qemu_version: qemu
            .strip_prefix("QEMU emulator version ")
            .unwrap_or(&qemu)
            .to_string(),
    }
}

/// The command as typed, quoted where a word needs it.
fn command_line() -> String {
    let words: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./,=:+@".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect();
    format!("cargo xtask {}", words.join(" "))
}

/// `1h02m`, `3m07s`, `41s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Time left from the mean run time so far; `None` before the first run.
pub fn eta(done: usize, total: usize, spent: Duration) -> Option<Duration> {
    let done32 = u32::try_from(done).ok().filter(|&d| d > 0)?;
    let left = u32::try_from(total.saturating_sub(done)).ok()?;
    Some(spent / done32 * left)
}

/// A figure in ms, with as many decimals as its size deserves.
pub fn ms(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else if v.abs() >= 0.01 {
        format!("{v:.3}")
    } else {
        // Microsecond phases (a staged relocation on an instruction clock)
        // must not print as 0.00.
        format!("{v:.4}")
    }
}

fn cell(f: &Figure) -> String {
    match f.ms {
        None => "–".into(),
        Some(s) => {
            let r = f.ratio.map(|r| format!(" ×{r:.2}")).unwrap_or_default();
            if s.n > 1 {
                format!("{} [{}–{}]{r}", ms(s.median), ms(s.min), ms(s.max))
            } else {
                format!("{}{r}", ms(s.median))
            }
        }
    }
}

/// The markdown report: facts, the host table, the phase table (if any
/// run was traced) and every failure.
pub fn markdown(meta: &Meta, summary: &[ModeSummary]) -> String {
    let mut o = String::new();
    let k = &meta.kernel;
    o.push_str(&format!(
        "### fastkexec bench: kernel {} ({}, {}), {}\n\n",
        k.name,
        k.release,
        k.version,
        meta.accel.to_uppercase()
    ));
    o.push_str(&format!("Command: `{}`\n\n", meta.command));
    o.push_str(&format!(
        "Machine: {} × {}, host kernel {}, QEMU {}, accel {}; guest {} RAM, {} CPUs{}; {}.\n\n",
        meta.machine.nproc,
        meta.machine.cpu_model,
        meta.machine.host_kernel,
        meta.machine.qemu_version,
        meta.accel,
        meta.guest_memory,
        meta.guest_smp,
        if meta.guest_vm.is_empty() {
            String::new()
        } else {
            format!(", {}", meta.guest_vm)
        },
        meta.date_utc
    ));
    o.push_str(&format!(
        "Runs per mode: {}, interleaved. Cells: median [min–max] in ms over the successful runs; \
         ×r = median ÷ the {BASELINE} median (lower is faster).\n\n",
        meta.runs_per_mode
    ));
    if meta.trace {
        let t: Vec<&str> = meta
            .modes
            .iter()
            .map(String::as_str)
            .filter(|m| parse_mode(m).is_ok_and(traced))
            .collect();
        o.push_str(&format!(
            "Traced with `fastkexec trace --exec`: {}.\n\n",
            if t.is_empty() {
                "none of these modes".into()
            } else {
                t.join(", ")
            }
        ));
    }
    o.push_str("| mode | ok/runs |");
    for (_, label) in HOST_FIGURES {
        o.push_str(&format!(" {label} |"));
    }
    o.push_str("\n|---|---|");
    for _ in HOST_FIGURES {
        o.push_str("---|");
    }
    o.push('\n');
    for s in summary {
        o.push_str(&format!("| {} | {}/{} |", s.mode, s.ok, s.runs));
        for f in &s.host_ms {
            o.push_str(&format!(" {} |", cell(f)));
        }
        o.push('\n');
    }
    let traced: Vec<&ModeSummary> = summary.iter().filter(|s| !s.phases_ms.is_empty()).collect();
    if !traced.is_empty() {
        o.push_str("\nPhases (`fastkexec report`), ms:\n\n| phase |");
        for s in &traced {
            o.push_str(&format!(" {} |", s.mode));
        }
        o.push_str("\n|---|");
        for _ in &traced {
            o.push_str("---|");
        }
        o.push('\n');
        let mut names: Vec<&str> = Vec::new();
        for s in &traced {
            for f in &s.phases_ms {
                if !names.contains(&f.name.as_str()) {
                    names.push(&f.name);
                }
            }
        }
        for name in names {
            o.push_str(&format!("| {} |", fastkexec::record::phases::label(name)));
            for s in &traced {
                let c = s
                    .phases_ms
                    .iter()
                    .find(|f| f.name == name)
                    .map(cell)
                    .unwrap_or_else(|| "–".into());
                o.push_str(&format!(" {c} |"));
            }
            o.push('\n');
        }
        // Then the total, and the span the relocation costs at exec (a staged
        // trampoline included).
        type Pick = fn(&ModeSummary) -> Option<&Figure>;
        let rows: [(&str, Pick); 2] = [
            ("**total**", |s| s.trace_total_ms.as_ref()),
            ("machine_kexec → purgatory entry", |s| {
                s.kexec_to_purgatory_ms.as_ref()
            }),
        ];
        for (label, figure) in rows {
            o.push_str(&format!("| {label} |"));
            for s in &traced {
                let c = figure(s).map(cell).unwrap_or_else(|| "–".into());
                o.push_str(&format!(" {c} |"));
            }
            o.push('\n');
        }
    }
    let failures: Vec<(&str, &Failure)> = summary
        .iter()
        .flat_map(|s| s.failures.iter().map(move |f| (s.mode.as_str(), f)))
        .collect();
    if !failures.is_empty() {
        o.push_str("\nFailed runs (not in the figures above):\n\n");
        for (mode, f) in failures {
            o.push_str(&format!("- {mode}, round {}: {}", f.round, f.error));
            if let Some(l) = &f.serial_log {
                o.push_str(&format!(" (serial log `{l}`)"));
            }
            o.push('\n');
        }
    }
    o
}

/// One bar per mode: its phases when traced, else the host stopwatch split
/// at the new kernel's first line. Notes carry the total and its ratio.
pub fn bars(summary: &[ModeSummary]) -> Vec<Bar> {
    let segments = |s: &ModeSummary| -> Vec<(String, f64)> {
        if !s.phases_ms.is_empty() {
            return s
                .phases_ms
                .iter()
                .filter_map(|f| {
                    Some((
                        fastkexec::record::phases::label(&f.name).to_string(),
                        f.ms?.median,
                    ))
                })
                .collect();
        }
        let first = s.host("exec_to_first_new_kernel_line").map(|m| m.median);
        let init = s.host("exec_to_new_init").map(|m| m.median);
        match (first, init) {
            (Some(a), Some(b)) => vec![
                (TO_FIRST_LINE.into(), a),
                (TO_NEW_INIT.into(), (b - a).max(0.0)),
            ],
            (Some(a), None) => vec![(TO_FIRST_LINE.into(), a)],
            (None, Some(b)) => vec![("exec → new init".into(), b)],
            (None, None) => vec![],
        }
    };
    let total = |segs: &[(String, f64)]| segs.iter().map(|(_, v)| v.max(0.0)).sum::<f64>();
    let base_total = summary
        .iter()
        .find(|s| s.mode == BASELINE)
        .map(|s| total(&segments(s)))
        .filter(|t| *t > 0.0);
    summary
        .iter()
        .map(|s| {
            let segs = segments(s);
            let range = if s.phases_ms.is_empty() {
                s.host("exec_to_new_init")
            } else {
                s.trace_total_ms.as_ref().and_then(|f| f.ms)
            }
            .filter(|m| m.n > 1)
            .map(|m| (m.min, m.max));
            let note = if segs.is_empty() {
                format!("no successful run ({} failed)", s.failed)
            } else {
                let t = total(&segs);
                let mut n = format!("{} ms", ms(t));
                if let Some(r) = ratio(Some(t), base_total) {
                    n.push_str(&format!("  ×{r:.2}"));
                }
                if s.failed > 0 {
                    n.push_str(&format!("  ({} failed)", s.failed));
                }
                n
            };
            Bar {
                label: s.mode.clone(),
                segments: segs,
                range,
                note,
            }
        })
        .collect()
}

pub fn chart_of(meta: &Meta, summary: &[ModeSummary]) -> Chart {
    Chart {
        title: format!(
            "fastkexec bench: kernel {} ({}), {}",
            meta.kernel.name,
            meta.kernel.release,
            meta.accel.to_uppercase()
        ),
        subtitle: format!(
            "bars: medians, whiskers: min–max of {} interleaved runs per mode · {} × {} · QEMU {} · {}",
            meta.runs_per_mode,
            meta.machine.nproc,
            meta.machine.cpu_model,
            meta.machine.qemu_version,
            meta.date_utc
        ),
        bars: bars(summary),
    }
}

/// Re-renders the table and the chart from a bench JSON (no lab run).
pub fn render_from(json: &Path, svg: &Path, md: Option<&Path>) -> Result<()> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let doc: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
    let meta: Meta = serde_json::from_value(doc.get("meta").cloned().unwrap_or(Value::Null))
        .with_context(|| format!("{}: `meta` is missing or malformed", json.display()))?;
    let samples: Vec<Sample> = doc
        .get("runs")
        .and_then(Value::as_array)
        .with_context(|| format!("{}: `runs` is missing", json.display()))?
        .iter()
        .map(|r| {
            let mode = r.get("mode").and_then(Value::as_str).unwrap_or_default();
            let round = r.get("round").and_then(Value::as_u64).unwrap_or(0);
            let wall = r.get("wall_s").and_then(Value::as_f64).unwrap_or(0.0);
            let report = r.get("report").cloned().unwrap_or(Value::Null);
            let round = usize::try_from(round).unwrap_or(0);
            match (&report, r.get("error").and_then(Value::as_str)) {
                (Value::Null, e) => Sample::failed(mode, round, wall, e.unwrap_or("").into()),
                _ => Sample::from_value(mode, round, wall, report),
            }
        })
        .collect();
    write_outputs(&meta, &samples, svg, md)
}

/// Writes the chart and the markdown table, and prints the table.
fn write_outputs(meta: &Meta, samples: &[Sample], svg: &Path, md: Option<&Path>) -> Result<()> {
    let summary = summarise(&meta.modes, samples);
    let text = markdown(meta, &summary);
    if let Some(p) = md {
        write_atomic(p, text.as_bytes()).with_context(|| format!("writing {}", p.display()))?;
    }
    let chart = chart::render(&chart_of(meta, &summary))?;
    write_atomic(svg, chart.as_bytes()).with_context(|| format!("writing {}", svg.display()))?;
    println!("{text}");
    println!(
        "bench: chart {}{}",
        svg.display(),
        md.map(|p| format!(", table {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}

pub struct Plan<'a> {
    pub kernel: &'a KernelInfo,
    pub tools: &'a Tools,
    pub accel: &'a str,
    pub modes: Vec<Mode>,
    pub runs: usize,
    pub trace: bool,
    pub json: PathBuf,
    pub svg: PathBuf,
    pub markdown: Option<PathBuf>,
}

fn write_json(path: &Path, meta: &Meta, samples: &[Sample], complete: bool) -> Result<()> {
    let doc = BenchJson {
        schema_version: 1,
        complete,
        meta,
        summary: summarise(&meta.modes, samples),
        runs: samples,
    };
    write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs the bench; `options(mode, trace)` makes one lab run's options.
pub fn run(plan: &Plan, options: &dyn Fn(Mode, bool) -> RunOptions) -> Result<()> {
    if plan.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut modes = plan.modes.clone();
    if modes.is_empty() {
        modes = default_modes();
    }
    let mut seen = Vec::new();
    modes.retain(|m| {
        let new = !seen.contains(m);
        seen.push(*m);
        new
    });
    let names: Vec<String> = modes.iter().map(|m| m.name().to_string()).collect();
    let probe = options(*modes.first().context("no lab mode to bench")?, false);
    let meta = Meta {
        command: command_line(),
        date_utc: utc_date(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        ),
        machine: machine(),
        // Under icount the guest's clock counts instructions: say so wherever
        // the accelerator is named.
        accel: match probe.icount {
            Some(shift) => format!("{}, icount shift={shift}", plan.accel),
            None => plan.accel.to_string(),
        },
        guest_memory: probe.memory.clone(),
        guest_smp: probe.smp,
        guest_vm: probe.machine.describe(),
        kernel: KernelFacts {
            name: plan.kernel.name.clone(),
            suite: plan.kernel.suite.clone(),
            release: plan.kernel.release.clone(),
            version: plan.kernel.version.clone(),
            packages: plan.kernel.packages.clone(),
        },
        modes: names.clone(),
        runs_per_mode: plan.runs,
        trace: plan.trace,
    };

    // Each image is built once and frozen by a hard link: another lab run
    // rebuilding the shared image path meanwhile cannot change what we boot.
    let frozen = lab_dir().join("bench").join(format!(
        "{}-{}",
        plan.kernel.name,
        meta.date_utc.replace(':', "")
    ));
    std::fs::create_dir_all(&frozen).with_context(|| format!("creating {}", frozen.display()))?;
    let mut images = BTreeMap::new();
    for &m in &modes {
        let built = lab::build_images(plan.kernel, m, plan.tools, probe.machine)?;
        let dest = frozen.join(format!("round1-{}.cpio", m.name()));
        if std::fs::hard_link(&built, &dest).is_err() {
            std::fs::copy(&built, &dest)
                .with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
        }
        images.insert(m.name(), dest);
    }

    let order = schedule(&modes, plan.runs);
    let total = order.len();
    let start = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    write_json(&plan.json, &meta, &samples, false)?;
    for (i, &(round, mode)) in order.iter().enumerate() {
        let spent = start.elapsed();
        step(format!(
            "bench {}/{total} · round {round}/{} · {} · elapsed {} · ETA {}",
            i + 1,
            plan.runs,
            mode.name(),
            human(spent),
            eta(i, total, spent)
                .map(human)
                .unwrap_or_else(|| "after the first run".into())
        ));
        let image = images.get(mode.name()).context("bench image missing")?;
        let t0 = Instant::now();
        let result = lab::run_once(
            plan.kernel,
            image,
            plan.accel,
            &options(mode, plan.trace && traced(mode)),
        );
        let wall = t0.elapsed().as_secs_f64();
        let sample = match result {
            Ok(r) => {
                eprintln!("    {}", lab::summary_line(&r));
                Sample::from_report(round, wall, &r)?
            }
            Err(e) => {
                eprintln!("    {} round {round}: run failed: {e:#}", mode.name());
                Sample::failed(mode.name(), round, wall, format!("{e:#}"))
            }
        };
        samples.push(sample);
        write_json(&plan.json, &meta, &samples, false)?;
    }
    step(format!("bench done in {}", human(start.elapsed())));

    // The frozen images are only needed while the bench runs.
    let _ = std::fs::remove_dir_all(&frozen);
    write_json(&plan.json, &meta, &samples, true)?;
    write_outputs(&meta, &samples, &plan.svg, plan.markdown.as_deref())?;
    println!("bench: JSON {}", plan.json.display());
    let summary = summarise(&names, &samples);
    let failed: usize = summary.iter().map(|s| s.failed).sum();
    let empty: Vec<&str> = summary
        .iter()
        .filter(|s| s.ok == 0)
        .map(|s| s.mode.as_str())
        .collect();
    if !empty.is_empty() {
        bail!(
            "no successful run for {} (see the failures above and in {})",
            empty.join(", "),
            plan.json.display()
        );
    }
    if failed > 0 {
        step(format!(
            "warning: {failed} of {total} runs failed; they are listed in the table and the JSON"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> KernelInfo {
        KernelInfo::fixture()
    }

    /// A lab report made the lab's way: serial lines through `lab::analyse`.
    fn report(mode: Mode, load: f64, first: f64, init: f64, initrd_ok: bool) -> RunReport {
        let k = kernel();
        let exec = 1001.0 + load + 10.0;
        let m = mode.name();
        let lines: Vec<(f64, String)> = [
            (1000.0, format!("FKLAB: init round=1 mode={m} uptime=1.0")),
            (1001.0, format!("FKLAB: loading mode={m}")),
            (1001.0 + load, "FKLAB: loaded".into()),
            (exec, "FKLAB: exec".into()),
            (
                exec + first,
                format!("[    0.000000] Linux version {}", k.release),
            ),
            (
                exec + init,
                format!("FKLAB: init round=2 mode={m} uptime=1.0"),
            ),
            (exec + init + 1.0, format!("FKLAB: kernel={}", k.release)),
            (
                exec + init + 2.0,
                "FKLAB: cmdline=console=ttyS0 fklab.round=2".into(),
            ),
            (exec + init + 3.0, "FKLAB: memtotal_kb=1740000".into()),
            (
                exec + init + 4.0,
                format!("FKLAB: initrd={}", if initrd_ok { "ok" } else { "missing" }),
            ),
            (exec + init + 5.0, "FKLAB: done".into()),
        ]
        .into_iter()
        .collect();
        lab::analyse(&k, mode, "tcg", &lines, PathBuf::from(format!("/logs/{m}")))
    }

    fn sample(round: usize, r: &RunReport) -> Sample {
        Sample::from_report(round, 30.0, r).unwrap()
    }

    /// The same run with a `fastkexec report --json` under `report`.
    fn traced_sample(round: usize, r: &RunReport, phases: &[(&str, u64)]) -> Sample {
        let mut v = serde_json::to_value(r).unwrap();
        let list: Vec<Value> = phases
            .iter()
            .scan(0u64, |start, (n, d)| {
                let p = serde_json::json!({"name": n, "start_ns": *start, "duration_ns": d});
                *start += d;
                Some(p)
            })
            .collect();
        let total: u64 = phases.iter().map(|(_, d)| d).sum();
        let reloc: u64 = phases
            .iter()
            .filter(|(n, _)| *n == "relocation")
            .map(|(_, d)| d)
            .sum();
        v["report"] = serde_json::json!({
            "phases": list,
            "total_ns": total,
            "spans": {"kexec_to_purgatory_ns": reloc},
        });
        Sample::from_value(r.mode.name(), round, 30.0, v)
    }

    fn meta(modes: &[Mode]) -> Meta {
        let k = kernel();
        Meta {
            command: "cargo xtask bench --kernel 6.1 --runs 3".into(),
            date_utc: utc_date(1_700_000_000),
            machine: Machine {
                nproc: 2,
                cpu_model: "Test CPU @ 2.0GHz".into(),
                host_kernel: "6.1.0-test".into(),
                qemu_version: "7.2.0".into(),
            },
            accel: "tcg".into(),
            guest_memory: "2G".into(),
            guest_smp: 2,
            guest_vm: lab::Machine::server().describe(),
            kernel: KernelFacts {
                name: k.name,
                suite: k.suite,
                release: k.release,
                version: k.version,
                packages: k.packages,
            },
            modes: modes.iter().map(|m| m.name().to_string()).collect(),
            runs_per_mode: 3,
            trace: false,
        }
    }

    /// kexec-tools-l: 3 good runs; fastkexec-uncompressed: 2 good, one with
    /// a missing initrd, one that never started.
    fn fixture() -> (Vec<String>, Vec<Sample>) {
        let kt = Mode::KexecToolsL;
        let fu = Mode::FastkexecUncompressed;
        let samples = vec![
            sample(1, &report(kt, 600.0, 3000.0, 8000.0, true)),
            sample(1, &report(fu, 40.0, 300.0, 5000.0, true)),
            sample(2, &report(kt, 700.0, 3400.0, 8600.0, true)),
            sample(2, &report(fu, 50.0, 340.0, 5200.0, true)),
            sample(3, &report(kt, 650.0, 3200.0, 8200.0, true)),
            sample(3, &report(fu, 45.0, 320.0, 5100.0, false)),
            Sample::failed(fu.name(), 4, 0.5, "starting qemu: not found".into()),
        ];
        (vec![kt.name().into(), fu.name().into()], samples)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn stat_median_odd_even_min_max() {
        let s = stat(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 2.0, 1.0, 3.0));
        let s = stat(&[4.0, 1.0, 10.0, 2.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (4, 3.0, 1.0, 10.0));
        let s = stat(&[7.5]).unwrap();
        assert_eq!((s.median, s.min, s.max), (7.5, 7.5, 7.5));
        assert_eq!(stat(&[]), None);
        assert_eq!(stat(&[f64::NAN, 2.0]).map(|s| s.n), Some(1));
    }

    #[test]
    fn ratio_against_baseline() {
        assert_eq!(ratio(Some(50.0), Some(200.0)), Some(0.25));
        assert_eq!(ratio(Some(50.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
    }

    #[test]
    fn modes_parse_by_their_report_names() {
        for &m in Mode::value_variants() {
            assert_eq!(parse_mode(m.name()), Ok(m));
        }
        assert_eq!(parse_mode("kexec-tools-l-i"), Ok(Mode::KexecToolsLI));
        assert!(parse_mode("kexec-tools-x")
            .unwrap_err()
            .contains("kexec-tools-l-i"));
    }

    #[test]
    fn traced_modes_are_those_round1_can_trace() {
        let script = include_str!("../lab/round1.sh");
        let block = script
            .split_once("fklab.trace")
            .and_then(|(_, rest)| rest.split_once("esac"))
            .map(|(block, _)| block)
            .expect("round1.sh has a trace case block");
        let in_script: Vec<&str> = block
            .lines()
            .filter_map(|l| l.trim().split_once(')').map(|(label, _)| label.trim()))
            .filter(|label| *label != "*")
            .collect();
        assert!(!in_script.is_empty(), "{block}");
        for &m in Mode::value_variants() {
            assert_eq!(
                traced(m),
                in_script.contains(&m.name()),
                "{}: bench::traced and round1.sh's trace modes disagree",
                m.name()
            );
        }
    }

    #[test]
    fn schedule_is_round_robin() {
        assert_eq!(
            schedule(&['a', 'b', 'c'], 2),
            vec![(1, 'a'), (1, 'b'), (1, 'c'), (2, 'a'), (2, 'b'), (2, 'c')]
        );
        assert!(schedule(&['a'], 0).is_empty());
    }

    #[test]
    fn default_modes_are_the_lab_modes_without_test_only_ones() {
        let names: Vec<&str> = default_modes().iter().map(|m| m.name()).collect();
        for m in [
            "kexec-tools-l",
            "kexec-tools-l-i",
            "kexec-tools-s",
            "fastkexec-file",
            "fastkexec-uncompressed",
        ] {
            assert!(names.contains(&m), "{m} missing from {names:?}");
        }
        assert_eq!(names.first(), Some(&BASELINE));
        assert!(names.iter().all(|n| !test_only(n)));
        assert!(test_only("fastkexec-staged-panic") && test_only("fastkexec-staged-replaced"));
        assert!(test_only("fastkexec-hangup"));
        assert!(!test_only("fastkexec-staged"));
    }

    #[test]
    fn summary_counts_failures_and_takes_ratios() {
        let (modes, samples) = fixture();
        let s = summarise(&modes, &samples);
        assert_eq!(s.len(), 2);
        let (kt, fu) = (&s[0], &s[1]);
        assert_eq!((kt.runs, kt.ok, kt.failed), (3, 3, 0));
        assert_eq!((fu.runs, fu.ok, fu.failed), (4, 2, 2));
        let first = kt.host("exec_to_first_new_kernel_line").unwrap();
        assert!(
            close(first.median, 3200.0) && close(first.min, 3000.0) && close(first.max, 3400.0)
        );
        let load = kt.host("load").unwrap();
        assert!(close(load.median, 650.0));
        // Failed runs stay out of the figures: the failed run's 320 ms is not
        // the maximum, the two good runs' mean is the median.
        let f = fu.host("exec_to_first_new_kernel_line").unwrap();
        assert_eq!(f.n, 2);
        assert!(close(f.median, 320.0) && close(f.max, 340.0));
        let r = fu.host_ms[0].ratio.unwrap();
        assert!(close(r, 320.0 / 3200.0), "{r}");
        assert!(close(kt.host_ms[1].ratio.unwrap(), 1.0));
        let rounds: Vec<usize> = fu.failures.iter().map(|f| f.round).collect();
        assert_eq!(rounds, vec![3, 4]);
        assert_eq!(
            fu.failures[0].serial_log.as_deref(),
            Some("/logs/fastkexec-uncompressed")
        );
        assert_eq!(fu.failures[1].error, "starting qemu: not found");
        assert!(kt.phases_ms.is_empty() && kt.trace_total_ms.is_none());
    }

    #[test]
    fn phases_are_summarised_per_phase() {
        let fu = Mode::FastkexecUncompressed;
        let phases = |d: u64| {
            vec![
                ("device_shutdown", 5_000_000 + d),
                ("unattributed", 500_000),
                ("relocation", 1_000_000),
                ("unattributed", 250_000 + d),
                ("kernel_init", 300_000_000 + 2 * d),
            ]
        };
        let samples = vec![
            traced_sample(1, &report(fu, 40.0, 300.0, 5000.0, true), &phases(0)),
            traced_sample(
                2,
                &report(fu, 40.0, 300.0, 5000.0, true),
                &phases(2_000_000),
            ),
            traced_sample(
                3,
                &report(fu, 40.0, 300.0, 5000.0, true),
                &phases(1_000_000),
            ),
        ];
        // The two gaps of one run are one figure of that run.
        assert_eq!(samples[0].phases_ms.len(), 4);
        let s = summarise(&[fu.name().into()], &samples);
        let names: Vec<&str> = s[0].phases_ms.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "device_shutdown",
                "unattributed",
                "relocation",
                "kernel_init"
            ]
        );
        let dev = s[0].phases_ms[0].ms.unwrap();
        assert!(close(dev.median, 6.0) && close(dev.min, 5.0) && close(dev.max, 7.0));
        let gaps = s[0].phases_ms[1].ms.unwrap();
        assert_eq!(gaps.n, 3);
        assert!(close(gaps.median, 1.75) && close(gaps.min, 0.75) && close(gaps.max, 2.75));
        let total = s[0].trace_total_ms.as_ref().unwrap().ms.unwrap();
        // The middle run (d = 1 ms) has the median total.
        assert!(close(total.median, 6.0 + 0.5 + 1.0 + 1.25 + 302.0));
        // Host figures are still there alongside the phases.
        assert!(s[0].host("exec_to_new_init").is_some());
        // The chart stacks the phases (under their labels), not the host figures.
        let b = bars(&s);
        let seg: Vec<&str> = b[0].segments.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            seg,
            [
                "device shutdown",
                "unattributed",
                "relocation",
                "kernel_init"
            ]
        );
        let (lo, hi) = b[0].range.unwrap();
        assert!(close(lo, 306.75) && close(hi, 314.75), "{lo} {hi}");
    }

    #[test]
    fn markdown_table_from_reports() {
        let (modes, samples) = fixture();
        let m = meta(&[Mode::KexecToolsL, Mode::FastkexecUncompressed]);
        let md = markdown(&m, &summarise(&modes, &samples));
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows.len(), 3, "{md}");
        assert!(rows[0].contains("exec → first new-kernel line") && rows[0].contains("load"));
        assert!(
            rows[1].starts_with(
                "| kexec-tools-l | 3/3 | 3200 [3000–3400] ×1.00 | 8200 [8000–8600] ×1.00 |"
            ),
            "{}",
            rows[1]
        );
        assert!(
            rows[2].starts_with("| fastkexec-uncompressed | 2/4 | 320 [300–340] ×0.10 |"),
            "{}",
            rows[2]
        );
        assert!(md.contains("- fastkexec-uncompressed, round 3: "), "{md}");
        assert!(md.contains("round 4: starting qemu: not found"), "{md}");
        assert!(md.contains(&m.command) && md.contains("Test CPU @ 2.0GHz"));
        assert!(!md.contains("Phases"), "no traced run, no phase table");
    }

    #[test]
    fn markdown_phase_table_when_traced() {
        let fu = Mode::FastkexecUncompressed;
        let kt = Mode::KexecToolsL;
        let samples = vec![
            sample(1, &report(kt, 600.0, 3000.0, 8000.0, true)),
            traced_sample(
                1,
                &report(fu, 40.0, 300.0, 5000.0, true),
                &[("device_shutdown", 6_000_000), ("relocation", 250_000)],
            ),
        ];
        let m = Meta {
            trace: true,
            ..meta(&[kt, fu])
        };
        let md = markdown(&m, &summarise(&m.modes, &samples));
        assert!(md.contains("Traced with `fastkexec trace --exec`: fastkexec-uncompressed."));
        assert!(md.contains("| phase | fastkexec-uncompressed |"), "{md}");
        // The report's machine names, under their labels for people.
        assert!(md.contains("| device shutdown | 6.0 |"), "{md}");
        assert!(md.contains("| relocation | 0.25 |"), "{md}");
        assert!(md.contains("| **total** | 6.2 |"), "{md}");
        assert!(
            md.contains("| machine_kexec → purgatory entry | 0.25 |"),
            "{md}"
        );
    }

    #[test]
    fn host_bars_split_at_the_first_line() {
        let (modes, samples) = fixture();
        let s = summarise(&modes, &samples);
        let b = bars(&s);
        assert_eq!(b.len(), 2);
        let first = s[0].host("exec_to_first_new_kernel_line").unwrap().median;
        let init = s[0].host("exec_to_new_init").unwrap().median;
        assert_eq!(b[0].segments.len(), 2);
        assert!(close(b[0].segments[0].1, first));
        assert!(close(b[0].segments[0].1 + b[0].segments[1].1, init));
        assert!(b[0].note.contains("×1.00"));
        let spread = s[0].host("exec_to_new_init").unwrap();
        assert_eq!(b[0].range, Some((spread.min, spread.max)));
        assert!(b[1].note.contains("(2 failed)"), "{}", b[1].note);
    }

    #[test]
    fn svg_is_xml_with_one_bar_per_mode() {
        let (modes, samples) = fixture();
        let m = meta(&[Mode::KexecToolsL, Mode::FastkexecUncompressed]);
        let summary = summarise(&modes, &samples);
        let svg = chart::render(&chart_of(&m, &summary)).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let groups = crate::chart::tests::bar_groups(&doc, summary.len());
        assert_eq!(groups.len(), modes.len());
        let texts: String = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        for mode in &modes {
            assert!(texts.contains(mode.as_str()), "{mode} not labelled");
        }
    }

    #[test]
    fn json_carries_everything_to_render_again() {
        let (modes, samples) = fixture();
        let m = meta(&[Mode::KexecToolsL, Mode::FastkexecUncompressed]);
        assert_eq!(m.modes, modes);
        let dir = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        let (json, svg, md) = (dir.join("b.json"), dir.join("b.svg"), dir.join("b.md"));
        write_json(&json, &m, &samples, true).unwrap();
        render_from(&json, &svg, Some(&md)).unwrap();
        let again = std::fs::read_to_string(&md).unwrap();
        let svg_text = std::fs::read_to_string(&svg).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(again, markdown(&m, &summarise(&modes, &samples)));
        assert!(roxmltree::Document::parse(&svg_text).is_ok());
    }

    #[test]
    fn facts() {
        assert_eq!(utc_date(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_date(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14T22:13:20Z");
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nflags\t\t: fpu\n";
        assert_eq!(
            cpu_model(info).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(cpu_model("processor : 0\n"), None);
    }

    #[test]
    fn progress_figures() {
        assert_eq!(eta(0, 10, Duration::from_secs(5)), None);
        assert_eq!(
            eta(2, 10, Duration::from_secs(20)),
            Some(Duration::from_secs(80))
        );
        assert_eq!(eta(10, 10, Duration::from_secs(20)), Some(Duration::ZERO));
        assert_eq!(human(Duration::from_secs(41)), "41s");
        assert_eq!(human(Duration::from_secs(187)), "3m07s");
        assert_eq!(human(Duration::from_secs(3720)), "1h02m");
        assert_eq!(
            (ms(3775.4), ms(31.94), ms(0.254)),
            ("3775".into(), "31.9".into(), "0.25".into())
        );
        assert_eq!((ms(0.0441), ms(0.0042)), ("0.044".into(), "0.0042".into()));
    }
}
