//! The files `load`, `prepare` and `trace` read as input (kernel image, initrd, cached
//! vmlinux): regular files only, of a bounded size, each read through one descriptor.
//!
//! A path given by a user can name anything: a FIFO blocks `open` and `read` forever,
//! `/dev/zero` never ends (a plain `fs::read` grows until the OOM killer ends it), and a file
//! that is replaced between two reads can make the header we parsed and the payload we load
//! come from different kernels. So the file is opened once with `O_NONBLOCK` (a FIFO's open
//! returns at once), checked on that descriptor (regular file, size under the limit) and read
//! from it.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use bytes::Bytes;
use nix::fcntl::OFlag;

use super::map;

use crate::{Error, Result};

/// Largest kernel image (bzImage or vmlinux) accepted: 1 GiB. Real x86-64 bzImages are
/// 5–20 MB and vmlinux files 30–80 MB (debug builds ~ 500 MB); the decompressor's output is
/// capped at the same 1 GiB (`decompress::MAX_OUTPUT`).
pub const MAX_KERNEL_SIZE: u64 = 1 << 30;
/// Why `MAX_KERNEL_SIZE`, for messages.
pub const MAX_KERNEL_WHY: &str = "no x86-64 kernel image comes near 1 GiB";

/// A file opened for reading, checked to be a regular file; `len` is its size when opened.
#[derive(Debug)]
pub struct Input {
    pub file: File,
    pub len: u64,
}

/// Opens `path` (`what` names it in messages, e.g. "the initrd") without blocking and
/// refuses anything but a regular file, or one larger than `max` bytes (`why` says where the
/// limit comes from).
pub fn open(path: &Path, what: &str, max: u64, why: &str) -> Result<Input> {
    let file = OpenOptions::new()
        .read(true)
        // A FIFO's open would wait for a writer; a terminal must not become ours.
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a FIFO (reading it could block forever)"
        } else if ft.is_char_device() {
            "a character device (it may never end)"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a special file"
        };
        return Err(Error::Input {
            path: path.to_path_buf(),
            problem: format!("{what} is {kind}, not a regular file; pass the file itself"),
        });
    }
    if meta.len() > max {
        return Err(too_big(path, what, meta.len(), max, why));
    }
    Ok(Input {
        file,
        len: meta.len(),
    })
}

impl Input {
    /// Reads the whole file from its descriptor, refusing it if it grew past `max` since it
    /// was opened.
    pub fn read_all(&self, path: &Path, what: &str, max: u64, why: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        // take(): the file may grow while we read it.
        (&self.file)
            .take(max.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(path, e))?;
        if buf.len() as u64 > max {
            return Err(too_big(path, what, buf.len() as u64, max, why));
        }
        Ok(buf)
    }
}

impl Input {
    /// The whole file as bytes: mapped when only root or we can change it ([`map::untrusted`]:
    /// then it cannot shrink or change under the mapping), else read like
    /// [`Input::read_all`]. A map costs no copy: the kernel's own copy at `kexec_load` faults
    /// the page-cache pages in, where a read first copies every byte into fresh heap pages.
    pub fn map_or_read(&self, path: &Path, what: &str, max: u64, why: &str) -> Result<Bytes> {
        let meta = self.file.metadata().map_err(|e| Error::io(path, e))?;
        if map::untrusted(&meta).is_none() && meta.len() == self.len {
            map::map_readonly(&self.file, self.len, path)
        } else {
            Ok(Bytes::from(self.read_all(path, what, max, why)?))
        }
    }
}

/// [`open`] and [`Input::read_all`]: the whole regular file, at most `max` bytes.
pub fn read(path: &Path, what: &str, max: u64, why: &str) -> Result<Vec<u8>> {
    open(path, what, max, why)?.read_all(path, what, max, why)
}

fn too_big(path: &Path, what: &str, len: u64, max: u64, why: &str) -> Error {
    Error::Input {
        path: path.to_path_buf(),
        problem: format!(
            "{what} is {len} bytes (or grew to that while being read), more than the {max}-byte \
             limit ({why}); is this the right file?"
        ),
    }
}

/// The largest initrd this machine can boot: half of its RAM (`MemTotal` in `proc/meminfo`
/// under `root`), because the next kernel keeps the initrd in RAM and unpacks it into a
/// tmpfs beside it. The boot protocol itself allows 64-bit sizes (`ext_ramdisk_size`), so RAM
/// is the bound. Without a readable `MemTotal`: 4 GiB.
pub fn initrd_limit(root: &Path) -> (u64, String) {
    let meminfo = root.join("proc/meminfo");
    let kb = std::fs::read_to_string(&meminfo).ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    match kb {
        Some(kb) => (
            kb.saturating_mul(1024) / 2,
            format!(
                "half of this machine's RAM, MemTotal {kb} kB: the next kernel keeps the initrd \
                 and its unpacked contents in RAM"
            ),
        ),
        None => (
            4 << 30,
            format!("{} has no MemTotal, so 4 GiB", meminfo.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_within_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, vec![7u8; 2000]).unwrap();
        assert_eq!(
            read(&p, "the kernel image", 2000, "test").unwrap().len(),
            2000
        );
        let err = read(&p, "the kernel image", 1999, "a test limit")
            .unwrap_err()
            .to_string();
        assert!(err.contains(&*p.to_string_lossy()), "{err}");
        assert!(
            err.contains("2000 bytes") && err.contains("a test limit"),
            "{err}"
        );
    }

    #[test]
    fn a_huge_sparse_file_is_refused_from_its_size_without_reading() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("huge");
        std::fs::File::create(&p)
            .unwrap()
            .set_len(MAX_KERNEL_SIZE + 1)
            .unwrap();
        let err = read(&p, "the kernel image", MAX_KERNEL_SIZE, MAX_KERNEL_WHY)
            .unwrap_err()
            .to_string();
        assert!(err.contains("limit") && err.contains("huge"), "{err}");
    }

    #[test]
    fn special_files_are_named_by_kind() {
        let d = tempfile::tempdir().unwrap();
        for (p, kind) in [
            (Path::new("/dev/zero"), "character device"),
            (d.path(), "directory"),
        ] {
            let err = read(p, "the initrd", 1 << 20, "test")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(kind) && err.contains("not a regular file"),
                "{err}"
            );
            assert!(err.contains(&*p.to_string_lossy()), "{err}");
        }
    }

    #[test]
    fn the_initrd_limit_is_half_the_ram() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("proc")).unwrap();
        std::fs::write(
            d.path().join("proc/meminfo"),
            "MemTotal:        2048000 kB\nMemFree: 1 kB\n",
        )
        .unwrap();
        let (max, why) = initrd_limit(d.path());
        assert_eq!(max, 2_048_000 * 1024 / 2);
        assert!(why.contains("2048000 kB"), "{why}");
        let (max, _) = initrd_limit(&d.path().join("nowhere"));
        assert_eq!(max, 4 << 30);
    }
}
