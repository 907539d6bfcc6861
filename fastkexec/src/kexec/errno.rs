//! What a failed kexec syscall's errno means on *this* machine: [`explain`] looks at [`Status`]
//! (privilege, lockdown, `kexec_load_disabled`, ...) and names the likely cause.

use std::io;

use crate::host::status::Status;
use crate::Error;

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
