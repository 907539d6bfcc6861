//! The new kernel's side of the clock: its log (`/dev/kmsg`), the line that says where its
//! sched_clock starts, and the (TSC, printk time) anchor report writes.

use super::*;

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
