//! What will time each phase of the reboot: the answer `trace --dry-run` gives
//! before anyone reboots (bpftrace's `--dry-run` habit), built from the probes
//! that really attached on this kernel.

use serde::Serialize;

use crate::ops::load::LoadMode;
use crate::record::phases::{MarkId, PHASES};
use crate::record::report::mark_of;
use crate::trace::ebpf::{PHASE_PROBES, REBOOT_FALLBACK};
use crate::trace::Attachment;

/// One phase and the sources of its two boundaries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseSource {
    /// The phase's machine name (as in `report --json` and the exports).
    pub phase: &'static str,
    /// Its name for people.
    pub label: &'static str,
    /// What stamps the phase's start.
    pub start: String,
    /// What stamps its end: its own end mark, or the next phase's start.
    pub end: String,
    /// False when a boundary will not be seen (its probe did not attach, or
    /// this load mode has no such stamp): the report then shows that span as
    /// unseen or unattributed.
    pub timed: bool,
}

/// Each phase of [`PHASES`] with what will stamp it, given the probes that
/// attached and the load mode (the record rides along in every mode but
/// `file`; only a staged load has a trampoline).
pub fn phase_sources(attachments: &[Attachment], mode: LoadMode) -> Vec<PhaseSource> {
    let sources: Vec<(String, bool)> = PHASES
        .iter()
        .map(|def| mark_source(def.start, attachments, mode))
        .collect();
    PHASES
        .iter()
        .enumerate()
        .map(|(i, def)| {
            let (start, start_ok) = sources.get(i).cloned().unwrap_or_default();
            // A phase without its own end runs to the next phase that will be
            // stamped (the relocation runs to the purgatory when there is no
            // trampoline).
            let (end, end_ok) = match def.end {
                Some(end) => mark_source(end, attachments, mode),
                None => PHASES
                    .iter()
                    .zip(&sources)
                    .skip(i + 1)
                    .find(|(_, (_, ok))| *ok)
                    .map(|(next, src)| (format!("{} ({})", src.0, next.label), true))
                    .unwrap_or_else(|| mark_source(MarkId::End, attachments, mode)),
            };
            PhaseSource {
                phase: def.id,
                label: def.label,
                start,
                end,
                timed: start_ok && end_ok,
            }
        })
        .collect()
}

/// The table `trace --dry-run` prints: one line per phase.
pub fn render(sources: &[PhaseSource]) -> String {
    let mut out = String::new();
    for p in sources {
        out.push_str(&format!(
            "phase:    {:<20} {} from: {}\n          {:<20}   to:   {}\n",
            p.label,
            if p.timed { " " } else { "!" },
            p.start,
            "",
            p.end
        ));
    }
    out
}

/// Where a mark comes from, and whether it will be there.
fn mark_source(mark: MarkId, attachments: &[Attachment], mode: LoadMode) -> (String, bool) {
    let without_record = |what: &str| {
        if mode != LoadMode::File {
            (what.to_string(), true)
        } else {
            (
                format!("{what}: none in file mode (the kernel's own purgatory runs, unstamped)"),
                false,
            )
        }
    };
    match mark {
        MarkId::Request => (
            "fastkexec's own TSC stamp when `trace --exec` asks for the reboot (none when \
             following a reboot started elsewhere: the timeline then starts at reboot(2))"
                .into(),
            true,
        ),
        MarkId::TrampolineEntry if mode == LoadMode::Staged => {
            ("the staged trampoline's TSC stamp".into(), true)
        }
        MarkId::TrampolineEntry => (
            format!("not reached: only a staged load has a trampoline (this one is {mode})"),
            false,
        ),
        MarkId::PurgatoryEntry => without_record("our purgatory's TSC stamp at its entry"),
        MarkId::PurgatoryExit => {
            without_record("our purgatory's TSC stamp at its jump to the kernel")
        }
        MarkId::KernelClockZero => (
            "the new kernel's clock zero (its printk time base, placed on the TSC)".into(),
            true,
        ),
        MarkId::RunInit => (
            "the new kernel's log line \"Run /init as init process\"".into(),
            true,
        ),
        MarkId::End => (
            "`fastkexec report` in the new system (or the line named by --until-kmsg)".into(),
            true,
        ),
        probe_mark => probe_source(probe_mark, attachments),
    }
}

/// The probe that stamps `mark`, as it attached.
fn probe_source(mark: MarkId, attachments: &[Attachment]) -> (String, bool) {
    let kinds: Vec<&str> = PHASE_PROBES
        .iter()
        .chain([&REBOOT_FALLBACK])
        .filter(|p| mark_of(p.kind) == Some(mark))
        .filter_map(|p| p.kind.name())
        .collect();
    let attached = attachments
        .iter()
        .filter(|a| kinds.contains(&a.kind.as_str()));
    let mut unseen = None;
    for a in attached {
        if a.how == "none" {
            unseen = Some(a.why.clone().unwrap_or_else(|| "did not attach".into()));
        } else {
            return (format!("{} {}", a.how, a.function), true);
        }
    }
    (
        format!(
            "UNSEEN: {} ({})",
            mark,
            unseen.unwrap_or_else(|| "no probe attached".into())
        ),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(function: &str, kind: &str, how: &'static str) -> Attachment {
        Attachment {
            function: function.into(),
            kind: kind.into(),
            how,
            why: None,
        }
    }

    /// An attachment list of the shape `trace` reports: fentry/fexit where possible, one
    /// kprobe, and a probe that could not attach.
    fn lab_6_1() -> Vec<Attachment> {
        let mut v = vec![
            attached("syscalls/sys_enter_reboot", "reboot_enter", "tracepoint"),
            attached("kernel_kexec", "kernel_kexec", "fentry"),
            attached("device_shutdown", "device_shutdown_enter", "fentry"),
            attached("device_shutdown", "device_shutdown_exit", "fexit"),
            attached("migrate_to_reboot_cpu", "migrate_to_reboot_cpu", "fentry"),
            attached(
                "migrate_to_reboot_cpu",
                "migrate_to_reboot_cpu_exit",
                "fexit",
            ),
            attached("machine_shutdown", "machine_shutdown", "fentry"),
            attached("machine_shutdown", "machine_shutdown_exit", "fexit"),
            attached("machine_kexec", "machine_kexec", "kprobe"),
        ];
        v.push(Attachment {
            function: "syscore_shutdown".into(),
            kind: "syscore_shutdown".into(),
            how: "none",
            why: Some("syscore_shutdown is not in available_filter_functions".into()),
        });
        v
    }

    #[test]
    fn every_phase_is_listed_with_its_probes() {
        let s = phase_sources(&lab_6_1(), LoadMode::Staged);
        assert_eq!(s.len(), PHASES.len());
        let by = |name: &str| s.iter().find(|p| p.phase == name).cloned();
        let dev = by("device_shutdown").expect("device shutdown listed");
        assert_eq!(dev.start, "fentry device_shutdown");
        assert_eq!(dev.end, "fexit device_shutdown");
        assert!(dev.timed);
        // relocation runs from machine_kexec's stamp to the trampoline (staged) or purgatory.
        let reloc = by("relocation").expect("relocation listed");
        assert_eq!(reloc.start, "kprobe machine_kexec");
        assert!(reloc.end.contains("trampoline"), "{}", reloc.end);
        let sys = by("syscore_shutdown").expect("syscore listed");
        assert!(!sys.timed);
        assert!(
            sys.start.starts_with("UNSEEN") && sys.start.contains("available_filter_functions")
        );
    }

    #[test]
    fn without_a_trampoline_the_relocation_runs_to_the_purgatory() {
        let s = phase_sources(&lab_6_1(), LoadMode::Uncompressed);
        let reloc = s
            .iter()
            .find(|p| p.phase == "relocation")
            .expect("relocation listed");
        assert!(reloc.timed);
        assert!(reloc.end.ends_with("(purgatory)"), "{}", reloc.end);
        let tramp = s
            .iter()
            .find(|p| p.phase == "trampoline")
            .expect("trampoline listed");
        assert!(!tramp.timed && tramp.start.starts_with("not reached"));
    }

    #[test]
    fn file_mode_has_no_purgatory_stamps() {
        let s = phase_sources(&lab_6_1(), LoadMode::File);
        let purg = s
            .iter()
            .find(|p| p.phase == "purgatory")
            .expect("purgatory listed");
        assert!(!purg.timed);
        assert!(purg.start.contains("file mode"));
    }

    #[test]
    fn a_missing_attachment_is_unseen() {
        let s = phase_sources(&[], LoadMode::Uncompressed);
        let notif = s
            .iter()
            .find(|p| p.phase == "reboot_notifiers")
            .expect("listed");
        assert!(notif.start.starts_with("UNSEEN"), "{}", notif.start);
        assert!(!notif.timed);
    }
}
