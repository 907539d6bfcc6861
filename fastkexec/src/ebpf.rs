//! The eBPF object built from `fastkexec-ebpf` by build.rs, and the names of
//! what it holds.
//!
//! The names are the contract with `fastkexec-ebpf/src/main.rs` (program names
//! are its function names, map names its statics); the tests check them
//! against the embedded object so a rename on either side fails here.

/// Program attached as a kprobe on `kernel_kexec`.
pub const PROG_KERNEL_KEXEC: &str = "kernel_kexec";
/// Program attached as a kprobe on `machine_kexec`.
pub const PROG_MACHINE_KEXEC: &str = "machine_kexec";

/// `(program, kernel function)` pairs to attach as kprobes.
pub const KPROBES: [(&str, &str); 2] = [
    (PROG_KERNEL_KEXEC, "kernel_kexec"),
    (PROG_MACHINE_KEXEC, "machine_kexec"),
];

/// `Array<Event>` of [`fastkexec_common::EVENT_CAPACITY`] slots, `BPF_F_MMAPABLE`.
pub const MAP_EVENTS: &str = "EVENTS";
/// `Array<u64>` with one slot: events claimed so far, stored or dropped
/// (more than [`fastkexec_common::EVENT_CAPACITY`] means some were dropped).
pub const MAP_EVENT_INDEX: &str = "EVENT_INDEX";
/// Ring buffer aya-log-ebpf writes log records to (drained by aya-log).
pub const MAP_LOGS: &str = "AYA_LOGS";

/// The eBPF ELF object, 8-byte aligned as aya's loader expects.
///
/// Empty when the crate was built with `AYA_BUILD_SKIP=1`; loading it then
/// fails in aya's parser.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastkexec-probes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya_obj::{
        generated::{bpf_map_type, BPF_F_MMAPABLE},
        Object, ProgramSection,
    };
    use fastkexec_common::{Event, EVENT_CAPACITY};

    fn parsed() -> Object {
        match Object::parse(object()) {
            Ok(obj) => obj,
            Err(e) => panic!(
                "embedded eBPF object does not parse ({} bytes): {e}",
                object().len()
            ),
        }
    }

    #[test]
    fn object_is_an_aligned_bpf_elf() {
        let obj = object();
        assert_eq!(obj.as_ptr().align_offset(8), 0);
        assert_eq!(obj.get(..4), Some(&b"\x7fELF"[..]));
        // e_machine at offset 18, little-endian: EM_BPF = 247.
        assert_eq!(obj.get(18..20), Some(&247u16.to_le_bytes()[..]));
    }

    #[test]
    fn kprobe_programs_are_present() {
        let obj = parsed();
        for (prog, _function) in KPROBES {
            let Some(p) = obj.programs.get(prog) else {
                panic!("program {prog} missing; have {:?}", obj.programs.keys());
            };
            assert!(
                matches!(p.section, ProgramSection::KProbe),
                "{prog} is {:?}, not a kprobe",
                p.section
            );
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
            Some(size_of::<Event>())
        );
        assert_eq!(events.max_entries(), EVENT_CAPACITY);
        // Its pages are handed to the next kernel (DESIGN.md §3).
        assert_ne!(events.map_flags() & BPF_F_MMAPABLE, 0);

        let Some(index) = obj.maps.get(MAP_EVENT_INDEX) else {
            panic!("map {MAP_EVENT_INDEX} missing; have {:?}", obj.maps.keys());
        };
        assert_eq!(index.map_type(), bpf_map_type::BPF_MAP_TYPE_ARRAY as u32);
        assert_eq!(index.value_size(), 8);
        assert_eq!(index.max_entries(), 1);

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
