//! The `fastkexec` binary as a user runs it: help, errors, `status`, `load --dry-run` on a
//! fixture machine tree (no root, no kexec needed), man pages and completions.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{copy_tree, fixtures};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fastkexec"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run fastkexec")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A machine: a status fixture (proc/sys kexec files) plus a QEMU guest's firmware map.
fn machine(status_case: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    copy_tree(&fixtures().join("status").join(status_case), t.path());
    copy_tree(&fixtures().join("host/qemu-seabios"), t.path());
    t
}

#[test]
fn help_lists_every_command_and_the_kexec_tools_spellings() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    let text = stdout(&o);
    for cmd in [
        "load",
        "exec",
        "unload",
        "status",
        "prepare",
        "completions",
        "man",
    ] {
        assert!(
            text.contains(&format!("  {cmd} ")),
            "{cmd} missing:\n{text}"
        );
    }
    let o = run(&["load", "--help"]);
    let text = stdout(&o);
    for s in [
        "--ramdisk",
        "--command-line",
        "--reuse-cmdline",
        "--dry-run",
        "lockdown",
        "KASLR",
        "SEV/TDX",
    ] {
        assert!(text.contains(s), "{s} missing from load --help:\n{text}");
    }
    let o = run(&["--version"]);
    assert!(stdout(&o).starts_with("fastkexec "), "{}", stdout(&o));
}

#[test]
fn errors_name_the_cause_and_exit_1() {
    let o = run(&["load", "--kernel", "/nonexistent/vmlinuz", "--dry-run"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("fastkexec: error: cannot load /nonexistent/vmlinuz"),
        "{err}"
    );
    assert!(err.contains("caused by: /nonexistent/vmlinuz"), "{err}");
    assert!(stdout(&o).is_empty());
    // A fixture tree is never used for a real load.
    let root = fixtures().join("status/plain");
    let kernel = fixtures().join("bzImage-tiny.gzip");
    let o = run(&[
        "--root",
        root.to_str().unwrap(),
        "load",
        "--kernel",
        kernel.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--root only works with --dry-run"),
        "{}",
        stderr(&o)
    );
    // A usage error is clap's (exit 2), not ours.
    let o = run(&["load"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn status_json_on_a_fixture_tree() {
    let root = fixtures().join("status/crashkernel");
    let o = run(&["--root", root.to_str().unwrap(), "status", "--json"]);
    // A kdump kernel is loaded there, but no image to reboot into: 3, "nothing loaded"
    // (README's exit-status table), with the JSON all the same.
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["loaded"], false);
    assert_eq!(v["crash_loaded"], true);
    assert_eq!(v["crash_kernel"][0]["start"], 0x6500_0000u64);
    let o = run(&["--root", root.to_str().unwrap(), "status"]);
    assert!(stdout(&o).contains("mode uncompressed (kexec_load): allowed"));
}

#[test]
fn load_dry_run_end_to_end_without_root() {
    let root = machine("plain");
    let cache = tempfile::tempdir().unwrap();
    let kernel = fixtures().join("bzImage-tiny.xz");
    let o = run(&[
        "--root",
        root.path().to_str().unwrap(),
        "load",
        "--kernel",
        kernel.to_str().unwrap(),
        "--reuse-cmdline",
        "--append",
        "console=ttyS0,115200",
        "--cache-dir",
        cache.path().to_str().unwrap(),
        "--dry-run",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["mode"], "uncompressed");
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["loaded"], false);
    assert_eq!(v["compression"], "xz");
    assert_eq!(
        v["cmdline"],
        "root=UUID=0b6c1e0e-5bd3-4f3a-9d1c-6d6f3a0f9c11 ro console=ttyS0 quiet console=ttyS0,115200"
    );
    assert!(v["plan"].as_str().unwrap().contains("purgatory"));
    assert_eq!(fs::read_dir(cache.path()).unwrap().count(), 0);

    // The same with --mode file prints the syscall it would make.
    let o = run(&[
        "--root",
        root.path().to_str().unwrap(),
        "load",
        "--kernel",
        kernel.to_str().unwrap(),
        "--mode",
        "file",
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("syscall:  kexec_file_load(kernel="),
        "{}",
        stdout(&o)
    );
}

#[test]
fn man_and_completions_render() {
    let o = run(&["man"]);
    assert!(o.status.success());
    let page = stdout(&o);
    assert!(
        page.contains(".TH fastkexec 1"),
        "{}",
        &page[..200.min(page.len())]
    );
    assert!(
        page.contains("fastkexec\\-load(1)"),
        "no SEE ALSO to subcommands"
    );
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&["completions", shell]);
        assert!(
            o.status.success() && stdout(&o).contains("reuse-cmdline"),
            "{shell}"
        );
    }
}

/// docs/man is generated from the clap definitions; it must match them.
/// Regenerate with: cargo run -p fastkexec -- man --dir docs/man
#[test]
fn checked_in_man_pages_are_current() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/man");
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(names.iter().any(|n| n == "fastkexec-load.1"), "{names:?}");
    for name in names {
        let fresh = fs::read(dir.path().join(&name)).unwrap();
        let checked_in = fs::read(docs.join(&name)).unwrap_or_default();
        assert!(
            fresh == checked_in,
            "docs/man/{} is stale; run `cargo run -p fastkexec -- man --dir docs/man`",
            name.to_string_lossy()
        );
    }
}
