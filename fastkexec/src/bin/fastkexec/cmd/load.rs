//! `fastkexec load`: load the next kernel (also the options `trace` loads with).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::{LoadArgs, ModeArg};
use crate::out;
use fastkexec::ops::exec;
use fastkexec::ops::load::{self, CmdlineSource, LoadOptions, LoadReport, Mode, Timing};

pub fn run(args: LoadArgs, root: &Path) -> Result<()> {
    if root != Path::new("/") && !args.dry_run {
        // The plan would come from another machine's memory map: never hand that to the kernel.
        anyhow::bail!("--root only works with --dry-run (a real load must describe this machine)");
    }
    if !args.dry_run {
        exec::ignore_hangup();
    }
    let started = since_exec();
    let opts = load_options(&args, root);
    let mut report =
        load::load(&opts).with_context(|| format!("cannot load {}", opts.kernel.display()))?;
    if let Some(d) = started {
        add_process_start(&mut report, d);
    }
    if args.json {
        out::json(&report)
    } else {
        out::text(format_args!("{report}"));
        Ok(())
    }
}

/// `load`'s options from its arguments (also `trace`'s).
pub fn load_options(args: &LoadArgs, root: &Path) -> LoadOptions {
    LoadOptions {
        kernel: args.kernel(),
        initrd: args.initrd.clone(),
        cmdline: if args.reuse_cmdline {
            CmdlineSource::ReuseCmdline {
                append: args.append(),
            }
        } else {
            CmdlineSource::Append(args.append().unwrap_or_default())
        },
        mode: match args.mode {
            ModeArg::Auto => Mode::Auto,
            ModeArg::File => Mode::File,
            ModeArg::Uncompressed => Mode::Uncompressed,
            ModeArg::Staged => Mode::Staged,
        },
        dry_run: args.dry_run,
        verify: args.verify,
        verify_wrong_sum_for_test: args.test_wrong_verify_sum,
        cache_dir: args.cache_dir.clone(),
        root: root.to_path_buf(),
    }
}

/// The process's own start (the kernel's exec of this binary, the runtime, parsing the command
/// line; to the 10 ms tick, see [`since_exec`]) leads the breakdown and counts in `total`: it is
/// part of what a caller waits for.
fn add_process_start(report: &mut LoadReport, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    report.timings.insert(
        0,
        Timing {
            phase: "process start",
            ns,
        },
    );
    if let Some(total) = report.timings.iter_mut().find(|t| t.phase == "total") {
        total.ns = total.ns.saturating_add(ns);
    }
}

/// How long ago this process was started: its start time in `/proc/self/stat` (clock ticks
/// since boot, so whole ticks: 10 ms at USER_HZ 100) against CLOCK_BOOTTIME, the clock that
/// start time is taken on. None where either cannot be read.
fn since_exec() -> Option<Duration> {
    use nix::time::{clock_gettime, ClockId};
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let ticks = start_ticks(&stat)?;
    let hz = u128::try_from(nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??).ok()?;
    let now = clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?;
    let now_ns =
        u128::try_from(now.tv_sec()).ok()? * 1_000_000_000 + u128::try_from(now.tv_nsec()).ok()?;
    let start_ns = u128::from(ticks) * 1_000_000_000 / hz.max(1);
    let age = u64::try_from(now_ns.checked_sub(start_ns)?).ok()?;
    Some(Duration::from_nanos(age))
}

/// Field 22 of a `/proc/PID/stat` line (`starttime`), counted after the command name's closing
/// parenthesis, since the name itself may hold spaces and parentheses.
fn start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_is_field_22_even_with_a_strange_command_name() {
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 \
                    987654 8192000 300 18446744073709551615";
        assert_eq!(start_ticks(line), Some(987654));
        assert_eq!(start_ticks("4242 (cut) S 1 2"), None);
    }
}
