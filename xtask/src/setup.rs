//! `cargo xtask setup`: installs everything the build, the tests and the lab
//! need on a fresh Debian machine. Idempotent: a second run checks and returns.

use crate::kernels;
use crate::util::{have, output, run, step};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages: the lab (QEMU, busybox, kexec-tools baselines, cpio), the
/// compressors the decompression fixtures are made with, and checkers.
pub const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kexec-tools",
    "cpio",
    "debian-archive-keyring",
    "gzip",
    "bzip2",
    "xz-utils",
    "lzma",
    "lzop",
    "lz4",
    "zstd",
    "gcc",
    "binutils",
    "file",
    // promtool, which the export tests run on our Prometheus output.
    "prometheus",
    // systemd-analyze, which checks the shipped unit (fastkexec/tests/unit_file.rs).
    "systemd",
    // `python3 -m venv` for the Python checkers when python3 is Debian's.
    "python3-venv",
    // The lab's Debian system image (`lab run --system debian`): mmdebstrap builds the root
    // file system, mke2fs -d turns it into ext4 without mounting, qemu-img makes each run's
    // throw-away overlay.
    "mmdebstrap",
    "e2fsprogs",
    "qemu-utils",
];

/// PyPI packages the export tests check our output with: independent implementations of the
/// HdrHistogram codec and of the OpenMetrics parser. Installed into `python_venv()`.
pub const PYTHON_PACKAGES: &[&str] = &["hdrhistogram==0.10.8", "prometheus-client==0.26.0"];

pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// cargo-fuzz, which builds and runs the fuzz targets in `fuzz/` (libFuzzer) on the nightly
/// toolchain.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub struct SetupOptions {
    pub kernels: Vec<String>,
    pub refresh_kernels: bool,
}

pub fn setup(opts: &SetupOptions) -> Result<()> {
    apt_packages().context("setup step 1/6 (Debian packages) failed")?;
    python_checkers().context("setup step 2/6 (Python checkers) failed")?;
    rust_toolchains().context("setup step 3/6 (Rust toolchains) failed")?;
    bpf_linker().context("setup step 4/6 (bpf-linker) failed")?;
    cargo_fuzz().context("setup step 5/6 (cargo-fuzz) failed")?;
    // `--kernels ''` (a server that only builds fastkexec) fetches none.
    for k in opts.kernels.iter().filter(|k| !k.is_empty()) {
        let info = kernels::ensure(k, opts.refresh_kernels)
            .with_context(|| format!("setup step 6/6 (lab kernel {k}) failed"))?;
        step(format!(
            "kernel {}: {} ({}, {} payload, vmlinux {} MB)",
            info.name,
            info.packages.join(" "),
            info.release,
            info.compression,
            info.vmlinux_bytes / 1_000_000
        ));
    }
    step("setup complete");
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        step("Debian packages: all present");
        return Ok(());
    }
    step(format!("Debian packages: installing {}", missing.join(" ")));
    crate::apt::install(&missing)
}

/// The virtualenv holding `PYTHON_PACKAGES` (fastkexec/tests/export.rs looks for it here).
pub fn python_venv() -> PathBuf {
    crate::util::workspace_root().join("target").join("pyvenv")
}

fn python_checkers() -> Result<()> {
    let venv = python_venv();
    let python = venv.join("bin").join("python3");
    let probe = "import hdrh.log, prometheus_client.openmetrics.parser";
    let ready = Command::new(&python)
        .args(["-c", probe])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ready {
        step(format!("Python checkers: present in {}", venv.display()));
        return Ok(());
    }
    if !have("python3") {
        bail!("python3 is not on PATH: install Debian's python3 (or any CPython 3.8+)");
    }
    step(format!(
        "Python checkers: installing {} into {}",
        PYTHON_PACKAGES.join(" "),
        venv.display()
    ));
    run(
        "python3 -m venv",
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    run(
        "pip install",
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(PYTHON_PACKAGES),
    )?;
    run(
        "python3 import check",
        Command::new(&python).args(["-c", probe]),
    )
}

fn rustup(args: &[&str]) -> Result<String> {
    output(
        &format!("rustup {}", args.join(" ")),
        Command::new("rustup").args(args),
    )
}

fn rust_toolchains() -> Result<()> {
    if !have("rustup") {
        bail!("rustup is not on PATH: install Rust with rustup first");
    }
    let toolchains = rustup(&["toolchain", "list"])?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("Rust: installing the nightly toolchain (the eBPF build needs it)");
        rustup(&["toolchain", "install", "nightly", "--profile", "minimal"])?;
    }
    let want = [
        ("nightly", "component", "rust-src"),
        ("nightly", "target", "x86_64-unknown-linux-musl"),
        ("stable", "target", "x86_64-unknown-linux-musl"),
        ("stable", "component", "clippy"),
        ("stable", "component", "rustfmt"),
    ];
    for (tc, kind, name) in want {
        let list = rustup(&[kind, "list", "--toolchain", tc, "--installed"])?;
        if list.lines().any(|l| l.starts_with(name)) {
            continue;
        }
        step(format!("Rust: adding {kind} {name} to {tc}"));
        rustup(&[kind, "add", "--toolchain", tc, name])?;
    }
    step("Rust toolchains: nightly + rust-src, musl target, clippy, rustfmt present");
    Ok(())
}

/// Where the LLVM prefix for bpf-linker lives (outside the repo: the linker
/// binary refers to it at run time).
pub fn llvm_prefix() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    home.join(".local/share/fastkexec/llvm-prefix")
}

/// The nightly toolchain's own libLLVM (bpf-linker must link the same LLVM).
fn nightly_libllvm() -> Result<PathBuf> {
    let sysroot = output(
        "rustc +nightly --print sysroot",
        Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]),
    )?;
    let lib = Path::new(sysroot.trim()).join("lib");
    std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().starts_with("libLLVM.so."))
                .unwrap_or(false)
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))
}

fn bpf_linker() -> Result<()> {
    let llvm = nightly_libllvm()?;
    let file = llvm
        .file_name()
        .context("libLLVM name")?
        .to_string_lossy()
        .into_owned();
    // "libLLVM.so.22.1-rust-…" → 22
    let major: u32 = file
        .trim_start_matches("libLLVM.so.")
        .split(['.', '-'])
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {file}"))?;
    let prefix = llvm_prefix();
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let mut relinked = false;
    for name in ["libLLVM.so", file.as_str()] {
        let link = lib.join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(llvm.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&llvm, &link)
                .with_context(|| format!("linking {}", link.display()))?;
            relinked = true;
        }
    }
    let current = Command::new("bpf-linker").arg("--version").output();
    let ok = matches!(&current, Ok(o) if o.status.success()
        && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if ok && !relinked {
        step(format!(
            "bpf-linker {BPF_LINKER_VERSION}: present (LLVM {major})"
        ));
        return Ok(());
    }
    step(format!(
        "bpf-linker {BPF_LINKER_VERSION}: building against the nightly toolchain's LLVM {major} \
         (a few minutes)"
    ));
    run(
        "cargo install bpf-linker",
        Command::new("cargo").env("LLVM_PREFIX", &prefix).args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ]),
    )
}

fn cargo_fuzz() -> Result<()> {
    let current = Command::new("cargo").args(["fuzz", "--version"]).output();
    if matches!(&current, Ok(o) if o.status.success()
        && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION))
    {
        step(format!("cargo-fuzz {CARGO_FUZZ_VERSION}: present"));
        return Ok(());
    }
    step(format!(
        "cargo-fuzz {CARGO_FUZZ_VERSION}: installing (about a minute)"
    ));
    run(
        "cargo install cargo-fuzz",
        Command::new("cargo").args([
            "install",
            &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
            "--locked",
            "--force",
        ]),
    )
}
