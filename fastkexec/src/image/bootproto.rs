//! The x86 boot protocol's byte layout, written once: the offsets of `struct boot_params` (the
//! zero page) and of the setup header inside it, which a bzImage carries at the same offsets of
//! its first sectors; its magic values and flag bits; and the little-endian access the zero page
//! builder uses (Documentation/arch/x86/boot.rst, zero-page.rst). The bzImage parser reads the
//! header through [`crate::bytes`], which never panics on a short file.

/// Byte offsets inside boot_params (zero-page.rst); the setup header's fields (boot.rst) sit
/// at the same offsets in a bzImage file.
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
    /// The setup header starts here, with setup_sects.
    pub const HDR: usize = 0x1f1;
    pub const BOOT_FLAG: usize = 0x1fe;
    /// The byte after the 2-byte jump at 0x200 is the jump's displacement; the header ends
    /// where the jump lands: 0x202 + that byte.
    pub const JUMP_LEN: usize = 0x201;
    pub const HEADER_MAGIC: usize = 0x202;
    pub const VERSION: usize = 0x206;
    /// kernel_version: offset of a NUL-terminated string, minus 0x200.
    pub const KERNEL_VERSION: usize = 0x20e;
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
    pub const PAYLOAD_OFFSET: usize = 0x248;
    pub const PAYLOAD_LENGTH: usize = 0x24c;
    pub const SETUP_DATA: usize = 0x250;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    pub const HANDOVER_OFFSET: usize = 0x264;
    pub const KERNEL_INFO_OFFSET: usize = 0x268;
    /// First byte after the setup header's reserved room (edd_mbr_sig_buffer).
    pub const HDR_END: usize = 0x290;
    pub const E820_TABLE: usize = 0x2d0;
    pub const EDDBUF: usize = 0xd00;
}

/// boot_flag at [`off::BOOT_FLAG`].
pub const BOOT_FLAG: u16 = 0xaa55;
/// The setup header's magic at [`off::HEADER_MAGIC`] (boot protocol 2.00+).
pub const HEADER_MAGIC: &[u8; 4] = b"HdrS";
/// xloadflags bit: the kernel has the legacy 64-bit entry point at 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// xloadflags bit: kernel/boot_params/cmdline/ramdisk may live above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// loadflags bit: protected-mode code is loaded at 0x100000.
pub const LOADED_HIGH: u8 = 1 << 0;

// The zero page is a fixed 4096-byte buffer and every offset above lies inside it, so the
// writers index it directly.

pub fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// Little-endian u32 at `o`; 0 past the end.
pub fn get32(b: &[u8], o: usize) -> u32 {
    crate::bytes::u32_at(b, o).unwrap_or(0)
}

/// Little-endian u64 at `o`; 0 past the end.
pub fn get64(b: &[u8], o: usize) -> u64 {
    crate::bytes::u64_at(b, o).unwrap_or(0)
}

#[cfg(test)]
mod tests;
