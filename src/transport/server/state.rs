// SPDX-License-Identifier: MPL-2.0
//! The producer's shared state, behind its one lock: who is connected, what each consumer
//! was sent and holds, what they pin together, who is penalized. Its invariants are kept by
//! its own methods, whichever thread calls them (the streaming thread's send path, the
//! service thread):
//!
//! - every buffer a consumer holds is pinned once in [`Pins`] and unpinned exactly when it
//!   is released or the consumer leaves;
//! - a consumer that leaves gives back what it held and has every block it was ever sent
//!   retired ([`Gone`]), let go outside the lock; those blocks are charged to its user, whose
//!   new connections are refused while the charge passes the pinned bound ([`departures`]);
//! - the descriptors sent to a consumer are counted in flight from its plan until a
//!   release (or the kernel) shows it read them, or the send failed; while the total would
//!   pass [`Shared::max_in_flight`], no consumer passes its share with a new one, and
//!   nothing takes the total past twice that;
//! - a consumer dropped with descriptors still unread in its queue keeps them counted, in
//!   that total and against its user, until the kernel says they were read or purged
//!   ([`stranded`]);
//! - nothing a peer sent is closed here: connections and descriptors go to the closer.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::allocator::memfd;

use super::super::closer::Conn;
use super::super::peer::{Full, Peer, Pins, Plan};
use super::super::wire::{MAX_MEMORIES, Message};

pub use limits::{Limits, OnFull, Stats, auto_in_flight, auto_pinned_blocks, auto_pinned_bytes};

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memkit-server",
        gst::DebugColorFlags::empty(),
        Some("memkit transport: the producer side (memfdsink)"),
    )
});

/// A connection that has not said hello by then is dropped: it must not hold a
/// `max-consumers` slot for good.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// The most connections waiting for their hello: past it the oldest is dropped. They do not
/// count against `max-consumers` (a flood of silent connections must not keep a real consumer
/// out).
pub(super) const MAX_PENDING: usize = 32;
/// The user of a connection that misbehaved (garbage, descriptors, a release of a buffer it
/// does not hold, no hello) cannot connect again for this long, from any process or group: a
/// reconnecting (or forking, or group-switching) attacker gets one try a second.
pub(super) const PENALTY: Duration = Duration::from_secs(1);

/// Who is at the other end of a connection (`SO_PEERCRED`, read when it connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

impl Cred {
    /// The credentials of the process at the other end of `sock`.
    pub fn of(sock: &impl std::os::fd::AsFd) -> Option<Cred> {
        let c = rustix::net::sockopt::socket_peercred(sock).ok()?;
        Some(Cred {
            pid: c.pid.as_raw_nonzero().get(),
            uid: c.uid.as_raw(),
            gid: c.gid.as_raw(),
        })
    }

    /// Whom the connection counts for, for the fair share and for penalties: its user.
    /// Processes are not told apart (a process can fork as many as it likes), nor groups (a
    /// user can switch to any group of theirs), so many connections, processes or groups of
    /// one user are one peer.
    pub fn user(&self) -> u32 {
        self.uid
    }
}

/// One peer for fairness: a user (every connection, process and group of theirs,
/// [`Cred::user`]), or a connection whose credentials are unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum PeerKey {
    User(u32),
    Connection(u64),
}

pub(super) struct Consumer {
    pub(super) peer: Peer<gst::Buffer>,
    pub(super) sock: Arc<Conn>,
    /// When it connected: it must say hello within [`HELLO_TIMEOUT`].
    pub(super) since: Instant,
    pub(super) cred: Option<Cred>,
    /// Its socket queue was full when a buffer was sent to it (`OnFull::Drop`): it gets no
    /// buffer, and costs no work per buffer, until the service thread sees room in it.
    pub(super) stalled: bool,
    /// Since when it is refused for descriptors in flight (its share, its user's or the
    /// total) that the kernel says it has not read, or for its user's share having never
    /// released a buffer, releasing none: a reader releases within `UNREAD_RECHECK` (a
    /// release clears it).
    pub(super) unread_since: Option<Instant>,
    /// Refused so for `UNREAD_RECHECK` already (or full for its `max-outstanding` window
    /// or its blocks, at once), it misses buffers (full for that reason, or `None`:
    /// withheld) at no cost per buffer until it releases one or this time comes (then it
    /// is looked at, and the kernel asked, again).
    pub(super) unread_until: Option<(Instant, Option<Full>)>,
    /// When the kernel was last asked about it while deferred (see `refresh_in_flight`).
    pub(super) looked: Option<Instant>,
    /// The stream's audience its hello made (MemfdMemory's `new_audience`; 0 before it):
    /// it is not sent a block that holds bytes from before it joined.
    pub(super) joined: u64,
    /// The stream's count of releases when it connected, and when it last released one:
    /// which connections gave a buffer back since another joined (see `evict`).
    pub(super) releases_at_join: u64,
    pub(super) last_release: u64,
}

impl Consumer {
    pub(super) fn key(&self) -> PeerKey {
        self.cred.map_or(PeerKey::Connection(self.peer.id), |c| {
            PeerKey::User(c.user())
        })
    }
}

/// What a consumer that left, or released buffers, lets go: the blocks to retire for good
/// and the buffers it held. Let go outside the state lock ([`Gone::finish`]): retiring a
/// cached block frees it (system calls), and freeing a buffer recycles its blocks (the
/// allocator's locks).
#[must_use = "let it go with finish(), outside the state lock"]
#[derive(Default)]
pub(super) struct Gone {
    pub(super) blocks: Vec<u64>,
    pub(super) held: Vec<gst::Buffer>,
    /// Connections let go (they go to the closer).
    pub(super) conns: Vec<Arc<Conn>>,
}

impl Gone {
    pub(super) fn add(&mut self, other: Gone) {
        self.blocks.extend(other.blocks);
        self.held.extend(other.held);
        self.conns.extend(other.conns);
    }

    /// Retires the blocks first (so that none is recycled when the buffers go), then lets
    /// the buffers go. Linear in what was given back: a retirement is two lookups.
    pub(super) fn finish(self) {
        for id in &self.blocks {
            memfd::retire_block(*id);
        }
        drop(self.held);
        drop(self.conns);
    }
}

/// What decides whom `make_room` drops, as far as one buffer to the next can
/// tell: what is pinned, what the buffer adds, who joined, released or waits. When it found
/// nobody and none of this changed, it finds nobody again: while the stream waits at the
/// bound, a buffer costs no pass over every buffer held.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct EvictKey {
    pub(super) pinned: (usize, u64),
    pub(super) added: (usize, u64),
    pub(super) joined: u64,
    pub(super) released: u64,
    /// Connections that wait and give buffers back, and that wait and were never sent one
    /// (for `FRESH_WAIT` at least).
    pub(super) waiting: (usize, usize),
}

pub(super) struct Shared {
    pub(super) consumers: Vec<Consumer>,
    /// What the consumers' held buffers pin, all together.
    pub(super) pins: Pins,
    /// Processes that may not connect until then (they misbehaved).
    penalties: HashMap<u32, Instant>,
    /// Connections dropped with our descriptors unread in their queues ([`stranded`]).
    pub(super) stranded: stranded::Stranded<PeerKey>,
    /// The blocks retired when each user's connections left ([`departures`]).
    departures: departures::Departures<u32>,
    pub(super) limits: Limits,
    /// The most descriptors all consumers together may keep in flight ([`auto_in_flight`]);
    /// each consumer's share is that over the consumers that said hello.
    pub(super) max_in_flight: usize,
    /// Packets a consumer that connects late gets first: caps, stream-start, segment.
    pub(super) caps: Option<Vec<u8>>,
    pub(super) stream_start: Option<Vec<u8>>,
    pub(super) segment: Option<Vec<u8>>,
    /// Bumped whenever those change: a consumer being accepted replays them again if they
    /// changed while it was sent the previous ones.
    pub(super) replay_generation: u64,
    pub(super) stats: Stats,
    next_consumer: u64,
    pub(super) next_buffer: u64,
    pub(super) running: bool,
    pub(super) flushing: bool,
    /// The stream's id for MemfdMemory: a consumer that joins gives it a new audience.
    stream: u64,
    /// At the pinned bound, nobody was found to drop, and nothing has changed since that
    /// could change it (see `make_room`).
    nobody_to_evict: Option<EvictKey>,
}

pub(super) type State = Arc<(Mutex<Shared>, Condvar)>;

pub(super) fn lock(state: &State) -> MutexGuard<'_, Shared> {
    state.0.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(super) fn new(limits: Limits, stream: u64) -> Shared {
        Shared {
            consumers: Vec::new(),
            pins: Pins::default(),
            penalties: Default::default(),
            stranded: Default::default(),
            departures: Default::default(),
            limits,
            max_in_flight: auto_in_flight(),
            caps: None,
            stream_start: None,
            segment: None,
            replay_generation: 0,
            stats: Stats::default(),
            next_consumer: 0,
            next_buffer: 0,
            running: true,
            flushing: false,
            stream,
            nobody_to_evict: None,
        }
    }

    pub(super) fn replay(&self) -> Vec<Vec<u8>> {
        [&self.caps, &self.stream_start, &self.segment]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// The statistics, with the figures of now.
    pub(super) fn stats(&self) -> Stats {
        Stats {
            consumers: self.consumers.len() as u64,
            outstanding: self
                .consumers
                .iter()
                .map(|c| c.peer.outstanding() as u64)
                .sum(),
            pinned_blocks: self.pins.count() as u64,
            pinned_bytes: self.pins.bytes(),
            ..self.stats.clone()
        }
    }

    /// Consumers that said hello.
    pub(super) fn ready(&self) -> usize {
        self.consumers.iter().filter(|c| c.peer.ready()).count()
    }

    /// Why a connection from `cred` is refused now (its credentials are penalized, its
    /// user's dropped connections keep too many of our descriptors in flight, or all
    /// dropped connections keep half again the bound, its user's connections that left had
    /// more blocks retired than the pinned bound lately ([`departures`]), or `max-consumers`
    /// said hello), counted as refused; `None`: it may join. `true` with the reason: a
    /// refusal of its user, or of everyone (the listener rests a moment).
    pub(super) fn refusal(&mut self, cred: Option<Cred>) -> Option<(String, bool)> {
        let now = Instant::now();
        self.penalties.retain(|_, until| *until > now);
        let penalized = cred.is_some_and(|c| self.penalties.contains_key(&c.user()));
        let stranded = self.stranded_refusal(cred.map(|c| PeerKey::User(c.user())));
        let bound = self.limits.max_pinned_blocks;
        let left = cred.and_then(|c| self.departures.over(&c.user(), bound, now));
        if !penalized
            && stranded.is_none()
            && left.is_none()
            && self.ready() < self.limits.max_consumers
        {
            return None;
        }
        self.stats.consumers_refused += 1;
        if let Some(why) = stranded.filter(|_| !penalized) {
            return Some((why, true));
        }
        let why = if penalized {
            "a connection of its user misbehaved less than a second ago".to_owned()
        } else if let Some(retired) = left {
            format!(
                "its user's connections that left had {retired} blocks retired lately (past \
                 max-pinned-blocks, {bound}; {} drain a second)",
                (bound as f64 * departures::DRAIN_PER_S).ceil()
            )
        } else {
            format!("{} connected (max-consumers)", self.ready())
        };
        Some((why, penalized || left.is_some()))
    }

    /// A new connection on `sock` joins (to say hello within [`HELLO_TIMEOUT`]); past
    /// [`MAX_PENDING`] connections waiting for their hello, the oldest of them is dropped.
    pub(super) fn admit(&mut self, sock: Conn, cred: Option<Cred>) -> Gone {
        let pending: Vec<(Instant, u64)> = self
            .consumers
            .iter()
            .filter(|c| !c.peer.ready())
            .map(|c| (c.since, c.peer.id))
            .collect();
        let gone = match pending.iter().min().map(|&(_, id)| id) {
            Some(oldest) if pending.len() >= MAX_PENDING => {
                self.drop_consumer(oldest, "the oldest of too many connections without hello")
            }
            _ => Gone::default(),
        };
        self.next_consumer += 1;
        let id = self.next_consumer;
        self.consumers.push(Consumer {
            peer: Peer::new(id),
            sock: Arc::new(sock),
            since: Instant::now(),
            cred,
            stalled: false,
            unread_since: None,
            unread_until: None,
            looked: None,
            joined: 0,
            releases_at_join: self.stats.released,
            last_release: 0,
        });
        self.stats.consumers_connected += 1;
        gst::info!(CAT, "consumer {} connected", id);
        gone
    }

    /// Drops consumer `id`: every block it was ever sent is to be retired (it may keep them
    /// mapped, so they must never carry a later frame), then the buffers it held let go,
    /// both by the caller outside the lock. Its connection goes to the closer.
    pub(super) fn drop_consumer(&mut self, id: u64, why: &str) -> Gone {
        let Some(pos) = self.consumers.iter().position(|c| c.peer.id == id) else {
            return Gone::default();
        };
        let c = self.consumers.remove(pos);
        self.stats.consumers_dropped += 1;
        let stranded = match self.strand(&c) {
            0 => String::new(),
            n => format!("; {n} of our descriptors unread in its queue: kept until read"),
        };
        let gone = self.leave(c.peer);
        if let Some(cred) = c.cred {
            let bound = self.limits.max_pinned_blocks;
            let now = Instant::now();
            self.departures
                .charge(cred.user(), &gone.blocks, bound, now);
        }
        gst::warning!(
            CAT,
            "dropping consumer {}: {} ({} outstanding buffers released, their blocks retired{})",
            id,
            why,
            gone.held.len(),
            stranded
        );
        gone
    }

    /// Refuses consumer `id`, which said hello when it may not join (`why`).
    fn refuse(&mut self, id: u64, why: &str) -> Gone {
        let Some(pos) = self.consumers.iter().position(|c| c.peer.id == id) else {
            return Gone::default();
        };
        let c = self.consumers.remove(pos);
        // Accepted, then refused: counted in both (connected - dropped stays who is here).
        self.stats.consumers_refused += 1;
        self.stats.consumers_dropped += 1;
        gst::warning!(CAT, "refusing consumer {}: {}", id, why);
        self.leave(c.peer)
    }

    /// Drops consumer `id` for misbehaving: no connection with its credentials (user and
    /// group, [`Cred::user`]: any process of theirs) may connect for [`PENALTY`].
    pub(super) fn misbehaved(&mut self, id: u64, why: &str) -> Gone {
        let user = self
            .consumers
            .iter()
            .find(|c| c.peer.id == id)
            .and_then(|c| c.cred)
            .map(|c| c.user());
        if let Some(user) = user {
            self.penalties.insert(user, Instant::now() + PENALTY);
        }
        self.drop_consumer(id, why)
    }

    #[cfg(test)]
    pub(super) fn penalize(&mut self, user: u32) {
        self.penalties.insert(user, Instant::now() + PENALTY);
    }

    #[cfg(test)]
    pub(super) fn penalized(&self, user: u32) -> bool {
        self.penalties.contains_key(&user)
    }

    /// `peer` left: what it pinned is unpinned; its blocks and buffers are returned.
    fn leave(&mut self, peer: Peer<gst::Buffer>) -> Gone {
        let (blocks, held) = peer.leave();
        self.stats.blocks_retired += blocks.len() as u64;
        let mut gone = Gone {
            blocks,
            held: Vec::with_capacity(held.len()),
            conns: Vec::new(),
        };
        for (buffer, ids) in held {
            self.pins.unpin(&ids);
            gone.held.push(buffer);
        }
        gone
    }

    /// Everyone leaves (the server stops).
    pub(super) fn leave_all(&mut self) -> Gone {
        let mut gone = Gone::default();
        for c in std::mem::take(&mut self.consumers) {
            gone.add(self.leave(c.peer));
        }
        gone.conns = self.stranded.take_all();
        gone
    }

    /// Handles one packet from consumer `id`, which came with `fds` descriptors; returns what
    /// it let go (to be let go outside the state lock: freeing buffers recycles their
    /// blocks). A release costs O(ids); one that names a buffer the consumer does not hold
    /// (a flood, or a confused peer) drops it, and so does any descriptor: in protocol 2 a
    /// consumer sends none.
    pub(super) fn handle(&mut self, id: u64, packet: &[u8], fds: usize) -> Gone {
        if fds > 0 {
            let why = format!("sent {fds} descriptors (a consumer sends none)");
            return self.misbehaved(id, &why);
        }
        let Some(c) = self.consumers.iter_mut().find(|c| c.peer.id == id) else {
            return Gone::default();
        };
        match Message::decode(packet) {
            Ok(Message::Release(ids)) => {
                let mut gone = Gone::default();
                for b in &ids {
                    let Some((buffer, blocks)) = c.peer.release(*b) else {
                        let why = format!("released buffer {b}, which it does not hold");
                        gone.add(self.misbehaved(id, &why));
                        return gone;
                    };
                    self.pins.unpin(&blocks);
                    self.stats.released += 1;
                    c.last_release = self.stats.released;
                    c.unread_since = None;
                    c.unread_until = None;
                    gone.held.push(buffer);
                }
                return gone;
            }
            Ok(Message::Hello { max_blocks }) if !c.peer.ready() => {
                if let Err(e) = c.peer.hello(max_blocks, MAX_MEMORIES) {
                    return self.misbehaved(id, &format!("unusable hello: {e}"));
                }
                // Past max-consumers (counted by hellos): refused now, it said hello too late.
                if self.ready() > self.limits.max_consumers {
                    return self.refuse(id, "max-consumers said hello first");
                }
                // Dropped connections keep too many in flight: it could only add to them.
                if self.stranded_full() {
                    let why = self.stranded_full_why();
                    return self.refuse(id, &why);
                }
                // Blocks reused from now on are zeroed unless it was sent what they hold.
                let joined = memfd::new_audience(self.stream);
                if let Some(c) = self.consumers.iter_mut().find(|c| c.peer.id == id) {
                    c.joined = joined;
                }
            }
            Ok(other) => return self.misbehaved(id, &format!("unexpected message {other:?}")),
            Err(e) => return self.misbehaved(id, &format!("bad message: {e}")),
        }
        Gone::default()
    }

    /// Drops the connections that have not said hello within [`HELLO_TIMEOUT`].
    pub(super) fn expire_hellos(&mut self) -> Gone {
        let late: Vec<u64> = self
            .consumers
            .iter()
            .filter(|c| !c.peer.ready() && c.since.elapsed() >= HELLO_TIMEOUT)
            .map(|c| c.peer.id)
            .collect();
        let mut gone = Gone::default();
        for id in late {
            let why = format!("no hello within {} ms", HELLO_TIMEOUT.as_millis());
            gone.add(self.misbehaved(id, &why));
        }
        gone
    }

    /// Blocks of the stream were freed: each consumer that maps one retires it with its
    /// next buffer.
    pub(super) fn freed(&mut self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        for c in &mut self.consumers {
            c.peer.freed(ids);
        }
        self.departures.freed(ids);
    }

    /// Buffer `buffer` was not sent to consumer `id` after all (its socket was full, or the
    /// stream is flushing): it holds nothing of it; `stall`: its socket was full, so it is
    /// not planned for again until it has room. Returns what was held for it, to let go
    /// outside the lock.
    pub(super) fn unsend(
        &mut self,
        id: u64,
        buffer: u64,
        plan: Plan,
        stall: bool,
    ) -> Option<gst::Buffer> {
        self.stats.buffers_dropped += 1;
        let c = self.consumers.iter_mut().find(|c| c.peer.id == id)?;
        c.stalled |= stall;
        let (held, ids) = c.peer.unsend(buffer, plan)?;
        self.pins.unpin(&ids);
        Some(held)
    }

    /// Consumer `id`'s socket has room again.
    pub(super) fn unstall(&mut self, id: u64) {
        if let Some(c) = self.consumers.iter_mut().find(|c| c.peer.id == id) {
            c.stalled = false;
        }
    }
}

mod departures;
mod evict;
mod in_flight;
mod limits;
mod stranded;

#[cfg(test)]
mod tests;
