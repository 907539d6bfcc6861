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

use crate::blobs::purgatory::{self, Purgatory, VerifyEntry};
use crate::error::{Error, Result};
use crate::host::e820::{self, HoleRequest, PhysRange};
use crate::host::hostinfo::HostBootInfo;
use crate::image::bzimage::SetupHeader;
use crate::image::vmlinux;
use crate::plan::bootparams::{
    self, EfiHandoff, SetupData, ZeroPageInput, E820_MAX_ZERO_PAGE, SETUP_DATA_HEADER_SIZE,
};

pub const PAGE_SIZE: u64 = 4096;
/// The kernel's limit on segments per `kexec_load`.
pub const KEXEC_SEGMENT_MAX: usize = 16;
/// Lowest address for anything we place ourselves.
pub const MIN_PLACEMENT: u64 = 1 << 20;
/// `__startup_64` only accepts a physical shift that keeps 2 MiB pages intact.
pub const PHYS_DELTA_ALIGN: i64 = 2 << 20;
const FOUR_GIB: u64 = 1 << 32;

/// One `struct kexec_segment`: `data` is copied to physical `mem`; the rest
/// of `memsz` is zero-filled by the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub data: Vec<u8>,
    /// Page aligned.
    pub mem: u64,
    /// Page aligned, `>= data.len()`.
    pub memsz: u64,
    /// For humans: what this segment holds.
    pub what: String,
}

impl Segment {
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
    pub vmlinux_path: &'a Path,
    pub vmlinux: &'a [u8],
    /// The matching bzImage's setup header, if there is one.
    pub setup_header: Option<&'a SetupHeader>,
    pub initrd: Option<(&'a Path, &'a [u8])>,
    pub cmdline: &'a str,
    pub host: &'a HostBootInfo,
    /// Physical ranges as `(start, size)` that no segment may overlap (the
    /// tracer's pages, a crash kernel that must survive, ...).
    pub reserved: Vec<(u64, u64)>,
    /// Have the purgatory checksum every segment before jumping.
    pub verify: bool,
    /// Shift of every PT_LOAD and the entry point; a multiple of 2 MiB.
    pub phys_delta: i64,
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
    let vm = vmlinux::parse_vmlinux(input.vmlinux_path, input.vmlinux)?;
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

    let reserved: Vec<PhysRange> = input
        .reserved
        .iter()
        .map(|&(start, size)| PhysRange::from_len(start, size))
        .filter(|r| !r.is_empty())
        .collect();

    // --- kernel ---
    let mut segments = kernel_segments(input.vmlinux_path, input.vmlinux, &vm, &shift)?;
    let footprint = PhysRange::new(
        segments.iter().map(|s| s.mem).min().unwrap_or(0),
        segments.iter().map(|s| s.range().end).max().unwrap_or(0),
    );
    for s in &segments {
        if !e820::is_ram(&host.memmap, &s.range()) {
            return Err(Error::KernelNotInRam {
                path: input.vmlinux_path.to_path_buf(),
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
            data: bytes.to_vec(),
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
fn kernel_segments(
    path: &Path,
    bytes: &[u8],
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
        let mut data = vec![0u8; len];
        for p in &g {
            let o = (p.paddr - mem) as usize;
            data[o..o + p.file.len()].copy_from_slice(p.file);
        }
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

/// What one way into the kernel is built from: a boot block (zero page with
/// its e820 map, command line, EFI map, setup_data) and a purgatory that
/// jumps to `entry` with it.
struct BootPathInput<'a> {
    host: &'a HostBootInfo,
    e820: &'a [e820::E820Entry],
    setup_header: Option<&'a SetupHeader>,
    cmdline: &'a str,
    /// Physical address and exact size.
    initrd: Option<(u64, u64)>,
    entry: u64,
    extras: &'a PlanExtras,
    within: Option<PhysRange>,
    /// Segments the purgatory checksums before the jump (the new boot block
    /// is added to them); `None` = no verification.
    verify: Option<&'a [Segment]>,
}

/// The two segments of a boot path and what the summary shows of them.
struct BootPath {
    block: Segment,
    purgatory: Segment,
    boot_params_addr: u64,
    cmdline_addr: u64,
    setup_data: Vec<SetupDataSummary>,
    efi: EfiHandoff,
    verified: usize,
}

/// Places and builds a boot block and its purgatory top-down, clear of
/// `used` (which grows by both).
fn boot_path(b: &BootPathInput, used: &mut Vec<PhysRange>) -> Result<BootPath> {
    let host = b.host;
    let (efi, efi_state) = match bootparams::efi_parts(host) {
        Ok(p) => {
            let state = EfiHandoff::Passed {
                runtime_regions: p.runtime_regions,
            };
            (Some(p), state)
        }
        Err(state) => (None, state),
    };
    let mut nodes: Vec<SetupData> = Vec::new();
    nodes.extend(bootparams::e820_ext_node(b.e820));
    if let Some(p) = &efi {
        nodes.push(p.setup.clone());
    }
    if let Some(seed) = &host.rng_seed {
        nodes.push(bootparams::rng_seed_node(seed));
    }
    nodes.extend(b.extras.setup_data.iter().cloned());
    let layout = bootparams::layout_boot_block(
        b.cmdline.len(),
        efi.as_ref().map_or(0, |p| p.memmap.len()),
        &nodes,
    );
    let boot_base = place_low(
        host,
        used,
        layout.size,
        "boot_params, command line and setup_data",
        b.within,
    )?;
    used.push(PhysRange::from_len(boot_base, layout.size));

    let mut purg = Purgatory::new()?;
    let purg_memsz = page_up(purg.bytes().len() as u64)?;
    let purg_base = place_low(host, used, purg_memsz, "the purgatory", b.within)?;
    used.push(PhysRange::from_len(purg_base, purg_memsz));

    let at = |off: u64| boot_base + off;
    let setup_data_head = match layout.nodes.first() {
        Some(&o) => at(o),
        None => b.extras.setup_data_tail,
    };
    let cmdline_addr = at(layout.cmdline);
    let zero_page = bootparams::build_zero_page(&ZeroPageInput {
        host,
        setup_header: b.setup_header,
        e820: b.e820,
        cmdline_addr,
        initrd: b.initrd,
        setup_data_head,
        efi: efi.as_ref().zip(layout.efi_memmap.map(at)),
    })?;
    let data = bootparams::build_boot_block(
        boot_base,
        &layout,
        &zero_page,
        b.cmdline,
        efi.as_ref().map(|p| p.memmap.as_slice()),
        &nodes,
        b.extras.setup_data_tail,
    )?;
    let block = Segment {
        data,
        mem: boot_base,
        memsz: layout.size,
        what: "boot_params, command line, setup_data".into(),
    };

    let verify: Vec<VerifyEntry> = match b.verify {
        Some(segs) => segs
            .iter()
            .chain(std::iter::once(&block))
            .filter(|s| !s.data.is_empty())
            .map(|s| VerifyEntry::for_data(s.mem, &s.data))
            .collect(),
        None => Vec::new(),
    };
    purg.set_entry(b.entry);
    purg.set_boot_params(at(layout.zero_page));
    purg.set_stack_top(purg_base + purg.stack_end() as u64);
    purg.set_tsc_out(b.extras.tsc_out);
    purg.set_verify(&verify)?;
    let setup_data = layout
        .nodes
        .iter()
        .zip(&nodes)
        .map(|(&o, n)| SetupDataSummary {
            addr: at(o),
            kind: n.kind,
            len: n.data.len() as u32,
        })
        .collect();
    Ok(BootPath {
        block,
        purgatory: Segment {
            data: purg.into_bytes(),
            mem: purg_base,
            memsz: purg_memsz,
            what: "purgatory".into(),
        },
        boot_params_addr: at(layout.zero_page),
        cmdline_addr,
        setup_data,
        efi: efi_state,
        verified: verify.len(),
    })
}

/// Test only (`load --test-wrong-verify-sum`, the lab's `fastkexec-verify-mismatch`): records
/// a wrong checksum for the first segment in the purgatory's verify table, as if that segment
/// had changed after load, so the purgatory must stop with its mismatch message at exec.
/// Rewriting the table is cleaner than corrupting a loaded segment: nothing but the expected
/// sum changes, the segments the kernel copies are exactly the good ones, and no memory is
/// written behind the kernel's back. Returns the segment's address.
pub fn spoil_first_verify_sum(plan: &mut Plan) -> Result<u64> {
    let fail = |problem: &str| Error::Plan {
        problem: problem.into(),
    };
    let seg = plan
        .segments
        .iter_mut()
        .find(|s| s.mem == plan.entry)
        .ok_or_else(|| fail("no purgatory segment at the entry point"))?;
    let mut purg = Purgatory::from_bytes(std::mem::take(&mut seg.data))?;
    let mut entries = purg.verify_entries();
    let first = entries
        .first_mut()
        .ok_or_else(|| fail("the verify table is empty: load with --verify"))?;
    first.sum ^= 0x5a5a;
    let addr = first.addr;
    purg.set_verify(&entries)?;
    seg.data = purg.into_bytes();
    Ok(addr)
}

/// A second way into a planned kernel, as [`add_boot_path`] placed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraBootPath {
    /// Where its purgatory starts: the entry point of this path.
    pub purgatory_addr: u64,
    pub boot_params_addr: u64,
    pub cmdline_addr: u64,
    pub e820_entries: usize,
}

/// Adds a second way into the kernel of `plan` (staged mode's panic path):
/// another boot block with its own e820 map and command line, no tracer chain
/// and no TSC copy, and another purgatory that jumps to the same kernel entry
/// with it. Both are placed clear of every segment of the plan and of
/// `input.reserved`, inside `within` when given. `input` must be the one the
/// plan was made from (its host facts and setup header are reused).
pub fn add_boot_path(
    plan: &mut Plan,
    input: &UncompressedInput,
    e820_map: &[e820::E820Entry],
    cmdline: &str,
    within: Option<PhysRange>,
) -> Result<ExtraBootPath> {
    let caps = bootparams::header_caps(input.setup_header);
    check_cmdline(cmdline, &caps)?;
    let reserved: Vec<PhysRange> = input
        .reserved
        .iter()
        .map(|&(start, size)| PhysRange::from_len(start, size))
        .filter(|r| !r.is_empty())
        .collect();
    let mut used: Vec<PhysRange> = plan.segments.iter().map(Segment::range).collect();
    used.extend(reserved.iter().copied());
    let path = boot_path(
        &BootPathInput {
            host: input.host,
            e820: e820_map,
            setup_header: input.setup_header,
            cmdline,
            initrd: plan.summary.initrd,
            entry: plan.summary.kernel_entry,
            extras: &PlanExtras::default(),
            within,
            verify: None,
        },
        &mut used,
    )?;
    let extra = ExtraBootPath {
        purgatory_addr: path.purgatory.mem,
        boot_params_addr: path.boot_params_addr,
        cmdline_addr: path.cmdline_addr,
        e820_entries: e820_map.len(),
    };
    let before = plan.segments.len();
    plan.segments.push(path.block);
    plan.segments.push(path.purgatory);
    if let Err(e) = validate(&plan.segments, &input.host.memmap, &reserved) {
        plan.segments.truncate(before);
        return Err(e);
    }
    Ok(extra)
}

fn largest(free: &[PhysRange]) -> String {
    free.iter()
        .max_by_key(|r| r.len())
        .map_or("none".to_string(), |r| format!("{r} ({})", human(r.len())))
}

fn page_up(v: u64) -> Result<u64> {
    e820::align_up(v, PAGE_SIZE).ok_or_else(|| Error::Plan {
        problem: format!("size {v:#x} overflows when rounded up to a page"),
    })
}

/// The rules the kernel's `sanity_check_segment_list` applies, plus ours:
/// page alignment, data within memsz, no overlaps, inside RAM, clear of the
/// reserved ranges, at most 16 segments.
pub fn validate(
    segments: &[Segment],
    map: &[e820::E820Entry],
    reserved: &[PhysRange],
) -> Result<()> {
    if segments.len() > KEXEC_SEGMENT_MAX {
        return Err(Error::TooManySegments {
            count: segments.len(),
            max: KEXEC_SEGMENT_MAX,
        });
    }
    for s in segments {
        if s.mem % PAGE_SIZE != 0 || s.memsz % PAGE_SIZE != 0 || s.memsz == 0 {
            return Err(Error::Plan {
                problem: format!(
                    "{} at {:#x} size {:#x} is not page aligned",
                    s.what, s.mem, s.memsz
                ),
            });
        }
        if s.data.len() as u64 > s.memsz || s.mem.checked_add(s.memsz).is_none() {
            return Err(Error::Plan {
                problem: format!(
                    "{} carries {} bytes in a {:#x}-byte segment",
                    s.what,
                    s.data.len(),
                    s.memsz
                ),
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
    let mut sorted: Vec<&Segment> = segments.iter().collect();
    sorted.sort_by_key(|s| s.mem);
    for w in sorted.windows(2) {
        if w[0].range().overlaps(&w[1].range()) {
            return Err(Error::SegmentOverlap {
                first: format!("{} {}", w[0].what, w[0].range()),
                second: format!("{} {}", w[1].what, w[1].range()),
            });
        }
    }
    Ok(())
}

fn human(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if f >= K * K * K {
        format!("{:.2} GiB", f / (K * K * K))
    } else if f >= K * K {
        format!("{:.2} MiB", f / (K * K))
    } else if f >= K {
        format!("{:.1} KiB", f / K)
    } else {
        format!("{n} B")
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        writeln!(
            f,
            "kexec_load plan: {} segments, entry {:#x} (fastkexec purgatory)",
            self.segments.len(),
            self.entry
        )?;
        writeln!(
            f,
            "  {:>2}  {:<37}  {:>10}  {:>10}  what",
            "#", "physical range", "memsz", "data"
        )?;
        for (i, seg) in self.segments.iter().enumerate() {
            writeln!(
                f,
                "  {:>2}  {:#018x}-{:#018x}  {:>10}  {:>10}  {}",
                i,
                seg.mem,
                seg.mem.saturating_add(seg.memsz),
                human(seg.memsz),
                human(seg.data.len() as u64),
                seg.what
            )?;
        }
        writeln!(
            f,
            "kernel: entry {:#x} (startup_64), footprint {}{}",
            s.kernel_entry,
            s.kernel_footprint,
            if s.phys_delta != 0 {
                format!(", shifted by {:#x}", s.phys_delta)
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "boot_params at {:#x}: setup header {}, protocol {}.{:02}, loader type {:#04x}",
            s.boot_params_addr,
            if s.header_from_bzimage {
                "from the bzImage"
            } else {
                "synthesised"
            },
            s.protocol_version >> 8,
            s.protocol_version & 0xff,
            bootparams::LOADER_TYPE_UNDEFINED
        )?;
        writeln!(
            f,
            "  e820: {} entries ({} in the zero page, {} in SETUP_E820_EXT)",
            s.e820_entries, s.e820_in_zero_page, s.e820_ext_entries
        )?;
        match s.acpi_rsdp {
            Some(a) => writeln!(f, "  ACPI RSDP: {a:#x}")?,
            None => writeln!(
                f,
                "  ACPI RSDP: not known; the kernel scans the BIOS area for it"
            )?,
        }
        match &s.efi {
            EfiHandoff::NotEfi => writeln!(f, "  EFI: not an EFI boot")?,
            EfiHandoff::Passed { runtime_regions } => writeln!(
                f,
                "  EFI: efi_info, SETUP_EFI and the runtime map ({runtime_regions} regions) passed on"
            )?,
            EfiHandoff::Dropped { reason } => writeln!(
                f,
                "  EFI: not passed on ({reason}); the next kernel runs without EFI runtime services"
            )?,
        }
        match s.initrd {
            Some((a, n)) => writeln!(
                f,
                "  initrd: {:#x}-{:#x} ({} bytes){}",
                a,
                a.saturating_add(n),
                n,
                if s.ext_ramdisk_used {
                    ", above 4 GiB via ext_ramdisk_image/size"
                } else {
                    ""
                }
            )?,
            None => writeln!(f, "  initrd: none")?,
        }
        writeln!(
            f,
            "  command line at {:#x}: {} of at most {} bytes{}",
            s.cmdline_addr,
            self.cmdline.len(),
            s.cmdline_limit,
            if s.ext_cmdline_used {
                ", via ext_cmd_line_ptr"
            } else {
                ""
            }
        )?;
        if s.setup_data.is_empty() && s.setup_data_tail == 0 {
            writeln!(f, "  setup_data: none")?;
        } else {
            write!(f, "  setup_data:")?;
            for n in &s.setup_data {
                write!(
                    f,
                    " {:#x} {} ({} bytes) ->",
                    n.addr,
                    bootparams::setup_data_name(n.kind),
                    n.len
                )?;
            }
            if s.setup_data_tail != 0 {
                writeln!(f, " chain at {:#x}", s.setup_data_tail)?;
            } else {
                writeln!(f, " end")?;
            }
        }
        writeln!(
            f,
            "purgatory at {:#x}: TSC record at {:#x}{}; {}",
            s.purgatory_addr,
            s.tsc_record_addr,
            if s.tsc_out != 0 {
                format!(", copied to {:#x}", s.tsc_out)
            } else {
                String::new()
            },
            if s.verified_segments > 0 {
                format!("checksums {} segments before the jump", s.verified_segments)
            } else {
                "no checksum verification".to_string()
            }
        )?;
        writeln!(f, "command line: {:?}", self.cmdline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::e820::{E820Entry, E820Type};
    use crate::host::hostinfo;
    use crate::plan::bootparams::{
        get32, get64, walk_setup_data, SETUP_E820_EXT, SETUP_EFI, SETUP_RNG_SEED,
    };
    use std::path::PathBuf;

    const TINY: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vmlinux-tiny.elf"
    ));

    fn host(name: &str) -> HostBootInfo {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/host")
            .join(name);
        let mut h = hostinfo::read(&root).unwrap();
        h.rng_seed = Some([0x42; 32]);
        h
    }

    fn input<'a>(h: &'a HostBootInfo, initrd: Option<&'a [u8]>) -> UncompressedInput<'a> {
        UncompressedInput {
            vmlinux_path: Path::new("vmlinux-tiny.elf"),
            vmlinux: TINY,
            setup_header: None,
            initrd: initrd.map(|b| (Path::new("initrd.img"), b)),
            cmdline: "console=ttyS0 root=/dev/vda",
            host: h,
            reserved: Vec::new(),
            verify: true,
            phys_delta: 0,
        }
    }

    fn zero_page(plan: &Plan) -> Vec<u8> {
        plan.read_phys(plan.summary.boot_params_addr, 4096).unwrap()
    }

    /// An ELF64 x86-64 ET_EXEC with the given PT_LOADs (paddr, filesz, memsz)
    /// and entry; file bytes are a pattern derived from the segment index.
    fn elf(loads: &[(u64, u64, u64)], entry: u64) -> Vec<u8> {
        let phoff = 64u64;
        let mut data_off = phoff + 56 * loads.len() as u64;
        let mut out = vec![0u8; data_off as usize];
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&62u16.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(loads.len() as u16).to_le_bytes());
        for (i, &(paddr, filesz, memsz)) in loads.iter().enumerate() {
            let ph = (phoff as usize) + i * 56;
            out[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
            out[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes());
            out[ph + 8..ph + 16].copy_from_slice(&data_off.to_le_bytes());
            out[ph + 16..ph + 24].copy_from_slice(&(paddr | 0xffff_ffff_8000_0000).to_le_bytes());
            out[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            out[ph + 32..ph + 40].copy_from_slice(&filesz.to_le_bytes());
            out[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
            out[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
            out.extend((0..filesz).map(|j| (j as u8) ^ (0x11 * (i as u8 + 1))));
            data_off += filesz;
        }
        out
    }

    /// Checks every invariant a plan must hold, independently of the planner.
    fn check_invariants(plan: &Plan, h: &HostBootInfo, reserved: &[PhysRange]) {
        assert!(plan.segments.len() <= 16);
        let mut ranges: Vec<PhysRange> = Vec::new();
        for s in &plan.segments {
            assert_eq!(s.mem % 4096, 0, "{}", s.what);
            assert_eq!(s.memsz % 4096, 0, "{}", s.what);
            assert!(s.data.len() as u64 <= s.memsz, "{}", s.what);
            assert!(e820::is_ram(&h.memmap, &s.range()), "{} not in RAM", s.what);
            for r in reserved {
                assert!(!r.overlaps(&s.range()), "{} over reserved {r}", s.what);
            }
            for r in &ranges {
                assert!(!r.overlaps(&s.range()), "{} overlaps {r}", s.what);
            }
            ranges.push(s.range());
            if !s.what.starts_with("kernel") {
                assert!(s.mem >= MIN_PLACEMENT, "{} below 1 MiB", s.what);
            }
        }
        assert_eq!(plan.entry, plan.summary.purgatory_addr);
        let purg = plan.segments.last().unwrap();
        assert_eq!(purg.what, "purgatory");
        assert!(purg.mem + purg.memsz <= FOUR_GIB);
    }

    #[test]
    fn qemu_plan_places_everything_and_fills_boot_params() {
        let h = host("qemu-seabios");
        let initrd = vec![0xab; 3 * 1024 * 1024 + 17];
        let plan = plan_uncompressed(&input(&h, Some(&initrd[..]))).unwrap();
        check_invariants(&plan, &h, &[]);
        // 3 PT_LOADs, initrd, boot block, purgatory.
        assert_eq!(plan.segments.len(), 6);
        let k: Vec<&Segment> = plan
            .segments
            .iter()
            .filter(|s| s.what.starts_with("kernel"))
            .collect();
        assert_eq!(k.len(), 3);
        assert_eq!(k[0].mem, 0x100_0000);
        assert_eq!(k[0].data.len(), 0x133);
        assert_eq!(&k[0].data[..], &TINY[0xe8..0xe8 + 0x133]);
        // .data + .bss: file bytes 0x12c, memory 0x25000.
        assert_eq!(k[2].mem, 0x100_2000);
        assert_eq!(k[2].memsz, 0x25000);
        assert_eq!(k[2].data.len(), 0x12c);
        assert_eq!(
            plan.summary.kernel_footprint,
            PhysRange::new(0x100_0000, 0x102_7000)
        );
        assert_eq!(plan.summary.kernel_entry, 0x100_0000);

        // Initrd: as high as possible in RAM below 2 GiB (the top of RAM is
        // 0x7ffe0000), since the map has no RAM above 4 GiB.
        let (ia, isz) = plan.summary.initrd.unwrap();
        assert_eq!(isz, initrd.len() as u64);
        let initrd_memsz = (initrd.len() as u64).div_ceil(4096) * 4096;
        assert_eq!(ia + initrd_memsz, 0x7ffe_0000);
        assert!(!plan.summary.ext_ramdisk_used);

        let zp = zero_page(&plan);
        assert_eq!(&zp[0x202..0x206], b"HdrS");
        assert_eq!(zp[0x1ef], 0);
        assert_eq!(zp[0x1e8], 7);
        for (i, e) in h.memmap.iter().enumerate() {
            let o = 0x2d0 + 20 * i;
            assert_eq!(
                (get64(&zp, o), get64(&zp, o + 8), get32(&zp, o + 16)),
                (e.addr, e.size, e.kind.raw())
            );
        }
        assert_eq!(u64::from(get32(&zp, 0x218)), ia);
        assert_eq!(u64::from(get32(&zp, 0x21c)), isz);
        assert_eq!(get32(&zp, 0x0c0), 0);
        assert_eq!(get32(&zp, 0x0c4), 0);
        let cl = u64::from(get32(&zp, 0x228)) | u64::from(get32(&zp, 0x0c8)) << 32;
        assert_eq!(cl, plan.summary.cmdline_addr);
        let text = plan.read_phys(cl, plan.cmdline.len() + 1).unwrap();
        assert_eq!(&text[..plan.cmdline.len()], plan.cmdline.as_bytes());
        assert_eq!(text[plan.cmdline.len()], 0);
        assert_eq!(get64(&zp, 0x070), 0);

        // setup_data walked back from the segments: only the RNG seed here.
        let (nodes, tail) =
            walk_setup_data(get64(&zp, 0x250), |a, n| plan.read_phys(a, n)).unwrap();
        assert_eq!(tail, None);
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].kind, SETUP_RNG_SEED);
        assert_eq!(nodes[0].data, vec![0x42; 32]);

        // The purgatory is patched with the real addresses.
        let purg = Purgatory::from_bytes(plan.segments.last().unwrap().data.clone()).unwrap();
        assert_eq!(purg.entry(), 0x100_0000);
        assert_eq!(purg.boot_params(), plan.summary.boot_params_addr);
        assert_eq!(purg.stack_top(), plan.entry + purg.stack_end() as u64);
        // Verify table covers every non-purgatory segment with the right sums.
        let v = purg.verify_entries();
        assert_eq!(v.len(), plan.segments.len() - 1);
        for (e, s) in v.iter().zip(&plan.segments) {
            assert_eq!(e.addr, s.mem);
            assert_eq!(e.sum, purgatory::checksum(&s.data));
            assert!(e.len >= s.data.len() as u64 && e.len <= s.memsz);
        }
    }

    #[test]
    fn a_spoiled_verify_sum_changes_only_the_first_entry() {
        let h = host("qemu-seabios");
        let mut plan = plan_uncompressed(&input(&h, None)).unwrap();
        let good = plan.clone();
        let addr = spoil_first_verify_sum(&mut plan).unwrap();
        let purg = |p: &Plan| {
            Purgatory::from_bytes(p.segments.last().unwrap().data.clone())
                .unwrap()
                .verify_entries()
        };
        let (before, after) = (purg(&good), purg(&plan));
        assert_eq!(addr, before[0].addr);
        assert_ne!(after[0].sum, before[0].sum);
        assert_ne!(after[0].sum, purgatory::checksum(&plan.segments[0].data));
        assert_eq!(
            (after[0].addr, after[0].len),
            (before[0].addr, before[0].len)
        );
        assert_eq!(after[1..], before[1..]);
        // The segments the kernel copies are the good ones.
        assert_eq!(
            plan.segments[..plan.segments.len() - 1],
            good.segments[..good.segments.len() - 1]
        );
        // Without a verify table there is nothing to spoil.
        let mut i = input(&h, None);
        i.verify = false;
        let mut plain = plan_uncompressed(&i).unwrap();
        assert!(spoil_first_verify_sum(&mut plain).is_err());
    }

    #[test]
    fn verify_off_leaves_the_table_empty() {
        let h = host("qemu-seabios");
        let mut i = input(&h, None);
        i.verify = false;
        let plan = plan_uncompressed(&i).unwrap();
        let purg = Purgatory::from_bytes(plan.segments.last().unwrap().data.clone()).unwrap();
        assert!(purg.verify_entries().is_empty());
        assert_eq!(plan.summary.verified_segments, 0);
        assert_eq!(plan.summary.initrd, None);
        let zp = zero_page(&plan);
        assert_eq!(get32(&zp, 0x218), 0);
        assert_eq!(get32(&zp, 0x21c), 0);
    }

    #[test]
    fn efi_plan_uses_e820_ext_and_passes_efi() {
        let h = host("efi-large");
        let initrd = vec![1u8; 1 << 20];
        let plan = plan_uncompressed(&input(&h, Some(&initrd[..]))).unwrap();
        check_invariants(&plan, &h, &[]);
        let zp = zero_page(&plan);
        assert_eq!(zp[0x1e8], 128);
        assert_eq!(plan.summary.e820_ext_entries, h.memmap.len() - 128);
        // RSDP from the EFI systab (boot_params had 0).
        assert_eq!(get64(&zp, 0x070), 0x7f77e014);
        // Initrd above 4 GiB: the top of the 4G..64G RAM range.
        let (ia, isz) = plan.summary.initrd.unwrap();
        assert_eq!(ia + isz, 0x10_0000_0000);
        assert!(plan.summary.ext_ramdisk_used);
        assert_eq!(
            u64::from(get32(&zp, 0x218)) | u64::from(get32(&zp, 0x0c0)) << 32,
            ia
        );
        assert_eq!(get32(&zp, 0x0c0), 0xf);
        assert_eq!(get32(&zp, 0x21c), 1 << 20);
        assert_eq!(get32(&zp, 0x0c4), 0);

        let (nodes, tail) =
            walk_setup_data(get64(&zp, 0x250), |a, n| plan.read_phys(a, n)).unwrap();
        assert_eq!(tail, None);
        let kinds: Vec<u32> = nodes.iter().map(|n| n.kind).collect();
        assert_eq!(kinds, vec![SETUP_E820_EXT, SETUP_EFI, SETUP_RNG_SEED]);
        // The zero page + E820_EXT together are exactly the firmware map.
        let ext = &nodes[0].data;
        assert_eq!(ext.len(), (h.memmap.len() - 128) * 20);
        let mut all: Vec<E820Entry> = (0..128)
            .map(|i| {
                let o = 0x2d0 + 20 * i;
                E820Entry {
                    addr: get64(&zp, o),
                    size: get64(&zp, o + 8),
                    kind: E820Type::from_raw(get32(&zp, o + 16)),
                }
            })
            .collect();
        all.extend(ext.chunks_exact(20).map(|c| E820Entry {
            addr: get64(c, 0),
            size: get64(c, 8),
            kind: E820Type::from_raw(get32(c, 16)),
        }));
        assert_eq!(all, h.memmap);
        // EFI: efi_info points at the runtime map copy, SETUP_EFI has fw_vendor.
        assert_eq!(&zp[0x1c0..0x1c4], b"EL64");
        let memmap = u64::from(get32(&zp, 0x1d0)) | u64::from(get32(&zp, 0x1dc)) << 32;
        let size = get32(&zp, 0x1d4) as usize;
        assert_eq!(size, 12 * 40);
        let descs = plan.read_phys(memmap, size).unwrap();
        let rt = h.efi_runtime.as_ref().unwrap();
        for (i, d) in rt.runtime_map.iter().enumerate() {
            assert_eq!(&descs[i * 40..i * 40 + 40], &d.to_bytes());
        }
        assert_eq!(get64(&nodes[1].data, 0), rt.fw_vendor);
        assert!(matches!(
            plan.summary.efi,
            EfiHandoff::Passed {
                runtime_regions: 12
            }
        ));
        // Boot block and purgatory stay below 4 GiB.
        assert!(plan.summary.boot_params_addr < FOUR_GIB);
        assert!(!plan.summary.ext_cmdline_used);
    }

    #[test]
    fn ram_the_running_kernel_reserved_is_avoided() {
        let h = host("efi-large");
        // Firmware RAM, but /proc/iomem shows it reserved (kept EFI data).
        let kept = PhysRange::new(0x7f60_0000, 0x7f70_0000);
        assert!(e820::is_ram(&h.memmap, &kept));
        assert!(h
            .iomem_ram
            .as_ref()
            .unwrap()
            .iter()
            .all(|r| !r.overlaps(&kept)));
        let plan = plan_uncompressed(&input(&h, None)).unwrap();
        check_invariants(&plan, &h, &[kept]);
        // Top-down placement ends right below it.
        let top = plan
            .segments
            .iter()
            .filter(|s| !s.what.starts_with("kernel"))
            .map(|s| s.range().end)
            .max()
            .unwrap();
        assert_eq!(top, kept.start);

        // Without the iomem view, the firmware map alone would have used it.
        let mut blind = h.clone();
        blind.iomem_ram = None;
        let plan = plan_uncompressed(&input(&blind, None)).unwrap();
        assert!(plan.segments.iter().any(|s| s.range().overlaps(&kept)));
    }

    #[test]
    fn old_header_keeps_initrd_below_initrd_addr_max() {
        let h = host("efi-large");
        let mut hdr_raw = h.boot_params.as_ref().unwrap()[0x1f1..0x26c].to_vec();
        // A 2.10 kernel with a 1 GiB initrd limit and no ext_* support.
        hdr_raw[0x206 - 0x1f1..0x208 - 0x1f1].copy_from_slice(&0x020au16.to_le_bytes());
        let hdr = SetupHeader {
            setup_sects: 27,
            version: 0x020a,
            loadflags: 1,
            xloadflags: 0,
            initrd_addr_max: 0x3fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: true,
            min_alignment: 21,
            cmdline_size: 2047,
            hardware_subarch: 0,
            payload_offset: 0,
            payload_length: 0,
            pref_address: 0x100_0000,
            init_size: 0,
            handover_offset: 0,
            kernel_info_offset: 0,
            raw: hdr_raw,
        };
        let initrd = vec![2u8; 5 << 20];
        let mut i = input(&h, Some(&initrd[..]));
        i.setup_header = Some(&hdr);
        let plan = plan_uncompressed(&i).unwrap();
        let (ia, isz) = plan.summary.initrd.unwrap();
        assert!(ia + isz <= 0x4000_0000);
        assert!(!plan.summary.ext_ramdisk_used);
        assert!(plan.summary.header_from_bzimage);
        let zp = zero_page(&plan);
        assert_eq!(u16::from_le_bytes([zp[0x206], zp[0x207]]), 0x020a);
        assert_eq!(get32(&zp, 0x0c0), 0);

        // An initrd larger than everything below the limit does not fit.
        let huge = vec![0u8; 1 << 30];
        let mut i = input(&h, Some(&huge));
        i.setup_header = Some(&hdr);
        let err = plan_uncompressed(&i).unwrap_err();
        assert!(matches!(err, Error::InitrdDoesNotFit { .. }), "{err}");
        assert!(err.to_string().contains("initrd_addr_max"), "{err}");
    }

    #[test]
    fn cmdline_limits() {
        let h = host("qemu-seabios");
        let long = "a".repeat(2048);
        let mut i = input(&h, None);
        i.cmdline = &long;
        let err = plan_uncompressed(&i).unwrap_err();
        match &err {
            Error::CmdlineTooLong {
                len,
                max,
                limit_from,
            } => {
                assert_eq!((*len, *max), (2048, 2047));
                assert!(limit_from.contains("COMMAND_LINE_SIZE"));
            }
            other => panic!("{other}"),
        }
        let ok = "a".repeat(2047);
        i.cmdline = &ok;
        let plan = plan_uncompressed(&i).unwrap();
        let text = plan.read_phys(plan.summary.cmdline_addr, 2048).unwrap();
        assert_eq!(text[2047], 0);
        i.cmdline = "a\0b";
        assert!(plan_uncompressed(&i).is_err());
    }

    #[test]
    fn reserved_ranges_are_avoided_and_tracer_chain_appended() {
        let h = host("qemu-seabios");
        let plain = plan_uncompressed(&input(&h, None)).unwrap();
        // Reserve exactly where the boot block and purgatory went, plus a
        // tracer page holding its own setup_data node and TSC slot.
        let tracer_page = 0x5000_0000u64;
        let mut i = input(&h, None);
        i.reserved = vec![
            (plain.summary.boot_params_addr, 0x10000),
            (plain.summary.purgatory_addr, 0x2000),
            (tracer_page, 4096),
        ];
        let extras = PlanExtras {
            setup_data: vec![SetupData {
                kind: 0x4658_4b31,
                data: b"extra".to_vec(),
            }],
            setup_data_tail: tracer_page,
            tsc_out: tracer_page + 0x100,
        };
        let plan = plan_uncompressed_with(&i, &extras).unwrap();
        let reserved: Vec<PhysRange> = i
            .reserved
            .iter()
            .map(|&(a, s)| PhysRange::from_len(a, s))
            .collect();
        check_invariants(&plan, &h, &reserved);
        assert_ne!(
            plan.summary.boot_params_addr,
            plain.summary.boot_params_addr
        );
        let zp = zero_page(&plan);
        let (nodes, tail) =
            walk_setup_data(get64(&zp, 0x250), |a, n| plan.read_phys(a, n)).unwrap();
        assert_eq!(tail, Some(tracer_page));
        assert_eq!(nodes.last().unwrap().data, b"extra");
        assert_eq!(nodes[0].kind, SETUP_RNG_SEED);
        let purg = Purgatory::from_bytes(plan.segments.last().unwrap().data.clone()).unwrap();
        assert_eq!(purg.tsc_out(), tracer_page + 0x100);
        let shown = plan.to_string();
        assert!(
            shown.contains(&format!("chain at {tracer_page:#x}")),
            "{shown}"
        );

        // A TSC target outside the reserved ranges is refused.
        let bad = PlanExtras {
            tsc_out: 0x6000_0000,
            ..PlanExtras::default()
        };
        assert!(plan_uncompressed_with(&i, &bad).is_err());

        // A reservation over the kernel is an overlap error.
        let mut i = input(&h, None);
        i.reserved = vec![(0x100_1000, 4096)];
        assert!(matches!(
            plan_uncompressed(&i).unwrap_err(),
            Error::SegmentOverlap { .. }
        ));
    }

    #[test]
    fn phys_delta_shifts_kernel_and_entry() {
        let h = host("qemu-seabios");
        let mut i = input(&h, None);
        i.phys_delta = 0x3000_0000;
        let plan = plan_uncompressed(&i).unwrap();
        check_invariants(&plan, &h, &[]);
        assert_eq!(plan.summary.kernel_entry, 0x3100_0000);
        assert_eq!(plan.segments[0].mem, 0x3100_0000);
        let purg = Purgatory::from_bytes(plan.segments.last().unwrap().data.clone()).unwrap();
        assert_eq!(purg.entry(), 0x3100_0000);

        i.phys_delta = 0x1000;
        assert!(plan_uncompressed(&i).is_err());
        i.phys_delta = -0x0200_0000;
        // 16 MiB - 32 MiB would wrap below zero.
        assert!(plan_uncompressed(&i).is_err());
        // Shifted into the 0x80000000.. hole: not RAM.
        i.phys_delta = 0x7f00_0000;
        assert!(matches!(
            plan_uncompressed(&i).unwrap_err(),
            Error::KernelNotInRam { .. }
        ));
    }

    #[test]
    fn within_keeps_every_segment_in_the_window_and_a_second_path_fits_beside() {
        let h = host("qemu-seabios");
        let window = PhysRange::new(0x3000_0000, 0x3100_0000);
        let initrd = vec![9u8; 1 << 20];
        let mut i = input(&h, Some(&initrd[..]));
        i.phys_delta = 0x3000_0000 - 0x100_0000;
        let mut plan = plan_uncompressed_within(&i, &PlanExtras::default(), window).unwrap();
        check_invariants(&plan, &h, &[]);
        assert!(plan
            .segments
            .iter()
            .all(|s| window.contains_range(&s.range())));
        let before = plan.segments.len();
        let extra =
            add_boot_path(&mut plan, &i, &h.memmap[..2], "panic path", Some(window)).unwrap();
        check_invariants(&plan, &h, &[]);
        assert_eq!(plan.segments.len(), before + 2);
        assert!(window.contains_range(&PhysRange::from_len(extra.purgatory_addr, 4096)));
        let purg = Purgatory::from_bytes(plan.segments.last().unwrap().data.clone()).unwrap();
        assert_eq!(purg.entry(), plan.summary.kernel_entry);
        assert_eq!(purg.boot_params(), extra.boot_params_addr);
        assert_ne!(extra.boot_params_addr, plan.summary.boot_params_addr);
        let zp = plan.read_phys(extra.boot_params_addr, 4096).unwrap();
        assert_eq!(zp[0x1e8], 2, "the second path's own e820 map");

        // The kernel footprint outside the window is refused.
        i.phys_delta = 0;
        let e = plan_uncompressed_within(&i, &PlanExtras::default(), window).unwrap_err();
        assert!(e.to_string().contains("not inside"), "{e}");
        // A window with no room left for a second path leaves the plan as it was.
        let n = plan.segments.len();
        let kernel = plan.segments[0].range();
        let e = add_boot_path(&mut plan, &i, &h.memmap, "x", Some(kernel)).unwrap_err();
        assert!(matches!(e, Error::NoRamHole { .. }), "{e}");
        assert_eq!(plan.segments.len(), n);
    }

    #[test]
    fn pt_loads_sharing_a_page_become_one_segment() {
        // .text ends mid-page and .data starts in the same page.
        let bytes = elf(
            &[(0x100_0000, 0x1800, 0x1800), (0x100_1800, 0x100, 0x3000)],
            0x100_0000,
        );
        let h = host("qemu-seabios");
        let mut i = input(&h, None);
        i.vmlinux = &bytes;
        let plan = plan_uncompressed(&i).unwrap();
        check_invariants(&plan, &h, &[]);
        let k = &plan.segments[0];
        assert_eq!(k.mem, 0x100_0000);
        assert_eq!(k.memsz, 0x5000);
        assert_eq!(k.data.len(), 0x1900);
        assert!(k.what.contains("#0+#1"), "{}", k.what);
        // Both PT_LOADs' bytes are where their p_paddr says.
        let first = &bytes[64 + 2 * 56..64 + 2 * 56 + 0x1800];
        assert_eq!(&k.data[..0x1800], first);
        let second = &bytes[64 + 2 * 56 + 0x1800..64 + 2 * 56 + 0x1900];
        assert_eq!(&k.data[0x1800..0x1900], second);

        // A non page-aligned start gets leading zero padding.
        let bytes = elf(&[(0x100_0100, 0x10, 0x10)], 0x100_0100);
        i.vmlinux = &bytes;
        let plan = plan_uncompressed(&i).unwrap();
        assert_eq!(plan.segments[0].mem, 0x100_0000);
        assert_eq!(&plan.segments[0].data[..0x100], &[0u8; 0x100][..]);
        assert_eq!(plan.segments[0].data.len(), 0x110);
    }

    #[test]
    fn too_many_segments_is_an_error() {
        let loads: Vec<(u64, u64, u64)> = (0..15)
            .map(|i| (0x100_0000 + i * 0x10_0000, 0x10, 0x1000))
            .collect();
        let bytes = elf(&loads, 0x100_0000);
        let h = host("qemu-seabios");
        let mut i = input(&h, None);
        i.vmlinux = &bytes;
        // 15 kernel + boot block + purgatory = 17.
        let err = plan_uncompressed(&i).unwrap_err();
        assert!(
            matches!(err, Error::TooManySegments { count: 17, max: 16 }),
            "{err}"
        );
        // 14 + 2 = 16 is fine.
        let bytes = elf(&loads[..14], 0x100_0000);
        i.vmlinux = &bytes;
        assert_eq!(plan_uncompressed(&i).unwrap().segments.len(), 16);
    }

    #[test]
    fn kernel_outside_ram_and_no_hole_errors() {
        let h = host("qemu-seabios");
        // Kernel linked into the 640K-1M hole.
        let bytes = elf(&[(0xa_0000, 0x10, 0x1000)], 0xa_0000);
        let mut i = input(&h, None);
        i.vmlinux = &bytes;
        let err = plan_uncompressed(&i).unwrap_err();
        assert!(matches!(err, Error::KernelNotInRam { .. }), "{err}");

        // A machine whose only RAM above 1 MiB is taken by the kernel.
        let mut tight = h.clone();
        tight.memmap = vec![
            E820Entry {
                addr: 0,
                size: 0x9_fc00,
                kind: E820Type::Ram,
            },
            E820Entry {
                addr: 0x100_0000,
                size: 0x2_7000,
                kind: E820Type::Ram,
            },
        ];
        let i = input(&tight, None);
        let err = plan_uncompressed(&i).unwrap_err();
        assert!(matches!(err, Error::NoRamHole { .. }), "{err}");
        assert!(err.to_string().contains("boot_params"), "{err}");
    }

    #[test]
    fn firecracker_snapshot_plans() {
        let h = host("firecracker");
        let initrd = vec![3u8; 7 << 20];
        let plan = plan_uncompressed(&input(&h, Some(&initrd[..]))).unwrap();
        check_invariants(&plan, &h, &[]);
        // Highest RAM is 0x100000000..0x640000000: the initrd goes to its top.
        let (ia, _) = plan.summary.initrd.unwrap();
        assert_eq!(ia + (7 << 20), 0x6_4000_0000);
        // The boot block and purgatory take the top of the RAM below 3 GiB.
        assert!(plan.summary.purgatory_addr < 0xc000_0000);
        assert!(plan.summary.boot_params_addr < 0xc000_0000);
    }

    #[test]
    fn dry_run_text_names_the_essentials() {
        let h = host("efi-large");
        let initrd = vec![1u8; 4096];
        let plan = plan_uncompressed(&input(&h, Some(&initrd[..]))).unwrap();
        let text = plan.to_string();
        for needle in [
            "kexec_load plan: 6 segments",
            "0x0000000001000000-0x0000000001001000",
            "kernel PT_LOAD #0",
            "initrd initrd.img",
            "purgatory",
            "e820: 142 entries (128 in the zero page, 14 in SETUP_E820_EXT)",
            "ACPI RSDP: 0x7f77e014",
            "runtime map (12 regions)",
            "above 4 GiB via ext_ramdisk_image/size",
            "E820_EXT",
            "RNG_SEED",
            "checksums 5 segments",
            "command line: \"console=ttyS0 root=/dev/vda\"",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        let legacy = host("qemu-seabios");
        let text = plan_uncompressed(&input(&legacy, None))
            .unwrap()
            .to_string();
        assert!(text.contains("the kernel scans the BIOS area"), "{text}");
        assert!(text.contains("EFI: not an EFI boot"), "{text}");
    }

    #[test]
    fn validate_catches_what_the_kernel_would_reject() {
        let h = host("qemu-seabios");
        let seg = |mem: u64, memsz: u64, len: usize| Segment {
            data: vec![0; len],
            mem,
            memsz,
            what: "t".into(),
        };
        assert!(validate(&[seg(0x20_0000, 0x1000, 0x1000)], &h.memmap, &[]).is_ok());
        assert!(validate(&[seg(0x20_0800, 0x1000, 0)], &h.memmap, &[]).is_err());
        assert!(validate(&[seg(0x20_0000, 0x1000, 0x1001)], &h.memmap, &[]).is_err());
        assert!(validate(
            &[seg(0x20_0000, 0x2000, 0), seg(0x20_1000, 0x1000, 0)],
            &h.memmap,
            &[]
        )
        .is_err());
        assert!(validate(&[seg(0x7ffd_f000, 0x2000, 0)], &h.memmap, &[]).is_err());
        assert!(validate(
            &[seg(0x20_0000, 0x1000, 0)],
            &h.memmap,
            &[PhysRange::new(0x20_0fff, 0x20_1000)]
        )
        .is_err());
    }
}
