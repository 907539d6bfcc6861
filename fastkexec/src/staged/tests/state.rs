use super::*;

#[test]
fn errors_when_the_reservation_cannot_be_used() {
    let h = host();
    // Reservation smaller than kernel + initrd.
    let initrd = vec![5u8; 30 << 20];
    let mut o = opts();
    o.reservation = PhysRange::new(0x6500_0000, 0x6600_0000);
    let e = plan_staged(&input(&h, Some(&initrd)), &PlanExtras::default(), &o).unwrap_err();
    assert!(matches!(e, Error::ReservationTooSmall { .. }), "{e}");
    // Above 4 GiB.
    o.reservation = PhysRange::new(0x1_0000_0000, 0x1_1000_0000);
    let e = plan_staged(&input(&h, None), &PlanExtras::default(), &o).unwrap_err();
    assert!(e.to_string().contains("below 4 GiB"), "{e}");
    // Not RAM (the PCI hole).
    o.reservation = PhysRange::new(0x8000_0000, 0x9000_0000);
    let e = plan_staged(&input(&h, None), &PlanExtras::default(), &o).unwrap_err();
    assert!(e.to_string().contains("not RAM"), "{e}");
}

#[test]
fn reservation_is_picked_from_status() {
    let mut st = Status::default();
    assert!(matches!(
        pick_reservation(&st),
        Err(Error::NoCrashReservation { .. })
    ));
    st.crash_kernel = vec![
        CrashRange {
            start: 0x1000_0000,
            end: 0x17ff_ffff,
            size: 0x800_0000,
        },
        CrashRange {
            start: 0x6500_0000,
            end: 0x74ff_ffff,
            size: 0x1000_0000,
        },
    ];
    assert_eq!(pick_reservation(&st).unwrap(), RES);
    st.iomem_addresses_hidden = true;
    assert!(pick_reservation(&st)
        .unwrap_err()
        .to_string()
        .contains("root"));
}

#[test]
fn kcore_headers_yield_only_ram_mappings() {
    let mut head = vec![0u8; 64 + 3 * 56];
    head[..4].copy_from_slice(b"\x7fELF");
    head[4] = 2;
    head[5] = 1;
    head[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
    head[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    head[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
    let ph = |head: &mut Vec<u8>, i: usize, kind: u32, off: u64, paddr: u64, size: u64| {
        let o = 64 + i * 56;
        head[o..o + 4].copy_from_slice(&kind.to_le_bytes());
        head[o + 8..o + 16].copy_from_slice(&off.to_le_bytes());
        head[o + 24..o + 32].copy_from_slice(&paddr.to_le_bytes());
        head[o + 40..o + 48].copy_from_slice(&size.to_le_bytes());
    };
    ph(&mut head, 0, 4, 0x1000, 0, 0x100); // PT_NOTE
    ph(&mut head, 1, 1, 0x2000, u64::MAX, 0x1000); // vmalloc: not RAM
    ph(&mut head, 2, 1, 0x7f00_0000_0000, 0x10_0000, 0x7fee_0000); // RAM
    assert_eq!(
        parse_kcore_loads(&head).unwrap(),
        vec![KcoreLoad {
            paddr: 0x10_0000,
            size: 0x7fee_0000,
            offset: 0x7f00_0000_0000
        }]
    );
    assert!(parse_kcore_loads(&head[..100]).is_err());
    assert!(parse_kcore_loads(
        b"not an elf at all, not at all, no no no no no no no no no no no no"
    )
    .is_err());
}

#[test]
fn state_round_trips_and_stale_records_are_ignored() {
    let h = host();
    let p = plan_staged(&input(&h, None), &PlanExtras::default(), &opts()).unwrap();
    let root = tempfile::tempdir().unwrap();
    let id_path = root.path().join("proc/sys/kernel/random/boot_id");
    fs::create_dir_all(id_path.parent().unwrap()).unwrap();
    fs::write(&id_path, "aaaa\n").unwrap();
    let st = record(
        &p,
        Path::new("/boot/vmlinuz"),
        None,
        "x",
        boot_id(root.path()),
    );
    write_state(root.path(), &st).unwrap();
    let back = read_state(root.path()).unwrap();
    assert_eq!(back.as_ref(), Some(&st));
    assert_eq!(back.unwrap().header(), Some(p.header));
    use std::os::unix::fs::PermissionsExt;
    let mode = |rel: &str| {
        fs::metadata(root.path().join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(STATE_FILE), 0o600);
    assert_eq!(mode("run/fastkexec"), 0o700);
    // Next boot: the record is stale, so nothing is staged now.
    fs::write(&id_path, "bbbb\n").unwrap();
    assert_eq!(read_state(root.path()).unwrap(), None);
    remove_state(root.path()).unwrap();
    assert_eq!(read_state(root.path()).unwrap(), None);
    // Garbage is an error, not "nothing staged".
    fs::write(root.path().join(STATE_FILE), "{").unwrap();
    let e = read_state(root.path()).unwrap_err().to_string();
    assert!(e.contains("not a staged-mode record"), "{e}");
}

/// Writes the record `load` leaves for a planned staged image of the test host.
fn write_planned_record(root: &Path) {
    let h = host();
    let p = plan_staged(&input(&h, None), &PlanExtras::default(), &opts()).unwrap();
    write_state(root, &record(&p, Path::new("k"), None, "", None)).unwrap();
}

#[test]
fn pre_exec_check_without_a_record_is_a_plain_exec_and_unloaded_crash_refuses() {
    let root = tempfile::tempdir().unwrap();
    assert_eq!(
        check_before_exec(root.path(), Depth::Complete).unwrap(),
        PreExec::NotStaged
    );
    write_planned_record(root.path());
    // No kcore in this tree: unverified (the trampoline still checks).
    assert!(matches!(
        check_before_exec(root.path(), Depth::Complete).unwrap(),
        PreExec::Unverified { .. }
    ));
    // The crash image was unloaded behind our back.
    let f = root.path().join("sys/kernel/kexec_crash_loaded");
    fs::create_dir_all(f.parent().unwrap()).unwrap();
    fs::write(&f, "0\n").unwrap();
    let e = check_before_exec(root.path(), Depth::Complete).unwrap_err();
    assert!(matches!(e, Error::StagedReplaced { .. }), "{e}");
    assert!(e.to_string().contains("exec refused"), "{e}");
}

/// Issue 13, defect 11: a loader that writes a few pages of the staged kernel without
/// touching the header or the sampled words passes the trampoline's (and the old `exec`'s)
/// sampled check; `exec`'s complete check reads every byte back and catches it.
#[test]
fn exec_check_is_complete_where_the_trampoline_samples() {
    let h = host();
    let initrd = vec![5u8; 1 << 20];
    let p = plan_staged(&input(&h, Some(&initrd)), &PlanExtras::default(), &opts()).unwrap();
    let st = record(&p, Path::new("k"), None, "", None);
    assert_eq!(st.segments.len(), p.crash.segments.len());
    let mut mem = Mem::of(&p.crash.segments);
    let total: u64 = st.segments.iter().map(|s| s.len).sum();
    assert_eq!(check_segments(&st.segments, &mut mem).unwrap(), Ok(total));
    // The streamed sum is the purgatory's.
    for (seg, sum) in p.crash.segments.iter().zip(&st.segments) {
        let mut padded = seg.data.to_vec();
        padded.resize(sum.len as usize, 0);
        assert_eq!(purgatory::checksum(&padded), sum.sum);
    }
    // A page of the kernel, rewritten everywhere but at its block's sampled word.
    let hdr = StagedHeader::decode(
        &p.crash
            .read_phys(p.header.addr, p.header.len as usize)
            .unwrap(),
    )
    .unwrap();
    let r = &hdr.sampled[0];
    let (sample_off, _) = r.samples[0];
    for at in (0..PAGE).step_by(8).filter(|&o| o != sample_off) {
        mem.poke(r.addr + at, 0xcc);
    }
    assert_eq!(
        check_staged(&p.header, &mut mem, 1).unwrap(),
        0,
        "the sampled check cannot see it"
    );
    let found = check_segments(&st.segments, &mut mem).unwrap();
    assert!(
        found.as_ref().is_err_and(|m| m.contains("differs")),
        "{found:?}"
    );
    // One byte in the zero fill past a segment's data counts too.
    let mut mem = Mem::of(&p.crash.segments);
    let seg = p
        .crash
        .segments
        .iter()
        .find(|s| s.memsz > s.data.len() as u64 + 8)
        .expect("a segment with zero fill");
    mem.poke(seg.mem + seg.memsz - 1, 1);
    assert!(check_segments(&st.segments, &mut mem).unwrap().is_err());
}

/// Issue 13, defect 5 (c): a record that cannot be read, or of another version, is not
/// "nothing staged": `exec` (and `load`, `unload`) stop and name the file.
#[test]
fn an_unreadable_or_other_version_record_is_an_error_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join(STATE_FILE);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let h = host();
    let p = plan_staged(&input(&h, None), &PlanExtras::default(), &opts()).unwrap();
    let good = serde_json::to_value(record(&p, Path::new("k"), None, "", None)).unwrap();
    let mut newer = good.clone();
    newer["version"] = serde_json::json!(STATE_VERSION + 1);
    let mut wrong_type = good.clone();
    wrong_type["header_addr"] = serde_json::json!("high");
    for (what, bytes) in [
        ("garbage", b"{".to_vec()),
        ("empty", Vec::new()),
        ("newer", serde_json::to_vec(&newer).unwrap()),
        ("wrong type", serde_json::to_vec(&wrong_type).unwrap()),
    ] {
        fs::write(&path, &bytes).unwrap();
        let e = check_before_exec(root.path(), Depth::Complete)
            .map(|found| format!("{found:?}"))
            .expect_err(what)
            .to_string();
        assert!(e.contains(&path.display().to_string()), "{what}: {e}");
        assert!(e.contains("fastkexec unload"), "{what}: {e}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "{what}: left as it was");
    }
    // Unreadable (a directory in its place).
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let e = check_before_exec(root.path(), Depth::Complete)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
}

/// Issue 13, defect 5 (a): a load of another mode over a staged load unloads the staged
/// crash image it displaced (when still ours) and removes the record, and says so; a
/// crash kernel of someone else's is left alone.
#[test]
fn a_load_of_another_mode_clears_the_staged_load_it_displaced() {
    let (unload, msg) =
        displaced_decision(Some(true), Ok(PreExec::Intact { bytes: 0, ms: 0.1 })).unwrap();
    assert!(unload);
    assert!(msg.contains("unloaded it and removed its record"), "{msg}");
    assert!(msg.contains("free for kdump"), "{msg}");
    let (unload, msg) = displaced_decision(
        Some(true),
        Err(Error::StagedReplaced {
            reservation: "r".into(),
            problem: "nonce differs".into(),
        }),
    )
    .unwrap();
    assert!(!unload, "someone else's crash kernel stays");
    assert!(msg.contains("someone else's"), "{msg}");
    let (unload, _) = displaced_decision(Some(false), Ok(PreExec::NotStaged)).unwrap();
    assert!(!unload, "nothing loaded: nothing to unload");
    // On a machine: a record and a crash image that can be checked (no kcore here:
    // unverified, i.e. unloaded as ours). The unload itself needs kexec; the record goes.
    let root = tempfile::tempdir().unwrap();
    write_planned_record(root.path());
    let f = root.path().join("sys/kernel/kexec_crash_loaded");
    fs::create_dir_all(f.parent().unwrap()).unwrap();
    fs::write(&f, "0\n").unwrap();
    let msg = reconcile_after_load(root.path(), &Status::default())
        .unwrap()
        .unwrap();
    assert!(msg.contains("earlier staged load is over"), "{msg}");
    assert_eq!(read_state(root.path()).unwrap(), None);
    assert!(!root.path().join(STATE_FILE).exists());
}

/// `unload` after the staged crash image was unloaded elsewhere (`kexec -p -u`, a kdump
/// service stopping) says so, instead of claiming another kernel is loaded.
#[test]
fn unload_tells_a_vanished_crash_image_from_a_replaced_one() {
    let replaced = |problem: &str| {
        Err(Error::StagedReplaced {
            reservation: "0x10000000-0x1fffffff".into(),
            problem: problem.into(),
        })
    };
    let (unload, msg) = unload_decision(
        Some(false),
        replaced("no crash image is loaded any more (it was unloaded since)"),
    )
    .unwrap();
    assert!(!unload);
    assert!(msg.contains("no crash kernel is loaded any more"), "{msg}");
    assert!(msg.contains("stale") && msg.contains("cleared"), "{msg}");
    assert!(!msg.contains("not the one fastkexec staged"), "{msg}");

    let (unload, msg) =
        unload_decision(Some(true), replaced("the staged header checksum differs")).unwrap();
    assert!(!unload);
    assert!(msg.contains("not the one fastkexec staged"), "{msg}");
    assert!(msg.contains("left it loaded"), "{msg}");
    assert!(msg.contains("checksum differs"), "{msg}");

    let (unload, msg) =
        unload_decision(Some(true), Ok(PreExec::Intact { bytes: 3, ms: 1.0 })).unwrap();
    assert!(unload, "{msg}");
    assert!(msg.contains("also unloaded"), "{msg}");
    // A failure to read the state is passed on, not turned into a message.
    let err = unload_decision(
        Some(true),
        Err(Error::Plan {
            problem: "x".into(),
        }),
    );
    assert!(err.is_err());
}
