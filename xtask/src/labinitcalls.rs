//! `cargo xtask lab run --trace --initcall-check`: the report's initcall level against the
//! kernel's own `initcall_debug` figures of the same boot.
//!
//! Round 1 boots with `initcall_debug` (the next kernel inherits it through the command line
//! round 1 passes on) and `log_buf_len=8M`, so that every "calling"/"initcall ... returned"
//! line of the new kernel stays in its log. Those lines are KERN_DEBUG: below the console's
//! level they cost a log store, not a serial write, inside the intervals compared. Round 2,
//! after its report, prints them (`dmesg`) between `FKLAB: initcall-debug-begin/end`, and
//! tracefs' `trace` file between `FKLAB: tracefs-begin/end` (saved in the run directory: the
//! raw events, for fixtures and for a second look).
//!
//! This module decodes the kernel's lines on the host by itself (no code of the library) and
//! holds the report's slowest initcalls (`report.initcalls.top`) to them: each within
//! [`TOLERANCE_SHARE`] or [`TOLERANCE_US`] of the kernel's "after N usecs".
//!
//! What the kernel measures (init/main.c): `do_one_initcall` fires the `initcall_start`
//! tracepoint, calls the function, fires `initcall_finish`. `initcall_debug` hangs two probes
//! on those tracepoints, registered after `trace_init()` enabled the boot-time events, so on
//! each tracepoint the event's probe runs first: start event (TSC) → "calling" printk →
//! `calltime = ktime_get()` → the function → finish event (TSC) → `rettime = ktime_get()` →
//! "returned" printk, with N = `ktime_us_delta(rettime, calltime)` (truncated to µs). The
//! event interval is therefore the kernel's plus the "calling" line's printk (formatting
//! `%pS` and storing it) and the two probes' own cost: a few µs, always positive. And
//! `ktime_get()` reads the clocksource timekeeping runs on, which is jiffies until
//! `clocksource_done_booting()` (an fs_initcall) switches to the TSC: before that, N moves in
//! whole ticks (1/HZ). Such an initcall is held to the kernel's figure within one tick on top
//! of the tolerance, and marked `kernel_clock: jiffies`; the others (`tsc`) to the tolerance
//! alone. The printk stamps of the two lines (local_clock, µs) are kept as a second figure:
//! they include the "calling" printk as the events do, but before `sched_clock` is marked
//! stable (a late initcall) the local clock is held back to the tick and lags.

use serde::Serialize;
use serde_json::Value;

/// Command-line words for the check (both rounds; the next kernel inherits them).
pub fn cmdline_words(check: bool, no_initcalls: bool) -> Vec<String> {
    let mut v = Vec::new();
    if check {
        v.extend(["fklab.initcall_check=1", "initcall_debug", "log_buf_len=8M"].map(String::from));
    }
    if no_initcalls {
        v.push("fklab.no_initcalls=1".to_string());
    }
    v
}

/// Agreement asked per initcall: 10 % of the kernel's figure or 50 µs, whichever is larger.
pub const TOLERANCE_SHARE: f64 = 0.10;
pub const TOLERANCE_US: f64 = 50.0;
/// How many of the report's slowest initcalls are compared.
pub const COMPARED: usize = 10;
/// The early initcall that disables and re-enables every boot-time trace event, ours too
/// (kernel/trace/trace_events.c): its time is partly the events' own (it waits for RCU grace
/// periods, idle, so under `-icount sleep=on` it follows the host's clock), and the kernel's
/// figure runs on jiffies through that idle wait. Listed, not held to the tolerance; the
/// next initcall takes its place among the ten.
pub const REENABLES_EVENTS: &str = "event_trace_enable_again";

/// One initcall as the kernel's `initcall_debug` lines tell it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelLine {
    /// The function as printed (`%pS`), offset and size stripped.
    pub func: String,
    pub ret: i64,
    /// "after N usecs".
    pub usecs: u64,
    /// printk stamps (µs) of the "calling" and the "returned" line.
    pub calling_us: Option<u64>,
    pub returned_us: u64,
    /// The kernel's timekeeping still ran on jiffies when this initcall returned (before its
    /// "clocksource: Switched to clocksource" line).
    pub jiffies: bool,
}

/// `[    1.234567] text` → (1234567 µs, text).
fn printk_line(line: &str) -> Option<(u64, &str)> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (stamp, text) = rest.split_once(']')?;
    let (s, us) = stamp.trim().split_once('.')?;
    let us = s.parse::<u64>().ok()? * 1_000_000 + us.parse::<u64>().ok()?;
    Some((us, text.trim_start()))
}

/// `name+0x0/0x1c [mod]` → `name [mod]`.
fn strip_offset(sym: &str) -> String {
    let (s, module) = match sym.split_once(' ') {
        Some((s, m)) => (s, Some(m)),
        None => (sym, None),
    };
    let name = s.split('+').next().unwrap_or(s);
    match module {
        Some(m) => format!("{name} {}", m.trim()),
        None => name.to_string(),
    }
}

/// Decodes the kernel's `calling  X @ pid` / `initcall X returned R after N usecs` lines.
pub fn parse_kernel_lines(lines: &[&str]) -> Vec<KernelLine> {
    let mut calling: Vec<(String, u64)> = Vec::new();
    let mut out = Vec::new();
    let mut jiffies = true;
    for l in lines {
        let Some((ts, text)) = printk_line(l) else {
            continue;
        };
        if text.starts_with("clocksource: Switched to clocksource") {
            jiffies = false;
        } else if let Some(rest) = text.strip_prefix("calling  ") {
            if let Some((sym, _pid)) = rest.rsplit_once(" @ ") {
                calling.push((strip_offset(sym), ts));
            }
        } else if let Some(rest) = text.strip_prefix("initcall ") {
            let Some((sym, tail)) = rest.split_once(" returned ") else {
                continue;
            };
            let Some((ret, after)) = tail.split_once(" after ") else {
                continue;
            };
            let (Ok(ret), Some(Ok(usecs))) = (
                ret.trim().parse::<i64>(),
                after
                    .strip_suffix(" usecs")
                    .map(|u| u.trim().parse::<u64>()),
            ) else {
                continue;
            };
            let func = strip_offset(sym);
            let calling_us = calling
                .iter()
                .rposition(|(f, _)| *f == func)
                .map(|i| calling.remove(i).1);
            out.push(KernelLine {
                func,
                ret,
                usecs,
                calling_us,
                returned_us: ts,
                jiffies,
            });
        }
    }
    out
}

/// One of the report's slowest initcalls next to the kernel's figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Compared {
    pub func: String,
    pub ours_us: f64,
    /// "after N usecs" (`None`: no such line).
    pub kernel_us: Option<u64>,
    /// The printk stamps' difference ("returned" − "calling"), µs.
    pub printk_us: Option<u64>,
    pub diff_us: Option<f64>,
    /// `tsc` or `jiffies`: the clocksource under the kernel's figure.
    pub kernel_clock: Option<&'static str>,
    pub tolerance_us: Option<f64>,
    pub within: bool,
    /// Why this row is shown but not held to the tolerance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluded: Option<&'static str>,
    /// More than one kernel line had this name: the one nearest in duration was taken.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ambiguous: bool,
}

/// The lab JSON's `initcalls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InitcallCheck {
    /// The report's `initcalls.status`.
    pub status: Option<String>,
    pub report_count: Option<u64>,
    /// Lines of the kernel's own decoded.
    pub kernel_lines: usize,
    pub compared: Vec<Compared>,
    /// Mean of (ours − the kernel's) over the compared initcalls, µs: the systematic part.
    pub mean_diff_us: Option<f64>,
    /// The same over the initcalls timed on the TSC by the kernel too.
    pub mean_diff_tsc_us: Option<f64>,
    /// One jiffy, µs (from the kernel's CONFIG_HZ).
    pub tick_us: f64,
    pub all_within: bool,
    /// Where the tracefs dump was saved.
    pub tracefs_dump: Option<String>,
    pub error: Option<String>,
}

impl InitcallCheck {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.all_within
    }
}

/// Lines between `FKLAB: <what>-begin` and `FKLAB: <what>-end`.
pub fn section<'a>(lines: &'a [(f64, String)], what: &str) -> Option<Vec<&'a str>> {
    let begin = format!("FKLAB: {what}-begin");
    let end = format!("FKLAB: {what}-end");
    let a = lines.iter().position(|(_, l)| *l == begin)?;
    let rest = lines.get(a + 1..)?;
    let b = rest.iter().position(|(_, l)| l.starts_with(&end))?;
    Some(rest.get(..b)?.iter().map(|(_, l)| l.as_str()).collect())
}

/// Compares the report's slowest initcalls with the kernel's lines.
pub fn compare(report: Option<&Value>, kernel: &[KernelLine], hz: u32) -> InitcallCheck {
    let tick_us = 1e6 / f64::from(hz.max(1));
    let mut c = InitcallCheck {
        kernel_lines: kernel.len(),
        tick_us,
        ..InitcallCheck::default()
    };
    let Some(ic) = report.and_then(|r| r.get("initcalls")) else {
        c.error = Some("the report has no initcalls section".into());
        return c;
    };
    c.status = ic.get("status").and_then(Value::as_str).map(String::from);
    c.report_count = ic.get("count").and_then(Value::as_u64);
    if c.status.as_deref() != Some("ok") {
        c.error = Some(format!(
            "the report's initcalls are {:?}: {}",
            c.status,
            ic.get("detail").and_then(Value::as_str).unwrap_or("")
        ));
        return c;
    }
    if kernel.is_empty() {
        c.error = Some("no initcall_debug line in the new kernel's log".into());
        return c;
    }
    let top = ic
        .get("top")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut held = 0;
    for t in &top {
        if held == COMPARED {
            break;
        }
        let func = t
            .get("func")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ours_us = t.get("duration_ns").and_then(Value::as_u64).unwrap_or(0) as f64 / 1e3;
        let same: Vec<&KernelLine> = kernel.iter().filter(|k| k.func == func).collect();
        let k = same.iter().copied().min_by(|a, b| {
            (a.usecs as f64 - ours_us)
                .abs()
                .total_cmp(&(b.usecs as f64 - ours_us).abs())
        });
        let tol = k.map(|k| {
            let t = (k.usecs as f64 * TOLERANCE_SHARE).max(TOLERANCE_US);
            if k.jiffies {
                t + tick_us
            } else {
                t
            }
        });
        let diff = k.map(|k| ours_us - k.usecs as f64);
        c.compared.push(Compared {
            ours_us,
            kernel_us: k.map(|k| k.usecs),
            printk_us: k.and_then(|k| k.returned_us.checked_sub(k.calling_us?)),
            diff_us: diff,
            kernel_clock: k.map(|k| if k.jiffies { "jiffies" } else { "tsc" }),
            tolerance_us: tol,
            within: matches!((diff, tol), (Some(d), Some(t)) if d.abs() <= t),
            excluded: (func == REENABLES_EVENTS)
                .then_some("re-enables the boot-time events (ours too): their own cost"),
            ambiguous: same.len() > 1,
            func,
        });
        held += usize::from(c.compared.last().is_some_and(|x| x.excluded.is_none()));
    }
    let diffs: Vec<f64> = c
        .compared
        .iter()
        .filter(|x| x.excluded.is_none())
        .filter_map(|x| x.diff_us)
        .collect();
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    c.mean_diff_us = mean(&diffs);
    let tsc: Vec<f64> = c
        .compared
        .iter()
        .filter(|x| x.kernel_clock == Some("tsc") && x.excluded.is_none())
        .filter_map(|x| x.diff_us)
        .collect();
    c.mean_diff_tsc_us = mean(&tsc);
    c.all_within = held > 0 && c.compared.iter().all(|x| x.within || x.excluded.is_some());
    if c.compared.is_empty() {
        c.error = Some("the report lists no initcall".into());
    }
    c
}

/// CONFIG_HZ from a kernel config (the lab kernels: 250).
pub fn config_hz(config: Option<&std::path::Path>) -> Option<u32> {
    std::fs::read_to_string(config?)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ=")?.trim().parse().ok())
}

/// The whole check of one run: decodes round 2's sections, saves the tracefs dump in `dir`.
pub fn check(
    lines: &[(f64, String)],
    report: Option<&Value>,
    hz: u32,
    dir: &std::path::Path,
) -> InitcallCheck {
    let kernel = section(lines, "initcall-debug")
        .map(|l| parse_kernel_lines(&l))
        .unwrap_or_default();
    let mut c = compare(report, &kernel, hz);
    if let Some(t) = section(lines, "tracefs") {
        let path = dir.join("tracefs-trace.txt");
        let mut text = t.join("\n");
        text.push('\n');
        match std::fs::write(&path, text) {
            Ok(()) => c.tracefs_dump = Some(path.display().to_string()),
            Err(e) => c.error = c.error.or(Some(format!("{}: {e}", path.display()))),
        }
    }
    c
}

/// The comparison as a table on stdout.
pub fn print(c: &InitcallCheck) {
    println!(
        "initcalls: report {} ({} in kernel boot), {} initcall_debug lines",
        c.status.as_deref().unwrap_or("?"),
        c.report_count.map_or("?".into(), |n| n.to_string()),
        c.kernel_lines
    );
    println!(
        "{:>12} {:>12} {:>12} {:>10} {:>8} {:>8}  initcall",
        "ours µs", "kernel µs", "printk µs", "diff µs", "clock", "within"
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for x in &c.compared {
        println!(
            "{:>12.1} {:>12} {:>12} {:>10} {:>8} {:>8}  {}{}",
            x.ours_us,
            opt(x.kernel_us),
            opt(x.printk_us),
            x.diff_us.map_or("-".into(), |d| format!("{d:+.1}")),
            x.kernel_clock.unwrap_or("-"),
            match (x.within, x.excluded) {
                (_, Some(_)) => "not held",
                (true, None) => "yes",
                (false, None) => "NO",
            },
            x.func,
            match (x.ambiguous, x.excluded) {
                (_, Some(why)) => format!(" ({why})"),
                (true, None) => " (name seen twice)".to_string(),
                (false, None) => String::new(),
            }
        );
    }
    if let Some(m) = c.mean_diff_us {
        println!(
            "mean (ours − kernel): {m:+.1} µs; where the kernel timed on the TSC too: {}; one \
             jiffy: {:.0} µs",
            c.mean_diff_tsc_us
                .map_or("-".into(), |t| format!("{t:+.1} µs")),
            c.tick_us
        );
    }
    if let Some(e) = &c.error {
        println!("INITCALL CHECK FAILED: {e}");
    } else if !c.all_within {
        println!(
            "INITCALL CHECK FAILED: not every initcall within 10 % or 50 µs (plus one jiffy \
             where the kernel's figure is in jiffies)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_lines_decode_with_their_printk_stamps() {
        let lines = [
            "[    0.412001] calling  pci_subsys_init+0x0/0x80 @ 1",
            "[    0.415730] initcall pci_subsys_init+0x0/0x80 returned 0 after 3725 usecs",
            "[    1.000000] calling  virtio_blk_init+0x0/0x1000 [virtio_blk] @ 73",
            "[    1.000100] initcall virtio_blk_init+0x0/0x1000 [virtio_blk] returned -19 after 98 usecs",
            "[    1.100000] some other line",
        ];
        let k = parse_kernel_lines(&lines);
        assert_eq!(k.len(), 2);
        assert_eq!(k[0].func, "pci_subsys_init");
        assert_eq!(
            (k[0].usecs, k[0].calling_us, k[0].returned_us),
            (3725, Some(412_001), 415_730)
        );
        assert_eq!(k[1].func, "virtio_blk_init [virtio_blk]");
        assert_eq!(k[1].ret, -19);
        assert!(
            k[0].jiffies && k[1].jiffies,
            "no clocksource switch seen yet"
        );
    }

    #[test]
    fn before_the_clocksource_switch_the_kernel_figure_is_held_to_one_tick() {
        let kernel = parse_kernel_lines(&[
            "[    0.300000] initcall early+0x0/0x8 returned 0 after 16000 usecs",
            "[    0.600000] clocksource: Switched to clocksource tsc-early",
            "[    0.700000] initcall late+0x0/0x8 returned 0 after 16000 usecs",
        ]);
        let report = serde_json::json!({"initcalls": {"status": "ok", "count": 2, "top": [
            {"func": "early", "duration_ns": 14_161_000u64},
            {"func": "late", "duration_ns": 14_161_000u64},
        ]}});
        let c = compare(Some(&report), &kernel, 250);
        assert_eq!(c.compared[0].kernel_clock, Some("jiffies"));
        assert!(c.compared[0].within, "{c:?}");
        assert_eq!(c.compared[1].kernel_clock, Some("tsc"));
        assert!(!c.compared[1].within, "{c:?}");
    }

    #[test]
    fn the_comparison_holds_each_of_the_top_to_its_tolerance() {
        let kernel = parse_kernel_lines(&[
            "[    0.050000] clocksource: Switched to clocksource tsc-early",
            "[    0.100000] calling  a+0x0/0x8 @ 1",
            "[    0.200000] initcall a+0x0/0x8 returned 0 after 1000 usecs",
            "[    0.300000] initcall b+0x0/0x8 returned 0 after 100 usecs",
        ]);
        let report = serde_json::json!({"initcalls": {"status": "ok", "count": 2, "top": [
            {"func": "a", "duration_ns": 1_090_000u64},
            {"func": "b", "duration_ns": 160_000u64},
        ]}});
        let c = compare(Some(&report), &kernel, 250);
        assert!(c.compared[0].within, "{c:?}");
        assert!(!c.compared[1].within, "60 µs off a 100 µs figure: {c:?}");
        assert!(!c.all_within);
        assert_eq!(c.mean_diff_us, Some(75.0));
    }

    #[test]
    fn the_initcall_that_re_enables_the_events_is_listed_but_not_held() {
        let kernel = parse_kernel_lines(&[
            "[    0.300000] initcall event_trace_enable_again+0x0/0x30 returned 0 after 16000 usecs",
            "[    0.600000] clocksource: Switched to clocksource tsc-early",
            "[    0.700000] initcall b+0x0/0x8 returned 0 after 100 usecs",
        ]);
        let report = serde_json::json!({"initcalls": {"status": "ok", "count": 2, "top": [
            {"func": "event_trace_enable_again", "duration_ns": 25_344_000u64},
            {"func": "b", "duration_ns": 113_000u64},
        ]}});
        let c = compare(Some(&report), &kernel, 250);
        assert_eq!(c.compared.len(), 2);
        assert!(c.compared[0].excluded.is_some() && !c.compared[0].within);
        assert!(c.all_within && c.ok(), "{c:?}");
        assert_eq!(c.mean_diff_us, Some(13.0));
    }

    #[test]
    fn a_report_without_initcalls_fails_the_check() {
        let report = serde_json::json!({"initcalls": {"status": "not_requested"}});
        let c = compare(Some(&report), &[], 250);
        assert!(!c.ok());
    }
}
