// SPDX-License-Identifier: MPL-2.0
//! `memfdsrc`: receives a stream from a `memfdsink` in another process: a thin element over
//! [`crate::transport::client`]. Each block the producer announces is mapped once (read-only
//! `MemfdMemory`) and kept in a registry of at most `max-blocks`; each memory of a buffer is a
//! share of its block, so nothing is copied or mapped per buffer. When the last memory of a
//! buffer is freed, a release tells the producer it may reuse the buffer's blocks.
//!
//! The producer is not trusted: every message is validated before use (caps must be fixed,
//! segments valid, blocks sealed, no larger than `max-memory-size` and no more than
//! `max-blocks`, memories inside their block, video metas must describe planes that lie
//! inside their memory). Releases are queued and sent without ever blocking the thread that
//! frees a buffer; a producer that stops reading them is an error once
//! [`MAX_PENDING_RELEASES`] are waiting.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;

use crate::elements::common::post_stats;
use crate::transport::client::{Connection, MAX_PENDING_RELEASES, Registry, Release};
use crate::transport::closer::Fds;
use crate::transport::socket::{self, Received};
use crate::transport::wire::{self as proto, BufferWire, EventKind, Message};

use super::check::add_video_metas;

mod connect;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memfdsrc",
        gst::DebugColorFlags::empty(),
        Some("memkit cross-process source (memfd blocks over a Unix socket)"),
    )
});

const DEFAULT_TIMEOUT_MS: u32 = 10_000;
const DEFAULT_MAX_MEMORY_SIZE: u64 = 1 << 30;
const DEFAULT_MAX_BLOCKS: u32 = 512;
/// `reconnect=true`: the wait before the first reconnection after a buffer, doubled up to
/// [`RECONNECT_MAX_DELAY`] while the producer keeps hanging up before sending one.
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(10);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Settings {
    socket_path: Option<String>,
    timeout_ms: u32,
    reconnect: bool,
    max_memory_size: u64,
    max_blocks: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket_path: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            reconnect: false,
            max_memory_size: DEFAULT_MAX_MEMORY_SIZE,
            max_blocks: DEFAULT_MAX_BLOCKS,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Stats {
    buffers: u64,
    bytes: u64,
    reconnects: u64,
    blocks_announced: u64,
    blocks_retired: u64,
    blocks_mapped: u64,
}

impl Stats {
    fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder("memfdsrc")
            .field("buffers", self.buffers)
            .field("bytes", self.bytes)
            .field("reconnects", self.reconnects)
            .field("blocks-announced", self.blocks_announced)
            .field("blocks-retired", self.blocks_retired)
            .field("blocks-mapped", self.blocks_mapped)
            .build()
    }
}

/// A connection to the producer and the blocks it announced on it.
struct Link {
    conn: Arc<Connection>,
    registry: Registry<gst::Memory>,
    /// Where packets are received.
    packet: Vec<u8>,
    /// The last receive found a packet: the next one looks before it polls.
    busy: bool,
}

pub struct MemfdSrc {
    settings: Mutex<Settings>,
    link: Mutex<Option<Link>>,
    /// The negotiated video caps, to check received video metas against.
    video_info: Mutex<Option<gst_video::VideoInfo>>,
    stats: Mutex<Stats>,
    flushing: AtomicBool,
    /// The wait before the next reconnection.
    backoff: Mutex<Duration>,
}

impl Default for MemfdSrc {
    fn default() -> Self {
        MemfdSrc {
            settings: Mutex::default(),
            link: Mutex::default(),
            video_info: Mutex::default(),
            stats: Mutex::default(),
            flushing: AtomicBool::new(false),
            backoff: Mutex::new(RECONNECT_FIRST_DELAY),
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for MemfdSrc {
    const NAME: &'static str = "GstMemfdSrc";
    type Type = super::MemfdSrc;
    type ParentType = gst_base::PushSrc;
}

impl MemfdSrc {
    fn path(&self) -> String {
        self.settings
            .lock()
            .unwrap()
            .socket_path
            .clone()
            .unwrap_or_default()
    }

    fn fail(&self, what: &str) -> gst::FlowError {
        gst::element_imp_error!(
            self,
            gst::ResourceError::Read,
            ("{}", what),
            ["producer socket {}", self.path()]
        );
        gst::FlowError::Error
    }

    fn make_buffer(
        &self,
        w: BufferWire,
        fds: Fds,
        link: &mut Link,
    ) -> Result<gst::Buffer, gst::FlowError> {
        let max_size = self.settings.lock().unwrap().max_memory_size;
        let release = Release::new(w.id, link.conn.clone());
        let before = link.registry.len();
        let memories = link
            .registry
            .receive(&w, fds, max_size, &release)
            .map_err(|e| self.fail(&format!("Unusable memory from the producer: {e}")))?;
        {
            let mut stats = self.stats.lock().unwrap();
            stats.blocks_announced += w.blocks.len() as u64;
            stats.blocks_retired += (before + w.blocks.len() - link.registry.len()) as u64;
            stats.blocks_mapped = link.registry.len() as u64;
        }
        let mut buffer = gst::Buffer::new();
        {
            let b = buffer.get_mut().expect("new buffer");
            for mem in memories {
                b.append_memory(mem);
            }
            let time = |v: u64| (v != u64::MAX).then(|| gst::ClockTime::from_nseconds(v));
            b.set_pts(time(w.pts));
            b.set_dts(time(w.dts));
            b.set_duration(time(w.duration));
            b.set_offset(w.offset);
            b.set_offset_end(w.offset_end);
            // Core's and the video flags (interlaced, top field first, ...), which lie above
            // core's; never the mini-object bits below them (lock semantics) from a peer.
            let flags = crate::elements::common::crossing_flags(w.flags);
            b.set_flags(gst::BufferFlags::from_bits_retain(flags));
            let caps = self.video_info.lock().unwrap().clone();
            add_video_metas(b, &w.video, w.flags, caps.as_ref()).map_err(|e| self.fail(&e))?;
            for (caps, ts, dur) in &w.refs {
                let malformed = |why: &str| {
                    self.fail(&format!(
                        "Malformed reference timestamp meta from the producer: {why}"
                    ))
                };
                let caps = gst::Caps::from_str(caps).map_err(|_| malformed("caps"))?;
                // u64::MAX is GST_CLOCK_TIME_NONE: no timestamp, which the meta must have.
                let ts = time(*ts).ok_or_else(|| malformed("no timestamp"))?;
                let dur = time(*dur);
                gst::ReferenceTimestampMeta::add(b, &caps, ts, dur);
            }
        }
        Ok(buffer)
    }

    /// Applies caps from the producer: they must be fixed (anything else would reach
    /// `gst_event_new_caps` and raise a CRITICAL), and come before data flows: the first
    /// caps once a segment went downstream (it goes with the first buffer) would make
    /// GStreamer warn of misordered sticky events.
    fn apply_caps(&self, text: &str) -> Result<(), gst::FlowError> {
        let caps =
            gst::Caps::from_str(text).map_err(|_| self.fail("Malformed caps from the producer"))?;
        if !caps.is_fixed() {
            // The producer's text, not the caps: nothing of GStreamer serialises them here.
            return Err(self.fail(&format!("Caps from the producer are not fixed: {text}")));
        }
        let pad = self.obj().src_pad().clone();
        if pad.current_caps().is_none() && pad.sticky_event::<gst::event::Segment>(0).is_some() {
            return Err(self.fail(
                "Caps from the producer after its stream began without caps (a buffer came \
                 first)",
            ));
        }
        gst::debug!(CAT, imp = self, "caps {}", caps);
        // Raw video only: caps of encoded video with a size (image/jpeg from jpegenc) give
        // an ENCODED VideoInfo, which has no frame layout to check buffers against.
        *self.video_info.lock().unwrap() = gst_video::VideoInfo::from_caps(&caps)
            .ok()
            .filter(|info| info.format() != gst_video::VideoFormat::Encoded);
        self.obj()
            .set_caps(&caps)
            .map_err(|_| gst::FlowError::NotNegotiated)
    }

    /// Applies a segment from the producer, refusing one `gst_event_new_segment` would not
    /// take (rate or applied rate 0 or not finite, undefined format), or one
    /// `gst_segment_to_running_time_full` asserts on downstream (a negative rate needs a stop
    /// at or after the offset).
    fn apply_segment(&self, text: &str) -> Result<(), gst::FlowError> {
        let segment = gst::Structure::from_str(text)
            .ok()
            .and_then(|s| s.get::<gst::Segment>("segment").ok())
            .ok_or_else(|| self.fail("Malformed segment from the producer"))?;
        let rates = [segment.rate(), segment.applied_rate()];
        if rates.iter().any(|r| *r == 0.0 || !r.is_finite())
            || segment.format() == gst::Format::Undefined
        {
            return Err(self.fail(&format!(
                "Invalid segment from the producer: rate {}, applied rate {}, format {:?}",
                rates[0],
                rates[1],
                segment.format()
            )));
        }
        // The raw values: `u64::MAX` is none.
        let stop = segment.stop().value() as u64;
        let offset = segment.offset().value() as u64;
        if segment.rate() < 0.0 && (stop == u64::MAX || stop < offset) {
            return Err(self.fail(&format!(
                "Invalid segment from the producer: a negative rate and no stop at or after \
                 the offset (rate {}, stop {stop}, offset {offset})",
                rates[0]
            )));
        }
        if self.obj().new_segment(&segment).is_err() {
            gst::warning!(CAT, imp = self, "segment {:?} refused", segment);
        }
        Ok(())
    }
}

impl ObjectImpl for MemfdSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("socket-path")
                    .nick("Socket path")
                    .blurb("Path of the memfdsink's Unix socket (required)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("timeout")
                    .nick("Timeout")
                    .blurb("Milliseconds to wait for the producer when starting or reconnecting")
                    .maximum(3_600_000)
                    .default_value(DEFAULT_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("reconnect")
                    .nick("Reconnect")
                    .blurb("When the producer goes away, wait for it (timeout) and reconnect instead of failing")
                    .default_value(false)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("max-memory-size")
                    .nick("Maximum memory size")
                    .blurb("Largest block (memfd) accepted from the producer, in bytes; a larger one is an error")
                    .minimum(1)
                    .default_value(DEFAULT_MAX_MEMORY_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-blocks")
                    .nick("Maximum blocks")
                    .blurb("Blocks of the producer kept mapped at once (each mapped once, reused by every buffer in it); a producer that announces more is an error")
                    .minimum(proto::MAX_MEMORIES as u32)
                    .maximum(65536)
                    .default_value(DEFAULT_MAX_BLOCKS)
                    .mutable_ready()
                    .build(),
                crate::elements::common::stats_pspec(
                    "Buffers and bytes received, reconnections, blocks announced by the \
                     producer, retired by it, and mapped now",
                ),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        // Read once, at start: refused afterwards, as gst-plugins-rs' filesrc refuses a new
        // location (the value would otherwise be shown but not used).
        if pspec.name() != "reconnect" && self.link.lock().unwrap().is_some() {
            gst::error!(
                CAT,
                imp = self,
                "changing {} of a started memfdsrc is not supported: ignored",
                pspec.name()
            );
            return;
        }
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "socket-path" => settings.socket_path = value.get().expect("type checked upstream"),
            "timeout" => settings.timeout_ms = value.get().expect("type checked upstream"),
            "reconnect" => settings.reconnect = value.get().expect("type checked upstream"),
            "max-memory-size" => {
                settings.max_memory_size = value.get().expect("type checked upstream")
            }
            "max-blocks" => settings.max_blocks = value.get().expect("type checked upstream"),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "socket-path" => settings.socket_path.to_value(),
            "timeout" => settings.timeout_ms.to_value(),
            "reconnect" => settings.reconnect.to_value(),
            "max-memory-size" => settings.max_memory_size.to_value(),
            "max-blocks" => settings.max_blocks.to_value(),
            "stats" => self.stats.lock().unwrap().to_structure().to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.obj().set_format(gst::Format::Time);
    }
}

impl GstObjectImpl for MemfdSrc {}

impl ElementImpl for MemfdSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Memfd cross-process source",
                "Source/Network/Memory",
                "Receives a stream from memfdsink in another process; memories arrive as \
                 memfd descriptors and are wrapped without copying",
                "memkit developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![crate::elements::common::any_caps_template(
                "src",
                gst::PadDirection::Src,
            )]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSrcImpl for MemfdSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        self.flushing.store(false, Ordering::Relaxed);
        *self.stats.lock().unwrap() = Stats::default();
        *self.backoff.lock().unwrap() = RECONNECT_FIRST_DELAY;
        self.connect_at_start()
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // Buffers still downstream hold the connection: released at once when freed.
        if let Some(link) = self.link.lock().unwrap().take() {
            let _ = link.conn.idle(true);
        }
        *self.video_info.lock().unwrap() = None;
        Ok(())
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        self.flushing.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        self.flushing.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn is_seekable(&self) -> bool {
        false
    }
}

impl PushSrcImpl for MemfdSrc {
    fn create(
        &self,
        _buffer: Option<&mut gst::BufferRef>,
    ) -> Result<CreateSuccess, gst::FlowError> {
        loop {
            // Checked for every packet: a producer that sends nothing but events (or that
            // keeps hanging up, with `reconnect`) must not keep a state change waiting.
            if self.flushing.load(Ordering::Relaxed) {
                return Err(gst::FlowError::Flushing);
            }
            let mut guard = self.link.lock().unwrap();
            let Some(link) = guard.as_mut() else {
                return Err(gst::FlowError::Flushing);
            };
            let (n, fds) = match self.receive(link)? {
                Received::Idle => {
                    if self.flushing.load(Ordering::Relaxed) {
                        return Err(gst::FlowError::Flushing);
                    }
                    continue;
                }
                Received::Closed => {
                    drop(guard);
                    self.reconnect()?;
                    continue;
                }
                Received::Packet(n, fds) => (n, fds),
            };
            let msg = Message::decode(&link.packet[..n])
                .map_err(|e| self.fail(&format!("Malformed message from the producer: {e}")))?;
            // Only a buffer's blocks come with descriptors. Any other goes to a closer thread
            // (dropping `fds` does that): its close may block for as long as the producer
            // likes, and nothing here waits for it.
            if !fds.is_empty() && !matches!(msg, Message::Buffer(_)) {
                return Err(self.fail(&format!(
                    "Malformed message from the producer: {} descriptors came with {}",
                    fds.len(),
                    msg.kind()
                )));
            }
            match msg {
                Message::Caps(text) => self.apply_caps(&text)?,
                Message::Event(EventKind::Segment, text) => self.apply_segment(&text)?,
                Message::Event(EventKind::StreamStart, _) => {}
                Message::Event(EventKind::Eos, _) => {
                    // Nothing more to read: buffers freed from now on are released at once.
                    let _ = link.conn.idle(true);
                    post_stats(&*self.obj(), self.stats.lock().unwrap().to_structure());
                    return Err(gst::FlowError::Eos);
                }
                Message::Buffer(w) => {
                    let buffer = self.make_buffer(w, fds, link)?;
                    *self.backoff.lock().unwrap() = RECONNECT_FIRST_DELAY;
                    let mut stats = self.stats.lock().unwrap();
                    stats.buffers += 1;
                    stats.bytes += buffer.size() as u64;
                    return Ok(CreateSuccess::NewBuffer(buffer));
                }
                Message::Release(_) | Message::Hello { .. } => {
                    return Err(self.fail(&format!(
                        "Malformed message from the producer: {msg:?} is a consumer's message"
                    )));
                }
            }
        }
    }
}

impl MemfdSrc {
    /// The producer's next packet: one already queued is taken at once (releases keep
    /// gathering); otherwise the releases that wait are sent and it waits a little.
    fn receive(&self, link: &mut Link) -> Result<Received, gst::FlowError> {
        let failed = |e| self.fail(&format!("Receiving from the producer failed: {e}"));
        let stalled = |pending| {
            self.fail(&format!(
                "The producer does not read its release messages ({pending} waiting, at \
                 most {MAX_PENDING_RELEASES})"
            ))
        };
        link.conn.check().map_err(stalled)?;
        if link.busy {
            let got =
                socket::recv(link.conn.sock(), &mut link.packet, Duration::ZERO).map_err(failed)?;
            if matches!(got, Received::Packet(..)) {
                return Ok(got);
            }
        }
        link.conn.idle(true).map_err(stalled)?;
        let got = socket::recv_hinted(
            link.conn.sock(),
            &mut link.packet,
            Duration::from_millis(100),
            false,
        );
        link.conn.idle(false).map_err(stalled)?;
        let got = got.map_err(failed)?;
        link.busy = matches!(got, Received::Packet(..));
        Ok(got)
    }
}
