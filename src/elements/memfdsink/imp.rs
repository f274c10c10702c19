// SPDX-License-Identifier: MPL-2.0
//! `memfdsink`: serves a stream to consumers (`memfdsrc` in other processes) over a Unix
//! `SOCK_SEQPACKET` socket. Each memory goes as a descriptor: sealed memfd memory as it is
//! (zero-copy), anything else copied once into `MemfdMemory`. A block sent to a consumer is
//! kept (a buffer reference) until that consumer releases it or goes away.
//!
//! A service thread accepts consumers (replaying caps, stream-start and segment to late ones,
//! outside the state lock), reads their release messages, and drops the ones that hang up or
//! misbehave. At most `max-consumers` are served; more are refused at once.
//!
//! Consumers are not trusted. Each has its own bound of unreleased buffers
//! (`max-outstanding`); what happens when one reaches it is `on-full`: its buffers are dropped
//! (the default: the others go on at full rate), it is disconnected, or the stream waits for it
//! (lossless back-pressure, for consumers you trust; after `full-timeout` it is disconnected).
//! Except in `wait` mode, sends never block: a consumer that does not read its socket misses
//! buffers, or is dropped. Blocks a consumer held when it went away are retired (never
//! recycled), so it cannot see later frames through them; the memfds are sealed against
//! writes (`F_SEAL_FUTURE_WRITE`), so no consumer can change what the others read.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;

use crate::allocator::memfd::{self, is_sealed_memfd, memfd_allocator};
use crate::elements::memfdproto::{self as proto, BufferWire, EventKind, MemWire, Message};
use crate::elements::post_stats;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memfdsink",
        gst::DebugColorFlags::empty(),
        Some("memkit cross-process sink (memfd descriptors over a Unix socket)"),
    )
});

const DEFAULT_MODE: u32 = 0o600;
const DEFAULT_MIN_CONSUMERS: u32 = 1;
const DEFAULT_MAX_CONSUMERS: u32 = 32;
const DEFAULT_MAX_OUTSTANDING: u32 = 64;
const DEFAULT_ON_FULL: OnFull = OnFull::Drop;
const DEFAULT_FULL_TIMEOUT_MS: u32 = 10_000;
/// A blocking send (`on-full=wait`) to a consumer that does not read gives up after this.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Otherwise an event (caps, segment, EOS) waits this long for room in a consumer's queue
/// before that consumer, which does not read, is dropped.
const EVENT_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// What memfdsink does with a consumer that holds `max-outstanding` buffers unreleased.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstMemfdSinkOnFull")]
pub enum OnFull {
    #[enum_value(
        name = "Drop: the consumer misses buffers until it releases some; the others go on",
        nick = "drop"
    )]
    Drop = 0,
    #[enum_value(
        name = "Disconnect: the consumer is dropped at once",
        nick = "disconnect"
    )]
    Disconnect = 1,
    #[enum_value(
        name = "Wait: the stream waits for the consumer (lossless), up to full-timeout, then \
                drops it",
        nick = "wait"
    )]
    Wait = 2,
}

#[derive(Debug, Clone)]
struct Settings {
    socket_path: Option<String>,
    socket_mode: u32,
    min_consumers: u32,
    max_consumers: u32,
    max_outstanding: u32,
    on_full: OnFull,
    full_timeout_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket_path: None,
            socket_mode: DEFAULT_MODE,
            min_consumers: DEFAULT_MIN_CONSUMERS,
            max_consumers: DEFAULT_MAX_CONSUMERS,
            max_outstanding: DEFAULT_MAX_OUTSTANDING,
            on_full: DEFAULT_ON_FULL,
            full_timeout_ms: DEFAULT_FULL_TIMEOUT_MS,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Stats {
    buffers: u64,
    buffers_copied: u64,
    bytes_copied: u64,
    bytes_sent: u64,
    consumers_connected: u64,
    consumers_dropped: u64,
    consumers_refused: u64,
    buffers_dropped: u64,
    blocks_retired: u64,
    released: u64,
}

impl Stats {
    fn to_structure(&self, consumers: usize, outstanding: usize) -> gst::Structure {
        gst::Structure::builder("memfdsink")
            .field("buffers", self.buffers)
            .field("buffers-copied", self.buffers_copied)
            .field("bytes-copied", self.bytes_copied)
            .field("bytes-sent", self.bytes_sent)
            .field("consumers", consumers as u64)
            .field("consumers-connected", self.consumers_connected)
            .field("consumers-dropped", self.consumers_dropped)
            .field("consumers-refused", self.consumers_refused)
            .field("buffers-dropped", self.buffers_dropped)
            .field("blocks-retired", self.blocks_retired)
            .field("released", self.released)
            .field("outstanding", outstanding as u64)
            .build()
    }
}

struct Client {
    id: u64,
    sock: Arc<OwnedFd>,
    /// Buffers sent and not yet released, by message id: they keep their blocks alive.
    outstanding: HashMap<u64, gst::Buffer>,
}

#[derive(Default)]
struct Shared {
    clients: Vec<Client>,
    /// Packets a consumer that connects late gets first: caps, stream-start, segment.
    caps: Option<Vec<u8>>,
    stream_start: Option<Vec<u8>>,
    segment: Option<Vec<u8>>,
    /// Bumped whenever caps, stream-start or segment change: a consumer being accepted
    /// replays them again if they changed while it was sent the previous ones.
    replay_generation: u64,
    stats: Stats,
    next_client: u64,
    next_buffer: u64,
    running: bool,
    flushing: bool,
    /// The socket we bound: its path, device and inode (to unlink only that one at stop).
    path: Option<(PathBuf, u64, u64)>,
}

impl Shared {
    fn outstanding(&self) -> usize {
        self.clients.iter().map(|c| c.outstanding.len()).sum()
    }

    fn replay(&self) -> Vec<Vec<u8>> {
        [&self.caps, &self.stream_start, &self.segment]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

#[derive(Default)]
pub struct MemfdSink {
    settings: Mutex<Settings>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[glib::object_subclass]
impl ObjectSubclass for MemfdSink {
    const NAME: &'static str = "GstMemfdSink";
    type Type = super::MemfdSink;
    type ParentType = gst_base::BaseSink;
}

/// Drops a consumer. The blocks of the buffers it still held are retired: it may keep them
/// mapped, so they must never carry a later frame.
fn drop_client(shared: &mut Shared, id: u64, why: &str, obj: &impl IsA<gst::Object>) {
    if let Some(pos) = shared.clients.iter().position(|c| c.id == id) {
        let c = shared.clients.remove(pos);
        shared.stats.consumers_dropped += 1;
        shared.stats.blocks_retired += retire_blocks(&c);
        gst::warning!(
            CAT,
            obj = obj,
            "dropping consumer {}: {} ({} outstanding buffers released, their blocks retired)",
            id,
            why,
            c.outstanding.len()
        );
    }
}

/// Retires the blocks of every buffer `client` holds; returns how many were recyclable.
fn retire_blocks(client: &Client) -> u64 {
    client
        .outstanding
        .values()
        .flat_map(|b| b.iter_memories())
        .filter(|m| memfd::retire(m))
        .count() as u64
}

/// Unlinks the socket at `path` if it is still the one we bound (same device and inode):
/// never another memfdsink's socket that took the path over, nor a file put there.
fn remove_own_socket(path: &std::path::Path, dev: u64, ino: u64, obj: &impl IsA<gst::Object>) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() && m.dev() == dev && m.ino() == ino => {
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => gst::warning!(
            CAT,
            obj = obj,
            "{} is no longer our socket: left in place",
            path.display()
        ),
        Err(_) => {}
    }
}

/// Accepts a new consumer: refused when `max-consumers` are connected; otherwise it is sent
/// caps, stream-start and segment (outside the state lock, without blocking) and then joins.
fn accept_client(
    shared: &Arc<(Mutex<Shared>, Condvar)>,
    sock: OwnedFd,
    element: &super::MemfdSink,
) {
    let (max, on_full) = {
        let s = element.imp().settings.lock().unwrap();
        (s.max_consumers as usize, s.on_full)
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
            let mut s = shared.0.lock().unwrap();
            if s.clients.len() >= max {
                s.stats.consumers_refused += 1;
                gst::warning!(
                    CAT,
                    obj = element,
                    "refusing a consumer: {} connected (max-consumers)",
                    s.clients.len()
                );
                return; // closing the socket tells it
            }
            if sent_generation == Some(s.replay_generation) {
                s.next_client += 1;
                let id = s.next_client;
                s.clients.push(Client {
                    id,
                    sock: Arc::new(sock),
                    outstanding: HashMap::new(),
                });
                s.stats.consumers_connected += 1;
                gst::info!(CAT, obj = element, "consumer {} connected", id);
                shared.1.notify_all();
                return;
            }
            (s.replay_generation, s.replay())
        };
        // A new socket's queue is empty: these few packets never wait.
        if !replay
            .iter()
            .all(|p| proto::try_send(sock.as_fd(), p, &[]).is_ok())
        {
            gst::debug!(CAT, obj = element, "a new consumer left during the replay");
            return;
        }
        sent_generation = Some(generation);
    }
}

/// The service thread: accepts consumers and reads their releases until `running` is false.
fn serve(
    shared: Arc<(Mutex<Shared>, Condvar)>,
    listener: OwnedFd,
    obj: glib::WeakRef<super::MemfdSink>,
) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut buf = vec![0u8; proto::MAX_MESSAGE];
    let mut listen_pause: Option<std::time::Instant> = None;
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    loop {
        let socks: Vec<(u64, Arc<OwnedFd>)> = {
            let s = shared.0.lock().unwrap();
            if !s.running {
                break;
            }
            s.clients.iter().map(|c| (c.id, c.sock.clone())).collect()
        };
        let Some(element) = obj.upgrade() else {
            break;
        };
        let mut fds = Vec::with_capacity(socks.len() + 1);
        let listen = listen_pause.is_none_or(|t| std::time::Instant::now() >= t);
        fds.push(PollFd::new(
            &listener,
            if listen {
                PollFlags::IN
            } else {
                PollFlags::empty()
            },
        ));
        for (_, s) in &socks {
            fds.push(PollFd::new(s.as_ref(), PollFlags::IN));
        }
        if poll(&mut fds, Some(&tick)).unwrap_or(0) == 0 {
            continue;
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        if listen {
            listen_pause = None;
        }
        if ready[0] {
            match proto::accept(&listener) {
                Ok(sock) => accept_client(&shared, sock, &element),
                Err(e) => {
                    gst::warning!(CAT, obj = element, "accept failed: {}", e);
                    // Out of descriptors (EMFILE/ENFILE): the connection stays pending and
                    // the listener readable; leave it alone for a while instead of spinning.
                    listen_pause = Some(std::time::Instant::now() + Duration::from_millis(200));
                }
            }
        }
        for (i, (id, sock)) in socks.iter().enumerate() {
            if !ready[i + 1] {
                continue;
            }
            let got = proto::recv(sock.as_fd(), &mut buf, Duration::ZERO);
            let mut s = shared.0.lock().unwrap();
            match got {
                Ok(proto::Received::Packet(n, _fds)) => match Message::decode(&buf[..n]) {
                    Ok(Message::Release(bid)) => {
                        if let Some(c) = s.clients.iter_mut().find(|c| c.id == *id)
                            && c.outstanding.remove(&bid).is_some()
                        {
                            s.stats.released += 1;
                        }
                    }
                    Ok(other) => drop_client(
                        &mut s,
                        *id,
                        &format!("unexpected message {other:?}"),
                        &element,
                    ),
                    Err(e) => drop_client(&mut s, *id, &format!("bad message: {e}"), &element),
                },
                Ok(proto::Received::Closed) => drop_client(&mut s, *id, "hung up", &element),
                Ok(proto::Received::Idle) => {}
                Err(e) => drop_client(&mut s, *id, &e, &element),
            }
            shared.1.notify_all();
        }
    }
}

impl MemfdSink {
    /// The buffer to send: its memories as sealed memfds (copying the others once into
    /// `MemfdMemory`), with the wire description and the descriptors.
    fn prepare(
        &self,
        buffer: &gst::Buffer,
    ) -> Result<(gst::Buffer, Vec<MemWire>, Vec<OwnedFd>), gst::FlowError> {
        let n = buffer.n_memory();
        if n > proto::MAX_MEMORIES {
            gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                (
                    "Buffer has {} memories, at most {} can be sent",
                    n,
                    proto::MAX_MEMORIES
                )
            );
            return Err(gst::FlowError::Error);
        }
        let needs_copy = buffer.iter_memories().any(|m| !is_sealed_memfd(m));
        let buffer = if needs_copy {
            let mut out = gst::Buffer::new();
            let mut copied = 0u64;
            {
                let o = out.get_mut().expect("new buffer");
                buffer
                    .copy_into(
                        o,
                        gst::BufferCopyFlags::FLAGS
                            | gst::BufferCopyFlags::TIMESTAMPS
                            | gst::BufferCopyFlags::META,
                        ..,
                    )
                    .map_err(|_| gst::FlowError::Error)?;
                for mem in buffer.iter_memories() {
                    if is_sealed_memfd(mem) {
                        o.append_memory(mem.to_owned());
                        continue;
                    }
                    let map = mem.map_readable().map_err(|_| {
                        gst::element_imp_error!(
                            self,
                            gst::StreamError::Failed,
                            ("A memory of the buffer cannot be mapped for reading")
                        );
                        gst::FlowError::Error
                    })?;
                    let mut copy = memfd_allocator().alloc(map.size(), None).map_err(|e| {
                        gst::element_imp_error!(
                            self,
                            gst::ResourceError::NoSpaceLeft,
                            ("Cannot allocate MemfdMemory: {}", e)
                        );
                        gst::FlowError::Error
                    })?;
                    copy.get_mut()
                        .expect("new memory")
                        .map_writable()
                        .map_err(|_| gst::FlowError::Error)?
                        .copy_from_slice(map.as_slice());
                    copied += map.size() as u64;
                    o.append_memory(copy);
                }
            }
            let mut s = self.shared.0.lock().unwrap();
            s.stats.buffers_copied += 1;
            s.stats.bytes_copied += copied;
            out
        } else {
            buffer.clone()
        };
        let mut wires = Vec::with_capacity(n);
        let mut fds = Vec::with_capacity(n);
        for mem in buffer.iter_memories() {
            fds.push(memfd::dup_fd(mem).map_err(|e| {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::Failed,
                    ("Cannot duplicate a memory's descriptor: {}", e)
                );
                gst::FlowError::Error
            })?);
            wires.push(MemWire {
                offset: mem.offset() as u64,
                size: mem.size() as u64,
                maxsize: mem.maxsize() as u64,
            });
        }
        Ok((buffer, wires, fds))
    }

    /// Sends `packet` (an event) to every consumer; drops the ones that fail (in `wait` mode
    /// after the send timeout, otherwise those whose queue stays full until the deadline).
    fn broadcast(&self, packet: &[u8]) {
        let wait = self.settings.lock().unwrap().on_full == OnFull::Wait;
        let socks: Vec<(u64, Arc<OwnedFd>)> = {
            let s = self.shared.0.lock().unwrap();
            s.clients.iter().map(|c| (c.id, c.sock.clone())).collect()
        };
        // One deadline for all: however many consumers do not read, an event costs the
        // stream at most EVENT_SEND_TIMEOUT.
        let deadline = std::time::Instant::now() + EVENT_SEND_TIMEOUT;
        for (id, sock) in socks {
            let sent = if wait {
                proto::send(sock.as_fd(), packet, &[])
            } else {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                proto::send_within(sock.as_fd(), packet, &[], left)
            };
            if let Err(e) = sent {
                let mut s = self.shared.0.lock().unwrap();
                drop_client(&mut s, id, &format!("send failed: {e}"), &*self.obj());
            }
        }
    }

    /// `on-full=wait`: waits while a consumer holds `max_out` buffers unreleased; one that
    /// releases nothing for `timeout` is dropped.
    fn wait_for_room(&self, max_out: usize, timeout: Duration) -> Result<(), gst::FlowError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut s = self.shared.0.lock().unwrap();
        loop {
            if s.flushing {
                return Err(gst::FlowError::Flushing);
            }
            let full: Vec<u64> = s
                .clients
                .iter()
                .filter(|c| c.outstanding.len() >= max_out)
                .map(|c| c.id)
                .collect();
            if full.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                for id in full {
                    let why = format!(
                        "released nothing for {} ms with {max_out} buffers outstanding",
                        timeout.as_millis()
                    );
                    drop_client(&mut s, id, &why, &*self.obj());
                }
                return Ok(());
            }
            s = self
                .shared
                .1
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap()
                .0;
        }
    }

    /// Records buffer `id` as outstanding for every consumer with room for it, applying
    /// `on-full` to the others; returns the consumers to send it to.
    fn enlist(
        &self,
        buffer: &gst::Buffer,
        max_out: usize,
        on_full: OnFull,
    ) -> (u64, Vec<(u64, Arc<OwnedFd>)>) {
        let mut s = self.shared.0.lock().unwrap();
        s.next_buffer += 1;
        let id = s.next_buffer;
        let mut targets = Vec::with_capacity(s.clients.len());
        let mut full = Vec::new();
        for c in s.clients.iter_mut() {
            if c.outstanding.len() >= max_out {
                full.push(c.id);
                continue;
            }
            // Record first, send second: a release can never arrive before its record.
            c.outstanding.insert(id, buffer.clone());
            targets.push((c.id, c.sock.clone()));
        }
        for cid in full {
            match on_full {
                OnFull::Drop => {
                    s.stats.buffers_dropped += 1;
                    gst::trace!(CAT, imp = self, "consumer {} is full: buffer dropped", cid);
                }
                OnFull::Disconnect | OnFull::Wait => {
                    let why = format!("holds {max_out} buffers unreleased (max-outstanding)");
                    drop_client(&mut s, cid, &why, &*self.obj());
                }
            }
        }
        (id, targets)
    }
}

impl MemfdSink {
    /// Holds the stream until at least `min` consumers are connected.
    fn wait_for_consumers(&self, min: usize) -> Result<(), gst::FlowError> {
        let mut s = self.shared.0.lock().unwrap();
        while s.clients.len() < min && !s.flushing && s.running {
            s = self
                .shared
                .1
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        if s.flushing {
            return Err(gst::FlowError::Flushing);
        }
        Ok(())
    }
}

/// The wire description of `buffer` (the one sent, its memories sealed memfds) with the metas
/// of `input` (the buffer as it came).
fn wire_buffer(
    input: &gst::Buffer,
    buffer: &gst::Buffer,
    id: u64,
    mems: Vec<MemWire>,
) -> BufferWire {
    let refs = input
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .take(proto::MAX_METAS)
        .map(|m| {
            (
                m.reference().to_string(),
                m.timestamp().nseconds(),
                m.duration().map_or(u64::MAX, |d| d.nseconds()),
            )
        })
        .collect();
    let video = input
        .iter_meta::<gst_video::VideoMeta>()
        .take(proto::MAX_METAS)
        .map(|m| proto::VideoMetaWire {
            flags: m.video_frame_flags().bits(),
            format: m.format().to_str().to_string(),
            width: m.width(),
            height: m.height(),
            offsets: m.offset().iter().map(|&o| o as u64).collect(),
            strides: m.stride().to_vec(),
        })
        .collect();
    BufferWire {
        video,
        refs,
        id,
        pts: buffer.pts().map_or(u64::MAX, |t| t.nseconds()),
        dts: buffer.dts().map_or(u64::MAX, |t| t.nseconds()),
        duration: buffer.duration().map_or(u64::MAX, |t| t.nseconds()),
        offset: buffer.offset(),
        offset_end: buffer.offset_end(),
        flags: buffer.flags().bits(),
        mems,
    }
}

impl ObjectImpl for MemfdSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("socket-path")
                    .nick("Socket path")
                    .blurb("Path of the Unix socket consumers connect to (required)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("socket-mode")
                    .nick("Socket mode")
                    .blurb("Permission bits of the socket (default: the owning user only)")
                    .maximum(0o777)
                    .default_value(DEFAULT_MODE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("min-consumers")
                    .nick("Minimum consumers")
                    .blurb("Hold each buffer until at least this many consumers are connected")
                    .maximum(1024)
                    .default_value(DEFAULT_MIN_CONSUMERS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-consumers")
                    .nick("Maximum consumers")
                    .blurb(
                        "Consumers served at once; more connections are refused (closed at once)",
                    )
                    .minimum(1)
                    .maximum(1024)
                    .default_value(DEFAULT_MAX_CONSUMERS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-outstanding")
                    .nick("Maximum outstanding")
                    .blurb(
                        "Buffers each consumer may hold unreleased; on-full says what happens then",
                    )
                    .minimum(1)
                    .maximum(65536)
                    .default_value(DEFAULT_MAX_OUTSTANDING)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("on-full", DEFAULT_ON_FULL)
                    .nick("On full")
                    .blurb(
                        "What to do with a consumer holding max-outstanding buffers: drop its \
                         buffers, disconnect it, or wait for it (lossless; one consumer can \
                         then stall the stream up to full-timeout)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("full-timeout")
                    .nick("Full timeout")
                    .blurb(
                        "on-full=wait: milliseconds to wait for a full consumer before dropping it",
                    )
                    .maximum(3_600_000)
                    .default_value(DEFAULT_FULL_TIMEOUT_MS)
                    .mutable_playing()
                    .build(),
                crate::elements::stats_pspec(
                    "Buffers sent, buffers and bytes copied into MemfdMemory, bytes sent, \
                     consumers now/connected/dropped/refused, buffers dropped for full \
                     consumers, blocks retired, buffers released and outstanding",
                ),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "socket-path" => settings.socket_path = value.get().expect("type checked upstream"),
            "socket-mode" => settings.socket_mode = value.get().expect("type checked upstream"),
            "min-consumers" => {
                settings.min_consumers = value.get().expect("type checked upstream");
                self.shared.1.notify_all();
            }
            "max-outstanding" => {
                settings.max_outstanding = value.get().expect("type checked upstream")
            }
            "max-consumers" => settings.max_consumers = value.get().expect("type checked upstream"),
            "on-full" => settings.on_full = value.get().expect("type checked upstream"),
            "full-timeout" => {
                settings.full_timeout_ms = value.get().expect("type checked upstream")
            }
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "socket-path" => settings.socket_path.to_value(),
            "socket-mode" => settings.socket_mode.to_value(),
            "min-consumers" => settings.min_consumers.to_value(),
            "max-outstanding" => settings.max_outstanding.to_value(),
            "max-consumers" => settings.max_consumers.to_value(),
            "on-full" => settings.on_full.to_value(),
            "full-timeout" => settings.full_timeout_ms.to_value(),
            "stats" => {
                let s = self.shared.0.lock().unwrap();
                s.stats
                    .to_structure(s.clients.len(), s.outstanding())
                    .to_value()
            }
            _ => unimplemented!(),
        }
    }
}

impl GstObjectImpl for MemfdSink {}

impl ElementImpl for MemfdSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Memfd cross-process sink",
                "Sink/Network/Memory",
                "Serves a stream to memfdsrc in other processes over a Unix socket, each \
                 memory as a sealed memfd descriptor (zero-copy for MemfdMemory)",
                "memkit developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![crate::elements::any_caps_template(
                "sink",
                gst::PadDirection::Sink,
            )]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for MemfdSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let Some(path) = settings.socket_path.clone() else {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ["memfdsink needs socket-path"]
            ));
        };
        let path = PathBuf::from(path);
        let listener = proto::listen_at(&path, settings.socket_mode).map_err(|e| {
            gst::error_msg!(gst::ResourceError::OpenWrite, ("Cannot serve on {}", e))
        })?;
        let bound = {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::symlink_metadata(&path).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::OpenWrite,
                    ("Cannot serve on {}", proto::path_error(&path, e))
                )
            })?;
            (path.clone(), meta.dev(), meta.ino())
        };
        {
            let mut s = self.shared.0.lock().unwrap();
            *s = Shared {
                running: true,
                path: Some(bound),
                ..Shared::default()
            };
        }
        let shared = self.shared.clone();
        let weak = self.obj().downgrade();
        let handle = std::thread::Builder::new()
            .name("memfdsink".into())
            .spawn(move || serve(shared, listener, weak))
            .map_err(|e| {
                gst::error_msg!(gst::ResourceError::Failed, ("Cannot start a thread: {}", e))
            })?;
        *self.thread.lock().unwrap() = Some(handle);
        gst::info!(CAT, imp = self, "serving on {}", path.display());
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let path = {
            let mut s = self.shared.0.lock().unwrap();
            s.running = false;
            s.path.take()
        };
        self.shared.1.notify_all();
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
        {
            let mut s = self.shared.0.lock().unwrap();
            // Consumers still connected may still map what they hold: retire those blocks.
            let clients = std::mem::take(&mut s.clients);
            s.stats.blocks_retired += clients.iter().map(retire_blocks).sum::<u64>();
            s.caps = None;
            s.stream_start = None;
            s.segment = None;
        }
        if let Some((p, dev, ino)) = path {
            remove_own_socket(&p, dev, ino, &*self.obj());
        }
        Ok(())
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        self.shared.0.lock().unwrap().flushing = true;
        self.shared.1.notify_all();
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        self.shared.0.lock().unwrap().flushing = false;
        Ok(())
    }

    fn propose_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        // Video metas cross, so upstream may lay planes out with padded strides; and blocks
        // from MemfdMemory are sent without a copy.
        query.add_allocation_meta::<gst_video::VideoMeta>(None);
        let allocator: gst::Allocator = memfd_allocator().upcast();
        crate::elements::propose_allocator_first(
            query,
            &allocator,
            &gst::AllocationParams::default(),
        );
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let packet = Message::Caps(caps.to_string()).encode();
        if packet.len() > proto::MAX_MESSAGE {
            return Err(gst::loggable_error!(CAT, "caps too large to send"));
        }
        {
            let mut s = self.shared.0.lock().unwrap();
            s.caps = Some(packet.clone());
            s.replay_generation += 1;
        }
        self.broadcast(&packet);
        Ok(())
    }

    fn event(&self, event: gst::Event) -> bool {
        let kind = match event.view() {
            gst::EventView::StreamStart(_) => Some(EventKind::StreamStart),
            gst::EventView::Segment(_) => Some(EventKind::Segment),
            gst::EventView::Eos(_) => Some(EventKind::Eos),
            _ => None,
        };
        if let Some(kind) = kind {
            let text = event.structure().map(|s| s.to_string()).unwrap_or_default();
            let packet = Message::Event(kind, text).encode();
            {
                let mut s = self.shared.0.lock().unwrap();
                s.replay_generation += 1;
                match kind {
                    EventKind::StreamStart => s.stream_start = Some(packet.clone()),
                    EventKind::Segment => s.segment = Some(packet.clone()),
                    EventKind::Eos => {
                        let stats = s.stats.to_structure(s.clients.len(), s.outstanding());
                        drop(s);
                        post_stats(&*self.obj(), stats);
                    }
                }
            }
            self.broadcast(&packet);
        }
        self.parent_event(event)
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = self.settings.lock().unwrap().clone();
        let max_out = settings.max_outstanding as usize;
        self.wait_for_consumers(settings.min_consumers as usize)?;
        // Metas are read from the buffer as it came: a copy into MemfdMemory keeps every
        // memory's size, so a video meta's plane offsets stay right, but core does not copy
        // memory-tagged metas (such as GstVideoMeta) into a buffer it did not copy memory to.
        let input = buffer.clone();
        let (buffer, mems, fds) = self.prepare(buffer)?;
        if settings.on_full == OnFull::Wait {
            let timeout = Duration::from_millis(settings.full_timeout_ms.into());
            self.wait_for_room(max_out, timeout)?;
        }
        let (id, targets) = self.enlist(&buffer, max_out, settings.on_full);
        let packet = Message::Buffer(wire_buffer(&input, &buffer, id, mems)).encode();
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        for (cid, sock) in targets {
            let sent = if settings.on_full == OnFull::Wait {
                proto::send(sock.as_fd(), &packet, &borrowed)
            } else {
                proto::try_send(sock.as_fd(), &packet, &borrowed)
            };
            let mut s = self.shared.0.lock().unwrap();
            match sent {
                Ok(()) => s.stats.bytes_sent += buffer.size() as u64,
                // Its socket queue is full: it does not read. Treated like a full consumer.
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && settings.on_full == OnFull::Drop =>
                {
                    if let Some(c) = s.clients.iter_mut().find(|c| c.id == cid) {
                        c.outstanding.remove(&id);
                    }
                    s.stats.buffers_dropped += 1;
                }
                Err(e) => drop_client(&mut s, cid, &format!("send: {e}"), &*self.obj()),
            }
        }
        self.shared.0.lock().unwrap().stats.buffers += 1;
        Ok(gst::FlowSuccess::Ok)
    }
}
