//! The new kernel's initcalls (DESIGN.md §10), the level under "kernel boot".
//!
//! `trace` asks the next kernel for the `initcall:initcall_start` / `initcall_finish` trace
//! events on its command line; the kernel enables them in `trace_init()`, before the first
//! initcall, and they wait in the ftrace ring buffer until `report` reads tracefs' `trace`
//! file (a read that consumes nothing). `trace_clock=x86-tsc` makes every stamp a raw TSC
//! value, already on the report's timeline; the kernel applies it when it allocates the
//! buffer, before any event is enabled. Without it the stamps are the `local` clock (raw
//! `sched_clock`, ns), which the report places through the new kernel's clock zero.
//!
//! Nothing here is faked: a kernel that was not asked, has no readable tracefs, or recorded no
//! initcall event is reported as such ([`Status`]).

mod parse;
mod place;

pub use parse::{pair, parse_trace, short_name, Call, Event, Stamp, Trace};
pub use place::{place, tsc_of, InitcallTime, Initcalls, REENABLES_EVENTS};

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The two events, as `trace_event=` takes them.
pub const EVENTS: [&str; 2] = ["initcall:initcall_start", "initcall:initcall_finish"];
/// Per-CPU ring buffer size asked for. An initcall costs two events of about 24 bytes; the
/// lab's kernels run 1100–1600 initcalls at boot (under 80 KiB), so this leaves room for
/// module initcalls after boot and for an unlucky split over sub-buffer pages. Smaller than
/// the kernel's default (1.4 MiB per CPU), which any boot-time event would allocate.
pub const BUF_SIZE: &str = "512K";
/// The trace clock asked for: the TSC itself, the report's own time base.
pub const CLOCK: &str = "x86-tsc";
/// The most of tracefs' `trace` file read (a buffer full of other events stays bounded).
const MAX_TRACE_BYTES: u64 = 64 << 20;

/// The value of the last `key=` word on a command line (the kernel's `__setup` handlers
/// copy each occurrence over the previous one, so the last wins).
fn last_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The words `trace` appends to the next kernel's command line so that it records its
/// initcalls, given the command line it already has. A `trace_event=` already there is kept
/// and extended (a second one would replace it); a `trace_buf_size=` or `trace_clock=` the
/// user chose is left alone.
pub fn cmdline_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    match last_value(cmdline, "trace_event") {
        Some(have) => {
            let listed: Vec<&str> = have.split(',').filter(|e| !e.is_empty()).collect();
            let missing: Vec<&str> = EVENTS
                .iter()
                .copied()
                .filter(|e| !listed.contains(e))
                .collect();
            if !missing.is_empty() {
                let all: Vec<&str> = listed.into_iter().chain(missing).collect();
                words.push(format!("trace_event={}", all.join(",")));
            }
        }
        None => words.push(format!("trace_event={}", EVENTS.join(","))),
    }
    if last_value(cmdline, "trace_buf_size").is_none() {
        words.push(format!("trace_buf_size={BUF_SIZE}"));
    }
    if last_value(cmdline, "trace_clock").is_none() {
        words.push(format!("trace_clock={CLOCK}"));
    }
    words
}

/// Whether a kernel booted with this command line was asked for both events.
pub fn requested(cmdline: &str) -> bool {
    last_value(cmdline, "trace_event").is_some_and(|v| {
        let listed: Vec<&str> = v.split(',').collect();
        EVENTS.iter().all(|e| listed.contains(e))
    })
}

/// What `report` found in this kernel's tracefs, before placing it on the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// The command line did not ask for the events (`trace --no-initcalls`, or a kernel not
    /// loaded by `trace`).
    NotRequested,
    /// Asked for, but tracefs could not be read: why.
    Unavailable(String),
    /// The `trace` file and the clock it was written with (`trace_clock`'s bracketed entry).
    Read { clock: Option<String>, trace: Trace },
}

/// The tracefs directories, in the order the kernel documents them.
const TRACEFS: [&str; 2] = ["sys/kernel/tracing", "sys/kernel/debug/tracing"];

fn read_bounded(path: &Path) -> std::io::Result<String> {
    let mut s = String::new();
    fs::File::open(path)?
        .take(MAX_TRACE_BYTES)
        .read_to_string(&mut s)?;
    Ok(s)
}

/// The selected clock in `trace_clock` (`local [x86-tsc] counter` → `x86-tsc`).
pub fn selected_clock(text: &str) -> Option<String> {
    let (_, rest) = text.split_once('[')?;
    let (name, _) = rest.split_once(']')?;
    Some(name.to_string())
}

fn read_dir(dir: &Path) -> std::io::Result<Capture> {
    let clock = read_bounded(&dir.join("trace_clock"))
        .ok()
        .and_then(|t| selected_clock(&t));
    let text = read_bounded(&dir.join("trace"))?;
    Ok(Capture::Read {
        clock,
        trace: parse_trace(&text),
    })
}

/// Reads the initcall events of the kernel at `root` (`/`, or a fixture tree). On the live
/// system a tracefs that is not mounted is mounted read-only for the read and unmounted
/// again, so report leaves the mounts as it found them.
pub fn capture(root: &Path, cmdline: &str, live: bool) -> Capture {
    if !requested(cmdline) {
        return Capture::NotRequested;
    }
    if let Some(dir) = TRACEFS
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.join("trace").is_file())
    {
        return read_dir(&dir).unwrap_or_else(|e| {
            Capture::Unavailable(format!("{}: {e}", dir.join("trace").display()))
        });
    }
    if !live {
        return Capture::Unavailable(format!(
            "no tracefs under {} (sys/kernel/tracing)",
            root.display()
        ));
    }
    let dir = PathBuf::from("/sys/kernel/tracing");
    match mount_tracefs_ro(&dir) {
        Ok(()) => {
            let got = read_dir(&dir).unwrap_or_else(|e| {
                Capture::Unavailable(format!("{}: {e}", dir.join("trace").display()))
            });
            unmount(&dir);
            got
        }
        Err(e) => Capture::Unavailable(format!(
            "tracefs is not mounted and mounting it read-only at {} failed: {e} (mount it: \
             `mount -t tracefs tracefs /sys/kernel/tracing`)",
            dir.display()
        )),
    }
}

fn mount_tracefs_ro(dir: &Path) -> nix::Result<()> {
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some("tracefs"),
        dir,
        Some("tracefs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
}

fn unmount(dir: &Path) {
    if let Err(e) = nix::mount::umount2(dir, nix::mount::MntFlags::empty()) {
        log::warn!(
            "could not unmount the tracefs report mounted at {}: {e}",
            dir.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::parse::tests::{fixture, KERNELS};
    use super::*;

    const OURS: &str =
        "trace_event=initcall:initcall_start,initcall:initcall_finish trace_buf_size=512K \
         trace_clock=x86-tsc";

    #[test]
    fn the_words_ask_for_both_events_and_keep_what_the_user_chose() {
        assert_eq!(cmdline_words("root=/dev/vda ro").join(" "), OURS);
        assert!(requested(OURS));
        assert!(!requested("root=/dev/vda"));
        // A trace_event= of the user's is extended, not replaced.
        let w = cmdline_words("trace_event=sched:sched_switch trace_clock=global");
        assert_eq!(
            w,
            [
                "trace_event=sched:sched_switch,initcall:initcall_start,initcall:initcall_finish",
                "trace_buf_size=512K"
            ]
        );
        // Asked already: nothing to add; the last trace_event= is the one the kernel keeps.
        assert!(cmdline_words(&format!("a {OURS}")).is_empty());
        assert!(!requested(&format!(
            "{OURS} trace_event=sched:sched_switch"
        )));
        assert!(requested(&format!(
            "trace_event=sched:sched_switch {}",
            cmdline_words("trace_event=sched:sched_switch")[0]
        )));
    }

    #[test]
    fn capture_reads_tracefs_only_when_the_kernel_was_asked() {
        for k in KERNELS {
            match capture(&fixture(k), OURS, false) {
                Capture::Read { clock, trace } => {
                    assert_eq!(clock.as_deref(), Some("x86-tsc"), "{k}");
                    assert!(!trace.events.is_empty(), "{k}");
                }
                other => panic!("{k}: {other:?}"),
            }
            assert_eq!(
                capture(&fixture(k), "ro quiet", false),
                Capture::NotRequested
            );
        }
        let empty = tempfile::tempdir().unwrap();
        match capture(empty.path(), OURS, false) {
            Capture::Unavailable(why) => assert!(why.contains("no tracefs"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_selected_trace_clock_is_the_bracketed_one() {
        assert_eq!(
            selected_clock("local global counter [x86-tsc]\n").as_deref(),
            Some("x86-tsc")
        );
        assert_eq!(selected_clock("[local] global").as_deref(), Some("local"));
        assert_eq!(selected_clock("local global"), None);
    }
}
