//! `fastkexec prepare`: move the decompression off the reboot path. The
//! vmlinux extracted from a bzImage is cached on disk, keyed by the SHA-256
//! of the bzImage's content, next to the bzImage's raw setup header (which a
//! vmlinux lacks and the loader copies into boot_params).
//!
//! Layout: `<cache_dir>/<sha256>/{vmlinux,setup_header,meta.json}`. Every
//! file is written to a temporary name and renamed into place; `meta.json`
//! goes last and is what makes an entry count. A hit is re-verified before it
//! is trusted — setup header bytes equal to the bzImage's, vmlinux size and
//! SHA-256 as recorded, ELF checks — and an entry that fails is rebuilt; the
//! bytes verified are the bytes loaded (never a second read of the file).
//!
//! What root kexecs comes from this directory, so who can write it matters
//! more than any checksum (whoever can write the vmlinux can write meta.json
//! too): the cache directory and each entry directory must belong to root
//! (or the user running fastkexec) and be writable by their owner only, or
//! fastkexec refuses to use them; cache files owned by anyone else, or
//! writable by group or others, are not trusted and are rebuilt. Within that,
//! the SHA-256 (instead of the CRC32 of cache format 1, which anyone can
//! forge by changing four bytes) makes a swapped vmlinux that keeps its
//! length and CRC32 a miss. It costs a hash of the vmlinux per hit (tens of
//! milliseconds for 60 MB), at load time, off the reboot path.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::image::bzimage::{self, SetupHeader};
use crate::image::decompress::Compression;
use crate::image::vmlinux::{self, Vmlinux};
use crate::{files::atomic_file, files::input};
use crate::{Error, Result};

pub const DEFAULT_CACHE_DIR: &str = "/var/cache/fastkexec";

/// Bumped when the entry layout or meta.json changes; older entries are rebuilt.
/// 2: the vmlinux is verified by SHA-256 (1 had a CRC32).
const CACHE_FORMAT: u32 = 2;
/// Mode of the cache and entry directories fastkexec creates.
const CACHE_DIR_MODE: u32 = 0o700;
const VMLINUX_FILE: &str = "vmlinux";
const SETUP_HEADER_FILE: &str = "setup_header";
const META_FILE: &str = "meta.json";
/// Mode of every cache file: only root loads kernels, and the extracted vmlinux must not be
/// readable by more users than the bzImage it comes from (Ubuntu keeps /boot/vmlinuz-* 0600).
pub const CACHE_FILE_MODE: u32 = 0o600;
/// meta.json is tiny; anything bigger is not ours.
const MAX_META_SIZE: u64 = 64 * 1024;

/// A prepared kernel: the cached vmlinux and setup header, ready to load.
#[derive(Clone)]
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
    /// The cached vmlinux's entry point and PT_LOADs.
    pub elf: Vmlinux,
    /// Size of the cached vmlinux file in bytes.
    pub vmlinux_len: u64,
    /// The vmlinux's bytes as verified (or extracted): a loader uses these rather than read
    /// the cache file again, which could have changed since the check.
    pub vmlinux_bytes: Vec<u8>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the tens of MB of vmlinux bytes.
        f.debug_struct("Prepared")
            .field("vmlinux", &self.vmlinux)
            .field("setup_header", &self.setup_header)
            .field("compression", &self.compression)
            .field("key", &self.key)
            .field("cached", &self.cached)
            .field("entry_dir", &self.entry_dir)
            .field("elf", &self.elf)
            .field("vmlinux_len", &self.vmlinux_len)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Meta {
    format: u32,
    key: String,
    compression: Compression,
    vmlinux_len: u64,
    /// Hex SHA-256 of the vmlinux.
    vmlinux_sha256: String,
    /// Informational: where the bzImage was read from when the entry was made.
    source: PathBuf,
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Extracts (or finds in the cache) the vmlinux of `bzimage`.
pub fn prepare(bzimage: &Path, cache_dir: &Path) -> Result<Prepared> {
    let image = input::read(
        bzimage,
        "the bzImage",
        input::MAX_KERNEL_SIZE,
        input::MAX_KERNEL_WHY,
    )?;
    prepare_image(bzimage, &image, cache_dir)
}

/// [`prepare`] for a caller that has already read the bzImage; `bzimage`
/// names it in errors and in the entry's metadata.
pub fn prepare_image(bzimage: &Path, image: &[u8], cache_dir: &Path) -> Result<Prepared> {
    let header = bzimage::parse_setup_header(bzimage, image)?;
    let key = sha256_hex(image);
    let entry_dir = cache_dir.join(&key);
    trusted_dir(cache_dir, "the cache directory", true)?;
    trusted_dir(&entry_dir, "the cache entry directory", false)?;

    match load_entry(&entry_dir, &key, &header) {
        Ok(Some(p)) => {
            log::info!(
                "{}: using cached vmlinux {}",
                bzimage.display(),
                p.vmlinux.display()
            );
            return Ok(p);
        }
        Ok(None) => {}
        Err(reason) => log::warn!(
            "{}: cache entry is unusable ({reason}); rebuilding it",
            entry_dir.display()
        ),
    }

    let x = bzimage::extract_vmlinux(bzimage, image)?;
    trusted_dir(&entry_dir, "the cache entry directory", true)?;
    let vmlinux_path = entry_dir.join(VMLINUX_FILE);
    let header_path = entry_dir.join(SETUP_HEADER_FILE);
    let meta = Meta {
        format: CACHE_FORMAT,
        key: key.clone(),
        compression: x.compression,
        vmlinux_len: x.vmlinux.len() as u64,
        vmlinux_sha256: sha256_hex(&x.vmlinux),
        source: bzimage.to_path_buf(),
    };
    let meta_json = serde_json::to_vec_pretty(&meta).map_err(|e| {
        Error::io(
            entry_dir.join(META_FILE),
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    // meta.json last: an entry without it (a crash mid-way) is not a hit.
    atomic_file::write(&vmlinux_path, &x.vmlinux, CACHE_FILE_MODE)?;
    atomic_file::write(&header_path, &x.header.raw, CACHE_FILE_MODE)?;
    atomic_file::write(&entry_dir.join(META_FILE), &meta_json, CACHE_FILE_MODE)?;
    log::info!(
        "{}: extracted {} vmlinux ({} bytes) to {}",
        bzimage.display(),
        x.compression,
        x.vmlinux.len(),
        vmlinux_path.display()
    );
    Ok(Prepared {
        vmlinux: vmlinux_path,
        setup_header: header_path,
        compression: x.compression,
        key,
        cached: false,
        entry_dir,
        header: x.header,
        elf: x.elf,
        vmlinux_len: meta.vmlinux_len,
        vmlinux_bytes: x.vmlinux,
    })
}

/// A complete, verified entry; `Ok(None)` if there is none; `Err(reason)` if
/// there is one that cannot be trusted.
fn load_entry(
    dir: &Path,
    key: &str,
    header: &SetupHeader,
) -> std::result::Result<Option<Prepared>, String> {
    let meta_path = dir.join(META_FILE);
    if !meta_path.exists() {
        return Ok(None);
    }
    let meta_bytes = input::read(
        &meta_path,
        "the cache metadata",
        MAX_META_SIZE,
        "it is a few hundred bytes",
    )
    .map_err(|e| e.to_string())?;
    let meta: Meta =
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
    let len = fs::metadata(&vmlinux_path)
        .map_err(|e| format!("{VMLINUX_FILE}: {e}"))?
        .len();
    if len != meta.vmlinux_len {
        return Err(format!(
            "{VMLINUX_FILE} is {len} bytes, {META_FILE} says {}",
            meta.vmlinux_len
        ));
    }
    let bytes = read_trusted(
        &vmlinux_path,
        "the cached vmlinux",
        meta.vmlinux_len,
        "the size meta.json records",
    )?;
    let sha = sha256_hex(&bytes);
    if sha != meta.vmlinux_sha256 {
        return Err(format!(
            "{VMLINUX_FILE} SHA-256 is {sha}, {META_FILE} says {}",
            meta.vmlinux_sha256
        ));
    }
    let elf = vmlinux::parse_vmlinux(&vmlinux_path, &bytes).map_err(|e| e.to_string())?;
    Ok(Some(Prepared {
        vmlinux: vmlinux_path,
        setup_header: header_path,
        compression: meta.compression,
        key: key.to_string(),
        cached: true,
        entry_dir: dir.to_path_buf(),
        header: header.clone(),
        elf,
        vmlinux_len: len,
        vmlinux_bytes: bytes,
    }))
}

/// Why `meta` (of `path`) cannot be trusted with what root kexecs: owned by someone other
/// than root or us, or writable by group or others.
fn untrusted(meta: &fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let euid = rustix::process::geteuid().as_raw();
    let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
    if uid != 0 && uid != euid {
        let owner = if euid == 0 { "root" } else { "yourself" };
        return Some(format!(
            "owned by uid {uid}, who could put any kernel there for uid {euid} to load; \
             `chown` it to {owner} and `chmod go-w` it, or pass another --cache-dir"
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "mode {mode:04o}: users other than its owner can write it and could put any kernel \
             there; `chmod go-w` it, or pass another --cache-dir"
        ));
    }
    None
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

/// A cache file's bytes, read through one descriptor whose owner and mode were checked.
fn read_trusted(
    path: &Path,
    what: &str,
    max: u64,
    why: &str,
) -> std::result::Result<Vec<u8>, String> {
    let f = input::open(path, what, max, why).map_err(|e| e.to_string())?;
    let meta = f
        .file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(problem) = untrusted(&meta) {
        return Err(format!("{}: {what} is {problem}", path.display()));
    }
    f.read_all(path, what, max, why).map_err(|e| e.to_string())
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
        assert_eq!(second.elf, first.elf);
        assert_eq!(second.header, first.header);
        // Not rewritten.
        assert_eq!(
            fs::metadata(&second.vmlinux).unwrap().modified().unwrap(),
            mtime
        );
        // No temp files left behind.
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

    #[test]
    fn flipped_byte_in_cached_vmlinux_is_rebuilt() {
        rebuilt_after(|p| {
            let mut v = fs::read(&p.vmlinux).unwrap();
            let i = v.len() / 2;
            v[i] ^= 1;
            fs::write(&p.vmlinux, v).unwrap();
        });
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
    /// meta.json alone used to vouch for): the entry is not trusted.
    #[test]
    fn a_crc32_preserving_change_to_the_cached_vmlinux_is_caught() {
        rebuilt_after(|p| {
            let mut v = fs::read(&p.vmlinux).unwrap();
            let crc = crc32fast::hash(&v);
            let i = v.len() / 2;
            v[i..i + 4].copy_from_slice(b"EVIL");
            restore_crc32(&mut v, i + 8, crc);
            assert_ne!(v, fs::read(&p.vmlinux).unwrap());
            fs::write(&p.vmlinux, v).unwrap();
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
