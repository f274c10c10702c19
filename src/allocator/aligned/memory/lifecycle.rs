// SPDX-License-Identifier: MPL-2.0
//! A block's life: memory init without an allocator reference, allocation (from the
//! recycling cache when it can), shares, and release.

use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::allocator::debug::ALIGNED as CAT;
use gst::ffi;
use gst::glib;
use gst::glib::translate::*;

use crate::allocator::aligned::cache;
use crate::allocator::aligned::stats::{self, Counter};
use crate::allocator::error::{AllocError, MemoryError};
use crate::allocator::layout::{self, BlockLayout};
use crate::allocator::raw::traced;
use crate::attribution;

use super::block::{AlignedMemory, GstAlignedMemory, flags_bits};
use super::guard::{POISON_BYTE, alloc_guarded, alloc_protected, guard_enabled, report_guard};
use super::protect::{PROTECTED_FLAG, ProtectMode, protect_mode, special_mode};
use super::storage::{Backing, Owner, Storage};
use super::thread::{
    CACHE, Thread, current, recycle_root, recycle_share, share_header, with_thread,
};

/// The registered `AlignedMemory` instance, which lives as long as the process (a static holds
/// a reference): its memories need not hold a reference on it.
static IMMORTAL: AtomicPtr<ffi::GstAllocator> = AtomicPtr::new(ptr::null_mut());

/// `GST_TYPE_MEMORY`, recorded with [`IMMORTAL`] (the only memories that need it are the
/// registered instance's).
static MEMORY_GTYPE: AtomicUsize = AtomicUsize::new(0);

/// Records the registered instance (see [`IMMORTAL`]); its creator keeps a reference on it
/// for the rest of the process.
pub fn set_immortal(allocator: &gst::Allocator) {
    // SAFETY: a plain getter; GStreamer is initialised before an allocator exists.
    let gtype = unsafe { ffi::gst_memory_get_type() };
    MEMORY_GTYPE.store(gtype, Ordering::Relaxed);
    let ptr: *mut ffi::GstAllocator = allocator.to_glib_none().0;
    IMMORTAL.store(ptr, Ordering::Release);
}

/// `GstMiniObject.copy` of memories made without an allocator reference: what core's own
/// does, `gst_memory_copy (mem, 0, -1)`.
unsafe extern "C" fn mini_object_copy(obj: *const ffi::GstMiniObject) -> *mut ffi::GstMiniObject {
    // SAFETY: core calls this with a live memory of ours.
    unsafe { ffi::gst_memory_copy(obj as *mut ffi::GstMemory, 0, -1).cast() }
}

/// `GstMiniObject.free` of memories made without an allocator reference: what core's own does
/// (release the parent, then free the memory), minus the allocator unref.
unsafe extern "C" fn mini_object_free(obj: *mut ffi::GstMiniObject) {
    let mem = obj as *mut GstAlignedMemory;
    // SAFETY: core calls free once, at refcount 0, on a memory initialised by `init_memory`,
    // whose parent (if any) we locked and referenced there.
    unsafe {
        (*mem).count_maps();
        let parent = (*mem).mem.parent;
        // Only shares have a parent: the header goes back to this thread's spares.
        let recycled = if !parent.is_null() {
            ffi::gst_mini_object_unlock(parent.cast(), ffi::GST_LOCK_FLAG_EXCLUSIVE);
            ffi::gst_mini_object_unref(parent.cast());
            recycle_share(mem)
        } else if (*mem).slot != cache::NO_SLOT {
            recycle_root(mem)
        } else {
            Err(mem)
        };
        // Not recycled: released through the pointer it came back with.
        if let Err(mem) = recycled {
            release(mem.cast());
        }
    }
}

/// Initialises the GstMemory part of `mem` like `gst_memory_init`. Memories of the immortal
/// registered allocator take no reference on it: a reference count shared by every memory
/// would be written by every allocation and free on every core.
///
/// # Safety
/// `mem` must be exclusively ours; `allocator` a live AlignedAllocator; `parent` NULL or a
/// live memory of the same allocator (it gets locked and referenced).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn init_memory(
    mem: *mut GstAlignedMemory,
    flags: ffi::GstMemoryFlags,
    allocator: *mut ffi::GstAllocator,
    parent: *mut ffi::GstMemory,
    maxsize: usize,
    align: usize,
    offset: usize,
    size: usize,
) {
    // SAFETY: per the caller's contract. gst_memory_init sets every field of the GstMemory.
    unsafe {
        if allocator != IMMORTAL.load(Ordering::Acquire) || traced() {
            ffi::gst_memory_init(
                mem.cast(),
                flags,
                allocator,
                parent,
                maxsize,
                align,
                offset,
                size,
            );
            return;
        }
        init_memory_unreferenced(mem, flags, allocator, parent, maxsize, align, offset, size);
    }
}

/// [`init_memory`] for the registered instance without the tracer's hooks: what
/// `gst_memory_init` does, minus the allocator reference and the tracer hook.
///
/// # Safety
/// As [`init_memory`], and `allocator` must be the registered instance ([`IMMORTAL`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn init_memory_unreferenced(
    mem: *mut GstAlignedMemory,
    flags: ffi::GstMemoryFlags,
    allocator: *mut ffi::GstAllocator,
    parent: *mut ffi::GstMemory,
    maxsize: usize,
    align: usize,
    offset: usize,
    size: usize,
) {
    // SAFETY: per the caller's contract. gst_mini_object_init sets every field of the
    // GstMiniObject (refcount, lock state, flags, qdata), and we set every other GstMemory
    // field, so a recycled header is exactly like a fresh one. MEMORY_GTYPE was stored before
    // IMMORTAL, which the caller has read.
    unsafe {
        ffi::gst_mini_object_init(
            mem.cast(),
            flags | ffi::GST_MINI_OBJECT_FLAG_LOCKABLE,
            MEMORY_GTYPE.load(Ordering::Relaxed),
            Some(mini_object_copy),
            None,
            Some(mini_object_free),
        );
        let m = &mut (*mem).mem;
        m.allocator = allocator;
        if !parent.is_null() {
            // As gst_memory_init: the share holds an exclusive lock and a reference on its
            // parent, which keep the parent read-only and alive.
            ffi::gst_mini_object_lock(parent.cast(), ffi::GST_LOCK_FLAG_EXCLUSIVE);
            ffi::gst_mini_object_ref(parent.cast());
        }
        m.parent = parent;
        m.maxsize = maxsize;
        m.align = align;
        m.offset = offset;
        m.size = size;
    }
}

/// Frees a memory at refcount 0 (its parent already released): recycles a root's block or a
/// share's header when the cache has room, frees them otherwise.
///
/// # Safety
/// `mem` must be a GstAlignedMemory created with `Box::into_raw` by this module, at refcount
/// 0, referenced by nothing.
#[inline(never)]
pub(super) unsafe fn release(mem: *mut ffi::GstMemory) {
    // SAFETY: per the caller's contract.
    let mut boxed = unsafe { Box::from_raw(mem as *mut GstAlignedMemory) };
    // The cache holds no reference on any allocator.
    boxed.mem.allocator = ptr::null_mut();
    boxed.mem.parent = ptr::null_mut();
    let maxsize = boxed.mem.maxsize;
    match boxed.backing {
        // The common case: an unguarded block of a cacheable class, to this thread's magazine
        // or the shared pool, with one thread-local lookup for the magazine and the statistics.
        Backing::Owned {
            key: Some(key),
            guard: None,
            ..
        } => {
            let rejected = with_thread(|t| match t {
                Some(t) => {
                    t.stats.block_died(mem as usize, maxsize);
                    CACHE.put(Some(&t.magazine), key, boxed)
                }
                None => {
                    stats::block_died(mem as usize, maxsize);
                    CACHE.put(None, key, boxed)
                }
            });
            drop(rejected);
        }
        Backing::Shared => {
            let rejected = with_thread(|t| match t {
                Some(t) => t.spares.put(boxed).err(),
                None => Some(boxed),
            });
            drop(rejected);
        }
        Backing::Owned {
            guard: Some(_),
            ref storage,
            ..
        } => {
            stats::block_died(mem as usize, maxsize);
            report_guard(&boxed, "when the block was freed", None);
            // SAFETY: the storage is ours alone now; poisoning it makes a use after free
            // read POISON_BYTE instead of stale data.
            unsafe { ptr::write_bytes(storage.base.as_ptr(), POISON_BYTE, storage.len) };
            drop(boxed);
        }
        Backing::Owned { key: None, .. } | Backing::Wrapped(_) | Backing::Protected(_) => {
            stats::block_died(mem as usize, maxsize);
            drop(boxed);
        }
    }
}

/// The common allocation, from this thread's magazine alone: the registered instance, no
/// guard mode, no tracer hooks, a block of the 64-byte alignment class (`block` from
/// `BlockLayout::small`). `None` when any of that does not hold or the magazine has no block
/// of the class: the caller then goes through [`alloc_block`].
#[inline(always)]
pub(super) fn alloc_cached(
    allocator: *mut ffi::GstAllocator,
    block: &BlockLayout,
    flags: ffi::GstMemoryFlags,
) -> Option<NonNull<GstAlignedMemory>> {
    if allocator != IMMORTAL.load(Ordering::Acquire) || traced() || special_mode() {
        return None;
    }
    let (slot, class) = cache::small_slot(block.alloc_size)?;
    // SAFETY: used within this call only.
    let t = unsafe { current() }?;
    {
        let boxed = CACHE.take_local(&t.magazine, slot)?;
        let mem = place(boxed, block, flags)?;
        // SAFETY: `mem` is exclusively ours and `allocator` is the registered instance; no
        // parent.
        unsafe {
            init_memory_unreferenced(
                mem.as_ptr(),
                flags,
                allocator,
                ptr::null_mut(),
                block.maxsize,
                block.align_mask,
                block.prefix,
                block.size,
            );
        }
        t.stats
            .block_born(mem.as_ptr() as usize, block.maxsize, Some(class));
        Some(mem)
    }
}

/// Places `block`'s region in an unguarded owned root (fresh or recycled) and zeroes what
/// `flags` promises is zero; `None` (the block freed) if it is not such a root.
#[inline(always)]
fn place(
    mut boxed: Box<GstAlignedMemory>,
    block: &BlockLayout,
    flags: ffi::GstMemoryFlags,
) -> Option<NonNull<GstAlignedMemory>> {
    let data = match &boxed.backing {
        Backing::Owned {
            storage,
            guard: None,
            ..
        } => {
            // SAFETY: shift <= align_mask < alloc_size <= storage.len, so the region base is
            // inside the storage, and [base + shift, base + alloc_size) too.
            unsafe { storage.base.add(block.shift) }
        }
        // The cache holds only unguarded owned roots; should that ever not hold, this is an
        // allocation failure (NULL to C), never a panic under an FFI vfunc.
        _ => return None,
    };
    boxed.data = data;
    if flags & ffi::GST_MEMORY_FLAG_ZERO_PREFIXED != 0 {
        let r = block.prefix_range();
        // SAFETY: [0, prefix) lies inside the region of maxsize >= prefix bytes.
        unsafe { ptr::write_bytes(data.as_ptr().add(r.start), 0, r.len()) };
    }
    if flags & ffi::GST_MEMORY_FLAG_ZERO_PADDED != 0 {
        let r = block.padding_range();
        // SAFETY: [prefix + size, maxsize) lies inside the region.
        unsafe { ptr::write_bytes(data.as_ptr().add(r.start), 0, r.len()) };
    }
    // SAFETY: Box::into_raw never returns NULL.
    Some(unsafe { NonNull::new_unchecked(Box::into_raw(boxed)) })
}

/// Makes [`class_alloc`] the class's `alloc` (called from the subclass's `class_init`, after
/// gstreamer-rs installed its trampolines): gstreamer-rs's trampoline would find the
/// implementation struct and convert the arguments on every allocation, for nothing this
/// allocator uses (it keeps no per-instance state).
pub fn install_class_alloc(klass: &mut glib::Class<gst::Allocator>) {
    klass.as_mut().alloc = Some(class_alloc);
}

/// `GstAllocatorClass.alloc` (contract of `gst_allocator_alloc`): NULL and a warning on an
/// invalid request or out-of-memory, never a panic.
///
/// The common request (alignment at most 64 bytes, sizes below `BlockLayout::SMALL_MAX`) is
/// laid out without a `Result` and served from this thread's magazine when it can
/// (`alloc_cached`); every other one goes through the checked `BlockLayout::new` and
/// `alloc_block`.
pub(super) unsafe extern "C" fn class_alloc(
    allocator: *mut ffi::GstAllocator,
    size: usize,
    params: *mut ffi::GstAllocationParams,
) -> *mut ffi::GstMemory {
    // SAFETY: gst_allocator_alloc passes valid params (its defaults when the caller gave
    // none); NULL from another caller takes the general path.
    if let Some(p) = unsafe { params.as_ref() }
        && let Some(block) = BlockLayout::small(size, p.prefix, p.padding, p.align)
        && let Some(mem) = alloc_cached(allocator, &block, p.flags)
    {
        return mem.as_ptr().cast();
    }
    // SAFETY: as above.
    unsafe { alloc_general(allocator, size, params) }
}

/// Every request `alloc_cached` does not serve.
///
/// # Safety
/// `allocator` must be a live allocator of this class; `params` NULL (the defaults) or valid.
#[cold]
#[inline(never)]
unsafe fn alloc_general(
    allocator: *mut ffi::GstAllocator,
    size: usize,
    params: *mut ffi::GstAllocationParams,
) -> *mut ffi::GstMemory {
    // SAFETY: per the caller's contract.
    let p = unsafe { params.as_ref() }
        .copied()
        .unwrap_or(ffi::GstAllocationParams {
            flags: 0,
            align: 0,
            prefix: 0,
            padding: 0,
            _gst_reserved: [ptr::null_mut(); 4],
        });
    let result = BlockLayout::new(size, p.prefix, p.padding, p.align)
        .map_err(AllocError::from)
        .and_then(|block| alloc_block(allocator, &block, p.flags));
    match result {
        Ok(mem) => mem.as_ptr().cast(),
        Err(err) => {
            // SAFETY: core calls alloc with a live allocator.
            let obj: Borrowed<gst::Allocator> = unsafe { from_glib_borrow(allocator) };
            gst::warning!(CAT, obj = &*obj, "allocation failed: {}", err);
            ptr::null_mut()
        }
    }
}

/// Allocates a new root block, from the cache when it holds one of the right class.
/// `allocator` is the GstAllocator the memory will point at.
pub(super) fn alloc_block(
    allocator: *mut ffi::GstAllocator,
    block: &BlockLayout,
    flags: ffi::GstMemoryFlags,
) -> Result<NonNull<GstAlignedMemory>, AllocError> {
    with_thread(|t| alloc_block_on(t, allocator, block, flags))
}

fn alloc_block_on(
    t: Option<&Thread>,
    allocator: *mut ffi::GstAllocator,
    block: &BlockLayout,
    flags: ffi::GstMemoryFlags,
) -> Result<NonNull<GstAlignedMemory>, AllocError> {
    let align = block.alloc_align();
    let (key, capacity) = match cache::key(block.alloc_size, align) {
        Some((key, bytes)) => (Some(key), bytes),
        None => (None, block.alloc_size),
    };
    let protected = protect_mode() != ProtectMode::Off;
    let guarded = !protected && guard_enabled();
    let cached = if guarded || protected {
        None
    } else {
        key.and_then(|k| CACHE.take(t.map(|t| &t.magazine), k))
    };
    // Hits are derived (cacheable allocations minus misses); a guarded block counts as a miss.
    if key.is_some() && cached.is_none() {
        match t {
            Some(t) => t.stats.count(Counter::CacheMisses, 1),
            None => stats::count(Counter::CacheMisses, 1),
        }
    }
    let mem = match cached {
        Some(b) => place(b, block, flags)
            .ok_or(AllocError::Internal("a cached block is not an owned root"))?,
        // A protected block (an ordinary one when the system or the registry refuses it).
        None if protected && let Some(b) = alloc_protected(block, flags) => b,
        // A guarded block's region is placed (and its ranges filled) by alloc_guarded.
        None if guarded => {
            // SAFETY: Box::into_raw never returns NULL.
            unsafe { NonNull::new_unchecked(Box::into_raw(alloc_guarded(block, flags)?)) }
        }
        None => {
            let storage = Storage::new(capacity, align).ok_or(AllocError::OutOfMemory {
                size: capacity,
                align,
            })?;
            let boxed = Box::new(GstAlignedMemory {
                // SAFETY: zeroed GstMemory, initialised by `init_memory` below.
                mem: unsafe { std::mem::zeroed() },
                data: storage.base,
                backing: Backing::Owned {
                    storage,
                    key,
                    guard: None,
                },
                next: None,
                slot: key.map_or(cache::NO_SLOT, cache::magazine_slot),
                maps: AtomicU64::new(0),
            });
            place(boxed, block, flags)
                .ok_or(AllocError::Internal("a new block is not an owned root"))?
        }
    };
    // SAFETY: `mem` is exclusively ours and `allocator` is live; no parent.
    unsafe {
        init_memory(
            mem.as_ptr(),
            flags,
            allocator,
            ptr::null_mut(),
            block.maxsize,
            block.align_mask,
            block.prefix,
            block.size,
        );
        // Flagged (shares inherit it): `mem_map` finds it with the test it makes anyway.
        let p = matches!((*mem.as_ptr()).backing, Backing::Protected(_));
        (*mem.as_ptr()).mem.mini_object.flags |= if p { PROTECTED_FLAG } else { 0 };
    }
    // No log line here: this is the hot path (statistics count allocations instead).
    let addr = mem.as_ptr() as usize;
    let class = key.map(|k| k.class);
    match t {
        Some(t) => t.stats.block_born(addr, block.maxsize, class),
        None => stats::block_born(addr, block.maxsize, class, false),
    }
    Ok(mem)
}

/// Creates a share (sub-memory) of `root` covering region bytes `[offset, offset + size)`,
/// and counts it.
///
/// # Safety
/// `root` must be a live root `GstAlignedMemory`, and the range must lie inside its maxsize.
pub(super) unsafe fn new_share(
    root: *mut GstAlignedMemory,
    offset: usize,
    size: usize,
) -> *mut ffi::GstMemory {
    // SAFETY: the caller guarantees `root` is live; we only read immutable fields.
    let (data, allocator, maxsize, align, root_flags) = unsafe {
        let r = &*root;
        (
            r.data,
            r.mem.allocator,
            r.mem.maxsize,
            r.mem.align,
            r.mem.mini_object.flags,
        )
    };
    debug_assert!(offset.checked_add(size).is_some_and(|end| end <= maxsize));
    // SAFETY: used within this call only.
    let t = unsafe { current() };
    let child = Box::into_raw(share_header(t, data));
    match t {
        Some(t) => t.stats.count(Counter::Shares, 1),
        None => stats::count(Counter::Shares, 1),
    }
    attribution::shared();
    // SAFETY: `child` is exclusively ours; init_memory takes an exclusive lock and a reference
    // on `root`, which keep the storage alive for the child's lifetime. A share is always
    // read-only (GST_MEMORY_FLAG_READONLY == GST_MINI_OBJECT_FLAG_LOCK_READONLY).
    unsafe {
        init_memory(
            child,
            root_flags | ffi::GST_MEMORY_FLAG_READONLY,
            allocator,
            root.cast(),
            maxsize,
            align,
            offset,
            size,
        );
    }
    child.cast()
}

/// Allocates through this allocator, returning the typed memory or the reason it failed.
pub fn alloc(
    allocator: &gst::Allocator,
    size: usize,
    params: &gst::AllocationParams,
) -> Result<AlignedMemory, AllocError> {
    let block = BlockLayout::new(size, params.prefix(), params.padding(), params.align())?;
    let ptr: *mut ffi::GstAllocator = allocator.to_glib_none().0;
    let flags = flags_bits(params.flags());
    // The same paths as the class's `alloc`: the thread's magazine when it can serve.
    let cached = BlockLayout::small(size, params.prefix(), params.padding(), params.align())
        .and_then(|small| alloc_cached(ptr, &small, flags));
    let mem = match cached {
        Some(mem) => mem,
        None => alloc_block(ptr, &block, flags).inspect_err(|err| {
            gst::warning!(CAT, obj = allocator, "allocation failed: {}", err);
        })?,
    };
    // SAFETY: alloc_block returns a new memory with refcount 1 that we own.
    Ok(unsafe { from_glib_full(mem.as_ptr()) })
}

/// Wraps a foreign owner's bytes as `AlignedMemory`. `bytes` extracts the region from the
/// owner once it is boxed (so a `[u8; N]` owner does not move after we take its address).
pub fn wrap<T: Send + 'static>(
    allocator: &gst::Allocator,
    owner: T,
    offset: usize,
    size: usize,
    flags: gst::MemoryFlags,
    bytes: impl FnOnce(&mut T) -> (*mut u8, usize),
) -> Result<AlignedMemory, MemoryError> {
    let raw: *mut T = Box::into_raw(Box::new(owner));
    // SAFETY: `raw` is valid and exclusively owned; the bytes it yields stay valid (the box
    // never moves its contents) until `Owner` drops it.
    let (data, len) = bytes(unsafe { &mut *raw });
    // From here on, `owner` frees the box on every path.
    // SAFETY: Box::into_raw never returns NULL.
    let owner = Owner(unsafe { NonNull::new_unchecked(raw as *mut (dyn Send + 'static)) });
    if offset.checked_add(size).is_none_or(|end| end > len) {
        return Err(MemoryError::OutOfRange {
            offset: offset as isize,
            size,
            available: len,
        });
    }
    // A slice's pointer is never NULL (an empty slice has a dangling, non-NULL one), so mapping
    // an empty wrapped memory still yields a non-NULL pointer.
    let Some(data) = NonNull::new(data) else {
        return Err(MemoryError::Refused("the owner returned a NULL slice"));
    };
    let align = layout::align_mask_of((data.as_ptr() as usize).wrapping_add(offset));
    let mem = Box::into_raw(Box::new(GstAlignedMemory {
        // SAFETY: zeroed GstMemory, initialised right below.
        mem: unsafe { std::mem::zeroed() },
        data,
        backing: Backing::Wrapped(owner),
        next: None,
        slot: cache::NO_SLOT,
        maps: AtomicU64::new(0),
    }));
    let writable = !flags.contains(gst::MemoryFlags::READONLY);
    let flags = flags_bits(flags);
    let alloc_ptr: *mut ffi::GstAllocator = allocator.to_glib_none().0;
    // SAFETY: fresh struct; the region [data, data + len) stays valid until `release` drops
    // the owner; offset + size <= len was checked above.
    unsafe {
        init_memory(
            mem,
            flags,
            alloc_ptr,
            ptr::null_mut(),
            len,
            align,
            offset,
            size,
        )
    };
    stats::block_born(mem as usize, len, None, true);
    gst::debug!(
        CAT,
        obj = allocator,
        "wrapped {} bytes at {:p} as {:p} (offset {} size {} align {:#x}, {})",
        len,
        data,
        mem,
        offset,
        size,
        align,
        if writable { "writable" } else { "read-only" }
    );
    // SAFETY: a new memory with refcount 1 that we own.
    Ok(unsafe { from_glib_full(mem) })
}
