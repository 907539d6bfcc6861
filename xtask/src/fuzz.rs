//! `cargo xtask fuzz`: every cargo-fuzz target in `fuzz/` (libFuzzer, coverage-guided, on the
//! nightly toolchain), each for a bounded time on one core; a crash fails the run and leaves
//! the input under `target/fuzz/artifacts/<target>/`. Part of `cargo xtask test`.
//!
//! Corpora live in `target/fuzz/corpus/<target>/` (they grow from run to run and are never
//! committed): seeded at run time from the test fixtures (`fastkexec/tests/fixtures`), the
//! small hand-written seeds in `fuzz/seeds/<target>/`, and state files the library itself
//! writes.

use crate::util::{step, workspace_root};
use anyhow::{bail, Context, Result};
use fastkexec::metrics::histogram::{Boot, Phase, State, UnitLevel, UnitSample};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The fuzz targets (`fuzz/fuzz_targets/*.rs`) and what each one drives.
pub const TARGETS: &[(&str, &str)] = &[
    (
        "bzimage",
        "bzImage header, payload location, decompression, vmlinux checks",
    ),
    ("vmlinux", "vmlinux ELF checks"),
    ("handoff_report", "handoff record parse, report build, fold"),
    (
        "histogram_state",
        "state.json parse, every export format, round trip",
    ),
    ("serve_http", "`fastkexec serve`'s request path, end to end"),
];

/// What `cargo xtask test` gives each target: 5 × 15 s = 75 s of fuzzing.
pub const TEST_SECONDS_PER_TARGET: u64 = 15;

/// The largest input libFuzzer makes: a record with three event pages.
const MAX_LEN: usize = 16384;

/// One target's run, from libFuzzer's final `#N DONE cov: X ft: Y ... exec/s: Z` line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub target: String,
    pub execs: Option<u64>,
    pub cov: Option<u64>,
    pub ft: Option<u64>,
    pub corpus: Option<u64>,
    pub exec_per_s: Option<u64>,
    /// The input libFuzzer wrote on a crash (`Test unit written to ...`).
    pub crash: Option<String>,
}

impl Outcome {
    pub fn line(&self) -> String {
        let f = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| v.to_string());
        format!(
            "fuzz {:<16} execs {:>9}  cov {:>5}  ft {:>5}  corpus {:>5}  exec/s {:>6}  crashes {}",
            self.target,
            f(self.execs),
            f(self.cov),
            f(self.ft),
            f(self.corpus),
            f(self.exec_per_s),
            if self.crash.is_some() { 1 } else { 0 }
        )
    }
}

/// Reads libFuzzer's output.
pub fn parse_output(target: &str, text: &str) -> Outcome {
    let mut o = Outcome {
        target: target.into(),
        ..Default::default()
    };
    let field = |words: &[&str], key: &str| -> Option<u64> {
        let i = words.iter().position(|w| *w == key)?;
        words.get(i + 1)?.trim_end_matches("Kb").parse().ok()
    };
    for l in text.lines() {
        let words: Vec<&str> = l.split_whitespace().collect();
        if words.get(1) == Some(&"DONE") {
            o.execs = words
                .first()
                .and_then(|w| w.trim_start_matches('#').parse().ok());
            o.cov = field(&words, "cov:");
            o.ft = field(&words, "ft:");
            o.corpus = words
                .iter()
                .position(|w| *w == "corp:")
                .and_then(|i| words.get(i + 1))
                .and_then(|c| c.split('/').next())
                .and_then(|c| c.parse().ok());
            o.exec_per_s = field(&words, "exec/s:");
        }
        if let Some(at) = l.find("Test unit written to ") {
            o.crash = Some(l[at + "Test unit written to ".len()..].trim().to_string());
        }
    }
    o
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

fn out_dir() -> PathBuf {
    workspace_root().join("target").join("fuzz")
}

fn cargo_fuzz() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(fuzz_dir())
        .args(["+nightly", "fuzz"])
        // rustup's proxy picks the toolchain from `+nightly`; an outer `cargo` (stable)
        // must not pin it through RUSTUP_TOOLCHAIN.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC");
    c
}

/// Build flags: optimized, with debug assertions and overflow checks (the clock math's
/// overflows are exactly what a forged record aims at), AddressSanitizer (cargo-fuzz's default).
const BUILD: &[&str] = &["-O", "--debug-assertions"];

fn state_seed(boots: u64) -> Result<Vec<u8>> {
    let mut s = State::new();
    for i in 0..boots {
        s.fold(&Boot {
            boot_id: format!("00000000-0000-4000-8000-00000000000{i}"),
            phases: vec![
                Phase::new("device_shutdown", 11_000_000 + i * 1000),
                Phase::new("relocation", 400_000 + i),
                Phase::new("purgatory", 80_000),
                Phase::new("kernel_boot", 5_300_000_000 + i * 7),
                Phase::new("user_space", 360_000_000),
            ],
            total_ns: 5_700_000_000 + i,
            reboot_unix_ns: 1_790_000_000_000_000_000 + i * 60_000_000_000,
            mode: if i % 2 == 0 { "uncompressed" } else { "staged" }.into(),
            // Per-unit histograms too, so the seed reaches their decoding.
            units: vec![UnitSample {
                level: UnitLevel::Stop,
                unit: "slow-stop.service".into(),
                duration_ns: 1_500_000_000 + i,
            }],
        })?;
    }
    Ok(s.to_json()?)
}

/// The files of `dir` whose names `keep` accepts, as (`seed-NAME`, bytes); none if no `dir`.
fn read_dir_files(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Vec<(String, Vec<u8>)>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut v = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_file() && keep(&name) {
            let bytes = std::fs::read(e.path()).with_context(|| format!("reading {name}"))?;
            v.push((format!("seed-{name}"), bytes));
        }
    }
    v.sort();
    Ok(v)
}

/// Fills `target/fuzz/corpus/<target>` with its seeds (kept files are left alone).
fn seed(target: &str) -> Result<PathBuf> {
    let corpus = out_dir().join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let fixtures = workspace_root().join("fastkexec/tests/fixtures");
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    match target {
        "bzimage" => files.extend(read_dir_files(&fixtures, &|n| n.starts_with("bzImage-"))?),
        "vmlinux" => files.extend(read_dir_files(&fixtures, &|n| n.ends_with(".elf"))?),
        "histogram_state" => {
            for boots in [1, 3] {
                files.push((format!("seed-state-{boots}-boots.json"), state_seed(boots)?));
            }
        }
        _ => {}
    }
    files.extend(read_dir_files(
        &fuzz_dir().join("seeds").join(target),
        &|_| true,
    )?);
    for (name, bytes) in files {
        let path = corpus.join(name);
        if !path.exists() {
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(corpus)
}

/// Builds every target, then runs each for `per_target`; fails on a crash.
pub fn run_all(per_target: Duration) -> Result<Vec<Outcome>> {
    step(format!(
        "fuzz: building {} targets (cargo +nightly fuzz build -O --debug-assertions)",
        TARGETS.len()
    ));
    let target_dir = out_dir().join("build");
    crate::util::run(
        "cargo fuzz build",
        cargo_fuzz()
            .arg("build")
            .args(BUILD)
            .arg("--target-dir")
            .arg(&target_dir),
    )?;
    let mut outcomes = Vec::new();
    for (target, what) in TARGETS {
        let corpus = seed(target)?;
        let artifacts = out_dir().join("artifacts").join(target);
        std::fs::create_dir_all(&artifacts)?;
        step(format!(
            "fuzz {target} ({what}) for {} s, corpus {}",
            per_target.as_secs(),
            corpus.display()
        ));
        let out = cargo_fuzz()
            .arg("run")
            .args(BUILD)
            .arg("--target-dir")
            .arg(&target_dir)
            .arg(target)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={}", per_target.as_secs()))
            .arg(format!("-max_len={MAX_LEN}"))
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .output()
            .with_context(|| format!("cannot start cargo fuzz run {target}"))?;
        let text = String::from_utf8_lossy(&out.stderr);
        let o = parse_output(target, &text);
        println!("{}", o.line());
        if !out.status.success() || o.crash.is_some() || o.execs.is_none() {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            for l in tail.iter().rev() {
                println!("    | {l}");
            }
            bail!(
                "fuzz target {target} failed ({}){}: reproduce with `cd fuzz && cargo +nightly fuzz \
                 run -O --debug-assertions {target} <input>`, then make the input a unit test in \
                 the library and fix the cause",
                out.status,
                o.crash
                    .as_deref()
                    .map(|c| format!(", input {c}"))
                    .unwrap_or_default()
            );
        }
        outcomes.push(o);
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_figures_and_crashes_are_read() {
        let text = "INFO: Seed: 1\n#53\tINITED cov: 2022 ft: 3073 corp: 46/42Kb exec/s: 0 rss: 82Mb\n\
                    #42573\tDONE   cov: 5564 ft: 9831 corp: 527/1161Kb lim: 2457 exec/s: 2660 rss: 138Mb\n\
                    Done 42573 runs in 16 second(s)\n";
        let o = parse_output("bzimage", text);
        assert_eq!(
            (o.execs, o.cov, o.ft, o.corpus, o.exec_per_s),
            (Some(42573), Some(5564), Some(9831), Some(527), Some(2660))
        );
        assert_eq!(o.crash, None);
        assert!(o.line().contains("crashes 0"));
        let crash =
            "==1== ERROR: libFuzzer: deadly signal\nartifact_prefix='a/'; Test unit written \
                     to a/crash-6c6f\n";
        let o = parse_output("handoff_report", crash);
        assert_eq!(o.crash.as_deref(), Some("a/crash-6c6f"));
        assert_eq!(o.execs, None);
        assert!(o.line().contains("crashes 1"));
    }

    #[test]
    fn every_target_has_a_source_and_a_bin_entry() {
        let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
        for (t, _) in TARGETS {
            assert!(
                fuzz_dir().join(format!("fuzz_targets/{t}.rs")).is_file(),
                "{t}"
            );
            assert!(manifest.contains(&format!("name = \"{t}\"")), "{t}");
        }
        assert_eq!(manifest.matches("[[bin]]").count(), TARGETS.len());
    }

    #[test]
    fn the_state_seeds_are_states_the_library_reads() {
        for boots in [1, 3] {
            let s = State::parse(&state_seed(boots).unwrap()).unwrap();
            assert_eq!(s.boots(), boots);
        }
    }
}
