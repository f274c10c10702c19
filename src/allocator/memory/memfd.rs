// SPDX-License-Identifier: MPL-2.0
//! The FFI half of `MemfdMemory`: handing a memfd to `gst_fd_allocator_alloc`, setting the
//! block's layout, and the memory vfuncs that 1.22's fd memory lacks or gets wrong (share
//! sizes, `is_span`, an fd-backed `copy`). The fd memory struct itself stays GStreamer's.

use std::collections::HashMap;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::ptr;
use std::sync::{LazyLock, Mutex, OnceLock};

use gst::ffi;
use gst::glib;
use gst::glib::translate::*;
use gst::prelude::*;
use gst_allocators::prelude::*;

use super::super::AllocError;
use super::super::layout;
use super::super::memfd::stats::{self as mstats, Counter as M};
use super::super::memfd::{self, MemfdAllocator};
use super::super::memfd_imp::{self, CAT};

type ShareFn = unsafe extern "C" fn(*mut ffi::GstMemory, isize, isize) -> *mut ffi::GstMemory;
type MapFn =
    unsafe extern "C" fn(*mut ffi::GstMemory, usize, ffi::GstMapFlags) -> glib::ffi::gpointer;
type UnmapFn = unsafe extern "C" fn(*mut ffi::GstMemory);

/// The lock-count bits of `GstMiniObject.lockstate` (`LOCK_MASK` in gstminiobject.c): how
/// many read/write locks the object holds. `gst_memory_map` takes one before calling
/// `mem_map`, and `gst_memory_unmap` releases it only after `mem_unmap` returns.
const LOCK_MASK: i32 = 0xff00;

/// `GstMiniObject.lockstate` of `mem`, read atomically (core changes it with atomics).
///
/// # Safety
/// `mem` must point to a live memory.
unsafe fn lockstate(mem: *mut ffi::GstMemory) -> i32 {
    // SAFETY: per the caller the field is live; core only ever accesses it atomically.
    unsafe {
        std::sync::atomic::AtomicI32::from_ptr(&raw mut (*mem).mini_object.lockstate)
            .load(std::sync::atomic::Ordering::Acquire)
    }
}

/// GstFdAllocator's own `mem_map`, which ours calls for mappable memory.
static FD_MAP: OnceLock<MapFn> = OnceLock::new();

thread_local! {
    /// Set while the allocator maps a block for itself (zeroing, the first map before the
    /// write seal): such maps are not counted in the statistics.
    static OWN_MAP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

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
        match FD_MAP.get() {
            Some(map) => {
                let data = map(mem, maxsize, flags);
                if !data.is_null() && !OWN_MAP.get() {
                    mstats::count(M::Maps, 1);
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

/// Allocates a `MemfdMemory` block through `allocator`.
/// Freed blocks kept for reuse, by maxsize: the memory objects themselves, still mapped and
/// with their pages faulted in (a fresh memfd costs a page fault and a zeroed page per 4 KiB).
#[derive(Default)]
struct Recycled {
    blocks: HashMap<usize, Vec<gst::Memory>>,
    bytes: usize,
}

static RECYCLED: LazyLock<Mutex<Recycled>> = LazyLock::new(Default::default);

/// `GstMiniObject.dispose` of the blocks `alloc` makes: when the last reference goes (after
/// every consumer released the block, for memfdsink), the block is kept for reuse while the
/// recycling bound allows, the way GstBufferPool recycles buffers; otherwise it is freed.
unsafe extern "C" fn recycle_dispose(obj: *mut ffi::GstMiniObject) -> glib::ffi::gboolean {
    let mem = obj as *mut ffi::GstMemory;
    // SAFETY: core calls dispose with refcount 0 on a live memory of ours, a root (`alloc`
    // sets this hook on roots only), with no share or map left.
    unsafe {
        let maxsize = (*mem).maxsize;
        // With a tracer active, blocks are freed by core like any memory (which fires the
        // memory-free hooks) and every allocation is a fresh one (memory-init).
        if super::traced() {
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
        let max = super::cache().max_bytes();
        // Lock order: BLOCKS, then RECYCLED (as `retire_block`), so that a block retired by
        // id is either seen retired here or found in the cache there.
        let blocks = BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
        if blocks.get(&(mem as usize)).is_some_and(|b| b.retired) {
            return glib::ffi::GTRUE;
        }
        // Waits for the lock rather than freeing the block when another thread holds it (a
        // take or a trim: never long, and nothing that holds it frees a memory): under load,
        // giving up freed one block in a few, and each fresh memfd costs its pages' faults
        // again, here and in every process it is sent to.
        let mut r = RECYCLED.lock().unwrap_or_else(|e| e.into_inner());
        if r.bytes + maxsize > max {
            return glib::ffi::GTRUE;
        }
        // Resurrect it: the reference we take is the one the cache owns.
        ffi::gst_mini_object_ref(obj);
        mstats::count(M::Frees, 1);
        mstats::block(maxsize, false);
        r.bytes += maxsize;
        r.blocks
            .entry(maxsize)
            .or_default()
            .push(from_glib_full(mem));
    }
    glib::ffi::GFALSE
}

/// Takes a recycled block of `maxsize` bytes.
fn take_recycled(maxsize: usize) -> Option<gst::Memory> {
    let mut r = RECYCLED.lock().ok()?;
    let mem = r.blocks.get_mut(&maxsize)?.pop()?;
    r.bytes -= maxsize;
    Some(mem)
}

/// A root block the transport has seen: its id (never reused in this process), whether it was
/// ever sent to another process, and whether it was retired (is never to be recycled).
struct BlockEntry {
    id: u64,
    sent: bool,
    retired: bool,
}

/// The transport's view of live root blocks, keyed by the root memory's address (an entry is
/// removed when its root is freed, before the address can be reused).
static BLOCKS: LazyLock<Mutex<HashMap<usize, BlockEntry>>> = LazyLock::new(Default::default);
static NEXT_BLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Ids of blocks sent to another process and since freed, for one transport to retire.
#[derive(Default)]
pub struct FreedBlocks(Mutex<Vec<u64>>);

impl FreedBlocks {
    /// The ids freed since the last call.
    pub fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

static FREED: LazyLock<Mutex<Vec<std::sync::Weak<FreedBlocks>>>> = LazyLock::new(Default::default);

/// A queue that receives the id of every block that was [`block_of`]'d and has since been
/// freed, until the returned `Arc` is dropped.
pub fn subscribe_freed() -> std::sync::Arc<FreedBlocks> {
    let q = std::sync::Arc::new(FreedBlocks::default());
    let mut subs = FREED.lock().unwrap_or_else(|e| e.into_inner());
    subs.retain(|w| w.strong_count() > 0);
    subs.push(std::sync::Arc::downgrade(&q));
    q
}

/// Called from `free` for a root: forgets its entry and tells the subscribers.
fn block_freed(root: *mut ffi::GstMemory) {
    let gone = BLOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(root as usize));
    if let Some(BlockEntry { id, sent: true, .. }) = gone {
        for q in FREED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|w| w.upgrade())
        {
            q.0.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        }
    }
}

/// The block behind a memory, as the transport sends it.
pub struct Block<'a> {
    /// The block's id: the same for every memory of this block for as long as it lives
    /// (recycling included), never reused.
    pub id: u64,
    /// The size of the block's file (its root's maxsize).
    pub size: usize,
    /// The block's descriptor, owned by the memory.
    pub fd: std::os::fd::BorrowedFd<'a>,
}

/// The `MemfdMemory` block behind `mem` (a block or a share of one), if it may be sent to
/// another process as it is: a root of this allocator whose memfd is sealed against shrinking
/// and against writes by receivers. Marks the block as sent.
pub fn block_of(mem: &gst::MemoryRef) -> Option<Block<'_>> {
    if !memfd::is_memfd_memory(mem) {
        return None;
    }
    let fd_mem = mem.downcast_memory_ref::<gst_allocators::FdMemory>()?;
    let raw = fd_mem.fd();
    if raw < 0 {
        return None;
    }
    // SAFETY: the descriptor is owned by the live memory `mem` borrows (a share uses its
    // root's), open for as long as the borrow we return it with.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    let root = super::root_memory(mem);
    // SAFETY: the root is live while `mem` is.
    let size = unsafe { (*root).maxsize };
    let mut blocks = BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = blocks.get_mut(&(root as usize)) {
        b.sent = true;
        return Some(Block { id: b.id, size, fd });
    }
    // First seen: a block we allocated is sealed; a wrapped one (received) must be checked.
    if !memfd::is_sealed_memfd(mem) {
        return None;
    }
    let id = NEXT_BLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    blocks.insert(
        root as usize,
        BlockEntry {
            id,
            sent: true,
            retired: false,
        },
    );
    Some(Block { id, size, fd })
}

/// Keeps block `id` from ever being recycled (a consumer that may still map it went away): a
/// cached block is freed now, one in use when its last reference goes.
pub fn retire_block(id: u64) {
    let cached = {
        let mut blocks = BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
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
        }
        found
    };
    // Outside the locks: freeing it runs `free`, which takes BLOCKS.
    if let Some(mem) = cached {
        discard(mem);
    }
}

/// A read-only share `offset..offset + size` of `root` (a block from [`wrap_fd`]) whose
/// `on_free` is dropped when the share is freed: how `memfdsrc` hands out a buffer's memory
/// without a new mapping and learns when the consumer is done with it.
pub fn share_block(
    root: &gst::MemoryRef,
    offset: usize,
    size: usize,
    on_free: Box<dyn Send>,
) -> Result<gst::Memory, String> {
    let share = super::try_share(root, offset, size).ok_or_else(|| {
        format!(
            "bytes {offset}..{} are outside the {}-byte block",
            offset as u128 + size as u128,
            root.size()
        )
    })?;
    ON_FREE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(share.as_ptr() as usize, on_free);
    Ok(share)
}

/// Frees a block taken from the cache (its dispose hook cleared, so it is not recycled again).
fn discard(mem: gst::Memory) {
    // SAFETY: we own the only reference; without the hook the unref in drop frees it.
    unsafe { (*(mem.as_ptr() as *mut ffi::GstMemory)).mini_object.dispose = None };
    drop(mem);
}

/// Frees every recycled block (part of `trim_cache`).
pub(in crate::allocator) fn trim_recycled() {
    let blocks: Vec<gst::Memory> = match RECYCLED.lock() {
        Ok(mut r) => {
            r.bytes = 0;
            r.blocks.drain().flat_map(|(_, v)| v).collect()
        }
        Err(_) => return,
    };
    for mem in blocks {
        discard(mem);
    }
}

/// Bytes held by recycled blocks.
pub(in crate::allocator) fn recycled_bytes() -> usize {
    RECYCLED.lock().map(|r| r.bytes).unwrap_or(0)
}

/// Allocates a `MemfdMemory` block through `allocator`: a recycled one of the same size, or
/// a new sealed memfd.
pub(in crate::allocator) fn alloc(
    allocator: &MemfdAllocator,
    size: usize,
    params: &gst::AllocationParams,
) -> Result<gst::Memory, AllocError> {
    let l = layout::MemfdLayout::new(
        size,
        params.prefix(),
        params.padding(),
        params.align(),
        memfd::page_size(),
    )?;
    let flags = params.flags().into_glib();
    let recycled = if super::traced() {
        None
    } else {
        take_recycled(l.maxsize)
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
        let zero = flags & (ffi::GST_MEMORY_FLAG_ZERO_PREFIXED | ffi::GST_MEMORY_FLAG_ZERO_PADDED);
        // Its map state is a fresh block's: `mem_unmap` never lets an unbalanced unmap reach
        // GstFdMemory's map count, and a block disposed while locked was not recycled. Should
        // zeroing fail to map it all the same, it is freed and a fresh block made.
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
                mstats::block(l.maxsize, true);
                return Ok(mem);
            }
            Err(err) => {
                gst::warning!(CAT, obj = allocator, "dropping a recycled block: {}", err);
                discard(mem);
            }
        }
    }
    let fd = memfd::create_memfd(l.maxsize)?;
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
    if let Err(err) = zero_ranges(&mem, l.offset, l.size, 0).and_then(|()| memfd::seal_writes(fd)) {
        // Not into the cache: an unsealed block must never be handed out.
        discard(mem);
        return Err(err);
    }
    // SAFETY: as above.
    unsafe { (*(mem.as_ptr() as *mut ffi::GstMemory)).mini_object.flags |= flags };
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
    mstats::block(l.maxsize, true);
    Ok(mem)
}

/// Maps a recycled block read-write and zeroes its prefix and/or its padding (to maxsize), as
/// `which` says (nothing: the map alone, which proves the block maps read-write).
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
        let mapped = ffi::gst_memory_map(ptr, info.as_mut_ptr(), ffi::GST_MAP_WRITE);
        OWN_MAP.set(false);
        if mapped == glib::ffi::GFALSE {
            return Err(AllocError::Internal(
                "a recycled MemfdMemory block does not map read-write",
            ));
        }
        let info = info.assume_init_mut();
        let base = info.data.sub(offset);
        if which & ffi::GST_MEMORY_FLAG_ZERO_PREFIXED != 0 {
            ptr::write_bytes(base, 0, offset);
        }
        if which & ffi::GST_MEMORY_FLAG_ZERO_PADDED != 0 {
            let end = offset + size;
            ptr::write_bytes(base.add(end), 0, (*ptr).maxsize - end);
        }
        ffi::gst_memory_unmap(ptr, info);
    }
    Ok(())
}

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
    let Some((_, new_size)) = super::resolve_request(*CAT, "share", m, offset, size, false) else {
        return ptr::null_mut();
    };
    let Some(share) = FD_SHARE.get() else {
        return ptr::null_mut();
    };
    mstats::count(M::Shares, 1);
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
    let span = unsafe { super::is_span(mem1, mem2, offset) };
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
    let Some((start, len)) = super::resolve_request(*CAT, "copy", m, offset, size, true) else {
        return ptr::null_mut();
    };
    let params = gst::AllocationParams::new(
        gst::MemoryFlags::empty(),
        m.align & (memfd::page_size() - 1),
        0,
        0,
    );
    let copy = match memfd::memfd_allocator().alloc(len, Some(&params)) {
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
    let mut copy = copy;
    let ok = match copy.get_mut().map(|c| c.map_writable()) {
        Some(Ok(mut dst)) => {
            let dst = dst.as_mut_slice();
            let mut done = 0;
            let mut ok = true;
            while done < len {
                match rustix::io::pread(fd, &mut dst[done..len], (start + done) as u64) {
                    Ok(0) => {
                        ok = false;
                        break;
                    }
                    Ok(n) => done += n,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => {
                        gst::warning!(CAT, "copy of {:p} failed: pread: {}", mem, e);
                        ok = false;
                        break;
                    }
                }
            }
            ok
        }
        _ => false,
    };
    if !ok {
        return ptr::null_mut();
    }
    mstats::count(M::Copies, 1);
    mstats::count(M::BytesCopied, len as u64);
    copy.into_glib_ptr()
}

/// Installs our vfuncs over GstFdAllocator's on a new instance.
pub(in crate::allocator) fn install_vfuncs(allocator: &MemfdAllocator) {
    let ptr: *mut ffi::GstAllocator = allocator.upcast_ref::<gst::Allocator>().to_glib_none().0;
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

/// Owners to drop when a wrapped root is freed (keyed by the memory's address): this is how
/// `memfdsrc` learns that the consumer is done with a block.
static ON_FREE: LazyLock<Mutex<HashMap<usize, Box<dyn Send>>>> = LazyLock::new(Default::default);

/// Wraps a received descriptor as read-only `MemfdMemory` with the given layout. The file
/// must be at least `maxsize` bytes and sealed against shrinking (so a mapping can never run
/// past its end), and `offset + size <= maxsize`. `on_free` is dropped when the memory and
/// every share of it are gone.
pub fn wrap_fd(
    fd: OwnedFd,
    maxsize: usize,
    offset: usize,
    size: usize,
    on_free: Option<Box<dyn Send>>,
) -> Result<gst::Memory, String> {
    use rustix::fs::{SealFlags, fcntl_get_seals, fstat};
    if maxsize == 0 || offset.checked_add(size).is_none_or(|end| end > maxsize) {
        return Err(format!(
            "bad layout: offset {offset} size {size} maxsize {maxsize}"
        ));
    }
    // Seals first, size second: once SHRINK is sealed the size can only grow, so the size
    // read next holds for as long as the mapping lives. (The other order lets a sender
    // shrink an unsealed file between the two reads, then seal it: SIGBUS on access.)
    let seals = fcntl_get_seals(&fd).map_err(|e| format!("not a sealable memfd: {e}"))?;
    if !seals.contains(SealFlags::SHRINK) {
        return Err("the file is not sealed against shrinking".into());
    }
    let st = fstat(&fd).map_err(|e| format!("fstat: {e}"))?;
    if (st.st_size as u64) < maxsize as u64 {
        return Err(format!(
            "the file has {} bytes, fewer than maxsize {maxsize}",
            st.st_size
        ));
    }
    let allocator = memfd::memfd_allocator();
    let raw = fd.into_raw_fd();
    // SAFETY: as in `alloc`: GStreamer owns `raw` from here, or we close it on failure.
    let mem = match unsafe {
        allocator.alloc_fd(raw, maxsize, gst_allocators::FdMemoryFlags::KEEP_MAPPED)
    } {
        Ok(m) => m,
        Err(_) => {
            // SAFETY: not taken by GStreamer.
            drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
            return Err("gst_fd_allocator_alloc failed".into());
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
    mstats::block(maxsize, true);
    Ok(mem)
}

// SAFETY: `alloc` returns NULL or a fully initialised fd memory of this allocator; `free`
// chains up to GstFdAllocator's, which unmaps and closes it.
unsafe impl gst::subclass::prelude::AllocatorImpl for memfd_imp::MemfdAllocator {
    unsafe fn free(&self, memory: *mut ffi::GstMemory) {
        use gst::subclass::prelude::AllocatorImplExt;
        let owner = ON_FREE
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&(memory as usize)));
        // SAFETY: `memory` is live until parent_free below.
        let (root, recyclable, maxsize) = unsafe {
            (
                (*memory).parent.is_null(),
                (*memory).mini_object.dispose.is_some(),
                (*memory).maxsize,
            )
        };
        // A root dies here unless it was a recycled block being trimmed (counted when it went
        // to the cache): blocks we allocated keep their dispose hook, wrapped ones an owner.
        if root && (recyclable || owner.is_some()) {
            mstats::count(M::Frees, 1);
            mstats::block(maxsize, false);
        }
        if root {
            block_freed(memory);
        }
        // SAFETY: core calls free once per memory of ours; GstFdAllocator releases it.
        unsafe { self.parent_free(memory) };
        // Dropped after the block is unmapped and closed: the producer may reuse it now.
        drop(owner);
    }

    unsafe fn alloc(&self, size: usize, params: &gst::AllocationParams) -> *mut ffi::GstMemory {
        use gst::subclass::prelude::ObjectSubclassExt;
        match alloc(&self.obj(), size, params) {
            Ok(mem) => mem.into_glib_ptr(),
            Err(err) => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "allocation of {} bytes failed: {}",
                    size,
                    err
                );
                ptr::null_mut()
            }
        }
    }
}

/// A new descriptor (close-on-exec) for the file behind `mem`, if it is fd memory of any
/// allocator: for sending to another process, or checking seals. `mem` keeps its own.
pub fn dup_fd(mem: &gst::MemoryRef) -> std::io::Result<std::os::fd::OwnedFd> {
    let Some(fd_mem) = mem.downcast_memory_ref::<gst_allocators::FdMemory>() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not fd memory",
        ));
    };
    let raw = fd_mem.fd();
    if raw < 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "fd memory without a descriptor",
        ));
    }
    // SAFETY: `raw` is owned by the live memory `mem` borrows, open for at least as long as
    // this borrow, which ends before we return.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    Ok(rustix::io::fcntl_dupfd_cloexec(borrowed, 0)?)
}
