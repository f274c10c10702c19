// SPDX-License-Identifier: MPL-2.0
//! `memmerge`: coalesces consecutive buffers into buffers of `target-size` bytes. When the
//! pieces of an output are contiguous shares of one parent (`gst_memory_is_span`), the output
//! is a single share of that parent: zero-copy. Otherwise the bytes are copied once into
//! `AlignedMemory`. The remainder is pushed at EOS, before a DISCONT buffer, before new caps and
//! before a new segment, so bytes are never lost or reordered. A flush discards what is pending,
//! as a flush asks.
//!
//! Outputs are assembled one at a time, as they are pushed, and more than
//! [`MAX_PENDING_PIECES`] pieces waiting are merged into one (a share when they are spans), so
//! memmerge never holds tens of thousands of shares of one memory: core counts them in 16 bits.
//! Should a memory have `MAX_LIVE_SHARES` holders anyway, pieces are copied, with a warning.
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

use crate::allocator::aligned_allocator;
use crate::elements::common::{post_stats, share_region};
use crate::elements::memory::try_share;

const DEFAULT_TARGET_SIZE: u32 = 65536;
/// Pieces waiting to be merged before they are merged into one.
const MAX_PENDING_PIECES: usize = 1024;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memmerge",
        gst::DebugColorFlags::empty(),
        Some("memkit span-aware merger"),
    )
});

/// Bytes waiting to be merged: the memories of (part of) one input buffer, and the metadata
/// that belongs to its first byte.
struct Piece {
    buf: gst::Buffer,
    pts: Option<gst::ClockTime>,
    dts: Option<gst::ClockTime>,
    discont: bool,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Piece>,
    pending_bytes: usize,
    /// Merged buffers not pushed yet.
    out: VecDeque<gst::Buffer>,
    /// Byte offset in the stream of the next output.
    offset: u64,
    buffers_in: u64,
    buffers_out: u64,
    zero_copy: u64,
    copied: u64,
    bytes_copied: u64,
    /// Pieces copied because their memory had MAX_LIVE_SHARES holders.
    pieces_copied: u64,
}

impl State {
    fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder("memmerge")
            .field("buffers-in", self.buffers_in)
            .field("buffers-out", self.buffers_out)
            .field("zero-copy-merges", self.zero_copy)
            .field("copied-merges", self.copied)
            .field("bytes-copied", self.bytes_copied)
            .field("pieces-copied", self.pieces_copied)
            .build()
    }
}

/// The element's properties.
#[derive(Debug, Clone)]
struct Settings {
    target_size: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            target_size: DEFAULT_TARGET_SIZE,
        }
    }
}

pub struct MemMerge {
    settings: Mutex<Settings>,
    state: Mutex<State>,
}

impl MemMerge {
    fn flow_error(&self, what: String) -> gst::FlowError {
        gst::element_imp_error!(self, gst::StreamError::Failed, ("{}", what));
        gst::FlowError::Error
    }

    /// Splits `piece` after `at` bytes: the head keeps the metadata.
    fn split(
        &self,
        state: &mut State,
        piece: Piece,
        at: usize,
    ) -> Result<(Piece, Piece), gst::FlowError> {
        let size = piece.buf.size();
        let (head, head_copied) = share_region(&piece.buf, 0..at).map_err(|e| {
            self.flow_error(format!(
                "Cannot share the first {at} bytes of a buffer: {e}"
            ))
        })?;
        let (tail, tail_copied) = share_region(&piece.buf, at..size)
            .map_err(|e| self.flow_error(format!("Cannot share a buffer from byte {at}: {e}")))?;
        for copied in [head_copied, tail_copied] {
            if copied {
                if state.pieces_copied == 0 {
                    gst::warning!(
                        CAT,
                        imp = self,
                        "a memory has {} holders already: copying pieces instead of sharing \
                         it further",
                        crate::elements::memory::MAX_LIVE_SHARES
                    );
                }
                state.pieces_copied += 1;
            }
        }
        Ok((
            Piece { buf: head, ..piece },
            Piece {
                buf: tail,
                pts: None,
                dts: None,
                discont: false,
            },
        ))
    }

    /// One memory holding the bytes of `pieces`: a share of their common parent when they are
    /// contiguous spans of it, else a copy into AlignedMemory. Returns it and whether it copied.
    fn merge_memory(
        &self,
        pieces: &[Piece],
        total: usize,
    ) -> Result<(gst::Memory, bool), gst::FlowError> {
        // Owned references (`iter_memories_owned`): `MemoryRef::to_owned` would deep-copy.
        let mems: Vec<gst::Memory> = pieces
            .iter()
            .flat_map(|p| p.buf.iter_memories_owned())
            .filter(|m| m.size() > 0)
            .collect();
        match mems.as_slice() {
            [] => {
                let empty = aligned_allocator()
                    .alloc_aligned(0, None)
                    .map_err(|e| self.flow_error(e.to_string()))?;
                return Ok((empty.upcast_memory(), false));
            }
            [one] => return Ok((one.clone(), false)),
            [first, second, ..] => {
                if let (Some(parent), Some(offset)) = (first.parent(), first.is_span(second)) {
                    let contiguous = mems.windows(2).all(|w| w[0].is_span(&w[1]).is_some());
                    if contiguous {
                        if let Some(shared) = try_share(parent, offset, total) {
                            return Ok((shared, false));
                        }
                        gst::debug!(
                            CAT,
                            imp = self,
                            "spans found but the parent cannot be shared: copying"
                        );
                    }
                }
            }
        }
        let mut mem = aligned_allocator()
            .alloc_aligned(total, None)
            .map_err(|e| self.flow_error(format!("Cannot allocate {total} bytes: {e}")))?;
        {
            let m = mem.get_mut().expect("a new memory is writable");
            let mut dst = m.map_writable().map_err(|_| {
                self.flow_error("A new AlignedMemory block does not map for writing".into())
            })?;
            // Each memory is mapped, not copied with BufferRef::copy_to_slice: gst_buffer_extract
            // falls back to gst_memory_copy for memory that cannot be mapped, and NOT_MAPPABLE
            // memory must stay unread.
            let mut pos = 0;
            for src in mems {
                let map = src.map_readable().map_err(|_| {
                    self.flow_error("A memory to merge cannot be mapped for reading".into())
                })?;
                let out = dst.get_mut(pos..pos + map.size()).ok_or_else(|| {
                    self.flow_error(format!("The buffers to merge hold more than {total} bytes"))
                })?;
                out.copy_from_slice(map.as_slice());
                pos += map.size();
            }
        }
        // A copy like gst_memory_copy's, for the tracer's report ("COPIED BY").
        crate::attribution::copied(total);
        Ok((mem.upcast_memory(), true))
    }

    /// Merges `pieces` (`total` bytes) into one output buffer and queues it.
    fn emit(
        &self,
        state: &mut State,
        pieces: Vec<Piece>,
        total: usize,
    ) -> Result<(), gst::FlowError> {
        let (mem, copied) = self.merge_memory(&pieces, total)?;
        if copied {
            state.copied += 1;
            state.bytes_copied += total as u64;
        } else {
            state.zero_copy += 1;
        }
        let mut out = gst::Buffer::new();
        {
            let o = out.get_mut().expect("a new buffer is writable");
            if let Some(first) = pieces.first() {
                o.set_pts(first.pts);
                o.set_dts(first.dts);
                if first.discont {
                    o.set_flags(gst::BufferFlags::DISCONT);
                }
            }
            o.set_offset(state.offset);
            o.set_offset_end(state.offset + total as u64);
            o.append_memory(mem);
        }
        state.offset += total as u64;
        state.out.push_back(out);
        Ok(())
    }

    /// Queues everything pending (the remainder) as one output.
    fn drain(&self, state: &mut State) -> Result<(), gst::FlowError> {
        if state.pending_bytes == 0 {
            state.pending.clear();
            return Ok(());
        }
        let pieces: Vec<Piece> = state.pending.drain(..).collect();
        let total = std::mem::take(&mut state.pending_bytes);
        gst::debug!(CAT, imp = self, "draining {total} bytes");
        self.emit(state, pieces, total)
    }

    /// Adds `buf` to what is pending (after draining what came before a DISCONT).
    fn accumulate(&self, state: &mut State, buf: gst::Buffer) -> Result<(), gst::FlowError> {
        let discont = buf.flags().contains(gst::BufferFlags::DISCONT);
        if discont {
            self.drain(state)?;
        }
        if buf.size() == 0 {
            gst::debug!(CAT, imp = self, "empty input buffer: nothing to merge");
        }
        state.pending_bytes += buf.size();
        state.pending.push_back(Piece {
            pts: buf.pts(),
            dts: buf.dts(),
            discont,
            buf,
        });
        if state.pending.len() > MAX_PENDING_PIECES {
            self.compact(state)?;
        }
        Ok(())
    }

    /// Merges every pending piece into one (a share of their parent when they are spans).
    fn compact(&self, state: &mut State) -> Result<(), gst::FlowError> {
        let pieces: Vec<Piece> = state.pending.drain(..).collect();
        let total = state.pending_bytes;
        gst::debug!(CAT, imp = self, "merging {} pending pieces", pieces.len());
        let (mem, copied) = self.merge_memory(&pieces, total)?;
        if copied {
            state.bytes_copied += total as u64;
        }
        let mut buf = gst::Buffer::new();
        buf.get_mut()
            .expect("a new buffer is writable")
            .append_memory(mem);
        let first = &pieces[0];
        state.pending.push_back(Piece {
            buf,
            pts: first.pts,
            dts: first.dts,
            discont: first.discont,
        });
        Ok(())
    }

    /// Queues one output of `target` bytes if that many are pending; whether it did.
    fn produce_one(&self, state: &mut State, target: usize) -> Result<bool, gst::FlowError> {
        if state.pending_bytes < target {
            return Ok(false);
        }
        let mut need = target;
        let mut take = Vec::new();
        while need > 0 {
            let piece = state
                .pending
                .pop_front()
                .expect("pending holds >= target bytes");
            let size = piece.buf.size();
            if size <= need {
                need -= size;
                take.push(piece);
            } else {
                let (head, tail) = self.split(state, piece, need)?;
                take.push(head);
                state.pending.push_front(tail);
                need = 0;
            }
        }
        state.pending_bytes -= target;
        self.emit(state, take, target)?;
        Ok(true)
    }

    /// Pushes the remainder downstream directly, on the streaming thread and in order: from a
    /// serialized event, or before a DISCONT buffer is submitted (so that the base class's
    /// DISCONT marking lands on the buffer after the discontinuity, not on the old bytes).
    fn push_remainder(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        let target = self.settings.lock().unwrap().target_size as usize;
        loop {
            let next = {
                let mut state = self.state.lock().unwrap();
                if state.out.is_empty() && !self.produce_one(&mut state, target)? {
                    self.drain(&mut state)?;
                }
                let next = state.out.pop_front();
                if next.is_some() {
                    state.buffers_out += 1;
                }
                next
            };
            match next {
                Some(buf) => self.obj().src_pad().push(buf)?,
                None => return Ok(gst::FlowSuccess::Ok),
            };
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for MemMerge {
    const NAME: &'static str = "GstMemMerge";
    type Type = super::MemMerge;
    type ParentType = gst_base::BaseTransform;

    fn new() -> Self {
        MemMerge {
            settings: Mutex::default(),
            state: Mutex::default(),
        }
    }
}

impl ObjectImpl for MemMerge {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecUInt::builder("target-size")
                    .nick("Target size")
                    .blurb("Size in bytes of each output buffer (the remainder is pushed at EOS, DISCONT, caps and segment)")
                    .minimum(1)
                    .maximum(i32::MAX as u32)
                    .default_value(DEFAULT_TARGET_SIZE)
                    .mutable_playing()
                    .build(),
                crate::elements::common::stats_pspec("Buffers in and out, zero-copy and copied merges, bytes copied"),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        match pspec.name() {
            "target-size" => {
                self.settings.lock().unwrap().target_size =
                    value.get().expect("type checked upstream")
            }
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "target-size" => self.settings.lock().unwrap().target_size.to_value(),
            "stats" => self.state.lock().unwrap().to_structure().to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.obj().set_passthrough(true);
    }
}

impl GstObjectImpl for MemMerge {}

impl ElementImpl for MemMerge {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Span-aware merger",
                "Filter/Memory",
                "Coalesces buffers into buffers of target-size bytes, zero-copy when the pieces are \
                 contiguous shares of one parent",
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

impl BaseTransformImpl for MemMerge {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = true;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        *self.state.lock().unwrap() = State::default();
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // Drop what is pending; keep the counters readable until the next start.
        let mut state = self.state.lock().unwrap();
        state.pending.clear();
        state.pending_bytes = 0;
        state.out.clear();
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Eos(_) => {
                if let Err(err) = self.push_remainder() {
                    gst::debug!(CAT, imp = self, "pushing the remainder at EOS: {err:?}");
                }
                let stats = self.state.lock().unwrap().to_structure();
                gst::info!(CAT, imp = self, "EOS: {stats}");
                post_stats(&*self.obj(), stats);
            }
            // Bytes of the old format or segment go out before the new caps or segment.
            gst::EventView::Caps(_) | gst::EventView::Segment(_) => {
                if let Err(err) = self.push_remainder() {
                    gst::debug!(
                        CAT,
                        imp = self,
                        "pushing the remainder before {:?}: {err:?}",
                        event.type_()
                    );
                }
            }
            gst::EventView::FlushStop(_) => {
                let mut state = self.state.lock().unwrap();
                state.pending.clear();
                state.pending_bytes = 0;
                state.out.clear();
                state.offset = 0;
            }
            _ => {}
        }
        self.parent_sink_event(event)
    }

    fn submit_input_buffer(
        &self,
        is_discont: bool,
        inbuf: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        if inbuf.flags().contains(gst::BufferFlags::DISCONT) {
            self.push_remainder()?;
        }
        self.parent_submit_input_buffer(is_discont, inbuf)
    }

    fn generate_output(&self) -> Result<GenerateOutputSuccess, gst::FlowError> {
        let queued = self.take_queued_buffer();
        let target = self.settings.lock().unwrap().target_size as usize;
        let mut state = self.state.lock().unwrap();
        if let Some(buf) = queued {
            state.buffers_in += 1;
            self.accumulate(&mut state, buf)?;
        }
        // One output per call: the base class calls again until there is none.
        if state.out.is_empty() {
            self.produce_one(&mut state, target)?;
        }
        match state.out.pop_front() {
            Some(buf) => {
                state.buffers_out += 1;
                Ok(GenerateOutputSuccess::Buffer(buf))
            }
            None => Ok(GenerateOutputSuccess::NoOutput),
        }
    }
}
