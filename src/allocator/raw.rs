// SPDX-License-Identifier: MPL-2.0
//! Unsafe helpers both allocators' vfuncs share.

use crate::allocator::debug::ALIGNED as CAT;
use gst::ffi;
use gst::glib;
use gst::glib::translate::*;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU8, Ordering};

use super::layout;

/// Whether memories take GStreamer's own init and free: [`NO_HOOKS`] before 1.26, which has
/// no memory tracer hooks; [`WATCH`] on 1.26 and newer until a tracer is active; then
/// [`TRACED`] for the rest of the process.
static MEMORY_HOOKS: AtomicU8 = AtomicU8::new(NO_HOOKS);
const NO_HOOKS: u8 = 0;
const WATCH: u8 = 1;
const TRACED: u8 = 2;

/// Reads the running GStreamer's version once: from 1.26, `gst_memory_init` and core's
/// memory free fire the `memory-init` and `memory-free-pre/post` tracer hooks.
pub fn init_memory_hooks() {
    let (major, minor, ..) = gst::version();
    if (major, minor) >= (1, 26) {
        MEMORY_HOOKS.store(WATCH, Ordering::Relaxed);
    }
}

/// `true` once a tracer is active on a GStreamer with memory tracer hooks. From then on the
/// registered allocator's memories are initialised with `gst_memory_init` and freed by core
/// (taking a reference on the allocator, like any memory), and MemfdMemory recycles nothing,
/// so that every allocation and free reaches the hooks; tracers cannot see memory made any
/// other way. Without a tracer the fast path stays (one call that returns at once).
#[inline]
pub fn traced() -> bool {
    match MEMORY_HOOKS.load(Ordering::Relaxed) {
        NO_HOOKS => false,
        TRACED => true,
        _ => tracer_active(),
    }
}

/// `GDestroyNotify` for the tracer list.
unsafe extern "C" fn unref_tracer(tracer: glib::ffi::gpointer) {
    // SAFETY: each element of the list is a tracer reference the list owns.
    unsafe { ffi::gst_object_unref(tracer.cast()) }
}

#[inline(never)]
fn tracer_active() -> bool {
    // SAFETY: returns NULL at once when no tracer has registered a hook, else a new list of
    // new tracer references, freed here.
    unsafe {
        let list = ffi::gst_tracing_get_active_tracers();
        if list.is_null() {
            return false;
        }
        glib::ffi::g_list_free_full(list, Some(unref_tracer));
    }
    MEMORY_HOOKS.store(TRACED, Ordering::Relaxed);
    gst::info!(
        CAT,
        "a tracer is active: memories now take GStreamer's own init and free path"
    );
    true
}
/// Resolves a `mem_share`/`mem_copy` request on `m` into region-relative `(offset, size)`
/// (see `layout::sub_range`), or logs the refusal at WARNING in `cat` and gives `None`.
#[inline(always)]
pub fn resolve_request(
    cat: &'static LazyLock<gst::DebugCategory>,
    what: &str,
    m: &ffi::GstMemory,
    offset: isize,
    size: isize,
    clamp: bool,
) -> Option<(usize, usize)> {
    let r = layout::sub_range(m.offset, m.size, m.maxsize, offset, size, clamp);
    if r.is_none() {
        refuse_request(cat, what, m, offset, size);
    }
    r
}

#[cold]
#[inline(never)]
fn refuse_request(
    cat: &'static LazyLock<gst::DebugCategory>,
    what: &str,
    m: &ffi::GstMemory,
    offset: isize,
    size: isize,
) {
    gst::warning!(
        **cat,
        "{} of {:p} out of range: offset {} size {} (memory offset {} size {} maxsize {})",
        what,
        m,
        offset,
        size,
        m.offset,
        m.size,
        m.maxsize
    );
}

/// The body of every memkit `mem_is_span`: core has checked that both memories have this
/// allocator and the same non-NULL parent. TRUE iff `mem2` starts where `mem1` ends;
/// `*offset` is `mem1`'s start relative to the parent's offset, ready for
/// `gst_memory_share(parent, offset, ..)`.
///
/// # Safety
/// `mem1` and `mem2` must be live memories with the same live parent; `offset` NULL or valid.
pub unsafe fn is_span(
    mem1: *mut ffi::GstMemory,
    mem2: *mut ffi::GstMemory,
    offset: *mut usize,
) -> bool {
    // SAFETY: per the caller.
    let (m1, m2) = unsafe { (&*mem1, &*mem2) };
    if m1.parent.is_null() {
        return false;
    }
    if !offset.is_null() {
        // SAFETY: the parent is live (both children hold a reference), `offset` is a valid
        // out pointer. The subtraction wraps like core's gsize arithmetic would for a share
        // that starts before the parent's offset; gst_memory_share reads it as a gssize.
        unsafe { *offset = m1.offset.wrapping_sub((*m1.parent).offset) };
    }
    m1.offset.checked_add(m1.size) == Some(m2.offset)
}

/// The root of `mem`: itself, or the memory it shares (core makes every share's parent the
/// root). Live for as long as `mem` is (a share holds a reference to its parent).
pub fn root_memory(mem: &gst::MemoryRef) -> *mut ffi::GstMemory {
    let m = mem.as_ptr() as *mut ffi::GstMemory;
    // SAFETY: `mem` is live.
    let parent = unsafe { (*m).parent };
    if parent.is_null() { m } else { parent }
}

/// `gst_memory_share` that never panics: `None` for `NO_SHARE` memory, memory mapped for
/// writing, or a range outside `[0, maxsize]` (which core would not check).
pub fn try_share(mem: &gst::MemoryRef, offset: usize, size: usize) -> Option<gst::Memory> {
    let end = offset.checked_add(size)?;
    if end > mem.size() || mem.flags().contains(gst::MemoryFlags::NO_SHARE) {
        return None;
    }
    // SAFETY: `mem` is live and the range lies inside its valid data (so inside maxsize and
    // within isize); the result, if any, is a new reference we own.
    unsafe {
        let shared = ffi::gst_memory_share(
            mem.as_ptr() as *mut ffi::GstMemory,
            offset as isize,
            size as isize,
        );
        Option::<gst::Memory>::from_glib_full(shared)
    }
}

/// The lock-count bits of `GstMiniObject.lockstate` (`LOCK_MASK` in gstminiobject.c): how
/// many read/write locks the object holds. `gst_memory_map` takes one before calling
/// `mem_map`, and `gst_memory_unmap` releases it only after `mem_unmap` returns.
pub const LOCK_MASK: i32 = 0xff00;

/// `GstMiniObject.lockstate` of `mem`, read atomically (core changes it with atomics).
///
/// # Safety
/// `mem` must point to a live memory.
pub unsafe fn lockstate(mem: *mut ffi::GstMemory) -> i32 {
    // SAFETY: per the caller the field is live; core only ever accesses it atomically.
    unsafe {
        std::sync::atomic::AtomicI32::from_ptr(&raw mut (*mem).mini_object.lockstate)
            .load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The pointer `gst_memory_map(READ)` hands out for `mem` (what C code sees, also for an empty
/// memory), or `None` when it cannot be mapped for reading.
pub fn mapped_addr(mem: &gst::MemoryRef) -> Option<usize> {
    with_mapped_region(mem, |region, offset, _| region.as_ptr() as usize + offset)
}

/// Maps `mem` for reading and runs `f` on its whole region `[0, maxsize)` (prefix, payload,
/// padding and slack) with the payload's `offset` and `size`. `None` when it cannot be mapped.
///
/// Every GStreamer allocator's `mem_map` returns the region base and core adds `offset`, so the
/// region starts `offset` bytes before the mapped pointer and spans `maxsize` bytes.
pub fn with_mapped_region<R>(
    mem: &gst::MemoryRef,
    f: impl FnOnce(&[u8], usize, usize) -> R,
) -> Option<R> {
    let mut info = std::mem::MaybeUninit::<ffi::GstMapInfo>::zeroed();
    let ptr = mem.as_ptr() as *mut ffi::GstMemory;
    // SAFETY: `mem` is live; `info` is a valid out pointer; a successful map is unmapped once,
    // after `f` returns. While mapped, [data - offset, data - offset + maxsize) is the memory's
    // region (see above), readable for the duration of the map.
    unsafe {
        if ffi::gst_memory_map(ptr, info.as_mut_ptr(), ffi::GST_MAP_READ) == glib::ffi::GFALSE {
            return None;
        }
        let info = info.assume_init_mut();
        let (offset, size, maxsize) = ((*ptr).offset, (*ptr).size, (*ptr).maxsize);
        let result = if info.data.is_null() {
            None
        } else {
            let base = info.data.sub(offset);
            let region = std::slice::from_raw_parts(base, maxsize);
            Some(f(region, offset, size))
        };
        ffi::gst_memory_unmap(ptr, info);
        result
    }
}
