//! `#[repr(C)]` types shared by the eBPF programs and user space.
//!
//! The probes write [`Event`] records into the `EVENTS` array map, whose
//! values are whole 4 KiB pages ([`EventPage`]; slot 0 is the
//! [`HeaderPage`]). The map is `BPF_F_MMAPABLE`: user space maps it, writes a
//! boot_params `setup_data` header at the start of every page, and chains the
//! pages into the next kernel's boot_params, so the record survives kexec
//! (DESIGN.md §3). Both sides are compiled from this crate, so the layout only
//! has to agree with itself — but the new kernel may run a different build of
//! fastkexec than the old one, so the tests pin every offset and a change is a
//! deliberate one (bump [`RECORD_VERSION`]).
#![no_std]

use core::mem::size_of;

/// Bytes of a page, of an `EVENTS` map value, and of one setup_data node.
pub const PAGE_SIZE: usize = 4096;

/// `struct setup_data { u64 next; u32 type; u32 len; u8 data[]; }`: the
/// header at the start of every record page.
pub const SETUP_DATA_HEADER_SIZE: usize = 16;

/// The boot_params setup_data type of every record page.
///
/// The kernel's own types are small integers (1 `E820_EXT` … 9 `RNG_SEED`,
/// 10 and up on newer kernels) and bit 31 is `SETUP_INDIRECT`; the kernel
/// reserves every node whatever its type and ignores types it does not know.
/// This is ASCII "FKXT" read as a big-endian number, far from both.
pub const SETUP_TYPE_TRACE: u32 = 0x464b_5854;

/// First word of the record's header page: "FKXTRC01".
pub const RECORD_MAGIC: u64 = u64::from_le_bytes(*b"FKXTRC01");
/// Layout version of the record; bumped whenever an offset here changes.
pub const RECORD_VERSION: u32 = 1;
/// Marks an event page ("FKXP").
pub const PAGE_MAGIC: u32 = u32::from_le_bytes(*b"FKXP");

/// Bytes reserved for a name in an [`Event`] (task comm, device names).
///
/// Longer names are truncated; the buffer is NUL-padded, not NUL-terminated
/// when full.
pub const EVENT_NAME_LEN: usize = 64;

/// Device events split [`Event::name`]: the device name first ...
pub const DEVICE_NAME_LEN: usize = 32;
/// ... then its bus name ...
pub const BUS_NAME_LEN: usize = 12;
/// ... then its driver name.
pub const DRIVER_NAME_LEN: usize = EVENT_NAME_LEN - DEVICE_NAME_LEN - BUS_NAME_LEN;

/// Where the events start in an [`EventPage`].
pub const PAGE_EVENTS_OFFSET: usize = 32;
/// Events held by one [`EventPage`]. A power of two, so the probes split an
/// event number into page and index with a shift and a mask, which every
/// kernel's verifier can bound (46 would fit, but older verifiers lose track
/// of a value after a modulo).
pub const EVENTS_PER_PAGE: usize = 32;
const _: () = assert!(PAGE_EVENTS_OFFSET + EVENTS_PER_PAGE * size_of::<Event>() <= PAGE_SIZE);
const _: () = assert!(EVENTS_PER_PAGE.is_power_of_two());

/// Event pages when user space does not size the map itself (the map is
/// resized at load time from the number of devices).
pub const DEFAULT_EVENT_PAGES: u32 = 16;
/// Most event pages a record may have (a sanity bound for readers too).
pub const MAX_EVENT_PAGES: u32 = 1024;

/// Reboot notifier callbacks whose symbol the header page can hold.
pub const NOTIFIER_MAX: usize = 16;
/// Bytes for one notifier callback's symbol name.
pub const NOTIFIER_NAME_LEN: usize = 56;

/// `LINUX_REBOOT_CMD_KEXEC`: the `cmd` of `reboot(2)` that starts a kexec.
pub const LINUX_REBOOT_CMD_KEXEC: u32 = 0x4558_4543;

/// Bits of [`HeaderPage::state`], kept by the probes.
pub mod state {
    /// `kernel_kexec` was entered: the kexec reboot is under way.
    pub const KEXEC: u64 = 1;
    /// Inside `device_shutdown`: per-device stamps are wanted.
    pub const DEVICES: u64 = 2;
    /// `device_shutdown` returned: no more notifier or device stamps.
    pub const DEVICES_DONE: u64 = 4;
    /// The unit table was full once: later units were not stamped (the
    /// [`EventKind::UNIT_CAP`](super::EventKind::UNIT_CAP) event marks when).
    pub const UNITS_FULL: u64 = 8;
}

/// Most cgroups (systemd units) the unit probes follow in one reboot: sizes the
/// probes' table and the record's room for unit events (two per unit), so a
/// machine with thousands of scopes cannot crowd the kernel's own stamps out.
pub const UNIT_MAX: u32 = 512;

/// Bits of [`HeaderPage::flags`], set by user space.
pub mod flags {
    /// `request_tsc` holds the moment `fastkexec trace --exec` asked for the reboot.
    pub const REQUEST_STAMPED: u32 = 1;
    /// The tracer followed a reboot started by something else.
    pub const FOLLOW: u32 = 2;
    /// Device names came from BTF offsets (else device events carry no names).
    pub const DEVICE_NAMES: u32 = 4;
    /// Bits 3..=4: how the next kernel was loaded, one of the `LOAD_*` values.
    ///
    /// Added without a [`RECORD_VERSION`](super::RECORD_VERSION) bump: `flags`
    /// is covered by the header checksum, readers have always ignored bits
    /// they do not know, and records written before these bits existed read
    /// as [`LOAD_UNKNOWN`] (the header page's unused tail could not take a new
    /// field: readers refuse a record whose tail is not zero).
    pub const LOAD_MASK: u32 = 3 << 3;
    /// The writer did not say (an older fastkexec).
    pub const LOAD_UNKNOWN: u32 = 0;
    /// `load --mode uncompressed`.
    pub const LOAD_UNCOMPRESSED: u32 = 1 << 3;
    /// `load --mode staged`.
    pub const LOAD_STAGED: u32 = 2 << 3;
}

/// What an [`Event`] marks on the reboot timeline.
///
/// The kernel side stores the raw `u32`, so any value can come back from a map;
/// unknown values are kept, not rejected, and [`EventKind::name`] says `None`
/// for them.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKind(pub u32);

impl EventKind {
    /// Never written by a probe: map slots start zeroed, so a zero kind marks
    /// a slot that was never filled.
    pub const EMPTY: Self = Self(0);
    /// `reboot(LINUX_REBOOT_CMD_KEXEC)` entered; `arg` = pid_tgid, name = comm.
    pub const REBOOT_ENTER: Self = Self(1);
    /// `kernel_kexec` entered: the kernel starts the kexec reboot.
    pub const KERNEL_KEXEC: Self = Self(2);
    /// `kernel_restart_prepare` entered (reserved; not probed by this build).
    pub const KERNEL_RESTART_PREPARE: Self = Self(3);
    /// `device_shutdown` entered.
    pub const DEVICE_SHUTDOWN_ENTER: Self = Self(4);
    /// `device_shutdown` returned.
    pub const DEVICE_SHUTDOWN_EXIT: Self = Self(5);
    /// One device's shutdown began: `arg` = the `struct device` address, name =
    /// device | bus | driver (see [`Event::device_name`]).
    pub const DEVICE_ENTER: Self = Self(6);
    /// One device's shutdown finished (kernels with a per-device function only).
    pub const DEVICE_EXIT: Self = Self(7);
    /// `migrate_to_reboot_cpu` entered.
    pub const MIGRATE_TO_REBOOT_CPU: Self = Self(8);
    /// `syscore_shutdown` entered (on the kexec path on newer kernels only).
    pub const SYSCORE_SHUTDOWN: Self = Self(9);
    /// `machine_shutdown` entered.
    pub const MACHINE_SHUTDOWN: Self = Self(10);
    /// `machine_kexec` entered: the last stamp the old kernel can take.
    pub const MACHINE_KEXEC: Self = Self(11);
    /// A reboot notifier callback entered; `arg` = its address.
    pub const NOTIFIER_ENTER: Self = Self(12);
    /// A reboot notifier callback returned; `arg` = pid_tgid.
    pub const NOTIFIER_EXIT: Self = Self(13);
    /// `migrate_to_reboot_cpu` returned.
    pub const MIGRATE_TO_REBOOT_CPU_EXIT: Self = Self(14);
    /// `syscore_shutdown` returned.
    pub const SYSCORE_SHUTDOWN_EXIT: Self = Self(15);
    /// `machine_shutdown` returned.
    pub const MACHINE_SHUTDOWN_EXIT: Self = Self(16);
    /// PID 1 sent the first signal to a task of a cgroup (a systemd unit's stop
    /// began): `arg` = the `struct cgroup` address, name = the cgroup's name
    /// (`foo.service`). One per cgroup.
    pub const UNIT_STOP: Self = Self(17);
    /// A cgroup seen by [`Self::UNIT_STOP`] was removed (`cgroup_rmdir`): the
    /// unit's last process is gone. `arg` and name as for `UNIT_STOP`.
    pub const UNIT_GONE: Self = Self(18);
    /// The unit table was full: this and later units are not stamped; `arg` =
    /// the cgroup address, name = its name.
    pub const UNIT_CAP: Self = Self(19);

    /// Every kind a probe may write, in timeline order.
    pub const ALL: [Self; 19] = [
        Self::UNIT_STOP,
        Self::UNIT_CAP,
        Self::UNIT_GONE,
        Self::REBOOT_ENTER,
        Self::KERNEL_KEXEC,
        Self::KERNEL_RESTART_PREPARE,
        Self::NOTIFIER_ENTER,
        Self::NOTIFIER_EXIT,
        Self::DEVICE_SHUTDOWN_ENTER,
        Self::DEVICE_ENTER,
        Self::DEVICE_EXIT,
        Self::DEVICE_SHUTDOWN_EXIT,
        Self::MIGRATE_TO_REBOOT_CPU,
        Self::MIGRATE_TO_REBOOT_CPU_EXIT,
        Self::SYSCORE_SHUTDOWN,
        Self::SYSCORE_SHUTDOWN_EXIT,
        Self::MACHINE_SHUTDOWN,
        Self::MACHINE_SHUTDOWN_EXIT,
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
            Self::NOTIFIER_ENTER => Some("notifier_enter"),
            Self::NOTIFIER_EXIT => Some("notifier_exit"),
            Self::MIGRATE_TO_REBOOT_CPU_EXIT => Some("migrate_to_reboot_cpu_exit"),
            Self::SYSCORE_SHUTDOWN_EXIT => Some("syscore_shutdown_exit"),
            Self::MACHINE_SHUTDOWN_EXIT => Some("machine_shutdown_exit"),
            Self::UNIT_STOP => Some("unit_stop"),
            Self::UNIT_GONE => Some("unit_gone"),
            Self::UNIT_CAP => Some("unit_cap"),
            _ => None,
        }
    }

    /// Bit of this kind in [`HeaderPage::attached`] (0 for kinds ≥ 64).
    pub const fn bit(self) -> u64 {
        if self.0 < 64 {
            1 << self.0
        } else {
            0
        }
    }
}

/// One stamp on the reboot timeline, as stored in an [`EventPage`].
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
    /// Kind-specific, see [`EventKind`].
    pub arg: u64,
    /// NUL-padded name (task comm; for devices see [`Event::device_name`]).
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
        until_nul(&self.name)
    }

    /// Device events: the device name (`dev_name()`).
    pub fn device_name(&self) -> &[u8] {
        until_nul(self.name.get(..DEVICE_NAME_LEN).unwrap_or(&[]))
    }

    /// Device events: the device's bus (`dev->bus->name`), empty if none.
    pub fn bus_name(&self) -> &[u8] {
        until_nul(
            self.name
                .get(DEVICE_NAME_LEN..DEVICE_NAME_LEN + BUS_NAME_LEN)
                .unwrap_or(&[]),
        )
    }

    /// Device events: the bound driver (`dev->driver->name`), empty if none.
    pub fn driver_name(&self) -> &[u8] {
        until_nul(
            self.name
                .get(DEVICE_NAME_LEN + BUS_NAME_LEN..)
                .unwrap_or(&[]),
        )
    }
}

fn until_nul(b: &[u8]) -> &[u8] {
    let len = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    b.get(..len).unwrap_or(b)
}

/// One page of events (slots 1.. of the `EVENTS` map).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventPage {
    /// setup_data `next`: physical address of the next page, 0 on the last.
    pub sd_next: u64,
    /// setup_data `type`: [`SETUP_TYPE_TRACE`].
    pub sd_type: u32,
    /// setup_data `len`: `PAGE_SIZE - SETUP_DATA_HEADER_SIZE`.
    pub sd_len: u32,
    /// [`PAGE_MAGIC`].
    pub magic: u32,
    /// This page's index in the record (the header page is 0).
    pub index: u32,
    pub reserved: u64,
    pub events: [Event; EVENTS_PER_PAGE],
    pub tail: [u8; PAGE_SIZE - PAGE_EVENTS_OFFSET - EVENTS_PER_PAGE * size_of::<Event>()],
}

/// A reboot notifier callback the tracer attached to: its address in the old
/// kernel and its symbol (the new kernel cannot resolve old addresses).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotifierSym {
    pub addr: u64,
    pub name: [u8; NOTIFIER_NAME_LEN],
}

/// Byte offset where the header checksum's coverage starts (after the
/// setup_data header, whose `next` is a physical address).
pub const HEADER_SUM_FROM: usize = SETUP_DATA_HEADER_SIZE;
/// Byte offset of [`HeaderPage::header_sum`]; the checksum covers
/// `HEADER_SUM_FROM..HEADER_SUM_AT`.
pub const HEADER_SUM_AT: usize = 1224;
/// Byte offset of [`HeaderPage::claimed`] (probe-written fields start here).
pub const OFF_CLAIMED: usize = 1232;
/// Byte offset of [`HeaderPage::event_sum`].
pub const OFF_EVENT_SUM: usize = 1240;
/// Byte offset of [`HeaderPage::probe_ns`].
pub const OFF_PROBE_NS: usize = 1248;
/// Byte offset of [`HeaderPage::state`].
pub const OFF_STATE: usize = 1256;
/// Byte offset of the purgatory's 32-byte TSC record copy.
pub const OFF_PURGATORY: usize = 1264;
/// Bytes of the purgatory TSC record ("FKXTSC01", entry, exit, verified).
pub const PURGATORY_RECORD_SIZE: usize = 32;
/// Byte offset of the staged trampoline's 32-byte TSC record copy.
pub const OFF_TRAMPOLINE: usize = OFF_PURGATORY + PURGATORY_RECORD_SIZE;
/// Bytes of the trampoline TSC record ("FKXTRM01", entry, exit, check result).
pub const TRAMPOLINE_RECORD_SIZE: usize = 32;
/// Byte offset of [`HeaderPage::last_exit_ns`].
pub const OFF_LAST_EXIT: usize = OFF_TRAMPOLINE + TRAMPOLINE_RECORD_SIZE;
const HEADER_USED: usize = OFF_LAST_EXIT + 8;

/// Slot 0 of the `EVENTS` map: what the new kernel needs to trust and place
/// the events on one clock.
///
/// Written by user space before the reboot (covered by `header_sum`), except
/// the probe counters (`claimed`..`state`, `last_exit_ns`) and the purgatory's
/// and trampoline's TSC records.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HeaderPage {
    pub sd_next: u64,
    pub sd_type: u32,
    pub sd_len: u32,
    /// [`RECORD_MAGIC`].
    pub magic: u64,
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// Length of the record in pages, this one included.
    pub page_count: u32,
    /// `size_of::<Event>()` of the writer.
    pub event_size: u32,
    /// [`EVENTS_PER_PAGE`] of the writer.
    pub events_per_page: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// Entries of `notifiers` in use.
    pub notifier_count: u32,
    /// The old kernel's `/proc/sys/kernel/random/boot_id`, as 16 bytes.
    pub boot_id: [u8; 16],
    /// The old kernel's release (`uname -r`), NUL-padded.
    pub kernel_release: [u8; 64],
    /// [`EventKind::bit`] of every kind whose probe attached.
    pub attached: u64,
    /// [`EventKind::bit`] of the kinds attached as fentry/fexit (else kprobe).
    pub fentry: u64,
    /// TSC when the reboot was requested (valid with `flags::REQUEST_STAMPED`).
    pub request_tsc: u64,
    /// CLOCK_MONOTONIC ns at the same moment.
    pub request_mono_ns: u64,
    /// Two points of the old kernel's CLOCK_MONOTONIC → TSC fit.
    pub calib_tsc_a: u64,
    pub calib_mono_a: u64,
    pub calib_tsc_b: u64,
    pub calib_mono_b: u64,
    /// Worst residual of the fit, ns.
    pub calib_err_ns: u64,
    pub notifiers: [NotifierSym; NOTIFIER_MAX],
    /// Checksum of bytes `HEADER_SUM_FROM..HEADER_SUM_AT` (user space's).
    pub header_sum: u64,
    /// Events claimed by the probes (stored, or dropped once the pages are full).
    pub claimed: u64,
    /// Wrapping sum of [`event_hash`] of every stored event.
    pub event_sum: u64,
    /// Time spent inside the probes (their own measurement), ns.
    pub probe_ns: u64,
    /// [`state`] bits.
    pub state: u64,
    /// The purgatory's TSC record, copied here right before it jumps.
    pub purgatory: [u64; 4],
    /// The staged trampoline's TSC record (staged loads only), copied here
    /// right before it jumps to the purgatory. Zero otherwise: the tail was
    /// zero before this field existed, so the record version is unchanged.
    pub trampoline: [u64; 4],
    /// The clock (as `ts_ns`) when the latest probe returned to the kernel.
    /// The last probe of a reboot is `machine_kexec`'s: this is where the
    /// kernel's own relocation work starts, after the tracer's.
    pub last_exit_ns: u64,
    pub tail: [u8; PAGE_SIZE - HEADER_USED],
}

/// The 64-bit finalizer of MurmurHash3: every input bit affects every output bit.
#[inline(always)]
pub const fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Seed of [`event_hash`] ("FKXEVENT").
pub const EVENT_HASH_SEED: u64 = u64::from_le_bytes(*b"FKXEVENT");

/// Hash of one stored event and its slot number: a probe adds it to
/// [`HeaderPage::event_sum`] when it stores the event, the reader recomputes
/// the sum. Addition commutes, so probes on several CPUs need no ordering; the
/// slot is mixed in so an event found in another slot does not pass.
#[inline(always)]
pub fn event_hash(slot: u32, e: &Event) -> u64 {
    let mut h = fmix64(EVENT_HASH_SEED ^ slot as u64);
    h = fmix64(h ^ (e.kind as u64 | (e.cpu as u64) << 32));
    h = fmix64(h ^ e.ts_ns);
    h = fmix64(h ^ e.arg);
    let mut i = 0;
    while i < EVENT_NAME_LEN / 8 {
        let b = i * 8;
        let w = e.name[b] as u64
            | (e.name[b + 1] as u64) << 8
            | (e.name[b + 2] as u64) << 16
            | (e.name[b + 3] as u64) << 24
            | (e.name[b + 4] as u64) << 32
            | (e.name[b + 5] as u64) << 40
            | (e.name[b + 6] as u64) << 48
            | (e.name[b + 7] as u64) << 56;
        h = fmix64(h ^ w);
        i += 1;
    }
    h
}

/// Configuration user space writes into the `CONFIG` map before attaching.
///
/// The `struct device` offsets come from the running kernel's BTF and are
/// used only with [`config::DEVICE_NAMES`] (0 is a valid offset: `kobj` is
/// the first member of `struct device`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// [`config`] bits.
    pub flags: u32,
    /// `offsetof(struct device, kobj) + offsetof(struct kobject, name)`.
    pub dev_name_off: u32,
    /// `offsetof(struct device, driver)`.
    pub dev_driver_off: u32,
    /// `offsetof(struct device, bus)`.
    pub dev_bus_off: u32,
    /// `offsetof(struct device_driver, name)`.
    pub drv_name_off: u32,
    /// `offsetof(struct bus_type, name)`.
    pub bus_name_off: u32,
    /// Kernel address of `reboot_notifier_list.head` (0 = unknown).
    pub reboot_list_head: u64,
    /// `offsetof(struct task_struct, cgroups)` (with [`config::UNIT_OFFSETS`]).
    pub task_cgroups_off: u32,
    /// `offsetof(struct css_set, dfl_cgrp)`.
    pub cset_dfl_cgrp_off: u32,
    /// `offsetof(struct cgroup, kn)`.
    pub cgroup_kn_off: u32,
    /// `offsetof(struct kernfs_node, name)`.
    pub kn_name_off: u32,
}

/// Bits of [`ProbeConfig::flags`].
pub mod config {
    /// Log every stamp through aya-log (`fastkexec -v trace`).
    pub const VERBOSE: u32 = 1;
    /// The `struct device` offsets are known: read device names.
    pub const DEVICE_NAMES: u32 = 2;
    /// The task → cgroup → name offsets are known.
    pub const UNIT_OFFSETS: u32 = 4;
    /// Stamp units now: set when the shutdown being traced begins (the request
    /// of `trace --exec`, or follow mode's attach), so PID 1's everyday
    /// signals (a `systemctl restart`) leave no trace before it.
    pub const UNITS_ARMED: u32 = 8;
}

/// Entries of the `NOTIFIER_WALK` map: slot 0 = count, then callback addresses.
pub const NOTIFIER_WALK_SLOTS: u32 = 1 + 2 * NOTIFIER_MAX as u32;

// SAFETY (all impls below): each type is `repr(C)`, `Copy`, made only of
// integers and byte arrays (any bit pattern is a valid value) and has no
// padding (checked by the tests), which is what `aya::Pod` requires for
// reading and writing it as raw map bytes.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for EventKind {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for EventPage {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProbeConfig {}

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
    fn pages_are_exactly_one_page() {
        assert_eq!(size_of::<EventPage>(), PAGE_SIZE);
        assert_eq!(size_of::<HeaderPage>(), PAGE_SIZE);
        assert_eq!(align_of::<EventPage>(), 8);
        assert_eq!(align_of::<HeaderPage>(), 8);
        assert_eq!(EVENTS_PER_PAGE, 32);
        assert_eq!(offset_of!(EventPage, events), PAGE_EVENTS_OFFSET);
        assert_eq!(offset_of!(EventPage, magic), SETUP_DATA_HEADER_SIZE);
    }

    #[test]
    fn header_layout_is_pinned() {
        assert_eq!(offset_of!(HeaderPage, sd_type), 8);
        assert_eq!(offset_of!(HeaderPage, magic), 16);
        assert_eq!(offset_of!(HeaderPage, version), 24);
        assert_eq!(offset_of!(HeaderPage, page_count), 28);
        assert_eq!(offset_of!(HeaderPage, flags), 40);
        assert_eq!(offset_of!(HeaderPage, boot_id), 48);
        assert_eq!(offset_of!(HeaderPage, kernel_release), 64);
        assert_eq!(offset_of!(HeaderPage, attached), 128);
        assert_eq!(offset_of!(HeaderPage, request_tsc), 144);
        assert_eq!(offset_of!(HeaderPage, calib_tsc_a), 160);
        assert_eq!(offset_of!(HeaderPage, calib_err_ns), 192);
        assert_eq!(offset_of!(HeaderPage, notifiers), 200);
        assert_eq!(offset_of!(HeaderPage, header_sum), HEADER_SUM_AT);
        assert_eq!(offset_of!(HeaderPage, claimed), OFF_CLAIMED);
        assert_eq!(offset_of!(HeaderPage, event_sum), OFF_EVENT_SUM);
        assert_eq!(offset_of!(HeaderPage, probe_ns), OFF_PROBE_NS);
        assert_eq!(offset_of!(HeaderPage, state), OFF_STATE);
        assert_eq!(offset_of!(HeaderPage, purgatory), OFF_PURGATORY);
        assert_eq!(offset_of!(HeaderPage, trampoline), OFF_TRAMPOLINE);
        assert_eq!(offset_of!(HeaderPage, last_exit_ns), OFF_LAST_EXIT);
        assert_eq!(size_of::<NotifierSym>(), 64);
        // The purgatory writes 32 bytes at an 8-aligned address.
        assert_eq!(OFF_PURGATORY % 8, 0);
    }

    #[test]
    fn flag_bits_are_pinned_and_disjoint() {
        use flags::*;
        assert_eq!(
            [REQUEST_STAMPED, FOLLOW, DEVICE_NAMES, LOAD_MASK],
            [1, 2, 4, 0x18]
        );
        assert_eq!((LOAD_UNCOMPRESSED, LOAD_STAGED), (0x08, 0x10));
        assert_eq!(LOAD_MASK & (REQUEST_STAMPED | FOLLOW | DEVICE_NAMES), 0);
        for v in [LOAD_UNKNOWN, LOAD_UNCOMPRESSED, LOAD_STAGED] {
            assert_eq!(v & !LOAD_MASK, 0);
        }
    }

    #[test]
    fn probe_config_has_no_padding() {
        assert_eq!(size_of::<ProbeConfig>(), 6 * 4 + 8 + 4 * 4);
    }

    #[test]
    fn device_name_fields_split_the_name() {
        let mut e = Event::ZERO;
        e.name[..5].copy_from_slice(b"vda12");
        e.name[DEVICE_NAME_LEN..DEVICE_NAME_LEN + 6].copy_from_slice(b"virtio");
        e.name[DEVICE_NAME_LEN + BUS_NAME_LEN..DEVICE_NAME_LEN + BUS_NAME_LEN + 10]
            .copy_from_slice(b"virtio_blk");
        assert_eq!(e.device_name(), b"vda12");
        assert_eq!(e.bus_name(), b"virtio");
        assert_eq!(e.driver_name(), b"virtio_blk");
        // A full device name does not run into the bus field.
        e.name[..DEVICE_NAME_LEN].fill(b'd');
        assert_eq!(e.device_name().len(), DEVICE_NAME_LEN);
        assert_eq!(e.bus_name(), b"virtio");
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
            assert_ne!(a.bit(), 0);
            for b in EventKind::ALL.iter().skip(i + 1) {
                assert_ne!(a, b);
                assert_ne!(a.name(), b.name());
            }
        }
        assert_eq!(EventKind::EMPTY.name(), None);
        assert_eq!(EventKind(u32::MAX).name(), None);
        assert_eq!(EventKind(64).bit(), 0);
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
        for raw in 0..=255 {
            let kind = EventKind(raw);
            if kind.name().is_some() {
                assert!(EventKind::ALL.contains(&kind), "{kind:?} missing from ALL");
            }
        }
    }

    #[test]
    fn event_hash_sees_every_byte_and_the_slot() {
        let mut e = Event::ZERO;
        e.kind = EventKind::DEVICE_ENTER.0;
        e.ts_ns = 123_456_789;
        e.name[..4].copy_from_slice(b"vda1");
        let h = event_hash(7, &e);
        assert_ne!(h, event_hash(8, &e), "slot must matter");
        // Flip each bit of the event: the hash changes every time.
        let bytes: [u8; 88] = {
            let mut b = [0u8; 88];
            b[0..4].copy_from_slice(&e.kind.to_le_bytes());
            b[4..8].copy_from_slice(&e.cpu.to_le_bytes());
            b[8..16].copy_from_slice(&e.ts_ns.to_le_bytes());
            b[16..24].copy_from_slice(&e.arg.to_le_bytes());
            b[24..].copy_from_slice(&e.name);
            b
        };
        for byte in 0..88 {
            for bit in 0..8 {
                let mut b = bytes;
                b[byte] ^= 1 << bit;
                let mut f = Event::ZERO;
                f.kind = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                f.cpu = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                f.ts_ns =
                    u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
                f.arg =
                    u64::from_le_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]);
                f.name.copy_from_slice(&b[24..]);
                assert_ne!(event_hash(7, &f), h, "byte {byte} bit {bit} not covered");
            }
        }
    }

    #[test]
    fn fmix64_is_the_murmur3_finalizer() {
        // Reference values of MurmurHash3's fmix64.
        assert_eq!(fmix64(0), 0);
        assert_eq!(fmix64(1), 0xb456_bcfc_34c2_cb2c);
        assert_eq!(fmix64(0x0123_4567_89ab_cdef), 0x87cb_fbfe_8902_2cea);
    }
}
