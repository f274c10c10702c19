// SPDX-License-Identifier: MPL-2.0
//! `memcheck`: passes buffers through unchanged and checks every memory of every buffer against
//! what the user asks: payload `alignment`, `memory-type`, that ZERO_PREFIXED / ZERO_PADDED
//! regions really hold zeros, and that the memory maps for reading. Each violation is logged
//! with what was expected and found and counted; with `fail-on-violation` it is an ERROR.
//!
//! Lock order: `settings`, then `stats`.

use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_transform::GenerateOutputSuccess;
use gst_base::subclass::prelude::*;

use crate::elements::common::{describe_buffer, post_stats};
use crate::elements::memory::with_mapped_region;

const DEFAULT_ALIGNMENT: u32 = 1;
const DEFAULT_FAIL_ON_VIOLATION: bool = false;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memcheck",
        gst::DebugColorFlags::empty(),
        Some("memkit memory checker"),
    )
});

#[derive(Debug, Clone)]
struct Settings {
    alignment: u32,
    memory_type: Option<String>,
    fail_on_violation: bool,
    read_pages: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            alignment: DEFAULT_ALIGNMENT,
            memory_type: None,
            fail_on_violation: DEFAULT_FAIL_ON_VIOLATION,
            read_pages: false,
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    buffers: u64,
    memories: u64,
    violations: u64,
    pages_read: u64,
}

impl Stats {
    fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder("memcheck")
            .field("buffers", self.buffers)
            .field("memories", self.memories)
            .field("violations", self.violations)
            .field("pages-read", self.pages_read)
            .build()
    }
}

#[derive(Default)]
pub struct MemCheck {
    settings: Mutex<Settings>,
    stats: Mutex<Stats>,
    refused: crate::elements::common::Refusals,
}

/// The stride of `read-pages`: one byte read per this many.
const PAGE: usize = 4096;

/// Reads one byte of every page of `payload` (as a consumer that reads the data would fault
/// its pages in); returns how many pages.
fn read_pages(payload: &[u8]) -> u64 {
    let mut sum = 0u8;
    for &b in payload.iter().step_by(PAGE) {
        sum = sum.wrapping_add(std::hint::black_box(b));
    }
    std::hint::black_box(sum);
    payload.len().div_ceil(PAGE) as u64
}

/// Checks one memory; returns each broken rule with what was expected and found, and the
/// pages read (`read-pages`).
fn check_memory(mem: &gst::MemoryRef, settings: &Settings) -> (Vec<String>, u64) {
    let mut violations = Vec::new();
    if let Some(want) = &settings.memory_type
        && !mem.is_type(want.as_str())
    {
        let found = mem
            .allocator()
            .map_or("none".to_string(), crate::elements::common::allocator_name);
        violations.push(format!("memory-type: expected {want}, found {found}"));
    }
    let flags = mem.flags();
    let mut pages = 0;
    let checked = with_mapped_region(mem, |region, offset, size| {
        let mut found = Vec::new();
        if settings.read_pages {
            pages = read_pages(&region[offset..offset + size]);
        }
        let addr = region.as_ptr() as usize + offset;
        let align = settings.alignment as usize;
        if !addr.is_multiple_of(align) {
            found.push(format!(
                "alignment: expected the payload aligned to {align} bytes, found address {addr:#x} (off by {})",
                addr % align
            ));
        }
        if flags.contains(gst::MemoryFlags::ZERO_PREFIXED)
            && let Some(pos) = region[..offset].iter().position(|&b| b != 0)
        {
            found.push(format!(
                "zero-prefix: ZERO_PREFIXED, but byte {pos} of the {offset}-byte prefix is {:#04x}",
                region[pos]
            ));
        }
        if flags.contains(gst::MemoryFlags::ZERO_PADDED) {
            let tail = &region[offset + size..];
            if let Some(pos) = tail.iter().position(|&b| b != 0) {
                found.push(format!(
                    "zero-padding: ZERO_PADDED, but byte {pos} of the {}-byte padding is {:#04x}",
                    tail.len(),
                    tail[pos]
                ));
            }
        }
        found
    });
    match checked {
        Some(found) => violations.extend(found),
        None => violations
            .push("mappable: expected the memory to map for reading, it did not".to_string()),
    }
    (violations, pages)
}

#[glib::object_subclass]
impl ObjectSubclass for MemCheck {
    const NAME: &'static str = "GstMemCheck";
    type Type = super::MemCheck;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for MemCheck {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                crate::elements::common::alignment_pspec("Required alignment in bytes of every payload (a power of two; 1 checks nothing)", DEFAULT_ALIGNMENT, true),
                glib::ParamSpecString::builder("memory-type")
                    .nick("Memory type")
                    .blurb("Required memory type (e.g. AlignedMemory, SystemMemory); unset checks nothing")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("fail-on-violation")
                    .nick("Fail on violation")
                    .blurb("Post an ERROR naming the buffer and the rule at the first violation")
                    .default_value(DEFAULT_FAIL_ON_VIOLATION)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("read-pages")
                    .nick("Read pages")
                    .blurb("Read one byte of every page of each payload, as a consumer that reads the data would (for benchmarks)")
                    .default_value(false)
                    .mutable_playing()
                    .build(),
                crate::elements::common::stats_pspec("Buffers and memories checked, violations found, pages read"),
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
            "memory-type" => {
                settings.memory_type = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .filter(|s| !s.is_empty())
            }
            "fail-on-violation" => {
                settings.fail_on_violation = value.get().expect("type checked upstream")
            }
            "read-pages" => settings.read_pages = value.get().expect("type checked upstream"),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "alignment" => settings.alignment.to_value(),
            "memory-type" => settings.memory_type.to_value(),
            "fail-on-violation" => settings.fail_on_violation.to_value(),
            "read-pages" => settings.read_pages.to_value(),
            "stats" => self.stats.lock().unwrap().to_structure().to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.obj().set_passthrough(true);
    }
}

impl GstObjectImpl for MemCheck {}

impl ElementImpl for MemCheck {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Memory checker",
                "Filter/Debug/Memory",
                "Checks every memory of every buffer: payload alignment, memory type, zeroed \
                 prefix/padding, mappability",
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

impl BaseTransformImpl for MemCheck {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = true;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        *self.stats.lock().unwrap() = Stats::default();
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

    fn generate_output(&self) -> Result<GenerateOutputSuccess, gst::FlowError> {
        let Some(buf) = self.take_queued_buffer() else {
            return Ok(GenerateOutputSuccess::NoOutput);
        };
        let settings = self.settings.lock().unwrap().clone();
        let index = self.stats.lock().unwrap().buffers;
        if buf.n_memory() == 0 {
            gst::warning!(
                CAT,
                imp = self,
                "{} has no memory: nothing to check",
                describe_buffer(index, &buf)
            );
        }
        let mut first_violation = None;
        let mut count = 0;
        let mut pages = 0;
        for (idx, mem) in buf.iter_memories().enumerate() {
            let (rules, read) = check_memory(mem, &settings);
            pages += read;
            for rule in rules {
                gst::warning!(
                    CAT,
                    imp = self,
                    "{} memory {idx}: {rule}",
                    describe_buffer(index, &buf)
                );
                count += 1;
                first_violation.get_or_insert((idx, rule));
            }
        }
        {
            let mut stats = self.stats.lock().unwrap();
            stats.buffers += 1;
            stats.memories += buf.n_memory() as u64;
            stats.violations += count;
            stats.pages_read += pages;
        }
        if let (true, Some((idx, rule))) = (settings.fail_on_violation, first_violation) {
            gst::element_imp_error!(
                self,
                gst::StreamError::Failed,
                (
                    "Memory check failed: {} memory {}: {}",
                    describe_buffer(index, &buf),
                    idx,
                    rule
                )
            );
            return Err(gst::FlowError::Error);
        }
        Ok(GenerateOutputSuccess::Buffer(buf))
    }
}
