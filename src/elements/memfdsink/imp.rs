// SPDX-License-Identifier: MPL-2.0
//! `memfdsink`: serves a stream to consumers (`memfdsrc` in other processes) over a Unix
//! socket: a thin element over [`crate::transport::server`]. Each memory of a buffer goes as
//! a range of a `MemfdMemory` block of this stream (made by the allocator the sink proposes),
//! the block itself (its descriptor) only the first time a consumer needs it; any other
//! memory (private MemfdMemory, another stream's block, a received one, system memory) is
//! copied once into a block of the stream: a consumer maps the whole block, and the bytes
//! around another block's memory are not the stream's to show.
//!
//! Consumers are not trusted: see the transport for the bounds (`max-outstanding`,
//! `max-consumers`, the consumer's own bound of mapped blocks), `on-full`, and why a block a
//! consumer was ever sent is retired when it leaves.

use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;

use crate::allocator::memfd::{self, MemfdAllocator};
use crate::elements::common::post_stats;
use crate::transport::server::{self, Limits, Server};
use crate::transport::wire::{self, BlockWire, EventKind};

use super::describe::describe;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memfdsink",
        gst::DebugColorFlags::empty(),
        Some("memkit cross-process sink (memfd blocks over a Unix socket)"),
    )
});

const DEFAULT_MODE: u32 = 0o600;
const DEFAULT_MIN_CONSUMERS: u32 = 1;
const DEFAULT_MAX_CONSUMERS: u32 = 32;
const DEFAULT_MAX_OUTSTANDING: u32 = 64;
const DEFAULT_ON_FULL: OnFull = OnFull::Drop;
const DEFAULT_FULL_TIMEOUT_MS: u32 = 10_000;
/// 0: what the process can afford (`server::auto_pinned_blocks`, `auto_pinned_bytes`).
const DEFAULT_MAX_PINNED_BLOCKS: u32 = 0;
const DEFAULT_MAX_PINNED_BYTES: u64 = 0;

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
    max_pinned_blocks: u32,
    max_pinned_bytes: u64,
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
            max_pinned_blocks: DEFAULT_MAX_PINNED_BLOCKS,
            max_pinned_bytes: DEFAULT_MAX_PINNED_BYTES,
        }
    }
}

impl Settings {
    fn limits(&self) -> Limits {
        Limits {
            max_consumers: self.max_consumers as usize,
            max_outstanding: self.max_outstanding as usize,
            on_full: match self.on_full {
                OnFull::Drop => server::OnFull::Drop,
                OnFull::Disconnect => server::OnFull::Disconnect,
                OnFull::Wait => server::OnFull::Wait,
            },
            full_timeout: Duration::from_millis(self.full_timeout_ms.into()),
            max_pinned_blocks: match self.max_pinned_blocks {
                0 => server::auto_pinned_blocks(),
                n => n as usize,
            },
            max_pinned_bytes: match self.max_pinned_bytes {
                0 => server::auto_pinned_bytes(),
                n => n,
            },
        }
    }
}

/// What the element counts itself; the rest comes from the server.
#[derive(Debug, Default, Clone)]
struct Copies {
    buffers: u64,
    bytes: u64,
}

fn stats_structure(s: &server::Stats, c: &Copies) -> gst::Structure {
    gst::Structure::builder("memfdsink")
        .field("buffers", s.buffers)
        .field("buffers-copied", c.buffers)
        .field("bytes-copied", c.bytes)
        .field("bytes-sent", s.bytes_sent)
        .field("blocks-announced", s.blocks_announced)
        .field("consumers", s.consumers)
        .field("consumers-connected", s.consumers_connected)
        .field("consumers-dropped", s.consumers_dropped)
        .field("consumers-refused", s.consumers_refused)
        .field("buffers-dropped", s.buffers_dropped)
        .field("blocks-retired", s.blocks_retired)
        .field("released", s.released)
        .field("outstanding", s.outstanding)
        .field("pinned-blocks", s.pinned_blocks)
        .field("pinned-bytes", s.pinned_bytes)
        .build()
}

/// From `start()` to `stop()`: the server consumers connect to.
#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started {
        server: std::sync::Arc<Server>,
    },
}

#[derive(Default)]
pub struct MemfdSink {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    copies: Mutex<Copies>,
    /// Server stats kept after stop, for the `stats` property.
    last_stats: Mutex<server::Stats>,
    /// The allocator proposed upstream: this stream's own (see `MemfdAllocator::for_stream`).
    allocator: std::sync::OnceLock<MemfdAllocator>,
}

#[glib::object_subclass]
impl ObjectSubclass for MemfdSink {
    const NAME: &'static str = "GstMemfdSink";
    type Type = super::MemfdSink;
    type ParentType = gst_base::BaseSink;
}

impl MemfdSink {
    fn allocator(&self) -> &MemfdAllocator {
        self.allocator.get_or_init(MemfdAllocator::for_stream)
    }

    fn stream(&self) -> u64 {
        self.allocator().stream()
    }

    fn server(&self) -> Option<std::sync::Arc<Server>> {
        match &*self.state.lock().unwrap() {
            State::Started { server } => Some(server.clone()),
            State::Stopped => None,
        }
    }

    fn stats(&self) -> gst::Structure {
        let s = self
            .server()
            .map_or_else(|| self.last_stats.lock().unwrap().clone(), |s| s.stats());
        stats_structure(&s, &self.copies.lock().unwrap())
    }

    fn error(&self, err: gst::ErrorMessage) -> gst::FlowError {
        self.post_error_message(err);
        gst::FlowError::Error
    }

    /// `buffer` as sent: memories that are not blocks of this stream copied once into one.
    /// A block sent as it is is frozen first (`memfd::freeze`): never written again until it
    /// goes back through MemfdMemory, even when a buffer pool holds it.
    fn sendable(&self, buffer: &gst::Buffer) -> Result<gst::Buffer, gst::FlowError> {
        let n = buffer.n_memory();
        if n > wire::MAX_MEMORIES {
            return Err(self.error(gst::error_msg!(
                gst::StreamError::Format,
                (
                    "Buffer has {} memories, at most {} can be sent",
                    n,
                    wire::MAX_MEMORIES
                )
            )));
        }
        let stream = self.stream();
        let as_is =
            |m: &gst::MemoryRef| memfd::block_of(m, stream).is_some() && memfd::freeze(m, stream);
        if buffer.iter_memories().all(as_is) {
            return Ok(buffer.clone());
        }
        let mut out = gst::Buffer::new();
        let mut copied = 0u64;
        {
            let o = out.get_mut().expect("new buffer");
            // Each memory is copied whole: the video meta's layout holds in the copy.
            crate::elements::common::copy_metadata(buffer, o).map_err(|_| {
                self.error(gst::error_msg!(
                    gst::CoreError::Failed,
                    ("Cannot copy metas")
                ))
            })?;
            // References (`MemoryRef::to_owned` would copy the memory: a private copy).
            for mem in (0..n).filter_map(|i| buffer.memory(i)) {
                if as_is(&mem) {
                    o.append_memory(mem);
                    continue;
                }
                copied += mem.size() as u64;
                o.append_memory(self.copy_memory(&mem)?);
            }
        }
        let mut c = self.copies.lock().unwrap();
        c.buffers += 1;
        c.bytes += copied;
        Ok(out)
    }

    fn copy_memory(&self, mem: &gst::MemoryRef) -> Result<gst::Memory, gst::FlowError> {
        let map = mem.map_readable().map_err(|_| {
            self.error(gst::error_msg!(
                gst::StreamError::Failed,
                ("A memory of the buffer cannot be mapped for reading")
            ))
        })?;
        let mut copy = self
            .allocator()
            .alloc_memfd(map.size(), None)
            .map_err(|e| {
                self.error(gst::error_msg!(
                    gst::ResourceError::NoSpaceLeft,
                    ("Cannot allocate MemfdMemory: {}", e)
                ))
            })?;
        let mut dst = copy
            .get_mut()
            .expect("new memory")
            .map_writable()
            .map_err(|_| {
                self.error(gst::error_msg!(
                    gst::ResourceError::Failed,
                    ("A new MemfdMemory block does not map for writing")
                ))
            })?;
        dst.copy_from_slice(map.as_slice());
        drop(dst);
        // A copy like gst_memory_copy's, for the tracer's report ("COPIED BY").
        crate::attribution::copied(map.size());
        Ok(copy)
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
                glib::ParamSpecUInt::builder("max-pinned-blocks")
                    .nick("Maximum pinned blocks")
                    .blurb(
                        "Blocks (one descriptor each) all consumers together may keep alive \
                         with buffers they hold; past it a consumer of a peer pinning more \
                         than its share is dropped, or the buffer is missed; a user whose \
                         departed connections had more blocks retired (draining at this many \
                         a second) is refused (0: half of the descriptor limit)",
                    )
                    .maximum(1 << 20)
                    .default_value(DEFAULT_MAX_PINNED_BLOCKS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("max-pinned-bytes")
                    .nick("Maximum pinned bytes")
                    .blurb(
                        "Bytes of blocks all consumers together may keep alive with buffers \
                         they hold; past it a consumer of a peer pinning more than its share \
                         is dropped, or the buffer is missed (0: a quarter of the machine's \
                         memory)",
                    )
                    .default_value(DEFAULT_MAX_PINNED_BYTES)
                    .mutable_playing()
                    .build(),
                crate::elements::common::stats_pspec(
                    "Buffers sent, buffers and bytes copied into MemfdMemory, bytes sent, \
                     consumers now/connected/dropped/refused, buffers dropped for full \
                     consumers, blocks retired, buffers released and outstanding, blocks \
                     and bytes the consumers pin",
                ),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        // Read once, at start: refused afterwards, as gst-plugins-rs' filesrc refuses a new
        // location (the value would otherwise be shown but not used).
        if matches!(pspec.name(), "socket-path" | "socket-mode" | "on-full")
            && self.server().is_some()
        {
            gst::error!(
                CAT,
                imp = self,
                "changing {} of a started memfdsink is not supported: ignored",
                pspec.name()
            );
            return;
        }
        let mut settings = self.settings.lock().unwrap();
        let v = || value.get::<u32>().expect("type checked upstream");
        match pspec.name() {
            "socket-path" => settings.socket_path = value.get().expect("type checked upstream"),
            "socket-mode" => settings.socket_mode = v(),
            "min-consumers" => settings.min_consumers = v(),
            "max-outstanding" => settings.max_outstanding = v(),
            "max-consumers" => settings.max_consumers = v(),
            "on-full" => settings.on_full = value.get().expect("type checked upstream"),
            "full-timeout" => settings.full_timeout_ms = v(),
            "max-pinned-blocks" => settings.max_pinned_blocks = v(),
            "max-pinned-bytes" => {
                settings.max_pinned_bytes = value.get().expect("type checked upstream")
            }
            _ => unimplemented!(),
        }
        let limits = settings.limits();
        drop(settings);
        if let Some(server) = self.server() {
            server.set_limits(limits);
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return self.stats().to_value();
        }
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "socket-path" => settings.socket_path.to_value(),
            "socket-mode" => settings.socket_mode.to_value(),
            "min-consumers" => settings.min_consumers.to_value(),
            "max-outstanding" => settings.max_outstanding.to_value(),
            "max-consumers" => settings.max_consumers.to_value(),
            "on-full" => settings.on_full.to_value(),
            "full-timeout" => settings.full_timeout_ms.to_value(),
            "max-pinned-blocks" => settings.max_pinned_blocks.to_value(),
            "max-pinned-bytes" => settings.max_pinned_bytes.to_value(),
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
            vec![crate::elements::common::any_caps_template(
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
        let server = Server::start(
            &path,
            settings.socket_mode,
            settings.limits(),
            self.stream(),
        )
        .map_err(|e| gst::error_msg!(gst::ResourceError::OpenWrite, ("Cannot serve on {}", e)))?;
        *self.copies.lock().unwrap() = Copies::default();
        *self.state.lock().unwrap() = State::Started {
            server: std::sync::Arc::new(server),
        };
        gst::info!(CAT, imp = self, "serving on {}", path.display());
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let State::Started { server } = std::mem::take(&mut *self.state.lock().unwrap()) else {
            return Ok(());
        };
        // The streaming thread has stopped: ours is normally the last reference (else the
        // server stops when the last one goes).
        match std::sync::Arc::try_unwrap(server) {
            Ok(server) => {
                let (stats, unlinked) = server.stop();
                *self.last_stats.lock().unwrap() = stats;
                if let Err(e) = unlinked {
                    gst::warning!(CAT, imp = self, "{}", e);
                }
            }
            Err(server) => *self.last_stats.lock().unwrap() = server.stats(),
        }
        Ok(())
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(server) = self.server() {
            server.set_flushing(true);
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(server) = self.server() {
            server.set_flushing(false);
        }
        Ok(())
    }

    fn propose_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        // Video metas cross, so upstream may lay planes out with padded strides; and blocks
        // from MemfdMemory are sent without a copy.
        query.add_allocation_meta::<gst_video::VideoMeta>(None);
        let allocator: gst::Allocator = self.allocator().clone().upcast();
        crate::elements::common::propose_allocator_first(
            query,
            &allocator,
            &gst::AllocationParams::default(),
        );
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let server = self
            .server()
            .ok_or_else(|| gst::loggable_error!(CAT, "caps before start"))?;
        server
            .caps(&caps.to_string())
            .map_err(|e| gst::loggable_error!(CAT, "{}", e))
    }

    fn event(&self, event: gst::Event) -> bool {
        let kind = match event.view() {
            gst::EventView::StreamStart(_) => Some(EventKind::StreamStart),
            gst::EventView::Segment(_) => Some(EventKind::Segment),
            gst::EventView::Eos(_) => Some(EventKind::Eos),
            _ => None,
        };
        if let (Some(kind), Some(server)) = (kind, self.server()) {
            if kind == EventKind::Eos {
                post_stats(&*self.obj(), self.stats());
            }
            let text = event.structure().map(|s| s.to_string()).unwrap_or_default();
            server.event(kind, text);
        }
        self.parent_event(event)
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Some(server) = self.server() else {
            return Err(gst::FlowError::Flushing);
        };
        let (min_consumers, on_full) = {
            let s = self.settings.lock().unwrap();
            (s.min_consumers as usize, s.on_full)
        };
        let flushing = |_| gst::FlowError::Flushing;
        server.wait_for_consumers(min_consumers).map_err(flushing)?;
        let sent = self.sendable(buffer)?;
        let Some((out, dropped)) = describe(buffer, &sent, self.stream()) else {
            return Err(self.error(gst::error_msg!(
                gst::ResourceError::Failed,
                ("A memory of the buffer cannot be sent as a sealed MemfdMemory block")
            )));
        };
        if dropped > 0 {
            gst::warning!(
                CAT,
                imp = self,
                "{} metas of a buffer do not fit in one message: they stay behind",
                dropped
            );
        }
        if on_full == OnFull::Wait {
            let blocks: Vec<BlockWire> = out.blocks.iter().map(|(b, _)| *b).collect();
            server.wait_for_room(&blocks).map_err(flushing)?;
        }
        server.send(out);
        Ok(gst::FlowSuccess::Ok)
    }
}
