//! Replacing a file so that a reader (node_exporter, a scraper, a second fastkexec) sees
//! either the old content or the complete new one, never a torn file, and so that nobody who
//! can write the directory can turn the write against another file.
//!
//! fastkexec writes as root into directories other users may write too (a textfile directory
//! owned by the monitoring user, `--output` anywhere). So:
//! - the directory is opened component by component with `O_NOFOLLOW`; a symbolic link on
//!   the way is followed only when it and the directory holding it belong to root or to us
//!   and nobody else could have replaced it; everything after that is relative to the opened
//!   directory, so swapping a directory for a link half way through redirects nothing;
//! - the temporary file has a random name and is created with `O_CREAT | O_EXCL |
//!   O_NOFOLLOW`: a planted file or link at that name makes the create fail (we retry with
//!   another name), never write through it;
//! - the target name is never opened, only replaced by `renameat`, which replaces a planted
//!   link itself and leaves what it pointed to alone;
//! - a directory every user can write without the sticky bit is refused: anyone could replace
//!   or delete what we publish there. A directory owned by another user (e.g. Debian's
//!   monitoring user) or writable by a group is accepted: they can replace the file, as they
//!   could anyway, but can no longer make fastkexec write anywhere else.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::{Error, Result};

/// Links followed while opening a directory; the kernel's own limit.
const MAX_SYMLINKS: usize = 40;
/// Random temporary names tried before giving up (each collision means a planted file).
const TMP_ATTEMPTS: usize = 16;
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;
const S_ISVTX: u32 = 0o1000;

/// Writes `data` to a new, randomly named temporary file in `path`'s directory (so the rename
/// stays on one file system), fsyncs it, renames it over `path` and fsyncs the directory.
/// `path` ends up with exactly `mode` (e.g. 0o640), whatever the umask: each caller chooses who
/// may read what it writes.
///
/// The temporary name starts with a dot: globs such as node_exporter's `*.prom` never pick up
/// a half-written file.
pub fn write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let name = match path.file_name() {
        Some(n) => n,
        None => {
            return Err(Error::StateFile {
                path: path.to_path_buf(),
                problem: "names no file (it ends in `..` or is a root); give a file path".into(),
            })
        }
    };
    let dir_path = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = open_dir(dir_path)?;
    let (file, tmp) = create_temp(&dir, dir_path, name)?;
    let tmp_path = dir_path.join(&tmp);
    let result = (|| {
        let mut f = file;
        // Explicitly, after the create (which the umask filters): the mode is the caller's choice.
        rfs::fchmod(&f, Mode::from_raw_mode(mode)).map_err(|e| Error::io(&tmp_path, e.into()))?;
        f.write_all(data).map_err(|e| Error::io(&tmp_path, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp_path, e))?;
        rfs::renameat(&dir, &tmp, &dir, name).map_err(|e| Error::io(path, e.into()))
    })();
    if result.is_err() {
        // Best effort: the temporary file is garbage either way.
        let _ = rfs::unlinkat(&dir, &tmp, AtFlags::empty());
        return result;
    }
    rfs::fsync(&dir).map_err(|e| Error::io(dir_path, e.into()))
}

/// Makes a rename (or a create) in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

fn create_temp(dir: &OwnedFd, dir_path: &Path, name: &OsStr) -> Result<(File, OsString)> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    for _ in 0..TMP_ATTEMPTS {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| Error::StateFile {
            path: dir_path.to_path_buf(),
            problem: format!("no randomness for a temporary file name: {e}"),
        })?;
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".tmp.{:016x}", u64::from_le_bytes(random)));
        // Private until `write` sets the caller's mode.
        match rfs::openat(dir, &tmp, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => return Ok((File::from(fd), tmp)),
            Err(Errno::EXIST) => {
                log::warn!(
                    "{}: already exists (planted?); trying another temporary name",
                    dir_path.join(&tmp).display()
                );
            }
            Err(e) => return Err(Error::io(dir_path.join(&tmp), e.into())),
        }
    }
    Err(Error::UnsafeDirectory {
        path: dir_path.to_path_buf(),
        problem: format!(
            "{TMP_ATTEMPTS} random temporary names in a row already existed: someone is \
             planting files here; find out who, or write somewhere else"
        ),
    })
}

/// Opens `dir` for `write`: component by component, never through a link someone else could
/// have planted, and refuses a directory every user can write without the sticky bit.
fn open_dir(dir: &Path) -> Result<OwnedFd> {
    let euid = rustix::process::geteuid().as_raw();
    let walk = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let open_start = |absolute: bool| -> Result<(OwnedFd, PathBuf)> {
        let start = if absolute { "/" } else { "." };
        rfs::openat(CWD, start, walk, Mode::empty())
            .map(|fd| (fd, PathBuf::from(start)))
            .map_err(|e| Error::io(start, e.into()))
    };
    let (mut cur, mut cur_path) = open_start(dir.is_absolute())?;
    // Components still to walk, last one first.
    let mut todo: Vec<OsString> = components(dir);
    let mut links = 0usize;
    while let Some(comp) = todo.pop() {
        if comp.is_empty() || comp == "." {
            continue;
        }
        let next_path = if comp == ".." {
            cur_path
                .parent()
                .map_or_else(|| cur_path.clone(), Path::to_path_buf)
        } else {
            cur_path.join(&comp)
        };
        match rfs::openat(&cur, &comp, walk, Mode::empty()) {
            Ok(fd) => {
                cur = fd;
                cur_path = next_path;
            }
            Err(e) => {
                let st = rfs::statat(&cur, &comp, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|_| Error::io(&next_path, e.into()))?;
                if st.st_mode & S_IFMT != S_IFLNK {
                    return Err(Error::io(&next_path, e.into()));
                }
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Error::io(&next_path, Errno::LOOP.into()));
                }
                let holder = rfs::fstat(&cur).map_err(|e| Error::io(&cur_path, e.into()))?;
                let trusted_holder = (holder.st_uid == 0 || holder.st_uid == euid)
                    && (holder.st_mode & 0o022 == 0 || holder.st_mode & S_ISVTX != 0);
                if !trusted_holder || (st.st_uid != 0 && st.st_uid != euid) {
                    return Err(Error::UnsafeDirectory {
                        path: next_path,
                        problem: format!(
                            "a symbolic link (owned by uid {}) in {} (owned by uid {}, mode \
                             {:04o}), which users other than root and uid {euid} can change: \
                             not followed, so that nobody can redirect this write; give the \
                             path without the link",
                            st.st_uid,
                            cur_path.display(),
                            holder.st_uid,
                            holder.st_mode & 0o7777
                        ),
                    });
                }
                let target = rfs::readlinkat(&cur, &comp, Vec::new())
                    .map_err(|e| Error::io(&next_path, e.into()))?;
                let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                if target.is_absolute() {
                    (cur, cur_path) = open_start(true)?;
                }
                todo.extend(components(&target));
            }
        }
    }
    let st = rfs::fstat(&cur).map_err(|e| Error::io(dir, e.into()))?;
    if st.st_mode & S_IFMT != S_IFDIR {
        return Err(Error::io(dir, Errno::NOTDIR.into()));
    }
    if st.st_mode & 0o002 != 0 && st.st_mode & S_ISVTX == 0 {
        return Err(Error::UnsafeDirectory {
            path: dir.to_path_buf(),
            problem: format!(
                "every user can write this directory (mode {:04o}) and it has no sticky bit: \
                 anyone could replace or delete what fastkexec writes here; `chmod o-w` (or \
                 `chmod +t`) it, or choose another directory",
                st.st_mode & 0o7777
            ),
        });
    }
    if (st.st_uid != 0 && st.st_uid != euid) || st.st_mode & 0o020 != 0 {
        log::info!(
            "{}: owned by uid {}, mode {:04o}: its owner (and group) can replace what is \
             written here, but cannot redirect the write",
            dir.display(),
            st.st_uid,
            st.st_mode & 0o7777
        );
    }
    // O_PATH descriptors cannot be fsynced: the directory itself, for reading.
    rfs::openat(
        &cur,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(dir, e.into()))
}

/// `p`'s components, last first (a stack for `open_dir`); a root is dropped (the walk starts
/// at `/` for an absolute path).
fn components(p: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
        })
        .collect();
    v.reverse();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.prom");
        write(&p, b"one\n", 0o644).unwrap();
        write(&p, b"two\n", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two\n");
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.prom")]);
    }

    #[test]
    fn a_failed_write_names_the_path_and_keeps_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        write(&p, b"old", 0o644).unwrap();
        // A directory where the file should be: the rename fails.
        let target = d.path().join("sub");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), b"k").unwrap();
        let err = write(&target, b"new", 0o644).unwrap_err().to_string();
        assert!(err.contains("sub"), "{err}");
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2, "temp file left");
    }

    /// The reproduced attack: someone who can write the directory plants links, at every name
    /// the writer could use, to a file they cannot write themselves.
    #[test]
    fn planted_symlinks_never_redirect_the_write() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let victim_dir = tempfile::tempdir().unwrap();
        let victim = victim_dir.path().join("shadow");
        fs::write(&victim, b"victim\n").unwrap();
        let dangling = victim_dir.path().join("created-through-a-link");
        let target = d.path().join("fastkexec.prom");
        symlink(&victim, &target).unwrap();
        // Every temporary name a predictable scheme would pick in this process: the pid and a
        // counter shared by the whole test binary (so cover a generous range of it).
        let pid = std::process::id();
        for seq in 0..4000u32 {
            let planted = d.path().join(format!(".fastkexec.prom.tmp.{pid}.{seq}"));
            let to = if seq % 2 == 0 { &victim } else { &dangling };
            symlink(to, planted).unwrap();
        }
        write(&target, b"metrics\n", 0o644).unwrap();
        assert_eq!(
            fs::read(&victim).unwrap(),
            b"victim\n",
            "victim overwritten"
        );
        assert!(
            !dangling.exists(),
            "a file was created through a planted link"
        );
        let meta = fs::symlink_metadata(&target).unwrap();
        assert!(
            meta.file_type().is_file(),
            "target is {:?}",
            meta.file_type()
        );
        assert_eq!(fs::read(&target).unwrap(), b"metrics\n");
    }

    #[test]
    fn a_directory_everyone_can_write_is_refused_unless_sticky() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let open = d.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = write(&open.join("x.prom"), b"x", 0o644)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&*open.to_string_lossy()), "{err}");
        assert!(err.contains("sticky") && err.contains("chmod"), "{err}");
        assert_eq!(fs::read_dir(&open).unwrap().count(), 0, "wrote anyway");
        // /tmp's arrangement: others can create names but not replace or remove ours.
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        write(&open.join("x.prom"), b"x", 0o644).unwrap();
        assert_eq!(fs::read(open.join("x.prom")).unwrap(), b"x");
    }

    #[test]
    fn a_link_on_the_way_is_followed_only_where_nobody_else_could_plant_it() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        fs::create_dir(&real).unwrap();
        // Our own link in our own directory (like /var/run -> /run): followed.
        symlink("real", d.path().join("mine")).unwrap();
        write(&d.path().join("mine/a"), b"a", 0o644).unwrap();
        assert_eq!(fs::read(real.join("a")).unwrap(), b"a");
        // A link in a directory anybody can change: not followed, nothing written.
        let shared = d.path().join("shared");
        fs::create_dir(&shared).unwrap();
        symlink(&real, shared.join("link")).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        let err = write(&shared.join("link/b"), b"b", 0o644)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("symbolic link") && err.contains("link"),
            "{err}"
        );
        assert!(!real.join("b").exists());
    }
}
