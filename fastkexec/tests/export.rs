//! `fastkexec export` and `fastkexec serve` checked by the ecosystem's own tools: Prometheus'
//! `promtool check metrics`, the OpenMetrics parser of PyPI's prometheus-client, and PyPI's
//! hdrhistogram (an independent HdrHistogram codec) for the interval log.
//!
//! `cargo xtask setup` installs them (Debian's prometheus package; a virtualenv in
//! target/pyvenv). A missing checker fails the test: CI runs setup first.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fastkexec::metrics::histogram::{fold_boot, Boot, Phase, State, StateDir};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fastkexec"));
    c.env_remove("RUST_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run fastkexec")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    found.expect(
        "promtool not found: run `cargo xtask setup` (installs Debian's prometheus package)",
    )
}

fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let py = root.join("target/pyvenv/bin/python3");
    assert!(
        py.exists(),
        "{} missing: run `cargo xtask setup` (installs PyPI's hdrhistogram and prometheus-client there)",
        py.display()
    );
    py
}

/// Runs `prog args` with `input` on stdin.
fn pipe(prog: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", prog.display()));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// `promtool check metrics` must accept `metrics` without a single lint remark.
fn assert_promtool_accepts(metrics: &[u8]) {
    let o = pipe(&promtool(), &["check", "metrics"], metrics);
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n--- input ---\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr),
        text(metrics)
    );
}

const PHASES: &[&str] = &[
    "userspace_shutdown",
    "device_shutdown",
    "purgatory",
    "kernel_early_boot",
    "kernel_boot",
    // Label escaping and non-ASCII, end to end.
    "odd \"quoted\" \\ phase é",
];

/// Three reboots with every phase.
fn lab_like_state(dir: &Path) {
    for (i, scale) in [1u64, 3, 2].into_iter().enumerate() {
        let boot = Boot {
            boot_id: format!("0b7c1a6e-0000-4000-8000-00000000000{i}"),
            phases: PHASES
                .iter()
                .enumerate()
                .map(|(j, n)| Phase::new(*n, scale * 7_000 * 10u64.pow(j as u32 % 6)))
                .collect(),
            total_ns: scale * 2_605_000_000,
            reboot_unix_ns: 1_795_000_000_000_000_000 + i as u64 * 60_000_000_000,
            mode: "uncompressed".into(),
            units: Vec::new(),
        };
        fold_boot(dir, &boot).unwrap();
    }
}

/// (name, labels, value) of each sample line of Prometheus text.
fn samples(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            (
                name.to_string(),
                labels.trim_end_matches('}').to_string(),
                value.to_string(),
            )
        })
        .collect()
}

#[test]
fn prometheus_export_passes_promtool_and_counts_every_reboot() {
    let d = tempfile::tempdir().unwrap();
    lab_like_state(d.path());
    let o = run(&["export", "--state-dir", d.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_promtool_accepts(&o.stdout);
    let out = text(&o.stdout);
    let counts: Vec<_> = samples(&out)
        .into_iter()
        .filter(|(n, _, _)| n == "fastkexec_phase_duration_seconds_count")
        .collect();
    assert_eq!(counts.len(), PHASES.len());
    for (_, labels, value) in &counts {
        assert_eq!(value, "3", "{labels}");
    }
    assert!(
        out.contains(r#"{phase="odd \"quoted\" \\ phase é"} 3"#),
        "{out}"
    );
    assert!(out.contains("\nfastkexec_reboots_total 3\n"));
    assert!(out.contains("\nfastkexec_reboot_duration_seconds_count 3\n"));
}

#[test]
fn an_empty_or_missing_state_passes_promtool() {
    let d = tempfile::tempdir().unwrap();
    for dir in [d.path().to_path_buf(), d.path().join("never-created")] {
        let o = run(&["export", "--state-dir", dir.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert_promtool_accepts(&o.stdout);
        assert!(text(&o.stdout).contains("fastkexec_reboots_total 0\n"));
    }
}

#[test]
fn promtool_is_a_real_check() {
    // The same output with the counter's `_total` dropped must be refused: the checker bites.
    let d = tempfile::tempdir().unwrap();
    lab_like_state(d.path());
    let o = run(&["export", "--state-dir", d.path().to_str().unwrap()]);
    let broken = text(&o.stdout).replace("fastkexec_reboots_total", "fastkexec_reboots");
    let o = pipe(&promtool(), &["check", "metrics"], broken.as_bytes());
    assert!(
        !o.status.success(),
        "promtool accepted a counter without _total"
    );
}

#[test]
fn textfile_export_is_one_prom_file_that_passes_promtool() {
    let d = tempfile::tempdir().unwrap();
    lab_like_state(d.path());
    let tf = tempfile::tempdir().unwrap();
    let state_dir = d.path().to_str().unwrap();
    let tf_dir = tf.path().to_str().unwrap();
    for _ in 0..2 {
        let o = run(&["export", "--state-dir", state_dir, "--textfile-dir", tf_dir]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(o.stdout.is_empty());
    }
    let names: Vec<String> = fs::read_dir(tf.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["fastkexec.prom"]);
    let prom = fs::read(tf.path().join("fastkexec.prom")).unwrap();
    assert!(prom.ends_with(b"\n"));
    assert_promtool_accepts(&prom);

    // node_exporter reads only Prometheus text; --output and --textfile-dir exclude each other.
    let o = run(&[
        "export",
        "--state-dir",
        state_dir,
        "--textfile-dir",
        tf_dir,
        "--format",
        "json",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--format prometheus"),
        "{}",
        text(&o.stderr)
    );
    let o = run(&["export", "--textfile-dir", tf_dir, "--output", "/dev/null"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let o = run(&[
        "export",
        "--state-dir",
        state_dir,
        "--textfile-dir",
        "/nonexistent/dir",
    ]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("collector.textfile.directory"));
}

const OPENMETRICS_PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
fams = []
for f in text_string_to_metric_families(sys.stdin.read()):
    fams.append({"name": f.name, "type": f.type, "unit": f.unit,
                 "samples": [[s.name, s.labels, s.value] for s in f.samples]})
print(json.dumps(fams))
"#;

#[test]
fn openmetrics_export_parses_with_prometheus_clients_strict_parser() {
    let d = tempfile::tempdir().unwrap();
    lab_like_state(d.path());
    let out = d.path().join("metrics.om");
    let o = run(&[
        "export",
        "--state-dir",
        d.path().to_str().unwrap(),
        "--format",
        "openmetrics",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let om = fs::read(&out).unwrap();
    assert!(om.ends_with(b"\n# EOF\n"));
    let o = pipe(&python(), &["-c", OPENMETRICS_PARSER], &om);
    assert!(
        o.status.success(),
        "parser: {}\n{}",
        text(&o.stderr),
        text(&om)
    );
    let fams: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let by_name: BTreeMap<&str, &serde_json::Value> = fams
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f))
        .collect();
    let expect = [
        ("fastkexec_phase_duration_seconds", "histogram", "seconds"),
        ("fastkexec_reboot_duration_seconds", "histogram", "seconds"),
        ("fastkexec_reboots", "counter", ""),
        ("fastkexec_last_reboot_phase_seconds", "gauge", "seconds"),
        ("fastkexec_last_reboot_total_seconds", "gauge", "seconds"),
        (
            "fastkexec_last_reboot_timestamp_seconds",
            "gauge",
            "seconds",
        ),
        ("fastkexec_last_reboot", "info", ""),
        ("fastkexec_state_corrupt_files", "gauge", ""),
    ];
    assert_eq!(by_name.len(), expect.len(), "{fams}");
    for (name, kind, unit) in expect {
        let f = by_name
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(f["type"], kind, "{name}");
        assert_eq!(f["unit"], unit, "{name}");
    }
    let hist = by_name["fastkexec_phase_duration_seconds"]["samples"]
        .as_array()
        .unwrap();
    for phase in PHASES {
        let count = hist
            .iter()
            .find(|s| s[0] == "fastkexec_phase_duration_seconds_count" && s[1]["phase"] == *phase)
            .unwrap_or_else(|| panic!("no _count for {phase}"));
        assert_eq!(count[2], 3.0);
        assert!(
            hist.iter()
                .any(|s| s[0] == "fastkexec_phase_duration_seconds_created"
                    && s[1]["phase"] == *phase)
        );
    }
    let info = &by_name["fastkexec_last_reboot"]["samples"][0];
    assert_eq!(info[1]["mode"], "uncompressed");

    // The parser is strict: without `# EOF`, or with a bucket count going down, it refuses.
    let text_om = text(&om);
    let no_eof = text_om.trim_end_matches("# EOF\n");
    let o = pipe(&python(), &["-c", OPENMETRICS_PARSER], no_eof.as_bytes());
    assert!(!o.status.success(), "accepted OpenMetrics without # EOF");
    let inf = "fastkexec_reboot_duration_seconds_bucket{le=\"+Inf\"} 3";
    assert!(text_om.contains(inf));
    let shrunk = text_om.replace(
        inf,
        "fastkexec_reboot_duration_seconds_bucket{le=\"+Inf\"} 2",
    );
    let o = pipe(&python(), &["-c", OPENMETRICS_PARSER], shrunk.as_bytes());
    assert!(!o.status.success(), "accepted +Inf != _count");
}

const HDR_DECODER: &str = include_str!("hdr_decode.py");

/// Every phase's machine name, written out: the one spelling of a phase in every export.
const MACHINE_NAMES: [&str; 14] = [
    "userspace_shutdown",
    "reboot_syscall",
    "reboot_notifiers",
    "device_shutdown",
    "cpu_migration",
    "syscore_shutdown",
    "machine_shutdown",
    "relocation",
    "trampoline",
    "purgatory",
    "kernel_early_boot",
    "kernel_boot",
    "user_space",
    "unattributed",
];

/// Deterministic durations spread log-uniformly from 1 µs to 1000 s (the buckets' range).
fn durations(seed: u64, n: usize) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            (1_000.0 * 10f64.powf(9.0 * u)) as u64
        })
        .collect()
}

/// The `q` quantile of `sorted` with HdrHistogram's rank rule (the ceil(q·n)-th value).
fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

/// Runs `fastkexec export --format FORMAT` on the state in `dir`.
fn export(dir: &Path, format: &str) -> String {
    let o = run(&[
        "export",
        "--state-dir",
        dir.to_str().unwrap(),
        "--format",
        format,
    ]);
    assert!(o.status.success(), "{format}: {}", text(&o.stderr));
    text(&o.stdout)
}

/// PyPI hdrhistogram's reading of an interval log: per tag, its figures and its cumulative
/// counts at `bounds`.
fn decode_with_pypi(log: &Path, bounds: &serde_json::Value) -> serde_json::Value {
    let o = Command::new(python())
        .args([
            "-c",
            HDR_DECODER,
            log.to_str().unwrap(),
            &bounds.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python hdrh: {}\n{}",
        text(&o.stderr),
        fs::read_to_string(log).unwrap()
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn every_export_names_phases_alike_and_pypi_decodes_the_hdr_log_to_the_json_figures() {
    // The table behind every export is the one written out above.
    let ids: Vec<&str> = fastkexec::record::phases::PHASES
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, MACHINE_NAMES[..13]);
    assert_eq!(fastkexec::record::phases::UNATTRIBUTED, MACHINE_NAMES[13]);

    // 1000 reboots: q·n is a whole number for every quantile compared, so Python's
    // round-half-up rank and Rust's ceil rank pick the same value.
    const N: usize = 1000;
    let values: Vec<Vec<u64>> = (0..MACHINE_NAMES.len())
        .map(|i| durations(i as u64 + 1, N))
        .collect();
    let totals = durations(99, N);
    let mut st = State::new();
    for b in 0..N {
        st.fold(&Boot {
            boot_id: format!("boot-{b}"),
            phases: MACHINE_NAMES
                .iter()
                .zip(&values)
                .map(|(n, v)| Phase::new(*n, v[b]))
                .collect(),
            total_ns: totals[b],
            reboot_unix_ns: 0,
            mode: "staged".into(),
            units: Vec::new(),
        })
        .unwrap();
    }
    let d = tempfile::tempdir().unwrap();
    StateDir::lock(d.path()).unwrap().save(&st).unwrap();
    let log = d.path().join("reboots.hlog");
    fs::write(&log, export(d.path(), "hdr-log")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&export(d.path(), "json")).unwrap();
    let prom = export(d.path(), "prometheus");
    assert_promtool_accepts(prom.as_bytes());
    let bounds = json["bucket_bounds_ns"].clone();
    let decoded = decode_with_pypi(&log, &bounds);

    // One spelling per phase: interval-log tags, JSON names and Prometheus labels are the
    // machine names, nothing else.
    let mut tags: Vec<&str> = decoded
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    tags.sort_unstable();
    let mut want: Vec<&str> = MACHINE_NAMES.iter().copied().chain(["total"]).collect();
    want.sort_unstable();
    assert_eq!(tags, want, "interval-log tags");
    let json_names: Vec<&str> = json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(json_names, MACHINE_NAMES, "JSON names");
    let labels: Vec<String> = samples(&prom)
        .into_iter()
        .filter(|(n, _, _)| n == "fastkexec_phase_duration_seconds_count")
        .map(|(_, l, _)| l)
        .collect();
    let want_labels: Vec<String> = MACHINE_NAMES
        .iter()
        .map(|n| format!("phase=\"{n}\""))
        .collect();
    assert_eq!(labels, want_labels, "Prometheus labels");
    assert!(prom.contains("fastkexec_last_reboot_info{mode=\"staged\"} 1\n"));

    // (phase label, le in ns as the text says it, count) of every finite bucket line.
    let prom_buckets: Vec<(String, f64, String)> = samples(&prom)
        .into_iter()
        .filter(|(n, l, _)| n == "fastkexec_phase_duration_seconds_bucket" && !l.contains("+Inf"))
        .map(|(_, l, v)| {
            let (phase, le) = l.split_once(",le=").unwrap();
            let le: f64 = le.trim_matches('"').parse().unwrap();
            (phase.to_string(), le * 1e9, v)
        })
        .collect();
    let raw: Vec<&Vec<u64>> = values.iter().chain([&totals]).collect();
    let jsons: Vec<&serde_json::Value> = json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&json["total"]])
        .collect();
    for ((name, raw), ours) in MACHINE_NAMES.iter().chain(&["total"]).zip(raw).zip(jsons) {
        let theirs = &decoded[*name];
        let mut sorted = raw.clone();
        sorted.sort_unstable();
        assert_eq!(theirs["count"], N as u64, "{name}");
        assert_eq!(ours["count"], N as u64, "{name}");
        for (key, ours_key) in [
            ("min", "min_ns"),
            ("max", "max_ns"),
            ("p50", "p50_ns"),
            ("p90", "p90_ns"),
            ("p99", "p99_ns"),
            ("p999", "p999_ns"),
        ] {
            assert_eq!(theirs[key], ours[ours_key], "{name} {key}");
        }
        // And both agree with the raw samples to the histogram's 3 digits.
        for (key, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            let got = theirs[key].as_u64().unwrap();
            let exact = exact_quantile(&sorted, q);
            let err = got.abs_diff(exact) as f64 / exact as f64;
            assert!(err <= 1e-3, "{name} {key}: {got} vs exact {exact}");
        }
        // The buckets: the JSON's, PyPI's count at each bound, and the Prometheus text agree;
        // against the raw samples a bucket never claims more, and misses at most the values
        // within 0.1 % under its bound.
        assert_eq!(theirs["buckets"], ours["buckets"], "{name} buckets");
        for (i, b) in bounds.as_array().unwrap().iter().enumerate() {
            let b = b.as_u64().unwrap();
            let count = ours["buckets"][i].as_u64().unwrap();
            let exact = sorted.iter().filter(|&&v| v <= b).count() as u64;
            let near = sorted
                .iter()
                .filter(|&&v| v <= b && v > b - b / 1000)
                .count() as u64;
            assert!(count <= exact && exact - count <= near, "{name} le={b}");
            if *name != "total" {
                let phase = format!("phase=\"{name}\"");
                let (_, _, prom_count) = prom_buckets
                    .iter()
                    .find(|(p, le, _)| *p == phase && (le - b as f64).abs() < 0.5)
                    .unwrap_or_else(|| panic!("no bucket {phase} le={b} ns"));
                assert_eq!(*prom_count, count.to_string(), "{phase} le={b}");
            }
        }
        // The interval starts when the state was created (StartTime/BaseTime headers).
        let start_ms = theirs["start_ms"].as_f64().unwrap();
        let created_ms = (st.created_unix_ns() / 1_000_000) as f64;
        assert!(
            (start_ms - created_ms).abs() <= 1.0,
            "{start_ms} vs {created_ms}"
        );
    }

    // The comparison bites: the same log with the human spelling of one phase as its tag.
    let human = fs::read_to_string(&log)
        .unwrap()
        .replace("Tag=kernel_early_boot,", "Tag=kernel-early-boot,");
    fs::write(&log, human).unwrap();
    let decoded = decode_with_pypi(&log, &bounds);
    assert!(decoded.get("kernel_early_boot").is_none());
    assert!(decoded.get("kernel-early-boot").is_some());
}

#[test]
fn serve_answers_scrapes_with_output_promtool_accepts() {
    let d = tempfile::tempdir().unwrap();
    lab_like_state(d.path());
    let mut child = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            d.path().to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let get = |path: &str| {
        let addr = first
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|s| s.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    };
    let (head, body) = get("/metrics");
    let (head404, _) = get("/");
    // Stop the server we started (by its handle) before asserting anything.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_promtool_accepts(body.as_bytes());
    assert!(body.contains("fastkexec_reboots_total 3\n"));
    assert!(head404.starts_with("HTTP/1.1 404"), "{head404}");

    // Not on a non-loopback address without --allow-remote.
    let o = run(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--state-dir",
        "/nonexistent",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("--allow-remote"),
        "{}",
        text(&o.stderr)
    );
}

const HDR_ENCODER: &str = r#"
import json, sys
from hdrh.histogram import HdrHistogram
h = HdrHistogram(1, 86400 * 10**9, 3)
for v in json.loads(sys.argv[1]):
    h.record_value(v)
print(h.encode().decode())
"#;

#[test]
fn histograms_encoded_by_pypi_hdrhistogram_decode_in_ours() {
    // The other direction: a fleet tool may write histograms we read (e.g. merged states).
    let values = durations(7, 200);
    let o = Command::new(python())
        .args(["-c", HDR_ENCODER, &serde_json::to_string(&values).unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let h = fastkexec::metrics::histogram::decode_histogram(text(&o.stdout).trim()).unwrap();
    assert_eq!(h.len(), values.len() as u64);
    let mut sorted = values.clone();
    sorted.sort_unstable();
    for q in [0.5, 0.9, 0.99] {
        let exact = exact_quantile(&sorted, q);
        let got = h.value_at_quantile(q);
        assert!(
            got.abs_diff(exact) as f64 <= exact as f64 * 1e-3,
            "q{q}: {got} vs {exact}"
        );
    }
}

#[test]
fn the_shipped_systemd_unit_exports_with_arguments_the_cli_accepts() {
    let unit =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd/fastkexec-report.service");
    let unit = fs::read_to_string(&unit).unwrap();
    let export: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStartPost="))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|args| args.get(1) == Some(&"export"))
        .expect("an ExecStartPost running `fastkexec export`");
    assert_eq!(export[0], "/usr/local/bin/fastkexec");
    assert!(unit.contains("\nType=oneshot\n") && unit.contains("\nWantedBy=default.target\n"));
    // The same arguments, with the two directories moved into temporary ones.
    let d = tempfile::tempdir().unwrap();
    lab_like_state(d.path());
    let tf = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = export[1..].iter().map(|s| s.to_string()).collect();
    for (flag, dir) in [("--state-dir", d.path()), ("--textfile-dir", tf.path())] {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} missing"));
        args[i + 1] = dir.to_str().unwrap().to_string();
    }
    let o = bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
    assert_promtool_accepts(&fs::read(tf.path().join("fastkexec.prom")).unwrap());
}

/// Boots whose every reboot names new units: more than the cap over time.
fn unit_state(dir: &Path, boots: usize, units_per_boot: usize) {
    use fastkexec::metrics::histogram::{UnitLevel, UnitSample};
    for i in 0..boots {
        let units = (0..units_per_boot)
            .flat_map(|j| {
                let name = format!("u{i}-{j}.service");
                [UnitLevel::Stop, UnitLevel::Start].map(|level| UnitSample {
                    level,
                    unit: name.clone(),
                    duration_ns: 1_500_000_000 + j as u64 * 1_000_000,
                })
            })
            // One unit in every boot, with a quote in its name (systemd escapes most, not all).
            .chain([UnitSample {
                level: UnitLevel::Stop,
                unit: "getty@\"tty1\".service".into(),
                duration_ns: 20_000_000,
            }])
            .collect();
        let boot = Boot {
            boot_id: format!("0b7c1a6e-0000-4000-8000-0000000{i:05}"),
            phases: vec![Phase::new("userspace_shutdown", 2_000_000_000)],
            total_ns: 9_000_000_000,
            reboot_unix_ns: 1_795_000_000_000_000_000 + i as u64 * 60_000_000_000,
            mode: "uncompressed".into(),
            units,
        };
        fold_boot(dir, &boot).unwrap();
    }
}

#[test]
fn unit_histograms_pass_promtool_and_openmetrics_with_their_labels_capped() {
    use fastkexec::metrics::histogram::MAX_UNIT_HISTOGRAMS;
    let d = tempfile::tempdir().unwrap();
    // 30 boots of 5 new units: 150 stop and 150 start units offered, at most 64 kept each.
    unit_state(d.path(), 30, 5);
    let dir = d.path().to_str().unwrap();
    let o = run(&["export", "--state-dir", dir]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_promtool_accepts(&o.stdout);
    let out = text(&o.stdout);
    let label_values = |family: &str| {
        samples(&out)
            .into_iter()
            .filter(|(n, _, _)| *n == format!("{family}_count"))
            .map(|(_, l, v)| (l, v))
            .collect::<Vec<_>>()
    };
    let stop = label_values("fastkexec_unit_stop_duration_seconds");
    let start = label_values("fastkexec_unit_start_duration_seconds");
    assert_eq!(stop.len(), MAX_UNIT_HISTOGRAMS);
    assert_eq!(start.len(), MAX_UNIT_HISTOGRAMS);
    // The unit seen in every boot was first folded in boot 0: it kept its place and its count.
    assert!(
        stop.contains(&(
            r#"unit="getty@\"tty1\".service""#.to_string(),
            "30".to_string()
        )),
        "{stop:?}"
    );
    // Offered: 30 × 6 stop + 30 × 5 start; kept: 64 + 64 histograms, the getty one 30 times.
    let refused = 30 * 5 * 2 + 30 - (2 * MAX_UNIT_HISTOGRAMS + 29);
    assert!(
        out.contains(&format!(
            "\nfastkexec_unit_samples_refused_total {refused}\n"
        )),
        "{out}"
    );

    let o = run(&["export", "--state-dir", dir, "--format", "openmetrics"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let p = pipe(&python(), &["-c", OPENMETRICS_PARSER], &o.stdout);
    assert!(p.status.success(), "parser: {}", text(&p.stderr));
    let fams: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    let names: Vec<&str> = fams
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for want in [
        "fastkexec_unit_stop_duration_seconds",
        "fastkexec_unit_start_duration_seconds",
        "fastkexec_unit_samples_refused",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }

    let o = run(&["export", "--state-dir", dir, "--format", "json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        j["unit_stop"].as_array().unwrap().len(),
        MAX_UNIT_HISTOGRAMS
    );
    assert_eq!(j["units_refused"], refused as u64);
    assert_eq!(j["unit_stop"][0]["name"], "u0-0.service");
}

#[test]
fn without_unit_histograms_the_export_has_no_unit_family() {
    let d = tempfile::tempdir().unwrap();
    lab_like_state(d.path());
    let o = run(&["export", "--state-dir", d.path().to_str().unwrap()]);
    assert!(!text(&o.stdout).contains("fastkexec_unit_"));
    // The CLI refuses a cap above what the state keeps.
    let o = run(&["report", "--no-fold", "--unit-histograms", "65"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("65"), "{}", text(&o.stderr));
}
