//! `fastkexec report`: in the new kernel, where did the milliseconds of the
//! last kexec reboot go?
//!
//! Everything is placed on the TSC (DESIGN.md §2):
//! - the old kernel's eBPF stamps (CLOCK_MONOTONIC) through the fit the tracer
//!   stored in the record right before the reboot;
//! - the purgatory's stamps are raw TSC;
//! - the new kernel's printk clock (sched_clock) through an anchor: report
//!   writes a line to `/dev/kmsg` between two TSC reads, and the kernel stamps
//!   that line with its printk clock — one (TSC, printk time) pair at 1 µs
//!   resolution. printk time 0 is where the new kernel's clock starts (its TSC
//!   calibration); "Run /init as init process" is where user space starts.
//! - the end of the timeline is the moment report runs, or, with
//!   `--until-kmsg TEXT`, the first kernel log line containing TEXT (a line
//!   an init writes to `/dev/kmsg` when it starts, for instance).
//!
//! Durations use one TSC rate: the old kernel's fit (measured over the whole
//! `trace` run), or without a record a short fit taken now.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use fastkexec_common::{flags, Event, EventKind};
use serde::Serialize;

use crate::ops::load::LoadMode;
use crate::record::clock::{self, Fit};
use crate::record::handoff::{self, BootFacts, Record, RecordError};
use crate::record::next;
use crate::record::phases::{self, Mark, MarkId, Tiling};
use crate::record::units_start::{self, Pid1, UnitsStart};
use crate::record::units_stop::{self, UnitsStop};
use crate::trace::ebpf::{PHASE_PROBES, REBOOT_FALLBACK};
use crate::{Error, Result};

/// A purgatory exit more than this before the new kernel's clock zero cannot
/// be this handoff (early boot takes milliseconds, even under emulation).
pub const MAX_EARLY_BOOT_NS: i128 = 30_000_000_000;

/// A `machine_kexec` probe that took longer than this to return is not
/// believed (the exit stamp is from something else): its entry stamp stands.
const MAX_PROBE_NS: u64 = 1_000_000_000;

/// One `/dev/kmsg` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KmsgLine {
    /// printk time (the kernel's local clock), µs.
    pub ts_us: u64,
    pub text: String,
}

/// Parses `prio,seq,ts_us,flags[,...];text` (continuation lines ignored).
pub fn parse_kmsg_record(rec: &str) -> Option<KmsgLine> {
    let first = rec.lines().next()?;
    let (meta, text) = first.split_once(';')?;
    let ts_us = meta.split(',').nth(2)?.parse().ok()?;
    Some(KmsgLine {
        ts_us,
        text: text.to_string(),
    })
}

/// Reads every record `/dev/kmsg` still holds (non-blocking, one record per read).
pub fn read_kmsg(path: &Path) -> Result<Vec<KmsgLine>> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(l) = buf
                    .get(..n)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(parse_kmsg_record)
                {
                    out.push(l);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // Records overwritten while we read: the next read continues.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(out)
}

/// The `__sched_clock_offset` from the kernel's
/// `sched_clock: Marking stable (tick_gtod, gtod_offset)->(tick_raw, offset)` line.
pub fn sched_clock_offset(text: &str) -> Option<i64> {
    let rest = text.strip_prefix("sched_clock: Marking stable (")?;
    let (_, after) = rest.split_once(")->(")?;
    let inner = after.strip_suffix(')')?;
    let (_, offset) = inner.split_once(',')?;
    offset.trim().parse().ok()
}

/// One (TSC, printk time) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Anchor {
    pub tsc: u64,
    pub printk_ns: u64,
    /// TSC ticks the write took (the pair's uncertainty).
    pub width: u64,
}

/// Writes a debug-level line to `/dev/kmsg` between two TSC reads and finds
/// the kernel's printk stamp of it.
pub fn write_anchor(path: &Path) -> Result<Anchor> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let nonce = clock::rdtsc();
    // "<7>": debug level, so the console does not print it.
    let line = format!("<7>fastkexec: clock anchor {nonce:x}\n");
    let a = clock::rdtsc();
    f.write_all(line.as_bytes())
        .map_err(|e| Error::io(path, e))?;
    let b = clock::rdtsc();
    let wanted = format!("fastkexec: clock anchor {nonce:x}");
    let found = read_kmsg(path)?
        .into_iter()
        .rev()
        .find(|l| l.text == wanted)
        .ok_or_else(|| Error::Tracer {
            problem: format!(
                "{}: the clock anchor line written there did not come back (printk.devkmsg=off?)",
                path.display()
            ),
        })?;
    Ok(Anchor {
        tsc: a / 2 + b / 2,
        printk_ns: found.ts_us.saturating_mul(1000),
        width: b.saturating_sub(a),
    })
}

/// Everything `build` needs, gathered by [`report`] (or a test).
#[derive(Debug, Clone)]
pub struct Inputs {
    pub record: std::result::Result<Record, RecordError>,
    pub facts: BootFacts,
    pub kmsg: Vec<KmsgLine>,
    pub anchor: Option<Anchor>,
    /// End the timeline at the first kmsg line containing this.
    pub until_kmsg: Option<String>,
    /// A TSC fit taken now (used without a record, and as a cross-check).
    pub now_fit: Option<Fit>,
    /// Slowest devices and notifiers to list.
    pub top: usize,
    /// This kernel's release.
    pub release: Option<String>,
    /// Who PID 1 is and, for systemd, its timestamps (`None`: not asked).
    pub pid1: Option<Pid1>,
}

/// The state of the record, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordStatus {
    /// `ok`, `missing`, `torn`, `stale` or `implausible`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_boot_id: Option<String>,
    /// How this kernel was loaded, as the record says
    /// ([`Record::load_mode`]): `uncompressed` or `staged`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<LoadMode>,
    pub events: usize,
    pub events_dropped: u64,
    /// Probe points attached as fentry/fexit, and as kprobe/kretprobe.
    pub fentry: Vec<String>,
    pub kprobe: Vec<String>,
    /// Time the probes spent in themselves (their own measurement), ns.
    pub tracer_self_ns: u64,
    /// Staged loads: how long the trampoline's check of the staged image
    /// took (its entry to its jump; the `trampoline` phase adds the jump).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trampoline_check_ns: Option<u64>,
}

/// A phase with its share of the total.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportPhase {
    /// The machine name ([`phases::PhaseDef::id`], or `unattributed`); the text table shows
    /// [`phases::label`].
    pub name: String,
    pub start_ns: u64,
    pub duration_ns: u64,
    /// Fraction of `total_ns`.
    pub share: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One device's shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceTime {
    pub device: String,
    pub bus: String,
    pub driver: String,
    /// Offset from the origin.
    pub start_ns: u64,
    /// From its start to the next device's start (or `device_shutdown`'s return).
    pub duration_ns: u64,
}

/// One reboot notifier callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotifierTime {
    pub symbol: String,
    pub start_ns: u64,
    pub duration_ns: u64,
}

/// Where the timeline ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndMark {
    /// `kmsg` (a kernel log line) or `report` (the moment report ran).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Sub-spans for comparing with other stopwatches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Spans {
    /// Origin → `machine_kexec` (the old kernel's part).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_kernel_ns: Option<u64>,
    /// `machine_kexec` → the new kernel's clock zero (the handoff).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handoff_ns: Option<u64>,
    /// `machine_kexec` → the purgatory's first instruction: what moving the
    /// image into place costs at exec (a staged load's trampoline included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kexec_to_purgatory_ns: Option<u64>,
    /// Origin → "Run /init".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_run_init_ns: Option<u64>,
    /// Origin → end mark (= `total_ns`).
    pub to_end_ns: u64,
    /// Origin → the moment report ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_report_ns: Option<u64>,
}

/// Clock facts behind the numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClockInfo {
    /// The TSC rate used for every conversion, Hz.
    pub tsc_hz: f64,
    /// Where it came from: `record` (the old kernel's fit) or `now`.
    pub tsc_hz_from: &'static str,
    /// The rate measured now in this kernel, Hz (a cross-check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tsc_hz_now: Option<f64>,
    /// Worst residual of the old kernel's fit, ns.
    pub old_fit_err_ns: u64,
    /// Uncertainty of the printk anchor, ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor_width_ns: Option<u64>,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub record: RecordStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_kernel: Option<String>,
    /// The first mark of the timeline (`request` when `trace --exec` asked).
    pub origin: Option<MarkId>,
    pub end: EndMark,
    pub phases: Vec<ReportPhase>,
    /// Sum of the phase durations.
    pub total_ns: u64,
    pub spans: Spans,
    /// The slowest devices (at most `--top`).
    pub devices: Vec<DeviceTime>,
    pub device_count: usize,
    /// `device_shutdown` entry → first device (probing stopped, cpufreq suspended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_prologue_ns: Option<u64>,
    pub notifiers: Vec<NotifierTime>,
    /// Units stopping in the old kernel (the unit probes' stamps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units_stop: Option<UnitsStop>,
    /// Units starting in this boot (systemd's own timestamps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units_start: Option<UnitsStart>,
    /// The largest single contributors across the levels (`record::next`).
    pub where_next: Vec<next::Contributor>,
    pub unseen: Vec<phases::Unseen>,
    pub clock: ClockInfo,
    pub notes: Vec<String>,
}

impl Report {
    /// Whether a whole, valid record was used.
    pub fn has_record(&self) -> bool {
        self.record.status == "ok"
    }
}

fn kind_names(mask: u64) -> Vec<String> {
    let mut v: Vec<String> = PHASE_PROBES
        .iter()
        .chain([&REBOOT_FALLBACK, &crate::trace::ebpf::DEVICE_PROBE])
        .filter(|p| mask & p.kind.bit() != 0)
        .map(|p| {
            if p.exit {
                format!("{} return", p.function)
            } else {
                p.function.to_string()
            }
        })
        .collect();
    if mask & EventKind::NOTIFIER_ENTER.bit() != 0 {
        v.push("reboot notifier callbacks".into());
    }
    v.dedup();
    v
}

/// The mark each phase probe provides.
pub(crate) fn mark_of(kind: EventKind) -> Option<MarkId> {
    Some(match kind {
        EventKind::REBOOT_ENTER => MarkId::RebootEnter,
        EventKind::KERNEL_KEXEC => MarkId::KernelKexec,
        EventKind::DEVICE_SHUTDOWN_ENTER => MarkId::DeviceShutdown,
        EventKind::DEVICE_SHUTDOWN_EXIT => MarkId::DeviceShutdownExit,
        EventKind::MIGRATE_TO_REBOOT_CPU => MarkId::Migrate,
        EventKind::MIGRATE_TO_REBOOT_CPU_EXIT => MarkId::MigrateExit,
        EventKind::SYSCORE_SHUTDOWN => MarkId::Syscore,
        EventKind::SYSCORE_SHUTDOWN_EXIT => MarkId::SyscoreExit,
        EventKind::MACHINE_SHUTDOWN => MarkId::MachineShutdown,
        EventKind::MACHINE_SHUTDOWN_EXIT => MarkId::MachineShutdownExit,
        EventKind::MACHINE_KEXEC => MarkId::MachineKexec,
        _ => return None,
    })
}

fn function_of(kind: EventKind) -> &'static str {
    PHASE_PROBES
        .iter()
        .chain([&REBOOT_FALLBACK])
        .find(|p| p.kind == kind)
        .map_or("?", |p| p.function)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Marks in TSC ticks, plus what could not be marked.
struct TscMarks {
    at: BTreeMap<MarkId, i128>,
    other: BTreeMap<MarkId, Mark>,
}

impl TscMarks {
    fn new() -> Self {
        Self {
            at: BTreeMap::new(),
            other: BTreeMap::new(),
        }
    }
    fn set(&mut self, id: MarkId, tsc: i128) {
        self.other.remove(&id);
        self.at.insert(id, tsc);
    }
    fn miss(&mut self, id: MarkId, m: Mark) {
        if !self.at.contains_key(&id) {
            self.other.insert(id, m);
        }
    }
}

/// Builds the report from gathered inputs. Pure: no I/O.
pub fn build(inp: &Inputs) -> Report {
    let mut notes = Vec::new();
    // A record that parses must still belong to this boot.
    let record: std::result::Result<&Record, RecordError> = match &inp.record {
        // Plausibility again: `Inputs` may hold a record `parse` never saw.
        Ok(r) => handoff::check_plausible(r)
            .and_then(|()| handoff::check_chain(r, &inp.facts))
            .map(|()| r),
        Err(e) => Err(e.clone()),
    };
    let mut marks = TscMarks::new();

    // --- the new kernel: printk clock → TSC ---
    let fit_for_rate = match (&record, inp.now_fit) {
        (Ok(r), _) => Some((r.header.calib, "record")),
        (Err(_), Some(f)) => Some((f, "now")),
        (Err(_), None) => None,
    };
    let printk_tsc_signed = |ns: i128| -> Option<i128> {
        let (fit, _) = fit_for_rate?;
        let a = inp.anchor?;
        // The conversion saturates for a fit no machine makes (`now_fit` is not checked
        // like a record's): saturate here too rather than overflow.
        Some(i128::from(a.tsc).saturating_sub(fit.ns_to_ticks(i128::from(a.printk_ns) - ns)))
    };
    let printk_tsc = |ns: u64| printk_tsc_signed(i128::from(ns));
    // The new kernel's clock starts when it calibrates the TSC: raw sched_clock
    // 0. Until sched_clock is marked stable (a late initcall) printk time
    // follows the tick-based clock, which can drift from the TSC; from then on
    // printk time = raw sched_clock + the offset that line prints. So raw 0 is
    // at printk time `offset` in the frame of the anchor and "Run /init".
    let stable = inp.kmsg.iter().find_map(|l| sched_clock_offset(&l.text));
    let zero = match stable {
        Some(offset) => printk_tsc_signed(i128::from(offset)),
        None => {
            if inp.anchor.is_some() {
                notes.push(
                    "no \"sched_clock: Marking stable\" line in the kernel log: the new kernel's \
                     clock zero is taken as printk time 0, exact only if printk time ran with the \
                     TSC all along"
                        .into(),
                );
            }
            printk_tsc(0)
        }
    };
    match zero {
        Some(t) => marks.set(MarkId::KernelClockZero, t),
        None => marks.miss(
            MarkId::KernelClockZero,
            Mark::Unseen("no printk clock anchor (cannot write /dev/kmsg?)".into()),
        ),
    }
    let run_init = inp
        .kmsg
        .iter()
        .find(|l| l.text.starts_with("Run ") && l.text.ends_with(" as init process"));
    match run_init.and_then(|l| printk_tsc(l.ts_us.saturating_mul(1000))) {
        Some(t) => marks.set(MarkId::RunInit, t),
        None => marks.miss(
            MarkId::RunInit,
            Mark::Unseen(if run_init.is_none() {
                "no \"Run ... as init process\" line left in the kernel log".into()
            } else {
                "no printk clock anchor".into()
            }),
        ),
    }
    let mut end = EndMark {
        kind: "report",
        text: None,
    };
    let until = inp
        .until_kmsg
        .as_deref()
        .and_then(|want| inp.kmsg.iter().find(|l| l.text.contains(want)));
    match (until, &inp.until_kmsg) {
        (Some(l), _) => {
            if let Some(t) = printk_tsc(l.ts_us.saturating_mul(1000)) {
                marks.set(MarkId::End, t);
                end = EndMark {
                    kind: "kmsg",
                    text: Some(l.text.clone()),
                };
            }
        }
        (None, Some(want)) => notes.push(format!(
            "no kernel log line contains {want:?}: the timeline ends when report ran instead"
        )),
        (None, None) => {}
    }
    if until.is_none() {
        if let Some((t, text)) = units_start::end_mark(inp.pid1.as_ref(), inp.now_fit, &mut notes) {
            marks.set(MarkId::End, t);
            end = EndMark {
                kind: "systemd",
                text: Some(text),
            };
        }
    }
    if !marks.at.contains_key(&MarkId::End) {
        marks.set(MarkId::End, i128::from(inp.facts.now_tsc));
    }

    // --- the old kernel and the purgatory, from the record ---
    let mut status = RecordStatus {
        status: "ok",
        detail: None,
        old_kernel: None,
        old_boot_id: None,
        mode: None,
        events: 0,
        events_dropped: 0,
        fentry: Vec::new(),
        kprobe: Vec::new(),
        tracer_self_ns: 0,
        trampoline_check_ns: None,
    };
    let mut record = record;
    if let Ok(r) = record {
        if let (Some(p), Some(zero)) = (r.purgatory, marks.at.get(&MarkId::KernelClockZero)) {
            let gap = zero.saturating_sub(i128::from(p.exit_tsc));
            let gap_ns = r.header.calib.ticks_to_ns(gap);
            if gap_ns > MAX_EARLY_BOOT_NS {
                record = Err(RecordError::Stale(format!(
                    "the purgatory jumped {:.1} s before this kernel's clock started: that was an \
                     earlier handoff",
                    gap_ns as f64 / 1e9
                )));
            }
        }
    }
    match &record {
        Ok(r) => {
            let fit = r.header.calib;
            status.old_kernel = Some(r.header.kernel_release.clone());
            status.old_boot_id = Some(handoff::format_uuid(&r.header.boot_id));
            status.mode = r.load_mode();
            status.events = r.events.len();
            status.events_dropped = r.dropped;
            status.fentry = kind_names(r.header.attached & r.header.fentry);
            status.kprobe = kind_names(r.header.attached & !r.header.fentry);
            status.tracer_self_ns = r.counters.probe_ns;
            status.trampoline_check_ns = r.trampoline.map(|t| {
                phases::ns_u64(fit.ticks_to_ns(i128::from(t.exit_tsc) - i128::from(t.entry_tsc)))
            });
            if r.dropped > 0 {
                notes.push(format!(
                    "{} events were dropped: the record was full (the tracer sizes it from the \
                     device count)",
                    r.dropped
                ));
            }
            if r.header.flags & flags::REQUEST_STAMPED != 0 {
                marks.set(MarkId::Request, i128::from(r.header.request_tsc));
            } else {
                marks.miss(
                    MarkId::Request,
                    Mark::Unseen(
                        "the reboot was started by something else (trace followed it): the \
                         timeline starts at reboot(2)"
                            .into(),
                    ),
                );
            }
            for p in PHASE_PROBES.iter().chain([&REBOOT_FALLBACK]) {
                let Some(id) = mark_of(p.kind) else { continue };
                match r.events.iter().find(|e| e.kind() == p.kind) {
                    Some(e) => marks.set(id, fit.tsc_at(e.ts_ns)),
                    None if r.header.attached & p.kind.bit() != 0 => marks.miss(
                        id,
                        Mark::NotReached(format!(
                            "{} was watched but not called on this kernel's kexec path",
                            function_of(p.kind)
                        )),
                    ),
                    None => marks.miss(
                        id,
                        Mark::Unseen(format!("no probe could attach to {}", function_of(p.kind))),
                    ),
                }
            }
            // The relocation starts when the machine_kexec probe hands the CPU
            // back: the probe's own time (first-run costs, under emulation
            // milliseconds) is the tracer's, not the kernel's.
            if let Some(mk) = r
                .events
                .iter()
                .find(|e| e.kind() == EventKind::MACHINE_KEXEC)
            {
                let exit = r.counters.last_exit_ns;
                let last = r.events.iter().map(|e| e.ts_ns).max().unwrap_or(0);
                if exit >= mk.ts_ns && exit - mk.ts_ns < MAX_PROBE_NS && last == mk.ts_ns {
                    marks.set(MarkId::MachineKexec, fit.tsc_at(exit));
                    notes.push(format!(
                        "relocation starts when the machine_kexec probe returned: its own {:.3} \
                         ms are in the span before",
                        (exit - mk.ts_ns) as f64 / 1e6
                    ));
                }
            }
            match r.purgatory {
                Some(p) => {
                    marks.set(MarkId::PurgatoryEntry, i128::from(p.entry_tsc));
                    marks.set(MarkId::PurgatoryExit, i128::from(p.exit_tsc));
                }
                None => {
                    let m = Mark::Unseen("the purgatory left no TSC stamps".into());
                    marks.miss(MarkId::PurgatoryEntry, m.clone());
                    marks.miss(MarkId::PurgatoryExit, m);
                }
            }
            match r.trampoline {
                Some(t) => marks.set(MarkId::TrampolineEntry, i128::from(t.entry_tsc)),
                None => marks.miss(
                    MarkId::TrampolineEntry,
                    Mark::NotReached(
                        "no staged trampoline ran (the kernel was not loaded in staged mode)"
                            .into(),
                    ),
                ),
            }
        }
        Err(e) => {
            status.status = match e {
                RecordError::Missing(_) => "missing",
                RecordError::Torn(_) => "torn",
                RecordError::Stale(_) => "stale",
                RecordError::Implausible(_) => "implausible",
            };
            let mut detail = Error::from(e.clone()).to_string();
            if matches!(e, RecordError::Missing(_)) {
                if let Some(id) = &inp.facts.cmdline_boot_id {
                    detail.push_str(&format!(
                        " (boot {id} did trace this reboot — {}= is on the command line — but \
                         its record could not come along: the kernel was loaded in file mode)",
                        handoff::CMDLINE_BOOT_ID
                    ));
                }
            }
            status.detail = Some(detail);
            let why = format!("no usable trace record ({})", status.status);
            for id in [
                MarkId::Request,
                MarkId::RebootEnter,
                MarkId::KernelKexec,
                MarkId::DeviceShutdown,
                MarkId::Migrate,
                MarkId::Syscore,
                MarkId::MachineShutdown,
                MarkId::MachineKexec,
                MarkId::TrampolineEntry,
                MarkId::PurgatoryEntry,
                MarkId::PurgatoryExit,
            ] {
                marks.miss(id, Mark::Unseen(why.clone()));
            }
            // Without the purgatory's stamp nothing marks the kernel's entry.
            marks.miss(MarkId::PurgatoryExit, Mark::Unseen(why));
        }
    }

    // --- tile on a ns axis ---
    let (rate, rate_from) = fit_for_rate.map_or((None, "none"), |(f, w)| (Some(f), w));
    let base = marks.at.values().copied().min().unwrap_or(0);
    let mut ns_marks: BTreeMap<MarkId, Mark> = marks.other.clone();
    if let Some(fit) = rate {
        for (id, t) in &marks.at {
            ns_marks.insert(*id, Mark::At(fit.ticks_to_ns(t.saturating_sub(base))));
        }
    }
    let tiling = phases::tile(&ns_marks);
    let origin_ns = tiling
        .as_ref()
        .and_then(|t| match ns_marks.get(&t.origin) {
            Some(Mark::At(v)) => Some(*v),
            _ => None,
        })
        .unwrap_or(0);
    let off = |id: MarkId| Tiling::offset(&ns_marks, origin_ns, id).map(phases::ns_u64);

    let (devices, device_count, prologue, notifiers) = match (&record, rate) {
        (Ok(r), Some(fit)) => breakdown(r, fit, base, origin_ns, inp.top),
        _ => (Vec::new(), 0, None, Vec::new()),
    };
    let units_stop = match (&record, rate) {
        (Ok(r), Some(fit)) => {
            let reboot = r
                .events
                .iter()
                .find(|e| e.kind() == EventKind::REBOOT_ENTER)
                .map(|e| e.ts_ns);
            units_stop::build(
                &r.events,
                r.counters.state,
                reboot,
                |ts| {
                    i64::try_from(fit.ticks_to_ns(fit.tsc_at(ts).saturating_sub(base)) - origin_ns)
                        .unwrap_or(0)
                },
                inp.top,
            )
        }
        _ => None,
    };
    let units_start = match (&inp.pid1, inp.now_fit, rate) {
        (Some(Pid1::Systemd(t)), Some(now), Some(fit)) => Some(units_start::build(
            t,
            &now,
            |tsc| {
                phases::ns_u64(
                    fit.ticks_to_ns(tsc.saturating_sub(base))
                        .saturating_sub(origin_ns),
                )
            },
            inp.top,
        )),
        _ => None,
    };

    let (phases_out, total_ns, unseen, origin) = match tiling {
        Some(t) => {
            let total = t.total_ns;
            let ps = t
                .phases
                .into_iter()
                .map(|p| ReportPhase {
                    share: if total > 0 {
                        p.duration_ns as f64 / total as f64
                    } else {
                        0.0
                    },
                    name: p.name,
                    start_ns: p.start_ns,
                    duration_ns: p.duration_ns,
                    note: p.note,
                })
                .collect();
            (ps, total, t.unseen, Some(t.origin))
        }
        None => {
            notes.push("no timeline: neither the record nor the kernel log gave a start".into());
            (Vec::new(), 0, Vec::new(), None)
        }
    };
    let spans = Spans {
        old_kernel_ns: off(MarkId::MachineKexec),
        handoff_ns: match (off(MarkId::MachineKexec), off(MarkId::KernelClockZero)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        kexec_to_purgatory_ns: match (off(MarkId::MachineKexec), off(MarkId::PurgatoryEntry)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        to_run_init_ns: off(MarkId::RunInit),
        to_end_ns: total_ns,
        to_report_ns: rate.map(|fit| {
            phases::ns_u64(
                fit.ticks_to_ns(i128::from(inp.facts.now_tsc).saturating_sub(base))
                    .saturating_sub(origin_ns),
            )
        }),
    };
    let clock = ClockInfo {
        tsc_hz: rate.map_or(0.0, |f| f.tsc_hz()),
        tsc_hz_from: rate_from,
        tsc_hz_now: inp.now_fit.map(|f| f.tsc_hz()),
        old_fit_err_ns: inp.record.as_ref().map_or(0, |r| r.header.calib.err_ns),
        anchor_width_ns: match (inp.anchor, rate) {
            (Some(a), Some(f)) => Some(phases::ns_u64(f.ticks_to_ns(i128::from(a.width)))),
            _ => None,
        },
    };
    if let Some(l) = inp
        .kmsg
        .iter()
        .find(|l| l.text.contains("Marking TSC unstable"))
    {
        notes.push(format!(
            "this kernel marked its TSC unstable ({:?}): its printk clock then follows jiffies, \
             not the TSC, so the split between kernel early boot and kernel boot is approximate \
             (the total is not affected); `tsc=reliable` keeps it on the TSC",
            l.text
        ));
    }
    if let (Some(now), true) = (clock.tsc_hz_now, clock.tsc_hz > 0.0) {
        let ppm = (now / clock.tsc_hz - 1.0) * 1e6;
        if ppm.abs() > 1000.0 {
            notes.push(format!(
                "the TSC rate measured now differs from the old kernel's by {ppm:.0} ppm"
            ));
        }
    }
    let mut rep = Report {
        record: status,
        new_kernel: inp.release.clone(),
        origin,
        end,
        phases: phases_out,
        total_ns,
        spans,
        devices,
        device_count,
        device_prologue_ns: prologue,
        notifiers,
        units_stop,
        units_start,
        where_next: Vec::new(),
        unseen,
        clock,
        notes,
    };
    rep.where_next = next::contributors(&rep, WHERE_NEXT);
    rep
}

/// Items in "where to look next".
const WHERE_NEXT: usize = 5;

type Breakdown = (Vec<DeviceTime>, usize, Option<u64>, Vec<NotifierTime>);

/// Per-device and per-notifier times from the events (CLOCK_MONOTONIC, so
/// durations need no conversion; offsets go through the fit).
fn breakdown(r: &Record, fit: Fit, base: i128, origin_ns: i128, top: usize) -> Breakdown {
    let offset = |e: &Event| -> u64 {
        phases::ns_u64(
            fit.ticks_to_ns(fit.tsc_at(e.ts_ns).saturating_sub(base))
                .saturating_sub(origin_ns),
        )
    };
    let mut evs: Vec<&Event> = r.events.iter().collect();
    evs.sort_by_key(|e| e.ts_ns);
    let after_devices = evs
        .iter()
        .find(|e| e.kind() == EventKind::DEVICE_SHUTDOWN_EXIT)
        .or_else(|| {
            evs.iter().find(|e| {
                matches!(
                    e.kind(),
                    EventKind::MIGRATE_TO_REBOOT_CPU | EventKind::MACHINE_SHUTDOWN
                )
            })
        })
        .map(|e| e.ts_ns);
    // Consecutive stamps of the same device (a nested call) count once.
    let mut devs: Vec<&Event> = Vec::new();
    for e in evs.iter().filter(|e| e.kind() == EventKind::DEVICE_ENTER) {
        if devs.last().is_none_or(|l| l.arg != e.arg) {
            devs.push(e);
        }
    }
    let mut devices: Vec<DeviceTime> = devs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let next = devs.get(i + 1).map(|n| n.ts_ns).or(after_devices);
            DeviceTime {
                device: text(e.device_name()),
                bus: text(e.bus_name()),
                driver: text(e.driver_name()),
                start_ns: offset(e),
                duration_ns: next.map_or(0, |n| n.saturating_sub(e.ts_ns)),
            }
        })
        .collect();
    let count = devices.len();
    let prologue = match (
        evs.iter()
            .find(|e| e.kind() == EventKind::DEVICE_SHUTDOWN_ENTER),
        devs.first(),
    ) {
        (Some(s), Some(d)) => Some(d.ts_ns.saturating_sub(s.ts_ns)),
        _ => None,
    };
    devices.sort_by_key(|d| std::cmp::Reverse(d.duration_ns));
    devices.truncate(top);

    let symbol = |ip: u64| -> String {
        r.header
            .notifiers
            .iter()
            .find(|(a, _)| ip >= *a && ip < a.saturating_add(16))
            .map_or_else(|| format!("{ip:#x}"), |(_, n)| n.clone())
    };
    let mut notifiers = Vec::new();
    let mut open: Vec<&Event> = Vec::new();
    for e in &evs {
        match e.kind() {
            EventKind::NOTIFIER_ENTER => open.push(e),
            EventKind::NOTIFIER_EXIT => {
                if let Some(s) = open.pop() {
                    notifiers.push(NotifierTime {
                        symbol: symbol(s.arg),
                        start_ns: offset(s),
                        duration_ns: e.ts_ns.saturating_sub(s.ts_ns),
                    });
                }
            }
            _ => {}
        }
    }
    notifiers.sort_by_key(|n| std::cmp::Reverse(n.duration_ns));
    notifiers.truncate(top);
    (devices, count, prologue, notifiers)
}

/// Options of `fastkexec report`.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Root of the system to inspect (`/`; fixture trees in tests).
    pub root: PathBuf,
    pub until_kmsg: Option<String>,
    pub top: usize,
}

/// Gathers the inputs from the running system and builds the report.
pub fn report(opts: &ReportOptions) -> Result<Report> {
    let now_tsc = clock::rdtsc();
    let first = clock::calibrate_monotonic(16);
    let live = opts.root == Path::new("/");
    let nodes = handoff::read_nodes(&opts.root)?;
    let record = handoff::parse(&nodes);
    let boot_id = fs::read_to_string(opts.root.join("proc/sys/kernel/random/boot_id"))
        .ok()
        .and_then(|s| handoff::parse_uuid(&s));
    let cmdline = fs::read_to_string(opts.root.join("proc/cmdline")).unwrap_or_default();
    let kmsg_path = opts.root.join("dev/kmsg");
    let (anchor, kmsg) = if live {
        let anchor = write_anchor(&kmsg_path)?;
        (Some(anchor), read_kmsg(&kmsg_path)?)
    } else {
        (None, Vec::new())
    };
    let mut samples = first;
    samples.extend(clock::calibrate_monotonic(16));
    let release = fs::read_to_string(opts.root.join("proc/sys/kernel/osrelease"))
        .ok()
        .map(|s| s.trim().to_string());
    Ok(build(&Inputs {
        record,
        facts: BootFacts {
            boot_id,
            cmdline_boot_id: handoff::cmdline_boot_id(&cmdline),
            now_tsc,
        },
        kmsg,
        anchor,
        until_kmsg: opts.until_kmsg.clone(),
        now_fit: Fit::from_samples(&samples),
        top: opts.top,
        release,
        pid1: Some(crate::host::systemd::read(&opts.root)),
    }))
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.record;
        match r.status {
            "ok" => writeln!(
                f,
                "kexec reboot {} → {}{}: record ok ({} events{}; probes: {} fentry/fexit, {} \
                 kprobe)",
                r.old_kernel.as_deref().unwrap_or("?"),
                self.new_kernel.as_deref().unwrap_or("?"),
                r.mode.map(|m| format!(" ({m})")).unwrap_or_default(),
                r.events,
                if r.events_dropped > 0 {
                    format!(", {} dropped", r.events_dropped)
                } else {
                    String::new()
                },
                r.fentry.len(),
                r.kprobe.len()
            )?,
            _ => writeln!(
                f,
                "{}: only this kernel's own phases are shown",
                r.detail.as_deref().unwrap_or(r.status)
            )?,
        }
        let end = match (&self.end.kind, &self.end.text) {
            (&"kmsg", Some(t)) => format!("the kernel log line {t:?}"),
            (&"systemd", Some(t)) => t.clone(),
            _ => "this report".to_string(),
        };
        writeln!(
            f,
            "from {} to {end}: {:.3} ms",
            self.origin
                .map_or_else(|| "?".to_string(), |o| o.to_string()),
            ms(self.total_ns)
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:>10} {:>12} {:>7}  phase",
            "start ms", "duration ms", "share"
        )?;
        for p in &self.phases {
            write!(
                f,
                "{:>10.3} {:>12.3} {:>6.1}%  {}",
                ms(p.start_ns),
                ms(p.duration_ns),
                p.share * 100.0,
                phases::label(&p.name)
            )?;
            if let Some(n) = &p.note {
                write!(f, "  ({n})")?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "{:>10} {:>12.3} {:>6.1}%  total",
            "",
            ms(self.total_ns),
            if self.total_ns > 0 { 100.0 } else { 0.0 }
        )?;
        if let Some(ns) = self.spans.kexec_to_purgatory_ns {
            writeln!(
                f,
                "machine_kexec → purgatory entry: {:.3} ms{}",
                ms(ns),
                match self.record.trampoline_check_ns {
                    Some(c) => format!(
                        " (relocation + staged trampoline; its check of the staged image {:.3} ms)",
                        ms(c)
                    ),
                    None => String::new(),
                }
            )?;
        }
        if !self.devices.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "slowest devices ({} of {} shut down; each from its start to the next device's{}):",
                self.devices.len(),
                self.device_count,
                self.device_prologue_ns
                    .map(|p| format!("; {:.3} ms before the first", ms(p)))
                    .unwrap_or_default()
            )?;
            for d in &self.devices {
                let driver = if d.driver.is_empty() { "-" } else { &d.driver };
                writeln!(
                    f,
                    "{:>10.3} ms  {} ({}, {driver})",
                    ms(d.duration_ns),
                    d.device,
                    if d.bus.is_empty() { "-" } else { &d.bus }
                )?;
            }
        }
        if !self.notifiers.is_empty() {
            writeln!(f)?;
            writeln!(f, "slowest reboot notifiers:")?;
            for n in &self.notifiers {
                writeln!(f, "{:>10.3} ms  {}", ms(n.duration_ns), n.symbol)?;
            }
        }
        if let Some(u) = &self.units_stop {
            writeln!(f)?;
            write!(f, "{u}")?;
        }
        if let Some(u) = &self.units_start {
            writeln!(f)?;
            write!(f, "{u}")?;
        }
        if !self.unseen.is_empty() {
            writeln!(f)?;
            writeln!(f, "not on the timeline:")?;
            for u in &self.unseen {
                writeln!(f, "  {}: {}", phases::label(&u.phase), u.why)?;
            }
        }
        if r.tracer_self_ns > 0 {
            writeln!(
                f,
                "tracer: {:.3} ms inside the probes themselves",
                ms(r.tracer_self_ns)
            )?;
        }
        if !self.where_next.is_empty() {
            writeln!(f)?;
            write!(f, "{}", next::WhereNext(&self.where_next))?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::handoff::tests::{
        ev, header, nodes, pages, with_last_exit, with_trampoline, OLD_BOOT,
    };
    use crate::record::handoff::{parse, parse_uuid};
    use fastkexec_common::{BUS_NAME_LEN, DEVICE_NAME_LEN};

    /// TSC at 2 GHz; CLOCK_MONOTONIC ns n ↔ TSC 10_000_000 + 2(n - 5_000_000)
    /// (the fit of `header()`).
    pub(crate) fn tsc(mono_ns: u64) -> u64 {
        10_000_000 + 2 * (mono_ns - 5_000_000)
    }

    fn dev(ts: u64, ptr: u64, name: &str, bus: &str, drv: &str) -> Event {
        let mut e = ev(EventKind::DEVICE_ENTER, ts, ptr, b"");
        e.name[..name.len()].copy_from_slice(name.as_bytes());
        e.name[DEVICE_NAME_LEN..DEVICE_NAME_LEN + bus.len()].copy_from_slice(bus.as_bytes());
        let d = DEVICE_NAME_LEN + BUS_NAME_LEN;
        e.name[d..d + drv.len()].copy_from_slice(drv.as_bytes());
        e
    }

    /// A 6.1-like reboot: request at mono 5 ms, reboot(2) +1 ms, ... .
    pub(crate) fn events() -> Vec<Event> {
        let ms = 1_000_000;
        vec![
            ev(EventKind::REBOOT_ENTER, 6 * ms, 1, b"fastkexec"),
            ev(EventKind::KERNEL_KEXEC, 6 * ms + 100_000, 1, b"fastkexec"),
            ev(
                EventKind::NOTIFIER_ENTER,
                6 * ms + 200_000,
                0xffff_ffff_8100_1004,
                b"fastkexec",
            ),
            ev(EventKind::NOTIFIER_EXIT, 6 * ms + 700_000, 1, b"fastkexec"),
            ev(EventKind::DEVICE_SHUTDOWN_ENTER, 7 * ms, 1, b"fastkexec"),
            dev(7 * ms + 50_000, 0xa, "0000:00:02.0", "pci", "virtio-pci"),
            dev(9 * ms, 0xb, "serial8250", "platform", "serial8250"),
            dev(9 * ms + 10_000, 0xb, "serial8250", "platform", "serial8250"),
            dev(9 * ms + 500_000, 0xc, "vda", "", ""),
            ev(EventKind::DEVICE_SHUTDOWN_EXIT, 10 * ms, 1, b"fastkexec"),
            ev(
                EventKind::MIGRATE_TO_REBOOT_CPU,
                10 * ms + 10_000,
                1,
                b"fastkexec",
            ),
            ev(
                EventKind::MIGRATE_TO_REBOOT_CPU_EXIT,
                10 * ms + 20_000,
                1,
                b"fastkexec",
            ),
            ev(EventKind::MACHINE_SHUTDOWN, 11 * ms, 1, b"fastkexec"),
            ev(EventKind::MACHINE_SHUTDOWN_EXIT, 12 * ms, 1, b"fastkexec"),
            ev(EventKind::MACHINE_KEXEC, 12 * ms + 100_000, 1, b"fastkexec"),
        ]
    }

    pub(crate) fn inputs(record: std::result::Result<Record, RecordError>) -> Inputs {
        let ms = 2_000_000; // ticks per ms
                            // Purgatory at mono 13 ms .. 13.5 ms; the new kernel's clock zero at
                            // mono 15 ms; Run /init at printk 300 ms; the init's mark at 320 ms;
                            // report at 400 ms (the anchor then).
        let zero = tsc(15_000_000);
        Inputs {
            record,
            facts: BootFacts {
                boot_id: parse_uuid("11111111-2222-3333-4444-555555555555"),
                cmdline_boot_id: Some(OLD_BOOT.into()),
                now_tsc: zero + 400 * ms,
            },
            kmsg: vec![
                KmsgLine {
                    ts_us: 0,
                    text: "Linux version 6.1.0".into(),
                },
                KmsgLine {
                    ts_us: 300_000,
                    text: "Run /init as init process".into(),
                },
                KmsgLine {
                    ts_us: 320_000,
                    text: "FKLAB: new-init".into(),
                },
            ],
            anchor: Some(Anchor {
                tsc: zero + 400 * ms,
                printk_ns: 400_000_000,
                width: 20,
            }),
            until_kmsg: Some("FKLAB: new-init".into()),
            now_fit: None,
            top: 2,
            release: Some("6.1.0-56-cloud-amd64".into()),
            pid1: None,
        }
    }

    pub(crate) fn good_record(events: &[Event]) -> Record {
        // Every probe attached; syscore_shutdown never fires (6.1).
        let h = header(2);
        parse(&nodes(&pages(
            &h,
            events,
            Some((tsc(13_000_000), tsc(13_500_000))),
        )))
        .unwrap()
    }

    /// Found by the `handoff_report` fuzz target (with overflow checks): without a record the
    /// rate comes from the fit taken now, which nothing bounds; a rate of 2^64 ticks per ns
    /// saturates the printk → TSC conversion at i128::MIN, and `anchor − that` overflowed.
    #[test]
    fn an_absurd_fit_taken_now_saturates_instead_of_overflowing() {
        let mut inp = inputs(Err(RecordError::Missing("none".into())));
        inp.now_fit = Some(Fit {
            tsc_a: 0,
            ns_a: 0,
            tsc_b: u64::MAX,
            ns_b: 1,
            err_ns: 0,
        });
        inp.anchor = Some(Anchor {
            tsc: 5,
            printk_ns: 0,
            width: 1,
        });
        inp.kmsg.push(KmsgLine {
            ts_us: u64::MAX,
            text: "Run /init as init process".into(),
        });
        inp.kmsg.retain(|l| l.ts_us != 300_000);
        let r = build(&inp);
        assert_eq!(r.record.status, "missing");
        let mut at = 0u64;
        for p in &r.phases {
            assert_eq!(p.start_ns, at);
            at += p.duration_ns;
        }
        assert_eq!(at, r.total_ns);
    }

    /// Forged records that pass every checksum (they are unkeyed) with clock figures no machine
    /// produces: the report refuses them by name instead of panicking or wrapping.
    #[test]
    fn a_forged_record_with_absurd_clock_figures_is_refused_not_a_panic() {
        let purgatory = Some((tsc(13_000_000), tsc(13_500_000)));
        let mut whole_range = header(2);
        whole_range.calib = Fit {
            tsc_a: 0,
            ns_a: 0,
            tsc_b: u64::MAX,
            ns_b: u64::MAX,
            err_ns: 0,
        };
        let mut late = events();
        late.push(ev(
            EventKind::SYSCORE_SHUTDOWN,
            u64::MAX - 1,
            1,
            b"fastkexec",
        ));
        let mut slow = header(2);
        // 1 kHz: far below any TSC.
        slow.calib.tsc_b = slow.calib.tsc_a + 1;
        for (what, h, evs, field) in [
            (
                "calibration {0,0,MAX,MAX}",
                whole_range.clone(),
                late.clone(),
                "calib",
            ),
            ("an event at MAX-1", header(2), late.clone(), "ts_ns"),
            ("a 1 kHz TSC", slow, events(), "calib"),
        ] {
            let rec = parse(&nodes(&pages(&h, &evs, purgatory)));
            let rep = build(&inputs(rec));
            assert_eq!(rep.record.status, "implausible", "{what}: {:?}", rep.record);
            let detail = rep.record.detail.clone().unwrap_or_default();
            assert!(
                detail.contains("implausible record") && detail.contains(field),
                "{what}: {detail}"
            );
            assert!(!rep.has_record(), "{what}");
        }
    }

    #[test]
    fn a_staged_reboot_splits_relocation_at_the_trampoline() {
        // machine_kexec at mono 12.1 ms, the trampoline at 12.4 .. 12.9 ms,
        // the purgatory at 13 ms.
        let h = header(2);
        let p = pages(&h, &events(), Some((tsc(13_000_000), tsc(13_500_000))));
        let p = with_trampoline(p, tsc(12_400_000), tsc(12_900_000));
        let r = build(&inputs(Ok(parse(&nodes(&p)).unwrap())));
        assert!(r.has_record(), "{:?}", r.record);
        let get = |n: &str| r.phases.iter().find(|p| p.name == n).map(|p| p.duration_ns);
        assert_eq!(get("relocation"), Some(300_000));
        assert_eq!(get("trampoline"), Some(600_000));
        assert_eq!(r.record.trampoline_check_ns, Some(500_000));
        assert_eq!(r.spans.kexec_to_purgatory_ns, Some(900_000));
        assert_eq!(
            r.phases.iter().map(|p| p.duration_ns).sum::<u64>(),
            r.total_ns
        );
        assert!(!r.unseen.iter().any(|u| u.phase == "trampoline"));
        // An older tracer's record (no mode bits): the trampoline's stamps say staged.
        assert_eq!(r.record.mode, Some(LoadMode::Staged));
        assert!(r.to_string().contains(" (staged): record ok"), "{r}");
    }

    #[test]
    fn relocation_starts_when_the_machine_kexec_probe_returns() {
        // machine_kexec stamped at mono 12.1 ms, its probe returned at 12.4 ms.
        let h = header(2);
        let p = pages(&h, &events(), Some((tsc(13_000_000), tsc(13_500_000))));
        let r = build(&inputs(Ok(parse(&nodes(&with_last_exit(
            p.clone(),
            12_400_000,
        )))
        .unwrap())));
        let get = |n: &str| r.phases.iter().find(|p| p.name == n).map(|p| p.duration_ns);
        assert_eq!(get("relocation"), Some(600_000));
        assert_eq!(r.spans.kexec_to_purgatory_ns, Some(600_000));
        assert!(
            r.notes.iter().any(|n| n.contains("its own 0.300 ms")),
            "{:?}",
            r.notes
        );
        assert_eq!(
            r.phases.iter().map(|p| p.duration_ns).sum::<u64>(),
            r.total_ns
        );
        // An exit stamp before the machine_kexec stamp (another probe's) is
        // not believed.
        let r = build(&inputs(Ok(
            parse(&nodes(&with_last_exit(p, 12_000_000))).unwrap()
        )));
        let get = |n: &str| r.phases.iter().find(|p| p.name == n).map(|p| p.duration_ns);
        assert_eq!(get("relocation"), Some(900_000));
        assert!(!r.notes.iter().any(|n| n.contains("probe returned")));
    }

    #[test]
    fn full_report_tiles_from_request_to_the_init_mark() {
        let r = build(&inputs(Ok(good_record(&events()))));
        assert!(r.has_record(), "{:?}", r.record);
        assert_eq!(r.record.mode, Some(LoadMode::Uncompressed));
        let sum: u64 = r.phases.iter().map(|p| p.duration_ns).sum();
        assert_eq!(sum, r.total_ns);
        // Request at mono 5 ms, init mark at mono 15 ms + 320 ms.
        assert_eq!(r.total_ns, 330_000_000);
        assert_eq!(r.end.kind, "kmsg");
        let get = |n: &str| r.phases.iter().find(|p| p.name == n).map(|p| p.duration_ns);
        assert_eq!(get("userspace_shutdown"), Some(1_000_000));
        assert_eq!(get("device_shutdown"), Some(3_000_000));
        assert_eq!(get("relocation"), Some(900_000));
        assert_eq!(get("purgatory"), Some(500_000));
        assert_eq!(get("kernel_early_boot"), Some(1_500_000));
        assert_eq!(get("kernel_boot"), Some(300_000_000));
        assert_eq!(get("user_space"), Some(20_000_000));
        assert!(r
            .unseen
            .iter()
            .any(|u| u.phase == "syscore_shutdown" && u.why.contains("not called")));
        assert_eq!(r.spans.to_run_init_ns, Some(310_000_000));
        assert_eq!(r.spans.old_kernel_ns, Some(7_100_000));
        assert_eq!(r.spans.kexec_to_purgatory_ns, Some(900_000));
        assert!(r
            .unseen
            .iter()
            .any(|u| u.phase == "trampoline" && u.why.contains("not loaded in staged mode")));
        // Devices: virtio-pci is slowest (50 µs → 9 ms), serial counted once.
        assert_eq!(r.device_count, 3);
        assert_eq!(r.devices.len(), 2);
        assert_eq!(r.devices[0].device, "0000:00:02.0");
        assert_eq!(r.devices[0].driver, "virtio-pci");
        assert_eq!(r.devices[0].duration_ns, 1_950_000);
        assert_eq!(r.device_prologue_ns, Some(50_000));
        assert_eq!(r.notifiers[0].symbol, "mce_reboot");
        assert_eq!(r.notifiers[0].duration_ns, 500_000);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["total_ns"], 330_000_000u64);
        assert_eq!(json["phases"][0]["name"], "userspace_shutdown");
        assert!(json["phases"][0]["start_ns"].is_u64());
        let table = r.to_string();
        assert!(table.contains("device shutdown"), "{table}");
        assert!(table.contains("virtio-pci"), "{table}");
    }

    #[test]
    fn without_the_init_mark_the_report_moment_ends_it() {
        let mut i = inputs(Ok(good_record(&events())));
        i.until_kmsg = Some("never printed".into());
        let r = build(&i);
        assert_eq!(r.end.kind, "report");
        assert_eq!(r.total_ns, 410_000_000);
        assert!(r.notes.iter().any(|n| n.contains("never printed")));
    }

    #[test]
    fn a_missing_record_shows_the_new_kernel_and_names_the_rest() {
        let mut i = inputs(Err(RecordError::Missing("none".into())));
        i.now_fit = Some(header(2).calib);
        let r = build(&i);
        assert!(!r.has_record());
        assert_eq!(r.record.status, "missing");
        let names: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["kernel_boot", "user_space"]);
        assert_eq!(r.total_ns, 320_000_000);
        assert!(r.unseen.iter().any(|u| u.phase == "device_shutdown"));
        assert!(r.to_string().contains("only this kernel's own phases"));
    }

    #[test]
    fn stale_and_torn_records_are_not_used() {
        // From an earlier boot: the command line names another.
        let mut i = inputs(Ok(good_record(&events())));
        i.facts.cmdline_boot_id = Some("99999999-2222-3333-4444-555555555555".into());
        let r = build(&i);
        assert_eq!(r.record.status, "stale");
        assert!(r
            .record
            .detail
            .as_deref()
            .unwrap()
            .contains("earlier reboot"));
        assert!(r.phases.iter().all(|p| p.name != "device_shutdown"));
        // A purgatory jump long before this kernel's clock started.
        let h = header(2);
        let far = parse(&nodes(&pages(
            &h,
            &events(),
            Some((tsc(13_000_000), tsc(13_500_000))),
        )))
        .unwrap();
        let mut i = inputs(Ok(far));
        let shift = 60 * 2_000_000_000u64;
        i.anchor = i.anchor.map(|a| Anchor {
            tsc: a.tsc + shift,
            ..a
        });
        i.facts.now_tsc += shift;
        let r = build(&i);
        assert_eq!(r.record.status, "stale", "{:?}", r.record);
        // Torn: a flipped byte in an event.
        let mut p = pages(&header(2), &events(), None);
        p[1][40] ^= 1;
        let r = build(&inputs(parse(&nodes(&p))));
        assert_eq!(r.record.status, "torn");
        assert!(r
            .record
            .detail
            .as_deref()
            .unwrap()
            .contains("rejected as a whole"));
    }

    #[test]
    fn the_clock_zero_comes_from_the_stable_sched_clock_offset() {
        // printk time ran 1 ms slow before sched_clock was marked stable: raw
        // sched_clock 0 lies at printk time -1 ms in the stable frame, 0.5 ms
        // after the purgatory's jump.
        let mut i = inputs(Ok(good_record(&events())));
        i.kmsg.insert(
            1,
            KmsgLine {
                ts_us: 200_000,
                text: "sched_clock: Marking stable (199000000, 0)->(200000000, -1000000)".into(),
            },
        );
        let r = build(&i);
        let get = |n: &str| r.phases.iter().find(|p| p.name == n).map(|p| p.duration_ns);
        assert_eq!(get("kernel_early_boot"), Some(500_000));
        assert_eq!(get("kernel_boot"), Some(301_000_000));
        let sum: u64 = r.phases.iter().map(|p| p.duration_ns).sum();
        assert_eq!(sum, r.total_ns);
        assert!(r.notes.iter().all(|n| !n.contains("Marking stable")));
        assert_eq!(
            sched_clock_offset(
                "sched_clock: Marking stable (5457147530, 35164314)->(8178520286, -2686208442)"
            ),
            Some(-2_686_208_442)
        );
        assert_eq!(
            sched_clock_offset("sched_clock: Marking stable (1, 2)"),
            None
        );
    }

    #[test]
    fn kmsg_records_parse() {
        let l =
            parse_kmsg_record("6,339,5140900,-;Run /init as init process\n SUBSYSTEM=x\n").unwrap();
        assert_eq!(l.ts_us, 5_140_900);
        assert_eq!(l.text, "Run /init as init process");
        assert_eq!(parse_kmsg_record("garbage"), None);
        assert_eq!(parse_kmsg_record("6,1,x,-;t"), None);
        assert_eq!(parse_kmsg_record("6,1,7,-;a;b").unwrap().text, "a;b");
    }
}
