//! `cargo xtask test`: everything CI runs — setup, formatting, lints, unit
//! tests, then real kexec round trips in the QEMU lab.

use crate::lab::{self, Mode};
use crate::labsystem::Scenario;
use crate::labtrace::Damage;
use crate::util::{run, step, workspace_root};
use crate::{fresh, fuzz, initramfs, kernels, labsystem, setup, system};
use anyhow::{bail, Result};
use std::process::Command;
use std::time::Duration;

/// One lab run of the test suite.
struct Case {
    mode: Mode,
    trace: bool,
    damage: Option<Damage>,
    /// Chained kexec reboots in one VM (1: the classic two rounds).
    reboots: u32,
    /// On QEMU's instruction clock (`--accel tcg --smp 1 --icount 0`).
    icount: bool,
}

impl Case {
    fn new(mode: Mode) -> Case {
        Case {
            mode,
            trace: false,
            damage: None,
            reboots: 1,
            icount: false,
        }
    }
}

/// The kernel the one-off cases run on (the README's first command boots it too): `--verify`
/// booting, a wrong verify checksum stopping in the purgatory, and a traced staged run on the
/// instruction clock (machine_kexec → purgatory under 1 ms).
pub const ONE_OFF_KERNEL: &str = "6.12";

/// What each kernel is tested with: every mode in LAB_MODES, a traced
/// uncompressed and a traced staged run, and one damaged handoff record (torn on 6.1, stale
/// elsewhere), which round 2 must refuse. On 6.1 also three chained traced
/// reboots, whose histograms must export with `_count` 3 per phase and pass
/// promtool (issue 6's acceptance), and `load` and `exec` with their terminal hung up
/// mid-way (issue 17's acceptance; Debian 12's kernel, where it was reported).
fn cases(kernel: &str) -> Vec<Case> {
    let mut v: Vec<Case> = LAB_MODES.iter().map(|&mode| Case::new(mode)).collect();
    for mode in [Mode::FastkexecUncompressed, Mode::FastkexecStaged] {
        v.push(Case {
            trace: true,
            ..Case::new(mode)
        });
    }
    v.push(Case {
        trace: true,
        damage: Some(if kernel == "6.1" {
            Damage::HeaderByte
        } else {
            Damage::OtherBoot
        }),
        ..Case::new(Mode::FastkexecUncompressed)
    });
    if kernel == "6.1" {
        v.push(Case {
            trace: true,
            reboots: 3,
            ..Case::new(Mode::FastkexecUncompressed)
        });
        v.push(Case::new(Mode::FastkexecHangup));
    }
    if kernel == ONE_OFF_KERNEL {
        v.push(Case::new(Mode::FastkexecUncompressedVerify));
        v.push(Case::new(Mode::FastkexecVerifyMismatch));
        v.push(Case {
            trace: true,
            icount: true,
            ..Case::new(Mode::FastkexecStaged)
        });
    }
    v
}

/// The lab runs' verdicts: each printed as it ends, all repeated at the end as PASS/FAIL lines.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    lines: Vec<String>,
}

impl Tally {
    fn add(&mut self, line: String, ok: bool, tail: &[String], serial_log: &std::path::Path) {
        println!("{line}");
        if ok {
            self.passed += 1;
            self.lines.push(format!("PASS {line}"));
        } else {
            self.failed += 1;
            for t in tail {
                println!("    | {t}");
            }
            self.lines
                .push(format!("FAIL {line} (serial log {})", serial_log.display()));
        }
    }
}

/// Why a failed run looks like the lab's known TCG flake rather than a
/// result: the first boot never reached /init, or a kernel oopsed on int3.
fn tcg_flake(r: &lab::RunReport) -> Option<&'static str> {
    if r.ok {
        return None;
    }
    if r.marks_ms.init.is_none() {
        return Some("the first boot never reached /init");
    }
    let log = std::fs::read_to_string(&r.serial_log).unwrap_or_default();
    log.contains("Oops: int3")
        .then_some("a kernel oopsed on int3 while patching its text (TCG)")
}

/// The kernel the Debian system scenarios run on, and which ones (issue 15: scenario 1 in one
/// mode, 3 and 4; issue 16: slow-units, the unit levels against their known answers; the rest
/// by `lab run --system debian`).
pub const SYSTEM_KERNEL: &str = "6.12";
pub const SYSTEM_SCENARIOS: &[Scenario] = &[
    Scenario::Clean,
    Scenario::Follow,
    Scenario::ReportUnit,
    Scenario::SlowUnits,
];

/// Modes every lab kernel is tested with.
pub const LAB_MODES: &[Mode] = &[
    Mode::KexecToolsL,
    Mode::FastkexecFile,
    Mode::FastkexecUncompressed,
    Mode::FastkexecStaged,
    Mode::FastkexecStagedPanic,
    Mode::FastkexecStagedReplaced,
];

fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(workspace_root()).args(args);
    c
}

pub fn run_all(kernel_names: &[String], with_lab: bool) -> Result<()> {
    fresh::xtask_builds_without_bpf_linker()?;
    setup::setup(&setup::SetupOptions {
        kernels: if with_lab {
            kernel_names.to_vec()
        } else {
            vec![]
        },
        refresh_kernels: false,
    })?;
    step("cargo fmt --check");
    run("cargo fmt", &mut cargo(&["fmt", "--all", "--", "--check"]))?;
    step("cargo clippy -D warnings");
    run(
        "cargo clippy",
        &mut cargo(&["clippy", "--all-targets", "--", "-D", "warnings"]),
    )?;
    step("cargo test (unit tests)");
    run("cargo test", &mut cargo(&["test"]))?;
    step(format!(
        "fuzzers: {} targets, {} s each",
        fuzz::TARGETS.len(),
        fuzz::TEST_SECONDS_PER_TARGET
    ));
    fuzz::run_all(Duration::from_secs(fuzz::TEST_SECONDS_PER_TARGET))?;
    if !with_lab {
        return Ok(());
    }
    let tools = initramfs::Tools::find(lab::build_static_fastkexec()?)?;
    let mut tally = Tally::default();
    for name in kernel_names {
        let kernel = kernels::ensure(name, false)?;
        let auto = lab::resolve_accel(lab::Accel::Auto, &kernel, &tools)?;
        for case in cases(name) {
            let mode = case.mode;
            // The instruction clock runs on TCG with one vCPU only (lab::RunOptions::check_icount),
            // and slower: a longer timeout.
            let (accel, smp, secs) = if case.icount {
                ("tcg".to_string(), 1, 600)
            } else {
                (auto.clone(), 2, 300)
            };
            let opts = lab::RunOptions {
                trace: case.trace,
                trace_damage: case.damage,
                reboots: case.reboots,
                // A kexec-tools reboot leaves no record: the boot-time unit must still end
                // well and publish a valid textfile.
                unit: case.mode == Mode::KexecToolsL,
                icount: case.icount.then_some(0),
                ..lab::RunOptions::new(
                    mode,
                    Duration::from_secs(secs * u64::from(case.reboots)),
                    "2G",
                    smp,
                )
            };
            let initrd = if opts.chained() {
                lab::build_chain_image(&kernel, mode, &tools)?
            } else {
                lab::build_images(&kernel, mode, &tools, opts.machine)?
            };
            let mut r = lab::run_once(&kernel, &initrd, &accel, &opts)?;
            if let Some(why) = tcg_flake(&r) {
                // Seen in TCG under host load: the kernel oopses on an int3 while
                // patching its own text (cross-modifying code between vCPUs), in a
                // cold boot or a new kernel alike; not what this run tests. One
                // retry, announced, never hidden.
                println!(
                    "RETRY {}: {why} ({}); retrying once",
                    lab::summary_line(&r),
                    r.serial_log.display()
                );
                r = lab::run_once(&kernel, &initrd, &accel, &opts)?;
            }
            // `ok` covers a traced run's agreement with the host stopwatch too (the total
            // and the phase boundaries the serial log places: labtrace::TraceCheck::ok).
            tally.add(lab::summary_line(&r), r.ok, &r.tail, &r.serial_log);
        }
    }
    if kernel_names.iter().any(|k| k == SYSTEM_KERNEL) {
        // The Debian system image under systemd (issue 15): the clean path, follow mode, the
        // boot-time unit with node_exporter, and the slow units (issue 16), on one kernel.
        let all = kernels::KERNELS
            .iter()
            .map(|s| kernels::ensure(s.name, false))
            .collect::<Result<Vec<_>>>()?;
        let image = system::ensure_image(&all, &lab::static_fastkexec())?;
        let kernel = kernels::ensure(SYSTEM_KERNEL, false)?;
        let accel = lab::resolve_accel(lab::Accel::Auto, &kernel, &tools)?;
        for scenario in SYSTEM_SCENARIOS {
            let modes = scenario.modes(&[])?;
            let opts = labsystem::SystemOptions {
                timeout: Duration::from_secs(600 * (modes.len() as u64 + 1)),
                scenario: *scenario,
                modes,
                memory: "2G".into(),
                smp: 2,
                append: vec![],
            };
            let r = labsystem::run(&kernel, &image, &accel, &opts)?;
            tally.add(labsystem::summary_line(&r), r.ok, &r.tail, &r.serial_log);
        }
    }
    for l in &tally.lines {
        println!("{l}");
    }
    let Tally { passed, failed, .. } = tally;
    println!("lab: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} lab run(s) failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_off_cases_run_once_on_one_kernel() {
        let count = |k: &str, f: &dyn Fn(&Case) -> bool| cases(k).iter().filter(|c| f(c)).count();
        for k in ["6.1", "6.12", "7.x"] {
            let one = usize::from(k == ONE_OFF_KERNEL);
            assert_eq!(
                count(k, &|c| c.mode == Mode::FastkexecUncompressedVerify),
                one
            );
            assert_eq!(count(k, &|c| c.mode == Mode::FastkexecVerifyMismatch), one);
            assert_eq!(
                count(k, &|c| c.icount
                    && c.trace
                    && c.mode == Mode::FastkexecStaged),
                one
            );
        }
    }
}
