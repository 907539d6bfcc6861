use super::*;
use std::path::Path;

/// `struct setup_header` as the kernel's uapi header declares it (packed, from 0x1f1 in
/// boot_params): field names and sizes in order. The offsets this gives are derived here, not
/// read from [`off`], so a wrong constant there cannot agree with itself.
const SETUP_HEADER_FIELDS: &[(&str, usize)] = &[
    ("setup_sects", 1),
    ("root_flags", 2),
    ("syssize", 4),
    ("ram_size", 2),
    ("vid_mode", 2),
    ("root_dev", 2),
    ("boot_flag", 2),
    ("jump", 2),
    ("header", 4),
    ("version", 2),
    ("realmode_swtch", 4),
    ("start_sys_seg", 2),
    ("kernel_version", 2),
    ("type_of_loader", 1),
    ("loadflags", 1),
    ("setup_move_size", 2),
    ("code32_start", 4),
    ("ramdisk_image", 4),
    ("ramdisk_size", 4),
    ("bootsect_kludge", 4),
    ("heap_end_ptr", 2),
    ("ext_loader_ver", 1),
    ("ext_loader_type", 1),
    ("cmd_line_ptr", 4),
    ("initrd_addr_max", 4),
    ("kernel_alignment", 4),
    ("relocatable_kernel", 1),
    ("min_alignment", 1),
    ("xloadflags", 2),
    ("cmdline_size", 4),
    ("hardware_subarch", 4),
    ("hardware_subarch_data", 8),
    ("payload_offset", 4),
    ("payload_length", 4),
    ("setup_data", 8),
    ("pref_address", 8),
    ("init_size", 4),
    ("handover_offset", 4),
    ("kernel_info_offset", 4),
];

fn derived(name: &str) -> usize {
    let mut at = 0x1f1;
    for (n, size) in SETUP_HEADER_FIELDS {
        if *n == name {
            return at;
        }
        at += size;
    }
    panic!("{name} is not a setup_header field")
}

#[test]
fn setup_header_offsets_follow_the_declared_struct() {
    for (name, ours) in [
        ("setup_sects", off::HDR),
        ("boot_flag", off::BOOT_FLAG),
        ("header", off::HEADER_MAGIC),
        ("version", off::VERSION),
        ("kernel_version", off::KERNEL_VERSION),
        ("type_of_loader", off::TYPE_OF_LOADER),
        ("loadflags", off::LOADFLAGS),
        ("ramdisk_image", off::RAMDISK_IMAGE),
        ("ramdisk_size", off::RAMDISK_SIZE),
        ("heap_end_ptr", off::HEAP_END_PTR),
        ("ext_loader_ver", off::EXT_LOADER_VER),
        ("ext_loader_type", off::EXT_LOADER_TYPE),
        ("cmd_line_ptr", off::CMD_LINE_PTR),
        ("initrd_addr_max", off::INITRD_ADDR_MAX),
        ("kernel_alignment", off::KERNEL_ALIGNMENT),
        ("relocatable_kernel", off::RELOCATABLE_KERNEL),
        ("min_alignment", off::MIN_ALIGNMENT),
        ("xloadflags", off::XLOADFLAGS),
        ("cmdline_size", off::CMDLINE_SIZE),
        ("hardware_subarch", off::HARDWARE_SUBARCH),
        ("hardware_subarch_data", off::HARDWARE_SUBARCH_DATA),
        ("payload_offset", off::PAYLOAD_OFFSET),
        ("payload_length", off::PAYLOAD_LENGTH),
        ("setup_data", off::SETUP_DATA),
        ("pref_address", off::PREF_ADDRESS),
        ("init_size", off::INIT_SIZE),
        ("handover_offset", off::HANDOVER_OFFSET),
        ("kernel_info_offset", off::KERNEL_INFO_OFFSET),
    ] {
        assert_eq!(ours, derived(name), "{name}");
    }
    // The jump at 0x200 is two bytes; its displacement byte is the second.
    assert_eq!(off::JUMP_LEN, derived("jump") + 1);
    // The header's last field ends inside the room boot_params gives it.
    assert!(derived("kernel_info_offset") + 4 <= off::HDR_END);
}

/// The offsets Documentation/arch/x86/boot.rst and zero-page.rst print, as numbers.
#[test]
fn offsets_match_the_documented_numbers() {
    let documented = [
        (off::SCREEN_INFO, 0x000),
        (off::ACPI_RSDP_ADDR, 0x070),
        (off::EXT_RAMDISK_IMAGE, 0x0c0),
        (off::EXT_RAMDISK_SIZE, 0x0c4),
        (off::EXT_CMD_LINE_PTR, 0x0c8),
        (off::EFI_INFO, 0x1c0),
        (off::E820_ENTRIES, 0x1e8),
        (off::SENTINEL, 0x1ef),
        (off::HDR, 0x1f1),
        (off::BOOT_FLAG, 0x1fe),
        (off::HEADER_MAGIC, 0x202),
        (off::VERSION, 0x206),
        (off::LOADFLAGS, 0x211),
        (off::CMD_LINE_PTR, 0x228),
        (off::XLOADFLAGS, 0x236),
        (off::PAYLOAD_OFFSET, 0x248),
        (off::SETUP_DATA, 0x250),
        (off::KERNEL_INFO_OFFSET, 0x268),
        (off::E820_TABLE, 0x2d0),
        (off::EDDBUF, 0xd00),
    ];
    for (ours, doc) in documented {
        assert_eq!(ours, doc);
    }
}

/// A real bzImage fixture read through the offsets: the magic values sit where the constants
/// say, and the version and xloadflags read there are a 64-bit kernel's.
#[test]
fn a_real_bzimage_has_its_magic_values_at_these_offsets() {
    let img = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bzImage-tiny.zstd"
    ))
    .unwrap();
    assert_eq!(crate::bytes::u16_at(&img, off::BOOT_FLAG), Some(BOOT_FLAG));
    assert_eq!(&img[off::HEADER_MAGIC..off::HEADER_MAGIC + 4], HEADER_MAGIC);
    let version = crate::bytes::u16_at(&img, off::VERSION).unwrap();
    assert!(version >= 0x020c, "{version:#x}");
    let xlf = crate::bytes::u16_at(&img, off::XLOADFLAGS).unwrap();
    assert_ne!(xlf & XLF_KERNEL_64, 0);
}

/// The lab's Debian kernels (`cargo xtask lab` fetches them to target/lab/kernels): each one's
/// header read through these offsets says what its kernel.json says — the release string the
/// kernel_version pointer leads to, a 64-bit protocol, and a payload inside the file. Ignored by
/// default because a fresh checkout has no lab kernels; `cargo test -- --ignored` runs it.
#[test]
#[ignore = "needs the lab kernels in target/lab/kernels (cargo xtask lab fetch)"]
fn the_lab_kernels_read_through_these_offsets() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab/kernels");
    let mut seen = 0;
    for k in std::fs::read_dir(&dir).unwrap() {
        let k = k.unwrap().path();
        let meta = std::fs::read_to_string(k.join("kernel.json")).unwrap();
        let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
        let img = std::fs::read(k.join("vmlinuz")).unwrap();
        let u16_at = |o| crate::bytes::u16_at(&img, o).unwrap();
        let u32_at = |o| crate::bytes::u32_at(&img, o).unwrap();
        assert_eq!(u16_at(off::BOOT_FLAG), BOOT_FLAG, "{k:?}");
        assert_eq!(&img[off::HEADER_MAGIC..off::HEADER_MAGIC + 4], HEADER_MAGIC);
        assert!(u16_at(off::VERSION) >= 0x020c, "{k:?}");
        assert_ne!(u16_at(off::XLOADFLAGS) & XLF_KERNEL_64, 0, "{k:?}");
        let release = meta["release"].as_str().unwrap();
        let text = usize::from(u16_at(off::KERNEL_VERSION)) + 0x200;
        assert!(img[text..].starts_with(release.as_bytes()), "{k:?}");
        let pm_start = (usize::from(img[off::HDR]) + 1) * 512;
        let end =
            pm_start + u32_at(off::PAYLOAD_OFFSET) as usize + u32_at(off::PAYLOAD_LENGTH) as usize;
        assert!(end <= img.len(), "{k:?}");
        assert_eq!(u32_at(off::CMDLINE_SIZE), 2047, "{k:?}");
        seen += 1;
    }
    assert!(seen > 0, "no lab kernels under {dir:?}");
}
