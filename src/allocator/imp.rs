// SPDX-License-Identifier: MPL-2.0
//! The `AlignedMemory` GObject subclass of `GstAllocator`. The vfuncs and `alloc`/`free`
//! live in `memory.rs`; this file holds no `unsafe`.

use std::sync::LazyLock;

use gst::glib;
use gst::subclass::prelude::*;

pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "alignedmemory",
        gst::DebugColorFlags::empty(),
        Some("memkit AlignedMemory allocator"),
    )
});

#[derive(Default)]
pub struct AlignedAllocator;

#[glib::object_subclass]
impl ObjectSubclass for AlignedAllocator {
    const NAME: &'static str = "MemkitAlignedAllocator";
    type Type = super::AlignedAllocator;
    type ParentType = gst::Allocator;
}

impl ObjectImpl for AlignedAllocator {
    fn constructed(&self) {
        self.parent_constructed();
        super::memory::install_vfuncs(&self.obj());
        gst::debug!(CAT, imp = self, "created");
    }
}

impl GstObjectImpl for AlignedAllocator {}
