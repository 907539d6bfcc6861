//! The `fastkexec` command: a thin clap layer over the library.

mod cli;

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};

use cli::{Cli, Command, LoadArgs, ModeArg, PrepareArgs};
use cli::{DamageArg, ReportArgs, TraceArgs};
use fastkexec::load::{self, CmdlineSource, LoadOptions, Mode};
use fastkexec::{exec, prepare, report, status, trace};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error(&e);
            ExitCode::from(e.downcast_ref::<ExitStatus>().map_or(1, |s| s.0))
        }
    }
}

/// An error that asks for a specific exit status (e.g. `report` without a record: 2).
#[derive(Debug)]
struct ExitStatus(u8, String);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for ExitStatus {}

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
    let mut stderr = io::stderr().lock();
    let mut shown = e.to_string();
    let _ = writeln!(stderr, "fastkexec: error: {shown}");
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !shown.contains(&text) {
            let _ = writeln!(stderr, "  caused by: {text}");
        }
        shown = text;
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Load(args) => run_load(args, &cli.root),
        Command::Exec(args) => {
            exec::exec(args.force).context("cannot boot the loaded kernel")?;
            // Only the `systemctl kexec` path returns: systemd now shuts down into the kernel.
            println!("systemd accepted `systemctl kexec`: shutting down into the loaded kernel");
            Ok(())
        }
        Command::Unload => {
            let done = exec::unload().context("cannot unload the kexec image")?;
            println!("{done}");
            Ok(())
        }
        Command::Status(args) => {
            let st = status::status(&cli.root)?;
            if args.json {
                print_json(&st)
            } else {
                print!("{st}");
                Ok(())
            }
        }
        Command::Prepare(args) => run_prepare(args),
        Command::Trace(args) => run_trace(args, cli.verbose, &cli.root),
        Command::Report(args) => run_report(args, &cli.root),
        Command::Export(args) => run_export(args),
        Command::Serve(args) => run_serve(args),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "fastkexec", &mut io::stdout());
            Ok(())
        }
        Command::Man { dir } => match dir {
            Some(dir) => write_man_pages(&dir),
            None => {
                clap_mangen::Man::new(Cli::command()).render(&mut io::stdout())?;
                Ok(())
            }
        },
    }
}

fn run_load(args: LoadArgs, root: &Path) -> Result<()> {
    if root != Path::new("/") && !args.dry_run {
        // The plan would come from another machine's memory map: never hand that to the kernel.
        anyhow::bail!("--root only works with --dry-run (a real load must describe this machine)");
    }
    let opts = load_options(&args, root);
    let report =
        load::load(&opts).with_context(|| format!("cannot load {}", opts.kernel.display()))?;
    if args.json {
        print_json(&report)
    } else {
        print!("{report}");
        Ok(())
    }
}

/// `load`'s options from its arguments (also `trace`'s).
fn load_options(args: &LoadArgs, root: &Path) -> LoadOptions {
    LoadOptions {
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline: if args.reuse_cmdline {
            CmdlineSource::ReuseCmdline {
                append: args.append.clone(),
            }
        } else {
            CmdlineSource::Append(args.append.clone().unwrap_or_default())
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
    let opts = trace::TraceOptions {
        load: load_options(&args.load, root),
        exec: args.exec,
        force: args.force,
        verbose: verbose > 0,
        lean: args.lean,
        mark: args.mark,
        damage: args.damage.map(|d| match d {
            DamageArg::HeaderByte => trace::Damage::HeaderByte,
            DamageArg::OtherBoot => trace::Damage::OtherBoot,
        }),
    };
    let mut out = io::stdout();
    let summary = trace::run(&opts, &mut out).with_context(|| {
        format!(
            "cannot trace the reboot into {}",
            opts.load.kernel.display()
        )
    })?;
    if args.load.json {
        return print_json(&summary);
    }
    print!("{}", summary.load);
    for a in &summary.attachments {
        println!(
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
        println!("note:     {n}");
    }
    if args.load.dry_run {
        print!("{}", fastkexec::preflight::render(&summary.phases));
        println!("dry run: every probe detached again; nothing was loaded");
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
    if args.json {
        print_json(&rep)?;
    } else {
        print!("{rep}");
    }
    if !rep.has_record() {
        let detail = rep.record.detail.clone().unwrap_or_default();
        return Err(ExitStatus(2, detail).into());
    }
    if !args.no_fold {
        if let Err(e) = fastkexec::fold::fold_report(&rep, root, &args.state_dir) {
            log::warn!(
                "the reboot was not folded into {}: {e:#}",
                args.state_dir.display()
            );
        }
    }
    Ok(())
}

fn run_prepare(args: PrepareArgs) -> Result<()> {
    let t = Instant::now();
    let p = prepare::prepare(&args.kernel, &args.cache_dir)
        .with_context(|| format!("cannot prepare {}", args.kernel.display()))?;
    let elapsed_ms = t.elapsed().as_secs_f64() * 1000.0;
    if args.json {
        return print_json(&serde_json::json!({
            "kernel": args.kernel,
            "vmlinux": p.vmlinux,
            "setup_header": p.setup_header,
            "compression": p.compression,
            "key": p.key,
            "cache_hit": p.cached,
            "vmlinux_bytes": p.vmlinux_len,
            "elapsed_ms": elapsed_ms,
        }));
    }
    println!("vmlinux:      {}", p.vmlinux.display());
    println!("setup header: {}", p.setup_header.display());
    println!("compression:  {}", p.compression);
    println!("size:         {} bytes", p.vmlinux_len);
    println!(
        "cache:        {}",
        if p.cached {
            "hit (already extracted)"
        } else {
            "miss (extracted now)"
        }
    );
    println!("time:         {elapsed_ms:.1} ms");
    Ok(())
}

fn run_export(args: cli::ExportArgs) -> Result<()> {
    use fastkexec::export::{self, Format};
    use fastkexec::histogram::State;
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
        None => io::stdout()
            .lock()
            .write_all(export::render(format, &state)?.as_bytes())?,
    }
    Ok(())
}

fn run_serve(args: cli::ServeArgs) -> Result<()> {
    use fastkexec::serve::{ServeOptions, Server, METRICS_PATH};
    let server = Server::bind(&ServeOptions {
        listen: args.listen,
        allow_remote: args.allow_remote,
        state_dir: args.state_dir,
    })?;
    // The real port (for --listen ...:0) on the first line, for scripts and tests.
    println!("listening on http://{}{METRICS_PATH}", server.local_addr());
    server.run()?;
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
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
        println!("{}", path.display());
    }
    Ok(())
}
