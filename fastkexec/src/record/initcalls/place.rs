//! The paired initcalls on the report's timeline, and their text.

use serde::Serialize;

use super::{pair, short_name, Capture, Stamp};

/// The TSC of a stamp: `x86-tsc` stamps are TSC values; `local` stamps are the raw
/// `sched_clock` in ns, placed through the TSC of its zero (`local_zero_tsc`, the report's
/// kernel clock zero) and the TSC rate. Any other clock cannot be placed.
pub fn tsc_of(
    clock: Option<&str>,
    stamp: Stamp,
    local_zero_tsc: Option<i128>,
    fit: &crate::record::clock::Fit,
) -> Option<i128> {
    match (clock, stamp) {
        (Some("x86-tsc"), Stamp::Counter(t)) => Some(i128::from(t)),
        (Some("local"), Stamp::Ns(ns)) => {
            Some(local_zero_tsc?.saturating_add(fit.ns_to_ticks(i128::from(ns))))
        }
        _ => None,
    }
}

/// One initcall on the report's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InitcallTime {
    /// The function (`%pS` without offset and size; a module's name in brackets).
    pub func: String,
    pub ret: i64,
    /// Offset from the report's origin.
    pub start_ns: u64,
    pub duration_ns: u64,
    /// Why this initcall's figure is not the kernel's alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The early initcall that disables and re-enables every boot-time trace event (those on the
/// command line: the initcall events included). Its time is partly the events' own: taking
/// them off and putting them back waits for RCU grace periods.
pub const REENABLES_EVENTS: &str = "event_trace_enable_again";

/// The initcall level of the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Initcalls {
    /// `ok`; `not_requested` (the command line did not ask for the events); `unavailable`
    /// (tracefs could not be read); `no_events` (asked for, none recorded); `unplaced` (events,
    /// but no clock to put them on the timeline).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The trace clock the events were stamped with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<String>,
    /// Initcalls that started inside "kernel boot" (module initcalls later are in `later`).
    pub count: usize,
    /// Time inside "kernel boot" covered by at least one initcall.
    pub sum_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_boot_ns: Option<u64>,
    /// "kernel boot" outside every initcall, split below.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unexplained_ns: Option<u64>,
    /// From the start of "kernel boot" to the first initcall (start_kernel's own work).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_first_ns: Option<u64>,
    /// Gaps between initcalls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub between_ns: Option<u64>,
    /// From the last initcall's end to the end of "kernel boot" (freeing init memory, exec of
    /// init).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_last_ns: Option<u64>,
    /// Initcalls after "kernel boot" (modules loaded by user space).
    pub later: usize,
    /// Starts without a finish or finishes without a start.
    pub unmatched: usize,
    /// Events the ring buffer overwrote or lost (the earliest initcalls are then missing).
    pub overwritten: u64,
    /// The slowest initcalls inside "kernel boot" (at most `--top`).
    pub top: Vec<InitcallTime>,
}

impl Initcalls {
    fn status(status: &'static str, detail: Option<String>) -> Self {
        Initcalls {
            status,
            detail,
            ..Initcalls::default()
        }
    }
}

/// Places the captured initcalls on the report's timeline. `offset` maps a stamp to ns from
/// the report's origin (`None` when the clock cannot be placed); `kernel_boot` is that
/// phase's start and end.
pub fn place(
    cap: &Capture,
    offset: impl Fn(Stamp) -> Option<u64>,
    kernel_boot: Option<(u64, u64)>,
    top: usize,
) -> Initcalls {
    let (clock, trace) = match cap {
        Capture::NotRequested => {
            return Initcalls::status(
                "not_requested",
                Some(
                    "this kernel's command line did not ask for the initcall trace events \
                     (trace --no-initcalls, or not loaded by fastkexec trace)"
                        .into(),
                ),
            )
        }
        Capture::Unavailable(why) => return Initcalls::status("unavailable", Some(why.clone())),
        Capture::Read { clock, trace } => (clock, trace),
    };
    let (calls, unmatched) = pair(&trace.events);
    let mut out = Initcalls {
        clock: clock.clone(),
        unmatched,
        overwritten: trace.overwritten(),
        ..Initcalls::status("ok", None)
    };
    if calls.is_empty() {
        out.status = "no_events";
        out.detail = Some(if trace.events.is_empty() {
            "the command line asked for the initcall events but the trace buffer holds none \
             (does this kernel have CONFIG_TRACEPOINTS? \"Failed to enable trace event\" in \
             its log says why)"
                .into()
        } else {
            format!(
                "{} initcall events, but no start with its finish",
                trace.events.len()
            )
        });
        return out;
    }
    let mut placed: Vec<InitcallTime> = Vec::new();
    for c in &calls {
        let (Some(a), Some(b)) = (offset(c.start), offset(c.end)) else {
            out.status = "unplaced";
            out.detail = Some(format!(
                "{} initcalls recorded with the {} trace clock, which this report cannot place \
                 on the TSC (x86-tsc and local can be placed)",
                calls.len(),
                clock.as_deref().unwrap_or("unknown")
            ));
            return out;
        };
        let func = short_name(&c.func);
        let note = (func == REENABLES_EVENTS).then(|| {
            "re-enables the boot-time trace events, these included: part of its time is their \
             own cost (absent with trace --no-initcalls)"
                .to_string()
        });
        placed.push(InitcallTime {
            func,
            ret: c.ret,
            start_ns: a,
            duration_ns: b.saturating_sub(a),
            note,
        });
    }
    // Without the phase every initcall counts, and nothing is said about the rest.
    let (kb_start, kb_end) = kernel_boot.unwrap_or((0, u64::MAX));
    let (inside, later): (Vec<InitcallTime>, Vec<InitcallTime>) = placed
        .into_iter()
        .partition(|c| c.start_ns >= kb_start && c.start_ns < kb_end);
    out.later = later.len();
    out.count = inside.len();
    // The union of the intervals, clipped to the phase: module initcalls of other tasks may
    // overlap the boot's own.
    let mut spans: Vec<(u64, u64)> = inside
        .iter()
        .map(|c| {
            (
                c.start_ns,
                c.start_ns.saturating_add(c.duration_ns).min(kb_end),
            )
        })
        .collect();
    spans.sort_unstable();
    let mut covered = 0u64;
    let mut between = 0u64;
    let mut reach: Option<u64> = None;
    for (a, b) in &spans {
        match reach {
            Some(r) if *a <= r => {
                if *b > r {
                    covered += b - r;
                    reach = Some(*b);
                }
            }
            Some(r) => {
                between += a - r;
                covered += b - a;
                reach = Some(*b);
            }
            None => {
                covered += b - a;
                reach = Some(*b);
            }
        }
    }
    out.sum_ns = covered;
    if let Some((s, e)) = kernel_boot {
        out.kernel_boot_ns = Some(e.saturating_sub(s));
        out.unexplained_ns = Some(e.saturating_sub(s).saturating_sub(covered));
        out.before_first_ns = spans.first().map(|(a, _)| a.saturating_sub(s));
        out.between_ns = Some(between);
        out.after_last_ns = reach.map(|r| e.saturating_sub(r));
    }
    let mut top_calls = inside;
    top_calls.sort_by(|a, b| {
        b.duration_ns
            .cmp(&a.duration_ns)
            .then(a.start_ns.cmp(&b.start_ns))
    });
    top_calls.truncate(top);
    out.top = top_calls;
    out
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The text report's initcall section (after the phase table).
impl std::fmt::Display for Initcalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.status != "ok" {
            return writeln!(
                f,
                "initcalls: {} ({})",
                self.status.replace('_', " "),
                self.detail.as_deref().unwrap_or("")
            );
        }
        match (self.kernel_boot_ns, self.unexplained_ns) {
            (Some(kb), Some(rest)) => {
                writeln!(
                    f,
                    "initcalls in kernel boot: {} took {:.3} ms of its {:.3} ms ({:.1}%); \
                     {:.3} ms outside them:",
                    self.count,
                    ms(self.sum_ns),
                    ms(kb),
                    if kb > 0 {
                        self.sum_ns as f64 * 100.0 / kb as f64
                    } else {
                        0.0
                    },
                    ms(rest)
                )?;
                writeln!(
                    f,
                    "  {:.3} ms before the first, {:.3} ms between them, {:.3} ms after the last",
                    ms(self.before_first_ns.unwrap_or(0)),
                    ms(self.between_ns.unwrap_or(0)),
                    ms(self.after_last_ns.unwrap_or(0))
                )?;
            }
            _ => writeln!(
                f,
                "initcalls: {} took {:.3} ms (kernel boot is not on the timeline)",
                self.count,
                ms(self.sum_ns)
            )?,
        }
        writeln!(
            f,
            "slowest initcalls ({} of {}):",
            self.top.len(),
            self.count
        )?;
        for c in &self.top {
            write!(f, "{:>10.3} ms  {}", ms(c.duration_ns), c.func)?;
            if c.ret != 0 {
                write!(f, " (returned {})", c.ret)?;
            }
            if let Some(n) = &c.note {
                write!(f, "  [{n}]")?;
            }
            writeln!(f)?;
        }
        if self.later > 0 {
            writeln!(
                f,
                "  (+{} initcalls after kernel boot: modules loaded from user space)",
                self.later
            )?;
        }
        if self.overwritten > 0 {
            writeln!(
                f,
                "  the trace buffer overwrote or lost {} events: the earliest initcalls are \
                 missing (trace_buf_size= on the command line)",
                self.overwritten
            )?;
        }
        if self.unmatched > 0 {
            writeln!(f, "  {} events without their pair", self.unmatched)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::tests::{fixture, KERNELS};
    use super::super::{capture, parse_trace, Trace};
    use super::*;

    /// The lab's TSC ran at 1 GHz: ns from the first stamp are ticks from it.
    fn captured(kernel: &str) -> (Capture, u64) {
        let cap = capture(
            &fixture(kernel),
            "trace_event=initcall:initcall_start,initcall:initcall_finish",
            false,
        );
        let Capture::Read { trace, .. } = &cap else {
            panic!("{cap:?}")
        };
        let first = match trace.events[0].ts {
            Stamp::Counter(t) => t,
            Stamp::Ns(_) => panic!("not x86-tsc"),
        };
        (cap, first)
    }

    fn counter_offset(first: u64) -> impl Fn(Stamp) -> Option<u64> {
        move |s| match s {
            Stamp::Counter(t) => t.checked_sub(first),
            Stamp::Ns(_) => None,
        }
    }

    #[test]
    fn the_slowest_sum_and_rest_of_kernel_boot_from_each_kernel() {
        for k in KERNELS {
            let (cap, first) = captured(k);
            let Capture::Read { trace, .. } = &cap else {
                unreachable!()
            };
            let (calls, _) = pair(&trace.events);
            let last = calls
                .iter()
                .map(|c| match c.end {
                    Stamp::Counter(t) => t - first,
                    Stamp::Ns(_) => 0,
                })
                .max()
                .unwrap();
            // "kernel boot" from 1 ms before the first initcall to 2 ms after the last.
            let kb = (0, last + 3_000_000);
            let ic = place(
                &cap,
                |s| counter_offset(first)(s).map(|t| t + 1_000_000),
                Some(kb),
                5,
            );
            assert_eq!(ic.status, "ok", "{k}");
            assert_eq!(ic.count, calls.len(), "{k}");
            // Initcalls run one after another in kernel_init: the sum is the plain sum.
            let plain: u64 = calls
                .iter()
                .map(|c| match (c.start, c.end) {
                    (Stamp::Counter(a), Stamp::Counter(b)) => b - a,
                    _ => 0,
                })
                .sum();
            assert_eq!(ic.sum_ns, plain, "{k}");
            assert_eq!(ic.unexplained_ns, Some(kb.1 - plain), "{k}");
            assert_eq!(ic.before_first_ns, Some(1_000_000), "{k}");
            assert_eq!(ic.after_last_ns, Some(2_000_000), "{k}");
            assert_eq!(
                ic.before_first_ns.unwrap() + ic.between_ns.unwrap() + ic.after_last_ns.unwrap(),
                ic.unexplained_ns.unwrap(),
                "{k}"
            );
            assert_eq!(ic.top.len(), 5, "{k}");
            assert!(
                ic.top
                    .windows(2)
                    .all(|w| w[0].duration_ns >= w[1].duration_ns),
                "{k}"
            );
            let longest = calls
                .iter()
                .max_by_key(|c| match (c.start, c.end) {
                    (Stamp::Counter(a), Stamp::Counter(b)) => b - a,
                    _ => 0,
                })
                .unwrap();
            assert_eq!(ic.top[0].func, short_name(&longest.func), "{k}");
            let text = ic.to_string();
            assert!(text.contains("slowest initcalls (5 of"), "{k}: {text}");
            // The initcall that re-enables the boot-time events carries their cost: said.
            let all = place(&cap, counter_offset(first), Some(kb), usize::MAX);
            let noted: Vec<&str> = all
                .top
                .iter()
                .filter(|c| c.note.is_some())
                .map(|c| c.func.as_str())
                .collect();
            assert_eq!(noted, [REENABLES_EVENTS], "{k}");
        }
    }

    #[test]
    fn initcalls_after_kernel_boot_and_lost_events_are_said() {
        let (cap, first) = captured("6.12");
        // A "kernel boot" that ends after the first three initcalls.
        let Capture::Read { trace, .. } = &cap else {
            unreachable!()
        };
        let third_end = match pair(&trace.events).0[2].end {
            Stamp::Counter(t) => t - first,
            Stamp::Ns(_) => unreachable!(),
        };
        let ic = place(&cap, counter_offset(first), Some((0, third_end + 1)), 10);
        assert_eq!(ic.count, 3);
        assert_eq!(ic.later, pair(&trace.events).0.len() - 3);
        assert!(ic.to_string().contains("after kernel boot"));

        let lossy = Capture::Read {
            clock: Some("x86-tsc".into()),
            trace: Trace {
                entries_in_buffer: Some(2),
                entries_written: Some(10),
                ..parse_trace(
                    "  a-1 [000] ..... 100: initcall_start: func=f+0x0/0x1\n\
                     \x20 a-1 [000] ..... 300: initcall_finish: func=f+0x0/0x1 ret=0\n",
                )
            },
        };
        let ic = place(&lossy, counter_offset(0), Some((0, 1000)), 10);
        assert_eq!(ic.overwritten, 8);
        assert_eq!((ic.sum_ns, ic.unexplained_ns), (200, Some(800)));
        assert!(ic.to_string().contains("overwrote or lost 8 events"));
    }

    #[test]
    fn nothing_is_made_up_when_there_is_nothing_to_place() {
        let none = place(&Capture::NotRequested, |_| Some(0), None, 10);
        assert_eq!((none.status, none.count), ("not_requested", 0));
        let gone = place(
            &Capture::Unavailable("no tracefs".into()),
            |_| Some(0),
            None,
            10,
        );
        assert_eq!(gone.status, "unavailable");
        let empty = Capture::Read {
            clock: Some("x86-tsc".into()),
            trace: Trace::default(),
        };
        assert_eq!(place(&empty, |_| Some(0), None, 10).status, "no_events");
        let (cap, _) = captured("6.1");
        let unplaced = place(&cap, |_| None, None, 10);
        assert_eq!(unplaced.status, "unplaced");
        assert!(unplaced.top.is_empty());
        assert!(unplaced.to_string().starts_with("initcalls: unplaced"));
    }

    #[test]
    fn stamps_go_on_the_tsc_by_their_clock() {
        // 2 GHz: two ticks per ns.
        let fit = crate::record::clock::Fit {
            tsc_a: 1_000,
            ns_a: 0,
            tsc_b: 2_000_001_000,
            ns_b: 1_000_000_000,
            err_ns: 0,
        };
        assert_eq!(
            tsc_of(Some("x86-tsc"), Stamp::Counter(77), None, &fit),
            Some(77)
        );
        assert_eq!(
            tsc_of(Some("local"), Stamp::Ns(1_000), Some(5_000), &fit),
            Some(7_000)
        );
        assert_eq!(tsc_of(Some("local"), Stamp::Ns(1_000), None, &fit), None);
        assert_eq!(
            tsc_of(Some("global"), Stamp::Ns(1_000), Some(0), &fit),
            None
        );
        assert_eq!(
            tsc_of(Some("counter"), Stamp::Counter(5), Some(0), &fit),
            None
        );
    }
}
