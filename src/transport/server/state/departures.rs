// SPDX-License-Identifier: MPL-2.0
//! What connections that leave cost: every block a consumer was ever sent is retired when it
//! leaves (it may keep the block mapped, so the block must never carry a later frame), and
//! the producer then makes new blocks, which every other consumer is sent and maps. A
//! connection that says hello, reads a few buffers and hangs up, in a loop, costs the
//! producer and the other consumers far more than it costs its peer (the fifth review of
//! issue 27: about 700 connections and 17,000 blocks retired a second; the good consumer at
//! 0.65 of its rate under the same load).
//!
//! So the blocks retired when a user's connections leave are charged to that user, each
//! once (consumers leaving together were sent mostly the same blocks, which are retired
//! once: 16 viewers of one user leaving at once were charged 3,468 blocks and refused for
//! 5.8 s), and the charge drains at [`DRAIN_PER_S`] of the bound a second: while it passes
//! the bound (`max-pinned-blocks`), the user's new connections are refused. A consumer that
//! stays is charged once, when it leaves; one that reconnects now and then never reaches the
//! bound.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::Instant;

/// The charge drains at this fraction of the bound a second (the bound is `max-pinned-blocks`,
/// 512 by default: 512 blocks a second).
pub(crate) const DRAIN_PER_S: f64 = 1.0;
/// Past this many users with a charge, those whose charge drained are forgotten.
const FORGET_PAST: usize = 64;
/// Past this many blocks retired and not freed yet, they are forgotten (a block forgotten
/// so may be charged again).
const RETIRED_MAX: usize = 1 << 16;

/// The blocks retired when each user's connections left, draining with time.
pub(crate) struct Departures<K> {
    charged: HashMap<K, (f64, Instant)>,
    /// Blocks retired for a departure and not freed yet: not charged again.
    retired: HashSet<u64>,
}

impl<K> Default for Departures<K> {
    fn default() -> Self {
        Departures {
            charged: HashMap::new(),
            retired: HashSet::new(),
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

    /// A connection of `key` left, and `blocks` are retired for it: those not retired yet
    /// are charged to `key`.
    pub(crate) fn charge(&mut self, key: K, blocks: &[u64], bound: usize, now: Instant) {
        if self.retired.len() + blocks.len() > RETIRED_MAX {
            self.retired.clear();
        }
        let blocks = blocks.iter().filter(|&&b| self.retired.insert(b)).count();
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

    /// Blocks were freed: one retired before may be a new block's id again.
    pub(crate) fn freed(&mut self, ids: &[u64]) {
        if !self.retired.is_empty() {
            for id in ids {
                self.retired.remove(id);
            }
        }
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
        let blocks = |from: u64, n: u64| (from..from + n).collect::<Vec<u64>>();
        // Within the bound: not refused.
        d.charge(1u32, &blocks(0, 500), 512, t0);
        assert_eq!(d.over(&1, 512, t0), None);
        // The same blocks again (another connection that was sent them): not charged again.
        d.charge(1, &blocks(0, 500), 512, t0);
        assert_eq!(d.over(&1, 512, t0), None);
        // Past it: refused, another user not.
        d.charge(1, &blocks(400, 200), 512, t0);
        assert_eq!(d.over(&1, 512, t0), Some(600));
        assert_eq!(d.over(&2, 512, t0), None);
        // 512 a second drain: 88 past the bound take 172 ms.
        assert!(d.over(&1, 512, t0 + Duration::from_millis(160)).is_some());
        assert_eq!(d.over(&1, 512, t0 + Duration::from_millis(180)), None);
        // Drained users are forgotten once many are charged.
        for user in 2..100 {
            let at = t0 + Duration::from_millis(1000 + 10 * user as u64);
            d.charge(user, &blocks(1000 + user as u64, 1), 512, at);
        }
        assert!(d.charged.len() <= FORGET_PAST + 1, "{}", d.charged.len());
        // A block freed is charged again when retired again (its id is a new block's).
        let at = t0 + Duration::from_secs(10);
        d.freed(&blocks(0, 600));
        d.charge(1, &blocks(0, 600), 512, at);
        assert_eq!(d.over(&1, 512, at), Some(600));
    }
}
