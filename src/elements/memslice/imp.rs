// SPDX-License-Identifier: MPL-2.0
//! `memslice`: cuts each buffer into pieces of `chunk-size` bytes (the last may be shorter)
//! without copying: every piece holds shares of the input memory. The first piece carries the
//! input's PTS/DTS and DISCONT flag; every piece carries its byte offset in the stream.
//!
//! Lock order: `settings`, then `state`; neither is held while pushing.

use std::collections::VecDeque;
use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_transform::GenerateOutputSuccess;
use gst_base::subclass::prelude::*;

use crate::elements::util::chunks;
use crate::elements::{describe_buffer, post_stats};

const DEFAULT_CHUNK_SIZE: u32 = 4096;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memslice",
        gst::DebugColorFlags::empty(),
        Some("memkit zero-copy slicer"),
    )
});

#[derive(Debug, Default)]
struct State {
    /// Pieces of the current input still to be pushed.
    pending: VecDeque<gst::Buffer>,
    /// Byte offset in the stream of the next piece.
    offset: u64,
    buffers_in: u64,
    pieces_out: u64,
    bytes: u64,
}

impl State {
    fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder("memslice")
            .field("buffers-in", self.buffers_in)
            .field("pieces-out", self.pieces_out)
            .field("bytes", self.bytes)
            .build()
    }
}

#[derive(Default)]
pub struct MemSlice {
    chunk_size: Mutex<u32>,
    state: Mutex<State>,
}

impl MemSlice {
    fn slice(
        &self,
        buf: &gst::Buffer,
        chunk: usize,
        state: &mut State,
    ) -> Result<(), gst::FlowError> {
        let index = state.buffers_in;
        if buf.size() == 0 {
            gst::debug!(
                CAT,
                imp = self,
                "{} is empty: forwarded as one empty piece",
                describe_buffer(index, buf)
            );
        }
        for (i, (off, len)) in chunks(buf.size(), chunk).enumerate() {
            // Shares of the input memory (core copies only NO_SHARE memory).
            let mut piece = if buf.size() == 0 {
                gst::Buffer::new()
            } else {
                buf.copy_region(gst::BufferCopyFlags::MEMORY, off..off + len)
                    .map_err(|err| {
                        gst::element_imp_error!(
                            self,
                            gst::StreamError::Failed,
                            (
                                "Cannot share bytes {}..{} of {}: {}",
                                off,
                                off + len,
                                describe_buffer(index, buf),
                                err
                            )
                        );
                        gst::FlowError::Error
                    })?
            };
            {
                let p = piece.get_mut().expect("a new buffer is writable");
                if i == 0 {
                    p.set_pts(buf.pts());
                    p.set_dts(buf.dts());
                    if buf.flags().contains(gst::BufferFlags::DISCONT) {
                        p.set_flags(gst::BufferFlags::DISCONT);
                    }
                }
                p.set_offset(state.offset);
                p.set_offset_end(state.offset + len as u64);
            }
            state.offset += len as u64;
            state.pending.push_back(piece);
        }
        Ok(())
    }
}

#[glib::object_subclass]
impl ObjectSubclass for MemSlice {
    const NAME: &'static str = "GstMemSlice";
    type Type = super::MemSlice;
    type ParentType = gst_base::BaseTransform;

    fn new() -> Self {
        MemSlice {
            chunk_size: Mutex::new(DEFAULT_CHUNK_SIZE),
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
                crate::elements::stats_pspec("Buffers in, pieces out and bytes sliced"),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        match pspec.name() {
            "chunk-size" => {
                *self.chunk_size.lock().unwrap() = value.get().expect("type checked upstream")
            }
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "chunk-size" => self.chunk_size.lock().unwrap().to_value(),
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
            LazyLock::new(crate::elements::any_caps_templates);
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

    fn sink_event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Eos(_) => {
                let stats = self.state.lock().unwrap().to_structure();
                gst::info!(CAT, imp = self, "EOS: {stats}");
                post_stats(&*self.obj(), stats);
            }
            gst::EventView::FlushStop(_) | gst::EventView::StreamStart(_) => {
                let mut state = self.state.lock().unwrap();
                state.pending.clear();
                state.offset = 0;
            }
            _ => {}
        }
        self.parent_sink_event(event)
    }

    fn generate_output(&self) -> Result<GenerateOutputSuccess, gst::FlowError> {
        let queued = self.take_queued_buffer();
        let chunk = *self.chunk_size.lock().unwrap() as usize;
        let mut state = self.state.lock().unwrap();
        if let Some(buf) = queued {
            self.slice(&buf, chunk, &mut state)?;
            state.buffers_in += 1;
            state.bytes += buf.size() as u64;
        }
        match state.pending.pop_front() {
            Some(piece) => {
                state.pieces_out += 1;
                Ok(GenerateOutputSuccess::Buffer(piece))
            }
            None => Ok(GenerateOutputSuccess::NoOutput),
        }
    }
}
