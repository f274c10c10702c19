// SPDX-License-Identifier: MPL-2.0
//! Descriptors in flight: those sent to a consumer that it has not shown it read, waiting in
//! its socket queue. The kernel charges them to the producer's user and refuses to send more
//! (`ETOOMANYREFS`) past that user's `RLIMIT_NOFILE`: they are bounded in all and per
//! consumer, and charged to the consumers that keep them, never to one within its share.

use std::os::fd::AsFd;

use crate::transport::socket;

use super::{CAT, Gone, Shared};

impl Shared {
    /// A consumer's share of the descriptors all may keep in flight: the bound over the
    /// consumers that said hello. While all in flight would pass the bound, a buffer that
    /// would take a consumer past it is not sent to it (it is full:
    /// [`Full::InFlight`](crate::transport::peer::Full::InFlight)).
    pub(crate) fn in_flight_share(&self) -> usize {
        self.max_in_flight / self.ready().max(1)
    }

    /// Drops consumers while the descriptors in flight to all of them pass `max_in_flight`,
    /// the one holding the most first. Whenever the total is over the bound, the one holding
    /// the most is over its share (the bound over the consumers that said hello): a consumer
    /// within its share is never dropped for what others keep in flight. `buffer`: the
    /// buffer being sent (what the kernel says a consumer read covers only the buffers before
    /// it). Returns the consumers dropped.
    pub(crate) fn make_in_flight_room(&mut self, buffer: u64) -> (Vec<u64>, Gone) {
        let mut dropped = Vec::new();
        let mut gone = Gone::default();
        let mut asked = Vec::new();
        loop {
            let total: usize = self.consumers.iter().map(|c| c.peer.in_flight()).sum();
            if total <= self.max_in_flight {
                return (dropped, gone);
            }
            if self.ask_the_kernel(buffer, &mut asked) {
                continue;
            }
            let Some((id, held)) = self.most_in_flight() else {
                return (dropped, gone);
            };
            let why = format!(
                "consumers keep {total} descriptors in flight together, unread (at most {}): it \
                 holds the most, {held} (a share is {})",
                self.max_in_flight,
                self.in_flight_share()
            );
            gone.add(self.drop_consumer(id, &why));
            dropped.push(id);
        }
    }

    /// The kernel refused to send consumer `failed` a descriptor (`ETOOMANYREFS`: the
    /// producer's user has too many in flight, here or in another of its processes). Not
    /// `failed`'s doing: the consumer holding the most in flight is dropped if it holds more
    /// than its share, otherwise nobody (the descriptors are held elsewhere).
    pub(crate) fn too_many_refs(&mut self, failed: u64, buffer: u64) -> Gone {
        let share = self.in_flight_share();
        let mut asked = Vec::new();
        while self.ask_the_kernel(buffer, &mut asked) {}
        match self.most_in_flight() {
            Some((id, held)) if held > share => {
                let why = format!(
                    "the kernel refused to send consumer {failed} a descriptor (too many in \
                     flight): this one holds the most unread, {held} (a share is {share})"
                );
                self.drop_consumer(id, &why)
            }
            _ => {
                gst::warning!(
                    CAT,
                    "the kernel refused to send consumer {} a descriptor (too many in flight \
                     for our user) while every consumer is within its share ({}): it misses \
                     the buffer",
                    failed,
                    share
                );
                Gone::default()
            }
        }
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
}
