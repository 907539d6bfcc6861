//! `fastkexec unload`: drop the loaded kernel (and a staged one's reservation contents).

use anyhow::{Context, Result};

use crate::out::say;
use fastkexec::ops::exec;

pub fn run() -> Result<()> {
    exec::ignore_hangup();
    let done = exec::unload().context("cannot unload the kexec image")?;
    say!("{done}");
    Ok(())
}
