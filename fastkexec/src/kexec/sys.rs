//! The raw kexec syscalls on x86_64: a leaf module (nothing of the crate but its types), each
//! returning the kernel's `io::Error` unexplained ([`super::errno`] explains them).
//!
//! Flag values are those of `include/uapi/linux/kexec.h`. Two bit values are deliberately absent:
//! the 2022 "faster kexec reboot" series proposed `KEXEC_RESERVED_MEM` (0x4) and
//! `KEXEC_FILE_RESERVED_MEM` (0x8), but upstream later gave those bits to
//! `KEXEC_UPDATE_ELFCOREHDR` and `KEXEC_FILE_DEBUG`; passing them would silently mean something
//! else on a stock kernel.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

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
    use nix::sys::reboot::{reboot, RebootMode};
    match reboot(RebootMode::RB_KEXEC) {
        Err(errno) => io::Error::from(errno),
        Ok(never) => match never {},
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
    nix::unistd::sync();
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
