//! `cargo xtask lab run --trace --reboots N --state-out DIR`: N kexec reboots
//! in one VM. fastkexec's state directory (the histograms `report` folds each
//! boot into) lives on a virtio disk used as a raw tar archive, so no
//! filesystem driver is needed; a second, read-only virtio disk holds the
//! initramfs every chained round boots with (a cpio cannot contain itself).
//! Afterwards the host unpacks the state into DIR and checks what
//! `fastkexec export` makes of it with Prometheus' own `promtool`, and its
//! HdrHistogram interval log with PyPI's `hdrhistogram` (an independent codec).

use crate::kernels::KernelInfo;
use crate::util::{output, run};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Size of the state disk: the histograms are a few KiB; room to spare.
pub const STATE_DISK_BYTES: u64 = 16 << 20;

/// The modules the guest must insmod to drive its virtio disks and NIC, dependencies first.
pub const DEVICE_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_net"];

/// Kernel command-line words for a chained run of `reboots` reboots.
pub fn cmdline_words(reboots: u32) -> Vec<String> {
    vec![
        "fklab.disk=1".to_string(),
        format!("fklab.reboots_left={reboots}"),
    ]
}

/// QEMU arguments for the state disk (vda) and the chain initrd disk (vdb).
pub fn qemu_drives(state: &Path, chain_initrd: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},if=virtio,format=raw", state.display()),
        "-drive".into(),
        format!(
            "file={},if=virtio,format=raw,readonly=on",
            chain_initrd.display()
        ),
    ]
}

/// Module names compare with `-` and `_` alike (as modprobe does).
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// The uncompressed .ko files (name, bytes) that make `DEVICE_MODULES` work on
/// `kernel`, each after the modules it depends on; built-in ones are skipped.
pub fn device_modules(kernel: &KernelInfo) -> Result<Vec<(String, Vec<u8>)>> {
    let base = kernel
        .modules
        .as_ref()
        .context(
            "this kernel came without modules: the lab's virtio disk and NIC need virtio_blk \
             and virtio_net (pass --bare for a VM without them; --reboots needs them)",
        )?
        .join(&kernel.release);
    let builtin: Vec<String> = std::fs::read_to_string(base.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Path::new(l).file_name())
        .map(|f| norm(f.to_string_lossy().split(".ko").next().unwrap_or("")))
        .collect();
    let mut index = BTreeMap::new();
    for f in walk_ko(&base.join("kernel"))? {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(stem) = name.as_deref().and_then(|n| n.split(".ko").next()) {
            index.insert(norm(stem), f.clone());
        }
    }
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for m in DEVICE_MODULES {
        add(&norm(m), &index, &builtin, &mut out, 0)?;
    }
    Ok(out)
}

fn add(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    builtin: &[String],
    out: &mut Vec<(String, Vec<u8>)>,
    depth: u32,
) -> Result<()> {
    if depth > 16 {
        bail!("module dependencies of {name} loop");
    }
    if builtin.iter().any(|b| b == name) || out.iter().any(|(n, _)| n == name) {
        return Ok(());
    }
    let path = index
        .get(name)
        .with_context(|| format!("module {name} is neither built in nor shipped"))?;
    let data = uncompressed(path)?;
    for dep in depends(&data) {
        add(&norm(&dep), index, builtin, out, depth + 1)?;
    }
    out.push((name.to_string(), data));
    Ok(())
}

/// The module's `depends=` modinfo entry.
fn depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = ko.get(at + key.len()..).unwrap_or(&[]);
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(rest.get(..end).unwrap_or(&[]))
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// busybox insmod takes only plain ELF modules.
fn uncompressed(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        return std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    };
    let out = Command::new(tool)
        .args(["-d", "-c"])
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {tool} on {}", path.display()))?;
    if !out.status.success() {
        bail!("{tool} could not decompress {}", path.display());
    }
    Ok(out.stdout)
}

fn walk_ko(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk_ko(&p)?);
        } else if p.to_string_lossy().contains(".ko") {
            out.push(p);
        }
    }
    Ok(out)
}

/// A fresh state disk: an empty tar archive (so the first round's extract is a
/// real check), zero-padded to [`STATE_DISK_BYTES`].
pub fn create_state_disk(img: &Path) -> Result<()> {
    let empty = img.with_extension("empty");
    std::fs::create_dir_all(&empty)?;
    run(
        "tar (empty state disk)",
        Command::new("tar")
            .arg("-cf")
            .arg(img)
            .arg("-C")
            .arg(&empty)
            .arg("."),
    )?;
    std::fs::remove_dir(&empty)?;
    let f = std::fs::OpenOptions::new().write(true).open(img)?;
    f.set_len(STATE_DISK_BYTES)?;
    Ok(())
}

/// Unpacks the state disk (a tar archive) into `dir`.
pub fn extract_state(img: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    run(
        "tar (state disk → --state-out)",
        Command::new("tar").arg("-xf").arg(img).arg("-C").arg(dir),
    )
}

/// What the chained run left behind, checked.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ChainCheck {
    pub reboots_wanted: u32,
    /// Round-2 inits seen on serial (one per reboot).
    pub reboots_seen: u32,
    /// Rounds that saved the state disk.
    pub states_saved: u32,
    pub state_dir: PathBuf,
    /// `fastkexec export --format prometheus` exit status was 0.
    pub export_ok: bool,
    /// `promtool check metrics` accepted the export.
    pub promtool_ok: bool,
    pub promtool_output: String,
    /// `fastkexec_phase_duration_seconds_count{phase=...}` per phase.
    pub counts: BTreeMap<String, u64>,
    /// The `_count` lines as exported.
    pub count_lines: Vec<String>,
    /// Histograms PyPI's hdrhistogram decoded from `export --format hdr-log`.
    pub hdr_decoded: usize,
    /// Where its count, p50 or max differ from `export --format json`.
    pub hdr_mismatches: Vec<String>,
    pub error: Option<String>,
}

impl ChainCheck {
    pub fn ok(&self) -> bool {
        self.error.is_none()
            && self.reboots_seen == self.reboots_wanted
            && self.states_saved == self.reboots_wanted
            && self.export_ok
            && self.promtool_ok
            && !self.counts.is_empty()
            && self.hdr_decoded > self.counts.len()
            && self.hdr_mismatches.is_empty()
            && self
                .counts
                .values()
                .all(|&c| c == u64::from(self.reboots_wanted))
    }
}

/// Counts reboots and saves in the serial lines, unpacks the state disk into
/// `state_dir` and checks the export with promtool.
pub fn check(
    lines: &[(f64, String)],
    reboots: u32,
    img: &Path,
    state_dir: &Path,
    fastkexec: &Path,
) -> ChainCheck {
    let count = |p: &str| lines.iter().filter(|(_, l)| l.starts_with(p)).count() as u32;
    let mut c = ChainCheck {
        reboots_wanted: reboots,
        reboots_seen: count("FKLAB: init round=2"),
        states_saved: count("FKLAB: state saved"),
        state_dir: state_dir.to_path_buf(),
        ..ChainCheck::default()
    };
    if let Err(e) = export_check(&mut c, img, state_dir, fastkexec) {
        c.error = Some(format!("{e:#}"));
    }
    c
}

fn export_check(c: &mut ChainCheck, img: &Path, dir: &Path, fastkexec: &Path) -> Result<()> {
    extract_state(img, dir)?;
    let text = output(
        "fastkexec export --format prometheus",
        Command::new(fastkexec)
            .arg("export")
            .arg("--state-dir")
            .arg(dir)
            .args(["--format", "prometheus"]),
    )?;
    c.export_ok = true;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool (Debian package prometheus; `cargo xtask setup`)")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("promtool stdin")?;
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    c.promtool_ok = out.status.success();
    c.promtool_output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string();
    (c.counts, c.count_lines) = counts(&text);
    hdr_check(c, dir, fastkexec)
}

/// Decodes the interval log with PyPI's hdrhistogram and compares every
/// histogram (each phase and the total) with our JSON export.
fn hdr_check(c: &mut ChainCheck, dir: &Path, fastkexec: &Path) -> Result<()> {
    let export = |format: &str| {
        output(
            &format!("fastkexec export --format {format}"),
            Command::new(fastkexec)
                .arg("export")
                .arg("--state-dir")
                .arg(dir)
                .args(["--format", format]),
        )
    };
    let log = dir.join("reboots.hlog");
    std::fs::write(&log, export("hdr-log")?).with_context(|| log.display().to_string())?;
    let ours: serde_json::Value = serde_json::from_str(&export("json")?)?;
    let python = crate::setup::python_venv().join("bin/python3");
    let theirs: serde_json::Value = serde_json::from_str(&output(
        "PyPI hdrhistogram decoding the interval log (`cargo xtask setup` installs it)",
        Command::new(&python)
            .arg(crate::util::workspace_root().join("fastkexec/tests/hdr_decode.py"))
            .arg(&log),
    )?)?;
    c.hdr_decoded = theirs.as_object().map_or(0, |m| m.len());
    let histograms = ours
        .get("phases")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .chain(ours.get("total"));
    for h in histograms {
        // The interval-log tag is the phase's machine name itself, as in every export.
        let name = h.get("name").and_then(|n| n.as_str()).unwrap_or("?");
        for (key, ours_key) in [("count", "count"), ("p50", "p50_ns"), ("max", "max_ns")] {
            let (a, b) = (theirs.pointer(&format!("/{name}/{key}")), h.get(ours_key));
            if a.is_none() || a != b {
                c.hdr_mismatches.push(format!(
                    "{name}: {key} {} decoded, {} exported",
                    a.map_or("none".into(), |v| v.to_string()),
                    b.map_or("none".into(), |v| v.to_string())
                ));
            }
        }
    }
    Ok(())
}

/// The phase histograms' `_count` samples of a Prometheus exposition.
pub fn counts(text: &str) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut map = BTreeMap::new();
    let mut lines = Vec::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("fastkexec_phase_duration_seconds_count{") else {
            continue;
        };
        lines.push(l.to_string());
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let phase = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("phase="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        if let Ok(v) = value.split_whitespace().next().unwrap_or("").parse::<f64>() {
            map.insert(phase, v as u64);
        }
    }
    (map, lines)
}

/// One line for the run summary.
pub fn summary(c: &ChainCheck) -> String {
    format!(
        " · reboots {}/{} · promtool {} · _count {:?} · hdrhistogram decoded {}{}",
        c.reboots_seen,
        c.reboots_wanted,
        if c.promtool_ok { "ok" } else { "FAILED" },
        c.counts.values().collect::<Vec<_>>(),
        c.hdr_decoded,
        if c.hdr_mismatches.is_empty() {
            ", agrees".to_string()
        } else {
            format!(", DIFFERS: {}", c.hdr_mismatches.join("; "))
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reads_each_phase() {
        let text = "# TYPE fastkexec_phase_duration_seconds histogram\n\
            fastkexec_phase_duration_seconds_bucket{phase=\"purgatory\",le=\"+Inf\"} 3\n\
            fastkexec_phase_duration_seconds_count{phase=\"purgatory\"} 3\n\
            fastkexec_phase_duration_seconds_count{phase=\"kernel_boot\"} 2\n";
        let (m, l) = counts(text);
        assert_eq!(m.get("purgatory"), Some(&3));
        assert_eq!(m.get("kernel_boot"), Some(&2));
        assert_eq!(l.len(), 2);
        let c = ChainCheck {
            reboots_wanted: 3,
            reboots_seen: 3,
            states_saved: 3,
            export_ok: true,
            promtool_ok: true,
            counts: m,
            hdr_decoded: 3,
            ..ChainCheck::default()
        };
        // One phase short of three: not the acceptance.
        assert!(!c.ok());
        let mut c = c;
        c.counts.insert("kernel_boot".into(), 3);
        assert!(c.ok());
        c.hdr_mismatches
            .push("purgatory: max 1 decoded, 2 exported".into());
        assert!(!c.ok(), "the independent decoder must agree");
    }

    #[test]
    fn depends_reads_modinfo() {
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring\0intree=Y\0";
        assert_eq!(depends(ko), vec!["virtio", "virtio_ring"]);
        assert!(depends(b"\0depends=\0").is_empty());
    }
}
