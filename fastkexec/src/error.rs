//! The library's one error type. Every variant names the file or field at
//! fault and, where there is one, what the user can do about it.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // --- kexec syscalls, status, load, exec (kexec/, host/status, ops/) ---
    /// A kexec-related syscall failed; `hint` says what the errno means here and what to do.
    #[error("{call} failed: {source}: {hint}")]
    Syscall {
        call: &'static str,
        #[source]
        source: std::io::Error,
        hint: String,
    },
    /// A procfs/sysfs file had content we could not interpret.
    #[error("{path}: cannot parse {what}: {content:?}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        content: String,
    },
    /// The requested load mode cannot work on this kernel/machine; `reason` says why and what to use.
    #[error("{mode} mode is not possible here: {reason}")]
    ModeUnavailable { mode: &'static str, reason: String },
    /// The caller lacks the privilege the kernel demands for kexec.
    #[error("{action} needs CAP_SYS_BOOT (run as root); {detail}")]
    NotPrivileged {
        action: &'static str,
        detail: String,
    },
    /// The kernel command line does not fit the kernel's limit.
    #[error("kernel command line is {len} bytes, but {limit_from} allows at most {max}; shorten --append or drop --reuse-cmdline")]
    CmdlineTooLong {
        len: usize,
        max: usize,
        limit_from: String,
    },
    /// The kernel command line contains something the kernel cannot take.
    #[error("invalid kernel command line: {0}")]
    InvalidCmdline(String),
    /// A kernel image given for a mode that cannot load its format.
    #[error("{path}: {problem}")]
    UnsupportedImage { path: PathBuf, problem: String },
    /// The segment list handed to kexec_load breaks a rule the kernel enforces.
    #[error("invalid kexec segment list: {0}")]
    InvalidSegments(String),
    /// `exec` was asked for but no image is loaded.
    #[error("no kexec image is loaded ({path} reads 0); run `fastkexec load` first")]
    NothingLoaded { path: PathBuf },
    /// `systemctl kexec` failed or could not be started.
    #[error("`systemctl kexec` {outcome}; check `journalctl -b`, or use `fastkexec exec --force` to skip the clean shutdown")]
    Systemctl { outcome: String },

    /// An input file (kernel, initrd, cached vmlinux) that cannot be read as one: not a
    /// regular file, or larger than its limit; `problem` says which and what to pass.
    #[error("{path}: {problem}")]
    Input { path: PathBuf, problem: String },

    // --- bzImage, payload decompression, vmlinux ELF, prepare cache
    //     (image/) ---
    /// Not a bzImage, or its setup header / payload location is unusable;
    /// `problem` names the field and offset and what to pass instead.
    #[error("{path}: {problem}")]
    BadBzImage { path: PathBuf, problem: String },
    /// The payload starts with no magic of a compressor the kernel build uses.
    #[error("{path}: unknown compression of the kernel payload at file offset {offset:#x} (first bytes {magic}); expected gzip, bzip2, lzma, xz, lzo, lz4 or zstd — is this really an x86 bzImage?")]
    UnknownCompression {
        path: PathBuf,
        offset: u64,
        magic: String,
    },
    /// The payload could not be decompressed (corrupt, truncated, or its size
    /// does not match the size trailer).
    #[error("{path}: {compression} payload: {problem}")]
    Decompress {
        path: PathBuf,
        compression: crate::image::decompress::Compression,
        problem: String,
    },
    /// The ELF is not a loadable x86-64 kernel image; `problem` names the
    /// header field or program header at fault.
    #[error("{path}: not a loadable x86-64 vmlinux: {problem}")]
    BadVmlinux { path: PathBuf, problem: String },

    /// The prepare cache (or an entry of it) could be written by someone other than root (or
    /// the user running fastkexec); `problem` says who and what to change.
    #[error("{path}: {problem}")]
    UntrustedCache { path: PathBuf, problem: String },

    // --- host facts, boot_params, purgatory, segment planning
    //     (host/, plan/, blobs/) ---
    /// A sysfs file describing the running machine is missing or unusable.
    #[error("{path}: {problem}")]
    HostInfo { path: PathBuf, problem: String },
    /// A boot_params field cannot be filled as asked.
    #[error("boot_params {field}: {problem}")]
    BootParams {
        field: &'static str,
        problem: String,
    },
    /// The embedded purgatory blob or its parameters are unusable.
    #[error("purgatory: {problem}")]
    Purgatory { problem: String },
    /// A kernel PT_LOAD would land outside e820 RAM.
    #[error("{path}: {what} at {range} is not inside RAM of the firmware memory map; check the kernel's physical load address (or the physical shift)")]
    KernelNotInRam {
        path: PathBuf,
        range: String,
        what: String,
    },
    /// No RAM hole allowed by the kernel header for the initrd.
    #[error("{path}: initrd of {size} bytes does not fit: {limit}")]
    InitrdDoesNotFit {
        path: PathBuf,
        size: u64,
        limit: String,
    },
    /// No free RAM for a segment we place ourselves.
    #[error("no free RAM for {what} ({size} bytes): need {limit}")]
    NoRamHole {
        what: String,
        size: u64,
        limit: String,
    },
    /// Two segments (or a segment and a reserved range) overlap.
    #[error("{first} overlaps {second}")]
    SegmentOverlap { first: String, second: String },
    /// The uncompressed-load plan is impossible for another reason, named in `problem`.
    #[error("cannot plan the load: {problem}")]
    Plan { problem: String },

    // --- tracer, trace record, report (trace/, record/) ---
    /// A BTF blob (e.g. /sys/kernel/btf/vmlinux) cannot be read as BTF.
    #[error("{path}: {problem}")]
    Btf { path: PathBuf, problem: String },
    /// The tracer cannot run here; `problem` says what is missing and what to do.
    #[error("cannot trace: {problem}")]
    Tracer { problem: String },
    /// There is no trace record for this boot.
    #[error("no trace record: {reason}; run `fastkexec trace --exec --mode uncompressed ...` in the old kernel to get one")]
    TraceRecordMissing { reason: String },
    /// The trace record is damaged; it is not used at all.
    #[error(
        "the trace record is torn ({what}); it was rejected as a whole, no part of it is used"
    )]
    TraceRecordTorn { what: String },
    /// The trace record belongs to another boot; it is not used at all.
    #[error(
        "the trace record is stale ({why}); it was rejected as a whole, no part of it is used"
    )]
    TraceRecordStale { why: String },

    /// The trace record is whole but its clock figures are impossible; it is not used at all.
    #[error(
        "implausible record: {what}; it was rejected as a whole, no part of it is used (its \
         checksums held, so it was written that way: a broken clock, or forged); trace the next \
         reboot again with `fastkexec trace`"
    )]
    TraceRecordImplausible { what: String },

    // --- staged mode: crashkernel memory reuse (staged/, blobs/trampoline) ---
    /// Staged mode found no usable crashkernel reservation; `problem` says why and what to do.
    #[error("staged mode needs a crashkernel reservation: {problem}")]
    NoCrashReservation { problem: String },
    /// The crashkernel reservation cannot hold the staged image.
    #[error("the crashkernel reservation {reservation} ({size_mib} MiB) is too small for the staged image: {need}; boot with a larger reservation (e.g. crashkernel={suggest_mib}M) or use --mode uncompressed")]
    ReservationTooSmall {
        reservation: String,
        size_mib: u64,
        need: String,
        suggest_mib: u64,
    },
    /// The crash image is no longer the kernel `fastkexec load` staged.
    #[error("the kernel staged in the crashkernel reservation {reservation} is not the one `fastkexec load` put there: {problem}; exec refused (the staged trampoline would reset the machine rather than boot it); run `fastkexec load` again, or `fastkexec unload`")]
    StagedReplaced {
        reservation: String,
        problem: String,
    },
    /// The embedded trampoline blob or its parameters are unusable.
    /// The staged-mode record cannot be used; `problem` says what to do.
    #[error("{path}: {problem}")]
    StagedState { path: PathBuf, problem: String },

    #[error("trampoline: {problem}")]
    Trampoline { problem: String },

    // --- reboot histograms, export, serve (metrics/) ---
    /// A boot handed to `fold` is unusable; `problem` names the field (boot id, phase) at fault.
    #[error("cannot fold boot {boot_id:?} into the histograms: {problem}")]
    InvalidBoot { boot_id: String, problem: String },
    /// A state or export file cannot be used as it is; `problem` says why and what to do.
    #[error("{path}: {problem}")]
    StateFile { path: PathBuf, problem: String },
    /// A directory fastkexec would write into (or follow a link through) is not safe for that;
    /// `problem` says who could interfere and what to change.
    #[error("{path}: {problem}")]
    UnsafeDirectory { path: PathBuf, problem: String },
    /// A histogram could not be encoded for the state file or an export.
    #[error("cannot encode the histogram of {what}: {problem}")]
    HistogramEncode { what: String, problem: String },
    /// `fastkexec serve` cannot or will not listen on the address given.
    #[error("cannot serve on {addr}: {problem}")]
    Serve { addr: String, problem: String },
}

/// What kind of failure an error is: the rows of the exit-status table (README "Exit
/// statuses", fastkexec(1)). The binary maps each to its number; scripts branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Something we were given is wrong: an image, an initrd, a command line, a state or
    /// cache file, a directory we refuse to write into. Fix the input and retry.
    BadInput,
    /// This kernel or machine cannot do it: the mode is not possible here, no usable
    /// crashkernel reservation. Retrying the same thing will fail the same way.
    Unsupported,
    /// There is nothing to act on: no image loaded (exec), no usable trace record (report).
    NothingToDo,
    /// Anything else: a syscall failed, the machine's state was not as expected.
    Other,
}

impl Error {
    /// Which row of the exit-status table this error falls in.
    pub fn failure(&self) -> Failure {
        match self {
            Error::CmdlineTooLong { .. }
            | Error::InvalidCmdline(_)
            | Error::UnsupportedImage { .. }
            | Error::Input { .. }
            | Error::BadBzImage { .. }
            | Error::UnknownCompression { .. }
            | Error::Decompress { .. }
            | Error::BadVmlinux { .. }
            | Error::UntrustedCache { .. }
            | Error::KernelNotInRam { .. }
            | Error::InitrdDoesNotFit { .. }
            | Error::StateFile { .. }
            | Error::UnsafeDirectory { .. } => Failure::BadInput,
            Error::ModeUnavailable { .. }
            | Error::NoCrashReservation { .. }
            | Error::ReservationTooSmall { .. } => Failure::Unsupported,
            Error::NothingLoaded { .. }
            | Error::TraceRecordMissing { .. }
            | Error::TraceRecordTorn { .. }
            | Error::TraceRecordStale { .. }
            | Error::TraceRecordImplausible { .. } => Failure::NothingToDo,
            _ => Failure::Other,
        }
    }

    /// Wraps an `io::Error` with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
