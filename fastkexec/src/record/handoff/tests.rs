use super::*;
use fastkexec_common::{flags, EventKind};

pub(crate) const OLD_BOOT: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

pub(crate) fn header(page_count: u32) -> HeaderInfo {
    HeaderInfo {
        page_count,
        flags: flags::REQUEST_STAMPED | flags::DEVICE_NAMES,
        boot_id: parse_uuid(OLD_BOOT).unwrap(),
        kernel_release: "6.1.0-56-cloud-amd64".into(),
        attached: EventKind::ALL.iter().fold(0, |m, k| m | k.bit()),
        fentry: EventKind::KERNEL_KEXEC.bit(),
        request_tsc: 10_000_000,
        request_mono_ns: 5_000_000,
        calib: Fit {
            tsc_a: 10_000_000,
            ns_a: 5_000_000,
            tsc_b: 12_000_000,
            ns_b: 6_000_000,
            err_ns: 20,
        },
        notifiers: vec![(0xffff_ffff_8100_1000, "mce_reboot".into())],
    }
}

pub(crate) fn ev(kind: EventKind, ts_ns: u64, arg: u64, name: &[u8]) -> Event {
    let mut e = Event::ZERO;
    e.kind = kind.0;
    e.ts_ns = ts_ns;
    e.arg = arg;
    e.name[..name.len()].copy_from_slice(name);
    e
}

/// Pages exactly as the tracer and the probes leave them, plus the
/// purgatory's stamps.
pub(crate) fn pages(
    h: &HeaderInfo,
    events: &[Event],
    purgatory: Option<(u64, u64)>,
) -> Vec<Vec<u8>> {
    let mut hp = encode_header(h);
    let mut out: Vec<Vec<u8>> = (1..h.page_count)
        .map(|i| {
            let mut p = vec![0u8; PAGE_SIZE];
            p[8..32].copy_from_slice(&event_page_prefix(i));
            p
        })
        .collect();
    let mut sum = 0u64;
    for (slot, e) in events.iter().enumerate() {
        let (page, off) = slot_place(slot as u64);
        if let Some(p) = out.get_mut(page as usize - 1) {
            p[off..off + 88].copy_from_slice(&event_bytes(e));
            sum = sum.wrapping_add(event_hash(slot as u32, e));
        }
    }
    put(&mut hp, OFF_CLAIMED, &(events.len() as u64).to_le_bytes());
    put(&mut hp, OFF_EVENT_SUM, &sum.to_le_bytes());
    if let Some((entry, exit)) = purgatory {
        put(&mut hp, OFF_PURGATORY, &PURGATORY_MAGIC.to_le_bytes());
        put(&mut hp, OFF_PURGATORY + 8, &entry.to_le_bytes());
        put(&mut hp, OFF_PURGATORY + 16, &exit.to_le_bytes());
    }
    out.insert(0, hp);
    out
}

/// Adds the staged trampoline's stamps to the header page.
pub(crate) fn with_trampoline(mut pages: Vec<Vec<u8>>, entry: u64, exit: u64) -> Vec<Vec<u8>> {
    put(
        &mut pages[0],
        OFF_TRAMPOLINE,
        &TRAMPOLINE_MAGIC.to_le_bytes(),
    );
    put(&mut pages[0], OFF_TRAMPOLINE + 8, &entry.to_le_bytes());
    put(&mut pages[0], OFF_TRAMPOLINE + 16, &exit.to_le_bytes());
    pages
}

/// Sets the latest probe's exit stamp in the header page.
pub(crate) fn with_last_exit(mut pages: Vec<Vec<u8>>, ns: u64) -> Vec<Vec<u8>> {
    put(&mut pages[0], OFF_LAST_EXIT, &ns.to_le_bytes());
    pages
}

/// The pages as sysfs nodes (data without the setup_data header).
pub(crate) fn nodes(pages: &[Vec<u8>]) -> Vec<Node> {
    pages
        .iter()
        .enumerate()
        .map(|(i, p)| Node {
            nr: i as u32 + 3,
            kind: SETUP_TYPE_TRACE,
            data: p[16..].to_vec(),
        })
        .collect()
}

fn sample_events() -> Vec<Event> {
    let mut v = vec![
        ev(EventKind::REBOOT_ENTER, 5_100_000, 1, b"fastkexec"),
        ev(EventKind::KERNEL_KEXEC, 5_200_000, 1, b"fastkexec"),
    ];
    for i in 0..40u64 {
        v.push(ev(
            EventKind::DEVICE_ENTER,
            5_300_000 + i * 1000,
            0xffff_8880_0000_0000 + i,
            b"dev",
        ));
    }
    v.push(ev(EventKind::MACHINE_KEXEC, 5_400_000, 1, b"fastkexec"));
    v
}

#[test]
fn a_sealed_record_round_trips() {
    let h = header(3);
    let events = sample_events();
    let rec = parse(&nodes(&pages(&h, &events, Some((13_000_000, 13_100_000))))).unwrap();
    assert_eq!(rec.header, h);
    assert_eq!(rec.events, events);
    assert_eq!(rec.dropped, 0);
    assert_eq!(
        rec.purgatory,
        Some(PurgatoryStamps {
            entry_tsc: 13_000_000,
            exit_tsc: 13_100_000,
            verified: 0
        })
    );
    // Nodes may arrive in any order (sysfs numbering follows the chain).
    let mut n = nodes(&pages(&h, &events, None));
    n.reverse();
    let rec = parse(&n).unwrap();
    assert_eq!(rec.events.len(), events.len());
    assert_eq!(rec.purgatory, None);
    assert_eq!(rec.trampoline, None);
}

#[test]
fn trampoline_stamps_are_read_and_ordered() {
    let h = header(3);
    let events = sample_events();
    let base = pages(&h, &events, Some((13_000_000, 13_100_000)));
    let rec = parse(&nodes(&with_trampoline(
        base.clone(),
        12_900_000,
        12_950_000,
    )))
    .unwrap();
    assert_eq!(
        rec.trampoline,
        Some(TrampolineStamps {
            entry_tsc: 12_900_000,
            exit_tsc: 12_950_000,
            result: 0
        })
    );
    let r = parse(&nodes(&with_trampoline(
        base.clone(),
        12_950_000,
        12_900_000,
    )));
    assert!(
        matches!(&r, Err(RecordError::Torn(s)) if s.contains("backwards")),
        "{r:?}"
    );
    let r = parse(&nodes(&with_trampoline(base, 12_900_000, 13_050_000)));
    assert!(
        matches!(&r, Err(RecordError::Torn(s)) if s.contains("after the purgatory")),
        "{r:?}"
    );
    // A flipped magic makes the stamps absent, not wrong.
    let mut p = with_trampoline(pages(&h, &events, None), 1, 2);
    p[0][OFF_TRAMPOLINE] ^= 1;
    assert_eq!(parse(&nodes(&p)).unwrap().trampoline, None);
}

#[test]
fn the_load_mode_rides_in_the_flags_and_older_records_still_say_it() {
    use fastkexec_common::flags::{LOAD_MASK, LOAD_STAGED, LOAD_UNCOMPRESSED};
    let events = sample_events();
    let with_flags = |extra: u32| HeaderInfo {
        flags: header(3).flags | extra,
        ..header(3)
    };
    let purgatory = Some((13_000_000, 13_100_000));
    // Written by this fastkexec: the header says it (checksummed like every flag).
    for (mode, bits) in [
        (LoadMode::Uncompressed, LOAD_UNCOMPRESSED),
        (LoadMode::Staged, LOAD_STAGED),
    ] {
        assert_eq!(load_mode_flags(mode), bits);
        let h = with_flags(bits);
        let p = encode_header(&h);
        // Bits 3 and 4 of the little-endian flags word at byte 40.
        assert_eq!(p[40] & 0x18, bits as u8);
        let rec = parse(&nodes(&pages(&h, &events, purgatory))).unwrap();
        assert_eq!(rec.load_mode(), Some(mode));
    }
    assert_eq!(load_mode_flags(LoadMode::File), 0);
    // Written before the bits existed: the trampoline's stamps mean staged.
    let old = header(3);
    assert_eq!(old.flags & LOAD_MASK, 0);
    let plain = parse(&nodes(&pages(&old, &events, purgatory))).unwrap();
    assert_eq!(plain.load_mode(), Some(LoadMode::Uncompressed));
    let staged = parse(&nodes(&with_trampoline(
        pages(&old, &events, purgatory),
        12_900_000,
        12_950_000,
    )))
    .unwrap();
    assert_eq!(staged.load_mode(), Some(LoadMode::Staged));
    // A value no writer uses is not guessed.
    let odd = parse(&nodes(&pages(&with_flags(LOAD_MASK), &events, purgatory))).unwrap();
    assert_eq!(odd.load_mode(), None);
}

#[test]
fn every_flipped_byte_is_rejected_as_torn() {
    let h = header(3);
    let events = sample_events();
    let good = pages(&h, &events, Some((13_000_000, 13_100_000)));
    // Flip one byte at a time in every covered area: the header's user
    // part, its checksum, the probe counters, every event, the unused
    // slots and page tails.
    let mut checked = 0;
    for pi in 0..good.len() {
        for off in SETUP_DATA_HEADER_SIZE..PAGE_SIZE {
            // Fields nobody can check: the purgatory area (its magic is
            // the check: a flip makes the stamps absent, not wrong),
            // probe_ns and state (informational).
            if pi == 0 && (OFF_PROBE_NS..OFF_LAST_EXIT + 8).contains(&off) {
                continue;
            }
            let mut bad = good.clone();
            bad[pi][off] ^= 0x10;
            let r = parse(&nodes(&bad));
            assert!(
                matches!(r, Err(RecordError::Torn(_))),
                "page {pi} byte {off}: {r:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 3 * 4000);
}

#[test]
fn missing_and_partial_records_are_named() {
    let e = parse(&[]).unwrap_err();
    assert!(
        matches!(&e, RecordError::Missing(s) if s.contains("file mode")),
        "{e}"
    );
    let h = header(3);
    let good = nodes(&pages(&h, &sample_events(), None));
    // A page lost.
    let r = parse(&good[..2]).unwrap_err();
    assert!(r.to_string().contains("3 pages"), "{r}");
    // The header lost.
    let r = parse(&good[1..]).unwrap_err();
    assert!(r.to_string().contains("header page is missing"), "{r}");
    // A page twice (and one missing).
    let mut dup = good.clone();
    dup[2] = dup[1].clone();
    let r = parse(&dup).unwrap_err();
    assert!(r.to_string().contains("taken"), "{r}");
    // Short data.
    let mut short = good.clone();
    short[1].data.pop();
    assert!(parse(&short)
        .unwrap_err()
        .to_string()
        .contains("4079 bytes"));
    // Other node types are ignored.
    let mut mixed = good.clone();
    mixed.push(Node {
        nr: 0,
        kind: 9,
        data: vec![1, 2, 3],
    });
    assert!(parse(&mixed).is_ok());
}

#[test]
fn claimed_but_unwritten_and_overflow() {
    let h = header(2);
    let events: Vec<Event> = (0..40)
        .map(|i| ev(EventKind::DEVICE_ENTER, 100 + i, i, b"d"))
        .collect();
    // 40 events into one page of 32: 8 dropped, sum over the stored ones.
    let rec = parse(&nodes(&pages(&h, &events, None))).unwrap();
    assert_eq!(rec.events.len(), 32);
    assert_eq!(rec.dropped, 8);
    // A claimed slot left empty: the reboot overtook the probe.
    let mut p = pages(&h, &events[..3], None);
    put(&mut p[0], OFF_CLAIMED, &4u64.to_le_bytes());
    let r = parse(&nodes(&p)).unwrap_err();
    assert!(r.to_string().contains("never written"), "{r}");
}

fn facts(cmdline_id: Option<&str>) -> BootFacts {
    BootFacts {
        boot_id: parse_uuid("11111111-2222-3333-4444-555555555555"),
        cmdline_boot_id: cmdline_id.map(str::to_string),
        now_tsc: 50_000_000,
    }
}

#[test]
fn records_of_another_boot_are_stale() {
    let h = header(2);
    let rec = parse(&nodes(&pages(&h, &sample_events()[..3], Some((20, 30))))).unwrap();
    check_chain(&rec, &facts(Some(OLD_BOOT))).unwrap();
    // Written by an earlier boot than the one that started this kernel.
    let e = check_chain(&rec, &facts(Some("99999999-2222-3333-4444-555555555555"))).unwrap_err();
    assert!(
        matches!(&e, RecordError::Stale(s) if s.contains("earlier reboot")),
        "{e}"
    );
    // Nothing on the command line ties it to this boot.
    let e = check_chain(&rec, &facts(None)).unwrap_err();
    assert!(e.to_string().contains("nothing ties"), "{e}");
    // The record claims to be from this very boot.
    let mut f = facts(Some(OLD_BOOT));
    f.boot_id = parse_uuid(OLD_BOOT);
    assert!(check_chain(&rec, &f)
        .unwrap_err()
        .to_string()
        .contains("this very boot"));
    // The TSC was reset since.
    let mut f = facts(Some(OLD_BOOT));
    f.now_tsc = 10;
    assert!(check_chain(&rec, &f)
        .unwrap_err()
        .to_string()
        .contains("reset"));
}

#[test]
fn uuids_and_cmdline() {
    let b = parse_uuid(OLD_BOOT).unwrap();
    assert_eq!(format_uuid(&b), OLD_BOOT);
    assert_eq!(parse_uuid("nope"), None);
    assert_eq!(parse_uuid("0f1e2d3c4b5a69788796a5b4c3d2e1f0"), None);
    assert_eq!(parse_uuid("zz1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"), None);
    assert_eq!(
        cmdline_boot_id("console=ttyS0 fastkexec.boot_id=a fastkexec.boot_id=b quiet").as_deref(),
        Some("b")
    );
    assert_eq!(cmdline_boot_id("console=ttyS0"), None);
}

#[test]
fn sysfs_nodes_are_read_in_order_and_filtered() {
    let t = tempfile::tempdir().unwrap();
    assert!(read_nodes(t.path()).unwrap().is_empty());
    let h = header(2);
    let p = pages(&h, &sample_events()[..2], None);
    let dir = setup_data_dir(t.path());
    for (nr, kind, data) in [
        (0u32, 9u32, vec![7u8; 32]),
        (1, SETUP_TYPE_TRACE, p[0][16..].to_vec()),
        (2, SETUP_TYPE_TRACE, p[1][16..].to_vec()),
    ] {
        let d = dir.join(nr.to_string());
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("type"), format!("{kind:#x}\n")).unwrap();
        fs::write(d.join("data"), &data).unwrap();
    }
    let n = read_nodes(t.path()).unwrap();
    assert_eq!(n.iter().map(|n| n.nr).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(parse(&n).unwrap().events.len(), 2);
    fs::write(dir.join("0/type"), "bogus").unwrap();
    assert!(read_nodes(t.path()).is_err());
}
