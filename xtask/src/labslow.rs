//! The slow-units scenario's acceptance (issue 16): the report of the traced reboot must find
//! the two known units itself, first in their lists and within 10 % of their known times, its
//! start figures must be systemd's own (`systemd-analyze blame` in the same guest), and its
//! total must agree with the host's stopwatch (`FKLAB: exec` → "Reached target
//! graphical.target") within 5 % or 20 ms.

use serde::Serialize;
use serde_json::Value;

/// How far a unit's figure may be from its known time.
pub const UNIT_TOLERANCE: f64 = 0.10;
/// The report's total against the host stopwatch: 5 % or 20 ms, whichever is larger.
pub const TOTAL_SHARE: f64 = 0.05;
pub const TOTAL_MS: f64 = 20.0;
/// Our start figure against `systemd-analyze blame`'s: blame prints milliseconds.
pub const BLAME_MS: f64 = 1.0;

/// What the report said and what it was held to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SlowCheck {
    pub first_to_stop: Option<(String, f64)>,
    pub first_to_start: Option<(String, f64)>,
    /// `systemd-analyze blame`'s figure for the known starter, ms.
    pub blame_start_ms: Option<f64>,
    pub report_total_ms: Option<f64>,
    pub host_exec_to_default_target_ms: Option<f64>,
    pub problems: Vec<String>,
}

/// One `systemd-analyze blame` line ("1min 623ms fklab-slow-start.service") → (unit, ms).
pub fn parse_blame(line: &str) -> Option<(String, f64)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (unit, times) = words.split_last()?;
    if times.is_empty() {
        return None;
    }
    let mut ms = 0.0;
    for t in times {
        let i = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (n, unit) = t.split_at(i);
        let n: f64 = n.parse().ok()?;
        ms += n * match unit {
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "min" => 60e3,
            "h" => 3600e3,
            _ => return None,
        };
    }
    Some((unit.to_string(), ms))
}

fn first(report: &Value, level: &str) -> Option<(String, f64)> {
    let u = report.pointer(&format!("/{level}/slowest/0"))?;
    Some((
        u.get("unit")?.as_str()?.to_string(),
        u.get("duration_ns")?.as_u64()? as f64 / 1e6,
    ))
}

/// Holds the report to the known answers.
pub fn check(
    report: Option<&Value>,
    blame: &[(String, f64)],
    host_exec_to_default_target_ms: Option<f64>,
    (stop_unit, stop_ms): (&str, f64),
    (start_unit, start_ms): (&str, f64),
) -> SlowCheck {
    let mut c = SlowCheck {
        host_exec_to_default_target_ms,
        blame_start_ms: blame.iter().find(|(u, _)| u == start_unit).map(|b| b.1),
        ..SlowCheck::default()
    };
    let Some(r) = report else {
        c.problems.push("no report".into());
        return c;
    };
    c.first_to_stop = first(r, "units_stop");
    c.first_to_start = first(r, "units_start");
    c.report_total_ms = r
        .get("total_ns")
        .and_then(Value::as_u64)
        .map(|n| n as f64 / 1e6);
    for (what, got, unit, known) in [
        ("stop", &c.first_to_stop, stop_unit, stop_ms),
        ("start", &c.first_to_start, start_unit, start_ms),
    ] {
        match got {
            Some((u, ms)) if u == unit && (ms - known).abs() <= UNIT_TOLERANCE * known => {}
            Some((u, ms)) => c.problems.push(format!(
                "first of the slowest units to {what}: {u} at {ms:.1} ms; wanted {unit} within \
                 {:.0} % of {known} ms",
                UNIT_TOLERANCE * 100.0
            )),
            None => c
                .problems
                .push(format!("the report lists no unit to {what}")),
        }
    }
    let ours = r
        .pointer("/units_start/slowest")
        .and_then(Value::as_array)
        .and_then(|v| {
            v.iter()
                .find(|u| u.get("unit").and_then(Value::as_str) == Some(start_unit))
        })
        .and_then(|u| u.get("duration_ns")?.as_u64())
        .map(|n| n as f64 / 1e6);
    match (ours, c.blame_start_ms) {
        (Some(a), Some(b)) if (a - b).abs() <= BLAME_MS => {}
        (a, b) => c.problems.push(format!(
            "{start_unit}: the report says {a:?} ms, systemd-analyze blame {b:?} ms (within \
             {BLAME_MS} ms wanted)"
        )),
    }
    if r.pointer("/end/kind").and_then(Value::as_str) != Some("systemd") {
        c.problems.push(format!(
            "the report does not end at the default target: end {:?}",
            r.get("end")
        ));
    }
    match (c.report_total_ms, host_exec_to_default_target_ms) {
        (Some(t), Some(h)) if (t - h).abs() <= (TOTAL_SHARE * h).max(TOTAL_MS) => {}
        (t, h) => c.problems.push(format!(
            "report total {t:?} ms against the host stopwatch (exec → default target) {h:?} ms: \
             not within {:.0} % or {TOTAL_MS} ms",
            TOTAL_SHARE * 100.0
        )),
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blame_lines_in_every_unit_systemd_prints() {
        let (u, ms) = parse_blame("1min 623ms fklab-slow-start.service").unwrap();
        assert_eq!(u, "fklab-slow-start.service");
        assert!((ms - 60_623.0).abs() < 1e-6);
        assert_eq!(
            parse_blame("39.451s dev-vda.device"),
            Some(("dev-vda.device".into(), 39_451.0))
        );
        assert_eq!(parse_blame("812us a.service").map(|b| b.1), Some(0.812));
        assert_eq!(parse_blame("lone.service"), None);
        assert_eq!(parse_blame("3 parsecs a.service"), None);
    }

    fn report(stop: (&str, u64), start: (&str, u64), total_ns: u64) -> Value {
        serde_json::json!({
            "total_ns": total_ns,
            "end": {"kind": "systemd", "text": "graphical.target reached"},
            "units_stop": {"slowest": [{"unit": stop.0, "duration_ns": stop.1}]},
            "units_start": {"slowest": [{"unit": start.0, "duration_ns": start.1}]},
        })
    }

    const STOP: (&str, f64) = ("slow-stop.service", 1500.0);
    const START: (&str, f64) = ("slow-start.service", 60_000.0);

    #[test]
    fn the_known_units_first_and_within_tolerance_pass() {
        let r = report(
            ("slow-stop.service", 1_620_000_000),
            ("slow-start.service", 60_700_000_000),
            100_000_000_000,
        );
        let blame = [("slow-start.service".to_string(), 60_700.0)];
        let c = check(Some(&r), &blame, Some(100_010.0), STOP, START);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
    }

    #[test]
    fn a_wrong_first_unit_a_slow_figure_blame_and_the_stopwatch_each_fail() {
        let r = report(
            ("dbus.service", 1_500_000_000),
            ("slow-start.service", 66_500_000_000),
            100_000_000_000,
        );
        let blame = [("slow-start.service".to_string(), 66_000.0)];
        let c = check(Some(&r), &blame, Some(106_000.0), STOP, START);
        let all = c.problems.join("\n");
        assert_eq!(c.problems.len(), 4, "{all}");
        assert!(
            all.contains("dbus.service") && all.contains("66500.0 ms"),
            "{all}"
        );
        assert!(all.contains("systemd-analyze blame") && all.contains("host stopwatch"));
        // 20 ms carries a short total; 5 % a long one.
        let short = report(
            ("slow-stop.service", 1_500_000_000),
            ("slow-start.service", 60_000_000_000),
            300_000_000,
        );
        let blame = [("slow-start.service".to_string(), 60_000.0)];
        assert!(check(Some(&short), &blame, Some(319.0), STOP, START)
            .problems
            .is_empty());
        assert_eq!(
            check(Some(&short), &blame, Some(321.0), STOP, START)
                .problems
                .len(),
            1
        );
        assert_eq!(
            check(None, &blame, None, STOP, START).problems,
            ["no report"]
        );
    }
}
