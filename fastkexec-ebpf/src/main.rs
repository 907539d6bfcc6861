//! fastkexec's eBPF programs: stamps on the kexec reboot path.
//!
//! Each probe appends one [`Event`] to the `EVENTS` array map. Slot numbers come
//! from an atomic counter in `EVENT_INDEX` so probes on several CPUs never share
//! a slot; the counter keeps counting past [`EVENT_CAPACITY`], which tells user
//! space how many events were dropped for lack of space.
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
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::{kprobe, map},
    maps::Array,
    programs::ProbeContext,
};
use aya_log_ebpf::info;
use fastkexec_common::{Event, EventKind, EVENT_CAPACITY, EVENT_NAME_LEN};

/// Mmapable so user space can hand its pages to the next kernel as
/// `setup_data` (DESIGN.md §3): the events survive the handoff.
#[map]
static EVENTS: Array<Event> = Array::with_max_entries(EVENT_CAPACITY, BPF_F_MMAPABLE);

/// Slot 0: number of events claimed so far (stored or dropped).
///
/// `u64` because the BPF target only has 64-bit atomics.
#[map]
static EVENT_INDEX: Array<u64> = Array::with_max_entries(1, 0);

/// `kernel_kexec()`: the kernel has accepted `reboot(LINUX_REBOOT_CMD_KEXEC)`.
#[kprobe]
pub fn kernel_kexec(ctx: ProbeContext) -> u32 {
    record(&ctx, EventKind::KERNEL_KEXEC)
}

/// `machine_kexec()`: the last function of the old kernel; it never returns.
#[kprobe]
pub fn machine_kexec(ctx: ProbeContext) -> u32 {
    record(&ctx, EventKind::MACHINE_KEXEC)
}

/// Stores a phase stamp: `arg` is the current task's `pid_tgid`, `name` its comm.
///
/// Always returns 0: a kprobe's return value is ignored by the kernel, and a
/// full map must not disturb the reboot.
#[inline(always)]
fn record(ctx: &ProbeContext, kind: EventKind) -> u32 {
    // Take the clock first so the stamp is as close to the probe hit as possible.
    // SAFETY: BPF helper without arguments, callable from any program type.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: BPF helper without arguments, callable from any program type.
    let cpu = unsafe { bpf_get_smp_processor_id() };

    let Some(counter) = EVENT_INDEX.get_ptr_mut(0) else {
        return 0;
    };
    let Some(claimed) = claim(counter) else {
        return 0;
    };
    let Ok(slot) = u32::try_from(claimed) else {
        return 0;
    };
    if slot >= EVENT_CAPACITY {
        return 0;
    }
    let Some(event) = EVENTS.get_ptr_mut(slot) else {
        return 0;
    };

    let mut name = [0u8; EVENT_NAME_LEN];
    // A task without a comm (error) keeps an empty name rather than losing the stamp.
    let comm = bpf_get_current_comm().unwrap_or_default();
    for (dst, src) in name.iter_mut().zip(comm.iter()) {
        *dst = *src;
    }

    let arg = bpf_get_current_pid_tgid();

    // SAFETY: `event` points at slot `slot` of the EVENTS array map, valid and
    // aligned for an `Event`; the slot was claimed by this probe alone through
    // the atomic counter above.
    unsafe {
        event.write(Event {
            kind: kind.0,
            cpu,
            ts_ns,
            arg,
            name,
        });
    }
    info!(
        ctx,
        "fastkexec: event {} kind {} at {} ns on cpu {}", slot, kind.0, ts_ns, cpu
    );
    0
}

/// Compare-and-swap attempts before a probe gives up on an event. Contention
/// needs probes on several CPUs hitting in the same instant; each lost race
/// means another CPU made progress, so a handful of attempts is plenty.
const CLAIM_ATTEMPTS: u32 = 8;

/// Atomically increments `*counter`, returning the value before the increment
/// (this probe's slot), or `None` if every attempt lost a race (the event is
/// then lost without being counted).
#[inline(always)]
fn claim(counter: *mut u64) -> Option<u64> {
    // The first read is a plain one and only a guess (LLVM 22's BPF backend
    // cannot select an atomic load at the `generic` CPU level): the
    // compare-and-swap validates it, and a stale guess costs one more attempt.
    // SAFETY: `counter` points at the 8-byte value of slot 0 of an array map
    // (map values are 8-aligned), valid while the program runs; every writer
    // goes through the compare-and-swap below.
    let mut seen = unsafe { core::ptr::read_volatile(counter) };
    for _ in 0..CLAIM_ATTEMPTS {
        // SAFETY: as above.
        let (prev, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                counter,
                seen,
                seen.wrapping_add(1),
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

/// GPL-compatible so the kernel allows GPL-only helpers (aya-log uses some).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
