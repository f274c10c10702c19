// SPDX-License-Identifier: MPL-2.0
//! memkit's two allocators and what they share.
//!
//! - [`aligned`]: `AlignedMemory`, a `GstAllocator` whose payloads are aligned (64 bytes
//!   minimum), whose `maxsize` is rounded up to the alignment, and which zeroes exactly the
//!   prefix/padding it is asked to.
//! - [`memfd`]: `MemfdMemory`, a `GstFdAllocator` whose blocks are sealed memfds another
//!   process can map.
//!
//! Beside them, what both use: [`layout`] (pure arithmetic), `classes`, `magazine` and `cache`
//! (the recycling cache's size classes, a thread's lists, the bound and the shared pool), [`mod@stats`] (AlignedMemory's statistics), [`error`] and `raw` (the unsafe
//! helpers both allocators' vfuncs share). Each allocator folder has its safe API (`mod.rs`),
//! its GObject subclass (`imp.rs`) and its unsafe half (`memory/`); only `memory/` and `raw`
//! may use `unsafe`. The allocators do not depend on each other.
//!
//! # Process-wide state
//!
//! Everything below belongs to the process, not to an allocator instance; the properties
//! that show it read and write the same state on every instance.
//!
//! | State | Set by | Governs |
//! |---|---|---|
//! | AlignedMemory's recycling cache and its bound | `max-cached-bytes` on any `AlignedAllocator`, [`set_max_cached_bytes`], `MEMKIT_MAX_CACHED_BYTES` (initial) | every `AlignedAllocator` instance (blocks in the cache belong to no instance) |
//! | MemfdMemory's recycled blocks and their bound | `max-cached-bytes` on any `MemfdAllocator`, [`memfd::set_max_cached_bytes`], `MEMKIT_MAX_CACHED_BYTES` (initial) | every `MemfdAllocator` instance |
//! | guard mode | `guard` on any `AlignedAllocator`, [`set_guard_enabled`], `MEMKIT_GUARD` | AlignedMemory blocks allocated from then on |
//! | protect mode, its fault handler and quarantine | `protect` on any `AlignedAllocator`, [`set_protect_mode`], `MEMKIT_GUARD=protect`/`protect-continue` | AlignedMemory blocks allocated from then on; the handler is installed with the first protected block |
//! | statistics (counters, live figures) | `collect-stats`, `reset-stats`, `MEMKIT_STATS` | AlignedMemory ([`mod@stats`]) and MemfdMemory ([`memfd::stats`]) each count their own |
//! | tracer hook mode | the first active tracer on GStreamer ≥ 1.26 | both allocators take core's init/free path from then on |
//! | the transport's block registry | `memfdsink`, through [`memfd::block_of`] | ids of MemfdMemory blocks, retired blocks |
//!
//! Disposing an allocator instance touches none of it. The caches are trimmed by lowering a
//! bound or by [`trim_cache`].

pub mod aligned;
mod debug;
pub mod error;
pub mod layout;
pub mod memfd;
#[allow(unsafe_code)]
pub(crate) mod raw;
mod shared;

/// AlignedMemory's statistics (the module lives in `aligned/`; this path is the public one).
pub mod stats {
    pub use crate::allocator::aligned::stats::*;
}

pub use aligned::{
    ALIGNED_MEMORY, AlignedAllocator, AlignedMemory, AlignedMemoryRef, CANARY, CANARY_BYTE,
    FILL_BYTE, GstAlignedMemory, GuardViolation, MAX_PROTECT_RECORDS, POISON_BYTE, ProtectMode,
    ProtectRecord, ProtectViolation, aligned_allocator, check_memory_guard, guard_enabled,
    max_cached_bytes, protect_mode, protect_records, protect_violations, reset_stats,
    set_guard_enabled, set_max_cached_bytes, set_protect_mode, set_reports_per_instruction,
    unwritten_reports,
};
pub use error::{AllocError, FdError, MemoryError};
pub use layout::{LayoutError, MAX_ALIGN, MIN_ALIGN_MASK};
pub use shared::{DEFAULT_MAX_CACHED_BYTES, ENV_MAX_CACHED_BYTES};

/// Whether `allocator` is one of memkit's (an `AlignedAllocator` or a `MemfdAllocator`).
pub fn is_memkit(allocator: &gst::Allocator) -> bool {
    use gst::prelude::*;
    allocator.is::<aligned::AlignedAllocator>() || allocator.is::<memfd::MemfdAllocator>()
}

/// Frees every block the recycling caches hold (AlignedMemory's shared pool and this thread's
/// free lists, MemfdMemory's recycled blocks), returning their memory to the system. Other
/// threads' free lists are returned when those threads end, or shrink as they are used once
/// `max-cached-bytes` is lowered.
pub fn trim_cache() {
    aligned::trim_cache();
    memfd::trim_cache();
}

/// Bytes the recycling caches hold: AlignedMemory's shared pool and this thread's free lists,
/// and MemfdMemory's recycled blocks.
pub fn cached_bytes() -> usize {
    aligned::cached_bytes() + memfd::cached_bytes()
}

/// A snapshot of the `AlignedMemory` statistics (all instances of the process, all threads),
/// as the allocator's `stats` property shows them.
pub fn stats() -> stats::Stats {
    aligned::stats()
}

/// Registers the `AlignedMemory` and `MemfdMemory` allocators (called by `plugin_init`).
pub fn register(_plugin: &gst::Plugin) -> Result<(), gst::glib::BoolError> {
    raw::init_memory_hooks();
    aligned::register();
    memfd::register();
    Ok(())
}
