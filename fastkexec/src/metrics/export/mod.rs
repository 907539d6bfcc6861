//! The reboot histograms in the formats monitoring reads: Prometheus text (also for
//! node_exporter's textfile collector), OpenMetrics, JSON, and the HdrHistogram interval log.
//!
//! Every format names a phase the same way: its machine name ([`crate::record::phases::PhaseDef::id`],
//! e.g. `kernel_early_boot`) as the `phase` label, the JSON `name` and the interval-log tag.
//!
//! Metric families (Prometheus names; OpenMetrics names the counter family without `_total`):
//! - `fastkexec_phase_duration_seconds{phase}`: histogram, one per phase, every reboot folded;
//! - `fastkexec_reboot_duration_seconds`: histogram of whole reboots (request → user space up);
//! - `fastkexec_reboots_total`: counter, reboots folded;
//! - `fastkexec_last_reboot_phase_seconds{phase}`, `fastkexec_last_reboot_total_seconds`,
//!   `fastkexec_last_reboot_timestamp_seconds`: gauges, the last reboot folded;
//! - `fastkexec_last_reboot_info{mode}`: 1, how the last reboot's kernel was loaded (from the
//!   trace record: `uncompressed` or `staged`);
//! - `fastkexec_unit_stop_duration_seconds{unit}`, `fastkexec_unit_start_duration_seconds{unit}`:
//!   histograms per systemd unit, only when `report --unit-histograms N` asked for them; at
//!   most `MAX_UNIT_HISTOGRAMS` units each, `fastkexec_unit_samples_refused_total` counts what
//!   that cap kept out (the JSON export has them as `unit_stop`, `unit_start`,
//!   `units_refused`; the HdrHistogram log does not carry them);
//! - `fastkexec_state_corrupt_files`: gauge, corrupt state files: moved aside, or a corrupt
//!   `state.json` a read-only command left in place (alert on > 0).
//!
//! Bucket counts come from the HdrHistogram: a value counts toward `le` when its whole
//! HdrHistogram bucket (width ≤ 0.1 % of the value) lies at or below `le`, so a bucket never
//! claims a value above its bound; a value within 0.1 % under a bound may land one bucket up.
//! Durations are printed as exact decimals of their nanoseconds, never through a float.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use serde::Serialize;

use crate::metrics::histogram::{
    encode_histogram, Boot, PhaseHistogram, State, UnitLevel, SIGNIFICANT_DIGITS,
};
use crate::{files::atomic_file, Error, Result};

mod json;
mod text;

use json::*;
pub use json::{hdr_log_tag, HDR_LOG_TOTAL_TAG};
use text::*;
pub use text::{cumulative_buckets, escape_label, seconds};

/// What `render` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text exposition format 0.0.4 (what node_exporter's textfile collector reads).
    Prometheus,
    /// OpenMetrics 1.0 text (`# UNIT`, `_created`, `info`, ends with `# EOF`).
    OpenMetrics,
    /// Summary figures and the encoded histograms, for scripts.
    Json,
    /// HdrHistogram interval log (format 1.3), one tagged line per phase: merge it across a
    /// fleet with any HdrHistogram implementation's log reader.
    HdrLog,
}

impl Format {
    /// The HTTP Content-Type of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Json => "application/json",
            Format::HdrLog => "text/plain; charset=utf-8",
        }
    }
}

/// The file `write_textfile` writes: node_exporter's textfile collector reads `*.prom`.
pub const TEXTFILE_NAME: &str = "fastkexec.prom";

/// Upper bounds (`le`) of the Prometheus buckets, in ns: 1-2-5 per decade from 1 µs to 1000 s
/// (28 buckets and `+Inf`).
///
/// The phases span nine decades: a staged relocation takes ~50 µs and a purgatory that hashes
/// nothing ~0.1 ms, a device shutdown or the kernel's relocation copy milliseconds to hundreds
/// of milliseconds, user space tens of seconds, a stuck shutdown minutes. 1-2-5 gives every
/// decade three buckets (a bound at most 2.5× the one before), so `histogram_quantile` stays
/// within one such step anywhere in the range, and the bounds stay the round numbers people
/// read on a dashboard. Below 1 µs nothing is measured (the clocks' resolution); above 1000 s
/// (16.7 min) only `+Inf`. The HdrHistogram underneath tracks 1 ns ..= 1 day at 3
/// significant digits, so every bound is resolved to 0.1 % or better (exactly below 2048 ns).
pub const BUCKET_BOUNDS_NS: &[u64] = &[
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
    20_000_000_000,
    50_000_000_000,
    100_000_000_000,
    200_000_000_000,
    500_000_000_000,
    1_000_000_000_000,
];

/// The state in `format`.
pub fn render(format: Format, state: &State) -> Result<String> {
    match format {
        Format::Prometheus => Ok(metrics_text(state, false)),
        Format::OpenMetrics => Ok(metrics_text(state, true)),
        Format::Json => json(state),
        Format::HdrLog => hdr_log(state),
    }
}

/// Mode of `--output`: the same readers as the state it comes from (`histogram::STATE_MODE`);
/// widen it with chmod when a file is meant for more.
pub const OUTPUT_MODE: u32 = crate::metrics::histogram::STATE_MODE;
/// Mode of `fastkexec.prom`: node_exporter reads it as its own user (`prometheus` on Debian),
/// not as root, and serves it to anyone who can scrape it; the file holds nothing the scrape
/// does not show anyway.
pub const TEXTFILE_MODE: u32 = 0o644;

/// Renders `state` and replaces `path` atomically with it (mode `OUTPUT_MODE`).
pub fn write_file(path: &Path, format: Format, state: &State) -> Result<()> {
    atomic_file::write(path, render(format, state)?.as_bytes(), OUTPUT_MODE)
}

/// node_exporter's textfile convention: Prometheus text written to a temporary file in `dir`
/// and renamed to `dir/fastkexec.prom`, so the collector never reads half a file. `dir` must
/// exist (it is node_exporter's `--collector.textfile.directory`). Returns the file written.
pub fn write_textfile(dir: &Path, state: &State) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(Error::StateFile {
            path: dir.to_path_buf(),
            problem: "no such directory: pass node_exporter's --collector.textfile.directory \
                      (Debian: /var/lib/prometheus/node-exporter)"
                .into(),
        });
    }
    let path = dir.join(TEXTFILE_NAME);
    let text = render(Format::Prometheus, state)?;
    atomic_file::write(&path, text.as_bytes(), TEXTFILE_MODE)?;
    Ok(path)
}

#[cfg(test)]
mod tests;
