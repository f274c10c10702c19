// SPDX-License-Identifier: MPL-2.0
//! Descriptors in flight: those sent to a consumer that it has not shown it read, waiting in
//! its socket queue. The kernel charges them to the producer's user and refuses to send more
//! (`ETOOMANYREFS`) past that user's `RLIMIT_NOFILE`: while they would pass their bound, a
//! consumer past its share gets no new one. Nobody is dropped for them: a consumer dropped
//! keeps what is in its queue, charged to us, until it reads or closes it.

use std::os::fd::AsFd;

use crate::transport::socket;

use super::{CAT, Shared};

impl Shared {
    /// A consumer's share of the descriptors all may keep in flight: the bound over the
    /// consumers that said hello. While all in flight would pass the bound, a buffer that
    /// would take a consumer past it is not sent to it (it is full:
    /// [`Full::InFlight`](crate::transport::peer::Full::InFlight)).
    pub(crate) fn in_flight_share(&self) -> usize {
        self.max_in_flight / self.ready().max(1)
    }

    /// The kernel refused to send consumer `failed` a descriptor with `buffer` (`ETOOMANYREFS`:
    /// the producer's user has too many in flight: in the queues of consumers dropped earlier,
    /// which keep what was in them until they read or close, or in another of its
    /// processes). Not `failed`'s doing: it misses the buffer, nobody is dropped (dropping a
    /// consumer does not take back what is in its queue). Returns the consumer keeping the
    /// most in flight and how many, for the log.
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
