// SPDX-License-Identifier: MPL-2.0
//! Helpers for any GstMemory (of any allocator), used by the elements.

use gst::prelude::*;

use crate::allocator::raw::root_memory;

/// How many holders (shares and buffers) a memory may have before memkit's elements copy
/// instead of sharing it again: well below the 65535 that core's 16-bit share count in
/// `GstMiniObject.lockstate` can hold (past it, lock accounting is corrupted).
pub const MAX_LIVE_SHARES: u32 = 16384;

/// How many holders the block behind `mem` has now: core's share count of its root (each
/// share of a memory and each buffer holding it takes an exclusive lock on it).
pub fn live_shares(mem: &gst::MemoryRef) -> u32 {
    let root = root_memory(mem);
    // SAFETY: the root is live while `mem` is; core only ever changes `lockstate` atomically.
    let state = unsafe {
        std::sync::atomic::AtomicI32::from_ptr(&raw mut (*root).mini_object.lockstate)
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    (state as u32) >> 16
}

/// Every flag bit of `buffer` (`GST_BUFFER_FLAGS`): `BufferRef::flags` keeps only core's, and
/// drops the video flags (interlaced, top field first, ...) that lie above them.
pub fn buffer_flag_bits(buffer: &gst::BufferRef) -> u32 {
    let ptr = buffer.as_ptr() as *mut gst::ffi::GstBuffer;
    // SAFETY: `buffer` is live for this borrow; read atomically, as another holder of a
    // writable reference could not exist while we borrow it, but a relaxed atomic load costs
    // nothing and races with nothing.
    unsafe {
        std::sync::atomic::AtomicU32::from_ptr(&raw mut (*ptr).mini_object.flags)
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The memory type `allocator` gives its memories (`GstAllocator.mem_type`), if it set one.
/// `gst::Allocator::memory_type` assumes it did; some allocators (shmsink's) leave it NULL.
pub fn memory_type_of(allocator: &gst::Allocator) -> Option<String> {
    let ptr = allocator.as_ptr();
    // SAFETY: `allocator` is a live GstAllocator; `mem_type` is set (if at all) before the
    // allocator is handed out and never freed while it lives, and is a NUL-terminated string.
    unsafe {
        let t = (*ptr).mem_type;
        if t.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(t).to_str().ok().map(str::to_owned)
    }
}

pub use crate::allocator::raw::{mapped_addr, try_share, with_mapped_region};
