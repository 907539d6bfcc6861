//! `fastkexec prepare`: move the decompression off the reboot path. The vmlinux extracted from
//! a bzImage is cached on disk, keyed by the SHA-256 of the bzImage's content, next to the
//! bzImage's raw setup header (which a vmlinux lacks and the loader copies into boot_params).
//!
//! Layout: `<cache_dir>/<sha256>/{vmlinux,setup_header,meta.json}` and
//! `<cache_dir>/by-id/<id key>`. Every file is written to a temporary name and renamed into
//! place; `meta.json` goes last and is what makes an entry count.
//!
//! What root kexecs comes from this directory, so who can write it matters more than any
//! checksum (whoever can write the vmlinux can write meta.json too): the cache directory and
//! each directory in it must belong to root (or the user running fastkexec) and be writable by
//! their owner only, or fastkexec refuses to use them; cache files owned by anyone else, or
//! writable by group or others, are not trusted and are rebuilt.
//!
//! Within that, an entry is checked in full once per machine and cheaply after that (issue 12:
//! hashing the bzImage and the 60 MB vmlinux took over a second under QEMU TCG, on every load):
//! - the first time a bzImage is seen here (by its identity: device, inode, size, mtime,
//!   ctime), its content is hashed to find the entry, and the cached vmlinux is hashed and
//!   compared with the SHA-256 recorded when it was extracted (a cache copied from elsewhere
//!   is verified like this). The bzImage's identity is then recorded under `by-id/`, and the
//!   vmlinux file's identity in `meta.json`;
//! - after that, a hit reads neither file's content: the bzImage is found by its identity (a
//!   file changed in place gets a new ctime, which no user can set; a replaced one a new
//!   inode), and the cached vmlinux must be the file verified then (same identity; changed or
//!   replaced since, it is hashed again). Its setup header must equal the bzImage's, and its
//!   ELF entry and PT_LOADs those recorded at extraction.
//!
//! The vmlinux of a cheap hit is mapped, not read: `kexec_load` copies its PT_LOADs straight
//! from the mapping.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::files::{atomic_file, input, map};
use crate::image::bzimage::{self, SetupHeader};
use crate::image::decompress::Compression;
use crate::image::vmlinux::{self, Vmlinux};
use crate::image::{FileId, KernelImage, Loadable, Origin};
use crate::{Error, Result};

pub const DEFAULT_CACHE_DIR: &str = "/var/cache/fastkexec";

/// Bumped when the entry layout or meta.json changes; older entries are rebuilt.
/// 2: the vmlinux is verified by SHA-256 (1 had a CRC32). 3: identities and the ELF structure
/// recorded for cheap hits.
const CACHE_FORMAT: u32 = 3;
/// Mode of the cache and entry directories fastkexec creates.
const CACHE_DIR_MODE: u32 = 0o700;
const VMLINUX_FILE: &str = "vmlinux";
const SETUP_HEADER_FILE: &str = "setup_header";
const META_FILE: &str = "meta.json";
/// Where bzImage identities already verified on this machine lead to their entry.
const BY_ID_DIR: &str = "by-id";
/// Mode of every cache file: only root loads kernels, and the extracted vmlinux must not be
/// readable by more users than the bzImage it comes from (Ubuntu keeps /boot/vmlinuz-* 0600).
pub const CACHE_FILE_MODE: u32 = 0o600;
/// meta.json and the by-id records are small; anything bigger is not ours.
const MAX_META_SIZE: u64 = 64 * 1024;

/// A prepared kernel: the cached vmlinux and setup header, ready to load.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub vmlinux: PathBuf,
    pub setup_header: PathBuf,
    pub compression: Compression,
    /// Hex SHA-256 of the bzImage, the cache key.
    pub key: String,
    /// True when served from the cache without decompressing.
    pub cached: bool,
    /// The entry's directory, `<cache_dir>/<key>`.
    pub entry_dir: PathBuf,
    /// The bzImage's setup header (its `raw` is what `setup_header` holds).
    pub header: SetupHeader,
    /// Size of the cached vmlinux file in bytes.
    pub vmlinux_len: u64,
    /// The vmlinux as checked (mapped on a cheap hit, else in memory): a loader uses these
    /// bytes rather than open the cache file again.
    pub loadable: Loadable,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Meta {
    format: u32,
    key: String,
    compression: Compression,
    vmlinux_len: u64,
    /// Hex SHA-256 of the vmlinux.
    vmlinux_sha256: String,
    /// The vmlinux file as last verified on this machine (`None`: not yet).
    vmlinux_file: Option<FileId>,
    /// Its entry point and PT_LOADs, compared on every hit.
    elf: Vmlinux,
    /// Informational: where the bzImage was read from when the entry was made.
    source: PathBuf,
}

/// `by-id/<id key>`: a bzImage identity verified on this machine and its entry.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ById {
    bzimage: FileId,
    key: String,
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name of a bzImage's `by-id` record: its identity and setup header.
fn id_key(id: &FileId, header: &SetupHeader) -> String {
    let mut h = Sha256::new();
    for v in [id.dev, id.ino, id.size] {
        h.update(v.to_le_bytes());
    }
    for v in [id.mtime_ns, id.ctime_ns] {
        h.update(v.to_le_bytes());
    }
    h.update(&header.raw);
    hex(&h.finalize())
}

/// Extracts (or finds in the cache) the vmlinux of `bzimage`.
pub fn prepare(bzimage: &Path, cache_dir: &Path) -> Result<Prepared> {
    prepare_image(&KernelImage::open(bzimage)?, cache_dir)
}

/// [`prepare`] for a kernel already opened and read.
pub fn prepare_image(image: &KernelImage, cache_dir: &Path) -> Result<Prepared> {
    let path = image.path();
    let Some(header) = image.header() else {
        // Not a bzImage: the header parser says why, naming the field.
        return Err(match bzimage::parse_setup_header(path, image.bytes()) {
            Err(e) => e,
            Ok(_) => Error::BadBzImage {
                path: path.to_path_buf(),
                problem: "not a bzImage".into(),
            },
        });
    };
    trusted_dir(cache_dir, "the cache directory", true)?;
    let by_id_dir = cache_dir.join(BY_ID_DIR);
    trusted_dir(&by_id_dir, "the cache's by-id directory", false)?;
    let by_id = by_id_dir.join(id_key(&image.id(), header));
    let known = read_by_id(&by_id, &image.id());
    let key = match &known {
        Some(k) => k.clone(),
        None => sha256_hex(image.bytes()),
    };
    let entry_dir = cache_dir.join(&key);
    trusted_dir(&entry_dir, "the cache entry directory", false)?;

    match load_entry(&entry_dir, &key, header) {
        Ok(Some((p, meta))) => {
            log::info!(
                "{}: using cached vmlinux {}",
                path.display(),
                p.vmlinux.display()
            );
            // Record what was verified, so the next hit is a cheap one. Failing that only
            // costs the full check again.
            if let Err(e) = remember(&entry_dir, meta, &by_id_dir, &by_id, image, &key) {
                log::warn!("{}: {e}", entry_dir.display());
            }
            return Ok(p);
        }
        Ok(None) => {}
        Err(reason) => log::warn!(
            "{}: cache entry is unusable ({reason}); rebuilding it",
            entry_dir.display()
        ),
    }
    // The entry is rebuilt under the content's key (an identity record may lead elsewhere).
    let key = match known {
        Some(_) => sha256_hex(image.bytes()),
        None => key,
    };
    let entry_dir = cache_dir.join(&key);

    let x = bzimage::extract_with_header(path, image.bytes(), header.clone())?;
    trusted_dir(&entry_dir, "the cache entry directory", true)?;
    let vmlinux_path = entry_dir.join(VMLINUX_FILE);
    let header_path = entry_dir.join(SETUP_HEADER_FILE);
    // meta.json last: an entry without it (a crash mid-way) is not a hit.
    atomic_file::write(&vmlinux_path, &x.vmlinux, CACHE_FILE_MODE)?;
    atomic_file::write(&header_path, &x.header.raw, CACHE_FILE_MODE)?;
    let written = fs::metadata(&vmlinux_path).map_err(|e| Error::io(&vmlinux_path, e))?;
    let meta = Meta {
        format: CACHE_FORMAT,
        key: key.clone(),
        compression: x.compression,
        vmlinux_len: x.vmlinux.len() as u64,
        vmlinux_sha256: sha256_hex(&x.vmlinux),
        vmlinux_file: Some(FileId::of(&written)),
        elf: x.elf.clone(),
        source: path.to_path_buf(),
    };
    write_json(&entry_dir.join(META_FILE), &meta)?;
    if let Err(e) = write_by_id(&by_id_dir, &by_id, image, &key) {
        log::warn!("{}: {e}", by_id.display());
    }
    log::info!(
        "{}: extracted {} vmlinux ({} bytes) to {}",
        path.display(),
        x.compression,
        x.vmlinux.len(),
        vmlinux_path.display()
    );
    Ok(Prepared {
        vmlinux: vmlinux_path.clone(),
        setup_header: header_path,
        compression: x.compression,
        key,
        cached: false,
        entry_dir,
        header: x.header,
        vmlinux_len: meta.vmlinux_len,
        loadable: Loadable {
            path: vmlinux_path,
            bytes: x.vmlinux.into(),
            elf: x.elf,
            origin: Origin::Cache {
                hit: false,
                compression: x.compression,
            },
        },
    })
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(v).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    atomic_file::write(path, &json, CACHE_FILE_MODE)
}

/// The entry key a trusted `by-id` record gives for this very bzImage, if any.
fn read_by_id(path: &Path, id: &FileId) -> Option<String> {
    let f = input::open(path, "a cache by-id record", MAX_META_SIZE, "it is tiny").ok()?;
    let meta = f.file.metadata().ok()?;
    if untrusted(&meta).is_some() {
        return None;
    }
    let bytes = f
        .read_all(path, "a cache by-id record", MAX_META_SIZE, "it is tiny")
        .ok()?;
    let rec: ById = serde_json::from_slice(&bytes).ok()?;
    let hex_key = rec.key.len() == 64 && rec.key.bytes().all(|b| b.is_ascii_hexdigit());
    (rec.bzimage == *id && hex_key).then_some(rec.key)
}

fn write_by_id(dir: &Path, path: &Path, image: &KernelImage, key: &str) -> Result<()> {
    trusted_dir(dir, "the cache's by-id directory", true)?;
    write_json(
        path,
        &ById {
            bzimage: image.id(),
            key: key.to_string(),
        },
    )
}

/// After a hit: records the vmlinux identity just verified (when it changed) and the
/// bzImage's identity (when not yet known).
fn remember(
    entry_dir: &Path,
    meta: Option<Meta>,
    by_id_dir: &Path,
    by_id: &Path,
    image: &KernelImage,
    key: &str,
) -> Result<()> {
    if let Some(meta) = meta {
        write_json(&entry_dir.join(META_FILE), &meta)?;
    }
    if read_by_id(by_id, &image.id()).as_deref() != Some(key) {
        write_by_id(by_id_dir, by_id, image, key)?;
    }
    Ok(())
}

/// A complete, verified entry and, when its vmlinux had to be hashed, the meta.json to record
/// (with the identity verified); `Ok(None)` if there is none; `Err(reason)` if there is one
/// that cannot be trusted.
fn load_entry(
    dir: &Path,
    key: &str,
    header: &SetupHeader,
) -> std::result::Result<Option<(Prepared, Option<Meta>)>, String> {
    let meta_path = dir.join(META_FILE);
    if !meta_path.exists() {
        return Ok(None);
    }
    let meta_bytes = input::read(
        &meta_path,
        "the cache metadata",
        MAX_META_SIZE,
        "it is a few KiB",
    )
    .map_err(|e| e.to_string())?;
    let mut meta: Meta =
        serde_json::from_slice(&meta_bytes).map_err(|e| format!("{META_FILE}: {e}"))?;
    if meta.format != CACHE_FORMAT {
        return Err(format!(
            "{META_FILE}: cache format {} (this fastkexec writes {CACHE_FORMAT})",
            meta.format
        ));
    }
    if meta.key != key {
        return Err(format!(
            "{META_FILE}: key {} does not match the directory",
            meta.key
        ));
    }
    let header_path = dir.join(SETUP_HEADER_FILE);
    let cached_header = input::read(
        &header_path,
        "the cached setup header",
        4096,
        "it is at most a page",
    )
    .map_err(|e| e.to_string())?;
    if cached_header != header.raw {
        return Err(format!("{SETUP_HEADER_FILE} differs from the bzImage's"));
    }
    if meta.vmlinux_len > crate::image::decompress::MAX_OUTPUT as u64 {
        return Err(format!(
            "{META_FILE}: vmlinux_len {} is beyond any kernel",
            meta.vmlinux_len
        ));
    }
    let vmlinux_path = dir.join(VMLINUX_FILE);
    let (what, why) = ("the cached vmlinux", "the size meta.json records");
    let f = input::open(&vmlinux_path, what, meta.vmlinux_len, why).map_err(|e| e.to_string())?;
    let fmeta = f
        .file
        .metadata()
        .map_err(|e| format!("{}: {e}", vmlinux_path.display()))?;
    if let Some(problem) = untrusted(&fmeta) {
        return Err(format!("{VMLINUX_FILE} is {problem}"));
    }
    let id = FileId::of(&fmeta);
    if id.size != meta.vmlinux_len {
        return Err(format!(
            "{VMLINUX_FILE} is {} bytes, {META_FILE} says {}",
            id.size, meta.vmlinux_len
        ));
    }
    let (bytes, record) = if meta.vmlinux_file == Some(id) {
        // The very file verified before, unchanged since: map it, read nothing.
        let b = map::map_readonly(&f.file, id.size, &vmlinux_path).map_err(|e| e.to_string())?;
        (b, None)
    } else {
        let b = f
            .read_all(&vmlinux_path, what, meta.vmlinux_len, why)
            .map_err(|e| e.to_string())?;
        let sha = sha256_hex(&b);
        if sha != meta.vmlinux_sha256 {
            return Err(format!(
                "{VMLINUX_FILE} SHA-256 is {sha}, {META_FILE} says {}",
                meta.vmlinux_sha256
            ));
        }
        meta.vmlinux_file = Some(id);
        (Bytes::from(b), Some(meta.clone()))
    };
    let elf = vmlinux::parse_vmlinux(&vmlinux_path, &bytes).map_err(|e| e.to_string())?;
    if elf != meta.elf {
        return Err(format!(
            "{VMLINUX_FILE}'s entry point or PT_LOADs differ from those {META_FILE} recorded"
        ));
    }
    let prepared = Prepared {
        vmlinux: vmlinux_path.clone(),
        setup_header: header_path,
        compression: meta.compression,
        key: key.to_string(),
        cached: true,
        entry_dir: dir.to_path_buf(),
        header: header.clone(),
        vmlinux_len: id.size,
        loadable: Loadable {
            path: vmlinux_path,
            bytes,
            elf,
            origin: Origin::Cache {
                hit: true,
                compression: meta.compression,
            },
        },
    };
    Ok(Some((prepared, record)))
}

/// Why `meta` (of `path`) cannot be trusted with what root kexecs: owned by someone other
/// than root or us, or writable by group or others.
fn untrusted(meta: &fs::Metadata) -> Option<String> {
    match map::untrusted(meta)? {
        map::Untrusted::Owner { uid, euid } => {
            let owner = if euid == 0 { "root" } else { "yourself" };
            Some(format!(
                "owned by uid {uid}, who could put any kernel there for uid {euid} to load; \
                 `chown` it to {owner} and `chmod go-w` it, or pass another --cache-dir"
            ))
        }
        map::Untrusted::Mode(mode) => Some(format!(
            "mode {mode:04o}: users other than its owner can write it and could put any kernel \
             there; `chmod go-w` it, or pass another --cache-dir"
        )),
    }
}

/// Checks (after creating it with `CACHE_DIR_MODE` when `create`) that `dir` is only
/// writable by root or us. A missing directory is fine when not creating.
fn trusted_dir(dir: &Path, what: &str, create: bool) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if create && !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(CACHE_DIR_MODE)
            .create(dir)
            .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(CACHE_DIR_MODE)))
            .map_err(|e| Error::io(dir, e))?;
    }
    let meta = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    match untrusted(&meta) {
        Some(problem) => Err(Error::UntrustedCache {
            path: dir.to_path_buf(),
            problem: format!("{what} is {problem}"),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    const ELF: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vmlinux-tiny.elf"
    ));

    fn bzimage(c: Compression) -> PathBuf {
        PathBuf::from(format!("{FIXTURES}/bzImage-tiny.{c}"))
    }

    #[test]
    fn first_run_extracts_second_run_hits() {
        let cache = tempfile::tempdir().unwrap();
        let src = bzimage(Compression::Lz4);
        let first = prepare(&src, cache.path()).unwrap();
        assert!(!first.cached);
        assert_eq!(first.compression, Compression::Lz4);
        assert_eq!(first.key, sha256_hex(&fs::read(&src).unwrap()));
        assert_eq!(first.entry_dir, cache.path().join(&first.key));
        assert!(fs::read(&first.vmlinux).unwrap() == ELF);
        let image = fs::read(&src).unwrap();
        assert_eq!(
            fs::read(&first.setup_header).unwrap(),
            &image[0x1f1..0x202 + usize::from(image[0x201])]
        );
        let mtime = fs::metadata(&first.vmlinux).unwrap().modified().unwrap();

        let second = prepare(&src, cache.path()).unwrap();
        assert!(second.cached);
        assert_eq!(second.vmlinux, first.vmlinux);
        assert_eq!(second.compression, Compression::Lz4);
        assert_eq!(second.loadable.elf, first.loadable.elf);
        assert_eq!(second.header, first.header);
        // Not rewritten.
        assert_eq!(
            fs::metadata(&second.vmlinux).unwrap().modified().unwrap(),
            mtime
        );
        // No temp files left behind.
        assert!(second.loadable.bytes == ELF);
        let names: Vec<String> = fs::read_dir(&first.entry_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            ["meta.json", "setup_header", "vmlinux"],
            "{names:?}"
        );
    }

    #[test]
    fn different_images_get_different_entries() {
        let cache = tempfile::tempdir().unwrap();
        let a = prepare(&bzimage(Compression::Gzip), cache.path()).unwrap();
        let b = prepare(&bzimage(Compression::Zstd), cache.path()).unwrap();
        assert_ne!(a.key, b.key);
        assert_ne!(a.entry_dir, b.entry_dir);
        assert!(fs::read(&a.vmlinux).unwrap() == fs::read(&b.vmlinux).unwrap());
    }

    /// Damages an entry with `damage`, then checks prepare() rebuilds it.
    fn rebuilt_after(damage: impl Fn(&Prepared)) {
        let cache = tempfile::tempdir().unwrap();
        let src = bzimage(Compression::Xz);
        let first = prepare(&src, cache.path()).unwrap();
        damage(&first);
        let again = prepare(&src, cache.path()).unwrap();
        assert!(!again.cached, "damaged entry was trusted");
        assert!(fs::read(&again.vmlinux).unwrap() == ELF);
        let third = prepare(&src, cache.path()).unwrap();
        assert!(third.cached, "rebuilt entry is not a hit");
    }

    /// Puts `bytes` in place of `path` the way an editor or `cp` over a rename does: a new
    /// file renamed over the old one.
    fn replace(path: &Path, bytes: &[u8]) {
        let tmp = path.with_extension("new");
        fs::write(&tmp, bytes).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    /// A cheap hit reads no vmlinux bytes (issue 12): it checks that the cache file is the one
    /// verified before (inode, size, mtime, ctime), else hashes it. A file replaced by one with
    /// one byte flipped is hashed and rebuilt.
    #[test]
    fn flipped_byte_in_cached_vmlinux_is_rebuilt() {
        rebuilt_after(|p| {
            let mut v = fs::read(&p.vmlinux).unwrap();
            let i = v.len() / 2;
            v[i] ^= 1;
            replace(&p.vmlinux, &v);
        });
    }

    /// The recorded ELF structure is compared on a hit: an entry whose record disagrees with
    /// the file is rebuilt.
    #[test]
    fn cached_vmlinux_with_other_pt_loads_than_recorded_is_rebuilt() {
        rebuilt_after(|p| {
            let meta_path = p.entry_dir.join(META_FILE);
            let mut meta: Meta = serde_json::from_slice(&fs::read(&meta_path).unwrap()).unwrap();
            meta.elf.segments[0].paddr += 0x1000;
            fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
        });
    }

    /// A bzImage seen before is found by its identity, without hashing it; one replaced by
    /// other bytes is not, and gets its own entry (found by hashing its content).
    #[test]
    fn a_replaced_bzimage_is_found_by_its_content() {
        let cache = tempfile::tempdir().unwrap();
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("vmlinuz");
        fs::write(&src, fs::read(bzimage(Compression::Gzip)).unwrap()).unwrap();
        let first = prepare(&src, cache.path()).unwrap();
        assert_eq!(
            fs::read_dir(cache.path().join(BY_ID_DIR)).unwrap().count(),
            1
        );
        assert!(prepare(&src, cache.path()).unwrap().cached);
        replace(&src, &fs::read(bzimage(Compression::Zstd)).unwrap());
        let other = prepare(&src, cache.path()).unwrap();
        assert!(!other.cached);
        assert_ne!(other.key, first.key);
        assert_eq!(other.key, sha256_hex(&fs::read(&src).unwrap()));
        // The same bytes again under a new identity: the content's entry, verified in full.
        replace(&src, &fs::read(bzimage(Compression::Gzip)).unwrap());
        let back = prepare(&src, cache.path()).unwrap();
        assert!(back.cached);
        assert_eq!(back.key, first.key);
    }

    /// A cache made elsewhere (the lab prepares it on the host) is verified in full on first
    /// use: its vmlinux is hashed (a copy has another identity), then recorded so the next hit
    /// is a cheap one that maps the file.
    #[test]
    fn a_copied_cache_is_hashed_once_then_mapped() {
        let cache = tempfile::tempdir().unwrap();
        let src = bzimage(Compression::Lz4);
        let first = prepare(&src, cache.path()).unwrap();
        // What a copy looks like: a new inode with the same bytes, no by-id record.
        let v = fs::read(&first.vmlinux).unwrap();
        replace(&first.vmlinux, &v);
        fs::remove_dir_all(cache.path().join(BY_ID_DIR)).unwrap();
        let image = KernelImage::open(&src).unwrap();
        let copied = prepare_image(&image, cache.path()).unwrap();
        assert!(copied.cached);
        let meta: Meta =
            serde_json::from_slice(&fs::read(first.entry_dir.join(META_FILE)).unwrap()).unwrap();
        let now = FileId::of(&fs::metadata(&first.vmlinux).unwrap());
        assert_eq!(meta.vmlinux_file, Some(now));
        let cheap = prepare_image(&image, cache.path()).unwrap();
        assert!(cheap.cached);
        assert!(cheap.loadable.bytes == ELF);
        // A mapping of the file, not the hashed copy in memory.
        assert_ne!(
            cheap.loadable.bytes.as_ptr(),
            copied.loadable.bytes.as_ptr()
        );
    }

    /// `v` with its bytes at `at..at + 4` changed so that its CRC32 is `want` again: CRC32 is
    /// linear over GF(2), so 32 free bits can undo any change made elsewhere.
    fn restore_crc32(v: &mut [u8], at: usize, want: u32) {
        let zero_crc = |v: &[u8]| crc32fast::hash(&vec![0u8; v.len()]);
        // The CRC change caused by flipping each of the 32 bits of the window.
        let mut basis: Vec<(u32, u32)> = (0..32)
            .map(|bit| {
                let mut e = vec![0u8; v.len()];
                e[at + bit / 8] = 1 << (bit % 8);
                (crc32fast::hash(&e) ^ zero_crc(v), 1u32 << bit)
            })
            .collect();
        // Gaussian elimination: express `need` as a sum of basis effects.
        let mut need = crc32fast::hash(v) ^ want;
        let mut flips = 0u32;
        for row in 0..32 {
            let pivot_bit = 1u32 << row;
            let Some(p) = (row..32).find(|&i| basis[i].0 & pivot_bit != 0) else {
                continue;
            };
            basis.swap(row, p);
            let (e, f) = basis[row];
            for (i, b) in basis.iter_mut().enumerate() {
                if i != row && b.0 & pivot_bit != 0 {
                    b.0 ^= e;
                    b.1 ^= f;
                }
            }
            if need & pivot_bit != 0 {
                need ^= e;
                flips ^= f;
            }
        }
        assert_eq!(need, 0, "no CRC fix in this window");
        for bit in 0..32 {
            if flips & (1 << bit) != 0 {
                v[at + bit / 8] ^= 1 << (bit % 8);
            }
        }
        assert_eq!(crc32fast::hash(v), want);
    }

    /// Someone swaps bytes of a cached vmlinux without changing its length or its CRC32 (which
    /// meta.json alone used to vouch for): the entry is not trusted (the file is not the one
    /// written).
    #[test]
    fn a_crc32_preserving_change_to_the_cached_vmlinux_is_caught() {
        rebuilt_after(|p| {
            let mut v = fs::read(&p.vmlinux).unwrap();
            let crc = crc32fast::hash(&v);
            let i = v.len() / 2;
            v[i..i + 4].copy_from_slice(b"EVIL");
            restore_crc32(&mut v, i + 8, crc);
            assert_ne!(v, fs::read(&p.vmlinux).unwrap());
            replace(&p.vmlinux, &v);
        });
    }

    /// A cache directory someone other than root (or us) can write is refused: they could put
    /// any kernel there for root to kexec.
    #[test]
    fn a_cache_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let src = bzimage(Compression::Gzip);
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("cache");
        fs::create_dir(&cache).unwrap();
        fs::set_permissions(&cache, fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare(&src, &cache).unwrap_err().to_string();
        assert!(err.contains(&*cache.to_string_lossy()), "{err}");
        assert!(err.contains("0777") && err.contains("chmod"), "{err}");
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 0, "wrote anyway");

        // An entry directory left writable by others is refused the same way.
        fs::set_permissions(&cache, fs::Permissions::from_mode(0o755)).unwrap();
        let p = prepare(&src, &cache).unwrap();
        fs::set_permissions(&p.entry_dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare(&src, &cache).unwrap_err().to_string();
        assert!(err.contains(&*p.entry_dir.to_string_lossy()), "{err}");

        // Owned by another user (only root can arrange that in a test).
        if rustix::process::geteuid().is_root() {
            fs::set_permissions(&p.entry_dir, fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(&cache, Some(65534), None).unwrap();
            let err = prepare(&src, &cache).unwrap_err().to_string();
            assert!(err.contains("uid 65534") && err.contains("chown"), "{err}");
        }
    }

    #[test]
    fn truncated_cached_vmlinux_is_rebuilt() {
        rebuilt_after(|p| {
            let v = fs::read(&p.vmlinux).unwrap();
            fs::write(&p.vmlinux, &v[..v.len() - 1]).unwrap();
        });
    }

    #[test]
    fn garbage_metadata_is_rebuilt() {
        rebuilt_after(|p| fs::write(p.entry_dir.join(META_FILE), b"{not json").unwrap());
    }

    #[test]
    fn wrong_setup_header_is_rebuilt() {
        rebuilt_after(|p| fs::write(&p.setup_header, b"HdrS").unwrap());
    }

    #[test]
    fn missing_vmlinux_is_rebuilt() {
        rebuilt_after(|p| fs::remove_file(&p.vmlinux).unwrap());
    }

    #[test]
    fn entry_without_metadata_is_not_a_hit() {
        // As after a crash between writing vmlinux and meta.json.
        rebuilt_after(|p| fs::remove_file(p.entry_dir.join(META_FILE)).unwrap());
    }

    #[test]
    fn non_bzimage_input_names_the_problem() {
        let cache = tempfile::tempdir().unwrap();
        let elf = PathBuf::from(format!("{FIXTURES}/vmlinux-tiny.elf"));
        let err = prepare(&elf, cache.path()).unwrap_err();
        assert!(
            matches!(&err, Error::BadBzImage { problem, .. } if problem.contains("is an ELF")),
            "{err}"
        );
        // Nothing was created for it.
        assert_eq!(fs::read_dir(cache.path()).unwrap().count(), 0);

        let err = prepare(Path::new("/nonexistent/vmlinuz"), cache.path()).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }

    #[test]
    fn sha256_hex_known_answer() {
        // FIPS 180-2 test vector.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
