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
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::blobs::purgatory::{self, VerifyEntry};
use crate::blobs::trampoline::{self as tramp, Trampoline};
use crate::error::{Error, Result};

use crate::host::e820::{self, E820Entry, E820Type, HoleRequest, PhysRange};
use crate::host::hostinfo::HostBootInfo;
use crate::host::staged_record;
pub use crate::host::staged_record::{
    boot_id, read_state, remove_state, write_state, HeaderRef, SegmentSum, StagedState, STATE_FILE,
    STATE_FIX, STATE_VERSION,
};
use crate::host::status::{self, largest_reservation, Status};
use crate::kexec::PAGE_SIZE as PAGE;
use crate::kexec::{self, Call, SegmentSpec};
use crate::plan::page_up;
use crate::plan::segments::{self, ExtraBootPath, Plan, PlanExtras, Segment, UncompressedInput};

mod header;
mod kcore;
mod ops;

pub use crate::blobs::checksum::Checksum;
pub use header::*;
pub use kcore::*;
pub use ops::*;

/// Added to the panic path's command line so its user space can tell it came
/// up through the panic path (a dotted name, which the kernel ignores).
pub const PANIC_MARKER: &str = "fastkexec.staged=panic";
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
    let mut kept: Vec<&str> = crate::plan::cmdline::split_params(cmdline)
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
    segments.iter().map(Segment::spec).collect()
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
    let vm = &input.kernel.elf;
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
        data: bytes.into(),
        mem: header_addr,
        memsz: header_memsz,
        what: "staged header (nonce, checks)".into(),
    });
    let reserved = input.reserved_ranges();
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
    t.set(tramp::TARGET, crash.entry);
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
        t.set(tramp::TSC_OUT, opts.trampoline_tsc_out);
    }
    let t_bytes = t.into_bytes();
    let t_memsz = page_up(t_bytes.len() as u64)?;
    let t_addr = place_outside(host, res, &reserved, t_memsz)?;
    let trampoline = Segment {
        data: t_bytes.into(),
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

/// One staged segment's complete checksum: [`purgatory::checksum`] over its whole
/// destination, the zero fill included.
fn segment_sum(s: &Segment) -> SegmentSum {
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

/// The record of a staged load of `plan`.
pub fn record(
    plan: &StagedPlan,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    boot_id: Option<String>,
) -> StagedState {
    StagedState {
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
        nonce: staged_record::hex(&plan.header.nonce),
        sampled_blocks: plan.sampled_blocks,
        segments: plan.crash.segments.iter().map(segment_sum).collect(),
    }
}

/// A fresh random nonce (getrandom(2)).
pub fn new_nonce() -> Result<[u8; 16]> {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n).map_err(|e| Error::Plan {
        problem: format!("getrandom failed ({e}); no nonce for the staged image"),
    })?;
    Ok(n)
}

#[cfg(test)]
mod tests;
