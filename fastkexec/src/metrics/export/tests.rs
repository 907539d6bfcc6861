use super::*;
use crate::metrics::histogram::{Boot, Phase};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

/// (boot id, phases as (name, ns), total ns) of each boot.
type Boots<'a> = &'a [(&'a str, &'a [(&'a str, u64)], u64)];

fn state(boots: Boots) -> State {
    let mut st = State::new();
    for (i, (id, phases, total)) in boots.iter().enumerate() {
        st.fold(&Boot {
            boot_id: id.to_string(),
            phases: phases.iter().map(|(n, d)| Phase::new(*n, *d)).collect(),
            total_ns: *total,
            reboot_unix_ns: 1_700_000_000_000_000_000 + i as u64 * 1_000_000_000,
            mode: "uncompressed".into(),
            units: Vec::new(),
        })
        .unwrap();
    }
    st
}

fn three() -> State {
    state(&[
        (
            "a",
            &[("device_shutdown", 4_900_000), ("purgatory", 30_000)],
            2_600_000_000,
        ),
        (
            "b",
            &[("device_shutdown", 11_000_000), ("purgatory", 45_000)],
            320_000_000,
        ),
        ("c", &[("device_shutdown", 7_000_000)], 3_775_000_000),
    ])
}

/// (name, labels, value) of every sample line.
fn samples(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (name.to_string(), labels.to_string(), value.to_string())
        })
        .collect()
}

fn value(text: &str, name: &str, labels: &str) -> String {
    samples(text)
        .into_iter()
        .find(|(n, l, _)| n == name && l == labels)
        .map(|(_, _, v)| v)
        .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
}

#[test]
fn seconds_are_exact_canonical_decimals() {
    assert_eq!(seconds(0), "0.0");
    assert_eq!(seconds(1_000_000_000), "1.0");
    assert_eq!(seconds(250_000), "0.00025");
    assert_eq!(seconds(2_500_000_000), "2.5");
    assert_eq!(seconds(1), "0.000000001");
    assert_eq!(seconds(123_456_789_012), "123.456789012");
    assert_eq!(seconds(u64::MAX), "18446744073.709551615");
}

#[test]
fn buckets_are_cumulative_and_inf_equals_count() {
    let st = three();
    let text = render(Format::Prometheus, &st).unwrap();
    for phase in ["device_shutdown", "purgatory"] {
        let p = st.phase(phase).unwrap();
        let mut prev = 0u64;
        for b in BUCKET_BOUNDS_NS {
            let v: u64 = value(
                &text,
                "fastkexec_phase_duration_seconds_bucket",
                &format!("phase=\"{phase}\",le=\"{}\"", seconds(*b)),
            )
            .parse()
            .unwrap();
            assert!(v >= prev, "{phase} le={b}: {v} < {prev}");
            prev = v;
        }
        let inf = value(
            &text,
            "fastkexec_phase_duration_seconds_bucket",
            &format!("phase=\"{phase}\",le=\"+Inf\""),
        );
        let count = value(
            &text,
            "fastkexec_phase_duration_seconds_count",
            &format!("phase=\"{phase}\""),
        );
        assert_eq!(inf, count);
        assert_eq!(count, p.count().to_string());
        assert!(prev <= p.count());
    }
    // Exact figures for values far from every bucket bound.
    for (name, labels, want) in [
        (
            "fastkexec_phase_duration_seconds_bucket",
            "phase=\"device_shutdown\",le=\"0.005\"",
            "1",
        ),
        (
            "fastkexec_phase_duration_seconds_bucket",
            "phase=\"device_shutdown\",le=\"0.01\"",
            "2",
        ),
        (
            "fastkexec_phase_duration_seconds_bucket",
            "phase=\"device_shutdown\",le=\"0.02\"",
            "3",
        ),
        (
            "fastkexec_phase_duration_seconds_sum",
            "phase=\"device_shutdown\"",
            "0.0229",
        ),
        ("fastkexec_reboot_duration_seconds_count", "", "3"),
        ("fastkexec_reboot_duration_seconds_sum", "", "6.695"),
        ("fastkexec_reboots_total", "", "3"),
        (
            "fastkexec_last_reboot_phase_seconds",
            "phase=\"device_shutdown\"",
            "0.007",
        ),
        ("fastkexec_last_reboot_total_seconds", "", "3.775"),
        (
            "fastkexec_last_reboot_timestamp_seconds",
            "",
            "1700000002.0",
        ),
        ("fastkexec_last_reboot_info", "mode=\"uncompressed\"", "1"),
    ] {
        assert_eq!(value(&text, name, labels), want, "{name}{{{labels}}}");
    }
}

#[test]
fn buckets_run_1_2_5_from_a_microsecond_to_1000_seconds_inside_the_hdr_range() {
    assert_eq!(BUCKET_BOUNDS_NS.len(), 28);
    assert_eq!(BUCKET_BOUNDS_NS[0], 1_000);
    assert_eq!(BUCKET_BOUNDS_NS[27], 1_000_000_000_000);
    for (i, b) in BUCKET_BOUNDS_NS.iter().enumerate() {
        let decade = 10u64.pow(3 + i as u32 / 3);
        assert_eq!(*b, [1, 2, 5][i % 3] * decade, "bound {i}");
    }
    let le: Vec<String> = BUCKET_BOUNDS_NS.iter().map(|b| seconds(*b)).collect();
    assert_eq!(&le[..4], ["0.000001", "0.000002", "0.000005", "0.00001"]);
    assert_eq!(&le[25..], ["200.0", "500.0", "1000.0"]);
    // The histogram under the buckets: every bound inside its range, and resolved to
    // 0.1 % (exactly up to 2048 ns, where the first bounds lie).
    let mut st = State::new();
    st.fold(&Boot {
        boot_id: "a".into(),
        phases: vec![Phase::new("p", 1)],
        total_ns: 1,
        reboot_unix_ns: 0,
        mode: String::new(),
        units: Vec::new(),
    })
    .unwrap();
    let h = st.phase("p").unwrap().histogram();
    assert_eq!(h.low(), 1);
    assert!(h.high() >= crate::metrics::histogram::MAX_DURATION_NS);
    assert_eq!(h.sigfig(), SIGNIFICANT_DIGITS);
    assert!(crate::metrics::histogram::MAX_DURATION_NS > *BUCKET_BOUNDS_NS.last().unwrap());
    for b in BUCKET_BOUNDS_NS {
        let width = h.highest_equivalent(*b) - h.lowest_equivalent(*b);
        assert!(
            width * 1000 <= *b,
            "le={b}: HdrHistogram bucket {width} ns wide"
        );
        if *b < 2048 {
            assert_eq!(width, 0, "le={b}");
        }
    }
}

#[test]
fn a_bucket_never_counts_a_value_above_its_bound() {
    // Exactly on a bound, just above and just below, across the range.
    let mut boots = Vec::new();
    for (i, b) in BUCKET_BOUNDS_NS.iter().enumerate() {
        for (j, v) in [*b, b + b / 500, b - b / 500].into_iter().enumerate() {
            boots.push((format!("{i}-{j}"), v));
        }
    }
    let mut st = State::new();
    for (id, v) in &boots {
        st.fold(&Boot {
            boot_id: id.clone(),
            phases: vec![Phase::new("p", *v)],
            total_ns: *v,
            reboot_unix_ns: 0,
            mode: String::new(),
            units: Vec::new(),
        })
        .unwrap();
    }
    let got = cumulative_buckets(st.phase("p").unwrap());
    for (bound, count) in BUCKET_BOUNDS_NS.iter().zip(&got) {
        let exact = boots.iter().filter(|(_, v)| v <= bound).count() as u64;
        // Never more than the exact count; at most the values within 0.1 % under the
        // bound (here: the one exactly on it) fewer.
        assert!(*count <= exact, "le={bound}: {count} > {exact}");
        assert!(exact - count <= 1, "le={bound}: {count} vs {exact}");
    }
}

/// The modes README documents, exactly, under a permissive and a strict umask. The umask is
/// process-wide, so each runs in a child process (this test binary, running only this
/// test) started by `sh -c 'umask ...'`: the other tests never see it.
#[test]
fn written_files_have_their_documented_modes_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    const CHILD: &str = "FASTKEXEC_TEST_MODES_DIR";
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    if let Some(dir) = std::env::var_os(CHILD) {
        let d = PathBuf::from(dir);
        let boot = Boot {
            boot_id: "b".into(),
            phases: vec![Phase::new("purgatory", 1_000)],
            total_ns: 2_000,
            reboot_unix_ns: 1,
            mode: "uncompressed".into(),
            units: Vec::new(),
        };
        let (_, st) = crate::metrics::histogram::fold_boot(&d.join("state"), &boot).unwrap();
        write_textfile(&d, &st).unwrap();
        write_file(&d.join("out.json"), Format::Json, &st).unwrap();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    // The test's own name, as the harness spells it (module path without the crate).
    let module = module_path!().trim_start_matches("fastkexec::");
    let name = format!("{module}::written_files_have_their_documented_modes_whatever_the_umask");
    for umask in ["077", "000"] {
        let d = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask {umask} && exec \"$0\" --exact {name} --test-threads 1"
            ))
            .arg(&exe)
            .env(CHILD, d.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "umask {umask}: {out:?}");
        let state_dir = d.path().join("state");
        assert_eq!(mode(&state_dir), 0o755, "umask {umask}");
        assert_eq!(mode(&state_dir.join("state.json")), 0o640, "umask {umask}");
        assert_eq!(mode(&state_dir.join("lock")), 0o640, "umask {umask}");
        assert_eq!(mode(&d.path().join(TEXTFILE_NAME)), 0o644, "umask {umask}");
        assert_eq!(mode(&d.path().join("out.json")), 0o640, "umask {umask}");
    }
}

#[test]
fn label_values_are_escaped() {
    let st = state(&[("a", &[("quote\"back\\slash", 1_000)], 5_000)]);
    let text = render(Format::Prometheus, &st).unwrap();
    assert!(
        text.contains(r#"fastkexec_phase_duration_seconds_count{phase="quote\"back\\slash"} 1"#),
        "{text}"
    );
    assert_eq!(escape_label("a\nb"), "a\\nb");
    assert_eq!(escape_label("plain é"), "plain é");
}

#[test]
fn an_empty_state_still_says_nothing_was_folded() {
    let st = State::new();
    let text = render(Format::Prometheus, &st).unwrap();
    assert!(!text.contains("fastkexec_phase_duration_seconds"));
    assert!(!text.contains("fastkexec_last_reboot"));
    assert_eq!(value(&text, "fastkexec_reboots_total", ""), "0");
    assert_eq!(value(&text, "fastkexec_state_corrupt_files", ""), "0");
    let om = render(Format::OpenMetrics, &st).unwrap();
    assert!(om.ends_with("\n# EOF\n"));
    let log = render(Format::HdrLog, &st).unwrap();
    assert_eq!(IntervalLogIterator::new(log.as_bytes()).count(), 2);
    let json: serde_json::Value =
        serde_json::from_str(&render(Format::Json, &st).unwrap()).unwrap();
    assert_eq!(json["boots"], 0);
    assert!(json["total"].is_null());
}

#[test]
fn every_family_is_announced_once_before_its_samples() {
    for format in [Format::Prometheus, Format::OpenMetrics] {
        let text = render(format, &three()).unwrap();
        let mut typed: Vec<String> = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(!typed.contains(&name), "{name} typed twice");
                typed.push(name);
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let family = typed.last().unwrap();
                assert!(name.starts_with(family.as_str()), "{name} outside {family}");
            }
        }
        assert_eq!(typed.len(), 8, "{format:?}");
        assert!(text.ends_with('\n'));
    }
}

#[test]
fn openmetrics_has_units_created_and_eof() {
    let text = render(Format::OpenMetrics, &three()).unwrap();
    assert!(text.ends_with("# EOF\n"));
    assert_eq!(text.matches("# EOF").count(), 1);
    assert!(text.contains("# UNIT fastkexec_phase_duration_seconds seconds\n"));
    assert!(text.contains("# TYPE fastkexec_reboots counter\n"));
    assert!(text.contains("\nfastkexec_reboots_total 3\n"));
    assert!(text.contains("# TYPE fastkexec_last_reboot info\n"));
    assert!(text.contains("fastkexec_phase_duration_seconds_created{phase=\"purgatory\"} "));
    // Every unit is the suffix of its family's name, as OpenMetrics requires.
    for l in text.lines().filter(|l| l.starts_with("# UNIT ")) {
        let mut it = l["# UNIT ".len()..].split(' ');
        let (name, unit) = (it.next().unwrap(), it.next().unwrap());
        assert!(name.ends_with(&format!("_{unit}")), "{l}");
    }
}

#[test]
fn json_has_percentiles_and_decodable_histograms() {
    let st = three();
    let v: serde_json::Value = serde_json::from_str(&render(Format::Json, &st).unwrap()).unwrap();
    assert_eq!(v["boots"], 3);
    let ds = &v["phases"][0];
    assert_eq!(ds["name"], "device_shutdown");
    assert_eq!(ds["count"], 3);
    assert_eq!(ds["sum_ns"], 22_900_000);
    let h = st.phase("device_shutdown").unwrap().histogram();
    assert_eq!(ds["p50_ns"], h.value_at_quantile(0.5));
    assert_eq!(ds["max_ns"], h.max());
    let back = crate::metrics::histogram::decode_histogram(ds["hdr"].as_str().unwrap()).unwrap();
    assert_eq!(&back, h);
    assert_eq!(v["last_reboot"]["boot_id"], "c");
    assert_eq!(
        v["phases"][0]["buckets"].as_array().unwrap().len(),
        BUCKET_BOUNDS_NS.len()
    );
}

#[test]
fn the_interval_log_reads_back_with_tags_and_times() {
    let st = state(&[(
        "a",
        &[("kernel init", 900_000_000), ("x,y", 5)],
        2_000_000_000,
    )]);
    let log = render(Format::HdrLog, &st).unwrap();
    assert!(log.contains("\n#[Histogram log format version 1.3]\n"));
    let mut tags = Vec::new();
    let mut base = None;
    for e in IntervalLogIterator::new(log.as_bytes()) {
        match e.unwrap() {
            LogEntry::BaseTime(t) => base = Some(t),
            LogEntry::StartTime(_) => {}
            LogEntry::Interval(i) => {
                let h = crate::metrics::histogram::decode_histogram(i.encoded_histogram()).unwrap();
                assert_eq!(h.len(), 1);
                let tag = i.tag().unwrap().as_str().to_string();
                let want = if tag == HDR_LOG_TOTAL_TAG {
                    st.total().unwrap()
                } else {
                    st.phases()
                        .iter()
                        .find(|p| hdr_log_tag(p.name()) == tag)
                        .unwrap()
                };
                assert_eq!(&h, want.histogram());
                assert!((i.max() - want.histogram().max() as f64 / 1e6).abs() < 0.001);
                tags.push(tag);
            }
        }
    }
    assert_eq!(tags, ["kernel_init", "x_y", "total"]);
    // Interval logs keep milliseconds: the writer rounds the creation time to one.
    let base_ns = base.unwrap().as_nanos() as u64;
    assert!(
        base_ns.abs_diff(st.created_unix_ns()) <= 500_000,
        "{base_ns} vs {}",
        st.created_unix_ns()
    );
    assert!(log.contains("\n#[MaxValueDivisor: 1000000.000]\n"), "{log}");
}

#[test]
fn the_textfile_lands_atomically_in_an_existing_directory_only() {
    let d = tempfile::tempdir().unwrap();
    let st = three();
    let path = write_textfile(d.path(), &st).unwrap();
    assert_eq!(path, d.path().join(TEXTFILE_NAME));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, render(Format::Prometheus, &st).unwrap());
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    let err = write_textfile(&d.path().join("missing"), &three()).unwrap_err();
    assert!(
        err.to_string().contains("collector.textfile.directory"),
        "{err}"
    );
}
