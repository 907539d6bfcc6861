use super::*;
use crate::record::handoff::tests::{
    ev, header, nodes, pages, with_last_exit, with_trampoline, OLD_BOOT,
};
use crate::record::handoff::{parse, parse_uuid};
use fastkexec_common::{BUS_NAME_LEN, DEVICE_NAME_LEN};

/// TSC at 2 GHz; CLOCK_MONOTONIC ns n ↔ TSC 10_000_000 + 2(n - 5_000_000)
/// (the fit of `header()`).
pub(crate) fn tsc(mono_ns: u64) -> u64 {
    10_000_000 + 2 * (mono_ns - 5_000_000)
}

fn dev(ts: u64, ptr: u64, name: &str, bus: &str, drv: &str) -> Event {
    let mut e = ev(EventKind::DEVICE_ENTER, ts, ptr, b"");
    e.name[..name.len()].copy_from_slice(name.as_bytes());
    e.name[DEVICE_NAME_LEN..DEVICE_NAME_LEN + bus.len()].copy_from_slice(bus.as_bytes());
    let d = DEVICE_NAME_LEN + BUS_NAME_LEN;
    e.name[d..d + drv.len()].copy_from_slice(drv.as_bytes());
    e
}

/// A 6.1-like reboot: request at mono 5 ms, reboot(2) +1 ms, ... .
pub(crate) fn events() -> Vec<Event> {
    let ms = 1_000_000;
    vec![
        ev(EventKind::REBOOT_ENTER, 6 * ms, 1, b"fastkexec"),
        ev(EventKind::KERNEL_KEXEC, 6 * ms + 100_000, 1, b"fastkexec"),
        ev(
            EventKind::NOTIFIER_ENTER,
            6 * ms + 200_000,
            0xffff_ffff_8100_1004,
            b"fastkexec",
        ),
        ev(EventKind::NOTIFIER_EXIT, 6 * ms + 700_000, 1, b"fastkexec"),
        ev(EventKind::DEVICE_SHUTDOWN_ENTER, 7 * ms, 1, b"fastkexec"),
        dev(7 * ms + 50_000, 0xa, "0000:00:02.0", "pci", "virtio-pci"),
        dev(9 * ms, 0xb, "serial8250", "platform", "serial8250"),
        dev(9 * ms + 10_000, 0xb, "serial8250", "platform", "serial8250"),
        dev(9 * ms + 500_000, 0xc, "vda", "", ""),
        ev(EventKind::DEVICE_SHUTDOWN_EXIT, 10 * ms, 1, b"fastkexec"),
        ev(
            EventKind::MIGRATE_TO_REBOOT_CPU,
            10 * ms + 10_000,
            1,
            b"fastkexec",
        ),
        ev(
            EventKind::MIGRATE_TO_REBOOT_CPU_EXIT,
            10 * ms + 20_000,
            1,
            b"fastkexec",
        ),
        ev(EventKind::MACHINE_SHUTDOWN, 11 * ms, 1, b"fastkexec"),
        ev(EventKind::MACHINE_SHUTDOWN_EXIT, 12 * ms, 1, b"fastkexec"),
        ev(EventKind::MACHINE_KEXEC, 12 * ms + 100_000, 1, b"fastkexec"),
    ]
}

pub(crate) fn inputs(record: std::result::Result<Record, RecordError>) -> Inputs {
    let ms = 2_000_000; // ticks per ms
                        // Purgatory at mono 13 ms .. 13.5 ms; the new kernel's clock zero at
                        // mono 15 ms; Run /init at printk 300 ms; the init's mark at 320 ms;
                        // report at 400 ms (the anchor then).
    let zero = tsc(15_000_000);
    Inputs {
        record,
        facts: BootFacts {
            boot_id: parse_uuid("11111111-2222-3333-4444-555555555555"),
            cmdline_boot_id: Some(OLD_BOOT.into()),
            now_tsc: zero + 400 * ms,
        },
        kmsg: vec![
            KmsgLine {
                ts_us: 0,
                text: "Linux version 6.1.0".into(),
            },
            KmsgLine {
                ts_us: 300_000,
                text: "Run /init as init process".into(),
            },
            KmsgLine {
                ts_us: 320_000,
                text: "FKLAB: new-init".into(),
            },
        ],
        anchor: Some(Anchor {
            tsc: zero + 400 * ms,
            printk_ns: 400_000_000,
            width: 20,
        }),
        until_kmsg: Some("FKLAB: new-init".into()),
        now_fit: None,
        top: 2,
        release: Some("6.1.0-56-cloud-amd64".into()),
        initcalls: Capture::NotRequested,
        pid1: None,
    }
}

pub(crate) fn good_record(events: &[Event]) -> Record {
    // Every probe attached; syscore_shutdown never fires (6.1).
    let h = header(2);
    parse(&nodes(&pages(
        &h,
        events,
        Some((tsc(13_000_000), tsc(13_500_000))),
    )))
    .unwrap()
}

/// Found by the `handoff_report` fuzz target (with overflow checks): without a record the
/// rate comes from the fit taken now, which nothing bounds; a rate of 2^64 ticks per ns
/// saturates the printk → TSC conversion at i128::MIN, and `anchor − that` overflowed.
#[test]
fn an_absurd_fit_taken_now_saturates_instead_of_overflowing() {
    let mut inp = inputs(Err(RecordError::Missing("none".into())));
    inp.now_fit = Some(Fit {
        tsc_a: 0,
        ns_a: 0,
        tsc_b: u64::MAX,
        ns_b: 1,
        err_ns: 0,
    });
    inp.anchor = Some(Anchor {
        tsc: 5,
        printk_ns: 0,
        width: 1,
    });
    inp.kmsg.push(KmsgLine {
        ts_us: u64::MAX,
        text: "Run /init as init process".into(),
    });
    inp.kmsg.retain(|l| l.ts_us != 300_000);
    let r = build(&inp);
    assert_eq!(r.record.status, "missing");
    let mut at = 0u64;
    for p in &r.phases {
        assert_eq!(p.start_ns, at);
        at += p.duration_ns;
    }
    assert_eq!(at, r.total_ns);
}

/// Forged records that pass every checksum (they are unkeyed) with clock figures no machine
/// produces: the report refuses them by name instead of panicking or wrapping.
#[test]
fn a_forged_record_with_absurd_clock_figures_is_refused_not_a_panic() {
    let purgatory = Some((tsc(13_000_000), tsc(13_500_000)));
    let mut whole_range = header(2);
    whole_range.calib = Fit {
        tsc_a: 0,
        ns_a: 0,
        tsc_b: u64::MAX,
        ns_b: u64::MAX,
        err_ns: 0,
    };
    let mut late = events();
    late.push(ev(
        EventKind::SYSCORE_SHUTDOWN,
        u64::MAX - 1,
        1,
        b"fastkexec",
    ));
    let mut slow = header(2);
    // 1 kHz: far below any TSC.
    slow.calib.tsc_b = slow.calib.tsc_a + 1;
    for (what, h, evs, field) in [
        (
            "calibration {0,0,MAX,MAX}",
            whole_range.clone(),
            late.clone(),
            "calib",
        ),
        ("an event at MAX-1", header(2), late.clone(), "ts_ns"),
        ("a 1 kHz TSC", slow, events(), "calib"),
    ] {
        let rec = parse(&nodes(&pages(&h, &evs, purgatory)));
        let rep = build(&inputs(rec));
        assert_eq!(rep.record.status, "implausible", "{what}: {:?}", rep.record);
        let detail = rep.record.detail.clone().unwrap_or_default();
        assert!(
            detail.contains("implausible record") && detail.contains(field),
            "{what}: {detail}"
        );
        assert!(!rep.has_record(), "{what}");
    }
}

#[test]
fn a_staged_reboot_splits_relocation_at_the_trampoline() {
    // machine_kexec at mono 12.1 ms, the trampoline at 12.4 .. 12.9 ms,
    // the purgatory at 13 ms.
    let h = header(2);
    let p = pages(&h, &events(), Some((tsc(13_000_000), tsc(13_500_000))));
    let p = with_trampoline(p, tsc(12_400_000), tsc(12_900_000));
    let r = build(&inputs(Ok(parse(&nodes(&p)).unwrap())));
    assert!(r.has_record(), "{:?}", r.record);
    let get = |n: &str| r.phases.iter().find(|p| p.name == n).map(|p| p.duration_ns);
    assert_eq!(get("relocation"), Some(300_000));
    assert_eq!(get("trampoline"), Some(600_000));
    assert_eq!(r.record.trampoline_check_ns, Some(500_000));
    assert_eq!(r.spans.kexec_to_purgatory_ns, Some(900_000));
    assert_eq!(
        r.phases.iter().map(|p| p.duration_ns).sum::<u64>(),
        r.total_ns
    );
    assert!(!r.unseen.iter().any(|u| u.phase == "trampoline"));
    // An older tracer's record (no mode bits): the trampoline's stamps say staged.
    assert_eq!(r.record.mode, Some(LoadMode::Staged));
    assert!(r.to_string().contains(" (staged): record ok"), "{r}");
}

#[test]
fn relocation_starts_when_the_machine_kexec_probe_returns() {
    // machine_kexec stamped at mono 12.1 ms, its probe returned at 12.4 ms.
    let h = header(2);
    let p = pages(&h, &events(), Some((tsc(13_000_000), tsc(13_500_000))));
    let r = build(&inputs(Ok(parse(&nodes(&with_last_exit(
        p.clone(),
        12_400_000,
    )))
    .unwrap())));
    let get = |n: &str| r.phases.iter().find(|p| p.name == n).map(|p| p.duration_ns);
    assert_eq!(get("relocation"), Some(600_000));
    assert_eq!(r.spans.kexec_to_purgatory_ns, Some(600_000));
    assert!(
        r.notes.iter().any(|n| n.contains("its own 0.300 ms")),
        "{:?}",
        r.notes
    );
    assert_eq!(
        r.phases.iter().map(|p| p.duration_ns).sum::<u64>(),
        r.total_ns
    );
    // An exit stamp before the machine_kexec stamp (another probe's) is
    // not believed.
    let r = build(&inputs(Ok(
        parse(&nodes(&with_last_exit(p, 12_000_000))).unwrap()
    )));
    let get = |n: &str| r.phases.iter().find(|p| p.name == n).map(|p| p.duration_ns);
    assert_eq!(get("relocation"), Some(900_000));
    assert!(!r.notes.iter().any(|n| n.contains("probe returned")));
}

#[test]
fn initcalls_land_under_kernel_boot_by_either_trace_clock() {
    let ms = 2_000_000u64; // ticks per ms
    let zero = tsc(15_000_000);
    let line = |ts: &str, what: &str, f: &str, ret: &str| {
        format!("  swapper/0-1 [000] ..... {ts}: initcall_{what}: func={f}+0x0/0x10{ret}\n")
    };
    // Two initcalls 100..140 ms and 150..160 ms after the new kernel's clock zero.
    let at = |t: u64| (zero + t * ms).to_string();
    let on_tsc = [
        line(&at(100), "start", "a", ""),
        line(&at(140), "finish", "a", " ret=0"),
        line(&at(150), "start", "b", ""),
        line(&at(160), "finish", "b", " ret=-19"),
    ]
    .concat();
    // The same in the local clock: raw sched_clock, 0 at the clock zero.
    let on_local = on_tsc
        .replace(&at(100), "0.100000")
        .replace(&at(140), "0.140000")
        .replace(&at(150), "0.150000")
        .replace(&at(160), "0.160000");
    for (clock, text) in [("x86-tsc", on_tsc), ("local", on_local)] {
        let mut inp = inputs(Ok(good_record(&events())));
        inp.initcalls = Capture::Read {
            clock: Some(clock.into()),
            trace: initcalls::parse_trace(&text),
        };
        let r = build(&inp);
        let ic = &r.initcalls;
        assert_eq!(ic.status, "ok", "{clock}: {ic:?}");
        // The timeline starts at the request, 10 ms before the clock zero.
        assert_eq!(ic.top[0].func, "a", "{clock}");
        assert_eq!(ic.top[0].start_ns, 110_000_000, "{clock}");
        assert_eq!(ic.top[0].duration_ns, 40_000_000, "{clock}");
        assert_eq!(ic.top[1].ret, -19, "{clock}");
        assert_eq!(ic.sum_ns, 50_000_000, "{clock}");
        assert_eq!(ic.kernel_boot_ns, Some(300_000_000), "{clock}");
        assert_eq!(ic.unexplained_ns, Some(250_000_000), "{clock}");
        assert_eq!(ic.before_first_ns, Some(100_000_000), "{clock}");
        assert!(
            r.to_string().contains("slowest initcalls (2 of 2)"),
            "{clock}"
        );
    }
    // Not asked: said, and nothing shown.
    let r = build(&inputs(Ok(good_record(&events()))));
    assert_eq!(r.initcalls.status, "not_requested");
    assert!(r.initcalls.top.is_empty());
}

#[test]
fn full_report_tiles_from_request_to_the_init_mark() {
    let r = build(&inputs(Ok(good_record(&events()))));
    assert!(r.has_record(), "{:?}", r.record);
    assert_eq!(r.record.mode, Some(LoadMode::Uncompressed));
    let sum: u64 = r.phases.iter().map(|p| p.duration_ns).sum();
    assert_eq!(sum, r.total_ns);
    // Request at mono 5 ms, init mark at mono 15 ms + 320 ms.
    assert_eq!(r.total_ns, 330_000_000);
    assert_eq!(r.end.kind, "kmsg");
    let get = |n: &str| r.phases.iter().find(|p| p.name == n).map(|p| p.duration_ns);
    assert_eq!(get("userspace_shutdown"), Some(1_000_000));
    assert_eq!(get("device_shutdown"), Some(3_000_000));
    assert_eq!(get("relocation"), Some(900_000));
    assert_eq!(get("purgatory"), Some(500_000));
    assert_eq!(get("kernel_early_boot"), Some(1_500_000));
    assert_eq!(get("kernel_boot"), Some(300_000_000));
    assert_eq!(get("user_space"), Some(20_000_000));
    assert!(r
        .unseen
        .iter()
        .any(|u| u.phase == "syscore_shutdown" && u.why.contains("not called")));
    assert_eq!(r.spans.to_run_init_ns, Some(310_000_000));
    assert_eq!(r.spans.old_kernel_ns, Some(7_100_000));
    assert_eq!(r.spans.kexec_to_purgatory_ns, Some(900_000));
    assert!(r
        .unseen
        .iter()
        .any(|u| u.phase == "trampoline" && u.why.contains("not loaded in staged mode")));
    // Devices: virtio-pci is slowest (50 µs → 9 ms), serial counted once.
    assert_eq!(r.device_count, 3);
    assert_eq!(r.devices.len(), 2);
    assert_eq!(r.devices[0].device, "0000:00:02.0");
    assert_eq!(r.devices[0].driver, "virtio-pci");
    assert_eq!(r.devices[0].duration_ns, 1_950_000);
    assert_eq!(r.device_prologue_ns, Some(50_000));
    assert_eq!(r.notifiers[0].symbol, "mce_reboot");
    assert_eq!(r.notifiers[0].duration_ns, 500_000);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["total_ns"], 330_000_000u64);
    assert_eq!(json["phases"][0]["name"], "userspace_shutdown");
    assert!(json["phases"][0]["start_ns"].is_u64());
    let table = r.to_string();
    assert!(table.contains("device shutdown"), "{table}");
    assert!(table.contains("virtio-pci"), "{table}");
}

#[test]
fn without_the_init_mark_the_report_moment_ends_it() {
    let mut i = inputs(Ok(good_record(&events())));
    i.until_kmsg = Some("never printed".into());
    let r = build(&i);
    assert_eq!(r.end.kind, "report");
    assert_eq!(r.total_ns, 410_000_000);
    assert!(r.notes.iter().any(|n| n.contains("never printed")));
}

#[test]
fn a_missing_record_shows_the_new_kernel_and_names_the_rest() {
    let mut i = inputs(Err(RecordError::Missing("none".into())));
    i.now_fit = Some(header(2).calib);
    let r = build(&i);
    assert!(!r.has_record());
    assert_eq!(r.record.status, "missing");
    let names: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["kernel_boot", "user_space"]);
    assert_eq!(r.total_ns, 320_000_000);
    assert!(r.unseen.iter().any(|u| u.phase == "device_shutdown"));
    assert!(r.to_string().contains("only this kernel's own phases"));
}

#[test]
fn stale_and_torn_records_are_not_used() {
    // From an earlier boot: the command line names another.
    let mut i = inputs(Ok(good_record(&events())));
    i.facts.cmdline_boot_id = Some("99999999-2222-3333-4444-555555555555".into());
    let r = build(&i);
    assert_eq!(r.record.status, "stale");
    assert!(r
        .record
        .detail
        .as_deref()
        .unwrap()
        .contains("earlier reboot"));
    assert!(r.phases.iter().all(|p| p.name != "device_shutdown"));
    // A purgatory jump long before this kernel's clock started.
    let h = header(2);
    let far = parse(&nodes(&pages(
        &h,
        &events(),
        Some((tsc(13_000_000), tsc(13_500_000))),
    )))
    .unwrap();
    let mut i = inputs(Ok(far));
    let shift = 60 * 2_000_000_000u64;
    i.anchor = i.anchor.map(|a| Anchor {
        tsc: a.tsc + shift,
        ..a
    });
    i.facts.now_tsc += shift;
    let r = build(&i);
    assert_eq!(r.record.status, "stale", "{:?}", r.record);
    // Torn: a flipped byte in an event.
    let mut p = pages(&header(2), &events(), None);
    p[1][40] ^= 1;
    let r = build(&inputs(parse(&nodes(&p))));
    assert_eq!(r.record.status, "torn");
    assert!(r
        .record
        .detail
        .as_deref()
        .unwrap()
        .contains("rejected as a whole"));
}

#[test]
fn the_clock_zero_comes_from_the_stable_sched_clock_offset() {
    // printk time ran 1 ms slow before sched_clock was marked stable: raw
    // sched_clock 0 lies at printk time -1 ms in the stable frame, 0.5 ms
    // after the purgatory's jump.
    let mut i = inputs(Ok(good_record(&events())));
    i.kmsg.insert(
        1,
        KmsgLine {
            ts_us: 200_000,
            text: "sched_clock: Marking stable (199000000, 0)->(200000000, -1000000)".into(),
        },
    );
    let r = build(&i);
    let get = |n: &str| r.phases.iter().find(|p| p.name == n).map(|p| p.duration_ns);
    assert_eq!(get("kernel_early_boot"), Some(500_000));
    assert_eq!(get("kernel_boot"), Some(301_000_000));
    let sum: u64 = r.phases.iter().map(|p| p.duration_ns).sum();
    assert_eq!(sum, r.total_ns);
    assert!(r.notes.iter().all(|n| !n.contains("Marking stable")));
    assert_eq!(
        sched_clock_offset(
            "sched_clock: Marking stable (5457147530, 35164314)->(8178520286, -2686208442)"
        ),
        Some(-2_686_208_442)
    );
    assert_eq!(
        sched_clock_offset("sched_clock: Marking stable (1, 2)"),
        None
    );
}

#[test]
fn kmsg_records_parse() {
    let l = parse_kmsg_record("6,339,5140900,-;Run /init as init process\n SUBSYSTEM=x\n").unwrap();
    assert_eq!(l.ts_us, 5_140_900);
    assert_eq!(l.text, "Run /init as init process");
    assert_eq!(parse_kmsg_record("garbage"), None);
    assert_eq!(parse_kmsg_record("6,1,x,-;t"), None);
    assert_eq!(parse_kmsg_record("6,1,7,-;a;b").unwrap().text, "a;b");
}

#[test]
fn the_end_is_the_default_target_where_pid_1_is_systemd() {
    let mut notes = Vec::new();
    let t = Pid1::Systemd(units_start::tests::times());
    let (tsc, text) =
        super::marks::systemd_end(Some(&t), Some(units_start::tests::fit()), &mut notes).unwrap();
    assert_eq!(tsc, 1_000_000 + 2 * 3_900_000_000);
    assert_eq!(text, "multi-user.target reached");
    assert!(notes.is_empty());
    let busybox = Pid1::NotSystemd("init".into());
    assert_eq!(
        super::marks::systemd_end(Some(&busybox), Some(units_start::tests::fit()), &mut notes),
        None
    );
    assert_eq!(
        notes,
        ["PID 1 is not systemd (init): the timeline ends when report ran"]
    );
    assert_eq!(
        super::marks::systemd_end(None, Some(units_start::tests::fit()), &mut notes),
        None
    );
    assert_eq!(notes.len(), 1);
}
