//! `cargo xtask bench --system debian`: the clean reboot of the Debian system image under
//! systemd, per loader, interleaved (round 1 of every mode, then round 2, ...). Figures are
//! the host's stopwatch over serial lines: `systemctl kexec` → the new boot's default target
//! reached (the blackout as systemd sees it), and exec → the new kernel's first line.

use crate::bench::{ms, ratio, schedule, stat, Stat};
use crate::kernels::KernelInfo;
use crate::lab::Mode;
use crate::labsystem::{self, SystemOptions, SystemReport};
use crate::system::Image;
use crate::util::{step, write_atomic};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// The modes a system bench compares (kexec-tools first: the ratios' baseline).
pub const MODES: &[Mode] = &[
    Mode::KexecToolsL,
    Mode::FastkexecUncompressed,
    Mode::FastkexecStaged,
];

/// The figures, as (key, label).
pub const FIGURES: &[(&str, &str)] = &[
    (
        "exec_to_default_target_ms",
        "systemctl kexec → default target reached",
    ),
    (
        "exec_to_starting_new_kernel_ms",
        "systemctl kexec → old kernel's `Starting new kernel`",
    ),
    (
        "exec_to_first_new_kernel_line_ms",
        "exec → first new-kernel line",
    ),
];

#[derive(Debug, Serialize)]
pub struct Run {
    pub mode: Mode,
    pub round: usize,
    pub ok: bool,
    pub wall_s: f64,
    pub report: Option<SystemReport>,
    pub error: Option<String>,
}

impl Run {
    fn figure(&self, key: &str) -> Option<f64> {
        let rb = self.report.as_ref()?.reboots.first()?;
        match key {
            "exec_to_default_target_ms" => rb.exec_to_default_target_ms,
            "exec_to_starting_new_kernel_ms" => rb.exec_to_starting_new_kernel_ms,
            "exec_to_first_new_kernel_line_ms" => rb.exec_to_first_new_kernel_line_ms,
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub key: String,
    pub ms: Option<Stat>,
    /// Median ÷ kexec-tools-l's median.
    pub ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub mode: Mode,
    pub ok_runs: usize,
    pub runs: usize,
    pub cells: Vec<Cell>,
}

/// Medians (with min and max) over each mode's successful runs, and ratios to the first mode.
pub fn summarise(modes: &[Mode], runs: &[Run]) -> Vec<Row> {
    let stats = |m: Mode, key: &str| {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.mode == m && r.ok)
            .filter_map(|r| r.figure(key))
            .collect();
        stat(&v)
    };
    modes
        .iter()
        .map(|&m| Row {
            mode: m,
            ok_runs: runs.iter().filter(|r| r.mode == m && r.ok).count(),
            runs: runs.iter().filter(|r| r.mode == m).count(),
            cells: FIGURES
                .iter()
                .map(|(key, _)| {
                    let s = stats(m, key);
                    let base = modes.first().and_then(|&b| stats(b, key));
                    Cell {
                        key: key.to_string(),
                        ratio: ratio(s.map(|s| s.median), base.map(|s| s.median)),
                        ms: s,
                    }
                })
                .collect(),
        })
        .collect()
}

pub fn markdown(kernel: &KernelInfo, accel: &str, rows: &[Row]) -> String {
    let mut o = format!(
        "### fastkexec bench: Debian trixie under systemd, kernel {} ({}), accel {accel}\n\n\
         Host stopwatch over serial lines (ms): median [min–max] of the successful interleaved \
         runs, ×r = median ÷ the kexec-tools-l median. The clean path each time: \
         `systemctl kexec` (fastkexec: `fastkexec exec`, which runs it).\n\n| mode | ok |",
        kernel.name, kernel.release
    );
    for (_, label) in FIGURES {
        o.push_str(&format!(" {label} |"));
    }
    o.push_str("\n|---|---|");
    for _ in FIGURES {
        o.push_str("---|");
    }
    o.push('\n');
    for r in rows {
        o.push_str(&format!("| {} | {}/{} |", r.mode.name(), r.ok_runs, r.runs));
        for c in &r.cells {
            let cell = match c.ms {
                None => "–".to_string(),
                Some(s) => {
                    let x = c.ratio.map(|r| format!(" ×{r:.2}")).unwrap_or_default();
                    format!("{} [{}–{}]{x}", ms(s.median), ms(s.min), ms(s.max))
                }
            };
            o.push_str(&format!(" {cell} |"));
        }
        o.push('\n');
    }
    o
}

#[derive(Serialize)]
struct Doc<'a> {
    schema_version: u32,
    system: &'static str,
    kernel: crate::lab::KernelRef,
    accel: &'a str,
    complete: bool,
    summary: Vec<Row>,
    runs: &'a [Run],
}

/// Runs every mode `runs` times, round-robin, writing the JSON after each run.
#[allow(clippy::too_many_arguments)]
pub fn run(
    kernel: &KernelInfo,
    image: &Image,
    accel: &str,
    modes: &[Mode],
    runs: usize,
    options: &dyn Fn(Vec<Mode>) -> SystemOptions,
    json: &Path,
    markdown_out: Option<&Path>,
) -> Result<()> {
    for m in modes {
        if !MODES.contains(m) {
            bail!(
                "bench --system takes the modes {}, not {}",
                MODES
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                m.name()
            );
        }
    }
    let plan = schedule(modes, runs);
    let mut done: Vec<Run> = Vec::new();
    for (i, (round, mode)) in plan.iter().enumerate() {
        step(format!(
            "bench --system debian: run {}/{} ({}, round {round})",
            i + 1,
            plan.len(),
            mode.name()
        ));
        let t = Instant::now();
        let opts = options(vec![*mode]);
        let (report, error) = match labsystem::run(kernel, image, accel, &opts) {
            Ok(r) => {
                let e = (!r.ok).then(|| r.problems.join("; "));
                (Some(r), e)
            }
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        let run = Run {
            mode: *mode,
            round: *round,
            ok: error.is_none(),
            wall_s: t.elapsed().as_secs_f64(),
            report,
            error,
        };
        if let Some(r) = &run.report {
            println!("{}", labsystem::summary_line(r));
        }
        done.push(run);
        let doc = Doc {
            schema_version: 1,
            system: "debian",
            kernel: crate::lab::kernel_ref(kernel),
            accel,
            complete: i + 1 == plan.len(),
            summary: summarise(modes, &done),
            runs: &done,
        };
        write_atomic(json, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    let md = markdown(kernel, accel, &summarise(modes, &done));
    print!("{md}");
    if let Some(p) = markdown_out {
        write_atomic(p, md.as_bytes())?;
    }
    if done.iter().any(|r| !r.ok) {
        bail!(
            "{} of {} system runs failed (see {})",
            done.iter().filter(|r| !r.ok).count(),
            done.len(),
            json.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labsystem::{Reboot, Scenario};

    fn run(mode: Mode, ok: bool, default_target: f64) -> Run {
        let report = SystemReport {
            schema_version: 1,
            system: "debian",
            scenario: Scenario::Clean,
            modes: vec![mode],
            kernel: crate::lab::KernelRef {
                name: "6.12".into(),
                suite: "trixie".into(),
                packages: vec![],
                version: "1".into(),
                release: "r".into(),
                compression: "zstd".into(),
            },
            accel: "tcg".into(),
            image: "x".into(),
            qemu: vec![],
            ok,
            problems: vec![],
            rounds: vec![],
            reboots: vec![Reboot {
                mode,
                from_round: 1,
                exec_ms: Some(0.0),
                starting_new_kernel_ms: None,
                first_new_kernel_line_ms: None,
                default_target_ms: Some(default_target),
                exec_to_default_target_ms: Some(default_target),
                exec_to_first_new_kernel_line_ms: None,
                exec_to_starting_new_kernel_ms: None,
            }],
            serial_log: "s".into(),
            tail: vec![],
        };
        Run {
            mode,
            round: 1,
            ok,
            wall_s: 1.0,
            report: Some(report),
            error: None,
        }
    }

    #[test]
    fn medians_of_successful_runs_and_ratios_to_kexec_tools() {
        let runs = [
            run(Mode::KexecToolsL, true, 60_000.0),
            run(Mode::KexecToolsL, true, 64_000.0),
            run(Mode::KexecToolsL, true, 62_000.0),
            run(Mode::FastkexecStaged, true, 30_000.0),
            run(Mode::FastkexecStaged, false, 1.0),
            run(Mode::FastkexecStaged, true, 32_000.0),
        ];
        let rows = summarise(&[Mode::KexecToolsL, Mode::FastkexecStaged], &runs);
        let c = &rows[0].cells[0];
        assert_eq!(c.ms.map(|s| s.median), Some(62_000.0));
        assert_eq!(c.ratio, Some(1.0));
        let c = &rows[1].cells[0];
        assert_eq!(rows[1].ok_runs, 2);
        assert_eq!(c.ms.map(|s| (s.min, s.max)), Some((30_000.0, 32_000.0)));
        assert_eq!(c.ratio, Some(31_000.0 / 62_000.0));
        let md = markdown(
            &crate::kernels::KernelInfo {
                name: "6.12".into(),
                suite: "trixie".into(),
                packages: vec![],
                version: "1".into(),
                release: "r".into(),
                vmlinuz: "v".into(),
                vmlinux: "v".into(),
                config: None,
                modules: None,
                compression: "zstd".into(),
                vmlinuz_bytes: 0,
                vmlinux_bytes: 0,
            },
            "tcg",
            &rows,
        );
        assert!(
            md.contains("| fastkexec-staged | 2/3 | 31000 [30000–32000] ×0.50 |"),
            "{md}"
        );
    }
}
