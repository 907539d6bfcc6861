//! `fastkexec load`: validate everything, then make exactly one load syscall.
//!
//! Two loader modes:
//! - **file**: `kexec_file_load` of the bzImage. The kernel parses it, builds boot_params, and
//!   its purgatory hashes every segment at reboot; the decompressor runs at boot. Works under
//!   lockdown / Secure Boot when the image is signed.
//! - **uncompressed**: `kexec_load` of the kernel's vmlinux (extracted from the bzImage once and
//!   cached by [`prepare`](crate::image::prepare)), with our own boot_params and purgatory: no
//!   decompression and (unless `--verify`) no hashing at reboot. Needs `kexec_load`: not under
//!   lockdown, and not for SEV/TDX guests; the next kernel runs without kernel-text KASLR.
//!
//! - **staged**: like uncompressed, but every segment is copied straight into the crashkernel
//!   reservation at load time (`kexec_load` with `KEXEC_ON_CRASH`), and the normal image is a
//!   one-page trampoline that enters it: the relocation at exec copies one page. See
//!   [`staged`](crate::staged); kdump is displaced while staged.
//!
//! Nothing is half loaded: every input is read and checked and the whole segment list is built
//! before the single syscall, and the kernel replaces the previously loaded normal image only
//! when that call succeeds — so a failed load leaves the old image loaded (we never unload
//! first).

use std::ffi::CString;
use std::fmt;
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::files::input::{self, Input};
use crate::files::lock::KexecLock;
use crate::host::status::{self, Status};
use crate::kexec::{self, Call, SegmentSpec};
use crate::{
    host::hostinfo, image::bzimage, image::prepare, image::vmlinux, plan::segments, staged,
};
use crate::{Error, Result};

/// The kernel's `COMMAND_LINE_SIZE` on x86 is 2048 including the NUL; a vmlinux carries no
/// setup header to tell its own limit, so this is the limit used for it.
pub const X86_COMMAND_LINE_MAX: usize = 2047;

/// What `kexec_file_load` reserves in the command line for `elfcorehdr=0x<addr> `
/// (`MAX_ELFCOREHDR_STR_LEN` in arch/x86/kernel/kexec-bzimage64.c), even for normal images.
pub const FILE_MODE_CMDLINE_RESERVE: usize = 30;

/// Parameters of the running kernel's command line that make no sense for the next kernel:
/// `BOOT_IMAGE` names the file the boot loader loaded (kexec-tools drops it too) and `initrd`
/// is a boot-loader/EFI-stub path — the initrd is passed with `--initrd` instead.
/// `fastkexec.boot_id` is the tracer's tie between a trace record and the boot that wrote it
/// (see `handoff`): the next `trace` sets a fresh one.
pub const REUSE_CMDLINE_DROPPED: [&str; 3] = ["BOOT_IMAGE", "initrd", "fastkexec.boot_id"];

/// Where the next kernel's command line comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineSource {
    /// Exactly this string (`--append`/`--command-line`; empty when not given).
    Append(String),
    /// The running kernel's `/proc/cmdline` without [`REUSE_CMDLINE_DROPPED`], then `append`.
    ReuseCmdline { append: Option<String> },
}

/// The loader mode asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Staged when the crashkernel reservation is idle and large enough, else uncompressed
    /// when this kernel allows `kexec_load`, else file.
    Auto,
    File,
    Uncompressed,
    /// Uncompressed, staged in the crashkernel reservation (displaces a loaded kdump kernel).
    Staged,
}

/// The loader mode actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadMode {
    File,
    Uncompressed,
    Staged,
}

impl fmt::Display for LoadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoadMode::File => "file",
            LoadMode::Uncompressed => "uncompressed",
            LoadMode::Staged => "staged",
        })
    }
}

/// Everything `load` needs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// bzImage, or (uncompressed mode only) a vmlinux ELF.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: CmdlineSource,
    pub mode: Mode,
    /// Build and print the plan; make no syscall and write nothing (not even the cache).
    pub dry_run: bool,
    /// Uncompressed mode: have our purgatory verify the segments before jumping.
    pub verify: bool,
    /// Test only (the lab's `fastkexec-verify-mismatch`): with `verify`, record a wrong
    /// checksum for the first segment, so the purgatory must stop with its message at exec.
    pub verify_wrong_sum_for_test: bool,
    /// Where extracted vmlinux files are cached ([`prepare::DEFAULT_CACHE_DIR`]).
    pub cache_dir: PathBuf,
    /// Root of the system to inspect (`/`; fixture trees in tests).
    pub root: PathBuf,
}

/// What `load` did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub mode: LoadMode,
    /// Why this mode (auto decisions name the blocker of the other one).
    pub mode_reason: String,
    pub kernel: PathBuf,
    /// `bzImage` or `vmlinux ELF`.
    pub kernel_format: &'static str,
    /// Uncompressed mode: where the vmlinux came from (the cache, or the kernel path itself).
    pub vmlinux: Option<PathBuf>,
    pub compression: Option<String>,
    /// Uncompressed mode from a bzImage: whether the extracted vmlinux was already cached.
    pub cache_hit: Option<bool>,
    pub initrd: Option<PathBuf>,
    pub initrd_size: Option<u64>,
    pub cmdline: String,
    /// Parameters removed from `/proc/cmdline` by `--reuse-cmdline`.
    pub cmdline_dropped: Vec<String>,
    /// The syscall made (or that would be made), with its arguments.
    pub syscall: String,
    /// Uncompressed mode: the segment plan (what `--dry-run` shows).
    pub plan: Option<String>,
    /// Staged mode: where things went in the crashkernel reservation.
    pub staged: Option<staged::StagedSummary>,
    pub dry_run: bool,
    pub loaded: bool,
    pub notes: Vec<String>,
    /// Wall time of each phase of the load.
    pub timings: Vec<Timing>,
}

/// Wall time of one phase of `load`, in ns like every duration in fastkexec's JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub phase: &'static str,
    pub ns: u64,
}

impl LoadReport {
    /// Records how long a step took since `since`.
    fn lap(&mut self, phase: &'static str, since: Instant) {
        self.timings.push(Timing {
            phase,
            ns: ns(since.elapsed()),
        });
    }
}

/// Builds the next kernel's command line. Returns it and the parameters dropped from
/// `/proc/cmdline`.
pub fn build_cmdline(source: &CmdlineSource, root: &Path) -> Result<(String, Vec<String>)> {
    let (line, dropped) = match source {
        CmdlineSource::Append(s) => (s.trim().to_string(), Vec::new()),
        CmdlineSource::ReuseCmdline { append } => {
            let current = status::read_proc_cmdline(root)?;
            let (mut kept, dropped): (Vec<&str>, Vec<&str>) = split_params(&current)
                .into_iter()
                .partition(|p| !REUSE_CMDLINE_DROPPED.contains(&param_key(p)));
            if let Some(extra) = append.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                kept.push(extra);
            }
            (
                kept.join(" "),
                dropped.into_iter().map(str::to_string).collect(),
            )
        }
    };
    if let Some(c) = line
        .chars()
        .find(|c| *c == '\0' || *c == '\n' || *c == '\r')
    {
        let from = match source {
            CmdlineSource::ReuseCmdline { .. } => format!(
                "drop --reuse-cmdline or fix {}",
                root.join("proc/cmdline").display()
            ),
            CmdlineSource::Append(_) => "remove it from --append".to_string(),
        };
        return Err(Error::InvalidCmdline(format!(
            "it contains the control character {c:?}, which ends or breaks a kernel command \
             line; {from}"
        )));
    }
    Ok((line, dropped))
}

/// Splits a command line into parameters the way the kernel does: on whitespace, except inside
/// double quotes (`dyndbg="file x.c +p"` is one parameter).
pub fn split_params(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        if c == '"' {
            quoted = !quoted;
        }
        let sep = c.is_whitespace() && !quoted;
        match (start, sep) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                out.push(&line[s..i]);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(&line[s..]);
    }
    out
}

/// The key of `key=value` (or the whole flag parameter).
fn param_key(param: &str) -> &str {
    param.split_once('=').map_or(param, |(k, _)| k)
}

/// Picks the loader mode. `is_bzimage`: the kernel file is a bzImage (file mode cannot load a
/// vmlinux ELF). With `dry_run`, a mode this kernel does not allow is still planned, and the
/// reason it would fail goes into the returned notes.
pub fn choose_mode(
    requested: Mode,
    status: &Status,
    is_bzimage: bool,
    dry_run: bool,
) -> Result<(LoadMode, String, Vec<String>)> {
    let file = &status.modes.file;
    let unc = &status.modes.uncompressed;
    let join = |v: &[String]| v.join("; ");
    let mut notes = Vec::new();
    let mut unavailable = |mode: &'static str, reason: String| -> Result<()> {
        if dry_run {
            notes.push(format!("on this machine {mode} mode would fail: {reason}"));
            Ok(())
        } else {
            Err(Error::ModeUnavailable { mode, reason })
        }
    };
    let chosen = match requested {
        Mode::File => {
            if !is_bzimage {
                return Err(Error::ModeUnavailable {
                    mode: "file",
                    reason: "kexec_file_load on x86 loads only bzImages, and this kernel file is \
                             a vmlinux ELF; use --mode uncompressed or pass the bzImage"
                        .into(),
                });
            }
            if !file.allowed {
                unavailable("file", join(&file.blockers))?;
            }
            (LoadMode::File, "--mode file".to_string())
        }
        Mode::Uncompressed => {
            if !unc.allowed {
                unavailable("uncompressed", join(&unc.blockers))?;
            }
            (LoadMode::Uncompressed, "--mode uncompressed".to_string())
        }
        Mode::Staged => {
            let st = &status.modes.staged;
            if !st.allowed {
                unavailable("staged", join(&st.blockers))?;
            }
            (LoadMode::Staged, "--mode staged".to_string())
        }
        Mode::Auto if unc.allowed => (
            LoadMode::Uncompressed,
            "auto: this kernel allows kexec_load, so the uncompressed kernel is loaded (no \
             decompression or hashing at reboot)"
                .to_string(),
        ),
        Mode::Auto if !is_bzimage => {
            // A vmlinux can only go through kexec_load.
            unavailable(
                "uncompressed",
                format!(
                    "{} (and file mode cannot load a vmlinux ELF)",
                    join(&unc.blockers)
                ),
            )?;
            (
                LoadMode::Uncompressed,
                "auto: the kernel file is a vmlinux ELF".to_string(),
            )
        }
        Mode::Auto if file.allowed => (
            LoadMode::File,
            format!(
                "auto: uncompressed mode is not possible ({}), so kexec_file_load is used",
                join(&unc.blockers)
            ),
        ),
        Mode::Auto => {
            let reason = format!(
                "file mode: {}; uncompressed mode: {}",
                join(&file.blockers),
                join(&unc.blockers)
            );
            if !dry_run {
                return Err(Error::ModeUnavailable {
                    mode: "any",
                    reason,
                });
            }
            notes.push(format!("on this machine no mode would work: {reason}"));
            (
                LoadMode::Uncompressed,
                "auto (dry run on a machine without usable kexec): planning uncompressed mode"
                    .to_string(),
            )
        }
    };
    Ok((chosen.0, chosen.1, notes))
}

/// Checks the command line against the limit of the mode and image.
pub fn check_cmdline_len(
    cmdline: &str,
    mode: LoadMode,
    header_cmdline_size: Option<u32>,
) -> Result<()> {
    let len = cmdline.len();
    let (max, limit_from) = match (mode, header_cmdline_size) {
        (LoadMode::File, Some(size)) => {
            // The kernel checks `len incl. NUL + 30 <= cmdline_size`.
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            (
                size.saturating_sub(FILE_MODE_CMDLINE_RESERVE + 1),
                format!(
                    "kexec_file_load with this bzImage (cmdline_size {size} minus \
                     {FILE_MODE_CMDLINE_RESERVE} reserved for elfcorehdr= and the NUL)"
                ),
            )
        }
        (LoadMode::Uncompressed | LoadMode::Staged, Some(size)) => (
            usize::try_from(size).unwrap_or(usize::MAX),
            "the bzImage's setup header (cmdline_size)".to_string(),
        ),
        (_, None) => (
            X86_COMMAND_LINE_MAX,
            "x86 COMMAND_LINE_SIZE (a vmlinux has no setup header)".to_string(),
        ),
    };
    if len > max {
        return Err(Error::CmdlineTooLong {
            len,
            max,
            limit_from,
        });
    }
    Ok(())
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Opens the initrd: a non-empty regular file no larger than half of the machine's RAM
/// (`input::initrd_limit`).
fn open_initrd(path: &Path, root: &Path) -> Result<(Input, u64, String)> {
    let (max, why) = input::initrd_limit(root);
    let f = input::open(path, "the initrd", max, &why)?;
    if f.len == 0 {
        return Err(Error::Input {
            path: path.to_path_buf(),
            problem:
                "the initrd is empty; pass the initramfs image (e.g. /boot/initrd.img-VERSION)"
                    .into(),
        });
    }
    Ok((f, max, why))
}

/// Loads the next kernel (or, with `dry_run`, plans it). See the module docs.
pub fn load(opts: &LoadOptions) -> Result<LoadReport> {
    load_with(opts, &LoadExtras::default())
}

/// What the tracer adds to a load (see `trace`): physical ranges no segment may touch, the
/// setup_data chain and TSC record targets for the purgatory and the staged trampoline, and
/// words for the command line. Only the uncompressed and staged modes can carry the chain and
/// the TSC targets; file mode says so in the report's notes.
#[derive(Debug, Clone, Default)]
pub struct LoadExtras {
    /// `(start, size)` physical ranges to keep clear.
    pub reserved: Vec<(u64, u64)>,
    pub plan: segments::PlanExtras,
    /// Appended to the command line (after `--append`).
    pub cmdline_append: Option<String>,
    /// Where the staged trampoline copies its 32-byte TSC record (staged mode only; 0 =
    /// nowhere). Like `plan.tsc_out`, it must lie in `reserved`.
    pub trampoline_tsc_out: u64,
    /// Shift of the kernel's physical placement (a multiple of 2 MiB), e.g. to
    /// step over reserved pages that lie in its way.
    pub phys_delta: i64,
}

/// [`load`] with the tracer's [`LoadExtras`]. A real load holds the kexec lock
/// ([`KexecLock`]) from before it looks at what is loaded until the record is written; a dry
/// run changes nothing and takes none.
pub fn load_with(opts: &LoadOptions, extras: &LoadExtras) -> Result<LoadReport> {
    if opts.dry_run {
        return load_inner(opts, extras);
    }
    let lock = KexecLock::acquire(&opts.root, "load")?;
    load_locked(opts, extras, &lock)
}

/// [`load_with`] for a caller that already holds the kexec lock (`trace`).
pub fn load_locked(
    opts: &LoadOptions,
    extras: &LoadExtras,
    _lock: &KexecLock,
) -> Result<LoadReport> {
    load_inner(opts, extras)
}

/// Whether this process may not even look at `path` (a dry run as a user, with root's 0700
/// /run/fastkexec).
fn permission_denied(path: &Path) -> bool {
    matches!(fs::File::open(path), Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied)
}

fn load_inner(opts: &LoadOptions, extras: &LoadExtras) -> Result<LoadReport> {
    let t0 = Instant::now();
    let mut timings = Vec::new();
    let status = status::status(&opts.root)?;
    // What an earlier staged load left: this load replaces or reconciles it, so it must be
    // readable (an unusable record stops the load, naming the file).
    let staged_path = opts.root.join(staged::STATE_FILE);
    let mut early_notes = Vec::new();
    let staged_before = if opts.dry_run && permission_denied(&staged_path) {
        early_notes.push(format!(
            "dry run: {} is not readable by this user; a real load (as root) checks it",
            staged_path.display()
        ));
        None
    } else {
        staged::read_state(&opts.root)?
    };

    // One descriptor for the kernel: the header parsed here, the payload extracted and (file
    // mode) what the kernel reads all come from the same file.
    let kernel_in = input::open(
        &opts.kernel,
        "the kernel image",
        input::MAX_KERNEL_SIZE,
        input::MAX_KERNEL_WHY,
    )?;
    let kernel_bytes = kernel_in.read_all(
        &opts.kernel,
        "the kernel image",
        input::MAX_KERNEL_SIZE,
        input::MAX_KERNEL_WHY,
    )?;
    let is_bz = bzimage::is_bzimage(&kernel_bytes);
    if !is_bz && !vmlinux::is_elf(&kernel_bytes) {
        return Err(Error::UnsupportedImage {
            path: opts.kernel.clone(),
            problem: "neither a bzImage (no \"HdrS\" setup header) nor a vmlinux ELF".into(),
        });
    }
    let header = if is_bz {
        Some(bzimage::parse_setup_header(&opts.kernel, &kernel_bytes)?)
    } else {
        None
    };

    let (mut cmdline, cmdline_dropped) = build_cmdline(&opts.cmdline, &opts.root)?;
    if let Some(extra) = extras.cmdline_append.as_deref().filter(|s| !s.is_empty()) {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(extra);
    }
    let (mode, mode_reason, mut notes) = choose_mode(opts.mode, &status, is_bz, opts.dry_run)?;
    notes.extend(early_notes);
    let caveats = match mode {
        LoadMode::File => &status.modes.file.caveats,
        LoadMode::Uncompressed => &status.modes.uncompressed.caveats,
        LoadMode::Staged => &status.modes.staged.caveats,
    };
    notes.extend(caveats.iter().cloned());
    check_cmdline_len(&cmdline, mode, header.as_ref().map(|h| h.cmdline_size))?;
    if !opts.dry_run && !status.privilege.can_kexec() {
        return Err(Error::NotPrivileged {
            action: "loading a kernel",
            detail: format!(
                "this process has euid {} and {}",
                status
                    .privilege
                    .euid
                    .map_or_else(|| "unknown".into(), |u| u.to_string()),
                match status.privilege.cap_sys_boot {
                    Some(false) => "no CAP_SYS_BOOT",
                    _ => "unknown capabilities",
                }
            ),
        });
    }
    if opts.verify && mode == LoadMode::File {
        notes.push(
            "--verify has no effect in file mode: the kernel's purgatory always hashes the \
             segments"
                .into(),
        );
    }
    timings.push(Timing {
        phase: "inspect",
        ns: ns(t0.elapsed()),
    });

    let mut report = LoadReport {
        mode,
        mode_reason,
        kernel: opts.kernel.clone(),
        kernel_format: if is_bz { "bzImage" } else { "vmlinux ELF" },
        vmlinux: None,
        compression: None,
        cache_hit: None,
        initrd: opts.initrd.clone(),
        initrd_size: None,
        cmdline,
        cmdline_dropped,
        syscall: String::new(),
        plan: None,
        staged: None,
        dry_run: opts.dry_run,
        loaded: false,
        notes,
        timings,
    };
    let staging = match mode {
        LoadMode::Staged => Staging::Asked,
        LoadMode::Uncompressed if opts.mode == Mode::Auto => {
            match staged::auto_eligible(&status, &opts.root) {
                Some(why) => Staging::Auto(why),
                None => Staging::No,
            }
        }
        _ => Staging::No,
    };
    let carries_record = extras.plan != segments::PlanExtras::default();
    if carries_record && mode == LoadMode::File {
        report.notes.push(format!(
            "{mode} mode cannot carry the trace record (only the uncompressed and staged modes \
             build boot_params and the purgatory themselves): the next kernel's report will show \
             only its own phases"
        ));
    }
    match mode {
        LoadMode::File => load_file(opts, &kernel_in.file, &status, &mut report)?,
        LoadMode::Uncompressed | LoadMode::Staged => load_uncompressed(
            opts,
            &status,
            &kernel_bytes,
            header.as_ref(),
            staging,
            extras,
            staged_before.is_some(),
            &mut report,
        )?,
    }
    if report.loaded && report.mode != LoadMode::Staged && staged_before.is_some() {
        // The new image replaced the staged trampoline: the staged crash image is left
        // without a way in and keeps kdump out (issue 13, defect 5).
        match staged::reconcile_after_load(&opts.root, &status) {
            Ok(Some(msg)) => report.notes.push(msg),
            Ok(None) => {}
            Err(e) => report.notes.push(format!(
                "the kernel is loaded, but the earlier staged load could not be cleared up \
                 ({e}); run `fastkexec unload` and load again"
            )),
        }
    } else if report.mode != LoadMode::Staged && staged_before.is_some() {
        report.notes.push(format!(
            "a kernel is staged in the crashkernel reservation ({}): a real load of this mode \
             unloads it and removes its record",
            staged_path.display()
        ));
    }
    report.lap("total", t0);
    Ok(report)
}

fn load_file(
    opts: &LoadOptions,
    kernel: &File,
    status: &Status,
    report: &mut LoadReport,
) -> Result<()> {
    let initrd = match &opts.initrd {
        Some(p) => {
            let (f, _, _) = open_initrd(p, &opts.root)?;
            report.initrd_size = Some(f.len);
            Some(f.file)
        }
        None => None,
    };
    let cmdline = CString::new(report.cmdline.as_bytes())
        .map_err(|_| Error::InvalidCmdline("it contains a NUL byte".into()))?;
    let flags = if initrd.is_some() {
        0
    } else {
        kexec::KEXEC_FILE_NO_INITRAMFS
    };
    report.syscall = format!(
        "kexec_file_load(kernel={}, initrd={}, cmdline_len={}, flags={flags:#x})",
        opts.kernel.display(),
        opts.initrd
            .as_ref()
            .map_or_else(|| "-1".to_string(), |p| p.display().to_string()),
        cmdline.as_bytes_with_nul().len()
    );
    if opts.dry_run {
        return Ok(());
    }
    let t = Instant::now();
    kexec::kexec_file_load(
        kernel.as_fd(),
        initrd.as_ref().map(|f| f.as_fd()),
        &cmdline,
        flags,
    )
    .map_err(|e| kexec::explain(Call::KexecFileLoad, e, status))?;
    report.loaded = true;
    report.lap("kexec_file_load", t);
    Ok(())
}

/// Whether an uncompressed load goes into the crashkernel reservation.
enum Staging {
    No,
    /// `--mode staged`.
    Asked,
    /// `auto` found the reservation idle (the reason); staged if it is large enough.
    Auto(String),
}

// Each argument is a distinct input of one step; bundling them would only rename them.
#[allow(clippy::too_many_arguments)]
fn load_uncompressed(
    opts: &LoadOptions,
    status: &Status,
    kernel_bytes: &[u8],
    header: Option<&bzimage::SetupHeader>,
    staging: Staging,
    extras: &LoadExtras,
    staged_before: bool,
    report: &mut LoadReport,
) -> Result<()> {
    let t = Instant::now();
    let (vmlinux_path, vmlinux_bytes) = if header.is_some() {
        if opts.dry_run {
            // A dry run writes nothing, so the cache is neither filled nor trusted blindly:
            // extract in memory (what `prepare` would cache).
            let extracted = bzimage::extract_vmlinux(&opts.kernel, kernel_bytes)?;
            report.compression = Some(extracted.compression.to_string());
            report.notes.push(
                "dry run: the vmlinux was extracted in memory; a real load caches it (see \
                 `fastkexec prepare`)"
                    .into(),
            );
            (opts.kernel.clone(), extracted.vmlinux)
        } else {
            // The bytes already read (not the path again), and the vmlinux `prepare` verified
            // (not a second read of the cache file).
            let prepared = prepare::prepare_image(&opts.kernel, kernel_bytes, &opts.cache_dir)?;
            report.compression = Some(prepared.compression.to_string());
            report.cache_hit = Some(prepared.cached);
            (prepared.vmlinux, prepared.vmlinux_bytes)
        }
    } else {
        (opts.kernel.clone(), kernel_bytes.to_vec())
    };
    if !(opts.dry_run && header.is_some()) {
        report.vmlinux = Some(vmlinux_path.clone());
    }
    vmlinux::parse_vmlinux(&vmlinux_path, &vmlinux_bytes)?;
    report.lap("prepare", t);

    let t = Instant::now();
    let initrd = match &opts.initrd {
        Some(p) => {
            let (f, max, why) = open_initrd(p, &opts.root)?;
            report.initrd_size = Some(f.len);
            Some((p.as_path(), f.read_all(p, "the initrd", max, &why)?))
        }
        None => None,
    };
    let host = hostinfo::read(&opts.root)?;
    let input = segments::UncompressedInput {
        vmlinux_path: &vmlinux_path,
        vmlinux: &vmlinux_bytes,
        setup_header: header,
        initrd: initrd.as_ref().map(|(p, b)| (*p, b.as_slice())),
        cmdline: &report.cmdline,
        host: &host,
        reserved: extras.reserved.clone(),
        verify: opts.verify,
        phys_delta: extras.phys_delta,
    };
    match staging {
        Staging::No => {}
        Staging::Asked => {
            let plan = plan_staged(status, &input, extras)?;
            return load_staged(opts, status, &plan, staged_before, report);
        }
        Staging::Auto(why) => match plan_staged(status, &input, extras) {
            Ok(plan) if plan.free_after >= staged::MIN_PANIC_FREE => {
                report.mode = LoadMode::Staged;
                report.mode_reason = format!(
                    "auto: {why} and large enough, so the kernel is staged in it (the relocation \
                     at exec copies one page)"
                );
                return load_staged(opts, status, &plan, staged_before, report);
            }
            Ok(plan) => report.notes.push(format!(
                "auto: not staged: only {} MiB of the crashkernel reservation would stay free \
                 (at least {} MiB keep a panic-path boot possible)",
                plan.free_after >> 20,
                staged::MIN_PANIC_FREE >> 20
            )),
            Err(e) => report.notes.push(format!("auto: not staged: {e}")),
        },
    }
    let mut plan = segments::plan_uncompressed_with(&input, &extras.plan)?;
    if opts.verify_wrong_sum_for_test {
        if !opts.verify {
            return Err(Error::Plan {
                problem: "--test-wrong-verify-sum needs --verify".into(),
            });
        }
        let seg = segments::spoil_first_verify_sum(&mut plan)?;
        report.notes.push(format!(
            "test: the purgatory holds a wrong checksum for the segment at {seg:#x}; exec must \
             stop in the purgatory with a checksum mismatch"
        ));
    }
    let specs: Vec<SegmentSpec<'_>> = plan
        .segments
        .iter()
        .map(|s| SegmentSpec {
            data: &s.data,
            mem: s.mem,
            memsz: s.memsz,
        })
        .collect();
    kexec::validate_segments(plan.entry, &specs)?;
    report.plan = Some(plan.to_string());
    report.syscall = format!(
        "kexec_load(entry={:#x}, nr_segments={}, flags={:#x})",
        plan.entry,
        specs.len(),
        kexec::KEXEC_ARCH_X86_64
    );
    report.lap("plan", t);
    if opts.dry_run {
        return Ok(());
    }
    let t = Instant::now();
    kexec::kexec_load(plan.entry, &specs, 0)
        .map_err(|e| kexec::explain(Call::KexecLoad, e, status))?;
    report.loaded = true;
    report.lap("kexec_load", t);
    Ok(())
}

/// The normal path carries `extras` (the tracer's chain and the purgatory's TSC target) like an
/// uncompressed load, and the trampoline copies its stamps next to the purgatory's; the panic
/// path carries nothing of it.
fn plan_staged(
    status: &Status,
    input: &segments::UncompressedInput,
    extras: &LoadExtras,
) -> Result<staged::StagedPlan> {
    let opts = staged::StagedOptions {
        reservation: staged::pick_reservation(status)?,
        nonce: staged::new_nonce()?,
        trampoline_tsc_out: extras.trampoline_tsc_out,
    };
    staged::plan_staged(input, &extras.plan, &opts)
}

/// Loads a staged plan: the crash image first (copied into the reservation now), then the
/// trampoline as the normal image; if the second load fails, the first is undone.
fn load_staged(
    opts: &LoadOptions,
    status: &Status,
    plan: &staged::StagedPlan,
    ours_before: bool,
    report: &mut LoadReport,
) -> Result<()> {
    let t = Instant::now();
    let displaced = status.crash_loaded == Some(true) && !ours_before;
    report.notes.extend(plan.notes.iter().cloned());
    if displaced {
        report.notes.push(
            "a crash (kdump) kernel was loaded: staging replaces it, so there is no kdump until \
             the next boot (or until `fastkexec unload` and the kdump service loads it again)"
                .into(),
        );
    }
    report.notes.push(
        "kdump is displaced while this kernel is staged: a panic before exec boots the staged \
         kernel with only the crashkernel reservation as RAM (kdump-safe), and no dump is taken"
            .into(),
    );
    let crash = plan.crash_specs();
    let normal = plan.normal_specs();
    kexec::validate_segments(plan.crash_entry, &crash)?;
    kexec::validate_segments(plan.trampoline_entry(), &normal)?;
    report.plan = Some(plan.to_string());
    report.staged = Some(plan.summary(displaced));
    report.syscall = format!(
        "kexec_load(entry={:#x}, nr_segments={}, flags={:#x}) then kexec_load(entry={:#x}, \
         nr_segments=1, flags={:#x})",
        plan.crash_entry,
        crash.len(),
        kexec::KEXEC_ON_CRASH | kexec::KEXEC_ARCH_X86_64,
        plan.trampoline_entry(),
        kexec::KEXEC_ARCH_X86_64
    );
    report.lap("plan", t);
    if opts.dry_run {
        return Ok(());
    }
    let t = Instant::now();
    kexec::kexec_load(plan.crash_entry, &crash, kexec::KEXEC_ON_CRASH)
        .map_err(|e| kexec::explain(Call::KexecLoad, e, status))?;
    report.lap("kexec_load (crash image, into the reservation)", t);
    let t = Instant::now();
    if let Err(e) = kexec::kexec_load(plan.trampoline_entry(), &normal, 0) {
        let err = kexec::explain(Call::KexecLoad, e, status);
        let undo = staged::unload_crash(status);
        let _ = staged::remove_state(&opts.root);
        // After an earlier staged load the normal image is its trampoline, whose staged kernel
        // was just overwritten: left loaded it would reset the machine at exec.
        let stale = ours_before.then(kexec::unload);
        return Err(match (undo, stale) {
            (Ok(()), None) => err,
            (Ok(()), Some(Ok(()))) => Error::Plan {
                problem: format!(
                    "loading the trampoline failed ({err}); the staged crash image and the \
                     previous staged load's trampoline were unloaded: nothing is loaded now"
                ),
            },
            (undo, stale) => Error::Plan {
                problem: format!(
                    "loading the trampoline failed ({err}); undoing it failed too (crash image: \
                     {undo:?}, previous trampoline: {stale:?}): run `fastkexec unload`"
                ),
            },
        });
    }
    report.lap("kexec_load (trampoline)", t);
    report.loaded = true;
    let state = staged::StagedState::new(
        plan,
        &opts.kernel,
        opts.initrd.as_deref(),
        &report.cmdline,
        staged::boot_id(&opts.root),
    );
    if let Err(e) = staged::write_state(&opts.root, &state) {
        report.notes.push(format!(
            "could not record the staged load ({e}): `fastkexec exec` cannot check it beforehand \
             (the trampoline still checks it and resets the machine rather than boot a replaced \
             kernel)"
        ));
    }
    Ok(())
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "dry run, nothing loaded"
        } else if self.loaded {
            "loaded"
        } else {
            "not loaded"
        };
        writeln!(f, "mode:     {} ({verb})", self.mode)?;
        writeln!(f, "why:      {}", self.mode_reason)?;
        writeln!(
            f,
            "kernel:   {} ({})",
            self.kernel.display(),
            self.kernel_format
        )?;
        if self.vmlinux.is_some() || self.compression.is_some() {
            let mut extra = Vec::new();
            if let Some(c) = &self.compression {
                extra.push(format!("payload {c}"));
            }
            match self.cache_hit {
                Some(true) => extra.push("cache hit".into()),
                Some(false) => extra.push("extracted now".into()),
                None => {}
            }
            let extra = if extra.is_empty() {
                String::new()
            } else {
                format!(" ({})", extra.join(", "))
            };
            let place = self.vmlinux.as_ref().map_or_else(
                || "extracted in memory".to_string(),
                |v| v.display().to_string(),
            );
            writeln!(f, "vmlinux:  {place}{extra}")?;
        }
        match (&self.initrd, self.initrd_size) {
            (Some(p), Some(n)) => writeln!(f, "initrd:   {} ({n} bytes)", p.display())?,
            (Some(p), None) => writeln!(f, "initrd:   {}", p.display())?,
            _ => writeln!(f, "initrd:   none")?,
        }
        writeln!(f, "cmdline:  {:?}", self.cmdline)?;
        if !self.cmdline_dropped.is_empty() {
            writeln!(
                f,
                "          (dropped from /proc/cmdline: {})",
                self.cmdline_dropped.join(" ")
            )?;
        }
        writeln!(f, "syscall:  {}", self.syscall)?;
        if let Some(plan) = &self.plan {
            writeln!(f, "plan:")?;
            for line in plan.lines() {
                writeln!(f, "  {line}")?;
            }
        }
        for n in &self.notes {
            writeln!(f, "note:     {n}")?;
        }
        let t: Vec<String> = self
            .timings
            .iter()
            .map(|t| format!("{} {:.1} ms", t.phase, t.ns as f64 / 1e6))
            .collect();
        writeln!(f, "time:     {}", t.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::status::{Availability, Modes};
    use std::fs;

    fn status_fixture(case: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/status")
            .join(case)
    }

    #[test]
    fn reuse_cmdline_drops_boot_loader_params_and_appends() {
        let root = status_fixture("plain");
        let (line, dropped) =
            build_cmdline(&CmdlineSource::ReuseCmdline { append: None }, &root).unwrap();
        assert_eq!(
            line,
            "root=UUID=0b6c1e0e-5bd3-4f3a-9d1c-6d6f3a0f9c11 ro console=ttyS0 quiet"
        );
        assert_eq!(dropped, ["BOOT_IMAGE=/boot/vmlinuz-6.1.0-28-cloud-amd64"]);

        let (line, _) = build_cmdline(
            &CmdlineSource::ReuseCmdline {
                append: Some(" initcall_debug ".into()),
            },
            &root,
        )
        .unwrap();
        assert!(line.ends_with("quiet initcall_debug"), "{line}");

        // initrd= from an EFI boot loader goes too; double spaces collapse.
        let (line, dropped) = build_cmdline(
            &CmdlineSource::ReuseCmdline { append: None },
            &status_fixture("unprivileged"),
        )
        .unwrap();
        assert_eq!(line, "root=/dev/sda2 quiet");
        assert_eq!(dropped.len(), 2);
    }

    #[test]
    fn crashkernel_is_kept_for_the_next_kernel() {
        let (line, _) = build_cmdline(
            &CmdlineSource::ReuseCmdline { append: None },
            &status_fixture("crashkernel"),
        )
        .unwrap();
        assert!(line.contains("crashkernel=256M"), "{line}");
    }

    #[test]
    fn append_is_taken_verbatim_and_checked() {
        let root = status_fixture("plain");
        let (line, dropped) =
            build_cmdline(&CmdlineSource::Append("  console=ttyS0 ".into()), &root).unwrap();
        assert_eq!(line, "console=ttyS0");
        assert!(dropped.is_empty());
        let e = build_cmdline(&CmdlineSource::Append("a\nb".into()), &root).unwrap_err();
        assert!(matches!(e, Error::InvalidCmdline(_)), "{e}");
        let e = build_cmdline(
            &CmdlineSource::ReuseCmdline { append: None },
            &status_fixture("does-not-exist"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("proc/cmdline"), "{e}");
    }

    #[test]
    fn params_split_like_the_kernel() {
        assert_eq!(
            split_params(r#"  a=1 dyndbg="file x.c +p"  b "#),
            ["a=1", r#"dyndbg="file x.c +p""#, "b"]
        );
        assert!(split_params("").is_empty());
        assert_eq!(param_key("BOOT_IMAGE=/x"), "BOOT_IMAGE");
        assert_eq!(param_key("quiet"), "quiet");
    }

    fn st(file_blockers: &[&str], unc_blockers: &[&str]) -> Status {
        let av = |b: &[&str]| Availability {
            allowed: b.is_empty(),
            blockers: b.iter().map(|s| s.to_string()).collect(),
            caveats: vec![],
        };
        Status {
            modes: Modes {
                file: av(file_blockers),
                uncompressed: av(unc_blockers),
                staged: av(&["no crashkernel reservation"]),
            },
            ..Status::default()
        }
    }

    #[test]
    fn auto_prefers_uncompressed_and_names_the_blocker_otherwise() {
        let (m, why, _) = choose_mode(Mode::Auto, &st(&[], &[]), true, false).unwrap();
        assert_eq!(m, LoadMode::Uncompressed);
        assert!(why.contains("allows kexec_load"), "{why}");

        let locked = st(&[], &["lockdown is 'integrity'"]);
        let (m, why, _) = choose_mode(Mode::Auto, &locked, true, false).unwrap();
        assert_eq!(m, LoadMode::File);
        assert!(why.contains("lockdown is 'integrity'"), "{why}");

        // A vmlinux under lockdown has no way in.
        let e = choose_mode(Mode::Auto, &locked, false, false).unwrap_err();
        assert!(e.to_string().contains("cannot load a vmlinux"), "{e}");

        let disabled = st(&["kexec_load_disabled=1"], &["kexec_load_disabled=1"]);
        let e = choose_mode(Mode::Auto, &disabled, true, false).unwrap_err();
        assert!(e.to_string().contains("kexec_load_disabled"), "{e}");
    }

    #[test]
    fn explicit_modes_are_checked() {
        let locked = st(&[], &["lockdown is 'integrity'"]);
        let e = choose_mode(Mode::Uncompressed, &locked, true, false).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("uncompressed mode is not possible"),
            "{e}"
        );
        let e = choose_mode(Mode::File, &st(&[], &[]), false, false).unwrap_err();
        assert!(e.to_string().contains("only bzImages"), "{e}");
        let (m, _, _) = choose_mode(Mode::File, &locked, true, false).unwrap();
        assert_eq!(m, LoadMode::File);
    }

    #[test]
    fn dry_run_plans_anyway_and_says_why_it_would_fail() {
        let none = st(&["no kexec support"], &["no kexec support"]);
        let (m, _, notes) = choose_mode(Mode::Auto, &none, true, true).unwrap();
        assert_eq!(m, LoadMode::Uncompressed);
        assert!(notes[0].contains("no kexec support"), "{notes:?}");
        let (m, _, notes) = choose_mode(Mode::File, &none, true, true).unwrap();
        assert_eq!(m, LoadMode::File);
        assert!(notes[0].contains("file mode would fail"), "{notes:?}");
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    fn copy_tree(from: &Path, to: &Path) {
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let dest = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                fs::create_dir_all(&dest).unwrap();
                copy_tree(&entry.path(), &dest);
            } else {
                fs::copy(entry.path(), dest).unwrap();
            }
        }
    }

    /// A machine tree: the kexec/proc side of a status fixture plus a QEMU guest's firmware
    /// memory map and zero page.
    fn machine(status_case: &str) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        copy_tree(&fixtures().join("status").join(status_case), t.path());
        copy_tree(&fixtures().join("host/qemu-seabios"), t.path());
        t
    }

    fn opts(root: &Path, kernel: &str, mode: Mode, cache: &Path) -> LoadOptions {
        LoadOptions {
            kernel: fixtures().join(kernel),
            initrd: None,
            cmdline: CmdlineSource::ReuseCmdline {
                append: Some("initcall_debug".into()),
            },
            mode,
            dry_run: true,
            verify: false,
            verify_wrong_sum_for_test: false,
            cache_dir: cache.to_path_buf(),
            root: root.to_path_buf(),
        }
    }

    fn files_under(dir: &Path) -> usize {
        fs::read_dir(dir).map_or(0, |d| d.count())
    }

    #[test]
    fn dry_run_uncompressed_from_bzimage_plans_and_writes_nothing() {
        // The "unprivileged" tree has no CAP_SYS_BOOT: a dry run must not care.
        let root = machine("unprivileged");
        let cache = tempfile::tempdir().unwrap();
        let mut o = opts(root.path(), "bzImage-tiny.zstd", Mode::Auto, cache.path());
        o.initrd = Some(fixtures().join("pattern-600k.lzo"));
        let r = load(&o).unwrap();
        assert_eq!(r.mode, LoadMode::Uncompressed);
        assert!(r.dry_run && !r.loaded);
        assert_eq!(r.kernel_format, "bzImage");
        assert_eq!(r.compression.as_deref(), Some("zstd"));
        assert_eq!(r.cmdline, "root=/dev/sda2 quiet initcall_debug");
        assert_eq!(
            r.initrd_size,
            Some(fs::metadata(o.initrd.unwrap()).unwrap().len())
        );
        let plan = r.plan.as_deref().unwrap();
        assert!(!plan.is_empty());
        assert!(r.syscall.starts_with("kexec_load(entry="), "{}", r.syscall);
        assert!(r.notes.iter().any(|n| n.contains("KASLR")), "{:?}", r.notes);
        assert_eq!(
            files_under(cache.path()),
            0,
            "a dry run must not fill the cache"
        );
        let text = r.to_string();
        assert!(text.contains("dry run, nothing loaded"), "{text}");
        assert!(text.contains("plan:"), "{text}");
    }

    #[test]
    fn dry_run_file_mode_describes_the_syscall() {
        let root = machine("lockdown");
        let cache = tempfile::tempdir().unwrap();
        let r = load(&opts(
            root.path(),
            "bzImage-tiny.gzip",
            Mode::Auto,
            cache.path(),
        ))
        .unwrap();
        assert_eq!(r.mode, LoadMode::File);
        assert!(
            r.mode_reason.contains("lockdown is 'integrity'"),
            "{}",
            r.mode_reason
        );
        assert!(r.plan.is_none());
        assert!(
            r.syscall.contains("initrd=-1") && r.syscall.contains("flags=0x4"),
            "{}",
            r.syscall
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["mode"], "file");
        assert_eq!(json["loaded"], false);
    }

    #[test]
    fn dry_run_accepts_a_vmlinux_directly() {
        let root = machine("plain");
        let cache = tempfile::tempdir().unwrap();
        let r = load(&opts(
            root.path(),
            "vmlinux-tiny.elf",
            Mode::Uncompressed,
            cache.path(),
        ))
        .unwrap();
        assert_eq!(r.kernel_format, "vmlinux ELF");
        assert_eq!(
            r.vmlinux.as_deref(),
            Some(fixtures().join("vmlinux-tiny.elf").as_path())
        );
        assert!(r.plan.is_some());
    }

    /// Special files are refused by name before anything is read: a FIFO would block `load`
    /// forever, /dev/zero would grow until the OOM killer ends it.
    #[test]
    fn special_files_are_refused_by_name_without_blocking() {
        let root = machine("plain");
        let cache = tempfile::tempdir().unwrap();
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let zero = PathBuf::from("/dev/zero");
        let base = |mode| opts(root.path(), "bzImage-tiny.zstd", mode, cache.path());
        let mut cases = Vec::new();
        for (kernel, initrd, mode) in [
            (Some(&fifo), None, Mode::Uncompressed),
            (Some(&zero), None, Mode::Uncompressed),
            (None, Some(&fifo), Mode::Uncompressed),
            (None, Some(&fifo), Mode::File),
            (None, Some(&zero), Mode::Uncompressed),
        ] {
            let mut o = base(mode);
            if let Some(k) = kernel {
                o.kernel = k.clone();
            }
            o.initrd = initrd.cloned();
            let named = kernel.or(initrd).unwrap().clone();
            cases.push((o, named));
        }
        for (o, named) in cases {
            let (tx, rx) = std::sync::mpsc::channel();
            let what = format!("{:?} kernel {:?} initrd {:?}", o.mode, o.kernel, o.initrd);
            std::thread::spawn(move || {
                let _ = tx.send(load(&o).map(|_| ()).map_err(|e| e.to_string()));
            });
            let got = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{what}: still blocked after 10 s"));
            let err = got.expect_err(&what);
            assert!(err.contains(&*named.to_string_lossy()), "{what}: {err}");
            assert!(err.contains("not a regular file"), "{what}: {err}");
        }
    }

    #[test]
    fn refusals_happen_before_any_syscall() {
        let root = machine("plain");
        let cache = tempfile::tempdir().unwrap();
        // File mode cannot take a vmlinux.
        let e = load(&opts(
            root.path(),
            "vmlinux-tiny.elf",
            Mode::File,
            cache.path(),
        ))
        .unwrap_err();
        assert!(matches!(e, Error::ModeUnavailable { .. }), "{e}");
        // Not a kernel at all.
        let e = load(&opts(
            root.path(),
            "pattern-600k.lzo",
            Mode::Auto,
            cache.path(),
        ))
        .unwrap_err();
        assert!(matches!(e, Error::UnsupportedImage { .. }), "{e}");
        // A missing initrd is named.
        let mut o = opts(root.path(), "bzImage-tiny.gzip", Mode::File, cache.path());
        o.initrd = Some(fixtures().join("no-such-initrd"));
        let e = load(&o).unwrap_err();
        assert!(e.to_string().contains("no-such-initrd"), "{e}");
        // Without privilege a real load stops before touching the kernel.
        let unpriv = machine("unprivileged");
        let mut o = opts(unpriv.path(), "bzImage-tiny.gzip", Mode::File, cache.path());
        o.dry_run = false;
        let e = load(&o).unwrap_err();
        assert!(matches!(e, Error::NotPrivileged { .. }), "{e}");
        // kexec_load_disabled stops a real load, with the reason.
        let disabled = machine("disabled");
        let mut o = opts(
            disabled.path(),
            "bzImage-tiny.gzip",
            Mode::Auto,
            cache.path(),
        );
        o.dry_run = false;
        let e = load(&o).unwrap_err();
        assert!(e.to_string().contains("kexec_load_disabled"), "{e}");
    }

    /// A QEMU guest tree with a 256 MiB crashkernel reservation at 0x65000000, idle or
    /// holding someone's crash kernel.
    fn machine_with_reservation(crash_loaded: bool) -> tempfile::TempDir {
        let t = machine("plain");
        let iomem = fs::read_to_string(t.path().join("proc/iomem")).unwrap();
        let ram = "00100000-7ffdffff : System RAM\n";
        assert!(iomem.contains(ram));
        let iomem = iomem.replace(ram, &format!("{ram}  65000000-74ffffff : Crash kernel\n"));
        fs::write(t.path().join("proc/iomem"), iomem).unwrap();
        let flag = if crash_loaded { "1\n" } else { "0\n" };
        fs::write(t.path().join("sys/kernel/kexec_crash_loaded"), flag).unwrap();
        t
    }

    #[test]
    fn auto_stages_into_an_idle_reservation() {
        let root = machine_with_reservation(false);
        let cache = tempfile::tempdir().unwrap();
        let r = load(&opts(
            root.path(),
            "bzImage-tiny.zstd",
            Mode::Auto,
            cache.path(),
        ))
        .unwrap();
        assert_eq!(r.mode, LoadMode::Staged);
        assert!(r.mode_reason.contains("idle"), "{}", r.mode_reason);
        let st = r.staged.as_ref().unwrap();
        assert_eq!(st.reservation_start, 0x6500_0000);
        assert_eq!(st.reservation_end, 0x7500_0000);
        assert!(!st.displaced_crash_kernel);
        assert!(
            r.syscall.contains("flags=0x3e0001") && r.syscall.contains("then kexec_load"),
            "{}",
            r.syscall
        );
        assert!(r.notes.iter().any(|n| n.contains("kdump is displaced")));
        let text = r.to_string();
        assert!(text.contains("KEXEC_ON_CRASH"), "{text}");
        assert!(text.contains("trampoline"), "{text}");
        assert_eq!(serde_json::to_value(&r).unwrap()["mode"], "staged");
        assert_eq!(files_under(cache.path()), 0);
    }

    #[test]
    fn auto_never_displaces_a_loaded_crash_kernel() {
        let root = machine_with_reservation(true);
        let cache = tempfile::tempdir().unwrap();
        let r = load(&opts(
            root.path(),
            "bzImage-tiny.zstd",
            Mode::Auto,
            cache.path(),
        ))
        .unwrap();
        assert_eq!(r.mode, LoadMode::Uncompressed);
        assert!(r.staged.is_none());
        // Asked for explicitly, it does displace it, and says so.
        let r = load(&opts(
            root.path(),
            "bzImage-tiny.zstd",
            Mode::Staged,
            cache.path(),
        ))
        .unwrap();
        assert_eq!(r.mode, LoadMode::Staged);
        assert!(r.staged.as_ref().unwrap().displaced_crash_kernel);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("a crash (kdump) kernel was loaded")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn staged_without_a_reservation_is_refused_before_any_syscall() {
        let root = machine("plain");
        let cache = tempfile::tempdir().unwrap();
        // A dry run plans anyway and fails on the missing reservation.
        let e = load(&opts(
            root.path(),
            "bzImage-tiny.zstd",
            Mode::Staged,
            cache.path(),
        ))
        .unwrap_err();
        assert!(matches!(e, Error::NoCrashReservation { .. }), "{e}");
        assert!(e.to_string().contains("crashkernel="), "{e}");
        // A real load stops at the mode check.
        let mut o = opts(root.path(), "bzImage-tiny.zstd", Mode::Staged, cache.path());
        o.dry_run = false;
        let e = load(&o).unwrap_err();
        assert!(
            matches!(e, Error::ModeUnavailable { mode: "staged", .. }),
            "{e}"
        );
        // So does one under lockdown, whose kexec_load is forbidden.
        let e = choose_mode(
            Mode::Staged,
            &st(&[], &["lockdown is 'integrity'"]),
            true,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("staged mode is not possible"), "{e}");
    }

    #[test]
    fn cmdline_limits_per_mode() {
        let long = "x".repeat(2017);
        // File mode: 2017 + NUL + 30 > 2047.
        let e = check_cmdline_len(&long, LoadMode::File, Some(2047)).unwrap_err();
        assert!(e.to_string().contains("at most 2016"), "{e}");
        check_cmdline_len(&long[..2016], LoadMode::File, Some(2047)).unwrap();
        check_cmdline_len(&long, LoadMode::Uncompressed, Some(2047)).unwrap();
        check_cmdline_len(&long, LoadMode::Uncompressed, None).unwrap();
        let e = check_cmdline_len(&"x".repeat(2048), LoadMode::Uncompressed, None).unwrap_err();
        assert!(e.to_string().contains("COMMAND_LINE_SIZE"), "{e}");
        // An old protocol's 255-byte limit.
        assert!(check_cmdline_len(&long[..300], LoadMode::Uncompressed, Some(255)).is_err());
    }
}
