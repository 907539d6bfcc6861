//! The trace record that rides across the kexec (`handoff::parse`, with its checksums and
//! plausibility bounds), then everything `fastkexec report` builds from it: the timeline
//! (`report::build`, the pure part of `report`), its text and JSON, and the histogram sample
//! `report` folds into the state (`fold::boot_from_report`, `State::fold`).
//!
//! Input layout (a reader that yields zeros once the input is exhausted):
//! - `ctl` (1 byte): bit 0 reseal the raw header's checksum, bit 1 an anchor, bit 2 a fit
//!   taken now, bit 3 the command line names the record's boot, bit 4 the record names this
//!   very boot, bit 5 end at the kmsg line `FKLAB: new-init`, bit 7 structured record;
//! - now_tsc, the anchor (tsc, printk_ns, width), the fit (tsc_a, ns_a, tsc_b, ns_b, err_ns): u64
//!   each, little-endian; `top` (1 byte);
//! - kmsg: a count (1 byte), then per line ts_us (u64) and its text (a length byte + bytes);
//! - structured (bit 7): the header's fields (flags u32, attached, fentry, request_tsc,
//!   request_mono_ns, the five calibration words, u64 each), a notifier count (1 byte) and
//!   their addresses, probe_ns, state, last_exit_ns, then a byte saying whether the purgatory
//!   and the trampoline stamped (entry, exit, one more word each), then events of 88 bytes
//!   (`fastkexec_common::Event`) to the end: the harness seals the record as the tracer does
//!   (page count, claimed, event checksum, header checksum), so the numbers get fuzzed;
//! - raw (bit 7 clear): the header page's bytes up to the end of its used part, then whole
//!   event pages (setup_data data, 4080 bytes each): the page-level checks get fuzzed.
#![no_main]

use fastkexec::record::clock::Fit;
use fastkexec::record::handoff::{self, BootFacts, HeaderInfo, Node, PAGE_DATA_LEN};
use fastkexec::record::report::{self, Anchor, Inputs, KmsgLine};
use fastkexec_common::{
    event_hash, Event, EVENT_NAME_LEN, HEADER_SUM_AT, OFF_CLAIMED, OFF_EVENT_SUM, OFF_LAST_EXIT,
    OFF_PROBE_NS, OFF_PURGATORY, OFF_STATE, OFF_TRAMPOLINE, PAGE_SIZE, SETUP_DATA_HEADER_SIZE,
    SETUP_TYPE_TRACE,
};
use libfuzzer_sys::fuzz_target;

const OLD_BOOT: [u8; 16] = [0x11; 16];
const THIS_BOOT: [u8; 16] = [0x22; 16];
const EVENT_SIZE: usize = std::mem::size_of::<Event>();
/// The blobs' TSC record magics (purgatory.rs, trampoline.rs).
const PURGATORY_MAGIC: u64 = fastkexec::blobs::purgatory::LAYOUT.tsc_magic;
const TRAMPOLINE_MAGIC: u64 = fastkexec::blobs::trampoline::LAYOUT.tsc_magic;

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let s = self.bytes(4);
        b[..s.len()].copy_from_slice(s);
        u32::from_le_bytes(b)
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let s = self.bytes(8);
        b[..s.len()].copy_from_slice(s);
        u64::from_le_bytes(b)
    }
    fn rest(&mut self) -> &[u8] {
        self.bytes(usize::MAX)
    }
}

fn put(page: &mut [u8], off: usize, v: u64) {
    page[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn event(b: &[u8]) -> Event {
    let mut e = Event::ZERO;
    let mut r = Reader(b);
    e.kind = r.u32();
    e.cpu = r.u32();
    e.ts_ns = r.u64();
    e.arg = r.u64();
    let name = r.bytes(EVENT_NAME_LEN);
    e.name[..name.len()].copy_from_slice(name);
    e
}

/// Pages as the tracer and the probes leave them (whole pages, setup_data header included).
fn structured(r: &mut Reader) -> Vec<Vec<u8>> {
    let flags = r.u32();
    let mut w = || r.u64();
    let (attached, fentry, request_tsc, request_mono_ns) = (w(), w(), w(), w());
    let calib = Fit {
        tsc_a: w(),
        ns_a: w(),
        tsc_b: w(),
        ns_b: w(),
        err_ns: w(),
    };
    let notifiers = (0..r.u8() % 4)
        .map(|i| (r.u64(), format!("notifier_{i}")))
        .collect();
    let (probe_ns, state, last_exit) = (r.u64(), r.u64(), r.u64());
    let blobs = r.u8();
    let purgatory = (blobs & 1 != 0).then(|| [r.u64(), r.u64(), r.u64()]);
    let trampoline = (blobs & 2 != 0).then(|| [r.u64(), r.u64(), r.u64()]);
    let events: Vec<Event> = r.rest().chunks(EVENT_SIZE).map(event).collect();
    let event_pages = events.len().div_ceil(fastkexec_common::EVENTS_PER_PAGE);
    let mut hp = handoff::encode_header(&HeaderInfo {
        page_count: 1 + event_pages as u32,
        flags,
        boot_id: OLD_BOOT,
        kernel_release: "6.1.0-fuzz".into(),
        attached,
        fentry,
        request_tsc,
        request_mono_ns,
        calib,
        notifiers,
    });
    let mut pages: Vec<Vec<u8>> = (1..=event_pages as u32)
        .map(|i| {
            let mut p = vec![0u8; PAGE_SIZE];
            p[8..32].copy_from_slice(&handoff::event_page_prefix(i));
            p
        })
        .collect();
    let mut sum = 0u64;
    for (slot, e) in events.iter().enumerate() {
        let (page, off) = handoff::slot_place(slot as u64);
        let p = &mut pages[page as usize - 1];
        p[off..off + EVENT_SIZE].copy_from_slice(&handoff::event_bytes(e));
        sum = sum.wrapping_add(event_hash(slot as u32, e));
    }
    put(&mut hp, OFF_CLAIMED, events.len() as u64);
    put(&mut hp, OFF_EVENT_SUM, sum);
    put(&mut hp, OFF_PROBE_NS, probe_ns);
    put(&mut hp, OFF_STATE, state);
    put(&mut hp, OFF_LAST_EXIT, last_exit);
    for (off, magic, words) in [
        (OFF_PURGATORY, PURGATORY_MAGIC, purgatory),
        (OFF_TRAMPOLINE, TRAMPOLINE_MAGIC, trampoline),
    ] {
        if let Some(words) = words {
            put(&mut hp, off, magic);
            for (i, v) in words.into_iter().enumerate() {
                put(&mut hp, off + 8 + 8 * i, v);
            }
        }
    }
    pages.insert(0, hp);
    pages
}

/// The header page's used bytes and whole event pages, as given.
fn raw(r: &mut Reader, reseal: bool) -> Vec<Vec<u8>> {
    let mut hp = vec![0u8; PAGE_SIZE];
    let used = OFF_LAST_EXIT + 8 - SETUP_DATA_HEADER_SIZE;
    let head = r.bytes(used);
    hp[SETUP_DATA_HEADER_SIZE..SETUP_DATA_HEADER_SIZE + head.len()].copy_from_slice(head);
    if reseal {
        let sum = handoff::header_checksum(&hp);
        put(&mut hp, HEADER_SUM_AT, sum);
    }
    let mut pages = vec![hp];
    for chunk in r.rest().chunks(PAGE_DATA_LEN) {
        let mut p = vec![0u8; PAGE_SIZE];
        p[SETUP_DATA_HEADER_SIZE..SETUP_DATA_HEADER_SIZE + chunk.len()].copy_from_slice(chunk);
        pages.push(p);
    }
    pages
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader(data);
    let ctl = r.u8();
    let now_tsc = r.u64();
    let anchor = Anchor {
        tsc: r.u64(),
        printk_ns: r.u64(),
        width: r.u64(),
    };
    let now_fit = Fit {
        tsc_a: r.u64(),
        ns_a: r.u64(),
        tsc_b: r.u64(),
        ns_b: r.u64(),
        err_ns: r.u64(),
    };
    let top = usize::from(r.u8() % 8);
    let kmsg: Vec<KmsgLine> = (0..r.u8())
        .map(|_| {
            let ts_us = r.u64();
            let len = usize::from(r.u8());
            KmsgLine {
                ts_us,
                text: String::from_utf8_lossy(r.bytes(len)).into_owned(),
            }
        })
        .collect();
    let pages = if ctl & 0x80 != 0 {
        structured(&mut r)
    } else {
        raw(&mut r, ctl & 1 != 0)
    };
    let nodes: Vec<Node> = pages
        .iter()
        .enumerate()
        .map(|(i, p)| Node {
            nr: i as u32,
            kind: SETUP_TYPE_TRACE,
            data: p[SETUP_DATA_HEADER_SIZE..].to_vec(),
        })
        .collect();
    let record = handoff::parse(&nodes);
    let inputs = Inputs {
        record,
        facts: BootFacts {
            boot_id: Some(if ctl & 0x10 != 0 { OLD_BOOT } else { THIS_BOOT }),
            cmdline_boot_id: (ctl & 0x08 != 0).then(|| handoff::format_uuid(&OLD_BOOT)),
            now_tsc,
        },
        kmsg,
        anchor: (ctl & 0x02 != 0).then_some(anchor),
        until_kmsg: (ctl & 0x20 != 0).then(|| "FKLAB: new-init".to_string()),
        now_fit: (ctl & 0x04 != 0).then_some(now_fit),
        top,
        release: Some("6.1.0-fuzz".into()),
        initcalls: fastkexec::record::initcalls::Capture::NotRequested,
        pid1: None,
    };
    let rep = report::build(&inputs);
    // The timeline's own promise: phases tile it, in order.
    let mut at = 0u64;
    for p in &rep.phases {
        assert_eq!(
            p.start_ns, at,
            "phase {} does not start where the last ended",
            p.name
        );
        at = p
            .start_ns
            .checked_add(p.duration_ns)
            .expect("phase end overflows");
    }
    assert_eq!(at, rep.total_ns);
    let _ = rep.to_string();
    serde_json::to_string(&rep).expect("a report serializes");
    if let Ok(boot) = fastkexec::metrics::fold::boot_from_report(&rep, "fuzz-boot", 1) {
        // It may refuse a sample (a phase longer than a day: the new kernel's own clock
        // figures are not bounded by the record's checks), with an error, never a panic.
        let mut state = fastkexec::metrics::histogram::State::new();
        let _ = state.fold(&boot);
    }
});
