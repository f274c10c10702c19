// SPDX-License-Identifier: MPL-2.0
//! The safe typed API of `AlignedMemory`.

use std::ops::{Bound, RangeBounds};
use std::ptr::{self};

use gst::ffi;
use gst::glib::translate::*;

use crate::allocator::error::MemoryError;

use super::block::{AlignedMemory, AlignedMemoryRef, GstAlignedMemory};
use super::storage::Backing;

/// Resolves a Rust range relative to the valid data of a memory of `size` bytes.
fn resolve(range: impl RangeBounds<usize>, size: usize) -> Result<(usize, usize), MemoryError> {
    let start = match range.start_bound() {
        Bound::Included(&v) => Some(v),
        Bound::Excluded(&v) => v.checked_add(1),
        Bound::Unbounded => Some(0),
    };
    let end = match range.end_bound() {
        Bound::Included(&v) => v.checked_add(1),
        Bound::Excluded(&v) => Some(v),
        Bound::Unbounded => Some(size),
    };
    match (start, end) {
        (Some(s), Some(e)) if s <= e && e <= size => Ok((s, e - s)),
        (s, e) => Err(MemoryError::OutOfRange {
            offset: s.map_or(isize::MAX, |s| s.min(isize::MAX as usize) as isize),
            size: e.unwrap_or(usize::MAX).saturating_sub(s.unwrap_or(0)),
            available: size,
        }),
    }
}

impl AlignedMemoryRef {
    /// Shares `range` (relative to the valid data) without copying: the result is a read-only
    /// `AlignedMemory` whose parent is the root block. An empty range is valid. Unlike
    /// `gst::MemoryRef::share`, this never panics: out-of-range requests, `NO_SHARE` memory and
    /// memory currently mapped for writing give an error.
    pub fn share(&self, range: impl RangeBounds<usize>) -> Result<AlignedMemory, MemoryError> {
        let (offset, size) = resolve(range, self.size())?;
        if self.flags().contains(gst::MemoryFlags::NO_SHARE) {
            return Err(MemoryError::NoShare);
        }
        // SAFETY: `self` is a live memory; offset and size are within its valid data and fit
        // in isize (a memory's size always does).
        let ptr = unsafe {
            ffi::gst_memory_share(self.as_mut_ptr().cast(), offset as isize, size as isize)
        };
        if ptr.is_null() {
            return Err(MemoryError::Refused(
                "GStreamer refused the share (is the memory mapped for writing?)",
            ));
        }
        // SAFETY: a share of our memory is made by our mem_share, so it is a GstAlignedMemory,
        // returned with a reference we now own.
        Ok(unsafe { from_glib_full(ptr as *mut GstAlignedMemory) })
    }

    /// Copies `range` (relative to the valid data) into a new writable `AlignedMemory` with the
    /// same alignment. Works while the memory is mapped for writing. Never panics.
    pub fn copy_range(&self, range: impl RangeBounds<usize>) -> Result<AlignedMemory, MemoryError> {
        let (offset, size) = resolve(range, self.size())?;
        // SAFETY: as for `share`; mem_copy of this allocator returns a new GstAlignedMemory.
        let ptr = unsafe {
            ffi::gst_memory_copy(self.as_mut_ptr().cast(), offset as isize, size as isize)
        };
        if ptr.is_null() {
            return Err(MemoryError::Refused("the copy could not be allocated"));
        }
        // SAFETY: a new memory with one reference, which we own.
        Ok(unsafe { from_glib_full(ptr as *mut GstAlignedMemory) })
    }

    /// Resizes the valid data like `gst_memory_resize`: `offset` moves the start (it may be
    /// negative, down to the region start), `size` is the new size. Errors, instead of
    /// GStreamer's criticals, when the memory is not writable or the range leaves `maxsize`.
    /// Clears `ZERO_PREFIXED` when the start moves up and `ZERO_PADDED` whenever the end moves
    /// down (core's own check misses the case where the new end lies before the old start).
    pub fn try_resize(&mut self, offset: isize, size: usize) -> Result<(), MemoryError> {
        let (cur_offset, maxsize) = (self.offset(), self.maxsize());
        let fits = cur_offset
            .checked_add_signed(offset)
            .and_then(|start| start.checked_add(size))
            .is_some_and(|end| end <= maxsize);
        if !fits {
            return Err(MemoryError::OutOfRange {
                offset,
                size,
                available: maxsize.saturating_sub(cur_offset),
            });
        }
        if !self.is_writable() {
            return Err(MemoryError::NotWritable);
        }
        let old_end = cur_offset + self.size();
        // SAFETY: writable and in range, the two preconditions gst_memory_resize checks.
        unsafe { ffi::gst_memory_resize(self.as_mut_ptr().cast(), offset, size) };
        // Core decides whether the end moved down with `offset + size < mem->size` in unsigned
        // arithmetic, so when the new end lies before the old start it keeps ZERO_PADDED over
        // bytes that held payload. Clear it whenever the end really moved down.
        if self.offset() + self.size() < old_end {
            // SAFETY: we hold `&mut self`, the only reference to this memory's struct, and core
            // changes these flags non-atomically itself (GST_MINI_OBJECT_FLAG_UNSET).
            unsafe {
                (*self.as_mut_ptr()).mem.mini_object.flags &= !ffi::GST_MEMORY_FLAG_ZERO_PADDED
            };
        }
        Ok(())
    }

    /// `gst_memory_is_writable`: fewer than two shares or buffers hold exclusive locks on it.
    /// (As in GStreamer, this ignores `READONLY`, which only forbids mapping for writing.)
    pub fn is_writable(&self) -> bool {
        // SAFETY: `self` is a live memory (gst_memory_is_writable is this call, as a C macro).
        unsafe { from_glib(ffi::gst_mini_object_is_writable(self.as_ptr().cast())) }
    }

    /// `true` when this memory wraps a foreign owner (see `AlignedAllocator::wrap`).
    pub fn is_wrapped(&self) -> bool {
        // SAFETY: `self` points at a live GstAlignedMemory (checked by the type), whose root is
        // live while `self` is.
        unsafe {
            let mem = &*self.as_ptr();
            let root = if mem.mem.parent.is_null() {
                mem
            } else {
                &*(mem.mem.parent as *const GstAlignedMemory)
            };
            matches!(root.backing, Backing::Wrapped(_))
        }
    }

    /// The pointer `gst_memory_map(READ)` hands out (as C code sees it, even for an empty
    /// memory, where Rust map guards show an empty slice instead), or `None` when the memory
    /// cannot be mapped for reading.
    pub fn mapped_addr(&self) -> Option<usize> {
        crate::allocator::raw::mapped_addr(self)
    }

    /// Address of the first payload byte (`region base + offset`), for alignment checks. It is
    /// only an address: read or write the bytes through a map.
    pub fn payload_addr(&self) -> usize {
        // SAFETY: `self` points at a live GstAlignedMemory.
        let mem = unsafe { &*self.as_ptr() };
        (mem.data.as_ptr() as usize).wrapping_add(mem.mem.offset)
    }
}

impl AlignedMemory {
    /// `gst_memory_make_mapped` with `flags`: runs `f` on the mapped payload (pointer and
    /// size), unmaps, and returns the memory that was mapped (this one, or a copy when this
    /// one could not be mapped with `flags`).
    fn make_mapped_with<R>(
        self,
        flags: ffi::GstMapFlags,
        f: impl FnOnce(*mut u8, usize) -> R,
    ) -> Result<(AlignedMemory, R), MemoryError> {
        let mut info = std::mem::MaybeUninit::<ffi::GstMapInfo>::zeroed();
        // SAFETY: make_mapped takes our reference and returns a new one (the same memory or a
        // copy made by our mem_copy), or NULL after dropping ours; `info` is a valid out pointer.
        let mem = unsafe {
            ffi::gst_memory_make_mapped(self.into_glib_ptr().cast(), info.as_mut_ptr(), flags)
        };
        if mem.is_null() {
            return Err(MemoryError::Refused("the memory could not be mapped"));
        }
        // SAFETY: make_mapped succeeded, so `info` is initialised; we unmap exactly once.
        unsafe {
            let info = info.assume_init_mut();
            let r = f(info.data, info.size);
            ffi::gst_memory_unmap(mem, info);
            Ok((from_glib_full(mem as *mut GstAlignedMemory), r))
        }
    }

    /// `gst_memory_make_mapped(READ)`: runs `f` on the payload mapped for reading.
    pub fn make_mapped_readable<R>(
        self,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<(AlignedMemory, R), MemoryError> {
        self.make_mapped_with(ffi::GST_MAP_READ, |data, size| {
            if data.is_null() || size == 0 {
                return f(&[]);
            }
            // SAFETY: the memory is mapped for reading for `size` bytes at `data` until after
            // `f` returns.
            f(unsafe { std::slice::from_raw_parts(data, size) })
        })
    }

    /// `gst_memory_make_mapped(READWRITE)`: runs `f` on the payload mapped for writing. When
    /// this memory is not writable (e.g. a share), a writable copy is mapped and returned.
    pub fn make_mapped_writable<R>(
        self,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<(AlignedMemory, R), MemoryError> {
        self.make_mapped_with(ffi::GST_MAP_READ | ffi::GST_MAP_WRITE, |data, size| {
            if data.is_null() || size == 0 {
                return f(&mut []);
            }
            // SAFETY: mapped for writing (exclusive access) for `size` bytes at `data` until
            // after `f` returns.
            f(unsafe { std::slice::from_raw_parts_mut(data, size) })
        })
    }
}

impl AlignedMemoryRef {
    /// The memory's current reference count (`GST_MINI_OBJECT_REFCOUNT_VALUE`), read
    /// atomically. Other threads may change it right after; use it for checks and logs.
    pub fn ref_count(&self) -> u32 {
        // SAFETY: `refcount` is a gint that core only changes with atomic operations; it is
        // properly aligned and lives as long as `self`.
        let count = unsafe {
            std::sync::atomic::AtomicI32::from_ptr(
                ptr::addr_of!((*self.as_ptr()).mem.mini_object.refcount).cast_mut(),
            )
            .load(std::sync::atomic::Ordering::Acquire)
        };
        count.max(0) as u32
    }
}

impl std::fmt::Debug for AlignedMemoryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedMemory")
            .field("ptr", &self.as_ptr())
            .field("parent", &self.parent().map(|p| p.as_ptr()))
            .field("maxsize", &self.maxsize())
            .field("align", &self.align())
            .field("offset", &self.offset())
            .field("size", &self.size())
            .field("flags", &self.flags())
            .finish()
    }
}

impl std::fmt::Debug for AlignedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        AlignedMemoryRef::fmt(self, f)
    }
}
