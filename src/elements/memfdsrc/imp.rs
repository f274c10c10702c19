// SPDX-License-Identifier: MPL-2.0
//! `memfdsrc`: receives a stream from a `memfdsink` in another process. Each memory arrives as
//! a descriptor and is wrapped, without copying, as read-only `MemfdMemory`; when the last
//! memory of a buffer is freed, a release message tells the producer it may reuse the blocks.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
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

use crate::allocator::memfd::wrap_fd;
use crate::elements::memfdproto::{self as proto, BufferWire, EventKind, Message, Received};
use crate::elements::post_stats;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memfdsrc",
        gst::DebugColorFlags::empty(),
        Some("memkit cross-process source (memfd descriptors over a Unix socket)"),
    )
});

const DEFAULT_TIMEOUT_MS: u32 = 10_000;

#[derive(Debug, Clone)]
struct Settings {
    socket_path: Option<String>,
    timeout_ms: u32,
    reconnect: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket_path: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            reconnect: false,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Stats {
    buffers: u64,
    bytes: u64,
    reconnects: u64,
}

impl Stats {
    fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder("memfdsrc")
            .field("buffers", self.buffers)
            .field("bytes", self.bytes)
            .field("reconnects", self.reconnects)
            .build()
    }
}

/// Sends the release of buffer `id` when dropped (when every memory of the buffer is freed).
struct Release {
    id: u64,
    sock: Arc<OwnedFd>,
}

impl Drop for Release {
    fn drop(&mut self) {
        let packet = Message::Release(self.id).encode();
        // The producer may be gone: nothing to tell then.
        let _ = proto::send(self.sock.as_fd(), &packet, &[]);
    }
}

#[derive(Default)]
pub struct MemfdSrc {
    settings: Mutex<Settings>,
    sock: Mutex<Option<Arc<OwnedFd>>>,
    stats: Mutex<Stats>,
    flushing: AtomicBool,
}

#[glib::object_subclass]
impl ObjectSubclass for MemfdSrc {
    const NAME: &'static str = "GstMemfdSrc";
    type Type = super::MemfdSrc;
    type ParentType = gst_base::PushSrc;
}

impl MemfdSrc {
    fn connect(&self) -> Result<Arc<OwnedFd>, String> {
        let settings = self.settings.lock().unwrap().clone();
        let Some(path) = settings.socket_path else {
            return Err("memfdsrc needs socket-path".into());
        };
        let sock = proto::connect(
            &PathBuf::from(&path),
            Duration::from_millis(settings.timeout_ms as u64),
            || self.flushing.load(Ordering::Relaxed),
        )?;
        gst::info!(CAT, imp = self, "connected to {}", path);
        let sock = Arc::new(sock);
        *self.sock.lock().unwrap() = Some(sock.clone());
        Ok(sock)
    }

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
        fds: Vec<OwnedFd>,
        sock: &Arc<OwnedFd>,
    ) -> Result<gst::Buffer, gst::FlowError> {
        if fds.len() != w.mems.len() {
            return Err(self.fail(&format!(
                "Malformed message from the producer: {}",
                proto::ProtoError::Descriptors {
                    expected: w.mems.len(),
                    received: fds.len()
                }
            )));
        }
        let release: Arc<dyn Send + Sync> = Arc::new(Release {
            id: w.id,
            sock: sock.clone(),
        });
        let mut buffer = gst::Buffer::new();
        {
            let b = buffer.get_mut().expect("new buffer");
            for (m, fd) in w.mems.iter().zip(fds) {
                let (Ok(maxsize), Ok(offset), Ok(size)) = (
                    usize::try_from(m.maxsize),
                    usize::try_from(m.offset),
                    usize::try_from(m.size),
                ) else {
                    return Err(self.fail("Malformed message from the producer: sizes"));
                };
                let owner: Box<dyn Send> = Box::new(release.clone());
                let mem = wrap_fd(fd, maxsize, offset, size, Some(owner))
                    .map_err(|e| self.fail(&format!("Unusable memory from the producer: {e}")))?;
                b.append_memory(mem);
            }
            let time = |v: u64| (v != u64::MAX).then(|| gst::ClockTime::from_nseconds(v));
            b.set_pts(time(w.pts));
            b.set_dts(time(w.dts));
            b.set_duration(time(w.duration));
            b.set_offset(w.offset);
            b.set_offset_end(w.offset_end);
            b.set_flags(gst::BufferFlags::from_bits_truncate(w.flags));
            let size = b.size();
            for v in &w.video {
                let format = gst_video::VideoFormat::from_string(&v.format);
                check_video_meta(v, format, size).map_err(|e| {
                    self.fail(&format!("Unusable video meta from the producer: {e}"))
                })?;
                let offsets: Vec<usize> = v.offsets.iter().map(|&o| o as usize).collect();
                gst_video::VideoMeta::add_full(
                    b,
                    gst_video::VideoFrameFlags::from_bits_truncate(v.flags),
                    format,
                    v.width,
                    v.height,
                    &offsets,
                    &v.strides,
                )
                .map_err(|e| self.fail(&format!("Unusable video meta from the producer: {e}")))?;
            }
            for (caps, ts, dur) in &w.refs {
                let caps = gst::Caps::from_str(caps).map_err(|_| {
                    self.fail("Malformed reference timestamp meta from the producer")
                })?;
                let dur = (*dur != u64::MAX).then(|| gst::ClockTime::from_nseconds(*dur));
                gst::ReferenceTimestampMeta::add(b, &caps, gst::ClockTime::from_nseconds(*ts), dur);
            }
        }
        Ok(buffer)
    }
}

/// Checks that a received video meta describes planes that lie inside the buffer's `size`
/// bytes, so that no element downstream is led to read past the memory.
fn check_video_meta(
    v: &proto::VideoMetaWire,
    format: gst_video::VideoFormat,
    size: usize,
) -> Result<(), String> {
    if matches!(
        format,
        gst_video::VideoFormat::Unknown | gst_video::VideoFormat::Encoded
    ) {
        return Err(format!("unknown video format {:?}", v.format));
    }
    let finfo = gst_video::VideoFormatInfo::from_format(format);
    let planes = finfo.n_planes() as usize;
    if v.offsets.len() != planes || v.strides.len() != planes {
        return Err(format!(
            "{} has {planes} planes, the meta describes {}",
            v.format,
            v.offsets.len()
        ));
    }
    for c in 0..finfo.n_components() as usize {
        let plane = finfo.plane()[c] as usize;
        let stride = v.strides[plane];
        if stride <= 0 {
            return Err(format!("stride {stride} of plane {plane} is not positive"));
        }
        let rows = u64::from(finfo.scale_height(c as u8, v.height));
        let row_bytes =
            u64::from(finfo.scale_width(c as u8, v.width)) * finfo.pixel_stride()[c].max(1) as u64;
        let end = rows
            .checked_sub(1)
            .map(|r| {
                v.offsets[plane]
                    .saturating_add(r.saturating_mul(stride as u64))
                    .saturating_add(row_bytes.max(stride as u64))
            })
            .unwrap_or(v.offsets[plane]);
        if end > size as u64 {
            return Err(format!(
                "plane {plane} of a {}x{} {} frame ends at byte {end}, past the {size}-byte buffer",
                v.width, v.height, v.format
            ));
        }
    }
    Ok(())
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
                crate::elements::stats_pspec("Buffers and bytes received, reconnections"),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "socket-path" => settings.socket_path = value.get().expect("type checked upstream"),
            "timeout" => settings.timeout_ms = value.get().expect("type checked upstream"),
            "reconnect" => settings.reconnect = value.get().expect("type checked upstream"),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "socket-path" => settings.socket_path.to_value(),
            "timeout" => settings.timeout_ms.to_value(),
            "reconnect" => settings.reconnect.to_value(),
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
            vec![crate::elements::any_caps_template(
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
        self.connect().map_err(|e| {
            gst::error_msg!(gst::ResourceError::OpenRead, ("Cannot connect: {}", e))
        })?;
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *self.sock.lock().unwrap() = None;
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
        let mut packet = vec![0u8; proto::MAX_MESSAGE];
        loop {
            let Some(sock) = self.sock.lock().unwrap().clone() else {
                return Err(gst::FlowError::Flushing);
            };
            let got = proto::recv(sock.as_fd(), &mut packet, Duration::from_millis(100))
                .map_err(|e| self.fail(&format!("Receiving from the producer failed: {e}")))?;
            let (n, fds) = match got {
                Received::Idle => {
                    if self.flushing.load(Ordering::Relaxed) {
                        return Err(gst::FlowError::Flushing);
                    }
                    continue;
                }
                Received::Closed => {
                    if !self.settings.lock().unwrap().reconnect {
                        return Err(self.fail(&format!(
                            "The producer at {} went away (connection closed)",
                            self.path()
                        )));
                    }
                    gst::warning!(CAT, imp = self, "producer went away: reconnecting");
                    self.connect()
                        .map_err(|e| self.fail(&format!("Cannot reconnect: {e}")))?;
                    self.stats.lock().unwrap().reconnects += 1;
                    continue;
                }
                Received::Packet(n, fds) => (n, fds),
            };
            let msg = Message::decode(&packet[..n])
                .map_err(|e| self.fail(&format!("Malformed message from the producer: {e}")))?;
            match msg {
                Message::Caps(text) => {
                    let caps = gst::Caps::from_str(&text)
                        .map_err(|_| self.fail("Malformed caps from the producer"))?;
                    gst::debug!(CAT, imp = self, "caps {}", caps);
                    self.obj()
                        .set_caps(&caps)
                        .map_err(|_| gst::FlowError::NotNegotiated)?;
                }
                Message::Event(EventKind::Segment, text) => {
                    let s = gst::Structure::from_str(&text)
                        .map_err(|_| self.fail("Malformed segment from the producer"))?;
                    let segment = s
                        .get::<gst::Segment>("segment")
                        .map_err(|_| self.fail("Malformed segment from the producer"))?;
                    if self.obj().new_segment(&segment).is_err() {
                        gst::warning!(CAT, imp = self, "segment {:?} refused", segment);
                    }
                }
                Message::Event(EventKind::StreamStart, _) => {}
                Message::Event(EventKind::Eos, _) => {
                    post_stats(&*self.obj(), self.stats.lock().unwrap().to_structure());
                    return Err(gst::FlowError::Eos);
                }
                Message::Buffer(w) => {
                    let buffer = self.make_buffer(w, fds, &sock)?;
                    let mut stats = self.stats.lock().unwrap();
                    stats.buffers += 1;
                    stats.bytes += buffer.size() as u64;
                    return Ok(CreateSuccess::NewBuffer(buffer));
                }
                Message::Release(_) => {
                    return Err(self.fail("Malformed message from the producer: a release"));
                }
            }
        }
    }
}
