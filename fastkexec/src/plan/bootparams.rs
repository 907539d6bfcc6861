//! The 4096-byte zero page (`struct boot_params`) and the `setup_data` list
//! the next kernel is entered with, per the 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst, zero-page.rst).
//!
//! A vmlinux has no setup header of its own: it is either copied from the
//! matching bzImage or synthesised. Everything else is built from a zeroed
//! page plus what the running kernel's boot_params say about the machine
//! (screen_info, hardware_subarch, and on EFI machines efi_info).
//!
//! `setup_data` nodes carry *physical* addresses, so nothing here decides
//! where things go: `segments` picks the addresses, then calls
//! [`build_zero_page`] and [`build_boot_block`].

use crate::error::{Error, Result};
use crate::host::e820::{E820Entry, BOOT_E820_ENTRY_SIZE};
use crate::host::hostinfo::{HostBootInfo, BOOT_PARAMS_SIZE, EFI_MEMORY_DESC_SIZE};
use crate::image::bootproto::{get32, get64, off, put16, put32, put64};
use crate::image::bzimage::SetupHeader;

/// `setup_data` types (arch/x86/include/uapi/asm/setup_data.h).
pub const SETUP_E820_EXT: u32 = 1;
pub const SETUP_DTB: u32 = 2;
pub const SETUP_PCI: u32 = 3;
pub const SETUP_EFI: u32 = 4;
pub const SETUP_RNG_SEED: u32 = 9;

/// `struct setup_data` header: u64 next, u32 type, u32 len.
pub const SETUP_DATA_HEADER_SIZE: usize = 16;
/// Slots in the zero page's `e820_table`.
pub const E820_MAX_ZERO_PAGE: usize = 128;
/// boot.rst's "undefined" loader id: we are not one of the registered loaders.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
pub use crate::image::bootproto::{LOADED_HIGH, XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64};
/// Protocol version we claim in a synthesised header: 2.12, the first with
/// xloadflags and the ext_* fields we fill.
pub const SYNTH_PROTOCOL_VERSION: u16 = 0x020c;
/// x86 COMMAND_LINE_SIZE (2048) less the NUL, as header.S advertises.
pub const SYNTH_CMDLINE_SIZE: u32 = crate::plan::cmdline::X86_COMMAND_LINE_MAX as u32;
/// header.S's initrd_addr_max for x86-64 kernels.
pub const SYNTH_INITRD_ADDR_MAX: u32 = 0x7fff_ffff;
/// `struct efi_setup_data`: fw_vendor, unused, tables, smbios, reserved[8].
pub const EFI_SETUP_DATA_SIZE: usize = 96;
const EFI_MEMDESC_VERSION_1: u32 = 1;

/// One `setup_data` node's type and payload (the 16-byte header is added
/// when the chain is laid out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupData {
    pub kind: u32,
    pub data: Vec<u8>,
}

impl SetupData {
    /// Header plus payload.
    pub fn encoded_len(&self) -> usize {
        SETUP_DATA_HEADER_SIZE + self.data.len()
    }

    /// The node as it sits in memory, pointing at `next` (0 ends the list).
    pub fn encode(&self, next: u64) -> Result<Vec<u8>> {
        let len = u32::try_from(self.data.len()).map_err(|_| Error::BootParams {
            field: "setup_data.len",
            problem: format!(
                "type {} node carries {} bytes, more than a u32 length can describe",
                self.kind,
                self.data.len()
            ),
        })?;
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&next.to_le_bytes());
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&self.data);
        Ok(out)
    }
}

/// The limits the kernel's setup header sets for the loader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderCaps {
    pub version: u16,
    /// Longest command line, not counting the NUL.
    pub cmdline_size: u32,
    /// Highest address the initrd may occupy (inclusive) below 4 GiB.
    pub initrd_addr_max: u32,
    /// XLF_CAN_BE_LOADED_ABOVE_4G: ramdisk/cmdline/boot_params may sit above
    /// 4 GiB via the ext_* fields.
    pub above_4g: bool,
    /// The header came from a bzImage (else synthesised).
    pub from_bzimage: bool,
}

/// Reads the limits from the bzImage header, applying boot.rst's defaults
/// for fields older protocols lack; without a header, the values a current
/// x86-64 kernel's header.S carries.
pub fn header_caps(hdr: Option<&SetupHeader>) -> HeaderCaps {
    match hdr {
        None => HeaderCaps {
            version: SYNTH_PROTOCOL_VERSION,
            cmdline_size: SYNTH_CMDLINE_SIZE,
            initrd_addr_max: SYNTH_INITRD_ADDR_MAX,
            // Every kernel with a 64-bit entry reads ext_ramdisk_image and
            // ext_cmd_line_ptr (they came with protocol 2.12, as did
            // XLF_KERNEL_64).
            above_4g: true,
            from_bzimage: false,
        },
        Some(h) => HeaderCaps {
            version: h.version,
            cmdline_size: if h.version >= 0x0206 {
                h.cmdline_size
            } else {
                255
            },
            initrd_addr_max: if h.version >= 0x0203 {
                h.initrd_addr_max
            } else {
                0x37ff_ffff
            },
            above_4g: h.version >= 0x020c && h.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G != 0,
            from_bzimage: true,
        },
    }
}

/// The part of a firmware map that does not fit the zero page's 128 slots,
/// as one `SETUP_E820_EXT` node (packed 20-byte entries).
pub fn e820_ext_node(map: &[E820Entry]) -> Option<SetupData> {
    let rest = map.get(E820_MAX_ZERO_PAGE..).filter(|r| !r.is_empty())?;
    let mut data = Vec::with_capacity(rest.len() * BOOT_E820_ENTRY_SIZE);
    for e in rest {
        data.extend_from_slice(&e.to_boot_bytes());
    }
    Some(SetupData {
        kind: SETUP_E820_EXT,
        data,
    })
}

/// A `SETUP_RNG_SEED` node; the next kernel mixes it into its pool before
/// anything else runs and wipes it.
pub fn rng_seed_node(seed: &[u8; 32]) -> SetupData {
    SetupData {
        kind: SETUP_RNG_SEED,
        data: seed.to_vec(),
    }
}

/// What becomes of EFI in the next kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EfiHandoff {
    /// Not an EFI machine (or not booted through EFI).
    NotEfi,
    /// efi_info + SETUP_EFI + the runtime map are passed; runtime services
    /// keep working.
    Passed { runtime_regions: usize },
    /// EFI-booted, but the runtime map could not be handed over: efi_info
    /// stays zero and the next kernel boots without EFI runtime services
    /// (finding ACPI through acpi_rsdp_addr).
    Dropped { reason: String },
}

/// The EFI pieces for the next kernel, built from the running kernel's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EfiParts {
    /// efi_info with the memmap fields still to be pointed at our copy.
    pub efi_info: [u8; off::EFI_INFO_SIZE],
    pub secure_boot: u8,
    /// The runtime map as `efi_memory_desc_t` array.
    pub memmap: Vec<u8>,
    /// The SETUP_EFI node.
    pub setup: SetupData,
    pub runtime_regions: usize,
}

/// Decides whether EFI can be handed over (the conditions the kernel's own
/// kexec_file loader applies: an efi_info with a memory map, descriptor
/// version 1, and the runtime map with fw_vendor/config_table).
pub fn efi_parts(host: &HostBootInfo) -> std::result::Result<EfiParts, EfiHandoff> {
    let dropped = |reason: &str| EfiHandoff::Dropped {
        reason: reason.to_string(),
    };
    if !host.efi_booted {
        return Err(EfiHandoff::NotEfi);
    }
    let Some(info) = host.boot_param_bytes(off::EFI_INFO, off::EFI_INFO_SIZE) else {
        return Err(dropped(
            "no /sys/kernel/boot_params/data to copy efi_info from",
        ));
    };
    let mut efi_info = [0u8; off::EFI_INFO_SIZE];
    efi_info.copy_from_slice(info);
    let field = |o: usize| {
        let i = o - off::EFI_INFO;
        u32::from_le_bytes([
            efi_info[i],
            efi_info[i + 1],
            efi_info[i + 2],
            efi_info[i + 3],
        ])
    };
    if field(off::EFI_MEMMAP_SIZE) == 0 {
        return Err(dropped(
            "the running kernel's efi_info has no memory map (EFI runtime disabled?)",
        ));
    }
    if field(off::EFI_MEMDESC_VERSION) != EFI_MEMDESC_VERSION_1 {
        return Err(dropped("EFI memory descriptor version is not 1"));
    }
    let Some(rt) = host.efi_runtime.as_ref() else {
        return Err(dropped(
            "no /sys/firmware/efi/runtime-map (kernel built without CONFIG_EFI_RUNTIME_MAP?)",
        ));
    };
    let mut memmap = Vec::with_capacity(rt.runtime_map.len() * EFI_MEMORY_DESC_SIZE);
    for d in &rt.runtime_map {
        memmap.extend_from_slice(&d.to_bytes());
    }
    if u32::try_from(memmap.len()).is_err() {
        return Err(dropped("EFI runtime map larger than 4 GiB"));
    }
    let mut esd = vec![0u8; EFI_SETUP_DATA_SIZE];
    esd[0..8].copy_from_slice(&rt.fw_vendor.to_le_bytes());
    esd[16..24].copy_from_slice(&rt.config_table.to_le_bytes());
    let smbios = host.efi_systab.as_ref().and_then(|t| t.smbios).unwrap_or(0);
    esd[24..32].copy_from_slice(&smbios.to_le_bytes());
    Ok(EfiParts {
        efi_info,
        secure_boot: host
            .boot_param_bytes(off::SECURE_BOOT, 1)
            .map_or(0, |b| b[0]),
        memmap,
        setup: SetupData {
            kind: SETUP_EFI,
            data: esd,
        },
        runtime_regions: rt.runtime_map.len(),
    })
}

/// Everything the zero page needs, with addresses already chosen.
#[derive(Clone, Copy, Debug)]
pub struct ZeroPageInput<'a> {
    pub host: &'a HostBootInfo,
    pub setup_header: Option<&'a SetupHeader>,
    /// The whole firmware map; the first 128 entries go into the page.
    pub e820: &'a [E820Entry],
    /// Physical address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Physical address and exact size of the initrd.
    pub initrd: Option<(u64, u64)>,
    /// Physical address of the first setup_data node, 0 for none.
    pub setup_data_head: u64,
    /// EFI pieces and the physical address of their memory map copy.
    pub efi: Option<(&'a EfiParts, u64)>,
}

/// Builds the zero page.
pub fn build_zero_page(z: &ZeroPageInput) -> Result<Vec<u8>> {
    let mut bp = vec![0u8; BOOT_PARAMS_SIZE];
    let host_bp = z
        .host
        .boot_params
        .as_deref()
        .filter(|b| b.len() == BOOT_PARAMS_SIZE);

    // The console the running kernel has (text mode, VESA or EFI
    // framebuffer) is still there: the next kernel may keep using it.
    if let Some(h) = host_bp {
        bp[off::SCREEN_INFO..off::SCREEN_INFO + off::SCREEN_INFO_SIZE]
            .copy_from_slice(&h[off::SCREEN_INFO..off::SCREEN_INFO + off::SCREEN_INFO_SIZE]);
    }

    // Setup header.
    match z.setup_header {
        Some(h) => {
            let room = off::HDR_END - off::HDR;
            let n = h.raw.len().min(room);
            bp[off::HDR..off::HDR + n].copy_from_slice(&h.raw[..n]);
            if bp[off::HEADER_MAGIC..off::HEADER_MAGIC + 4] != *b"HdrS" {
                return Err(Error::BootParams {
                    field: "hdr.header (0x202)",
                    problem: "the bzImage setup header given has no \"HdrS\" magic; pass the bzImage that matches the vmlinux, or none".into(),
                });
            }
        }
        None => {
            put16(&mut bp, off::BOOT_FLAG, 0xaa55);
            bp[off::HEADER_MAGIC..off::HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
            put16(&mut bp, off::VERSION, SYNTH_PROTOCOL_VERSION);
            put32(&mut bp, off::INITRD_ADDR_MAX, SYNTH_INITRD_ADDR_MAX);
            put32(&mut bp, off::KERNEL_ALIGNMENT, 0x20_0000);
            bp[off::RELOCATABLE_KERNEL] = 1;
            bp[off::MIN_ALIGNMENT] = 21;
            put16(
                &mut bp,
                off::XLOADFLAGS,
                XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
            );
            put32(&mut bp, off::CMDLINE_SIZE, SYNTH_CMDLINE_SIZE);
        }
    }
    // Loader-owned header fields. A non-zero type_of_loader is also what
    // makes the kernel look at ramdisk_image at all.
    bp[off::TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED;
    bp[off::EXT_LOADER_VER] = 0;
    bp[off::EXT_LOADER_TYPE] = 0;
    // LOADED_HIGH only: no KASLR was done (the decompressor does that), no
    // real-mode heap, no quiet decompressor.
    bp[off::LOADFLAGS] = LOADED_HIGH;
    put16(&mut bp, off::HEAP_END_PTR, 0);
    if let Some(sub) = host_bp.map(|h| get32(h, off::HARDWARE_SUBARCH)) {
        put32(&mut bp, off::HARDWARE_SUBARCH, sub);
    }
    put64(&mut bp, off::HARDWARE_SUBARCH_DATA, 0);

    let caps = header_caps(z.setup_header);
    let (lo, hi) = split64(z.cmdline_addr);
    if hi != 0 && !caps.above_4g {
        return Err(Error::BootParams {
            field: "cmd_line_ptr (0x228)",
            problem: format!(
                "command line at {:#x} is above 4 GiB but the kernel header lacks XLF_CAN_BE_LOADED_ABOVE_4G",
                z.cmdline_addr
            ),
        });
    }
    put32(&mut bp, off::CMD_LINE_PTR, lo);
    put32(&mut bp, off::EXT_CMD_LINE_PTR, hi);

    if let Some((addr, size)) = z.initrd {
        let (alo, ahi) = split64(addr);
        let (slo, shi) = split64(size);
        if (ahi != 0 || shi != 0) && !caps.above_4g {
            return Err(Error::BootParams {
                field: "ramdisk_image (0x218)",
                problem: format!(
                    "initrd at {addr:#x} ({size} bytes) needs the ext_ramdisk fields, which this kernel header does not allow"
                ),
            });
        }
        put32(&mut bp, off::RAMDISK_IMAGE, alo);
        put32(&mut bp, off::RAMDISK_SIZE, slo);
        put32(&mut bp, off::EXT_RAMDISK_IMAGE, ahi);
        put32(&mut bp, off::EXT_RAMDISK_SIZE, shi);
    }

    put64(&mut bp, off::SETUP_DATA, z.setup_data_head);
    put64(&mut bp, off::ACPI_RSDP_ADDR, z.host.acpi_rsdp.unwrap_or(0));

    if let Some((efi, memmap_addr)) = z.efi {
        bp[off::EFI_INFO..off::EFI_INFO + off::EFI_INFO_SIZE].copy_from_slice(&efi.efi_info);
        let (mlo, mhi) = split64(memmap_addr);
        put32(&mut bp, off::EFI_MEMDESC_SIZE, EFI_MEMORY_DESC_SIZE as u32);
        put32(&mut bp, off::EFI_MEMMAP, mlo);
        put32(&mut bp, off::EFI_MEMMAP_HI, mhi);
        let size = u32::try_from(efi.memmap.len()).map_err(|_| Error::BootParams {
            field: "efi_info.efi_memmap_size (0x1d4)",
            problem: "EFI runtime map larger than 4 GiB".into(),
        })?;
        put32(&mut bp, off::EFI_MEMMAP_SIZE, size);
        bp[off::SECURE_BOOT] = efi.secure_boot;
    }

    let n = z.e820.len().min(E820_MAX_ZERO_PAGE);
    bp[off::E820_ENTRIES] = n as u8;
    for (i, e) in z.e820[..n].iter().enumerate() {
        let o = off::E820_TABLE + i * BOOT_E820_ENTRY_SIZE;
        bp[o..o + BOOT_E820_ENTRY_SIZE].copy_from_slice(&e.to_boot_bytes());
    }

    // A non-zero sentinel makes the kernel assume a loader that copied
    // garbage into the page and wipe fields; ours is built from zero.
    bp[off::SENTINEL] = 0;
    Ok(bp)
}

/// Offsets (from the block's start) of what [`build_boot_block`] lays out:
/// the zero page, the command line, the EFI memory map copy and each
/// setup_data node, each on its own page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootBlockLayout {
    pub zero_page: u64,
    pub cmdline: u64,
    pub efi_memmap: Option<u64>,
    pub nodes: Vec<u64>,
    /// Total size, a multiple of the page size.
    pub size: u64,
}

use crate::kexec::PAGE_SIZE as PAGE;

fn pages(len: usize) -> u64 {
    (len as u64).div_ceil(PAGE).max(1) * PAGE
}

/// Lays out the boot block for a command line of `cmdline_len` bytes (the
/// NUL is added), an EFI memory map of `efi_memmap_len` bytes (0 = none) and
/// `nodes`. Each node gets a page of its own so that the next kernel's
/// reservation of one never shares a page with another object.
pub fn layout_boot_block(
    cmdline_len: usize,
    efi_memmap_len: usize,
    nodes: &[SetupData],
) -> BootBlockLayout {
    let mut at = pages(BOOT_PARAMS_SIZE);
    let cmdline = at;
    at += pages(cmdline_len + 1);
    let efi_memmap = (efi_memmap_len > 0).then(|| {
        let o = at;
        at += pages(efi_memmap_len);
        o
    });
    let nodes = nodes
        .iter()
        .map(|n| {
            let o = at;
            at += pages(n.encoded_len());
            o
        })
        .collect();
    BootBlockLayout {
        zero_page: 0,
        cmdline,
        efi_memmap,
        nodes,
        size: at,
    }
}

/// The bytes of the boot block at physical `base`: `zero_page` (already
/// built with `setup_data_head` = `base + layout.nodes[0]`), the command line
/// and its NUL, the EFI memory map, and the nodes chained in order, the last
/// one pointing at `tail` (an already-placed chain, or 0).
pub fn build_boot_block(
    base: u64,
    layout: &BootBlockLayout,
    zero_page: &[u8],
    cmdline: &str,
    efi_memmap: Option<&[u8]>,
    nodes: &[SetupData],
    tail: u64,
) -> Result<Vec<u8>> {
    let internal = |problem: String| Error::BootParams {
        field: "boot block layout",
        problem,
    };
    if nodes.len() != layout.nodes.len() || efi_memmap.is_some() != layout.efi_memmap.is_some() {
        return Err(internal(
            "layout was made for different contents".to_string(),
        ));
    }
    let size = usize::try_from(layout.size).map_err(|_| internal("too large".into()))?;
    let mut out = vec![0u8; size];
    let mut put = |at: u64, bytes: &[u8]| -> Result<()> {
        let start = usize::try_from(at).map_err(|_| internal("offset overflow".into()))?;
        let dst = start
            .checked_add(bytes.len())
            .and_then(|end| out.get_mut(start..end))
            .ok_or_else(|| internal(format!("{} bytes at {at:#x} do not fit", bytes.len())))?;
        dst.copy_from_slice(bytes);
        Ok(())
    };
    put(layout.zero_page, zero_page)?;
    // The NUL comes from the zero fill.
    put(layout.cmdline, cmdline.as_bytes())?;
    if let (Some(map), Some(at)) = (efi_memmap, layout.efi_memmap) {
        put(at, map)?;
    }
    for (i, node) in nodes.iter().enumerate() {
        let next = match layout.nodes.get(i + 1) {
            Some(o) => base
                .checked_add(*o)
                .ok_or_else(|| internal("address overflow".into()))?,
            None => tail,
        };
        put(layout.nodes[i], &node.encode(next)?)?;
    }
    Ok(out)
}

/// One node of a setup_data chain as found by [`walk_setup_data`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundSetupData {
    pub addr: u64,
    pub kind: u32,
    pub data: Vec<u8>,
}

/// Follows a setup_data chain from `head` through `read(addr, len)` (which
/// returns the bytes at a physical address, or None if unknown), the way the
/// next kernel will. Stops at `next == 0`, or at an address `read` cannot
/// resolve (returned separately: e.g. a chain handed over by the tracer);
/// a loop is an error.
pub fn walk_setup_data(
    head: u64,
    read: impl Fn(u64, usize) -> Option<Vec<u8>>,
) -> Result<(Vec<FoundSetupData>, Option<u64>)> {
    let mut out: Vec<FoundSetupData> = Vec::new();
    let mut at = head;
    while at != 0 {
        if out.iter().any(|n| n.addr == at) {
            return Err(Error::BootParams {
                field: "setup_data",
                problem: format!("the chain loops back to {at:#x}"),
            });
        }
        let Some(h) = read(at, SETUP_DATA_HEADER_SIZE) else {
            return Ok((out, Some(at)));
        };
        let next = get64(&h, 0);
        let kind = get32(&h, 8);
        let len = get32(&h, 12) as usize;
        let data_addr = at.checked_add(SETUP_DATA_HEADER_SIZE as u64);
        let Some(data) = data_addr.and_then(|a| read(a, len)) else {
            return Err(Error::BootParams {
                field: "setup_data",
                problem: format!("node at {at:#x} claims {len} bytes that are not there"),
            });
        };
        out.push(FoundSetupData {
            addr: at,
            kind,
            data,
        });
        at = next;
    }
    Ok((out, None))
}

/// Name of a setup_data type for summaries.
pub fn setup_data_name(kind: u32) -> &'static str {
    match kind {
        SETUP_E820_EXT => "E820_EXT",
        SETUP_DTB => "DTB",
        SETUP_PCI => "PCI",
        SETUP_EFI => "EFI",
        5 => "APPLE_PROPERTIES",
        6 => "JAILHOUSE",
        7 => "CC_BLOB",
        8 => "IMA",
        SETUP_RNG_SEED => "RNG_SEED",
        10 => "KEXEC_KHO",
        _ => "other",
    }
}

fn split64(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

#[cfg(test)]
mod tests;
