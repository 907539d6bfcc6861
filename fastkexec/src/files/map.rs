//! A read-only private mapping of a trusted file, as [`Bytes`] that can be sliced without
//! copying: the cached vmlinux is mapped once and `kexec_load` reads its PT_LOADs straight from
//! the mapping, so neither `prepare` nor the plan copies tens of MB (the pages are faulted in by
//! the kernel's own copy).
//!
//! Only for files nobody but root (or the caller) can write ([`untrusted`] says which; the
//! prepare cache and the initrd check it first): a mapping shows later writes to the file and a truncation would turn reads past
//! the new end into SIGBUS, which a file under our control cannot suffer.

use std::fs::File;
use std::num::NonZeroUsize;
use std::path::Path;
use std::ptr::NonNull;

use bytes::Bytes;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::{Error, Result};

/// The mapping; unmapped when the last [`Bytes`] made from it is dropped.
struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is read-only and private to this process; the pointer is only read
// through `as_ref`, so sharing it between threads is like sharing a `&[u8]`.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: nothing ever writes through the pointer.
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live PROT_READ mapping of `len` bytes (created in `map`, unmapped
        // only in `drop`), and the file it maps is one only its trusted owner can change.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and no slice of it outlives self
        // (every `Bytes` view holds this owner).
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

/// Why a file is not trusted to stay as mapped: someone other than root or this process's user
/// owns it, or its mode lets group or others write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Untrusted {
    Owner { uid: u32, euid: u32 },
    Mode(u32),
}

/// Whether only root or this process's user can change the file `meta` describes (the rule
/// every mapping here relies on, and what the prepare cache demands of its files).
pub fn untrusted(meta: &std::fs::Metadata) -> Option<Untrusted> {
    use std::os::unix::fs::MetadataExt;
    let euid = rustix::process::geteuid().as_raw();
    let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
    if uid != 0 && uid != euid {
        return Some(Untrusted::Owner { uid, euid });
    }
    if mode & 0o022 != 0 {
        return Some(Untrusted::Mode(mode));
    }
    None
}

/// Maps the first `len` bytes of `file` (which `path` names in errors) read-only. `len` 0 gives
/// empty bytes (mmap refuses a zero length).
pub fn map_readonly(file: &File, len: u64, path: &Path) -> Result<Bytes> {
    let len = usize::try_from(len).map_err(|_| Error::Input {
        path: path.to_path_buf(),
        problem: format!("{len} bytes do not fit this process's address space"),
    })?;
    let Some(nz) = NonZeroUsize::new(len) else {
        return Ok(Bytes::new());
    };
    // SAFETY: a fresh private read-only mapping at an address the kernel picks aliases no Rust
    // object; the caller guarantees the file is one only its trusted owner can write (see the
    // module docs), so the bytes behind the slice do not change under us.
    let ptr = unsafe {
        mmap(
            None,
            nz,
            ProtFlags::PROT_READ,
            MapFlags::MAP_PRIVATE,
            file,
            0,
        )
    }
    .map_err(|e| Error::io(path, std::io::Error::from(e)))?;
    Ok(Bytes::from_owner(Mapping { ptr, len }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn mapped_bytes_are_the_file_and_slices_share_them() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let file = File::open(f.path()).unwrap();
        let b = map_readonly(&file, data.len() as u64, f.path()).unwrap();
        assert_eq!(&b[..], &data[..]);
        let s = b.slice(4096..8192);
        assert_eq!(&s[..], &data[4096..8192]);
        // A slice is a view into the mapping, not a copy.
        assert_eq!(s.as_ptr(), b[4096..].as_ptr());
        drop(b);
        assert_eq!(&s[..], &data[4096..8192]);
        assert!(map_readonly(&file, 0, f.path()).unwrap().is_empty());
    }

    #[test]
    fn a_file_others_can_write_is_untrusted() {
        use std::os::unix::fs::PermissionsExt;
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(untrusted(&std::fs::metadata(f.path()).unwrap()), None);
        for mode in [0o664, 0o646] {
            std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                untrusted(&std::fs::metadata(f.path()).unwrap()),
                Some(Untrusted::Mode(mode))
            );
        }
    }
}
