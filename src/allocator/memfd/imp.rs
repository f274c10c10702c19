// SPDX-License-Identifier: MPL-2.0
//! The `MemfdMemory` GObject subclass of `GstFdAllocator`. Its `alloc` and memory vfuncs live
//! in `memory/` (`class.rs`, `vfuncs.rs`); this file holds no FFI code.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::memory::{self, ALLOCATOR_TYPE_NAME};
use super::stats;
use crate::allocator::debug::MEMFD as CAT;
use crate::allocator::shared::{bound_from, cache_properties};

/// The stream the allocator serves: 0 for the registered instance (private memory), a
/// stream id for the instance a `memfdsink` proposes (see `memory::blocks::Owner`).
#[derive(Default)]
pub struct MemfdAllocator {
    stream: std::sync::atomic::AtomicU64,
}

impl MemfdAllocator {
    pub(super) fn stream(&self) -> u64 {
        self.stream.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn set_stream(&self, stream: u64) {
        self.stream
            .store(stream, std::sync::atomic::Ordering::Relaxed);
    }
}

#[glib::object_subclass]
impl ObjectSubclass for MemfdAllocator {
    const NAME: &'static str = ALLOCATOR_TYPE_NAME;
    type Type = super::MemfdAllocator;
    type ParentType = gst_allocators::FdAllocator;
}

impl ObjectImpl for MemfdAllocator {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let [max, cached] = cache_properties(
                "Bound of MemfdMemory's recycling of freed blocks, process-wide and separate \
                 from AlignedMemory's (0 disables recycling; the initial value comes from \
                 MEMKIT_MAX_CACHED_BYTES)",
                "Bytes held by MemfdMemory's recycled blocks",
            );
            vec![
                max,
                cached,
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "memkit-memfd-stats: blocks-live, bytes-live, cached-bytes, allocations, \
                         recycled, frees, wraps, shares, copies, bytes-copied, span-hits, maps \
                         (guint64, process-wide; reset with the reset-stats action signal)",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        match pspec.name() {
            "max-cached-bytes" => {
                let max = bound_from(value);
                gst::debug!(CAT, imp = self, "max-cached-bytes set to {}", max);
                memory::set_max_bytes(max);
            }
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "max-cached-bytes" => (memory::max_bytes() as u64).to_value(),
            "cached-bytes" => (memory::recycled_bytes() as u64).to_value(),
            "stats" => stats::to_structure(memory::recycled_bytes()).to_value(),
            _ => unimplemented!(),
        }
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            vec![
                glib::subclass::Signal::builder("reset-stats")
                    .action()
                    .class_handler(|_| {
                        stats::reset();
                        None
                    })
                    .build(),
            ]
        });
        SIGNALS.as_ref()
    }

    fn constructed(&self) {
        self.parent_constructed();
        memory::install_vfuncs(self.obj().upcast_ref());
        gst::debug!(CAT, imp = self, "created");
    }
}

impl GstObjectImpl for MemfdAllocator {}
impl gst_allocators::subclass::prelude::FdAllocatorImpl for MemfdAllocator {}
