// SPDX-License-Identifier: MPL-2.0
//! The GstMemory vfuncs installed on every `AlignedAllocator` instance.

use std::ptr::{self};
use std::sync::atomic::Ordering;

use crate::allocator::debug::ALIGNED as CAT;
use gst::ffi;
use gst::glib;
use gst::glib::translate::*;
use std::ffi::CStr;

use crate::allocator::aligned::stats::{self, Counter};
use crate::allocator::layout::{self, BlockLayout};
use crate::allocator::raw::{is_span, resolve_request};
use crate::attribution;

use super::block::GstAlignedMemory;
use super::guard::{guarded_ever, report_guard, root_of};
use super::lifecycle::{alloc_block, new_share};
use super::protect::PROTECTED_FLAG;
use super::storage::Backing;

/// `GstAllocator.mem_map` (contract of `gst_memory_map`): core has taken the lock; return the
/// region base (core adds `offset`), the same pointer on every call; NULL only for
/// NOT_MAPPABLE memory.
unsafe extern "C" fn mem_map(
    mem: *mut ffi::GstMemory,
    _maxsize: usize,
    flags: ffi::GstMapFlags,
) -> glib::ffi::gpointer {
    // SAFETY: core only calls mem_map on live memory of this allocator, i.e. a GstAlignedMemory.
    let mem = unsafe { &*(mem as *const GstAlignedMemory) };
    if mem.mem.mini_object.flags & (ffi::GST_MEMORY_FLAG_NOT_MAPPABLE | PROTECTED_FLAG) != 0 {
        return map_special(mem, flags);
    }
    // Counted on the memory, added to the statistics when it is freed: no thread-local
    // lookup on the map path (a load and a store, not a locked add: see the field).
    let n = mem.maps.load(Ordering::Relaxed);
    mem.maps.store(n.wrapping_add(1), Ordering::Relaxed);
    mem.data.as_ptr().cast()
}

/// `mem_map` of NOT_MAPPABLE memory (NULL) or of a protected block (its protection follows
/// the new mapping). Out of line and `extern "C"` (it cannot unwind), so that the common map
/// keeps no frame.
#[cold]
#[inline(never)]
extern "C" fn map_special(mem: &GstAlignedMemory, flags: ffi::GstMapFlags) -> glib::ffi::gpointer {
    if mem.mem.mini_object.flags & ffi::GST_MEMORY_FLAG_NOT_MAPPABLE != 0 {
        gst::debug!(CAT, "refusing to map NOT_MAPPABLE memory {:p}", mem);
        return ptr::null_mut();
    }
    // SAFETY: a live memory of ours; its root is live.
    let root = unsafe { root_of(mem) };
    if let Backing::Protected(p) = &root.backing
        && !p.map(flags & ffi::GST_MAP_WRITE != 0)
    {
        gst::warning!(CAT, "cannot open protected block {:p} for a mapping", root);
        return ptr::null_mut();
    }
    let n = mem.maps.load(Ordering::Relaxed);
    mem.maps.store(n.wrapping_add(1), Ordering::Relaxed);
    mem.data.as_ptr().cast()
}

/// [`mem_map`] while the tracer charges elements: the map is charged to the element running.
unsafe extern "C" fn mem_map_charged(
    mem: *mut ffi::GstMemory,
    maxsize: usize,
    flags: ffi::GstMapFlags,
) -> glib::ffi::gpointer {
    // SAFETY: the same call, with the same arguments.
    let data = unsafe { mem_map(mem, maxsize, flags) };
    if !data.is_null() {
        attribution::mapped(flags & ffi::GST_MAP_WRITE != 0);
    }
    data
}

/// `GstAllocator.mem_unmap` (contract of `gst_memory_unmap`): nothing to release.
unsafe extern "C" fn mem_unmap(_mem: *mut ffi::GstMemory) {}

/// `GstAllocator.mem_unmap_full`: nothing to release either, but when a guarded block was
/// mapped for writing, its guards are checked now, right after the writer is done. Until a
/// guarded block was made, that is one test of a static.
unsafe extern "C" fn mem_unmap_full(mem: *mut ffi::GstMemory, info: *mut ffi::GstMapInfo) {
    if guarded_ever() {
        // SAFETY: core passes a live memory of ours and the GstMapInfo of its map.
        unsafe { check_guards_at_unmap(mem, info) };
    }
}

/// [`mem_unmap_full`] once guarded blocks exist: out of line and `extern "C"` (it cannot
/// unwind), so that the common unmap needs no frame.
///
/// # Safety
/// As `mem_unmap_full`.
#[cold]
#[inline(never)]
unsafe extern "C" fn check_guards_at_unmap(mem: *mut ffi::GstMemory, info: *mut ffi::GstMapInfo) {
    // SAFETY: per the caller's contract.
    unsafe {
        let root = root_of(mem as *const GstAlignedMemory);
        let write = (*info).flags & ffi::GST_MAP_WRITE != 0;
        match &root.backing {
            Backing::Protected(p) => p.unmap(write),
            Backing::Owned { guard: Some(_), .. } if write => {
                report_guard(root, "when a write mapping was released", None);
            }
            _ => {}
        }
    }
}

/// Runs `f` with `root`'s pages accessible when it is a protected block (`write`: writable
/// too), as they are anyway otherwise.
/// `None` when a protected block cannot be opened.
fn accessible<R>(root: &GstAlignedMemory, write: bool, f: impl FnOnce() -> R) -> Option<R> {
    match &root.backing {
        Backing::Protected(p) => p.with_access(write, f),
        _ => Some(f()),
    }
}

/// `GstAllocator.mem_share` (contract of `gst_memory_share`): a read-only sub-memory of the
/// root with the same region, `offset = mem.offset + offset`, `size == -1` meaning to the end.
/// Out-of-range requests give NULL and a warning (core does not check them).
unsafe extern "C" fn mem_share(
    mem: *mut ffi::GstMemory,
    offset: isize,
    size: isize,
) -> *mut ffi::GstMemory {
    // SAFETY: core calls mem_share on a live memory of this allocator, holding a lock on it.
    let m = unsafe { &*(mem as *const GstAlignedMemory) };
    let Some((new_offset, new_size)) = resolve_request(&CAT, "share", &m.mem, offset, size, false)
    else {
        return ptr::null_mut();
    };
    let root = if m.mem.parent.is_null() {
        mem
    } else {
        m.mem.parent
    };
    // SAFETY: the root of a live share is live (the share holds a reference on it), is a
    // GstAlignedMemory of the same allocator, and has the same maxsize.
    let share = unsafe { new_share(root.cast(), new_offset, new_size) };
    gst::trace!(
        CAT,
        "shared {:p} -> {:p}: offset {} size {}",
        mem,
        share,
        new_offset,
        new_size
    );
    share
}

/// `GstAllocator.mem_copy` (contract of `gst_memory_copy`): a new writable root block holding
/// `size` bytes from `offset` (`-1`: to the end, 0 bytes if the offset is past it), with the
/// source's alignment. Works on memory mapped for writing: it reads the bytes directly.
unsafe extern "C" fn mem_copy(
    mem: *mut ffi::GstMemory,
    offset: isize,
    size: isize,
) -> *mut ffi::GstMemory {
    // SAFETY: core calls mem_copy on a live memory of this allocator.
    let m = unsafe { &*(mem as *const GstAlignedMemory) };
    let Some((start, len)) = resolve_request(&CAT, "copy", &m.mem, offset, size, true) else {
        return ptr::null_mut();
    };
    let align = m.mem.align & (layout::MAX_ALIGN - 1);
    let block = match BlockLayout::new(len, 0, 0, align) {
        Ok(b) => b,
        Err(err) => {
            gst::warning!(CAT, "copy of {:p} failed: {}", m, err);
            return ptr::null_mut();
        }
    };
    match alloc_block(m.mem.allocator, &block, 0) {
        Ok(copy) => {
            // SAFETY: a live memory of ours; its root is live.
            let src_root = unsafe { root_of(m) };
            // SAFETY: the copy is ours alone until we return it.
            let dst_root = unsafe { copy.as_ref() };
            // Protected blocks are opened for memkit's own access meanwhile.
            let copied = accessible(src_root, false, || {
                accessible(dst_root, true, || {
                    // SAFETY: [start, start + len) is inside the source region (checked by
                    // sub_range), the new block's payload has room for `len` bytes, the two
                    // never overlap, and both are accessible.
                    unsafe {
                        let dst = dst_root.data.as_ptr().add(block.prefix);
                        ptr::copy_nonoverlapping(m.data.as_ptr().add(start), dst, len);
                    }
                })
            });
            if copied.flatten().is_none() {
                gst::warning!(
                    CAT,
                    "copy of {:p} failed: a protected block cannot be opened",
                    m
                );
                // SAFETY: the copy is ours alone; freeing it releases it.
                unsafe { ffi::gst_memory_unref(copy.as_ptr().cast()) };
                return ptr::null_mut();
            }
            gst::trace!(CAT, "copied {} bytes of {:p} to {:p}", len, m, copy);
            stats::count(Counter::Copies, 1);
            stats::count(Counter::BytesCopied, len as u64);
            attribution::copied(len);
            copy.as_ptr().cast()
        }
        Err(err) => {
            gst::warning!(CAT, "copy of {:p} failed: {}", m, err);
            ptr::null_mut()
        }
    }
}

/// `GstAllocator.mem_is_span` (contract of `gst_memory_is_span`): core has checked that both
/// memories have this allocator and the same non-NULL parent. TRUE iff `mem2` starts where
/// `mem1` ends; `*offset` is `mem1`'s start relative to the parent's offset, ready for
/// `gst_memory_share(parent, offset, ..)`.
unsafe extern "C" fn mem_is_span(
    mem1: *mut ffi::GstMemory,
    mem2: *mut ffi::GstMemory,
    offset: *mut usize,
) -> glib::ffi::gboolean {
    // SAFETY: core passes two live memories with the same live parent.
    let contiguous = unsafe { is_span(mem1, mem2, offset) };
    if contiguous {
        stats::count(Counter::SpanHits, 1);
    }
    contiguous.into_glib()
}

/// The memory type of `AlignedMemory` memories (`GstAllocator.mem_type`).
pub const MEMORY_TYPE_CSTR: &CStr = c"AlignedMemory";

/// Installs the memory vfuncs and the memory type on a new allocator instance.
pub fn install_vfuncs(allocator: &gst::Allocator) {
    let ptr: *mut ffi::GstAllocator = allocator.to_glib_none().0;
    // SAFETY: called from `constructed`, before the instance is shared; the fields belong to
    // the GstAllocator instance struct, and `MEMORY_TYPE_CSTR` is a static NUL-terminated string
    // (core stores the pointer without copying it).
    unsafe {
        (*ptr).mem_type = MEMORY_TYPE_CSTR.as_ptr();
        (*ptr).mem_map = Some(if attribution::active() {
            mem_map_charged
        } else {
            mem_map
        });
        (*ptr).mem_unmap = Some(mem_unmap);
        (*ptr).mem_copy = Some(mem_copy);
        (*ptr).mem_share = Some(mem_share);
        (*ptr).mem_is_span = Some(mem_is_span);
        (*ptr).mem_map_full = None;
        (*ptr).mem_unmap_full = Some(mem_unmap_full);
    }
}

/// Makes `allocator` charge every map to the element running (the tracer does it for the
/// registered instance when it starts; instances made later get it at construction).
pub fn charge_maps(allocator: &gst::Allocator) {
    let ptr: *mut ffi::GstAllocator = allocator.to_glib_none().0;
    // SAFETY: the tracer starts inside gst_init, before any pipeline or memory exists, so no
    // other thread reads the field while it is written; the function has the vfunc's type.
    unsafe { (*ptr).mem_map = Some(mem_map_charged) };
}
