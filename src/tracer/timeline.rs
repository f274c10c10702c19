// SPDX-License-Identifier: MPL-2.0
//! The tracer's timeline file: live bytes over time, by element, as an SVG chart (drawn with
//! `plotters`' SVG backend: a few small crates, no font or image library) or as CSV samples.
//! Each sample ends an interval and says the value at its end and the least and the most
//! reached within it: the chart draws the end value over the interval and the range as a
//! shaded band, so that its highest point is the peak the report gives.

use std::collections::HashMap;
use std::fmt::Write as _;

use plotters::prelude::*;

use crate::attribution::slots::RowId;
use crate::attribution::timeline::{Sample, Span, merged};

/// Elements drawn with a line of their own; the rest are summed as "others".
pub const TOP: usize = 6;
/// Intervals drawn at most (the chart is 1,000 pixels wide): more are merged, keeping their
/// least and most.
const DRAWN: usize = 800;

/// What elements whose rows were added up are shown as.
const EARLIER: &str = "earlier elements";

/// Each element's span in `sample`, by the name the report shows (rows of the same name, which
/// only the added-up earlier elements can have, add up).
fn by_name(sample: &Sample, names: &HashMap<RowId, String>) -> HashMap<String, Span> {
    let mut m: HashMap<String, Span> = HashMap::new();
    for (row, span) in &sample.per {
        let name = names.get(row).map_or(EARLIER, String::as_str);
        let s = m.entry(name.to_owned()).or_default();
        s.end += span.end;
        s.low += span.low;
        s.high += span.high;
    }
    m
}

/// Every name that held bytes in some interval, the highest peak first.
fn ranked(rows: &[HashMap<String, Span>]) -> Vec<String> {
    let mut peak: HashMap<&str, u64> = HashMap::new();
    for row in rows {
        for (name, span) in row {
            let p = peak.entry(name).or_default();
            *p = (*p).max(span.high);
        }
    }
    let mut v: Vec<(&str, u64)> = peak.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.into_iter().map(|(n, _)| n.to_owned()).collect()
}

/// The samples as CSV: `seconds,total,total min,total max,cached`, then three columns per
/// element (`<name>`, `<name> min`, `<name> max`), bytes: each row ends an interval, with the
/// value at its end and the least and the most within it.
pub fn to_csv(samples: &[Sample], names: &HashMap<RowId, String>) -> String {
    let rows: Vec<HashMap<String, Span>> = samples.iter().map(|s| by_name(s, names)).collect();
    let columns = ranked(&rows);
    let mut out = String::from("seconds,total,total min,total max,cached");
    for c in &columns {
        // Element names may hold commas or quotes: quoted as RFC 4180 says.
        let c = c.replace('"', "\"\"");
        let _ = write!(out, ",\"{c}\",\"{c} min\",\"{c} max\"");
    }
    out.push('\n');
    for (s, row) in samples.iter().zip(&rows) {
        let t = s.total;
        let _ = write!(
            out,
            "{:.6},{},{},{},{}",
            s.seconds, t.end, t.low, t.high, s.cached
        );
        for c in &columns {
            let v = row.get(c).copied().unwrap_or_default();
            let _ = write!(out, ",{},{},{}", v.end, v.low, v.high);
        }
        out.push('\n');
    }
    out
}

/// A series of the chart: its name, its spans by interval, its colour, whether it is thick,
/// whether its band is drawn.
struct Series {
    name: String,
    spans: Vec<Span>,
    color: RGBColor,
    thick: bool,
    band: bool,
}

/// The unit the chart's axis counts in: the largest whose count is at least 1 at the top.
fn unit(max: u64) -> (&'static str, f64) {
    const UNITS: [(&str, u64); 4] = [
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];
    UNITS
        .iter()
        .find(|(_, size)| max >= *size)
        .map_or(("B", 1.0), |&(name, size)| (name, size as f64))
}

/// The chart: a line per element (the [`TOP`] largest by peak, the others summed), the total
/// and the cached bytes, against seconds, with a legend. Each line is the value at the end of
/// each interval, drawn as steps; a shaded band of its colour covers the least to the most
/// reached within each interval.
pub fn draw_svg(
    path: &str,
    samples: &[Sample],
    names: &HashMap<RowId, String>,
) -> Result<(), String> {
    let samples = merged(samples, DRAWN);
    let rows: Vec<HashMap<String, Span>> = samples.iter().map(|s| by_name(s, names)).collect();
    let columns = ranked(&rows);
    let (top, rest) = columns.split_at(columns.len().min(TOP));
    let x_max = samples.last().map_or(1.0, |s| s.seconds).max(1e-3);
    let top_bytes = samples
        .iter()
        .map(|s| s.total.high.max(s.cached))
        .max()
        .unwrap_or(0);
    let (unit_name, unit_bytes) = unit(top_bytes);
    // Headroom for the legend in the upper right corner.
    let y_max = if top_bytes > 0 {
        top_bytes as f64 / unit_bytes * 1.35
    } else {
        1.0
    };

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
        .y_desc(format!("live memory ({unit_name})"))
        .draw()
        .map_err(|e| err(&e))?;

    // The total first: the elements' lines are drawn over it.
    let mut series: Vec<Series> = vec![Series {
        name: "total".to_owned(),
        spans: samples.iter().map(|s| s.total).collect(),
        color: BLACK,
        thick: true,
        band: true,
    }];
    let pick = |i: usize| Palette99::pick(i).to_rgba();
    for (i, name) in top.iter().enumerate() {
        let c = pick(i);
        series.push(Series {
            name: name.clone(),
            spans: rows
                .iter()
                .map(|r| r.get(name).copied().unwrap_or_default())
                .collect(),
            color: RGBColor(c.0, c.1, c.2),
            thick: false,
            band: true,
        });
    }
    if !rest.is_empty() {
        // The band of a sum is drawn from the sum of the least to the sum of the most: it
        // holds the sum's range, and may be wider.
        let spans = rows
            .iter()
            .map(|r| {
                rest.iter()
                    .filter_map(|n| r.get(n))
                    .fold(Span::default(), |a, s| Span {
                        end: a.end + s.end,
                        low: a.low + s.low,
                        high: a.high + s.high,
                    })
            })
            .collect();
        series.push(Series {
            name: format!("others ({})", rest.len()),
            spans,
            color: RGBColor(128, 128, 128),
            thick: false,
            band: true,
        });
    }
    series.push(Series {
        name: "cached by the allocators".to_owned(),
        spans: samples
            .iter()
            .map(|s| Span {
                end: s.cached,
                low: s.cached,
                high: s.cached,
            })
            .collect(),
        color: RGBColor(0, 150, 200),
        thick: true,
        band: false,
    });
    let times: Vec<f64> = samples.iter().map(|s| s.seconds).collect();
    let scale = |v: u64| v as f64 / unit_bytes;
    // Every band first, under every line; the total's lighter, as it covers the others'.
    for (i, s) in series.iter().enumerate().filter(|(_, s)| s.band) {
        let band = band(&times, &s.spans, scale);
        let alpha = if i == 0 { 0.12 } else { 0.22 };
        chart
            .draw_series(std::iter::once(Polygon::new(
                band,
                s.color.mix(alpha).filled(),
            )))
            .map_err(|e| err(&e))?;
    }
    for s in series {
        let points = steps(&times, &s.spans, scale);
        let style = ShapeStyle::from(&s.color).stroke_width(if s.thick { 3 } else { 2 });
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(|e| err(&e))?
            .label(s.name)
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

/// The values at the ends of the intervals as a step line, each drawn over its interval: a
/// sample is taken just before an event, so an interval's events come at its start and its
/// end value is what held over most of it (a burst, then a quiet second, shows where the burst
/// ended all along the second).
fn steps(times: &[f64], spans: &[Span], scale: impl Fn(u64) -> f64) -> Vec<(f64, f64)> {
    let starts = std::iter::once(0.0).chain(times.iter().copied());
    let mut out = Vec::with_capacity(times.len() * 2);
    for ((a, b), span) in starts.zip(times.iter().copied()).zip(spans) {
        out.push((a, scale(span.end)));
        out.push((b, scale(span.end)));
    }
    out
}

/// The outline of the band from the least to the most of each interval (the first interval
/// starts at 0 s): the tops left to right, then the bottoms right to left.
fn band(times: &[f64], spans: &[Span], scale: impl Fn(u64) -> f64) -> Vec<(f64, f64)> {
    let starts = std::iter::once(0.0).chain(times.iter().copied());
    let intervals: Vec<(f64, f64, &Span)> = starts
        .zip(times.iter().copied())
        .zip(spans)
        .map(|((a, b), s)| (a, b, s))
        .collect();
    let mut out = Vec::with_capacity(intervals.len() * 4);
    for &(a, b, s) in &intervals {
        out.push((a, scale(s.high)));
        out.push((b, scale(s.high)));
    }
    for &(a, b, s) in intervals.iter().rev() {
        out.push((b, scale(s.low)));
        out.push((a, scale(s.low)));
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

    fn span(end: u64, low: u64, high: u64) -> Span {
        Span { end, low, high }
    }

    fn samples() -> (Vec<Sample>, HashMap<RowId, String>) {
        let names = HashMap::from([(1, "src".to_owned()), (2, "conv, \"2\"".to_owned())]);
        let samples = (0..50u64)
            .map(|i| Sample {
                seconds: i as f64 * 0.1,
                per: vec![
                    (1, span(1000 * i, 0, 1000 * i + 7)),
                    (2, span(5 << 20, 5 << 20, 5 << 20)),
                ],
                total: span(1000 * i + (5 << 20), 5 << 20, 1000 * i + 7 + (5 << 20)),
                cached: 1 << 20,
            })
            .collect();
        (samples, names)
    }

    #[test]
    fn csv_has_three_columns_per_element_and_a_row_per_sample() {
        let (s, names) = samples();
        let csv = to_csv(&s, &names);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "seconds,total,total min,total max,cached,\"conv, \"\"2\"\"\",\"conv, \"\"2\"\" min\",\
             \"conv, \"\"2\"\" max\",\"src\",\"src min\",\"src max\""
        );
        assert_eq!(lines.len(), 51);
        assert_eq!(
            lines[2],
            format!(
                "0.100000,{},{},{},{},{},{},{},1000,0,1007",
                1000 + (5 << 20),
                5 << 20,
                1007 + (5 << 20),
                1 << 20,
                5 << 20,
                5 << 20,
                5 << 20
            )
        );
    }

    #[test]
    fn an_element_of_rows_no_longer_named_shows_as_earlier_elements() {
        let (mut s, names) = samples();
        s[3].per.push((99, span(1, 1, 1)));
        assert!(
            to_csv(&s, &names)
                .lines()
                .next()
                .unwrap()
                .contains("\"earlier elements\"")
        );
    }

    #[test]
    fn the_svg_is_a_chart_with_a_legend_and_bands() {
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
        assert_eq!(
            svg.matches("<polygon").count(),
            3,
            "a band per element, and the total's"
        );
    }

    #[test]
    fn the_line_holds_each_end_value_over_its_interval() {
        let l = steps(&[1.0, 2.0], &[span(5, 1, 9), span(2, 0, 4)], |v| v as f64);
        assert_eq!(l, [(0.0, 5.0), (1.0, 5.0), (1.0, 2.0), (2.0, 2.0)]);
    }

    #[test]
    fn the_band_covers_each_interval_from_its_least_to_its_most() {
        let b = band(&[1.0, 2.0], &[span(5, 1, 9), span(2, 0, 4)], |v| v as f64);
        assert_eq!(
            b,
            [
                (0.0, 9.0),
                (1.0, 9.0),
                (1.0, 4.0),
                (2.0, 4.0),
                (2.0, 0.0),
                (1.0, 0.0),
                (1.0, 1.0),
                (0.0, 1.0)
            ]
        );
    }
}
