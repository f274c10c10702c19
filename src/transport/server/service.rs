// SPDX-License-Identifier: MPL-2.0
//! The service thread: accepts consumers, reads their hellos and releases, retires freed
//! blocks, wakes consumers whose socket had no room, and lets go of the connections of
//! dropped consumers once they read what was queued to them. It never waits on a peer: every
//! socket is read without waiting, and what a peer sent is closed by the closer.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::allocator::memfd::FreedBlocks;

use super::super::closer::{self, Conn};
use super::super::socket::{self, Received};
use super::super::wire::MAX_MESSAGE;
use super::state::{CAT, Cred, State, lock};

/// The most packets read from one consumer per wake-up before the others get their turn.
const DRAIN: usize = 16;
/// After refusing a penalized process, the listener rests this long.
const REFUSED_PAUSE: Duration = Duration::from_millis(10);

/// What [`wait_ready`] saw of one socket.
#[derive(Debug, Clone, Copy, Default)]
struct Ready {
    /// Something to read (or a hang-up, an error).
    read: bool,
    /// Room to write.
    write: bool,
}

/// How long the service thread waits for something to do before it looks again.
const TICK: Duration = Duration::from_millis(50);

/// Waits up to [`TICK`] for the listener (when `listen`) or a consumer's socket to be readable,
/// a stalled consumer's to have room, or `wake` to be written to: what each socket is (the
/// listener first), or `None` when nothing is (or only `wake`, which is read here).
fn wait_ready(
    listener: &OwnedFd,
    listen: bool,
    socks: &[(u64, Arc<Conn>, bool)],
    wake: &OwnedFd,
) -> Option<Vec<Ready>> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: TICK.as_nanos() as i64,
    };
    let flags = if listen {
        PollFlags::IN
    } else {
        PollFlags::empty()
    };
    let mut fds = Vec::with_capacity(socks.len() + 1);
    fds.push(PollFd::new(listener, flags));
    fds.extend(socks.iter().map(|(_, s, stalled)| {
        let out = if *stalled {
            PollFlags::OUT
        } else {
            PollFlags::empty()
        };
        PollFd::new(s.as_ref(), PollFlags::IN | out)
    }));
    fds.push(PollFd::new(wake, PollFlags::IN));
    if poll(&mut fds, Some(&tick)).unwrap_or(0) == 0 {
        return None;
    }
    if fds
        .pop()
        .is_some_and(|w| w.revents().contains(PollFlags::IN))
    {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(wake, &mut count);
    }
    let read = PollFlags::IN | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL;
    Some(
        fds.iter()
            .map(|f| Ready {
                read: f.revents().intersects(read),
                write: f.revents().contains(PollFlags::OUT),
            })
            .collect(),
    )
}

/// The service thread: accepts consumers and reads their messages until `running` is false.
/// `wake`: written to when a consumer stalls, so that its socket is watched for room at once.
pub(super) fn serve(state: State, listener: OwnedFd, freed: Arc<FreedBlocks>, wake: Arc<OwnedFd>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut listen_pause: Option<Instant> = None;
    let mut stranded_seen = Instant::now();
    loop {
        let (socks, gone) = {
            let mut s = lock(&state);
            if !s.running {
                break;
            }

            // Taken here too, not only with the next buffer: the queue stays short while
            // the stream sends nothing.
            s.freed(&freed.take());
            let socks: Vec<(u64, Arc<Conn>, bool)> = s
                .consumers
                .iter()
                .map(|c| (c.peer.id, c.sock.clone(), c.stalled))
                .collect();
            let mut gone = s.expire_hellos();
            // Dropped consumers whose queues held our descriptors: looked at once per tick.
            if stranded_seen.elapsed() >= TICK {
                stranded_seen = Instant::now();
                gone.conns.extend(s.release_stranded());
            }
            (socks, gone)
        };
        gone.finish();
        // No new connection while the closer is saturated: what peers can hand it stays
        // bounded (connections wait in the listener's backlog, whose length the kernel bounds).
        let listen = listen_pause.is_none_or(|t| Instant::now() >= t) && !closer::saturated();
        let Some(ready) = wait_ready(&listener, listen, &socks, &wake) else {
            continue;
        };
        if listen {
            listen_pause = None;
        }
        if ready[0].read {
            match socket::accept(&listener) {
                Ok(sock) => {
                    if accept(&state, sock) {
                        listen_pause = Some(Instant::now() + REFUSED_PAUSE);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    gst::warning!(CAT, "accept failed: {}", e);
                    // Out of descriptors (EMFILE/ENFILE): the connection stays pending and
                    // the listener readable; leave it alone for a while instead of spinning.
                    listen_pause = Some(Instant::now() + Duration::from_millis(200));
                }
            }
        }
        for ((id, sock, stalled), r) in socks.iter().zip(&ready[1..]) {
            if *stalled && r.write {
                lock(&state).unstall(*id);
            }
            if r.read {
                drain(&state, *id, sock, &mut buf);
            }
        }
    }
    // Closing the listener closes the connections still waiting to be accepted, and with
    // them what their peers queued in them: descriptors whose close may block (a TCP socket
    // with SO_LINGER), which `Server::stop` would wait for here: they are accepted and
    // emptied first, what they held disarmed, and the listener closed off this thread.
    super::super::closer::close_listener(listener);
}

/// Accepts a new consumer: refused when `max_consumers` have said hello or its process is
/// penalized (then `true`: the listener rests a moment, so that a process reconnecting in a
/// loop costs at most [`REFUSED_PAUSE`] of work per refusal); otherwise it is sent caps,
/// stream-start and segment (outside the state lock, without blocking) and then joins.
/// A refused connection goes to the closer: its queue may hold descriptors.
pub(super) fn accept(state: &State, sock: OwnedFd) -> bool {
    let sock = Conn::new(sock);
    let cred = Cred::of(&sock);
    let mut sent_generation = None;
    loop {
        let (generation, replay) = {
            let mut s = lock(state);
            if let Some((why, penalized)) = s.refusal(cred) {
                gst::warning!(CAT, "refusing a consumer: {}", why);
                return penalized; // closing the socket tells it
            }
            if sent_generation == Some(s.replay_generation) {
                let gone = s.admit(sock, cred);
                state.1.notify_all();
                drop(s);
                gone.finish();
                return false;
            }
            (s.replay_generation, s.replay())
        };
        // A new socket's queue is empty: these few packets never wait.
        if !replay
            .iter()
            .all(|p| socket::try_send(sock.as_fd(), p, &[]).is_ok())
        {
            gst::debug!(CAT, "a new consumer left during the replay");
            return false;
        }
        sent_generation = Some(generation);
    }
}

/// Reads what consumer `id` has sent (up to [`DRAIN`] packets). What came with a packet is
/// let go after the lock: buffers it released, descriptors (to the closer).
pub(super) fn drain(state: &State, id: u64, sock: &Conn, buf: &mut [u8]) {
    for _ in 0..DRAIN {
        // While the closer is saturated, a message that carries descriptors (kernels that let
        // consumers send them) is not received: its sender is dropped, what it sent leaves
        // with its connection, inside the socket's queue, and never takes a descriptor of
        // this process.
        if closer::saturated() && socket::carries_descriptors(sock.as_fd()) {
            sock.close_unemptied();
            lock(state)
                .misbehaved(id, "a message with descriptors (not received)")
                .finish();
            break;
        }
        let got = socket::recv(sock.as_fd(), buf, Duration::ZERO);
        let mut s = lock(state);
        let gone = match &got {
            Ok(Received::Packet(n, fds)) => s.handle(id, &buf[..*n], fds.len()),
            Ok(Received::Idle) => break,
            Ok(Received::Closed) => s.drop_consumer(id, "hung up"),
            Err(e) => s.misbehaved(id, e),
        };
        let left = !s.consumers.iter().any(|c| c.peer.id == id);
        drop(s);
        drop(got);
        gone.finish();
        if left {
            break;
        }
    }
    state.1.notify_all();
}

#[cfg(test)]
mod tests {
    use super::super::state::{HELLO_TIMEOUT, Limits, MAX_PENDING, OnFull, Shared};
    use super::*;
    use crate::transport::wire::Message;
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    use std::sync::{Condvar, Mutex};

    fn state() -> State {
        gst::init().unwrap();
        let limits = Limits {
            max_consumers: 8,
            max_outstanding: 64,
            on_full: OnFull::Drop,
            full_timeout: Duration::from_secs(1),
            max_pinned_blocks: 4,
            max_pinned_bytes: 1 << 20,
        };
        Arc::new((Mutex::new(Shared::new(limits, 0)), Condvar::new()))
    }

    /// A connected pair of sockets: ours, and the one the server holds.
    fn socket_pair() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    /// Connects a consumer (accepted like one from the listener); returns our end and its id.
    fn connect(state: &State) -> (OwnedFd, u64) {
        let (ours, theirs) = socket_pair();
        assert!(!accept(state, theirs));
        let id = lock(state).consumers.last().unwrap().peer.id;
        (ours, id)
    }

    fn sock_of(state: &State, id: u64) -> Arc<Conn> {
        let s = lock(state);
        s.consumers
            .iter()
            .find(|c| c.peer.id == id)
            .unwrap()
            .sock
            .clone()
    }

    fn ids(state: &State) -> Vec<u64> {
        lock(state).consumers.iter().map(|c| c.peer.id).collect()
    }

    /// A TCP socket whose last close blocks for `seconds` (its peer and listener kept by the
    /// caller).
    fn lingering(seconds: u64) -> (OwnedFd, std::net::TcpStream, std::net::TcpListener) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        c.set_nonblocking(true).unwrap();
        while c.write(&[0u8; 65536]).is_ok() {}
        rustix::net::sockopt::set_socket_linger(&c, Some(Duration::from_secs(seconds))).unwrap();
        (OwnedFd::from(c), peer, listener)
    }

    const LINGER: u64 = 5;

    #[test]
    fn a_lingering_descriptor_on_any_message_never_blocks_the_service_thread() {
        // Issue 27: the server closed what came with a message under its state lock, on the
        // service thread; a TCP socket with SO_LINGER {1, N} made that close take N s.
        let hello = Message::Hello { max_blocks: 64 }.encode();
        let release = Message::Release(vec![]).encode();
        for (what, first, packet) in [
            ("hello", None, hello.clone()),
            ("release", Some(hello.clone()), release),
            ("garbage", None, b"garbage!".to_vec()),
        ] {
            let state = state();
            let (ours, id) = connect(&state);
            let (fd, _peer, _l) = lingering(LINGER);
            if let Some(first) = first {
                socket::send(ours.as_fd(), &first, &[]).unwrap();
            }
            socket::send(ours.as_fd(), &packet, &[fd.as_fd()]).unwrap();
            drop(fd); // the server holds the last reference
            let sock = sock_of(&state, id);
            let mut buf = vec![0u8; MAX_MESSAGE];
            let start = Instant::now();
            drain(&state, id, &sock, &mut buf);
            let took = start.elapsed();
            assert!(took < Duration::from_secs(1), "{what}: drain took {took:?}");
            assert!(ids(&state).is_empty(), "{what}: the consumer was kept");
            drop(ours);
        }
    }

    #[test]
    fn descriptors_queued_behind_garbage_or_on_a_refused_connection_never_block() {
        let hello = Message::Hello { max_blocks: 64 }.encode();
        // Queued behind garbage: dropping the consumer closes its socket, whose queue holds
        // the descriptor.
        let state = state();
        let (ours, id) = connect(&state);
        let (fd, _peer, _l) = lingering(LINGER);
        socket::send(ours.as_fd(), b"garbage!", &[]).unwrap();
        socket::send(ours.as_fd(), &hello, &[fd.as_fd()]).unwrap();
        drop(fd);
        let sock = sock_of(&state, id);
        let mut buf = vec![0u8; MAX_MESSAGE];
        let start = Instant::now();
        drain(&state, id, &sock, &mut buf);
        drop(sock);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        // Refused at accept (its process penalized): the same, on the accepting thread.
        let me = rustix::process::getuid().as_raw();
        lock(&state).penalize(me);
        let (ours2, theirs) = socket_pair();
        let (fd, _peer, _l) = lingering(LINGER);
        socket::send(ours2.as_fd(), &hello, &[fd.as_fd()]).unwrap();
        drop(fd);
        let start = Instant::now();
        assert!(accept(&state, theirs), "refused");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        drop((ours, ours2));
    }

    #[test]
    fn a_lingering_descriptor_on_a_connection_never_accepted_does_not_hold_up_the_stop() {
        // Found by the fuzzer: closing the listener closes the connections waiting to be
        // accepted, and what their peers queued in them; the service thread did that as it
        // ended, and Server::stop, which waits for it, took the linger time (3 s there).
        let state = state();
        let dir = std::env::temp_dir().join(format!("memkit-backlog-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        // A listener that lets descriptors pass, as on kernels before 6.16 (`listen_at` has
        // newer ones refuse them: then nothing can be queued in a pending connection).
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::bind(&listener, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::listen(&listener, 16).unwrap();
        let ours = socket::connect(&path, Duration::from_secs(5), || false).unwrap();
        let (fd, _peer, _l) = lingering(LINGER);
        let hello = Message::Hello { max_blocks: 64 }.encode();
        socket::send(ours.as_fd(), &hello, &[fd.as_fd()]).unwrap();
        drop(fd); // the queued connection holds the last reference
        lock(&state).running = false; // it ends before accepting anything
        let wake =
            Arc::new(rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap());
        let freed = crate::allocator::memfd::subscribe_freed(0);
        let start = Instant::now();
        serve(state, listener, freed, wake);
        let took = start.elapsed();
        drop(ours);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
        assert!(
            took < Duration::from_secs(1),
            "the service thread ended after {took:?}"
        );
    }

    #[test]
    fn a_release_unpins_its_blocks_and_lets_the_buffer_go_outside_the_lock() {
        use crate::transport::wire::{BlockWire, MAX_IDS};
        let state = state();
        let (_ours, id) = connect(&state);
        let buffer = gst::Buffer::new();
        let gone = {
            let mut s = lock(&state);
            s.handle(id, &Message::Hello { max_blocks: 64 }.encode(), 0)
                .finish();
            let blocks = [BlockWire { id: 10, size: 100 }];
            let c = s.consumers.iter_mut().find(|c| c.peer.id == id).unwrap();
            c.peer
                .plan(7, &blocks, buffer.clone(), 64, MAX_IDS)
                .unwrap();
            s.pins.pin(&blocks);
            assert_eq!((s.pins.count(), buffer.is_writable()), (1, false));
            let gone = s.handle(id, &Message::Release(vec![7]).encode(), 0);
            // Still held by what the handler returned: nothing is freed under the lock.
            assert_eq!((s.pins.count(), s.stats.released), (0, 1));
            assert!(!buffer.is_writable());
            gone
        };
        gone.finish();
        assert!(buffer.is_writable());
        assert_eq!(ids(&state), vec![id]);
    }

    #[test]
    fn a_release_of_a_buffer_it_does_not_hold_drops_the_consumer() {
        use crate::transport::wire::{BlockWire, MAX_IDS};
        let state = state();
        let (_ours, id) = connect(&state);
        let mut s = lock(&state);
        s.handle(id, &Message::Hello { max_blocks: 64 }.encode(), 0)
            .finish();
        let blocks = [BlockWire { id: 10, size: 100 }];
        let c = s.consumers.iter_mut().find(|c| c.peer.id == id).unwrap();
        c.peer
            .plan(7, &blocks, gst::Buffer::new(), 64, MAX_IDS)
            .unwrap();
        s.pins.pin(&blocks);
        let gone = s.handle(id, &Message::Release(vec![7, 99]).encode(), 0);
        assert!(
            s.consumers.is_empty(),
            "a flooding consumer stays connected"
        );
        assert_eq!((s.pins.count(), s.stats.consumers_dropped), (0, 1));
        assert_eq!(gone.held.len(), 1);
        assert_eq!(gone.blocks, vec![10], "its blocks are to be retired");
    }

    #[test]
    fn a_process_whose_connection_misbehaved_cannot_connect_for_a_while() {
        let state = state();
        let (_ours, id) = connect(&state);
        lock(&state).handle(id, b"garbage", 0).finish();
        // A socket pair's peer is this very process: its user penalized now.
        let me = rustix::process::getuid().as_raw();
        assert!(lock(&state).penalized(me));
        let (_ours, theirs) = socket_pair();
        assert!(
            accept(&state, theirs),
            "the listener rests after a penalized process"
        );
        let s = lock(&state);
        assert!(s.consumers.is_empty());
        assert_eq!(s.stats.consumers_refused, 1);
    }

    #[test]
    fn silent_connections_do_not_count_against_max_consumers_and_are_bounded() {
        let state = state();
        lock(&state).limits.max_consumers = 1;
        let mut keep = Vec::new();
        for _ in 0..MAX_PENDING + 3 {
            keep.push(connect(&state).0); // kept open: the connection stays
        }
        assert_eq!(
            ids(&state).len(),
            MAX_PENDING,
            "the oldest silent ones were dropped"
        );
        assert_eq!(ids(&state)[0], 4);
        // The first to say hello takes the one slot; the next is refused.
        let mut s = lock(&state);
        let hello = Message::Hello { max_blocks: 64 }.encode();
        s.handle(4, &hello, 0).finish();
        s.handle(5, &hello, 0).finish();
        assert_eq!((s.ready(), s.stats.consumers_refused), (1, 1));
        assert_eq!(
            s.stats.consumers_dropped,
            3 + 1,
            "three silent ones, then the refused"
        );
    }

    #[test]
    fn connections_without_a_hello_are_dropped_after_the_deadline() {
        let state = state();
        let (_a, _silent) = connect(&state);
        let (_b, new) = connect(&state);
        let (_c, greeted) = connect(&state);
        {
            let mut s = lock(&state);
            s.handle(greeted, &Message::Hello { max_blocks: 64 }.encode(), 0)
                .finish();
            for c in s.consumers.iter_mut() {
                if c.peer.id != new {
                    c.since = Instant::now() - HELLO_TIMEOUT;
                }
            }
            s.expire_hellos().finish();
        }
        assert_eq!(ids(&state), vec![new, greeted]);
    }

    #[test]
    fn hang_ups_and_empty_packets_drop_the_consumer_when_drained() {
        let state = state();
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (hangs_up, a) = connect(&state);
        let (empty, b) = connect(&state);
        let (sock1, sock2) = (sock_of(&state, a), sock_of(&state, b));
        drop(hangs_up);
        socket::send(empty.as_fd(), &[], &[]).unwrap();
        drain(&state, a, &sock1, &mut buf);
        drain(&state, b, &sock2, &mut buf);
        assert!(ids(&state).is_empty());
        assert_eq!(lock(&state).stats.consumers_dropped, 2);
    }
}
