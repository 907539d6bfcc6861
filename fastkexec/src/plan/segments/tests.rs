use super::*;
use crate::host::e820::{E820Entry, E820Type};
use crate::image::bootproto::{get32, get64};
use crate::plan::bootparams::{walk_setup_data, SETUP_E820_EXT, SETUP_EFI, SETUP_RNG_SEED};

use super::fixtures::{leak_kernel, TINY};

fn host(name: &str) -> HostBootInfo {
    super::fixtures::host(name, 0x42)
}

fn input<'a>(h: &'a HostBootInfo, initrd: Option<&'a [u8]>) -> UncompressedInput<'a> {
    super::fixtures::input(h, initrd, "console=ttyS0 root=/dev/vda", true)
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
    let (nodes, tail) = walk_setup_data(get64(&zp, 0x250), |a, n| plan.read_phys(a, n)).unwrap();
    assert_eq!(tail, None);
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].kind, SETUP_RNG_SEED);
    assert_eq!(nodes[0].data, vec![0x42; 32]);

    // The purgatory is patched with the real addresses.
    let purg = Purgatory::from_bytes(plan.segments.last().unwrap().data.to_vec()).unwrap();
    assert_eq!(purg.get(purgatory::ENTRY), 0x100_0000);
    assert_eq!(
        purg.get(purgatory::BOOT_PARAMS),
        plan.summary.boot_params_addr
    );
    assert_eq!(
        purg.get(purgatory::STACK_TOP),
        plan.entry + purg.stack_end() as u64
    );
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
        Purgatory::from_bytes(p.segments.last().unwrap().data.to_vec())
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
    let purg = Purgatory::from_bytes(plan.segments.last().unwrap().data.to_vec()).unwrap();
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

    let (nodes, tail) = walk_setup_data(get64(&zp, 0x250), |a, n| plan.read_phys(a, n)).unwrap();
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
        PhysRange::from_len(plain.summary.boot_params_addr, 0x10000),
        PhysRange::from_len(plain.summary.purgatory_addr, 0x2000),
        PhysRange::from_len(tracer_page, 4096),
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
    check_invariants(&plan, &h, &i.reserved);
    assert_ne!(
        plan.summary.boot_params_addr,
        plain.summary.boot_params_addr
    );
    let zp = zero_page(&plan);
    let (nodes, tail) = walk_setup_data(get64(&zp, 0x250), |a, n| plan.read_phys(a, n)).unwrap();
    assert_eq!(tail, Some(tracer_page));
    assert_eq!(nodes.last().unwrap().data, b"extra");
    assert_eq!(nodes[0].kind, SETUP_RNG_SEED);
    let purg = Purgatory::from_bytes(plan.segments.last().unwrap().data.to_vec()).unwrap();
    assert_eq!(purg.get(purgatory::TSC_OUT), tracer_page + 0x100);
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
    i.reserved = vec![PhysRange::from_len(0x100_1000, 4096)];
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
    let purg = Purgatory::from_bytes(plan.segments.last().unwrap().data.to_vec()).unwrap();
    assert_eq!(purg.get(purgatory::ENTRY), 0x3100_0000);

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
    let extra = add_boot_path(&mut plan, &i, &h.memmap[..2], "panic path", Some(window)).unwrap();
    check_invariants(&plan, &h, &[]);
    assert_eq!(plan.segments.len(), before + 2);
    assert!(window.contains_range(&PhysRange::from_len(extra.purgatory_addr, 4096)));
    let purg = Purgatory::from_bytes(plan.segments.last().unwrap().data.to_vec()).unwrap();
    assert_eq!(purg.get(purgatory::ENTRY), plan.summary.kernel_entry);
    assert_eq!(purg.get(purgatory::BOOT_PARAMS), extra.boot_params_addr);
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
    i.kernel = leak_kernel(&bytes);
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
    i.kernel = leak_kernel(&bytes);
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
    i.kernel = leak_kernel(&bytes);
    // 15 kernel + boot block + purgatory = 17.
    let err = plan_uncompressed(&i).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSegments(m) if m.starts_with("17 segments") && m.contains("at most 16")),
        "{err}"
    );
    // 14 + 2 = 16 is fine.
    let bytes = elf(&loads[..14], 0x100_0000);
    i.kernel = leak_kernel(&bytes);
    assert_eq!(plan_uncompressed(&i).unwrap().segments.len(), 16);
}

#[test]
fn kernel_outside_ram_and_no_hole_errors() {
    let h = host("qemu-seabios");
    // Kernel linked into the 640K-1M hole.
    let bytes = elf(&[(0xa_0000, 0x10, 0x1000)], 0xa_0000);
    let mut i = input(&h, None);
    i.kernel = leak_kernel(&bytes);
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
        data: vec![0; len].into(),
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
