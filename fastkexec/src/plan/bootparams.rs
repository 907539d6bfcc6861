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
use crate::image::bzimage::SetupHeader;

/// Byte offsets inside boot_params (arch/x86/include/uapi/asm/bootparam.h).
pub mod off {
    pub const SCREEN_INFO: usize = 0x000;
    pub const SCREEN_INFO_SIZE: usize = 0x040;
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    pub const EFI_INFO: usize = 0x1c0;
    pub const EFI_INFO_SIZE: usize = 32;
    pub const EFI_LOADER_SIGNATURE: usize = 0x1c0;
    pub const EFI_SYSTAB: usize = 0x1c4;
    pub const EFI_MEMDESC_SIZE: usize = 0x1c8;
    pub const EFI_MEMDESC_VERSION: usize = 0x1cc;
    pub const EFI_MEMMAP: usize = 0x1d0;
    pub const EFI_MEMMAP_SIZE: usize = 0x1d4;
    pub const EFI_SYSTAB_HI: usize = 0x1d8;
    pub const EFI_MEMMAP_HI: usize = 0x1dc;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const SECURE_BOOT: usize = 0x1ec;
    pub const SENTINEL: usize = 0x1ef;
    pub const HDR: usize = 0x1f1;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const HEADER_MAGIC: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const EXT_LOADER_VER: usize = 0x226;
    pub const EXT_LOADER_TYPE: usize = 0x227;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const MIN_ALIGNMENT: usize = 0x235;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const HARDWARE_SUBARCH: usize = 0x23c;
    pub const HARDWARE_SUBARCH_DATA: usize = 0x240;
    pub const SETUP_DATA: usize = 0x250;
    /// First byte after the setup header's reserved room (edd_mbr_sig_buffer).
    pub const HDR_END: usize = 0x290;
    pub const E820_TABLE: usize = 0x2d0;
    pub const EDDBUF: usize = 0xd00;
}

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
/// loadflags: the protected-mode kernel is loaded at 1 MiB or above.
pub const LOADED_HIGH: u8 = 0x01;
/// Protocol version we claim in a synthesised header: 2.12, the first with
/// xloadflags and the ext_* fields we fill.
pub const SYNTH_PROTOCOL_VERSION: u16 = 0x020c;
/// x86 COMMAND_LINE_SIZE (2048) less the NUL, as header.S advertises.
pub const SYNTH_CMDLINE_SIZE: u32 = 2047;
/// header.S's initrd_addr_max for x86-64 kernels.
pub const SYNTH_INITRD_ADDR_MAX: u32 = 0x7fff_ffff;
const XLF_KERNEL_64: u16 = 1 << 0;
const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
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

const PAGE: u64 = 4096;

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

fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// Little-endian u32 at `o`; 0 past the end.
pub fn get32(b: &[u8], o: usize) -> u32 {
    b.get(o..o.saturating_add(4))
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Little-endian u64 at `o`; 0 past the end.
pub fn get64(b: &[u8], o: usize) -> u64 {
    b.get(o..o.saturating_add(8)).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The zero page input of most tests: `h`'s own map, command line at
    /// 0x1000, nothing else.
    fn plain(h: &HostBootInfo) -> ZeroPageInput<'_> {
        ZeroPageInput {
            host: h,
            setup_header: None,
            e820: &h.memmap,
            cmdline_addr: 0x1000,
            initrd: None,
            setup_data_head: 0,
            efi: None,
        }
    }
    use crate::host::hostinfo;
    use std::path::PathBuf;

    fn host(name: &str) -> HostBootInfo {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/host")
            .join(name);
        let mut h = hostinfo::read(&root).unwrap();
        h.rng_seed = Some([0x5a; 32]);
        h
    }

    fn get16(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }

    #[test]
    fn synthesised_header_and_loader_fields() {
        let h = host("qemu-seabios");
        let zp = build_zero_page(&ZeroPageInput {
            cmdline_addr: 0x7fff_d000,
            initrd: Some((0x7e00_0000, 0x123_4567)),
            setup_data_head: 0x7fff_e000,
            ..plain(&h)
        })
        .unwrap();
        assert_eq!(zp.len(), 4096);
        assert_eq!(get16(&zp, 0x1fe), 0xaa55);
        assert_eq!(&zp[0x202..0x206], b"HdrS");
        assert_eq!(get16(&zp, 0x206), 0x020c);
        assert_eq!(zp[0x210], 0xff);
        assert_eq!(zp[0x211], 0x01);
        assert_eq!(get32(&zp, 0x218), 0x7e00_0000);
        assert_eq!(get32(&zp, 0x21c), 0x123_4567);
        assert_eq!(get32(&zp, 0x0c0), 0);
        assert_eq!(get32(&zp, 0x0c4), 0);
        assert_eq!(get32(&zp, 0x228), 0x7fff_d000);
        assert_eq!(get32(&zp, 0x0c8), 0);
        assert_eq!(get32(&zp, 0x22c), 0x7fff_ffff);
        assert_eq!(get16(&zp, 0x236), 0x3);
        assert_eq!(get32(&zp, 0x238), 2047);
        assert_eq!(get64(&zp, 0x250), 0x7fff_e000);
        assert_eq!(zp[0x1ef], 0);
        // No RSDP known on SeaBIOS: 0 lets the kernel scan.
        assert_eq!(get64(&zp, 0x070), 0);
        // efi_info stays zero on a legacy machine.
        assert!(zp[0x1c0..0x1e0].iter().all(|&b| b == 0));
        // screen_info copied from the running kernel (VGA text 80x25).
        let hb = h.boot_params.as_ref().unwrap();
        assert_eq!(&zp[0..0x40], &hb[0..0x40]);
        assert_eq!(zp[0x07], 80);
        // The e820 table: 7 entries, packed.
        assert_eq!(zp[0x1e8], 7);
        for (i, e) in h.memmap.iter().enumerate() {
            let o = 0x2d0 + 20 * i;
            assert_eq!(get64(&zp, o), e.addr);
            assert_eq!(get64(&zp, o + 8), e.size);
            assert_eq!(get32(&zp, o + 16), e.kind.raw());
        }
        assert!(zp[0x2d0 + 20 * 7..0xd00].iter().all(|&b| b == 0));
        // Nothing from the running kernel's own loader leaks through.
        assert_ne!(get32(&zp, 0x218), get32(hb, 0x218));
    }

    #[test]
    fn ext_fields_carry_the_high_halves() {
        let h = host("qemu-seabios");
        let zp = build_zero_page(&ZeroPageInput {
            cmdline_addr: 0x1_2345_6000,
            initrd: Some((0x3_f000_0000, 0x1_0000_0010)),
            ..plain(&h)
        })
        .unwrap();
        assert_eq!(get32(&zp, 0x228), 0x2345_6000);
        assert_eq!(get32(&zp, 0x0c8), 0x1);
        assert_eq!(get32(&zp, 0x218), 0xf000_0000);
        assert_eq!(get32(&zp, 0x0c0), 0x3);
        assert_eq!(get32(&zp, 0x21c), 0x10);
        assert_eq!(get32(&zp, 0x0c4), 0x1);
    }

    fn bzimage_header(version: u16, xloadflags: u16) -> SetupHeader {
        // A header as the bzImage parser hands it over: image[0x1f1..0x26c].
        let mut raw = vec![0u8; 0x26c - 0x1f1];
        let at = |o: usize| o - 0x1f1;
        raw[at(0x1f1)] = 27;
        raw[at(0x1fe)..at(0x200)].copy_from_slice(&0xaa55u16.to_le_bytes());
        raw[at(0x200)] = 0xeb;
        raw[at(0x201)] = 0x6a;
        raw[at(0x202)..at(0x206)].copy_from_slice(b"HdrS");
        raw[at(0x206)..at(0x208)].copy_from_slice(&version.to_le_bytes());
        raw[at(0x211)] = 0x81;
        raw[at(0x214)..at(0x218)].copy_from_slice(&0x10_0000u32.to_le_bytes());
        raw[at(0x22c)..at(0x230)].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        raw[at(0x236)..at(0x238)].copy_from_slice(&xloadflags.to_le_bytes());
        raw[at(0x238)..at(0x23c)].copy_from_slice(&4095u32.to_le_bytes());
        raw[at(0x260)..at(0x264)].copy_from_slice(&0x358_0000u32.to_le_bytes());
        SetupHeader {
            setup_sects: 27,
            version,
            loadflags: 0x81,
            xloadflags,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: true,
            min_alignment: 21,
            cmdline_size: 4095,
            hardware_subarch: 0,
            payload_offset: 0,
            payload_length: 0,
            pref_address: 0x100_0000,
            init_size: 0x358_0000,
            handover_offset: 0,
            kernel_info_offset: 0,
            raw,
        }
    }

    #[test]
    fn bzimage_header_is_copied_then_loader_fields_overwritten() {
        let h = host("qemu-seabios");
        let hdr = bzimage_header(0x020f, 0x7f);
        let caps = header_caps(Some(&hdr));
        assert_eq!(caps.cmdline_size, 4095);
        assert!(caps.above_4g);
        let zp = build_zero_page(&ZeroPageInput {
            setup_header: Some(&hdr),
            cmdline_addr: 0x9_0000,
            ..plain(&h)
        })
        .unwrap();
        assert_eq!(get16(&zp, 0x206), 0x020f);
        assert_eq!(get32(&zp, 0x238), 4095);
        assert_eq!(get32(&zp, 0x260), 0x358_0000);
        assert_eq!(get32(&zp, 0x214), 0x10_0000);
        // loadflags: CAN_USE_HEAP from the image is dropped.
        assert_eq!(zp[0x211], 0x01);
        assert_eq!(zp[0x210], 0xff);
        assert_eq!(get32(&zp, 0x218), 0);
        // The copy stops at the header's end.
        assert!(zp[0x26c..0x290].iter().all(|&b| b == 0));

        // Old protocol: no ext fields, boot.rst defaults.
        let old = bzimage_header(0x0205, 0);
        let caps = header_caps(Some(&old));
        assert_eq!(caps.cmdline_size, 255);
        assert!(!caps.above_4g);
        let err = build_zero_page(&ZeroPageInput {
            setup_header: Some(&old),
            cmdline_addr: 0x9_0000,
            initrd: Some((0x1_0000_0000, 4096)),
            ..plain(&h)
        })
        .unwrap_err();
        assert!(err.to_string().contains("ramdisk_image"), "{err}");

        let mut broken = bzimage_header(0x020f, 3);
        broken.raw[0x202 - 0x1f1] = b'X';
        assert!(build_zero_page(&ZeroPageInput {
            setup_header: Some(&broken),
            cmdline_addr: 0x9_0000,
            ..plain(&h)
        })
        .is_err());
    }

    #[test]
    fn large_map_splits_into_zero_page_and_e820_ext() {
        let h = host("efi-large");
        assert!(h.memmap.len() > 128);
        let ext = e820_ext_node(&h.memmap).unwrap();
        assert_eq!(ext.kind, 1);
        assert_eq!(ext.data.len(), (h.memmap.len() - 128) * 20);
        for (i, e) in h.memmap[128..].iter().enumerate() {
            assert_eq!(&ext.data[i * 20..i * 20 + 20], &e.to_boot_bytes());
        }
        assert_eq!(e820_ext_node(&h.memmap[..128]), None);
        let zp = build_zero_page(&plain(&h)).unwrap();
        assert_eq!(zp[0x1e8], 128);
        let last = 0x2d0 + 127 * 20;
        assert_eq!(get64(&zp, last), h.memmap[127].addr);
        // The table ends at 0xcd0; _pad8 up to eddbuf stays zero.
        assert_eq!(get64(&zp, 0xcd0 - 12), h.memmap[127].size);
        assert!(zp[0xcd0..off::EDDBUF].iter().all(|&b| b == 0));
    }

    #[test]
    fn efi_handoff_fills_efi_info_and_setup_efi() {
        let h = host("efi-large");
        let parts = efi_parts(&h).unwrap();
        assert_eq!(parts.runtime_regions, 12);
        assert_eq!(parts.memmap.len(), 12 * 40);
        assert_eq!(parts.setup.kind, SETUP_EFI);
        assert_eq!(parts.setup.data.len(), 96);
        assert_eq!(get64(&parts.setup.data, 0), 0x7f7a1018);
        assert_eq!(get64(&parts.setup.data, 8), 0);
        assert_eq!(get64(&parts.setup.data, 16), 0x7f7a0c18);
        assert_eq!(get64(&parts.setup.data, 24), 0x7f5d0000);
        let zp = build_zero_page(&ZeroPageInput {
            efi: Some((&parts, 0x1_0000_3000)),
            ..plain(&h)
        })
        .unwrap();
        assert_eq!(&zp[0x1c0..0x1c4], b"EL64");
        assert_eq!(get32(&zp, 0x1c4), 0x7f7a0018);
        assert_eq!(get32(&zp, 0x1c8), 40);
        assert_eq!(get32(&zp, 0x1cc), 1);
        assert_eq!(get32(&zp, 0x1d0), 0x3000);
        assert_eq!(get32(&zp, 0x1dc), 0x1);
        assert_eq!(get32(&zp, 0x1d4), 12 * 40);
        assert_eq!(zp[0x1ec], 2);
        assert_eq!(get64(&zp, 0x070), 0x7f77e014);

        // Without the runtime map: dropped, with the reason.
        let mut h2 = h.clone();
        h2.efi_runtime = None;
        match efi_parts(&h2) {
            Err(EfiHandoff::Dropped { reason }) => assert!(reason.contains("runtime-map")),
            other => panic!("{other:?}"),
        }
        let mut h3 = h.clone();
        h3.boot_params.as_mut().unwrap()[0x1d4..0x1d8].fill(0);
        assert!(matches!(efi_parts(&h3), Err(EfiHandoff::Dropped { .. })));
        let legacy = host("qemu-seabios");
        assert_eq!(efi_parts(&legacy), Err(EfiHandoff::NotEfi));
    }

    #[test]
    fn hardware_subarch_comes_from_the_running_kernel() {
        let mut h = host("qemu-seabios");
        h.boot_params.as_mut().unwrap()[0x23c] = 3; // X86_SUBARCH_XEN
        let zp = build_zero_page(&plain(&h)).unwrap();
        assert_eq!(get32(&zp, 0x23c), 3);
        h.boot_params = None;
        let zp = build_zero_page(&plain(&h)).unwrap();
        assert_eq!(get32(&zp, 0x23c), 0);
        assert!(zp[..0x40].iter().all(|&b| b == 0));
    }

    #[test]
    fn boot_block_chains_nodes_and_walks_back() {
        let nodes = vec![
            SetupData {
                kind: SETUP_E820_EXT,
                data: vec![1; 40],
            },
            rng_seed_node(&[7; 32]),
            SetupData {
                kind: 0x1234,
                data: vec![9; 5000],
            },
        ];
        let layout = layout_boot_block(100, 480, &nodes);
        assert_eq!(layout.cmdline, 0x1000);
        assert_eq!(layout.efi_memmap, Some(0x2000));
        assert_eq!(layout.nodes, vec![0x3000, 0x4000, 0x5000]);
        assert_eq!(layout.size, 0x7000);
        let base = 0x7000_0000u64;
        let zp = vec![0xaa; 4096];
        let block = build_boot_block(
            base,
            &layout,
            &zp,
            &"x".repeat(100),
            Some(&[0xee; 480]),
            &nodes,
            0xdead_0000,
        )
        .unwrap();
        assert_eq!(block.len(), 0x7000);
        assert_eq!(&block[0x1000..0x1064], "x".repeat(100).as_bytes());
        assert_eq!(block[0x1064], 0);
        let read = |addr: u64, len: usize| -> Option<Vec<u8>> {
            let o = usize::try_from(addr.checked_sub(base)?).ok()?;
            block.get(o..o + len).map(<[u8]>::to_vec)
        };
        let (found, tail) = walk_setup_data(base + 0x3000, read).unwrap();
        assert_eq!(tail, Some(0xdead_0000));
        assert_eq!(found.len(), 3);
        for (f, n) in found.iter().zip(&nodes) {
            assert_eq!(f.kind, n.kind);
            assert_eq!(f.data, n.data);
        }
        assert_eq!(found[1].addr, base + 0x4000);

        // A loop is reported, not followed forever.
        let looped = |addr: u64, len: usize| -> Option<Vec<u8>> {
            let mut v = vec![0u8; len];
            if len == 16 {
                v[0..8].copy_from_slice(&addr.to_le_bytes());
            }
            Some(v)
        };
        assert!(walk_setup_data(0x1000, looped).is_err());
        // Mismatched layout is refused.
        assert!(build_boot_block(base, &layout, &zp, "x", None, &nodes, 0).is_err());
    }

    #[test]
    fn setup_data_encoding() {
        let n = SetupData {
            kind: 9,
            data: vec![1, 2, 3],
        };
        let b = n.encode(0x1122_3344_5566_7788).unwrap();
        assert_eq!(b.len(), 19);
        assert_eq!(get64(&b, 0), 0x1122_3344_5566_7788);
        assert_eq!(get32(&b, 8), 9);
        assert_eq!(get32(&b, 12), 3);
        assert_eq!(&b[16..], &[1, 2, 3]);
        assert_eq!(setup_data_name(9), "RNG_SEED");
    }
}
