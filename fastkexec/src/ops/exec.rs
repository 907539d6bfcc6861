//! Jumping into the loaded kernel, and unloading it.
//!
//! Two ways to execute the loaded image:
//! - **clean** (default under systemd): `systemctl kexec`. systemd stops every unit, unmounts
//!   file systems and finally calls `reboot(LINUX_REBOOT_CMD_KEXEC)` itself; it finds the image
//!   we loaded (it only loads one of its own when none is loaded).
//! - **forced** (`--force`, or when PID 1 is not systemd): `sync()` then
//!   `reboot(LINUX_REBOOT_CMD_KEXEC)` right away. Services get no chance to stop and file
//!   systems stay mounted (their data is synced, not unmounted cleanly). Without systemd — a
//!   busybox init, an initramfs shell — this is the only path, as with `kexec -e`.
//!
//! After `load --mode staged`, both paths first check that the crashkernel reservation still
//! holds the kernel fastkexec staged there, and refuse if something else was loaded into it
//! since (see [`staged`](crate::staged)).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::files::lock::KexecLock;
use crate::host::status;
use crate::kexec::{self, Call};
use crate::staged::{self, PreExec};
use crate::{Error, Result};

/// How `exec` will switch kernels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecPath {
    /// `systemctl kexec`: orderly shutdown by systemd, which then jumps.
    Systemctl,
    /// `sync(); reboot(LINUX_REBOOT_CMD_KEXEC)` right now.
    Reboot { why: &'static str },
}

/// Whether PID 1 is systemd: `/run/systemd/system` exists (what `sd_booted()` checks), or
/// `/proc/1/comm` is `systemd`, or `/proc/1/exe` (readable by root only) ends in `/systemd`.
pub fn pid1_is_systemd(root: &Path) -> bool {
    if root.join("run/systemd/system").is_dir() {
        return true;
    }
    let comm = fs::read_to_string(root.join("proc/1/comm")).unwrap_or_default();
    if comm.trim() == "systemd" {
        return true;
    }
    fs::read_link(root.join("proc/1/exe"))
        .map(|p| p.file_name().is_some_and(|n| n == "systemd"))
        .unwrap_or(false)
}

/// Chooses between a clean `systemctl kexec` and an immediate reboot.
pub fn choose_path(root: &Path, force: bool) -> ExecPath {
    if force {
        ExecPath::Reboot { why: "--force" }
    } else if pid1_is_systemd(root) {
        ExecPath::Systemctl
    } else {
        ExecPath::Reboot {
            why: "PID 1 is not systemd",
        }
    }
}

fn loaded_flag_path(root: &Path) -> PathBuf {
    root.join("sys/kernel/kexec_loaded")
}

/// Refuses unless `/sys/kernel/kexec_loaded` reads 1.
pub fn ensure_loaded(root: &Path) -> Result<()> {
    let path = loaded_flag_path(root);
    let text = fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::ModeUnavailable {
                mode: "kexec",
                reason: format!(
                    "this kernel has no kexec support ({} does not exist)",
                    path.display()
                ),
            }
        } else {
            Error::io(&path, e)
        }
    })?;
    match text.trim() {
        "1" => Ok(()),
        "0" => Err(Error::NothingLoaded { path }),
        other => Err(Error::Parse {
            path,
            what: "kexec_loaded flag",
            content: other.to_string(),
        }),
    }
}

/// Makes this process, and the processes it starts (`systemctl kexec`), ignore SIGHUP as
/// nohup(1) does. A terminal hangs up exactly when a reboot is under way (sshd or a serial
/// getty is stopped by the shutdown `exec` starts): that must not stop a command that changes
/// what the kernel will boot half-way. The CLI calls it for `load`, `unload`, `exec` and
/// `trace`.
pub fn ignore_hangup() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
}

/// Executes the loaded kernel. Returns only on failure (or, for `systemctl kexec`, once systemd
/// has accepted the request and the shutdown is under way). Holds the kexec lock throughout.
pub fn exec(force: bool, go: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    let lock = KexecLock::acquire(Path::new("/"), "exec")?;
    exec_locked(force, &lock, go)
}

/// [`exec`] for a caller that already holds the kexec lock (`trace`).
///
/// `go` runs once every check has passed, right before `sync` and the reboot request: the
/// moment the blackout starts (the machine is still serving while the staged image is
/// checked, however long that takes), so that is where a tracer stamps the request.
pub fn exec_locked(
    force: bool,
    _lock: &KexecLock,
    go: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let root = Path::new("/");
    ensure_loaded(root)?;
    check_staged(root)?;
    go()?;
    // Sync first on both paths: if the clean shutdown stalls or the new kernel hangs, written
    // data is already on disk.
    kexec::sync();
    match choose_path(root, force) {
        ExecPath::Systemctl => {
            log::info!("PID 1 is systemd: running `systemctl kexec` for a clean shutdown");
            let status = Command::new("systemctl")
                .arg("kexec")
                .status()
                .map_err(|e| Error::Systemctl {
                    outcome: format!("could not be started: {e}"),
                })?;
            if status.success() {
                Ok(())
            } else {
                Err(Error::Systemctl {
                    outcome: format!("failed ({status})"),
                })
            }
        }
        ExecPath::Reboot { why } => {
            log::info!("{why}: sync and reboot(LINUX_REBOOT_CMD_KEXEC) now");
            let err = kexec::reboot_kexec();
            let st = status::status(root)?;
            Err(kexec::explain(Call::RebootKexec, err, &st))
        }
    }
}

/// Refuses when `load --mode staged` recorded a staged kernel that is no longer the crash
/// image (see [`staged::check_before_exec`]).
pub fn check_staged(root: &Path) -> Result<PreExec> {
    let found = staged::check_before_exec(root, staged::Depth::Complete)?;
    match &found {
        PreExec::NotStaged => {}
        PreExec::Intact { bytes, ms } => log::info!(
            "the staged kernel is intact (all {bytes} bytes of it read back and summed in \
             {ms:.1} ms)"
        ),
        PreExec::Unverified { why } => log::warn!(
            "cannot check the staged kernel beforehand: {why}; the trampoline still checks it \
             and resets the machine rather than boot a replaced kernel"
        ),
    }
    Ok(found)
}

/// Unloads the loaded (normal) image — a no-op for the kernel when none is loaded — and, after
/// `load --mode staged`, the staged crash image while it is still ours. Says what was done.
/// Holds the kexec lock throughout.
pub fn unload() -> Result<String> {
    let lock = KexecLock::acquire(Path::new("/"), "unload")?;
    unload_locked(&lock)
}

/// [`unload`] for a caller that already holds the kexec lock (`trace`).
pub fn unload_locked(_lock: &KexecLock) -> Result<String> {
    let root = Path::new("/");
    kexec::unload().map_err(|e| {
        let st = status::status(root).unwrap_or_default();
        kexec::explain(Call::Unload, e, &st)
    })?;
    Ok(match staged::unload_staged(root)? {
        Some(also) => format!("unloaded; {also}"),
        None => "unloaded".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn detects_systemd_by_run_dir_comm_or_exe() {
        let t = tree();
        assert!(!pid1_is_systemd(t.path()));
        write(t.path(), "proc/1/comm", "init\n");
        assert!(!pid1_is_systemd(t.path()));
        write(t.path(), "proc/1/comm", "systemd\n");
        assert!(pid1_is_systemd(t.path()));

        let t = tree();
        fs::create_dir_all(t.path().join("run/systemd/system")).unwrap();
        assert!(pid1_is_systemd(t.path()));

        let t = tree();
        fs::create_dir_all(t.path().join("proc/1")).unwrap();
        symlink("/usr/lib/systemd/systemd", t.path().join("proc/1/exe")).unwrap();
        assert!(pid1_is_systemd(t.path()));
        let t = tree();
        fs::create_dir_all(t.path().join("proc/1")).unwrap();
        symlink("/bin/busybox", t.path().join("proc/1/exe")).unwrap();
        assert!(!pid1_is_systemd(t.path()));
    }

    #[test]
    fn force_or_no_systemd_means_immediate_reboot() {
        let t = tree();
        write(t.path(), "proc/1/comm", "systemd\n");
        assert_eq!(choose_path(t.path(), false), ExecPath::Systemctl);
        assert_eq!(
            choose_path(t.path(), true),
            ExecPath::Reboot { why: "--force" }
        );
        write(t.path(), "proc/1/comm", "busybox\n");
        assert!(matches!(
            choose_path(t.path(), false),
            ExecPath::Reboot { why } if why.contains("not systemd")
        ));
    }

    #[test]
    fn refuses_when_nothing_is_loaded() {
        let t = tree();
        let e = ensure_loaded(t.path()).unwrap_err();
        assert!(e.to_string().contains("no kexec support"), "{e}");
        write(t.path(), "sys/kernel/kexec_loaded", "0\n");
        let e = ensure_loaded(t.path()).unwrap_err();
        assert!(e.to_string().contains("fastkexec load"), "{e}");
        write(t.path(), "sys/kernel/kexec_loaded", "x\n");
        assert!(matches!(ensure_loaded(t.path()), Err(Error::Parse { .. })));
        write(t.path(), "sys/kernel/kexec_loaded", "1\n");
        ensure_loaded(t.path()).unwrap();
    }
}
