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
