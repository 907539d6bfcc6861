//! The Prometheus text and OpenMetrics formats: one histogram family per phase (fixed 1-2-5
//! buckets), the reboot count, and the last reboot's own figures.

use super::*;

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

pub(super) struct Family<'a> {
    /// The name in Prometheus text; OpenMetrics drops a counter's `_total`.
    name: &'a str,
    kind: &'a str,
    help: &'a str,
    unit: Option<&'a str>,
}

pub(super) fn header(out: &mut String, f: &Family, om: bool) {
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

pub(super) fn histogram_samples(
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

pub(super) fn metrics_text(state: &State, om: bool) -> String {
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
    unit_families(&mut out, state, om);
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

/// The opt-in per-unit histograms (`report --unit-histograms N`): the `unit` label has at
/// most `MAX_UNIT_HISTOGRAMS` values per family, and what the cap refused is counted.
fn unit_families(out: &mut String, state: &State, om: bool) {
    let families = [
        (
            UnitLevel::Stop,
            "fastkexec_unit_stop_duration_seconds",
            "Duration of each systemd unit's stop in the old kernel (PID 1's first signal to \
             its cgroup removed), for the units report was asked to keep.",
        ),
        (
            UnitLevel::Start,
            "fastkexec_unit_start_duration_seconds",
            "Duration of each systemd unit's start in the new boot (systemd's InactiveExit to \
             ActiveEnter), for the units report was asked to keep.",
        ),
    ];
    for (level, name, help) in families {
        let units = state.units(level);
        if units.is_empty() {
            continue;
        }
        header(
            out,
            &Family {
                name,
                kind: "histogram",
                help,
                unit: Some("seconds"),
            },
            om,
        );
        for u in units {
            histogram_samples(out, name, Some(("unit", u.name())), u, om);
        }
    }
    if state.units_refused() > 0 {
        header(
            out,
            &Family {
                name: "fastkexec_unit_samples_refused_total",
                kind: "counter",
                help: "Unit durations not folded because their level already had its maximum \
                       number of unit histograms.",
                unit: None,
            },
            om,
        );
        // The sample keeps `_total` in both formats (OpenMetrics names only the family without).
        let _ = writeln!(
            out,
            "fastkexec_unit_samples_refused_total {}",
            state.units_refused()
        );
    }
}

pub(super) fn last_reboot(out: &mut String, last: &Boot, om: bool) {
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
