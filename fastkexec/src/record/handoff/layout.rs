//! The record's bytes as user space and the probes write them: the header page with its
//! checksum, the event pages' prefix, one event, the slot an event goes to.

use super::*;

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

/// An event as the probes store it (the inverse of [`event_bytes`]).
pub fn event_from(b: &[u8]) -> Event {
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
