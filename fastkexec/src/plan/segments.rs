//! The plan for an uncompressed (vmlinux) `kexec_load`: which bytes go to
//! which physical pages, and where the CPU starts. Pure logic — nothing here
//! touches the running kernel; `hostinfo` gathered the facts beforehand and
//! the syscall layer hands the result to `kexec_load`.
//!
//! Placement rules:
//! - the kernel's PT_LOADs go to `p_paddr + phys_delta` (bss included in
//!   their memory size); that whole span is the kernel's footprint, which
//!   nothing else may overlap;
//! - the initrd goes as high in RAM as the header allows: anywhere when the
//!   kernel takes ext_ramdisk_* (XLF_CAN_BE_LOADED_ABOVE_4G), else below
//!   `initrd_addr_max`;
//! - boot_params, command line, EFI memory map and setup_data nodes (one
//!   "boot block" segment) and the purgatory go top-down below 4 GiB;
//! - nothing we place goes below 1 MiB (the next kernel reserves and reuses
//!   that area for its real-mode trampoline);
//! - every segment is page aligned, inside e820 RAM, and clear of each other
//!   and of `reserved` (e.g. the tracer's pages).

use std::fmt;
use std::path::Path;

use bytes::Bytes;

use crate::blobs::purgatory::{self, Purgatory, VerifyEntry};
use crate::error::{Error, Result};
use crate::host::e820::{self, HoleRequest, PhysRange};
use crate::host::hostinfo::HostBootInfo;
use crate::image::bzimage::SetupHeader;
use crate::image::{vmlinux, Loadable};
use crate::plan::bootparams::{
    self, EfiHandoff, SetupData, ZeroPageInput, E820_MAX_ZERO_PAGE, SETUP_DATA_HEADER_SIZE,
};

use crate::kexec::validate::check_list;
use crate::kexec::SegmentSpec;
pub use crate::kexec::{KEXEC_SEGMENT_MAX, PAGE_SIZE};
use crate::plan::page_up;
/// Lowest address for anything we place ourselves.
pub const MIN_PLACEMENT: u64 = 1 << 20;
/// `__startup_64` only accepts a physical shift that keeps 2 MiB pages intact.
pub const PHYS_DELTA_ALIGN: i64 = 2 << 20;
const FOUR_GIB: u64 = 1 << 32;

/// One `struct kexec_segment`: `data` is copied to physical `mem`; the rest
/// of `memsz` is zero-filled by the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// A view of the kernel image's or initrd's bytes where it can be (no copy), else bytes
    /// built for this segment.
    pub data: Bytes,
    /// Page aligned.
    pub mem: u64,
    /// Page aligned, `>= data.len()`.
    pub memsz: u64,
    /// For humans: what this segment holds.
    pub what: String,
}

impl Segment {
    /// What `kexec_load` is given for it.
    pub fn spec(&self) -> SegmentSpec<'_> {
        SegmentSpec {
            data: &self.data,
            mem: self.mem,
            memsz: self.memsz,
        }
    }

    pub fn range(&self) -> PhysRange {
        PhysRange::from_len(self.mem, self.memsz)
    }
}

/// One node of the setup_data chain as planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupDataSummary {
    pub addr: u64,
    pub kind: u32,
    pub len: u32,
}

/// What went into boot_params, for `--dry-run` and for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootParamsSummary {
    pub boot_params_addr: u64,
    pub cmdline_addr: u64,
    pub cmdline_limit: u32,
    /// Setup header taken from a bzImage (else synthesised).
    pub header_from_bzimage: bool,
    pub protocol_version: u16,
    pub e820_entries: usize,
    pub e820_in_zero_page: usize,
    pub e820_ext_entries: usize,
    pub acpi_rsdp: Option<u64>,
    pub efi: EfiHandoff,
    /// Physical address and exact size.
    pub initrd: Option<(u64, u64)>,
    /// ext_ramdisk_image/size carry non-zero high halves.
    pub ext_ramdisk_used: bool,
    /// ext_cmd_line_ptr carries a non-zero high half.
    pub ext_cmdline_used: bool,
    pub setup_data: Vec<SetupDataSummary>,
    /// Where our chain continues (an already-placed chain), 0 if it ends.
    pub setup_data_tail: u64,
    pub rng_seed: bool,
    /// The vmlinux entry point after `phys_delta`.
    pub kernel_entry: u64,
    pub kernel_footprint: PhysRange,
    pub phys_delta: i64,
    pub purgatory_addr: u64,
    /// The purgatory's own TSC record (lost once the next kernel reuses that
    /// memory; see `tsc_out`).
    pub tsc_record_addr: u64,
    /// Where the purgatory copies its TSC record, 0 = nowhere.
    pub tsc_out: u64,
    pub verified_segments: usize,
}

/// Everything `kexec_load` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub segments: Vec<Segment>,
    /// Where the CPU starts: the purgatory.
    pub entry: u64,
    pub cmdline: String,
    pub summary: BootParamsSummary,
}

impl Plan {
    /// The bytes at physical `[addr, addr + len)` after the kernel has copied
    /// the segments (zero fill included), if one segment covers them.
    pub fn read_phys(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let want = PhysRange::from_len(addr, len as u64);
        let seg = self
            .segments
            .iter()
            .find(|s| s.range().contains_range(&want))?;
        let off = usize::try_from(addr - seg.mem).ok()?;
        let mut out = vec![0u8; len];
        if let Some(avail) = seg.data.get(off..) {
            let n = avail.len().min(len);
            out[..n].copy_from_slice(&avail[..n]);
        }
        Some(out)
    }
}

/// Inputs of [`plan_uncompressed`].
#[derive(Clone, Debug)]
pub struct UncompressedInput<'a> {
    /// The vmlinux: its bytes and ELF, parsed once by whoever made it.
    pub kernel: &'a Loadable,
    /// The matching bzImage's setup header, if there is one.
    pub setup_header: Option<&'a SetupHeader>,
    pub initrd: Option<(&'a Path, &'a Bytes)>,
    pub cmdline: &'a str,
    pub host: &'a HostBootInfo,
    /// Physical ranges `[start, end)` that no segment may overlap (the
    /// tracer's pages, a crash kernel that must survive, ...).
    pub reserved: Vec<PhysRange>,
    /// Have the purgatory checksum every segment before jumping.
    pub verify: bool,
    /// Shift of every PT_LOAD and the entry point; a multiple of 2 MiB.
    pub phys_delta: i64,
}

impl UncompressedInput<'_> {
    /// The reserved ranges that can collide with anything (empty ones cannot).
    pub fn reserved_ranges(&self) -> Vec<PhysRange> {
        self.reserved
            .iter()
            .copied()
            .filter(|r| !r.is_empty())
            .collect()
    }
}

/// Additions a caller can chain into boot_params beyond the basics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanExtras {
    /// Nodes to place (after ours) in the boot block.
    pub setup_data: Vec<SetupData>,
    /// Physical address of an already-placed setup_data chain (e.g. the
    /// tracer's pages) to link after the last node; 0 = none. Its first node
    /// must lie inside `reserved`.
    pub setup_data_tail: u64,
    /// Physical address where the purgatory copies its 32-byte TSC record
    /// right before jumping; 0 = none. Must lie inside `reserved`.
    pub tsc_out: u64,
}

/// Plans an uncompressed load with nothing extra chained in.
pub fn plan_uncompressed(input: &UncompressedInput) -> Result<Plan> {
    plan_uncompressed_with(input, &PlanExtras::default())
}

/// Plans an uncompressed load.
pub fn plan_uncompressed_with(input: &UncompressedInput, extras: &PlanExtras) -> Result<Plan> {
    plan_impl(input, extras, None)
}

/// Plans an uncompressed load whose every segment lies inside `within` (the
/// crashkernel reservation, for staged mode). The kernel's footprint after
/// `phys_delta` must already fall inside it; everything else is placed
/// top-down inside it (still at or above 1 MiB and below 4 GiB where the
/// unconstrained plan demands that).
pub fn plan_uncompressed_within(
    input: &UncompressedInput,
    extras: &PlanExtras,
    within: PhysRange,
) -> Result<Plan> {
    plan_impl(input, extras, Some(within))
}

fn plan_impl(
    input: &UncompressedInput,
    extras: &PlanExtras,
    within: Option<PhysRange>,
) -> Result<Plan> {
    let host = input.host;
    let vm = &input.kernel.elf;
    if input.phys_delta % PHYS_DELTA_ALIGN != 0 {
        return Err(Error::Plan {
            problem: format!(
                "physical shift {:#x} is not a multiple of 2 MiB; the kernel's __startup_64 would hang",
                input.phys_delta
            ),
        });
    }
    let shift = |addr: u64| -> Result<u64> {
        addr.checked_add_signed(input.phys_delta)
            .ok_or_else(|| Error::Plan {
                problem: format!(
                    "address {addr:#x} shifted by {:#x} leaves the physical address space",
                    input.phys_delta
                ),
            })
    };

    let reserved = input.reserved_ranges();

    // --- kernel ---
    let mut segments = kernel_segments(&input.kernel.path, &input.kernel.bytes, vm, &shift)?;
    let footprint = PhysRange::new(
        segments.iter().map(|s| s.mem).min().unwrap_or(0),
        segments.iter().map(|s| s.range().end).max().unwrap_or(0),
    );
    for s in &segments {
        if !e820::is_ram(&host.memmap, &s.range()) {
            return Err(Error::KernelNotInRam {
                path: input.kernel.path.clone(),
                range: s.range().to_string(),
                what: s.what.clone(),
            });
        }
    }
    if let Some(w) = within.filter(|w| !w.contains_range(&footprint)) {
        return Err(Error::Plan {
            problem: format!(
                "the kernel's footprint {footprint} ({}) after the physical shift {:#x} is not inside {w}",
                human(footprint.len()),
                input.phys_delta
            ),
        });
    }
    let entry = shift(vm.entry)?;

    // --- command line ---
    let caps = bootparams::header_caps(input.setup_header);
    check_cmdline(input.cmdline, &caps)?;

    let mut used: Vec<PhysRange> = vec![footprint];
    used.extend(reserved.iter().copied());
    for (addr, len, what) in [
        (
            extras.tsc_out,
            purgatory::TSC_RECORD_SIZE,
            "the TSC record target (tsc_out)",
        ),
        (
            extras.setup_data_tail,
            SETUP_DATA_HEADER_SIZE,
            "the appended setup_data chain",
        ),
    ] {
        if addr == 0 {
            continue;
        }
        let need = PhysRange::from_len(addr, len as u64);
        if addr % 8 != 0 || !reserved.iter().any(|r| r.contains_range(&need)) {
            return Err(Error::Plan {
                problem: format!(
                    "{what} at {addr:#x} must be 8-byte aligned and inside a reserved range, or a segment could be copied over it"
                ),
            });
        }
    }

    // --- initrd ---
    let mut initrd_place = None;
    if let Some((path, bytes)) = input.initrd {
        if bytes.is_empty() {
            return Err(Error::InitrdDoesNotFit {
                path: path.to_path_buf(),
                size: 0,
                limit: "an initrd must not be empty; leave --initrd out instead".into(),
            });
        }
        let size = bytes.len() as u64;
        let memsz = page_up(size)?;
        let (max_end, limit) = if caps.above_4g {
            (
                u64::MAX,
                "anywhere in RAM (the kernel takes ext_ramdisk_image)".to_string(),
            )
        } else {
            let max = (u64::from(caps.initrd_addr_max) + 1).min(FOUR_GIB);
            (
                max,
                format!(
                    "below initrd_addr_max {:#x} from the setup header",
                    caps.initrd_addr_max
                ),
            )
        };
        let free = free_for_placement(host, &used, within);
        let at = e820::find_hole(
            &free,
            &HoleRequest {
                size: memsz,
                align: PAGE_SIZE,
                min: MIN_PLACEMENT,
                max_end,
                top_down: true,
            },
        )
        .ok_or_else(|| Error::InitrdDoesNotFit {
            path: path.to_path_buf(),
            size,
            limit: format!(
                "{limit}, outside the kernel's {footprint} and reserved ranges; largest free RAM range is {}",
                largest(&free)
            ),
        })?;
        used.push(PhysRange::from_len(at, memsz));
        segments.push(Segment {
            data: Bytes::clone(bytes),
            mem: at,
            memsz,
            what: format!("initrd {}", path.display()),
        });
        initrd_place = Some((at, size));
    }

    // --- boot block and purgatory ---
    let path = boot_path(
        &BootPathInput {
            host,
            e820: &host.memmap,
            setup_header: input.setup_header,
            cmdline: input.cmdline,
            initrd: initrd_place,
            entry,
            extras,
            within,
            verify: input.verify.then_some(segments.as_slice()),
        },
        &mut used,
    )?;
    let purg_base = path.purgatory.mem;
    let BootPath {
        block,
        purgatory: purg_segment,
        boot_params_addr,
        cmdline_addr,
        setup_data,
        efi: efi_state,
        verified,
    } = path;
    segments.push(block);
    segments.push(purg_segment);

    validate(&segments, &host.memmap, &reserved)?;

    let summary = BootParamsSummary {
        boot_params_addr,
        cmdline_addr,
        cmdline_limit: caps.cmdline_size,
        header_from_bzimage: caps.from_bzimage,
        protocol_version: input.setup_header.map_or(caps.version, |h| h.version),
        e820_entries: host.memmap.len(),
        e820_in_zero_page: host.memmap.len().min(E820_MAX_ZERO_PAGE),
        e820_ext_entries: host.memmap.len().saturating_sub(E820_MAX_ZERO_PAGE),
        acpi_rsdp: host.acpi_rsdp,
        efi: efi_state,
        initrd: initrd_place,
        ext_ramdisk_used: initrd_place.is_some_and(|(a, s)| a >> 32 != 0 || s >> 32 != 0),
        ext_cmdline_used: cmdline_addr >> 32 != 0,
        setup_data,
        setup_data_tail: extras.setup_data_tail,
        rng_seed: host.rng_seed.is_some(),
        kernel_entry: entry,
        kernel_footprint: footprint,
        phys_delta: input.phys_delta,
        purgatory_addr: purg_base,
        tsc_record_addr: purg_base + purgatory::OFF_TSC_RECORD as u64,
        tsc_out: extras.tsc_out,
        verified_segments: verified,
    };
    Ok(Plan {
        segments,
        entry: purg_base,
        cmdline: input.cmdline.to_string(),
        summary,
    })
}

/// The kernel's PT_LOADs as page-aligned segments. PT_LOADs whose pages
/// overlap (a segment ending mid-page and the next one starting in that
/// page) become one segment, since the kernel refuses overlapping segments.
/// A PT_LOAD that starts on a page and shares it with no other is a view of
/// `bytes` (no copy; its bss is `memsz` beyond the data, zeroed by the kernel);
/// only merged or unaligned ones are assembled in a new buffer.
fn kernel_segments(
    path: &Path,
    bytes: &Bytes,
    vm: &vmlinux::Vmlinux,
    shift: &dyn Fn(u64) -> Result<u64>,
) -> Result<Vec<Segment>> {
    struct Piece<'b> {
        index: usize,
        paddr: u64,
        vaddr: u64,
        file: &'b [u8],
        memsz: u64,
    }
    let mut pieces = Vec::new();
    for (index, s) in vm.segments.iter().enumerate() {
        if s.memsz == 0 {
            continue;
        }
        let file = usize::try_from(s.file_offset)
            .ok()
            .zip(usize::try_from(s.filesz).ok())
            .and_then(|(o, n)| bytes.get(o..o.checked_add(n)?))
            .ok_or_else(|| Error::BadVmlinux {
                path: path.to_path_buf(),
                problem: format!("PT_LOAD #{index} file bytes lie outside the file"),
            })?;
        pieces.push(Piece {
            index,
            paddr: shift(s.paddr)?,
            vaddr: s.vaddr,
            file,
            memsz: s.memsz,
        });
    }
    pieces.sort_by_key(|p| p.paddr);

    let mut groups: Vec<Vec<Piece>> = Vec::new();
    for p in pieces {
        let page_start = e820::align_down(p.paddr, PAGE_SIZE);
        match groups.last_mut() {
            Some(g)
                if g.iter()
                    .map(|q| q.paddr.saturating_add(q.memsz))
                    .max()
                    .is_some_and(|end| end > page_start) =>
            {
                g.push(p)
            }
            _ => groups.push(vec![p]),
        }
    }

    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let mem = e820::align_down(g[0].paddr, PAGE_SIZE);
        let mut end = 0u64;
        let mut data_end = 0u64;
        for (i, p) in g.iter().enumerate() {
            let p_end = p.paddr.checked_add(p.memsz).ok_or_else(|| Error::Plan {
                problem: format!("PT_LOAD #{} ends past the top of memory", p.index),
            })?;
            if let Some(prev) = i.checked_sub(1).map(|j| &g[j]) {
                if prev.paddr.saturating_add(prev.memsz) > p.paddr {
                    return Err(Error::SegmentOverlap {
                        first: format!("kernel PT_LOAD #{}", prev.index),
                        second: format!("kernel PT_LOAD #{}", p.index),
                    });
                }
            }
            end = end.max(p_end);
            data_end = data_end.max(p.paddr + p.file.len() as u64);
        }
        let len = usize::try_from(data_end - mem).map_err(|_| Error::Plan {
            problem: "kernel segment larger than the address space".into(),
        })?;
        let data = match g.as_slice() {
            [only] if only.paddr == mem => bytes.slice_ref(only.file),
            _ => {
                let mut data = vec![0u8; len];
                for p in &g {
                    let o = (p.paddr - mem) as usize;
                    data[o..o + p.file.len()].copy_from_slice(p.file);
                }
                Bytes::from(data)
            }
        };
        let names: Vec<String> = g.iter().map(|p| format!("#{}", p.index)).collect();
        out.push(Segment {
            data,
            mem,
            memsz: page_up(end)? - mem,
            what: format!(
                "kernel PT_LOAD {} (vaddr {:#x})",
                names.join("+"),
                g[0].vaddr
            ),
        });
    }
    Ok(out)
}

/// Free RAM for what we place ourselves: RAM in the firmware map (what the
/// next kernel will be told) that the running kernel also still counts as
/// RAM, minus `used`, and only inside `within` when given.
fn free_for_placement(
    host: &HostBootInfo,
    used: &[PhysRange],
    within: Option<PhysRange>,
) -> Vec<PhysRange> {
    let free = e820::free_ranges(&host.memmap, used);
    let free = match &host.iomem_ram {
        Some(ram) => e820::intersect(&free, ram),
        None => free,
    };
    match within {
        Some(w) => e820::intersect(&free, &[w]),
        None => free,
    }
}

/// Top-down below 4 GiB, at or above 1 MiB (and inside `within`).
fn place_low(
    host: &HostBootInfo,
    used: &[PhysRange],
    size: u64,
    what: &str,
    within: Option<PhysRange>,
) -> Result<u64> {
    let free = free_for_placement(host, used, within);
    e820::find_hole(
        &free,
        &HoleRequest {
            size,
            align: PAGE_SIZE,
            min: MIN_PLACEMENT,
            max_end: FOUR_GIB,
            top_down: true,
        },
    )
    .ok_or_else(|| Error::NoRamHole {
        what: what.to_string(),
        size,
        limit: format!(
            "free RAM between 1 MiB and 4 GiB{}; largest free RAM range is {}",
            within.map_or_else(String::new, |w| format!(" inside {w}")),
            largest(&free)
        ),
    })
}

/// The command line must be NUL-free and within the header's limit.
fn check_cmdline(cmdline: &str, caps: &bootparams::HeaderCaps) -> Result<()> {
    if cmdline.as_bytes().contains(&0) {
        return Err(Error::Plan {
            problem: "the kernel command line contains a NUL byte, which would end it early".into(),
        });
    }
    if cmdline.len() > caps.cmdline_size as usize {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max: caps.cmdline_size as usize,
            limit_from: if caps.from_bzimage {
                "the bzImage setup header's cmdline_size (0x238)".into()
            } else {
                "the x86 COMMAND_LINE_SIZE (2048 incl. NUL) assumed for a vmlinux without a bzImage header"
                    .into()
            },
        });
    }
    Ok(())
}

fn largest(free: &[PhysRange]) -> String {
    free.iter()
        .max_by_key(|r| r.len())
        .map_or("none".to_string(), |r| format!("{r} ({})", human(r.len())))
}

/// The kernel's rules for the list ([`crate::kexec::validate::check_list`], the one place they
/// live) plus ours: no empty segment, every segment inside RAM and clear of the reserved
/// ranges.
pub fn validate(
    segments: &[Segment],
    map: &[e820::E820Entry],
    reserved: &[PhysRange],
) -> Result<()> {
    let specs: Vec<SegmentSpec<'_>> = segments.iter().map(Segment::spec).collect();
    check_list(&specs, &|i| {
        format!(
            "{} at {:#x}+{:#x}",
            segments[i].what, segments[i].mem, segments[i].memsz
        )
    })?;
    for s in segments {
        if s.memsz == 0 {
            return Err(Error::Plan {
                problem: format!("{} at {:#x} is empty", s.what, s.mem),
            });
        }
        if !e820::is_ram(map, &s.range()) {
            return Err(Error::Plan {
                problem: format!("{} at {} is not entirely RAM", s.what, s.range()),
            });
        }
        if let Some(r) = reserved.iter().find(|r| r.overlaps(&s.range())) {
            return Err(Error::SegmentOverlap {
                first: format!("{} {}", s.what, s.range()),
                second: format!("reserved range {r}"),
            });
        }
    }
    Ok(())
}

mod boot_path;
#[cfg(test)]
pub(crate) mod fixtures;
mod show;

use show::human;

pub use boot_path::{add_boot_path, spoil_first_verify_sum, ExtraBootPath};
use boot_path::{boot_path, BootPath, BootPathInput};

#[cfg(test)]
mod tests;
