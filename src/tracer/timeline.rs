// SPDX-License-Identifier: MPL-2.0
//! The tracer's timeline file: live bytes over time, by element, as an SVG chart (drawn with
//! `plotters`' SVG backend: a few small crates, no font or image library) or as CSV samples.
//! The chart draws steps: a value holds from its sample to the next.

use std::collections::HashMap;
use std::fmt::Write as _;

use plotters::prelude::*;

use crate::attribution::slots::RowId;
use crate::attribution::timeline::Sample;

/// A line of the chart: its name, its points (seconds, MiB), its colour, whether it is thick.
type Series = (String, Vec<(f64, f64)>, RGBColor, bool);

/// Elements drawn with a line of their own; the rest are summed as "others".
pub const TOP: usize = 6;

/// What elements whose rows were added up are shown as.
const EARLIER: &str = "earlier elements";

/// Live bytes at the end of `sample`'s interval by the name the report shows (rows of the
/// same name, which only the added-up earlier elements can have, add up).
fn by_name(sample: &Sample, names: &HashMap<RowId, String>) -> HashMap<String, u64> {
    let mut m: HashMap<String, u64> = HashMap::new();
    for (row, span) in &sample.per {
        let name = names.get(row).map_or(EARLIER, String::as_str);
        *m.entry(name.to_owned()).or_default() += span.end;
    }
    m
}

/// Every name that held bytes in some sample, the largest peak first.
fn ranked(rows: &[HashMap<String, u64>]) -> Vec<String> {
    let mut peak: HashMap<&str, u64> = HashMap::new();
    for row in rows {
        for (name, &bytes) in row {
            let p = peak.entry(name).or_default();
            *p = (*p).max(bytes);
        }
    }
    let mut v: Vec<(&str, u64)> = peak.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.into_iter().map(|(n, _)| n.to_owned()).collect()
}

/// The samples as CSV: `seconds,total,cached,<one column per element>`, bytes.
pub fn to_csv(samples: &[Sample], names: &HashMap<RowId, String>) -> String {
    let rows: Vec<HashMap<String, u64>> = samples.iter().map(|s| by_name(s, names)).collect();
    let columns = ranked(&rows);
    let mut out = String::from("seconds,total,cached");
    for c in &columns {
        // Element names may hold commas or quotes: quoted as RFC 4180 says.
        let _ = write!(out, ",\"{}\"", c.replace('"', "\"\""));
    }
    out.push('\n');
    for (s, row) in samples.iter().zip(&rows) {
        let _ = write!(out, "{:.6},{},{}", s.seconds, s.total.end, s.cached);
        for c in &columns {
            let _ = write!(out, ",{}", row.get(c).copied().unwrap_or(0));
        }
        out.push('\n');
    }
    out
}

/// The chart: a line per element (the [`TOP`] largest by peak, the others summed), the total
/// and the cached bytes, in MiB against seconds, with a legend.
pub fn draw_svg(
    path: &str,
    samples: &[Sample],
    names: &HashMap<RowId, String>,
) -> Result<(), String> {
    const MIB: f64 = (1u64 << 20) as f64;
    let rows: Vec<HashMap<String, u64>> = samples.iter().map(|s| by_name(s, names)).collect();
    let columns = ranked(&rows);
    let (top, rest) = columns.split_at(columns.len().min(TOP));
    let x_max = samples.last().map_or(1.0, |s| s.seconds).max(1e-3);
    let y_max = samples
        .iter()
        .map(|s| s.total.end.max(s.cached))
        .max()
        .unwrap_or(0) as f64
        / MIB;
    // Headroom for the legend in the upper right corner.
    let y_max = if y_max > 0.0 { y_max * 1.35 } else { 1.0 };

    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("memkit: live bytes by element", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("time since the tracer started (s)")
        .y_desc("live memory (MiB)")
        .draw()
        .map_err(|e| err(&e))?;

    let mut lines: Vec<Series> = Vec::new();
    let pick = |i: usize| Palette99::pick(i).to_rgba();
    for (i, name) in top.iter().enumerate() {
        let c = pick(i);
        let points = samples
            .iter()
            .zip(&rows)
            .map(|(s, r)| (s.seconds, r.get(name).copied().unwrap_or(0) as f64 / MIB))
            .collect();
        lines.push((name.clone(), points, RGBColor(c.0, c.1, c.2), false));
    }
    if !rest.is_empty() {
        let points = samples
            .iter()
            .zip(&rows)
            .map(|(s, r)| {
                let sum: u64 = rest.iter().map(|n| r.get(n).copied().unwrap_or(0)).sum();
                (s.seconds, sum as f64 / MIB)
            })
            .collect();
        lines.push((
            format!("others ({})", rest.len()),
            points,
            RGBColor(128, 128, 128),
            false,
        ));
    }
    let total = samples
        .iter()
        .map(|s| (s.seconds, s.total.end as f64 / MIB));
    lines.push(("total".to_owned(), total.collect(), BLACK, true));
    let cached = samples.iter().map(|s| (s.seconds, s.cached as f64 / MIB));
    lines.push((
        "cached by the allocators".to_owned(),
        cached.collect(),
        RGBColor(0, 150, 200),
        true,
    ));
    for (name, points, color, thick) in lines {
        let points = steps(points);
        let style = ShapeStyle::from(&color).stroke_width(if thick { 3 } else { 2 });
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// `points` as a step line: a value holds until the next sample (live bytes change only at
/// allocations and frees, which is when samples are taken).
fn steps(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    for (i, &(x, y)) in points.iter().enumerate() {
        if i > 0 {
            out.push((x, points[i - 1].1));
        }
        out.push((x, y));
    }
    out
}

/// Writes the samples so far to `path`: SVG when it ends in `.svg`, CSV otherwise.
pub fn write(path: &str) -> Result<(), String> {
    let (samples, names) = crate::attribution::samples();
    if path.to_ascii_lowercase().ends_with(".svg") {
        draw_svg(path, &samples, &names)
    } else {
        std::fs::write(path, to_csv(&samples, &names)).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::timeline::Span;

    fn end(end: u64) -> Span {
        Span {
            end,
            low: end,
            high: end,
        }
    }

    fn samples() -> (Vec<Sample>, HashMap<RowId, String>) {
        let names = HashMap::from([(1, "src".to_owned()), (2, "conv, \"2\"".to_owned())]);
        let samples = (0..50)
            .map(|i| Sample {
                seconds: i as f64 * 0.1,
                per: vec![(1, end(1000 * i)), (2, end(5 << 20)), (3, end(24))],
                total: end(1000 * i + (5 << 20) + 24),
                cached: 1 << 20,
            })
            .collect();
        (samples, names)
    }

    #[test]
    fn csv_has_a_column_per_element_and_a_row_per_sample() {
        let (s, names) = samples();
        let csv = to_csv(&s, &names);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "seconds,total,cached,\"conv, \"\"2\"\"\",\"src\",\"earlier elements\""
        );
        assert_eq!(lines.len(), 51);
        assert_eq!(
            lines[2],
            format!(
                "0.100000,{},{},{},{},{}",
                1000 + (5 << 20) + 24,
                1 << 20,
                5 << 20,
                1000,
                24
            )
        );
    }

    #[test]
    fn the_svg_is_a_chart_with_a_legend() {
        let (s, names) = samples();
        let dir = std::env::temp_dir().join(format!("memkit-svg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.svg");
        draw_svg(path.to_str().unwrap(), &s, &names).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in [
            "live memory (MiB)",
            "total",
            "cached by the allocators",
            "src",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert!(svg.matches("<polyline").count() >= 4, "one line per series");
    }
}
