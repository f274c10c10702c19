// SPDX-License-Identifier: MPL-2.0
//! The charges' one lock and what it guards: the slots (see [`super::slots`]), the blocks
//! alive by address, the interval the timeline's next sample ends, and the timeline. The
//! element registry's entry points (`target_of`, `rename`, `forget`, `shown_name`) are here
//! too, so that `running` (who runs) and `charge` (what they are charged) both reach them
//! without naming each other both ways.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};

use super::slots::{RowId, Slot, Slots, Target};
use super::timeline::{Sample, Span, Timeline};

#[derive(Default)]
pub(crate) struct State {
    pub(crate) slots: Slots,
    /// Live blocks by address: (the slot that allocated it, bytes, another allocator's).
    pub(crate) live: HashMap<usize, (Slot, u64, bool)>,
    /// The slots the next sample reads (each has `listed` set).
    listed: Vec<Slot>,
    /// Live bytes of all slots, with the least and the most since the last sample.
    total: Span,
    pub(crate) timeline: Timeline,
}

impl State {
    /// `slot`'s live bytes grow by `bytes` (`grow`) or shrink by them.
    pub(crate) fn change_live(&mut self, slot: Slot, bytes: u64, grow: bool) {
        let r = self.slots.raw(slot);
        r.live = if grow {
            r.live.saturating_add(bytes)
        } else {
            r.live.saturating_sub(bytes)
        };
        r.peak = r.peak.max(r.live);
        r.low = r.low.min(r.live);
        r.high = r.high.max(r.live);
        if !r.listed {
            r.listed = true;
            self.listed.push(slot);
        }
        let t = &mut self.total;
        t.end = if grow {
            t.end.saturating_add(bytes)
        } else {
            t.end.saturating_sub(bytes)
        };
        t.low = t.low.min(t.end);
        t.high = t.high.max(t.end);
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

    /// Ends the interval: the sample of the slots listed, which are then listed again only if
    /// they hold bytes (a slot no longer listed may be retired).
    pub(crate) fn take_sample(&mut self, seconds: f64, cached: u64) -> Sample {
        let mut per: Vec<(RowId, Span)> = Vec::with_capacity(self.listed.len());
        let mut i = 0;
        while i < self.listed.len() {
            let slot = self.listed[i];
            let row = self.slots.row_of(slot);
            let r = self.slots.raw(slot);
            per.push((
                row,
                Span {
                    end: r.live,
                    low: r.low,
                    high: r.high,
                },
            ));
            r.low = r.live;
            r.high = r.live;
            if r.live == 0 {
                r.listed = false;
                self.listed.swap_remove(i);
                self.slots.retire_if_done(slot);
            } else {
                i += 1;
            }
        }
        per.sort_unstable_by_key(|p| p.0);
        let total = self.total;
        self.total.low = total.end;
        self.total.high = total.end;
        Sample {
            seconds,
            per,
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
