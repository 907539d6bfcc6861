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
    encode_histogram, Boot, PhaseHistogram, State, SIGNIFICANT_DIGITS,
};
use crate::{files::atomic_file, Error, Result};

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

/// Cumulative bucket counts for `BUCKET_BOUNDS_NS` (the `+Inf` bucket is `count()`).
pub fn cumulative_buckets(h: &PhaseHistogram) -> Vec<u64> {
    let hist = h.histogram();
    let mut out = vec![0u64; BUCKET_BOUNDS_NS.len()];
    for v in hist.iter_recorded() {
        // value_iterated_to is the highest value equivalent to the recorded one.
        let top = v.value_iterated_to();
        if let Some(first) = BUCKET_BOUNDS_NS.iter().position(|&b| top <= b) {
            for c in out.iter_mut().skip(first) {
                *c = c.saturating_add(v.count_at_value());
            }
        }
    }
    out
}

/// `ns` as seconds, exactly, in the canonical form OpenMetrics wants (`1.0`, `0.00025`).
pub fn seconds(ns: u64) -> String {
    let whole = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    if frac == 0 {
        return format!("{whole}.0");
    }
    let digits = format!("{frac:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A label value escaped for the Prometheus and OpenMetrics text formats.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Family<'a> {
    /// The name in Prometheus text; OpenMetrics drops a counter's `_total`.
    name: &'a str,
    kind: &'a str,
    help: &'a str,
    unit: Option<&'a str>,
}

fn header(out: &mut String, f: &Family, om: bool) {
    let (name, kind) = match (om, f.kind) {
        (true, "counter") => (f.name.strip_suffix("_total").unwrap_or(f.name), "counter"),
        (true, "info") => (f.name.strip_suffix("_info").unwrap_or(f.name), "info"),
        (false, "info") => (f.name, "gauge"),
        (_, k) => (f.name, k),
    };
    // HELP text escapes only backslash and newline in both formats.
    let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    if let (true, Some(unit)) = (om, f.unit) {
        let _ = writeln!(out, "# UNIT {name} {unit}");
    }
}

fn histogram_samples(
    out: &mut String,
    name: &str,
    label: Option<(&str, &str)>,
    h: &PhaseHistogram,
    om: bool,
) {
    let (pre, plain) = match label {
        Some((k, v)) => (format!("{k}=\"{}\",", escape_label(v)), {
            format!("{{{k}=\"{}\"}}", escape_label(v))
        }),
        None => (String::new(), String::new()),
    };
    for (bound, count) in BUCKET_BOUNDS_NS.iter().zip(cumulative_buckets(h)) {
        let _ = writeln!(
            out,
            "{name}_bucket{{{pre}le=\"{}\"}} {count}",
            seconds(*bound)
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{pre}le=\"+Inf\"}} {}", h.count());
    if om {
        let _ = writeln!(out, "{name}_count{plain} {}", h.count());
        let _ = writeln!(out, "{name}_sum{plain} {}", seconds(h.sum_ns()));
        let _ = writeln!(
            out,
            "{name}_created{plain} {}",
            seconds(h.created_unix_ns())
        );
    } else {
        let _ = writeln!(out, "{name}_sum{plain} {}", seconds(h.sum_ns()));
        let _ = writeln!(out, "{name}_count{plain} {}", h.count());
    }
}

fn metrics_text(state: &State, om: bool) -> String {
    let mut out = String::new();
    if !state.phases().is_empty() {
        header(
            &mut out,
            &Family {
                name: "fastkexec_phase_duration_seconds",
                kind: "histogram",
                help: "Duration of each phase of a kexec reboot, over every reboot folded in \
                       by fastkexec report.",
                unit: Some("seconds"),
            },
            om,
        );
        for p in state.phases() {
            histogram_samples(
                &mut out,
                "fastkexec_phase_duration_seconds",
                Some(("phase", p.name())),
                p,
                om,
            );
        }
    }
    if let Some(total) = state.total() {
        header(
            &mut out,
            &Family {
                name: "fastkexec_reboot_duration_seconds",
                kind: "histogram",
                help: "Duration of whole kexec reboots, from the reboot request to user space \
                       up in the new kernel.",
                unit: Some("seconds"),
            },
            om,
        );
        histogram_samples(
            &mut out,
            "fastkexec_reboot_duration_seconds",
            None,
            total,
            om,
        );
    }
    header(
        &mut out,
        &Family {
            name: "fastkexec_reboots_total",
            kind: "counter",
            help: "Reboots folded into the fastkexec histograms.",
            unit: None,
        },
        om,
    );
    let _ = writeln!(out, "fastkexec_reboots_total {}", state.boots());
    // Before the first fold nothing is stored, so a creation time would be each reader's "now".
    if om && state.boots() > 0 {
        let _ = writeln!(
            out,
            "fastkexec_reboots_created {}",
            seconds(state.created_unix_ns())
        );
    }
    if let Some(last) = state.last() {
        last_reboot(&mut out, last, om);
    }
    header(
        &mut out,
        &Family {
            name: "fastkexec_state_corrupt_files",
            kind: "gauge",
            help: "Corrupt fastkexec state files in the state directory (state.json.corrupt-*, \
                   and state.json itself until report moves it aside).",
            unit: None,
        },
        om,
    );
    let _ = writeln!(
        out,
        "fastkexec_state_corrupt_files {}",
        state.corrupt_files()
    );
    if om {
        out.push_str("# EOF\n");
    }
    out
}

fn last_reboot(out: &mut String, last: &Boot, om: bool) {
    if !last.phases.is_empty() {
        header(
            out,
            &Family {
                name: "fastkexec_last_reboot_phase_seconds",
                kind: "gauge",
                help: "Duration of each phase of the last reboot folded in.",
                unit: Some("seconds"),
            },
            om,
        );
        for p in &last.phases {
            let _ = writeln!(
                out,
                "fastkexec_last_reboot_phase_seconds{{phase=\"{}\"}} {}",
                escape_label(&p.name),
                seconds(p.duration_ns)
            );
        }
    }
    header(
        out,
        &Family {
            name: "fastkexec_last_reboot_total_seconds",
            kind: "gauge",
            help: "Duration of the last reboot folded in, from the reboot request to user \
                   space up.",
            unit: Some("seconds"),
        },
        om,
    );
    let _ = writeln!(
        out,
        "fastkexec_last_reboot_total_seconds {}",
        seconds(last.total_ns)
    );
    header(
        out,
        &Family {
            name: "fastkexec_last_reboot_timestamp_seconds",
            kind: "gauge",
            help: "When the last reboot folded in was requested (unix time).",
            unit: Some("seconds"),
        },
        om,
    );
    let _ = writeln!(
        out,
        "fastkexec_last_reboot_timestamp_seconds {}",
        seconds(last.reboot_unix_ns)
    );
    header(
        out,
        &Family {
            name: "fastkexec_last_reboot_info",
            kind: "info",
            help: "How the kernel of the last reboot folded in was loaded (always 1).",
            unit: None,
        },
        om,
    );
    let _ = writeln!(
        out,
        "fastkexec_last_reboot_info{{mode=\"{}\"}} 1",
        escape_label(&last.mode)
    );
}

#[derive(Serialize)]
struct JsonExport<'a> {
    format: &'static str,
    version: u32,
    significant_digits: u8,
    boots: u64,
    created_unix_ns: u64,
    updated_unix_ns: u64,
    corrupt_files: usize,
    /// `le` of the `buckets` counts, ns.
    bucket_bounds_ns: &'static [u64],
    total: Option<JsonHistogram<'a>>,
    phases: Vec<JsonHistogram<'a>>,
    last_reboot: Option<&'a Boot>,
}

#[derive(Serialize)]
struct JsonHistogram<'a> {
    name: &'a str,
    count: u64,
    sum_ns: u64,
    min_ns: u64,
    mean_ns: f64,
    p50_ns: u64,
    p90_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
    /// Cumulative, one per `bucket_bounds_ns`.
    buckets: Vec<u64>,
    /// V2 compressed, base64 (`HdrHistogram.decode` and friends read it).
    hdr: String,
}

fn json_histogram(h: &PhaseHistogram) -> Result<JsonHistogram<'_>> {
    let hist = h.histogram();
    Ok(JsonHistogram {
        name: h.name(),
        count: h.count(),
        sum_ns: h.sum_ns(),
        min_ns: hist.min(),
        mean_ns: hist.mean(),
        p50_ns: hist.value_at_quantile(0.5),
        p90_ns: hist.value_at_quantile(0.9),
        p99_ns: hist.value_at_quantile(0.99),
        p999_ns: hist.value_at_quantile(0.999),
        max_ns: hist.max(),
        buckets: cumulative_buckets(h),
        hdr: encode_histogram(hist, h.name())?,
    })
}

fn json(state: &State) -> Result<String> {
    let doc = JsonExport {
        format: "fastkexec-export",
        version: 1,
        significant_digits: SIGNIFICANT_DIGITS,
        boots: state.boots(),
        created_unix_ns: state.created_unix_ns(),
        updated_unix_ns: state.updated_unix_ns(),
        corrupt_files: state.corrupt_files(),
        bucket_bounds_ns: BUCKET_BOUNDS_NS,
        total: state.total().map(json_histogram).transpose()?,
        phases: state
            .phases()
            .iter()
            .map(json_histogram)
            .collect::<Result<_>>()?,
        last_reboot: state.last(),
    };
    let mut s = serde_json::to_string_pretty(&doc).map_err(|e| Error::HistogramEncode {
        what: "the JSON export".into(),
        problem: e.to_string(),
    })?;
    s.push('\n');
    Ok(s)
}

/// The tag of the whole-reboot histogram in the interval log.
pub const HDR_LOG_TOTAL_TAG: &str = "total";

/// An interval-log tag for `name`: tags may not hold ',' or white space.
pub fn hdr_log_tag(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == ',' || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The interval log, written by the hdrhistogram crate's `IntervalLogWriter` (the Java
/// `HistogramLogWriter`'s format): one interval, from the state's creation to its last update,
/// with one tagged histogram per phase and one for whole reboots. Interval_Max is in ms
/// (`#[MaxValueDivisor: 1000000.000]`), the histograms in ns.
fn hdr_log(state: &State) -> Result<String> {
    let fail = |e: &dyn std::fmt::Debug| Error::HistogramEncode {
        what: "the interval log".into(),
        problem: format!("{e:?}"),
    };
    let start = UNIX_EPOCH + Duration::from_nanos(state.created_unix_ns());
    let length = Duration::from_nanos(
        state
            .updated_unix_ns()
            .saturating_sub(state.created_unix_ns()),
    );
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut builder = IntervalLogWriterBuilder::new();
    builder
        .add_comment(&format!(
            "[fastkexec reboot phase durations, {} reboots: values in nanoseconds; Tag=<phase>, \
             Tag={HDR_LOG_TOTAL_TAG} for whole reboots]",
            state.boots()
        ))
        .add_comment("[Histogram log format version 1.3]")
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1e6);
    let mut log = builder
        .begin_log_with(&mut out, &mut serializer)
        .map_err(|e| fail(&e))?;
    let lines = state
        .phases()
        .iter()
        .map(|p| (hdr_log_tag(p.name()), p))
        .chain(state.total().map(|t| (HDR_LOG_TOTAL_TAG.to_string(), t)));
    for (tag, h) in lines {
        let tag = Tag::new(&tag).ok_or_else(|| fail(&format!("tag {tag:?}")))?;
        log.write_histogram(h.histogram(), Duration::ZERO, length, Some(tag))
            .map_err(|e| fail(&e))?;
    }
    String::from_utf8(out).map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::histogram::{Boot, Phase};
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    /// (boot id, phases as (name, ns), total ns) of each boot.
    type Boots<'a> = &'a [(&'a str, &'a [(&'a str, u64)], u64)];

    fn state(boots: Boots) -> State {
        let mut st = State::new();
        for (i, (id, phases, total)) in boots.iter().enumerate() {
            st.fold(&Boot {
                boot_id: id.to_string(),
                phases: phases.iter().map(|(n, d)| Phase::new(*n, *d)).collect(),
                total_ns: *total,
                reboot_unix_ns: 1_700_000_000_000_000_000 + i as u64 * 1_000_000_000,
                mode: "uncompressed".into(),
            })
            .unwrap();
        }
        st
    }

    fn three() -> State {
        state(&[
            (
                "a",
                &[("device_shutdown", 4_900_000), ("purgatory", 30_000)],
                2_600_000_000,
            ),
            (
                "b",
                &[("device_shutdown", 11_000_000), ("purgatory", 45_000)],
                320_000_000,
            ),
            ("c", &[("device_shutdown", 7_000_000)], 3_775_000_000),
        ])
    }

    /// (name, labels, value) of every sample line.
    fn samples(text: &str) -> Vec<(String, String, String)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                (name.to_string(), labels.to_string(), value.to_string())
            })
            .collect()
    }

    fn value(text: &str, name: &str, labels: &str) -> String {
        samples(text)
            .into_iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|(_, _, v)| v)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
    }

    #[test]
    fn seconds_are_exact_canonical_decimals() {
        assert_eq!(seconds(0), "0.0");
        assert_eq!(seconds(1_000_000_000), "1.0");
        assert_eq!(seconds(250_000), "0.00025");
        assert_eq!(seconds(2_500_000_000), "2.5");
        assert_eq!(seconds(1), "0.000000001");
        assert_eq!(seconds(123_456_789_012), "123.456789012");
        assert_eq!(seconds(u64::MAX), "18446744073.709551615");
    }

    #[test]
    fn buckets_are_cumulative_and_inf_equals_count() {
        let st = three();
        let text = render(Format::Prometheus, &st).unwrap();
        for phase in ["device_shutdown", "purgatory"] {
            let p = st.phase(phase).unwrap();
            let mut prev = 0u64;
            for b in BUCKET_BOUNDS_NS {
                let v: u64 = value(
                    &text,
                    "fastkexec_phase_duration_seconds_bucket",
                    &format!("phase=\"{phase}\",le=\"{}\"", seconds(*b)),
                )
                .parse()
                .unwrap();
                assert!(v >= prev, "{phase} le={b}: {v} < {prev}");
                prev = v;
            }
            let inf = value(
                &text,
                "fastkexec_phase_duration_seconds_bucket",
                &format!("phase=\"{phase}\",le=\"+Inf\""),
            );
            let count = value(
                &text,
                "fastkexec_phase_duration_seconds_count",
                &format!("phase=\"{phase}\""),
            );
            assert_eq!(inf, count);
            assert_eq!(count, p.count().to_string());
            assert!(prev <= p.count());
        }
        // Exact bucket counts for values far from every bound.
        assert_eq!(
            value(
                &text,
                "fastkexec_phase_duration_seconds_bucket",
                "phase=\"device_shutdown\",le=\"0.005\""
            ),
            "1"
        );
        assert_eq!(
            value(
                &text,
                "fastkexec_phase_duration_seconds_bucket",
                "phase=\"device_shutdown\",le=\"0.01\""
            ),
            "2"
        );
        assert_eq!(
            value(
                &text,
                "fastkexec_phase_duration_seconds_bucket",
                "phase=\"device_shutdown\",le=\"0.02\""
            ),
            "3"
        );
        assert_eq!(
            value(
                &text,
                "fastkexec_phase_duration_seconds_sum",
                "phase=\"device_shutdown\""
            ),
            "0.0229"
        );
        assert_eq!(
            value(&text, "fastkexec_reboot_duration_seconds_count", ""),
            "3"
        );
        assert_eq!(
            value(&text, "fastkexec_reboot_duration_seconds_sum", ""),
            "6.695"
        );
        assert_eq!(value(&text, "fastkexec_reboots_total", ""), "3");
        assert_eq!(
            value(
                &text,
                "fastkexec_last_reboot_phase_seconds",
                "phase=\"device_shutdown\""
            ),
            "0.007"
        );
        assert_eq!(
            value(&text, "fastkexec_last_reboot_total_seconds", ""),
            "3.775"
        );
        assert_eq!(
            value(&text, "fastkexec_last_reboot_timestamp_seconds", ""),
            "1700000002.0"
        );
        assert_eq!(
            value(&text, "fastkexec_last_reboot_info", "mode=\"uncompressed\""),
            "1"
        );
    }

    #[test]
    fn buckets_run_1_2_5_from_a_microsecond_to_1000_seconds_inside_the_hdr_range() {
        assert_eq!(BUCKET_BOUNDS_NS.len(), 28);
        assert_eq!(BUCKET_BOUNDS_NS[0], 1_000);
        assert_eq!(BUCKET_BOUNDS_NS[27], 1_000_000_000_000);
        for (i, b) in BUCKET_BOUNDS_NS.iter().enumerate() {
            let decade = 10u64.pow(3 + i as u32 / 3);
            assert_eq!(*b, [1, 2, 5][i % 3] * decade, "bound {i}");
        }
        let le: Vec<String> = BUCKET_BOUNDS_NS.iter().map(|b| seconds(*b)).collect();
        assert_eq!(&le[..4], ["0.000001", "0.000002", "0.000005", "0.00001"]);
        assert_eq!(&le[25..], ["200.0", "500.0", "1000.0"]);
        // The histogram under the buckets: every bound inside its range, and resolved to
        // 0.1 % (exactly up to 2048 ns, where the first bounds lie).
        let mut st = State::new();
        st.fold(&Boot {
            boot_id: "a".into(),
            phases: vec![Phase::new("p", 1)],
            total_ns: 1,
            reboot_unix_ns: 0,
            mode: String::new(),
        })
        .unwrap();
        let h = st.phase("p").unwrap().histogram();
        assert_eq!(h.low(), 1);
        assert!(h.high() >= crate::metrics::histogram::MAX_DURATION_NS);
        assert_eq!(h.sigfig(), SIGNIFICANT_DIGITS);
        assert!(crate::metrics::histogram::MAX_DURATION_NS > *BUCKET_BOUNDS_NS.last().unwrap());
        for b in BUCKET_BOUNDS_NS {
            let width = h.highest_equivalent(*b) - h.lowest_equivalent(*b);
            assert!(
                width * 1000 <= *b,
                "le={b}: HdrHistogram bucket {width} ns wide"
            );
            if *b < 2048 {
                assert_eq!(width, 0, "le={b}");
            }
        }
    }

    #[test]
    fn a_bucket_never_counts_a_value_above_its_bound() {
        // Exactly on a bound, just above and just below, across the range.
        let mut boots = Vec::new();
        for (i, b) in BUCKET_BOUNDS_NS.iter().enumerate() {
            for (j, v) in [*b, b + b / 500, b - b / 500].into_iter().enumerate() {
                boots.push((format!("{i}-{j}"), v));
            }
        }
        let mut st = State::new();
        for (id, v) in &boots {
            st.fold(&Boot {
                boot_id: id.clone(),
                phases: vec![Phase::new("p", *v)],
                total_ns: *v,
                reboot_unix_ns: 0,
                mode: String::new(),
            })
            .unwrap();
        }
        let got = cumulative_buckets(st.phase("p").unwrap());
        for (bound, count) in BUCKET_BOUNDS_NS.iter().zip(&got) {
            let exact = boots.iter().filter(|(_, v)| v <= bound).count() as u64;
            // Never more than the exact count; at most the values within 0.1 % under the
            // bound (here: the one exactly on it) fewer.
            assert!(*count <= exact, "le={bound}: {count} > {exact}");
            assert!(exact - count <= 1, "le={bound}: {count} vs {exact}");
        }
    }

    /// The modes README documents, exactly, under a permissive and a strict umask. The umask is
    /// process-wide, so each runs in a child process (this test binary, running only this
    /// test) started by `sh -c 'umask ...'`: the other tests never see it.
    #[test]
    fn written_files_have_their_documented_modes_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        const CHILD: &str = "FASTKEXEC_TEST_MODES_DIR";
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        if let Some(dir) = std::env::var_os(CHILD) {
            let d = PathBuf::from(dir);
            let boot = Boot {
                boot_id: "b".into(),
                phases: vec![Phase::new("purgatory", 1_000)],
                total_ns: 2_000,
                reboot_unix_ns: 1,
                mode: "uncompressed".into(),
            };
            let (_, st) = crate::metrics::histogram::fold_boot(&d.join("state"), &boot).unwrap();
            write_textfile(&d, &st).unwrap();
            write_file(&d.join("out.json"), Format::Json, &st).unwrap();
            return;
        }
        let exe = std::env::current_exe().unwrap();
        // The test's own name, as the harness spells it (module path without the crate).
        let module = module_path!().trim_start_matches("fastkexec::");
        let name =
            format!("{module}::written_files_have_their_documented_modes_whatever_the_umask");
        for umask in ["077", "000"] {
            let d = tempfile::tempdir().unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "umask {umask} && exec \"$0\" --exact {name} --test-threads 1"
                ))
                .arg(&exe)
                .env(CHILD, d.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "umask {umask}: {out:?}");
            let state_dir = d.path().join("state");
            assert_eq!(mode(&state_dir), 0o755, "umask {umask}");
            assert_eq!(mode(&state_dir.join("state.json")), 0o640, "umask {umask}");
            assert_eq!(mode(&state_dir.join("lock")), 0o640, "umask {umask}");
            assert_eq!(mode(&d.path().join(TEXTFILE_NAME)), 0o644, "umask {umask}");
            assert_eq!(mode(&d.path().join("out.json")), 0o640, "umask {umask}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let st = state(&[("a", &[("quote\"back\\slash", 1_000)], 5_000)]);
        let text = render(Format::Prometheus, &st).unwrap();
        assert!(
            text.contains(
                r#"fastkexec_phase_duration_seconds_count{phase="quote\"back\\slash"} 1"#
            ),
            "{text}"
        );
        assert_eq!(escape_label("a\nb"), "a\\nb");
        assert_eq!(escape_label("plain é"), "plain é");
    }

    #[test]
    fn an_empty_state_still_says_nothing_was_folded() {
        let st = State::new();
        let text = render(Format::Prometheus, &st).unwrap();
        assert!(!text.contains("fastkexec_phase_duration_seconds"));
        assert!(!text.contains("fastkexec_last_reboot"));
        assert_eq!(value(&text, "fastkexec_reboots_total", ""), "0");
        assert_eq!(value(&text, "fastkexec_state_corrupt_files", ""), "0");
        let om = render(Format::OpenMetrics, &st).unwrap();
        assert!(om.ends_with("\n# EOF\n"));
        let log = render(Format::HdrLog, &st).unwrap();
        assert_eq!(IntervalLogIterator::new(log.as_bytes()).count(), 2);
        let json: serde_json::Value =
            serde_json::from_str(&render(Format::Json, &st).unwrap()).unwrap();
        assert_eq!(json["boots"], 0);
        assert!(json["total"].is_null());
    }

    #[test]
    fn every_family_is_announced_once_before_its_samples() {
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let text = render(format, &three()).unwrap();
            let mut typed: Vec<String> = Vec::new();
            for l in text.lines() {
                if let Some(rest) = l.strip_prefix("# TYPE ") {
                    let name = rest.split(' ').next().unwrap().to_string();
                    assert!(!typed.contains(&name), "{name} typed twice");
                    typed.push(name);
                } else if !l.starts_with('#') {
                    let name = l.split(['{', ' ']).next().unwrap();
                    let family = typed.last().unwrap();
                    assert!(name.starts_with(family.as_str()), "{name} outside {family}");
                }
            }
            assert_eq!(typed.len(), 8, "{format:?}");
            assert!(text.ends_with('\n'));
        }
    }

    #[test]
    fn openmetrics_has_units_created_and_eof() {
        let text = render(Format::OpenMetrics, &three()).unwrap();
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.contains("# UNIT fastkexec_phase_duration_seconds seconds\n"));
        assert!(text.contains("# TYPE fastkexec_reboots counter\n"));
        assert!(text.contains("\nfastkexec_reboots_total 3\n"));
        assert!(text.contains("# TYPE fastkexec_last_reboot info\n"));
        assert!(text.contains("fastkexec_phase_duration_seconds_created{phase=\"purgatory\"} "));
        // Every unit is the suffix of its family's name, as OpenMetrics requires.
        for l in text.lines().filter(|l| l.starts_with("# UNIT ")) {
            let mut it = l["# UNIT ".len()..].split(' ');
            let (name, unit) = (it.next().unwrap(), it.next().unwrap());
            assert!(name.ends_with(&format!("_{unit}")), "{l}");
        }
    }

    #[test]
    fn json_has_percentiles_and_decodable_histograms() {
        let st = three();
        let v: serde_json::Value =
            serde_json::from_str(&render(Format::Json, &st).unwrap()).unwrap();
        assert_eq!(v["boots"], 3);
        let ds = &v["phases"][0];
        assert_eq!(ds["name"], "device_shutdown");
        assert_eq!(ds["count"], 3);
        assert_eq!(ds["sum_ns"], 22_900_000);
        let h = st.phase("device_shutdown").unwrap().histogram();
        assert_eq!(ds["p50_ns"], h.value_at_quantile(0.5));
        assert_eq!(ds["max_ns"], h.max());
        let back =
            crate::metrics::histogram::decode_histogram(ds["hdr"].as_str().unwrap()).unwrap();
        assert_eq!(&back, h);
        assert_eq!(v["last_reboot"]["boot_id"], "c");
        assert_eq!(
            v["phases"][0]["buckets"].as_array().unwrap().len(),
            BUCKET_BOUNDS_NS.len()
        );
    }

    #[test]
    fn the_interval_log_reads_back_with_tags_and_times() {
        let st = state(&[(
            "a",
            &[("kernel init", 900_000_000), ("x,y", 5)],
            2_000_000_000,
        )]);
        let log = render(Format::HdrLog, &st).unwrap();
        assert!(log.contains("\n#[Histogram log format version 1.3]\n"));
        let mut tags = Vec::new();
        let mut base = None;
        for e in IntervalLogIterator::new(log.as_bytes()) {
            match e.unwrap() {
                LogEntry::BaseTime(t) => base = Some(t),
                LogEntry::StartTime(_) => {}
                LogEntry::Interval(i) => {
                    let h =
                        crate::metrics::histogram::decode_histogram(i.encoded_histogram()).unwrap();
                    assert_eq!(h.len(), 1);
                    let tag = i.tag().unwrap().as_str().to_string();
                    let want = if tag == HDR_LOG_TOTAL_TAG {
                        st.total().unwrap()
                    } else {
                        st.phases()
                            .iter()
                            .find(|p| hdr_log_tag(p.name()) == tag)
                            .unwrap()
                    };
                    assert_eq!(&h, want.histogram());
                    assert!((i.max() - want.histogram().max() as f64 / 1e6).abs() < 0.001);
                    tags.push(tag);
                }
            }
        }
        assert_eq!(tags, ["kernel_init", "x_y", "total"]);
        // Interval logs keep milliseconds: the writer rounds the creation time to one.
        let base_ns = base.unwrap().as_nanos() as u64;
        assert!(
            base_ns.abs_diff(st.created_unix_ns()) <= 500_000,
            "{base_ns} vs {}",
            st.created_unix_ns()
        );
        assert!(log.contains("\n#[MaxValueDivisor: 1000000.000]\n"), "{log}");
    }

    #[test]
    fn the_textfile_lands_atomically_in_an_existing_directory_only() {
        let d = tempfile::tempdir().unwrap();
        let st = three();
        let path = write_textfile(d.path(), &st).unwrap();
        assert_eq!(path, d.path().join(TEXTFILE_NAME));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, render(Format::Prometheus, &st).unwrap());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let err = write_textfile(&d.path().join("missing"), &three()).unwrap_err();
        assert!(
            err.to_string().contains("collector.textfile.directory"),
            "{err}"
        );
    }
}
