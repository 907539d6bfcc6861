//! `fastkexec status`: what this kernel allows, what is loaded, what the tracer can see.

use std::path::Path;

use anyhow::Result;

use crate::cli::StatusArgs;
use crate::{exit, out};
use fastkexec::trace::support;

/// Returns the exit status: `status`'s answer for scripts, as `kexec -S` gives one.
pub fn run(args: StatusArgs, root: &Path) -> Result<u8> {
    let st = support::with_status(root)?;
    let printed = if args.json {
        out::json(&st)
    } else {
        out::text(format_args!("{st}"));
        Ok(())
    };
    // Its answer wins over a lost product, as a failure's status does.
    match exit::of_status(&st.status) {
        0 => printed.map(|()| 0),
        answer => Ok(answer),
    }
}
