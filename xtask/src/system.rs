//! The lab's Debian system image (`lab run --system debian`): a minimal Debian trixie under
//! systemd, with every lab kernel installed from its own .deb (so initramfs-tools builds each
//! kernel's own initramfs), built once by mmdebstrap into `target/lab/system/base.tar`.
//!
//! On top of that base, the layer a run needs is applied to an extracted copy the way README
//! tells a user to install fastkexec (`install -m 0755` the static binary, `install -m 0644`
//! the unit from `contrib/systemd/`, `systemctl enable`), plus the lab's own units and
//! settings, and the tree becomes an ext4 image with `mke2fs -d` (no mount). The image is
//! rebuilt only when the layer changes; each run boots a throw-away qcow2 overlay of it.

use crate::kernels::{self, KernelInfo};
use crate::util::{lab_dir, output, run, step, workspace_root, write_atomic};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The Debian suite of the image: systemd 257, and initramfs-tools that builds an initramfs
/// for each of the lab kernels (6.1, 6.12, 7.x).
pub const SUITE: &str = "trixie";

/// What the base holds besides the essential set (`--variant=apt`): no ssh, no getty needed.
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "prometheus-node-exporter",
    "kexec-tools",
    "initramfs-tools",
    "kmod",
    "linux-base",
    "e2fsprogs",
    "zstd",
    "iproute2",
    "procps",
];

/// Bumped when the layer's recipe changes (the image is then rebuilt).
const LAYER_VERSION: u32 = 1;

/// The root file system's size (sparse: the image takes what the files take).
const IMAGE_SIZE: &str = "3G";

/// The lab's guest side (xtask/lab/system/), installed into every image.
const LAB_FILES: &[(&str, &str, u32)] = &[
    (
        "usr/local/lib/fklab/fklab.sh",
        include_str!("../lab/system/fklab.sh"),
        0o755,
    ),
    (
        "etc/systemd/system/fklab.service",
        include_str!("../lab/system/fklab.service"),
        0o644,
    ),
    (
        "etc/systemd/system/fklab-trace.service",
        include_str!("../lab/system/fklab-trace.service"),
        0o644,
    ),
    (
        "etc/systemd/system/fklab-slow-stop.service",
        include_str!("../lab/system/fklab-slow-stop.service"),
        0o644,
    ),
    (
        "etc/systemd/system/fklab-slow-start.service",
        include_str!("../lab/system/fklab-slow-start.service"),
        0o644,
    ),
    (
        "etc/systemd/network/80-fklab.network",
        include_str!("../lab/system/80-fklab.network"),
        0o644,
    ),
];

/// What `base.json` records about the base (README states the build time and size).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaseInfo {
    pub suite: String,
    pub packages: Vec<String>,
    /// The lab kernels' packages installed into it (`name=version`).
    pub kernels: Vec<String>,
    pub build_seconds: f64,
    pub tar_bytes: u64,
}

/// One built image: its ext4 file and each kernel's initramfs, taken out of its /boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    pub key: String,
    pub ext4: PathBuf,
    /// Bytes the sparse ext4 file takes on disk.
    pub ext4_disk_bytes: u64,
    pub build_seconds: f64,
    /// `uname -r` → the initramfs initramfs-tools built for it in the image.
    pub initrds: Vec<(String, PathBuf)>,
}

impl Image {
    pub fn initrd(&self, release: &str) -> Result<&Path> {
        self.initrds
            .iter()
            .find(|(r, _)| r == release)
            .map(|(_, p)| p.as_path())
            .with_context(|| {
                format!(
                    "the system image has no initramfs for {release}: rebuild it with \
                     `rm -r {}` and run again",
                    dir().display()
                )
            })
    }
}

pub fn dir() -> PathBuf {
    lab_dir().join("system")
}

fn need_root(what: &str) -> Result<()> {
    // /proc/self belongs to the process's effective user.
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        bail!(
            "{what} needs root (mmdebstrap's root mode, and a tree with root-owned files and \
             device nodes for mke2fs -d): run the lab as root, as `cargo xtask setup` is"
        );
    }
    Ok(())
}

/// Every lab kernel's .deb files, as downloaded by `kernels`.
fn kernel_debs(all: &[KernelInfo]) -> Result<Vec<PathBuf>> {
    let mut debs = Vec::new();
    for k in all {
        for p in &k.packages {
            let (name, version) = p
                .split_once('=')
                .with_context(|| format!("kernel {}: package {p:?} has no version", k.name))?;
            let f = kernels::deb_file(name, version);
            if !f.is_file() {
                bail!(
                    "kernel {}: {} is missing: run `cargo xtask setup --refresh-kernels`",
                    k.name,
                    f.display()
                );
            }
            debs.push(f);
        }
    }
    Ok(debs)
}

/// Builds the base once (mmdebstrap); a no-op when `base.json` matches the kernels.
pub fn ensure_base(all: &[KernelInfo]) -> Result<BaseInfo> {
    let d = dir();
    let tar = d.join("base.tar");
    let info_path = d.join("base.json");
    let kernels: Vec<String> = all.iter().flat_map(|k| k.packages.clone()).collect();
    let packages: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    if let Ok(b) = std::fs::read(&info_path) {
        if let Ok(info) = serde_json::from_slice::<BaseInfo>(&b) {
            if tar.is_file() && info.kernels == kernels && info.packages == packages {
                return Ok(info);
            }
        }
    }
    need_root("building the system image")?;
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let debs = kernel_debs(all)?;
    step(format!(
        "system image: mmdebstrap {SUITE} with {} and the lab kernels ({}); a few minutes, once",
        PACKAGES.join(" "),
        kernels.join(" ")
    ));
    let t = Instant::now();
    let partial = d.join("base.tar.partial");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--mode=root",
        "--variant=apt",
        "--format=tar",
        "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg",
    ])
    .arg(format!("--include={}", PACKAGES.join(",")))
    .args([
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
    ])
    // The kernels' own .debs: their postinst runs initramfs-tools, which builds each one's
    // initramfs (virtio_blk is a module in Debian's cloud kernels). dpkg in the chroot, as
    // apt there cannot see host paths; a split (sid) kernel builds none itself.
    .arg("--customize-hook=mkdir -p \"$1/tmp/fklab-debs\"");
    let mut copy_in = String::from("--customize-hook=copy-in");
    for f in &debs {
        copy_in.push(' ');
        copy_in.push_str(&f.to_string_lossy());
    }
    copy_in.push_str(" /tmp/fklab-debs");
    cmd.arg(copy_in)
        .arg("--customize-hook=chroot \"$1\" sh -c 'dpkg -i /tmp/fklab-debs/*.deb'")
        .arg(
            "--customize-hook=chroot \"$1\" sh -c 'for m in /usr/lib/modules/*; do \
             r=${m##*/}; [ -e /boot/initrd.img-$r ] || update-initramfs -c -k $r || exit 1; done'",
        )
        .arg("--customize-hook=rm -rf \"$1/tmp/fklab-debs\"")
        .arg(SUITE)
        .arg(&partial)
        .arg(format!("deb http://deb.debian.org/debian {SUITE} main"))
        .arg(format!(
            "deb http://deb.debian.org/debian {SUITE}-updates main"
        ))
        .arg(format!(
            "deb http://deb.debian.org/debian-security {SUITE}-security main"
        ));
    run("mmdebstrap (the lab's system image)", &mut cmd)?;
    std::fs::rename(&partial, &tar).with_context(|| format!("renaming into {}", tar.display()))?;
    let info = BaseInfo {
        suite: SUITE.into(),
        packages,
        kernels,
        build_seconds: t.elapsed().as_secs_f64(),
        tar_bytes: std::fs::metadata(&tar)?.len(),
    };
    write_atomic(&info_path, serde_json::to_string_pretty(&info)?.as_bytes())?;
    step(format!(
        "system image base: {} MB in {:.0} s ({})",
        info.tar_bytes / 1_000_000,
        info.build_seconds,
        tar.display()
    ));
    Ok(info)
}

/// The key of an image: the base, the static fastkexec, the shipped unit and the lab files.
fn layer_key(base: &BaseInfo, fastkexec: &Path) -> Result<String> {
    let mut all = serde_json::to_vec(base)?;
    all.extend(LAYER_VERSION.to_le_bytes());
    all.extend(
        std::fs::read(fastkexec).with_context(|| format!("reading {}", fastkexec.display()))?,
    );
    all.extend(crate::labunit::UNIT.as_bytes());
    for (path, text, mode) in LAB_FILES {
        all.extend(path.as_bytes());
        all.extend(text.as_bytes());
        all.extend(mode.to_le_bytes());
    }
    Ok(fastkexec::image::prepare::sha256_hex(&all))
}

/// The image for this fastkexec build: reused when its key matches, else rebuilt from the
/// base (extract, layer, mke2fs -d).
pub fn ensure_image(all: &[KernelInfo], fastkexec: &Path) -> Result<Image> {
    let base = ensure_base(all)?;
    let d = dir();
    let key = layer_key(&base, fastkexec)?;
    let info_path = d.join("image.json");
    if let Ok(b) = std::fs::read(&info_path) {
        if let Ok(img) = serde_json::from_slice::<Image>(&b) {
            if img.key == key && img.ext4.is_file() && img.initrds.iter().all(|(_, p)| p.is_file())
            {
                return Ok(img);
            }
        }
    }
    need_root("building the system image")?;
    step("system image: extracting the base and installing fastkexec the way README says");
    let t = Instant::now();
    let tree = d.join("tree");
    if tree.exists() {
        std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    std::fs::create_dir_all(&tree)?;
    run(
        "extracting the base",
        Command::new("tar")
            .arg("-xf")
            .arg(d.join("base.tar"))
            .arg("-C")
            .arg(&tree)
            .arg("--numeric-owner"),
    )?;
    layer(&tree, fastkexec)?;
    let boot = d.join("boot");
    std::fs::create_dir_all(&boot)?;
    let mut initrds = Vec::new();
    for e in std::fs::read_dir(tree.join("boot"))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("initrd.img-") {
            let to = boot.join(&name);
            std::fs::copy(e.path(), &to).with_context(|| format!("copying {name}"))?;
            initrds.push((release.to_string(), to));
        }
    }
    let ext4 = d.join("root.ext4");
    let _ = std::fs::remove_file(&ext4);
    run(
        "mke2fs -d (the system image's root file system)",
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "fklab-root", "-d"])
            .arg(&tree)
            .arg(&ext4)
            .arg(IMAGE_SIZE),
    )?;
    std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    let disk = output("du", Command::new("du").arg("-B1").arg(&ext4))?;
    let img = Image {
        key,
        ext4: ext4.clone(),
        ext4_disk_bytes: disk
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        build_seconds: t.elapsed().as_secs_f64(),
        initrds,
    };
    write_atomic(&info_path, serde_json::to_string_pretty(&img)?.as_bytes())?;
    step(format!(
        "system image: {} ({} MB on disk) in {:.0} s",
        ext4.display(),
        img.ext4_disk_bytes / 1_000_000,
        img.build_seconds
    ));
    Ok(img)
}

fn put(tree: &Path, rel: &str, data: &[u8], mode: u32) -> Result<()> {
    let p = tree.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

fn systemctl(tree: &Path, verb: &str, units: &[&str]) -> Result<()> {
    run(
        &format!("systemctl --root {verb} {}", units.join(" ")),
        Command::new("systemctl")
            .arg(format!("--root={}", tree.display()))
            .arg(verb)
            .args(units),
    )
}

/// What a run needs on top of the base.
fn layer(tree: &Path, fastkexec: &Path) -> Result<()> {
    // README, "Reboot histograms in Prometheus":
    //   install -m 0755 target/release/fastkexec /usr/local/bin/fastkexec
    //   install -m 0644 contrib/systemd/fastkexec-report.service /etc/systemd/system/
    //   systemctl daemon-reload && systemctl enable fastkexec-report.service
    run(
        "install fastkexec",
        Command::new("install")
            .args(["-D", "-m", "0755"])
            .arg(fastkexec)
            .arg(tree.join("usr/local/bin/fastkexec")),
    )?;
    run(
        "install the unit",
        Command::new("install")
            .args(["-m", "0644"])
            .arg(workspace_root().join("contrib/systemd/fastkexec-report.service"))
            .arg(tree.join("etc/systemd/system/")),
    )?;
    systemctl(tree, "enable", &["fastkexec-report.service"])?;
    // README, "Using fastkexec on a server": `fastkexec prepare` off the critical path, for
    // every kernel the image holds (the cache is keyed by the bzImage's SHA-256, so the host
    // computes what the guest would).
    let cache = tree.join("var/cache/fastkexec");
    for k in kernel_images(tree)? {
        fastkexec::image::prepare::prepare(&k, &cache)
            .with_context(|| format!("fastkexec prepare {}", k.display()))?;
    }
    // The machine: root on the virtio disk, a fixed machine id (the journal of the previous
    // boot must be found under the same id after a kexec), a persistent journal, a static
    // address for QEMU's user network, and no getty on the serial console (the lab reads it,
    // and writes to it once: see fklab.sh).
    put(tree, "etc/fstab", b"/dev/vda / ext4 defaults 0 1\n", 0o644)?;
    put(tree, "etc/hostname", b"fklab\n", 0o644)?;
    put(
        tree,
        "etc/machine-id",
        b"f4a5c0de5e4a11ed8d1b0242ac120002\n",
        0o444,
    )?;
    std::fs::create_dir_all(tree.join("var/log/journal"))?;
    for (rel, text, mode) in LAB_FILES {
        put(tree, rel, text.as_bytes(), *mode)?;
    }
    systemctl(tree, "mask", &["serial-getty@ttyS0.service"])?;
    systemctl(
        tree,
        "enable",
        &[
            "systemd-networkd.service",
            "fklab.service",
            "fklab-slow-stop.service",
            "fklab-slow-start.service",
        ],
    )?;
    Ok(())
}

/// The bzImages in the tree: /boot/vmlinuz-* and a split kernel's /usr/lib/modules/*/vmlinuz*.
fn kernel_images(tree: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(tree.join("boot"))?.flatten() {
        if e.file_name().to_string_lossy().starts_with("vmlinuz-") {
            v.push(e.path());
        }
    }
    if let Ok(rd) = std::fs::read_dir(tree.join("usr/lib/modules")) {
        for e in rd.flatten() {
            for name in ["vmlinuz", "vmlinuz.unsigned"] {
                let p = e.path().join(name);
                if p.is_file() {
                    v.push(p);
                }
            }
        }
    }
    Ok(v)
}

/// A throw-away overlay of the image for one run.
pub fn overlay(img: &Image, run_dir: &Path) -> Result<PathBuf> {
    let ov = run_dir.join("root.qcow2");
    run(
        "qemu-img create (the run's overlay)",
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&img.ext4)
            .arg(&ov),
    )?;
    Ok(ov)
}
