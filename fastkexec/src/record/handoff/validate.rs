//! Whether a parsed record can be believed (every clock figure plausible) and belongs to
//! this boot (the boot id chain); the boot id's forms.

use super::*;

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
    crate::plan::cmdline::split_params(cmdline)
        .into_iter()
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| *k == CMDLINE_BOOT_ID)
        .map(|(_, v)| v.trim_matches('"').to_string())
        .next_back()
}
