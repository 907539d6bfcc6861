//! `exec`'s check before the reboot: the staged image read back through /proc/kcore and
//! compared with the record, in full or sampled.

use super::*;

/// One `PT_LOAD` of /proc/kcore that maps RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KcoreLoad {
    pub paddr: u64,
    pub size: u64,
    pub offset: u64,
}

/// The RAM mappings of a /proc/kcore ELF header (`p_paddr` is -1 for
/// everything that is not RAM).
pub fn parse_kcore_loads(head: &[u8]) -> std::result::Result<Vec<KcoreLoad>, String> {
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return Err("not a little-endian ELF64 core file".into());
    }
    let phoff = le64(head, 0x20);
    let entsize = u64::from(u16::from_le_bytes([head[0x36], head[0x37]]));
    let count = u64::from(u16::from_le_bytes([head[0x38], head[0x39]]));
    if entsize < 56 || count == 0xffff {
        return Err(format!(
            "program header size {entsize} / count {count} not understood"
        ));
    }
    let mut out = Vec::new();
    for i in 0..count {
        let off = phoff
            .checked_add(i * entsize)
            .and_then(|o| usize::try_from(o).ok())
            .filter(|o| o.checked_add(56).is_some_and(|e| e <= head.len()))
            .ok_or("program headers run past what was read")?;
        let kind = u32::from_le_bytes([head[off], head[off + 1], head[off + 2], head[off + 3]]);
        let paddr = le64(head, off + 24);
        if kind == 1 && paddr != u64::MAX {
            out.push(KcoreLoad {
                paddr,
                size: le64(head, off + 40),
                offset: le64(head, off + 8),
            });
        }
    }
    Ok(out)
}

/// Physical memory through /proc/kcore (root, no lockdown).
pub struct Kcore {
    file: File,
    path: PathBuf,
    loads: Vec<KcoreLoad>,
}

impl Kcore {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut head = vec![0u8; 64];
        file.read_exact_at(&mut head, 0)
            .map_err(|e| Error::io(path, e))?;
        let phoff = le64(&head, 0x20);
        let count = u64::from(u16::from_le_bytes([head[0x38], head[0x39]]));
        let want = phoff.saturating_add(count.saturating_mul(56)).min(1 << 20);
        head.resize(usize::try_from(want).unwrap_or(64).max(64), 0);
        file.read_exact_at(&mut head, 0)
            .map_err(|e| Error::io(path, e))?;
        let loads = parse_kcore_loads(&head).map_err(|problem| Error::HostInfo {
            path: path.to_path_buf(),
            problem,
        })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            loads,
        })
    }
}

impl PhysRead for Kcore {
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let want = PhysRange::from_len(addr, buf.len() as u64);
        let load = self
            .loads
            .iter()
            .find(|l| PhysRange::from_len(l.paddr, l.size).contains_range(&want))
            .ok_or_else(|| Error::HostInfo {
                path: self.path.clone(),
                problem: format!("no RAM mapping covers {want}"),
            })?;
        self.file
            .read_exact_at(buf, load.offset + (addr - load.paddr))
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// What the pre-exec check found.
#[derive(Clone, Debug, PartialEq)]
pub enum PreExec {
    /// No staged load recorded for this boot: a plain exec.
    NotStaged,
    /// Everything staged is still in place: `bytes` read back and summed (0 when only the
    /// header and samples were checked).
    Intact { bytes: u64, ms: f64 },
    /// Could not look (no /proc/kcore, ...); the trampoline still checks.
    Unverified { why: String },
}

/// How much of the staged image [`check_before_exec`] reads back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// The trampoline's check: the header, the small pieces summed, one word per 64 KiB of
    /// the rest. Enough to tell whose crash image it is (`unload`, `auto`).
    Sampled,
    /// Then every byte of every staged segment, summed and compared with the record: what
    /// `exec` does before the reboot (off the blackout: nothing has shut down yet).
    Complete,
}

pub(super) fn crash_loaded(root: &Path) -> Option<bool> {
    fs::read_to_string(root.join("sys/kernel/kexec_crash_loaded"))
        .ok()
        .and_then(|t| t.trim().parse::<u8>().ok())
        .map(|v| v != 0)
}

/// Every staged segment read back and summed; the first that differs, as a message.
pub fn check_segments(
    segments: &[SegmentSum],
    mem: &mut dyn PhysRead,
) -> Result<std::result::Result<u64, String>> {
    let mut buf = vec![0u8; EXEC_CHECK_CHUNK];
    let mut bytes = 0u64;
    for (i, seg) in segments.iter().enumerate() {
        let mut c = Checksum::new();
        let mut off = 0u64;
        while off < seg.len {
            let n = (seg.len - off).min(EXEC_CHECK_CHUNK as u64);
            let chunk = &mut buf[..n as usize];
            mem.read_phys(seg.addr + off, chunk)?;
            c.update(chunk);
            off += n;
        }
        bytes += seg.len;
        if c.finish() != seg.sum {
            return Ok(Err(format!(
                "staged segment {i} ({:#x}, {} bytes) differs from what was staged",
                seg.addr, seg.len
            )));
        }
    }
    Ok(Ok(bytes))
}

/// Checks, before `exec`, that the kernel staged by `fastkexec load` is still the crash
/// image; `Err(StagedReplaced)` when it is not, `Err(StagedState)` when the record cannot be
/// read.
pub fn check_before_exec(root: &Path, depth: Depth) -> Result<PreExec> {
    let t = std::time::Instant::now();
    let Some(state) = read_state(root)? else {
        return Ok(PreExec::NotStaged);
    };
    let reservation = state.reservation().to_string();
    if crash_loaded(root) == Some(false) {
        return Err(Error::StagedReplaced {
            reservation,
            problem: "no crash image is loaded any more (it was unloaded since)".into(),
        });
    }
    let Some(header) = state.header() else {
        return Err(Error::StagedState {
            path: root.join(STATE_FILE),
            problem: format!("its nonce is not 32 hex digits; {STATE_FIX}"),
        });
    };
    let unverified = |e: Error| PreExec::Unverified {
        why: format!("cannot read the reservation ({e})"),
    };
    let mut kcore = match Kcore::open(&root.join("proc/kcore")) {
        Ok(k) => k,
        Err(e) => return Ok(unverified(e)),
    };
    match check_staged(&header, &mut kcore, 1) {
        Ok(0) => {}
        Ok(code) => {
            return Err(Error::StagedReplaced {
                reservation,
                problem: tramp::describe_result(code),
            })
        }
        Err(e) => return Ok(unverified(e)),
    }
    let bytes = match depth {
        Depth::Sampled => 0,
        Depth::Complete => match check_segments(&state.segments, &mut kcore) {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(problem)) => {
                return Err(Error::StagedReplaced {
                    reservation,
                    problem,
                })
            }
            Err(e) => return Ok(unverified(e)),
        },
    };
    Ok(PreExec::Intact {
        bytes,
        ms: t.elapsed().as_secs_f64() * 1e3,
    })
}
