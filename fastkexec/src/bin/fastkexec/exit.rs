//! The exit-status table: one place for every number a `fastkexec` command exits with
//! (README "Exit status", fastkexec(1)). Scripts branch on these, so they only ever grow.

use fastkexec::error::Failure;
use fastkexec::host::status::Status;

use crate::out::ExitStatus;

/// It failed for a reason not in the rows below (a syscall, the machine's state).
pub const FAILURE: u8 = 1;
/// A usage error: clap's own status for a command line it cannot parse.
pub const USAGE: u8 = 2;
/// Nothing to act on: `report` found no usable record, `exec` no loaded image, `status` no
/// image loaded.
pub const NOTHING: u8 = 3;
/// Something given was refused: an image, initrd, command line, state or cache file.
pub const BAD_INPUT: u8 = 4;
/// Not possible on this kernel or machine (no kexec, the mode is blocked, no reservation).
pub const UNSUPPORTED: u8 = 5;
/// The command did its work, but its product on standard output (JSON, an export, completions,
/// a man page) could not be written: `EX_IOERR` of sysexits(3).
pub const OUTPUT_LOST: u8 = 74;

/// The status for a failed command: the one it asked for, else its library error's row.
pub fn of_error(e: &anyhow::Error) -> u8 {
    if let Some(s) = e.downcast_ref::<ExitStatus>() {
        return s.0;
    }
    e.chain()
        .find_map(|c| c.downcast_ref::<fastkexec::Error>())
        .map_or(FAILURE, |fe| match fe.failure() {
            Failure::BadInput => BAD_INPUT,
            Failure::Unsupported => UNSUPPORTED,
            Failure::NothingToDo => NOTHING,
            Failure::Other => FAILURE,
        })
}

/// `status`'s answer, as `kexec -S` gives one: 0 when an image is loaded (normal, or staged
/// by fastkexec in the crashkernel reservation), [`NOTHING`] when none is, [`UNSUPPORTED`]
/// when fastkexec cannot load anything on this kernel at all.
pub fn of_status(st: &Status) -> u8 {
    let any_mode = [&st.modes.file, &st.modes.uncompressed, &st.modes.staged]
        .iter()
        .any(|m| m.allowed);
    let staged = st.staged.is_some() && st.crash_loaded == Some(true);
    if !st.kexec_core || !any_mode {
        UNSUPPORTED
    } else if st.loaded == Some(true) || staged {
        0
    } else {
        NOTHING
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixtures(case: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/status")
            .join(case)
    }

    #[test]
    fn status_answers_like_kexec_s_from_captured_machines() {
        let st =
            |case: &str| fastkexec::host::status::status(&fixtures(case)).expect("fixture tree");
        // A captured machine with kexec and nothing loaded.
        let plain = st("plain");
        assert_eq!(plain.loaded, Some(false));
        assert_eq!(of_status(&plain), NOTHING);
        let mut loaded = plain.clone();
        loaded.loaded = Some(true);
        assert_eq!(of_status(&loaded), 0);
        // kexec_load_disabled=1 blocks every mode.
        assert_eq!(of_status(&st("disabled")), UNSUPPORTED);
    }

    #[test]
    fn errors_map_to_their_rows() {
        let e = |err: fastkexec::Error| of_error(&anyhow::Error::new(err).context("outer"));
        assert_eq!(
            e(fastkexec::Error::BadVmlinux {
                path: "/k".into(),
                problem: "x".into()
            }),
            BAD_INPUT
        );
        assert_eq!(
            e(fastkexec::Error::ModeUnavailable {
                mode: "staged",
                reason: "x".into()
            }),
            UNSUPPORTED
        );
        assert_eq!(
            e(fastkexec::Error::NothingLoaded { path: "/k".into() }),
            NOTHING
        );
        assert_eq!(
            e(fastkexec::Error::Plan {
                problem: "x".into()
            }),
            FAILURE
        );
        assert_eq!(
            of_error(&anyhow::Error::new(ExitStatus(OUTPUT_LOST, String::new()))),
            OUTPUT_LOST
        );
    }

    #[test]
    fn a_usage_error_is_claps_status() {
        use clap::Parser;
        let e = crate::cli::Cli::try_parse_from(["fastkexec", "load"]).expect_err("no kernel");
        assert_eq!(e.exit_code(), i32::from(USAGE));
    }
}
