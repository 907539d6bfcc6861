//! The shipped boot-time unit (contrib/systemd/fastkexec-report.service) against the real
//! binary and systemd's own checker.

use std::fs;
use std::path::Path;
use std::process::Command;

mod common;
use common::fixtures;

fn unit_text() -> String {
    let unit =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd/fastkexec-report.service");
    fs::read_to_string(unit).expect("the unit file")
}

fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// A boot without a record (a cold boot, a kexec-tools reboot) must not put the unit in
/// `systemctl --failed`: whatever `report` exits with there is listed in SuccessExitStatus=.
#[test]
fn a_boot_without_a_record_is_a_success_for_the_unit() {
    let unit = unit_text();
    let state = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_fastkexec"))
        .arg("--root")
        .arg(fixtures().join("status/plain"))
        .args(["report", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    let code = o.status.code().expect("an exit status");
    assert_ne!(code, 0, "no record is not a plain success");
    let listed: Vec<i32> = values(&unit, "SuccessExitStatus")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|c| c.parse().unwrap())
        .collect();
    assert!(
        listed.contains(&code),
        "report exits {code} without a record; the unit lists {listed:?}"
    );
    // One ExecStart: SuccessExitStatus= speaks of the main process's status.
    assert_eq!(values(&unit, "ExecStart").len(), 1);
}

/// systemd's own checker accepts the unit (with the binary at a path that exists here).
#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_fastkexec");
    let unit = unit_text().replace("/usr/local/bin/fastkexec", bin);
    let path = dir.path().join("fastkexec-report.service");
    fs::write(&path, unit).unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package, installed by `cargo xtask setup`)");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
