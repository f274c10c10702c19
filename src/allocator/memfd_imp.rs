// SPDX-License-Identifier: MPL-2.0
//! The `MemfdMemory` GObject subclass of `GstFdAllocator`. Its `alloc` and memory vfuncs live in
//! `memory::memfd`; this file holds no `unsafe`.

use std::sync::LazyLock;

use gst::glib;
use gst::subclass::prelude::*;

pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memfdmemory",
        gst::DebugColorFlags::empty(),
        Some("memkit MemfdMemory allocator"),
    )
});

#[derive(Default)]
pub struct MemfdAllocator;

#[glib::object_subclass]
impl ObjectSubclass for MemfdAllocator {
    const NAME: &'static str = "MemkitMemfdAllocator";
    type Type = super::memfd::MemfdAllocator;
    type ParentType = gst_allocators::FdAllocator;
}

impl ObjectImpl for MemfdAllocator {
    fn constructed(&self) {
        self.parent_constructed();
        super::memory::memfd::install_vfuncs(&self.obj());
        gst::debug!(CAT, imp = self, "created");
    }
}

impl GstObjectImpl for MemfdAllocator {}
impl gst_allocators::subclass::prelude::FdAllocatorImpl for MemfdAllocator {}
