//! What this kernel allows for kexec, read from procfs/sysfs under a root prefix.
//!
//! Everything is read best-effort: a file that is missing or unreadable (non-root, other
//! kernels) becomes `None` plus a note, never an error, so `fastkexec status` and
//! `load --dry-run` work unprivileged on any machine. The root prefix lets the unit tests run
//! on captured fixture trees (`tests/fixtures/status/<case>/`).

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Result;

/// CAP_SYS_BOOT's bit number in the capability sets (linux/capability.h).
const CAP_SYS_BOOT: u32 = 22;

/// Everything `fastkexec status` reports.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Status {
    /// `/proc/sys/kernel/osrelease`.
    pub kernel_release: Option<String>,
    /// The kernel has kexec at all (CONFIG_KEXEC_CORE: `/sys/kernel/kexec_loaded` exists).
    pub kexec_core: bool,
    /// A normal (reboot) image is loaded.
    pub loaded: Option<bool>,
    /// A crash (kdump) image is loaded.
    pub crash_loaded: Option<bool>,
    /// Bytes reserved for the crash kernel (`/sys/kernel/kexec_crash_size`).
    pub crash_size: Option<u64>,
    /// "Crash kernel" ranges from `/proc/iomem`.
    pub crash_kernel: Vec<CrashRange>,
    /// `/proc/iomem` showed zero addresses (it does for non-root readers).
    pub iomem_addresses_hidden: bool,
    /// `/sys/kernel/security/lockdown`.
    pub lockdown: Option<Lockdown>,
    /// `kernel.kexec_load_disabled` (blocks both syscalls once set).
    pub kexec_load_disabled: Option<bool>,
    /// `kernel.kexec_load_limit_reboot` (-1 = unlimited; newer kernels only).
    pub kexec_load_limit_reboot: Option<i64>,
    /// `kernel.kexec_load_limit_panic` (-1 = unlimited; newer kernels only).
    pub kexec_load_limit_panic: Option<i64>,
    /// Build options, when the kernel's config file can be found.
    pub config: KernelConfig,
    /// Set when this looks like a confidential-computing guest (TDX, SEV).
    pub confidential_guest: Option<String>,
    /// The machine booted through EFI (`/sys/firmware/efi` exists).
    pub efi: bool,
    /// Privilege of the calling process.
    pub privilege: Privilege,
    /// What each load mode needs, and whether this kernel provides it.
    pub modes: Modes,
    /// What `fastkexec load --mode staged` put into the crashkernel reservation during this
    /// boot (from its record; see [`crate::staged`]).
    pub staged: Option<crate::host::staged_record::StagedState>,
    /// Whether this kernel's own kexec_file_load avoids the relocation copy.
    pub kernel_native: KernelNative,
    /// Files that could not be read, and other remarks.
    pub notes: Vec<String>,
}

/// One "Crash kernel" resource from `/proc/iomem` (inclusive end, as the file shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CrashRange {
    pub start: u64,
    pub end: u64,
    pub size: u64,
}

/// Kernel lockdown state: `current` is the bracketed entry (`none`, `integrity`, ...).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Lockdown {
    pub current: String,
    pub available: Vec<String>,
}

impl Lockdown {
    /// Lockdown is on (anything but `none`).
    pub fn active(&self) -> bool {
        self.current != "none"
    }
}

/// kexec-related build options (`None`: not found or config unreadable).
#[derive(Debug, Default, Clone, Serialize)]
pub struct KernelConfig {
    /// Where the options were read from.
    pub source: Option<PathBuf>,
    /// CONFIG_KEXEC: the `kexec_load` syscall.
    pub kexec: Option<bool>,
    /// CONFIG_KEXEC_FILE: the `kexec_file_load` syscall.
    pub kexec_file: Option<bool>,
    /// CONFIG_KEXEC_SIG_FORCE: kexec_file_load only takes signed images.
    pub kexec_sig_force: Option<bool>,
    /// CONFIG_RANDOMIZE_BASE: kernel-text KASLR (lost in uncompressed mode).
    pub randomize_base: Option<bool>,
    /// CONFIG_DMA_CMA: a default CMA area is possible (kexec_file_load's CMA placement).
    pub dma_cma: Option<bool>,
}

/// The kernel-native way around the relocation copy: since Linux 6.17, `kexec_file_load`
/// places the segments in the default CMA area at load time when there is one (not for crash
/// images; `KEXEC_FILE_NO_CMA` opts out). The in-kernel purgatory still hashes them at reboot.
#[derive(Debug, Default, Clone, Serialize)]
pub struct KernelNative {
    /// `Some(true)`: `--mode file` takes the CMA route on this kernel now.
    pub file_cma_placement: Option<bool>,
    /// `CmaTotal` from /proc/meminfo, in KiB.
    pub cma_total_kb: Option<u64>,
    /// `/sys/kernel/mm/cma/reserved` exists: the default (DMA) CMA area is set up.
    pub default_cma_area: Option<bool>,
    /// Why, in words.
    pub detail: String,
}

/// First kernel release whose `kexec_file_load` places segments in CMA.
pub const FILE_CMA_SINCE: (u32, u32) = (6, 17);

/// `(major, minor)` of a release string such as `7.2.13+deb14-cloud-amd64`.
pub fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Decides [`KernelNative`] from the release, the config and the CMA facts.
pub fn kernel_native(
    release: Option<&str>,
    dma_cma: Option<bool>,
    cma_total_kb: Option<u64>,
    default_cma_area: Option<bool>,
) -> KernelNative {
    let mut k = KernelNative {
        cma_total_kb,
        default_cma_area,
        ..KernelNative::default()
    };
    let Some(version) = release.and_then(release_version) else {
        k.detail = "kernel version unknown".into();
        return k;
    };
    let (maj, min) = FILE_CMA_SINCE;
    let area = default_cma_area.or(cma_total_kb.map(|kb| kb > 0));
    let (yes, detail) = if version < FILE_CMA_SINCE {
        (
            false,
            format!(
                "kexec_file_load copies the segments into place at reboot on {}.{} (CMA \
                 placement needs {maj}.{min} or later); staged mode avoids that copy here",
                version.0, version.1
            ),
        )
    } else if dma_cma == Some(false) {
        (
            false,
            "this kernel can place kexec_file_load segments in CMA, but was built without \
             CONFIG_DMA_CMA"
                .into(),
        )
    } else if area == Some(false) || area.is_none() {
        (
            false,
            "this kernel can place kexec_file_load segments in CMA, but has no default CMA \
             area: add cma=SIZE (e.g. cma=256M) to its command line"
                .into(),
        )
    } else {
        (
            true,
            format!(
                "kexec_file_load places the segments in the default CMA area{} at load time: no \
                 relocation copy at reboot (the kernel's purgatory still hashes them); --mode \
                 file takes this route",
                cma_total_kb
                    .map_or_else(String::new, |kb| format!(" (CmaTotal {} MiB)", kb / 1024))
            ),
        )
    };
    k.file_cma_placement = Some(yes);
    k.detail = detail;
    k
}

/// Privilege of the calling process, from `/proc/self/status`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Privilege {
    pub euid: Option<u32>,
    /// CAP_SYS_BOOT in the effective set (what the kexec syscalls check).
    pub cap_sys_boot: Option<bool>,
}

impl Privilege {
    /// The kernel would let this process load/exec (as far as capabilities go).
    pub fn can_kexec(&self) -> bool {
        self.cap_sys_boot == Some(true) || (self.cap_sys_boot.is_none() && self.euid == Some(0))
    }
}

/// Whether a load mode can work here; `blockers` empty ⇔ allowed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Availability {
    pub allowed: bool,
    /// Why the mode cannot work on this kernel.
    pub blockers: Vec<String>,
    /// Conditions that do not block but matter (signatures, KASLR, ...).
    pub caveats: Vec<String>,
}

/// Availability of the loader modes.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Modes {
    /// `kexec_file_load` of a bzImage.
    pub file: Availability,
    /// `kexec_load` of the uncompressed vmlinux with our own boot_params and purgatory.
    pub uncompressed: Availability,
    /// The uncompressed kernel staged in the crashkernel reservation (`KEXEC_ON_CRASH`) and
    /// entered through a one-page trampoline.
    pub staged: Availability,
}

/// Reads the kexec status of the system mounted at `root` (`/` for this machine). The
/// tracer's half of `fastkexec status` is [`crate::trace::support::with_status`]: reading it
/// (the kernel's BTF, kallsyms) costs time `load` and `exec` need not spend.
pub fn status(root: &Path) -> Result<Status> {
    let mut st = Status::default();
    let mut notes = Vec::new();
    let p = |rel: &str| root.join(rel);

    st.kernel_release = read_trimmed(&p("proc/sys/kernel/osrelease"), &mut notes);
    let loaded_path = p("sys/kernel/kexec_loaded");
    st.kexec_core = loaded_path.exists();
    if st.kexec_core {
        st.loaded = read_flag(&loaded_path, &mut notes);
        st.crash_loaded = read_flag(&p("sys/kernel/kexec_crash_loaded"), &mut notes);
        st.crash_size = read_int(&p("sys/kernel/kexec_crash_size"), &mut notes)
            .and_then(|v| u64::try_from(v).ok());
    } else {
        notes.push(format!(
            "{} does not exist: this kernel has no kexec support (CONFIG_KEXEC_CORE)",
            loaded_path.display()
        ));
    }

    match fs::read_to_string(p("proc/iomem")) {
        Ok(text) => {
            let (ranges, hidden) = parse_crash_ranges(&text);
            st.crash_kernel = ranges;
            st.iomem_addresses_hidden = hidden;
            if hidden {
                notes.push(
                    "/proc/iomem shows zero addresses to non-root readers; run as root to see \
                     the crash kernel range"
                        .into(),
                );
            }
        }
        Err(e) => notes.push(format!("{}: {e}", p("proc/iomem").display())),
    }

    let lockdown_path = p("sys/kernel/security/lockdown");
    if lockdown_path.exists() {
        st.lockdown = read_trimmed(&lockdown_path, &mut notes).and_then(|t| parse_lockdown(&t));
    } else {
        notes.push(format!(
            "{} does not exist (no lockdown LSM or securityfs not mounted): assuming no lockdown",
            lockdown_path.display()
        ));
    }

    let disabled_path = p("proc/sys/kernel/kexec_load_disabled");
    if st.kexec_core || disabled_path.exists() {
        st.kexec_load_disabled = read_flag(&disabled_path, &mut notes);
    }
    let limit = |name: &str, notes: &mut Vec<String>| {
        let path = p(&format!("proc/sys/kernel/{name}"));
        // Absent before the limits were introduced; that is not worth a note.
        path.exists().then(|| read_int(&path, notes)).flatten()
    };
    st.kexec_load_limit_reboot = limit("kexec_load_limit_reboot", &mut notes);
    st.kexec_load_limit_panic = limit("kexec_load_limit_panic", &mut notes);

    st.config = read_config(root, st.kernel_release.as_deref(), &mut notes);
    st.confidential_guest = fs::read_to_string(p("proc/cpuinfo"))
        .ok()
        .and_then(|t| confidential_guest(&t));
    st.efi = p("sys/firmware/efi").is_dir();
    st.privilege = match fs::read_to_string(p("proc/self/status")) {
        Ok(t) => parse_privilege(&t),
        Err(e) => {
            notes.push(format!("{}: {e}", p("proc/self/status").display()));
            Privilege::default()
        }
    };
    st.modes = modes(&st);
    st.staged = match crate::host::staged_record::read_state(root) {
        Ok(s) => s,
        Err(e) => {
            notes.push(e.to_string());
            None
        }
    };
    let meminfo = fs::read_to_string(p("proc/meminfo")).unwrap_or_default();
    let cma_total_kb = meminfo.lines().find_map(|l| {
        l.strip_prefix("CmaTotal:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    });
    let cma_dir = p("sys/kernel/mm/cma");
    let default_cma_area = cma_dir.is_dir().then(|| cma_dir.join("reserved").is_dir());
    st.kernel_native = kernel_native(
        st.kernel_release.as_deref(),
        st.config.dma_cma,
        cma_total_kb,
        default_cma_area,
    );
    st.notes = notes;
    Ok(st)
}

fn read_trimmed(path: &Path, notes: &mut Vec<String>) -> Option<String> {
    match fs::read_to_string(path) {
        Ok(t) => Some(t.trim().to_string()),
        Err(e) => {
            notes.push(format!("{}: {e}", path.display()));
            None
        }
    }
}

fn read_int(path: &Path, notes: &mut Vec<String>) -> Option<i64> {
    let text = read_trimmed(path, notes)?;
    match text.parse() {
        Ok(v) => Some(v),
        Err(_) => {
            notes.push(format!("{}: not an integer: {text:?}", path.display()));
            None
        }
    }
}

fn read_flag(path: &Path, notes: &mut Vec<String>) -> Option<bool> {
    read_int(path, notes).map(|v| v != 0)
}

/// Parses `/sys/kernel/security/lockdown`, e.g. `none [integrity] confidentiality`.
pub fn parse_lockdown(text: &str) -> Option<Lockdown> {
    let mut current = None;
    let mut available = Vec::new();
    for word in text.split_whitespace() {
        let name = word.trim_start_matches('[').trim_end_matches(']');
        if word.starts_with('[') && word.ends_with(']') {
            current = Some(name.to_string());
        }
        available.push(name.to_string());
    }
    current.map(|current| Lockdown { current, available })
}

/// Finds "Crash kernel" lines in `/proc/iomem` (they nest under "System RAM", hence indented).
/// Returns the ranges and whether addresses were hidden (all zero, as for non-root readers).
pub fn parse_crash_ranges(iomem: &str) -> (Vec<CrashRange>, bool) {
    let mut ranges = Vec::new();
    let mut any = false;
    let mut all_zero = true;
    for line in iomem.lines() {
        let Some((span, name)) = line.trim().split_once(" : ") else {
            continue;
        };
        let Some((a, b)) = span.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        any = true;
        if start != 0 || end != 0 {
            all_zero = false;
        }
        if name.trim() == "Crash kernel" && end >= start {
            let size = (end - start).saturating_add(1);
            ranges.push(CrashRange { start, end, size });
        }
    }
    let hidden = any && all_zero;
    if hidden {
        ranges.clear();
    }
    (ranges, hidden)
}

/// Reads kexec build options from `/boot/config-<release>` (or `/lib/modules/<release>/config`).
fn read_config(root: &Path, release: Option<&str>, notes: &mut Vec<String>) -> KernelConfig {
    let mut cfg = KernelConfig::default();
    let Some(rel) = release else {
        return cfg;
    };
    let candidates = [
        root.join("boot").join(format!("config-{rel}")),
        root.join("lib/modules").join(rel).join("config"),
        root.join("usr/lib/modules").join(rel).join("config"),
    ];
    let found = candidates
        .iter()
        .find_map(|c| fs::read_to_string(c).ok().map(|t| (c.clone(), t)))
        .or_else(|| {
            let gz = root.join("proc/config.gz");
            read_gzip_text(&gz).map(|t| (gz, t))
        });
    let Some((path, text)) = found else {
        notes.push(format!(
            "no kernel config found for {rel} (looked in /boot, /lib/modules and \
             /proc/config.gz): build options unknown"
        ));
        return cfg;
    };
    parse_config_into(&text, &mut cfg);
    cfg.source = Some(path);
    cfg
}

/// `/proc/config.gz` (CONFIG_IKCONFIG_PROC), capped: a kernel config is well under 1 MiB.
fn read_gzip_text(path: &Path) -> Option<String> {
    use std::io::Read;
    let file = fs::File::open(path).ok()?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .take(8 << 20)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Fills `cfg` from Kconfig text: `CONFIG_X=y|m` is true, `# CONFIG_X is not set` false.
pub fn parse_config_into(text: &str, cfg: &mut KernelConfig) {
    for line in text.lines() {
        let (name, value) = if let Some(rest) = line.strip_prefix("# ") {
            match rest.strip_suffix(" is not set") {
                Some(name) => (name, false),
                None => continue,
            }
        } else if let Some((name, v)) = line.split_once('=') {
            (name, v == "y" || v == "m")
        } else {
            continue;
        };
        let slot = match name {
            "CONFIG_KEXEC" => &mut cfg.kexec,
            "CONFIG_KEXEC_FILE" => &mut cfg.kexec_file,
            "CONFIG_KEXEC_SIG_FORCE" => &mut cfg.kexec_sig_force,
            "CONFIG_RANDOMIZE_BASE" => &mut cfg.randomize_base,
            "CONFIG_DMA_CMA" => &mut cfg.dma_cma,
            _ => continue,
        };
        *slot = Some(value);
    }
    // Options absent from a complete config are off (their dependencies are not met).
    for slot in [
        &mut cfg.kexec,
        &mut cfg.kexec_file,
        &mut cfg.kexec_sig_force,
        &mut cfg.randomize_base,
        &mut cfg.dma_cma,
    ] {
        slot.get_or_insert(false);
    }
}

/// Recognises confidential-computing guests from the first `flags` line of `/proc/cpuinfo`.
///
/// `tdx_guest` is set only inside TDX guests. The `sev*` flags also appear on SEV-capable hosts,
/// so they count only together with `hypervisor` (we run inside a VM).
pub fn confidential_guest(cpuinfo: &str) -> Option<String> {
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "flags").then_some(v)
        })?
        .split_whitespace()
        .collect();
    if flags.contains(&"tdx_guest") {
        return Some("Intel TDX guest (cpuinfo flag tdx_guest)".into());
    }
    if flags.contains(&"hypervisor") {
        if let Some(f) = ["sev_snp", "sev_es", "sev"]
            .iter()
            .find(|f| flags.contains(*f))
        {
            return Some(format!("AMD SEV guest (cpuinfo flags hypervisor + {f})"));
        }
    }
    None
}

/// Parses `Uid:` and `CapEff:` from `/proc/self/status`.
pub fn parse_privilege(text: &str) -> Privilege {
    let mut p = Privilege::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            p.euid = rest.split_whitespace().nth(1).and_then(|v| v.parse().ok());
        } else if let Some(rest) = line.strip_prefix("CapEff:") {
            p.cap_sys_boot = u64::from_str_radix(rest.trim(), 16)
                .ok()
                .map(|caps| caps & (1u64 << CAP_SYS_BOOT) != 0);
        }
    }
    p
}

fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "unknown".to_string(), |v| v.to_string())
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1024 * 1024))
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel:               {}", opt(&self.kernel_release))?;
        writeln!(f, "kexec support:        {}", yes_no(Some(self.kexec_core)))?;
        writeln!(f, "image loaded:         {}", yes_no(self.loaded))?;
        writeln!(f, "crash image loaded:   {}", yes_no(self.crash_loaded))?;
        match self.crash_size {
            Some(0) => writeln!(f, "crashkernel reserved: none")?,
            Some(n) => writeln!(f, "crashkernel reserved: {} ({n} bytes)", mib(n))?,
            None => writeln!(f, "crashkernel reserved: unknown")?,
        }
        for r in &self.crash_kernel {
            writeln!(
                f,
                "  Crash kernel:       {:#x}-{:#x} ({})",
                r.start,
                r.end,
                mib(r.size)
            )?;
        }
        let lockdown = self
            .lockdown
            .as_ref()
            .map_or("none (no lockdown file)", |l| l.current.as_str());
        writeln!(f, "lockdown:             {lockdown}")?;
        writeln!(
            f,
            "kexec_load_disabled:  {}",
            yes_no(self.kexec_load_disabled)
        )?;
        let lim = |v: Option<i64>| match v {
            Some(-1) => "unlimited".to_string(),
            Some(n) => n.to_string(),
            None => "n/a".to_string(),
        };
        writeln!(
            f,
            "load limits:          reboot {}, panic {}",
            lim(self.kexec_load_limit_reboot),
            lim(self.kexec_load_limit_panic)
        )?;
        writeln!(
            f,
            "config:               KEXEC {}, KEXEC_FILE {}, KEXEC_SIG_FORCE {}, RANDOMIZE_BASE {}{}",
            yes_no(self.config.kexec),
            yes_no(self.config.kexec_file),
            yes_no(self.config.kexec_sig_force),
            yes_no(self.config.randomize_base),
            self.config
                .source
                .as_ref()
                .map(|s| format!(" (from {})", s.display()))
                .unwrap_or_default()
        )?;
        if let Some(g) = &self.confidential_guest {
            writeln!(f, "confidential guest:   {g}")?;
        }
        writeln!(f, "EFI boot:             {}", yes_no(Some(self.efi)))?;
        writeln!(
            f,
            "privilege:            euid {}, CAP_SYS_BOOT {}",
            opt(&self.privilege.euid),
            yes_no(self.privilege.cap_sys_boot)
        )?;
        match (&self.staged, self.crash_loaded) {
            (Some(s), Some(true)) => writeln!(
                f,
                "staged kernel:        {} occupies the crashkernel reservation {:#x}-{:#x} \
                 (loaded by fastkexec; kdump is displaced until the next boot)",
                s.kernel.display(),
                s.reservation_start,
                s.reservation_end.saturating_sub(1)
            )?,
            (Some(s), _) => writeln!(
                f,
                "staged kernel:        recorded ({}) but no crash image is loaded now",
                s.kernel.display()
            )?,
            (None, _) => {}
        }
        for (name, a) in [
            ("file (kexec_file_load)", &self.modes.file),
            ("uncompressed (kexec_load)", &self.modes.uncompressed),
            (
                "staged (kexec_load into the crashkernel reservation)",
                &self.modes.staged,
            ),
        ] {
            writeln!(
                f,
                "mode {name}: {}",
                if a.allowed { "allowed" } else { "NOT allowed" }
            )?;
            for b in &a.blockers {
                writeln!(f, "  - blocked: {b}")?;
            }
            for c in &a.caveats {
                writeln!(f, "  - note: {c}")?;
            }
        }
        writeln!(
            f,
            "kernel-native route:  {}: {}",
            match self.kernel_native.file_cma_placement {
                Some(true) => "yes",
                Some(false) => "no",
                None => "unknown",
            },
            self.kernel_native.detail
        )?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// Reads the first line of `/proc/cmdline` under `root` (without the trailing newline).
pub fn read_proc_cmdline(root: &Path) -> Result<String> {
    let path = root.join("proc/cmdline");
    let file = fs::File::open(&path).map_err(|e| crate::Error::io(&path, e))?;
    let mut line = String::new();
    BufReader::new(file)
        .read_line(&mut line)
        .map_err(|e| crate::Error::io(&path, e))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

pub use super::modes::{availability, largest_reservation, modes};

#[cfg(test)]
mod tests;
