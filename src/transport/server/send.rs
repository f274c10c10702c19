// SPDX-License-Identifier: MPL-2.0
//! The send path, on the streaming thread: a buffer is numbered and planned for every
//! consumer with room under the state lock, then sent to each outside it; an event goes to
//! everyone. Except with `OnFull::Wait` no send waits for a consumer, and a consumer whose
//! socket is full is not even planned for until it has room again.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::allocator::memfd;

use super::super::closer::Conn;
use super::super::peer::{Full, Plan};
use super::super::socket;
use super::super::wire::{self, BlockWire, BufferWire, MAX_IDS, MAX_MEMORIES, MAX_MESSAGE};
use super::state::{CAT, Gone, Limits, OnFull, Shared, lock};
use super::{Outgoing, Server};

/// Except with `OnFull::Wait` (which waits up to `full_timeout`), an event (caps, segment,
/// EOS) waits this long for room in a consumer's queue before that consumer, which does not
/// read, is dropped.
const EVENT_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// A consumer refused this long for descriptors in flight (its share, its user's, the total)
/// that it has not read, releasing nothing, misses buffers without being asked again (no
/// plan, no system call per buffer) until it releases a buffer, or for this long: then the
/// kernel is asked whether it read them. So does one refused this long for its user's share
/// that never released a buffer, whether it reads or not (only a release changes that), and
/// at once one full for its `max-outstanding` window or its blocks.
pub(super) const UNREAD_RECHECK: Duration = Duration::from_millis(10);

/// `sendmsg`'s error when the descriptors attached would pass what the kernel lets the
/// sending user keep in flight.
const TOO_MANY_REFS: i32 = rustix::io::Errno::TOOMANYREFS.raw_os_error();

/// The consumers a buffer goes to: id, socket, what to send each.
type Targets = Vec<(u64, Arc<Conn>, Plan)>;

/// What [`Server::enlist`] chose: the limits, the consumers to send a buffer to, the consumers
/// dropped, and the stream's audience if every consumer of it is among those (else 0).
type Enlisted = (Limits, Targets, Gone, u64);

impl Server {
    /// Sends `packet` (an event) to every consumer; drops the ones that fail (in `Wait` mode
    /// those that do not read for `full_timeout`, otherwise those whose queue stays full
    /// until one shared deadline). A flush interrupts the waits.
    pub(super) fn broadcast(&self, packet: &[u8]) {
        let (timeout, socks) = {
            let s = lock(&self.state);
            let socks: Vec<_> = s
                .consumers
                .iter()
                .map(|c| (c.peer.id, c.sock.clone()))
                .collect();
            let timeout = match s.limits.on_full {
                OnFull::Wait => s.limits.full_timeout,
                _ => EVENT_SEND_TIMEOUT,
            };
            (timeout, socks)
        };
        // One deadline for all: however many consumers do not read, an event costs the
        // stream at most that long.
        let deadline = Instant::now() + timeout;
        let stop = || self.stopping.load(Ordering::Relaxed);
        for (id, sock) in socks {
            match socket::send_until(sock.as_fd(), packet, &[], deadline, stop) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break,
                Err(e) => {
                    let gone = lock(&self.state).drop_consumer(id, &format!("send failed: {e}"));
                    gone.finish();
                }
            }
        }
    }

    /// Numbers the buffer and sends it to every consumer that said hello and has room for
    /// it. With `OnFull::Wait` a send waits for room up to `full_timeout` (a flush
    /// interrupts it); otherwise it never waits.
    pub fn send(&self, mut out: Outgoing<'_>) {
        let size = out.hold.size() as u64;
        let plain = wire::encode_buffer(&out.wire);
        // What the packet has room for beside the buffer's own description and the blocks
        // it may announce (16 bytes each): retired block ids, 8 bytes each.
        let room = MAX_MESSAGE.saturating_sub(plain.len() + 16 * MAX_MEMORIES + 64) / 8;
        let (limits, targets, gone, mut audience) = self.enlist(&mut out, room.min(MAX_IDS));
        gone.finish();
        let plain = wire::encode_buffer(&out.wire);
        let deadline = Instant::now() + limits.full_timeout;
        let (mut sent_bytes, mut announced) = (0, 0);
        for (id, sock, plan) in targets {
            let sent = self.send_one(&sock, &out, &plan, &plain, limits.on_full, deadline);
            let kind = sent.as_ref().err().map(std::io::Error::kind);
            if sent.is_err() {
                audience = 0;
            }
            match sent {
                Ok(()) => {
                    sent_bytes += size;
                    announced += plan.announce.len() as u64;
                }
                // Its socket queue is full (it does not read: treated like a full
                // consumer, and not planned for again until its socket has room), or the
                // stream is flushing: it misses this buffer.
                Err(_)
                    if kind == Some(std::io::ErrorKind::Interrupted)
                        || (kind == Some(std::io::ErrorKind::WouldBlock)
                            && limits.on_full == OnFull::Drop) =>
                {
                    let stall = kind == Some(std::io::ErrorKind::WouldBlock);
                    let held = lock(&self.state).unsend(id, out.wire.id, plan, stall);
                    drop(held);
                    if stall {
                        // Once per stall (it is not planned for again until it has room).
                        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
                    }
                }
                // The kernel refused the descriptors (too many in flight for our user): not
                // this consumer's doing; it misses the buffer.
                Err(e) if e.raw_os_error() == Some(TOO_MANY_REFS) => {
                    let mut s = lock(&self.state);
                    let held = s.unsend(id, out.wire.id, plan, false);
                    s.too_many_refs(id, out.wire.id);
                    drop(s);
                    drop(held);
                }
                Err(e) => {
                    let why = if kind == Some(std::io::ErrorKind::WouldBlock) {
                        format!(
                            "read nothing for {} ms (full-timeout)",
                            limits.full_timeout.as_millis()
                        )
                    } else {
                        format!("send: {e}")
                    };
                    let gone = lock(&self.state).drop_consumer(id, &why);
                    gone.finish();
                }
            }
        }
        // Every consumer has what the blocks hold: reused as they are, they show it no byte
        // it was not sent (otherwise they are zeroed first).
        memfd::sent_to_all(out.blocks.iter().map(|(b, _)| b.id), audience);
        let mut s = lock(&self.state);
        s.stats.buffers += 1;
        s.stats.bytes_sent += sent_bytes;
        s.stats.blocks_announced += announced;
    }

    fn send_one(
        &self,
        sock: &Conn,
        out: &Outgoing<'_>,
        plan: &Plan,
        plain: &[u8],
        on_full: OnFull,
        deadline: Instant,
    ) -> std::io::Result<()> {
        let (packet, fds) = if plan.retire.is_empty() && plan.announce.is_empty() {
            (None, Vec::new())
        } else {
            let wire = BufferWire {
                retire: plan.retire.clone(),
                blocks: plan.announce.clone(),
                ..out.wire.clone()
            };
            let packet = wire::encode_buffer(&wire);
            let fds: Vec<BorrowedFd<'_>> = plan
                .announce
                .iter()
                .filter_map(|a| out.blocks.iter().find(|(b, _)| b.id == a.id))
                .map(|(_, fd)| *fd)
                .collect();
            (Some(packet), fds)
        };
        let packet = packet.as_deref().unwrap_or(plain);
        if on_full == OnFull::Wait {
            let stop = || self.stopping.load(Ordering::Relaxed);
            socket::send_until(sock.as_fd(), packet, &fds, deadline, stop)
        } else {
            socket::try_send(sock.as_fd(), packet, &fds)
        }
    }

    /// Numbers the buffer and plans it for every consumer with room (at most `max_retire`
    /// retirements each), applying the full policy to the others and the bound of what all
    /// may pin (a buffer that does not fit in it goes to nobody); returns the limits, the
    /// consumers to send it to, and the consumers dropped. A consumer whose socket was full
    /// costs a flag test, nothing more. While the descriptors in flight (those left unread by
    /// dropped consumers included, a running total) would pass their bound, a consumer the
    /// buffer's new descriptors would take past its share is full; a consumer misses a
    /// buffer that would take its user's stranded and live ones past a share, unless it
    /// released a buffer once and stays within its own share (with nothing else of ours
    /// unread in its queue if its user has stranded ones), and one that would take the
    /// total past twice the bound.
    fn enlist(&self, out: &mut Outgoing<'_>, max_retire: usize) -> Enlisted {
        let freed = self.freed.take();
        let blocks: Vec<BlockWire> = out.blocks.iter().map(|(b, _)| *b).collect();
        let mut s = lock(&self.state);
        s.freed(&freed);
        let limits = s.limits.clone();
        let (max_out, on_full) = (limits.max_outstanding, limits.on_full);
        let (mut gone, fits) = s.make_room(&blocks);
        s.next_buffer += 1;
        let id = s.next_buffer;
        out.wire.id = id;
        let mut targets = Vec::with_capacity(s.consumers.len());
        let mut full = Vec::new();
        let mut stalled = 0;
        let mut late = 0;
        let mut withheld = 0;
        let (share, max_in_flight) = (s.in_flight_share(), s.max_in_flight);
        let max_total = s.max_total_in_flight();
        // What dropped consumers keep unread in their queues counts too (a running total).
        let mut in_flight: usize = s.consumers.iter().map(|c| c.peer.in_flight()).sum();
        in_flight += s.stranded.total();
        // Whether a user's consumers, live and stranded, could pass a share with this buffer
        // (each user's total is within the total). What a user keeps in flight is then
        // counted only for a consumer the buffer takes new descriptors to.
        let per_user = in_flight + blocks.len().saturating_mul(s.consumers.len()) > share;
        // Near the bound, or a share, what consumers that read (their sockets have room)
        // took out of their queues is brought up to date first: a consumer that reads
        // everything and releases nothing would otherwise count against the others, and
        // against its user's other consumers.
        let now = Instant::now();
        if per_user || in_flight + blocks.len() > max_in_flight {
            in_flight -= s.refresh_in_flight(id, now);
        }
        let shared = &mut *s;
        for i in 0..shared.consumers.len() {
            let c = &mut shared.consumers[i];
            if !c.peer.ready() {
                continue;
            }
            // Stalled, or the buffer does not fit in what all may pin: it misses it.
            if c.stalled || !fits {
                stalled += 1;
                continue;
            }
            // It joined after the block was taken for reuse without zeroing: the bytes the
            // producer did not write are from before it joined. It misses the buffer (one
            // taken before its hello; later ones are zeroed for it).
            if out.before != 0 && c.joined > out.before {
                late += 1;
                continue;
            }
            // Past its share in flight (or its user's), unread when the kernel was last
            // asked, or full and releasing nothing: full (or withheld) again, without a look.
            if let Some((until, why)) = c.unread_until
                && now < until
            {
                match why {
                    Some(why) => full.push((c.peer.id, why)),
                    None => withheld += 1,
                }
                continue;
            }
            // Record first, send second: a release can never arrive before its record.
            let plan = match c
                .peer
                .plan(id, &blocks, out.hold.clone(), max_out, max_retire)
            {
                Ok(plan) => plan,
                Err(why) => {
                    // Full for its window or its blocks: only a release changes that (or
                    // new limits). It is not looked at until it releases one, or for
                    // `UNREAD_RECHECK` (a consumer keeping every block it may map cost a
                    // plan per buffer, and releasing one buffer every 5 ms kept it so).
                    c.unread_until = Some((now + UNREAD_RECHECK, Some(why)));
                    c.looked = Some(now);
                    full.push((c.peer.id, why));
                    continue;
                }
            };
            // While all in flight would pass the bound, a consumer past its share (one with
            // nothing in flight may always take one buffer) gets no new descriptor, unless
            // the kernel says it read every packet sent before: its releases may lag behind
            // what it read.
            // A user's consumers, live and dropped, together past a share: those that never
            // released a buffer get no new one (unless the user has nothing else in flight:
            // it may always take one buffer), so connections that never read cannot take
            // one each; the others only within their own share, and if the user has dropped
            // connections with descriptors unread, only with nothing else unread in their
            // queues (the kernel says so).
            // Nobody takes all in flight past twice the bound.
            let k = plan.announce.len();
            in_flight += k;
            let (key, reads) = (c.key(), c.last_release > 0);
            // Its user's (stranded, live) in flight, this plan included.
            let user = |shared: &Shared| (per_user && k > 0).then(|| shared.user_in_flight(key));
            let user_over = |user: Option<(usize, usize)>, mine: usize| {
                user.is_some_and(|(stranded, live)| {
                    k > 0
                        && stranded + live > share.max(k)
                        && (!reads || mine > share.max(k) || (stranded > 0 && mine > k))
                })
            };
            let capped = |in_flight: usize| k > 0 && in_flight > max_total;
            let mine = c.peer.in_flight();
            let mut own = k > 0 && in_flight > max_in_flight && mine > share.max(k);
            let mut over = own || capped(in_flight) || user_over(user(shared), mine);
            let c = &mut shared.consumers[i];
            let read_all = over && socket::read_everything(c.sock.as_fd());
            if read_all {
                own = false;
                let before = c.peer.in_flight();
                c.peer.read_before(id);
                let mine = c.peer.in_flight();
                in_flight -= before - mine;
                over = capped(in_flight) || user_over(user(shared), mine);
            }
            let c = &mut shared.consumers[i];
            // Refused, unread (or never released one), and no release for `UNREAD_RECHECK`:
            // not a reader lagging, one that does not read (or release). It is not looked
            // at for as long.
            let idle = over && (!read_all || !reads);
            c.unread_since = idle.then(|| c.unread_since.unwrap_or(now));
            c.unread_until = c
                .unread_since
                .filter(|&t| now.duration_since(t) >= UNREAD_RECHECK)
                .map(|_| (now + UNREAD_RECHECK, own.then_some(Full::InFlight)));
            c.looked = Some(now);
            if over {
                drop(c.peer.unsend(id, plan)); // a clone of `out.hold`: frees nothing
                in_flight -= k;
                // Over its own share it is full; held back for its user's share or the
                // total's hard bound, it misses the buffer (whatever on-full says).
                if own {
                    full.push((c.peer.id, Full::InFlight));
                } else {
                    withheld += 1;
                }
                continue;
            }
            shared.pins.pin(&blocks);
            targets.push((c.peer.id, c.sock.clone(), plan));
        }
        s.stats.buffers_dropped += stalled + late + withheld;
        // Read under the lock a consumer joins under: one that joins later is of a new one.
        let audience = if stalled == 0 && late == 0 && withheld == 0 && full.is_empty() {
            memfd::audience(self.stream)
        } else {
            0
        };
        for (cid, why) in full {
            match on_full {
                OnFull::Drop => {
                    s.stats.buffers_dropped += 1;
                    gst::trace!(CAT, "consumer {} is full ({:?}): buffer dropped", cid, why);
                }
                OnFull::Disconnect | OnFull::Wait => {
                    let why = match why {
                        Full::Outstanding => {
                            format!("holds {max_out} buffers unreleased (max-outstanding)")
                        }
                        Full::Blocks => "every block it may map is in use".to_owned(),
                        Full::InFlight => format!(
                            "it has not read the descriptors it was sent (more than its share, \
                             {share}, in flight)"
                        ),
                    };
                    gone.add(s.drop_consumer(cid, &why));
                }
            }
        }
        (limits, targets, gone, audience)
    }
}
