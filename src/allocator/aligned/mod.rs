// SPDX-License-Identifier: MPL-2.0
//! `AlignedMemory`: a `GstAllocator` whose payloads are aligned (64 bytes minimum), whose
//! `maxsize` is rounded up to the alignment, and which zeroes exactly the prefix/padding it is
//! asked to. This module is its safe public API; `imp.rs` is the GObject subclass and
//! `memory/` the unsafe half.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;

use self::stats::Stats;
use super::error::{AllocError, MemoryError};

pub(crate) mod cache;
pub(crate) mod classes;
mod imp;

pub(crate) use imp::Protect as ProtectProperty;
pub(crate) mod magazine;
#[allow(unsafe_code)]
mod memory;
pub mod stats;

pub(crate) use memory::charge_maps;
pub use memory::{
    AlignedMemory, AlignedMemoryRef, CANARY, CANARY_BYTE, FILL_BYTE, GstAlignedMemory,
    GuardViolation, HUGE_PAGE, MAX_PROTECT_RECORDS, MMAP_THRESHOLD, POISON_BYTE, ProtectMode,
    ProtectRecord, ProtectViolation, check_memory_guard, guard_enabled, protect_mode,
    protect_records, protect_violations, set_guard_enabled, set_protect_mode, unprotected,
};
pub use memory::{REPORTS_PER_INSTRUCTION, set_reports_per_instruction, unwritten_reports};

/// The name `AlignedMemory` is registered under, and its memory type (`mem_type`).
pub const ALIGNED_MEMORY: &str = "AlignedMemory";

glib::wrapper! {
    /// The `AlignedMemory` allocator (GType `MemkitAlignedAllocator`).
    pub struct AlignedAllocator(ObjectSubclass<imp::AlignedAllocator>)
        @extends gst::Allocator, gst::Object;
}

/// The registered `AlignedMemory` allocator. This static holds a reference that is never
/// dropped, which is what makes the instance immortal: its memories need not hold a reference
/// on it.
static ALLOCATOR: LazyLock<AlignedAllocator> = LazyLock::new(|| {
    match std::env::var("MEMKIT_GUARD").as_deref().map(str::trim) {
        Ok("1" | "abort" | "true" | "yes") => set_guard_enabled(true),
        Ok("protect") => set_protect_mode(ProtectMode::Abort),
        Ok("protect-continue") => set_protect_mode(ProtectMode::Continue),
        Ok("" | "0" | "false" | "no") | Err(_) => {}
        Ok(other) => gst::warning!(
            crate::allocator::debug::ALIGNED,
            "MEMKIT_GUARD={other:?} is not a mode (1, abort, protect, protect-continue): ignored"
        ),
    }
    if let Ok(v) = std::env::var("MEMKIT_PROTECT_REPORTS") {
        match v.trim().parse::<u32>() {
            Ok(n) => set_reports_per_instruction(n),
            Err(_) => gst::warning!(
                crate::allocator::debug::ALIGNED,
                "MEMKIT_PROTECT_REPORTS={v:?} is not a number of reports (0: all): ignored"
            ),
        }
    }
    stats::init_from_env();
    let allocator = glib::Object::new::<AlignedAllocator>();
    memory::set_immortal(allocator.upcast_ref());
    // gst_allocator_register takes its own reference and marks the allocator MAY_BE_LEAKED.
    gst::Allocator::register(ALIGNED_MEMORY, allocator.clone());
    allocator
});

/// The process-wide `AlignedMemory` allocator, registered under [`ALIGNED_MEMORY`] on first
/// use (the plugin does this when it loads). GStreamer must be initialised.
pub fn aligned_allocator() -> AlignedAllocator {
    ALLOCATOR.clone()
}

pub(super) fn register() {
    LazyLock::force(&ALLOCATOR);
}

/// Frees every block AlignedMemory's recycling cache holds (the shared pool and this thread's
/// free lists).
pub fn trim_cache() {
    memory::cache().trim();
}

/// Bytes AlignedMemory's recycling cache holds (shared pool and this thread's free lists),
/// read without taking a lock.
pub fn cached_bytes() -> usize {
    memory::cache().cached_bytes()
}

/// The bound of AlignedMemory's recycling cache, in bytes (the allocator's
/// `max-cached-bytes`).
pub fn max_cached_bytes() -> usize {
    memory::cache().max_bytes()
}

/// Sets the bound of AlignedMemory's recycling cache (0 disables it) and trims it to the new
/// bound.
pub fn set_max_cached_bytes(max: usize) {
    memory::cache().set_max_bytes(max);
}

impl AlignedAllocator {
    /// Allocates `size` bytes with `params` (or the defaults). The payload is aligned to
    /// `params.align() | 63`; invalid masks, overflow and out-of-memory give a typed error.
    pub fn alloc_aligned(
        &self,
        size: usize,
        params: Option<&gst::AllocationParams>,
    ) -> Result<AlignedMemory, AllocError> {
        let default = gst::AllocationParams::default();
        memory::alloc(self.upcast_ref(), size, params.unwrap_or(&default))
    }

    /// Wraps a read-only owner (`Vec<u8>`, `Box<[u8]>`, `bytes::Bytes`, `&'static [u8]`, ...)
    /// as `AlignedMemory` whose valid data is `owner[offset..offset + size]`. The memory is
    /// `READONLY`; `align` reports the payload's real alignment. The owner is dropped exactly
    /// once, when the last share of the memory is gone.
    pub fn wrap<T: AsRef<[u8]> + Send + 'static>(
        &self,
        owner: T,
        offset: usize,
        size: usize,
    ) -> Result<AlignedMemory, MemoryError> {
        self.wrap_with_flags(owner, offset, size, gst::MemoryFlags::empty())
    }

    /// [`wrap`](Self::wrap) with memory flags, like `gst_memory_new_wrapped`'s: `READONLY` is
    /// always added. As with core, `ZERO_PREFIXED`/`ZERO_PADDED` are the caller's promise that
    /// those bytes are zero (`memcheck` verifies such promises).
    pub fn wrap_with_flags<T: AsRef<[u8]> + Send + 'static>(
        &self,
        owner: T,
        offset: usize,
        size: usize,
        flags: gst::MemoryFlags,
    ) -> Result<AlignedMemory, MemoryError> {
        let flags = flags | gst::MemoryFlags::READONLY;
        memory::wrap(self.upcast_ref(), owner, offset, size, flags, |o| {
            let s = (*o).as_ref();
            (s.as_ptr().cast_mut(), s.len())
        })
    }

    /// Like [`wrap`](Self::wrap), for an owner that can be written through: the memory is
    /// writable while no one else holds it.
    pub fn wrap_writable<T: AsMut<[u8]> + Send + 'static>(
        &self,
        owner: T,
        offset: usize,
        size: usize,
    ) -> Result<AlignedMemory, MemoryError> {
        let flags = gst::MemoryFlags::empty();
        memory::wrap(self.upcast_ref(), owner, offset, size, flags, |o| {
            let s = (*o).as_mut();
            (s.as_mut_ptr(), s.len())
        })
    }
}

/// A snapshot of the `AlignedMemory` statistics (all instances of the process, all threads),
/// as the allocator's `stats` property shows them.
pub fn stats() -> Stats {
    stats::snapshot(cached_bytes())
}

/// Zeroes the statistics' counters (the allocator's `reset-stats` action signal).
pub fn reset_stats() {
    stats::reset();
}
