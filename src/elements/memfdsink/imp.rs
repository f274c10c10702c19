// SPDX-License-Identifier: MPL-2.0
//! `memfdsink`: serves a stream to consumers (`memfdsrc` in other processes) over a Unix
//! `SOCK_SEQPACKET` socket. Each memory goes as a descriptor: sealed memfd memory as it is
//! (zero-copy), anything else copied once into `MemfdMemory`. A block sent to a consumer is
//! kept (a buffer reference) until that consumer releases it or goes away.
//!
//! A service thread accepts consumers (replaying caps, stream-start and segment to late ones),
//! reads their release messages, and drops the ones that hang up or misbehave.

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
const DEFAULT_MAX_OUTSTANDING: u32 = 64;
/// A consumer that does not read for this long is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Settings {
    socket_path: Option<String>,
    socket_mode: u32,
    min_consumers: u32,
    max_outstanding: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket_path: None,
            socket_mode: DEFAULT_MODE,
            min_consumers: DEFAULT_MIN_CONSUMERS,
            max_outstanding: DEFAULT_MAX_OUTSTANDING,
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
    stats: Stats,
    next_client: u64,
    next_buffer: u64,
    running: bool,
    flushing: bool,
    path: Option<PathBuf>,
}

impl Shared {
    fn outstanding(&self) -> usize {
        self.clients.iter().map(|c| c.outstanding.len()).sum()
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

/// Drops a consumer (its outstanding buffers are released with it).
fn drop_client(shared: &mut Shared, id: u64, why: &str, obj: &impl IsA<gst::Object>) {
    if let Some(pos) = shared.clients.iter().position(|c| c.id == id) {
        let c = shared.clients.remove(pos);
        shared.stats.consumers_dropped += 1;
        gst::warning!(
            CAT,
            obj = obj,
            "dropping consumer {}: {} ({} outstanding buffers released)",
            id,
            why,
            c.outstanding.len()
        );
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
        fds.push(PollFd::new(&listener, PollFlags::IN));
        for (_, s) in &socks {
            fds.push(PollFd::new(s.as_ref(), PollFlags::IN));
        }
        if poll(&mut fds, Some(&tick)).unwrap_or(0) == 0 {
            continue;
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        if ready[0] {
            match proto::accept(&listener) {
                Ok(sock) => {
                    let _ = rustix::net::sockopt::set_socket_timeout(
                        &sock,
                        rustix::net::sockopt::Timeout::Send,
                        Some(SEND_TIMEOUT),
                    );
                    let mut s = shared.0.lock().unwrap();
                    let replay: Vec<Vec<u8>> = [&s.caps, &s.stream_start, &s.segment]
                        .into_iter()
                        .flatten()
                        .cloned()
                        .collect();
                    let ok = replay
                        .iter()
                        .all(|p| proto::send(sock.as_fd(), p, &[]).is_ok());
                    if ok {
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
                    }
                }
                Err(e) => gst::debug!(CAT, obj = element, "accept failed: {}", e),
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

    /// Sends `packet` to every consumer; drops the ones that fail.
    fn broadcast(&self, packet: &[u8]) {
        let socks: Vec<(u64, Arc<OwnedFd>)> = {
            let s = self.shared.0.lock().unwrap();
            s.clients.iter().map(|c| (c.id, c.sock.clone())).collect()
        };
        for (id, sock) in socks {
            if let Err(e) = proto::send(sock.as_fd(), packet, &[]) {
                let mut s = self.shared.0.lock().unwrap();
                drop_client(&mut s, id, &format!("send failed: {e}"), &*self.obj());
            }
        }
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
                glib::ParamSpecUInt::builder("max-outstanding")
                    .nick("Maximum outstanding")
                    .blurb(
                        "Buffers a consumer may hold unreleased: the stream waits for it, and \
                         drops it after 10 s without a release",
                    )
                    .minimum(1)
                    .maximum(65536)
                    .default_value(DEFAULT_MAX_OUTSTANDING)
                    .mutable_playing()
                    .build(),
                crate::elements::stats_pspec(
                    "Buffers sent, buffers and bytes copied into MemfdMemory, bytes sent, \
                     consumers now/connected/dropped, buffers released and outstanding",
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
        {
            let mut s = self.shared.0.lock().unwrap();
            *s = Shared {
                running: true,
                path: Some(path.clone()),
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
            s.clients.clear();
            s.caps = None;
            s.stream_start = None;
            s.segment = None;
        }
        if let Some(p) = path {
            let _ = std::fs::remove_file(p);
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
        self.shared.0.lock().unwrap().caps = Some(packet.clone());
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
        let (min, max_out) = {
            let s = self.settings.lock().unwrap();
            (s.min_consumers as usize, s.max_outstanding as usize)
        };
        // Hold the buffer until enough consumers are there.
        {
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
        }
        // Metas are read from the buffer as it came: a copy into MemfdMemory keeps every
        // memory's size, so a video meta's plane offsets stay right, but core does not copy
        // memory-tagged metas (such as GstVideoMeta) into a buffer it did not copy memory to.
        let input = buffer.clone();
        let (buffer, mems, fds) = self.prepare(buffer)?;
        // Back-pressure: wait while a consumer holds max-outstanding buffers unreleased; one
        // that releases nothing for SEND_TIMEOUT is dropped.
        {
            let deadline = std::time::Instant::now() + SEND_TIMEOUT;
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
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    for id in full {
                        drop_client(
                            &mut s,
                            id,
                            &format!(
                                "released nothing for {} s with {max_out} buffers outstanding",
                                SEND_TIMEOUT.as_secs()
                            ),
                            &*self.obj(),
                        );
                    }
                    break;
                }
                s = self
                    .shared
                    .1
                    .wait_timeout(s, Duration::from_millis(50))
                    .unwrap()
                    .0;
            }
        }
        let (id, targets) = {
            let mut s = self.shared.0.lock().unwrap();
            s.next_buffer += 1;
            let id = s.next_buffer;
            // Record first, send second: a release can never arrive before its record.
            let mut targets = Vec::new();
            for c in s.clients.iter_mut() {
                c.outstanding.insert(id, buffer.clone());
                targets.push((c.id, c.sock.clone()));
            }
            (id, targets)
        };
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
        let packet = Message::Buffer(BufferWire {
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
        })
        .encode();
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        for (cid, sock) in targets {
            let result =
                proto::send(sock.as_fd(), &packet, &borrowed).map_err(|e| format!("send: {e}"));
            let mut s = self.shared.0.lock().unwrap();
            match result {
                Ok(()) => s.stats.bytes_sent += buffer.size() as u64,
                Err(why) => drop_client(&mut s, cid, &why, &*self.obj()),
            }
        }
        self.shared.0.lock().unwrap().stats.buffers += 1;
        Ok(gst::FlowSuccess::Ok)
    }
}
