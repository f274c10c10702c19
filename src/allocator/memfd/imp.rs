// SPDX-License-Identifier: MPL-2.0
//! The `MemfdMemory` GObject subclass of `GstFdAllocator`. Its `alloc` and memory vfuncs live in
//! `memory::memfd`; this file holds no FFI code.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::memory::{self, ALLOCATOR_TYPE_NAME};
use super::stats;
use crate::allocator::debug::MEMFD as CAT;

#[derive(Default)]
pub struct MemfdAllocator;

#[glib::object_subclass]
impl ObjectSubclass for MemfdAllocator {
    const NAME: &'static str = ALLOCATOR_TYPE_NAME;
    type Type = super::MemfdAllocator;
    type ParentType = gst_allocators::FdAllocator;
}

impl ObjectImpl for MemfdAllocator {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
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

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
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
