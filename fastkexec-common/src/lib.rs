//! `#[repr(C)]` types shared by the eBPF programs and user space.
//!
//! The eBPF programs write [`Event`] records into the `EVENTS` array map; user
//! space reads the same bytes back. Both sides are compiled from this crate, so
//! the layout only has to agree with itself, but it is also what a map pinned by
//! an older build holds: the tests pin size and alignment so a change is a
//! deliberate one.
#![no_std]

/// Bytes reserved for a name in an [`Event`] (task comm, device or driver name).
///
/// Longer names are truncated; the buffer is NUL-padded, not NUL-terminated
/// when full.
pub const EVENT_NAME_LEN: usize = 64;

/// Number of slots in the `EVENTS` array map.
///
/// A kexec reboot records a handful of phase stamps plus two per device shut
/// down; a few thousand slots cover large servers. Events beyond capacity are
/// counted (the index keeps growing) but not stored.
pub const EVENT_CAPACITY: u32 = 4096;

/// What an [`Event`] marks on the reboot timeline.
///
/// The kernel side stores the raw `u32`, so any value can come back from a map;
/// unknown values are kept, not rejected, and [`EventKind::name`] says `None`
/// for them.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKind(pub u32);

impl EventKind {
    /// Never written by a probe: array map slots start zeroed, so a zero kind
    /// marks a slot that was never filled.
    pub const EMPTY: Self = Self(0);
    /// `reboot(2)` entered (syscall tracepoint).
    pub const REBOOT_ENTER: Self = Self(1);
    /// `kernel_kexec` entered: the kernel starts the kexec reboot.
    pub const KERNEL_KEXEC: Self = Self(2);
    /// `kernel_restart_prepare` entered: reboot notifier chain runs.
    pub const KERNEL_RESTART_PREPARE: Self = Self(3);
    /// `device_shutdown` entered.
    pub const DEVICE_SHUTDOWN_ENTER: Self = Self(4);
    /// `device_shutdown` returned.
    pub const DEVICE_SHUTDOWN_EXIT: Self = Self(5);
    /// One device's shutdown began (name holds the device name).
    pub const DEVICE_ENTER: Self = Self(6);
    /// One device's shutdown finished (name holds the device name).
    pub const DEVICE_EXIT: Self = Self(7);
    /// `migrate_to_reboot_cpu` entered.
    pub const MIGRATE_TO_REBOOT_CPU: Self = Self(8);
    /// `syscore_shutdown` entered (on the kexec path on newer kernels only).
    pub const SYSCORE_SHUTDOWN: Self = Self(9);
    /// `machine_shutdown` entered.
    pub const MACHINE_SHUTDOWN: Self = Self(10);
    /// `machine_kexec` entered: the last stamp the old kernel can take.
    pub const MACHINE_KEXEC: Self = Self(11);

    /// Every kind a probe may write, in timeline order.
    pub const ALL: [Self; 11] = [
        Self::REBOOT_ENTER,
        Self::KERNEL_KEXEC,
        Self::KERNEL_RESTART_PREPARE,
        Self::DEVICE_SHUTDOWN_ENTER,
        Self::DEVICE_ENTER,
        Self::DEVICE_EXIT,
        Self::DEVICE_SHUTDOWN_EXIT,
        Self::MIGRATE_TO_REBOOT_CPU,
        Self::SYSCORE_SHUTDOWN,
        Self::MACHINE_SHUTDOWN,
        Self::MACHINE_KEXEC,
    ];

    /// Stable snake_case name for reports, `None` for [`EventKind::EMPTY`] and
    /// values this build does not know.
    pub const fn name(self) -> Option<&'static str> {
        match self {
            Self::REBOOT_ENTER => Some("reboot_enter"),
            Self::KERNEL_KEXEC => Some("kernel_kexec"),
            Self::KERNEL_RESTART_PREPARE => Some("kernel_restart_prepare"),
            Self::DEVICE_SHUTDOWN_ENTER => Some("device_shutdown_enter"),
            Self::DEVICE_SHUTDOWN_EXIT => Some("device_shutdown_exit"),
            Self::DEVICE_ENTER => Some("device_enter"),
            Self::DEVICE_EXIT => Some("device_exit"),
            Self::MIGRATE_TO_REBOOT_CPU => Some("migrate_to_reboot_cpu"),
            Self::SYSCORE_SHUTDOWN => Some("syscore_shutdown"),
            Self::MACHINE_SHUTDOWN => Some("machine_shutdown"),
            Self::MACHINE_KEXEC => Some("machine_kexec"),
            _ => None,
        }
    }
}

/// One stamp on the reboot timeline, as stored in the `EVENTS` map.
///
/// Fields are ordered so that `repr(C)` inserts no padding: every byte is
/// written by the probe, none is left to chance.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Raw [`EventKind`] value.
    pub kind: u32,
    /// CPU the probe ran on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at the probe.
    pub ts_ns: u64,
    /// Kind-specific; for phase stamps the current task's `pid_tgid`
    /// (`tgid << 32 | pid`).
    pub arg: u64,
    /// NUL-padded name (task comm, device name), see [`EVENT_NAME_LEN`].
    pub name: [u8; EVENT_NAME_LEN],
}

impl Event {
    /// An empty slot, as an array map holds it before any probe fired.
    pub const ZERO: Self = Self {
        kind: 0,
        cpu: 0,
        ts_ns: 0,
        arg: 0,
        name: [0; EVENT_NAME_LEN],
    };

    /// The kind, typed.
    pub const fn kind(&self) -> EventKind {
        EventKind(self.kind)
    }

    /// The name bytes up to the first NUL (all of them when the buffer is full).
    pub fn name_bytes(&self) -> &[u8] {
        let len = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(EVENT_NAME_LEN);
        self.name.get(..len).unwrap_or(&self.name)
    }
}

// SAFETY: `Event` is `repr(C)`, `Copy`, made only of integers and a byte array
// (any bit pattern is a valid value) and has no padding (checked by the
// `event_has_no_padding` test), which is what `aya::Pod` requires for reading
// and writing it as raw map bytes.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}

// SAFETY: `EventKind` is a `repr(transparent)` `u32`; every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for EventKind {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn event_layout_is_pinned() {
        assert_eq!(size_of::<Event>(), 88);
        assert_eq!(align_of::<Event>(), 8);
        assert_eq!(offset_of!(Event, kind), 0);
        assert_eq!(offset_of!(Event, cpu), 4);
        assert_eq!(offset_of!(Event, ts_ns), 8);
        assert_eq!(offset_of!(Event, arg), 16);
        assert_eq!(offset_of!(Event, name), 24);
    }

    #[test]
    fn event_has_no_padding() {
        let fields = size_of::<u32>() * 2 + size_of::<u64>() * 2 + EVENT_NAME_LEN;
        assert_eq!(size_of::<Event>(), fields);
    }

    #[test]
    fn event_kind_is_a_bare_u32() {
        assert_eq!(size_of::<EventKind>(), size_of::<u32>());
        assert_eq!(align_of::<EventKind>(), align_of::<u32>());
    }

    #[test]
    fn event_kinds_are_distinct_nonzero_and_named() {
        for (i, a) in EventKind::ALL.iter().enumerate() {
            assert_ne!(*a, EventKind::EMPTY);
            assert!(a.name().is_some(), "{a:?} has no name");
            for b in EventKind::ALL.iter().skip(i + 1) {
                assert_ne!(a, b);
                assert_ne!(a.name(), b.name());
            }
        }
        assert_eq!(EventKind::EMPTY.name(), None);
        assert_eq!(EventKind(u32::MAX).name(), None);
    }

    #[test]
    fn zeroed_slot_reads_as_empty() {
        assert_eq!(Event::ZERO.kind(), EventKind::EMPTY);
        assert_eq!(Event::ZERO.name_bytes(), b"");
    }

    #[test]
    fn name_bytes_stops_at_nul_or_buffer_end() {
        let mut e = Event::ZERO;
        e.name[..5].copy_from_slice(b"kexec");
        assert_eq!(e.name_bytes(), b"kexec");
        e.name = [b'x'; EVENT_NAME_LEN];
        assert_eq!(e.name_bytes().len(), EVENT_NAME_LEN);
    }

    #[test]
    fn every_named_kind_is_listed_in_all() {
        // Catches a kind added to `name` but forgotten in `ALL` (and vice versa via
        // the test above).
        for raw in 0..=255 {
            let kind = EventKind(raw);
            if kind.name().is_some() {
                assert!(EventKind::ALL.contains(&kind), "{kind:?} missing from ALL");
            }
        }
    }
}
