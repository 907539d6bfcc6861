//! The JSON export (percentiles and the encoded histograms) and the HdrHistogram interval log.

use super::*;

#[derive(Serialize)]
pub(super) struct JsonExport<'a> {
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
    /// Per-unit histograms (opt-in), by unit name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unit_stop: Vec<JsonHistogram<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unit_start: Vec<JsonHistogram<'a>>,
    units_refused: u64,
    last_reboot: Option<&'a Boot>,
}

#[derive(Serialize)]
pub(super) struct JsonHistogram<'a> {
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

pub(super) fn json_histogram(h: &PhaseHistogram) -> Result<JsonHistogram<'_>> {
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

pub(super) fn json(state: &State) -> Result<String> {
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
        unit_stop: state
            .units(UnitLevel::Stop)
            .iter()
            .map(json_histogram)
            .collect::<Result<_>>()?,
        unit_start: state
            .units(UnitLevel::Start)
            .iter()
            .map(json_histogram)
            .collect::<Result<_>>()?,
        units_refused: state.units_refused(),
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
pub(super) fn hdr_log(state: &State) -> Result<String> {
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
