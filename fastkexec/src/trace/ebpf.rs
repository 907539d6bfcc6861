//! The eBPF object built from `fastkexec-ebpf` by build.rs, and the names of
//! what it holds.
//!
//! The names are the contract with `fastkexec-ebpf/src/main.rs` (program names
//! are its function names, map names its statics); the tests check them
//! against the embedded object so a rename on either side fails here.

pub use crate::record::probes::{ProbePoint, DEVICE_PROBE, PHASE_PROBES, REBOOT_FALLBACK};

/// The syscall tracepoint program (`syscalls/sys_enter_reboot`).
pub const PROG_TP_REBOOT: &str = "tp_reboot";

/// Kprobe attached to every reboot notifier callback.
pub const PROG_NOTIFIER_ENTER: &str = "kp_notifier";
/// Kretprobe attached to every reboot notifier callback.
pub const PROG_NOTIFIER_EXIT: &str = "kr_notifier";
/// Raw tracepoint program, never attached: run once to walk the notifier list.
pub const PROG_WALK_NOTIFIERS: &str = "walk_notifiers";

/// Raw tracepoint `signal_generate`: PID 1 signalling a unit's task.
pub const PROG_UNIT_SIGNAL: &str = "rtp_signal";
/// Raw tracepoint `cgroup_rmdir`: a unit's cgroup removed.
pub const PROG_UNIT_RMDIR: &str = "rtp_cgroup_rmdir";
/// `HashMap<u64, u64>`: the cgroups whose stop was stamped.
pub const MAP_UNITS: &str = "UNITS";

/// `Array<EventPage>`, `BPF_F_MMAPABLE`: the trace record (slot 0 = header page).
pub const MAP_EVENTS: &str = "EVENTS";
/// `Array<ProbeConfig>` with one slot.
pub const MAP_CONFIG: &str = "CONFIG";
/// `Array<u64>`: the notifier walk's result.
pub const MAP_NOTIFIER_WALK: &str = "NOTIFIER_WALK";
/// Ring buffer aya-log-ebpf writes log records to (drained by aya-log).
pub const MAP_LOGS: &str = "AYA_LOGS";

/// The eBPF ELF object, 8-byte aligned as aya's loader expects.
///
/// `None` when this build carries no probes: the `probes` feature was off, or
/// `AYA_BUILD_SKIP=1` made build.rs embed an empty placeholder.
#[cfg(feature = "probes")]
pub fn object() -> Option<&'static [u8]> {
    let object: &'static [u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastkexec-probes"));
    (!object.is_empty()).then_some(object)
}

/// See the `probes` feature: this build has no eBPF object.
#[cfg(not(feature = "probes"))]
pub fn object() -> Option<&'static [u8]> {
    None
}

/// What to tell a user whose binary has no probes.
pub const NO_PROBES: &str = "this fastkexec binary was built without its eBPF probes \
     (the `probes` feature was off, or AYA_BUILD_SKIP=1 was set): rebuild it with \
     `cargo build --release -p fastkexec` after `cargo xtask setup` has installed bpf-linker";

#[cfg(all(test, feature = "probes"))]
mod tests {
    use super::*;
    use aya_obj::{
        generated::{bpf_map_type, BPF_F_MMAPABLE},
        Object, ProgramSection,
    };
    use fastkexec_common::{EventPage, ProbeConfig, DEFAULT_EVENT_PAGES, NOTIFIER_WALK_SLOTS};

    fn embedded() -> &'static [u8] {
        object().expect("the test build embeds the probes (is AYA_BUILD_SKIP set?)")
    }

    fn parsed() -> Object {
        match Object::parse(embedded()) {
            Ok(obj) => obj,
            Err(e) => panic!(
                "embedded eBPF object does not parse ({} bytes): {e}",
                embedded().len()
            ),
        }
    }

    fn section(obj: &Object, prog: &str) -> ProgramSection {
        match obj.programs.get(prog) {
            Some(p) => p.section.clone(),
            None => panic!("program {prog} missing; have {:?}", obj.programs.keys()),
        }
    }

    #[test]
    fn object_is_an_aligned_bpf_elf() {
        let obj = embedded();
        assert_eq!(obj.as_ptr().align_offset(8), 0);
        assert_eq!(obj.get(..4), Some(&b"\x7fELF"[..]));
        // e_machine at offset 18, little-endian: EM_BPF = 247.
        assert_eq!(obj.get(18..20), Some(&247u16.to_le_bytes()[..]));
    }

    #[test]
    fn every_probe_point_has_both_flavours() {
        let obj = parsed();
        for p in PHASE_PROBES.iter().chain([&REBOOT_FALLBACK, &DEVICE_PROBE]) {
            match (section(&obj, p.fentry), p.exit) {
                (ProgramSection::FEntry { .. }, false) | (ProgramSection::FExit { .. }, true) => {}
                (s, _) => panic!("{} is {s:?}", p.fentry),
            }
            match (section(&obj, p.kprobe), p.exit) {
                (ProgramSection::KProbe, false) | (ProgramSection::KRetProbe, true) => {}
                (s, _) => panic!("{} is {s:?}", p.kprobe),
            }
        }
        assert!(matches!(
            section(&obj, PROG_TP_REBOOT),
            ProgramSection::TracePoint
        ));
        assert!(matches!(
            section(&obj, PROG_NOTIFIER_ENTER),
            ProgramSection::KProbe
        ));
        assert!(matches!(
            section(&obj, PROG_NOTIFIER_EXIT),
            ProgramSection::KRetProbe
        ));
        for p in [PROG_WALK_NOTIFIERS, PROG_UNIT_SIGNAL, PROG_UNIT_RMDIR] {
            assert!(
                matches!(section(&obj, p), ProgramSection::RawTracePoint),
                "{p}"
            );
        }
    }

    #[test]
    fn probe_kinds_are_distinct_and_in_timeline_order() {
        let order: Vec<_> = fastkexec_common::EventKind::ALL
            .iter()
            .position(|k| *k == PHASE_PROBES[0].kind)
            .into_iter()
            .collect();
        assert_eq!(order.len(), 1);
        let pos = |k| {
            fastkexec_common::EventKind::ALL
                .iter()
                .position(|x| *x == k)
                .unwrap()
        };
        for w in PHASE_PROBES.windows(2) {
            assert!(pos(w[0].kind) < pos(w[1].kind), "{w:?}");
        }
    }

    #[test]
    fn maps_are_present_with_the_shared_layout() {
        let obj = parsed();
        let Some(events) = obj.maps.get(MAP_EVENTS) else {
            panic!("map {MAP_EVENTS} missing; have {:?}", obj.maps.keys());
        };
        assert_eq!(events.map_type(), bpf_map_type::BPF_MAP_TYPE_ARRAY as u32);
        assert_eq!(events.key_size(), 4);
        assert_eq!(
            usize::try_from(events.value_size()).ok(),
            Some(size_of::<EventPage>())
        );
        assert_eq!(events.max_entries(), 1 + DEFAULT_EVENT_PAGES);
        // Its pages are handed to the next kernel (DESIGN.md §3).
        assert_ne!(events.map_flags() & BPF_F_MMAPABLE, 0);

        let config = obj.maps.get(MAP_CONFIG).unwrap();
        assert_eq!(
            usize::try_from(config.value_size()).ok(),
            Some(size_of::<ProbeConfig>())
        );
        assert_eq!(config.max_entries(), 1);
        let walk = obj.maps.get(MAP_NOTIFIER_WALK).unwrap();
        assert_eq!(walk.value_size(), 8);
        assert_eq!(walk.max_entries(), NOTIFIER_WALK_SLOTS);

        let units = obj.maps.get(MAP_UNITS).unwrap();
        assert_eq!(units.map_type(), bpf_map_type::BPF_MAP_TYPE_HASH as u32);
        assert_eq!((units.key_size(), units.value_size()), (8, 8));
        assert_eq!(units.max_entries(), fastkexec_common::UNIT_MAX);

        let Some(logs) = obj.maps.get(MAP_LOGS) else {
            panic!("map {MAP_LOGS} missing; have {:?}", obj.maps.keys());
        };
        assert_eq!(logs.map_type(), bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32);
    }

    #[test]
    fn license_is_gpl_compatible() {
        // The kernel refuses GPL-only helpers (used by aya-log) otherwise.
        let obj = parsed();
        assert_eq!(obj.license.to_str().ok(), Some("Dual MIT/GPL"));
    }
}
