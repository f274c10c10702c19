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

use super::report::printable;

/// Elements drawn with a line of their own; the rest are summed as "others".
pub const TOP: usize = 6;
/// Elements with columns of their own in the CSV; the rest are summed as "others".
pub const CSV_TOP: usize = 16;
/// Intervals drawn at most (the chart is 1,000 pixels wide): more are merged, keeping their
/// least and most.
const DRAWN: usize = 800;

/// What elements whose rows were added up are shown as.
const EARLIER: &str = "earlier elements";
/// What the elements summed are shown as.
const OTHERS: &str = "others";

/// The samples by column: the `top` names with the highest peaks (rows of the same name,
/// which only the added-up earlier elements can have, add up), each with its span in every
/// sample, then the rest summed with the elements the samples sum already (`others`): for a
/// sum, the end is the sum's, the least and the most the sums of theirs (which hold the sum's
/// range, and may be wider).
struct Columns {
    names: Vec<String>,
    spans: Vec<Vec<Span>>,
    others: Vec<Span>,
}

fn add(a: Span, b: Span) -> Span {
    Span {
        end: a.end.saturating_add(b.end),
        low: a.low.saturating_add(b.low),
        high: a.high.saturating_add(b.high),
    }
}

fn columns(samples: &[Sample], names: &HashMap<RowId, String>, top: usize) -> Columns {
    // Each row's name, once: an index into `shown`.
    let mut shown: Vec<&str> = Vec::new();
    let mut index_of_name: HashMap<&str, usize> = HashMap::new();
    let mut index_of_row: HashMap<RowId, usize> = HashMap::new();
    let mut peak: Vec<u64> = Vec::new();
    let by_sample: Vec<Vec<(usize, Span)>> = samples
        .iter()
        .map(|s| {
            let mut per: Vec<(usize, Span)> = Vec::with_capacity(s.per.len());
            for &(row, span) in &s.per {
                let i = *index_of_row.entry(row).or_insert_with(|| {
                    let name = names.get(&row).map_or(EARLIER, String::as_str);
                    *index_of_name.entry(name).or_insert_with(|| {
                        shown.push(name);
                        peak.push(0);
                        shown.len() - 1
                    })
                });
                match per.iter_mut().find(|p| p.0 == i) {
                    Some(p) => p.1 = add(p.1, span),
                    None => per.push((i, span)),
                }
            }
            for &(i, span) in &per {
                peak[i] = peak[i].max(span.high);
            }
            per
        })
        .collect();
    let mut ranked: Vec<usize> = (0..shown.len()).collect();
    ranked.sort_by(|&a, &b| peak[b].cmp(&peak[a]).then(shown[a].cmp(shown[b])));
    let top = top.min(ranked.len());
    // Where each name goes: its column, or `others` (None).
    let mut column: Vec<Option<usize>> = vec![None; shown.len()];
    for (c, &i) in ranked[..top].iter().enumerate() {
        column[i] = Some(c);
    }
    let mut spans = vec![vec![Span::default(); samples.len()]; top];
    let mut others = Vec::with_capacity(samples.len());
    for (n, (s, per)) in samples.iter().zip(&by_sample).enumerate() {
        let mut rest = s.others;
        for &(i, span) in per {
            match column[i] {
                Some(c) => spans[c][n] = span,
                None => rest = add(rest, span),
            }
        }
        others.push(rest);
    }
    Columns {
        names: ranked[..top].iter().map(|&i| shown[i].to_owned()).collect(),
        spans,
        others,
    }
}

/// The samples as CSV: `seconds,total,total min,total max,cached`, then three columns per
/// element (`<name>`, `<name> min`, `<name> max`) for the [`CSV_TOP`] elements of the highest
/// peaks, then `others`, `others min`, `others max` (the rest summed), bytes: each row ends an
/// interval, with the value at its end and the least and the most within it.
pub fn to_csv(samples: &[Sample], names: &HashMap<RowId, String>) -> String {
    let cols = columns(samples, names, CSV_TOP);
    let mut out = String::from("seconds,total,total min,total max,cached");
    for c in cols.names.iter().map(String::as_str).chain([OTHERS]) {
        // Element names may hold commas or quotes: quoted as RFC 4180 says.
        let c = c.replace('"', "\"\"");
        let _ = write!(out, ",\"{c}\",\"{c} min\",\"{c} max\"");
    }
    out.push('\n');
    for (n, s) in samples.iter().enumerate() {
        let t = s.total;
        let _ = write!(
            out,
            "{:.6},{},{},{},{}",
            s.seconds, t.end, t.low, t.high, s.cached
        );
        for v in cols.spans.iter().map(|c| c[n]).chain([cols.others[n]]) {
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
    let cols = columns(&samples, names, TOP);
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
    for (i, (name, spans)) in cols.names.iter().zip(cols.spans).enumerate() {
        let c = pick(i);
        series.push(Series {
            // plotters escapes <&"' but not control characters, which XML forbids.
            name: printable(name).into_owned(),
            spans,
            color: RGBColor(c.0, c.1, c.2),
            thick: false,
            band: true,
        });
    }
    if cols.others.iter().any(|s| s.high > 0) {
        // The band of a sum is drawn from the sum of the least to the sum of the most: it
        // holds the sum's range, and may be wider.
        series.push(Series {
            name: OTHERS.to_owned(),
            spans: cols.others,
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
                others: Span::default(),
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
             \"conv, \"\"2\"\" max\",\"src\",\"src min\",\"src max\",\"others\",\"others min\",\
             \"others max\""
        );
        assert_eq!(lines.len(), 51);
        assert_eq!(
            lines[2],
            format!(
                "0.100000,{},{},{},{},{},{},{},1000,0,1007,0,0,0",
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
    fn csv_columns_are_the_highest_peaks_and_the_rest_summed_as_others() {
        let names: HashMap<RowId, String> = (1..=40).map(|r| (r, format!("e{r}"))).collect();
        let samples: Vec<Sample> = (0..3u64)
            .map(|i| Sample {
                seconds: i as f64,
                per: (1..=40u32)
                    .map(|r| (r, span(u64::from(r) * 10, 0, u64::from(r) * 10 + i)))
                    .collect(),
                others: span(5, 1, 7),
                ..Sample::default()
            })
            .collect();
        let csv = to_csv(&samples, &names);
        let lines: Vec<&str> = csv.lines().collect();
        let header: Vec<&str> = lines[0].split(',').collect();
        assert_eq!(header.len(), 5 + 3 * (CSV_TOP + 1));
        assert_eq!(header[5], "\"e40\"", "the highest peak first");
        assert_eq!(
            header[5 + 3 * (CSV_TOP - 1)],
            format!("\"e{}\"", 41 - CSV_TOP)
        );
        assert_eq!(header[5 + 3 * CSV_TOP], "\"others\"");
        let last: Vec<u64> = lines[3]
            .split(',')
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        let rest: u64 = (1..=40 - CSV_TOP as u64).sum();
        // The sum of the rest's ends, lows and highs, with the elements summed already.
        assert_eq!(
            &last[last.len() - 3..],
            [5 + rest * 10, 1, 7 + rest * 10 + 2 * (40 - CSV_TOP as u64)]
        );
        assert_eq!(last[4], 400, "e40's end");
        assert_eq!(last[6], 402, "e40's most");
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
