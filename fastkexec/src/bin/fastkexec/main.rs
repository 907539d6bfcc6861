//! The `fastkexec` command: a thin clap layer over the library.

mod cli;
mod cmd;
mod exit;
mod out;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use cli::{Cli, Command};

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
        Command::Load(args) => cmd::load::run(args, &cli.root),
        Command::Exec(args) => cmd::exec::run(args),
        Command::Unload => cmd::unload::run(),
        Command::Status(args) => return cmd::status::run(args, &cli.root),
        Command::Prepare(args) => cmd::prepare::run(args),
        Command::Trace(args) => cmd::trace::run(args, cli.verbose, &cli.root),
        Command::Report(args) => cmd::report::run(args, &cli.root),
        Command::Export(args) => cmd::export::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Completions { shell } => cmd::docs::completions(shell),
        Command::Man { dir } => cmd::docs::man(dir),
    };
    done.map(|()| 0)
}
