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
use crate::{Error, Result};

/// Bytes of one node's data (a page minus its setup_data header).
pub const PAGE_DATA_LEN: usize = PAGE_SIZE - SETUP_DATA_HEADER_SIZE;

/// The kernel command-line parameter that carries the old kernel's boot id to
/// the new kernel. The dot makes the kernel treat it as a module parameter of
/// a module that does not exist: ignored, and not passed on to init.
pub const CMDLINE_BOOT_ID: &str = "fastkexec.boot_id";

/// `"FKXTSC01"`: the purgatory's TSC record (see blobs/purgatory.rs).
const PURGATORY_MAGIC: u64 = crate::blobs::purgatory::TSC_MAGIC;
/// `"FKXTRM01"`: the staged trampoline's TSC record (see blobs/trampoline.rs).
const TRAMPOLINE_MAGIC: u64 = crate::blobs::trampoline::TSC_MAGIC;

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
    if let Some(dst) = page.get_mut(off..off + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

fn get_u32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
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

/// Checksum of a header page's user-space part (`HEADER_SUM_FROM..HEADER_SUM_AT`).
pub fn header_checksum(page: &[u8]) -> u64 {
    let mut h = fastkexec_common::fmix64(u64::from_le_bytes(*b"FKXHEADR"));
    let mut off = HEADER_SUM_FROM;
    while off + 8 <= HEADER_SUM_AT {
        h = fastkexec_common::fmix64(h ^ get_u64(page, off));
        off += 8;
    }
    h
}

/// The whole header page as user space writes it: setup_data `type`/`len`
/// filled, `next` 0 (the caller links pages), the probe counters and the
/// purgatory area zero, and the checksum computed.
pub fn encode_header(h: &HeaderInfo) -> Vec<u8> {
    let mut p = vec![0u8; PAGE_SIZE];
    put(&mut p, 8, &SETUP_TYPE_TRACE.to_le_bytes());
    put(&mut p, 12, &(PAGE_DATA_LEN as u32).to_le_bytes());
    put(
        &mut p,
        offset_of!(HeaderPage, magic),
        &RECORD_MAGIC.to_le_bytes(),
    );
    put(
        &mut p,
        offset_of!(HeaderPage, version),
        &RECORD_VERSION.to_le_bytes(),
    );
    put(
        &mut p,
        offset_of!(HeaderPage, page_count),
        &h.page_count.to_le_bytes(),
    );
    put(
        &mut p,
        offset_of!(HeaderPage, event_size),
        &(size_of::<Event>() as u32).to_le_bytes(),
    );
    put(
        &mut p,
        offset_of!(HeaderPage, events_per_page),
        &(EVENTS_PER_PAGE as u32).to_le_bytes(),
    );
    put(
        &mut p,
        offset_of!(HeaderPage, flags),
        &h.flags.to_le_bytes(),
    );
    let notifiers: Vec<&(u64, String)> = h.notifiers.iter().take(NOTIFIER_MAX).collect();
    put(
        &mut p,
        offset_of!(HeaderPage, notifier_count),
        &(notifiers.len() as u32).to_le_bytes(),
    );
    put(&mut p, offset_of!(HeaderPage, boot_id), &h.boot_id);
    put(
        &mut p,
        offset_of!(HeaderPage, kernel_release),
        &nul_padded::<64>(&h.kernel_release),
    );
    for (off, v) in [
        (offset_of!(HeaderPage, attached), h.attached),
        (offset_of!(HeaderPage, fentry), h.fentry),
        (offset_of!(HeaderPage, request_tsc), h.request_tsc),
        (offset_of!(HeaderPage, request_mono_ns), h.request_mono_ns),
        (offset_of!(HeaderPage, calib_tsc_a), h.calib.tsc_a),
        (offset_of!(HeaderPage, calib_mono_a), h.calib.ns_a),
        (offset_of!(HeaderPage, calib_tsc_b), h.calib.tsc_b),
        (offset_of!(HeaderPage, calib_mono_b), h.calib.ns_b),
        (offset_of!(HeaderPage, calib_err_ns), h.calib.err_ns),
    ] {
        put(&mut p, off, &v.to_le_bytes());
    }
    for (i, (addr, name)) in notifiers.into_iter().enumerate() {
        let base = offset_of!(HeaderPage, notifiers) + i * size_of::<NotifierSym>();
        put(&mut p, base, &addr.to_le_bytes());
        put(&mut p, base + 8, &nul_padded::<NOTIFIER_NAME_LEN>(name));
    }
    let sum = header_checksum(&p);
    put(&mut p, HEADER_SUM_AT, &sum.to_le_bytes());
    p
}

/// Bytes 8..32 of event page `index`: setup_data type/len, page magic, index.
pub fn event_page_prefix(index: u32) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[0..4].copy_from_slice(&SETUP_TYPE_TRACE.to_le_bytes());
    b[4..8].copy_from_slice(&(PAGE_DATA_LEN as u32).to_le_bytes());
    b[8..12].copy_from_slice(&PAGE_MAGIC.to_le_bytes());
    b[12..16].copy_from_slice(&index.to_le_bytes());
    b
}

/// Serialises an event as the probes store it.
pub fn event_bytes(e: &Event) -> [u8; size_of::<Event>()] {
    let mut b = [0u8; size_of::<Event>()];
    b[0..4].copy_from_slice(&e.kind.to_le_bytes());
    b[4..8].copy_from_slice(&e.cpu.to_le_bytes());
    b[8..16].copy_from_slice(&e.ts_ns.to_le_bytes());
    b[16..24].copy_from_slice(&e.arg.to_le_bytes());
    b[24..].copy_from_slice(&e.name);
    b
}

fn event_from(b: &[u8]) -> Event {
    let mut name = [0u8; EVENT_NAME_LEN];
    if let Some(src) = b.get(24..24 + EVENT_NAME_LEN) {
        name.copy_from_slice(src);
    }
    Event {
        kind: get_u32(b, 0),
        cpu: get_u32(b, 4),
        ts_ns: get_u64(b, 8),
        arg: get_u64(b, 16),
        name,
    }
}

/// Page and byte offset of event slot `slot`.
pub fn slot_place(slot: u64) -> (u64, usize) {
    let epp = EVENTS_PER_PAGE as u64;
    (
        1 + slot / epp,
        PAGE_EVENTS_OFFSET + (slot % epp) as usize * size_of::<Event>(),
    )
}

/// One setup_data node as the new kernel shows it in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its number (directory name), for messages.
    pub nr: u32,
    pub kind: u32,
    pub data: Vec<u8>,
}

/// Where the running kernel lists the setup_data nodes it was booted with.
pub fn setup_data_dir(root: &Path) -> PathBuf {
    root.join("sys/kernel/boot_params/setup_data")
}

/// Reads every setup_data node of our type (other types are skipped without
/// reading their data). A missing directory means no nodes at all.
pub fn read_nodes(root: &Path) -> Result<Vec<Node>> {
    let dir = setup_data_dir(root);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    let mut nodes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let Some(nr) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let tpath = entry.path().join("type");
        let text = fs::read_to_string(&tpath).map_err(|e| Error::io(&tpath, e))?;
        let t = text.trim();
        let kind =
            u32::from_str_radix(t.trim_start_matches("0x"), 16).map_err(|_| Error::Parse {
                path: tpath.clone(),
                what: "setup_data type",
                content: t.to_string(),
            })?;
        if kind != SETUP_TYPE_TRACE {
            continue;
        }
        let dpath = entry.path().join("data");
        let data = fs::read(&dpath).map_err(|e| Error::io(&dpath, e))?;
        nodes.push(Node { nr, kind, data });
    }
    nodes.sort_by_key(|n| n.nr);
    Ok(nodes)
}

/// Assembles and validates the record from the setup_data nodes.
pub fn parse(nodes: &[Node]) -> std::result::Result<Record, RecordError> {
    let ours: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.kind == SETUP_TYPE_TRACE)
        .collect();
    if ours.is_empty() {
        return Err(RecordError::Missing(format!(
            "no boot_params setup_data node of type {SETUP_TYPE_TRACE:#x}: the previous kernel did \
             not run `fastkexec trace`, or loaded this kernel in file mode or with another loader \
             (the record can only ride along in uncompressed or staged mode)"
        )));
    }
    // Rebuild whole pages: the 16-byte setup_data header is not in `data`.
    let mut header: Option<Vec<u8>> = None;
    let mut pages: Vec<(u32, u32, Vec<u8>)> = Vec::new();
    for n in &ours {
        if n.data.len() != PAGE_DATA_LEN {
            return Err(RecordError::Torn(format!(
                "setup_data node {} holds {} bytes, a record page holds {PAGE_DATA_LEN}",
                n.nr,
                n.data.len()
            )));
        }
        let mut page = vec![0u8; SETUP_DATA_HEADER_SIZE];
        page.extend_from_slice(&n.data);
        if get_u64(&page, offset_of!(HeaderPage, magic)) == RECORD_MAGIC {
            if header.is_some() {
                return Err(RecordError::Torn(
                    "two header pages: records of two reboots are mixed".into(),
                ));
            }
            header = Some(page);
        } else if get_u32(&page, offset_of!(EventPage, magic)) == PAGE_MAGIC {
            pages.push((n.nr, get_u32(&page, offset_of!(EventPage, index)), page));
        } else {
            return Err(RecordError::Torn(format!(
                "setup_data node {} has neither the record magic nor the page magic",
                n.nr
            )));
        }
    }
    let Some(hp) = header else {
        return Err(RecordError::Torn("the header page is missing".into()));
    };

    let version = get_u32(&hp, offset_of!(HeaderPage, version));
    if version != RECORD_VERSION {
        return Err(RecordError::Torn(format!(
            "record version {version}, this fastkexec reads version {RECORD_VERSION} (use the \
             fastkexec build that wrote it)"
        )));
    }
    let stored = get_u64(&hp, HEADER_SUM_AT);
    let computed = header_checksum(&hp);
    if stored != computed {
        return Err(RecordError::Torn(format!(
            "header checksum {stored:#018x} stored, {computed:#018x} computed: the header page was \
             changed after the tracer sealed it"
        )));
    }
    if hp
        .get(OFF_LAST_EXIT + 8..)
        .is_some_and(|t| t.iter().any(|&b| b != 0))
    {
        return Err(RecordError::Torn(
            "unused bytes of the header page are not zero".into(),
        ));
    }
    let page_count = get_u32(&hp, offset_of!(HeaderPage, page_count));
    let event_size = get_u32(&hp, offset_of!(HeaderPage, event_size));
    let epp = get_u32(&hp, offset_of!(HeaderPage, events_per_page));
    if event_size as usize != size_of::<Event>() || epp as usize != EVENTS_PER_PAGE {
        return Err(RecordError::Torn(format!(
            "events of {event_size} bytes, {epp} per page; this fastkexec reads {} and {}",
            size_of::<Event>(),
            EVENTS_PER_PAGE
        )));
    }
    if !(1..=MAX_EVENT_PAGES + 1).contains(&page_count) {
        return Err(RecordError::Torn(format!(
            "length of {page_count} pages is impossible"
        )));
    }
    if ours.len() != page_count as usize {
        return Err(RecordError::Torn(format!(
            "the header says {page_count} pages, {} setup_data nodes of the record arrived",
            ours.len()
        )));
    }
    let mut by_index: Vec<Option<&Vec<u8>>> = vec![None; page_count as usize];
    for (nr, idx, page) in &pages {
        match by_index.get_mut(*idx as usize) {
            Some(slot @ None) if *idx != 0 => *slot = Some(page),
            _ => {
                return Err(RecordError::Torn(format!(
                    "setup_data node {nr} claims page index {idx}, which is out of range or taken"
                )))
            }
        }
    }
    if let Some(missing) = (1..page_count as usize).find(|&i| by_index[i].is_none()) {
        return Err(RecordError::Torn(format!(
            "event page {missing} is missing"
        )));
    }

    let counters = ProbeCounters {
        claimed: get_u64(&hp, OFF_CLAIMED),
        event_sum: get_u64(&hp, OFF_EVENT_SUM),
        probe_ns: get_u64(&hp, OFF_PROBE_NS),
        state: get_u64(&hp, OFF_STATE),
        last_exit_ns: get_u64(&hp, OFF_LAST_EXIT),
    };
    let capacity = u64::from(page_count - 1) * EVENTS_PER_PAGE as u64;
    let stored_n = counters.claimed.min(capacity);
    let mut events = Vec::with_capacity(stored_n as usize);
    let mut sum = 0u64;
    for slot in 0..capacity {
        let (page, off) = slot_place(slot);
        let Some(Some(p)) = by_index.get(page as usize) else {
            return Err(RecordError::Torn(format!("event page {page} is missing")));
        };
        let bytes = p.get(off..off + size_of::<Event>()).unwrap_or(&[]);
        if slot < stored_n {
            let e = event_from(bytes);
            if e.kind == 0 {
                return Err(RecordError::Torn(format!(
                    "event {slot} was claimed but never written (the reboot overtook a probe)"
                )));
            }
            sum = sum.wrapping_add(event_hash(slot as u32, &e));
            events.push(e);
        } else if bytes.iter().any(|&b| b != 0) {
            return Err(RecordError::Torn(format!(
                "slot {slot} after the last of {stored_n} events is not empty"
            )));
        }
    }
    if sum != counters.event_sum {
        return Err(RecordError::Torn(format!(
            "the events do not add up to the probes' checksum ({sum:#018x} computed, {:#018x} \
             stored): an event was changed or lost after it was written",
            counters.event_sum
        )));
    }
    // Bytes the record never uses must still be zero.
    for (i, p) in by_index.iter().enumerate().skip(1) {
        if let Some(p) = p {
            let used = PAGE_EVENTS_OFFSET + EVENTS_PER_PAGE * size_of::<Event>();
            let reserved = offset_of!(EventPage, reserved);
            if p.get(used..).is_some_and(|t| t.iter().any(|&b| b != 0)) || get_u64(p, reserved) != 0
            {
                return Err(RecordError::Torn(format!(
                    "unused bytes of event page {i} are not zero"
                )));
            }
        }
    }

    // A TSC record (magic, entry, exit, one more word) as our blobs copy it.
    let stamps = |off: usize, magic: u64, who: &str| match get_u64(&hp, off) == magic {
        false => Ok(None),
        true => {
            let (entry, exit) = (get_u64(&hp, off + 8), get_u64(&hp, off + 16));
            if exit < entry {
                return Err(RecordError::Torn(format!(
                    "{who} stamps run backwards (entry {entry} > exit {exit})"
                )));
            }
            Ok(Some((entry, exit, get_u64(&hp, off + 24))))
        }
    };
    let purgatory = stamps(OFF_PURGATORY, PURGATORY_MAGIC, "purgatory")?.map(
        |(entry_tsc, exit_tsc, verified)| PurgatoryStamps {
            entry_tsc,
            exit_tsc,
            verified,
        },
    );
    let trampoline = stamps(OFF_TRAMPOLINE, TRAMPOLINE_MAGIC, "trampoline")?.map(
        |(entry_tsc, exit_tsc, result)| TrampolineStamps {
            entry_tsc,
            exit_tsc,
            result,
        },
    );
    if let Some(t) = trampoline {
        // It jumps to the purgatory, so it cannot have run after it.
        if let Some(p) = purgatory.filter(|p| p.entry_tsc < t.exit_tsc) {
            return Err(RecordError::Torn(format!(
                "the trampoline's exit stamp {} is after the purgatory's entry stamp {}",
                t.exit_tsc, p.entry_tsc
            )));
        }
    }

    let mut boot_id = [0u8; 16];
    if let Some(b) = hp.get(offset_of!(HeaderPage, boot_id)..offset_of!(HeaderPage, boot_id) + 16) {
        boot_id.copy_from_slice(b);
    }
    let release_at = offset_of!(HeaderPage, kernel_release);
    let n_notifiers =
        (get_u32(&hp, offset_of!(HeaderPage, notifier_count)) as usize).min(NOTIFIER_MAX);
    let notifiers = (0..n_notifiers)
        .map(|i| {
            let base = offset_of!(HeaderPage, notifiers) + i * size_of::<NotifierSym>();
            (
                get_u64(&hp, base),
                until_nul(
                    hp.get(base + 8..base + 8 + NOTIFIER_NAME_LEN)
                        .unwrap_or(&[]),
                ),
            )
        })
        .collect();
    let header = HeaderInfo {
        page_count,
        flags: get_u32(&hp, offset_of!(HeaderPage, flags)),
        boot_id,
        kernel_release: until_nul(hp.get(release_at..release_at + 64).unwrap_or(&[])),
        attached: get_u64(&hp, offset_of!(HeaderPage, attached)),
        fentry: get_u64(&hp, offset_of!(HeaderPage, fentry)),
        request_tsc: get_u64(&hp, offset_of!(HeaderPage, request_tsc)),
        request_mono_ns: get_u64(&hp, offset_of!(HeaderPage, request_mono_ns)),
        calib: Fit {
            tsc_a: get_u64(&hp, offset_of!(HeaderPage, calib_tsc_a)),
            ns_a: get_u64(&hp, offset_of!(HeaderPage, calib_mono_a)),
            tsc_b: get_u64(&hp, offset_of!(HeaderPage, calib_tsc_b)),
            ns_b: get_u64(&hp, offset_of!(HeaderPage, calib_mono_b)),
            err_ns: get_u64(&hp, offset_of!(HeaderPage, calib_err_ns)),
        },
        notifiers,
    };
    let rec = Record {
        dropped: counters.claimed.saturating_sub(capacity),
        header,
        events,
        counters,
        purgatory,
        trampoline,
    };
    check_plausible(&rec)?;
    Ok(rec)
}

/// Checks that every clock figure of a record is one a machine produces: the calibration
/// (`Fit::check`), each event's and the latest probe exit's CLOCK_MONOTONIC stamp within
/// `MAX_FIT_SPAN_NS` of the calibration, and each TSC stamp (request, trampoline, purgatory)
/// within the TSC range those bounds allow. Within them, the report's arithmetic is exact.
pub fn check_plausible(rec: &Record) -> std::result::Result<(), RecordError> {
    let fit = rec.header.calib;
    fit.check().map_err(RecordError::Implausible)?;
    let lo = fit.ns_a.saturating_sub(MAX_FIT_SPAN_NS);
    let hi = fit.ns_b.saturating_add(MAX_FIT_SPAN_NS);
    let far = |ns: u64| ns < lo || ns > hi;
    let window = format!(
        "outside {lo}..={hi} (a year around the calibration, calib_mono_a {}, calib_mono_b {})",
        fit.ns_a, fit.ns_b
    );
    if let Some((slot, e)) = rec.events.iter().enumerate().find(|(_, e)| far(e.ts_ns)) {
        return Err(RecordError::Implausible(format!(
            "event {slot} (kind {}) has ts_ns {} {window}",
            e.kind, e.ts_ns
        )));
    }
    if rec.counters.last_exit_ns != 0 && far(rec.counters.last_exit_ns) {
        return Err(RecordError::Implausible(format!(
            "last_exit_ns {} {window}",
            rec.counters.last_exit_ns
        )));
    }
    let (tlo, thi) = (fit.tsc_at(lo), fit.tsc_at(hi));
    let mut stamps = Vec::new();
    if rec.header.flags & fastkexec_common::flags::REQUEST_STAMPED != 0 {
        stamps.push(("request_tsc", rec.header.request_tsc));
    }
    if let Some(t) = rec.trampoline {
        stamps.push(("trampoline entry_tsc", t.entry_tsc));
        stamps.push(("trampoline exit_tsc", t.exit_tsc));
    }
    if let Some(p) = rec.purgatory {
        stamps.push(("purgatory entry_tsc", p.entry_tsc));
        stamps.push(("purgatory exit_tsc", p.exit_tsc));
    }
    if let Some((field, v)) = stamps
        .into_iter()
        .find(|&(_, v)| i128::from(v) < tlo || i128::from(v) > thi)
    {
        return Err(RecordError::Implausible(format!(
            "{field} {v} is outside the TSC range {tlo}..={thi} (a year around the calibration)"
        )));
    }
    Ok(())
}

/// Facts of the running boot that tie a record to it.
#[derive(Debug, Clone, Default)]
pub struct BootFacts {
    /// `/proc/sys/kernel/random/boot_id` of this boot.
    pub boot_id: Option<[u8; 16]>,
    /// `fastkexec.boot_id=` from `/proc/cmdline` (the last one wins, like the kernel).
    pub cmdline_boot_id: Option<String>,
    /// The TSC now.
    pub now_tsc: u64,
}

/// Checks that the record was written by the boot this kernel came from.
pub fn check_chain(rec: &Record, facts: &BootFacts) -> std::result::Result<(), RecordError> {
    let rec_id = format_uuid(&rec.header.boot_id);
    if facts.boot_id == Some(rec.header.boot_id) {
        return Err(RecordError::Stale(format!(
            "the record names this very boot ({rec_id}) as the one it was written in"
        )));
    }
    match &facts.cmdline_boot_id {
        None => {
            return Err(RecordError::Stale(format!(
                "the kernel command line has no {CMDLINE_BOOT_ID}=, so nothing ties the record \
                 (written in boot {rec_id}) to this boot; it may have been passed along from an \
                 earlier one"
            )))
        }
        Some(c) if parse_uuid(c) != Some(rec.header.boot_id) => {
            return Err(RecordError::Stale(format!(
                "the record was written in boot {rec_id}, but this kernel was started by boot {c} \
                 ({CMDLINE_BOOT_ID}= on the command line): it is from an earlier reboot"
            )))
        }
        Some(_) => {}
    }
    if let Some(p) = rec.purgatory {
        if p.exit_tsc > facts.now_tsc {
            return Err(RecordError::Stale(format!(
                "the purgatory stamped TSC {} but the TSC now reads {}: the counter was reset \
                 (a firmware reboot) after the record was written",
                p.exit_tsc, facts.now_tsc
            )));
        }
    }
    Ok(())
}

/// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` into 16 bytes.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.trim().bytes().filter(|&c| c != b'-').collect();
    if hex.len() != 32 || s.trim().len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let pair = std::str::from_utf8(hex.get(2 * i..2 * i + 2)?).ok()?;
        *o = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Formats 16 bytes as a UUID string.
pub fn format_uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The value of `fastkexec.boot_id=` on a command line (the last one).
pub fn cmdline_boot_id(cmdline: &str) -> Option<String> {
    crate::ops::load::split_params(cmdline)
        .into_iter()
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| *k == CMDLINE_BOOT_ID)
        .map(|(_, v)| v.trim_matches('"').to_string())
        .next_back()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use fastkexec_common::{flags, EventKind};

    pub(crate) const OLD_BOOT: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    pub(crate) fn header(page_count: u32) -> HeaderInfo {
        HeaderInfo {
            page_count,
            flags: flags::REQUEST_STAMPED | flags::DEVICE_NAMES,
            boot_id: parse_uuid(OLD_BOOT).unwrap(),
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            attached: EventKind::ALL.iter().fold(0, |m, k| m | k.bit()),
            fentry: EventKind::KERNEL_KEXEC.bit(),
            request_tsc: 10_000_000,
            request_mono_ns: 5_000_000,
            calib: Fit {
                tsc_a: 10_000_000,
                ns_a: 5_000_000,
                tsc_b: 12_000_000,
                ns_b: 6_000_000,
                err_ns: 20,
            },
            notifiers: vec![(0xffff_ffff_8100_1000, "mce_reboot".into())],
        }
    }

    pub(crate) fn ev(kind: EventKind, ts_ns: u64, arg: u64, name: &[u8]) -> Event {
        let mut e = Event::ZERO;
        e.kind = kind.0;
        e.ts_ns = ts_ns;
        e.arg = arg;
        e.name[..name.len()].copy_from_slice(name);
        e
    }

    /// Pages exactly as the tracer and the probes leave them, plus the
    /// purgatory's stamps.
    pub(crate) fn pages(
        h: &HeaderInfo,
        events: &[Event],
        purgatory: Option<(u64, u64)>,
    ) -> Vec<Vec<u8>> {
        let mut hp = encode_header(h);
        let mut out: Vec<Vec<u8>> = (1..h.page_count)
            .map(|i| {
                let mut p = vec![0u8; PAGE_SIZE];
                p[8..32].copy_from_slice(&event_page_prefix(i));
                p
            })
            .collect();
        let mut sum = 0u64;
        for (slot, e) in events.iter().enumerate() {
            let (page, off) = slot_place(slot as u64);
            if let Some(p) = out.get_mut(page as usize - 1) {
                p[off..off + 88].copy_from_slice(&event_bytes(e));
                sum = sum.wrapping_add(event_hash(slot as u32, e));
            }
        }
        put(&mut hp, OFF_CLAIMED, &(events.len() as u64).to_le_bytes());
        put(&mut hp, OFF_EVENT_SUM, &sum.to_le_bytes());
        if let Some((entry, exit)) = purgatory {
            put(&mut hp, OFF_PURGATORY, &PURGATORY_MAGIC.to_le_bytes());
            put(&mut hp, OFF_PURGATORY + 8, &entry.to_le_bytes());
            put(&mut hp, OFF_PURGATORY + 16, &exit.to_le_bytes());
        }
        out.insert(0, hp);
        out
    }

    /// Adds the staged trampoline's stamps to the header page.
    pub(crate) fn with_trampoline(mut pages: Vec<Vec<u8>>, entry: u64, exit: u64) -> Vec<Vec<u8>> {
        put(
            &mut pages[0],
            OFF_TRAMPOLINE,
            &TRAMPOLINE_MAGIC.to_le_bytes(),
        );
        put(&mut pages[0], OFF_TRAMPOLINE + 8, &entry.to_le_bytes());
        put(&mut pages[0], OFF_TRAMPOLINE + 16, &exit.to_le_bytes());
        pages
    }

    /// Sets the latest probe's exit stamp in the header page.
    pub(crate) fn with_last_exit(mut pages: Vec<Vec<u8>>, ns: u64) -> Vec<Vec<u8>> {
        put(&mut pages[0], OFF_LAST_EXIT, &ns.to_le_bytes());
        pages
    }

    /// The pages as sysfs nodes (data without the setup_data header).
    pub(crate) fn nodes(pages: &[Vec<u8>]) -> Vec<Node> {
        pages
            .iter()
            .enumerate()
            .map(|(i, p)| Node {
                nr: i as u32 + 3,
                kind: SETUP_TYPE_TRACE,
                data: p[16..].to_vec(),
            })
            .collect()
    }

    fn sample_events() -> Vec<Event> {
        let mut v = vec![
            ev(EventKind::REBOOT_ENTER, 5_100_000, 1, b"fastkexec"),
            ev(EventKind::KERNEL_KEXEC, 5_200_000, 1, b"fastkexec"),
        ];
        for i in 0..40u64 {
            v.push(ev(
                EventKind::DEVICE_ENTER,
                5_300_000 + i * 1000,
                0xffff_8880_0000_0000 + i,
                b"dev",
            ));
        }
        v.push(ev(EventKind::MACHINE_KEXEC, 5_400_000, 1, b"fastkexec"));
        v
    }

    #[test]
    fn a_sealed_record_round_trips() {
        let h = header(3);
        let events = sample_events();
        let rec = parse(&nodes(&pages(&h, &events, Some((13_000_000, 13_100_000))))).unwrap();
        assert_eq!(rec.header, h);
        assert_eq!(rec.events, events);
        assert_eq!(rec.dropped, 0);
        assert_eq!(
            rec.purgatory,
            Some(PurgatoryStamps {
                entry_tsc: 13_000_000,
                exit_tsc: 13_100_000,
                verified: 0
            })
        );
        // Nodes may arrive in any order (sysfs numbering follows the chain).
        let mut n = nodes(&pages(&h, &events, None));
        n.reverse();
        let rec = parse(&n).unwrap();
        assert_eq!(rec.events.len(), events.len());
        assert_eq!(rec.purgatory, None);
        assert_eq!(rec.trampoline, None);
    }

    #[test]
    fn trampoline_stamps_are_read_and_ordered() {
        let h = header(3);
        let events = sample_events();
        let base = pages(&h, &events, Some((13_000_000, 13_100_000)));
        let rec = parse(&nodes(&with_trampoline(
            base.clone(),
            12_900_000,
            12_950_000,
        )))
        .unwrap();
        assert_eq!(
            rec.trampoline,
            Some(TrampolineStamps {
                entry_tsc: 12_900_000,
                exit_tsc: 12_950_000,
                result: 0
            })
        );
        let r = parse(&nodes(&with_trampoline(
            base.clone(),
            12_950_000,
            12_900_000,
        )));
        assert!(
            matches!(&r, Err(RecordError::Torn(s)) if s.contains("backwards")),
            "{r:?}"
        );
        let r = parse(&nodes(&with_trampoline(base, 12_900_000, 13_050_000)));
        assert!(
            matches!(&r, Err(RecordError::Torn(s)) if s.contains("after the purgatory")),
            "{r:?}"
        );
        // A flipped magic makes the stamps absent, not wrong.
        let mut p = with_trampoline(pages(&h, &events, None), 1, 2);
        p[0][OFF_TRAMPOLINE] ^= 1;
        assert_eq!(parse(&nodes(&p)).unwrap().trampoline, None);
    }

    #[test]
    fn the_load_mode_rides_in_the_flags_and_older_records_still_say_it() {
        use fastkexec_common::flags::{LOAD_MASK, LOAD_STAGED, LOAD_UNCOMPRESSED};
        let events = sample_events();
        let with_flags = |extra: u32| HeaderInfo {
            flags: header(3).flags | extra,
            ..header(3)
        };
        let purgatory = Some((13_000_000, 13_100_000));
        // Written by this fastkexec: the header says it (checksummed like every flag).
        for (mode, bits) in [
            (LoadMode::Uncompressed, LOAD_UNCOMPRESSED),
            (LoadMode::Staged, LOAD_STAGED),
        ] {
            assert_eq!(load_mode_flags(mode), bits);
            let h = with_flags(bits);
            let p = encode_header(&h);
            // Bits 3 and 4 of the little-endian flags word at byte 40.
            assert_eq!(p[40] & 0x18, bits as u8);
            let rec = parse(&nodes(&pages(&h, &events, purgatory))).unwrap();
            assert_eq!(rec.load_mode(), Some(mode));
        }
        assert_eq!(load_mode_flags(LoadMode::File), 0);
        // Written before the bits existed: the trampoline's stamps mean staged.
        let old = header(3);
        assert_eq!(old.flags & LOAD_MASK, 0);
        let plain = parse(&nodes(&pages(&old, &events, purgatory))).unwrap();
        assert_eq!(plain.load_mode(), Some(LoadMode::Uncompressed));
        let staged = parse(&nodes(&with_trampoline(
            pages(&old, &events, purgatory),
            12_900_000,
            12_950_000,
        )))
        .unwrap();
        assert_eq!(staged.load_mode(), Some(LoadMode::Staged));
        // A value no writer uses is not guessed.
        let odd = parse(&nodes(&pages(&with_flags(LOAD_MASK), &events, purgatory))).unwrap();
        assert_eq!(odd.load_mode(), None);
    }

    #[test]
    fn every_flipped_byte_is_rejected_as_torn() {
        let h = header(3);
        let events = sample_events();
        let good = pages(&h, &events, Some((13_000_000, 13_100_000)));
        // Flip one byte at a time in every covered area: the header's user
        // part, its checksum, the probe counters, every event, the unused
        // slots and page tails.
        let mut checked = 0;
        for pi in 0..good.len() {
            for off in SETUP_DATA_HEADER_SIZE..PAGE_SIZE {
                // Fields nobody can check: the purgatory area (its magic is
                // the check: a flip makes the stamps absent, not wrong),
                // probe_ns and state (informational).
                if pi == 0 && (OFF_PROBE_NS..OFF_LAST_EXIT + 8).contains(&off) {
                    continue;
                }
                let mut bad = good.clone();
                bad[pi][off] ^= 0x10;
                let r = parse(&nodes(&bad));
                assert!(
                    matches!(r, Err(RecordError::Torn(_))),
                    "page {pi} byte {off}: {r:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 3 * 4000);
    }

    #[test]
    fn missing_and_partial_records_are_named() {
        let e = parse(&[]).unwrap_err();
        assert!(
            matches!(&e, RecordError::Missing(s) if s.contains("file mode")),
            "{e}"
        );
        let h = header(3);
        let good = nodes(&pages(&h, &sample_events(), None));
        // A page lost.
        let r = parse(&good[..2]).unwrap_err();
        assert!(r.to_string().contains("3 pages"), "{r}");
        // The header lost.
        let r = parse(&good[1..]).unwrap_err();
        assert!(r.to_string().contains("header page is missing"), "{r}");
        // A page twice (and one missing).
        let mut dup = good.clone();
        dup[2] = dup[1].clone();
        let r = parse(&dup).unwrap_err();
        assert!(r.to_string().contains("taken"), "{r}");
        // Short data.
        let mut short = good.clone();
        short[1].data.pop();
        assert!(parse(&short)
            .unwrap_err()
            .to_string()
            .contains("4079 bytes"));
        // Other node types are ignored.
        let mut mixed = good.clone();
        mixed.push(Node {
            nr: 0,
            kind: 9,
            data: vec![1, 2, 3],
        });
        assert!(parse(&mixed).is_ok());
    }

    #[test]
    fn claimed_but_unwritten_and_overflow() {
        let h = header(2);
        let events: Vec<Event> = (0..40)
            .map(|i| ev(EventKind::DEVICE_ENTER, 100 + i, i, b"d"))
            .collect();
        // 40 events into one page of 32: 8 dropped, sum over the stored ones.
        let rec = parse(&nodes(&pages(&h, &events, None))).unwrap();
        assert_eq!(rec.events.len(), 32);
        assert_eq!(rec.dropped, 8);
        // A claimed slot left empty: the reboot overtook the probe.
        let mut p = pages(&h, &events[..3], None);
        put(&mut p[0], OFF_CLAIMED, &4u64.to_le_bytes());
        let r = parse(&nodes(&p)).unwrap_err();
        assert!(r.to_string().contains("never written"), "{r}");
    }

    fn facts(cmdline_id: Option<&str>) -> BootFacts {
        BootFacts {
            boot_id: parse_uuid("11111111-2222-3333-4444-555555555555"),
            cmdline_boot_id: cmdline_id.map(str::to_string),
            now_tsc: 50_000_000,
        }
    }

    #[test]
    fn records_of_another_boot_are_stale() {
        let h = header(2);
        let rec = parse(&nodes(&pages(&h, &sample_events()[..3], Some((20, 30))))).unwrap();
        check_chain(&rec, &facts(Some(OLD_BOOT))).unwrap();
        // Written by an earlier boot than the one that started this kernel.
        let e =
            check_chain(&rec, &facts(Some("99999999-2222-3333-4444-555555555555"))).unwrap_err();
        assert!(
            matches!(&e, RecordError::Stale(s) if s.contains("earlier reboot")),
            "{e}"
        );
        // Nothing on the command line ties it to this boot.
        let e = check_chain(&rec, &facts(None)).unwrap_err();
        assert!(e.to_string().contains("nothing ties"), "{e}");
        // The record claims to be from this very boot.
        let mut f = facts(Some(OLD_BOOT));
        f.boot_id = parse_uuid(OLD_BOOT);
        assert!(check_chain(&rec, &f)
            .unwrap_err()
            .to_string()
            .contains("this very boot"));
        // The TSC was reset since.
        let mut f = facts(Some(OLD_BOOT));
        f.now_tsc = 10;
        assert!(check_chain(&rec, &f)
            .unwrap_err()
            .to_string()
            .contains("reset"));
    }

    #[test]
    fn uuids_and_cmdline() {
        let b = parse_uuid(OLD_BOOT).unwrap();
        assert_eq!(format_uuid(&b), OLD_BOOT);
        assert_eq!(parse_uuid("nope"), None);
        assert_eq!(parse_uuid("0f1e2d3c4b5a69788796a5b4c3d2e1f0"), None);
        assert_eq!(parse_uuid("zz1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"), None);
        assert_eq!(
            cmdline_boot_id("console=ttyS0 fastkexec.boot_id=a fastkexec.boot_id=b quiet")
                .as_deref(),
            Some("b")
        );
        assert_eq!(cmdline_boot_id("console=ttyS0"), None);
    }

    #[test]
    fn sysfs_nodes_are_read_in_order_and_filtered() {
        let t = tempfile::tempdir().unwrap();
        assert!(read_nodes(t.path()).unwrap().is_empty());
        let h = header(2);
        let p = pages(&h, &sample_events()[..2], None);
        let dir = setup_data_dir(t.path());
        for (nr, kind, data) in [
            (0u32, 9u32, vec![7u8; 32]),
            (1, SETUP_TYPE_TRACE, p[0][16..].to_vec()),
            (2, SETUP_TYPE_TRACE, p[1][16..].to_vec()),
        ] {
            let d = dir.join(nr.to_string());
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("type"), format!("{kind:#x}\n")).unwrap();
            fs::write(d.join("data"), &data).unwrap();
        }
        let n = read_nodes(t.path()).unwrap();
        assert_eq!(n.iter().map(|n| n.nr).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(parse(&n).unwrap().events.len(), 2);
        fs::write(dir.join("0/type"), "bogus").unwrap();
        assert!(read_nodes(t.path()).is_err());
    }
}
