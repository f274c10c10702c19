// SPDX-License-Identifier: MPL-2.0
//! Stranded connections: consumers dropped while descriptors we sent them were still unread
//! in their socket queues. Dropping a consumer does not take those back: the kernel keeps
//! them charged to the producer's user (its `RLIMIT_NOFILE` bounds them, past it every send
//! with a descriptor fails with `ETOOMANYREFS`) until the peer reads them or closes its end.
//! A peer that keeps its end open would make the producer forget them while the kernel
//! counts them, and cycle until no consumer can be sent a block (review of issue 27).
//!
//! So such a connection is kept (shut both ways: its peer sees the hang-up once it has read
//! its queue, and can send nothing more), with its user and the count it had in flight,
//! until the kernel says its queue holds nothing of ours (read, or purged when the peer
//! closed): the service thread looks at most once per tick.
//! Meanwhile its descriptors count in the total that the in-flight bound is applied to, and
//! against its user: while the user's stranded and live descriptors in flight pass a
//! consumer's share, or it has 16 stranded connections, its new connections are refused
//! (`in_flight`); while they pass the share, its live consumers are sent a new descriptor
//! only with nothing else of ours unread in their queues (`send`).
//! None is ever forgotten: each keeps at least one of our descriptors, and all descriptors
//! in flight stay within their hard bound (`in_flight`), so that bounds how many there are;
//! while they keep half again the in-flight bound, no new connection is accepted
//! (`in_flight`).
//! A look at them costs at most [`POLL`] `ioctl`s, however many there are.

use std::collections::HashMap;
use std::hash::Hash;
use std::os::fd::AsFd;
use std::sync::Arc;

use crate::transport::closer::Conn;
use crate::transport::socket;

/// The most stranded connections looked at in one call of [`Stranded::take_read`] (the
/// service thread's tick): in turn, so each is looked at within `len / POLL` ticks.
pub(crate) const POLL: usize = 128;

struct Entry<K> {
    id: u64,
    sock: Arc<Conn>,
    key: K,
    fds: usize,
}

/// The stranded connections, with running totals: what the send path reads of them costs
/// the same however many there are. `K`: whom a connection counts for (its user).
pub(crate) struct Stranded<K> {
    list: Vec<Entry<K>>,
    /// The descriptors they keep in flight, all together.
    total: usize,
    /// Per peer (user): its stranded connections and their descriptors in flight.
    by_peer: HashMap<K, (usize, usize)>,
    /// Where the next look begins.
    cursor: usize,
}

impl<K> Default for Stranded<K> {
    fn default() -> Self {
        Stranded {
            list: Vec::new(),
            total: 0,
            by_peer: HashMap::new(),
            cursor: 0,
        }
    }
}

impl<K: Copy + Eq + Hash> Stranded<K> {
    /// The descriptors all stranded connections keep in flight.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    /// Per peer with stranded connections: how many it has, and their descriptors in flight.
    pub(crate) fn by_peer(&self) -> &HashMap<K, (usize, usize)> {
        &self.by_peer
    }

    /// Keeps connection `id` on `sock`, of `key`, with `fds` of our descriptors unread in
    /// its queue. Shut both ways: its peer sees the hang-up once it has read its queue, as if
    /// it were closed, and can queue nothing more to us.
    pub(crate) fn add(&mut self, id: u64, sock: Arc<Conn>, key: K, fds: usize) {
        let _ = rustix::net::shutdown(sock.as_fd(), rustix::net::Shutdown::Both);
        self.total += fds;
        let p = self.by_peer.entry(key).or_default();
        p.0 += 1;
        p.1 += fds;
        self.list.push(Entry { id, sock, key, fds });
    }

    /// Takes out the connections whose queues hold nothing of ours any more (their peers
    /// read them, or closed their ends): id, descriptors it had in flight, connection. Looks
    /// at [`POLL`] of them at most (one `ioctl` each), in turn.
    pub(crate) fn take_read(&mut self) -> Vec<(u64, usize, Arc<Conn>)> {
        let mut read = Vec::new();
        for _ in 0..POLL.min(self.list.len()) {
            if self.list.is_empty() {
                break;
            }
            if self.cursor >= self.list.len() {
                self.cursor = 0;
            }
            let i = self.cursor;
            if socket::read_everything(self.list[i].sock.as_fd()) {
                // The last one takes its place: looked at next.
                let e = self.remove(i);
                read.push((e.id, e.fds, e.sock));
            } else {
                self.cursor += 1;
            }
        }
        read
    }

    /// Every connection, taken out.
    pub(crate) fn take_all(&mut self) -> Vec<Arc<Conn>> {
        std::mem::take(self)
            .list
            .into_iter()
            .map(|e| e.sock)
            .collect()
    }

    fn remove(&mut self, i: usize) -> Entry<K> {
        let e = self.list.swap_remove(i);
        self.total -= e.fds;
        if let Some(p) = self.by_peer.get_mut(&e.key) {
            p.0 -= 1;
            p.1 -= e.fds;
            if p.0 == 0 {
                self.by_peer.remove(&e.key);
            }
        }
        e
    }
}
