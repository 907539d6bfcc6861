//! The staged half of `load`: planning into the crashkernel reservation and the two loads.

use super::*;

/// The normal path carries `extras` (the tracer's chain and the purgatory's TSC target) like an
/// uncompressed load, and the trampoline copies its stamps next to the purgatory's; the panic
/// path carries nothing of it.
pub(super) fn plan_staged(
    status: &Status,
    input: &segments::UncompressedInput,
    extras: &LoadExtras,
) -> Result<staged::StagedPlan> {
    let opts = staged::StagedOptions {
        reservation: staged::pick_reservation(status)?,
        nonce: staged::new_nonce()?,
        trampoline_tsc_out: extras.trampoline_tsc_out,
    };
    staged::plan_staged(input, &extras.plan, &opts)
}

/// Loads a staged plan: the crash image first (copied into the reservation now), then the
/// trampoline as the normal image; if the second load fails, the first is undone.
pub(super) fn load_staged(
    opts: &LoadOptions,
    status: &Status,
    plan: &staged::StagedPlan,
    ours_before: bool,
    report: &mut LoadReport,
    // When planning began (the host's boot information, `plan_staged`): the `plan` lap's start.
    t: Instant,
) -> Result<()> {
    let displaced = status.crash_loaded == Some(true) && !ours_before;
    report.notes.extend(plan.notes.iter().cloned());
    if displaced {
        report.notes.push(
            "a crash (kdump) kernel was loaded: staging replaces it, so there is no kdump until \
             the next boot (or until `fastkexec unload` and the kdump service loads it again)"
                .into(),
        );
    }
    report.notes.push(
        "kdump is displaced while this kernel is staged: a panic before exec boots the staged \
         kernel with only the crashkernel reservation as RAM (kdump-safe), and no dump is taken"
            .into(),
    );
    let crash = plan.crash_specs();
    let normal = plan.normal_specs();
    kexec::validate_segments(plan.crash_entry, &crash)?;
    kexec::validate_segments(plan.trampoline_entry(), &normal)?;
    report.plan = Some(plan.to_string());
    report.staged = Some(plan.summary(displaced));
    report.syscall = format!(
        "kexec_load(entry={:#x}, nr_segments={}, flags={:#x}) then kexec_load(entry={:#x}, \
         nr_segments=1, flags={:#x})",
        plan.crash_entry,
        crash.len(),
        kexec::KEXEC_ON_CRASH | kexec::KEXEC_ARCH_X86_64,
        plan.trampoline_entry(),
        kexec::KEXEC_ARCH_X86_64
    );
    report.lap("plan", t);
    if opts.dry_run {
        return Ok(());
    }
    let t = Instant::now();
    kexec::kexec_load(plan.crash_entry, &crash, kexec::KEXEC_ON_CRASH)
        .map_err(|e| kexec::explain(Call::KexecLoad, e, status))?;
    report.lap("kexec_load (crash image, into the reservation)", t);
    let t = Instant::now();
    if let Err(e) = kexec::kexec_load(plan.trampoline_entry(), &normal, 0) {
        let err = kexec::explain(Call::KexecLoad, e, status);
        let undo = staged::unload_crash(status);
        let _ = staged::remove_state(&opts.root);
        // After an earlier staged load the normal image is its trampoline, whose staged kernel
        // was just overwritten: left loaded it would reset the machine at exec.
        let stale = ours_before.then(kexec::unload);
        return Err(match (undo, stale) {
            (Ok(()), None) => err,
            (Ok(()), Some(Ok(()))) => Error::Plan {
                problem: format!(
                    "loading the trampoline failed ({err}); the staged crash image and the \
                     previous staged load's trampoline were unloaded: nothing is loaded now"
                ),
            },
            (undo, stale) => Error::Plan {
                problem: format!(
                    "loading the trampoline failed ({err}); undoing it failed too (crash image: \
                     {undo:?}, previous trampoline: {stale:?}): run `fastkexec unload`"
                ),
            },
        });
    }
    report.lap("kexec_load (trampoline)", t);
    report.loaded = true;
    let t = Instant::now();
    let state = staged::record(
        plan,
        &opts.kernel,
        opts.initrd.as_deref(),
        &report.cmdline,
        staged::boot_id(&opts.root),
    );
    report.lap("record (full checksums)", t);
    let t = Instant::now();
    if let Err(e) = staged::write_state(&opts.root, &state) {
        report.notes.push(format!(
            "could not record the staged load ({e}): `fastkexec exec` cannot check it beforehand \
             (the trampoline still checks it and resets the machine rather than boot a replaced \
             kernel)"
        ));
    }
    report.lap("write state", t);
    Ok(())
}
