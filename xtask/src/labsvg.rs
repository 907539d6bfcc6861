//! The timeline picture of a traced lab run: round 2 runs `fastkexec report
//! --svg` and prints the file between `FKLAB: svg-begin` / `FKLAB: svg-end`.
//! The run keeps it as `timeline.svg` and reads it back with an XML parser:
//! it must be well-formed SVG with one bar per phase of round 2's JSON report,
//! in the same order.

use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SvgCheck {
    pub path: PathBuf,
    /// Phase bars found in the picture, by `data-id`.
    pub bars: Vec<String>,
    /// Phases of the JSON report.
    pub phases: Vec<String>,
    pub error: Option<String>,
}

impl SvgCheck {
    pub fn ok(&self) -> bool {
        self.error.is_none() && !self.bars.is_empty() && self.bars == self.phases
    }
}

/// The picture's text between the markers.
pub fn extract(lines: &[(f64, String)]) -> Option<String> {
    let begin = lines.iter().position(|(_, l)| l == "FKLAB: svg-begin")?;
    let rest = lines.get(begin + 1..)?;
    let end = rest.iter().position(|(_, l)| l == "FKLAB: svg-end")?;
    Some(
        rest.get(..end)?
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// Saves the picture into `dir` and checks it against the JSON report.
pub fn check(lines: &[(f64, String)], report: Option<&Value>, dir: &Path) -> Option<SvgCheck> {
    let svg = extract(lines)?;
    let path = dir.join("timeline.svg");
    let mut c = SvgCheck {
        path: path.clone(),
        bars: Vec::new(),
        phases: report
            .and_then(|r| r.get("phases"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| Some(p.get("name")?.as_str()?.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        error: None,
    };
    if let Err(e) = std::fs::write(&path, &svg) {
        c.error = Some(format!("cannot save {}: {e}", path.display()));
        return Some(c);
    }
    match roxmltree::Document::parse(&svg) {
        Ok(doc) if doc.root_element().tag_name().name() == "svg" => {
            c.bars = doc
                .descendants()
                .filter(|n| {
                    n.attribute("class")
                        .is_some_and(|cl| cl.split(' ').next() == Some("phase"))
                })
                .filter_map(|n| n.attribute("data-id").map(str::to_string))
                .collect();
        }
        Ok(doc) => {
            c.error = Some(format!(
                "root element is <{}>, not <svg>",
                doc.root_element().tag_name().name()
            ))
        }
        Err(e) => c.error = Some(format!("not well-formed XML: {e}")),
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<(f64, String)> {
        text.lines().map(|l| (0.0, l.to_string())).collect()
    }

    const SERIAL: &str = "FKLAB: svg-begin
<svg xmlns=\"http://www.w3.org/2000/svg\">
<rect class=\"phase old\" data-id=\"reboot_syscall\"/>
<rect class=\"phase-zoom old\" data-id=\"reboot_syscall\"/>
<rect class=\"phase new\" data-id=\"kernel_boot\"/>
</svg>
FKLAB: svg-end
";

    #[test]
    fn the_bars_must_be_the_report_phases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good =
            serde_json::json!({"phases": [{"name": "reboot_syscall"}, {"name": "kernel_boot"}]});
        let c = check(&lines(SERIAL), Some(&good), dir.path()).expect("picture seen");
        assert!(c.ok(), "{c:?}");
        assert!(dir.path().join("timeline.svg").is_file());
        let other = serde_json::json!({"phases": [{"name": "kernel_boot"}]});
        assert!(!check(&lines(SERIAL), Some(&other), dir.path())
            .expect("seen")
            .ok());
    }

    #[test]
    fn broken_xml_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broken = SERIAL.replace("</svg>", "");
        let c = check(&lines(&broken), None, dir.path()).expect("seen");
        assert!(!c.ok() && c.error.is_some());
    }
}
