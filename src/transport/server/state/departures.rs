// SPDX-License-Identifier: MPL-2.0
//! What connections that leave cost: every block a consumer was ever sent is retired when it
//! leaves (it may keep the block mapped, so the block must never carry a later frame), and
//! the producer then makes new blocks, which every other consumer is sent and maps. A
//! connection that says hello, reads a few buffers and hangs up, in a loop, costs the
//! producer and the other consumers far more than it costs its peer (the fifth review of
//! issue 27: about 700 connections and 17,000 blocks retired a second; the good consumer at
//! 0.65 of its rate under the same load).
//!
//! So the blocks retired when a user's connections leave are charged to that user, and the
//! charge drains at [`DRAIN_PER_S`] of the bound a second: while it passes the bound
//! (`max-pinned-blocks`), the user's new connections are refused. A consumer that stays is
//! charged once, when it leaves; one that reconnects now and then never reaches the bound.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// The charge drains at this fraction of the bound a second (the bound is `max-pinned-blocks`,
/// 512 by default: 512 blocks a second).
pub(crate) const DRAIN_PER_S: f64 = 1.0;
/// Past this many users with a charge, those whose charge drained are forgotten.
const FORGET_PAST: usize = 64;

/// The blocks retired when each user's connections left, draining with time.
pub(crate) struct Departures<K> {
    charged: HashMap<K, (f64, Instant)>,
}

impl<K> Default for Departures<K> {
    fn default() -> Self {
        Departures {
            charged: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Copy> Departures<K> {
    /// What `key` is charged at `now`, against `bound`.
    fn charge_at(&self, key: &K, bound: usize, now: Instant) -> f64 {
        self.charged.get(key).map_or(0.0, |&(charge, at)| {
            let drained = now.saturating_duration_since(at).as_secs_f64() * bound as f64;
            (charge - drained * DRAIN_PER_S).max(0.0)
        })
    }

    /// A connection of `key` left, and `blocks` blocks are retired for it.
    pub(crate) fn charge(&mut self, key: K, blocks: usize, bound: usize, now: Instant) {
        if blocks == 0 {
            return;
        }
        if self.charged.len() >= FORGET_PAST {
            let drained: Vec<K> = self
                .charged
                .keys()
                .filter(|k| self.charge_at(k, bound, now) == 0.0)
                .copied()
                .collect();
            for k in drained {
                self.charged.remove(&k);
            }
        }
        let charge = self.charge_at(&key, bound, now) + blocks as f64;
        self.charged.insert(key, (charge, now));
    }

    /// What `key` is charged, in blocks, if that passes `bound`: its connections are refused.
    pub(crate) fn over(&self, key: &K, bound: usize, now: Instant) -> Option<usize> {
        let charge = self.charge_at(key, bound, now);
        (charge > bound as f64).then_some(charge as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_charge_of_departures_drains_with_time() {
        let mut d = Departures::default();
        let t0 = Instant::now();
        // Within the bound, however often: not refused.
        d.charge(1u32, 500, 512, t0);
        assert_eq!(d.over(&1, 512, t0), None);
        // Past it: refused, another user not.
        d.charge(1, 100, 512, t0);
        assert_eq!(d.over(&1, 512, t0), Some(600));
        assert_eq!(d.over(&2, 512, t0), None);
        // 512 a second drain: 88 past the bound take 172 ms.
        assert!(d.over(&1, 512, t0 + Duration::from_millis(160)).is_some());
        assert_eq!(d.over(&1, 512, t0 + Duration::from_millis(180)), None);
        // Drained users are forgotten once many are charged.
        for user in 2..100 {
            d.charge(
                user,
                1,
                512,
                t0 + Duration::from_millis(1000 + 10 * user as u64),
            );
        }
        assert!(d.charged.len() <= FORGET_PAST + 1, "{}", d.charged.len());
    }
}
