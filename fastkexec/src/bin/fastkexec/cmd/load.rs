//! `fastkexec load`: load the next kernel (also the options `trace` loads with).

use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::{LoadArgs, ModeArg};
use crate::out;
use fastkexec::ops::exec;
use fastkexec::ops::load::{self, CmdlineSource, LoadOptions, Mode};

pub fn run(args: LoadArgs, root: &Path) -> Result<()> {
    if root != Path::new("/") && !args.dry_run {
        // The plan would come from another machine's memory map: never hand that to the kernel.
        anyhow::bail!("--root only works with --dry-run (a real load must describe this machine)");
    }
    if !args.dry_run {
        exec::ignore_hangup();
    }
    let opts = load_options(&args, root);
    let report =
        load::load(&opts).with_context(|| format!("cannot load {}", opts.kernel.display()))?;
    if args.json {
        out::json(&report)
    } else {
        out::text(format_args!("{report}"));
        Ok(())
    }
}

/// `load`'s options from its arguments (also `trace`'s).
pub fn load_options(args: &LoadArgs, root: &Path) -> LoadOptions {
    LoadOptions {
        kernel: args.kernel(),
        initrd: args.initrd.clone(),
        cmdline: if args.reuse_cmdline {
            CmdlineSource::ReuseCmdline {
                append: args.append(),
            }
        } else {
            CmdlineSource::Append(args.append().unwrap_or_default())
        },
        mode: match args.mode {
            ModeArg::Auto => Mode::Auto,
            ModeArg::File => Mode::File,
            ModeArg::Uncompressed => Mode::Uncompressed,
            ModeArg::Staged => Mode::Staged,
        },
        dry_run: args.dry_run,
        verify: args.verify,
        verify_wrong_sum_for_test: args.test_wrong_verify_sum,
        cache_dir: args.cache_dir.clone(),
        root: root.to_path_buf(),
    }
}
