use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn boot(id: &str, scale: u64) -> Boot {
    Boot {
        boot_id: id.to_string(),
        phases: vec![
            Phase::new("device_shutdown", 6_000_000 * scale),
            Phase::new("purgatory", 40_000 * scale),
            Phase::new("kernel init", 900_000_000 * scale),
        ],
        total_ns: 2_000_000_000 * scale,
        reboot_unix_ns: 1_700_000_000_000_000_000 + scale,
        mode: "uncompressed".into(),
        units: Vec::new(),
    }
}

#[test]
fn each_boot_is_folded_once_and_refolding_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (f, st) = fold_boot(d.path(), &boot("a", 1)).unwrap();
    assert_eq!(f, Fold::Folded);
    assert_eq!(st.boots(), 1);
    let before = fs::read(d.path().join(STATE_FILE)).unwrap();
    let (f, st) = fold_boot(d.path(), &boot("a", 2)).unwrap();
    assert_eq!(f, Fold::AlreadyFolded);
    assert_eq!(st.boots(), 1);
    assert_eq!(
        fs::read(d.path().join(STATE_FILE)).unwrap(),
        before,
        "a re-fold rewrote the state"
    );
    let (f, st) = fold_boot(d.path(), &boot("b", 2)).unwrap();
    assert_eq!(f, Fold::Folded);
    assert_eq!(st.boots(), 2);
    let reread = State::open(d.path()).unwrap();
    for name in ["device_shutdown", "purgatory", "kernel init"] {
        let p = reread.phase(name).unwrap();
        assert_eq!(p.count(), 2, "{name}");
    }
    let ds = reread.phase("device_shutdown").unwrap();
    assert_eq!(ds.sum_ns(), 18_000_000);
    assert_eq!(reread.total().unwrap().count(), 2);
    assert_eq!(reread.total().unwrap().sum_ns(), 6_000_000_000);
    assert_eq!(reread.last().unwrap().boot_id, "b");
    assert!(reread.contains("a") && reread.contains("b") && !reread.contains("c"));
    let names: Vec<_> = reread.phases().iter().map(|p| p.name()).collect();
    assert_eq!(names, ["device_shutdown", "purgatory", "kernel init"]);
    assert!(reread.warnings().is_empty());
    assert_eq!(reread.corrupt_files(), 0);
}

#[test]
fn values_keep_three_significant_digits_across_a_save() {
    let d = tempfile::tempdir().unwrap();
    let mut st = State::new();
    let values = [1u64, 999, 123_456_789, 5_000_000_000, MAX_DURATION_NS];
    for (i, v) in values.iter().enumerate() {
        let b = Boot {
            boot_id: format!("id{i}"),
            phases: vec![Phase::new("p", *v)],
            total_ns: *v,
            reboot_unix_ns: 0,
            mode: String::new(),
            units: Vec::new(),
        };
        st.fold(&b).unwrap();
    }
    StateDir::lock(d.path()).unwrap().save(&st).unwrap();
    let st = State::open(d.path()).unwrap();
    let h = st.phase("p").unwrap().histogram();
    assert_eq!(h.len(), values.len() as u64);
    for v in values {
        let got = h.highest_equivalent(v);
        assert!(
            got >= v && (got - v) as f64 <= v as f64 / 1000.0,
            "{v} -> {got}"
        );
        assert_eq!(h.count_at(v), 1);
    }
    assert_eq!(st.phase("p").unwrap().sum_ns(), values.iter().sum::<u64>());
}

#[test]
fn names_an_earlier_build_stored_read_back_as_machine_names_and_merge() {
    // Boot "a" as earlier builds folded it (the text report's names), boot "b" as this
    // one does: one state holding both spellings of two phases.
    let mut st = State::new();
    let legacy = Boot {
        phases: vec![
            Phase::new("kernel early boot", 1_500_000),
            Phase::new("device shutdown", 6_000_000),
            Phase::new("kernel init", 7),
        ],
        ..boot("a", 1)
    };
    let current = Boot {
        phases: vec![
            Phase::new("device_shutdown", 9_000_000),
            Phase::new("kernel_early_boot", 2_500_000),
        ],
        ..boot("b", 1)
    };
    st.fold(&legacy).unwrap();
    st.fold(&current).unwrap();
    assert_eq!(st.phases().len(), 5);
    let back = State::from_json(&st.to_json().unwrap()).ok().unwrap();
    let names: Vec<&str> = back.phases().iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        ["kernel_early_boot", "device_shutdown", "kernel init"]
    );
    let early = back.phase("kernel_early_boot").unwrap();
    assert_eq!((early.count(), early.sum_ns()), (2, 4_000_000));
    assert_eq!(
        early.histogram().max(),
        early.histogram().highest_equivalent(2_500_000)
    );
    let ds = back.phase("device_shutdown").unwrap();
    assert_eq!((ds.count(), ds.sum_ns()), (2, 15_000_000));
    assert_eq!(back.phase("kernel init").unwrap().count(), 1);
    assert_eq!(back.boots(), 2);
    // The last boot's figures are renamed too.
    let legacy_last = State::from_json(&{
        let mut one = State::new();
        one.fold(&legacy).unwrap();
        one.to_json().unwrap()
    })
    .ok()
    .unwrap();
    let last: Vec<&str> = legacy_last
        .last()
        .unwrap()
        .phases
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        last,
        ["kernel_early_boot", "device_shutdown", "kernel init"]
    );
}

#[test]
fn a_phase_missing_from_a_boot_keeps_its_count() {
    let mut st = State::new();
    st.fold(&boot("a", 1)).unwrap();
    let mut b = boot("b", 1);
    b.phases.retain(|p| p.name != "purgatory");
    st.fold(&b).unwrap();
    assert_eq!(st.phase("purgatory").unwrap().count(), 1);
    assert_eq!(st.phase("device_shutdown").unwrap().count(), 2);
    assert_eq!(st.boots(), 2);
}

#[test]
fn bad_boots_are_refused_whole() {
    let mut st = State::new();
    let cases: Vec<(Boot, &str)> = vec![
        (boot("", 1), "boot id"),
        (boot("a\nb", 1), "boot id"),
        (boot(&"x".repeat(200), 1), "boot id"),
        (
            Boot {
                phases: vec![Phase::new("p", 1), Phase::new("p", 2)],
                ..boot("a", 1)
            },
            "twice",
        ),
        (
            Boot {
                phases: vec![Phase::new("ok", 1), Phase::new("", 2)],
                ..boot("a", 1)
            },
            "phase name",
        ),
        (
            Boot {
                phases: vec![Phase::new("ok", 1), Phase::new("p", MAX_DURATION_NS + 1)],
                ..boot("a", 1)
            },
            "more than a day",
        ),
        (
            Boot {
                total_ns: u64::MAX,
                ..boot("a", 1)
            },
            "total_ns",
        ),
        (
            Boot {
                mode: "a\u{7}".into(),
                ..boot("a", 1)
            },
            "mode",
        ),
    ];
    for (b, want) in cases {
        let err = st.fold(&b).unwrap_err().to_string();
        assert!(err.contains(want), "{err} lacks {want}");
    }
    assert_eq!(st.boots(), 0);
    assert!(st.phases().is_empty() && st.total().is_none() && st.last().is_none());
}

#[test]
fn an_empty_or_missing_state_is_empty() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope");
    let st = State::open(&missing).unwrap();
    assert_eq!(st.boots(), 0);
    assert!(!missing.exists(), "a reader created the state directory");
    let st = State::open(d.path()).unwrap();
    assert!(st.phases().is_empty() && st.total().is_none() && st.last().is_none());
    // An empty state survives a save and a load.
    let sd = StateDir::lock(d.path()).unwrap();
    sd.save(&st).unwrap();
    let again = sd.load().unwrap();
    assert_eq!(again.boots(), 0);
    assert!(again.warnings().is_empty());
}

fn corrupt_cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut st = State::new();
    st.fold(&boot("a", 1)).unwrap();
    st.fold(&boot("b", 3)).unwrap();
    let good = String::from_utf8(st.to_json().unwrap()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&good).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = v.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    vec![
        ("empty file", vec![]),
        ("truncated", good.as_bytes()[..good.len() / 2].to_vec()),
        ("garbage", b"\x00\xffnot json".to_vec()),
        ("other format", with(&|v| v["format"] = "x".into())),
        (
            "no version",
            with(&|v| v["version"] = serde_json::Value::Null),
        ),
        ("boots mismatch", with(&|v| v["boots"] = 5.into())),
        (
            "bad base64",
            with(&|v| v["phases"][0]["hdr"] = "!!!!".into()),
        ),
        (
            "not a histogram",
            with(&|v| v["phases"][0]["hdr"] = "AAAAAAAA".into()),
        ),
        (
            "duplicate phase",
            with(&|v| v["phases"][1]["name"] = v["phases"][0]["name"].clone()),
        ),
        ("sum off", with(&|v| v["phases"][0]["sum_ns"] = 1.into())),
        (
            "forgotten ids",
            with(&|v| v["folded_boot_ids"] = serde_json::json!([])),
        ),
        ("digits", with(&|v| v["significant_digits"] = 2.into())),
    ]
}

#[test]
fn a_corrupt_state_is_moved_aside_with_a_warning_never_reset_silently() {
    for (what, bytes) in corrupt_cases() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join(STATE_FILE);
        fs::write(&state, &bytes).unwrap();
        let (f, st) = fold_boot(d.path(), &boot("new", 1)).unwrap();
        assert_eq!(f, Fold::Folded, "{what}");
        assert_eq!(st.boots(), 1, "{what}");
        assert_eq!(st.warnings().len(), 1, "{what}");
        assert!(st.warnings()[0].contains("corrupt"), "{what}");
        assert_eq!(st.corrupt_files(), 1, "{what}");
        let aside: Vec<PathBuf> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(CORRUPT_PREFIX)
            })
            .collect();
        assert_eq!(aside.len(), 1, "{what}");
        assert_eq!(fs::read(&aside[0]).unwrap(), bytes, "{what}: evidence lost");
        assert!(
            st.warnings()[0].contains(&*aside[0].to_string_lossy()),
            "{what}"
        );
        // The next reader sees the new state and still counts the evidence.
        let st = State::open(d.path()).unwrap();
        assert_eq!(st.boots(), 1, "{what}");
        assert!(st.warnings().is_empty(), "{what}");
        assert_eq!(st.corrupt_files(), 1, "{what}");
    }
}

/// Every name in `dir` with its content (directories as None).
fn listing(dir: &Path) -> Vec<(std::ffi::OsString, Option<Vec<u8>>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), fs::read(e.path()).ok())
        })
        .collect();
    v.sort();
    v
}

/// `export` and `serve` read through `State::open`: a corrupt state is reported and counted,
/// and nothing in the directory is renamed or created.
#[test]
fn the_read_only_open_leaves_a_corrupt_state_in_place_and_counts_it() {
    for (what, bytes) in corrupt_cases() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(STATE_FILE), &bytes).unwrap();
        fs::write(d.path().join(format!("{CORRUPT_PREFIX}1")), b"older").unwrap();
        let before = listing(d.path());
        let st = State::open(d.path()).unwrap();
        assert_eq!(listing(d.path()), before, "{what}: the directory changed");
        assert_eq!(st.corrupt_files(), 2, "{what}");
        assert_eq!(st.boots(), 0, "{what}");
        assert!(
            st.warnings()[0].contains("corrupt") && st.warnings()[0].contains("left"),
            "{what}: {:?}",
            st.warnings()
        );
        let text = crate::metrics::export::render(crate::metrics::export::Format::Prometheus, &st)
            .unwrap();
        assert!(
            text.contains("\nfastkexec_state_corrupt_files 2\n"),
            "{what}: {text}"
        );
    }
}

#[test]
fn a_second_corruption_does_not_clobber_the_first() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..3 {
        fs::write(d.path().join(STATE_FILE), format!("junk {i}")).unwrap();
        let st = StateDir::lock(d.path()).unwrap().load().unwrap();
        assert_eq!(st.corrupt_files(), i + 1);
    }
}

#[test]
fn flipping_any_byte_of_the_state_never_panics() {
    let mut st = State::new();
    st.fold(&boot("a", 1)).unwrap();
    let good = st.to_json().unwrap();
    let d = tempfile::tempdir().unwrap();
    let sd = StateDir::lock(d.path()).unwrap();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x41;
        fs::write(d.path().join(STATE_FILE), &bad).unwrap();
        // Either it still parses (a flip inside a string) or it is moved aside.
        let st = sd.load().unwrap();
        assert!(st.boots() <= 1);
    }
}

#[test]
fn damaged_histogram_bytes_are_refused_without_panicking() {
    use hdrhistogram::serialization::V2Serializer;
    use std::io::Write as _;
    let mut h = PhaseHistogram::new("p", 0).unwrap();
    for v in [1, 17, 40_000, 6_000_000, 900_000_000, MAX_DURATION_NS] {
        h.record(v).unwrap();
    }
    let good = encode_histogram(&h.hist, "p").unwrap();
    assert_eq!(decode_histogram(&good).unwrap(), h.hist);
    // Damage the compressed form...
    let raw = BASE64.decode(&good).unwrap();
    for i in 0..raw.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = raw.clone();
            bad[i] ^= mask;
            let _ = decode_histogram(&BASE64.encode(&bad));
        }
    }
    // ...and the V2 payload inside a well-formed zlib stream, where no checksum helps.
    let mut v2 = Vec::new();
    V2Serializer::new().serialize(&h.hist, &mut v2).unwrap();
    let wrap = |inner: &[u8]| {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(inner).unwrap();
        let z = z.finish().unwrap();
        let mut out = 0x1c84_9314u32.to_be_bytes().to_vec();
        out.extend_from_slice(&(z.len() as u32).to_be_bytes());
        out.extend_from_slice(&z);
        BASE64.encode(out)
    };
    assert_eq!(decode_histogram(&wrap(&v2)).unwrap(), h.hist);
    let mut refused = 0;
    for i in 0..v2.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = v2.clone();
            bad[i] ^= mask;
            refused += usize::from(decode_histogram(&wrap(&bad)).is_err());
        }
    }
    assert!(refused > 0);
    // A header claiming a 4 GiB payload is refused before anything is allocated.
    let mut huge = v2.clone();
    huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(decode_histogram(&wrap(&huge)).is_err());
}

#[test]
fn a_newer_state_is_an_error_and_left_alone() {
    let d = tempfile::tempdir().unwrap();
    let text = br#"{"format":"fastkexec-state","version":99}"#;
    fs::write(d.path().join(STATE_FILE), text).unwrap();
    let err = State::open(d.path()).unwrap_err().to_string();
    assert!(err.contains("newer fastkexec"), "{err}");
    assert_eq!(fs::read(d.path().join(STATE_FILE)).unwrap(), text);
}

#[test]
fn only_recent_boot_ids_are_remembered() {
    let mut st = State::new();
    let one = |i: usize| Boot {
        boot_id: format!("boot-{i}"),
        phases: vec![],
        total_ns: 1,
        reboot_unix_ns: 0,
        mode: String::new(),
        units: Vec::new(),
    };
    for i in 0..REMEMBERED_BOOT_IDS + 5 {
        assert_eq!(st.fold(&one(i)).unwrap(), Fold::Folded);
    }
    assert!(!st.contains("boot-0") && st.contains(&format!("boot-{REMEMBERED_BOOT_IDS}")));
    assert_eq!(st.boots() as usize, REMEMBERED_BOOT_IDS + 5);
    // And such a state reads back (the id list is shorter than the boot count).
    let back = State::from_json(&st.to_json().unwrap()).ok().unwrap();
    assert_eq!(back.boots(), st.boots());
}

#[test]
fn the_lock_excludes_a_second_holder_until_released() {
    let d = tempfile::tempdir().unwrap();
    let held = StateDir::lock(d.path()).unwrap();
    assert!(StateDir::try_lock(d.path()).unwrap().is_none());
    // A blocked locker gets in only after the holder let go.
    let released = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let t = {
        let dir = d.path().to_path_buf();
        let released = released.clone();
        std::thread::spawn(move || {
            tx.send(()).unwrap();
            let _sd = StateDir::lock(&dir).unwrap();
            released.load(Ordering::SeqCst)
        })
    };
    rx.recv().unwrap();
    released.store(true, Ordering::SeqCst);
    drop(held);
    assert!(t.join().unwrap(), "got the lock while it was held");
    assert!(StateDir::try_lock(d.path()).unwrap().is_some());
}

#[test]
fn concurrent_folds_lose_no_boot() {
    let d = tempfile::tempdir().unwrap();
    let per_thread = 25;
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let dir = d.path().to_path_buf();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let (f, _) = fold_boot(&dir, &boot(&format!("t{t}-{i}"), 1)).unwrap();
                    assert_eq!(f, Fold::Folded);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let st = State::open(d.path()).unwrap();
    assert_eq!(st.boots(), 2 * per_thread);
    assert_eq!(st.phase("purgatory").unwrap().count(), 2 * per_thread);
}

#[test]
fn unit_histograms_round_trip_and_a_state_without_them_still_reads() {
    let d = tempfile::tempdir().unwrap();
    let (_, plain) = fold_boot(d.path(), &boot("a", 1)).unwrap();
    let text = String::from_utf8(plain.to_json().unwrap()).unwrap();
    // A state written before unit histograms existed has no such keys.
    assert!(!text.contains("unit_stop") && !text.contains("units_refused"));
    let mut b = boot("b", 1);
    b.units = vec![
        UnitSample {
            level: UnitLevel::Stop,
            unit: "slow-stop.service".into(),
            duration_ns: 1_500_000_000,
        },
        UnitSample {
            level: UnitLevel::Start,
            unit: "slow-stop.service".into(),
            duration_ns: 60_000_000,
        },
    ];
    let (_, st) = fold_boot(d.path(), &b).unwrap();
    let reread = State::open(d.path()).unwrap();
    for s in [&st, &reread] {
        assert_eq!(s.units(UnitLevel::Stop).len(), 1);
        let h = &s.units(UnitLevel::Start)[0];
        assert_eq!(
            (h.name(), h.count(), h.sum_ns()),
            ("slow-stop.service", 1, 60_000_000)
        );
        assert_eq!(s.units_refused(), 0);
    }
    // The same unit twice in one level is a broken boot, refused whole.
    let mut twice = boot("c", 1);
    twice.units = vec![b.units[0].clone(), b.units[0].clone()];
    let e = fold_boot(d.path(), &twice).unwrap_err().to_string();
    assert!(e.contains("appears twice"), "{e}");
    assert_eq!(State::open(d.path()).unwrap().boots(), 2);
}

#[test]
fn a_state_holding_one_unit_twice_is_corrupt() {
    let mut st = State::new();
    let mut b = boot("a", 1);
    b.units = ["x.service", "y.service"]
        .map(|u| UnitSample {
            level: UnitLevel::Stop,
            unit: u.into(),
            duration_ns: 5,
        })
        .to_vec();
    st.fold(&b).unwrap();
    let text = String::from_utf8(st.to_json().unwrap()).unwrap();
    assert!(State::parse(text.as_bytes()).is_ok());
    // Only the histograms' names change ("last" keeps its own list).
    let forged = text.replacen("\"name\": \"y.service\"", "\"name\": \"x.service\"", 1);
    assert_ne!(forged, text);
    let e = State::parse(forged.as_bytes()).unwrap_err();
    assert!(e.contains("x.service") && e.contains("twice"), "{e}");
}
