// SPDX-License-Identifier: MPL-2.0
//! `AlignedMemory`: a `GstAllocator` whose payloads are aligned (64 bytes minimum), whose
//! `maxsize` is rounded up to the alignment, and which zeroes exactly the prefix/padding it is
//! asked to. This module is the safe public API; `memory/` holds the FFI.

use std::ffi::CStr;
use std::fmt;
use std::sync::LazyLock;

use gst::glib;

mod cache;
mod imp;
pub mod layout;
pub mod memfd;
mod memfd_imp;
#[allow(unsafe_code)]
mod memory;
pub mod stats;

pub use cache::{DEFAULT_MAX_CACHED_BYTES, ENV_MAX_CACHED_BYTES};
pub use layout::{LayoutError, MAX_ALIGN, MIN_ALIGN_MASK};
pub use memory::{
    AlignedMemory, AlignedMemoryRef, GstAlignedMemory, MAX_LIVE_SHARES, live_shares, mapped_addr,
    memory_type_of, try_share, with_mapped_region,
};
pub use memory::{CANARY, CANARY_BYTE, FILL_BYTE, GuardViolation, POISON_BYTE, check_memory_guard};

/// The name `AlignedMemory` is registered under, and its memory type (`mem_type`).
pub const ALIGNED_MEMORY: &str = "AlignedMemory";
pub(crate) const MEMORY_TYPE_CSTR: &CStr = c"AlignedMemory";

glib::wrapper! {
    /// The `AlignedMemory` allocator (GType `MemkitAlignedAllocator`).
    pub struct AlignedAllocator(ObjectSubclass<imp::AlignedAllocator>)
        @extends gst::Allocator, gst::Object;
}

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// `params.align` is not a mask of the form `2^n - 1`.
    InvalidAlignMask(usize),
    /// The alignment is larger than [`MAX_ALIGN`].
    AlignTooLarge(usize),
    /// `MemfdMemory`: the alignment is larger than a page.
    AlignAbovePage { align: usize, page: usize },
    /// `MemfdMemory`: a system call failed (`what`, with its errno).
    System { what: &'static str, errno: i32 },
    /// `prefix + size + padding`, rounded up to the alignment, overflows.
    Overflow {
        size: usize,
        prefix: usize,
        padding: usize,
        align: usize,
    },
    /// The system allocator could not provide `size` bytes aligned to `align`.
    OutOfMemory { size: usize, align: usize },
    /// An internal invariant did not hold (a bug in memkit): the allocation is refused.
    Internal(&'static str),
}

impl From<LayoutError> for AllocError {
    fn from(err: LayoutError) -> Self {
        match err {
            LayoutError::InvalidAlignMask(m) => AllocError::InvalidAlignMask(m),
            LayoutError::AlignTooLarge(m) => AllocError::AlignTooLarge(m),
            LayoutError::AlignAbovePage { align, page } => {
                AllocError::AlignAbovePage { align, page }
            }
            LayoutError::Overflow {
                size,
                prefix,
                padding,
                align,
            } => AllocError::Overflow {
                size,
                prefix,
                padding,
                align,
            },
        }
    }
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AllocError::InvalidAlignMask(m) => LayoutError::InvalidAlignMask(m).fmt(f),
            AllocError::AlignTooLarge(m) => LayoutError::AlignTooLarge(m).fmt(f),
            AllocError::AlignAbovePage { align, page } => {
                LayoutError::AlignAbovePage { align, page }.fmt(f)
            }
            AllocError::System { what, errno } => write!(
                f,
                "{what} failed: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
            AllocError::Overflow {
                size,
                prefix,
                padding,
                align,
            } => LayoutError::Overflow {
                size,
                prefix,
                padding,
                align,
            }
            .fmt(f),
            AllocError::OutOfMemory { size, align } => {
                write!(f, "out of memory: {size} bytes aligned to {align}")
            }
            AllocError::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

impl std::error::Error for AllocError {}

/// Why a share, copy, resize or wrap was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryError {
    /// The requested range does not fit in the `available` bytes.
    OutOfRange {
        offset: isize,
        size: usize,
        available: usize,
    },
    /// The memory carries `GST_MEMORY_FLAG_NO_SHARE`.
    NoShare,
    /// The memory is shared or read-only, and the operation needs it writable.
    NotWritable,
    /// GStreamer or the system refused the operation.
    Refused(&'static str),
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MemoryError::OutOfRange {
                offset,
                size,
                available,
            } => write!(
                f,
                "range out of bounds: offset {offset} size {size}, only {available} bytes available"
            ),
            MemoryError::NoShare => f.write_str("the memory is flagged NO_SHARE"),
            MemoryError::NotWritable => f.write_str("the memory is not writable"),
            MemoryError::Refused(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for MemoryError {}

/// The process-wide `AlignedMemory` allocator, registered under [`ALIGNED_MEMORY`] on first
/// use (the plugin does this when it loads). GStreamer must be initialised.
pub fn aligned_allocator() -> AlignedAllocator {
    memory::ALLOCATOR.clone()
}

/// Frees every block the recycling cache holds (the shared pool and this thread's free
/// lists), returning their memory to the system. Other threads' free lists are returned when
/// those threads end, or shrink as they are used once `max-cached-bytes` is lowered.
pub fn trim_cache() {
    memory::cache().trim();
    memory::memfd::trim_recycled();
}

/// Bytes the recycling caches hold: AlignedMemory's shared pool and this thread's free lists,
/// and MemfdMemory's recycled blocks.
pub fn cached_bytes() -> usize {
    memory::cache().cached_bytes() + memory::memfd::recycled_bytes()
}

/// The bound of the recycling cache, in bytes (the allocator's `max-cached-bytes`).
pub fn max_cached_bytes() -> usize {
    memory::cache().max_bytes()
}

/// Sets the bound of the recycling cache (0 disables it) and trims it to the new bound.
pub fn set_max_cached_bytes(max: usize) {
    memory::cache().set_max_bytes(max);
}

impl AlignedAllocator {
    /// Allocates `size` bytes with `params` (or the defaults). The payload is aligned to
    /// `params.align() | 63`; invalid masks, overflow and out-of-memory give a typed error.
    pub fn alloc(
        &self,
        size: usize,
        params: Option<&gst::AllocationParams>,
    ) -> Result<AlignedMemory, AllocError> {
        let default = gst::AllocationParams::default();
        memory::alloc(self, size, params.unwrap_or(&default))
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
        memory::wrap(self, owner, offset, size, flags, |o| {
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
        memory::wrap(self, owner, offset, size, flags, |o| {
            let s = (*o).as_mut();
            (s.as_mut_ptr(), s.len())
        })
    }
}

/// A snapshot of the allocator statistics (all `AlignedMemory` instances of the process, all
/// threads), as the allocator's `stats` property shows them.
pub fn stats() -> stats::Stats {
    stats::snapshot(cached_bytes())
}

/// Zeroes the statistics' counters (the allocator's `reset-stats` action signal).
pub fn reset_stats() {
    stats::reset();
}

/// Whether new blocks get guard canaries (the allocator's `guard` property, `MEMKIT_GUARD`).
pub fn guard_enabled() -> bool {
    memory::guard_enabled()
}

/// Turns guard mode on or off for blocks allocated from now on. Blocks keep the mode they
/// were allocated with.
pub fn set_guard_enabled(on: bool) {
    memory::set_guard_enabled(on);
}

/// Registers the `AlignedMemory` and `MemfdMemory` allocators (called by `plugin_init`).
pub fn register(_plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    memory::init_memory_hooks();
    LazyLock::force(&memory::ALLOCATOR);
    memfd::register();
    Ok(())
}
