// SPDX-License-Identifier: MPL-2.0
//! The floor of allocation cost through GStreamer's core, for the benchmark's third column: a
//! `GstAllocator` that does only what core requires and nothing else, the logic of
//! `FloorNoRef` in `shared/bench/floor.c` written in Rust through the same subclassing FFI as
//! memkit's allocator (so both pay the same trampolines).
//!
//! - alloc pops a preallocated 4 KiB block (64-byte aligned) from this thread's free list,
//!   fills the `GstMemory` itself and calls `gst_mini_object_init` with its own free function:
//!   no reference on the allocator (memkit's registered allocator takes none either);
//! - free (the mini object's) releases the parent like core does and pushes the block back;
//! - share takes a block header from the same list and locks and references its parent, as
//!   `gst_memory_init` does;
//! - requests above 4 KiB or aligned to 64 bytes or more are refused: it is a floor for small
//!   allocations, not an allocator. It never frees its blocks.
//!
//! This file is the benchmark's own unsafe code (the crate's `deny(unsafe_code)` does not reach
//! benchmark targets); every block says why it is sound.

use std::cell::Cell;
use std::ptr;
use std::sync::LazyLock;

use gst::ffi;
use gst::glib;
use gst::glib::translate::*;
use gst::prelude::*;
use gst::subclass::prelude::*;

/// Payload bytes of each block, and their alignment.
const BLOCK: usize = 4096;
const BLOCK_ALIGN: usize = 64;
/// Blocks added when a free list is empty.
const GROW: usize = 64;

/// A memory of the floor allocator: the `GstMemory`, where it maps, its own block, and the
/// free-list link.
#[repr(C)]
struct FloorMem {
    mem: ffi::GstMemory,
    data: *mut u8,
    block: *mut u8,
    next: *mut FloorMem,
}

thread_local! {
    static FREE: Cell<*mut FloorMem> = const { Cell::new(ptr::null_mut()) };
}

/// Adds `GROW` headers with their blocks to this thread's free list (never freed); `false`
/// when the system has no memory for them.
fn grow() -> bool {
    let Ok(layout) = std::alloc::Layout::from_size_align(BLOCK * GROW, BLOCK_ALIGN) else {
        return false;
    };
    // SAFETY: the layout has a non-zero size; the result is checked for NULL.
    let blocks = unsafe { std::alloc::alloc(layout) };
    if blocks.is_null() {
        return false;
    }
    for i in 0..GROW {
        let m = Box::into_raw(Box::new(FloorMem {
            // SAFETY: GstMemory is a plain C struct; all-zeroes is a valid unset state, and
            // every field is set before the memory is handed out.
            mem: unsafe { std::mem::zeroed() },
            data: ptr::null_mut(),
            // SAFETY: i < GROW, so the block lies inside the allocation.
            block: unsafe { blocks.add(i * BLOCK) },
            next: FREE.get(),
        }));
        FREE.set(m);
    }
    true
}

/// A free header and block, or NULL when none can be had.
fn pop() -> *mut FloorMem {
    if FREE.get().is_null() && !grow() {
        return ptr::null_mut();
    }
    let m = FREE.get();
    // SAFETY: `m` is a header of this thread's list, not in use.
    FREE.set(unsafe { (*m).next });
    m
}

/// The mini object free function: what core's memory free does, minus the allocator unref.
unsafe extern "C" fn mini_free(obj: *mut ffi::GstMiniObject) {
    let m = obj as *mut FloorMem;
    // SAFETY: core calls this once, at refcount 0, on a memory `init` set up; its parent (if
    // any) was locked and referenced there.
    unsafe {
        let parent = (*m).mem.parent;
        if !parent.is_null() {
            ffi::gst_mini_object_unlock(parent.cast(), ffi::GST_LOCK_FLAG_EXCLUSIVE);
            ffi::gst_mini_object_unref(parent.cast());
        }
        (*m).next = FREE.get();
    }
    FREE.set(m);
}

/// Sets up the `GstMemory` of `m` like `gst_memory_init`, without an allocator reference.
///
/// # Safety
/// `m` must be a header taken from the free list; `parent` NULL or a live floor memory.
#[allow(clippy::too_many_arguments)]
unsafe fn init(
    m: *mut FloorMem,
    flags: u32,
    allocator: *mut ffi::GstAllocator,
    parent: *mut ffi::GstMemory,
    maxsize: usize,
    align: usize,
    offset: usize,
    size: usize,
) {
    // SAFETY: per the caller; LOCKABLE is what gst_memory_map and gst_memory_share need.
    unsafe {
        ffi::gst_mini_object_init(
            m.cast(),
            flags | ffi::GST_MINI_OBJECT_FLAG_LOCKABLE,
            ffi::gst_memory_get_type(),
            None,
            None,
            Some(mini_free),
        );
        let mem = &mut (*m).mem;
        mem.allocator = allocator;
        if !parent.is_null() {
            ffi::gst_mini_object_lock(parent.cast(), ffi::GST_LOCK_FLAG_EXCLUSIVE);
            ffi::gst_mini_object_ref(parent.cast());
        }
        mem.parent = parent;
        mem.maxsize = maxsize;
        mem.align = align;
        mem.offset = offset;
        mem.size = size;
    }
}

unsafe extern "C" fn mem_map(
    mem: *mut ffi::GstMemory,
    _maxsize: usize,
    _flags: ffi::GstMapFlags,
) -> glib::ffi::gpointer {
    // SAFETY: core maps only live memories of this allocator.
    unsafe { (*(mem as *mut FloorMem)).data.cast() }
}

unsafe extern "C" fn mem_unmap(_mem: *mut ffi::GstMemory) {}

unsafe extern "C" fn mem_share(
    mem: *mut ffi::GstMemory,
    offset: isize,
    size: isize,
) -> *mut ffi::GstMemory {
    // SAFETY: core shares only live memories of this allocator, holding a lock on them; the
    // benchmark asks for ranges inside the memory.
    unsafe {
        let parent = if (*mem).parent.is_null() {
            mem
        } else {
            (*mem).parent
        };
        let size = if size == -1 {
            (*mem).size.saturating_sub(offset as usize)
        } else {
            size as usize
        };
        let m = pop();
        if m.is_null() {
            return ptr::null_mut();
        }
        (*m).data = (*(mem as *mut FloorMem)).data;
        init(
            m,
            (*parent).mini_object.flags | ffi::GST_MINI_OBJECT_FLAG_LOCK_READONLY,
            (*mem).allocator,
            parent,
            (*mem).maxsize,
            (*mem).align,
            (*mem).offset + offset as usize,
            size,
        );
        m.cast()
    }
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct FloorAllocator;

    #[glib::object_subclass]
    impl ObjectSubclass for FloorAllocator {
        const NAME: &'static str = "MemkitBenchFloorAllocator";
        type Type = super::FloorAllocator;
        type ParentType = gst::Allocator;

        fn class_init(klass: &mut Self::Class) {
            // Like memkit's allocator: the class calls `floor_alloc` directly, without
            // gstreamer-rs's trampoline.
            klass.upcast_ref_mut::<gst::Allocator>().as_mut().alloc = Some(floor_alloc);
        }
    }

    impl ObjectImpl for FloorAllocator {
        fn constructed(&self) {
            self.parent_constructed();
            let a: *mut ffi::GstAllocator =
                self.obj().upcast_ref::<gst::Allocator>().to_glib_none().0;
            // SAFETY: the instance is not shared yet; the type string is static.
            unsafe {
                (*a).mem_type = c"FloorMemory".as_ptr();
                (*a).mem_map = Some(mem_map);
                (*a).mem_unmap = Some(mem_unmap);
                (*a).mem_share = Some(mem_share);
            }
        }
    }

    /// `GstAllocatorClass.alloc` of the floor.
    unsafe extern "C" fn floor_alloc(
        allocator: *mut ffi::GstAllocator,
        size: usize,
        params: *mut ffi::GstAllocationParams,
    ) -> *mut ffi::GstMemory {
        // SAFETY: gst_allocator_alloc passes valid params; gst::AllocationParams is a
        // transparent wrapper of the C struct.
        let Some(params) = (unsafe { params.cast::<gst::AllocationParams>().as_ref() }) else {
            return ptr::null_mut();
        };
        let (prefix, padding) = (params.prefix(), params.padding());
        if !serves(size, params) {
            return ptr::null_mut();
        }
        let maxsize = size + prefix + padding;
        let flags: u32 = params.flags().into_glib();
        let m = pop();
        if m.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: `m` is ours; the zeroed ranges lie inside its 4 KiB block.
        unsafe {
            (*m).data = (*m).block;
            init(
                m,
                flags,
                allocator,
                ptr::null_mut(),
                maxsize,
                params.align(),
                prefix,
                size,
            );
            if prefix > 0 && flags & ffi::GST_MEMORY_FLAG_ZERO_PREFIXED != 0 {
                ptr::write_bytes((*m).data, 0, prefix);
            }
            if padding > 0 && flags & ffi::GST_MEMORY_FLAG_ZERO_PADDED != 0 {
                ptr::write_bytes((*m).data.add(prefix + size), 0, padding);
            }
        }
        m.cast()
    }

    impl GstObjectImpl for FloorAllocator {}

    // SAFETY: alloc returns NULL or a fully set up memory of this allocator; free releases
    // exactly what alloc or mem_share made.
    unsafe impl AllocatorImpl for FloorAllocator {
        unsafe fn alloc(&self, size: usize, params: &gst::AllocationParams) -> *mut ffi::GstMemory {
            let allocator: *mut ffi::GstAllocator =
                self.obj().upcast_ref::<gst::Allocator>().to_glib_none().0;
            // SAFETY: a live allocator of this class and valid params.
            unsafe { floor_alloc(allocator, size, params.as_ptr().cast_mut()) }
        }

        unsafe fn free(&self, memory: *mut ffi::GstMemory) {
            // SAFETY: only reached through gst_allocator_free on a memory of ours at refcount 0.
            unsafe { mini_free(memory.cast()) }
        }
    }
}

glib::wrapper! {
    pub struct FloorAllocator(ObjectSubclass<imp::FloorAllocator>)
        @extends gst::Allocator, gst::Object;
}

/// The floor allocator (one instance for the process; it is never finalised).
pub fn floor() -> gst::Allocator {
    static FLOOR: LazyLock<FloorAllocator> = LazyLock::new(glib::Object::new);
    FLOOR.clone().upcast()
}

/// Whether the floor serves a request of `size` bytes with `params`.
pub fn serves(size: usize, params: &gst::AllocationParams) -> bool {
    size.checked_add(params.prefix())
        .and_then(|s| s.checked_add(params.padding()))
        .is_some_and(|maxsize| maxsize <= BLOCK)
        && params.align() < BLOCK_ALIGN
}

/// The floor of protect mode's cycle: nanoseconds per pair of protection changes on one page
/// (opened for writing, a byte written, closed again), what a protected block's map and unmap
/// cost at least, `iters` times.
pub fn mprotect_pair_ns(iters: usize) -> f64 {
    let page = 4096;
    // SAFETY: a new anonymous mapping of three pages that only this function uses; the middle
    // page's protection changes and one byte of it is written while it is writable.
    unsafe {
        let map = libc::mmap(
            ptr::null_mut(),
            3 * page,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        let mid = map.cast::<u8>().add(page);
        let start = std::time::Instant::now();
        for i in 0..iters {
            libc::mprotect(mid.cast(), page, libc::PROT_READ | libc::PROT_WRITE);
            ptr::write_volatile(mid, i as u8);
            libc::mprotect(mid.cast(), page, libc::PROT_NONE);
        }
        let ns = start.elapsed().as_nanos() as f64 / iters.max(1) as f64;
        libc::munmap(map, 3 * page);
        ns
    }
}

/// [`mprotect_pair_ns`] as protect mode's cycle meets it: the pair on a different region each
/// time, taken round-robin from `regions` regions of `pages` pages (between guard pages, in one
/// mapping), with the pages filled while they are writable. Nanoseconds per pair.
pub fn mprotect_cycle_ns(iters: usize, regions: usize, pages: usize) -> f64 {
    let page = 4096;
    let stride = (pages + 1) * page;
    let len = regions * stride + page;
    // SAFETY: a new anonymous mapping that only this function uses; each region's pages are
    // written only while they are writable.
    unsafe {
        let map = libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        let base = map.cast::<u8>().add(page);
        let run = |n: usize| {
            for i in 0..n {
                let p = base.add((i % regions) * stride);
                libc::mprotect(p.cast(), pages * page, libc::PROT_READ | libc::PROT_WRITE);
                ptr::write_bytes(p, i as u8, pages * page);
                libc::mprotect(p.cast(), pages * page, libc::PROT_NONE);
            }
        };
        // Every page touched once first, as the regions of a warm quarantine are.
        run(regions);
        let start = std::time::Instant::now();
        run(iters);
        let ns = start.elapsed().as_nanos() as f64 / iters.max(1) as f64;
        libc::munmap(map, len);
        ns
    }
}
