//! `fastkexec report`: the reboot just made, from the record the old kernel handed over;
//! then its fold into the histograms.

use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::ReportArgs;
use crate::exit;
use crate::out::{self, ExitStatus};
use fastkexec::record::report;

pub fn run(args: ReportArgs, root: &Path) -> Result<()> {
    let rep = report::report(&report::ReportOptions {
        root: root.to_path_buf(),
        until_kmsg: args.until_kmsg.clone(),
        top: args.top,
        pid1: Some(fastkexec::host::systemd::read(root)),
    })
    .context("cannot build the report")?;
    if let Some(svg) = &args.svg {
        // A picture for people: readable by all, like the report itself.
        fastkexec::files::atomic_file::write(
            svg,
            fastkexec::record::svg::render(&rep).as_bytes(),
            0o644,
        )
        .with_context(|| format!("cannot write the timeline picture {}", svg.display()))?;
    }
    // The fold below happens whether or not the JSON got out; a lost JSON only decides the
    // exit status, and only when nothing more important does.
    let printed = if args.json {
        out::json(&rep)
    } else {
        out::text(format_args!("{rep}"));
        Ok(())
    };
    if !rep.has_record() {
        let detail = rep.record.detail.clone().unwrap_or_default();
        return Err(ExitStatus(exit::NOTHING, detail).into());
    }
    if !args.no_fold {
        if let Err(e) = fastkexec::metrics::fold::fold_report(
            &rep,
            root,
            &args.state_dir,
            usize::from(args.unit_histograms),
        ) {
            log::warn!(
                "the reboot was not folded into {}: {e:#}",
                args.state_dir.display()
            );
        }
    }
    printed
}
