// SPDX-License-Identifier: MPL-2.0
//! Fair eviction at the pinned bound: who is dropped so that a buffer fits in what all
//! consumers may pin, or whether the buffer is missed instead.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::{Consumer, EvictKey as Key, Gone, OnFull, PeerKey, Shared};
use crate::transport::wire::BlockWire;

/// A connection never sent a buffer gets a hoarding peer dropped only once it has waited
/// this long: a peer that reads, lagging, releases within it (its releases may be read a
/// moment after the newcomer's hello; connections that churn never wait as long).
pub(crate) const FRESH_WAIT: Duration = Duration::from_millis(100);

/// A connection of a peer, as the eviction sees it.
struct Held {
    id: u64,
    /// What it pins, and its oldest buffer.
    own: u64,
    oldest: u64,
    /// It waits for this buffer (said hello, room in its socket and its window), and gives
    /// buffers back or was never sent one (joined while the bound was full).
    wants: bool,
    /// It released a buffer once.
    gives_back: bool,
    /// Never sent a buffer: the stream's count of releases when it joined.
    fresh_since: Option<u64>,
    /// The stream's count of releases when it last released one (0: never).
    last_release: u64,
}

impl Held {
    /// Whether, waiting, it gets a peer whose connections last released a buffer at
    /// `last_release` dropped: if it gives buffers back, or if it was never sent one (and
    /// waited [`FRESH_WAIT`]) and that peer has released nothing since it joined (a peer
    /// that hoards). A connection that
    /// never gives anything back (reads nothing, or reconnects as often as it likes) never
    /// gets a peer that reads, lagging as it may, dropped.
    fn counts_against(&self, last_release: u64) -> bool {
        self.wants && (self.gives_back || self.fresh_since.is_some_and(|j| last_release <= j))
    }
}

impl Shared {
    /// Makes room for a buffer in `blocks` within the bounds of what all consumers may pin;
    /// returns the consumers dropped for it, and whether the buffer fits now (when it does
    /// not, nobody is sent it: every consumer misses it, as at its `max-outstanding` window).
    ///
    /// The one dropped is a connection of the peer that pins the most, all its connections
    /// together: a user (same uid, any group) counts as one peer however many connections
    /// and processes it opens. A peer is dropped only if it pins more than an
    /// equal share of the bound (the bound over the peers holding buffers or waiting for
    /// this one), and only for a peer within its share that waits for this buffer (said
    /// hello, its socket has room, and so has its window) and has released a buffer once
    /// (a connection that never gives anything back gets nobody dropped). Failing that, a
    /// peer's connection
    /// pinning the most is dropped for another of the same peer that waits and pins at most
    /// half as much, or gives buffers back where it never did.
    /// With `OnFull::Drop`, when nobody within its share waits (a lone consumer that lags,
    /// peers that all pin more than their share), nobody is dropped: the buffer is missed
    /// until releases make room. With `Disconnect` and `Wait` the peer that pins the most is
    /// dropped at the bound whatever its share. Of that peer, the connection that pins the
    /// most goes first; ties go to the one holding the oldest buffer. When nothing is pinned
    /// the buffer goes out whatever its size.
    pub(in crate::transport::server) fn make_room(&mut self, blocks: &[BlockWire]) -> (Gone, bool) {
        let mut gone = Gone::default();
        let now = Instant::now();
        loop {
            let (n, bytes) = self.pins.added(blocks);
            let (max_n, max_bytes) = (self.limits.max_pinned_blocks, self.limits.max_pinned_bytes);
            let over_blocks = self.pins.count() + n > max_n;
            if !over_blocks && self.pins.bytes() + bytes <= max_bytes {
                return (gone, true);
            }
            let key = Key {
                pinned: (self.pins.count(), self.pins.bytes()),
                added: (n, bytes),
                joined: self.next_consumer,
                released: self.stats.released,
                waiting: self
                    .consumers
                    .iter()
                    .filter(|c| c.peer.ready() && !c.stalled)
                    .fold((0, 0), |(reads, fresh), c| {
                        (
                            reads + usize::from(c.peer.has_released()),
                            fresh + usize::from(fresh_for(c, now)),
                        )
                    }),
            };
            if self.nobody_to_evict == Some(key) {
                return (gone, self.pins.count() == 0);
            }
            let Some((id, why)) = self.evictee(over_blocks, blocks, now) else {
                self.nobody_to_evict = Some(key);
                return (gone, self.pins.count() == 0);
            };
            gone.add(self.drop_consumer(id, &why));
        }
    }

    /// The connection [`make_room`](Self::make_room) drops, and why; `None` when nobody
    /// holds anything, or (`OnFull::Drop`) when nobody within its share waits for a buffer
    /// in `blocks`: no peer within its share of the bound, and no connection pinning at
    /// most half what the connection of its peer pinning the most pins. `by_blocks`: the
    /// bound passed is the blocks', else the bytes'.
    fn evictee(
        &self,
        by_blocks: bool,
        blocks: &[BlockWire],
        now: Instant,
    ) -> Option<(u64, String)> {
        let max_out = self.limits.max_outstanding;
        let fair = self.limits.on_full == OnFull::Drop;
        let waiting = |c: &Consumer| c.peer.ready() && !c.stalled;
        // The common case costs one pass: a lone consumer has the whole bound as its share.
        let mut present = self
            .consumers
            .iter()
            .filter(|c| c.peer.outstanding() > 0 || waiting(c));
        present.next()?;
        if fair && present.next().is_none() {
            return None;
        }
        let measure = |ids: &HashSet<u64>| {
            if by_blocks {
                ids.len() as u64
            } else {
                self.pins.bytes_of(ids)
            }
        };
        // Per peer: the blocks its buffers pin (each once), and its connections holding
        // buffers or waiting for this one.
        type Conns = Vec<Held>;
        let mut peers: HashMap<PeerKey, (HashSet<u64>, Conns)> = HashMap::new();
        for c in &self.consumers {
            let gives_back = c.peer.has_released();
            let fresh = !gives_back && fresh_for(c, now);
            let wants = waiting(c) && (gives_back || fresh) && c.peer.fits(blocks, max_out).is_ok();
            if c.peer.outstanding() == 0 && !wants {
                continue;
            }
            let held = c.peer.held_blocks();
            let entry = peers.entry(c.key()).or_default();
            entry.1.push(Held {
                id: c.peer.id,
                own: measure(&held),
                oldest: c.peer.oldest().unwrap_or(u64::MAX),
                wants,
                gives_back,
                fresh_since: fresh.then_some(c.releases_at_join),
                last_release: c.last_release,
            });
            entry.0.extend(held);
        }
        let (unit, bound, pinned) = if by_blocks {
            (
                "blocks",
                self.limits.max_pinned_blocks as u64,
                self.pins.count() as u64,
            )
        } else {
            ("bytes", self.limits.max_pinned_bytes, self.pins.bytes())
        };
        let n_peers = peers.len() as u64;
        let share = bound / n_peers.max(1);
        let usage: Vec<(u64, u64, Conns)> = peers
            .into_values()
            .map(|(ids, conns)| {
                let oldest = conns.iter().map(|h| h.oldest).min().unwrap_or(u64::MAX);
                (measure(&ids), oldest, conns)
            })
            .collect();
        // A connection's most pinning one (ties: the oldest buffer).
        let top = |conns: &Conns| {
            conns
                .iter()
                .max_by_key(|h| (h.own, std::cmp::Reverse(h.oldest)))
                .map(|h| (h.id, h.own))
        };
        // The last release of any connection of a peer.
        let last_release = |conns: &Conns| conns.iter().map(|h| h.last_release).max().unwrap_or(0);
        let kept_from_share = |used: u64, conns: &Conns, against: u64| {
            used <= share && conns.iter().any(|h| h.counts_against(against))
        };
        let (used, oldest, conns) = usage
            .iter()
            .filter(|p| p.2.iter().any(|h| h.own > 0))
            .max_by_key(|p| (p.0, std::cmp::Reverse(p.1)))?;
        let against = last_release(conns);
        if !fair || (*used > share && usage.iter().any(|p| kept_from_share(p.0, &p.2, against))) {
            let (id, own) = top(conns)?;
            let why = format!(
                "consumers pin {pinned} {unit} together (at most {bound}): its peer (its user \
                 and group) pins the most, {used} {unit} over {} connections (an equal share \
                 is {share} of {n_peers} peers holding buffers or waiting for one), and this \
                 connection pins the most of them, {own}; its oldest buffer is {oldest}",
                conns.len(),
            );
            return Some((id, why));
        }
        // No peer within its share waits: within a peer, its connection pinning the most
        // goes for another of it that waits and pins at most half as much, or that gives
        // buffers back where it never did (a consumer of a user who also hoards), never for
        // itself (a lone consumer that lags).
        let (id, own) = usage
            .iter()
            .filter_map(|(_, _, conns)| {
                let (id, own) = top(conns)?;
                let hoards = conns.iter().any(|h| h.id == id && !h.gives_back);
                let against = last_release(conns);
                let kept = conns.iter().any(|h| {
                    h.id != id && h.counts_against(against) && (h.own <= own / 2 || hoards)
                });
                (own > 0 && kept).then_some((id, own))
            })
            .max_by_key(|&(_, own)| own)?;
        let why = format!(
            "consumers pin {pinned} {unit} together (at most {bound}): this connection pins \
             {own} {unit}, the most of its peer (its user), while another of them \
             that pins at most half as much, or gives buffers back where this one never did, \
             waits for a buffer"
        );
        Some((id, why))
    }
}

/// Whether `c` was never sent a buffer and has waited [`FRESH_WAIT`] since it connected.
fn fresh_for(c: &Consumer, now: Instant) -> bool {
    !c.peer.was_sent() && now.saturating_duration_since(c.since) >= FRESH_WAIT
}
