//! `fastkexec trace`: probes on the old kernel's reboot path, and the trace
//! record they fill, handed to the next kernel (DESIGN.md §1–§3).
//!
//! Steps:
//! 1. load the eBPF object with the `EVENTS` map sized from the device count;
//!    tell the probes the `struct device` offsets (from BTF) and the address
//!    of `reboot_notifier_list` (from /proc/kallsyms);
//! 2. map `EVENTS`, touch every page and read its physical address from
//!    /proc/self/pagemap; write a setup_data header at the start of each page,
//!    chaining them;
//! 3. attach every probe point as fentry/fexit when BTF has the function and
//!    ftrace can patch it (available_filter_functions), else as a
//!    kprobe/kretprobe; a probe that attaches neither way is reported and its
//!    phase marked unseen. Reboot notifier callbacks are found by walking
//!    the notifier list from a never-attached eBPF program run once
//!    (`BPF_PROG_TEST_RUN`) and get a kprobe and a kretprobe each;
//! 4. load the kernel like `fastkexec load`, with the pages reserved, chained
//!    into boot_params and given to the purgatory for its TSC stamps, and
//!    `fastkexec.boot_id=<this boot>` on the new command line;
//! 5. calibrate the TSC against CLOCK_MONOTONIC (pairs at start and right
//!    before the request: the fit spans the whole run), stamp the request,
//!    seal the header, and (with `--exec`) reboot; without `--exec` follow a
//!    reboot started by something else, printing the events seen before this
//!    process stops running (few: the kexec path is one syscall).
//!
//! The pages must stay allocated until `machine_kexec`: with `--exec --force`
//! this process holds them (it is inside `reboot(2)`). Otherwise (following,
//! or `systemctl kexec`, which kills every process) the links are pinned in
//! bpffs, which keeps the programs and their map alive after this process is
//! gone. If the tracer stops without a reboot (Ctrl-C, a failed reboot), it
//! unloads the kernel it loaded: that kernel's boot_params point at pages
//! that are about to be freed.

mod attach;
pub mod btf;
pub mod ebpf;
mod kernel;
mod pages;
pub mod preflight;
mod run;
pub mod support;
mod tracer;
pub mod units;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::{Array, MapData};
use aya::programs::{
    kprobe::KProbeLinkId, links::FdLink, trace_point::TracePointLinkId, FEntry, FExit, KProbe,
    RawTracePoint, TracePoint,
};
use aya::{Ebpf, EbpfLoader};
use fastkexec_common::{
    config, flags, state, Event, EventKind, ProbeConfig, EVENTS_PER_PAGE, MAX_EVENT_PAGES,
    NOTIFIER_MAX, NOTIFIER_WALK_SLOTS, OFF_CLAIMED, OFF_PURGATORY, OFF_STATE, OFF_TRAMPOLINE,
    PAGE_SIZE,
};
use serde::Serialize;

use crate::files::lock::KexecLock;
use crate::host::e820::{self, E820Entry, PhysRange};
use crate::ops::load::{self, LoadExtras, LoadMode, LoadOptions, LoadReport, Mode};
use crate::plan::segments::PlanExtras;
use crate::record::clock::{self, Fit, Sample};
use crate::record::handoff::{self, HeaderInfo, CMDLINE_BOOT_ID};
use crate::record::initcalls;
use crate::trace::btf::Btf;
use crate::{host::hostinfo, ops::exec, Error, Result};
use ebpf::ProbePoint;
use kernel::*;
use pages::*;
use tracer::*;

pub use kernel::event_pages_for;
pub use run::{format_event, run, LoadedGuard, TraceSummary};
pub use tracer::unpin;

/// Where follow mode pins the links (bpffs).
pub const PIN_DIR: &str = "/sys/fs/bpf/fastkexec";

/// A deliberate defect for lab tests of the record checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Flip one byte of the sealed header page (the new kernel must say "torn").
    HeaderByte,
    /// Seal the record with another boot id than the one on the next command
    /// line (the new kernel must say "stale").
    OtherBoot,
}

/// Options of `fastkexec trace`.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// How to load the next kernel (as `fastkexec load`).
    pub load: LoadOptions,
    /// Reboot into it once loaded.
    pub exec: bool,
    /// With `exec`: `reboot(2)` at once instead of `systemctl kexec`.
    pub force: bool,
    /// Log every stamp through aya-log.
    pub verbose: bool,
    /// Only the phase-boundary probes: no per-device, no per-notifier stamps.
    pub lean: bool,
    /// Ask the next kernel for its initcall trace events on its command line
    /// ([`crate::record::initcalls::cmdline_words`]).
    pub initcalls: bool,
    /// Printed on stdout right before the reboot request (a stopwatch mark).
    pub mark: Option<String>,
    pub damage: Option<Damage>,
}

/// How one probe point was attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub function: String,
    pub kind: String,
    /// `fentry`, `fexit`, `kprobe`, `kretprobe`, `tracepoint`, or `none`.
    pub how: &'static str,
    /// Why the preferred way (or every way) failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

fn render(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// Where the next kernel can go: its image goes to a fixed physical range in
/// uncompressed mode, but the record's pages come from anywhere in RAM, and
/// the buddy allocator likes the low memory where kernels sit. Returns the
/// smallest shift (a multiple of 2 MiB, what a relocatable x86 kernel
/// accepts) that keeps `footprint` clear of every page and inside RAM.
pub fn phys_delta_clear_of(
    footprint: (u64, u64),
    pages: &[u64],
    memmap: &[E820Entry],
) -> Option<i64> {
    const STEP: u64 = 2 << 20;
    let (start, end) = footprint;
    let clear = |d: u64| {
        let r = PhysRange::new(start.saturating_add(d), end.saturating_add(d));
        !pages
            .iter()
            .any(|&p| r.overlaps(&PhysRange::from_len(p, PAGE_SIZE as u64)))
            && (d == 0 || e820::is_ram(memmap, &r))
    };
    (0..=4096u64)
        .map(|k| k * STEP)
        .find(|&d| clear(d))
        .and_then(|d| i64::try_from(d).ok())
}

/// The next kernel's fixed physical range `[start, end)` in uncompressed
/// mode (its PT_LOADs, bss included), `None` in file mode. A bzImage is
/// extracted into the cache now (the load then uses the same vmlinux).
pub fn kernel_footprint(
    opts: &LoadOptions,
    image: &mut crate::image::KernelImage,
) -> Result<Option<(u64, u64)>> {
    if opts.mode == Mode::File {
        return Ok(None);
    }
    let kernel = image.loadable(crate::image::Extract::Cache(&opts.cache_dir))?;
    Ok(Some(kernel.elf.phys_span()))
}

/// A loaded, attached tracer with its record pages.
pub struct Tracer {
    ebpf: Ebpf,
    pages: MappedPages,
    phys: Vec<u64>,
    pub attachments: Vec<Attachment>,
    /// Notifier callbacks attached to: (address, symbol).
    pub notifiers: Vec<(u64, String)>,
    attached: u64,
    fentry: u64,
    device_names: bool,
    boot_id: [u8; 16],
    release: String,
    samples: Vec<Sample>,
    /// fentry/fexit links, taken from their programs (always bpf links).
    links: Vec<FdLink>,
    /// Perf-event links left inside their programs (kprobes, the tracepoint):
    /// taken only to pin, since a legacy perf link cannot become an `FdLink`
    /// and would be detached by a failed conversion.
    perf_links: Vec<PerfLink>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Notes for the user (decisions, degraded features).
    pub notes: Vec<String>,
    /// How the next kernel was loaded: `flags::LOAD_*` for the header.
    load_flags: u32,
    /// The unit probes are attached ([`units`]).
    units: bool,
}

#[cfg(test)]
mod tests;
