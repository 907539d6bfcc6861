//! tracefs' `trace` text → initcall events → paired initcalls.

use serde::Serialize;

/// One event's time stamp as tracefs prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stamp {
    /// A counter clock (`x86-tsc`, `counter`): printed as a bare integer.
    Counter(u64),
    /// A nanosecond clock (`local`, `global`, `mono`, ...): printed as seconds with a fraction.
    Ns(u64),
}

/// An initcall event from the `trace` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub pid: u32,
    pub cpu: u32,
    pub ts: Stamp,
    /// `func=` as the kernel printed it (`%pS`: `name+0x0/0x1c [module]`).
    pub func: String,
    /// `None` for `initcall_start`, the return value for `initcall_finish`.
    pub ret: Option<i64>,
}

/// What the `trace` file held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    pub events: Vec<Event>,
    /// From the header line `entries-in-buffer/entries-written: N/M`: M > N means the ring
    /// buffer overwrote its oldest events (the first initcalls).
    pub entries_in_buffer: Option<u64>,
    pub entries_written: Option<u64>,
    /// Events the kernel said it lost (`[LOST N EVENTS]` lines).
    pub lost: u64,
    /// Initcall lines that did not parse.
    pub malformed: usize,
}

impl Trace {
    /// Events the ring buffer no longer holds.
    pub fn overwritten(&self) -> u64 {
        match (self.entries_in_buffer, self.entries_written) {
            (Some(n), Some(m)) => m.saturating_sub(n).saturating_add(self.lost),
            _ => self.lost,
        }
    }
}

fn parse_stamp(s: &str) -> Option<Stamp> {
    match s.split_once('.') {
        Some((secs, frac)) => {
            if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let scale = 10u64.pow(9 - frac.len() as u32);
            let ns = secs
                .parse::<u64>()
                .ok()?
                .checked_mul(1_000_000_000)?
                .checked_add(frac.parse::<u64>().ok()?.checked_mul(scale)?)?;
            Some(Stamp::Ns(ns))
        }
        None => s.parse().ok().map(Stamp::Counter),
    }
}

/// One event line: `TASK-PID [CPU] FLAGS TIMESTAMP: initcall_xxx: func=F [ret=R]`. `None`
/// when it is not an initcall event; `Some(None)` when it is one but does not parse.
fn parse_line(line: &str) -> Option<Option<Event>> {
    let (head, name, rest) = ["initcall_start", "initcall_finish"].iter().find_map(|n| {
        let at = line.find(&format!(": {n}: "))?;
        Some((&line[..at], *n, &line[at + n.len() + 4..]))
    })?;
    Some((|| {
        let (task, after) = head.rsplit_once(" [")?;
        let (cpu, after) = after.split_once(']')?;
        let pid = task.trim().rsplit_once('-')?.1.parse().ok()?;
        let ts = parse_stamp(after.split_whitespace().last()?)?;
        let rest = rest.trim_end().strip_prefix("func=")?;
        let (func, ret) = if name == "initcall_finish" {
            let (f, r) = rest.rsplit_once(" ret=")?;
            (f, Some(r.trim().parse().ok()?))
        } else {
            (rest, None)
        };
        Some(Event {
            pid,
            cpu: cpu.trim().parse().ok()?,
            ts,
            func: func.to_string(),
            ret,
        })
    })())
}

/// Parses the text of tracefs' `trace` file; lines of other events are skipped.
pub fn parse_trace(text: &str) -> Trace {
    let mut t = Trace::default();
    for line in text.lines() {
        if let Some(rest) = line
            .trim_start()
            .strip_prefix("# entries-in-buffer/entries-written:")
        {
            let nums = rest.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = nums.split_once('/') {
                t.entries_in_buffer = a.parse().ok();
                t.entries_written = b.parse().ok();
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if let Some(n) = line
            .split_once("[LOST ")
            .and_then(|(_, r)| r.split_once(" EVENTS]"))
            .and_then(|(n, _)| n.parse::<u64>().ok())
        {
            t.lost = t.lost.saturating_add(n);
            continue;
        }
        match parse_line(line) {
            Some(Some(e)) => t.events.push(e),
            Some(None) => t.malformed += 1,
            None => {}
        }
    }
    t
}

/// One initcall, start and finish paired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub func: String,
    pub pid: u32,
    pub ret: i64,
    pub start: Stamp,
    pub end: Stamp,
}

/// Pairs each finish with the open start of the same task and function (initcalls do not
/// nest within a task; module initcalls run in the task that loads the module).
pub fn pair(events: &[Event]) -> (Vec<Call>, usize) {
    let mut open: Vec<&Event> = Vec::new();
    let mut calls = Vec::new();
    let mut unmatched = 0usize;
    for e in events {
        match e.ret {
            None => {
                if let Some(i) = open.iter().position(|o| o.pid == e.pid) {
                    // A start with no finish before the task's next start.
                    open.remove(i);
                    unmatched += 1;
                }
                open.push(e);
            }
            Some(ret) => match open.iter().position(|o| o.pid == e.pid && o.func == e.func) {
                Some(i) => {
                    let s = open.remove(i);
                    calls.push(Call {
                        func: e.func.clone(),
                        pid: e.pid,
                        ret,
                        start: s.ts,
                        end: e.ts,
                    });
                }
                None => unmatched += 1,
            },
        }
    }
    (calls, unmatched + open.len())
}

/// `name+0x0/0x1c [module]` → `name [module]`: the offset and size say nothing to a reader.
pub fn short_name(func: &str) -> String {
    let (sym, module) = match func.split_once(' ') {
        Some((s, m)) => (s, Some(m.trim())),
        None => (func, None),
    };
    let name = sym.split_once('+').map_or(sym, |(n, _)| n);
    match module {
        Some(m) => format!("{name} {m}"),
        None => name.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Lab boots of Debian's 6.1, 6.12 and 7.2 cloud kernels (`cargo xtask lab run --trace
    /// --initcall-check --icount 0`): tracefs as the new kernel left it (`trace` cut to a few
    /// dozen of its events), and the same boot's own initcall_debug lines for those initcalls.
    pub(crate) const KERNELS: [&str; 3] = ["6.1", "6.12", "7.x"];

    pub(crate) fn fixture(kernel: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/initcalls")
            .join(kernel)
    }

    fn trace_text(kernel: &str) -> String {
        std::fs::read_to_string(fixture(kernel).join("sys/kernel/tracing/trace")).unwrap()
    }

    /// The kernel's "initcall F returned R after N usecs" lines, and whether timekeeping had
    /// left jiffies by then; decoded here with nothing of the code under test.
    fn kernel_figures(kernel: &str) -> Vec<(String, u64, bool)> {
        let text = std::fs::read_to_string(fixture(kernel).join("initcall_debug.txt")).unwrap();
        let mut on_tsc = false;
        let mut out = Vec::new();
        for l in text.lines() {
            if l.contains("Switched to clocksource") {
                on_tsc = true;
            }
            let words: Vec<&str> = l.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "returned") {
                out.push((
                    words[i - 1].to_string(),
                    words[i + 3].parse().unwrap(),
                    on_tsc,
                ));
            }
        }
        out
    }

    #[test]
    fn every_initcall_line_of_each_kernel_parses_and_pairs() {
        for k in KERNELS {
            let text = trace_text(k);
            let t = parse_trace(&text);
            let lines = text.lines().filter(|l| !l.starts_with('#')).count();
            assert_eq!(t.events.len(), lines, "{k}");
            assert_eq!(t.malformed, 0, "{k}");
            // The capture was whole: what the buffer held is what was written.
            assert!(t.entries_written.is_some(), "{k}");
            assert_eq!(t.overwritten(), 0, "{k}");
            let (calls, unmatched) = pair(&t.events);
            assert_eq!(unmatched, 0, "{k}");
            assert_eq!(calls.len() * 2, lines, "{k}");
            // x86-tsc: bare counter values.
            assert!(
                calls.iter().all(|c| matches!(c.start, Stamp::Counter(_))),
                "{k}"
            );
            // The console initcalls run from start_kernel (pid 0) before kernel_init exists.
            assert_eq!(calls[0].pid, 0, "{k}");
            assert!(calls.iter().any(|c| c.pid == 1), "{k}");
        }
    }

    #[test]
    fn durations_agree_with_the_kernels_own_figures_of_the_same_boot() {
        // The guest's TSC ran at 1 GHz (QEMU's instruction clock, shift 0: "tsc: Detected
        // 1000.0 MHz"): a tick is a nanosecond.
        for k in KERNELS {
            let (calls, _) = pair(&parse_trace(&trace_text(k)).events);
            let figures = kernel_figures(k);
            assert_eq!(figures.len(), calls.len(), "{k}");
            let mut on_tsc = 0;
            for (c, (func, usecs, tsc)) in calls.iter().zip(&figures) {
                assert_eq!(&c.func, func, "{k}");
                let (Stamp::Counter(a), Stamp::Counter(b)) = (c.start, c.end) else {
                    panic!("{k}: not a counter clock");
                };
                let ours_us = (b - a) as f64 / 1e3;
                // Before the switch the kernel's figure moves in 4 ms jiffies (HZ=250).
                let tol = (*usecs as f64 * 0.1).max(50.0) + if *tsc { 0.0 } else { 4000.0 };
                assert!(
                    (ours_us - *usecs as f64).abs() <= tol,
                    "{k} {func}: ours {ours_us} µs, the kernel's {usecs} µs"
                );
                on_tsc += usize::from(*tsc);
            }
            assert!(
                on_tsc >= 5,
                "{k}: too few initcalls timed on the TSC by the kernel"
            );
        }
    }

    #[test]
    fn ns_clocks_counters_and_damaged_lines() {
        let text = "\
# entries-in-buffer/entries-written: 3/9   #P:2
    swapper/0-1  [001] .....     0.412001: initcall_start: func=pci_subsys_init+0x0/0x80
    swapper/0-1  [001] .....     0.415730: initcall_finish: func=pci_subsys_init+0x0/0x80 ret=-19
     insmod-73   [000] .....     1.000000: initcall_start: func=virtio_init+0x0/0x10 [virtio]
CPU:1 [LOST 4 EVENTS]
    swapper/0-1  [001] .....     zzz: initcall_start: func=x+0x0/0x1
    swapper/0-1  [001] .....     1.5: sched_switch: prev_comm=a
";
        let t = parse_trace(text);
        assert_eq!(t.events.len(), 3);
        assert_eq!(t.malformed, 1);
        assert_eq!(t.overwritten(), 6 + 4);
        assert_eq!(t.events[0].ts, Stamp::Ns(412_001_000));
        assert_eq!(t.events[1].ret, Some(-19));
        assert_eq!(t.events[2].pid, 73);
        let (calls, unmatched) = pair(&t.events);
        assert_eq!(calls.len(), 1);
        assert_eq!(unmatched, 1, "the module's start has no finish");
        assert_eq!(short_name(&t.events[2].func), "virtio_init [virtio]");
        assert_eq!(short_name("pci_subsys_init+0x0/0x80"), "pci_subsys_init");
    }
}
