use super::*;
use crate::blobs::trampoline::{
    FAIL_HEADER, FAIL_HEADER_SUM, FAIL_NONCE, FAIL_RANGE_SUM, FAIL_SAMPLE,
};
use crate::host::status::CrashRange;
use std::collections::BTreeMap;

const RES: PhysRange = PhysRange {
    start: 0x6500_0000,
    end: 0x7500_0000,
};

fn host() -> HostBootInfo {
    crate::plan::segments::fixtures::host("qemu-seabios", 7)
}

fn input<'a>(h: &'a HostBootInfo, initrd: Option<&'a [u8]>) -> UncompressedInput<'a> {
    let cmdline = "console=ttyS0 crashkernel=256M root=/dev/vda";
    crate::plan::segments::fixtures::input(h, initrd, cmdline, false)
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
            let mut d = s.data.to_vec();
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
            data: vec![0x11; 5000].into(),
            mem: 0x6500_0000,
            memsz: 0x2_0000,
            what: "big".into(),
        },
        Segment {
            data: vec![0x22; 100].into(),
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
    let t = Trampoline::from_bytes(p.trampoline.data.to_vec()).unwrap();
    assert_eq!(t.get(crate::blobs::trampoline::TARGET), p.crash.entry);
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
    let purg = purgatory::Purgatory::from_bytes(seg.data.to_vec()).unwrap();
    assert_eq!(purg.get(purgatory::ENTRY), p.crash.summary.kernel_entry);
    p.crash
        .read_phys(purg.get(purgatory::BOOT_PARAMS), 4096)
        .unwrap()
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
    let ram = |m: &[(u64, u64, u32)]| -> u64 { m.iter().filter(|e| e.2 == 1).map(|e| e.1).sum() };
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
    inp.reserved = vec![PhysRange::from_len(page, 4096)];
    let extras = PlanExtras {
        setup_data: Vec::new(),
        setup_data_tail: page,
        tsc_out: page + 1264,
    };
    let mut o = opts();
    o.trampoline_tsc_out = page + 1296;
    let p = plan_staged(&inp, &extras, &o).unwrap();
    let t = Trampoline::from_bytes(p.trampoline.data.to_vec()).unwrap();
    assert_eq!(t.get(crate::blobs::trampoline::TSC_OUT), page + 1296);
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

// The reservation, /proc/kcore, the record and the checks around exec and unload.
mod state;
