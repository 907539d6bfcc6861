//! The kernel image: bzImage setup header, payload decoders, the vmlinux ELF and its prepare
//! cache.
//!
//! [`KernelImage`] is made once at the edge (the command, or `trace`) and passed down: the file
//! is read once through one descriptor, its setup header parsed once, and the vmlinux to load
//! ([`Loadable`]: bytes and validated ELF) is made once — from the prepare cache, extracted in
//! memory, or the file itself when it is a vmlinux.

pub mod bootproto;
pub mod bzimage;
pub mod decompress;
pub mod prepare;
pub mod vmlinux;

use std::fs::File;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::files::input;
use crate::{Error, Result};
use bzimage::SetupHeader;
use decompress::Compression;
use vmlinux::Vmlinux;

/// Identity of a file as the kernel keeps it: a file changed in place gets a new ctime (which
/// no user can set), a replaced one a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Where a [`Loadable`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The kernel file is itself a vmlinux ELF.
    File,
    /// The prepare cache: `hit` when the entry existed, else extracted now and cached.
    Cache { hit: bool, compression: Compression },
    /// Extracted in memory and not cached (a dry run).
    Memory { compression: Compression },
}

/// The vmlinux a load copies: its bytes (a mapping of the cache file, or memory) and its
/// validated ELF, parsed once.
#[derive(Clone)]
pub struct Loadable {
    /// The file the bytes come from (the cache entry, or the kernel path).
    pub path: PathBuf,
    pub bytes: Bytes,
    pub elf: Vmlinux,
    pub origin: Origin,
}

impl Loadable {
    /// A vmlinux ELF whose bytes are at hand (`path` names it in errors), parsed and checked.
    pub fn from_elf(path: &Path, bytes: Bytes) -> Result<Loadable> {
        Ok(Loadable {
            path: path.to_path_buf(),
            elf: vmlinux::parse_vmlinux(path, &bytes)?,
            bytes,
            origin: Origin::File,
        })
    }
}

impl std::fmt::Debug for Loadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the tens of MB of vmlinux bytes.
        f.debug_struct("Loadable")
            .field("path", &self.path)
            .field("len", &self.bytes.len())
            .field("elf", &self.elf)
            .field("origin", &self.origin)
            .finish()
    }
}

/// How to get the vmlinux of a bzImage.
#[derive(Debug, Clone, Copy)]
pub enum Extract<'a> {
    /// From the prepare cache in this directory, filling it on a miss.
    Cache(&'a Path),
    /// Decompressed in memory, nothing written (a dry run).
    InMemory,
}

/// A kernel file (bzImage or vmlinux ELF), read once.
pub struct KernelImage {
    path: PathBuf,
    file: File,
    id: FileId,
    bytes: Bytes,
    header: Option<SetupHeader>,
    loadable: Option<Loadable>,
}

impl std::fmt::Debug for KernelImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelImage")
            .field("path", &self.path)
            .field("len", &self.bytes.len())
            .field("header", &self.header.is_some())
            .field("loadable", &self.loadable)
            .finish_non_exhaustive()
    }
}

impl KernelImage {
    /// Opens and reads `path` (a regular file under the kernel size limit) and parses its
    /// setup header if it is a bzImage. Anything that is neither a bzImage nor an ELF is
    /// refused here.
    pub fn open(path: &Path) -> Result<KernelImage> {
        let what = "the kernel image";
        let f = input::open(path, what, input::MAX_KERNEL_SIZE, input::MAX_KERNEL_WHY)?;
        let meta = f.file.metadata().map_err(|e| Error::io(path, e))?;
        let bytes = f.map_or_read(path, what, input::MAX_KERNEL_SIZE, input::MAX_KERNEL_WHY)?;
        count::bump(count::Kind::KernelRead);
        let header = if bzimage::is_bzimage(&bytes) {
            Some(bzimage::parse_setup_header(path, &bytes)?)
        } else if vmlinux::is_elf(&bytes) {
            None
        } else {
            return Err(Error::UnsupportedImage {
                path: path.to_path_buf(),
                problem: "neither a bzImage (no \"HdrS\" setup header) nor a vmlinux ELF".into(),
            });
        };
        Ok(KernelImage {
            path: path.to_path_buf(),
            file: f.file,
            id: FileId::of(&meta),
            bytes,
            header,
            loadable: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor the bytes were read from (what `kexec_file_load` is given).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file's identity when it was opened.
    pub fn id(&self) -> FileId {
        self.id
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The setup header of a bzImage, `None` for a vmlinux ELF.
    pub fn header(&self) -> Option<&SetupHeader> {
        self.header.as_ref()
    }

    pub fn is_bzimage(&self) -> bool {
        self.header.is_some()
    }

    /// The vmlinux to load, made on first use and kept: this file when it is a vmlinux ELF
    /// (parsed now), else the bzImage's payload from the cache or memory (`how`). Once made, a
    /// later call returns the same one whatever `how` says.
    pub fn loadable(&mut self, how: Extract<'_>) -> Result<&Loadable> {
        if self.loadable.is_none() {
            let made = match (&self.header, how) {
                (None, _) => Loadable::from_elf(&self.path, self.bytes.clone())?,
                (Some(_), Extract::Cache(dir)) => prepare::prepare_image(self, dir)?.loadable,
                (Some(h), Extract::InMemory) => {
                    let x = bzimage::extract_with_header(&self.path, &self.bytes, h.clone())?;
                    Loadable {
                        path: self.path.clone(),
                        bytes: Bytes::from(x.vmlinux),
                        elf: x.elf,
                        origin: Origin::Memory {
                            compression: x.compression,
                        },
                    }
                }
            };
            self.loadable = Some(made);
        }
        self.loadable.as_ref().ok_or_else(|| Error::Plan {
            problem: "internal: the vmlinux was not made".into(),
        })
    }

    /// The vmlinux if [`KernelImage::loadable`] has made it.
    pub fn made(&self) -> Option<&Loadable> {
        self.loadable.as_ref()
    }
}

/// Test-only counters of the expensive steps, per thread (tests run in parallel), to prove each
/// happens once per load.
pub(crate) mod count {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        KernelRead,
        HeaderParse,
        ElfParse,
    }

    #[cfg(test)]
    thread_local! {
        static COUNTS: std::cell::Cell<[usize; 3]> = const { std::cell::Cell::new([0; 3]) };
    }

    #[cfg(test)]
    pub fn bump(k: Kind) {
        COUNTS.with(|c| {
            let mut v = c.get();
            v[k as usize] += 1;
            c.set(v);
        });
    }

    #[cfg(not(test))]
    pub fn bump(_: Kind) {}

    /// (kernel reads, header parses, ELF parses) on this thread so far.
    #[cfg(test)]
    pub fn get() -> (usize, usize, usize) {
        let v = COUNTS.with(std::cell::Cell::get);
        (v[0], v[1], v[2])
    }
}
