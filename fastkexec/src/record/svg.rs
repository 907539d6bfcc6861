//! `report --svg`: the reboot as a picture, in the manner of `systemd-analyze plot`.
//!
//! Two panels on one page. The whole blackout on one linear scale shows where
//! the seconds go (the new kernel's boot, usually); a second panel zooms into
//! the old kernel and the handoff (origin → the new kernel's clock zero), where
//! the probes' milliseconds are, with the slowest devices and reboot notifiers
//! drawn under their phase. The tracer's own time (measured inside the probes)
//! is a row of its own, so nobody mistakes it for the kernel's.
//!
//! Every bar carries `data-*` attributes (phase, start and duration in ns) so
//! that tools and tests can read the picture back without guessing from pixels.

use std::fmt::Write as _;

use crate::record::phases;
use crate::record::report::Report;

const WIDTH: f64 = 1200.0;
const LABEL: f64 = 250.0;
const ROW: f64 = 22.0;
const BAR: f64 = 16.0;
const PLOT: f64 = WIDTH - LABEL - 20.0;

/// The SVG document for `report`.
pub fn render(report: &Report) -> String {
    let mut body = String::new();
    let mut y = 40.0;
    let title = match &report.new_kernel {
        Some(k) => format!("kexec reboot into {k}: {}", ms(report.total_ns)),
        None => format!("kexec reboot: {}", ms(report.total_ns)),
    };
    text(&mut body, 10.0, 22.0, "title", &title);

    // Panel 1: the whole blackout.
    let total = report.total_ns.max(1);
    y = panel_heading(&mut body, y, "the whole blackout", 0, total);
    for p in &report.phases {
        y = bar_row(
            &mut body,
            y,
            &Bar {
                class: "phase",
                group: group_of(&p.name),
                label: phases::label(&p.name),
                id: &p.name,
                start: p.start_ns,
                duration: p.duration_ns,
            },
            0,
            total,
        );
        for (name, start, duration) in unit_rows(report, &p.name) {
            y = bar_row(
                &mut body,
                y,
                &Bar {
                    class: "unit",
                    group: "unit",
                    label: &name,
                    id: &name,
                    start,
                    duration,
                },
                0,
                total,
            );
        }
    }

    // Panel 2: origin → the new kernel's clock zero.
    let zoom_end = report
        .phases
        .iter()
        .find(|p| p.name == "kernel_boot")
        .map_or(total, |p| p.start_ns)
        .max(1);
    y += ROW;
    y = panel_heading(
        &mut body,
        y,
        "the old kernel and the handoff (zoomed)",
        0,
        zoom_end,
    );
    for p in report.phases.iter().filter(|p| p.start_ns < zoom_end) {
        y = bar_row(
            &mut body,
            y,
            &Bar {
                class: "phase-zoom",
                group: group_of(&p.name),
                label: phases::label(&p.name),
                id: &p.name,
                start: p.start_ns,
                duration: p.duration_ns.min(zoom_end - p.start_ns),
            },
            0,
            zoom_end,
        );
        let (items, kind): (Vec<(String, u64, u64)>, &str) = match p.name.as_str() {
            "device_shutdown" => (
                report
                    .devices
                    .iter()
                    .map(|d| (d.device.clone(), d.start_ns, d.duration_ns))
                    .collect(),
                "device",
            ),
            "reboot_notifiers" => (
                report
                    .notifiers
                    .iter()
                    .map(|n| (n.symbol.clone(), n.start_ns, n.duration_ns))
                    .collect(),
                "notifier",
            ),
            _ => (Vec::new(), ""),
        };
        for (name, start, duration) in items {
            y = bar_row(
                &mut body,
                y,
                &Bar {
                    class: kind,
                    group: kind,
                    label: &name,
                    id: &name,
                    start,
                    duration,
                },
                0,
                zoom_end,
            );
        }
    }
    if report.record.tracer_self_ns > 0 {
        y = bar_row(
            &mut body,
            y,
            &Bar {
                class: "tracer",
                group: "tracer",
                label: "tracer's own time",
                id: "tracer",
                start: 0,
                duration: report.record.tracer_self_ns,
            },
            0,
            zoom_end,
        );
    }
    y = initcall_panel(&mut body, y, report);
    let height = y + ROW;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <style>.title{{font-size:16px;font-weight:bold}} .heading{{font-weight:bold}} \
         .axis{{fill:#666;font-size:10px}} .old{{fill:#4a7fc1}} .handoff{{fill:#e08a2c}} \
         .new{{fill:#4f9d4f}} .user{{fill:#8a5fb0}} .unattributed{{fill:#bbb}} \
         .device{{fill:#8fb3e0}} .notifier{{fill:#8fb3e0}} .initcall{{fill:#9fd09f}} \
         .unit{{fill:#c0a6d6}} \
         .tracer{{fill:#d9534f;fill-opacity:0.5;stroke:#d9534f;stroke-dasharray:3,2}}</style>\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    );
    svg
}

/// Panel 3: "kernel boot" zoomed, with its slowest initcalls under it; or why there are none.
fn initcall_panel(body: &mut String, y: f64, report: &Report) -> f64 {
    let ic = &report.initcalls;
    let Some(kb) = report.phases.iter().find(|p| p.name == "kernel_boot") else {
        return y;
    };
    let mut y = y + ROW;
    if ic.status != "ok" {
        text(
            body,
            10.0,
            y,
            "heading",
            &format!("initcalls: {}", ic.status.replace('_', " ")),
        );
        return y + ROW;
    }
    let (from, to) = (
        kb.start_ns,
        kb.start_ns
            .saturating_add(kb.duration_ns)
            .max(kb.start_ns + 1),
    );
    y = panel_heading(
        body,
        y,
        &format!(
            "kernel boot and its slowest initcalls (zoomed; {} initcalls, {} in all, {} outside them)",
            ic.count,
            ms(ic.sum_ns),
            ms(ic.unexplained_ns.unwrap_or(0))
        ),
        from,
        to,
    );
    y = bar_row(
        body,
        y,
        &Bar {
            class: "phase-zoom",
            group: "new",
            label: phases::label(&kb.name),
            id: &kb.name,
            start: kb.start_ns,
            duration: kb.duration_ns,
        },
        from,
        to,
    );
    for c in &ic.top {
        y = bar_row(
            body,
            y,
            &Bar {
                class: "initcall",
                group: "initcall",
                label: &c.func,
                id: &c.func,
                start: c.start_ns,
                duration: c.duration_ns,
            },
            from,
            to,
        );
    }
    y
}

/// The slowest units under their phase: stopping under the shutdown, starting
/// under user space (a stop that began before the origin is cut at it).
fn unit_rows(report: &Report, phase: &str) -> Vec<(String, u64, u64)> {
    match phase {
        "userspace_shutdown" | "reboot_syscall" if report.origin.is_some() => {
            // Follow mode has no shutdown phase: its units go under reboot(2)'s.
            let first = report
                .phases
                .iter()
                .find(|p| matches!(p.name.as_str(), "userspace_shutdown" | "reboot_syscall"))
                .map(|p| p.name.as_str());
            if first != Some(phase) {
                return Vec::new();
            }
            report
                .units_stop
                .iter()
                .flat_map(|u| &u.slowest)
                .map(|u| {
                    let start = u64::try_from(u.start_ns).unwrap_or(0);
                    let end = u64::try_from(u.start_ns.saturating_add_unsigned(u.duration_ns))
                        .unwrap_or(0);
                    (u.unit.clone(), start, end.saturating_sub(start))
                })
                .collect()
        }
        "user_space" => report
            .units_start
            .iter()
            .flat_map(|u| &u.slowest)
            .map(|u| (u.unit.clone(), u.start_ns, u.duration_ns))
            .collect(),
        _ => Vec::new(),
    }
}

struct Bar<'a> {
    class: &'a str,
    group: &'a str,
    label: &'a str,
    id: &'a str,
    start: u64,
    duration: u64,
}

/// Colour group of a phase: which side of the handoff its time is spent on.
fn group_of(id: &str) -> &'static str {
    match id {
        phases::UNATTRIBUTED => "unattributed",
        "relocation" | "trampoline" | "purgatory" | "kernel_early_boot" => "handoff",
        "kernel_boot" => "new",
        "user_space" => "user",
        _ => "old",
    }
}

fn x_of(ns: u64, from: u64, to: u64) -> f64 {
    let span = to.saturating_sub(from).max(1) as f64;
    LABEL + (ns.saturating_sub(from) as f64 / span).min(1.0) * PLOT
}

/// A panel's title, then its time axis on a line of its own.
fn panel_heading(out: &mut String, y: f64, what: &str, from: u64, to: u64) -> f64 {
    text(out, 10.0, y, "heading", what);
    let axis = y + ROW * 0.8;
    for i in 0..=4 {
        let ns = from + (to - from) * i / 4;
        let x = x_of(ns, from, to);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
            axis + 4.0,
            axis + 8.0
        );
        let anchor = if i == 4 { "end" } else { "middle" };
        let _ = writeln!(
            out,
            "<text x=\"{x:.1}\" y=\"{axis:.1}\" class=\"axis\" text-anchor=\"{anchor}\">{}</text>",
            ms(ns)
        );
    }
    axis + ROW
}

fn bar_row(out: &mut String, y: f64, bar: &Bar<'_>, from: u64, to: u64) -> f64 {
    let x = x_of(bar.start, from, to);
    let w = (x_of(bar.start.saturating_add(bar.duration), from, to) - x).max(1.0);
    // Rows under a phase (its devices, its notifiers) are indented.
    let indent = if matches!(bar.class, "device" | "notifier" | "initcall") {
        26.0
    } else {
        10.0
    };
    text(out, indent, y + BAR - 4.0, "", bar.label);
    let _ = writeln!(
        out,
        "<rect class=\"{} {}\" x=\"{x:.2}\" y=\"{:.1}\" width=\"{w:.2}\" height=\"{BAR}\" \
         data-id=\"{}\" data-start-ns=\"{}\" data-duration-ns=\"{}\"><title>{}: {}</title></rect>",
        bar.class,
        bar.group,
        y,
        escape(bar.id),
        bar.start,
        bar.duration,
        escape(&tooltip(bar)),
        ms(bar.duration)
    );
    // The figure goes right of the bar, or left of it where the bar reaches the edge.
    let (tx, anchor) = if x + w + 90.0 > WIDTH {
        (x - 4.0, "end")
    } else {
        (x + w + 4.0, "start")
    };
    let _ = writeln!(
        out,
        "<text x=\"{tx:.1}\" y=\"{:.1}\" class=\"axis\" text-anchor=\"{anchor}\">{}</text>",
        y + BAR - 4.0,
        ms(bar.duration)
    );
    y + ROW
}

fn tooltip(bar: &Bar<'_>) -> String {
    if bar.class == "tracer" {
        "time measured inside the probes themselves, spread over the old kernel's phases".into()
    } else {
        bar.label.to_string()
    }
}

fn text(out: &mut String, x: f64, y: f64, class: &str, s: &str) {
    let _ = writeln!(
        out,
        "<text x=\"{x:.1}\" y=\"{y:.1}\" class=\"{class}\">{}</text>",
        escape(s)
    );
}

fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

/// Device and symbol names come from the old kernel's record: escape them.
fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&apos;".to_string(),
            c if c.is_control() => " ".to_string(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::report::build;
    use crate::record::report::tests::{events, good_record, inputs};

    fn attr(n: &roxmltree::Node<'_, '_>, a: &str) -> f64 {
        n.attribute(a)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{a} missing or not a number"))
    }

    #[test]
    fn the_picture_parses_and_its_bars_are_the_report_phases_to_scale() {
        let r = build(&inputs(Ok(good_record(&events()))));
        let svg = render(&r);
        let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let phases: Vec<_> = doc
            .descendants()
            .filter(|n| {
                n.attribute("class")
                    .is_some_and(|c| c.starts_with("phase "))
            })
            .collect();
        // One bar per phase, in timeline order, named as the report names them.
        let ids: Vec<&str> = phases
            .iter()
            .filter_map(|n| n.attribute("data-id"))
            .collect();
        let want: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(ids, want);
        // Widths follow the durations: kernel_boot (300 ms of 330 ms in the fixture)
        // is 300/20 times user_space (20 ms), bars are laid end to end.
        let width = |id: &str| {
            phases
                .iter()
                .find(|n| n.attribute("data-id") == Some(id))
                .map(|n| attr(n, "width"))
                .expect("bar present")
        };
        let ratio = width("kernel_boot") / width("user_space");
        assert!((ratio - 15.0).abs() < 0.01, "{ratio}");
        for w in phases.windows(2) {
            let end = attr(&w[0], "x") + attr(&w[0], "width");
            // Bars under a pixel are drawn one pixel wide.
            assert!(attr(&w[1], "x") >= end - 1.0 - 1e-6, "{end}");
        }
    }

    #[test]
    fn devices_and_notifiers_sit_under_their_phase_and_the_tracer_is_marked() {
        let r = build(&inputs(Ok(good_record(&events()))));
        let svg = render(&r);
        let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
        let of = |class: &str| {
            doc.descendants()
                .filter(|n| {
                    n.attribute("class")
                        .is_some_and(|c| c.split(' ').next() == Some(class))
                })
                .count()
        };
        assert_eq!(of("device"), r.devices.len());
        assert_eq!(of("notifier"), r.notifiers.len());
        assert_eq!(of("tracer"), usize::from(r.record.tracer_self_ns > 0));
    }

    #[test]
    fn initcalls_sit_under_kernel_boot_zoomed_or_their_absence_is_said() {
        use crate::record::initcalls::{InitcallTime, Initcalls};
        let mut r = build(&inputs(Ok(good_record(&events()))));
        let kb = r
            .phases
            .iter()
            .find(|p| p.name == "kernel_boot")
            .unwrap()
            .clone();
        let call = |func: &str, at: u64, d: u64| InitcallTime {
            func: func.into(),
            ret: 0,
            start_ns: kb.start_ns + at,
            duration_ns: d,
            note: None,
        };
        r.initcalls = Initcalls {
            status: "ok",
            count: 2,
            top: vec![
                call("<a&b>", 0, kb.duration_ns / 2),
                call("c", kb.duration_ns / 2, 1_000),
            ],
            ..Initcalls::default()
        };
        let svg = render(&r);
        let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
        let bars: Vec<_> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("initcall initcall"))
            .collect();
        assert_eq!(bars.len(), 2);
        assert_eq!(bars[0].attribute("data-id"), Some("<a&b>"));
        // Zoomed to kernel boot: the first fills half of the plot from its left edge.
        let zoomed = doc
            .descendants()
            .rfind(|n| n.attribute("data-id") == Some("kernel_boot"))
            .unwrap();
        assert!((attr(&bars[0], "x") - attr(&zoomed, "x")).abs() < 1e-6);
        let half = attr(&zoomed, "width") / 2.0;
        assert!((attr(&bars[0], "width") - half).abs() < 0.01);
        assert!((attr(&bars[1], "x") - (attr(&zoomed, "x") + half)).abs() < 0.01);

        r.initcalls = Initcalls {
            status: "not_requested",
            ..Initcalls::default()
        };
        let svg = render(&r);
        assert!(svg.contains("initcalls: not requested"));
        assert!(!svg.contains("class=\"initcall"));
    }

    #[test]
    fn names_from_the_record_are_escaped() {
        let mut r = build(&inputs(Ok(good_record(&events()))));
        if let Some(d) = r.devices.first_mut() {
            d.device = "<script>&\"'".into();
        }
        let svg = render(&r);
        assert!(roxmltree::Document::parse(&svg).is_ok());
        assert!(!svg.contains("<script>"));
    }
}
