// SPDX-License-Identifier: MPL-2.0
//! Storage of a block: heap, anonymous mapping or huge pages, and what a block owns.

use std::alloc::{self, Layout};
use std::ptr::{self, NonNull};
use std::sync::atomic::AtomicBool;

use crate::allocator::debug::ALIGNED as CAT;

use crate::allocator::aligned::cache::Key;
use crate::allocator::layout;

/// Storage of at least this many bytes is mapped from the kernel directly (so that freeing it
/// returns it to the system at once) instead of coming from the heap.
pub const MMAP_THRESHOLD: usize = 1 << 20;
/// Storage of at least this many bytes is aligned to, and advised for, transparent huge pages.
pub const HUGE_PAGE: usize = 2 << 20;

/// The system's page size (4 KiB on x86-64, 16 or 64 KiB on some arm64 and ppc64 kernels).
fn page() -> usize {
    rustix::param::page_size()
}

/// One allocation of `len` bytes aligned to `align`: from the heap, or from an anonymous
/// mapping for large blocks. Dropping it releases it.
pub(super) struct Storage {
    pub(super) base: NonNull<u8>,
    pub(super) len: usize,
    align: usize,
    mapped: bool,
}

impl Storage {
    /// `len` bytes aligned to `align` (a power of two no larger than `layout::MAX_ALIGN`).
    pub(super) fn new(len: usize, align: usize) -> Option<Storage> {
        if len >= MMAP_THRESHOLD {
            Self::map(len, align)
        } else {
            let layout = Layout::from_size_align(len.max(1), align).ok()?;
            // SAFETY: `layout` has a non-zero size.
            let base = NonNull::new(unsafe { alloc::alloc(layout) })?;
            Some(Storage {
                base,
                len: layout.size(),
                align,
                mapped: false,
            })
        }
    }

    /// An anonymous private mapping (zero-filled by the kernel), aligned by over-mapping and
    /// trimming the ends; blocks of [`HUGE_PAGE`] bytes or more are aligned to 2 MiB and
    /// advised for transparent huge pages.
    fn map(len: usize, align: usize) -> Option<Storage> {
        use rustix::mm::{self, MapFlags, ProtFlags};
        let page = page();
        let len = layout::round_up(len, page - 1)?;
        let want = if len >= HUGE_PAGE {
            align.max(HUGE_PAGE).max(page)
        } else {
            align.max(page)
        };
        let total = len.checked_add(want - page)?;
        // SAFETY: a new anonymous mapping at an address of the kernel's choosing touches no
        // existing memory.
        let raw = unsafe {
            mm::mmap_anonymous(
                ptr::null_mut(),
                total,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .ok()? as *mut u8;
        let head = (raw as usize).wrapping_neg() & (want - 1);
        let tail = total - head - len;
        // SAFETY: [raw, raw + head) and [raw + head + len, raw + total) are page-aligned parts
        // of the mapping we just made that no one else knows about. A failed unmap only leaves
        // those unused pages mapped.
        unsafe {
            if head > 0 {
                let _ = mm::munmap(raw.cast(), head);
            }
            if tail > 0 {
                let _ = mm::munmap(raw.add(head + len).cast(), tail);
            }
        }
        // SAFETY: head < want <= total, so the start lies inside the mapping.
        let base = unsafe { raw.add(head) };
        if len >= HUGE_PAGE {
            // SAFETY: advice on our own mapping; it changes no contents. Kernels without
            // transparent huge pages refuse it, which is fine.
            let _ = unsafe { mm::madvise(base.cast(), len, mm::Advice::LinuxHugepage) };
        }
        Some(Storage {
            base: NonNull::new(base)?,
            len,
            align: want,
            mapped: true,
        })
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: [base, base + len) is the mapping made by `map`, released only here.
            let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
        } else {
            // SAFETY: `base` came from alloc::alloc with this size and alignment, which
            // `Layout::from_size_align` accepted then.
            unsafe {
                alloc::dealloc(
                    self.base.as_ptr(),
                    Layout::from_size_align_unchecked(self.len, self.align),
                )
            };
        }
    }
}

/// A foreign owner whose bytes a wrapped memory exposes; dropped exactly once, with the root.
pub(super) struct Owner(pub(super) NonNull<dyn Send + 'static>);

impl Drop for Owner {
    fn drop(&mut self) {
        // SAFETY: the pointer came from Box::into_raw in `wrap`, and only this drop frees it.
        let owner = unsafe { Box::from_raw(self.0.as_ptr()) };
        // A panicking Drop of user code must not unwind into GStreamer's C frames.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(owner))).is_err() {
            gst::error!(
                CAT,
                "the owner of a wrapped memory panicked while being dropped"
            );
        }
    }
}

/// What a guarded root remembers to check itself: where its prefix ended and its padding
/// began when it was allocated, and what they were filled with.
pub(super) struct Guard {
    pub(super) prefix: usize,
    pub(super) end: usize,
    pub(super) prefix_fill: u8,
    pub(super) padding_fill: u8,
    /// Set once a violation has been reported, so one damage is reported once.
    pub(super) reported: AtomicBool,
    /// Set once an element has been named for it (at a pad push).
    pub(super) named: AtomicBool,
}

/// What a block owns and must release when it is freed.
pub(super) enum Backing {
    /// A share: the root owns the storage; a share owns nothing.
    Shared,
    /// A root allocated by us. `key` is its free list in the cache (`None`: not cacheable);
    /// `guard` is set for blocks allocated in guard mode.
    Owned {
        storage: Storage,
        key: Option<Key>,
        guard: Option<Guard>,
    },
    /// A root allocated in protect mode: its own region (a mapping between guard pages).
    Protected(Box<super::protect::Protect>),
    /// A root wrapping a foreign owner (see [`wrap`]); the owner is dropped when the root is
    /// freed, i.e. after every share of it is gone.
    Wrapped(#[allow(dead_code, reason = "only its Drop matters")] Owner),
}
