// SPDX-License-Identifier: MPL-2.0
//! The charges' one lock and what it guards: the slots (see [`super::slots`]), the blocks
//! alive by address, the interval the timeline's next sample ends, and the timeline. The
//! element registry's entry points (`target_of`, `rename`, `forget`, `shown_name`) are here
//! too, so that `running` (who runs) and `charge` (what they are charged) both reach them
//! without naming each other both ways.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};

use super::slots::{RowId, Slot, Slots, Target};
use super::timeline::{Sample, Span, TRACKED, Timeline};

/// An element the timeline follows one by one, with its peak when last looked at.
#[derive(Clone, Copy)]
struct Tracked {
    target: Target,
    peak: u64,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) slots: Slots,
    /// Live blocks by address: (the slot that allocated it, bytes, another allocator's).
    pub(crate) live: HashMap<usize, (Slot, u64, bool)>,
    /// The elements the timeline follows one by one: the [`TRACKED`] highest peaks so far.
    tracked: Vec<Tracked>,
    /// The least peak of `tracked` once it is full (an element passing it takes its place);
    /// 0 before.
    threshold: u64,
    /// The slots the next sample reads (each has `listed` set): followed ones that changed
    /// since the last sample or hold bytes, at most [`TRACKED`] and those that left `tracked`
    /// since.
    listed: Vec<Slot>,
    /// Live bytes of the elements not followed, summed, with the least and the most since
    /// the last sample.
    others: Span,
    /// Live bytes of all slots, with the least and the most since the last sample.
    total: Span,
    pub(crate) timeline: Timeline,
}

impl State {
    /// `slot`'s live bytes grow by `bytes` (`grow`) or shrink by them. Constant work, except
    /// when an element's peak passes the least of the followed ones (`O(TRACKED)`, at most
    /// once per allocation). Without a timeline, only the live bytes and their peak.
    pub(crate) fn change_live(&mut self, slot: Slot, bytes: u64, grow: bool) {
        let r = self.slots.raw(slot);
        let before = r.live;
        let live = if grow {
            before.saturating_add(bytes)
        } else {
            before.saturating_sub(bytes)
        };
        r.live = live;
        r.peak = r.peak.max(live);
        if self.timeline.start.is_none() {
            return;
        }
        if !r.tracked && r.peak > self.threshold {
            self.track(slot, before);
        }
        let r = self.slots.raw(slot);
        if r.tracked {
            r.low = r.low.min(live);
            r.high = r.high.max(live);
            if !r.listed {
                r.listed = true;
                self.listed.push(slot);
            }
        } else {
            self.others.moved(before, live);
        }
        self.total.moved(before, live);
    }

    /// Follows `slot` (holding `held` bytes, counted in `others` until now) one by one; when
    /// [`TRACKED`] are followed already, the one of the least peak goes to `others` (its
    /// line stops there: the highest peaks so far are followed, so that each of the
    /// [`TRACKED`] highest of the run is followed when it reaches its peak).
    fn track(&mut self, slot: Slot, held: u64) {
        if self.tracked.len() >= TRACKED {
            // The threshold was the least peak when last looked at: the followed ones may
            // have grown past `slot`'s since.
            let slots = &mut self.slots;
            for t in &mut self.tracked {
                if let Some(s) = slots.valid(t.target) {
                    t.peak = slots.raw(s).peak;
                }
            }
            let least = (0..self.tracked.len()).min_by_key(|&i| self.tracked[i].peak);
            if let Some(i) = least {
                let least_peak = self.tracked[i].peak;
                if self.slots.raw(slot).peak <= least_peak {
                    self.threshold = least_peak;
                    return;
                }
                let gone = self.tracked.swap_remove(i);
                if let Some(s) = self.slots.valid(gone.target) {
                    let r = self.slots.raw(s);
                    r.tracked = false;
                    let held = r.live;
                    self.others.moved(0, held);
                }
            }
        }
        self.others.moved(held, 0);
        let target = self.slots.target(slot);
        let r = self.slots.raw(slot);
        r.tracked = true;
        // Its line starts here: none of its bytes were on it before.
        r.low = 0;
        r.high = held;
        if !r.listed {
            r.listed = true;
            self.listed.push(slot);
        }
        self.tracked.push(Tracked {
            target,
            peak: r.peak,
        });
        if self.tracked.len() >= TRACKED {
            self.threshold = self.tracked.iter().map(|t| t.peak).min().unwrap_or(0);
        }
    }

    /// Before an allocation or a free: ends the interval if a sample is due (the event is the
    /// first of the next one, so an interval says what held until it). The sample has the
    /// last cached bytes known; whether one was taken (then the caller reads them anew, out
    /// of the lock, for [`State::set_cached`]).
    pub(crate) fn sample_if_due(&mut self) -> Option<f64> {
        let start = self.timeline.start?;
        if !self.timeline.due() {
            return None;
        }
        let seconds = start.elapsed().as_secs_f64();
        let cached = self.timeline.samples.last().map_or(0, |s| s.cached);
        let sample = self.take_sample(seconds, cached);
        self.timeline.push(sample);
        Some(seconds)
    }

    /// The cached bytes of the sample taken at `seconds`, if it is still the last.
    pub(crate) fn set_cached(&mut self, seconds: f64, cached: u64) {
        if let Some(last) = self.timeline.samples.last_mut()
            && last.seconds == seconds
        {
            last.cached = cached;
        }
    }

    /// Ends the interval: the sample of the slots listed (at most [`TRACKED`] followed, and
    /// those that left since, which are not in it), which are then listed again only if they
    /// hold bytes (a slot no longer listed may be retired).
    pub(crate) fn take_sample(&mut self, seconds: f64, cached: u64) -> Sample {
        let mut per: Vec<(RowId, Span)> = Vec::with_capacity(self.listed.len());
        let mut i = 0;
        while i < self.listed.len() {
            let slot = self.listed[i];
            let row = self.slots.row_of(slot);
            let r = self.slots.raw(slot);
            if r.tracked {
                per.push((
                    row,
                    Span {
                        end: r.live,
                        low: r.low,
                        high: r.high,
                    },
                ));
            }
            r.low = r.live;
            r.high = r.live;
            if r.live == 0 || !r.tracked {
                r.listed = false;
                self.listed.swap_remove(i);
                self.slots.retire_if_done(slot);
            } else {
                i += 1;
            }
        }
        per.sort_unstable_by_key(|p| p.0);
        let (others, total) = (self.others, self.total);
        self.others.restart();
        self.total.restart();
        Sample {
            seconds,
            per,
            others,
            total,
            cached,
        }
    }
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(Mutex::default);

pub(crate) fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The target of the element at `addr`, registered at first sight under the name and path
/// `describe` gives (asked outside the lock: it takes the element's own locks).
pub(crate) fn target_of(addr: usize, describe: impl FnOnce() -> (String, String)) -> Target {
    if let Some(target) = state().slots.lookup(addr) {
        return target;
    }
    let (name, path) = describe();
    state().slots.register(addr, &name, &path)
}

/// The element of `target` is called `name` at `path` now.
pub(crate) fn rename(target: Target, name: &str, path: &str) {
    state().slots.rename(target, name, path);
}

/// The element at `addr` is gone; whether it was registered.
pub(crate) fn forget(addr: usize) -> bool {
    state().slots.forget(addr)
}

/// The name `target` is shown under now.
pub(crate) fn shown_name(target: Target) -> String {
    let s = state();
    let slot = s.slots.charged(target);
    s.slots.shown_name(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::published::{MAX_NAMES, Names};

    fn state() -> State {
        State {
            slots: Slots::new(Box::leak(Box::new(Names::new()))),
            ..State::default()
        }
    }

    #[test]
    fn no_sample_and_no_listing_without_a_timeline() {
        let mut s = state();
        let t = s.slots.register(0x10, "e", "p/e");
        s.change_live(t.slot, 10, true);
        assert_eq!(s.sample_if_due(), None);
        assert!(s.listed.is_empty() && s.tracked.is_empty());
        assert_eq!(s.slots.raw(t.slot).peak, 10, "the report's peak is kept");
    }

    #[test]
    fn a_sample_holds_the_highest_peaks_and_sums_the_rest_however_many_hold_bytes() {
        let mut s = state();
        s.timeline.start();
        // 3,000 elements each keep a block; element i's peak is 100 + i, so the highest
        // peaks are the last ones, each reached once the followed ones are all lower.
        let targets: Vec<Target> = (0..3000)
            .map(|i| {
                let t = s
                    .slots
                    .register(0x1000 + i, &format!("e{i}"), &format!("p/e{i}"));
                s.change_live(t.slot, 100 + i as u64, true);
                t
            })
            .collect();
        let sample = s.take_sample(1.0, 0);
        assert_eq!(sample.per.len(), TRACKED, "the followed ones only");
        let held: u64 = (0..3000).map(|i| 100 + i).sum();
        assert_eq!(sample.total.end, held);
        let followed: u64 = sample.per.iter().map(|p| p.1.end).sum();
        assert_eq!(
            followed + sample.others.end,
            held,
            "nothing lost, nothing twice"
        );
        let top: Vec<RowId> = targets[3000 - TRACKED..]
            .iter()
            .map(|t| s.slots.row_of(t.slot))
            .collect();
        for (row, span) in &sample.per {
            assert!(top.contains(row), "row {row} is not of the highest peaks");
            assert_eq!(span.high, span.end, "its peak, exact");
        }
        // Holding without change: the next sample reads the followed ones again, no more.
        let next = s.take_sample(2.0, 0);
        assert_eq!(
            next.per,
            sample
                .per
                .iter()
                .map(|&(r, sp)| (r, Span { low: sp.end, ..sp }))
                .collect::<Vec<_>>()
        );
        assert_eq!(s.listed.len(), TRACKED);
    }

    #[test]
    fn an_element_replaces_a_followed_one_only_when_its_peak_passes_theirs_now() {
        let mut s = state();
        s.timeline.start();
        let t: Vec<Target> = (0..TRACKED + 1)
            .map(|i| s.slots.register(0x10 + i, &format!("e{i}"), "p"))
            .collect();
        for x in &t[..TRACKED] {
            s.change_live(x.slot, 10, true);
        }
        // The followed ones grow past 10 after the threshold was taken.
        for x in &t[..TRACKED] {
            s.change_live(x.slot, 100, true);
        }
        let late = t[TRACKED].slot;
        s.change_live(late, 50, true);
        assert!(
            !s.slots.raw(late).tracked,
            "50 is less than every followed peak"
        );
        assert_eq!(s.others.end, 50);
        s.change_live(late, 100, true);
        assert!(s.slots.raw(late).tracked, "150 passes 110");
        assert_eq!(s.others.end, 110, "the one it replaced, summed from now on");
        assert_eq!(s.total.end, 110 * TRACKED as u64 + 150);
    }

    #[test]
    fn a_gone_element_is_retired_before_the_next_sample() {
        // Elements come and go faster than the timeline samples (its interval doubles as a
        // run grows long): their slots are reused at once, so that every one has a name.
        let mut s = state();
        s.timeline.start();
        for i in 0..2 * MAX_NAMES {
            let t = s
                .slots
                .register(0x1000 + i, &format!("e{i}"), &format!("p/e{i}"));
            s.change_live(t.slot, 10, true);
            s.change_live(t.slot, 10, false);
            assert!(s.slots.forget(0x1000 + i));
            assert!(
                s.slots.made() <= MAX_NAMES,
                "{} slots at {i}",
                s.slots.made()
            );
        }
    }
}
