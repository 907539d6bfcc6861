//! `fastkexec completions` and `fastkexec man`: generated from the clap definitions.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::out::{self, say};

pub fn completions(shell: Shell) -> Result<()> {
    let mut cmd = Cli::command();
    // Into memory first: clap_complete panics when its writer fails.
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "fastkexec", &mut buf);
    out::product(&buf)
}

pub fn man(dir: Option<PathBuf>) -> Result<()> {
    match dir {
        Some(dir) => write_man_pages(&dir),
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut buf)?;
            out::product(&buf)
        }
    }
}

/// Writes `fastkexec.1` and `fastkexec-<command>.1` for every command into `dir`.
fn write_man_pages(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut pages = vec![("fastkexec".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("fastkexec-{}", sub.get_name());
        pages.push((name, sub.clone()));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page)
            .title(name.to_uppercase())
            .render(&mut buf)?;
        fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
        say!("{}", path.display());
    }
    Ok(())
}
