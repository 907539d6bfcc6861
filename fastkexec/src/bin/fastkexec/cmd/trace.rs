//! `fastkexec trace`: probe the reboot path and load the kernel that will carry the record.

use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::{DamageArg, TraceArgs};
use crate::out::{self, say};
use fastkexec::{ops::exec, trace};

pub fn run(args: TraceArgs, verbose: u8, root: &Path) -> Result<()> {
    if root != Path::new("/") {
        anyhow::bail!("--root does not go with trace (it probes and loads on this machine)");
    }
    // Both modes: with --exec the reboot must not stop half-way; following, a kernel loaded
    // over this process's pages must neither lose its tracer nor be unloaded by a hangup.
    exec::ignore_hangup();
    let opts = trace::TraceOptions {
        load: super::load::load_options(&args.load, root),
        exec: args.exec,
        force: args.force,
        verbose: verbose > 0,
        lean: args.lean,
        initcalls: !args.no_initcalls,
        mark: args.mark,
        damage: args.damage.map(|d| match d {
            DamageArg::HeaderByte => trace::Damage::HeaderByte,
            DamageArg::OtherBoot => trace::Damage::OtherBoot,
        }),
    };
    // With --json, standard output carries the JSON alone: progress goes to standard error.
    let mut progress: Box<dyn std::io::Write> = if args.load.json {
        Box::new(out::Stderr)
    } else {
        Box::new(out::Stdout)
    };
    let summary = trace::run(&opts, &mut progress).with_context(|| {
        format!(
            "cannot trace the reboot into {}",
            opts.load.kernel.display()
        )
    })?;
    if args.load.json {
        return out::json(&summary);
    }
    out::text(format_args!("{}", summary.load));
    for a in &summary.attachments {
        say!(
            "probe:    {} {} {}",
            a.how,
            a.function,
            a.why
                .as_deref()
                .map(|w| format!("({w})"))
                .unwrap_or_default()
        );
    }
    for n in &summary.notes {
        say!("note:     {n}");
    }
    if args.load.dry_run {
        out::text(format_args!(
            "{}",
            fastkexec::trace::preflight::render(&summary.phases)
        ));
        say!("dry run: every probe detached again; nothing was loaded");
    }
    Ok(())
}
