// SPDX-License-Identifier: MPL-2.0
//! `GstAllocatorClass.alloc`/`free` of the `AlignedAllocator` subclass. The class calls
//! `lifecycle::class_alloc` directly (see `install_class_alloc`); `alloc` here is for callers
//! that go through the implementation.

use gst::ffi;
use gst::glib::translate::*;

use crate::allocator::aligned::imp::AlignedAllocator;

use super::block::GstAlignedMemory;
use super::lifecycle::{class_alloc, release};

// SAFETY: `alloc` returns either NULL or a fully initialised GstAlignedMemory whose allocator is
// this instance; `free` releases exactly what `alloc`, `mem_share`, `mem_copy` or `wrap` created.
unsafe impl gst::subclass::prelude::AllocatorImpl for AlignedAllocator {
    /// What the class's `alloc` does (the class calls `class_alloc` directly).
    unsafe fn alloc(&self, size: usize, params: &gst::AllocationParams) -> *mut ffi::GstMemory {
        use gst::prelude::*;
        use gst::subclass::prelude::*;
        let allocator: *mut ffi::GstAllocator =
            self.obj().upcast_ref::<gst::Allocator>().to_glib_none().0;
        // SAFETY: a live allocator of this class and valid params.
        unsafe { class_alloc(allocator, size, params.as_ptr().cast_mut()) }
    }

    /// `GstAllocatorClass.free` (contract of `gst_allocator_free`): core has already released
    /// the parent. Free the struct, and the storage if this is a root.
    unsafe fn free(&self, memory: *mut ffi::GstMemory) {
        // SAFETY: core calls free once, with refcount 0, on a memory this allocator created
        // (with gst_memory_init, for instances other than the registered one).
        unsafe {
            (*(memory as *const GstAlignedMemory)).count_maps();
            release(memory)
        };
    }
}
