//! From event kinds to the marks the timeline is tiled by, and the TSC marks `build` collects.

use super::*;

pub(super) fn kind_names(mask: u64) -> Vec<String> {
    let mut v: Vec<String> = PHASE_PROBES
        .iter()
        .chain([&REBOOT_FALLBACK, &DEVICE_PROBE])
        .filter(|p| mask & p.kind.bit() != 0)
        .map(|p| {
            if p.exit {
                format!("{} return", p.function)
            } else {
                p.function.to_string()
            }
        })
        .collect();
    if mask & EventKind::NOTIFIER_ENTER.bit() != 0 {
        v.push("reboot notifier callbacks".into());
    }
    v.dedup();
    v
}

/// The mark each phase probe provides.
pub(crate) fn mark_of(kind: EventKind) -> Option<MarkId> {
    Some(match kind {
        EventKind::REBOOT_ENTER => MarkId::RebootEnter,
        EventKind::KERNEL_KEXEC => MarkId::KernelKexec,
        EventKind::DEVICE_SHUTDOWN_ENTER => MarkId::DeviceShutdown,
        EventKind::DEVICE_SHUTDOWN_EXIT => MarkId::DeviceShutdownExit,
        EventKind::MIGRATE_TO_REBOOT_CPU => MarkId::Migrate,
        EventKind::MIGRATE_TO_REBOOT_CPU_EXIT => MarkId::MigrateExit,
        EventKind::SYSCORE_SHUTDOWN => MarkId::Syscore,
        EventKind::SYSCORE_SHUTDOWN_EXIT => MarkId::SyscoreExit,
        EventKind::MACHINE_SHUTDOWN => MarkId::MachineShutdown,
        EventKind::MACHINE_SHUTDOWN_EXIT => MarkId::MachineShutdownExit,
        EventKind::MACHINE_KEXEC => MarkId::MachineKexec,
        _ => return None,
    })
}

pub(super) fn function_of(kind: EventKind) -> &'static str {
    PHASE_PROBES
        .iter()
        .chain([&REBOOT_FALLBACK])
        .find(|p| p.kind == kind)
        .map_or("?", |p| p.function)
}

pub(super) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Marks in TSC ticks, plus what could not be marked.
pub(super) struct TscMarks {
    pub(super) at: BTreeMap<MarkId, i128>,
    pub(super) other: BTreeMap<MarkId, Mark>,
}

impl TscMarks {
    pub(super) fn new() -> Self {
        Self {
            at: BTreeMap::new(),
            other: BTreeMap::new(),
        }
    }
    pub(super) fn set(&mut self, id: MarkId, tsc: i128) {
        self.other.remove(&id);
        self.at.insert(id, tsc);
    }
    pub(super) fn miss(&mut self, id: MarkId, m: Mark) {
        if !self.at.contains_key(&id) {
            self.other.insert(id, m);
        }
    }
}

/// Where PID 1 being systemd ends the report's timeline: its default target
/// reached (TSC, and the end mark's text). Says in `notes` why not otherwise.
pub(super) fn systemd_end(
    pid1: Option<&Pid1>,
    now_fit: Option<Fit>,
    notes: &mut Vec<String>,
) -> Option<(i128, String)> {
    match pid1? {
        Pid1::Systemd(t) if t.default_target_us > 0 => match now_fit {
            Some(fit) => Some((
                units_start::tsc_of_us(&fit, t.default_target_us),
                format!("{} reached", t.default_target),
            )),
            None => {
                notes.push(
                    "no TSC fit of this kernel's clock: the default target cannot be placed, the \
                     timeline ends when report ran"
                        .into(),
                );
                None
            }
        },
        Pid1::Systemd(t) => {
            notes.push(format!(
                "systemd has not reached {} yet: the timeline ends when report ran",
                t.default_target
            ));
            None
        }
        Pid1::NotSystemd(comm) => {
            notes.push(format!(
                "PID 1 is not systemd ({comm}): the timeline ends when report ran"
            ));
            None
        }
        Pid1::Unreadable(why) => {
            notes.push(format!("{why}: the timeline ends when report ran"));
            None
        }
    }
}
