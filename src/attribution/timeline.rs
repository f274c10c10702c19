// SPDX-License-Identifier: MPL-2.0
//! Live bytes over time, by element. A sample is taken just before an allocation or a free
//! that comes at least [`FIRST_INTERVAL`] after the last sample (100 per second at most to
//! begin with), and when the report is written; none is taken without a timeline file
//! ([`start`](Timeline::start) is not called). It says, for the interval since the last
//! sample, the value at its end **and the least and the most reached within it**, so that no
//! peak between two samples is lost. At [`MAX_SAMPLES`] every two intervals are merged into
//! one (the least of both, the most of both, the later end) and the interval doubles, so a run
//! of any length keeps between 1,024 and 2,048 samples spread over all of it.
//!
//! **Bounds.** A sample holds at most [`TRACKED`] elements one by one: the ones with the
//! highest peaks so far (an element whose peak passes the least of them takes its place; the
//! one it replaces is summed with the rest from then on), so that each of the [`TRACKED`]
//! highest peaks of the run is followed when it is reached and the timeline's peak of such an
//! element is the report's. The others are summed into one span, the least and the most of the
//! sum kept like the total's. A sample is thus at most [`TRACKED`] + 2 spans, whatever the
//! number of elements holding bytes, and so is the work of taking it.

use std::time::{Duration, Instant};

use super::slots::RowId;

/// The shortest time between two samples at the start of a run.
pub const FIRST_INTERVAL: Duration = Duration::from_millis(10);
/// Samples kept at most; reaching it halves them.
pub const MAX_SAMPLES: usize = 2048;
/// Elements followed one by one; the others are summed.
pub const TRACKED: usize = 32;

/// One element's live bytes over an interval: at its end, the least and the most.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub end: u64,
    pub low: u64,
    pub high: u64,
}

impl Span {
    /// The value goes from `from` to `to` (a part of it, summed here, did).
    pub(crate) fn moved(&mut self, from: u64, to: u64) {
        self.end = self.end.saturating_sub(from).saturating_add(to);
        self.low = self.low.min(self.end);
        self.high = self.high.max(self.end);
    }

    /// The interval ends: the next starts at the end value.
    pub(crate) fn restart(&mut self) {
        self.low = self.end;
        self.high = self.end;
    }

    /// The interval `self`, then `later`, as one.
    fn then(self, later: Span) -> Span {
        Span {
            end: later.end,
            low: self.low.min(later.low),
            high: self.high.max(later.high),
        }
    }
}

/// One sample: seconds since the start; the elements followed one by one that held bytes or
/// changed in the interval it ends, by row, in row order (an element not there held none on
/// its line all along: none, or it was summed in `others`); the elements not followed,
/// summed; the total; the allocators' cached bytes at its end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub seconds: f64,
    pub per: Vec<(RowId, Span)>,
    pub others: Span,
    pub total: Span,
    pub cached: u64,
}

impl Sample {
    /// The interval of `self`, then `later`'s, as one sample.
    fn then(self, later: Sample) -> Sample {
        let zero = Span::default();
        let mut per = Vec::with_capacity(self.per.len().max(later.per.len()));
        let (mut a, mut b) = (
            self.per.into_iter().peekable(),
            later.per.into_iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    let (row, first) = a.next().unwrap_or_default();
                    let (_, second) = b.next().unwrap_or_default();
                    (row, first.then(second))
                }
                (Some(x), Some(y)) if x.0 < y.0 => {
                    let (row, first) = a.next().unwrap_or_default();
                    (row, first.then(zero))
                }
                (Some(_), None) => {
                    let (row, first) = a.next().unwrap_or_default();
                    (row, first.then(zero))
                }
                (_, Some(_)) => {
                    let (row, second) = b.next().unwrap_or_default();
                    (row, zero.then(second))
                }
                (None, None) => break,
            };
            per.push(next);
        }
        Sample {
            seconds: later.seconds,
            per,
            others: self.others.then(later.others),
            total: self.total.then(later.total),
            cached: later.cached,
        }
    }
}

/// `samples` merged into at most `at_most` (at least 2): the first alone, then runs of
/// neighbours, each the least and the most of its intervals (for a picture that has fewer
/// pixels than samples: no peak is lost).
pub fn merged(samples: &[Sample], at_most: usize) -> Vec<Sample> {
    let at_most = at_most.max(2);
    if samples.len() <= at_most {
        return samples.to_vec();
    }
    let run = (samples.len() - 1).div_ceil(at_most - 1);
    let mut out = Vec::with_capacity(at_most);
    out.extend(samples.first().cloned());
    for chunk in samples[1..].chunks(run) {
        let mut it = chunk.iter().cloned();
        if let Some(first) = it.next() {
            out.push(it.fold(first, Sample::then));
        }
    }
    out
}

#[derive(Debug, Default)]
pub struct Timeline {
    pub(crate) start: Option<Instant>,
    interval: Duration,
    /// When the last sample was taken, since the start.
    last: Option<Duration>,
    pub(crate) samples: Vec<Sample>,
}

impl Timeline {
    pub(crate) fn start(&mut self) -> Instant {
        *self.start.get_or_insert_with(|| {
            self.interval = FIRST_INTERVAL;
            Instant::now()
        })
    }

    /// Whether a sample is due now (and, if so, taken to be: the next one is due an interval
    /// later).
    pub(crate) fn due(&mut self) -> bool {
        match self.start {
            Some(start) => self.due_at(start.elapsed()),
            None => false,
        }
    }

    /// [`Timeline::due`] at `now` since the start.
    fn due_at(&mut self, now: Duration) -> bool {
        match self.last {
            Some(last) if now.saturating_sub(last) < self.interval => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }

    /// Adds `sample`; at [`MAX_SAMPLES`], merges every two intervals into one first (the
    /// first sample, the start, stays alone) and doubles the interval.
    pub(crate) fn push(&mut self, sample: Sample) {
        if self.samples.len() >= MAX_SAMPLES {
            let old = std::mem::take(&mut self.samples);
            let mut pending: Option<Sample> = None;
            for (i, s) in old.into_iter().enumerate() {
                let s = match pending.take() {
                    Some(earlier) => earlier.then(s),
                    None => s,
                };
                if i % 2 == 1 {
                    pending = Some(s);
                } else {
                    self.samples.push(s);
                }
            }
            self.samples.extend(pending);
            self.interval = self.interval.checked_mul(2).unwrap_or(self.interval);
        }
        self.samples.push(sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(end: u64, low: u64, high: u64) -> Span {
        Span { end, low, high }
    }

    #[test]
    fn a_long_run_keeps_a_bounded_number_of_samples_spread_over_all_of_it() {
        let mut t = Timeline::default();
        t.start();
        // Events every millisecond for three hours.
        for ms in 0..3 * 3600 * 1000u64 {
            let now = Duration::from_millis(ms);
            if t.due_at(now) {
                t.push(Sample {
                    seconds: now.as_secs_f64(),
                    ..Sample::default()
                });
            }
        }
        let n = t.samples.len();
        assert!((MAX_SAMPLES / 2..=MAX_SAMPLES).contains(&n), "{n} samples");
        assert_eq!(t.samples[0].seconds, 0.0, "the start is kept");
        let last = t.samples.last().unwrap().seconds;
        assert!(last > 3.0 * 3600.0 - 30.0, "the end is there: {last}");
        let gaps: Vec<f64> = t
            .samples
            .windows(2)
            .map(|w| w[1].seconds - w[0].seconds)
            .collect();
        let (min, max) = gaps
            .iter()
            .fold((f64::MAX, 0f64), |(a, b), &g| (a.min(g), b.max(g)));
        assert!(
            max <= 2.0 * min + 0.01,
            "evenly spread: gaps {min}..{max} s"
        );
    }

    #[test]
    fn merging_keeps_the_least_and_the_most_of_both_intervals() {
        let a = Sample {
            seconds: 1.0,
            per: vec![(1, span(5, 0, 90)), (3, span(7, 7, 7))],
            others: span(3, 1, 4),
            total: span(12, 0, 95),
            cached: 1,
        };
        let b = Sample {
            seconds: 2.0,
            per: vec![(2, span(4, 0, 4)), (3, span(2, 1, 8))],
            others: span(0, 0, 9),
            total: span(6, 3, 14),
            cached: 2,
        };
        let m = a.then(b);
        assert_eq!(m.seconds, 2.0);
        assert_eq!(
            m.per,
            vec![
                (1, span(0, 0, 90)), // not in the later one: none held at its end
                (2, span(4, 0, 4)),  // not in the earlier one: none held then
                (3, span(2, 1, 8)),
            ]
        );
        assert_eq!(m.others, span(0, 0, 9));
        assert_eq!(m.total, span(6, 0, 95));
        assert_eq!(m.cached, 2);
    }

    #[test]
    fn merged_for_a_picture_keeps_the_extremes() {
        let samples: Vec<Sample> = (0..1000u64)
            .map(|i| Sample {
                seconds: i as f64,
                per: vec![(1, span(i % 7, i % 7, if i == 500 { 9999 } else { i % 7 }))],
                others: Span::default(),
                total: span(i % 7, i % 7, i % 7),
                cached: 0,
            })
            .collect();
        let m = merged(&samples, 100);
        assert!(m.len() <= 100, "{}", m.len());
        assert_eq!(m[0], samples[0]);
        assert_eq!(m.last().unwrap().seconds, 999.0);
        assert_eq!(m.iter().map(|s| s.per[0].1.high).max(), Some(9999));
        assert_eq!(m.iter().map(|s| s.per[0].1.low).min(), Some(0));
        assert_eq!(merged(&samples[..50], 100), samples[..50].to_vec());
    }

    #[test]
    fn halving_loses_no_peak_and_keeps_the_last_state() {
        let mut t = Timeline::default();
        t.start();
        for i in 0..=MAX_SAMPLES as u64 {
            // A spike in one interval only, and the last one ends at 42.
            let high = if i == 777 { 1 << 30 } else { i };
            let end = if i == MAX_SAMPLES as u64 - 1 { 42 } else { i };
            t.push(Sample {
                seconds: i as f64,
                per: vec![(9, span(end, 0, high.max(end)))],
                others: Span::default(),
                total: span(end, 0, high.max(end)),
                cached: 0,
            });
        }
        assert!(
            t.samples.len() <= MAX_SAMPLES / 2 + 2,
            "{}",
            t.samples.len()
        );
        let peak = t.samples.iter().map(|s| s.per[0].1.high).max();
        assert_eq!(peak, Some(1 << 30), "the spike survives the merge");
        let before_last = &t.samples[t.samples.len() - 2];
        assert_eq!(
            before_last.per[0].1.end, 42,
            "the last state before halving"
        );
        assert_eq!(before_last.seconds, (MAX_SAMPLES - 1) as f64);
    }
}
