// SPDX-License-Identifier: MPL-2.0
//! `GstAllocatorClass.alloc`/`free` of the `MemfdAllocator` subclass.

use std::ptr;

use crate::allocator::debug::MEMFD as CAT;
use gst::ffi;
use gst::glib::translate::*;
use gst::prelude::*;

use crate::allocator::memfd::imp::MemfdAllocator;
use crate::allocator::memfd::stats::{self as mstats, Counter as M};

use super::alloc::{ON_FREE, alloc};
use super::blocks::block_freed;

// SAFETY: `alloc` returns NULL or a fully initialised fd memory of this allocator; `free`
// chains up to GstFdAllocator's, which unmaps and closes it.
unsafe impl gst::subclass::prelude::AllocatorImpl for MemfdAllocator {
    unsafe fn free(&self, memory: *mut ffi::GstMemory) {
        use gst::subclass::prelude::AllocatorImplExt;
        let owner = ON_FREE
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&(memory as usize)));
        // SAFETY: `memory` is live until parent_free below.
        let (root, recyclable, maxsize) = unsafe {
            (
                (*memory).parent.is_null(),
                (*memory).mini_object.dispose.is_some(),
                (*memory).maxsize,
            )
        };
        // A root dies here unless it was a recycled block being trimmed (counted when it went
        // to the cache): blocks we allocated keep their dispose hook, wrapped ones an owner.
        if root && (recyclable || owner.is_some()) {
            mstats::count(M::Frees, 1);
            mstats::block(memory as usize, maxsize, false);
        }
        if root {
            block_freed(memory);
        }
        // SAFETY: core calls free once per memory of ours; GstFdAllocator releases it.
        unsafe { self.parent_free(memory) };
        // Dropped after the block is unmapped and closed: the producer may reuse it now.
        drop(owner);
    }

    unsafe fn alloc(&self, size: usize, params: &gst::AllocationParams) -> *mut ffi::GstMemory {
        use gst::subclass::prelude::ObjectSubclassExt;
        match alloc(self.obj().upcast_ref(), self.stream(), size, params) {
            Ok(mem) => mem.into_glib_ptr(),
            Err(err) => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "allocation of {} bytes failed: {}",
                    size,
                    err
                );
                ptr::null_mut()
            }
        }
    }
}
