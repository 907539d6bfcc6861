//! The bench's stacked-bar chart: one horizontal bar per mode, one colour per
//! phase, drawn with plotters' SVG backend (text stays text: no font files).

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One bar: a mode and its stacked segments (name, ms), bottom first.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub segments: Vec<(String, f64)>,
    /// Min and max of the bar's total over the runs: drawn as a whisker.
    pub range: Option<(f64, f64)>,
    /// Printed after the bar's end (total, ratio, failures).
    pub note: String,
}

pub struct Chart {
    pub title: String,
    pub subtitle: String,
    pub bars: Vec<Bar>,
}

/// Colour-blind-friendly enough and distinct side by side (Tableau 20 order:
/// strong hues first, their light variants after).
const PALETTE: &[(u8, u8, u8)] = &[
    (0x4e, 0x79, 0xa7),
    (0xf2, 0x8e, 0x2b),
    (0xe1, 0x57, 0x59),
    (0x76, 0xb7, 0xb2),
    (0x59, 0xa1, 0x4f),
    (0xed, 0xc9, 0x48),
    (0xb0, 0x7a, 0xa1),
    (0xff, 0x9d, 0xa7),
    (0x9c, 0x75, 0x5f),
    (0xba, 0xb0, 0xac),
    (0xa0, 0xcb, 0xe8),
    (0xff, 0xbe, 0x7d),
    (0x8c, 0xd1, 0x7d),
    (0xb6, 0x99, 0x2d),
    (0x49, 0x98, 0x94),
    (0x86, 0xbc, 0xb6),
    (0xd3, 0x72, 0x95),
    (0xfa, 0xbf, 0xd2),
    (0xd4, 0xa6, 0xc8),
    (0x79, 0x70, 0x6e),
];

pub const WIDTH: u32 = 1100;
const ROW: u32 = 46;
const LEGEND_ROW: u32 = 24;
const LEGEND_COLUMNS: usize = 3;
const LABEL_AREA: u32 = 210;

fn colour(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// `#RRGGBB` of the i-th series colour, as plotters writes it.
#[cfg(test)]
pub fn colour_hex(i: usize) -> String {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    format!("#{r:02X}{g:02X}{b:02X}")
}

/// Segment names over all bars, in order of first appearance: one colour each.
pub fn series(bars: &[Bar]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for b in bars {
        for (name, _) in &b.segments {
            if !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    out
}

/// Height of the chart part; the legend lies below it.
pub fn chart_height(bars: usize) -> u32 {
    let rows = u32::try_from(bars.max(1)).unwrap_or(u32::MAX / ROW);
    110u32.saturating_add(ROW.saturating_mul(rows))
}

fn legend_height(series: usize) -> u32 {
    let rows = series.div_ceil(LEGEND_COLUMNS).max(1);
    let rows = u32::try_from(rows).unwrap_or(u32::MAX / LEGEND_ROW);
    20u32.saturating_add(LEGEND_ROW.saturating_mul(rows))
}

/// Renders the chart as an SVG document.
pub fn render(chart: &Chart) -> Result<String> {
    let names = series(&chart.bars);
    let top_h = chart_height(chart.bars.len());
    let height = top_h.saturating_add(legend_height(names.len()));
    let n = chart.bars.len().max(1);
    let total = |b: &Bar| b.segments.iter().map(|(_, v)| v.max(0.0)).sum::<f64>();
    let reach = |b: &Bar| total(b).max(b.range.map_or(0.0, |(_, hi)| hi));
    let longest = chart.bars.iter().map(reach).fold(0.0, f64::max);
    // Room right of the longest bar for its note.
    let x_max = if longest > 0.0 { longest * 1.3 } else { 1.0 };
    // Row 0 is drawn at the top, in the order the modes were given.
    let row_of = |i: usize| n - 1 - i;
    let labels: Vec<String> = chart.bars.iter().map(|b| b.label.clone()).collect();
    let y_label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(r) if *r < n => labels.get(n - 1 - *r).cloned().unwrap_or_default(),
        _ => String::new(),
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("chart: {e}"))?;
        let (top, bottom) = root.split_vertically(top_h);
        let top = top
            .titled(&chart.title, ("sans-serif", 22).into_font())
            .map_err(|e| anyhow!("chart title: {e}"))?;
        let mut c = ChartBuilder::on(&top)
            .caption(
                &chart.subtitle,
                ("sans-serif", 14).into_font().color(&BLACK.mix(0.7)),
            )
            .margin_left(10)
            .margin_right(30)
            .margin_bottom(6)
            .x_label_area_size(42)
            .y_label_area_size(LABEL_AREA)
            .build_cartesian_2d(0.0..x_max, (0..n - 1).into_segmented())
            .map_err(|e| anyhow!("chart axes: {e}"))?;
        c.configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&y_label)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("ms")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 14))
            .max_light_lines(1)
            .light_line_style(BLACK.mix(0.06))
            .draw()
            .map_err(|e| anyhow!("chart mesh: {e}"))?;
        for (i, bar) in chart.bars.iter().enumerate() {
            let row = row_of(i);
            let mut x = 0.0;
            for (name, v) in &bar.segments {
                let w = v.max(0.0);
                let k = names.iter().position(|s| s == name).unwrap_or(0);
                let mut rect = Rectangle::new(
                    [
                        (x, SegmentValue::Exact(row)),
                        (x + w, SegmentValue::Exact(row + 1)),
                    ],
                    colour(k).filled(),
                );
                rect.set_margin(7, 7, 0, 0);
                c.plotting_area()
                    .draw(&rect)
                    .map_err(|e| anyhow!("chart bar: {e}"))?;
                x += w;
            }
            if let Some((lo, hi)) = bar.range.filter(|_| !bar.segments.is_empty()) {
                let whisker = ErrorBar::new_horizontal(
                    SegmentValue::CenterOf(row),
                    lo,
                    x,
                    hi,
                    BLACK.mix(0.75).stroke_width(2),
                    12,
                );
                c.plotting_area()
                    .draw(&whisker)
                    .map_err(|e| anyhow!("chart whisker: {e}"))?;
            }
            let end = reach(bar);
            let style = ("sans-serif", 14)
                .into_font()
                .into_text_style(&top)
                .pos(Pos::new(HPos::Left, VPos::Center));
            let text = Text::new(
                bar.note.clone(),
                (end + x_max * 0.01, SegmentValue::CenterOf(row)),
                style,
            );
            c.plotting_area()
                .draw(&text)
                .map_err(|e| anyhow!("chart note: {e}"))?;
        }
        draw_legend(&bottom, &names)?;
        root.present().map_err(|e| anyhow!("chart: {e}"))?;
    }
    Ok(svg)
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    names: &[String],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let col_w = i32::try_from((WIDTH - LABEL_AREA) / LEGEND_COLUMNS as u32).unwrap_or(200);
    let row_h = i32::try_from(LEGEND_ROW).unwrap_or(24);
    let left = i32::try_from(LABEL_AREA).unwrap_or(0);
    for (k, name) in names.iter().enumerate() {
        let col = i32::try_from(k % LEGEND_COLUMNS).unwrap_or(0);
        let row = i32::try_from(k / LEGEND_COLUMNS).unwrap_or(0);
        let x = left + col * col_w;
        let y = 6 + row * row_h;
        area.draw(&Rectangle::new(
            [(x, y), (x + 16, y + 16)],
            colour(k).filled(),
        ))
        .map_err(|e| anyhow!("chart legend: {e}"))?;
        let style = ("sans-serif", 14)
            .into_font()
            .into_text_style(area)
            .pos(Pos::new(HPos::Left, VPos::Center));
        area.draw(&Text::new(name.clone(), (x + 22, y + 8), style))
            .map_err(|e| anyhow!("chart legend: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Bar rectangles (series colours, above the legend) grouped by their
    /// row: one group per drawn bar, each with its segments in x order.
    pub(crate) fn bar_groups(doc: &roxmltree::Document, bars: usize) -> Vec<Vec<(f64, f64)>> {
        let colours: Vec<String> = (0..PALETTE.len()).map(colour_hex).collect();
        let legend_top = f64::from(chart_height(bars));
        let num = |n: &roxmltree::Node, a: &str| -> f64 {
            n.attribute(a)
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let mut rows: BTreeMap<i64, Vec<(f64, f64)>> = BTreeMap::new();
        for n in doc.descendants().filter(|n| n.has_tag_name("rect")) {
            let fill = n.attribute("fill").unwrap_or_default();
            let y = num(&n, "y");
            if colours.iter().any(|c| c == fill) && y < legend_top {
                rows.entry(y as i64)
                    .or_default()
                    .push((num(&n, "x"), num(&n, "width")));
            }
        }
        rows.into_values()
            .map(|mut v| {
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                v
            })
            .collect()
    }

    fn bar(label: &str, segs: &[(&str, f64)]) -> Bar {
        Bar {
            label: label.into(),
            segments: segs.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            range: None,
            note: format!("{label} note"),
        }
    }

    #[test]
    fn stacked_bars_are_well_formed_svg() {
        let chart = Chart {
            title: "t <&> title".into(),
            subtitle: "sub".into(),
            bars: vec![
                bar("kexec-tools-l", &[("a", 3000.0), ("b", 5000.0)]),
                bar(
                    "fastkexec-file",
                    &[("c", 100.0), ("d", 1200.0), ("e", 4000.0)],
                ),
                bar("fastkexec-uncompressed", &[("a", 300.0), ("b", 5000.0)]),
            ],
        };
        let mut chart = chart;
        chart.bars[0].range = Some((2500.0, 9000.0));
        let svg = render(&chart).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        // The one bar with a range has its whisker (a dot at the median).
        let dots = doc
            .descendants()
            .filter(|n| n.has_tag_name("circle"))
            .count();
        assert_eq!(dots, 1);
        let groups = bar_groups(&doc, chart.bars.len());
        let mut sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        sizes.sort();
        assert_eq!(sizes, vec![2, 2, 3]);
        // Segments stack: each starts where the previous one ended.
        for g in &groups {
            for w in g.windows(2) {
                assert!((w[0].0 + w[0].1 - w[1].0).abs() <= 1.0, "{g:?}");
            }
        }
        // One legend entry per distinct segment name.
        let legend: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .map(str::trim)
            .filter(|t| ["a", "b", "c", "d", "e"].contains(t))
            .collect();
        assert_eq!(legend.len(), 5, "{legend:?}");
        assert!(svg.contains("t &lt;&amp;&gt; title"));
    }

    #[test]
    fn single_and_empty_bars_render() {
        for bars in [
            vec![bar("only", &[("a", 1.0)])],
            vec![bar("none", &[])],
            vec![],
        ] {
            let svg = render(&Chart {
                title: "t".into(),
                subtitle: "s".into(),
                bars: bars.clone(),
            })
            .unwrap();
            let doc = roxmltree::Document::parse(&svg).unwrap();
            let drawn = bars.iter().filter(|b| !b.segments.is_empty()).count();
            assert_eq!(bar_groups(&doc, bars.len()).len(), drawn);
        }
    }
}
