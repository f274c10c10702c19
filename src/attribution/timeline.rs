// SPDX-License-Identifier: MPL-2.0
//! Live bytes over time: sampled when an allocation or a free comes at least [`interval`]
//! after the last sample, 100 per second at most to begin with. At [`MAX_SAMPLES`] every
//! other sample is dropped and the interval doubles, so a run of any length keeps between
//! 1,024 and 2,048 samples (a file of a few hundred KiB at most) spread over all of it.

use std::time::{Duration, Instant};

/// The shortest time between two samples at the start of a run.
pub const FIRST_INTERVAL: Duration = Duration::from_millis(10);
/// Samples kept at most; reaching it halves them.
pub const MAX_SAMPLES: usize = 2048;

/// One sample: seconds since the start, every slot's live bytes (non-zero only), the total
/// and the allocators' cached bytes.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub seconds: f64,
    pub per: Vec<(u32, u64)>,
    pub total: u64,
    pub cached: u64,
}

#[derive(Debug, Default)]
pub struct Timeline {
    pub(crate) start: Option<Instant>,
    interval: Duration,
    /// When the last sample was taken, since the start.
    last: Option<Duration>,
    pub(crate) samples: Vec<Sample>,
    /// The state after the last event that came too soon for a sample of its own: pushed
    /// before the next sample, so that the chart shows where the values ended (a burst of
    /// allocations, then a quiet second, would otherwise lose its last steps).
    pub(crate) owed: Option<Sample>,
    /// The cached bytes of the last sample (an owed sample reuses them).
    pub(crate) last_cached: u64,
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

    /// Records the state after an event that is not sampled (see `owed`).
    pub(crate) fn owe(&mut self, per: Vec<(u32, u64)>) {
        let Some(start) = self.start else {
            return;
        };
        let total = per.iter().map(|p| p.1).sum();
        self.owed = Some(Sample {
            seconds: start.elapsed().as_secs_f64(),
            per,
            total,
            cached: self.last_cached,
        });
    }

    pub(crate) fn push(&mut self, sample: Sample) {
        if self.samples.len() >= MAX_SAMPLES {
            let mut i = 0;
            self.samples.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.interval = self.interval.checked_mul(2).unwrap_or(self.interval);
        }
        self.samples.push(sample);
    }
}

/// Every slot's live bytes (non-zero only), from each slot's live bytes in slot order.
pub(crate) fn live(lives: impl Iterator<Item = i64>) -> Vec<(u32, u64)> {
    lives
        .enumerate()
        .filter(|&(_, live)| live > 0)
        .map(|(slot, live)| (slot as u32, live as u64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
