// SPDX-License-Identifier: MPL-2.0
//! `memalign`: every buffer it outputs has memory whose payload is aligned to `alignment` with
//! at least `padding` zeroed bytes after it. Upstream is offered `AlignedMemory` in the
//! ALLOCATION query, so producers that honour it allocate our memory and their buffers pass
//! through untouched; anything else is copied into `AlignedMemory` once.
//!
//! Lock order: `settings` before `stats`; `downstream` alone; none is held while pushing.

use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_transform::GenerateOutputSuccess;
use gst_base::subclass::prelude::*;

use crate::allocator::{ALIGNED_MEMORY, AlignedAllocator, aligned_allocator};
use crate::elements::common::{describe_buffer, post_stats, propose_allocator_first};
use crate::elements::memory::mapped_addr;

const DEFAULT_ALIGNMENT: u32 = 64;

/// The name an allocator is registered under, for messages and the `allocator` property.
fn allocator_name(allocator: &gst::Allocator) -> String {
    if allocator.type_() == AlignedAllocator::static_type() {
        return ALIGNED_MEMORY.to_owned();
    }
    if allocator.is::<crate::allocator::memfd::MemfdAllocator>() {
        return crate::allocator::memfd::MEMFD_MEMORY.to_owned();
    }
    allocator.name().to_string()
}
const DEFAULT_PADDING: u32 = 0;
const MAX_PADDING: u32 = 1024 * 1024;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memalign",
        gst::DebugColorFlags::empty(),
        Some("memkit aligned-memory guarantee"),
    )
});

#[derive(Debug, Clone)]
struct Settings {
    alignment: u32,
    padding: u32,
    allocator: gst::Allocator,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            alignment: DEFAULT_ALIGNMENT,
            padding: DEFAULT_PADDING,
            allocator: aligned_allocator().upcast(),
        }
    }
}

impl Settings {
    fn params(&self) -> gst::AllocationParams {
        let flags = if self.padding > 0 {
            gst::MemoryFlags::ZERO_PADDED
        } else {
            gst::MemoryFlags::empty()
        };
        gst::AllocationParams::new(
            flags,
            (self.alignment - 1) as usize,
            0,
            self.padding as usize,
        )
    }
}

#[derive(Debug, Default)]
struct Stats {
    buffers: u64,
    passed: u64,
    copied: u64,
    bytes_copied: u64,
}

impl Stats {
    fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder("memalign")
            .field("buffers", self.buffers)
            .field("buffers-passed", self.passed)
            .field("buffers-copied", self.copied)
            .field("bytes-copied", self.bytes_copied)
            .build()
    }
}

#[derive(Default)]
pub struct MemAlign {
    settings: Mutex<Settings>,
    stats: Mutex<Stats>,
    refused: crate::elements::common::Refusals,
    /// An instance of the chosen allocator's kind that downstream proposed (memfdsink
    /// proposes its stream's own MemfdMemory): proposed and copied into in its place, so that
    /// what passes is memory downstream takes as it is.
    downstream: Mutex<Option<gst::Allocator>>,
}

/// Why a buffer cannot be checked or copied.
struct Unmappable(usize);

impl MemAlign {
    /// Whether every memory of `buf` meets the settings.
    fn meets(&self, buf: &gst::BufferRef, settings: &Settings) -> Result<bool, Unmappable> {
        let any_allocator = settings.allocator.type_() == AlignedAllocator::static_type();
        for (idx, mem) in buf.iter_memories().enumerate() {
            // With another allocator than AlignedMemory, the output must come from it (e.g.
            // allocator=MemfdMemory guarantees fd memory).
            if !any_allocator && mem.allocator() != Some(&settings.allocator) {
                gst::trace!(
                    CAT,
                    imp = self,
                    "memory {idx} is not from the chosen allocator"
                );
                return Ok(false);
            }
            let addr = mapped_addr(mem).ok_or(Unmappable(idx))?;
            if addr % settings.alignment as usize != 0 {
                gst::trace!(CAT, imp = self, "memory {idx} at {addr:#x} is not aligned");
                return Ok(false);
            }
            if settings.padding > 0 {
                let tail = mem.maxsize() - mem.offset() - mem.size();
                if tail < settings.padding as usize
                    || !mem.flags().contains(gst::MemoryFlags::ZERO_PADDED)
                {
                    gst::trace!(
                        CAT,
                        imp = self,
                        "memory {idx} lacks {} zeroed bytes",
                        settings.padding
                    );
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Copies `buf` (all its memories, its metadata) into one memory of the chosen allocator.
    fn aligned_copy(
        &self,
        buf: &gst::BufferRef,
        settings: &Settings,
    ) -> Result<gst::Buffer, gst::FlowError> {
        let size = buf.size();
        let mut mem = settings
            .allocator
            .alloc(size, Some(&settings.params()))
            .map_err(|err| {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::NoSpaceLeft,
                    (
                        "Cannot allocate {} bytes aligned to {} from {}: {}",
                        size,
                        settings.alignment,
                        allocator_name(&settings.allocator),
                        err
                    ),
                    ["the allocator's debug category has the reason"]
                );
                gst::FlowError::Error
            })?;
        {
            let m = mem.get_mut().expect("a new memory is writable");
            let mut dst = m.map_writable().map_err(|_| {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::Failed,
                    (
                        "A new memory from {} does not map for writing",
                        allocator_name(&settings.allocator)
                    )
                );
                gst::FlowError::Error
            })?;
            // Mapped memory by memory, not BufferRef::copy_to_slice: gst_buffer_extract falls
            // back to gst_memory_copy for memory that cannot be mapped.
            let dst = dst.as_mut_slice();
            let mut pos = 0;
            for (idx, src) in buf.iter_memories().enumerate() {
                let map = src.map_readable().map_err(|_| {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Failed,
                        ("Memory {} of the buffer cannot be mapped for reading", idx)
                    );
                    gst::FlowError::Error
                })?;
                dst[pos..pos + map.size()].copy_from_slice(map.as_slice());
                pos += map.size();
            }
        }
        // A copy like gst_memory_copy's, for the tracer's report ("COPIED BY").
        crate::attribution::copied(size);
        let mut out = gst::Buffer::new();
        {
            let o = out.get_mut().expect("a new buffer is writable");
            // The copy is byte for byte: video metas (offsets, strides) hold in it too.
            crate::elements::common::copy_metadata(buf, o).map_err(|_| {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Failed,
                    ("Cannot copy the buffer's flags, timestamps and metas")
                );
                gst::FlowError::Error
            })?;
            o.append_memory(mem);
        }
        Ok(out)
    }
}

#[glib::object_subclass]
impl ObjectSubclass for MemAlign {
    const NAME: &'static str = "GstMemAlign";
    type Type = super::MemAlign;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for MemAlign {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                crate::elements::common::alignment_pspec(
                    "Alignment in bytes of every output payload (a power of two)",
                    DEFAULT_ALIGNMENT,
                    false,
                ),
                glib::ParamSpecUInt::builder("padding")
                    .nick("Padding")
                    .blurb("Zeroed bytes guaranteed after every output payload")
                    .maximum(MAX_PADDING)
                    .default_value(DEFAULT_PADDING)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("allocator")
                    .nick("Allocator")
                    .blurb(
                        "Registered allocator to propose upstream and to copy into, e.g. \
                         AlignedMemory or MemfdMemory; with another than AlignedMemory, memory \
                         from other allocators is copied into it",
                    )
                    .default_value(Some(ALIGNED_MEMORY))
                    .build(),
                crate::elements::common::stats_pspec(
                    "Buffers seen, passed through and copied, and bytes copied",
                ),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "alignment" => {
                let v = value.get::<u32>().expect("type checked upstream");
                self.refused
                    .set_alignment(*CAT, &*self.obj(), &mut settings.alignment, v);
            }
            "padding" => settings.padding = value.get().expect("type checked upstream"),
            "allocator" => {
                let name = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| ALIGNED_MEMORY.to_owned());
                match gst::Allocator::find(Some(&name)) {
                    Some(a) => settings.allocator = a,
                    None => gst::warning!(
                        CAT,
                        imp = self,
                        "no allocator is registered as {:?}: keeping {}",
                        name,
                        allocator_name(&settings.allocator)
                    ),
                }
            }
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "alignment" => self.settings.lock().unwrap().alignment.to_value(),
            "padding" => self.settings.lock().unwrap().padding.to_value(),
            "allocator" => allocator_name(&self.settings.lock().unwrap().allocator).to_value(),
            "stats" => self.stats.lock().unwrap().to_structure().to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        // Passthrough from the start: ALLOCATION queries are answered (forwarded downstream,
        // then ours added) even before caps, as for caps-less sources like filesrc.
        self.obj().set_passthrough(true);
    }
}

impl GstObjectImpl for MemAlign {}

impl ElementImpl for MemAlign {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Memory aligner",
                "Filter/Memory",
                "Guarantees aligned, zero-padded buffer memory: proposes AlignedMemory upstream \
                 and copies only buffers that do not meet the requirement",
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

impl BaseTransformImpl for MemAlign {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = true;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        *self.stats.lock().unwrap() = Stats::default();
        *self.downstream.lock().unwrap() = None;
        self.refused.post(&*self.obj());
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        if let gst::EventView::Eos(_) = event.view() {
            let stats = self.stats.lock().unwrap().to_structure();
            gst::info!(CAT, imp = self, "EOS: {stats}");
            post_stats(&*self.obj(), stats);
        }
        self.parent_sink_event(event)
    }

    fn propose_allocation(
        &self,
        decide_query: Option<&gst::query::Allocation>,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        // Forward downstream first (passthrough), then put AlignedMemory first: base classes
        // use only the first allocator.
        // Downstream not answering (fakesink, filesink) is normal: we still propose ours.
        if let Err(err) = self.parent_propose_allocation(decide_query, query) {
            gst::debug!(
                CAT,
                imp = self,
                "downstream did not answer the ALLOCATION query: {err}"
            );
        }
        let (params, allocator) = {
            let settings = self.settings.lock().unwrap();
            (settings.params(), settings.allocator.clone())
        };
        let kind = allocator.type_();
        let same = (kind != AlignedAllocator::static_type())
            .then(|| {
                query
                    .allocation_params()
                    .find_map(|(a, _)| a.filter(|a| a.type_() == kind))
            })
            .flatten();
        *self.downstream.lock().unwrap() = same.clone();
        let allocator = same.unwrap_or(allocator);
        propose_allocator_first(query, &allocator, &params);
        gst::debug!(CAT, imp = self, "proposed {allocator:?} with {params:?}");
        Ok(())
    }

    fn generate_output(&self) -> Result<GenerateOutputSuccess, gst::FlowError> {
        let Some(buf) = self.take_queued_buffer() else {
            return Ok(GenerateOutputSuccess::NoOutput);
        };
        let mut settings = self.settings.lock().unwrap().clone();
        if let Some(a) = self.downstream.lock().unwrap().clone() {
            settings.allocator = a;
        }
        let index = self.stats.lock().unwrap().buffers;
        if buf.n_memory() == 0 {
            gst::warning!(
                CAT,
                imp = self,
                "{} has no memory: passed through",
                describe_buffer(index, &buf)
            );
        }
        let meets = self.meets(&buf, &settings).map_err(|Unmappable(idx)| {
            gst::element_imp_error!(
                self,
                gst::StreamError::Failed,
                (
                    "Memory {} of {} cannot be mapped for reading",
                    idx,
                    describe_buffer(index, &buf)
                )
            );
            gst::FlowError::Error
        })?;
        let out = if meets {
            let mut stats = self.stats.lock().unwrap();
            stats.buffers += 1;
            stats.passed += 1;
            buf
        } else {
            let out = self.aligned_copy(&buf, &settings)?;
            gst::log!(CAT, imp = self, "copied {}", describe_buffer(index, &buf));
            let mut stats = self.stats.lock().unwrap();
            stats.buffers += 1;
            stats.copied += 1;
            stats.bytes_copied += buf.size() as u64;
            out
        };
        Ok(GenerateOutputSuccess::Buffer(out))
    }
}
