//! The fresh-machine guard: xtask must build and run where bpf-linker is not
//! installed yet, because `cargo xtask setup` is what installs it.
//!
//! A development machine hides the mistake (bpf-linker sits in
//! `$CARGO_HOME/bin`, which rustup's proxies put on PATH for every toolchain
//! binary they run), so the guard builds xtask the way a fresh clone on a fresh
//! machine would: an empty `CARGO_HOME` (only the downloaded crate sources are
//! shared, never binaries), PATH without any directory that holds bpf-linker,
//! the toolchain's own `cargo` called directly, and an empty target directory.

use crate::util::{output, step, workspace_root};
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

const LINKER: &str = "bpf-linker";

/// Variables that would make the guard's build differ from a fresh clone's.
const SCRUBBED: [&str; 5] = [
    "AYA_BUILD_SKIP",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTUP_TOOLCHAIN",
    "CARGO_BUILD_TARGET_DIR",
];

pub fn xtask_builds_without_bpf_linker() -> Result<()> {
    step("fresh-machine guard: build and run `cargo xtask --help` with no bpf-linker reachable and an empty target directory");
    let scratch = workspace_root().join("target").join("fresh-machine-guard");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("emptying {}", scratch.display()))?;
    }
    let cargo_home = scratch.join("cargo-home");
    std::fs::create_dir_all(&cargo_home)
        .with_context(|| format!("creating {}", cargo_home.display()))?;
    let real_home = real_cargo_home();
    let registry = real_home.join("registry");
    if registry.is_dir() {
        std::os::unix::fs::symlink(&registry, cargo_home.join("registry"))
            .context("sharing the crate sources with the guard's CARGO_HOME")?;
    }
    let cargo = toolchain_cargo()?;
    let toolchain_bin = cargo.parent().context("cargo has no directory")?;
    let path = guard_path(toolchain_bin, &real_home.join("bin"));
    // The guard proves something only if bpf-linker really is out of reach.
    if let Some(found) = find(&path, LINKER) {
        bail!(
            "fresh-machine guard: {} is still reachable on the guard's PATH",
            found.display()
        );
    }
    let target = scratch.join("target");
    // `cargo build -p PACKAGE` as a fresh clone on a fresh machine would run it.
    let fresh_build = |package: &str| {
        let mut c = Command::new(&cargo);
        c.current_dir(workspace_root())
            .args(["build", "--locked", "--package", package])
            .env("CARGO_HOME", &cargo_home)
            .env("CARGO_TARGET_DIR", &target)
            .env("PATH", &path);
        for var in SCRUBBED {
            c.env_remove(var);
        }
        c
    };
    output(
        "fresh-machine guard: cargo build -p xtask",
        &mut fresh_build("xtask"),
    )?;
    let xtask = target.join("debug").join("xtask");
    let help = output(
        "fresh-machine guard: xtask --help",
        Command::new(&xtask).arg("--help").env("PATH", &path),
    )?;
    if !help.contains("setup") {
        bail!("fresh-machine guard: `xtask --help` does not list `setup`:\n{help}");
    }
    // The other half of the shape: the user-facing build still needs the probes,
    // and says how to get bpf-linker when it is missing.
    let refused = fresh_build("fastkexec")
        .output()
        .context("fresh-machine guard: cannot start cargo build -p fastkexec")?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    if refused.status.success() || !stderr.contains("bpf-linker not found") {
        bail!(
            "fresh-machine guard: `cargo build -p fastkexec` without bpf-linker should fail \
             naming bpf-linker; it exited {} with:\n{stderr}",
            refused.status
        );
    }
    step("fresh-machine guard: ok (xtask built from an empty target directory without bpf-linker; `cargo build -p fastkexec` refused, naming bpf-linker)");
    // Its target directory is a full debug build: do not keep it around.
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn real_cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// The cargo binary of the running toolchain (not rustup's proxy, which would
/// put `$CARGO_HOME/bin` back on PATH).
fn toolchain_cargo() -> Result<PathBuf> {
    let rustc = output(
        "rustc --print sysroot",
        Command::new("rustc")
            .args(["--print", "sysroot"])
            .current_dir(workspace_root()),
    )?;
    let cargo = Path::new(rustc.trim()).join("bin").join("cargo");
    if !cargo.is_file() {
        bail!("no cargo in the toolchain at {}", cargo.display());
    }
    Ok(cargo)
}

/// The toolchain's bin directory, then the current PATH minus cargo's bin
/// directory and any directory that holds bpf-linker.
fn guard_path(toolchain_bin: &Path, cargo_bin: &Path) -> OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let kept =
        std::env::split_paths(&current).filter(|d| d != cargo_bin && !d.join(LINKER).exists());
    std::env::join_paths(std::iter::once(toolchain_bin.to_path_buf()).chain(kept))
        .unwrap_or_default()
}

fn find(path: &OsString, prog: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}
