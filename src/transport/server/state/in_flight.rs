// SPDX-License-Identifier: MPL-2.0
//! Descriptors in flight: those sent to a consumer that it has not shown it read, waiting in
//! its socket queue. The kernel charges them to the producer's user and refuses to send more
//! (`ETOOMANYREFS`) past that user's `RLIMIT_NOFILE`: while they would pass their bound, a
//! consumer past its share gets no new one. Nobody is dropped for them. A consumer dropped
//! keeps what is in its queue, charged to us, until it reads or closes it: its connection is
//! kept ([`stranded`](super::stranded)) and its descriptors counted, in the total and
//! against its user, until the kernel says they left its queue.
//!
//! What holds, whatever consumers do: all in flight, live and stranded, never pass
//! [`Shared::max_total_in_flight`] (twice the bound, half of `RLIMIT_NOFILE`: the kernel
//! never refuses a send for what this sink keeps in flight); past a share, a user's
//! connections that never released a buffer take no new one (`send`); while stranded
//! connections keep half again the bound, no new connection is accepted.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::transport::closer::Conn;
use crate::transport::socket;

use super::{CAT, Consumer, PeerKey, Shared};

/// How often the refresh near the bound asks the kernel about a consumer deferred as unread
/// (it does not read, or reads and releases nothing: its count, which weighs on the others
/// and on its user's, stays this fresh at a cost that does not grow with the buffer rate).
pub(crate) const UNREAD_REFRESH: Duration = Duration::from_millis(1);

/// A user with this many stranded connections is refused until some are released.
pub(crate) const STRANDED_PER_USER: usize = 16;

impl Shared {
    /// A consumer's share of the descriptors all may keep in flight: what of the bound the
    /// stranded connections leave, over the consumers that said hello. While all in flight
    /// would pass the bound, a buffer that would take a consumer past it is not sent to it
    /// (it is full: [`Full::InFlight`](crate::transport::peer::Full::InFlight)); a user's
    /// consumers, live and stranded, keep one share together. So each user that strands
    /// connections takes at most its share of what the others left.
    pub(crate) fn in_flight_share(&self) -> usize {
        self.max_in_flight.saturating_sub(self.stranded.total()) / self.ready().max(1)
    }

    /// The most descriptors all consumers, live and stranded, ever keep in flight: twice the
    /// bound (half the descriptor limit the kernel holds them to). A buffer that would take
    /// the total past it is not sent to a consumer, whoever it is.
    pub(crate) fn max_total_in_flight(&self) -> usize {
        self.max_in_flight.saturating_mul(2)
    }

    /// The stranded connections keep half again the in-flight bound (3/8 of the descriptor
    /// limit): no new connection (nor hello) is accepted until the kernel says some were
    /// read. Past the bound they leave no share: each user may keep one buffer's worth in
    /// flight, so getting here takes about half the bound's worth of users, each keeping a
    /// queue unread; and the consumers that read keep a quarter of the bound to take
    /// buffers from, below [`max_total_in_flight`](Self::max_total_in_flight).
    pub(crate) fn stranded_full(&self) -> bool {
        self.stranded.total() >= self.max_in_flight.saturating_add(self.max_in_flight / 2)
    }

    /// The kernel refused to send consumer `failed` a descriptor with `buffer` (`ETOOMANYREFS`:
    /// the producer's user has too many in flight, in another of its processes, or another
    /// sink of this one). Not
    /// `failed`'s doing: it misses the buffer, nobody is dropped (dropping a consumer does not
    /// take back what is in its queue). Returns the consumer keeping the most in flight and
    /// how many, for the log.
    pub(crate) fn too_many_refs(&mut self, failed: u64, buffer: u64) -> Option<(u64, usize)> {
        let mut asked = Vec::new();
        while self.ask_the_kernel(buffer, &mut asked) {}
        let most = self.most_in_flight();
        gst::debug!(
            CAT,
            "the kernel refused to send consumer {} a descriptor (too many in flight for our \
             user; the most unread here: {:?}, a share is {}): it misses the buffer",
            failed,
            most,
            self.in_flight_share()
        );
        most
    }

    /// Asks the kernel, for each consumer with descriptors in flight whose socket has room
    /// (one whose socket is full has not read them: it costs nothing; one deferred as unread
    /// is asked at most every [`UNREAD_REFRESH`]), whether it read every packet before
    /// `buffer`, and brings its count up to date if so (a deferred one that did is deferred
    /// no more); returns how many descriptors that took out of the count.
    pub(crate) fn refresh_in_flight(&mut self, buffer: u64, now: Instant) -> usize {
        let mut out = 0;
        for c in self.consumers.iter_mut().filter(|c| {
            !c.stalled
                && c.peer.in_flight() > 0
                && (c.unread_until.is_none()
                    || c.looked
                        .is_none_or(|t| now.duration_since(t) >= UNREAD_REFRESH))
        }) {
            if c.unread_until.is_some() {
                c.looked = Some(now);
            }
            if socket::read_everything(c.sock.as_fd()) {
                let before = c.peer.in_flight();
                c.peer.read_before(buffer);
                out += before - c.peer.in_flight();
                c.unread_since = None;
                c.unread_until = None;
            }
        }
        out
    }

    /// What user `key` keeps in flight: in its stranded connections, and in its live ones.
    pub(crate) fn user_in_flight(&self, key: PeerKey) -> (usize, usize) {
        let stranded = self.stranded.by_peer().get(&key).map_or(0, |p| p.1);
        let live = self
            .consumers
            .iter()
            .filter(|c| c.key() == key)
            .map(|c| c.peer.in_flight())
            .sum();
        (stranded, live)
    }

    /// The consumer keeping the most descriptors in flight, and how many.
    fn most_in_flight(&self) -> Option<(u64, usize)> {
        self.consumers
            .iter()
            .map(|c| (c.peer.id, c.peer.in_flight()))
            .max_by_key(|&(id, n)| (n, id))
    }

    /// Asks the kernel whether the consumer keeping the most in flight read every packet
    /// before `buffer`, and if so brings its count up to date (its releases may lag behind
    /// what it read). Each consumer is asked once per `asked`; `false`: nobody left to ask.
    fn ask_the_kernel(&mut self, buffer: u64, asked: &mut Vec<u64>) -> bool {
        let Some(c) = self
            .consumers
            .iter_mut()
            .max_by_key(|c| (c.peer.in_flight(), c.peer.id))
        else {
            return false;
        };
        if c.peer.in_flight() == 0 || asked.contains(&c.peer.id) {
            return false;
        }
        asked.push(c.peer.id);
        if socket::read_everything(c.sock.as_fd()) {
            c.peer.read_before(buffer);
        }
        true
    }
    /// Consumer `c`, being dropped, keeps its connection among the stranded if descriptors
    /// we sent it are still unread in its queue (the kernel says so); returns how many it
    /// keeps in flight then (0: it is closed as usual). None is forgotten: each keeps one of
    /// our descriptors at least, all of which stay within
    /// [`max_total_in_flight`](Self::max_total_in_flight).
    pub(super) fn strand(&mut self, c: &Consumer) -> usize {
        let fds = c.peer.in_flight();
        if fds == 0 || socket::read_everything(c.sock.as_fd()) {
            return 0;
        }
        self.stranded.add(c.peer.id, c.sock.clone(), c.key(), fds);
        fds
    }

    /// Releases the stranded connections whose queues hold nothing of ours any more (their
    /// peers read them, or closed their ends): their connections are returned, to be let go
    /// outside the lock (they go to the closer).
    pub(crate) fn release_stranded(&mut self) -> Vec<Arc<Conn>> {
        let read = self.stranded.take_read();
        for (id, fds, _) in &read {
            gst::debug!(
                CAT,
                "dropped consumer {}: its {} descriptors in flight were read (or its peer hung \
                 up): its connection is closed",
                id,
                fds
            );
        }
        read.into_iter().map(|(_, _, sock)| sock).collect()
    }

    /// Why a connection of `key` (`None`: its credentials are unknown) is refused for what
    /// dropped connections keep in flight, its user's or everyone's; `None`: they do not
    /// stand in its way.
    pub(super) fn stranded_refusal(&self, key: Option<PeerKey>) -> Option<String> {
        if self.stranded_full() {
            return Some(self.stranded_full_why());
        }
        let &(conns, _) = self.stranded.by_peer().get(&key?)?;
        let (fds, live) = self.user_in_flight(key?);
        let share = self.in_flight_share();
        if fds + live <= share && conns < STRANDED_PER_USER {
            return None;
        }
        Some(format!(
            "{conns} connections of its user were dropped with {fds} of our descriptors unread \
             in their queues ({live} more in flight to its others; a share is {share}, at most \
             {STRANDED_PER_USER} such connections)"
        ))
    }

    /// Why nobody new is accepted while [`stranded_full`](Self::stranded_full).
    pub(super) fn stranded_full_why(&self) -> String {
        format!(
            "{} connections were dropped with {} of our descriptors unread in their queues \
             (the bound of descriptors in flight is {}; new consumers wait from half again \
             that): no new consumer until some are read",
            self.stranded.len(),
            self.stranded.total(),
            self.max_in_flight
        )
    }
}
