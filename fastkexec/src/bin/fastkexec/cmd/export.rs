//! `fastkexec export`: the histograms in a format for a collector.

use anyhow::{Context, Result};

use crate::cli;
use crate::out;

pub fn run(args: cli::ExportArgs) -> Result<()> {
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
