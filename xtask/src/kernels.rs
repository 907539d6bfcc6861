//! Lab kernels: stock Debian cloud kernels fetched through a private apt
//! configuration (its own sources list and lists directory; the system's apt
//! sources are never touched), unpacked, and given an uncompressed vmlinux
//! extracted by fastkexec's own code.

use crate::util::{lab_dir, output, run, step, write_atomic};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// A kernel the lab knows by name.
pub struct KernelSpec {
    pub name: &'static str,
    /// POSIX regex for `apt-cache search --names-only` selecting the image package.
    pub image_regex: &'static str,
    /// Debian suite this flavour comes from (documentation and the JSON).
    pub suite: &'static str,
}

pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "6.1",
        image_regex: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
        suite: "bookworm",
    },
    KernelSpec {
        name: "6.12",
        image_regex: r"^linux-image-6\.12\.[0-9]+\+deb13(\.[0-9]+)?-cloud-amd64-unsigned$",
        suite: "trixie",
    },
    KernelSpec {
        // sid splits the kernel: the image is in linux-binary-unsigned-*, the
        // config in linux-base-*, modules in linux-modules-*.
        name: "7.x",
        image_regex: r"^linux-binary-unsigned-7\.[0-9]+\.[0-9]+\+deb[0-9]+-cloud-amd64$",
        suite: "sid",
    },
];

/// What the lab knows about one unpacked kernel (kept as kernel.json).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelInfo {
    pub name: String,
    pub suite: String,
    /// Debian packages it came from, with exact versions ("name=version").
    pub packages: Vec<String>,
    pub version: String,
    /// `uname -r` of the kernel.
    pub release: String,
    pub vmlinuz: PathBuf,
    pub vmlinux: PathBuf,
    pub config: Option<PathBuf>,
    /// Directory holding lib/modules/<release> (for lab modules).
    pub modules: Option<PathBuf>,
    pub compression: String,
    pub vmlinuz_bytes: u64,
    pub vmlinux_bytes: u64,
}

impl KernelInfo {
    fn complete(&self) -> bool {
        self.vmlinuz.is_file() && self.vmlinux.is_file()
    }

    /// A 6.1 kernel's facts with no files behind them, for the lab's and the bench's tests.
    #[cfg(test)]
    pub fn fixture() -> Self {
        KernelInfo {
            name: "6.1".into(),
            suite: "bookworm".into(),
            packages: vec!["linux-image-6.1.0-1-cloud-amd64=6.1.1-1".into()],
            version: "6.1.1-1".into(),
            release: "6.1.0-1-cloud-amd64".into(),
            vmlinuz: PathBuf::new(),
            vmlinux: PathBuf::new(),
            config: None,
            modules: None,
            compression: "lz4".into(),
            vmlinuz_bytes: 0,
            vmlinux_bytes: 0,
        }
    }
}

fn kernels_dir() -> PathBuf {
    lab_dir().join("kernels")
}

fn apt_dir() -> PathBuf {
    lab_dir().join("apt")
}

/// The private apt configuration: -o options pointing apt at our own files.
fn apt_opts() -> Vec<String> {
    let a = apt_dir();
    vec![
        format!("Dir::Etc::SourceList={}", a.join("sources.list").display()),
        "Dir::Etc::SourceParts=/nonexistent".into(),
        format!("Dir::State::Lists={}", a.join("lists").display()),
        format!("Dir::Cache={}", a.join("cache").display()),
        "Dir::State::status=/var/lib/dpkg/status".into(),
        "APT::Get::List-Cleanup=0".into(),
        "Acquire::Languages=none".into(),
        "APT::Sandbox::User=root".into(),
    ]
}

fn apt(prog: &str) -> Command {
    let mut c = Command::new(prog);
    for o in apt_opts() {
        c.arg("-o").arg(o);
    }
    c
}

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Writes the private sources list and refreshes its package lists.
fn apt_update() -> Result<()> {
    let a = apt_dir();
    for d in ["lists/partial", "cache/archives/partial", "debs"] {
        std::fs::create_dir_all(a.join(d))
            .with_context(|| format!("creating {}", a.join(d).display()))?;
    }
    let mut list = String::new();
    for (host, suite) in [
        ("debian", "bookworm"),
        ("debian-security", "bookworm-security"),
        ("debian", "trixie"),
        ("debian-security", "trixie-security"),
        ("debian", "sid"),
    ] {
        list.push_str(&format!(
            "deb [signed-by={KEYRING}] http://deb.debian.org/{host} {suite} main\n"
        ));
    }
    write_atomic(&a.join("sources.list"), list.as_bytes())?;
    step("refreshing the lab's private apt lists (bookworm, trixie, sid)");
    run(
        "apt-get update (private lab configuration)",
        apt("apt-get").args(["-q", "update"]),
    )
}

fn candidate_version(pkg: &str) -> Result<String> {
    let out = output(
        &format!("apt-cache show {pkg}"),
        apt("apt-cache").args(["show", "--no-all-versions", pkg]),
    )?;
    out.lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("apt-cache show {pkg}: no Version field"))
}

fn version_gt(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Finds the newest package matching the spec: (name, version).
fn resolve(spec: &KernelSpec) -> Result<(String, String)> {
    let out = output(
        "apt-cache search",
        apt("apt-cache").args(["search", "--names-only", spec.image_regex]),
    )?;
    let mut best: Option<(String, String)> = None;
    for line in out.lines() {
        let Some(name) = line.split(" - ").next().map(str::trim) else {
            continue;
        };
        let version = candidate_version(name)?;
        if best.as_ref().is_none_or(|(_, v)| version_gt(&version, v)) {
            best = Some((name.to_string(), version));
        }
    }
    best.with_context(|| {
        format!(
            "no package matches {} in the lab's apt lists ({}); is deb.debian.org reachable?",
            spec.image_regex, spec.suite
        )
    })
}

/// Extra packages that belong to a split (sid) kernel image package.
fn companions(image_pkg: &str) -> Vec<String> {
    match image_pkg.strip_prefix("linux-binary-unsigned-") {
        Some(rest) => vec![
            format!("linux-base-{rest}"),
            format!("linux-modules-{rest}"),
        ],
        None => vec![],
    }
}

/// Where [`download`] keeps a package's .deb (the system image installs them).
pub fn deb_file(pkg: &str, version: &str) -> PathBuf {
    apt_dir()
        .join("debs")
        .join(format!("{pkg}_{}_amd64.deb", version.replace(':', "%3a")))
}

fn download(pkg: &str, version: &str) -> Result<PathBuf> {
    let debs = apt_dir().join("debs");
    let file = deb_file(pkg, version);
    if file.is_file() {
        return Ok(file);
    }
    step(format!("downloading {pkg}={version}"));
    run(
        &format!("apt-get download {pkg}={version}"),
        apt("apt-get")
            .args(["-q", "download", &format!("{pkg}={version}")])
            .current_dir(&debs),
    )?;
    if !file.is_file() {
        bail!(
            "apt-get download {pkg}={version} succeeded but {} is missing",
            file.display()
        );
    }
    Ok(file)
}

fn unpack(deb: &Path, into: &Path) -> Result<()> {
    std::fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    run(
        &format!("unpacking {}", deb.display()),
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(into),
    )
}

/// Ensures the named lab kernel is in the cache; downloads it if needed.
/// `refresh` re-resolves the newest package even if one is cached.
pub fn ensure(name: &str, refresh: bool) -> Result<KernelInfo> {
    let spec = KERNELS.iter().find(|k| k.name == name).with_context(|| {
        format!(
            "unknown lab kernel {name:?}: known are {} (or pass --kernel-image/--kernel-deb)",
            KERNELS
                .iter()
                .map(|k| k.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let dir = kernels_dir().join(spec.name);
    let info_path = dir.join("kernel.json");
    if !refresh {
        if let Some(info) = read_info(&info_path) {
            return Ok(info);
        }
    }
    static UPDATED: std::sync::Once = std::sync::Once::new();
    let mut upd = Ok(());
    UPDATED.call_once(|| upd = apt_update());
    upd?;
    let (pkg, version) = resolve(spec)?;
    if let Some(info) = read_info(&info_path) {
        if info.version == version && info.packages.iter().any(|p| p.starts_with(&pkg)) {
            return Ok(info);
        }
    }
    let mut debs = vec![(pkg.clone(), download(&pkg, &version)?)];
    for c in companions(&pkg) {
        let v = candidate_version(&c)?;
        debs.push((format!("{c}={v}"), download(&c, &v)?));
    }
    let packages = std::iter::once(format!("{pkg}={version}"))
        .chain(debs.iter().skip(1).map(|(p, _)| p.clone()))
        .collect();
    let root = dir.join("root");
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    for (_, deb) in &debs {
        unpack(deb, &root)?;
    }
    let info = install_tree(spec.name, spec.suite, packages, &version, &root, &dir)?;
    Ok(info)
}

/// A kernel from a local .deb (`--kernel-deb`).
pub fn from_deb(deb: &Path) -> Result<KernelInfo> {
    let stem = deb
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .context("--kernel-deb needs a file name")?;
    let dir = kernels_dir().join(format!("deb-{stem}"));
    let info_path = dir.join("kernel.json");
    if let Some(info) = read_info(&info_path) {
        return Ok(info);
    }
    let field = |f: &str| -> Result<String> {
        Ok(output(
            "dpkg-deb --field",
            Command::new("dpkg-deb").arg("--field").arg(deb).arg(f),
        )?
        .trim()
        .to_string())
    };
    let (pkg, version) = (field("Package")?, field("Version")?);
    let root = dir.join("root");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    unpack(deb, &root)?;
    install_tree(
        &format!("deb-{stem}"),
        "local",
        vec![format!("{pkg}={version}")],
        &version,
        &root,
        &dir,
    )
}

/// A kernel from a local bzImage (`--kernel-image`).
pub fn from_image(image: &Path) -> Result<KernelInfo> {
    let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let key = format!("{:016x}", fnv1a(&bytes));
    let dir = kernels_dir().join(format!("image-{key}"));
    let info_path = dir.join("kernel.json");
    if let Some(info) = read_info(&info_path) {
        return Ok(info);
    }
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("boot"))?;
    std::fs::copy(image, root.join("boot/vmlinuz-local"))?;
    install_tree(
        &format!("image-{key}"),
        "local",
        vec![format!("file:{}", image.display())],
        "local",
        &root,
        &dir,
    )
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn read_info(path: &Path) -> Option<KernelInfo> {
    let info: KernelInfo = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    info.complete().then_some(info)
}

/// Locates image, config and modules in an unpacked tree, extracts the
/// vmlinux with fastkexec's own code and records kernel.json.
fn install_tree(
    name: &str,
    suite: &str,
    packages: Vec<String>,
    version: &str,
    root: &Path,
    dir: &Path,
) -> Result<KernelInfo> {
    let mut vmlinuz = None;
    let mut config = None;
    let mut modules = None;
    let mut release = None;
    for base in ["boot", "usr/lib/modules", "lib/modules"] {
        let d = root.join(base);
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let n = e.file_name().to_string_lossy().into_owned();
            if base == "boot" {
                if n.starts_with("vmlinuz") {
                    vmlinuz = Some(p);
                } else if n.starts_with("config-") {
                    config = Some(p);
                }
            } else if p.is_dir() {
                release = Some(n.clone());
                modules = Some(d.clone());
                for f in ["vmlinuz.unsigned", "vmlinuz"] {
                    if vmlinuz.is_none() && p.join(f).is_file() {
                        vmlinuz = Some(p.join(f));
                    }
                }
                if config.is_none() && p.join("config").is_file() {
                    config = Some(p.join("config"));
                }
            }
        }
    }
    let vmlinuz = vmlinuz.with_context(|| {
        format!(
            "{}: no kernel image found (looked for boot/vmlinuz-* and usr/lib/modules/*/vmlinuz*)",
            root.display()
        )
    })?;
    let release = release.unwrap_or_else(|| {
        vmlinuz
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("vmlinuz-")
                    .to_string()
            })
            .unwrap_or_default()
    });
    let image =
        std::fs::read(&vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    step(format!(
        "extracting vmlinux from {} ({} bytes)",
        vmlinuz.display(),
        image.len()
    ));
    let t = Instant::now();
    let extracted = fastkexec::image::bzimage::extract_vmlinux(&vmlinuz, &image)
        .with_context(|| format!("extracting the vmlinux of {name}"))?;
    fastkexec::image::vmlinux::parse_vmlinux(&vmlinuz, &extracted.vmlinux).with_context(|| {
        format!(
            "validating the vmlinux extracted from {}",
            vmlinuz.display()
        )
    })?;
    step(format!(
        "  {} payload, {} bytes of vmlinux in {:.0} ms",
        extracted.compression,
        extracted.vmlinux.len(),
        t.elapsed().as_secs_f64() * 1e3
    ));
    let out_vmlinuz = dir.join("vmlinuz");
    let out_vmlinux = dir.join("vmlinux");
    write_atomic(&out_vmlinuz, &image)?;
    write_atomic(&out_vmlinux, &extracted.vmlinux)?;
    let out_config = match &config {
        Some(c) => {
            let p = dir.join("config");
            std::fs::copy(c, &p).with_context(|| format!("copying {}", c.display()))?;
            Some(p)
        }
        None => None,
    };
    let info = KernelInfo {
        name: name.to_string(),
        suite: suite.to_string(),
        packages,
        version: version.to_string(),
        release,
        vmlinuz: out_vmlinuz,
        vmlinux: out_vmlinux,
        config: out_config,
        modules,
        compression: extracted.compression.to_string(),
        vmlinuz_bytes: image.len() as u64,
        vmlinux_bytes: extracted.vmlinux.len() as u64,
    };
    write_atomic(
        &dir.join("kernel.json"),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;
    Ok(info)
}
