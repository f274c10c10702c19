// SPDX-License-Identifier: MPL-2.0
//! `MemfdMemory`: a `GstFdAllocator` whose blocks are sealed memfds, so another process can
//! map them through their descriptor (`gst_fd_memory_get_fd`). Same payload alignment (64 bytes
//! minimum, up to a page) and zeroing guarantees as `AlignedMemory`; shares of shares get the
//! right size and contiguous shares span (both missing from 1.22's fd memory).
//!
//! Safe code: the memfd is made with rustix; handing it to GStreamer is in `memory::memfd`.

use std::os::fd::OwnedFd;
use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;

use super::AllocError;

/// The name `MemfdMemory` is registered under.
pub const MEMFD_MEMORY: &str = "MemfdMemory";

glib::wrapper! {
    /// The `MemfdMemory` allocator (GType `MemkitMemfdAllocator`), a `GstFdAllocator`.
    pub struct MemfdAllocator(ObjectSubclass<super::memfd_imp::MemfdAllocator>)
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

fn errno(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> AllocError {
    move |e| AllocError::System {
        what,
        errno: e.raw_os_error(),
    }
}

/// A new memfd of `len` bytes (zero-filled by the kernel), close-on-exec, sealed against
/// shrinking and growing (so no holder can cut it short under someone's mapping). The
/// allocator seals it against writes next, once it has its own mapping ([`seal_writes`]).
pub(super) fn create_memfd(len: usize) -> Result<OwnedFd, AllocError> {
    use rustix::fs::{self, MemfdFlags, SealFlags};
    let fd = fs::memfd_create(c"memkit", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(errno("memfd_create"))?;
    fs::ftruncate(&fd, len as u64).map_err(errno("ftruncate"))?;
    fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW)
        .map_err(errno("fcntl(F_ADD_SEALS)"))?;
    Ok(fd)
}

/// Seals a memfd against writes through any new descriptor or mapping
/// (`F_SEAL_FUTURE_WRITE`, Linux >= 5.1) and against further seal changes: the mapping the
/// allocator already holds stays writable, but no process the descriptor is sent to can
/// write the block, not even by reopening `/proc/self/fd/N`.
pub(super) fn seal_writes(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), AllocError> {
    use rustix::fs::{self, SealFlags};
    fs::fcntl_add_seals(fd, SealFlags::FUTURE_WRITE | SealFlags::SEAL)
        .map_err(errno("fcntl(F_ADD_SEALS, F_SEAL_FUTURE_WRITE)"))
}

impl MemfdAllocator {
    /// Allocates `size` bytes with `params` (or the defaults): the memory is fd memory whose
    /// payload is aligned to `params.align() | 63` (at most a page). Errors are typed.
    pub fn alloc(
        &self,
        size: usize,
        params: Option<&gst::AllocationParams>,
    ) -> Result<gst::Memory, AllocError> {
        let default = gst::AllocationParams::default();
        super::memory::memfd::alloc(self, size, params.unwrap_or(&default))
    }
}

pub use super::memory::memfd::{
    Block, FreedBlocks, block_of, dup_fd, retire_block, share_block, subscribe_freed, wrap_fd,
};

/// `true` when `mem` is `MemfdMemory` memory.
pub fn is_memfd_memory(mem: &gst::MemoryRef) -> bool {
    mem.allocator()
        .is_some_and(|a| a.type_().is_a(MemfdAllocator::static_type()))
}

/// `true` when `mem` is fd memory whose file is a memfd sealed against shrinking and against
/// writes by whoever receives it (`F_SEAL_FUTURE_WRITE` or `F_SEAL_WRITE`): what `memfdsink`
/// can send as it is (another process can map it without risk of it shrinking, and cannot
/// change what other consumers read).
pub fn is_sealed_memfd(mem: &gst::MemoryRef) -> bool {
    use rustix::fs::SealFlags;
    dup_fd(mem)
        .ok()
        .and_then(|fd| rustix::fs::fcntl_get_seals(&fd).ok())
        .is_some_and(|s| {
            s.contains(SealFlags::SHRINK)
                && s.intersects(SealFlags::FUTURE_WRITE | SealFlags::WRITE)
        })
}

/// `MemfdMemory`'s statistics. Its operations are system calls and mappings, so plain shared
/// atomic counters cost nothing measurable here.
pub mod stats {
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(usize)]
    pub enum Counter {
        Allocations,
        Recycled,
        Frees,
        Wraps,
        Shares,
        Copies,
        BytesCopied,
        SpanHits,
        Maps,
    }

    const NAMES: [&str; 9] = [
        "allocations",
        "recycled",
        "frees",
        "wraps",
        "shares",
        "copies",
        "bytes-copied",
        "span-hits",
        "maps",
    ];

    static COUNTERS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];
    static BLOCKS_LIVE: AtomicI64 = AtomicI64::new(0);
    static BYTES_LIVE: AtomicI64 = AtomicI64::new(0);

    pub fn count(c: Counter, n: u64) {
        COUNTERS[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// A root block came to life (allocated, recycled or wrapped) or died (`born == false`).
    pub fn block(bytes: usize, born: bool) {
        let sign = if born { 1 } else { -1 };
        BLOCKS_LIVE.fetch_add(sign, Ordering::Relaxed);
        BYTES_LIVE.fetch_add(sign * bytes as i64, Ordering::Relaxed);
    }

    pub fn get(c: Counter) -> u64 {
        COUNTERS[c as usize].load(Ordering::Relaxed)
    }

    /// `memkit-memfd-stats`: blocks-live, bytes-live, cached-bytes and the counters.
    pub fn to_structure() -> gst::Structure {
        let mut s = gst::Structure::new_empty("memkit-memfd-stats");
        s.set(
            "blocks-live",
            BLOCKS_LIVE.load(Ordering::Relaxed).max(0) as u64,
        );
        s.set(
            "bytes-live",
            BYTES_LIVE.load(Ordering::Relaxed).max(0) as u64,
        );
        s.set(
            "cached-bytes",
            super::super::memory::memfd::recycled_bytes() as u64,
        );
        for (i, name) in NAMES.iter().enumerate() {
            s.set(*name, COUNTERS[i].load(Ordering::Relaxed));
        }
        s
    }

    /// Zeroes the counters (the live figures stay).
    pub fn reset() {
        for c in &COUNTERS {
            c.store(0, Ordering::Relaxed);
        }
    }
}
