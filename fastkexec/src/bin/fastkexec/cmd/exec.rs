//! `fastkexec exec`: boot the loaded kernel.

use anyhow::{Context, Result};

use crate::cli::ExecArgs;
use crate::out::say;
use fastkexec::ops::exec;

pub fn run(args: ExecArgs) -> Result<()> {
    exec::ignore_hangup();
    // The mark (a stopwatch for the lab) goes out once the checks have passed.
    let mut go = || {
        if let Some(m) = &args.mark {
            say!("{m}");
        }
        Ok(())
    };
    exec::exec(args.force, &mut go).context("cannot boot the loaded kernel")?;
    // Only the `systemctl kexec` path returns: systemd now shuts down into the kernel.
    say!("systemd accepted `systemctl kexec`: shutting down into the loaded kernel");
    Ok(())
}
