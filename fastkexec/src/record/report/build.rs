//! `build`, step by step: the new kernel's marks from its log, the record's marks from the
//! old kernel and the purgatory, then one ns axis that the phases tile.

use super::*;

/// The new kernel's printk clock on the TSC, through the anchor and a TSC rate.
#[derive(Clone, Copy)]
struct PrintkClock {
    fit: Option<Fit>,
    anchor: Option<Anchor>,
}

impl PrintkClock {
    fn tsc_signed(self, ns: i128) -> Option<i128> {
        let fit = self.fit?;
        let a = self.anchor?;
        // The conversion saturates for a fit no machine makes (`now_fit` is not checked
        // like a record's): saturate here too rather than overflow.
        Some(i128::from(a.tsc).saturating_sub(fit.ns_to_ticks(i128::from(a.printk_ns) - ns)))
    }

    fn tsc(self, ns: u64) -> Option<i128> {
        self.tsc_signed(i128::from(ns))
    }
}

/// Builds the report from gathered inputs. Pure: no I/O.
pub fn build(inp: &Inputs) -> Report {
    let mut notes = Vec::new();
    let mut marks = TscMarks::new();
    // A record that parses must still belong to this boot.
    let record: std::result::Result<&Record, RecordError> = match &inp.record {
        // Plausibility again: `Inputs` may hold a record `parse` never saw.
        Ok(r) => handoff::check_plausible(r)
            .and_then(|()| handoff::check_chain(r, &inp.facts))
            .map(|()| r),
        Err(e) => Err(e.clone()),
    };
    let fit_for_rate = match (&record, inp.now_fit) {
        (Ok(r), _) => Some((r.header.calib, "record")),
        (Err(_), Some(f)) => Some((f, "now")),
        (Err(_), None) => None,
    };
    let clock = PrintkClock {
        fit: fit_for_rate.map(|(f, _)| f),
        anchor: inp.anchor,
    };
    let end = new_kernel_marks(inp, clock, &mut marks, &mut notes);
    let record = not_an_earlier_handoff(record, &marks);
    let status = record_marks(inp, &record, &mut marks, &mut notes);
    let mut report = on_ns_axis(inp, &record, &marks, fit_for_rate, status, end, &mut notes);
    clock_notes(inp, &report.clock, &mut notes);
    report.notes = notes;
    report.where_next = next::contributors(&report, WHERE_NEXT);
    report
}

/// Items in "where to look next".
const WHERE_NEXT: usize = 5;

/// The new kernel's marks from its log: clock zero, `Run /init`, and the end mark (a kmsg
/// line asked for, else the moment report ran).
fn new_kernel_marks(
    inp: &Inputs,
    clock: PrintkClock,
    marks: &mut TscMarks,
    notes: &mut Vec<String>,
) -> EndMark {
    // The new kernel's clock starts when it calibrates the TSC: raw sched_clock
    // 0. Until sched_clock is marked stable (a late initcall) printk time
    // follows the tick-based clock, which can drift from the TSC; from then on
    // printk time = raw sched_clock + the offset that line prints. So raw 0 is
    // at printk time `offset` in the frame of the anchor and "Run /init".
    let stable = inp.kmsg.iter().find_map(|l| sched_clock_offset(&l.text));
    let zero = match stable {
        Some(offset) => clock.tsc_signed(i128::from(offset)),
        None => {
            if inp.anchor.is_some() {
                notes.push(
                    "no \"sched_clock: Marking stable\" line in the kernel log: the new kernel's \
                     clock zero is taken as printk time 0, exact only if printk time ran with the \
                     TSC all along"
                        .into(),
                );
            }
            clock.tsc(0)
        }
    };
    match zero {
        Some(t) => marks.set(MarkId::KernelClockZero, t),
        None => marks.miss(
            MarkId::KernelClockZero,
            Mark::Unseen("no printk clock anchor (cannot write /dev/kmsg?)".into()),
        ),
    }
    let run_init = inp
        .kmsg
        .iter()
        .find(|l| l.text.starts_with("Run ") && l.text.ends_with(" as init process"));
    match run_init.and_then(|l| clock.tsc(l.ts_us.saturating_mul(1000))) {
        Some(t) => marks.set(MarkId::RunInit, t),
        None => marks.miss(
            MarkId::RunInit,
            Mark::Unseen(if run_init.is_none() {
                "no \"Run ... as init process\" line left in the kernel log".into()
            } else {
                "no printk clock anchor".into()
            }),
        ),
    }
    let mut end = EndMark {
        kind: "report",
        text: None,
    };
    let until = inp
        .until_kmsg
        .as_deref()
        .and_then(|want| inp.kmsg.iter().find(|l| l.text.contains(want)));
    match (until, &inp.until_kmsg) {
        (Some(l), _) => {
            if let Some(t) = clock.tsc(l.ts_us.saturating_mul(1000)) {
                marks.set(MarkId::End, t);
                end = EndMark {
                    kind: "kmsg",
                    text: Some(l.text.clone()),
                };
            }
        }
        (None, Some(want)) => notes.push(format!(
            "no kernel log line contains {want:?}: the timeline ends when report ran instead"
        )),
        (None, None) => {}
    }
    if until.is_none() {
        if let Some((t, text)) = systemd_end(inp.pid1.as_ref(), inp.now_fit, notes) {
            marks.set(MarkId::End, t);
            end = EndMark {
                kind: "systemd",
                text: Some(text),
            };
        }
    }
    if !marks.at.contains_key(&MarkId::End) {
        marks.set(MarkId::End, i128::from(inp.facts.now_tsc));
    }
    end
}

/// A record whose purgatory ran long before this kernel's clock started is an earlier
/// handoff's, left in memory.
fn not_an_earlier_handoff<'a>(
    record: std::result::Result<&'a Record, RecordError>,
    marks: &TscMarks,
) -> std::result::Result<&'a Record, RecordError> {
    let r = record?;
    if let (Some(p), Some(zero)) = (r.purgatory, marks.at.get(&MarkId::KernelClockZero)) {
        let gap = zero.saturating_sub(i128::from(p.exit_tsc));
        let gap_ns = r.header.calib.ticks_to_ns(gap);
        if gap_ns > MAX_EARLY_BOOT_NS {
            return Err(RecordError::Stale(format!(
                "the purgatory jumped {:.1} s before this kernel's clock started: that was an \
                 earlier handoff",
                gap_ns as f64 / 1e9
            )));
        }
    }
    Ok(r)
}

/// The old kernel's and the purgatory's marks from the record, or why each is missing.
fn record_marks(
    inp: &Inputs,
    record: &std::result::Result<&Record, RecordError>,
    marks: &mut TscMarks,
    notes: &mut Vec<String>,
) -> RecordStatus {
    let mut status = RecordStatus {
        status: "ok",
        detail: None,
        old_kernel: None,
        old_boot_id: None,
        mode: None,
        events: 0,
        events_dropped: 0,
        fentry: Vec::new(),
        kprobe: Vec::new(),
        tracer_self_ns: 0,
        trampoline_check_ns: None,
    };
    match record {
        Ok(r) => {
            let fit = r.header.calib;
            status.old_kernel = Some(r.header.kernel_release.clone());
            status.old_boot_id = Some(handoff::format_uuid(&r.header.boot_id));
            status.mode = r.load_mode();
            status.events = r.events.len();
            status.events_dropped = r.dropped;
            status.fentry = kind_names(r.header.attached & r.header.fentry);
            status.kprobe = kind_names(r.header.attached & !r.header.fentry);
            status.tracer_self_ns = r.counters.probe_ns;
            status.trampoline_check_ns = r.trampoline.map(|t| {
                phases::ns_u64(fit.ticks_to_ns(i128::from(t.exit_tsc) - i128::from(t.entry_tsc)))
            });
            if r.dropped > 0 {
                notes.push(format!(
                    "{} events were dropped: the record was full (the tracer sizes it from the \
                     device count)",
                    r.dropped
                ));
            }
            if r.header.flags & flags::REQUEST_STAMPED != 0 {
                marks.set(MarkId::Request, i128::from(r.header.request_tsc));
            } else {
                marks.miss(
                    MarkId::Request,
                    Mark::Unseen(
                        "the reboot was started by something else (trace followed it): the \
                         timeline starts at reboot(2)"
                            .into(),
                    ),
                );
            }
            for p in PHASE_PROBES.iter().chain([&REBOOT_FALLBACK]) {
                let Some(id) = mark_of(p.kind) else { continue };
                match r.events.iter().find(|e| e.kind() == p.kind) {
                    Some(e) => marks.set(id, fit.tsc_at(e.ts_ns)),
                    None if r.header.attached & p.kind.bit() != 0 => marks.miss(
                        id,
                        Mark::NotReached(format!(
                            "{} was watched but not called on this kernel's kexec path",
                            function_of(p.kind)
                        )),
                    ),
                    None => marks.miss(
                        id,
                        Mark::Unseen(format!("no probe could attach to {}", function_of(p.kind))),
                    ),
                }
            }
            // The relocation starts when the machine_kexec probe hands the CPU
            // back: the probe's own time (first-run costs, under emulation
            // milliseconds) is the tracer's, not the kernel's.
            if let Some(mk) = r
                .events
                .iter()
                .find(|e| e.kind() == EventKind::MACHINE_KEXEC)
            {
                let exit = r.counters.last_exit_ns;
                let last = r.events.iter().map(|e| e.ts_ns).max().unwrap_or(0);
                if exit >= mk.ts_ns && exit - mk.ts_ns < MAX_PROBE_NS && last == mk.ts_ns {
                    marks.set(MarkId::MachineKexec, fit.tsc_at(exit));
                    notes.push(format!(
                        "relocation starts when the machine_kexec probe returned: its own {:.3} \
                         ms are in the span before",
                        (exit - mk.ts_ns) as f64 / 1e6
                    ));
                }
            }
            match r.purgatory {
                Some(p) => {
                    marks.set(MarkId::PurgatoryEntry, i128::from(p.entry_tsc));
                    marks.set(MarkId::PurgatoryExit, i128::from(p.exit_tsc));
                }
                None => {
                    let m = Mark::Unseen("the purgatory left no TSC stamps".into());
                    marks.miss(MarkId::PurgatoryEntry, m.clone());
                    marks.miss(MarkId::PurgatoryExit, m);
                }
            }
            match r.trampoline {
                Some(t) => marks.set(MarkId::TrampolineEntry, i128::from(t.entry_tsc)),
                None => marks.miss(
                    MarkId::TrampolineEntry,
                    Mark::NotReached(
                        "no staged trampoline ran (the kernel was not loaded in staged mode)"
                            .into(),
                    ),
                ),
            }
        }
        Err(e) => {
            status.status = match e {
                RecordError::Missing(_) => "missing",
                RecordError::Torn(_) => "torn",
                RecordError::Stale(_) => "stale",
                RecordError::Implausible(_) => "implausible",
            };
            let mut detail = Error::from(e.clone()).to_string();
            if matches!(e, RecordError::Missing(_)) {
                if let Some(id) = &inp.facts.cmdline_boot_id {
                    detail.push_str(&format!(
                        " (boot {id} did trace this reboot — {}= is on the command line — but \
                         its record could not come along: the kernel was loaded in file mode)",
                        handoff::CMDLINE_BOOT_ID
                    ));
                }
            }
            status.detail = Some(detail);
            let why = format!("no usable trace record ({})", status.status);
            for id in [
                MarkId::Request,
                MarkId::RebootEnter,
                MarkId::KernelKexec,
                MarkId::DeviceShutdown,
                MarkId::Migrate,
                MarkId::Syscore,
                MarkId::MachineShutdown,
                MarkId::MachineKexec,
                MarkId::TrampolineEntry,
                MarkId::PurgatoryEntry,
                MarkId::PurgatoryExit,
            ] {
                marks.miss(id, Mark::Unseen(why.clone()));
            }
            // Without the purgatory's stamp nothing marks the kernel's entry.
            marks.miss(MarkId::PurgatoryExit, Mark::Unseen(why));
        }
    }
    status
}

/// Every mark on one ns axis from the earliest, tiled into phases; spans and the breakdown.
/// The notes are the caller's to add to and to place in the report.
fn on_ns_axis(
    inp: &Inputs,
    record: &std::result::Result<&Record, RecordError>,
    marks: &TscMarks,
    fit_for_rate: Option<(Fit, &'static str)>,
    status: RecordStatus,
    end: EndMark,
    notes: &mut Vec<String>,
) -> Report {
    let (rate, rate_from) = fit_for_rate.map_or((None, "none"), |(f, w)| (Some(f), w));
    let base = marks.at.values().copied().min().unwrap_or(0);
    let mut ns_marks: BTreeMap<MarkId, Mark> = marks.other.clone();
    if let Some(fit) = rate {
        for (id, t) in &marks.at {
            ns_marks.insert(*id, Mark::At(fit.ticks_to_ns(t.saturating_sub(base))));
        }
    }
    let tiling = phases::tile(&ns_marks);
    let origin_ns = tiling
        .as_ref()
        .and_then(|t| match ns_marks.get(&t.origin) {
            Some(Mark::At(v)) => Some(*v),
            _ => None,
        })
        .unwrap_or(0);
    let off = |id: MarkId| Tiling::offset(&ns_marks, origin_ns, id).map(phases::ns_u64);

    let (devices, device_count, prologue, notifiers) = match (record, rate) {
        (Ok(r), Some(fit)) => breakdown(r, fit, base, origin_ns, inp.top),
        _ => (Vec::new(), 0, None, Vec::new()),
    };

    let (phases_out, total_ns, unseen, origin) = match tiling {
        Some(t) => {
            let total = t.total_ns;
            let ps = t
                .phases
                .into_iter()
                .map(|p| ReportPhase {
                    share: if total > 0 {
                        p.duration_ns as f64 / total as f64
                    } else {
                        0.0
                    },
                    name: p.name,
                    start_ns: p.start_ns,
                    duration_ns: p.duration_ns,
                    note: p.note,
                })
                .collect();
            (ps, total, t.unseen, Some(t.origin))
        }
        None => {
            notes.push("no timeline: neither the record nor the kernel log gave a start".into());
            (Vec::new(), 0, Vec::new(), None)
        }
    };
    let kernel_boot = phases_out
        .iter()
        .find(|p| p.name == "kernel_boot")
        .map(|p| (p.start_ns, p.start_ns.saturating_add(p.duration_ns)));
    let zero_tsc = marks.at.get(&MarkId::KernelClockZero).copied();
    let initcall_clock = match &inp.initcalls {
        Capture::Read { clock, .. } => clock.clone(),
        _ => None,
    };
    let initcalls = initcalls::place(
        &inp.initcalls,
        |s| {
            let fit = rate?;
            let t = initcalls::tsc_of(initcall_clock.as_deref(), s, zero_tsc, &fit)?;
            Some(phases::ns_u64(
                fit.ticks_to_ns(t.saturating_sub(base))
                    .saturating_sub(origin_ns),
            ))
        },
        kernel_boot,
        inp.top,
    );
    let units_stop = match (record, rate) {
        (Ok(r), Some(fit)) => units_stop::build(
            &r.events,
            r.counters.state,
            r.events
                .iter()
                .find(|e| e.kind() == EventKind::REBOOT_ENTER)
                .map(|e| e.ts_ns),
            |ts| {
                i64::try_from(fit.ticks_to_ns(fit.tsc_at(ts).saturating_sub(base)) - origin_ns)
                    .unwrap_or(0)
            },
            inp.top,
        ),
        _ => None,
    };
    let units_start = match (&inp.pid1, inp.now_fit, rate) {
        (Some(Pid1::Systemd(t)), Some(now), Some(fit)) => Some(units_start::build(
            t,
            &now,
            |tsc| {
                phases::ns_u64(
                    fit.ticks_to_ns(tsc.saturating_sub(base))
                        .saturating_sub(origin_ns),
                )
            },
            inp.top,
        )),
        _ => None,
    };
    let spans = Spans {
        old_kernel_ns: off(MarkId::MachineKexec),
        handoff_ns: match (off(MarkId::MachineKexec), off(MarkId::KernelClockZero)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        kexec_to_purgatory_ns: match (off(MarkId::MachineKexec), off(MarkId::PurgatoryEntry)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        to_run_init_ns: off(MarkId::RunInit),
        to_end_ns: total_ns,
        to_report_ns: rate.map(|fit| {
            phases::ns_u64(
                fit.ticks_to_ns(i128::from(inp.facts.now_tsc).saturating_sub(base))
                    .saturating_sub(origin_ns),
            )
        }),
    };
    let clock = ClockInfo {
        tsc_hz: rate.map_or(0.0, |f| f.tsc_hz()),
        tsc_hz_from: rate_from,
        tsc_hz_now: inp.now_fit.map(|f| f.tsc_hz()),
        old_fit_err_ns: inp.record.as_ref().map_or(0, |r| r.header.calib.err_ns),
        anchor_width_ns: match (inp.anchor, rate) {
            (Some(a), Some(f)) => Some(phases::ns_u64(f.ticks_to_ns(i128::from(a.width)))),
            _ => None,
        },
    };
    Report {
        record: status,
        new_kernel: inp.release.clone(),
        origin,
        end,
        phases: phases_out,
        total_ns,
        spans,
        devices,
        device_count,
        device_prologue_ns: prologue,
        notifiers,
        unseen,
        clock,
        initcalls,
        units_stop,
        units_start,
        where_next: Vec::new(),
        notes: Vec::new(),
    }
}

/// Notes on the TSC itself: marked unstable by the new kernel, or a rate that moved.
fn clock_notes(inp: &Inputs, clock: &ClockInfo, notes: &mut Vec<String>) {
    if let Some(l) = inp
        .kmsg
        .iter()
        .find(|l| l.text.contains("Marking TSC unstable"))
    {
        notes.push(format!(
            "this kernel marked its TSC unstable ({:?}): its printk clock then follows jiffies, \
             not the TSC, so the split between kernel early boot and kernel boot is approximate \
             (the total is not affected); `tsc=reliable` keeps it on the TSC",
            l.text
        ));
    }
    if let (Some(now), true) = (clock.tsc_hz_now, clock.tsc_hz > 0.0) {
        let ppm = (now / clock.tsc_hz - 1.0) * 1e6;
        if ppm.abs() > 1000.0 {
            notes.push(format!(
                "the TSC rate measured now differs from the old kernel's by {ppm:.0} ppm"
            ));
        }
    }
}

type Breakdown = (Vec<DeviceTime>, usize, Option<u64>, Vec<NotifierTime>);

/// Per-device and per-notifier times from the events (CLOCK_MONOTONIC, so
/// durations need no conversion; offsets go through the fit).
fn breakdown(r: &Record, fit: Fit, base: i128, origin_ns: i128, top: usize) -> Breakdown {
    let offset = |e: &Event| -> u64 {
        phases::ns_u64(
            fit.ticks_to_ns(fit.tsc_at(e.ts_ns).saturating_sub(base))
                .saturating_sub(origin_ns),
        )
    };
    let mut evs: Vec<&Event> = r.events.iter().collect();
    evs.sort_by_key(|e| e.ts_ns);
    let after_devices = evs
        .iter()
        .find(|e| e.kind() == EventKind::DEVICE_SHUTDOWN_EXIT)
        .or_else(|| {
            evs.iter().find(|e| {
                matches!(
                    e.kind(),
                    EventKind::MIGRATE_TO_REBOOT_CPU | EventKind::MACHINE_SHUTDOWN
                )
            })
        })
        .map(|e| e.ts_ns);
    // Consecutive stamps of the same device (a nested call) count once.
    let mut devs: Vec<&Event> = Vec::new();
    for e in evs.iter().filter(|e| e.kind() == EventKind::DEVICE_ENTER) {
        if devs.last().is_none_or(|l| l.arg != e.arg) {
            devs.push(e);
        }
    }
    let mut devices: Vec<DeviceTime> = devs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let next = devs.get(i + 1).map(|n| n.ts_ns).or(after_devices);
            DeviceTime {
                device: text(e.device_name()),
                bus: text(e.bus_name()),
                driver: text(e.driver_name()),
                start_ns: offset(e),
                duration_ns: next.map_or(0, |n| n.saturating_sub(e.ts_ns)),
            }
        })
        .collect();
    let count = devices.len();
    let prologue = match (
        evs.iter()
            .find(|e| e.kind() == EventKind::DEVICE_SHUTDOWN_ENTER),
        devs.first(),
    ) {
        (Some(s), Some(d)) => Some(d.ts_ns.saturating_sub(s.ts_ns)),
        _ => None,
    };
    devices.sort_by_key(|d| std::cmp::Reverse(d.duration_ns));
    devices.truncate(top);

    let symbol = |ip: u64| -> String {
        r.header
            .notifiers
            .iter()
            .find(|(a, _)| ip >= *a && ip < a.saturating_add(16))
            .map_or_else(|| format!("{ip:#x}"), |(_, n)| n.clone())
    };
    let mut notifiers = Vec::new();
    let mut open: Vec<&Event> = Vec::new();
    for e in &evs {
        match e.kind() {
            EventKind::NOTIFIER_ENTER => open.push(e),
            EventKind::NOTIFIER_EXIT => {
                if let Some(s) = open.pop() {
                    notifiers.push(NotifierTime {
                        symbol: symbol(s.arg),
                        start_ns: offset(s),
                        duration_ns: e.ts_ns.saturating_sub(s.ts_ns),
                    });
                }
            }
            _ => {}
        }
    }
    notifiers.sort_by_key(|n| std::cmp::Reverse(n.duration_ns));
    notifiers.truncate(top);
    (devices, count, prologue, notifiers)
}
