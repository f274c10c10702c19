// SPDX-License-Identifier: MPL-2.0
//! `MemfdMemory`: a `GstFdAllocator` whose blocks are sealed memfds, so another process can
//! map them through their descriptor (`gst_fd_memory_get_fd`). Same payload alignment (64 bytes
//! minimum, up to a page) and zeroing guarantees as `AlignedMemory`; shares of shares get the
//! right size and contiguous shares span (both missing from 1.22's fd memory).
//!
//! This module is the safe API; `imp.rs` is the GObject subclass, `sys.rs` the memfd system
//! calls, `memory/` the unsafe half.

use std::os::fd::OwnedFd;
use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::ObjectSubclassIsExt;

use super::error::{AllocError, FdError};

mod imp;
#[allow(unsafe_code)]
mod memory;
pub mod stats;
mod sys;

pub(crate) use memory::sockopt;
pub use memory::{
    Block, FreedBlocks, Owner, audience, block_of, dup_fd, forget_stream, freeze, is_memfd_memory,
    is_sealed_memfd, new_audience, owner_of, retire_block, sent_to_all, share_block,
    subscribe_freed,
};

/// The name `MemfdMemory` is registered under.
pub const MEMFD_MEMORY: &str = "MemfdMemory";

glib::wrapper! {
    /// The `MemfdMemory` allocator (GType `MemkitMemfdAllocator`), a `GstFdAllocator`.
    pub struct MemfdAllocator(ObjectSubclass<imp::MemfdAllocator>)
        @extends gst_allocators::FdAllocator, gst::Allocator, gst::Object;
}

static ALLOCATOR: LazyLock<MemfdAllocator> = LazyLock::new(|| {
    let allocator = glib::Object::new::<MemfdAllocator>();
    gst::Allocator::register(MEMFD_MEMORY, allocator.clone());
    allocator
});

/// The registered `MemfdMemory` allocator.
pub fn memfd_allocator() -> MemfdAllocator {
    ALLOCATOR.clone()
}

pub(super) fn register() {
    LazyLock::force(&ALLOCATOR);
}

/// The system page size.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// Frees every recycled block.
pub fn trim_cache() {
    memory::trim_recycled();
}

/// Bytes held by recycled blocks.
pub fn cached_bytes() -> usize {
    memory::recycled_bytes()
}

/// The bound of MemfdMemory's recycling, in bytes (its allocator's `max-cached-bytes`; the
/// initial value comes from `MEMKIT_MAX_CACHED_BYTES`, like AlignedMemory's).
pub fn max_cached_bytes() -> usize {
    memory::max_bytes()
}

/// Sets the bound of MemfdMemory's recycling (0 disables it) and frees recycled blocks until
/// they fit in it. AlignedMemory's cache is not affected.
pub fn set_max_cached_bytes(max: usize) {
    memory::set_max_bytes(max);
}

impl MemfdAllocator {
    /// A new allocator for one stream of a `memfdsink` (not registered): the blocks that
    /// stream sends are recycled for this allocator only, so a consumer of the stream, which
    /// keeps them mapped, never sees another stream's frames or private memory in them.
    pub fn for_stream() -> MemfdAllocator {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let allocator = glib::Object::new::<MemfdAllocator>();
        allocator
            .imp()
            .set_stream(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        allocator
    }

    /// The stream this allocator serves (0: the registered instance, private memory).
    pub fn stream(&self) -> u64 {
        self.imp().stream()
    }

    /// Allocates `size` bytes with `params` (or the defaults): the memory is fd memory whose
    /// payload is aligned to `params.align() | 63` (at most a page). Errors are typed.
    pub fn alloc_memfd(
        &self,
        size: usize,
        params: Option<&gst::AllocationParams>,
    ) -> Result<gst::Memory, AllocError> {
        let default = gst::AllocationParams::default();
        memory::alloc(
            self.upcast_ref(),
            self.stream(),
            size,
            params.unwrap_or(&default),
        )
    }
}

/// Wraps a received descriptor as read-only `MemfdMemory` with the given layout. The file
/// must be at least `maxsize` bytes and sealed against shrinking (so a mapping can never run
/// past its end), and `offset + size <= maxsize`. `on_free` is dropped when the memory and
/// every share of it are gone.
pub fn wrap_fd(
    fd: OwnedFd,
    maxsize: usize,
    offset: usize,
    size: usize,
    on_free: Option<Box<dyn Send>>,
) -> Result<gst::Memory, FdError> {
    memory::wrap_fd(ALLOCATOR.upcast_ref(), fd, maxsize, offset, size, on_free)
}
