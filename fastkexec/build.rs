//! Builds the eBPF programs (crate `fastkexec-ebpf`, binary `fastkexec-probes`)
//! for `bpfel-unknown-none` and leaves the object at `$OUT_DIR/fastkexec-probes`,
//! where `src/trace/ebpf.rs` embeds it.
//!
//! aya-build runs `rustup run nightly cargo build -Z build-std=core ...` in its
//! own target directory under `OUT_DIR`; that needs the nightly toolchain with
//! `rust-src` and `bpf-linker` in `PATH`. With `AYA_BUILD_SKIP=1` nothing is
//! built and an empty object is embedded instead (user space still compiles;
//! the tracer then says it has no probes). Without the `probes` feature
//! (xtask's view of the library) nothing is built or embedded at all, so that
//! `cargo xtask setup` can build before it has installed bpf-linker.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _};

/// File name of the object in `OUT_DIR`: the eBPF crate's binary target name.
const PROBES_BIN: &str = "fastkexec-probes";
const EBPF_PACKAGE: &str = "fastkexec-ebpf";
const AYA_BUILD_SKIP: &str = "AYA_BUILD_SKIP";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={AYA_BUILD_SKIP}");
    if env::var_os("CARGO_FEATURE_PROBES").is_none() {
        return Ok(());
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join(PROBES_BIN);

    if skip_requested() {
        fs::write(&object, [])
            .with_context(|| format!("writing empty placeholder {}", object.display()))?;
        println!(
            "cargo:warning={AYA_BUILD_SKIP} is set: embedding an empty eBPF object; \
             the tracer cannot load its programs from this build"
        );
        return Ok(());
    }

    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let ebpf_dir = manifest_dir.join("..").join(EBPF_PACKAGE);
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("eBPF crate directory {} not found", ebpf_dir.display()))?;
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("eBPF crate path {} is not UTF-8", ebpf_dir.display()))?;

    share_nested_target(&out_dir);
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context(
        "building the eBPF programs failed: needs `rustup toolchain install nightly \
         --component rust-src` and bpf-linker in PATH (`cargo xtask setup`), \
         or set AYA_BUILD_SKIP=1 to build user space without them",
    )?;

    if !object.is_file() {
        return Err(anyhow!(
            "aya-build finished but {} is missing: is `{PROBES_BIN}` still the binary \
             target of {EBPF_PACKAGE}?",
            object.display()
        ));
    }
    Ok(())
}

/// Same rule as aya-build's own check, so both agree on when nothing is built.
fn skip_requested() -> bool {
    env::var_os(AYA_BUILD_SKIP).is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// aya-build builds in `OUT_DIR/aya-build/target/<package>`, so every host
/// profile (dev, clippy's check, the static musl release) rebuilds `core` for
/// the BPF target from scratch: minutes each. Its build is always `--release`
/// for `bpfel-unknown-none` with fixed flags, independent of the host profile,
/// so one nested target directory under `<target>/ebpf-shared` serves them all;
/// cargo's own lock on that directory serialises concurrent builds. Best
/// effort: if anything here fails, aya-build simply uses its own directory.
fn share_nested_target(out_dir: &Path) {
    let Some(target_root) = out_dir
        .ancestors()
        .find(|a| a.join("CACHEDIR.TAG").is_file())
    else {
        return;
    };
    let shared = target_root.join("ebpf-shared").join(EBPF_PACKAGE);
    let link = out_dir.join("aya-build").join("target").join(EBPF_PACKAGE);
    if link.symlink_metadata().is_ok() || fs::create_dir_all(&shared).is_err() {
        return;
    }
    if let Some(parent) = link.parent() {
        if fs::create_dir_all(parent).is_ok() {
            let _ = std::os::unix::fs::symlink(&shared, &link);
        }
    }
}
