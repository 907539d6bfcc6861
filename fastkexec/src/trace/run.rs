//! `fastkexec trace` end to end: start, load with the record, seal, reboot or follow.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::*;

/// One event as a line, relative to `base_ns` (CLOCK_MONOTONIC).
pub fn format_event(e: &Event, base_ns: u64) -> String {
    let t = e.ts_ns.saturating_sub(base_ns) as f64 / 1e6;
    let kind = e.kind().name().unwrap_or("?");
    let what = match e.kind() {
        EventKind::DEVICE_ENTER | EventKind::DEVICE_EXIT => format!(
            "{} ({}, {})",
            String::from_utf8_lossy(e.device_name()),
            String::from_utf8_lossy(e.bus_name()),
            String::from_utf8_lossy(e.driver_name())
        ),
        EventKind::NOTIFIER_ENTER => format!("{:#x}", e.arg),
        _ => format!("{} cpu {}", String::from_utf8_lossy(e.name_bytes()), e.cpu),
    };
    format!("{t:>10.3} ms  {kind:<28} {what}")
}

/// SIGINT and SIGTERM, blocked and read from a signalfd, so follow mode notices them between
/// polls without a handler. SIGHUP is not among them: a terminal that hangs up (an SSH session
/// dropped by the very shutdown being followed) must not detach the probes or unload the
/// kernel. The CLI ignores it (see [`exec::ignore_hangup`]). `trace` runs on one thread, so
/// blocking them on it blocks them for the process.
pub(super) fn stop_signals() -> Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    let fail = |e: nix::Error| Error::Tracer {
        problem: format!("cannot watch for SIGINT/SIGTERM: {e}"),
    };
    mask.thread_block().map_err(fail)?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(fail)
}

/// Undoes a load of `trace` when dropped armed: the loaded kernel's boot_params point at the
/// trace pages, which die with this process (or with the pins), so a later `systemctl kexec`
/// must not find it. Every way out of [`run`] after the load (an error from `?`, a failed
/// reboot, Ctrl-C) drops it; only a reboot that is under way disarms it.
pub struct LoadedGuard<F: FnMut()> {
    undo: Option<F>,
}

impl<F: FnMut()> LoadedGuard<F> {
    pub fn new(undo: F) -> Self {
        Self { undo: Some(undo) }
    }

    /// The reboot is under way: the kernel must stay loaded.
    pub fn disarm(mut self) {
        self.undo = None;
    }
}

impl<F: FnMut()> Drop for LoadedGuard<F> {
    fn drop(&mut self) {
        if let Some(mut undo) = self.undo.take() {
            undo();
        }
    }
}

/// What the probes are, printed before this process disappears into reboot(2).
pub(super) fn announce(
    out: &mut dyn Write,
    attachments: &[Attachment],
    notes: &[String],
    mark: Option<&str>,
) {
    for a in attachments {
        say(
            out,
            format_args!(
                "trace: {:<10} {}{}",
                if a.how == "none" { "UNSEEN" } else { a.how },
                a.function,
                a.why
                    .as_deref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default()
            ),
        );
    }
    for n in notes {
        say(out, format_args!("trace: note: {n}"));
    }
    if let Some(m) = mark {
        say(out, format_args!("{m}"));
    }
}

/// What `run` did, for the caller to print.
#[derive(Debug, Serialize)]
pub struct TraceSummary {
    pub load: LoadReport,
    /// What stamps each phase's boundaries, given the probes that attached.
    pub phases: Vec<preflight::PhaseSource>,
    pub attachments: Vec<Attachment>,
    pub notifiers: Vec<String>,
    pub record_pages: usize,
    pub notes: Vec<String>,
}

/// One line of progress on `out`, best effort: a terminal that hangs up or a reader that goes
/// away must not stop the trace half-way (the loaded kernel points at this process's pages).
pub(super) fn say(out: &mut dyn Write, line: std::fmt::Arguments<'_>) {
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Runs `fastkexec trace`. With `exec` it returns only if the reboot failed. What it writes
/// on `out` is progress for a human: a failed write is ignored.
/// With `opts.load.dry_run` (a preflight): every probe is attached for real and
/// the load is planned, then everything is detached and nothing is loaded.
pub fn run(opts: &TraceOptions, out: &mut dyn Write) -> Result<TraceSummary> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotPrivileged {
            action: "tracing the reboot",
            detail: "the probes, /proc/self/pagemap and kexec all need root".into(),
        });
    }
    // Every mode but file carries the record; auto decides as `load` does.
    let lopts = opts.load.clone();
    let mut image = crate::image::KernelImage::open(&lopts.kernel)?;
    let footprint = kernel_footprint(&lopts, &mut image)?;
    let mut tracer = Tracer::start(opts.verbose, opts.lean)?;
    let mut extras = tracer.load_extras();
    let initcall_words = if opts.initcalls {
        let (line, _) = crate::plan::cmdline::build_cmdline(&lopts.cmdline, &lopts.root)?;
        let words = initcalls::cmdline_words(&line).join(" ");
        tracer.notes.push(if words.is_empty() {
            "initcalls: the command line already asks for the initcall trace events".into()
        } else {
            format!(
                "initcalls: the next kernel records its initcalls for `report` ({words}; \
                 --no-initcalls leaves them out)"
            )
        });
        extras.cmdline_append = Some(
            [
                extras.cmdline_append.take().unwrap_or_default(),
                words.clone(),
            ]
            .join(" ")
            .trim()
            .to_string(),
        );
        words
    } else {
        tracer.notes.push(
            "initcalls: --no-initcalls: the next kernel is not asked for its initcall events; \
             `report` shows none"
                .into(),
        );
        String::new()
    };
    if let Some(fp) = footprint {
        let host = hostinfo::read(&lopts.root)?;
        // A staged load ignores this: its kernel goes into the crashkernel
        // reservation, where no page of ours can be.
        extras.phys_delta =
            phys_delta_clear_of(fp, &tracer.phys, &host.memmap).ok_or_else(|| Error::Tracer {
                problem: "no 2 MiB-aligned place in RAM for the next kernel clear of the trace \
                          record's pages"
                    .into(),
            })?;
    }
    // One lock from the load to the reboot (or the unload): nothing else changes kexec state
    // in between. Follow mode lets go once loaded (see below).
    let lock = if lopts.dry_run {
        None
    } else {
        Some(KexecLock::acquire(&lopts.root, "trace")?)
    };
    // A line too long because of the initcall words says so, and how to leave them out.
    let hint = |e| match e {
        Error::CmdlineTooLong {
            len,
            max,
            limit_from,
        } if !initcall_words.is_empty() => Error::CmdlineTooLong {
            len,
            max,
            limit_from: format!(
                "{limit_from} (trace added {} bytes of initcall trace words: --no-initcalls \
                 leaves them out)",
                initcall_words.len() + 1
            ),
        },
        e => e,
    };
    let report = load::load_image(&lopts, &mut image, &extras, lock.as_ref()).map_err(hint)?;
    tracer.load_flags = handoff::load_mode_flags(report.mode);
    if extras.phys_delta != 0 && report.mode == LoadMode::Uncompressed {
        tracer.notes.push(format!(
            "a trace page lay in the next kernel's physical range: the kernel is loaded {:#x} \
             higher",
            extras.phys_delta
        ));
    }
    let summary = |t: &Tracer, load: LoadReport| TraceSummary {
        phases: preflight::phase_sources(&t.attachments, load.mode),
        load,
        attachments: t.attachments.clone(),
        notifiers: t.notifiers.iter().map(|(_, n)| n.clone()).collect(),
        record_pages: t.phys.len(),
        notes: t.notes.clone(),
    };
    let Some(lock) = lock else {
        // A dry run: dropping the tracer detaches every probe; the plan loaded nothing.
        return Ok(summary(&tracer, report));
    };
    // From here on every way out but a reboot under way unloads (issue 13, defect 4).
    let root = lopts.root.clone();
    let lock = std::cell::RefCell::new(Some(lock));
    let loaded = LoadedGuard::new(|| {
        unpin(Path::new(PIN_DIR));
        // Follow mode has let go of the lock while it waited: take it again.
        let held = match lock.borrow_mut().take() {
            Some(l) => Ok(l),
            None => KexecLock::acquire(&root, "trace (unloading)"),
        };
        if let Err(e) = held.and_then(|l| exec::unload_locked(&l)) {
            log::warn!(
                "could not unload the kernel trace loaded ({e}); run `fastkexec unload` before \
                 any `systemctl kexec`: its boot_params point at freed trace pages"
            );
        }
    });

    if opts.exec {
        let path = exec::choose_path(Path::new("/"), opts.force);
        if path == exec::ExecPath::Systemctl {
            // systemd kills every process before the reboot: keep the probes
            // and pages alive in bpffs.
            unpin(Path::new(PIN_DIR));
            tracer.pin(Path::new(PIN_DIR))?;
        }
        // Best effort: a terminal gone now must not stop the reboot (issue 17).
        announce(out, &tracer.attachments, &tracer.notes, None);
        // The request is stamped once exec's checks have passed: the blackout starts there.
        let mut go = || {
            if let Some(m) = opts.mark.as_deref() {
                say(out, format_args!("{m}"));
            }
            tracer.arm_units()?;
            let request = (clock::rdtsc(), clock::monotonic_ns());
            tracer.seal(Some(request), opts.damage)
        };
        match lock.borrow().as_ref() {
            Some(l) => exec::exec_locked(opts.force, l, &mut go)?,
            None => exec::exec(opts.force, &mut go)?,
        }
        // systemd accepted `systemctl kexec`: the shutdown is under way.
        loaded.disarm();
        return Ok(summary(&tracer, report));
    }

    // Follow mode: it cannot know when the shutdown starts, so the units are stamped from now.
    tracer.arm_units()?;
    unpin(Path::new(PIN_DIR));
    tracer.pin(Path::new(PIN_DIR))?;
    tracer.seal(None, opts.damage)?;
    // Waiting may take hours, and the reboot may be started by `fastkexec exec`, which takes
    // the lock: let go of it now (the guard takes it again to unload).
    drop(lock.borrow_mut().take());
    let stop = stop_signals()?;
    say(
        out,
        format_args!(
            "trace: attached ({} probe points), kernel loaded ({}); waiting for a kexec reboot \
             (e.g. `systemctl kexec`); Ctrl-C detaches and unloads",
            tracer
                .attachments
                .iter()
                .filter(|a| a.how != "none")
                .count(),
            report.mode
        ),
    );
    let base = clock::monotonic_ns();
    let mut shown = 0usize;
    let mut last_seal = Instant::now();
    loop {
        tracer.flush_log();
        let (_, events) = tracer.events();
        for e in events.iter().skip(shown) {
            say(out, format_args!("{}", format_event(e, base)));
        }
        shown = events.len();
        // Refresh the calibration while nothing happens (NTP slews
        // CLOCK_MONOTONIC); once the reboot runs, leave the header alone.
        if tracer.state() & state::KEXEC == 0 && last_seal.elapsed() > Duration::from_secs(1) {
            tracer.seal(None, opts.damage)?;
            last_seal = Instant::now();
        }
        // A failed read counts as no signal: the next poll tries again.
        let signo = stop.read_signal().ok().flatten().map(|si| si.ssi_signo);
        match signo.and_then(|n| Signal::try_from(n as i32).ok()) {
            None => {}
            Some(Signal::SIGTERM)
                if tracer.state() != 0 || exec::ensure_loaded(Path::new("/")).is_ok() =>
            {
                // Most likely the shutdown that ends in the kexec: the pins
                // keep everything alive. Disarmed first: only Ctrl-C unloads.
                loaded.disarm();
                say(
                    out,
                    format_args!("trace: terminated; the probes stay pinned for the reboot"),
                );
                return Ok(summary(&tracer, report));
            }
            _ => {
                drop(loaded);
                say(
                    out,
                    format_args!(
                        "trace: detached; the loaded kernel was unloaded (its boot_params \
                         pointed at the trace pages)"
                    ),
                );
                return Ok(summary(&tracer, report));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
