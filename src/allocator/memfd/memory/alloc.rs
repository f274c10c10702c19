// SPDX-License-Identifier: MPL-2.0
//! Allocating and wrapping blocks.

use std::collections::HashMap;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::ptr;
use std::sync::{LazyLock, Mutex};

use crate::allocator::debug::MEMFD as CAT;
use gst::ffi;
use gst::glib;
use gst::glib::translate::*;
use gst_allocators::prelude::*;

use crate::allocator::error::{AllocError, FdError};
use crate::allocator::layout;
use crate::allocator::memfd::stats::{self as mstats, Counter as M};
use crate::allocator::memfd::sys;
use crate::allocator::raw::{traced, try_share};

use super::blocks::{claim, take_seen};
use super::recycle::{discard, recycle_dispose, take_recycled};

thread_local! {
    /// Set while the allocator maps a block for itself (zeroing, the first map before the
    /// write seal): such maps are not counted in the statistics.
    pub(super) static OWN_MAP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Allocates a `MemfdMemory` block through `allocator`, which serves `stream` (0: private
/// memory): a recycled one of the same size that this stream may reuse (zero outside the new
/// memory), or a new sealed memfd; a stream's block stays that stream's.
pub fn alloc(
    allocator: &gst_allocators::FdAllocator,
    stream: u64,
    size: usize,
    params: &gst::AllocationParams,
) -> Result<gst::Memory, AllocError> {
    let l = layout::MemfdLayout::new(
        size,
        params.prefix(),
        params.padding(),
        params.align(),
        rustix::param::page_size(),
    )?;
    let flags = params.flags().into_glib();
    let recycled = if traced() {
        None
    } else {
        take_recycled(stream, l.maxsize)
    };
    if let Some(mem) = recycled {
        // SAFETY: the cache held the only reference: the memory is ours alone, unmapped and
        // unlocked (it was disposed at refcount 0 with lockstate 0). Only the fields a fresh
        // block would have differently are set; the lockable flag that gst_memory_init set is
        // kept. The caller's flags come last, after zeroing: READONLY or NOT_MAPPABLE would
        // refuse the write map that zeroing takes.
        unsafe {
            let m = mem.as_ptr() as *mut ffi::GstMemory;
            (*m).offset = l.offset;
            (*m).size = l.size;
            (*m).align = l.align_mask;
            (*m).mini_object.flags = ffi::GST_MINI_OBJECT_FLAG_LOCKABLE;
        }
        // Everything outside the new memory is zeroed, whatever the flags ask: a consumer of
        // a stream maps the whole block, and the bytes around a memory must not show what the
        // block held before (a fresh memfd is all zeros there too). It costs a map (the block
        // stays mapped) and at most a page for a block taken for the same size.
        // Its map state is a fresh block's: `mem_unmap` never lets an unbalanced unmap reach
        // GstFdMemory's map count, and a block disposed while locked was not recycled. Should
        // zeroing fail to map it all the same, it is freed and a fresh block made.
        // Only the ranges that exist: a memory that fills its block (a 1 MiB frame in a
        // 1 MiB block) costs no map at all.
        // A stream's block is zeroed whole, its new memory too, unless what it holds was sent
        // to every consumer that may map it now: a producer that does not write its whole
        // frame (a camera-like one writes nothing) must not show a consumer bytes it was
        // never sent (a frame from before it joined, one it missed, one never sent).
        let mut zero = 0;
        if l.offset > 0 {
            zero |= ffi::GST_MEMORY_FLAG_ZERO_PREFIXED;
        }
        if l.offset + l.size < l.maxsize {
            zero |= ffi::GST_MEMORY_FLAG_ZERO_PADDED;
        }
        if stream != 0 && !take_seen(mem.as_ptr() as *mut ffi::GstMemory, stream) {
            gst::trace!(
                CAT,
                obj = allocator,
                "zeroing {:?} whole: a consumer of stream {} was not sent what it holds",
                mem.as_ptr(),
                stream
            );
            zero |= ZERO_WHOLE;
        }
        let zeroed = if zero != 0 {
            zero_ranges(&mem, l.offset, l.size, zero)
        } else {
            Ok(())
        };
        match zeroed {
            Ok(()) => {
                // SAFETY: as above.
                unsafe {
                    let m = mem.as_ptr() as *mut ffi::GstMemory;
                    (*m).mini_object.flags |= flags;
                }
                mstats::count(M::Allocations, 1);
                mstats::count(M::Recycled, 1);
                mstats::block(mem.as_ptr() as usize, l.maxsize, true);
                return Ok(mem);
            }
            Err(err) => {
                gst::warning!(CAT, obj = allocator, "dropping a recycled block: {}", err);
                // SAFETY: taken from the cache, not handed out: the only reference.
                unsafe { discard(mem) };
            }
        }
    }
    let fd = sys::create_memfd(l.maxsize)?;
    let raw = fd.into_raw_fd();
    // SAFETY: gst_fd_allocator_alloc takes ownership of `raw` (GstFdMemory closes it when the
    // root is freed; on failure it returns NULL without taking it, so we close it).
    let mem = match unsafe {
        allocator.alloc_fd(raw, l.maxsize, gst_allocators::FdMemoryFlags::KEEP_MAPPED)
    } {
        Ok(m) => m,
        Err(_) => {
            // SAFETY: GStreamer did not take the descriptor; it is still ours to close.
            drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
            return Err(AllocError::Internal("gst_fd_allocator_alloc returned NULL"));
        }
    };
    // SAFETY: `mem` is a new memory with one reference, ours alone; offset + size <= maxsize
    // by the layout. The caller's flags are set last, after the first map below.
    unsafe {
        let m = mem.as_ptr() as *mut ffi::GstMemory;
        (*m).offset = l.offset;
        (*m).size = l.size;
        (*m).align = l.align_mask;
        (*m).mini_object.dispose = Some(recycle_dispose);
    }
    // Our own read-write mapping first (kept: KEEP_MAPPED), then the write seal: from then
    // on no new writable mapping of the file can be made, by us or by a receiver. A fresh
    // memfd is all zeros: ZERO_PREFIXED/ZERO_PADDED hold without writing anything.
    // SAFETY: the descriptor is owned by `mem`, live for this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    if let Err(err) = zero_ranges(&mem, l.offset, l.size, 0).and_then(|()| sys::seal_writes(fd)) {
        // Not into the cache: an unsealed block must never be handed out.
        // SAFETY: a new block, not handed out: the only reference.
        unsafe { discard(mem) };
        return Err(err);
    }
    // SAFETY: as above.
    unsafe { (*(mem.as_ptr() as *mut ffi::GstMemory)).mini_object.flags |= flags };
    if stream != 0 {
        // The stream's own block, for as long as it lives (a recycled one already is).
        claim(mem.as_ptr() as *mut ffi::GstMemory, stream);
    }
    gst::trace!(
        CAT,
        obj = allocator,
        "allocated memfd {} for {:?}: offset {} size {} maxsize {}",
        raw,
        mem.as_ptr(),
        l.offset,
        l.size,
        l.maxsize
    );
    mstats::count(M::Allocations, 1);
    mstats::block(mem.as_ptr() as usize, l.maxsize, true);
    Ok(mem)
}

/// Not a GStreamer flag: [`zero_ranges`] zeroes the whole block.
const ZERO_WHOLE: ffi::GstMemoryFlags = 1 << 31;

/// Maps a recycled block read-write and zeroes its prefix and/or its padding (to maxsize), or
/// all of it ([`ZERO_WHOLE`]), as `which` says (nothing: the map alone, which proves the
/// block maps read-write).
fn zero_ranges(
    mem: &gst::Memory,
    offset: usize,
    size: usize,
    which: ffi::GstMemoryFlags,
) -> Result<(), AllocError> {
    let ptr = mem.as_ptr() as *mut ffi::GstMemory;
    let mut info = std::mem::MaybeUninit::<ffi::GstMapInfo>::zeroed();
    // SAFETY: `mem` is ours alone; a successful map is unmapped once; while mapped the region
    // is [data - offset, data - offset + maxsize) (GstFdMemory maps the whole file from 0).
    unsafe {
        OWN_MAP.set(true);
        // READWRITE, not WRITE: GstFdMemory keeps the protection of the first map and
        // mprotect()s the kept mapping whenever a map asks for a mode that is not a subset
        // of it. Read-write from the start, no map ever flips it (and code that writes
        // through a READ mapping, wrong as it is, behaves as with SystemMemory).
        let mapped = ffi::gst_memory_map(ptr, info.as_mut_ptr(), ffi::GST_MAP_READWRITE);
        OWN_MAP.set(false);
        if mapped == glib::ffi::GFALSE {
            return Err(AllocError::Internal(
                "a recycled MemfdMemory block does not map read-write",
            ));
        }
        let info = info.assume_init_mut();
        let base = info.data.sub(offset);
        if which & ZERO_WHOLE != 0 {
            ptr::write_bytes(base, 0, (*ptr).maxsize);
        } else {
            if which & ffi::GST_MEMORY_FLAG_ZERO_PREFIXED != 0 {
                ptr::write_bytes(base, 0, offset);
            }
            if which & ffi::GST_MEMORY_FLAG_ZERO_PADDED != 0 {
                let end = offset + size;
                ptr::write_bytes(base.add(end), 0, (*ptr).maxsize - end);
            }
        }
        ffi::gst_memory_unmap(ptr, info);
    }
    Ok(())
}

/// A read-only share `offset..offset + size` of `root` (a block from `memfd::wrap_fd`) whose
/// `on_free` is dropped when the share is freed: how `memfdsrc` hands out a buffer's memory
/// without a new mapping and learns when the consumer is done with it.
pub fn share_block(
    root: &gst::MemoryRef,
    offset: usize,
    size: usize,
    on_free: Box<dyn Send>,
) -> Result<gst::Memory, FdError> {
    let share = try_share(root, offset, size).ok_or(FdError::OutsideBlock {
        offset,
        end: offset as u128 + size as u128,
        block: root.size(),
    })?;
    ON_FREE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(share.as_ptr() as usize, on_free);
    Ok(share)
}
/// Owners to drop when a wrapped root is freed (keyed by the memory's address): this is how
/// `memfdsrc` learns that the consumer is done with a block.
pub(super) static ON_FREE: LazyLock<Mutex<HashMap<usize, Box<dyn Send>>>> =
    LazyLock::new(Default::default);

/// `TMPFS_MAGIC`: the file system of shmem memfds.
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Wraps a received descriptor as read-only `MemfdMemory` with the given layout. The file
/// must be at least `maxsize` bytes and sealed against shrinking (so a mapping can never run
/// past its end), and `offset + size <= maxsize`. `on_free` is dropped when the memory and
/// every share of it are gone.
pub fn wrap_fd(
    allocator: &gst_allocators::FdAllocator,
    fd: OwnedFd,
    maxsize: usize,
    offset: usize,
    size: usize,
    on_free: Option<Box<dyn Send>>,
) -> Result<gst::Memory, FdError> {
    use rustix::fs::{SealFlags, fcntl_get_seals, fstat};
    if maxsize == 0 || offset.checked_add(size).is_none_or(|end| end > maxsize) {
        return Err(FdError::BadLayout {
            offset,
            size,
            maxsize,
        });
    }
    // Seals first, size second: once SHRINK is sealed the size can only grow, so the size
    // read next holds for as long as the mapping lives. (The other order lets a sender
    // shrink an unsealed file between the two reads, then seal it: SIGBUS on access.)
    let seals = fcntl_get_seals(&fd).map_err(FdError::NotSealable)?;
    if !seals.contains(SealFlags::SHRINK) {
        return Err(FdError::NotSealedAgainstShrinking);
    }
    // Readable: an O_WRONLY descriptor passes the seal checks but maps for nobody.
    let access = rustix::fs::fcntl_getfl(&fd).map_err(FdError::Stat)? & rustix::fs::OFlags::RWMODE;
    if access == rustix::fs::OFlags::WRONLY {
        return Err(FdError::WriteOnly);
    }
    // A shmem memfd: hugetlbfs memfds take seals too, but their pages can be punched out
    // under a mapping (SIGBUS) and they map only while the huge page pool has room.
    let fs = rustix::fs::fstatfs(&fd).map_err(FdError::Stat)?;
    if fs.f_type as u64 != TMPFS_MAGIC {
        return Err(FdError::NotShmem(fs.f_type as u64));
    }
    let st = fstat(&fd).map_err(FdError::Stat)?;
    if (st.st_size as u64) < maxsize as u64 {
        return Err(FdError::TooShort {
            len: st.st_size as u64,
            maxsize,
        });
    }
    let raw = fd.into_raw_fd();
    // SAFETY: as in `alloc`: GStreamer owns `raw` from here, or we close it on failure.
    let mem = match unsafe {
        allocator.alloc_fd(raw, maxsize, gst_allocators::FdMemoryFlags::KEEP_MAPPED)
    } {
        Ok(m) => m,
        Err(_) => {
            // SAFETY: not taken by GStreamer.
            drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
            return Err(FdError::Refused);
        }
    };
    // SAFETY: a new memory, ours alone; the layout was checked above.
    unsafe {
        let m = mem.as_ptr() as *mut ffi::GstMemory;
        (*m).offset = offset;
        (*m).size = size;
        (*m).mini_object.flags |= ffi::GST_MEMORY_FLAG_READONLY;
    }
    if let Ok(mut map) = ON_FREE.lock() {
        // Registered even without an owner: `free` then knows this root was wrapped.
        map.insert(
            mem.as_ptr() as usize,
            on_free.unwrap_or_else(|| Box::new(())),
        );
    }
    mstats::count(M::Wraps, 1);
    mstats::block(mem.as_ptr() as usize, maxsize, true);
    Ok(mem)
}
