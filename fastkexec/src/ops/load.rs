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
use crate::image::{Extract, KernelImage, Origin};
use crate::kexec::{self, Call, SegmentSpec};
pub use crate::plan::cmdline::{
    build_cmdline, split_params, CmdlineSource, REUSE_CMDLINE_DROPPED, X86_COMMAND_LINE_MAX,
};
use crate::{host::hostinfo, plan::segments, staged};
use crate::{Error, Result};

/// What `kexec_file_load` reserves in the command line for `elfcorehdr=0x<addr> `
/// (`MAX_ELFCOREHDR_STR_LEN` in arch/x86/kernel/kexec-bzimage64.c), even for normal images.
pub const FILE_MODE_CMDLINE_RESERVE: usize = 30;

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
    /// Where extracted vmlinux files are cached ([`crate::image::prepare::DEFAULT_CACHE_DIR`]).
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
    /// Physical ranges `[start, end)` to keep clear.
    pub reserved: Vec<crate::host::e820::PhysRange>,
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

/// [`load`] with the tracer's [`LoadExtras`]: opens `opts.kernel` (read once) and loads it.
pub fn load_with(opts: &LoadOptions, extras: &LoadExtras) -> Result<LoadReport> {
    let t0 = Instant::now();
    let mut image = KernelImage::open(&opts.kernel)?;
    let opened = vec![Timing {
        phase: "open kernel",
        ns: ns(t0.elapsed()),
    }];
    load_image_since(opts, &mut image, extras, None, t0, opened)
}

/// Loads an already opened kernel image (`opts.kernel` must name it); the vmlinux it may already
/// carry (`trace` made it to learn the kernel's footprint) is used as is. A real load holds the
/// kexec lock ([`KexecLock`]) from before it looks at what is loaded until the record is
/// written: `lock` when the caller holds it already, else taken here; a dry run changes nothing
/// and takes none.
pub fn load_image(
    opts: &LoadOptions,
    image: &mut KernelImage,
    extras: &LoadExtras,
    lock: Option<&KexecLock>,
) -> Result<LoadReport> {
    load_image_since(opts, image, extras, lock, Instant::now(), Vec::new())
}

/// [`load_image`] whose `total` runs from `t0`, with the laps taken before it (opening the
/// kernel) in `timings`: every part of `load`'s wall time is in its printed breakdown.
fn load_image_since(
    opts: &LoadOptions,
    image: &mut KernelImage,
    extras: &LoadExtras,
    lock: Option<&KexecLock>,
    t0: Instant,
    mut timings: Vec<Timing>,
) -> Result<LoadReport> {
    if opts.dry_run || lock.is_some() {
        return load_inner(opts, image, extras, t0, timings);
    }
    let t = Instant::now();
    let _lock = KexecLock::acquire(&opts.root, "load")?;
    timings.push(Timing {
        phase: "lock",
        ns: ns(t.elapsed()),
    });
    load_inner(opts, image, extras, t0, timings)
}

/// Whether this process may not even look at `path` (a dry run as a user, with root's 0700
/// /run/fastkexec).
fn permission_denied(path: &Path) -> bool {
    matches!(fs::File::open(path), Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied)
}

fn load_inner(
    opts: &LoadOptions,
    image: &mut KernelImage,
    extras: &LoadExtras,
    t0: Instant,
    mut timings: Vec<Timing>,
) -> Result<LoadReport> {
    let t_inspect = Instant::now();
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

    // One descriptor for the kernel (opened by the caller): the header parsed there, the
    // payload extracted and (file mode) what the kernel reads all come from the same file.
    let is_bz = image.is_bzimage();

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
    check_cmdline_len(&cmdline, mode, image.header().map(|h| h.cmdline_size))?;
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
        ns: ns(t_inspect.elapsed()),
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
        LoadMode::File => load_file(opts, image.file(), &status, &mut report)?,
        LoadMode::Uncompressed | LoadMode::Staged => load_uncompressed(
            opts,
            &status,
            image,
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
    image: &mut KernelImage,
    staging: Staging,
    extras: &LoadExtras,
    staged_before: bool,
    report: &mut LoadReport,
) -> Result<()> {
    let t = Instant::now();
    // A dry run writes nothing, so the cache is neither filled nor trusted blindly: it
    // extracts in memory (what `prepare` would cache).
    let how = if opts.dry_run {
        Extract::InMemory
    } else {
        Extract::Cache(&opts.cache_dir)
    };
    let kernel = image.loadable(how)?.clone();
    match kernel.origin {
        Origin::File => report.vmlinux = Some(kernel.path.clone()),
        Origin::Cache { hit, compression } => {
            report.vmlinux = Some(kernel.path.clone());
            report.compression = Some(compression.to_string());
            report.cache_hit = Some(hit);
        }
        Origin::Memory { compression } => {
            report.compression = Some(compression.to_string());
            report.notes.push(
                "dry run: the vmlinux was extracted in memory; a real load caches it (see \
                 `fastkexec prepare`)"
                    .into(),
            );
        }
    }
    report.lap("prepare", t);

    let t = Instant::now();
    let initrd = match &opts.initrd {
        Some(p) => {
            let (f, max, why) = open_initrd(p, &opts.root)?;
            report.initrd_size = Some(f.len);
            let bytes = f.map_or_read(p, "the initrd", max, &why)?;
            Some((p.as_path(), bytes))
        }
        None => None,
    };
    report.lap("open initrd", t);
    let t = Instant::now();
    // A block, so that the mapped (or read) initrd is released below in a lap of its own.
    let loaded = 'load: {
        let host = hostinfo::read(&opts.root)?;
        let input = segments::UncompressedInput {
            kernel: &kernel,
            setup_header: image.header(),
            initrd: initrd.as_ref().map(|(p, b)| (*p, b)),
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
                break 'load load_staged(opts, status, &plan, staged_before, report, t);
            }
            Staging::Auto(why) => match plan_staged(status, &input, extras) {
                Ok(plan) if plan.free_after >= staged::MIN_PANIC_FREE => {
                    report.mode = LoadMode::Staged;
                    report.mode_reason = format!(
                    "auto: {why} and large enough, so the kernel is staged in it (the relocation \
                     at exec copies one page)"
                );
                    break 'load load_staged(opts, status, &plan, staged_before, report, t);
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
        let specs: Vec<SegmentSpec<'_>> =
            plan.segments.iter().map(segments::Segment::spec).collect();
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
            break 'load Ok(());
        }
        let t = Instant::now();
        kexec::kexec_load(plan.entry, &specs, 0)
            .map_err(|e| kexec::explain(Call::KexecLoad, e, status))?;
        report.loaded = true;
        report.lap("kexec_load", t);
        Ok(())
    };
    // Unmapping 32 MiB of initrd (or freeing its heap copy) costs tens of ms under TCG.
    let t = Instant::now();
    drop(initrd);
    report.lap("release initrd", t);
    loaded
}

mod show;
mod staged_load;
use staged_load::{load_staged, plan_staged};

#[cfg(test)]
mod tests;
