// SPDX-License-Identifier: MPL-2.0
//! The memory vfuncs that 1.22's fd memory lacks or gets wrong (share sizes, `is_span`,
//! an fd-backed `copy`, NOT_MAPPABLE, unbalanced unmaps), installed over GstFdAllocator's.

use std::os::unix::fs::FileExt;
use std::ptr;
use std::sync::OnceLock;

use crate::allocator::debug::MEMFD as CAT;
use gst::ffi;
use gst::glib;
use gst::glib::translate::*;

use crate::allocator::memfd::stats::{self as mstats, Counter as M};
use crate::allocator::raw::{LOCK_MASK, is_span, lockstate, resolve_request};
use crate::attribution;

use super::alloc::{OWN_MAP, alloc};
use super::blocks::is_frozen;

type ShareFn = unsafe extern "C" fn(*mut ffi::GstMemory, isize, isize) -> *mut ffi::GstMemory;
type MapFn =
    unsafe extern "C" fn(*mut ffi::GstMemory, usize, ffi::GstMapFlags) -> glib::ffi::gpointer;
type UnmapFn = unsafe extern "C" fn(*mut ffi::GstMemory);

/// GstFdAllocator's own `mem_map`, which ours calls for mappable memory.
static FD_MAP: OnceLock<MapFn> = OnceLock::new();
/// `mem_map`: NOT_MAPPABLE memory refuses to map (1.22's fd memory maps it anyway).
unsafe extern "C" fn mem_map(
    mem: *mut ffi::GstMemory,
    maxsize: usize,
    flags: ffi::GstMapFlags,
) -> glib::ffi::gpointer {
    // SAFETY: core calls this with a live memory of ours, locked for `flags`.
    unsafe {
        if (*mem).mini_object.flags & ffi::GST_MEMORY_FLAG_NOT_MAPPABLE != 0 {
            gst::debug!(CAT, "refusing to map NOT_MAPPABLE memory {:p}", mem);
            return ptr::null_mut();
        }
        // A block a stream sent as it is: never written again (a consumer maps it) until it
        // goes back through `alloc`. In a buffer its extra lock already refuses a write map;
        // this refuses one of a memory the producer kept after the buffer went (a share is
        // read-only anyway: core makes it so).
        if flags & ffi::GST_MAP_WRITE != 0 && !OWN_MAP.get() {
            let parent = (*mem).parent;
            if is_frozen(if parent.is_null() { mem } else { parent }) {
                gst::debug!(CAT, "refusing to map {:p} for writing: it was sent", mem);
                return ptr::null_mut();
            }
        }
        match FD_MAP.get() {
            Some(map) => {
                let data = map(mem, maxsize, flags);
                if !data.is_null() && !OWN_MAP.get() {
                    mstats::count(M::Maps, 1);
                    attribution::mapped(flags & ffi::GST_MAP_WRITE != 0);
                }
                data
            }
            None => ptr::null_mut(),
        }
    }
}

/// GstFdAllocator's own `mem_unmap`, which ours calls for balanced unmaps.
static FD_UNMAP: OnceLock<UnmapFn> = OnceLock::new();

/// `mem_unmap`: passes a balanced unmap on to GstFdAllocator, and ignores an unbalanced one
/// (a `gst_memory_unmap` without its map, which core reports with a CRITICAL from the lock
/// but still forwards here). GstFdMemory in keep-mapped mode would count its maps down to -1,
/// after which no read-write map ever succeeds again: for a recycled block, for its later,
/// unrelated owners too.
unsafe extern "C" fn mem_unmap(mem: *mut ffi::GstMemory) {
    // SAFETY: core calls this with a live memory of ours.
    if unsafe { lockstate(mem) } & LOCK_MASK == 0 {
        gst::warning!(
            CAT,
            "ignoring an unbalanced unmap of {:p} (not mapped)",
            mem
        );
        return;
    }
    if let Some(unmap) = FD_UNMAP.get() {
        // SAFETY: GstFdAllocator's own unmap, for a map it made.
        unsafe { unmap(mem) }
    }
}

/// GstFdAllocator's own `mem_share`, which ours calls once the range is resolved and checked.
static FD_SHARE: OnceLock<ShareFn> = OnceLock::new();
/// `mem_share`: resolves `size == -1` against the memory's own size (1.22 uses its maxsize,
/// so a share of a share is too long) and refuses ranges outside it, then lets GstFdAllocator
/// make the share.
unsafe extern "C" fn mem_share(
    mem: *mut ffi::GstMemory,
    offset: isize,
    size: isize,
) -> *mut ffi::GstMemory {
    // SAFETY: core calls this with a live memory of ours, holding a lock on it.
    let m = unsafe { &*mem };
    let Some((_, new_size)) = resolve_request(&CAT, "share", m, offset, size, false) else {
        return ptr::null_mut();
    };
    let Some(share) = FD_SHARE.get() else {
        return ptr::null_mut();
    };
    mstats::count(M::Shares, 1);
    attribution::shared();
    // SAFETY: the original fd share, with an explicit size that fits.
    unsafe { share(mem, offset, new_size as isize) }
}

/// `mem_is_span`: contiguous shares of one parent (core checked allocator and parent).
unsafe extern "C" fn mem_is_span(
    mem1: *mut ffi::GstMemory,
    mem2: *mut ffi::GstMemory,
    offset: *mut usize,
) -> glib::ffi::gboolean {
    // SAFETY: core passes two live memories with the same live parent.
    let span = unsafe { is_span(mem1, mem2, offset) };
    if span {
        mstats::count(M::SpanHits, 1);
    }
    span.into_glib()
}

/// `mem_copy`: a new `MemfdMemory` block with the same alignment, holding the range. Reads the
/// source from its file, so it works while the source is mapped for writing (as for
/// `AlignedMemory`) and on NOT_MAPPABLE memory.
unsafe extern "C" fn mem_copy(
    mem: *mut ffi::GstMemory,
    offset: isize,
    size: isize,
) -> *mut ffi::GstMemory {
    // SAFETY: core calls this with a live memory of ours.
    let m = unsafe { &*mem };
    let Some((start, len)) = resolve_request(&CAT, "copy", m, offset, size, true) else {
        return ptr::null_mut();
    };
    let params = gst::AllocationParams::new(
        gst::MemoryFlags::empty(),
        m.align & (rustix::param::page_size() - 1),
        0,
        0,
    );
    // SAFETY: a memory's allocator is live while the memory is; it is one of ours (core only
    // calls our vfuncs on our memories), a GstFdAllocator.
    let allocator: gst_allocators::FdAllocator =
        unsafe { from_glib_none(m.allocator as *mut gst_allocators::ffi::GstFdAllocator) };
    // Private memory (stream 0), whatever the allocator serves: a copy may be written with
    // anything, so it never goes to a block a consumer maps.
    let copy = match alloc(&allocator, 0, len, &params) {
        Ok(c) => c,
        Err(err) => {
            gst::warning!(CAT, "copy of {:p} failed: {}", mem, err);
            return ptr::null_mut();
        }
    };
    // The bytes are read from the file with pread, not through a mapping: that works whatever
    // the source's map state (mapped for writing, NOT_MAPPABLE, never mapped).
    // SAFETY: `mem` is fd memory of ours, whose descriptor stays open while it lives.
    let raw = unsafe { gst_allocators::ffi::gst_fd_memory_get_fd(mem) };
    if raw < 0 {
        return ptr::null_mut();
    }
    // SAFETY: as above; the borrow ends before this function returns.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    // A duplicate of the descriptor, as a File for read_exact_at (which retries short and
    // interrupted reads); it is closed when this function returns.
    let file = match fd.try_clone_to_owned() {
        Ok(owned) => std::fs::File::from(owned),
        Err(e) => {
            gst::warning!(CAT, "copy of {:p} failed: dup: {}", mem, e);
            return ptr::null_mut();
        }
    };
    let mut copy = copy;
    let ok = match copy.get_mut().map(|c| c.map_writable()) {
        Some(Ok(mut dst)) => match file.read_exact_at(&mut dst.as_mut_slice()[..len], start as u64)
        {
            Ok(()) => true,
            Err(e) => {
                gst::warning!(CAT, "copy of {:p} failed: pread: {}", mem, e);
                false
            }
        },
        _ => false,
    };
    if !ok {
        return ptr::null_mut();
    }
    mstats::count(M::Copies, 1);
    mstats::count(M::BytesCopied, len as u64);
    attribution::copied(len);
    copy.into_glib_ptr()
}

/// Installs our vfuncs over GstFdAllocator's on a new instance.
pub fn install_vfuncs(allocator: &gst::Allocator) {
    let ptr: *mut ffi::GstAllocator = allocator.to_glib_none().0;
    // SAFETY: called from `constructed`, before the instance is shared; GstFdAllocator's
    // instance init has already set its own mem_share, which we keep to call.
    unsafe {
        if let Some(orig) = (*ptr).mem_share
            && orig as *const () != mem_share as *const ()
        {
            let _ = FD_SHARE.set(orig);
        }
        if let Some(orig) = (*ptr).mem_map
            && orig as *const () != mem_map as *const ()
        {
            let _ = FD_MAP.set(orig);
        }
        if let Some(orig) = (*ptr).mem_unmap
            && orig as *const () != mem_unmap as *const ()
        {
            let _ = FD_UNMAP.set(orig);
        }
        (*ptr).mem_map = Some(mem_map);
        (*ptr).mem_unmap = Some(mem_unmap);
        (*ptr).mem_share = Some(mem_share);
        (*ptr).mem_is_span = Some(mem_is_span);
        (*ptr).mem_copy = Some(mem_copy);
    }
}
