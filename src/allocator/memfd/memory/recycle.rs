// SPDX-License-Identifier: MPL-2.0
//! Recycling: freed blocks kept mapped for reuse, within the allocator's bound, each for the
//! stream that may reuse it: a block sent by one stream (which its consumers keep mapped) is
//! recycled for that stream's allocator only, a block never sent for anyone, a block sent by
//! several streams never.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use crate::allocator::debug::MEMFD as CAT;
use gst::ffi;
use gst::glib;
use gst::glib::translate::*;

use crate::allocator::memfd::stats::{self as mstats, Counter as M};
use crate::allocator::raw::{lockstate, traced};

use super::blocks::{self, Owner};

/// The (stream, maxsize) a recycled block is kept for.
type Key = (u64, usize);

/// Freed blocks kept for reuse, by (stream, maxsize): the memory objects themselves, still
/// mapped and with their pages faulted in (a fresh memfd costs a page fault and a zeroed page
/// per 4 KiB). Stream 0 holds private blocks. The blocks themselves are kept by root address
/// (so that retiring one by id costs a lookup); each key has a stack of roots, newest last,
/// from which a take pops: an entry whose block has gone since (retired, trimmed) is skipped
/// then, and the stacks are compacted once such entries outnumber the blocks.
#[derive(Default)]
struct Recycled {
    blocks: HashMap<usize, (Key, gst::Memory)>,
    stacks: HashMap<Key, Vec<usize>>,
    /// Stack entries whose block has gone.
    stale: usize,
    bytes: usize,
    /// Streams whose allocator takes blocks: only their blocks are kept (a stream whose
    /// producer allocates elsewhere would fill the cache with blocks nobody takes).
    active: HashSet<u64>,
}

impl Recycled {
    fn push(&mut self, key: Key, mem: gst::Memory) {
        let root = mem.as_ptr() as usize;
        self.bytes += key.1;
        self.note();
        self.stacks.entry(key).or_default().push(root);
        self.blocks.insert(root, (key, mem));
    }

    fn pop(&mut self, key: Key) -> Option<gst::Memory> {
        let stack = self.stacks.get_mut(&key)?;
        while let Some(root) = stack.pop() {
            match self.blocks.get(&root) {
                Some((k, _)) if *k == key => {
                    let (_, mem) = self.blocks.remove(&root)?;
                    self.bytes -= key.1;
                    self.note();
                    return Some(mem);
                }
                _ => self.stale = self.stale.saturating_sub(1),
            }
        }
        None
    }

    /// Takes the block at `root` out, wherever it is kept (its stack entry goes stale).
    fn take_out(&mut self, root: usize) -> Option<gst::Memory> {
        let (key, mem) = self.blocks.remove(&root)?;
        self.bytes -= key.1;
        self.note();
        self.stale += 1;
        Some(mem)
    }

    /// [`take_out`](Self::take_out), compacting the stacks when stale entries outnumber the
    /// blocks: each compaction is paid for by as many removals.
    fn remove(&mut self, root: usize) -> Option<gst::Memory> {
        let mem = self.take_out(root);
        self.compact_if_stale();
        mem
    }

    fn compact_if_stale(&mut self) {
        if self.stale > self.blocks.len() + 64 {
            self.compact();
        }
    }

    /// Drops the stack entries of blocks that have gone.
    fn compact(&mut self) {
        let blocks = &self.blocks;
        for (key, stack) in self.stacks.iter_mut() {
            let mut seen = HashSet::with_capacity(stack.len());
            stack.retain(|r| blocks.get(r).is_some_and(|(k, _)| k == key) && seen.insert(*r));
        }
        self.stacks.retain(|_, v| !v.is_empty());
        self.stale = 0;
    }

    /// Takes out every block whose key `pick` selects.
    fn drain(&mut self, pick: impl Fn(&Key) -> bool) -> Vec<gst::Memory> {
        let roots: Vec<usize> = self
            .blocks
            .iter()
            .filter(|(_, (k, _))| pick(k))
            .map(|(r, _)| *r)
            .collect();
        let out = roots.into_iter().filter_map(|r| self.take_out(r)).collect();
        self.stacks.retain(|k, _| !pick(k));
        self.compact_if_stale();
        out
    }
}

static RECYCLED: LazyLock<Mutex<Recycled>> = LazyLock::new(Default::default);
/// `RECYCLED`'s bytes, written under its lock after every change: read without it, so that
/// the tracer's timeline can read it while a free holds `RECYCLED` (a recycled block is
/// charged as freed under the lock: see [`recycle_dispose`]).
static RECYCLED_BYTES: AtomicUsize = AtomicUsize::new(0);

impl Recycled {
    /// Publishes `bytes` for [`recycled_bytes`] (called after each change, under the lock).
    fn note(&self) {
        RECYCLED_BYTES.store(self.bytes, Ordering::Relaxed);
    }
}

/// The recycling bound (MemfdMemory's `max-cached-bytes`), in bytes; 0 recycles nothing.
static MAX_BYTES: LazyLock<AtomicUsize> =
    LazyLock::new(|| AtomicUsize::new(crate::allocator::shared::initial_max()));

/// The recycling bound, in bytes.
pub fn max_bytes() -> usize {
    MAX_BYTES.load(Ordering::Relaxed)
}

/// Sets the recycling bound and frees recycled blocks until they fit in it.
pub fn set_max_bytes(max: usize) {
    MAX_BYTES.store(max, Ordering::Relaxed);
    let over: Vec<gst::Memory> = {
        let mut r = RECYCLED.lock().unwrap_or_else(|e| e.into_inner());
        let mut over = Vec::new();
        let roots: Vec<usize> = r.blocks.keys().copied().collect();
        for root in roots {
            if r.bytes <= max {
                break;
            }
            over.extend(r.take_out(root));
        }
        r.compact_if_stale();
        over
    };
    // Outside the lock: freeing a block runs `free`, which takes BLOCKS.
    for mem in over {
        // SAFETY: the cache held the only reference; taken out of it, it is ours alone.
        unsafe { discard(mem) };
    }
}

/// `GstMiniObject.dispose` of the blocks `alloc` makes: when the last reference goes (after
/// every consumer released the block, for memfdsink), the block is kept for reuse while the
/// recycling bound allows, the way GstBufferPool recycles buffers; otherwise it is freed.
pub(super) unsafe extern "C" fn recycle_dispose(
    obj: *mut ffi::GstMiniObject,
) -> glib::ffi::gboolean {
    let mem = obj as *mut ffi::GstMemory;
    // SAFETY: core calls dispose with refcount 0 on a live memory of ours, a root (`alloc`
    // sets this hook on roots only), with no share or map left.
    unsafe {
        let maxsize = (*mem).maxsize;
        // Lock order: BLOCKS, then RECYCLED (as `retire_block`), so that a block retired
        // by id is either seen retired here or found in the cache there.
        let mut blocks = blocks::BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
        // A block sent as it is (frozen) gets its extra lock back first.
        blocks::thaw(&mut blocks, mem);
        // With a tracer active, blocks are freed by core like any memory (which fires the
        // memory-free hooks) and every allocation is a fresh one (memory-init).
        if traced() {
            return glib::ffi::GTRUE;
        }
        // A block still locked (mapped and never unmapped, or its lock count otherwise off)
        // is not like a fresh one: free it instead of handing it to a later owner.
        if lockstate(mem) != 0 {
            gst::warning!(
                CAT,
                "not recycling {:p}: freed while locked or mapped (lockstate {:#x})",
                mem,
                lockstate(mem)
            );
            return glib::ffi::GTRUE;
        }
        let max = max_bytes();
        let stream = match blocks.by_root.get(&(mem as usize)) {
            Some(b) if b.retired => return glib::ffi::GTRUE,
            None => 0,
            Some(b) => match b.owner {
                Owner::Private => 0,
                Owner::Stream(s) => s,
            },
        };
        // Waits for the lock rather than freeing the block when another thread holds it (a
        // take or a trim: never long, and nothing that holds it frees a memory): under load,
        // giving up freed one block in a few, and each fresh memfd costs its pages' faults
        // again, here and in every process it is sent to.
        let mut r = RECYCLED.lock().unwrap_or_else(|e| e.into_inner());
        if r.bytes + maxsize > max || (stream != 0 && !r.active.contains(&stream)) {
            return glib::ffi::GTRUE;
        }
        // Resurrect it: the reference we take is the one the cache owns. Charged as freed
        // before a take can see it (so that the free never follows the next allocation of
        // the same address), under the locks: the tracer takes only its own lock there and
        // reads the cached bytes from RECYCLED_BYTES (lock order: BLOCKS, RECYCLED, then the
        // tracer's).
        ffi::gst_mini_object_ref(obj);
        mstats::count(M::Frees, 1);
        mstats::block(obj as usize, maxsize, false);
        r.push((stream, maxsize), from_glib_full(mem));
    }
    glib::ffi::GFALSE
}

/// Takes a recycled block of `maxsize` bytes for `stream` (0: private memory), one kept for
/// that stream only: a stream never takes a private block, nor private memory a stream's.
pub(super) fn take_recycled(stream: u64, maxsize: usize) -> Option<gst::Memory> {
    let mut r = RECYCLED.lock().ok()?;
    if stream != 0 && !r.active.contains(&stream) {
        r.active.insert(stream);
    }
    r.pop((stream, maxsize))
}

/// Stream `stream` has stopped: the blocks kept for it are freed, and its blocks are no
/// longer kept.
pub fn forget_stream(stream: u64) {
    if stream == 0 {
        return;
    }
    blocks::forget_audience(stream);
    let blocks: Vec<gst::Memory> = {
        let mut r = RECYCLED.lock().unwrap_or_else(|e| e.into_inner());
        r.active.remove(&stream);
        r.drain(|k| k.0 == stream)
    };
    // Outside the lock: freeing a block runs `free`, which takes BLOCKS.
    for mem in blocks {
        // SAFETY: the cache held the only reference; taken out of it, it is ours alone.
        unsafe { discard(mem) };
    }
}
/// Keeps block `id` from ever being recycled (a consumer that may still map it went away): a
/// cached block is freed now, one in use when its last reference goes. Two lookups: a
/// consumer's leaving costs what it was sent, not what the process holds.
pub fn retire_block(id: u64) {
    let cached = {
        let mut blocks = blocks::BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
        let Some(root) = blocks.retire(id) else {
            return;
        };
        RECYCLED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(root)
    };
    // Outside the locks: freeing it runs `free`, which takes BLOCKS.
    if let Some(mem) = cached {
        // SAFETY: the cache held the only reference; taken out of it, it is ours alone.
        unsafe { discard(mem) };
    }
}
/// Frees a block taken from the cache or just made (its dispose hook cleared, so it is not
/// recycled again).
///
/// # Safety
/// `mem` must be the only reference to the block (the cache's, or a new block's): clearing
/// the hook of a block someone else holds would change how their last unref ends.
pub(super) unsafe fn discard(mem: gst::Memory) {
    let m = mem.as_ptr() as *mut ffi::GstMemory;
    // SAFETY: `mem` is live; the caller vouches that it is the only reference, so nobody else
    // reads or writes the hook; without it the unref in drop frees the block.
    unsafe {
        debug_assert_eq!((*m).mini_object.refcount, 1, "discard of a shared block");
        (*m).mini_object.dispose = None;
    }
    drop(mem);
}

/// Frees every recycled block (part of `trim_cache`).
pub fn trim_recycled() {
    let blocks: Vec<gst::Memory> = match RECYCLED.lock() {
        Ok(mut r) => r.drain(|_| true),
        Err(_) => return,
    };
    for mem in blocks {
        // SAFETY: the cache held the only reference; taken out of it, it is ours alone.
        unsafe { discard(mem) };
    }
}

/// Bytes held by recycled blocks, read without taking a lock.
pub fn recycled_bytes() -> usize {
    RECYCLED_BYTES.load(Ordering::Relaxed)
}
