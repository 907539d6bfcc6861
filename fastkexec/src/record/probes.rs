//! The probe points on the kexec path: which kernel function stamps which event kind, and the
//! two eBPF programs (fentry/fexit or kprobe/kretprobe) that can stamp it.
//!
//! The record side names phases and missing stamps by these; `trace` attaches them. The
//! program names are the contract with `fastkexec-ebpf/src/main.rs`, checked against the
//! embedded object by `trace::ebpf`'s tests.

use fastkexec_common::EventKind;

/// One probe point on the kexec path, with its two program flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbePoint {
    /// What the stamp marks.
    pub kind: EventKind,
    /// The kernel function.
    pub function: &'static str,
    /// Program to load as fentry (or fexit, when `exit`).
    pub fentry: &'static str,
    /// Program to attach as kprobe (or kretprobe, when `exit`).
    pub kprobe: &'static str,
    /// Stamps the function's return rather than its entry.
    pub exit: bool,
}

const fn point(
    kind: EventKind,
    function: &'static str,
    fentry: &'static str,
    kprobe: &'static str,
    exit: bool,
) -> ProbePoint {
    ProbePoint {
        kind,
        function,
        fentry,
        kprobe,
        exit,
    }
}

/// Fallback for the syscall when the tracepoint is missing.
pub const REBOOT_FALLBACK: ProbePoint = point(
    EventKind::REBOOT_ENTER,
    "__do_sys_reboot",
    "fe_reboot",
    "kp_reboot",
    false,
);

/// The static probe points, in timeline order.
pub const PHASE_PROBES: [ProbePoint; 10] = [
    point(
        EventKind::KERNEL_KEXEC,
        "kernel_kexec",
        "fe_kernel_kexec",
        "kp_kernel_kexec",
        false,
    ),
    point(
        EventKind::DEVICE_SHUTDOWN_ENTER,
        "device_shutdown",
        "fe_dev_shutdown",
        "kp_dev_shutdown",
        false,
    ),
    point(
        EventKind::DEVICE_SHUTDOWN_EXIT,
        "device_shutdown",
        "fx_dev_shutdown",
        "kr_dev_shutdown",
        true,
    ),
    point(
        EventKind::MIGRATE_TO_REBOOT_CPU,
        "migrate_to_reboot_cpu",
        "fe_migrate",
        "kp_migrate",
        false,
    ),
    point(
        EventKind::MIGRATE_TO_REBOOT_CPU_EXIT,
        "migrate_to_reboot_cpu",
        "fx_migrate",
        "kr_migrate",
        true,
    ),
    point(
        EventKind::SYSCORE_SHUTDOWN,
        "syscore_shutdown",
        "fe_syscore",
        "kp_syscore",
        false,
    ),
    point(
        EventKind::SYSCORE_SHUTDOWN_EXIT,
        "syscore_shutdown",
        "fx_syscore",
        "kr_syscore",
        true,
    ),
    point(
        EventKind::MACHINE_SHUTDOWN,
        "machine_shutdown",
        "fe_mach_shutdown",
        "kp_mach_shutdown",
        false,
    ),
    point(
        EventKind::MACHINE_SHUTDOWN_EXIT,
        "machine_shutdown",
        "fx_mach_shutdown",
        "kr_mach_shutdown",
        true,
    ),
    point(
        EventKind::MACHINE_KEXEC,
        "machine_kexec",
        "fe_machine_kexec",
        "kp_machine_kexec",
        false,
    ),
];

/// Per-device stamps: `pm_runtime_barrier(dev)` inside `device_shutdown`.
pub const DEVICE_PROBE: ProbePoint = point(
    EventKind::DEVICE_ENTER,
    "pm_runtime_barrier",
    "fe_device",
    "kp_device",
    false,
);
