//! The `fastkexec` command: a thin clap layer over the library.

mod cli;
mod exit;
mod out;

use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};

use cli::{Cli, Command, LoadArgs, ModeArg, PrepareArgs};
use cli::{DamageArg, ReportArgs, TraceArgs};
use fastkexec::ops::load::{self, CmdlineSource, LoadOptions, Mode};
use fastkexec::{host::status, image::prepare, ops::exec, record::report, trace};
use out::{say, ExitStatus};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; anything else is a usage error.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    init_logging(cli.verbose);
    let code = match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            print_error(&e);
            ExitCode::from(exit::of_error(&e))
        }
    };
    out::warn_if_lost();
    code
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .target(env_logger::Target::Stderr)
        .format_timestamp_millis()
        .init();
}

/// `fastkexec: error: <top>` then each cause not already spelled out by the line before it
/// (library errors embed their source's text, so the chain would otherwise repeat it).
fn print_error(e: &anyhow::Error) {
    let mut shown = e.to_string();
    out::err_text(format_args!("fastkexec: error: {shown}\n"));
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !shown.contains(&text) {
            out::err_text(format_args!("  caused by: {text}\n"));
        }
        shown = text;
    }
}

/// Runs the command; `Ok` carries its exit status (0, or `status`'s answer for scripts).
fn run(cli: Cli) -> Result<u8> {
    let done = match cli.command {
        Command::Load(args) => run_load(args, &cli.root),
        Command::Exec(args) => {
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
        Command::Unload => {
            exec::ignore_hangup();
            let done = exec::unload().context("cannot unload the kexec image")?;
            say!("{done}");
            Ok(())
        }
        Command::Status(args) => {
            let st = status::with_tracer(&cli.root)?;
            let printed = if args.json {
                out::json(&st)
            } else {
                out::text(format_args!("{st}"));
                Ok(())
            };
            // Its answer wins over a lost product, as a failure's status does.
            return match exit::of_status(&st) {
                0 => printed.map(|()| 0),
                answer => Ok(answer),
            };
        }
        Command::Prepare(args) => run_prepare(args),
        Command::Trace(args) => run_trace(args, cli.verbose, &cli.root),
        Command::Report(args) => run_report(args, &cli.root),
        Command::Export(args) => run_export(args),
        Command::Serve(args) => run_serve(args),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            // Into memory first: clap_complete panics when its writer fails.
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "fastkexec", &mut buf);
            out::product(&buf)
        }
        Command::Man { dir } => match dir {
            Some(dir) => write_man_pages(&dir),
            None => {
                let mut buf = Vec::new();
                clap_mangen::Man::new(Cli::command()).render(&mut buf)?;
                out::product(&buf)
            }
        },
    };
    done.map(|()| 0)
}

fn run_load(args: LoadArgs, root: &Path) -> Result<()> {
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
fn load_options(args: &LoadArgs, root: &Path) -> LoadOptions {
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

fn run_trace(args: TraceArgs, verbose: u8, root: &Path) -> Result<()> {
    if root != Path::new("/") {
        anyhow::bail!("--root does not go with trace (it probes and loads on this machine)");
    }
    // Both modes: with --exec the reboot must not stop half-way; following, a kernel loaded
    // over this process's pages must neither lose its tracer nor be unloaded by a hangup.
    exec::ignore_hangup();
    let opts = trace::TraceOptions {
        load: load_options(&args.load, root),
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

fn run_report(args: ReportArgs, root: &Path) -> Result<()> {
    let rep = report::report(&report::ReportOptions {
        root: root.to_path_buf(),
        until_kmsg: args.until_kmsg.clone(),
        top: args.top,
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
        if let Err(e) = fastkexec::record::fold::fold_report(&rep, root, &args.state_dir) {
            log::warn!(
                "the reboot was not folded into {}: {e:#}",
                args.state_dir.display()
            );
        }
    }
    printed
}

fn run_prepare(args: PrepareArgs) -> Result<()> {
    let t = Instant::now();
    let kernel = args.kernel();
    let p = prepare::prepare(&kernel, &args.cache_dir)
        .with_context(|| format!("cannot prepare {}", kernel.display()))?;
    let elapsed = t.elapsed();
    if args.json {
        return out::json(&serde_json::json!({
            "kernel": kernel,
            "vmlinux": p.vmlinux,
            "setup_header": p.setup_header,
            "compression": p.compression,
            "key": p.key,
            "cache_hit": p.cached,
            "vmlinux_bytes": p.vmlinux_len,
            "elapsed_ns": u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        }));
    }
    say!("vmlinux:      {}", p.vmlinux.display());
    say!("setup header: {}", p.setup_header.display());
    say!("compression:  {}", p.compression);
    say!("size:         {} bytes", p.vmlinux_len);
    say!(
        "cache:        {}",
        if p.cached {
            "hit (already extracted)"
        } else {
            "miss (extracted now)"
        }
    );
    say!("time:         {:.1} ms", elapsed.as_secs_f64() * 1e3);
    Ok(())
}

fn run_export(args: cli::ExportArgs) -> Result<()> {
    use fastkexec::metrics::export::{self, Format};
    use fastkexec::metrics::histogram::State;
    let format = match args.format {
        cli::FormatArg::Prometheus => Format::Prometheus,
        cli::FormatArg::Openmetrics => Format::OpenMetrics,
        cli::FormatArg::Json => Format::Json,
        cli::FormatArg::HdrLog => Format::HdrLog,
    };
    let state = State::open(&args.state_dir)
        .with_context(|| format!("cannot read the histograms in {}", args.state_dir.display()))?;
    if let Some(dir) = &args.textfile_dir {
        if format != Format::Prometheus {
            anyhow::bail!(
                "--textfile-dir needs --format prometheus: node_exporter reads only that"
            );
        }
        let path = export::write_textfile(dir, &state)?;
        log::info!("wrote {}", path.display());
        return Ok(());
    }
    match &args.output {
        Some(path) => export::write_file(path, format, &state)?,
        None => out::product(export::render(format, &state)?.as_bytes())?,
    }
    Ok(())
}

fn run_serve(args: cli::ServeArgs) -> Result<()> {
    use fastkexec::metrics::serve::{ServeOptions, Server, METRICS_PATH};
    let server = Server::bind(&ServeOptions {
        listen: args.listen,
        allow_remote: args.allow_remote,
        state_dir: args.state_dir,
    })?;
    // The real port (for --listen ...:0) on the first line, for scripts and tests.
    say!("listening on http://{}{METRICS_PATH}", server.local_addr());
    server.run()?;
    Ok(())
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
