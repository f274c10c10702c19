// SPDX-License-Identifier: MPL-2.0
//! Each thread's state (its magazine of freed blocks, its spare share headers, its
//! statistics shard, in one thread-local), the shared pool behind it, and the two frees that
//! go straight back to it.

use std::ptr::{self, NonNull};
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use crate::allocator::aligned::cache::{self, Cache, LocalMagazine, Spares};
use crate::allocator::aligned::stats;

use super::block::GstAlignedMemory;
use super::storage::Backing;

/// What each thread keeps for itself, in one thread-local, so that an allocation or a free
/// looks up thread-local state once: its magazine (the free lists in front of the shared
/// pool), its spare share headers and its statistics shard. Everything in it is a cell, used
/// through a shared reference: a block's drop that frees another memory on this thread finds
/// it usable, never borrowed.
pub(super) struct Thread {
    pub(super) magazine: LocalMagazine<GstAlignedMemory>,
    pub(super) spares: Spares<GstAlignedMemory>,
    pub(super) stats: stats::ThreadShard,
}

thread_local! {
    // Not `const`: making it registers the thread's statistics shard (under a lock), once.
    static THREAD: Thread = Thread {
        magazine: LocalMagazine::new(),
        spares: Spares::new(64),
        stats: stats::ThreadShard::new(),
    };
}

/// This thread's state, or `None` while it is unavailable (destroyed, at thread exit).
///
/// # Safety
/// The reference must not be kept past the caller's own call on this thread. (A thread-local
/// lives until its thread runs its destructor, at exit, and that destructor does not call back
/// here: from then on `try_with` fails. So the state outlives any call that asked for it.)
#[inline(always)]
pub(super) unsafe fn current<'a>() -> Option<&'a Thread> {
    let t = THREAD.try_with(|t| t as *const Thread).ok()?;
    // SAFETY: per the above; the state is used through a shared reference only.
    Some(unsafe { &*t })
}

/// Runs `f` on this thread's state, or on `None` while it is unavailable (destroyed, at
/// thread exit).
#[inline(always)]
pub(super) fn with_thread<R>(f: impl FnOnce(Option<&Thread>) -> R) -> R {
    // SAFETY: the reference does not outlive `f`, which runs within this call.
    f(unsafe { current() })
}

/// The shared part of the recycling cache (each thread's magazine is in [`THREAD`]).
pub(super) static CACHE: LazyLock<Cache<GstAlignedMemory>> = LazyLock::new(Cache::new);

/// The recycling cache, as the allocator's properties and `trim_cache` see it: the shared
/// pool and this thread's magazine.
pub struct BlockCache;

impl BlockCache {
    /// The bound (`max-cached-bytes`).
    pub fn max_bytes(&self) -> usize {
        CACHE.max_bytes()
    }

    /// Sets the bound and trims the shared pool to it; 0 also empties this thread's magazine.
    pub fn set_max_bytes(&self, max: usize) {
        with_thread(|t| CACHE.set_max_bytes(max, t.map(|t| &t.magazine)));
    }

    /// Frees everything in the shared pool and in this thread's magazine.
    pub fn trim(&self) {
        with_thread(|t| CACHE.trim(t.map(|t| &t.magazine)));
    }

    /// Bytes held by the shared pool and by this thread's magazine.
    pub fn cached_bytes(&self) -> usize {
        with_thread(|t| CACHE.cached_bytes(t.map(|t| &t.magazine)))
    }
}

/// The process-wide block cache.
pub fn cache() -> &'static BlockCache {
    &BlockCache
}

/// A header for a share: a spare one of this thread, or a new one.
#[inline(always)]
pub(super) fn share_header(t: Option<&Thread>, data: NonNull<u8>) -> Box<GstAlignedMemory> {
    match t.and_then(|t| t.spares.take()) {
        Some(mut h) => {
            h.data = data;
            h
        }
        None => new_share_header(data),
    }
}

/// A new header for a share (none spare).
#[cold]
#[inline(never)]
fn new_share_header(data: NonNull<u8>) -> Box<GstAlignedMemory> {
    Box::new(GstAlignedMemory {
        // SAFETY: GstMemory is a plain C struct for which all-zeroes is a valid
        // (uninitialised) state; `init_memory` fills it in.
        mem: unsafe { std::mem::zeroed() },
        data,
        backing: Backing::Shared,
        next: None,
        slot: cache::NO_SLOT,
        maps: AtomicU64::new(0),
    })
}

/// The free of a share: its header to this thread's spares. `Err` with the memory (nothing
/// done) when they are full or this thread's state is gone: `release` then frees it. The
/// pointer in `Err` is the one to use from then on (it came back out of a `Box`).
///
/// # Safety
/// As `release`, and `mem` must be a share whose parent was released.
#[inline(always)]
pub(super) unsafe fn recycle_share(
    mem: *mut GstAlignedMemory,
) -> Result<(), *mut GstAlignedMemory> {
    // SAFETY: the state is used within this call only; `mem` is ours alone, per the caller's
    // contract.
    unsafe {
        let Some(t) = current() else {
            return Err(mem);
        };
        if !matches!((*mem).backing, Backing::Shared) {
            return Err(mem);
        }
        (*mem).mem.allocator = ptr::null_mut();
        (*mem).mem.parent = ptr::null_mut();
        // Back out of the Box as a new raw pointer, for `release`: the old one was given up
        // to `Box::from_raw`.
        t.spares.put(Box::from_raw(mem)).map_err(Box::into_raw)
    }
}

/// The common free: an unguarded root of the registered instance back to this thread's
/// magazine, its list found from the `slot` recorded when it was made. `Err` with the memory
/// (nothing done) when the list or the budget is full, the cache is off or this thread's state
/// is gone: `release` then does the rest, with the pointer in `Err`.
///
/// # Safety
/// As `release`, and `mem` must be a root with a `slot`.
#[inline(always)]
pub(super) unsafe fn recycle_root(mem: *mut GstAlignedMemory) -> Result<(), *mut GstAlignedMemory> {
    // SAFETY: the state is used within this call only; `mem` is ours alone, per the caller's
    // contract.
    unsafe {
        let Some(t) = current() else {
            return Err(mem);
        };
        let maxsize = (*mem).mem.maxsize;
        // The cache holds no reference on any allocator (this one holds none anyway).
        (*mem).mem.allocator = ptr::null_mut();
        let slot = (*mem).slot as usize;
        let addr = mem as usize;
        // Back out of the Box as a new raw pointer, for `release`: the old one was given up
        // to `Box::from_raw`.
        CACHE
            .put_local(&t.magazine, slot, Box::from_raw(mem))
            .map_err(Box::into_raw)?;
        t.stats.block_died(addr, maxsize);
        Ok(())
    }
}
