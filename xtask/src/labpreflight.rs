//! The preflight of a traced lab run: round 1 runs `fastkexec trace --dry-run`
//! before the real trace (`xtask/lab/round1.sh`), prefixing its output with
//! `FKLAB: preflight | `, then asks `fastkexec status` whether anything is loaded.

use serde::Serialize;
use serde_json::Value;

const PREFIX: &str = "FKLAB: preflight ";

/// What the dry run printed, and what the kernel had loaded afterwards.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Preflight {
    pub rc: Option<i32>,
    /// Phases it listed (`phase:` lines).
    pub phases: Vec<String>,
    /// Of those, the ones it said will not be timed (marked `!`).
    pub untimed: Vec<String>,
    /// `fastkexec status`'s "image loaded" / "crash image loaded" afterwards.
    pub image_loaded: Option<String>,
    pub crash_image_loaded: Option<String>,
    /// Phases the dry run called untimed that the real report measured anyway
    /// (the preflight predicted wrong).
    pub contradicted: Vec<String>,
}

impl Preflight {
    pub fn ok(&self) -> bool {
        self.rc == Some(0)
            && self.phases.len() == fastkexec::record::phases::PHASES.len()
            && self.image_loaded.as_deref() == Some("no")
            && self.crash_image_loaded.as_deref() == Some("no")
            && self.contradicted.is_empty()
    }

    pub fn summary(&self) -> String {
        format!(
            "preflight rc {:?}, {} phases ({} untimed: {}), afterwards image loaded {} / crash \
             image loaded {}{}",
            self.rc,
            self.phases.len(),
            self.untimed.len(),
            self.untimed.join(", "),
            self.image_loaded.as_deref().unwrap_or("?"),
            self.crash_image_loaded.as_deref().unwrap_or("?"),
            if self.contradicted.is_empty() {
                String::new()
            } else {
                format!(
                    "; called untimed but measured: {}",
                    self.contradicted.join(", ")
                )
            }
        )
    }
}

/// The preflight's lines in a serial log; `None` when the run had none.
/// `report` is round 2's JSON report, to hold the preflight to its word.
pub fn parse(lines: &[(f64, String)], report: Option<&Value>) -> Option<Preflight> {
    let mut p = Preflight::default();
    let mut seen = false;
    for (_, l) in lines {
        let Some(rest) = l.strip_prefix(PREFIX) else {
            continue;
        };
        seen = true;
        if let Some(out) = rest.strip_prefix("| phase:") {
            let Some((name, _)) = out.split_once(" from: ") else {
                continue;
            };
            let name = name.trim();
            let (name, untimed) = match name.strip_suffix('!') {
                Some(n) => (n.trim().to_string(), true),
                None => (name.to_string(), false),
            };
            if untimed {
                p.untimed.push(name.clone());
            }
            p.phases.push(name);
        } else if let Some(v) = rest.strip_prefix("rc=") {
            p.rc = v.trim().parse().ok();
        } else if let Some(v) = rest.strip_prefix("image-loaded=") {
            p.image_loaded = Some(v.trim().to_string());
        } else if let Some(v) = rest.strip_prefix("crash-image-loaded=") {
            p.crash_image_loaded = Some(v.trim().to_string());
            // A chained run preflights every round: the first round's block is this run's.
            break;
        }
    }
    let measured: Vec<&str> = report
        .and_then(|r| r.get("phases"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|ph| ph.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    // The text names phases for people; the report's JSON by machine name.
    let id_of = |label: &str| {
        fastkexec::record::phases::PHASES
            .iter()
            .find(|d| d.label == label)
            .map(|d| d.id)
    };
    p.contradicted = p
        .untimed
        .iter()
        .filter(|u| id_of(u).is_some_and(|id| measured.contains(&id)))
        .cloned()
        .collect();
    seen.then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<(f64, String)> {
        text.lines().map(|l| (0.0, l.to_string())).collect()
    }

    /// The shape round1.sh prints (two phases shown; the real run lists all).
    const RUN: &str = "\
FKLAB: preflight | probe:    fentry kernel_kexec
FKLAB: preflight | phase:    reboot notifiers       from: fentry kernel_kexec
FKLAB: preflight |                                  to:   fentry device_shutdown (device shutdown)
FKLAB: preflight | phase:    trampoline           ! from: not reached: only a staged load has a trampoline (this one is uncompressed)
FKLAB: preflight |                                  to:   our purgatory's TSC stamp at its entry (purgatory)
FKLAB: preflight rc=0
FKLAB: preflight image-loaded=no
FKLAB: preflight crash-image-loaded=no
";

    #[test]
    fn reads_phases_untimed_and_what_was_loaded() {
        let p = parse(&lines(RUN), None).expect("preflight seen");
        assert_eq!(p.phases, ["reboot notifiers", "trampoline"]);
        assert_eq!(p.untimed, ["trampoline"]);
        assert_eq!(p.rc, Some(0));
        assert_eq!(p.image_loaded.as_deref(), Some("no"));
        // Two phases are not all of them.
        assert!(!p.ok());
    }

    #[test]
    fn an_untimed_phase_the_report_measured_contradicts_it() {
        let report = serde_json::json!({"phases": [{"name": "trampoline", "duration_ns": 5}]});
        let p = parse(&lines(RUN), Some(&report)).expect("preflight seen");
        assert_eq!(p.contradicted, ["trampoline"]);
    }

    #[test]
    fn a_chained_run_is_judged_by_its_first_preflight() {
        let twice = format!("{RUN}{RUN}");
        let p = parse(&lines(&twice), None).expect("preflight seen");
        assert_eq!(p.phases.len(), 2);
    }

    #[test]
    fn no_preflight_lines_is_none() {
        assert!(parse(&lines("FKLAB: exec\n"), None).is_none());
    }
}
