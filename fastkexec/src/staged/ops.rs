//! Unloading a staged load, reconciling after another load, and when `auto` stages.

use super::*;

/// Unloads the crash image (`kexec_load` with no segments and
/// `KEXEC_ON_CRASH`).
pub fn unload_crash(status: &Status) -> Result<()> {
    kexec::kexec_load(0, &[], kexec::KEXEC_ON_CRASH)
        .map_err(|e| kexec::explain(Call::Unload, e, status))
}

/// `unload` for a staged load: the crash image goes too when it is still ours (or cannot be
/// checked), and the record is removed. Returns what was done, or `None` when nothing was
/// staged. An unreadable record is removed (that is what `unload` is for), and the crash
/// image, whose owner it cannot tell, is left loaded with a word on how to unload it.
pub fn unload_staged(root: &Path) -> Result<Option<String>> {
    match read_state(root) {
        Ok(None) => return Ok(None),
        Ok(Some(_)) => {}
        Err(e @ Error::StagedState { .. }) => {
            remove_state(root)?;
            let crash = match crash_loaded(root) {
                Some(false) => "no crash image is loaded".to_string(),
                _ => "the crash image (whose owner it cannot tell) was left loaded: `kexec -p \
                      -u` unloads it if it is the staged kernel"
                    .to_string(),
            };
            return Ok(Some(format!(
                "the staged-mode record could not be used ({e}); removed it; {crash}"
            )));
        }
        Err(e) => return Err(e),
    }
    let (unload, msg) =
        unload_decision(crash_loaded(root), check_before_exec(root, Depth::Sampled))?;
    if unload {
        let st = status::status(root).unwrap_or_default();
        unload_crash(&st)?;
    }
    remove_state(root)?;
    Ok(Some(msg))
}

/// After a load of another mode replaced the staged trampoline, the staged crash image has
/// no way in any more but a panic, and it keeps kdump out: unload it (when it is still ours)
/// and remove the record, so kdump can load again and `exec` checks nothing stale. Returns
/// what was done, or `None` when nothing was staged.
pub fn reconcile_after_load(root: &Path, status: &Status) -> Result<Option<String>> {
    if read_state(root)?.is_none() {
        return Ok(None);
    }
    let (unload, msg) =
        displaced_decision(crash_loaded(root), check_before_exec(root, Depth::Sampled))?;
    if unload {
        unload_crash(status)?;
    }
    remove_state(root)?;
    Ok(Some(msg))
}

/// What a load of another mode does with the staged crash image it displaced (see
/// [`reconcile_after_load`]): whether to unload it, and what to tell the user.
pub fn displaced_decision(
    crash_loaded: Option<bool>,
    check: Result<PreExec>,
) -> Result<(bool, String)> {
    let (unload, what) = unload_decision(crash_loaded, check)?;
    Ok((
        unload,
        if unload {
            "the kernel staged earlier in the crashkernel reservation had no way in any more: \
             unloaded it and removed its record (the reservation is free for kdump again)"
                .to_string()
        } else {
            format!("the earlier staged load is over: {what}")
        },
    ))
}

/// What `unload` does with the staged crash image, from whether a crash image is loaded
/// (`/sys/kernel/kexec_crash_loaded`) and what `check_before_exec` found: whether to unload
/// it, and what to tell the user. Three cases a user must tell apart: ours (unloaded), gone
/// (unloaded elsewhere: nothing to do but clear our stale state), someone else's (left alone).
pub fn unload_decision(
    crash_loaded: Option<bool>,
    check: Result<PreExec>,
) -> Result<(bool, String)> {
    if crash_loaded == Some(false) {
        return Ok((
            false,
            "no crash kernel is loaded any more (it was unloaded after `fastkexec load` staged \
             it, e.g. by `kexec -p -u` or a kdump service stopping): nothing to unload there; \
             the staged state was stale and is cleared"
                .into(),
        ));
    }
    match check {
        Ok(_) => Ok((
            true,
            "also unloaded the kernel staged in the crashkernel reservation (no crash kernel is \
             loaded now)"
                .into(),
        )),
        Err(Error::StagedReplaced { problem, .. }) => Ok((
            false,
            format!(
                "the crash kernel loaded now is not the one fastkexec staged ({problem}): left \
                 it loaded (it is someone else's, e.g. kdump's); the staged state is cleared"
            ),
        )),
        Err(e) => Err(e),
    }
}

/// Whether `auto` may stage: kexec_load allowed, a reservation, and no crash
/// kernel of someone else's loaded — our own staged kernel from this boot
/// may be replaced, once checked to still be ours.
pub fn auto_eligible(status: &Status, root: &Path) -> Option<String> {
    if !status.modes.staged.allowed {
        return None;
    }
    match status.crash_loaded {
        Some(false) => Some("the crashkernel reservation is idle (no crash kernel loaded)".into()),
        Some(true) => match check_before_exec(root, Depth::Sampled) {
            Ok(PreExec::Intact { .. }) => {
                Some("the crashkernel reservation holds fastkexec's own staged kernel".into())
            }
            _ => None,
        },
        None => None,
    }
}
