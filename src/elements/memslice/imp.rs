// SPDX-License-Identifier: MPL-2.0
//! `memslice`: cuts each buffer into pieces of `chunk-size` bytes (the last may be shorter)
//! without copying: every piece holds shares of the input memory. The first piece carries the
//! input's PTS/DTS and DISCONT flag; every piece carries its byte offset in the stream.
//!
//! Pieces are cut one at a time, as they are pushed, so memslice itself holds at most one
//! share. Should a memory already have `MAX_LIVE_SHARES` holders (downstream keeping tens of
//! thousands of pieces), pieces are copied instead, with a warning: core counts shares in 16
//! bits.
//!
//! Lock order: `settings`, then `state`; neither is held while pushing.

use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_transform::GenerateOutputSuccess;
use gst_base::subclass::prelude::*;

use crate::elements::common::{describe_buffer, post_stats, share_region};
use crate::elements::util::{Chunks, chunks};

const DEFAULT_CHUNK_SIZE: u32 = 4096;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memslice",
        gst::DebugColorFlags::empty(),
        Some("memkit zero-copy slicer"),
    )
});

/// The input being cut: the buffer, its index, and the pieces still to cut.
#[derive(Debug)]
struct Input {
    buf: gst::Buffer,
    index: u64,
    /// Offset and size of each piece still to cut.
    pieces: Chunks,
    first: bool,
}

#[derive(Debug, Default)]
struct State {
    /// The input whose pieces are still to be cut and pushed.
    input: Option<Input>,
    /// Byte offset in the stream of the next piece.
    offset: u64,
    buffers_in: u64,
    pieces_out: u64,
    pieces_copied: u64,
    bytes: u64,
}

impl State {
    fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder("memslice")
            .field("buffers-in", self.buffers_in)
            .field("pieces-out", self.pieces_out)
            .field("pieces-copied", self.pieces_copied)
            .field("bytes", self.bytes)
            .build()
    }
}

/// The element's properties.
#[derive(Debug, Clone)]
struct Settings {
    chunk_size: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

#[derive(Default)]
pub struct MemSlice {
    settings: Mutex<Settings>,
    state: Mutex<State>,
}

impl MemSlice {
    /// Cuts the next piece of the current input, if any is left.
    fn next_piece(&self, state: &mut State) -> Result<Option<gst::Buffer>, gst::FlowError> {
        let Some(input) = state.input.as_mut() else {
            return Ok(None);
        };
        let Some((off, len)) = input.pieces.next() else {
            state.input = None;
            return Ok(None);
        };
        let buf = &input.buf;
        // Shares of the input memory (core copies only NO_SHARE memory).
        let mut piece = if buf.size() == 0 {
            gst::Buffer::new()
        } else {
            let (piece, copied) = share_region(buf, off..off + len).map_err(|err| {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    (
                        "Cannot share bytes {}..{} of {}: {}",
                        off,
                        off + len,
                        describe_buffer(input.index, buf),
                        err
                    )
                );
                gst::FlowError::Error
            })?;
            if copied {
                if state.pieces_copied == 0 {
                    gst::warning!(
                        CAT,
                        imp = self,
                        "the input memory has {} holders already: copying pieces instead of \
                         sharing it further",
                        crate::elements::memory::MAX_LIVE_SHARES
                    );
                }
                state.pieces_copied += 1;
            }
            piece
        };
        let input = state.input.as_mut().expect("checked above");
        {
            let p = piece.get_mut().expect("a new buffer is writable");
            if input.first {
                p.set_pts(input.buf.pts());
                p.set_dts(input.buf.dts());
                if input.buf.flags().contains(gst::BufferFlags::DISCONT) {
                    p.set_flags(gst::BufferFlags::DISCONT);
                }
                input.first = false;
            }
            p.set_offset(state.offset);
            p.set_offset_end(state.offset + len as u64);
        }
        state.offset += len as u64;
        Ok(Some(piece))
    }
}

#[glib::object_subclass]
impl ObjectSubclass for MemSlice {
    const NAME: &'static str = "GstMemSlice";
    type Type = super::MemSlice;
    type ParentType = gst_base::BaseTransform;

    fn new() -> Self {
        MemSlice {
            settings: Mutex::default(),
            state: Mutex::default(),
        }
    }
}

impl ObjectImpl for MemSlice {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecUInt::builder("chunk-size")
                    .nick("Chunk size")
                    .blurb("Size in bytes of each output piece (the last piece of a buffer may be shorter)")
                    .minimum(1)
                    .maximum(i32::MAX as u32)
                    .default_value(DEFAULT_CHUNK_SIZE)
                    .mutable_playing()
                    .build(),
                crate::elements::common::stats_pspec("Buffers in, pieces out and bytes sliced"),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        match pspec.name() {
            "chunk-size" => {
                self.settings.lock().unwrap().chunk_size =
                    value.get().expect("type checked upstream")
            }
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "chunk-size" => self.settings.lock().unwrap().chunk_size.to_value(),
            "stats" => self.state.lock().unwrap().to_structure().to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.obj().set_passthrough(true);
    }
}

impl GstObjectImpl for MemSlice {}

impl ElementImpl for MemSlice {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Zero-copy slicer",
                "Filter/Memory",
                "Cuts buffers into pieces of chunk-size bytes without copying (shares of the input memory)",
                "memkit developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> =
            LazyLock::new(crate::elements::common::any_caps_templates);
        TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for MemSlice {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = true;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        *self.state.lock().unwrap() = State::default();
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // Drop an input left half cut (a push that failed while flushing); keep the counters
        // readable until the next start.
        let mut state = self.state.lock().unwrap();
        state.input = None;
        state.offset = 0;
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Eos(_) => {
                let stats = self.state.lock().unwrap().to_structure();
                gst::info!(CAT, imp = self, "EOS: {stats}");
                post_stats(&*self.obj(), stats);
            }
            gst::EventView::FlushStop(_) | gst::EventView::StreamStart(_) => {
                let mut state = self.state.lock().unwrap();
                state.input = None;
                state.offset = 0;
            }
            _ => {}
        }
        self.parent_sink_event(event)
    }

    fn generate_output(&self) -> Result<GenerateOutputSuccess, gst::FlowError> {
        let queued = self.take_queued_buffer();
        let chunk = self.settings.lock().unwrap().chunk_size as usize;
        let mut state = self.state.lock().unwrap();
        if let Some(buf) = queued {
            let index = state.buffers_in;
            if buf.size() == 0 {
                gst::debug!(
                    CAT,
                    imp = self,
                    "{} is empty: forwarded as one empty piece",
                    describe_buffer(index, &buf)
                );
            }
            state.buffers_in += 1;
            state.bytes += buf.size() as u64;
            state.input = Some(Input {
                pieces: chunks(buf.size(), chunk),
                buf,
                index,
                first: true,
            });
        }
        match self.next_piece(&mut state)? {
            Some(piece) => {
                state.pieces_out += 1;
                Ok(GenerateOutputSuccess::Buffer(piece))
            }
            None => Ok(GenerateOutputSuccess::NoOutput),
        }
    }
}
