//! Staged mode: crashkernel memory reuse on stock kernels.
//!
//! `kexec_load(..., KEXEC_ON_CRASH)` copies every segment straight to its
//! final place inside the crashkernel reservation at *load* time (the kernel
//! only checks that they lie inside it). We stage the real next kernel there
//! as the crash image — the vmlinux shifted by one 2 MiB-aligned delta into
//! the reservation, its initrd, two boot paths and a header — and load as the
//! *normal* image only the one-page [trampoline](crate::blobs::trampoline). `exec`
//! keeps the clean path (reboot notifiers, device_shutdown,
//! machine_shutdown), and the relocation copies one page instead of tens of
//! MiB.
//!
//! The two boot paths into the same staged kernel:
//! - **normal** (`fastkexec exec` → trampoline → its purgatory): boot_params
//!   with the firmware's full memory map (the reservation included) and the
//!   command line as asked;
//! - **panic** (the crash image's own entry, taken only if the kernel panics
//!   while staged): a kdump-safe map — RAM only inside the reservation and
//!   below 1 MiB — and the command line without `crashkernel=` plus
//!   `reset_devices` and [`PANIC_MARKER`], so a crash in that window still
//!   boots a kernel that touches nothing the crashed one used.
//!
//! The trampoline and `exec` check that the reservation still holds what we
//! staged (a random nonce in the staged header, the header's checksum, full
//! checksums of the small ranges and one sampled word per page of the big
//! ones): a crash kernel loaded since by someone else (a kdump service)
//! makes `exec` refuse, and the trampoline reset the machine rather than jump
//! into it. What we loaded is described in [`STATE_FILE`] for `exec`,
//! `status` and `unload`.
//!
//! Costs: while staged no kdump kernel is loaded; it needs `kexec_load` (not
//! under lockdown); the reservation must hold the kernel's memory footprint,
//! the initrd and the small pieces; the next kernel needs its own
//! `crashkernel=` to do it again.

use std::fmt;
use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::blobs::purgatory::{self, VerifyEntry};
use crate::blobs::trampoline::{self as tramp, Trampoline};
use crate::error::{Error, Result};
use crate::files::atomic_file;
use crate::host::e820::{self, E820Entry, E820Type, HoleRequest, PhysRange};
use crate::host::hostinfo::HostBootInfo;
use crate::host::status::{self, CrashRange, Status};
use crate::image::vmlinux;
use crate::kexec::{self, Call, SegmentSpec};
use crate::plan::segments::{self, ExtraBootPath, Plan, PlanExtras, Segment, UncompressedInput};

/// Added to the panic path's command line so its user space can tell it came
/// up through the panic path (a dotted name, which the kernel ignores).
pub const PANIC_MARKER: &str = "fastkexec.staged=panic";
/// Where `load` records what it staged (under the root; /run is a tmpfs, so
/// the record dies with the boot it describes).
pub const STATE_FILE: &str = "run/fastkexec/staged.json";
/// 2: with [`StagedState::segments`], the complete checksums `exec` checks.
pub const STATE_VERSION: u32 = 2;
/// Segments bigger than this are checked by sampling one word per page; the
/// others are summed in full.
pub const SAMPLE_THRESHOLD: u64 = 64 << 10;
/// Pages the kernel itself allocates inside the reservation for a crash
/// image (control page, vmcoreinfo copy) besides our segments: keep at least
/// this much free.
pub const CONTROL_SLACK: u64 = 64 << 10;
/// Room for the boot blocks, purgatories and the header when checking
/// whether the reservation is large enough, before the real plan.
pub const SMALL_PIECES: u64 = 2 << 20;
/// Below this much free RAM in the reservation, a kernel booted through the
/// panic path would probably not come up; `auto` does not stage then, and an
/// explicit `--mode staged` says so.
pub const MIN_PANIC_FREE: u64 = 64 << 20;
/// `exec` reads the staged image back through /proc/kcore in chunks of this size to sum it.
const EXEC_CHECK_CHUNK: usize = 1 << 20;
const PAGE: u64 = 4096;
const TWO_MIB: u64 = 2 << 20;
const ONE_MIB: u64 = 1 << 20;
const FOUR_GIB: u64 = 1 << 32;

/// The reservation staged mode uses: the largest "Crash kernel" range.
pub fn pick_reservation(status: &Status) -> Result<PhysRange> {
    if status.iomem_addresses_hidden {
        return Err(Error::NoCrashReservation {
            problem: "/proc/iomem hides addresses from this user, so the reservation cannot be \
                      located; run as root"
                .into(),
        });
    }
    largest_reservation(&status.crash_kernel).ok_or_else(|| Error::NoCrashReservation {
        problem: "/proc/iomem has no \"Crash kernel\" range: boot with crashkernel=SIZE (e.g. \
                  crashkernel=256M) on the kernel command line"
            .into(),
    })
}

/// The largest of the "Crash kernel" ranges as a half-open range.
pub fn largest_reservation(ranges: &[CrashRange]) -> Option<PhysRange> {
    ranges
        .iter()
        .filter(|r| r.end > r.start)
        .max_by_key(|r| r.size)
        .and_then(|r| Some(PhysRange::new(r.start, r.end.checked_add(1)?)))
}

/// The physical shift that moves the kernel's lowest PT_LOAD (`span.0`) to
/// the first 2 MiB boundary inside the reservation, keeping the shift a
/// multiple of 2 MiB as `__startup_64` demands; errors when the shifted
/// footprint (bss included) plus `extra` bytes do not fit.
pub fn staged_delta(span: (u64, u64), extra: u64, reservation: PhysRange) -> Result<i64> {
    let (lo, hi) = span;
    let footprint = hi.saturating_sub(lo);
    let base = e820::align_up(reservation.start, TWO_MIB).unwrap_or(u64::MAX);
    let link_base = e820::align_down(lo, TWO_MIB);
    // The kernel keeps its offset from a 2 MiB boundary.
    let new_lo = base.saturating_add(lo - link_base);
    let need = footprint
        .saturating_add(extra)
        .saturating_add(CONTROL_SLACK)
        .saturating_add(new_lo.saturating_sub(reservation.start));
    if reservation.start.saturating_add(need) > reservation.end {
        return Err(Error::ReservationTooSmall {
            reservation: reservation.to_string(),
            size_mib: reservation.len() >> 20,
            need: format!(
                "the kernel's footprint of {} MiB (its PT_LOADs, bss included) plus {} MiB for \
                 the initrd, boot_params, purgatories and header",
                footprint.div_ceil(ONE_MIB),
                extra.div_ceil(ONE_MIB)
            ),
            suggest_mib: need.div_ceil(64 * ONE_MIB).saturating_mul(64),
        });
    }
    i64::try_from(i128::from(base) - i128::from(link_base)).map_err(|_| Error::Plan {
        problem: format!("physical shift from {link_base:#x} to {base:#x} does not fit an i64"),
    })
}

/// The panic path's memory map: every non-RAM entry as the firmware gave it,
/// and RAM only inside the reservation and below 1 MiB (where the kernel
/// puts its real-mode trampoline; the crashed kernel kept that area
/// reserved). The same shape kdump kernels get.
pub fn kdump_safe_map(map: &[E820Entry], reservation: PhysRange) -> Vec<E820Entry> {
    let allowed = [PhysRange::new(0, ONE_MIB), reservation];
    let mut out = Vec::new();
    for e in map {
        if e.kind != E820Type::Ram {
            out.push(*e);
            continue;
        }
        let r = PhysRange::new(e.addr, e.end());
        for a in &allowed {
            let lo = r.start.max(a.start);
            let hi = r.end.min(a.end);
            if hi > lo {
                out.push(E820Entry {
                    addr: lo,
                    size: hi - lo,
                    kind: E820Type::Ram,
                });
            }
        }
    }
    out.sort_by_key(|e| e.addr);
    out
}

/// The panic path's command line: the normal one without `crashkernel=`
/// (there is no memory to reserve from), plus `reset_devices` (drivers reset
/// hardware no one shut down) and [`PANIC_MARKER`].
pub fn panic_cmdline(cmdline: &str) -> String {
    let mut kept: Vec<&str> = crate::ops::load::split_params(cmdline)
        .into_iter()
        .filter(|p| {
            let key = p.split_once('=').map_or(*p, |(k, _)| k);
            key != "crashkernel" && *p != PANIC_MARKER
        })
        .collect();
    if !kept.contains(&"reset_devices") {
        kept.push("reset_devices");
    }
    kept.push(PANIC_MARKER);
    kept.join(" ")
}

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
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn le64(b: &[u8], off: usize) -> u64 {
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
                let mut padded = s.data.clone();
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

/// What the trampoline knows about the header it checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderRef {
    pub addr: u64,
    pub len: u64,
    pub sum: u64,
    pub nonce: [u8; 16],
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

/// Inputs of [`plan_staged`] beyond the uncompressed ones.
#[derive(Clone, Debug)]
pub struct StagedOptions {
    pub reservation: PhysRange,
    /// Random per load: ties the trampoline to this load's header.
    pub nonce: [u8; 16],
    /// Where the trampoline copies its TSC record; 0 = nowhere. Like
    /// `PlanExtras::tsc_out`, it must lie in `input.reserved`.
    pub trampoline_tsc_out: u64,
}

/// Both images of a staged load.
#[derive(Clone, Debug)]
pub struct StagedPlan {
    pub reservation: PhysRange,
    /// The crash image: kernel, initrd, both boot paths, the header. Its
    /// `entry` (and summary) describe the normal path.
    pub crash: Plan,
    /// The crash image's entry: the panic path's purgatory.
    pub crash_entry: u64,
    pub panic: ExtraBootPath,
    pub panic_cmdline: String,
    pub header: HeaderRef,
    pub sampled_blocks: u64,
    pub summed_ranges: usize,
    /// The normal image: the trampoline, alone.
    pub trampoline: Segment,
    /// Bytes of the reservation still free once staged (the panic path's
    /// kernel lives in them).
    pub free_after: u64,
    pub notes: Vec<String>,
}

impl StagedPlan {
    /// The crash image's segments as `kexec_load` takes them.
    pub fn crash_specs(&self) -> Vec<SegmentSpec<'_>> {
        specs(&self.crash.segments)
    }

    /// The normal image: the trampoline alone.
    pub fn normal_specs(&self) -> Vec<SegmentSpec<'_>> {
        specs(std::slice::from_ref(&self.trampoline))
    }

    pub fn trampoline_entry(&self) -> u64 {
        self.trampoline.mem
    }
}

fn specs(segments: &[Segment]) -> Vec<SegmentSpec<'_>> {
    segments
        .iter()
        .map(|s| SegmentSpec {
            data: &s.data,
            mem: s.mem,
            memsz: s.memsz,
        })
        .collect()
}

fn page_up(v: u64) -> Result<u64> {
    e820::align_up(v, PAGE).ok_or_else(|| Error::Plan {
        problem: format!("size {v:#x} overflows when rounded up to a page"),
    })
}

/// Plans a staged load. `input.phys_delta` is ignored: the kernel goes to
/// the first 2 MiB boundary of the reservation.
pub fn plan_staged(
    input: &UncompressedInput,
    extras: &PlanExtras,
    opts: &StagedOptions,
) -> Result<StagedPlan> {
    let res = opts.reservation;
    let host = input.host;
    if res.end > FOUR_GIB {
        return Err(Error::NoCrashReservation {
            problem: format!(
                "the reservation {res} reaches above 4 GiB, where the boot_params and purgatory \
                 cannot go; reserve it below 4 GiB (crashkernel=SIZE without ,high)"
            ),
        });
    }
    if !e820::is_ram(&host.memmap, &res) {
        return Err(Error::NoCrashReservation {
            problem: format!("the reservation {res} is not RAM in the firmware memory map"),
        });
    }
    let vm = vmlinux::parse_vmlinux(input.vmlinux_path, input.vmlinux)?;
    let initrd = match input.initrd {
        Some((_, b)) => page_up(b.len() as u64)?,
        None => 0,
    };
    let delta = staged_delta(vm.phys_span(), initrd + SMALL_PIECES, res)?;
    let mut shifted = input.clone();
    shifted.phys_delta = delta;

    let mut crash = segments::plan_uncompressed_within(&shifted, extras, res)?;
    let panic_map = kdump_safe_map(&host.memmap, res);
    let panic_cmdline = panic_cmdline(input.cmdline);
    let panic =
        segments::add_boot_path(&mut crash, &shifted, &panic_map, &panic_cmdline, Some(res))?;

    let header = StagedHeader::for_segments(&crash.segments, opts.nonce)?;
    let bytes = header.encode();
    let header_len = bytes.len() as u64;
    let header_sum = purgatory::checksum(&bytes);
    let header_memsz = page_up(header_len)?;
    let used: Vec<PhysRange> = crash.segments.iter().map(Segment::range).collect();
    let free_in_res = e820::free_ranges(
        &[E820Entry {
            addr: res.start,
            size: res.len(),
            kind: E820Type::Ram,
        }],
        &used,
    );
    let header_addr = e820::find_hole(
        &free_in_res,
        &HoleRequest {
            size: header_memsz,
            align: PAGE,
            min: res.start,
            max_end: res.end,
            top_down: true,
        },
    )
    .ok_or_else(|| Error::ReservationTooSmall {
        reservation: res.to_string(),
        size_mib: res.len() >> 20,
        need: format!("no room left for the {header_len}-byte staged header"),
        suggest_mib: (res.len() >> 20) + 64,
    })?;
    crash.segments.push(Segment {
        data: bytes,
        mem: header_addr,
        memsz: header_memsz,
        what: "staged header (nonce, checks)".into(),
    });
    let reserved: Vec<PhysRange> = input
        .reserved
        .iter()
        .map(|&(a, s)| PhysRange::from_len(a, s))
        .filter(|r| !r.is_empty())
        .collect();
    segments::validate(&crash.segments, &host.memmap, &reserved)?;
    let staged_bytes: u64 = crash.segments.iter().map(|s| s.memsz).sum();
    let free_after = res.len().saturating_sub(staged_bytes);
    if free_after < CONTROL_SLACK {
        return Err(Error::ReservationTooSmall {
            reservation: res.to_string(),
            size_mib: res.len() >> 20,
            need: format!(
                "only {free_after} bytes stay free, and the kernel needs {CONTROL_SLACK} for the \
                 crash image's control pages"
            ),
            suggest_mib: (res.len() >> 20) + 64,
        });
    }
    let mut notes = Vec::new();
    if free_after < MIN_PANIC_FREE {
        notes.push(format!(
            "only {} MiB of the reservation stay free: a kernel booted through the panic path \
             (a panic before exec) would have little RAM to come up in",
            free_after >> 20
        ));
    }

    let href = HeaderRef {
        addr: header_addr,
        len: header_len,
        sum: header_sum,
        nonce: opts.nonce,
    };
    let mut t = Trampoline::new()?;
    t.set_target(crash.entry);
    t.set_header(href.addr, href.len, href.sum);
    t.set_nonce(&opts.nonce);
    if opts.trampoline_tsc_out != 0 {
        let need = PhysRange::from_len(opts.trampoline_tsc_out, tramp::TSC_RECORD_SIZE as u64);
        if !opts.trampoline_tsc_out.is_multiple_of(8)
            || !reserved.iter().any(|r| r.contains_range(&need))
        {
            return Err(Error::Plan {
                problem: format!(
                    "the trampoline's TSC record target {:#x} must be 8-byte aligned and inside a \
                     reserved range",
                    opts.trampoline_tsc_out
                ),
            });
        }
        t.set_tsc_out(opts.trampoline_tsc_out);
    }
    let t_bytes = t.into_bytes();
    let t_memsz = page_up(t_bytes.len() as u64)?;
    let t_addr = place_outside(host, res, &reserved, t_memsz)?;
    let trampoline = Segment {
        data: t_bytes,
        mem: t_addr,
        memsz: t_memsz,
        what: "trampoline (checks the staged image, then enters it)".into(),
    };
    segments::validate(std::slice::from_ref(&trampoline), &host.memmap, &reserved)?;
    Ok(StagedPlan {
        reservation: res,
        crash_entry: panic.purgatory_addr,
        panic,
        panic_cmdline,
        header: href,
        sampled_blocks: header.sampled_blocks(),
        summed_ranges: header.full.len(),
        crash,
        trampoline,
        free_after,
        notes,
    })
}

/// The trampoline goes into ordinary RAM (top-down below 4 GiB, above 1 MiB),
/// clear of the reservation and of the caller's reserved ranges.
fn place_outside(
    host: &HostBootInfo,
    res: PhysRange,
    reserved: &[PhysRange],
    size: u64,
) -> Result<u64> {
    let mut used = vec![res];
    used.extend(reserved.iter().copied());
    let free = e820::free_ranges(&host.memmap, &used);
    let free = match &host.iomem_ram {
        Some(ram) => e820::intersect(&free, ram),
        None => free,
    };
    e820::find_hole(
        &free,
        &HoleRequest {
            size,
            align: PAGE,
            min: ONE_MIB,
            max_end: FOUR_GIB,
            top_down: true,
        },
    )
    .ok_or_else(|| Error::NoRamHole {
        what: "the staged-mode trampoline".into(),
        size,
        limit: format!("free RAM between 1 MiB and 4 GiB outside the reservation {res}"),
    })
}

impl fmt::Display for StagedPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.reservation;
        writeln!(
            f,
            "staged in the crashkernel reservation {r} ({} MiB); {} MiB stay free",
            r.len() >> 20,
            self.free_after >> 20
        )?;
        writeln!(
            f,
            "crash image: kexec_load(KEXEC_ON_CRASH), {} segments copied into place now, entry {:#x} (panic-path purgatory)",
            self.crash.segments.len(),
            self.crash_entry
        )?;
        for line in self.crash.to_string().lines() {
            writeln!(f, "  {line}")?;
        }
        writeln!(
            f,
            "panic path: boot_params at {:#x}, {} e820 entries (RAM only in the reservation and below 1 MiB), command line at {:#x}: {:?}",
            self.panic.boot_params_addr,
            self.panic.e820_entries,
            self.panic.cmdline_addr,
            self.panic_cmdline
        )?;
        writeln!(
            f,
            "staged header at {:#x}: {} bytes, {} ranges summed, {} blocks of 64 KiB sampled",
            self.header.addr, self.header.len, self.summed_ranges, self.sampled_blocks
        )?;
        writeln!(
            f,
            "normal image: kexec_load, 1 segment: trampoline at {:#x} ({} bytes), which checks the header and jumps to the normal path's purgatory at {:#x}",
            self.trampoline.mem,
            self.trampoline.data.len(),
            self.crash.entry
        )
    }
}

/// What `load` reports about a staged load (JSON).
#[derive(Clone, Debug, Serialize)]
pub struct StagedSummary {
    pub reservation_start: u64,
    pub reservation_end: u64,
    pub crash_entry: u64,
    pub crash_segments: usize,
    pub normal_path_purgatory: u64,
    pub panic_boot_params: u64,
    pub panic_cmdline: String,
    pub header_addr: u64,
    pub header_len: u64,
    pub sampled_blocks: u64,
    pub trampoline: u64,
    pub free_after: u64,
    /// A kdump (or other) crash kernel was loaded and is gone now.
    pub displaced_crash_kernel: bool,
}

impl StagedPlan {
    pub fn summary(&self, displaced_crash_kernel: bool) -> StagedSummary {
        StagedSummary {
            reservation_start: self.reservation.start,
            reservation_end: self.reservation.end,
            crash_entry: self.crash_entry,
            crash_segments: self.crash.segments.len(),
            normal_path_purgatory: self.crash.entry,
            panic_boot_params: self.panic.boot_params_addr,
            panic_cmdline: self.panic_cmdline.clone(),
            header_addr: self.header.addr,
            header_len: self.header.len,
            sampled_blocks: self.sampled_blocks,
            trampoline: self.trampoline.mem,
            free_after: self.free_after,
            displaced_crash_kernel,
        }
    }
}

/// What `load` recorded at [`STATE_FILE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedState {
    pub version: u32,
    /// `/proc/sys/kernel/random/boot_id` of the boot that staged it.
    pub boot_id: Option<String>,
    pub loaded_at_unix: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub panic_cmdline: String,
    pub reservation_start: u64,
    /// Exclusive.
    pub reservation_end: u64,
    pub crash_entry: u64,
    pub trampoline: u64,
    pub header_addr: u64,
    pub header_len: u64,
    pub header_sum: u64,
    /// 32 hex digits.
    pub nonce: String,
    pub sampled_blocks: u64,
    /// Every segment of the crash image, summed over its whole destination (the zero fill
    /// included): what `exec` checks, completely, before the reboot.
    pub segments: Vec<SegmentSum>,
}

/// One staged segment's complete checksum ([`purgatory::checksum`] over `len` bytes at
/// `addr`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSum {
    pub addr: u64,
    /// A multiple of 8.
    pub len: u64,
    pub sum: u64,
}

impl SegmentSum {
    fn of(s: &Segment) -> SegmentSum {
        let len = s.memsz.max(s.data.len() as u64).div_ceil(8) * 8;
        let mut c = Checksum::new();
        c.update(&s.data);
        c.zeros(len - s.data.len() as u64);
        SegmentSum {
            addr: s.mem,
            len,
            sum: c.finish(),
        }
    }
}

/// [`purgatory::checksum`] fed in pieces: every piece but the last a multiple of 8 bytes.
#[derive(Clone, Copy, Debug)]
pub struct Checksum {
    a: u64,
    b: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    pub fn new() -> Self {
        Self {
            a: purgatory::CHECKSUM_SEED,
            b: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        for chunk in data.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.a = self.a.wrapping_add(u64::from_le_bytes(word));
            self.b = self.b.wrapping_add(self.a);
        }
    }

    /// `bytes` (a multiple of 8) of zeros, without touching memory: `a` stays, `b` grows by
    /// `a` per word.
    pub fn zeros(&mut self, bytes: u64) {
        self.b = self.b.wrapping_add(self.a.wrapping_mul(bytes / 8));
    }

    pub fn finish(self) -> u64 {
        self.a ^ self.b.rotate_left(32)
    }
}

impl StagedState {
    pub fn new(
        plan: &StagedPlan,
        kernel: &Path,
        initrd: Option<&Path>,
        cmdline: &str,
        boot_id: Option<String>,
    ) -> Self {
        Self {
            version: STATE_VERSION,
            boot_id,
            loaded_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            kernel: kernel.to_path_buf(),
            initrd: initrd.map(Path::to_path_buf),
            cmdline: cmdline.to_string(),
            panic_cmdline: plan.panic_cmdline.clone(),
            reservation_start: plan.reservation.start,
            reservation_end: plan.reservation.end,
            crash_entry: plan.crash_entry,
            trampoline: plan.trampoline.mem,
            header_addr: plan.header.addr,
            header_len: plan.header.len,
            header_sum: plan.header.sum,
            nonce: hex(&plan.header.nonce),
            sampled_blocks: plan.sampled_blocks,
            segments: plan.crash.segments.iter().map(SegmentSum::of).collect(),
        }
    }

    pub fn reservation(&self) -> PhysRange {
        PhysRange::new(self.reservation_start, self.reservation_end)
    }

    pub fn header(&self) -> Option<HeaderRef> {
        Some(HeaderRef {
            addr: self.header_addr,
            len: self.header_len,
            sum: self.header_sum,
            nonce: unhex16(&self.nonce)?,
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A fresh random nonce (getrandom(2)).
pub fn new_nonce() -> Result<[u8; 16]> {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n).map_err(|e| Error::Plan {
        problem: format!("getrandom failed ({e}); no nonce for the staged image"),
    })?;
    Ok(n)
}

/// This boot's id, if the kernel exposes it.
pub fn boot_id(root: &Path) -> Option<String> {
    fs::read_to_string(root.join("proc/sys/kernel/random/boot_id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Writes the record atomically (an exclusive temporary file, then rename), 0600 in a 0700
/// directory: it is root's account of what kexec holds.
pub fn write_state(root: &Path, state: &StagedState) -> Result<()> {
    let path = root.join(STATE_FILE);
    let dir = path.parent().unwrap_or(root);
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
    }
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::HostInfo {
        path: path.clone(),
        problem: format!("cannot encode: {e}"),
    })?;
    atomic_file::write(&path, text.as_bytes(), 0o600)
}

/// What to do about a record `exec`, `load` and `unload` cannot use.
const STATE_FIX: &str = "check what is loaded with `fastkexec status`, then run `fastkexec \
                         unload` (it clears both images and removes this record) and load again";

/// The record of what `load --mode staged` staged during this boot: `None` when there is
/// none, or when it is from an earlier boot (a /run that is not a tmpfs; the kernel has
/// forgotten that load). A record that cannot be read or parsed, or of another version, is
/// an error naming the file: guessing "nothing staged" would let `exec` skip its check and
/// `load` leave a staged crash image behind (issue 13, defect 5).
pub fn read_state(root: &Path) -> Result<Option<StagedState>> {
    let path = root.join(STATE_FILE);
    let bad = |problem: String| Error::StagedState {
        path: path.clone(),
        problem: format!("{problem}; {STATE_FIX}"),
    };
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(format!("cannot read the staged-mode record ({e})"))),
    };
    // The version first, so a newer record says so rather than "missing field".
    let version = serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| bad(format!("not a staged-mode record ({e})")))?
        .get("version")
        .and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(STATE_VERSION)) {
        return Err(bad(format!(
            "staged-mode record version {} (this fastkexec reads version {STATE_VERSION})",
            version.map_or_else(|| "missing".into(), |v| v.to_string())
        )));
    }
    let state: StagedState =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a staged-mode record ({e})")))?;
    let now = boot_id(root);
    if state.boot_id.is_some() && now.is_some() && state.boot_id != now {
        log::info!(
            "{}: left over from an earlier boot; ignored",
            path.display()
        );
        return Ok(None);
    }
    Ok(Some(state))
}

pub fn remove_state(root: &Path) -> Result<()> {
    let path = root.join(STATE_FILE);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

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

fn crash_loaded(root: &Path) -> Option<bool> {
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

/// Unloads the crash image (`kexec_load` with no segments and
/// `KEXEC_ON_CRASH`).
pub fn unload_crash(status: &Status) -> Result<()> {
    kexec::kexec_load(0, &[], kexec::KEXEC_ON_CRASH)
        .map_err(|e| kexec::explain(Call::Unload, e, status))
}

/// `unload` for a staged load: the crash image goes too when it is still ours (or cannot be
/// checked), and the record is removed. Returns what was done, or `None` when nothing was
/// staged. An unreadable record is removed (that is what `unload` is for), and the crash
/// image, whose owner it cannot tell, is left loaded with a word on how to unload it.
pub fn unload_staged(root: &Path) -> Result<Option<String>> {
    match read_state(root) {
        Ok(None) => return Ok(None),
        Ok(Some(_)) => {}
        Err(e @ Error::StagedState { .. }) => {
            remove_state(root)?;
            let crash = match crash_loaded(root) {
                Some(false) => "no crash image is loaded".to_string(),
                _ => "the crash image (whose owner it cannot tell) was left loaded: `kexec -p \
                      -u` unloads it if it is the staged kernel"
                    .to_string(),
            };
            return Ok(Some(format!(
                "the staged-mode record could not be used ({e}); removed it; {crash}"
            )));
        }
        Err(e) => return Err(e),
    }
    let (unload, msg) =
        unload_decision(crash_loaded(root), check_before_exec(root, Depth::Sampled))?;
    if unload {
        let st = status::status(root).unwrap_or_default();
        unload_crash(&st)?;
    }
    remove_state(root)?;
    Ok(Some(msg))
}

/// After a load of another mode replaced the staged trampoline, the staged crash image has
/// no way in any more but a panic, and it keeps kdump out: unload it (when it is still ours)
/// and remove the record, so kdump can load again and `exec` checks nothing stale. Returns
/// what was done, or `None` when nothing was staged.
pub fn reconcile_after_load(root: &Path, status: &Status) -> Result<Option<String>> {
    if read_state(root)?.is_none() {
        return Ok(None);
    }
    let (unload, msg) =
        displaced_decision(crash_loaded(root), check_before_exec(root, Depth::Sampled))?;
    if unload {
        unload_crash(status)?;
    }
    remove_state(root)?;
    Ok(Some(msg))
}

/// What a load of another mode does with the staged crash image it displaced (see
/// [`reconcile_after_load`]): whether to unload it, and what to tell the user.
pub fn displaced_decision(
    crash_loaded: Option<bool>,
    check: Result<PreExec>,
) -> Result<(bool, String)> {
    let (unload, what) = unload_decision(crash_loaded, check)?;
    Ok((
        unload,
        if unload {
            "the kernel staged earlier in the crashkernel reservation had no way in any more: \
             unloaded it and removed its record (the reservation is free for kdump again)"
                .to_string()
        } else {
            format!("the earlier staged load is over: {what}")
        },
    ))
}

/// What `unload` does with the staged crash image, from whether a crash image is loaded
/// (`/sys/kernel/kexec_crash_loaded`) and what `check_before_exec` found: whether to unload
/// it, and what to tell the user. Three cases a user must tell apart: ours (unloaded), gone
/// (unloaded elsewhere: nothing to do but clear our stale state), someone else's (left alone).
pub fn unload_decision(
    crash_loaded: Option<bool>,
    check: Result<PreExec>,
) -> Result<(bool, String)> {
    if crash_loaded == Some(false) {
        return Ok((
            false,
            "no crash kernel is loaded any more (it was unloaded after `fastkexec load` staged \
             it, e.g. by `kexec -p -u` or a kdump service stopping): nothing to unload there; \
             the staged state was stale and is cleared"
                .into(),
        ));
    }
    match check {
        Ok(_) => Ok((
            true,
            "also unloaded the kernel staged in the crashkernel reservation (no crash kernel is \
             loaded now)"
                .into(),
        )),
        Err(Error::StagedReplaced { problem, .. }) => Ok((
            false,
            format!(
                "the crash kernel loaded now is not the one fastkexec staged ({problem}): left \
                 it loaded (it is someone else's, e.g. kdump's); the staged state is cleared"
            ),
        )),
        Err(e) => Err(e),
    }
}

/// Whether `auto` may stage: kexec_load allowed, a reservation, and no crash
/// kernel of someone else's loaded — our own staged kernel from this boot
/// may be replaced, once checked to still be ours.
pub fn auto_eligible(status: &Status, root: &Path) -> Option<String> {
    if !status.modes.staged.allowed {
        return None;
    }
    match status.crash_loaded {
        Some(false) => Some("the crashkernel reservation is idle (no crash kernel loaded)".into()),
        Some(true) => match check_before_exec(root, Depth::Sampled) {
            Ok(PreExec::Intact { .. }) => {
                Some("the crashkernel reservation holds fastkexec's own staged kernel".into())
            }
            _ => None,
        },
        None => None,
    }
}

/// Staged mode's availability on this kernel: everything uncompressed mode
/// needs, plus a visible reservation and panic loads not disabled.
pub fn availability(
    uncompressed: &crate::host::status::Availability,
    st: &Status,
) -> crate::host::status::Availability {
    let mut a = crate::host::status::Availability {
        blockers: uncompressed.blockers.clone(),
        ..Default::default()
    };
    if st.iomem_addresses_hidden {
        a.blockers
            .push("the crashkernel reservation is not visible (run as root)".into());
    } else if largest_reservation(&st.crash_kernel).is_none() {
        a.blockers.push(
            "no crashkernel reservation (boot with crashkernel=SIZE, e.g. crashkernel=256M)".into(),
        );
    }
    if st.kexec_load_limit_panic == Some(0) {
        a.blockers.push(
            "kernel.kexec_load_limit_panic=0: no crash-image loads left until the next reboot"
                .into(),
        );
    }
    a.caveats.push(
        "while staged no kdump kernel is loaded (a loaded one is displaced until the next boot); \
         the reservation must hold the kernel's footprint and the initrd"
            .into(),
    );
    if st.crash_loaded == Some(true) {
        a.caveats.push(
            "a crash kernel is loaded now: --mode staged would replace it, auto will not".into(),
        );
    }
    a.caveats.extend(uncompressed.caveats.iter().cloned());
    a.allowed = a.blockers.is_empty();
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::trampoline::{
        FAIL_HEADER, FAIL_HEADER_SUM, FAIL_NONCE, FAIL_RANGE_SUM, FAIL_SAMPLE,
    };
    use crate::host::hostinfo;
    use std::collections::BTreeMap;

    const TINY: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vmlinux-tiny.elf"
    ));
    const RES: PhysRange = PhysRange {
        start: 0x6500_0000,
        end: 0x7500_0000,
    };

    fn host() -> HostBootInfo {
        let root =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/host/qemu-seabios");
        let mut h = hostinfo::read(&root).unwrap();
        h.rng_seed = Some([7; 32]);
        h
    }

    fn input<'a>(h: &'a HostBootInfo, initrd: Option<&'a [u8]>) -> UncompressedInput<'a> {
        UncompressedInput {
            vmlinux_path: Path::new("vmlinux-tiny.elf"),
            vmlinux: TINY,
            setup_header: None,
            initrd: initrd.map(|b| (Path::new("initrd.img"), b)),
            cmdline: "console=ttyS0 crashkernel=256M root=/dev/vda",
            host: h,
            reserved: Vec::new(),
            verify: false,
            phys_delta: 0,
        }
    }

    fn opts() -> StagedOptions {
        StagedOptions {
            reservation: RES,
            nonce: *b"0123456789abcdef",
            trampoline_tsc_out: 0,
        }
    }

    /// Physical memory after both loads: every segment copied into place.
    struct Mem(BTreeMap<u64, Vec<u8>>);

    impl Mem {
        fn of(segments: &[Segment]) -> Self {
            let mut m = BTreeMap::new();
            for s in segments {
                let mut d = s.data.clone();
                d.resize(s.memsz as usize, 0);
                m.insert(s.mem, d);
            }
            Mem(m)
        }

        fn poke(&mut self, addr: u64, v: u8) {
            let (&base, d) = self.0.range_mut(..=addr).next_back().unwrap();
            d[(addr - base) as usize] = v;
        }
    }

    impl PhysRead for Mem {
        fn read_phys(&mut self, addr: u64, buf: &mut [u8]) -> Result<()> {
            let (&base, d) = self.0.range(..=addr).next_back().ok_or(Error::Plan {
                problem: "unmapped".into(),
            })?;
            let off = (addr - base) as usize;
            let src = d.get(off..off + buf.len()).ok_or(Error::Plan {
                problem: format!("unmapped {addr:#x}"),
            })?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    fn get64(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn delta_puts_the_kernel_on_the_first_2mib_boundary_of_the_reservation() {
        // Link address 16 MiB, 60 MiB footprint.
        let span = (0x100_0000, 0x100_0000 + (60 << 20));
        let d = staged_delta(span, 8 << 20, RES).unwrap();
        assert_eq!(d, 0x6500_0000 - 0x100_0000);
        assert_eq!(d % (2 << 20), 0);
        // A reservation starting off a 2 MiB boundary.
        let odd = PhysRange::new(0x6510_0000, 0x7500_0000);
        let d = staged_delta(span, 0, odd).unwrap();
        assert_eq!(0x100_0000 + d, 0x6520_0000);
        // A footprint that does not start on 2 MiB keeps its offset.
        let d = staged_delta((0x100_3000, 0x200_0000), 0, RES).unwrap();
        assert_eq!(0x100_3000 + d, 0x6500_3000);
    }

    #[test]
    fn too_small_reservation_names_sizes_and_a_fix() {
        let span = (0x100_0000, 0x100_0000 + (200 << 20));
        let e = staged_delta(span, 80 << 20, RES).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::ReservationTooSmall { .. }), "{text}");
        assert!(text.contains("256 MiB"), "{text}");
        assert!(text.contains("200 MiB"), "{text}");
        assert!(text.contains("crashkernel=320M"), "{text}");
        // Exactly full (no slack for the control page) is too small as well.
        let full = (0x100_0000, 0x100_0000 + RES.len());
        assert!(staged_delta(full, 0, RES).is_err());
    }

    #[test]
    fn kdump_safe_map_keeps_only_the_reservation_and_low_ram() {
        let h = host();
        let m = kdump_safe_map(&h.memmap, RES);
        let ram: Vec<PhysRange> = m
            .iter()
            .filter(|e| e.kind == E820Type::Ram)
            .map(|e| PhysRange::new(e.addr, e.end()))
            .collect();
        assert_eq!(ram, vec![PhysRange::new(0, 0x9_fc00), RES]);
        // Every non-RAM entry survives unchanged.
        let non_ram = |v: &[E820Entry]| -> Vec<E820Entry> {
            v.iter()
                .filter(|e| e.kind != E820Type::Ram)
                .copied()
                .collect()
        };
        assert_eq!(non_ram(&m), non_ram(&h.memmap));
        let total: u64 = ram.iter().map(PhysRange::len).sum();
        assert_eq!(total, 0x9_fc00 + (256 << 20));
    }

    #[test]
    fn panic_cmdline_drops_crashkernel_and_marks_the_path() {
        assert_eq!(
            panic_cmdline("console=ttyS0 crashkernel=256M crashkernel=512M,high quiet"),
            "console=ttyS0 quiet reset_devices fastkexec.staged=panic"
        );
        // Idempotent.
        let once = panic_cmdline("a reset_devices");
        assert_eq!(panic_cmdline(&once), once);
        assert_eq!(panic_cmdline(""), "reset_devices fastkexec.staged=panic");
    }

    #[test]
    fn samples_pick_non_zero_words_spread_by_key() {
        let mut page = vec![0u8; 4096];
        page[1000..1008].copy_from_slice(&0x1122u64.to_le_bytes());
        let (off, v) = pick_sample(&page, 4096, 1, 0);
        assert_eq!((off, v), (1000, 0x1122));
        // An all-zero block (or the zero fill past the data) samples zero,
        // at an offset inside the block.
        let (off, v) = pick_sample(&[], 0x1_0000, 1, 5);
        assert_eq!(v, 0);
        assert_eq!(off % 8, 0);
        assert!(off < 0x1_0000);
        // A short last block keeps its sample inside its own bytes.
        for i in 0..64 {
            let (off, _) = pick_sample(&[], 0x3000, 9, i);
            assert!(off < 0x3000);
        }
        // Different blocks/keys start at different words.
        let full: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8 + 1).collect();
        let offs: std::collections::HashSet<u64> = (0..64)
            .map(|i| pick_sample(&full, 0x1_0000, 0x5eed, i).0)
            .collect();
        assert!(offs.len() > 60, "{offs:?}");
    }

    #[test]
    fn header_round_trips_and_lays_out_as_documented() {
        let segs = vec![
            Segment {
                data: vec![0x11; 5000],
                mem: 0x6500_0000,
                memsz: 0x2_0000,
                what: "big".into(),
            },
            Segment {
                data: vec![0x22; 100],
                mem: 0x7400_0000,
                memsz: 0x1000,
                what: "small".into(),
            },
        ];
        let h = StagedHeader::for_segments(&segs, [9; 16]).unwrap();
        assert_eq!(h.full.len(), 1);
        assert_eq!(h.full[0].len, 0x1000, "summed over the whole destination");
        let mut padded = vec![0x22; 100];
        padded.resize(0x1000, 0);
        assert_eq!(h.full[0].sum, purgatory::checksum(&padded));
        assert_eq!(h.sampled[0].samples.len(), 2, "128 KiB in 64 KiB blocks");
        // Blocks past the data sample zero.
        assert_eq!(h.sampled[0].samples[1].1, 0);
        assert_eq!(h.sampled[0].samples[0].1, 0x1111_1111_1111_1111);
        let b = h.encode();
        assert_eq!(&b[..8], b"FKXSTAG1");
        assert_eq!(get64(&b, 0x10), b.len() as u64);
        assert_eq!(b.len(), 0x40 + 2 * 24 + 2 * 16);
        assert_eq!(b.len() % 8, 0);
        assert_eq!(&b[0x18..0x28], &[9; 16]);
        assert_eq!(get64(&b, 0x28), 1);
        assert_eq!(get64(&b, 0x30), 1);
        assert_eq!(get64(&b, 0x40), 0x7400_0000);
        assert_eq!(get64(&b, 0x58), 0x6500_0000);
        assert_eq!(get64(&b, 0x60), 2);
        assert_eq!(get64(&b, 0x68), 0x70);
        assert_eq!(StagedHeader::decode(&b).unwrap(), h);
        // A table offset past the end is refused, not followed.
        let mut bad = b.clone();
        bad[0x68..0x70].copy_from_slice(&0xffff_fff0u64.to_le_bytes());
        assert!(StagedHeader::decode(&bad).is_err());
        assert!(StagedHeader::decode(&b[..0x30]).is_err());
    }

    #[test]
    fn plan_keeps_every_crash_segment_inside_the_reservation() {
        let h = host();
        let initrd = vec![5u8; 3 << 20];
        let p = plan_staged(&input(&h, Some(&initrd)), &PlanExtras::default(), &opts()).unwrap();
        for s in &p.crash.segments {
            assert!(
                RES.contains_range(&s.range()),
                "{} at {}",
                s.what,
                s.range()
            );
        }
        assert!(!RES.overlaps(&p.trampoline.range()));
        assert_eq!(p.trampoline.memsz, 4096);
        // The kernel sits at the reservation's start; entry shifted alike.
        assert_eq!(p.crash.summary.kernel_entry, 0x6500_0000);
        assert_eq!(p.crash.summary.phys_delta, 0x6500_0000 - 0x100_0000);
        // Entries: crash image → panic purgatory; trampoline → normal purgatory.
        assert_eq!(p.crash_entry, p.panic.purgatory_addr);
        assert_ne!(p.crash_entry, p.crash.entry);
        let t = Trampoline::from_bytes(p.trampoline.data.clone()).unwrap();
        assert_eq!(t.target(), p.crash.entry);
        assert_eq!(t.header(), (p.header.addr, p.header.len, p.header.sum));
        assert_eq!(t.nonce(), opts().nonce);
        kexec::validate_segments(p.crash_entry, &p.crash_specs()).unwrap();
        kexec::validate_segments(p.trampoline_entry(), &p.normal_specs()).unwrap();
        assert!(p.free_after > 200 << 20, "{}", p.free_after);
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        let text = p.to_string();
        assert!(text.contains("KEXEC_ON_CRASH"), "{text}");
        assert!(text.contains("fastkexec.staged=panic"), "{text}");
    }

    /// The zero page a purgatory hands to the kernel, read from the plan.
    fn zero_page_of(p: &StagedPlan, purgatory_addr: u64) -> Vec<u8> {
        let seg = p
            .crash
            .segments
            .iter()
            .find(|s| s.mem == purgatory_addr)
            .unwrap();
        let purg = purgatory::Purgatory::from_bytes(seg.data.clone()).unwrap();
        assert_eq!(purg.entry(), p.crash.summary.kernel_entry);
        p.crash.read_phys(purg.boot_params(), 4096).unwrap()
    }

    fn e820_of(zp: &[u8]) -> Vec<(u64, u64, u32)> {
        let n = zp[0x1e8] as usize;
        (0..n)
            .map(|i| {
                let o = 0x2d0 + 20 * i;
                (
                    get64(zp, o),
                    get64(zp, o + 8),
                    u32::from_le_bytes(zp[o + 16..o + 20].try_into().unwrap()),
                )
            })
            .collect()
    }

    fn cmdline_of(p: &StagedPlan, zp: &[u8]) -> String {
        let at = u64::from(u32::from_le_bytes(zp[0x228..0x22c].try_into().unwrap()));
        let raw = p.crash.read_phys(at, 2048).unwrap();
        let end = raw.iter().position(|&b| b == 0).unwrap();
        String::from_utf8(raw[..end].to_vec()).unwrap()
    }

    #[test]
    fn the_two_paths_get_their_own_memory_maps_and_command_lines() {
        let h = host();
        let initrd = vec![5u8; 1 << 20];
        let p = plan_staged(&input(&h, Some(&initrd)), &PlanExtras::default(), &opts()).unwrap();
        let normal = zero_page_of(&p, p.crash.entry);
        let panic = zero_page_of(&p, p.crash_entry);
        let ram =
            |m: &[(u64, u64, u32)]| -> u64 { m.iter().filter(|e| e.2 == 1).map(|e| e.1).sum() };
        // Normal path: the firmware map, the reservation included as RAM.
        let full: Vec<(u64, u64, u32)> = h
            .memmap
            .iter()
            .map(|e| (e.addr, e.size, e.kind.raw()))
            .collect();
        assert_eq!(e820_of(&normal), full);
        assert!(e820_of(&normal)
            .iter()
            .any(|e| e.2 == 1 && e.0 <= RES.start && e.0 + e.1 >= RES.end));
        // Panic path: RAM = the reservation + low memory only.
        assert_eq!(ram(&e820_of(&panic)), RES.len() + 0x9_fc00);
        assert_eq!(
            cmdline_of(&p, &normal),
            "console=ttyS0 crashkernel=256M root=/dev/vda"
        );
        assert_eq!(
            cmdline_of(&p, &panic),
            "console=ttyS0 root=/dev/vda reset_devices fastkexec.staged=panic"
        );
        // Both see the same initrd, and neither carries elfcorehdr=.
        for zp in [&normal, &panic] {
            let at = u32::from_le_bytes(zp[0x218..0x21c].try_into().unwrap());
            assert_eq!(Some(u64::from(at)), p.crash.summary.initrd.map(|i| i.0));
            assert!(!cmdline_of(&p, zp).contains("elfcorehdr"));
        }
    }

    /// Follows a boot_params setup_data chain through the plan's segments;
    /// stops at `foreign` (a node outside them, e.g. the tracer's page).
    fn chain_reaches(p: &StagedPlan, zp: &[u8], foreign: u64) -> bool {
        let mut at = get64(zp, 0x250);
        for _ in 0..16 {
            if at == 0 {
                return false;
            }
            if at == foreign {
                return true;
            }
            at = get64(&p.crash.read_phys(at, 8).unwrap(), 0);
        }
        panic!("setup_data chain does not end");
    }

    #[test]
    fn the_tracer_rides_the_normal_path_only_and_the_trampoline_stamps_next_to_it() {
        let h = host();
        let page = 0x1000_0000u64;
        let mut inp = input(&h, None);
        inp.reserved = vec![(page, 4096)];
        let extras = PlanExtras {
            setup_data: Vec::new(),
            setup_data_tail: page,
            tsc_out: page + 1264,
        };
        let mut o = opts();
        o.trampoline_tsc_out = page + 1296;
        let p = plan_staged(&inp, &extras, &o).unwrap();
        let t = Trampoline::from_bytes(p.trampoline.data.clone()).unwrap();
        assert_eq!(t.tsc_out(), page + 1296);
        assert!(!PhysRange::from_len(p.trampoline.mem, p.trampoline.memsz)
            .overlaps(&PhysRange::from_len(page, 4096)));
        assert!(chain_reaches(&p, &zero_page_of(&p, p.crash.entry), page));
        assert!(!chain_reaches(&p, &zero_page_of(&p, p.crash_entry), page));

        // A target the tracer did not reserve could be overwritten: refused.
        o.trampoline_tsc_out = page + 4096 + 64;
        let e = plan_staged(&inp, &extras, &o).unwrap_err().to_string();
        assert!(e.contains("TSC record target"), "{e}");
    }

    #[test]
    fn user_space_check_passes_on_the_plan_and_catches_overwrites() {
        let h = host();
        let initrd = vec![5u8; 1 << 20];
        let p = plan_staged(&input(&h, Some(&initrd)), &PlanExtras::default(), &opts()).unwrap();
        let mut mem = Mem::of(&p.crash.segments);
        assert_eq!(check_staged(&p.header, &mut mem, 1).unwrap(), 0);
        // One sampled word of the initrd changes: caught, with its block.
        let hdr = StagedHeader::decode(
            &p.crash
                .read_phys(p.header.addr, p.header.len as usize)
                .unwrap(),
        )
        .unwrap();
        let (ri, r) = hdr
            .sampled
            .iter()
            .enumerate()
            .find(|(_, r)| Some(r.addr) == p.crash.summary.initrd.map(|i| i.0))
            .unwrap();
        let block = tramp::SAMPLE_BLOCK;
        assert_eq!(r.samples.len(), 16, "1 MiB in 64 KiB blocks");
        let (off, _) = r.samples[7];
        mem.poke(r.addr + 7 * block + off, 0xee);
        let code = check_staged(&p.header, &mut mem, 1).unwrap();
        assert_eq!(code, FAIL_SAMPLE | (ri as u64) << 8 | 7 << 16);
        assert!(tramp::describe_result(code).contains("block 7"));
        // A summed range (the panic boot block) changes anywhere: caught.
        let mut mem = Mem::of(&p.crash.segments);
        mem.poke(p.panic.boot_params_addr + 0x100, 0x5a);
        assert_eq!(
            check_staged(&p.header, &mut mem, 1).unwrap() & 0xff,
            FAIL_RANGE_SUM
        );
        // Another load's header (other nonce), and a damaged header.
        let mut other = opts();
        other.nonce = [1; 16];
        let q = plan_staged(&input(&h, Some(&initrd)), &PlanExtras::default(), &other).unwrap();
        let mut mem = Mem::of(&q.crash.segments);
        assert_eq!(check_staged(&p.header, &mut mem, 1).unwrap(), FAIL_NONCE);
        let mut mem = Mem::of(&p.crash.segments);
        mem.poke(p.header.addr + 0x45, 0x01);
        assert_eq!(
            check_staged(&p.header, &mut mem, 1).unwrap(),
            FAIL_HEADER_SUM
        );
        mem.poke(p.header.addr, b'X');
        assert_eq!(check_staged(&p.header, &mut mem, 1).unwrap(), FAIL_HEADER);
    }

    /// Buffers at page-aligned host addresses, standing in for physical
    /// memory, so the trampoline's own assembly can run its check here.
    struct HostPages {
        buf: Vec<u8>,
        base: usize,
    }

    impl HostPages {
        fn new(pages: usize) -> Self {
            let buf = vec![0u8; (pages + 1) * 4096];
            let base = (buf.as_ptr() as usize).next_multiple_of(4096) - buf.as_ptr() as usize;
            Self { buf, base }
        }
        fn addr(&self, page: usize) -> u64 {
            (self.buf.as_ptr() as usize + self.base + page * 4096) as u64
        }
        fn page_mut(&mut self, page: usize) -> &mut [u8] {
            let o = self.base + page * 4096;
            &mut self.buf[o..o + 4096]
        }
        fn byte_mut(&mut self, at: usize) -> &mut u8 {
            &mut self.buf[self.base + at]
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn trampoline_assembly_agrees_with_the_user_space_check() {
        // A "kernel" of 40 pages (sampled: blocks of 64, 64 and 32 KiB) and
        // a "boot block" of 2 pages (summed), at host addresses.
        let mut mem = HostPages::new(42);
        let mut x = 0x1234_5678u64;
        for p in 0..42 {
            for w in mem.page_mut(p).chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Some all-zero pages too.
                if p % 9 != 3 {
                    w.copy_from_slice(&x.to_le_bytes());
                }
            }
        }
        let seg = |mem: &HostPages, first: usize, n: usize| Segment {
            data: (first..first + n)
                .flat_map(|p| {
                    let o = mem.base + p * 4096;
                    mem.buf[o..o + 4096].to_vec()
                })
                .collect(),
            mem: mem.addr(first),
            memsz: n as u64 * 4096,
            what: String::new(),
        };
        let segs = vec![seg(&mem, 0, 40), seg(&mem, 40, 2)];
        let nonce = [0x3c; 16];
        let header = StagedHeader::for_segments(&segs, nonce).unwrap();
        let hbytes = header.encode();
        let href = HeaderRef {
            addr: hbytes.as_ptr() as u64,
            len: hbytes.len() as u64,
            sum: purgatory::checksum(&hbytes),
            nonce,
        };
        let mut t = Trampoline::new().unwrap();
        t.set_header(href.addr, href.len, href.sum);
        t.set_nonce(&nonce);

        struct Direct;
        impl PhysRead for Direct {
            fn read_phys(&mut self, addr: u64, buf: &mut [u8]) -> Result<()> {
                // SAFETY: the test only passes addresses of live buffers it
                // owns (the pages and the header), with lengths inside them.
                let src = unsafe { std::slice::from_raw_parts(addr as *const u8, buf.len()) };
                buf.copy_from_slice(src);
                Ok(())
            }
        }
        let both = |t: &Trampoline, href: &HeaderRef| -> (u64, u64) {
            // SAFETY: the header and every range it lists are live buffers
            // of this test at the addresses recorded in them.
            let asm = unsafe { tramp::run_check(t.bytes()) };
            let rust = check_staged(href, &mut Direct, 1).unwrap();
            (asm, rust)
        };
        assert_eq!(both(&t, &href), (0, 0));

        assert_eq!(header.sampled[0].samples.len(), 3);
        // Overwrite the sampled word of each block of the "kernel".
        for b in 0..3usize {
            let (off, _) = header.sampled[0].samples[b];
            let at = b * 0x1_0000 + off as usize;
            assert!(at < 40 * 4096);
            *mem.byte_mut(at) ^= 0x80;
            let want = FAIL_SAMPLE | (b as u64) << 16;
            assert_eq!(both(&t, &href), (want, want), "block {b}");
            *mem.byte_mut(at) ^= 0x80;
        }
        // A byte elsewhere in a sampled block is not what sampling sees...
        let (off, _) = header.sampled[0].samples[1];
        let other = 0x1_0000 + if off == 0 { 8 } else { 0 };
        *mem.byte_mut(other) ^= 1;
        assert_eq!(both(&t, &href), (0, 0));
        *mem.byte_mut(other) ^= 1;
        // ...but anywhere in a summed range is.
        *mem.byte_mut(41 * 4096 + 4000) ^= 1;
        assert_eq!(both(&t, &href), (FAIL_RANGE_SUM, FAIL_RANGE_SUM));
        *mem.byte_mut(41 * 4096 + 4000) ^= 1;
        // Wrong nonce in the trampoline, wrong header checksum.
        let mut t2 = t.clone();
        t2.set_nonce(&[0; 16]);
        let h2 = HeaderRef {
            nonce: [0; 16],
            ..href
        };
        assert_eq!(both(&t2, &h2), (FAIL_NONCE, FAIL_NONCE));
        let mut t3 = t.clone();
        t3.set_header(href.addr, href.len, href.sum ^ 1);
        let h3 = HeaderRef {
            sum: href.sum ^ 1,
            ..href
        };
        assert_eq!(both(&t3, &h3), (FAIL_HEADER_SUM, FAIL_HEADER_SUM));
        let mut t4 = t.clone();
        t4.set_header(href.addr, href.len - 8, href.sum);
        let h4 = HeaderRef {
            len: href.len - 8,
            ..href
        };
        assert_eq!(both(&t4, &h4), (FAIL_HEADER, FAIL_HEADER));
        drop(hbytes);
    }

    #[test]
    fn errors_when_the_reservation_cannot_be_used() {
        let h = host();
        // Reservation smaller than kernel + initrd.
        let initrd = vec![5u8; 30 << 20];
        let mut o = opts();
        o.reservation = PhysRange::new(0x6500_0000, 0x6600_0000);
        let e = plan_staged(&input(&h, Some(&initrd)), &PlanExtras::default(), &o).unwrap_err();
        assert!(matches!(e, Error::ReservationTooSmall { .. }), "{e}");
        // Above 4 GiB.
        o.reservation = PhysRange::new(0x1_0000_0000, 0x1_1000_0000);
        let e = plan_staged(&input(&h, None), &PlanExtras::default(), &o).unwrap_err();
        assert!(e.to_string().contains("below 4 GiB"), "{e}");
        // Not RAM (the PCI hole).
        o.reservation = PhysRange::new(0x8000_0000, 0x9000_0000);
        let e = plan_staged(&input(&h, None), &PlanExtras::default(), &o).unwrap_err();
        assert!(e.to_string().contains("not RAM"), "{e}");
    }

    #[test]
    fn reservation_is_picked_from_status() {
        let mut st = Status::default();
        assert!(matches!(
            pick_reservation(&st),
            Err(Error::NoCrashReservation { .. })
        ));
        st.crash_kernel = vec![
            CrashRange {
                start: 0x1000_0000,
                end: 0x17ff_ffff,
                size: 0x800_0000,
            },
            CrashRange {
                start: 0x6500_0000,
                end: 0x74ff_ffff,
                size: 0x1000_0000,
            },
        ];
        assert_eq!(pick_reservation(&st).unwrap(), RES);
        st.iomem_addresses_hidden = true;
        assert!(pick_reservation(&st)
            .unwrap_err()
            .to_string()
            .contains("root"));
    }

    #[test]
    fn kcore_headers_yield_only_ram_mappings() {
        let mut head = vec![0u8; 64 + 3 * 56];
        head[..4].copy_from_slice(b"\x7fELF");
        head[4] = 2;
        head[5] = 1;
        head[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        head[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        head[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        let ph = |head: &mut Vec<u8>, i: usize, kind: u32, off: u64, paddr: u64, size: u64| {
            let o = 64 + i * 56;
            head[o..o + 4].copy_from_slice(&kind.to_le_bytes());
            head[o + 8..o + 16].copy_from_slice(&off.to_le_bytes());
            head[o + 24..o + 32].copy_from_slice(&paddr.to_le_bytes());
            head[o + 40..o + 48].copy_from_slice(&size.to_le_bytes());
        };
        ph(&mut head, 0, 4, 0x1000, 0, 0x100); // PT_NOTE
        ph(&mut head, 1, 1, 0x2000, u64::MAX, 0x1000); // vmalloc: not RAM
        ph(&mut head, 2, 1, 0x7f00_0000_0000, 0x10_0000, 0x7fee_0000); // RAM
        assert_eq!(
            parse_kcore_loads(&head).unwrap(),
            vec![KcoreLoad {
                paddr: 0x10_0000,
                size: 0x7fee_0000,
                offset: 0x7f00_0000_0000
            }]
        );
        assert!(parse_kcore_loads(&head[..100]).is_err());
        assert!(parse_kcore_loads(
            b"not an elf at all, not at all, no no no no no no no no no no no no"
        )
        .is_err());
    }

    #[test]
    fn state_round_trips_and_stale_records_are_ignored() {
        let h = host();
        let p = plan_staged(&input(&h, None), &PlanExtras::default(), &opts()).unwrap();
        let root = tempfile::tempdir().unwrap();
        let id_path = root.path().join("proc/sys/kernel/random/boot_id");
        fs::create_dir_all(id_path.parent().unwrap()).unwrap();
        fs::write(&id_path, "aaaa\n").unwrap();
        let st = StagedState::new(
            &p,
            Path::new("/boot/vmlinuz"),
            None,
            "x",
            boot_id(root.path()),
        );
        write_state(root.path(), &st).unwrap();
        let back = read_state(root.path()).unwrap();
        assert_eq!(back.as_ref(), Some(&st));
        assert_eq!(back.unwrap().header(), Some(p.header));
        use std::os::unix::fs::PermissionsExt;
        let mode = |rel: &str| {
            fs::metadata(root.path().join(rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(STATE_FILE), 0o600);
        assert_eq!(mode("run/fastkexec"), 0o700);
        // Next boot: the record is stale, so nothing is staged now.
        fs::write(&id_path, "bbbb\n").unwrap();
        assert_eq!(read_state(root.path()).unwrap(), None);
        remove_state(root.path()).unwrap();
        assert_eq!(read_state(root.path()).unwrap(), None);
        // Garbage is an error, not "nothing staged".
        fs::write(root.path().join(STATE_FILE), "{").unwrap();
        let e = read_state(root.path()).unwrap_err().to_string();
        assert!(e.contains("not a staged-mode record"), "{e}");
    }

    /// Writes the record `load` leaves for a planned staged image of the test host.
    fn write_planned_record(root: &Path) {
        let h = host();
        let p = plan_staged(&input(&h, None), &PlanExtras::default(), &opts()).unwrap();
        write_state(root, &StagedState::new(&p, Path::new("k"), None, "", None)).unwrap();
    }

    #[test]
    fn pre_exec_check_without_a_record_is_a_plain_exec_and_unloaded_crash_refuses() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            check_before_exec(root.path(), Depth::Complete).unwrap(),
            PreExec::NotStaged
        );
        write_planned_record(root.path());
        // No kcore in this tree: unverified (the trampoline still checks).
        assert!(matches!(
            check_before_exec(root.path(), Depth::Complete).unwrap(),
            PreExec::Unverified { .. }
        ));
        // The crash image was unloaded behind our back.
        let f = root.path().join("sys/kernel/kexec_crash_loaded");
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, "0\n").unwrap();
        let e = check_before_exec(root.path(), Depth::Complete).unwrap_err();
        assert!(matches!(e, Error::StagedReplaced { .. }), "{e}");
        assert!(e.to_string().contains("exec refused"), "{e}");
    }

    /// Issue 13, defect 11: a loader that writes a few pages of the staged kernel without
    /// touching the header or the sampled words passes the trampoline's (and the old `exec`'s)
    /// sampled check; `exec`'s complete check reads every byte back and catches it.
    #[test]
    fn exec_check_is_complete_where_the_trampoline_samples() {
        let h = host();
        let initrd = vec![5u8; 1 << 20];
        let p = plan_staged(&input(&h, Some(&initrd)), &PlanExtras::default(), &opts()).unwrap();
        let st = StagedState::new(&p, Path::new("k"), None, "", None);
        assert_eq!(st.segments.len(), p.crash.segments.len());
        let mut mem = Mem::of(&p.crash.segments);
        let total: u64 = st.segments.iter().map(|s| s.len).sum();
        assert_eq!(check_segments(&st.segments, &mut mem).unwrap(), Ok(total));
        // The streamed sum is the purgatory's.
        for (seg, sum) in p.crash.segments.iter().zip(&st.segments) {
            let mut padded = seg.data.clone();
            padded.resize(sum.len as usize, 0);
            assert_eq!(purgatory::checksum(&padded), sum.sum);
        }
        // A page of the kernel, rewritten everywhere but at its block's sampled word.
        let hdr = StagedHeader::decode(
            &p.crash
                .read_phys(p.header.addr, p.header.len as usize)
                .unwrap(),
        )
        .unwrap();
        let r = &hdr.sampled[0];
        let (sample_off, _) = r.samples[0];
        for at in (0..PAGE).step_by(8).filter(|&o| o != sample_off) {
            mem.poke(r.addr + at, 0xcc);
        }
        assert_eq!(
            check_staged(&p.header, &mut mem, 1).unwrap(),
            0,
            "the sampled check cannot see it"
        );
        let found = check_segments(&st.segments, &mut mem).unwrap();
        assert!(
            found.as_ref().is_err_and(|m| m.contains("differs")),
            "{found:?}"
        );
        // One byte in the zero fill past a segment's data counts too.
        let mut mem = Mem::of(&p.crash.segments);
        let seg = p
            .crash
            .segments
            .iter()
            .find(|s| s.memsz > s.data.len() as u64 + 8)
            .expect("a segment with zero fill");
        mem.poke(seg.mem + seg.memsz - 1, 1);
        assert!(check_segments(&st.segments, &mut mem).unwrap().is_err());
    }

    /// Issue 13, defect 5 (c): a record that cannot be read, or of another version, is not
    /// "nothing staged": `exec` (and `load`, `unload`) stop and name the file.
    #[test]
    fn an_unreadable_or_other_version_record_is_an_error_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join(STATE_FILE);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let h = host();
        let p = plan_staged(&input(&h, None), &PlanExtras::default(), &opts()).unwrap();
        let good =
            serde_json::to_value(StagedState::new(&p, Path::new("k"), None, "", None)).unwrap();
        let mut newer = good.clone();
        newer["version"] = serde_json::json!(STATE_VERSION + 1);
        let mut wrong_type = good.clone();
        wrong_type["header_addr"] = serde_json::json!("high");
        for (what, bytes) in [
            ("garbage", b"{".to_vec()),
            ("empty", Vec::new()),
            ("newer", serde_json::to_vec(&newer).unwrap()),
            ("wrong type", serde_json::to_vec(&wrong_type).unwrap()),
        ] {
            fs::write(&path, &bytes).unwrap();
            let e = check_before_exec(root.path(), Depth::Complete)
                .map(|found| format!("{found:?}"))
                .expect_err(what)
                .to_string();
            assert!(e.contains(&path.display().to_string()), "{what}: {e}");
            assert!(e.contains("fastkexec unload"), "{what}: {e}");
            assert_eq!(fs::read(&path).unwrap(), bytes, "{what}: left as it was");
        }
        // Unreadable (a directory in its place).
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        let e = check_before_exec(root.path(), Depth::Complete)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    /// Issue 13, defect 5 (a): a load of another mode over a staged load unloads the staged
    /// crash image it displaced (when still ours) and removes the record, and says so; a
    /// crash kernel of someone else's is left alone.
    #[test]
    fn a_load_of_another_mode_clears_the_staged_load_it_displaced() {
        let (unload, msg) =
            displaced_decision(Some(true), Ok(PreExec::Intact { bytes: 0, ms: 0.1 })).unwrap();
        assert!(unload);
        assert!(msg.contains("unloaded it and removed its record"), "{msg}");
        assert!(msg.contains("free for kdump"), "{msg}");
        let (unload, msg) = displaced_decision(
            Some(true),
            Err(Error::StagedReplaced {
                reservation: "r".into(),
                problem: "nonce differs".into(),
            }),
        )
        .unwrap();
        assert!(!unload, "someone else's crash kernel stays");
        assert!(msg.contains("someone else's"), "{msg}");
        let (unload, _) = displaced_decision(Some(false), Ok(PreExec::NotStaged)).unwrap();
        assert!(!unload, "nothing loaded: nothing to unload");
        // On a machine: a record and a crash image that can be checked (no kcore here:
        // unverified, i.e. unloaded as ours). The unload itself needs kexec; the record goes.
        let root = tempfile::tempdir().unwrap();
        write_planned_record(root.path());
        let f = root.path().join("sys/kernel/kexec_crash_loaded");
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, "0\n").unwrap();
        let msg = reconcile_after_load(root.path(), &Status::default())
            .unwrap()
            .unwrap();
        assert!(msg.contains("earlier staged load is over"), "{msg}");
        assert_eq!(read_state(root.path()).unwrap(), None);
        assert!(!root.path().join(STATE_FILE).exists());
    }

    /// `unload` after the staged crash image was unloaded elsewhere (`kexec -p -u`, a kdump
    /// service stopping) says so, instead of claiming another kernel is loaded.
    #[test]
    fn unload_tells_a_vanished_crash_image_from_a_replaced_one() {
        let replaced = |problem: &str| {
            Err(Error::StagedReplaced {
                reservation: "0x10000000-0x1fffffff".into(),
                problem: problem.into(),
            })
        };
        let (unload, msg) = unload_decision(
            Some(false),
            replaced("no crash image is loaded any more (it was unloaded since)"),
        )
        .unwrap();
        assert!(!unload);
        assert!(msg.contains("no crash kernel is loaded any more"), "{msg}");
        assert!(msg.contains("stale") && msg.contains("cleared"), "{msg}");
        assert!(!msg.contains("not the one fastkexec staged"), "{msg}");

        let (unload, msg) =
            unload_decision(Some(true), replaced("the staged header checksum differs")).unwrap();
        assert!(!unload);
        assert!(msg.contains("not the one fastkexec staged"), "{msg}");
        assert!(msg.contains("left it loaded"), "{msg}");
        assert!(msg.contains("checksum differs"), "{msg}");

        let (unload, msg) =
            unload_decision(Some(true), Ok(PreExec::Intact { bytes: 3, ms: 1.0 })).unwrap();
        assert!(unload, "{msg}");
        assert!(msg.contains("also unloaded"), "{msg}");
        // A failure to read the state is passed on, not turned into a message.
        let err = unload_decision(
            Some(true),
            Err(Error::Plan {
                problem: "x".into(),
            }),
        );
        assert!(err.is_err());
    }
}
