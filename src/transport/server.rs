// SPDX-License-Identifier: MPL-2.0
//! The producer side: a listening socket, its consumers and the service thread that accepts
//! them and reads their hellos and releases. `memfdsink` is a thin element over [`Server`].
//!
//! Consumers are not trusted. Each has its own bound of unreleased buffers and of mapped
//! blocks; what happens when one is full is [`OnFull`]. Except in `Wait` mode no send ever
//! blocks: a consumer that does not read its socket misses buffers, or is dropped. The blocks
//! a consumer was ever sent are retired when it leaves (never recycled: it may keep them
//! mapped), and blocks are sealed against writes, so no consumer can change what another
//! reads.
//!
//! Longer than 600 lines: [`Server`]'s shared state, its send path and its service thread
//! keep one set of invariants under one lock (who is connected, what each was sent and
//! holds); apart, each half would reach into the other's internals.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::allocator::memfd::{self, FreedBlocks};

use super::peer::{Full, Peer, Plan};
use super::socket;
use super::wire::{self, BlockWire, BufferWire, EventKind, MAX_MEMORIES, MAX_MESSAGE, Message};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memkit-server",
        gst::DebugColorFlags::empty(),
        Some("memkit transport: the producer side (memfdsink)"),
    )
});

/// A blocking send (`OnFull::Wait`) to a consumer that does not read gives up after this.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Otherwise an event (caps, segment, EOS) waits this long for room in a consumer's queue
/// before that consumer, which does not read, is dropped.
const EVENT_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// What to do with a consumer that is full (holds `max_outstanding` buffers, or every block
/// it may map is in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// It misses buffers until it releases some; the others go on.
    Drop,
    /// It is dropped at once.
    Disconnect,
    /// The stream waits for it, up to `full_timeout`, then drops it.
    Wait,
}

/// The bounds the producer applies; they may change while it runs.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_consumers: usize,
    pub max_outstanding: usize,
    pub on_full: OnFull,
    pub full_timeout: Duration,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub buffers: u64,
    pub bytes_sent: u64,
    pub blocks_announced: u64,
    pub consumers_connected: u64,
    pub consumers_dropped: u64,
    pub consumers_refused: u64,
    pub buffers_dropped: u64,
    pub blocks_retired: u64,
    pub released: u64,
    /// Consumers now, buffers they hold now.
    pub consumers: u64,
    pub outstanding: u64,
}

/// The stream was flushed (or the server stopped) while waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushing;

struct Consumer {
    peer: Peer<gst::Buffer>,
    sock: Arc<OwnedFd>,
}

struct Shared {
    consumers: Vec<Consumer>,
    limits: Limits,
    /// Packets a consumer that connects late gets first: caps, stream-start, segment.
    caps: Option<Vec<u8>>,
    stream_start: Option<Vec<u8>>,
    segment: Option<Vec<u8>>,
    /// Bumped whenever those change: a consumer being accepted replays them again if they
    /// changed while it was sent the previous ones.
    replay_generation: u64,
    stats: Stats,
    next_consumer: u64,
    next_buffer: u64,
    running: bool,
    flushing: bool,
}

impl Shared {
    fn replay(&self) -> Vec<Vec<u8>> {
        [&self.caps, &self.stream_start, &self.segment]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Drops consumer `id`. Every block it was ever sent is retired (it may keep them mapped,
    /// so they must never carry a later frame); then the buffers it held are let go.
    fn drop_consumer(&mut self, id: u64, why: &str) {
        let Some(pos) = self.consumers.iter().position(|c| c.peer.id == id) else {
            return;
        };
        let c = self.consumers.remove(pos);
        self.stats.consumers_dropped += 1;
        let held = retire(c.peer, &mut self.stats);
        gst::warning!(
            CAT,
            "dropping consumer {}: {} ({} outstanding buffers released, their blocks retired)",
            id,
            why,
            held
        );
    }
}

/// Retires every block `peer` was ever sent, then lets its buffers go; returns how many.
fn retire(peer: Peer<gst::Buffer>, stats: &mut Stats) -> usize {
    let (blocks, held) = peer.leave();
    for id in &blocks {
        memfd::retire_block(*id);
    }
    stats.blocks_retired += blocks.len() as u64;
    held.len()
}

type State = Arc<(Mutex<Shared>, Condvar)>;

fn lock(state: &State) -> MutexGuard<'_, Shared> {
    state.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// A buffer to send: what is held while consumers use it, its description without the
/// per-consumer parts (its id is given by [`Server::send`]), and the blocks its memories lie
/// in (with their descriptors).
pub struct Outgoing<'a> {
    pub hold: gst::Buffer,
    pub wire: BufferWire,
    pub blocks: Vec<(BlockWire, BorrowedFd<'a>)>,
}

/// A running producer: the socket it listens on and its service thread. Stopped on drop.
pub struct Server {
    state: State,
    thread: Option<JoinHandle<()>>,
    /// The socket we bound: its path, device and inode (to unlink only that one at stop).
    bound: (PathBuf, u64, u64),
    freed: Arc<FreedBlocks>,
}

impl Server {
    /// Listens at `path` (permissions `mode`) and starts serving consumers.
    pub fn start(path: &Path, mode: u32, limits: Limits) -> Result<Server, String> {
        use std::os::unix::fs::MetadataExt;
        let listener = socket::listen_at(path, mode)?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| socket::path_error(path, e))?;
        let state: State = Arc::new((
            Mutex::new(Shared {
                consumers: Vec::new(),
                limits,
                caps: None,
                stream_start: None,
                segment: None,
                replay_generation: 0,
                stats: Stats::default(),
                next_consumer: 0,
                next_buffer: 0,
                running: true,
                flushing: false,
            }),
            Condvar::new(),
        ));
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("memfdsink".into())
            .spawn(move || serve(thread_state, listener))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        Ok(Server {
            state,
            thread: Some(thread),
            bound: (path.to_owned(), meta.dev(), meta.ino()),
            freed: memfd::subscribe_freed(),
        })
    }

    pub fn set_limits(&self, limits: Limits) {
        lock(&self.state).limits = limits;
        self.state.1.notify_all();
    }

    pub fn set_flushing(&self, flushing: bool) {
        lock(&self.state).flushing = flushing;
        self.state.1.notify_all();
    }

    pub fn stats(&self) -> Stats {
        let s = lock(&self.state);
        Stats {
            consumers: s.consumers.len() as u64,
            outstanding: s
                .consumers
                .iter()
                .map(|c| c.peer.outstanding() as u64)
                .sum(),
            ..s.stats.clone()
        }
    }

    /// New caps: sent to every consumer, and first to each that connects later.
    pub fn caps(&self, caps: &str) -> Result<(), String> {
        let packet = Message::Caps(caps.to_owned()).encode();
        if packet.len() > MAX_MESSAGE {
            return Err(format!(
                "caps of {} bytes are too large to send",
                packet.len()
            ));
        }
        {
            let mut s = lock(&self.state);
            s.caps = Some(packet.clone());
            s.replay_generation += 1;
        }
        self.broadcast(&packet);
        Ok(())
    }

    /// A stream-start, segment or EOS (the string of its structure).
    pub fn event(&self, kind: EventKind, text: String) {
        let packet = Message::Event(kind, text).encode();
        {
            let mut s = lock(&self.state);
            s.replay_generation += 1;
            match kind {
                EventKind::StreamStart => s.stream_start = Some(packet.clone()),
                EventKind::Segment => s.segment = Some(packet.clone()),
                EventKind::Eos => {}
            }
        }
        self.broadcast(&packet);
    }

    /// Sends `packet` (an event) to every consumer; drops the ones that fail (in `Wait` mode
    /// after the send timeout, otherwise those whose queue stays full until the deadline).
    fn broadcast(&self, packet: &[u8]) {
        let (wait, socks) = {
            let s = lock(&self.state);
            let socks: Vec<_> = s
                .consumers
                .iter()
                .map(|c| (c.peer.id, c.sock.clone()))
                .collect();
            (s.limits.on_full == OnFull::Wait, socks)
        };
        // One deadline for all: however many consumers do not read, an event costs the
        // stream at most EVENT_SEND_TIMEOUT.
        let deadline = Instant::now() + EVENT_SEND_TIMEOUT;
        for (id, sock) in socks {
            let sent = if wait {
                socket::send(sock.as_fd(), packet, &[])
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                socket::send_within(sock.as_fd(), packet, &[], left)
            };
            if let Err(e) = sent {
                lock(&self.state).drop_consumer(id, &format!("send failed: {e}"));
            }
        }
    }

    /// Holds the stream until at least `min` consumers have said hello.
    pub fn wait_for_consumers(&self, min: usize) -> Result<(), Flushing> {
        let mut s = lock(&self.state);
        while s.consumers.iter().filter(|c| c.peer.ready()).count() < min
            && !s.flushing
            && s.running
        {
            s = self.wait(s, Duration::from_millis(100));
        }
        if s.flushing { Err(Flushing) } else { Ok(()) }
    }

    fn wait<'a>(&self, s: MutexGuard<'a, Shared>, t: Duration) -> MutexGuard<'a, Shared> {
        self.state
            .1
            .wait_timeout(s, t)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// `OnFull::Wait`: waits while a consumer cannot take a buffer in `blocks` (it holds
    /// `max_outstanding` buffers, or every block it may map); one that releases nothing for
    /// `full_timeout` is dropped.
    pub fn wait_for_room(&self, blocks: &[BlockWire]) -> Result<(), Flushing> {
        let mut s = lock(&self.state);
        let deadline = Instant::now() + s.limits.full_timeout;
        loop {
            if s.flushing {
                return Err(Flushing);
            }
            let max = s.limits.max_outstanding;
            let full: Vec<u64> = s
                .consumers
                .iter()
                .filter(|c| c.peer.ready() && c.peer.fits(blocks, max).is_err())
                .map(|c| c.peer.id)
                .collect();
            if full.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let why = format!(
                    "released nothing for {} ms while full (max-outstanding {max})",
                    s.limits.full_timeout.as_millis()
                );
                for id in full {
                    s.drop_consumer(id, &why);
                }
                return Ok(());
            }
            s = self.wait(s, Duration::from_millis(50));
        }
    }

    /// Numbers the buffer and sends it to every consumer that said hello and has room for
    /// it.
    pub fn send(&self, mut out: Outgoing<'_>) {
        let size = out.hold.size() as u64;
        let (on_full, targets) = self.enlist(&mut out);
        let plain = wire::encode_buffer(&out.wire);
        let (mut sent_bytes, mut announced) = (0, 0);
        for (id, sock, plan) in targets {
            match self.send_one(&sock, &out, &plan, &plain, on_full) {
                Ok(()) => {
                    sent_bytes += size;
                    announced += plan.announce.len() as u64;
                }
                // Its socket queue is full: it does not read. Treated like a full consumer.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && on_full == OnFull::Drop => {
                    let mut s = lock(&self.state);
                    let held = s
                        .consumers
                        .iter_mut()
                        .find(|c| c.peer.id == id)
                        .and_then(|c| c.peer.unsend(out.wire.id, plan));
                    s.stats.buffers_dropped += 1;
                    drop(s);
                    drop(held);
                }
                Err(e) => lock(&self.state).drop_consumer(id, &format!("send: {e}")),
            }
        }
        let mut s = lock(&self.state);
        s.stats.buffers += 1;
        s.stats.bytes_sent += sent_bytes;
        s.stats.blocks_announced += announced;
    }

    fn send_one(
        &self,
        sock: &OwnedFd,
        out: &Outgoing<'_>,
        plan: &Plan,
        plain: &[u8],
        on_full: OnFull,
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
            socket::send(sock.as_fd(), packet, &fds)
        } else {
            socket::try_send(sock.as_fd(), packet, &fds)
        }
    }

    /// Numbers the buffer and plans it for every consumer with room, applying the full
    /// policy to the others; returns the consumers to send it to.
    fn enlist(&self, out: &mut Outgoing<'_>) -> (OnFull, Vec<(u64, Arc<OwnedFd>, Plan)>) {
        let freed = self.freed.take();
        let blocks: Vec<BlockWire> = out.blocks.iter().map(|(b, _)| *b).collect();
        let mut s = lock(&self.state);
        let (max_out, on_full) = (s.limits.max_outstanding, s.limits.on_full);
        s.next_buffer += 1;
        let id = s.next_buffer;
        out.wire.id = id;
        let mut targets = Vec::with_capacity(s.consumers.len());
        let mut full = Vec::new();
        for c in s.consumers.iter_mut().filter(|c| c.peer.ready()) {
            c.peer.freed(&freed);
            // Record first, send second: a release can never arrive before its record.
            match c.peer.plan(id, &blocks, out.hold.clone(), max_out) {
                Ok(plan) => targets.push((c.peer.id, c.sock.clone(), plan)),
                Err(why) => full.push((c.peer.id, why)),
            }
        }
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
                    };
                    s.drop_consumer(cid, &why);
                }
            }
        }
        (on_full, targets)
    }

    /// Stops serving: the thread ends, every consumer's blocks are retired, our socket (and
    /// only ours) is unlinked. Returns the final statistics, and `Err` saying why the path
    /// was left in place.
    pub fn stop(mut self) -> (Stats, Result<(), String>) {
        let unlinked = self.shutdown();
        (self.stats(), unlinked)
    }

    fn shutdown(&mut self) -> Result<(), String> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        lock(&self.state).running = false;
        self.state.1.notify_all();
        let _ = thread.join();
        let held: Vec<gst::Buffer> = {
            let mut s = lock(&self.state);
            let consumers = std::mem::take(&mut s.consumers);
            let mut held = Vec::new();
            for c in consumers {
                let (blocks, h) = c.peer.leave();
                blocks.iter().for_each(|&id| memfd::retire_block(id));
                s.stats.blocks_retired += blocks.len() as u64;
                held.extend(h);
            }
            held
        };
        drop(held);
        let (path, dev, ino) = &self.bound;
        remove_own_socket(path, *dev, *ino)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Unlinks the socket at `path` if it is still the one we bound (same device and inode):
/// never another producer's socket that took the path over, nor a file put there.
fn remove_own_socket(path: &Path, dev: u64, ino: u64) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() && m.dev() == dev && m.ino() == ino => {
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        Ok(_) => Err(format!(
            "{} is no longer our socket: left in place",
            path.display()
        )),
        Err(_) => Ok(()),
    }
}

/// Accepts a new consumer: refused when `max_consumers` are connected; otherwise it is sent
/// caps, stream-start and segment (outside the state lock, without blocking) and then joins.
fn accept(state: &State, sock: OwnedFd) {
    let (max, on_full) = {
        let s = lock(state);
        (s.limits.max_consumers, s.limits.on_full)
    };
    if on_full == OnFull::Wait {
        let _ = rustix::net::sockopt::set_socket_timeout(
            &sock,
            rustix::net::sockopt::Timeout::Send,
            Some(SEND_TIMEOUT),
        );
    }
    let mut sent_generation = None;
    loop {
        let (generation, replay) = {
            let mut s = lock(state);
            if s.consumers.len() >= max {
                s.stats.consumers_refused += 1;
                gst::warning!(
                    CAT,
                    "refusing a consumer: {} connected (max-consumers)",
                    s.consumers.len()
                );
                return; // closing the socket tells it
            }
            if sent_generation == Some(s.replay_generation) {
                s.next_consumer += 1;
                let id = s.next_consumer;
                s.consumers.push(Consumer {
                    peer: Peer::new(id),
                    sock: Arc::new(sock),
                });
                s.stats.consumers_connected += 1;
                gst::info!(CAT, "consumer {} connected", id);
                state.1.notify_all();
                return;
            }
            (s.replay_generation, s.replay())
        };
        // A new socket's queue is empty: these few packets never wait.
        if !replay
            .iter()
            .all(|p| socket::try_send(sock.as_fd(), p, &[]).is_ok())
        {
            gst::debug!(CAT, "a new consumer left during the replay");
            return;
        }
        sent_generation = Some(generation);
    }
}

/// Handles one packet from consumer `id`; returns the buffers it released (to be let go
/// outside the state lock: freeing them recycles their blocks).
fn handle(s: &mut Shared, id: u64, packet: &[u8]) -> Vec<gst::Buffer> {
    let Some(c) = s.consumers.iter_mut().find(|c| c.peer.id == id) else {
        return Vec::new();
    };
    match Message::decode(packet) {
        Ok(Message::Release(ids)) => {
            let held: Vec<gst::Buffer> = ids.iter().filter_map(|b| c.peer.release(*b)).collect();
            s.stats.released += held.len() as u64;
            return held;
        }
        Ok(Message::Hello { max_blocks }) if !c.peer.ready() => {
            if let Err(e) = c.peer.hello(max_blocks, MAX_MEMORIES) {
                s.drop_consumer(id, &format!("unusable hello: {e}"));
            }
        }
        Ok(other) => s.drop_consumer(id, &format!("unexpected message {other:?}")),
        Err(e) => s.drop_consumer(id, &format!("bad message: {e}")),
    }
    Vec::new()
}

/// The most packets read from one consumer before the others get their turn.
const DRAIN: usize = 64;

/// Reads what consumer `id` has sent (up to [`DRAIN`] packets).
fn drain(state: &State, id: u64, sock: &OwnedFd, buf: &mut [u8]) {
    for _ in 0..DRAIN {
        let got = socket::recv(sock.as_fd(), buf, Duration::ZERO);
        let mut s = lock(state);
        let released = match got {
            Ok(socket::Received::Packet(n, _fds)) => handle(&mut s, id, &buf[..n]),
            Ok(socket::Received::Idle) => break,
            Ok(socket::Received::Closed) => {
                s.drop_consumer(id, "hung up");
                break;
            }
            Err(e) => {
                s.drop_consumer(id, &e);
                break;
            }
        };
        drop(s);
        drop(released);
    }
    state.1.notify_all();
}

/// Waits up to 50 ms for the listener (when `listen`) or a consumer's socket to be readable:
/// which are (the listener first), or `None` when none is.
fn wait_ready(
    listener: &OwnedFd,
    listen: bool,
    socks: &[(u64, Arc<OwnedFd>)],
) -> Option<Vec<bool>> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    let flags = if listen {
        PollFlags::IN
    } else {
        PollFlags::empty()
    };
    let mut fds = Vec::with_capacity(socks.len() + 1);
    fds.push(PollFd::new(listener, flags));
    fds.extend(
        socks
            .iter()
            .map(|(_, s)| PollFd::new(s.as_ref(), PollFlags::IN)),
    );
    if poll(&mut fds, Some(&tick)).unwrap_or(0) == 0 {
        return None;
    }
    Some(fds.iter().map(|f| !f.revents().is_empty()).collect())
}

/// The service thread: accepts consumers and reads their messages until `running` is false.
fn serve(state: State, listener: OwnedFd) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut listen_pause: Option<Instant> = None;
    loop {
        let socks: Vec<(u64, Arc<OwnedFd>)> = {
            let s = lock(&state);
            if !s.running {
                break;
            }
            s.consumers
                .iter()
                .map(|c| (c.peer.id, c.sock.clone()))
                .collect()
        };
        let listen = listen_pause.is_none_or(|t| Instant::now() >= t);
        let Some(ready) = wait_ready(&listener, listen, &socks) else {
            continue;
        };
        if listen {
            listen_pause = None;
        }
        if ready[0] {
            match socket::accept(&listener) {
                Ok(sock) => accept(&state, sock),
                Err(e) => {
                    gst::warning!(CAT, "accept failed: {}", e);
                    // Out of descriptors (EMFILE/ENFILE): the connection stays pending and
                    // the listener readable; leave it alone for a while instead of spinning.
                    listen_pause = Some(Instant::now() + Duration::from_millis(200));
                }
            }
        }
        for ((id, sock), _) in socks.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
            drain(&state, *id, sock, &mut buf);
        }
    }
}
