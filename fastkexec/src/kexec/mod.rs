//! The raw kexec syscalls on x86_64 and what their errnos mean.
//!
//! Flag values are those of `include/uapi/linux/kexec.h`. Two bit values are deliberately absent:
//! the 2022 "faster kexec reboot" series proposed `KEXEC_RESERVED_MEM` (0x4) and
//! `KEXEC_FILE_RESERVED_MEM` (0x8), but upstream later gave those bits to
//! `KEXEC_UPDATE_ELFCOREHDR` and `KEXEC_FILE_DEBUG`; passing them would silently mean something
//! else on a stock kernel.
//!
//! Everything here is a thin wrapper: the syscall functions return the raw `io::Error`, and
//! [`explain`] turns an errno into an [`Error`] whose text says what probably went wrong on *this*
//! machine (it looks at [`Status`]: privilege, lockdown, `kexec_load_disabled`, ...).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::host::status::Status;
use crate::{Error, Result};

/// `kexec_load` flag: load the image run on panic (kdump) instead of the reboot image.
pub const KEXEC_ON_CRASH: u64 = 0x0000_0001;
/// `kexec_load` flag: keep the old kernel's state so the new one can jump back.
pub const KEXEC_PRESERVE_CONTEXT: u64 = 0x0000_0002;
/// Bits of the `kexec_load` flags that carry the ELF machine of the image.
pub const KEXEC_ARCH_MASK: u64 = 0xffff_0000;
/// `kexec_load` architecture field for x86_64 (the ELF machine number, EM_X86_64 = 62).
pub const KEXEC_ARCH_X86_64: u64 = 62 << 16;
/// `kexec_file_load` flag: unload the loaded image (the fds and command line are ignored).
pub const KEXEC_FILE_UNLOAD: u64 = 0x0000_0001;
/// `kexec_file_load` flag: operate on the panic (kdump) image.
pub const KEXEC_FILE_ON_CRASH: u64 = 0x0000_0002;
/// `kexec_file_load` flag: there is no initramfs; the initrd fd is ignored.
pub const KEXEC_FILE_NO_INITRAMFS: u64 = 0x0000_0004;
/// The kernel's cap on the number of segments passed to `kexec_load`.
pub const KEXEC_SEGMENT_MAX: usize = 16;
/// x86_64 page size; segment destinations and sizes must be multiples of it.
pub const PAGE_SIZE: u64 = 4096;

/// `struct kexec_segment` from the uapi header, as the kernel reads it.
///
/// The header types `mem` as `const void *`, but it holds a *physical* address that is never
/// dereferenced in user space, so it is kept as an integer of the same size here.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KexecSegment {
    /// User-space address of the bytes to copy.
    pub buf: *const libc::c_void,
    /// Number of bytes at `buf`.
    pub bufsz: libc::size_t,
    /// Physical destination address (page aligned).
    pub mem: usize,
    /// Size of the destination (page aligned, ≥ `bufsz`; the rest is zero-filled).
    pub memsz: libc::size_t,
}

/// One segment for [`kexec_load`]: bytes, their physical destination and the destination size.
#[derive(Debug, Clone, Copy)]
pub struct SegmentSpec<'a> {
    pub data: &'a [u8],
    pub mem: u64,
    pub memsz: u64,
}

/// Which syscall an errno came from; the same errno means different things in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    KexecLoad,
    KexecFileLoad,
    Unload,
    RebootKexec,
}

impl Call {
    /// The name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Call::KexecLoad => "kexec_load",
            Call::KexecFileLoad => "kexec_file_load",
            Call::Unload => "kexec unload",
            Call::RebootKexec => "reboot(LINUX_REBOOT_CMD_KEXEC)",
        }
    }
}

/// Checks a segment list against every rule the kernel's `sanity_check_segment_list()` applies,
/// plus that `entry` lies inside a segment, so a bad plan is refused with a precise message
/// before the syscall instead of as a bare EINVAL/EADDRNOTAVAIL.
pub fn validate_segments(entry: u64, segments: &[SegmentSpec<'_>]) -> Result<()> {
    let bad = |msg: String| Err(Error::InvalidSegments(msg));
    if segments.is_empty() {
        return bad("no segments (an empty list would unload the current image)".into());
    }
    if segments.len() > KEXEC_SEGMENT_MAX {
        return bad(format!(
            "{} segments, the kernel accepts at most {KEXEC_SEGMENT_MAX}",
            segments.len()
        ));
    }
    let mut ranges = Vec::with_capacity(segments.len());
    for (i, s) in segments.iter().enumerate() {
        if !s.mem.is_multiple_of(PAGE_SIZE) || !s.memsz.is_multiple_of(PAGE_SIZE) {
            return bad(format!(
                "segment {i}: destination {:#x}+{:#x} is not page aligned",
                s.mem, s.memsz
            ));
        }
        let bufsz = s.data.len() as u64;
        if bufsz > s.memsz {
            return bad(format!(
                "segment {i}: {bufsz:#x} bytes do not fit its memsz {:#x}",
                s.memsz
            ));
        }
        let end = s.mem.checked_add(s.memsz).ok_or_else(|| {
            Error::InvalidSegments(format!(
                "segment {i}: {:#x}+{:#x} overflows",
                s.mem, s.memsz
            ))
        })?;
        if usize::try_from(end).is_err() {
            return bad(format!("segment {i}: end {end:#x} does not fit an address"));
        }
        ranges.push((s.mem, end, i));
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if let [(_, a_end, a), (b_start, _, b)] = w {
            if b_start < a_end {
                return bad(format!("segments {a} and {b} overlap"));
            }
        }
    }
    if !ranges
        .iter()
        .any(|&(start, end, _)| entry >= start && entry < end)
    {
        return bad(format!("entry {entry:#x} is not inside any segment"));
    }
    Ok(())
}

/// Converts validated specs into the kernel's struct; the result borrows `segments`' data.
fn raw_segments(segments: &[SegmentSpec<'_>]) -> io::Result<Vec<KexecSegment>> {
    let to_usize =
        |v: u64| usize::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EADDRNOTAVAIL));
    segments
        .iter()
        .map(|s| {
            Ok(KexecSegment {
                buf: s.data.as_ptr().cast(),
                bufsz: s.data.len(),
                mem: to_usize(s.mem)?,
                memsz: to_usize(s.memsz)?,
            })
        })
        .collect()
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `kexec_load(entry, nr_segments, segments, flags | KEXEC_ARCH_X86_64)`.
///
/// Call [`validate_segments`] first. On success the kernel has copied every segment; on failure
/// the previously loaded normal image (if any) is left untouched.
#[cfg(target_arch = "x86_64")]
pub fn kexec_load(entry: u64, segments: &[SegmentSpec<'_>], flags: u64) -> io::Result<()> {
    let raw = raw_segments(segments)?;
    let flags = (flags & !KEXEC_ARCH_MASK) | KEXEC_ARCH_X86_64;
    // SAFETY: `raw` holds `raw.len()` initialised kexec_segment structs; each `buf` points into a
    // slice borrowed from `segments`, alive for the whole call; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_load,
            entry as libc::c_ulong,
            raw.len() as libc::c_ulong,
            raw.as_ptr(),
            flags as libc::c_ulong,
        )
    };
    check(rc)
}

/// `kexec_file_load(kernel_fd, initrd_fd, cmdline_len, cmdline, flags)`.
///
/// `cmdline_len` counts the terminating NUL, as the kernel requires. Without an initrd the
/// `KEXEC_FILE_NO_INITRAMFS` flag is added and the initrd fd is -1.
#[cfg(target_arch = "x86_64")]
pub fn kexec_file_load(
    kernel: BorrowedFd<'_>,
    initrd: Option<BorrowedFd<'_>>,
    cmdline: &CStr,
    flags: u64,
) -> io::Result<()> {
    let (initrd_fd, flags) = match initrd {
        Some(fd) => (fd.as_raw_fd(), flags & !KEXEC_FILE_NO_INITRAMFS),
        None => (-1, flags | KEXEC_FILE_NO_INITRAMFS),
    };
    let bytes = cmdline.to_bytes_with_nul();
    // SAFETY: both fds are open for the duration of the borrow (or -1 with NO_INITRAMFS);
    // `bytes` is a NUL-terminated buffer of exactly `bytes.len()` bytes that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd() as libc::c_long,
            initrd_fd as libc::c_long,
            bytes.len() as libc::c_ulong,
            bytes.as_ptr(),
            flags as libc::c_ulong,
        )
    };
    check(rc)
}

/// Unloads the normal image with `kexec_load(0, 0, NULL, 0)`; refused under lockdown.
#[cfg(target_arch = "x86_64")]
pub fn unload_with_kexec_load() -> io::Result<()> {
    // SAFETY: zero segments and a NULL segment pointer is the documented unload request; the
    // kernel reads no user memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_load,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            std::ptr::null::<KexecSegment>(),
            0 as libc::c_ulong,
        )
    };
    check(rc)
}

/// Unloads the normal image with `kexec_file_load(-1, -1, 0, NULL, KEXEC_FILE_UNLOAD)`; this
/// works whichever syscall loaded it, and also under lockdown.
#[cfg(target_arch = "x86_64")]
pub fn unload_with_kexec_file_load() -> io::Result<()> {
    // SAFETY: with KEXEC_FILE_UNLOAD the kernel ignores both fds and reads no command line
    // (length 0, NULL pointer).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            -1 as libc::c_long,
            -1 as libc::c_long,
            0 as libc::c_ulong,
            std::ptr::null::<u8>(),
            KEXEC_FILE_UNLOAD as libc::c_ulong,
        )
    };
    check(rc)
}

/// Unloads the normal image: `kexec_file_load` unload first (allowed under lockdown), and
/// `kexec_load` with no segments when the kernel has no kexec_file support.
#[cfg(target_arch = "x86_64")]
pub fn unload() -> io::Result<()> {
    match unload_with_kexec_file_load() {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => unload_with_kexec_load(),
        other => other,
    }
}

/// `reboot(LINUX_REBOOT_CMD_KEXEC)`: jumps into the loaded image immediately — no clean
/// shutdown of user space. Returns only on failure.
#[cfg(target_arch = "x86_64")]
pub fn reboot_kexec() -> io::Error {
    // SAFETY: reboot(2) takes no pointers; on success it does not return.
    let rc = unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_KEXEC) };
    if rc == 0 {
        // Only reachable if the kernel returned success without switching, which it never does.
        io::Error::other("reboot(LINUX_REBOOT_CMD_KEXEC) returned without switching kernels")
    } else {
        io::Error::last_os_error()
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn unsupported() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSYS)
}

#[cfg(not(target_arch = "x86_64"))]
pub fn kexec_load(_: u64, _: &[SegmentSpec<'_>], _: u64) -> io::Result<()> {
    Err(unsupported())
}

#[cfg(not(target_arch = "x86_64"))]
pub fn kexec_file_load(
    _: BorrowedFd<'_>,
    _: Option<BorrowedFd<'_>>,
    _: &CStr,
    _: u64,
) -> io::Result<()> {
    Err(unsupported())
}

#[cfg(not(target_arch = "x86_64"))]
pub fn unload() -> io::Result<()> {
    Err(unsupported())
}

#[cfg(not(target_arch = "x86_64"))]
pub fn reboot_kexec() -> io::Error {
    unsupported()
}

/// Flushes every filesystem's dirty data (sync(2)); always done before jumping kernels.
pub fn sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// Turns a failed kexec syscall into an error that says what the errno means on this machine.
pub fn explain(call: Call, err: io::Error, status: &Status) -> Error {
    let hint = match err.raw_os_error() {
        Some(errno) => errno_hint(call, errno, status),
        None => "unexpected failure".to_string(),
    };
    Error::Syscall {
        call: call.name(),
        source: err,
        hint,
    }
}

/// What `errno` from `call` most likely means, given what [`Status`] knows about this machine.
pub fn errno_hint(call: Call, errno: i32, status: &Status) -> String {
    let file = matches!(call, Call::KexecFileLoad);
    match errno {
        libc::EPERM => eperm_hint(call, status),
        libc::ENOSYS => match call {
            Call::KexecFileLoad => "this kernel was built without CONFIG_KEXEC_FILE; \
                use --mode uncompressed (kexec_load)"
                .into(),
            Call::KexecLoad => "this kernel was built without CONFIG_KEXEC (no kexec_load); \
                use --mode file (kexec_file_load)"
                .into(),
            _ => "this kernel was built without kexec support".into(),
        },
        libc::EBUSY => {
            "another kexec load, unload or exec is in progress; retry when it ends".into()
        }
        libc::EINVAL => match call {
            Call::KexecLoad => "the kernel rejected the segment list or flags (overlapping \
                segments, more than 16, a segment larger than its destination, or flag bits this \
                kernel does not know)"
                .into(),
            Call::KexecFileLoad => "the kernel rejected the image, command line or flags (the \
                command line must fit the bzImage's cmdline_size minus 30 bytes; the image must \
                be a 64-bit relocatable bzImage)"
                .into(),
            Call::RebootKexec => "no kexec image is loaded; run `fastkexec load` first".into(),
            Call::Unload => "this kernel does not accept the unload request".into(),
        },
        libc::ENOMEM => "the kernel could not find memory for the image: the segments need that \
            much free RAM now (and at most half of all RAM); free memory or use a smaller \
            initrd"
            .into(),
        libc::EADDRNOTAVAIL => {
            "a segment's destination is not page aligned, is not usable RAM, or \
            lies beyond what the kernel can address; see `fastkexec load --dry-run` for the plan"
                .into()
        }
        libc::ENOEXEC if file => "the kernel does not accept this image: x86 kexec_file_load \
            loads only 64-bit bzImages (not a vmlinux ELF, not a 32-bit kernel)"
            .into(),
        libc::EKEYREJECTED
        | libc::ENOKEY
        | libc::EBADMSG
        | libc::EKEYEXPIRED
        | libc::EKEYREVOKED
            if file =>
        {
            let why = lockdown_text(status)
                .map(|l| format!(" (lockdown is '{l}')"))
                .unwrap_or_default();
            format!(
                "signature verification failed{why}: the kernel image is unsigned or signed by a \
                 key this kernel does not trust; use a kernel signed for this machine's Secure \
                 Boot keys"
            )
        }
        libc::EACCES if file => {
            "IMA appraisal or an LSM policy denied the kernel or initrd file".into()
        }
        libc::EFBIG if file => "the kernel or initrd file is too large for kexec_file_load".into(),
        libc::EBADF => "a file descriptor passed to the kernel was not valid".into(),
        libc::EFAULT => "the kernel could not read a buffer we passed (a bug in fastkexec)".into(),
        _ => "unexpected error from the kernel".into(),
    }
}

fn lockdown_text(status: &Status) -> Option<&str> {
    status
        .lockdown
        .as_ref()
        .map(|l| l.current.as_str())
        .filter(|c| *c != "none")
}

fn eperm_hint(call: Call, status: &Status) -> String {
    if status.privilege.cap_sys_boot == Some(false) {
        return "this process lacks CAP_SYS_BOOT: run it as root".into();
    }
    if status.kexec_load_disabled == Some(true) {
        return "kernel.kexec_load_disabled is 1, which blocks every kexec load until the next \
            reboot (it cannot be cleared)"
            .into();
    }
    if status.kexec_load_limit_reboot == Some(0) && call != Call::Unload {
        return "kernel.kexec_load_limit_reboot is 0: no further kexec loads are allowed until \
            the next reboot"
            .into();
    }
    if let Some(mode) = lockdown_text(status) {
        return match call {
            Call::KexecLoad => format!(
                "kernel lockdown is '{mode}' (usually Secure Boot), which forbids kexec_load; \
                 use --mode file with a signed kernel"
            ),
            _ => format!(
                "kernel lockdown is '{mode}': kexec_file_load needs a kernel image signed with a \
                 key this kernel trusts"
            ),
        };
    }
    "the kernel refused: CAP_SYS_BOOT is needed in the initial user namespace (not in a \
     container), and an LSM policy (SELinux, AppArmor) may deny kexec"
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::status::{Lockdown, Privilege};
    use std::mem::{offset_of, size_of};

    #[test]
    fn kexec_segment_matches_uapi_layout() {
        // struct kexec_segment { const void *buf; size_t bufsz; const void *mem; size_t memsz; }
        assert_eq!(size_of::<KexecSegment>(), 4 * size_of::<usize>());
        assert_eq!(offset_of!(KexecSegment, buf), 0);
        assert_eq!(offset_of!(KexecSegment, bufsz), size_of::<usize>());
        assert_eq!(offset_of!(KexecSegment, mem), 2 * size_of::<usize>());
        assert_eq!(offset_of!(KexecSegment, memsz), 3 * size_of::<usize>());
    }

    #[test]
    fn flag_values_agree_with_libc() {
        assert_eq!(KEXEC_ON_CRASH, libc::KEXEC_ON_CRASH as u64);
        assert_eq!(KEXEC_FILE_UNLOAD, libc::KEXEC_FILE_UNLOAD as u64);
        assert_eq!(KEXEC_FILE_ON_CRASH, libc::KEXEC_FILE_ON_CRASH as u64);
        assert_eq!(
            KEXEC_FILE_NO_INITRAMFS,
            libc::KEXEC_FILE_NO_INITRAMFS as u64
        );
        assert_eq!(KEXEC_ARCH_MASK, libc::KEXEC_ARCH_MASK as u32 as u64);
        assert_eq!(KEXEC_ARCH_X86_64, 0x3e_0000);
        assert_eq!(KEXEC_ARCH_X86_64 & !KEXEC_ARCH_MASK, 0);
    }

    #[test]
    fn raw_segments_carry_pointer_and_sizes() {
        let data = [1u8, 2, 3];
        let specs = [SegmentSpec {
            data: &data,
            mem: 0x100_0000,
            memsz: 0x1000,
        }];
        let raw = raw_segments(&specs).unwrap();
        assert_eq!(raw[0].buf, data.as_ptr().cast());
        assert_eq!(raw[0].bufsz, 3);
        assert_eq!(raw[0].mem, 0x100_0000);
        assert_eq!(raw[0].memsz, 0x1000);
    }

    fn seg(data: &[u8], mem: u64, memsz: u64) -> SegmentSpec<'_> {
        SegmentSpec { data, mem, memsz }
    }

    #[test]
    fn validate_accepts_a_sane_plan() {
        let a = vec![0u8; 5000];
        let b = vec![0u8; 10];
        let segs = [seg(&a, 0x100_0000, 0x2000), seg(&b, 0x9000, 0x1000)];
        validate_segments(0x100_0000, &segs).unwrap();
    }

    #[test]
    fn validate_rejects_each_kernel_rule() {
        let d = vec![0u8; 0x1001];
        let cases: Vec<(u64, Vec<SegmentSpec<'_>>, &str)> = vec![
            (0, vec![], "no segments"),
            (
                0x1000,
                vec![seg(&d[..1], 0x1800, 0x1000)],
                "not page aligned",
            ),
            (
                0x1000,
                vec![seg(&d[..1], 0x1000, 0x800)],
                "not page aligned",
            ),
            (0x1000, vec![seg(&d, 0x1000, 0x1000)], "do not fit"),
            (
                0x1000,
                vec![seg(&d[..1], 0x1000, 0x2000), seg(&d[..1], 0x2000, 0x1000)],
                "overlap",
            ),
            (0x5000, vec![seg(&d[..1], 0x1000, 0x1000)], "entry"),
            (0x1000, vec![seg(&d[..1], !0xfff, 0x2000)], "overflows"),
        ];
        for (entry, segs, want) in cases {
            let err = validate_segments(entry, &segs).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        let many: Vec<_> = (0..17).map(|i| seg(&d[..1], i * 0x1000, 0x1000)).collect();
        let err = validate_segments(0, &many).unwrap_err().to_string();
        assert!(err.contains("at most 16"), "{err}");
    }

    fn status_with(f: impl FnOnce(&mut Status)) -> Status {
        let mut s = Status {
            privilege: Privilege {
                euid: Some(0),
                cap_sys_boot: Some(true),
            },
            ..Status::default()
        };
        f(&mut s);
        s
    }

    #[test]
    fn eperm_names_the_actual_cause() {
        let unpriv = status_with(|s| s.privilege.cap_sys_boot = Some(false));
        assert!(errno_hint(Call::KexecLoad, libc::EPERM, &unpriv).contains("CAP_SYS_BOOT"));

        let disabled = status_with(|s| s.kexec_load_disabled = Some(true));
        assert!(
            errno_hint(Call::KexecFileLoad, libc::EPERM, &disabled).contains("kexec_load_disabled")
        );

        let locked = status_with(|s| {
            s.lockdown = Some(Lockdown {
                current: "integrity".into(),
                available: vec!["none".into(), "integrity".into()],
            })
        });
        let h = errno_hint(Call::KexecLoad, libc::EPERM, &locked);
        assert!(
            h.contains("lockdown is 'integrity'") && h.contains("--mode file"),
            "{h}"
        );
        let h = errno_hint(Call::KexecFileLoad, libc::EPERM, &locked);
        assert!(h.contains("signed"), "{h}");

        let limited = status_with(|s| s.kexec_load_limit_reboot = Some(0));
        assert!(
            errno_hint(Call::KexecLoad, libc::EPERM, &limited).contains("kexec_load_limit_reboot")
        );

        let unknown = status_with(|_| {});
        assert!(errno_hint(Call::KexecLoad, libc::EPERM, &unknown).contains("namespace"));
    }

    #[test]
    fn other_errnos_map_per_call() {
        let s = status_with(|_| {});
        assert!(errno_hint(Call::KexecFileLoad, libc::ENOSYS, &s).contains("CONFIG_KEXEC_FILE"));
        assert!(errno_hint(Call::KexecLoad, libc::ENOSYS, &s).contains("CONFIG_KEXEC "));
        assert!(errno_hint(Call::KexecLoad, libc::EBUSY, &s).contains("in progress"));
        assert!(errno_hint(Call::KexecLoad, libc::EINVAL, &s).contains("segment"));
        assert!(errno_hint(Call::KexecFileLoad, libc::EINVAL, &s).contains("cmdline_size"));
        assert!(errno_hint(Call::RebootKexec, libc::EINVAL, &s).contains("no kexec image"));
        assert!(errno_hint(Call::KexecLoad, libc::ENOMEM, &s).contains("memory"));
        assert!(errno_hint(Call::KexecLoad, libc::EADDRNOTAVAIL, &s).contains("page aligned"));
        assert!(errno_hint(Call::KexecFileLoad, libc::ENOEXEC, &s).contains("bzImage"));
        assert!(errno_hint(Call::KexecFileLoad, libc::EKEYREJECTED, &s).contains("signature"));
        assert!(errno_hint(Call::KexecFileLoad, libc::EACCES, &s).contains("IMA"));
    }

    #[test]
    fn explain_keeps_the_os_error_as_source() {
        let s = status_with(|_| {});
        let e = explain(
            Call::KexecLoad,
            io::Error::from_raw_os_error(libc::EBUSY),
            &s,
        );
        let text = e.to_string();
        assert!(text.starts_with("kexec_load failed: "), "{text}");
        assert!(std::error::Error::source(&e).is_some());
    }
}
