// SPDX-License-Identifier: MPL-2.0
//! `memsrc`: produces buffers of `blocksize` bytes from the allocator named by `allocator`
//! (default: what downstream proposes in the ALLOCATION query, else `AlignedMemory`), with the
//! requested alignment, prefix, padding and zeroing, filled with a reproducible pattern.
//!
//! Lock order: `settings`, then `state`, then `stats`.

use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;

use super::MemSrcPattern;
use crate::allocator::aligned_allocator;
use crate::elements::common::post_stats;
use crate::elements::util::{Pattern, XorShift, fill_pattern};

const DEFAULT_ALIGNMENT: u32 = 1;
const DEFAULT_PREFIX: u32 = 0;
const DEFAULT_PADDING: u32 = 0;
const DEFAULT_SEED: u64 = 0;
const MAX_PREFIX_PADDING: u32 = 1024 * 1024;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memsrc",
        gst::DebugColorFlags::empty(),
        Some("memkit memory source"),
    )
});

#[derive(Debug, Clone)]
struct Settings {
    allocator: Option<String>,
    alignment: u32,
    prefix: u32,
    padding: u32,
    zero_prefix: bool,
    zero_padding: bool,
    pattern: MemSrcPattern,
    seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            allocator: None,
            alignment: DEFAULT_ALIGNMENT,
            prefix: DEFAULT_PREFIX,
            padding: DEFAULT_PADDING,
            zero_prefix: false,
            zero_padding: false,
            pattern: MemSrcPattern::default(),
            seed: DEFAULT_SEED,
        }
    }
}

impl Settings {
    fn params(&self) -> gst::AllocationParams {
        let mut flags = gst::MemoryFlags::empty();
        if self.zero_prefix {
            flags |= gst::MemoryFlags::ZERO_PREFIXED;
        }
        if self.zero_padding {
            flags |= gst::MemoryFlags::ZERO_PADDED;
        }
        gst::AllocationParams::new(
            flags,
            (self.alignment - 1) as usize,
            self.prefix as usize,
            self.padding as usize,
        )
    }
}

/// What streaming uses, from `start()` to `stop()`.
#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started {
        allocator: gst::Allocator,
        params: gst::AllocationParams,
        pattern: Pattern,
        rng: XorShift,
        /// Byte offset of the next buffer.
        offset: u64,
    },
}

/// The counters behind `stats`: zeroed by `start()`, kept after `stop()` so that they can be
/// read once the stream is over.
#[derive(Default)]
struct Stats {
    buffers: u64,
    bytes: u64,
    allocator: String,
}

#[derive(Default)]
pub struct MemSrc {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    stats: Mutex<Stats>,
    refused: crate::elements::common::Refusals,
}

impl MemSrc {
    fn stats(&self) -> gst::Structure {
        let s = self.stats.lock().unwrap();
        gst::Structure::builder("memsrc")
            .field("buffers", s.buffers)
            .field("bytes", s.bytes)
            .field("allocator", s.allocator.as_str())
            .build()
    }

    /// The allocator and params to use: the `allocator` property, else the first allocator
    /// downstream proposed (with the stricter of both alignments), else AlignedMemory.
    fn choose(
        &self,
        settings: &Settings,
        proposed: Option<(Option<gst::Allocator>, gst::AllocationParams)>,
    ) -> Result<(gst::Allocator, gst::AllocationParams), gst::ErrorMessage> {
        let ours = settings.params();
        if let Some(name) = &settings.allocator {
            let allocator = gst::Allocator::find(Some(name)).ok_or_else(|| {
                gst::error_msg!(
                    gst::ResourceError::NotFound,
                    (
                        "No allocator named '{}' is registered (try AlignedMemory or SystemMemory)",
                        name
                    )
                )
            })?;
            // Downstream proposes an instance of the same kind (memfdsink proposes its
            // stream's own MemfdMemory allocator): that one, for the same memory.
            if let Some((Some(p), _)) = &proposed
                && p.type_() == allocator.type_()
            {
                return Ok((p.clone(), ours));
            }
            return Ok((allocator, ours));
        }
        if let Some((Some(allocator), params)) = proposed {
            let align = params.align() | ours.align();
            let merged = gst::AllocationParams::new(
                ours.flags() | params.flags(),
                align,
                ours.prefix().max(params.prefix()),
                ours.padding().max(params.padding()),
            );
            return Ok((allocator, merged));
        }
        Ok((aligned_allocator().upcast(), ours))
    }
}

#[glib::object_subclass]
impl ObjectSubclass for MemSrc {
    const NAME: &'static str = "GstMemSrc";
    type Type = super::MemSrc;
    type ParentType = gst_base::PushSrc;
}

impl ObjectImpl for MemSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("allocator")
                    .nick("Allocator")
                    .blurb("Name of the registered allocator to use (e.g. AlignedMemory, SystemMemory); \
                            unset: what downstream proposes, else AlignedMemory")
                    .mutable_ready()
                    .build(),
                crate::elements::common::alignment_pspec("Alignment in bytes asked of the allocator (a power of two)", DEFAULT_ALIGNMENT, false),
                glib::ParamSpecUInt::builder("prefix")
                    .nick("Prefix")
                    .blurb("Bytes reserved before each payload")
                    .maximum(MAX_PREFIX_PADDING)
                    .default_value(DEFAULT_PREFIX)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("padding")
                    .nick("Padding")
                    .blurb("Bytes reserved after each payload")
                    .maximum(MAX_PREFIX_PADDING)
                    .default_value(DEFAULT_PADDING)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("zero-prefix")
                    .nick("Zero prefix")
                    .blurb("Ask for a zeroed prefix (GST_MEMORY_FLAG_ZERO_PREFIXED)")
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("zero-padding")
                    .nick("Zero padding")
                    .blurb("Ask for zeroed padding (GST_MEMORY_FLAG_ZERO_PADDED)")
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("pattern", MemSrcPattern::default())
                    .nick("Pattern")
                    .blurb("What the payload holds")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("seed")
                    .nick("Seed")
                    .blurb("Seed of the random pattern: the same seed gives the same bytes")
                    .default_value(DEFAULT_SEED)
                    .mutable_ready()
                    .build(),
                crate::elements::common::stats_pspec("Buffers and bytes produced, and the allocator used"),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "allocator" => {
                settings.allocator = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .filter(|s| !s.is_empty())
            }
            "alignment" => {
                let v = value.get::<u32>().expect("type checked upstream");
                self.refused
                    .set_alignment(*CAT, &*self.obj(), &mut settings.alignment, v);
            }
            "prefix" => settings.prefix = value.get().expect("type checked upstream"),
            "padding" => settings.padding = value.get().expect("type checked upstream"),
            "zero-prefix" => settings.zero_prefix = value.get().expect("type checked upstream"),
            "zero-padding" => settings.zero_padding = value.get().expect("type checked upstream"),
            "pattern" => settings.pattern = value.get().expect("type checked upstream"),
            "seed" => settings.seed = value.get().expect("type checked upstream"),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "allocator" => settings.allocator.to_value(),
            "alignment" => settings.alignment.to_value(),
            "prefix" => settings.prefix.to_value(),
            "padding" => settings.padding.to_value(),
            "zero-prefix" => settings.zero_prefix.to_value(),
            "zero-padding" => settings.zero_padding.to_value(),
            "pattern" => settings.pattern.to_value(),
            "seed" => settings.seed.to_value(),
            "stats" => self.stats().to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_format(gst::Format::Bytes);
        // BaseSrc sends EOS itself when num-buffers is reached: post the stats as it leaves.
        let weak = obj.downgrade();
        obj.src_pad()
            .add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_pad, info| {
                if let Some(gst::PadProbeData::Event(ev)) = &info.data
                    && ev.type_() == gst::EventType::Eos
                    && let Some(obj) = weak.upgrade()
                {
                    let stats = obj.imp().stats();
                    gst::info!(CAT, obj = obj, "EOS: {stats}");
                    post_stats(&obj, stats);
                }
                gst::PadProbeReturn::Ok
            });
    }
}

impl GstObjectImpl for MemSrc {}

impl ElementImpl for MemSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Memory source",
                "Source/Memory",
                "Produces buffers of blocksize bytes from a chosen allocator, with alignment, \
                 prefix, padding and a reproducible pattern",
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

impl BaseSrcImpl for MemSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        self.refused.post(&*self.obj());
        // An unknown allocator name is an error when the pipeline starts.
        let (allocator, params) = self.choose(&settings, None)?;
        *self.stats.lock().unwrap() = Stats {
            allocator: crate::elements::common::allocator_name(&allocator),
            ..Stats::default()
        };
        *self.state.lock().unwrap() = State::Started {
            allocator,
            params,
            pattern: match settings.pattern {
                MemSrcPattern::Zero => Pattern::Zero,
                MemSrcPattern::Counter => Pattern::Counter,
                MemSrcPattern::Random => Pattern::Random,
                MemSrcPattern::None => Pattern::None,
            },
            rng: XorShift::new(settings.seed),
            offset: 0,
        };
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *self.state.lock().unwrap() = State::Stopped;
        Ok(())
    }

    fn is_seekable(&self) -> bool {
        false
    }

    fn decide_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        let settings = self.settings.lock().unwrap().clone();
        let proposed = query.allocation_params().next();
        let (allocator, params) = self
            .choose(&settings, proposed)
            .map_err(|e| gst::loggable_error!(CAT, "{}", e.to_string()))?;
        gst::debug!(
            CAT,
            imp = self,
            "allocating from {} with {params:?}",
            crate::elements::common::allocator_name(&allocator)
        );
        if let State::Started {
            allocator: a,
            params: p,
            ..
        } = &mut *self.state.lock().unwrap()
        {
            self.stats.lock().unwrap().allocator =
                crate::elements::common::allocator_name(&allocator);
            *a = allocator;
            *p = params;
        }
        self.parent_decide_allocation(query)
    }
}

impl PushSrcImpl for MemSrc {
    fn create(
        &self,
        _buffer: Option<&mut gst::BufferRef>,
    ) -> Result<CreateSuccess, gst::FlowError> {
        let size = self.obj().blocksize() as usize;
        let mut guard = self.state.lock().unwrap();
        let State::Started {
            allocator,
            params,
            pattern,
            rng,
            offset,
        } = &mut *guard
        else {
            gst::element_imp_error!(self, gst::CoreError::StateChange, ("Not started"));
            return Err(gst::FlowError::Error);
        };
        let mut mem = allocator.alloc(size, Some(params)).map_err(|err| {
            gst::element_imp_error!(
                self,
                gst::ResourceError::NoSpaceLeft,
                (
                    "{} could not allocate {} bytes: {}",
                    crate::elements::common::allocator_name(allocator),
                    size,
                    err
                )
            );
            gst::FlowError::Error
        })?;
        // pattern=none: not even mapped (a camera's hardware writes its frames).
        if *pattern != Pattern::None {
            let m = mem.get_mut().expect("a new memory is writable");
            let mut map = m.map_writable().map_err(|_| {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "Memory from {} cannot be mapped for writing",
                        crate::elements::common::allocator_name(allocator)
                    )
                );
                gst::FlowError::Error
            })?;
            fill_pattern(map.as_mut_slice(), *pattern, *offset, rng);
        }
        let mut buffer = gst::Buffer::new();
        {
            let b = buffer.get_mut().expect("a new buffer is writable");
            b.append_memory(mem);
            b.set_offset(*offset);
            b.set_offset_end(*offset + size as u64);
            if self.stats.lock().unwrap().buffers == 0 {
                b.set_flags(gst::BufferFlags::DISCONT);
            }
        }
        *offset += size as u64;
        let mut stats = self.stats.lock().unwrap();
        stats.buffers += 1;
        stats.bytes = *offset;
        Ok(CreateSuccess::NewBuffer(buffer))
    }
}
