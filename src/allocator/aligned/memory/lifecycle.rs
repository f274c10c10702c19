// SPDX-License-Identifier: MPL-2.0
//! A block's life: memory init without an allocator reference, allocation (from the
//! recycling cache when it can), shares, and release.

use std::cell::RefCell;
use std::ptr::{self, NonNull};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::allocator::debug::ALIGNED as CAT;
use gst::ffi;
use gst::glib;
use gst::glib::translate::*;

use crate::allocator::cache::{self, Cache, LocalMagazine, Spares};
use crate::allocator::error::{AllocError, MemoryError};
use crate::allocator::layout::{self, BlockLayout};
use crate::allocator::raw::traced;
use crate::allocator::stats::{self, Counter};

use super::block::{AlignedMemory, GstAlignedMemory, flags_bits};
use super::guard::{POISON_BYTE, alloc_guarded, guard_enabled, report_guard};
use super::storage::{Backing, Owner, Storage};

/// A freed root block waiting in the cache: its header and its storage.
pub struct Block(Box<GstAlignedMemory>);

thread_local! {
    static MAGAZINE: RefCell<LocalMagazine<Block>> = const { RefCell::new(LocalMagazine::new()) };
    static SPARE_HEADERS: RefCell<Spares<Box<GstAlignedMemory>>> =
        const { RefCell::new(Spares::new(64)) };
}

static CACHE: LazyLock<Cache<Block>> = LazyLock::new(|| Cache::new(&MAGAZINE));

/// The process-wide block cache.
pub fn cache() -> &'static Cache<Block> {
    &CACHE
}

/// A header for a share: a spare one of this thread, or a new one.
fn share_header(data: NonNull<u8>) -> Box<GstAlignedMemory> {
    let spare = SPARE_HEADERS
        .try_with(|s| s.try_borrow_mut().ok()?.take())
        .ok()
        .flatten();
    match spare {
        Some(mut h) => {
            h.data = data;
            h
        }
        None => Box::new(GstAlignedMemory {
            // SAFETY: GstMemory is a plain C struct for which all-zeroes is a valid
            // (uninitialised) state; `init_memory` fills it in.
            mem: unsafe { std::mem::zeroed() },
            data,
            backing: Backing::Shared,
        }),
    }
}

/// The registered `AlignedMemory` instance, which lives as long as the process (a static holds
/// a reference): its memories need not hold a reference on it.
static IMMORTAL: AtomicPtr<ffi::GstAllocator> = AtomicPtr::new(ptr::null_mut());

/// Records the registered instance (see [`IMMORTAL`]); its creator keeps a reference on it
/// for the rest of the process.
pub fn set_immortal(allocator: &gst::Allocator) {
    let ptr: *mut ffi::GstAllocator = allocator.to_glib_none().0;
    IMMORTAL.store(ptr, Ordering::Release);
}

/// `GST_TYPE_MEMORY`, looked up once.
fn memory_gtype() -> glib::ffi::GType {
    static TYPE: LazyLock<glib::ffi::GType> = LazyLock::new(|| {
        // SAFETY: a plain getter; GStreamer is initialised before any memory is made.
        unsafe { ffi::gst_memory_get_type() }
    });
    *TYPE
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
    let mem = obj as *mut ffi::GstMemory;
    // SAFETY: core calls free once, at refcount 0, on a memory initialised by `init_memory`,
    // whose parent (if any) we locked and referenced there.
    unsafe {
        let parent = (*mem).parent;
        if !parent.is_null() {
            ffi::gst_mini_object_unlock(parent.cast(), ffi::GST_LOCK_FLAG_EXCLUSIVE);
            ffi::gst_mini_object_unref(parent.cast());
        }
        release(mem);
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
    // SAFETY: per the caller's contract. gst_memory_init and gst_mini_object_init set every
    // field of the GstMiniObject (refcount, lock state, flags, qdata), and we set every other
    // GstMemory field, so a recycled header is exactly like a fresh one.
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
        ffi::gst_mini_object_init(
            mem.cast(),
            flags | ffi::GST_MINI_OBJECT_FLAG_LOCKABLE,
            memory_gtype(),
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
pub(super) unsafe fn release(mem: *mut ffi::GstMemory) {
    // SAFETY: per the caller's contract.
    let mut boxed = unsafe { Box::from_raw(mem as *mut GstAlignedMemory) };
    // The cache holds no reference on any allocator.
    boxed.mem.allocator = ptr::null_mut();
    boxed.mem.parent = ptr::null_mut();
    if !matches!(boxed.backing, Backing::Shared) {
        stats::block_died(mem as usize, boxed.mem.maxsize);
    }
    match boxed.backing {
        Backing::Shared => {
            let mut rejected = Some(boxed);
            let _ = SPARE_HEADERS.try_with(|s| {
                if let (Ok(mut s), Some(h)) = (s.try_borrow_mut(), rejected.take()) {
                    rejected = s.put(h).err();
                }
            });
            drop(rejected);
        }
        Backing::Owned {
            guard: Some(_),
            ref storage,
            ..
        } => {
            report_guard(&boxed, "when the block was freed", None);
            // SAFETY: the storage is ours alone now; poisoning it makes a use after free
            // read POISON_BYTE instead of stale data.
            unsafe { ptr::write_bytes(storage.base.as_ptr(), POISON_BYTE, storage.len) };
            drop(boxed);
        }
        Backing::Owned { key: Some(key), .. } => drop(CACHE.put(key, Block(boxed))),
        Backing::Owned { key: None, .. } | Backing::Wrapped(_) => drop(boxed),
    }
}

/// Allocates a new root block, from the cache when it holds one of the right class.
/// `allocator` is the GstAllocator the memory will point at.
pub(super) fn alloc_block(
    allocator: *mut ffi::GstAllocator,
    block: &BlockLayout,
    flags: ffi::GstMemoryFlags,
) -> Result<NonNull<GstAlignedMemory>, AllocError> {
    let align = block.alloc_align();
    let (key, capacity) = match cache::key(block.alloc_size, align) {
        Some((key, bytes)) => (Some(key), bytes),
        None => (None, block.alloc_size),
    };
    let guarded = guard_enabled();
    let cached = if guarded {
        None
    } else {
        key.and_then(|k| CACHE.take(k)).map(|b| b.0)
    };
    // Hits are derived (cacheable allocations minus misses); a guarded block counts as a miss.
    if key.is_some() && cached.is_none() {
        stats::count(Counter::CacheMisses, 1);
    }
    let mut boxed = match cached {
        Some(b) => b,
        None if guarded => alloc_guarded(block, flags)?,
        None => {
            let storage = Storage::new(capacity, align).ok_or(AllocError::OutOfMemory {
                size: capacity,
                align,
            })?;
            Box::new(GstAlignedMemory {
                // SAFETY: zeroed GstMemory, initialised by `init_memory` below.
                mem: unsafe { std::mem::zeroed() },
                data: storage.base,
                backing: Backing::Owned {
                    storage,
                    key,
                    guard: None,
                },
            })
        }
    };
    let data = match &boxed.backing {
        // A guarded block's region was placed (and its ranges filled) by alloc_guarded.
        Backing::Owned { guard: Some(_), .. } => boxed.data,
        Backing::Owned { storage, .. } => {
            // SAFETY: shift <= align_mask < alloc_size <= storage.len, so the region base is
            // inside the storage, and [base + shift, base + alloc_size) too.
            unsafe { storage.base.add(block.shift) }
        }
        // alloc_block makes and the cache holds only owned roots; should that ever not hold,
        // this is an allocation failure (NULL to C), never a panic under an FFI vfunc.
        Backing::Shared | Backing::Wrapped(_) => {
            drop(boxed);
            return Err(AllocError::Internal("a cached block is not an owned root"));
        }
    };
    boxed.data = data;
    let zero = if guarded { 0 } else { flags };

    if zero & ffi::GST_MEMORY_FLAG_ZERO_PREFIXED != 0 {
        let r = block.prefix_range();
        // SAFETY: [0, prefix) lies inside the region of maxsize >= prefix bytes.
        unsafe { ptr::write_bytes(data.as_ptr().add(r.start), 0, r.len()) };
    }
    if zero & ffi::GST_MEMORY_FLAG_ZERO_PADDED != 0 {
        let r = block.padding_range();
        // SAFETY: [prefix + size, maxsize) lies inside the region.
        unsafe { ptr::write_bytes(data.as_ptr().add(r.start), 0, r.len()) };
    }

    let mem = Box::into_raw(boxed);
    // SAFETY: `mem` is exclusively ours and `allocator` is live; no parent.
    unsafe {
        init_memory(
            mem,
            flags,
            allocator,
            ptr::null_mut(),
            block.maxsize,
            block.align_mask,
            block.prefix,
            block.size,
        );
    }
    // No log line here: this is the hot path (statistics count allocations instead).
    stats::block_born(mem as usize, block.maxsize, key.map(|k| k.class), false);
    // SAFETY: Box::into_raw never returns NULL.
    Ok(unsafe { NonNull::new_unchecked(mem) })
}

/// Creates a share (sub-memory) of `root` covering region bytes `[offset, offset + size)`.
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
    let child = Box::into_raw(share_header(data));
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
    let mem = alloc_block(ptr, &block, flags_bits(params.flags())).inspect_err(|err| {
        gst::warning!(CAT, obj = allocator, "allocation failed: {}", err);
    })?;
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
