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

/// Freed blocks kept for reuse, by (stream, maxsize): the memory objects themselves, still
/// mapped and with their pages faulted in (a fresh memfd costs a page fault and a zeroed page
/// per 4 KiB). Stream 0 holds private blocks (never sent).
#[derive(Default)]
struct Recycled {
    blocks: HashMap<(u64, usize), Vec<gst::Memory>>,
    bytes: usize,
    /// Streams whose allocator takes blocks: only their blocks are kept (a stream whose
    /// producer allocates elsewhere would fill the cache with blocks nobody takes).
    active: HashSet<u64>,
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
        let keys: Vec<(u64, usize)> = r.blocks.keys().copied().collect();
        for key in keys {
            while r.bytes > max {
                let Some(mem) = r.blocks.get_mut(&key).and_then(Vec::pop) else {
                    break;
                };
                r.bytes -= key.1;
                over.push(mem);
            }
        }
        r.blocks.retain(|_, v| !v.is_empty());
        r.note();
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
        // Lock order: BLOCKS, then RECYCLED (as `retire_block`), so that a block retired
        // by id is either seen retired here or found in the cache there.
        let blocks = blocks::BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
        let stream = match blocks.get(&(mem as usize)) {
            Some(b) if b.retired => return glib::ffi::GTRUE,
            None => 0,
            Some(b) => match b.owner {
                Owner::Private => 0,
                Owner::Stream(s) => s,
                // Mapped by consumers of several streams: no stream may reuse it.
                Owner::Streams => return glib::ffi::GTRUE,
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
        r.bytes += maxsize;
        r.note();
        r.blocks
            .entry((stream, maxsize))
            .or_default()
            .push(from_glib_full(mem));
    }
    glib::ffi::GFALSE
}

/// Takes a recycled block of `maxsize` bytes for `stream` (0: private memory), one kept for
/// that stream only: a stream never takes a private block either, whose bytes outside the
/// new memory's range (which a consumer maps with it) still hold private data.
pub(super) fn take_recycled(stream: u64, maxsize: usize) -> Option<gst::Memory> {
    let mut r = RECYCLED.lock().ok()?;
    if stream != 0 && !r.active.contains(&stream) {
        r.active.insert(stream);
    }
    let mem = r.blocks.get_mut(&(stream, maxsize)).and_then(Vec::pop)?;
    r.bytes -= maxsize;
    r.note();
    Some(mem)
}

/// Stream `stream` has stopped: the blocks kept for it are freed, and its blocks are no
/// longer kept.
pub fn forget_stream(stream: u64) {
    if stream == 0 {
        return;
    }
    let blocks: Vec<gst::Memory> = {
        let mut r = RECYCLED.lock().unwrap_or_else(|e| e.into_inner());
        r.active.remove(&stream);
        let keys: Vec<(u64, usize)> = r.blocks.keys().filter(|k| k.0 == stream).copied().collect();
        let mut blocks = Vec::new();
        for key in keys {
            let list = r.blocks.remove(&key).unwrap_or_default();
            r.bytes -= key.1 * list.len();
            blocks.extend(list);
        }
        r.note();
        blocks
    };
    // Outside the lock: freeing a block runs `free`, which takes BLOCKS.
    for mem in blocks {
        // SAFETY: the cache held the only reference; taken out of it, it is ours alone.
        unsafe { discard(mem) };
    }
}
/// Keeps block `id` from ever being recycled (a consumer that may still map it went away): a
/// cached block is freed now, one in use when its last reference goes.
pub fn retire_block(id: u64) {
    let cached = {
        let mut blocks = blocks::BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
        let Some((&root, entry)) = blocks.iter_mut().find(|(_, b)| b.id == id) else {
            return;
        };
        entry.retired = true;
        let mut r = RECYCLED.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        for list in r.blocks.values_mut() {
            if let Some(i) = list.iter().position(|m| m.as_ptr() as usize == root) {
                found = Some(list.swap_remove(i));
                break;
            }
        }
        if let Some(m) = &found {
            r.bytes -= m.maxsize();
            r.note();
        }
        found
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
        Ok(mut r) => {
            r.bytes = 0;
            r.note();
            r.blocks.drain().flat_map(|(_, v)| v).collect()
        }
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
