//! The lab's initramfs images, written by our own newc cpio writer (no root
//! needed for device nodes, byte-for-byte reproducible).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

const INIT: &str = include_str!("../lab/init.sh");
const ROUND1: &str = include_str!("../lab/round1.sh");
const ROUND2: &str = include_str!("../lab/round2.sh");
const HANGUP: &str = include_str!("../lab/hangup.sh");
const HANGUP_SESSION: &str = include_str!("../lab/hangup-session.sh");

/// One entry of a newc archive.
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    CharDev { major: u32, minor: u32 },
}

/// An in-memory newc ("070701") cpio archive under construction.
#[derive(Default)]
pub struct Cpio {
    entries: Vec<(String, Entry)>,
}

impl Cpio {
    /// Adds `path` and every missing parent directory.
    fn parents(&mut self, path: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for p in parts.iter().take(parts.len().saturating_sub(1)) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            if !self.entries.iter().any(|(n, _)| n == &acc) {
                self.entries.push((acc.clone(), Entry::Dir));
            }
        }
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        let path = path.trim_start_matches('/');
        self.parents(path);
        if !self.entries.iter().any(|(n, _)| n == path) {
            self.entries.push((path.to_string(), Entry::Dir));
        }
        self
    }

    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> &mut Self {
        let path = path.trim_start_matches('/');
        self.parents(path);
        self.entries.retain(|(n, _)| n != path);
        self.entries
            .push((path.to_string(), Entry::File { data, mode }));
        self
    }

    /// Adds a host file (symlinks followed) at `path`.
    pub fn host_file(&mut self, path: &str, host: &Path, mode: u32) -> Result<&mut Self> {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        Ok(self.file(path, data, mode))
    }

    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        let path = path.trim_start_matches('/');
        self.parents(path);
        self.entries
            .push((path.to_string(), Entry::CharDev { major, minor }));
        self
    }

    /// Serialises the archive (newc, with trailer).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (name, e)) in (1u32..).zip(self.entries.iter()) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match e {
                Entry::Dir => (0o040755, &[], (0, 0)),
                Entry::File { data, mode } => (0o100000 | mode, data, (0, 0)),
                Entry::CharDev { major, minor } => (0o020600, &[], (*major, *minor)),
            };
            let nlink = if matches!(e, Entry::Dir) { 2 } else { 1 };
            header(&mut out, ino, mode, nlink, data.len(), rdev, name);
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        header(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!");
        out
    }
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime: fixed so archives are reproducible
        size as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Host files that go into every lab image.
pub struct Tools {
    pub busybox: PathBuf,
    pub fastkexec: PathBuf,
    pub kexec: PathBuf,
}

impl Tools {
    pub fn find(fastkexec: PathBuf) -> Result<Self> {
        let busybox = PathBuf::from("/bin/busybox");
        if !busybox.is_file() {
            bail!("/bin/busybox missing: run `cargo xtask setup` (installs busybox-static)");
        }
        let kexec = ["/usr/sbin/kexec", "/sbin/kexec"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context("kexec-tools' kexec missing: run `cargo xtask setup`")?;
        Ok(Tools {
            busybox,
            fastkexec,
            kexec,
        })
    }
}

fn base(tools: &Tools) -> Result<Cpio> {
    let mut c = Cpio::default();
    for d in [
        "dev", "proc", "sys", "tmp", "bin", "sbin", "usr/bin", "usr/sbin", "lab",
    ] {
        c.dir(d);
    }
    c.char_dev("dev/console", 5, 1);
    c.char_dev("dev/null", 1, 3);
    c.file("init", INIT.as_bytes().to_vec(), 0o755);
    c.host_file("bin/busybox", &tools.busybox, 0o755)?;
    c.host_file("bin/fastkexec", &tools.fastkexec, 0o755)?;
    c.file("lab/round2.sh", ROUND2.as_bytes().to_vec(), 0o644);
    let unit = crate::labunit::parse(crate::labunit::UNIT)
        .context("contrib/systemd/fastkexec-report.service")?;
    let mut script = crate::labunit::script(&unit);
    if let Some(dir) = crate::labunit::textfile_dir(&unit) {
        script.push_str(&format!("UNIT_TEXTFILE_DIR={dir}\n"));
    }
    c.file("lab/unit.sh", script.into_bytes(), 0o644);
    Ok(c)
}

/// The initrd the new kernel boots with in round 2, at least `size` bytes long.
/// A server's initrd is tens of MiB, and the kernel copies every page of it when it
/// executes a `kexec_load` image: a payload brings ours up to that size.
pub fn round2(tools: &Tools, size: usize) -> Result<Vec<u8>> {
    let mut c = base(tools)?;
    c.file(
        "lab/round2-marker",
        b"fastkexec lab round 2 initrd\n".to_vec(),
        0o644,
    );
    let len = c.to_bytes().len();
    if size > len {
        c.file("lab/payload", payload(size - len), 0o644);
    }
    Ok(c.to_bytes())
}

/// `len` bytes that do not compress (a Debian initrd is a compressed archive), the same
/// on every build so images stay reproducible: a xorshift64 stream.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The first boot's initramfs: tools, kexec-tools with its libraries, the
/// next kernel, the round-2 initrd (`round2`), the modules round 1 loads
/// (`NN-name.ko`, in load order) and any extra files (e.g. a prepared cache).
pub fn round1(
    tools: &Tools,
    vmlinuz: &Path,
    round2: Vec<u8>,
    modules: &[(String, Vec<u8>)],
    extra: &[(String, PathBuf)],
) -> Result<Vec<u8>> {
    let mut c = loader(tools, vmlinuz, extra)?;
    c.file("lab/round2.cpio", round2, 0o644);
    add_modules(&mut c, modules);
    Ok(c.to_bytes())
}

fn add_modules(c: &mut Cpio, modules: &[(String, Vec<u8>)]) {
    for (i, (name, data)) in modules.iter().enumerate() {
        c.file(
            &format!("lab/modules/{i:02}-{name}.ko"),
            data.clone(),
            0o644,
        );
    }
}

/// The image of a chained run (`--reboots`): every round boots it, so it holds
/// what round 1 needs to load the next kernel, the round-2 marker and the
/// modules (`NN-name.ko`, in load order) that show the virtio disks and NIC. The next
/// initrd is this image again, read from a virtio disk (a cpio cannot hold
/// itself). Zero-padded to whole sectors: QEMU serves a raw file in sectors.
pub fn chain(
    tools: &Tools,
    vmlinuz: &Path,
    extra: &[(String, PathBuf)],
    modules: &[(String, Vec<u8>)],
) -> Result<Vec<u8>> {
    let mut c = loader(tools, vmlinuz, extra)?;
    c.file(
        "lab/round2-marker",
        b"fastkexec lab chained initrd\n".to_vec(),
        0o644,
    );
    add_modules(&mut c, modules);
    let mut bytes = c.to_bytes();
    bytes.resize(bytes.len().next_multiple_of(512), 0);
    Ok(bytes)
}

/// Round 1's tools: kexec-tools with its libraries, the next kernel, extras.
fn loader(tools: &Tools, vmlinuz: &Path, extra: &[(String, PathBuf)]) -> Result<Cpio> {
    let mut c = base(tools)?;
    c.file("lab/round1.sh", ROUND1.as_bytes().to_vec(), 0o644);
    c.file("lab/hangup.sh", HANGUP.as_bytes().to_vec(), 0o644);
    c.file(
        "lab/hangup-session",
        HANGUP_SESSION.as_bytes().to_vec(),
        0o755,
    );
    c.host_file("sbin/kexec", &tools.kexec, 0o755)?;
    for lib in shared_libs(&tools.kexec)? {
        let dest = lib.to_string_lossy().into_owned();
        c.host_file(&dest, &lib, 0o755)?;
    }
    c.host_file("lab/vmlinuz", vmlinuz, 0o644)?;
    for (dest, host) in extra {
        c.host_file(dest, host, 0o644)?;
    }
    Ok(c)
}

/// The shared libraries (and loader) a dynamically linked binary needs, by ldd.
fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = crate::util::output("ldd", std::process::Command::new("ldd").arg(bin))?;
    let mut libs = Vec::new();
    for line in out.lines() {
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_exact_reproducible_and_not_repetitive() {
        let p = payload(1 << 20 | 3);
        assert_eq!(p.len(), (1 << 20) + 3);
        assert_eq!(p, payload(p.len()));
        // A stream that repeated (or stayed zero) would compress to nothing.
        let mut seen = std::collections::HashSet::new();
        for chunk in p.chunks_exact(8) {
            seen.insert(chunk);
        }
        assert_eq!(seen.len(), p.len() / 8);
    }

    /// Cross-checks our writer with the system's cpio, an independent reader.
    #[test]
    fn cpio_lists_with_gnu_cpio() {
        let mut c = Cpio::default();
        c.file("a/b/c.txt", b"hello".to_vec(), 0o644);
        c.char_dev("dev/console", 5, 1);
        c.dir("empty");
        let bytes = c.to_bytes();
        let dir = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.cpio");
        std::fs::write(&path, &bytes).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-t", "-v", "-F"])
            .arg(&path)
            .output()
            .expect("cpio(1) is installed by cargo xtask setup");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        for want in ["a/b/c.txt", "dev/console", "empty", "a/b"] {
            assert!(
                listing.lines().any(|l| l.ends_with(want)),
                "{want} missing in {listing}"
            );
        }
        assert!(
            listing.contains("5,   1") || listing.contains("5, 1"),
            "{listing}"
        );
        let out = std::process::Command::new("cpio")
            .args(["-i", "--to-stdout", "-F"])
            .arg(&path)
            .arg("a/b/c.txt")
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"hello");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
