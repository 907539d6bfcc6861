//! Rebuild the eBPF object when `bpf-linker` changes.
//!
//! Linking the `bpfel-unknown-none` binary runs `bpf-linker` from `PATH`, a
//! dependency cargo cannot see; its modification time is used as the cache key
//! (a different `bpf-linker` put earlier in `PATH` later is not noticed).
//!
//! This script also runs when the (empty) library target is built for the host
//! as fastkexec's build-dependency, so a missing linker is reported up front.
//! `AYA_BUILD_SKIP=1` (no eBPF build wanted) turns that check off.

use std::{env, process::ExitCode};

fn main() -> ExitCode {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        return ExitCode::SUCCESS;
    }
    match which::which("bpf-linker") {
        Ok(path) => {
            println!("cargo:rerun-if-changed={}", path.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!(
                "error: bpf-linker not found in PATH ({err}); it links the eBPF programs. \
                 Install it with `cargo xtask setup` (DESIGN.md §9: bpf-linker 0.13.0 built \
                 against the nightly toolchain's libLLVM, with LLVM_PREFIX set), \
                 or set AYA_BUILD_SKIP=1 to build user space without the eBPF programs."
            );
            ExitCode::FAILURE
        }
    }
}
