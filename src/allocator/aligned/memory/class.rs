// SPDX-License-Identifier: MPL-2.0
//! `GstAllocatorClass.alloc`/`free` of the `AlignedAllocator` subclass.

use std::ptr::{self};

use crate::allocator::debug::ALIGNED as CAT;
use gst::ffi;
use gst::glib::translate::*;
use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::allocator::aligned::imp::AlignedAllocator;
use crate::allocator::error::AllocError;
use crate::allocator::layout::BlockLayout;

use super::block::flags_bits;
use super::lifecycle::{alloc_block, release};

// SAFETY: `alloc` returns either NULL or a fully initialised GstAlignedMemory whose allocator is
// this instance; `free` releases exactly what `alloc`, `mem_share`, `mem_copy` or `wrap` created.
unsafe impl gst::subclass::prelude::AllocatorImpl for AlignedAllocator {
    /// `GstAllocatorClass.alloc` (contract of `gst_allocator_alloc`): NULL and a warning on
    /// overflow or out-of-memory, never a panic.
    unsafe fn alloc(&self, size: usize, params: &gst::AllocationParams) -> *mut ffi::GstMemory {
        let result = BlockLayout::new(size, params.prefix(), params.padding(), params.align())
            .map_err(AllocError::from)
            .and_then(|block| {
                let allocator: *mut ffi::GstAllocator =
                    self.obj().upcast_ref::<gst::Allocator>().to_glib_none().0;
                alloc_block(allocator, &block, flags_bits(params.flags()))
            });
        match result {
            Ok(mem) => mem.as_ptr().cast(),
            Err(err) => {
                gst::warning!(CAT, imp = self, "allocation failed: {}", err);
                ptr::null_mut()
            }
        }
    }

    /// `GstAllocatorClass.free` (contract of `gst_allocator_free`): core has already released
    /// the parent. Free the struct, and the storage if this is a root.
    unsafe fn free(&self, memory: *mut ffi::GstMemory) {
        // SAFETY: core calls free once, with refcount 0, on a memory this allocator created
        // (with gst_memory_init, for instances other than the registered one).
        unsafe { release(memory) };
    }
}
