//! The staged header: the nonce and checks (full sums of small ranges, one sampled word per
//! page of big ones) that the trampoline and `exec` run against the reservation, and the
//! user-space run of the trampoline's check.

use super::*;

/// One range checked by sampling a word per page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampledRange {
    /// Page aligned.
    pub addr: u64,
    /// Per page: (offset inside the page, 8-aligned; expected value).
    pub samples: Vec<(u64, u64)>,
}

/// What the staged header lists (see the layout in [`crate::blobs::trampoline`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedHeader {
    pub nonce: [u8; 16],
    pub full: Vec<VerifyEntry>,
    pub sampled: Vec<SampledRange>,
}

/// splitmix64: spreads the sample positions by nonce and page.
pub(super) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub(super) fn le64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

/// The word of one block of `block_len` bytes to check: from a nonce-keyed
/// start, the first non-zero word (wrapping), so a block overwritten since
/// goes unnoticed only if the new bytes equal ours at exactly that word.
/// `block` is the data in the block (shorter: the rest is the kernel's zero
/// fill).
pub fn pick_sample(block: &[u8], block_len: u64, key: u64, index: u64) -> (u64, u64) {
    let page = block;
    let words = usize::try_from(block_len / 8).unwrap_or(0).max(1);
    let start = (mix(key ^ index) % words as u64) as usize;
    (0..words)
        .map(|i| (start + i) % words)
        .map(|w| (w as u64 * 8, le64(page, w * 8)))
        .find(|&(_, v)| v != 0)
        .unwrap_or((start as u64 * 8, 0))
}

impl StagedHeader {
    /// The checks for `segments` once they sit in place: segments up to
    /// [`SAMPLE_THRESHOLD`] summed over their whole destination (zero fill
    /// included), bigger ones sampled page by page.
    pub fn for_segments(segments: &[Segment], nonce: [u8; 16]) -> Result<Self> {
        let key = u64::from_le_bytes(nonce[..8].try_into().unwrap_or([0; 8]))
            ^ u64::from_le_bytes(nonce[8..].try_into().unwrap_or([0; 8]));
        let mut full = Vec::new();
        let mut sampled = Vec::new();
        for s in segments {
            if s.memsz <= SAMPLE_THRESHOLD {
                let mut padded = s.data.to_vec();
                padded.resize(usize::try_from(s.memsz).unwrap_or(0).max(s.data.len()), 0);
                full.push(VerifyEntry::for_data(s.mem, &padded));
            } else {
                let block = tramp::SAMPLE_BLOCK;
                let samples = (0..s.memsz.div_ceil(block))
                    .map(|i| {
                        let len = block.min(s.memsz - i * block);
                        let from = usize::try_from(i * block).unwrap_or(usize::MAX);
                        let data = s.data.get(from..).unwrap_or(&[]);
                        let data = &data[..data.len().min(len as usize)];
                        pick_sample(data, len, key ^ s.mem, i)
                    })
                    .collect();
                sampled.push(SampledRange {
                    addr: s.mem,
                    samples,
                });
            }
        }
        if full.len() > tramp::HEADER_RANGES_MAX || sampled.len() > tramp::HEADER_RANGES_MAX {
            return Err(Error::Plan {
                problem: format!(
                    "{} summed and {} sampled ranges; the staged header holds at most {} of each",
                    full.len(),
                    sampled.len(),
                    tramp::HEADER_RANGES_MAX
                ),
            });
        }
        Ok(Self {
            nonce,
            full,
            sampled,
        })
    }

    pub fn sampled_blocks(&self) -> u64 {
        self.sampled.iter().map(|r| r.samples.len() as u64).sum()
    }

    /// The header's bytes, as the trampoline reads them.
    pub fn encode(&self) -> Vec<u8> {
        let ranges_end =
            tramp::HDR_ENTRIES + tramp::HDR_RANGE_SIZE * (self.full.len() + self.sampled.len());
        let len = ranges_end + tramp::HDR_SAMPLE_SIZE * self.sampled_blocks() as usize;
        let mut b = vec![0u8; len];
        let put = |b: &mut Vec<u8>, off: usize, v: u64| {
            b[off..off + 8].copy_from_slice(&v.to_le_bytes());
        };
        put(&mut b, tramp::HDR_MAGIC, tramp::HEADER_MAGIC);
        b[tramp::HDR_VERSION..tramp::HDR_VERSION + 4]
            .copy_from_slice(&tramp::HEADER_VERSION.to_le_bytes());
        put(&mut b, tramp::HDR_LEN, len as u64);
        b[tramp::HDR_NONCE..tramp::HDR_NONCE + 16].copy_from_slice(&self.nonce);
        put(&mut b, tramp::HDR_N_FULL, self.full.len() as u64);
        put(&mut b, tramp::HDR_N_SAMPLED, self.sampled.len() as u64);
        let mut off = tramp::HDR_ENTRIES;
        for e in &self.full {
            put(&mut b, off, e.addr);
            put(&mut b, off + 8, e.len);
            put(&mut b, off + 16, e.sum);
            off += tramp::HDR_RANGE_SIZE;
        }
        let mut table = ranges_end;
        for r in &self.sampled {
            put(&mut b, off, r.addr);
            put(&mut b, off + 8, r.samples.len() as u64);
            put(&mut b, off + 16, table as u64);
            off += tramp::HDR_RANGE_SIZE;
            for &(o, v) in &r.samples {
                put(&mut b, table, o);
                put(&mut b, table + 8, v);
                table += tramp::HDR_SAMPLE_SIZE;
            }
        }
        b
    }

    /// Parses header bytes read back from the reservation; every offset and
    /// count is checked against the length.
    pub fn decode(b: &[u8]) -> std::result::Result<Self, String> {
        if b.len() < tramp::HDR_ENTRIES || le64(b, tramp::HDR_MAGIC) != tramp::HEADER_MAGIC {
            return Err("no staged header magic".into());
        }
        if le64(b, tramp::HDR_LEN) != b.len() as u64 {
            return Err("header length differs".into());
        }
        let n_full = le64(b, tramp::HDR_N_FULL);
        let n_sampled = le64(b, tramp::HDR_N_SAMPLED);
        let max = tramp::HEADER_RANGES_MAX as u64;
        if n_full > max || n_sampled > max {
            return Err("too many ranges".into());
        }
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&b[tramp::HDR_NONCE..tramp::HDR_NONCE + 16]);
        let ranges_end = tramp::HDR_ENTRIES + tramp::HDR_RANGE_SIZE * (n_full + n_sampled) as usize;
        if ranges_end > b.len() {
            return Err("range table runs past the header".into());
        }
        let mut off = tramp::HDR_ENTRIES;
        let mut full = Vec::new();
        for _ in 0..n_full {
            full.push(VerifyEntry {
                addr: le64(b, off),
                len: le64(b, off + 8),
                sum: le64(b, off + 16),
            });
            off += tramp::HDR_RANGE_SIZE;
        }
        let mut sampled = Vec::new();
        for _ in 0..n_sampled {
            let addr = le64(b, off);
            let pages = le64(b, off + 8);
            let table = le64(b, off + 16);
            off += tramp::HDR_RANGE_SIZE;
            let end = pages
                .checked_mul(tramp::HDR_SAMPLE_SIZE as u64)
                .and_then(|n| n.checked_add(table))
                .filter(|&e| e <= b.len() as u64 && table >= ranges_end as u64)
                .ok_or("sample table runs past the header")?;
            let samples = (table..end)
                .step_by(tramp::HDR_SAMPLE_SIZE)
                .map(|t| (le64(b, t as usize), le64(b, t as usize + 8)))
                .collect();
            sampled.push(SampledRange { addr, samples });
        }
        Ok(Self {
            nonce,
            full,
            sampled,
        })
    }
}

/// Reads physical memory (the running kernel's view through /proc/kcore, or
/// a plan's segments in tests).
pub trait PhysRead {
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) -> Result<()>;
}

/// The trampoline's check, done from user space: the same steps in the same
/// order with the same result codes ([`tramp::describe_result`]), 0 = all
/// of it is still ours. With `stride` > 1 only every stride-th page (and the
/// last) of each sampled range is read. Errors only when memory cannot be
/// read.
pub fn check_staged(header: &HeaderRef, mem: &mut dyn PhysRead, stride: u64) -> Result<u64> {
    let stride = stride.max(1);
    let len = usize::try_from(header.len).map_err(|_| Error::Plan {
        problem: format!("staged header length {:#x} is absurd", header.len),
    })?;
    if !(tramp::HDR_ENTRIES..=64 << 20).contains(&len) {
        return Ok(tramp::FAIL_HEADER);
    }
    let mut bytes = vec![0u8; len];
    mem.read_phys(header.addr, &mut bytes)?;
    if le64(&bytes, tramp::HDR_MAGIC) != tramp::HEADER_MAGIC
        || le64(&bytes, tramp::HDR_LEN) != header.len
    {
        return Ok(tramp::FAIL_HEADER);
    }
    if bytes[tramp::HDR_NONCE..tramp::HDR_NONCE + 16] != header.nonce {
        return Ok(tramp::FAIL_NONCE);
    }
    if purgatory::checksum(&bytes) != header.sum {
        return Ok(tramp::FAIL_HEADER_SUM);
    }
    let Ok(h) = StagedHeader::decode(&bytes) else {
        return Ok(tramp::FAIL_COUNTS);
    };
    for (i, e) in h.full.iter().enumerate() {
        let mut data = vec![0u8; usize::try_from(e.len).unwrap_or(0)];
        mem.read_phys(e.addr, &mut data)?;
        if purgatory::checksum(&data) != e.sum {
            return Ok(tramp::FAIL_RANGE_SUM | (i as u64) << 8);
        }
    }
    for (i, r) in h.sampled.iter().enumerate() {
        let last = r.samples.len().saturating_sub(1);
        for (block, &(off, want)) in r.samples.iter().enumerate() {
            if !(block as u64).is_multiple_of(stride) && block != last {
                continue;
            }
            let mut w = [0u8; 8];
            let at =
                r.addr + block as u64 * tramp::SAMPLE_BLOCK + (off & (tramp::SAMPLE_BLOCK - 8));
            mem.read_phys(at, &mut w)?;
            if u64::from_le_bytes(w) != want {
                return Ok(tramp::FAIL_SAMPLE | (i as u64) << 8 | (block as u64) << 16);
            }
        }
    }
    Ok(0)
}
