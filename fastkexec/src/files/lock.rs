//! The one lock for every command that changes kexec state (`load`, `unload`, `exec`,
//! `trace`): flock(2) on [`LOCK_FILE`] under the root.
//!
//! kexec state is more than the kernel's images: a staged load is two images (the crash image
//! and its trampoline) plus [`staged::STATE_FILE`](crate::staged::STATE_FILE), written by
//! separate calls. Without the lock, two staged loads could pair one's trampoline with the
//! other's crash image and record (issue 13, defect 5). The lock lives in `/run` with the
//! record, because both describe this boot only (a tmpfs forgets them at reboot). A dry run
//! changes nothing and takes no lock, so it works without root. The holder writes its pid and
//! command into the file, so a process that has to wait can say for whom.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Under the root; next to the staged record.
pub const LOCK_FILE: &str = "run/fastkexec/lock";

/// Held (exclusively) for as long as this value lives; released by the kernel when the
/// descriptor closes, also if the process dies.
#[derive(Debug)]
pub struct KexecLock {
    _file: File,
    path: PathBuf,
}

impl KexecLock {
    /// Waits for the lock (saying for whom when it has to), then records `what` holds it.
    pub fn acquire(root: &Path, what: &str) -> Result<KexecLock> {
        let path = root.join(LOCK_FILE);
        let err = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                Error::NotPrivileged {
                    action: "changing what kexec has loaded",
                    detail: format!("cannot open the lock {}: {e}", path.display()),
                }
            } else {
                Error::io(&path, e)
            }
        };
        if let Some(dir) = path.parent() {
            if !dir.is_dir() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(err)?;
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            // A link planted in its place is refused, not followed.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                log::warn!(
                    "waiting for {} (held by {}): another fastkexec is changing what kexec \
                     has loaded",
                    path.display(),
                    holder.trim().chars().take(200).collect::<String>()
                );
                file.lock().map_err(err)?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
        }
        // Informational only: the flock is what excludes.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "pid {} {what}", std::process::id()));
        Ok(KexecLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier, Mutex};
    use std::time::{Duration, Instant};

    /// Issue 13, defect 5 (b): two loads at once take turns. Each "load" here holds the lock
    /// while it writes its two halves (crash image, trampoline) into a shared log with a pause
    /// between them, as a staged load's two kexec_load calls and its record are; with the
    /// lock the halves never interleave.
    #[test]
    fn two_loads_at_once_take_turns() {
        let root = tempfile::tempdir().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let start = Arc::new(Barrier::new(2));
        let threads: Vec<_> = ["A", "B"]
            .into_iter()
            .map(|who| {
                let (root, log, start) = (root.path().to_path_buf(), log.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let _l = KexecLock::acquire(&root, who).unwrap();
                    log.lock().unwrap().push(format!("{who} crash image"));
                    std::thread::sleep(Duration::from_millis(150));
                    log.lock().unwrap().push(format!("{who} trampoline"));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 4);
        assert_eq!(log[0][..1], log[1][..1], "{log:?}");
        assert_eq!(log[2][..1], log[3][..1], "{log:?}");
        let meta = fs::metadata(root.path().join(LOCK_FILE)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    /// The same across processes (flock is per open file, so this is what two `fastkexec
    /// load` runs see): a child holds the lock; we wait until it lets go.
    #[test]
    fn another_process_holding_the_lock_makes_us_wait() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join(LOCK_FILE);
        let _first = KexecLock::acquire(root.path(), "test").unwrap();
        drop(_first);
        let mut child = std::process::Command::new("flock")
            .arg(&path)
            .args(["sleep", "1"])
            .spawn()
            .expect("flock(1) from util-linux");
        // Until the child holds it.
        let t = Instant::now();
        loop {
            let f = File::open(&path).unwrap();
            if f.try_lock().is_err() || t.elapsed() > Duration::from_secs(5) {
                break;
            }
            drop(f);
            std::thread::sleep(Duration::from_millis(10));
        }
        let waited = Instant::now();
        let held = KexecLock::acquire(root.path(), "second").unwrap();
        assert!(
            waited.elapsed() > Duration::from_millis(300),
            "took the lock while another process held it ({:?})",
            waited.elapsed()
        );
        assert!(fs::read_to_string(held.path()).unwrap().contains("second"));
        child.wait().unwrap();
    }

    #[test]
    fn a_link_in_place_of_the_lock_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join(LOCK_FILE);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let victim = root.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = KexecLock::acquire(root.path(), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("run/fastkexec/lock"), "{e}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    }
}
