//! The trace record that rides across kexec (DESIGN.md §3): its byte format,
//! how the old kernel's user space fills it, and how the new kernel validates
//! it.
//!
//! The record is the `EVENTS` map of the eBPF programs: a header page and
//! event pages ([`fastkexec_common::HeaderPage`], [`fastkexec_common::EventPage`]).
//! Every page starts with a boot_params `setup_data` header of type
//! [`SETUP_TYPE_TRACE`] (0x464b5854, "FKXT": no kernel uses it; the kernel
//! reserves every setup_data node whatever its type), and the pages are
//! chained into the next kernel's boot_params. The new kernel shows each node
//! as `/sys/kernel/boot_params/setup_data/N/{type,data}`.
//!
//! Trust: the record is untrusted input. It is used only whole:
//! - **missing**: no node of our type (not traced, file mode, another loader);
//! - **torn**: a page missing or twice, a bad magic/version/length, the
//!   header checksum (user space's part) or the sum of event hashes (the
//!   probes' part) does not match, or bytes after the last event;
//! - **stale**: the record names another boot than the one this kernel came
//!   from: `fastkexec trace` puts the old kernel's boot id both in the record
//!   and on the next kernel's command line (`fastkexec.boot_id=`); they must
//!   agree, the record must not be this boot's, and the TSC must not have gone
//!   backwards since the purgatory stamped it.
//!
//! Not covered by a checksum: the probes' informational counters (their own
//! time, the state bits) and the purgatory's and trampoline's stamps, which
//! are written after everything else by code that cannot checksum; a damaged
//! stamp magic makes
//! the stamps absent, and the report checks that the stamps fall between the
//! old kernel's last event and the new kernel's start.

use std::fmt;
use std::fs;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};

use fastkexec_common::{
    event_hash, Event, EventPage, HeaderPage, NotifierSym, EVENTS_PER_PAGE, EVENT_NAME_LEN,
    HEADER_SUM_AT, HEADER_SUM_FROM, MAX_EVENT_PAGES, NOTIFIER_MAX, NOTIFIER_NAME_LEN, OFF_CLAIMED,
    OFF_EVENT_SUM, OFF_LAST_EXIT, OFF_PROBE_NS, OFF_PURGATORY, OFF_STATE, OFF_TRAMPOLINE,
    PAGE_EVENTS_OFFSET, PAGE_MAGIC, PAGE_SIZE, RECORD_MAGIC, RECORD_VERSION,
    SETUP_DATA_HEADER_SIZE,
};
use serde::Serialize;

pub use fastkexec_common::SETUP_TYPE_TRACE;

use crate::ops::load::LoadMode;
use crate::record::clock::{Fit, MAX_FIT_SPAN_NS};
use crate::{bytes, Error, Result};

/// Bytes of one node's data (a page minus its setup_data header).
pub const PAGE_DATA_LEN: usize = PAGE_SIZE - SETUP_DATA_HEADER_SIZE;

/// The kernel command-line parameter that carries the old kernel's boot id to
/// the new kernel. The dot makes the kernel treat it as a module parameter of
/// a module that does not exist: ignored, and not passed on to init.
pub const CMDLINE_BOOT_ID: &str = "fastkexec.boot_id";

/// `"FKXTSC01"`: the purgatory's TSC record (see blobs/purgatory.rs).
const PURGATORY_MAGIC: u64 = crate::blobs::purgatory::LAYOUT.tsc_magic;
/// `"FKXTRM01"`: the staged trampoline's TSC record (see blobs/trampoline.rs).
const TRAMPOLINE_MAGIC: u64 = crate::blobs::trampoline::LAYOUT.tsc_magic;

/// What user space writes into the header page before the reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Pages in the record, the header page included.
    pub page_count: u32,
    /// [`fastkexec_common::flags`] bits.
    pub flags: u32,
    /// The old kernel's boot id.
    pub boot_id: [u8; 16],
    /// The old kernel's release.
    pub kernel_release: String,
    /// [`fastkexec_common::EventKind::bit`]s of the probes that attached.
    pub attached: u64,
    /// Bits of the probes attached as fentry/fexit.
    pub fentry: u64,
    /// TSC and CLOCK_MONOTONIC when the reboot was requested.
    pub request_tsc: u64,
    pub request_mono_ns: u64,
    /// The old kernel's CLOCK_MONOTONIC → TSC fit.
    pub calib: Fit,
    /// Reboot notifier callbacks attached to: (address, symbol).
    pub notifiers: Vec<(u64, String)>,
}

/// The probes' counters and the purgatory stamps (not covered by the header
/// checksum: they are written after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ProbeCounters {
    pub claimed: u64,
    pub event_sum: u64,
    pub probe_ns: u64,
    pub state: u64,
    /// When the latest probe returned (ns on the probes' clock); 0 if no
    /// probe wrote it.
    pub last_exit_ns: u64,
}

/// TSC stamps the purgatory copied into the header page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PurgatoryStamps {
    /// First instruction of the purgatory.
    pub entry_tsc: u64,
    /// Right before the jump to the kernel.
    pub exit_tsc: u64,
    /// Segments checksummed (with `--verify`).
    pub verified: u64,
}

/// TSC stamps the staged trampoline copied into the header page (staged
/// loads only: it runs between `machine_kexec` and the purgatory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TrampolineStamps {
    /// First instruction of the trampoline.
    pub entry_tsc: u64,
    /// Right before the jump to the staged purgatory.
    pub exit_tsc: u64,
    /// Its check result: 0 = the staged image was intact (otherwise it
    /// resets the machine instead of jumping, and no kernel reads this).
    pub result: u64,
}

/// A validated record.
#[derive(Debug, Clone)]
pub struct Record {
    pub header: HeaderInfo,
    /// Stored events in slot order.
    pub events: Vec<Event>,
    pub counters: ProbeCounters,
    /// Events claimed but not stored (the pages were full).
    pub dropped: u64,
    /// `None` when the purgatory did not copy its stamps (not our purgatory,
    /// or it never ran).
    pub purgatory: Option<PurgatoryStamps>,
    /// `None` unless the kernel was staged and the trampoline copied its
    /// stamps.
    pub trampoline: Option<TrampolineStamps>,
}

impl Record {
    /// How the kernel reading this record was loaded, as its header says
    /// ([`fastkexec_common::flags::LOAD_MASK`]). A record from a fastkexec that
    /// did not write the mode says it through what rode along: the staged
    /// trampoline's stamps mean `staged`; otherwise `uncompressed`, the only
    /// other mode a record rides in. `None` for a value no writer uses.
    pub fn load_mode(&self) -> Option<LoadMode> {
        use fastkexec_common::flags::{LOAD_MASK, LOAD_STAGED, LOAD_UNCOMPRESSED, LOAD_UNKNOWN};
        match self.header.flags & LOAD_MASK {
            LOAD_UNCOMPRESSED => Some(LoadMode::Uncompressed),
            LOAD_STAGED => Some(LoadMode::Staged),
            LOAD_UNKNOWN if self.trampoline.is_some() => Some(LoadMode::Staged),
            LOAD_UNKNOWN => Some(LoadMode::Uncompressed),
            _ => None,
        }
    }
}

/// The [`fastkexec_common::flags`] bits that tell the next kernel how it was
/// loaded (none for file mode, whose kernel never receives the record).
pub fn load_mode_flags(mode: LoadMode) -> u32 {
    use fastkexec_common::flags::{LOAD_STAGED, LOAD_UNCOMPRESSED, LOAD_UNKNOWN};
    match mode {
        LoadMode::Uncompressed => LOAD_UNCOMPRESSED,
        LoadMode::Staged => LOAD_STAGED,
        LoadMode::File => LOAD_UNKNOWN,
    }
}

/// Why a record cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// No record at all.
    Missing(String),
    /// The record is damaged or incomplete.
    Torn(String),
    /// The record belongs to another boot.
    Stale(String),
    /// The record is whole (its checksums hold) but says what no machine does: a clock rate,
    /// span or stamp out of bounds. Written by a broken clock, or forged (the checksums are
    /// not keyed).
    Implausible(String),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Missing(s) => write!(f, "missing: {s}"),
            RecordError::Torn(s) => write!(f, "torn: {s}"),
            RecordError::Stale(s) => write!(f, "stale: {s}"),
            RecordError::Implausible(s) => write!(f, "implausible: {s}"),
        }
    }
}

impl From<RecordError> for Error {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Missing(reason) => Error::TraceRecordMissing { reason },
            RecordError::Torn(what) => Error::TraceRecordTorn { what },
            RecordError::Stale(why) => Error::TraceRecordStale { why },
            RecordError::Implausible(what) => Error::TraceRecordImplausible { what },
        }
    }
}

fn put(page: &mut [u8], off: usize, bytes: &[u8]) {
    // The header layout is fixed and fits a page: nothing to report when it would not.
    let _ = bytes::put(page, off, bytes);
}

/// A field of a record page; 0 beyond the page, which the checks then refuse.
fn get_u32(b: &[u8], off: usize) -> u32 {
    bytes::u32_at(b, off).unwrap_or(0)
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    bytes::u64_at(b, off).unwrap_or(0)
}

fn nul_padded<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (d, c) in out.iter_mut().zip(s.bytes()) {
        *d = c;
    }
    out
}

fn until_nul(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(b.get(..end).unwrap_or(b)).into_owned()
}

mod layout;
mod parse;
mod validate;

pub use layout::*;
pub use parse::*;
pub use validate::*;

#[cfg(test)]
pub(crate) mod tests;
