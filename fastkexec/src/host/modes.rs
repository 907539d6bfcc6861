//! Which loader modes this kernel allows, decided from the facts [`Status`] gathered.

use super::e820::PhysRange;
use super::status::{Availability, CrashRange, Modes, Status};

/// Decides which modes this kernel allows, from the facts already in `st`.
pub fn modes(st: &Status) -> Modes {
    let mut common = Vec::new();
    if !st.kexec_core {
        common.push("this kernel has no kexec support (no /sys/kernel/kexec_loaded)".to_string());
    }
    if st.kexec_load_disabled == Some(true) {
        common.push(
            "kernel.kexec_load_disabled=1 blocks every kexec load until the next reboot".into(),
        );
    }
    if st.kexec_load_limit_reboot == Some(0) {
        common.push("kernel.kexec_load_limit_reboot=0: no loads left until the next reboot".into());
    }
    let locked = st.lockdown.as_ref().filter(|l| l.active());

    let mut file = Availability {
        blockers: common.clone(),
        ..Availability::default()
    };
    if st.config.kexec_file == Some(false) {
        file.blockers
            .push("the kernel was built without CONFIG_KEXEC_FILE".into());
    }
    if let Some(l) = locked {
        file.caveats.push(format!(
            "lockdown is '{}': the bzImage must be signed with a key the kernel trusts",
            l.current
        ));
    } else if st.config.kexec_sig_force == Some(true) {
        file.caveats
            .push("CONFIG_KEXEC_SIG_FORCE: the bzImage must be signed".into());
    }
    file.caveats.push(
        "the kernel decompresses the bzImage and its purgatory hashes every segment at each \
         reboot"
            .into(),
    );

    let mut unc = Availability {
        blockers: common,
        ..Availability::default()
    };
    if st.config.kexec == Some(false) {
        unc.blockers
            .push("the kernel was built without CONFIG_KEXEC (no kexec_load)".into());
    }
    if let Some(l) = locked {
        unc.blockers.push(format!(
            "lockdown is '{}' (Secure Boot?), which forbids kexec_load",
            l.current
        ));
    }
    if let Some(g) = &st.confidential_guest {
        unc.blockers.push(format!(
            "{g}: the next kernel needs its decompressor's confidential-computing setup"
        ));
    }
    unc.caveats.push(
        "no kernel-text KASLR for the next kernel (the decompressor that randomises it is \
         skipped)"
            .into(),
    );
    file.allowed = file.blockers.is_empty();
    unc.allowed = unc.blockers.is_empty();
    let staged = availability(&unc, st);
    Modes {
        file,
        uncompressed: unc,
        staged,
    }
}

/// The largest of the "Crash kernel" ranges as a half-open range.
pub fn largest_reservation(ranges: &[CrashRange]) -> Option<PhysRange> {
    ranges
        .iter()
        .filter(|r| r.end > r.start)
        .max_by_key(|r| r.size)
        .and_then(|r| Some(PhysRange::new(r.start, r.end.checked_add(1)?)))
}

/// Staged mode's availability on this kernel: everything uncompressed mode
/// needs, plus a visible reservation and panic loads not disabled.
pub fn availability(uncompressed: &Availability, st: &Status) -> Availability {
    let mut a = Availability {
        blockers: uncompressed.blockers.clone(),
        ..Default::default()
    };
    if st.iomem_addresses_hidden {
        a.blockers
            .push("the crashkernel reservation is not visible (run as root)".into());
    } else if largest_reservation(&st.crash_kernel).is_none() {
        a.blockers.push(
            "no crashkernel reservation (boot with crashkernel=SIZE, e.g. crashkernel=256M)".into(),
        );
    }
    if st.kexec_load_limit_panic == Some(0) {
        a.blockers.push(
            "kernel.kexec_load_limit_panic=0: no crash-image loads left until the next reboot"
                .into(),
        );
    }
    a.caveats.push(
        "while staged no kdump kernel is loaded (a loaded one is displaced until the next boot); \
         the reservation must hold the kernel's footprint and the initrd"
            .into(),
    );
    if st.crash_loaded == Some(true) {
        a.caveats.push(
            "a crash kernel is loaded now: --mode staged would replace it, auto will not".into(),
        );
    }
    a.caveats.extend(uncompressed.caveats.iter().cloned());
    a.allowed = a.blockers.is_empty();
    a
}
