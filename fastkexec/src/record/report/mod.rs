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
use crate::record::initcalls::{self, Capture, Initcalls};
use crate::record::next;
use crate::record::phases::{self, Mark, MarkId, Tiling};
use crate::record::probes::{DEVICE_PROBE, PHASE_PROBES, REBOOT_FALLBACK};
use crate::record::units_start::{self, Pid1, UnitsStart};
use crate::record::units_stop::{self, UnitsStop};
use crate::{Error, Result};

mod build;
mod kmsg;
mod marks;
mod text;

pub use build::build;
pub use kmsg::{parse_kmsg_record, read_kmsg, sched_clock_offset, write_anchor, Anchor, KmsgLine};
pub(crate) use marks::mark_of;
use marks::*;

/// A purgatory exit more than this before the new kernel's clock zero cannot
/// be this handoff (early boot takes milliseconds, even under emulation).
pub const MAX_EARLY_BOOT_NS: i128 = 30_000_000_000;

/// A `machine_kexec` probe that took longer than this to return is not
/// believed (the exit stamp is from something else): its entry stamp stands.
const MAX_PROBE_NS: u64 = 1_000_000_000;

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
    /// The initcall events found in tracefs.
    pub initcalls: Capture,
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
    /// `kmsg` (a kernel log line), `systemd` (its default target reached) or `report` (the
    /// moment report ran).
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
    pub unseen: Vec<phases::Unseen>,
    pub clock: ClockInfo,
    /// The new kernel's initcalls under "kernel boot".
    pub initcalls: Initcalls,
    /// Units stopping in the old kernel (the unit probes' stamps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units_stop: Option<UnitsStop>,
    /// Units starting in this boot (systemd's own timestamps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units_start: Option<UnitsStart>,
    /// The largest single contributors across the levels ([`next`]).
    pub where_next: Vec<next::Contributor>,
    pub notes: Vec<String>,
}

impl Report {
    /// Whether a whole, valid record was used.
    pub fn has_record(&self) -> bool {
        self.record.status == "ok"
    }
}

/// Options of `fastkexec report`.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Root of the system to inspect (`/`; fixture trees in tests).
    pub root: PathBuf,
    pub until_kmsg: Option<String>,
    pub top: usize,
    /// Who PID 1 is, read by the caller (`host::systemd`: the D-Bus read is not the
    /// record's business).
    pub pid1: Option<Pid1>,
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
    let initcalls = initcalls::capture(&opts.root, &cmdline, live);
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
        initcalls,
        pid1: opts.pid1.clone(),
    }))
}

#[cfg(test)]
pub(crate) mod tests;
