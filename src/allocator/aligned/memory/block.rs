// SPDX-License-Identifier: MPL-2.0
//! The C struct behind every `AlignedMemory` memory and its typed wrapper.

use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use gst::ffi;
use gst::glib;
use gst::glib::translate::*;

use super::storage::Backing;
use crate::allocator::aligned::cache::Linked;
use crate::allocator::aligned::stats::{self, Counter};
use crate::allocator::shared::allocator_is;

// `gst::memory_object_wrapper!` expects this helper macro at its call site.
macro_rules! skip_assert_initialized {
    () => {};
}

/// The GType name of the `AlignedAllocator` subclass.
pub const ALLOCATOR_TYPE_NAME: &str = "MemkitAlignedAllocator";

/// Whether `allocator` is an `AlignedAllocator`: a check of its GType (not of the `mem_type`
/// string, which any allocator could claim), looked up by name once it is registered.
fn is_aligned_allocator(allocator: &gst::Allocator) -> bool {
    static TYPE: OnceLock<glib::Type> = OnceLock::new();
    allocator_is(allocator, &TYPE, ALLOCATOR_TYPE_NAME)
}

/// The C struct behind every `AlignedMemory` memory: a `GstMemory` followed by our fields.
/// Opaque to users; exposed only as the FFI type of [`AlignedMemory`].
#[repr(C)]
pub struct GstAlignedMemory {
    pub(super) mem: ffi::GstMemory,
    /// Region base: what `mem_map` returns (core adds `offset`). Never NULL.
    pub(super) data: NonNull<u8>,
    /// `gst_memory_map` calls on this memory not yet counted in the statistics: counted here,
    /// next to `data` (a plain load and store, no thread-local lookup on the map path), and
    /// added to the statistics when the memory is freed. Two threads mapping one memory at the
    /// same instant may count one map.
    pub(super) maps: AtomicU64,
    /// The thread-magazine list this root goes back to when it is freed (`cache::NO_SLOT`:
    /// it does not, e.g. a share, a wrapped or guarded block); set when the block is made.
    pub(super) slot: u16,
    pub(super) backing: Backing,
    /// The next block of a free list while this one waits in a thread's cache; `None`
    /// otherwise.
    pub(super) next: Option<Box<GstAlignedMemory>>,
}

impl GstAlignedMemory {
    /// Adds the maps of this memory, being freed, to the statistics (see `maps`) and clears
    /// its count, so that a recycled header starts from zero.
    #[inline(always)]
    pub(super) fn count_maps(&self) {
        let n = self.maps.load(Ordering::Relaxed);
        if n != 0 {
            self.maps.store(0, Ordering::Relaxed);
            stats::count(Counter::Maps, n);
        }
    }
}

impl Linked for GstAlignedMemory {
    #[inline(always)]
    fn link(&mut self) -> &mut Option<Box<Self>> {
        &mut self.next
    }
}

gst::memory_object_wrapper!(
    AlignedMemory,
    AlignedMemoryRef,
    GstAlignedMemory,
    |mem: &gst::MemoryRef| {
        // A type check on the allocator's GType (not on the `mem_type` string, which any
        // allocator could claim) guarantees the memory really is a `GstAlignedMemory`.
        mem.allocator().is_some_and(is_aligned_allocator)
    },
    gst::Memory,
    gst::MemoryRef
);

// SAFETY: the region is shared between threads exactly like GStreamer's own memories: all our
// fields are immutable while the memory is alive, and access to the bytes is arbitrated by
// GstMemory's lock (map/unmap) as for every GstMemory. A wrapped owner is `Send`.
unsafe impl Send for GstAlignedMemory {}
// SAFETY: as above; `&GstAlignedMemory` only reads immutable fields.
unsafe impl Sync for GstAlignedMemory {}

pub fn flags_bits(flags: gst::MemoryFlags) -> ffi::GstMemoryFlags {
    flags.into_glib()
}
