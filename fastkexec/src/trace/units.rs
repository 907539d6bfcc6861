//! The unit level of the shutdown: which systemd unit stopped when.
//!
//! Two raw tracepoints, seen from the kernel without systemd's help:
//! `signal_generate` stamps the first signal PID 1 sends to a task of a cgroup
//! (systemd starting a unit's stop, later systemd-shutdown's kill spree), and
//! `cgroup_rmdir` stamps that cgroup's removal (systemd saw it empty: the unit
//! is stopped). The probe finds the task's cgroup by following
//! `task->cgroups->dfl_cgrp->kn->name`, whose offsets come from this kernel's
//! BTF like the device-name offsets. On a kernel without one of the offsets or
//! tracepoints the level is absent and `status`/`trace` say so.
//!
//! Attached in `attach.rs` (both or neither), armed in `tracer.rs`. The probes stamp
//! nothing until armed: `trace --exec` arms them with its
//! reboot request, follow mode when it attaches (it cannot know when the
//! shutdown starts).

use std::path::Path;

use fastkexec_common::{config, EventKind, ProbeConfig, EVENTS_PER_PAGE, UNIT_MAX};

use super::btf::Btf;
use super::ebpf;
use super::support::ProbeSupport;

/// The `struct` members the probe follows, in order: (struct, member).
pub const CHAIN: [(&str, &str); 4] = [
    ("task_struct", "cgroups"),
    ("css_set", "dfl_cgrp"),
    ("cgroup", "kn"),
    ("kernfs_node", "name"),
];

/// The raw tracepoints: (tracepoint, program, the kind it stamps).
pub const TRACEPOINTS: [(&str, &str, EventKind); 2] = [
    (
        "signal_generate",
        ebpf::PROG_UNIT_SIGNAL,
        EventKind::UNIT_STOP,
    ),
    ("cgroup_rmdir", ebpf::PROG_UNIT_RMDIR, EventKind::UNIT_GONE),
];

/// The same tracepoints as `status` names them, with their tracefs event directory.
const STATUS_NAMES: [(&str, &str); 2] = [
    ("raw_tracepoint/signal_generate", "signal/signal_generate"),
    ("raw_tracepoint/cgroup_rmdir", "cgroup/cgroup_rmdir"),
];

/// How the unit probes would attach here (`status`): both need the cgroup
/// chain in BTF, and each its tracepoint (seen in tracefs' event list).
pub fn support(btf: Option<&Btf>, tracefs: Option<&Path>) -> Vec<ProbeSupport> {
    let chain = match btf {
        None => Err("no kernel BTF: the cgroup names cannot be read".to_string()),
        Some(b) => offsets(b, &mut ProbeConfig::default()),
    };
    STATUS_NAMES
        .iter()
        .map(|&(function, event)| {
            let why = match (&chain, tracefs) {
                (Err(e), _) => Some(e.clone()),
                (Ok(()), Some(d)) if !d.join("events").join(event).is_dir() => {
                    Some(format!("this kernel has no tracepoint {event}"))
                }
                (Ok(()), None) => Some(format!(
                    "tracefs is not mounted: whether {event} exists is known when trace attaches"
                )),
                (Ok(()), Some(_)) => None,
            };
            ProbeSupport {
                function,
                how: if why.is_none() {
                    "raw_tracepoint"
                } else {
                    "none"
                },
                why,
            }
        })
        .collect()
}

/// Record pages the unit events may need: a stop and a removal per unit, and
/// the one cap stamp.
pub fn record_pages() -> u32 {
    (2 * UNIT_MAX + 1).div_ceil(EVENTS_PER_PAGE as u32)
}

/// Fills the cgroup-name offsets from BTF; `Err` says which member is missing.
pub fn offsets(btf: &Btf, cfg: &mut ProbeConfig) -> std::result::Result<(), String> {
    let mut got = [0u32; 4];
    for (slot, (s, m)) in got.iter_mut().zip(CHAIN) {
        *slot = btf
            .member_offset(s, m)
            .ok_or_else(|| format!("BTF has no struct {s} member {m}"))?;
    }
    let [task, cset, cgrp, kn] = got;
    cfg.task_cgroups_off = task;
    cfg.cset_dfl_cgrp_off = cset;
    cfg.cgroup_kn_off = cgrp;
    cfg.kn_name_off = kn;
    cfg.flags |= config::UNIT_OFFSETS;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_has_room_for_every_unit_twice() {
        let events = record_pages() as usize * EVENTS_PER_PAGE;
        assert!(events > 2 * UNIT_MAX as usize);
        assert!(events < 2 * UNIT_MAX as usize + 2 * EVENTS_PER_PAGE);
    }

    #[test]
    fn running_kernel_btf_has_the_cgroup_chain() {
        let path = std::path::Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            // Not every test host has BTF; the lab kernels all do.
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let mut cfg = ProbeConfig::default();
        offsets(&btf, &mut cfg).unwrap();
        assert_ne!(cfg.flags & config::UNIT_OFFSETS, 0);
        // `name` is not the first member of a kernfs_node, nor `kn` of a cgroup.
        assert_ne!(cfg.kn_name_off, 0);
        assert_ne!(cfg.cgroup_kn_off, 0);
        assert_ne!(cfg.task_cgroups_off, 0);
    }

    #[test]
    fn status_names_a_missing_tracepoint_and_a_missing_chain() {
        let dir = std::env::temp_dir().join(format!("fk-units-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("events/signal/signal_generate")).unwrap();
        let partial = Btf::parse(&crate::trace::btf::tests::with_struct(
            "task_struct",
            "cgroups",
        ))
        .unwrap();
        let s = support(Some(&partial), Some(&dir));
        assert!(s.iter().all(|p| p.how == "none"));
        assert!(s[0].why.as_deref().unwrap().contains("css_set"));
        let none = support(None, Some(&dir));
        assert!(none[1].why.as_deref().unwrap().contains("no kernel BTF"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_member_names_itself() {
        let btf = Btf::parse(&crate::trace::btf::tests::with_struct(
            "task_struct",
            "cgroups",
        ))
        .unwrap();
        let mut cfg = ProbeConfig::default();
        assert_eq!(btf.member_offset("task_struct", "cgroups"), Some(8));
        let e = offsets(&btf, &mut cfg).unwrap_err();
        assert!(e.contains("css_set") && e.contains("dfl_cgrp"), "{e}");
        assert_eq!(cfg.flags & config::UNIT_OFFSETS, 0);
    }
}
