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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::allocator::memfd::{self, FreedBlocks};

use super::peer::{Full, Peer, Pins, Plan};
use super::socket;
use super::wire::{
    self, BlockWire, BufferWire, EventKind, MAX_IDS, MAX_MEMORIES, MAX_MESSAGE, Message,
};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memkit-server",
        gst::DebugColorFlags::empty(),
        Some("memkit transport: the producer side (memfdsink)"),
    )
});

/// Except with `OnFull::Wait` (which waits up to `full_timeout`), an event (caps, segment,
/// EOS) waits this long for room in a consumer's queue before that consumer, which does not
/// read, is dropped.
const EVENT_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection that has not said hello by then is dropped: it must not hold a
/// `max-consumers` slot for good.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// The most packets read from one consumer per wake-up before the others get their turn.
const DRAIN: usize = 16;
/// The most connections waiting for their hello: past it the oldest is dropped. They do not
/// count against `max-consumers` (a flood of silent connections must not keep a real consumer
/// out).
const MAX_PENDING: usize = 32;
/// A process whose connection misbehaved (garbage, a release of a buffer it does not hold, no
/// hello) cannot connect again for this long: a reconnecting attacker gets one try a second.
const PENALTY: Duration = Duration::from_secs(1);
/// After refusing a penalized process, the listener rests this long.
const REFUSED_PAUSE: Duration = Duration::from_millis(10);

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
    /// The most blocks (descriptors) and bytes all consumers together may pin with the
    /// buffers they hold; past either, the consumer that pins the most bytes is dropped.
    pub max_pinned_blocks: usize,
    pub max_pinned_bytes: u64,
}

/// What the process can afford to let consumers pin: half of its descriptors
/// (`RLIMIT_NOFILE`), at least 64.
pub fn auto_pinned_blocks() -> usize {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    (nofile / 2).clamp(64, 1 << 20) as usize
}

/// What the process can afford to let consumers pin: a quarter of the machine's memory
/// (`MemTotal`), 1 GiB when that cannot be read.
pub fn auto_pinned_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib.saturating_mul(1024) / 4)
        })
        .unwrap_or(1 << 30)
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
    /// Blocks and bytes the consumers pin now.
    pub pinned_blocks: u64,
    pub pinned_bytes: u64,
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
    /// When it connected: it must say hello within [`HELLO_TIMEOUT`].
    since: Instant,
    /// The process at the other end (`SO_PEERCRED`), when known.
    pid: Option<i32>,
}

/// What a consumer that left, or released buffers, lets go: the blocks to retire for good
/// and the buffers it held. Let go outside the state lock ([`Gone::finish`]): retiring a
/// cached block frees it (system calls), and freeing a buffer recycles its blocks (the
/// allocator's locks).
#[must_use = "let it go with finish(), outside the state lock"]
#[derive(Default)]
struct Gone {
    blocks: Vec<u64>,
    held: Vec<gst::Buffer>,
}

impl Gone {
    fn add(&mut self, other: Gone) {
        self.blocks.extend(other.blocks);
        self.held.extend(other.held);
    }

    /// Retires the blocks first (so that none is recycled when the buffers go), then lets
    /// the buffers go.
    fn finish(self) {
        for id in &self.blocks {
            memfd::retire_block(*id);
        }
        drop(self.held);
    }
}

struct Shared {
    consumers: Vec<Consumer>,
    /// What the consumers' held buffers pin, all together.
    pins: Pins,
    /// Processes that may not connect until then (they misbehaved).
    penalties: std::collections::HashMap<i32, Instant>,
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
    fn new(limits: Limits) -> Shared {
        Shared {
            consumers: Vec::new(),
            pins: Pins::default(),
            penalties: Default::default(),
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
        }
    }

    fn replay(&self) -> Vec<Vec<u8>> {
        [&self.caps, &self.stream_start, &self.segment]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Drops consumer `id`: every block it was ever sent is to be retired (it may keep them
    /// mapped, so they must never carry a later frame), then the buffers it held let go,
    /// both by the caller outside the lock.
    fn drop_consumer(&mut self, id: u64, why: &str) -> Gone {
        let Some(pos) = self.consumers.iter().position(|c| c.peer.id == id) else {
            return Gone::default();
        };
        let c = self.consumers.remove(pos);
        self.stats.consumers_dropped += 1;
        let gone = self.leave(c.peer);
        gst::warning!(
            CAT,
            "dropping consumer {}: {} ({} outstanding buffers released, their blocks retired)",
            id,
            why,
            gone.held.len()
        );
        gone
    }

    /// Refuses consumer `id`, which said hello when `max-consumers` had said theirs.
    fn refuse(&mut self, id: u64) -> Gone {
        let Some(pos) = self.consumers.iter().position(|c| c.peer.id == id) else {
            return Gone::default();
        };
        let c = self.consumers.remove(pos);
        // Accepted, then refused: counted in both (connected - dropped stays who is here).
        self.stats.consumers_refused += 1;
        self.stats.consumers_dropped += 1;
        gst::warning!(
            CAT,
            "refusing consumer {}: max-consumers said hello first",
            id
        );
        self.leave(c.peer)
    }

    /// Drops consumer `id` for misbehaving: its process may not connect for [`PENALTY`].
    fn misbehaved(&mut self, id: u64, why: &str) -> Gone {
        let pid = self
            .consumers
            .iter()
            .find(|c| c.peer.id == id)
            .and_then(|c| c.pid);
        if let Some(pid) = pid {
            self.penalties.insert(pid, Instant::now() + PENALTY);
        }
        self.drop_consumer(id, why)
    }

    /// Consumers that said hello.
    fn ready(&self) -> usize {
        self.consumers.iter().filter(|c| c.peer.ready()).count()
    }

    /// `peer` left: what it pinned is unpinned; its blocks and buffers are returned.
    fn leave(&mut self, peer: Peer<gst::Buffer>) -> Gone {
        let (blocks, held) = peer.leave();
        self.stats.blocks_retired += blocks.len() as u64;
        let mut gone = Gone {
            blocks,
            held: Vec::with_capacity(held.len()),
        };
        for (buffer, ids) in held {
            self.pins.unpin(&ids);
            gone.held.push(buffer);
        }
        gone
    }

    /// Drops the consumers that pin the most bytes until a buffer in `blocks` fits in the
    /// bounds of what all may pin (or nobody holds anything any more).
    fn make_room(&mut self, blocks: &[BlockWire]) -> Gone {
        let mut gone = Gone::default();
        loop {
            let (n, bytes) = self.pins.added(blocks);
            let (max_n, max_bytes) = (self.limits.max_pinned_blocks, self.limits.max_pinned_bytes);
            if self.pins.count() + n <= max_n && self.pins.bytes() + bytes <= max_bytes {
                return gone;
            }
            let worst = self
                .consumers
                .iter()
                .filter(|c| c.peer.outstanding() > 0)
                .map(|c| (self.pins.bytes_of(&c.peer.held_blocks()), c.peer.id))
                .max();
            let Some((held, id)) = worst else {
                return gone;
            };
            let why = format!(
                "consumers pin {} blocks, {} bytes together (at most {max_n}, {max_bytes}): \
                 it pins the most, {held} bytes",
                self.pins.count(),
                self.pins.bytes()
            );
            gone.add(self.drop_consumer(id, &why));
        }
    }
}

type State = Arc<(Mutex<Shared>, Condvar)>;

fn lock(state: &State) -> MutexGuard<'_, Shared> {
    state.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// The consumers a buffer goes to: id, socket, what to send each.
type Targets = Vec<(u64, Arc<OwnedFd>, Plan)>;

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
    /// Flushing or stopping: a send waiting for room gives up (looked at without the lock).
    stopping: Arc<AtomicBool>,
    /// The stream's id for MemfdMemory's recycling: its blocks go back to its own allocator.
    stream: u64,
}

impl Server {
    /// Listens at `path` (permissions `mode`) and starts serving consumers.
    /// `stream`: the id of the stream's MemfdMemory allocator (`MemfdAllocator::stream`).
    pub fn start(path: &Path, mode: u32, limits: Limits, stream: u64) -> Result<Server, String> {
        use std::os::unix::fs::MetadataExt;
        let listener = socket::listen_at(path, mode)?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| socket::path_error(path, e))?;
        let state: State = Arc::new((Mutex::new(Shared::new(limits)), Condvar::new()));
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("memfdsink".into())
            .spawn(move || serve(thread_state, listener))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        Ok(Server {
            state,
            thread: Some(thread),
            bound: (path.to_owned(), meta.dev(), meta.ino()),
            freed: memfd::subscribe_freed(stream),
            stopping: Arc::new(AtomicBool::new(false)),
            stream,
        })
    }

    pub fn set_limits(&self, limits: Limits) {
        lock(&self.state).limits = limits;
        self.state.1.notify_all();
    }

    pub fn set_flushing(&self, flushing: bool) {
        self.stopping.store(flushing, Ordering::Relaxed);
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
            pinned_blocks: s.pins.count() as u64,
            pinned_bytes: s.pins.bytes(),
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
    /// those that do not read for `full_timeout`, otherwise those whose queue stays full
    /// until one shared deadline). A flush interrupts the waits.
    fn broadcast(&self, packet: &[u8]) {
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
                let mut gone = Gone::default();
                for id in full {
                    gone.add(s.drop_consumer(id, &why));
                }
                drop(s);
                gone.finish();
                return Ok(());
            }
            s = self.wait(s, Duration::from_millis(50));
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
        let (limits, targets, gone) = self.enlist(&mut out, room.min(MAX_IDS));
        gone.finish();
        let plain = wire::encode_buffer(&out.wire);
        let deadline = Instant::now() + limits.full_timeout;
        let (mut sent_bytes, mut announced) = (0, 0);
        for (id, sock, plan) in targets {
            let sent = self.send_one(&sock, &out, &plan, &plain, limits.on_full, deadline);
            let kind = sent.as_ref().err().map(std::io::Error::kind);
            match sent {
                Ok(()) => {
                    sent_bytes += size;
                    announced += plan.announce.len() as u64;
                }
                // Its socket queue is full (it does not read: treated like a full
                // consumer), or the stream is flushing: it misses this buffer.
                Err(_)
                    if kind == Some(std::io::ErrorKind::Interrupted)
                        || (kind == Some(std::io::ErrorKind::WouldBlock)
                            && limits.on_full == OnFull::Drop) =>
                {
                    let mut s = lock(&self.state);
                    let held = s
                        .consumers
                        .iter_mut()
                        .find(|c| c.peer.id == id)
                        .and_then(|c| c.peer.unsend(out.wire.id, plan));
                    if let Some((_, ids)) = &held {
                        s.pins.unpin(ids);
                    }
                    s.stats.buffers_dropped += 1;
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
    /// may pin; returns the limits, the consumers to send it to, and the consumers dropped.
    fn enlist(&self, out: &mut Outgoing<'_>, max_retire: usize) -> (Limits, Targets, Gone) {
        let freed = self.freed.take();
        let blocks: Vec<BlockWire> = out.blocks.iter().map(|(b, _)| *b).collect();
        let mut s = lock(&self.state);
        let limits = s.limits.clone();
        let (max_out, on_full) = (limits.max_outstanding, limits.on_full);
        let mut gone = s.make_room(&blocks);
        s.next_buffer += 1;
        let id = s.next_buffer;
        out.wire.id = id;
        let mut targets = Vec::with_capacity(s.consumers.len());
        let mut full = Vec::new();
        let Shared {
            consumers, pins, ..
        } = &mut *s;
        for c in consumers.iter_mut().filter(|c| c.peer.ready()) {
            c.peer.freed(&freed);
            // Record first, send second: a release can never arrive before its record.
            match c
                .peer
                .plan(id, &blocks, out.hold.clone(), max_out, max_retire)
            {
                Ok(plan) => {
                    pins.pin(&blocks);
                    targets.push((c.peer.id, c.sock.clone(), plan));
                }
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
                    gone.add(s.drop_consumer(cid, &why));
                }
            }
        }
        (limits, targets, gone)
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
        self.stopping.store(true, Ordering::Relaxed);
        lock(&self.state).running = false;
        self.state.1.notify_all();
        let _ = thread.join();
        let gone = {
            let mut s = lock(&self.state);
            let consumers = std::mem::take(&mut s.consumers);
            let mut gone = Gone::default();
            for c in consumers {
                gone.add(s.leave(c.peer));
            }
            gone
        };
        gone.finish();
        // Blocks of this stream kept for its allocator: no consumer maps them any more.
        memfd::forget_stream(self.stream);
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

/// Accepts a new consumer: refused when `max_consumers` have said hello or its process is
/// penalized (then `true`: the listener rests a moment, so that a process reconnecting in a
/// loop costs at most [`REFUSED_PAUSE`] of work per refusal); otherwise it is sent caps,
/// stream-start and segment (outside the state lock, without blocking) and then joins.
fn accept(state: &State, sock: OwnedFd) -> bool {
    let pid = rustix::net::sockopt::socket_peercred(&sock)
        .ok()
        .map(|c| c.pid.as_raw_nonzero().get());
    let mut sent_generation = None;
    loop {
        let (generation, replay) = {
            let mut s = lock(state);
            let now = Instant::now();
            s.penalties.retain(|_, until| *until > now);
            let penalized = pid.is_some_and(|p| s.penalties.contains_key(&p));
            let max = s.limits.max_consumers;
            if s.ready() >= max || penalized {
                s.stats.consumers_refused += 1;
                let why = if penalized {
                    "its process misbehaved less than a second ago".to_owned()
                } else {
                    format!("{} connected (max-consumers)", s.ready())
                };
                gst::warning!(CAT, "refusing a consumer: {}", why);
                return penalized; // closing the socket tells it
            }
            if sent_generation == Some(s.replay_generation) {
                // Room for it among the connections waiting for their hello.
                let pending: Vec<(Instant, u64)> = s
                    .consumers
                    .iter()
                    .filter(|c| !c.peer.ready())
                    .map(|c| (c.since, c.peer.id))
                    .collect();
                let oldest = pending.iter().min().map(|&(_, id)| id);
                let gone = match oldest {
                    Some(id) if pending.len() >= MAX_PENDING => {
                        s.drop_consumer(id, "the oldest of too many connections without hello")
                    }
                    _ => Gone::default(),
                };
                s.next_consumer += 1;
                let id = s.next_consumer;
                s.consumers.push(Consumer {
                    peer: Peer::new(id),
                    sock: Arc::new(sock),
                    since: now,
                    pid,
                });
                s.stats.consumers_connected += 1;
                gst::info!(CAT, "consumer {} connected", id);
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

/// Handles one packet from consumer `id`; returns what it let go (to be let go outside the
/// state lock: freeing buffers recycles their blocks). A release costs O(ids); one that
/// names a buffer the consumer does not hold (a flood, or a confused peer) drops it.
fn handle(s: &mut Shared, id: u64, packet: &[u8]) -> Gone {
    let Some(c) = s.consumers.iter_mut().find(|c| c.peer.id == id) else {
        return Gone::default();
    };
    match Message::decode(packet) {
        Ok(Message::Release(ids)) => {
            let mut gone = Gone::default();
            for b in &ids {
                let Some((buffer, blocks)) = c.peer.release(*b) else {
                    let why = format!("released buffer {b}, which it does not hold");
                    gone.add(s.misbehaved(id, &why));
                    return gone;
                };
                s.pins.unpin(&blocks);
                s.stats.released += 1;
                gone.held.push(buffer);
            }
            return gone;
        }
        Ok(Message::Hello { max_blocks }) if !c.peer.ready() => {
            if let Err(e) = c.peer.hello(max_blocks, MAX_MEMORIES) {
                return s.misbehaved(id, &format!("unusable hello: {e}"));
            }
            // Past max-consumers (counted by hellos): refused now, it said hello too late.
            if s.ready() > s.limits.max_consumers {
                return s.refuse(id);
            }
        }
        Ok(other) => return s.misbehaved(id, &format!("unexpected message {other:?}")),
        Err(e) => return s.misbehaved(id, &format!("bad message: {e}")),
    }
    Gone::default()
}

/// Reads what consumer `id` has sent (up to [`DRAIN`] packets).
fn drain(state: &State, id: u64, sock: &OwnedFd, buf: &mut [u8]) {
    for _ in 0..DRAIN {
        let got = socket::recv(sock.as_fd(), buf, Duration::ZERO);
        let mut s = lock(state);
        let gone = match got {
            Ok(socket::Received::Packet(n, _fds)) => handle(&mut s, id, &buf[..n]),
            Ok(socket::Received::Idle) => break,
            Ok(socket::Received::Closed) => s.drop_consumer(id, "hung up"),
            Err(e) => s.drop_consumer(id, &e),
        };
        let left = !s.consumers.iter().any(|c| c.peer.id == id);
        drop(s);
        gone.finish();
        if left {
            break;
        }
    }
    state.1.notify_all();
}

/// Drops the connections that have not said hello within [`HELLO_TIMEOUT`].
fn expire_hellos(state: &State) {
    let gone = {
        let mut s = lock(state);
        let late: Vec<u64> = s
            .consumers
            .iter()
            .filter(|c| !c.peer.ready() && c.since.elapsed() >= HELLO_TIMEOUT)
            .map(|c| c.peer.id)
            .collect();
        let mut gone = Gone::default();
        for id in late {
            let why = format!("no hello within {} ms", HELLO_TIMEOUT.as_millis());
            gone.add(s.misbehaved(id, &why));
        }
        gone
    };
    gone.finish();
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
        expire_hellos(&state);
        let listen = listen_pause.is_none_or(|t| Instant::now() >= t);
        let Some(ready) = wait_ready(&listener, listen, &socks) else {
            continue;
        };
        if listen {
            listen_pause = None;
        }
        if ready[0] {
            match socket::accept(&listener) {
                Ok(sock) => {
                    if accept(&state, sock) {
                        listen_pause = Some(Instant::now() + REFUSED_PAUSE);
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{AddressFamily, SocketFlags, SocketType};

    fn limits() -> Limits {
        Limits {
            max_consumers: 8,
            max_outstanding: 64,
            on_full: OnFull::Drop,
            full_timeout: Duration::from_secs(1),
            max_pinned_blocks: 4,
            max_pinned_bytes: 1 << 20,
        }
    }

    fn state() -> State {
        gst::init().unwrap();
        Arc::new((Mutex::new(Shared::new(limits())), Condvar::new()))
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

    /// Adds consumer `id` (after its hello when `ready`); returns our end of its socket.
    fn consumer(s: &mut Shared, id: u64, ready: bool, since: Instant) -> OwnedFd {
        let (ours, theirs) = socket_pair();
        let mut peer = Peer::new(id);
        if ready {
            peer.hello(64, MAX_MEMORIES).unwrap();
        }
        s.consumers.push(Consumer {
            peer,
            sock: Arc::new(theirs),
            since,
            pid: Some(1_000_000 + id as i32),
        });
        ours
    }

    fn blk(id: u64, size: u64) -> BlockWire {
        BlockWire { id, size }
    }

    /// Consumer `cid` is sent buffer `id` (held as `buffer`), in `blocks`.
    fn hold(s: &mut Shared, cid: u64, id: u64, blocks: &[BlockWire], buffer: &gst::Buffer) {
        let c = s.consumers.iter_mut().find(|c| c.peer.id == cid).unwrap();
        c.peer
            .plan(id, blocks, buffer.clone(), 64, MAX_IDS)
            .unwrap();
        s.pins.pin(blocks);
    }

    fn release(ids: &[u64]) -> Vec<u8> {
        Message::Release(ids.to_vec()).encode()
    }

    fn ids(s: &Shared) -> Vec<u64> {
        s.consumers.iter().map(|c| c.peer.id).collect()
    }

    #[test]
    fn a_release_unpins_its_blocks_and_lets_the_buffer_go_outside_the_lock() {
        let state = state();
        let buffer = gst::Buffer::new();
        let mut s = lock(&state);
        let _ours = consumer(&mut s, 1, true, Instant::now());
        hold(&mut s, 1, 7, &[blk(10, 100)], &buffer);
        // Writable: held by us alone (a reference count of one).
        assert_eq!((s.pins.count(), buffer.is_writable()), (1, false));
        let gone = handle(&mut s, 1, &release(&[7]));
        // Still held by what the handler returned: nothing is freed under the lock.
        assert_eq!((s.pins.count(), s.stats.released), (0, 1));
        assert!(!buffer.is_writable());
        drop(s);
        gone.finish();
        assert!(buffer.is_writable());
        assert_eq!(ids(&lock(&state)), vec![1]);
    }

    #[test]
    fn a_release_of_a_buffer_it_does_not_hold_drops_the_consumer() {
        let state = state();
        let buffer = gst::Buffer::new();
        let mut s = lock(&state);
        let _ours = consumer(&mut s, 1, true, Instant::now());
        hold(&mut s, 1, 7, &[blk(10, 100)], &buffer);
        let gone = handle(&mut s, 1, &release(&[7, 99]));
        assert!(ids(&s).is_empty(), "a flooding consumer stays connected");
        assert_eq!((s.pins.count(), s.stats.consumers_dropped), (0, 1));
        assert_eq!(gone.held.len(), 1);
        assert_eq!(gone.blocks, vec![10], "its blocks are to be retired");
    }

    #[test]
    fn past_the_pinned_bound_the_consumer_pinning_the_most_bytes_is_dropped() {
        let state = state();
        let buffer = gst::Buffer::new();
        let mut s = lock(&state);
        let _a = consumer(&mut s, 1, true, Instant::now());
        let _b = consumer(&mut s, 2, true, Instant::now());
        hold(&mut s, 1, 1, &[blk(1, 100)], &buffer);
        hold(
            &mut s,
            2,
            2,
            &[blk(2, 1000), blk(3, 1000), blk(4, 1000)],
            &buffer,
        );
        assert_eq!(s.pins.count(), 4);
        // A buffer in blocks already pinned needs no room.
        let gone = s.make_room(&[blk(2, 1000)]);
        assert!(gone.held.is_empty() && ids(&s) == vec![1, 2]);
        // A new block would be the fifth (max-pinned-blocks 4): consumer 2 goes.
        let gone = s.make_room(&[blk(5, 10)]);
        assert_eq!(ids(&s), vec![1]);
        assert_eq!((gone.held.len(), s.pins.count()), (1, 1));
        drop(s);
        gone.finish();
        // The byte bound too: 1 MiB.
        let mut s = lock(&state);
        let gone = s.make_room(&[blk(6, 1 << 20)]);
        assert!(ids(&s).is_empty(), "{:?}", ids(&s));
        drop(s);
        gone.finish();
        // With nobody left to drop, the stream goes on regardless.
        let gone = lock(&state).make_room(&[blk(7, 2 << 20)]);
        assert!(gone.held.is_empty());
    }

    #[test]
    fn a_process_whose_connection_misbehaved_cannot_connect_for_a_while() {
        let state = state();
        let _ours = consumer(&mut lock(&state), 1, true, Instant::now());
        let gone = handle(&mut lock(&state), 1, b"garbage");
        gone.finish();
        assert!(lock(&state).penalties.contains_key(&1_000_001));
        // A connection from this very process (a socket pair's peer is us), penalized now.
        let me = rustix::process::getpid().as_raw_nonzero().get();
        lock(&state).penalties.insert(me, Instant::now() + PENALTY);
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
        for _ in 0..MAX_PENDING + 3 {
            let (ours, theirs) = socket_pair();
            std::mem::forget(ours); // kept open: the connection stays
            assert!(!accept(&state, theirs));
        }
        let s = lock(&state);
        assert_eq!(
            s.consumers.len(),
            MAX_PENDING,
            "the oldest silent ones were dropped"
        );
        assert_eq!(s.consumers.first().unwrap().peer.id, 4);
        assert_eq!(s.stats.consumers_refused, 0);
        drop(s);
        // The first to say hello takes the one slot; the next is refused.
        let mut s = lock(&state);
        let hello = Message::Hello { max_blocks: 64 }.encode();
        handle(&mut s, 4, &hello).finish();
        handle(&mut s, 5, &hello).finish();
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
        {
            let mut s = lock(&state);
            let long_ago = Instant::now() - HELLO_TIMEOUT;
            let _silent = consumer(&mut s, 1, false, long_ago);
            let _new = consumer(&mut s, 2, false, Instant::now());
            let _greeted = consumer(&mut s, 3, true, long_ago);
        }
        expire_hellos(&state);
        assert_eq!(ids(&lock(&state)), vec![2, 3]);
    }

    #[test]
    fn hang_ups_and_empty_packets_drop_the_consumer_when_drained() {
        let state = state();
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (hangs_up, empty) = {
            let mut s = lock(&state);
            (
                consumer(&mut s, 1, true, Instant::now()),
                consumer(&mut s, 2, true, Instant::now()),
            )
        };
        let theirs = |id| {
            let s = lock(&state);
            s.consumers
                .iter()
                .find(|c| c.peer.id == id)
                .unwrap()
                .sock
                .clone()
        };
        let (sock1, sock2) = (theirs(1), theirs(2));
        drop(hangs_up);
        socket::send(empty.as_fd(), &[], &[]).unwrap();
        drain(&state, 1, &sock1, &mut buf);
        drain(&state, 2, &sock2, &mut buf);
        let s = lock(&state);
        assert!(ids(&s).is_empty());
        assert_eq!(s.stats.consumers_dropped, 2);
    }

    #[test]
    fn a_send_waiting_for_room_gives_up_when_told_to_stop() {
        let state = state();
        let ours = consumer(&mut lock(&state), 1, true, Instant::now());
        let sock = lock(&state).consumers[0].sock.clone();
        // Fill the consumer's queue: it reads nothing.
        let packet = vec![0u8; 4096];
        while socket::try_send(sock.as_fd(), &packet, &[]).is_ok() {}
        let far = Instant::now() + Duration::from_secs(60);
        let start = Instant::now();
        let stopped = socket::send_until(sock.as_fd(), &packet, &[], far, || true);
        assert_eq!(stopped.unwrap_err().kind(), std::io::ErrorKind::Interrupted);
        let soon = Instant::now() + Duration::from_millis(100);
        let timed_out = socket::send_until(sock.as_fd(), &packet, &[], soon, || false);
        assert_eq!(
            timed_out.unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(ours);
    }
}
