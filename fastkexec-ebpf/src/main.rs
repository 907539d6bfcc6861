//! fastkexec's eBPF programs: stamps on the kexec reboot path.
//!
//! Every probe appends one [`Event`] to the `EVENTS` map, whose values are
//! whole pages: slot 0 is the [`HeaderPage`] (counters, state), slots 1.. hold
//! [`EVENTS_PER_PAGE`] events each. The map is mmapable so user space can hand
//! its pages to the next kernel (DESIGN.md §3). Event numbers come from an
//! atomic counter in the header page, so probes on several CPUs never share a
//! slot; the counter keeps counting when the pages are full, which tells the
//! reader how many events were dropped. Each stored event's hash is added to
//! `event_sum` so the reader can tell a damaged record from a good one.
//!
//! Each static probe point exists twice, as fentry/fexit (`fe_*`/`fx_*`) and
//! as kprobe/kretprobe (`kp_*`/`kr_*`); user space attaches one of the two at
//! run time. The notifier probes are kprobes only: they are attached to
//! callbacks discovered at run time, and one kprobe program can be attached to
//! many functions.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap in core (`atomic-cas: false`), and at
// the `generic` CPU level that rustc/bpf-linker use, LLVM cannot lower a
// fetch-add whose result is used (it needs -mcpu=v3, which aya-build gives no
// way to pass). A 64-bit cmpxchg is available at every CPU level (kernel
// >= 5.12), reached through the intrinsic. This crate is only ever built with
// the nightly toolchain (aya-build).
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{atomic_cxchg, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_func_ip, bpf_get_smp_processor_id,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
    },
    macros::{fentry, fexit, kprobe, kretprobe, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        TracePointContext,
    },
    EbpfContext,
};
use aya_log_ebpf::info;
use fastkexec_common::{
    config, event_hash, state, Event, EventKind, EventPage, ProbeConfig, BUS_NAME_LEN,
    DEFAULT_EVENT_PAGES, DEVICE_NAME_LEN, EVENTS_PER_PAGE, EVENT_NAME_LEN, LINUX_REBOOT_CMD_KEXEC,
    NOTIFIER_WALK_SLOTS, OFF_CLAIMED, OFF_EVENT_SUM, OFF_LAST_EXIT, OFF_PROBE_NS, OFF_STATE,
    UNIT_MAX,
};

/// Slot 0: the header page; slots 1..: event pages. User space resizes the
/// map before loading (one slot per page it wants).
#[map]
static EVENTS: Array<EventPage> = Array::with_max_entries(1 + DEFAULT_EVENT_PAGES, BPF_F_MMAPABLE);

/// Slot 0: offsets and addresses user space found in the running kernel.
#[map]
static CONFIG: Array<ProbeConfig> = Array::with_max_entries(1, 0);

/// Result of `walk_notifiers`: slot 0 = count, then callback addresses.
#[map]
static NOTIFIER_WALK: Array<u64> = Array::with_max_entries(NOTIFIER_WALK_SLOTS, 0);

/// `EVENTS_PER_PAGE` is a power of two so a slot splits into page and index
/// with a shift and a mask, bounds the verifier can follow on every kernel
/// (older verifiers lose track of a value after a modulo).
const SLOT_SHIFT: u32 = EVENTS_PER_PAGE.trailing_zeros();
const SLOT_MASK: u64 = EVENTS_PER_PAGE as u64 - 1;
const _: () = assert!(EVENTS_PER_PAGE.is_power_of_two());

// ---- the syscall ---------------------------------------------------------

/// `syscalls/sys_enter_reboot`: `cmd` is the third argument, at offset 32 of
/// the raw syscall record (8 bytes of common fields, the syscall number padded
/// to 8, then one 8-byte slot per argument).
#[tracepoint(category = "syscalls", name = "sys_enter_reboot")]
pub fn tp_reboot(ctx: TracePointContext) -> u32 {
    // SAFETY: reads 8 bytes inside the tracepoint record the kernel passes.
    let cmd: u64 = unsafe { ctx.read_at(32) }.unwrap_or(0);
    if cmd as u32 == LINUX_REBOOT_CMD_KEXEC {
        stamp(&ctx, EventKind::REBOOT_ENTER);
    }
    0
}

/// `__do_sys_reboot(magic1, magic2, cmd, arg)`: fallback when the syscall
/// tracepoint is not available.
#[fentry(function = "__do_sys_reboot")]
pub fn fe_reboot(ctx: FEntryContext) -> i32 {
    let cmd: u64 = ctx.arg(2);
    if cmd as u32 == LINUX_REBOOT_CMD_KEXEC {
        stamp(&ctx, EventKind::REBOOT_ENTER);
    }
    0
}

#[kprobe]
pub fn kp_reboot(ctx: ProbeContext) -> u32 {
    let cmd: u64 = ctx.arg(2).unwrap_or(0);
    if cmd as u32 == LINUX_REBOOT_CMD_KEXEC {
        stamp(&ctx, EventKind::REBOOT_ENTER);
    }
    0
}

// ---- phase stamps --------------------------------------------------------

/// One phase stamp as an fentry (or fexit) and a kprobe (or kretprobe).
macro_rules! phase_probe {
    ($fe:ident, $kp:ident, $func:tt, $kind:expr) => {
        #[fentry(function = $func)]
        pub fn $fe(ctx: FEntryContext) -> i32 {
            stamp(&ctx, $kind);
            0
        }

        #[kprobe]
        pub fn $kp(ctx: ProbeContext) -> u32 {
            stamp(&ctx, $kind);
            0
        }
    };
    (exit $fx:ident, $kr:ident, $func:tt, $kind:expr) => {
        #[fexit(function = $func)]
        pub fn $fx(ctx: FExitContext) -> i32 {
            stamp(&ctx, $kind);
            0
        }

        #[kretprobe]
        pub fn $kr(ctx: RetProbeContext) -> u32 {
            stamp(&ctx, $kind);
            0
        }
    };
}

phase_probe!(
    fe_kernel_kexec,
    kp_kernel_kexec,
    "kernel_kexec",
    EventKind::KERNEL_KEXEC
);
phase_probe!(
    fe_dev_shutdown,
    kp_dev_shutdown,
    "device_shutdown",
    EventKind::DEVICE_SHUTDOWN_ENTER
);
phase_probe!(exit
    fx_dev_shutdown,
    kr_dev_shutdown,
    "device_shutdown",
    EventKind::DEVICE_SHUTDOWN_EXIT
);
phase_probe!(
    fe_migrate,
    kp_migrate,
    "migrate_to_reboot_cpu",
    EventKind::MIGRATE_TO_REBOOT_CPU
);
phase_probe!(exit
    fx_migrate,
    kr_migrate,
    "migrate_to_reboot_cpu",
    EventKind::MIGRATE_TO_REBOOT_CPU_EXIT
);
phase_probe!(
    fe_syscore,
    kp_syscore,
    "syscore_shutdown",
    EventKind::SYSCORE_SHUTDOWN
);
phase_probe!(exit
    fx_syscore,
    kr_syscore,
    "syscore_shutdown",
    EventKind::SYSCORE_SHUTDOWN_EXIT
);
phase_probe!(
    fe_mach_shutdown,
    kp_mach_shutdown,
    "machine_shutdown",
    EventKind::MACHINE_SHUTDOWN
);
phase_probe!(exit
    fx_mach_shutdown,
    kr_mach_shutdown,
    "machine_shutdown",
    EventKind::MACHINE_SHUTDOWN_EXIT
);
phase_probe!(
    fe_machine_kexec,
    kp_machine_kexec,
    "machine_kexec",
    EventKind::MACHINE_KEXEC
);

// ---- devices -------------------------------------------------------------

/// `pm_runtime_barrier(dev)`: `device_shutdown` calls it for every device
/// right before that device's shutdown callbacks (6.1 to 7.x), so its entry
/// marks the start of one device's shutdown. Only stamped inside
/// `device_shutdown`: it runs at other times too.
#[fentry(function = "pm_runtime_barrier")]
pub fn fe_device(ctx: FEntryContext) -> i32 {
    // Read through the helper, not `ctx.arg(0)`: the verifier types a direct
    // read as a `struct device` pointer, and refuses the variable-offset
    // arithmetic `device()` does on it; the helper's copy is a plain number.
    // SAFETY: the context of an fentry program is its u64 argument array;
    // the helper checks the read.
    let dev: u64 = unsafe { bpf_probe_read_kernel(ctx.as_ptr().cast::<u64>()) }.unwrap_or(0);
    device(&ctx, dev);
    0
}

#[kprobe]
pub fn kp_device(ctx: ProbeContext) -> u32 {
    let dev: u64 = ctx.arg(0).unwrap_or(0);
    device(&ctx, dev);
    0
}

#[inline(always)]
fn device<C: EbpfContext>(ctx: &C, dev: u64) {
    if state() & state::DEVICES == 0 || dev == 0 {
        return;
    }
    let Some(cfg) = CONFIG.get(0) else {
        return;
    };
    let cfg = *cfg;
    emit(ctx, EventKind::DEVICE_ENTER, dev, |name| {
        if cfg.flags & config::DEVICE_NAMES == 0 {
            return;
        }
        let (dev_part, rest) = name.split_at_mut(DEVICE_NAME_LEN);
        let (bus_part, drv_part) = rest.split_at_mut(BUS_NAME_LEN);
        read_str_at(dev + u64::from(cfg.dev_name_off), dev_part);
        let bus = read_ptr(dev + u64::from(cfg.dev_bus_off));
        if bus != 0 {
            read_str_at(bus + u64::from(cfg.bus_name_off), bus_part);
        }
        let drv = read_ptr(dev + u64::from(cfg.dev_driver_off));
        if drv != 0 {
            read_str_at(drv + u64::from(cfg.drv_name_off), drv_part);
        }
    });
}

/// Reads the kernel pointer stored at `addr` (0 when unreadable).
#[inline(always)]
fn read_ptr(addr: u64) -> u64 {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.unwrap_or(0)
}

/// Copies the C string whose pointer is stored at `addr` into `dst`.
#[inline(always)]
fn read_str_at(addr: u64, dst: &mut [u8]) {
    let s = read_ptr(addr);
    if s != 0 {
        // SAFETY: the helper bounds the copy by `dst` and fails cleanly on a
        // bad address; a truncated or missing name is acceptable.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(s as *const u8, dst) };
    }
}

// ---- reboot notifiers ----------------------------------------------------

/// Attached to every callback registered on `reboot_notifier_list` (found by
/// `walk_notifiers`); stamps only while the kexec reboot runs the chain.
#[kprobe]
pub fn kp_notifier(ctx: ProbeContext) -> u32 {
    if state() & (state::KEXEC | state::DEVICES | state::DEVICES_DONE) == state::KEXEC {
        // SAFETY: helper taking the program's own context.
        let ip = unsafe { bpf_get_func_ip(ctx.as_ptr()) };
        emit(&ctx, EventKind::NOTIFIER_ENTER, ip, comm);
    }
    0
}

#[kretprobe]
pub fn kr_notifier(ctx: RetProbeContext) -> u32 {
    if state() & (state::KEXEC | state::DEVICES | state::DEVICES_DONE) == state::KEXEC {
        emit(
            &ctx,
            EventKind::NOTIFIER_EXIT,
            bpf_get_current_pid_tgid(),
            comm,
        );
    }
    0
}

/// Never attached: user space runs it once with `BPF_PROG_TEST_RUN` to read
/// the callbacks on `reboot_notifier_list` (user space cannot read kernel
/// memory itself). `struct notifier_block` starts with `notifier_call` and
/// `next` (user space checks this against BTF before trusting the result).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn walk_notifiers(_ctx: RawTracePointContext) -> i32 {
    let Some(cfg) = CONFIG.get(0) else {
        return 0;
    };
    let mut nb = if cfg.reboot_list_head == 0 {
        0
    } else {
        read_ptr(cfg.reboot_list_head)
    };
    let mut n: u64 = 0;
    let mut i: u32 = 1;
    while i < NOTIFIER_WALK_SLOTS {
        if nb == 0 {
            break;
        }
        if let Some(slot) = NOTIFIER_WALK.get_ptr_mut(i) {
            // SAFETY: `slot` points at a value of the NOTIFIER_WALK array map.
            unsafe { *slot = read_ptr(nb) };
        }
        nb = read_ptr(nb + 8);
        n += 1;
        i += 1;
    }
    if let Some(count) = NOTIFIER_WALK.get_ptr_mut(0) {
        // SAFETY: as above; a non-zero `nb` here means the list was longer.
        unsafe { *count = if nb != 0 { n | 1 << 63 } else { n } };
    }
    0
}

// ---- systemd units stopping ---------------------------------------------

/// Cgroups (units) whose stop was stamped, keyed by the `struct cgroup`
/// address: one stop stamp per unit, and the removal stamped only for them.
#[map]
static UNITS: HashMap<u64, u64> = HashMap::with_max_entries(UNIT_MAX, 0);

const SIGCHLD: u64 = 17;
const SIGCONT: u64 = 18;

/// `signal_generate(sig, info, task, group, result)`, in the sender's
/// context: PID 1 (systemd, later systemd-shutdown) signalling a task starts
/// the stop of the task's cgroup. SIGCONT follows every SIGTERM systemd sends
/// and SIGCHLD is never a stop, so neither starts one.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn rtp_signal(ctx: RawTracePointContext) -> i32 {
    let Some(cfg) = CONFIG.get(0) else {
        return 0;
    };
    let want = config::UNIT_OFFSETS | config::UNITS_ARMED;
    if cfg.flags & want != want || bpf_get_current_pid_tgid() >> 32 != 1 {
        return 0;
    }
    let sig: u64 = ctx.arg(0);
    let task: u64 = ctx.arg(2);
    if sig == SIGCONT || sig == SIGCHLD || task == 0 {
        return 0;
    }
    let cset = read_ptr(task + u64::from(cfg.task_cgroups_off));
    if cset == 0 {
        return 0;
    }
    let cgrp = read_ptr(cset + u64::from(cfg.cset_dfl_cgrp_off));
    if cgrp == 0 {
        return 0;
    }
    if UNITS.get_ptr(cgrp).is_some() {
        return 0;
    }
    let cfg = *cfg;
    // BPF_NOEXIST: two CPUs racing on one cgroup stamp it once.
    if UNITS.insert(cgrp, sig, 1).is_err() {
        if UNITS.get_ptr(cgrp).is_none() && set_state(state::UNITS_FULL) {
            emit(&ctx, EventKind::UNIT_CAP, cgrp, |n| {
                cgroup_name(&cfg, cgrp, n)
            });
        }
        return 0;
    }
    emit(&ctx, EventKind::UNIT_STOP, cgrp, |n| {
        cgroup_name(&cfg, cgrp, n)
    });
    0
}

/// `cgroup_rmdir(cgrp, path)`: a stamped unit's cgroup is gone. The entry is
/// dropped so a cgroup allocated later at the same address counts anew.
#[raw_tracepoint(tracepoint = "cgroup_rmdir")]
pub fn rtp_cgroup_rmdir(ctx: RawTracePointContext) -> i32 {
    let Some(cfg) = CONFIG.get(0) else {
        return 0;
    };
    let cgrp: u64 = ctx.arg(0);
    if cgrp == 0 || UNITS.get_ptr(cgrp).is_none() {
        return 0;
    }
    let cfg = *cfg;
    emit(&ctx, EventKind::UNIT_GONE, cgrp, |n| {
        cgroup_name(&cfg, cgrp, n)
    });
    let _ = UNITS.remove(cgrp);
    0
}

/// The cgroup's own name (its kernfs node's), e.g. `foo.service`.
#[inline(always)]
fn cgroup_name(cfg: &ProbeConfig, cgrp: u64, name: &mut [u8; EVENT_NAME_LEN]) {
    let kn = read_ptr(cgrp + u64::from(cfg.cgroup_kn_off));
    if kn != 0 {
        read_str_at(kn + u64::from(cfg.kn_name_off), name);
    }
}

/// Sets `bit` in the state word; true when this call set it (false if it was
/// set already or the header is missing).
#[inline(always)]
fn set_state(bit: u64) -> bool {
    let Some(h) = header() else {
        return false;
    };
    // SAFETY: OFF_STATE is an 8-aligned offset inside the 4096-byte value.
    let st = unsafe { h.add(OFF_STATE).cast::<u64>() };
    matches!(cas_update(st, |v| v | bit), Some(prev) if prev & bit == 0)
}

// ---- recording -----------------------------------------------------------

/// The header page as bytes.
#[inline(always)]
fn header() -> Option<*mut u8> {
    EVENTS.get_ptr_mut(0).map(|p| p.cast::<u8>())
}

/// The probes' state bits (0 when the map is missing).
#[inline(always)]
fn state() -> u64 {
    match header() {
        // SAFETY: OFF_STATE is an 8-aligned offset inside the 4096-byte value.
        Some(h) => unsafe { core::ptr::read_volatile(h.add(OFF_STATE).cast::<u64>()) },
        None => 0,
    }
}

/// A phase stamp: `arg` is the current task's pid_tgid, `name` its comm.
/// Updates the state bits that gate the notifier and device probes; every
/// stamp after `kernel_kexec` requires it, so reboots and device callbacks
/// that are not a kexec leave no trace.
#[inline(always)]
fn stamp<C: EbpfContext>(ctx: &C, kind: EventKind) {
    let Some(h) = header() else {
        return;
    };
    // SAFETY: OFF_STATE is an 8-aligned offset inside the 4096-byte value;
    // only the rebooting task changes it (the kexec path runs on one task).
    let st = unsafe { h.add(OFF_STATE).cast::<u64>() };
    // SAFETY: as above.
    let cur = unsafe { core::ptr::read_volatile(st) };
    let next = match kind {
        EventKind::REBOOT_ENTER => cur,
        EventKind::KERNEL_KEXEC => cur | state::KEXEC,
        _ if cur & state::KEXEC == 0 => return,
        EventKind::DEVICE_SHUTDOWN_ENTER => cur | state::DEVICES,
        EventKind::DEVICE_SHUTDOWN_EXIT => (cur & !state::DEVICES) | state::DEVICES_DONE,
        _ => cur,
    };
    if next != cur {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(st, next) };
    }
    emit(ctx, kind, bpf_get_current_pid_tgid(), comm);
}

/// Fills a name with the current task's comm.
#[inline(always)]
fn comm(name: &mut [u8; EVENT_NAME_LEN]) {
    // A task without a comm (error) keeps an empty name rather than losing the stamp.
    let c = bpf_get_current_comm().unwrap_or_default();
    for (dst, src) in name.iter_mut().zip(c.iter()) {
        *dst = *src;
    }
}

/// Stores one event. A full record or a lost race drops it; nothing here may
/// disturb the reboot.
#[inline(always)]
fn emit<C: EbpfContext>(
    ctx: &C,
    kind: EventKind,
    arg: u64,
    fill: impl FnOnce(&mut [u8; EVENT_NAME_LEN]),
) {
    // Take the clock first so the stamp is as close to the probe hit as possible.
    // SAFETY: BPF helper without arguments, callable from any program type.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: as above.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(h) = header() else {
        return;
    };
    // SAFETY (the three casts below): 8-aligned offsets inside the header page.
    let claimed = unsafe { h.add(OFF_CLAIMED).cast::<u64>() };
    let sum = unsafe { h.add(OFF_EVENT_SUM).cast::<u64>() };
    let probe_ns = unsafe { h.add(OFF_PROBE_NS).cast::<u64>() };
    let Some(slot) = claim(claimed) else {
        return;
    };
    let page = 1 + (slot >> SLOT_SHIFT);
    let index = slot & SLOT_MASK;
    if let (Ok(page), Ok(slot32)) = (u32::try_from(page), u32::try_from(slot)) {
        if let Some(p) = EVENTS.get_ptr_mut(page) {
            let mut ev = Event {
                kind: kind.0,
                cpu,
                ts_ns,
                arg,
                name: [0; EVENT_NAME_LEN],
            };
            fill(&mut ev.name);
            let hash = event_hash(slot32, &ev);
            // SAFETY: `p` is a value of the EVENTS map (one EventPage); `index`
            // is masked below EVENTS_PER_PAGE; the slot was claimed by this
            // probe alone through the atomic counter.
            unsafe {
                let events = core::ptr::addr_of_mut!((*p).events).cast::<Event>();
                core::ptr::write_volatile(events.add(index as usize), ev);
            }
            add(sum, hash);
            if verbose() {
                info!(
                    ctx,
                    "fastkexec: event {} kind {} at {} ns on cpu {}", slot, kind.0, ts_ns, cpu
                );
            }
        }
    }
    // SAFETY: BPF helper without arguments.
    let done = unsafe { bpf_ktime_get_ns() };
    add(probe_ns, done.wrapping_sub(ts_ns));
    // The last probe of a reboot (machine_kexec's) leaves the moment the
    // kernel gets the CPU back, so its own cost is not charged to the
    // relocation. A plain store: by then the other CPUs are stopped.
    // SAFETY: 8-aligned offset inside the header page.
    unsafe { core::ptr::write_volatile(h.add(OFF_LAST_EXIT).cast::<u64>(), done) };
}

#[inline(always)]
fn verbose() -> bool {
    CONFIG
        .get(0)
        .is_some_and(|c| c.flags & config::VERBOSE != 0)
}

/// Compare-and-swap attempts before a probe gives up. Contention needs probes
/// on several CPUs hitting in the same instant; each lost race means another
/// CPU made progress, so a handful of attempts is plenty.
const CAS_ATTEMPTS: u32 = 8;

/// Atomically increments `*counter`, returning the value before the increment
/// (this probe's slot), or `None` if every attempt lost a race (the event is
/// then lost without being counted).
#[inline(always)]
fn claim(counter: *mut u64) -> Option<u64> {
    cas_update(counter, |v| v.wrapping_add(1))
}

/// Atomically adds `value` to `*target` (dropped after `CAS_ATTEMPTS` lost
/// races; for `event_sum` that makes the record read as torn, which is true).
#[inline(always)]
fn add(target: *mut u64, value: u64) {
    let _ = cas_update(target, |v| v.wrapping_add(value));
}

#[inline(always)]
fn cas_update(target: *mut u64, f: impl Fn(u64) -> u64) -> Option<u64> {
    // The first read is a plain one and only a guess (LLVM 22's BPF backend
    // cannot select an atomic load at the `generic` CPU level): the
    // compare-and-swap validates it, and a stale guess costs one more attempt.
    // SAFETY: `target` points at an 8-aligned u64 inside a map value, valid
    // while the program runs; every writer goes through the compare-and-swap.
    let mut seen = unsafe { core::ptr::read_volatile(target) };
    for _ in 0..CAS_ATTEMPTS {
        // SAFETY: as above.
        let (prev, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                target,
                seen,
                f(seen),
            )
        };
        if swapped {
            return Some(prev);
        }
        seen = prev;
    }
    None
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No unwinding or abort in BPF; the verifier rejects any reachable path here,
    // so this only satisfies the compiler.
    loop {}
}

/// GPL-compatible so the kernel allows GPL-only helpers (aya-log and
/// bpf_probe_read_kernel use some).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
