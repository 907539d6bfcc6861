//! The reboot timeline: marks on one clock, and the phases that tile it.
//!
//! A phase runs from its start mark to its own end mark (a function's return)
//! or, when it has none, to the next phase's start (DESIGN.md §1 defines most
//! phases entry to entry). The tiling has no gap and no overlap:
//! - time between one phase's end and the next one's start is its own,
//!   visible `unattributed` phase;
//! - a phase whose start mark did not happen because this kernel does not
//!   take that step (its probe was attached and never fired, e.g.
//!   `syscore_shutdown` on 6.1) is listed as unseen, and the phase before it
//!   runs on to the next start;
//! - a phase whose mark is unknown (its probe did not attach) is listed as
//!   unseen too, but then the phase before it cannot be told apart from it:
//!   that span becomes `unattributed`, with a note naming both;
//! - a start earlier than the previous phase's end (two clocks disagreeing
//!   by a little) is clamped, with a note saying by how much.
//!
//! Every boundary is an integer ns offset from the origin, and each duration
//! is the difference of two boundaries, so the durations add up to the total
//! exactly.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Name of the phase for time no probe explains.
pub const UNATTRIBUTED: &str = "unattributed";

/// A point on the reboot timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkId {
    /// `fastkexec trace --exec` requested the reboot (its own TSC stamp).
    Request,
    /// `reboot(LINUX_REBOOT_CMD_KEXEC)` entered.
    RebootEnter,
    /// `kernel_kexec` entered.
    KernelKexec,
    DeviceShutdown,
    DeviceShutdownExit,
    Migrate,
    MigrateExit,
    Syscore,
    SyscoreExit,
    MachineShutdown,
    MachineShutdownExit,
    /// `machine_kexec` entered: the old kernel's last stamp.
    MachineKexec,
    /// The staged trampoline's first instruction (staged loads only).
    TrampolineEntry,
    /// The purgatory's first instruction.
    PurgatoryEntry,
    /// The purgatory's jump into the new kernel.
    PurgatoryExit,
    /// The new kernel's printk/sched_clock time 0.
    KernelClockZero,
    /// "Run /init as init process".
    RunInit,
    /// The end of the timeline: the user-space mark.
    End,
}

impl fmt::Display for MarkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MarkId::Request => "reboot request",
            MarkId::RebootEnter => "reboot(2)",
            MarkId::KernelKexec => "kernel_kexec",
            MarkId::DeviceShutdown => "device_shutdown",
            MarkId::DeviceShutdownExit => "device_shutdown return",
            MarkId::Migrate => "migrate_to_reboot_cpu",
            MarkId::MigrateExit => "migrate_to_reboot_cpu return",
            MarkId::Syscore => "syscore_shutdown",
            MarkId::SyscoreExit => "syscore_shutdown return",
            MarkId::MachineShutdown => "machine_shutdown",
            MarkId::MachineShutdownExit => "machine_shutdown return",
            MarkId::MachineKexec => "machine_kexec",
            MarkId::TrampolineEntry => "trampoline entry",
            MarkId::PurgatoryEntry => "purgatory entry",
            MarkId::PurgatoryExit => "purgatory exit",
            MarkId::KernelClockZero => "new kernel clock zero",
            MarkId::RunInit => "Run /init",
            MarkId::End => "user-space mark",
        })
    }
}

/// What is known about a mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// It happened at this many ns on the common axis.
    At(i128),
    /// Watched, but this kernel does not take that step.
    NotReached(String),
    /// Not watched or not measurable; the reason says why.
    Unseen(String),
}

/// A phase of the timeline model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseDef {
    /// The phase's one machine name (snake_case): `report --json`, the histogram state, the
    /// Prometheus/OpenMetrics `phase` label, the JSON export and the HdrHistogram-log tag.
    pub id: &'static str,
    /// Its name for people: the text report only.
    pub label: &'static str,
    pub start: MarkId,
    /// Its own end mark (a return); `None`: it runs to the next phase's start.
    pub end: Option<MarkId>,
}

const fn def(
    id: &'static str,
    label: &'static str,
    start: MarkId,
    end: Option<MarkId>,
) -> PhaseDef {
    PhaseDef {
        id,
        label,
        start,
        end,
    }
}

/// The phases of a kexec reboot in timeline order (DESIGN.md §1; no
/// decompression phase: the uncompressed mode has none). In a staged load
/// `relocation` ends where the trampoline starts, and `trampoline` (its
/// checks of the staged image and the jump) runs to the purgatory; otherwise
/// the trampoline is not reached and `relocation` runs to the purgatory.
pub const PHASES: [PhaseDef; 13] = [
    def(
        "userspace_shutdown",
        "userspace shutdown",
        MarkId::Request,
        None,
    ),
    def(
        "reboot_syscall",
        "reboot syscall",
        MarkId::RebootEnter,
        None,
    ),
    def(
        "reboot_notifiers",
        "reboot notifiers",
        MarkId::KernelKexec,
        None,
    ),
    def(
        "device_shutdown",
        "device shutdown",
        MarkId::DeviceShutdown,
        Some(MarkId::DeviceShutdownExit),
    ),
    def(
        "cpu_migration",
        "cpu migration",
        MarkId::Migrate,
        Some(MarkId::MigrateExit),
    ),
    def(
        "syscore_shutdown",
        "syscore shutdown",
        MarkId::Syscore,
        Some(MarkId::SyscoreExit),
    ),
    def(
        "machine_shutdown",
        "machine shutdown",
        MarkId::MachineShutdown,
        Some(MarkId::MachineShutdownExit),
    ),
    def("relocation", "relocation", MarkId::MachineKexec, None),
    def("trampoline", "trampoline", MarkId::TrampolineEntry, None),
    def(
        "purgatory",
        "purgatory",
        MarkId::PurgatoryEntry,
        Some(MarkId::PurgatoryExit),
    ),
    def(
        "kernel_early_boot",
        "kernel early boot",
        MarkId::PurgatoryExit,
        None,
    ),
    def("kernel_boot", "kernel boot", MarkId::KernelClockZero, None),
    def("user_space", "user space", MarkId::RunInit, None),
];

/// The text report's name of the phase whose machine name is `id` (`id` itself for a name
/// not in [`PHASES`], e.g. [`UNATTRIBUTED`]).
pub fn label(id: &str) -> &str {
    PHASES.iter().find(|d| d.id == id).map_or(id, |d| d.label)
}

/// The machine name of a phase named `name`, by its machine name or by the human name that
/// earlier fastkexec builds stored and exported (`"kernel early boot"`); `None` for any other
/// name.
pub fn canonical_id(name: &str) -> Option<&'static str> {
    if name == UNATTRIBUTED {
        return Some(UNATTRIBUTED);
    }
    PHASES
        .iter()
        .find(|d| d.id == name || d.label == name)
        .map(|d| d.id)
}

/// One tile of the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Phase {
    /// [`PhaseDef::id`], or [`UNATTRIBUTED`].
    pub name: String,
    /// Offset from the origin.
    pub start_ns: u64,
    pub duration_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A phase the timeline could not show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unseen {
    /// [`PhaseDef::id`].
    pub phase: String,
    pub why: String,
}

/// The tiled timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tiling {
    /// The first mark seen: where `start_ns` 0 is.
    pub origin: MarkId,
    pub phases: Vec<Phase>,
    /// Sum of the phase durations: origin → end.
    pub total_ns: u64,
    pub unseen: Vec<Unseen>,
}

impl Tiling {
    /// Offset of a mark from the origin, when it was seen.
    pub fn offset(marks: &BTreeMap<MarkId, Mark>, origin: i128, id: MarkId) -> Option<i128> {
        match marks.get(&id) {
            Some(Mark::At(t)) => Some(t.saturating_sub(origin)),
            _ => None,
        }
    }
}

/// Notes a clamp only when the clocks disagree by more than this.
const CLAMP_NOTE_NS: i128 = 1_000;

/// A signed ns offset as u64: negative is 0, and beyond u64 (585 years) saturates instead of
/// wrapping into a small, believable number.
pub fn ns_u64(v: i128) -> u64 {
    u64::try_from(v.max(0)).unwrap_or(u64::MAX)
}

fn at(marks: &BTreeMap<MarkId, Mark>, id: MarkId) -> Option<i128> {
    match marks.get(&id) {
        Some(Mark::At(t)) => Some(*t),
        _ => None,
    }
}

/// Tiles the timeline from the first phase start seen before [`MarkId::End`] to the end.
/// `None` when no phase start was seen before the end, or the end was not seen.
pub fn tile(marks: &BTreeMap<MarkId, Mark>) -> Option<Tiling> {
    let end = at(marks, MarkId::End)?;
    // The first phase start *before the end*, and at most u64::MAX ns (585 years) before it: a
    // start at or after the end is unseen (below), the cursor, which begins at the origin,
    // must never pass the end, and every tile lies in [origin, end], so with this bound no
    // offset or duration below overflows (marks converted by an absurd fit saturate at the
    // ends of i128).
    let fits = |t: i128| {
        t < end
            && end
                .checked_sub(t)
                .is_some_and(|d| d <= i128::from(u64::MAX))
    };
    let (origin_id, origin) = PHASES.iter().find_map(|d| {
        at(marks, d.start)
            .filter(|&t| fits(t))
            .map(|t| (d.start, t))
    })?;
    let mut phases: Vec<Phase> = Vec::new();
    let mut unseen = Vec::new();
    let mut cursor = origin;
    let mut prev_name: Option<&str> = None;
    let push = |phases: &mut Vec<Phase>, name: &str, from: i128, to: i128, note: Option<String>| {
        if to > from || name != UNATTRIBUTED {
            phases.push(Phase {
                name: name.to_string(),
                start_ns: ns_u64(from - origin),
                duration_ns: ns_u64(to - from),
                note,
            });
        }
    };

    for (i, d) in PHASES.iter().enumerate() {
        let start = match marks.get(&d.start) {
            Some(Mark::At(t)) => *t,
            Some(Mark::NotReached(why)) | Some(Mark::Unseen(why)) => {
                unseen.push(Unseen {
                    phase: d.id.to_string(),
                    why: why.clone(),
                });
                continue;
            }
            None => {
                unseen.push(Unseen {
                    phase: d.id.to_string(),
                    why: format!("{} was not measured", d.start),
                });
                continue;
            }
        };
        if start >= end {
            unseen.push(Unseen {
                phase: d.id.to_string(),
                why: format!("{} is not before the end of the timeline", d.start),
            });
            continue;
        }
        let mut note = None;
        let s = if start < cursor {
            let early = cursor.saturating_sub(start);
            if early > CLAMP_NOTE_NS {
                note = Some(format!(
                    "starts {:.3} ms before the previous phase ends by the clocks; clamped",
                    early as f64 / 1e6
                ));
            }
            cursor
        } else {
            start
        };
        if s > cursor {
            let between = match prev_name {
                Some(p) => format!("after {p}, before {}", d.label),
                None => format!("before {}", d.label),
            };
            push(&mut phases, UNATTRIBUTED, cursor, s, Some(between));
        }

        // This phase's end: its own return, else the next start that happened,
        // provided nothing unknown lies in between.
        let own_end = d.end.and_then(|e| at(marks, e));
        let mut unknown_between: Vec<&str> = Vec::new();
        let mut next_start = end;
        for n in PHASES.iter().skip(i + 1) {
            match marks.get(&n.start) {
                Some(Mark::At(t)) => {
                    next_start = *t;
                    break;
                }
                Some(Mark::NotReached(_)) => {}
                _ => unknown_between.push(n.label),
            }
        }
        let next_start = next_start.min(end).max(s);
        match own_end {
            Some(e) => {
                let e = e.clamp(s, end);
                push(&mut phases, d.id, s, e, note);
                cursor = e;
            }
            None if unknown_between.is_empty() => {
                push(&mut phases, d.id, s, next_start, note);
                cursor = next_start;
            }
            None => {
                let mut n = format!(
                    "{} and {} cannot be told apart",
                    d.label,
                    unknown_between.join(", ")
                );
                if let Some(extra) = note {
                    n = format!("{n}; {extra}");
                }
                push(&mut phases, UNATTRIBUTED, s, next_start, Some(n));
                cursor = next_start;
            }
        }
        prev_name = Some(d.label);
    }
    if cursor < end {
        push(
            &mut phases,
            UNATTRIBUTED,
            cursor,
            end,
            Some(format!(
                "after {}, before the end",
                prev_name.unwrap_or("the start")
            )),
        );
        cursor = end;
    }
    Some(Tiling {
        origin: origin_id,
        phases,
        total_ns: ns_u64(cursor - origin),
        unseen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(v: &[(MarkId, i128)]) -> BTreeMap<MarkId, Mark> {
        v.iter().map(|&(id, t)| (id, Mark::At(t))).collect()
    }

    fn full() -> BTreeMap<MarkId, Mark> {
        use MarkId::*;
        marks(&[
            (Request, 1_000),
            (RebootEnter, 3_000),
            (KernelKexec, 3_500),
            (DeviceShutdown, 10_000),
            (DeviceShutdownExit, 60_000),
            (Migrate, 60_100),
            (MigrateExit, 60_300),
            (Syscore, 60_400),
            (SyscoreExit, 61_400),
            (MachineShutdown, 62_000),
            (MachineShutdownExit, 63_000),
            (MachineKexec, 63_200),
            (TrampolineEntry, 63_700),
            (PurgatoryEntry, 70_000),
            (PurgatoryExit, 70_500),
            (KernelClockZero, 80_000),
            (RunInit, 500_000),
            (End, 600_000),
        ])
    }

    fn check_tiles(t: &Tiling) {
        let mut at = 0u64;
        for p in &t.phases {
            assert_eq!(p.start_ns, at, "gap or overlap before {p:?}");
            at += p.duration_ns;
        }
        assert_eq!(at, t.total_ns);
    }

    fn names(t: &Tiling) -> Vec<&str> {
        t.phases.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn a_full_timeline_tiles_with_visible_gaps() {
        let t = tile(&full()).unwrap();
        check_tiles(&t);
        assert_eq!(t.total_ns, 599_000);
        assert_eq!(t.origin, MarkId::Request);
        assert_eq!(
            names(&t),
            [
                "userspace_shutdown",
                "reboot_syscall",
                "reboot_notifiers",
                "device_shutdown",
                UNATTRIBUTED,
                "cpu_migration",
                UNATTRIBUTED,
                "syscore_shutdown",
                UNATTRIBUTED,
                "machine_shutdown",
                UNATTRIBUTED,
                "relocation",
                "trampoline",
                "purgatory",
                "kernel_early_boot",
                "kernel_boot",
                "user_space",
            ]
        );
        let reloc = &t.phases[11];
        assert_eq!((reloc.start_ns, reloc.duration_ns), (62_200, 500));
        assert_eq!(t.phases[12].duration_ns, 70_000 - 63_700);
        let dev = &t.phases[3];
        assert_eq!((dev.start_ns, dev.duration_ns), (9_000, 50_000));
        let gap = &t.phases[4];
        assert_eq!(gap.duration_ns, 100);
        assert_eq!(
            gap.note.as_deref(),
            Some("after device shutdown, before cpu migration")
        );
        assert!(t.unseen.is_empty());
    }

    #[test]
    fn a_step_the_kernel_skips_is_unseen_and_the_previous_phase_runs_on() {
        // 6.1: syscore_shutdown is not on the kexec path.
        let mut m = full();
        m.insert(MarkId::Syscore, Mark::NotReached("not called".into()));
        m.insert(MarkId::SyscoreExit, Mark::NotReached("not called".into()));
        let t = tile(&m).unwrap();
        check_tiles(&t);
        assert!(!names(&t).contains(&"syscore_shutdown"));
        assert_eq!(t.unseen[0].phase, "syscore_shutdown");
        assert_eq!(t.total_ns, 599_000);
    }

    #[test]
    fn without_a_trampoline_relocation_runs_to_the_purgatory() {
        let mut m = full();
        m.insert(
            MarkId::TrampolineEntry,
            Mark::NotReached("not staged".into()),
        );
        let t = tile(&m).unwrap();
        check_tiles(&t);
        let reloc = t.phases.iter().find(|p| p.name == "relocation").unwrap();
        assert_eq!(reloc.duration_ns, 70_000 - 63_200);
        assert!(!names(&t).contains(&"trampoline"));
        assert_eq!(t.unseen[0].phase, "trampoline");
        assert_eq!(t.total_ns, 599_000);
    }

    #[test]
    fn an_unattached_probe_makes_its_span_unattributed() {
        let mut m = full();
        m.insert(
            MarkId::DeviceShutdown,
            Mark::Unseen("probe did not attach".into()),
        );
        let t = tile(&m).unwrap();
        check_tiles(&t);
        let notifiers = t
            .phases
            .iter()
            .find(|p| {
                p.note
                    .as_deref()
                    .is_some_and(|n| n.contains("cannot be told apart"))
            })
            .unwrap();
        assert_eq!(notifiers.name, UNATTRIBUTED);
        assert!(notifiers
            .note
            .as_deref()
            .unwrap()
            .contains("reboot notifiers and device shutdown"));
        // From kernel_kexec to the next start that happened (cpu migration);
        // the device_shutdown return alone cannot end anything.
        assert_eq!(notifiers.duration_ns, 60_100 - 3_500);
        assert!(!names(&t).contains(&"device_shutdown"));
        assert_eq!(t.unseen[0].phase, "device_shutdown");
    }

    #[test]
    fn follow_mode_starts_at_the_syscall_and_clocks_are_clamped() {
        let mut m = full();
        m.remove(&MarkId::Request);
        // The new kernel's clock zero lands 2 µs before the purgatory exit.
        m.insert(MarkId::KernelClockZero, Mark::At(70_500 - 2_000));
        let t = tile(&m).unwrap();
        check_tiles(&t);
        assert_eq!(t.origin, MarkId::RebootEnter);
        assert_eq!(t.total_ns, 597_000);
        let early = t
            .phases
            .iter()
            .find(|p| p.name == "kernel_early_boot")
            .unwrap();
        assert_eq!(early.duration_ns, 0);
        let boot = t.phases.iter().find(|p| p.name == "kernel_boot").unwrap();
        assert!(
            boot.note.as_deref().unwrap().contains("clamped"),
            "{boot:?}"
        );
        // Nothing stamped the request: that phase is named as unseen.
        assert!(t.unseen.iter().any(|u| u.phase == "userspace_shutdown"));
    }

    #[test]
    fn every_phase_has_one_snake_case_machine_name_and_a_label() {
        let mut ids: Vec<&str> = PHASES.iter().map(|d| d.id).collect();
        for d in &PHASES {
            assert!(
                d.id.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                d.id
            );
            // The label is the id spelled for people, nothing else.
            assert_eq!(d.label.replace(' ', "_"), d.id);
            assert_eq!(label(d.id), d.label);
            assert_eq!(canonical_id(d.id), Some(d.id));
            assert_eq!(canonical_id(d.label), Some(d.id));
        }
        assert_eq!(label(UNATTRIBUTED), UNATTRIBUTED);
        assert_eq!(canonical_id(UNATTRIBUTED), Some(UNATTRIBUTED));
        assert_eq!(canonical_id("kernel init"), None);
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), PHASES.len());
    }

    #[test]
    fn no_origin_or_no_end_is_no_timeline() {
        assert_eq!(tile(&BTreeMap::new()), None);
        let mut m = full();
        m.remove(&MarkId::End);
        assert_eq!(tile(&m), None);
    }

    /// Found by the `handoff_report` fuzz target: a record whose request stamp lies after the
    /// end of the timeline made the request the origin, the cursor started past the end, and
    /// the next phase with its own end panicked in `clamp(start, end)` (start > end).
    #[test]
    fn an_origin_after_the_end_is_not_the_origin() {
        let mut m = full();
        m.insert(MarkId::Request, Mark::At(500_000));
        m.insert(MarkId::End, Mark::At(450_000));
        let t = tile(&m).unwrap();
        check_tiles(&t);
        assert_eq!(t.origin, MarkId::RebootEnter);
        assert_eq!(t.total_ns, 450_000 - 3_000);
        assert!(t.unseen.iter().any(|u| u.phase == "userspace_shutdown"));
        // Every start after the end: no timeline, not a panic.
        let late: BTreeMap<MarkId, Mark> = full()
            .into_iter()
            .map(|(id, m)| match (id, m) {
                (MarkId::End, m) => (id, m),
                (_, Mark::At(t)) => (id, Mark::At(t + 10_000_000)),
                (_, m) => (id, m),
            })
            .collect();
        assert_eq!(tile(&late), None);
    }

    /// Found by the `handoff_report` fuzz target (with overflow checks): marks converted by an
    /// absurd clock fit saturate at the ends of i128, and the offsets overflowed.
    #[test]
    fn saturated_marks_do_not_overflow() {
        let mut m = full();
        m.insert(MarkId::RebootEnter, Mark::At(i128::MIN));
        let t = tile(&m).unwrap();
        check_tiles(&t);
        assert_eq!(t.origin, MarkId::Request);
        assert!(t.phases[1]
            .note
            .as_deref()
            .unwrap_or("")
            .contains("clamped"));
        assert_eq!(
            Tiling::offset(&m, 1_000, MarkId::RebootEnter),
            Some(i128::MIN)
        );
        assert_eq!(Tiling::offset(&m, i128::MIN, MarkId::End), Some(i128::MAX));
        // An end more than 585 years after every start: no timeline, not an overflow.
        m.insert(MarkId::End, Mark::At(i128::MAX));
        assert_eq!(tile(&m), None);
        m.insert(MarkId::Request, Mark::At(i128::MAX - 5));
        let t = tile(&m).unwrap();
        check_tiles(&t);
        assert_eq!(t.total_ns, 5);
    }

    #[test]
    fn marks_after_the_end_are_unseen_not_negative() {
        let mut m = full();
        m.insert(MarkId::End, Mark::At(450_000));
        let t = tile(&m).unwrap();
        check_tiles(&t);
        assert_eq!(t.total_ns, 449_000);
        assert!(t.unseen.iter().any(|u| u.phase == "user_space"));
    }
}
