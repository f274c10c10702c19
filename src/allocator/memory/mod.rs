// SPDX-License-Identifier: MPL-2.0
//! The one module of memkit that is allowed `unsafe`: the `AlignedMemory` struct, the
//! GstMemory vfuncs installed on the allocator, the allocator's `alloc`/`free`, and the safe
//! wrappers that turn GStreamer's NULL returns into `Result`s; and, in `memfd`, the FFI
//! half of `MemfdMemory`.
//!
//! Layout of a block (see `layout.rs`): one system allocation aligned to the effective
//! alignment, `shift` unused bytes, then the region of `maxsize` bytes that GStreamer sees:
//! prefix, payload (aligned), padding, tail slack. Every share of a block points at the same
//! region base and differs only in `offset`/`size`; only a root (`parent == NULL`) owns the
//! backing storage.
//!
//! Rules every function here follows: no panics (an `extern "C"` function that panics aborts
//! the host process), every size computation checked, NULL/FALSE plus a log line on failure.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::ops::{Bound, RangeBounds};
use std::ptr::{self, NonNull};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};

use gst::ffi;
use gst::glib;
use gst::glib::translate::*;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::cache::{self, Cache, Key, LocalMagazine, Spares};
use super::imp::{self, CAT};
use super::layout::{self, BlockLayout};
use super::stats::{self, Counter};
use super::{AlignedAllocator, AllocError, MEMORY_TYPE_CSTR, MemoryError};

pub(super) mod memfd;

// `gst::memory_object_wrapper!` expects this helper macro at its call site.
macro_rules! skip_assert_initialized {
    () => {};
}

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
struct Storage {
    base: NonNull<u8>,
    len: usize,
    align: usize,
    mapped: bool,
}

impl Storage {
    /// `len` bytes aligned to `align` (a power of two no larger than `layout::MAX_ALIGN`).
    fn new(len: usize, align: usize) -> Option<Storage> {
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
struct Owner(NonNull<dyn Send + 'static>);

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

/// What a block owns and must release when it is freed.
enum Backing {
    /// A share: the root owns the storage; a share owns nothing.
    Shared,
    /// A root allocated by us. `key` is its free list in the cache (`None`: not cacheable);
    /// `guard` is set for blocks allocated in guard mode.
    Owned {
        storage: Storage,
        key: Option<Key>,
        guard: Option<Guard>,
    },
    /// A root wrapping a foreign owner (see [`wrap`]); the owner is dropped when the root is
    /// freed, i.e. after every share of it is gone.
    Wrapped(#[allow(dead_code, reason = "only its Drop matters")] Owner),
}

/// The C struct behind every `AlignedMemory` memory: a `GstMemory` followed by our fields.
/// Opaque to users; exposed only as the FFI type of [`AlignedMemory`].
#[repr(C)]
pub struct GstAlignedMemory {
    mem: ffi::GstMemory,
    /// Region base: what `mem_map` returns (core adds `offset`). Never NULL.
    data: NonNull<u8>,
    backing: Backing,
}

gst::memory_object_wrapper!(
    AlignedMemory,
    AlignedMemoryRef,
    GstAlignedMemory,
    |mem: &gst::MemoryRef| {
        // A type check on the allocator's GType (not on the `mem_type` string, which any
        // allocator could claim) guarantees the memory really is a `GstAlignedMemory`.
        mem.allocator()
            .is_some_and(|a| a.type_().is_a(AlignedAllocator::static_type()))
    },
    gst::Memory,
    gst::MemoryRef
);

// SAFETY: the region is shared between threads exactly like GStreamer's own memories: all our
// fields are immutable while the memory is alive, and access to the bytes is arbitrated by
// GstMemory's lock (map/unmap) as for every GstMemory. A wrapped owner is `Send`.
unsafe impl Send for GstAlignedMemory {}
// SAFETY: as above; `&GstAlignedMemory` only reads immutable fields.
unsafe impl Sync for GstAlignedMemory {}

fn flags_bits(flags: gst::MemoryFlags) -> ffi::GstMemoryFlags {
    flags.into_glib()
}

// ---------------------------------------------------------------------------------------------
// The recycling cache: freed roots (header and storage together) and spare share headers.
// ---------------------------------------------------------------------------------------------

/// A freed root block waiting in the cache: its header and its storage.
pub(super) struct Block(Box<GstAlignedMemory>);

thread_local! {
    static MAGAZINE: RefCell<LocalMagazine<Block>> = const { RefCell::new(LocalMagazine::new()) };
    static SPARE_HEADERS: RefCell<Spares<Box<GstAlignedMemory>>> =
        const { RefCell::new(Spares::new(64)) };
}

static CACHE: LazyLock<Cache<Block>> = LazyLock::new(|| Cache::new(&MAGAZINE));

/// The process-wide block cache.
pub(super) fn cache() -> &'static Cache<Block> {
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

// ---------------------------------------------------------------------------------------------
// Guard mode: canaries around the region, the prefix and padding filled, freed blocks poisoned.
// ---------------------------------------------------------------------------------------------

/// Bytes of canary before and after the region of a guarded block.
pub const CANARY: usize = 64;
/// The canary pattern.
pub const CANARY_BYTE: u8 = 0xFD;
/// What the prefix and padding of a guarded block hold when no ZERO flag asks for zeros.
pub const FILL_BYTE: u8 = 0xFB;
/// What a freed guarded block is overwritten with.
pub const POISON_BYTE: u8 = 0xDD;

/// Off unless `MEMKIT_GUARD` says otherwise (read when the registered allocator is created).
static GUARD: AtomicBool = AtomicBool::new(false);
static GUARD_ABORT: LazyLock<bool> =
    LazyLock::new(|| std::env::var("MEMKIT_GUARD").is_ok_and(|v| v.trim() == "abort"));

/// Whether new blocks get guards.
pub(super) fn guard_enabled() -> bool {
    GUARD.load(Ordering::Relaxed)
}

/// Turns guard mode on or off for blocks allocated from now on.
pub(super) fn set_guard_enabled(on: bool) {
    GUARD.store(on, Ordering::Relaxed);
}

/// What a guarded root remembers to check itself: where its prefix ended and its padding
/// began when it was allocated, and what they were filled with.
struct Guard {
    prefix: usize,
    end: usize,
    prefix_fill: u8,
    padding_fill: u8,
    /// Set once a violation has been reported, so one damage is reported once.
    reported: AtomicBool,
    /// Set once an element has been named for it (at a pad push).
    named: AtomicBool,
}

/// A damaged range of a guarded block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardViolation {
    /// `"before the region"`, `"after maxsize"`, `"prefix"` or `"padding"`.
    pub area: &'static str,
    /// Damaged bytes, relative to the region base (negative: before it).
    pub range: std::ops::Range<isize>,
    /// The block's maxsize, and its offset and size when checked.
    pub maxsize: usize,
    pub offset: usize,
    pub size: usize,
}

impl std::fmt::Display for GuardViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} damaged: bytes {}..{} of a block of maxsize {} (offset {}, size {})",
            self.area, self.range.start, self.range.end, self.maxsize, self.offset, self.size
        )
    }
}

/// The first and last index (exclusive) in `bytes` that differ from `expected`.
fn damaged(bytes: &[u8], expected: u8) -> Option<std::ops::Range<usize>> {
    let first = bytes.iter().position(|&b| b != expected)?;
    let last = bytes.iter().rposition(|&b| b != expected)?;
    Some(first..last + 1)
}

/// Checks the canaries, prefix and padding of a guarded root.
fn check_guard(root: &GstAlignedMemory) -> Vec<GuardViolation> {
    let Backing::Owned { guard: Some(g), .. } = &root.backing else {
        return Vec::new();
    };
    let (offset, size, maxsize) = (root.mem.offset, root.mem.size, root.mem.maxsize);
    let base = root.data.as_ptr();
    // SAFETY: a guarded block's storage holds CANARY bytes before and after its region
    // (`alloc_guarded`), and the region itself; the root is alive. Reading bytes that another
    // thread may be writing is what every checker of this kind does: the values are only
    // compared, and u8 has no invalid values.
    let (front, region, back) = unsafe {
        (
            std::slice::from_raw_parts(base.sub(CANARY), CANARY),
            std::slice::from_raw_parts(base, maxsize),
            std::slice::from_raw_parts(base.add(maxsize), CANARY),
        )
    };
    let mut out = Vec::new();
    let mut push = |area, r: std::ops::Range<usize>, shift: isize| {
        out.push(GuardViolation {
            area,
            range: r.start as isize + shift..r.end as isize + shift,
            maxsize,
            offset,
            size,
        })
    };
    if let Some(r) = damaged(front, CANARY_BYTE) {
        push("before the region", r, -(CANARY as isize));
    }
    // The prefix still outside the valid data, and the padding still after it.
    let prefix_end = g.prefix.min(offset).min(maxsize);
    if let Some(r) = damaged(&region[..prefix_end], g.prefix_fill) {
        push("prefix", r, 0);
    }
    let pad_start = g.end.max(offset.saturating_add(size)).min(maxsize);
    if let Some(r) = damaged(&region[pad_start..], g.padding_fill) {
        push("padding", r, pad_start as isize);
    }
    if let Some(r) = damaged(back, CANARY_BYTE) {
        push("after maxsize", r, maxsize as isize);
    }
    out
}

/// Logs, counts and records violations of `root` (once per block), naming `element` when
/// known; aborts under `MEMKIT_GUARD=abort`. Returns whether there were any.
fn report_guard(root: &GstAlignedMemory, when: &str, element: Option<&str>) -> bool {
    let Backing::Owned { guard: Some(g), .. } = &root.backing else {
        return false;
    };
    if g.reported.load(Ordering::Relaxed) {
        // Already reported (at a write-unmap, where no element is known): the first pad push
        // of the damaged block names the element that pushed it.
        if let Some(e) = element
            && !g.named.swap(true, Ordering::Relaxed)
        {
            gst::error!(
                CAT,
                "guard: damaged block {:p} pushed by element {}",
                root,
                e
            );
            stats::name_violations(root as *const _ as usize, e);
            return true;
        }
        return false;
    }
    let violations = check_guard(root);
    if violations.is_empty() {
        return false;
    }
    if g.reported.swap(true, Ordering::Relaxed) {
        return false;
    }
    if element.is_some() {
        g.named.store(true, Ordering::Relaxed);
    }
    for v in &violations {
        let who = element.map_or(String::new(), |e| format!(" by element {e}"));
        gst::error!(CAT, "guard: block {:p} {}{} (found {})", root, v, who, when);
        stats::count(Counter::GuardViolations, 1);
        stats::record_violation(stats::Violation {
            block: root as *const _ as usize,
            element: element.map(str::to_owned),
            block_maxsize: v.maxsize,
            area: v.area,
            range: v.range.clone(),
            when: when.to_owned(),
        });
        if *GUARD_ABORT {
            eprintln!(
                "memkit guard: block {:p} {}{} (found {}): aborting (MEMKIT_GUARD=abort)",
                root, v, who, when
            );
            std::process::abort();
        }
    }
    true
}

/// The root of a live AlignedMemory memory (`mem` itself or its parent).
///
/// # Safety
/// `mem` must be a live GstAlignedMemory.
unsafe fn root_of<'a>(mem: *const GstAlignedMemory) -> &'a GstAlignedMemory {
    // SAFETY: per the caller; a share's parent is its root and is alive while it is.
    unsafe {
        let parent = (*mem).mem.parent;
        if parent.is_null() {
            &*mem
        } else {
            &*(parent as *const GstAlignedMemory)
        }
    }
}

/// Checks the guards of the block behind `mem` if it is a guarded `AlignedMemory` block,
/// reporting a damage once, naming `element`. `true` when a new violation was found.
pub fn check_memory_guard(mem: &gst::MemoryRef, element: Option<&str>) -> bool {
    let Some(m) = mem.downcast_memory_ref::<AlignedMemory>() else {
        return false;
    };
    // SAFETY: the typed reference guarantees a live GstAlignedMemory.
    let root = unsafe { root_of(m.as_ptr()) };
    report_guard(root, "at a pad push", element)
}

/// Allocates storage for a guarded block: canaries around the region, prefix and padding
/// filled (with zeros where the flags promise them, else `FILL_BYTE`).
fn alloc_guarded(
    block: &BlockLayout,
    flags: ffi::GstMemoryFlags,
) -> Result<Box<GstAlignedMemory>, AllocError> {
    let align = block.alloc_align();
    let front = layout::round_up(CANARY, block.align_mask).ok_or(AllocError::OutOfMemory {
        size: block.alloc_size,
        align,
    })?;
    let len = front
        .checked_add(block.alloc_size)
        .and_then(|l| l.checked_add(CANARY))
        .ok_or(AllocError::OutOfMemory {
            size: block.alloc_size,
            align,
        })?;
    let storage = Storage::new(len, align).ok_or(AllocError::OutOfMemory { size: len, align })?;
    // SAFETY: front + shift + maxsize + CANARY <= len, all inside the storage.
    let data = unsafe { storage.base.add(front + block.shift) };
    let prefix_fill = if flags & ffi::GST_MEMORY_FLAG_ZERO_PREFIXED != 0 {
        0
    } else {
        FILL_BYTE
    };
    let padding_fill = if flags & ffi::GST_MEMORY_FLAG_ZERO_PADDED != 0 {
        0
    } else {
        FILL_BYTE
    };
    // SAFETY: the ranges below lie in the storage: [data - CANARY, data + maxsize + CANARY).
    unsafe {
        ptr::write_bytes(data.as_ptr().sub(CANARY), CANARY_BYTE, CANARY);
        ptr::write_bytes(data.as_ptr(), prefix_fill, block.prefix);
        let r = block.padding_range();
        ptr::write_bytes(data.as_ptr().add(r.start), padding_fill, r.len());
        ptr::write_bytes(data.as_ptr().add(block.maxsize), CANARY_BYTE, CANARY);
    }
    Ok(Box::new(GstAlignedMemory {
        // SAFETY: zeroed GstMemory, initialised by `init_memory`.
        mem: unsafe { std::mem::zeroed() },
        data,
        backing: Backing::Owned {
            storage,
            key: None,
            guard: Some(Guard {
                prefix: block.prefix,
                end: block.prefix + block.size,
                prefix_fill,
                padding_fill,
                reported: AtomicBool::new(false),
                named: AtomicBool::new(false),
            }),
        },
    }))
}

// ---------------------------------------------------------------------------------------------
// Memory initialisation without the allocator refcount.
// ---------------------------------------------------------------------------------------------

/// The registered `AlignedMemory` instance, which lives as long as the process (a static holds
/// a reference): its memories need not hold a reference on it.
static IMMORTAL: AtomicPtr<ffi::GstAllocator> = AtomicPtr::new(ptr::null_mut());

/// The registered `AlignedMemory` allocator. This static holds a reference that is never
/// dropped, which is what makes the instance immortal (see [`IMMORTAL`]).
pub(super) static ALLOCATOR: LazyLock<AlignedAllocator> = LazyLock::new(|| {
    if std::env::var("MEMKIT_GUARD")
        .is_ok_and(|v| matches!(v.trim(), "1" | "abort" | "true" | "yes"))
    {
        set_guard_enabled(true);
    }
    stats::init_from_env();
    let allocator = glib::Object::new::<AlignedAllocator>();
    let ptr: *mut ffi::GstAllocator = allocator.upcast_ref::<gst::Allocator>().to_glib_none().0;
    IMMORTAL.store(ptr, Ordering::Release);
    // gst_allocator_register takes its own reference and marks the allocator MAY_BE_LEAKED.
    gst::Allocator::register(super::ALIGNED_MEMORY, allocator.clone());
    allocator
});

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

/// Whether memories take GStreamer's own init and free: [`NO_HOOKS`] before 1.26, which has
/// no memory tracer hooks; [`WATCH`] on 1.26 and newer until a tracer is active; then
/// [`TRACED`] for the rest of the process.
static MEMORY_HOOKS: AtomicU8 = AtomicU8::new(NO_HOOKS);
const NO_HOOKS: u8 = 0;
const WATCH: u8 = 1;
const TRACED: u8 = 2;

/// Reads the running GStreamer's version once: from 1.26, `gst_memory_init` and core's
/// memory free fire the `memory-init` and `memory-free-pre/post` tracer hooks.
pub(in crate::allocator) fn init_memory_hooks() {
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
pub(in crate::allocator) fn traced() -> bool {
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
unsafe fn release(mem: *mut ffi::GstMemory) {
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
fn alloc_block(
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
unsafe fn new_share(
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

// ---------------------------------------------------------------------------------------------
// GstMemory vfuncs, installed on every AlignedAllocator instance by `install_vfuncs`.
// ---------------------------------------------------------------------------------------------

/// `GstAllocator.mem_map` (contract of `gst_memory_map`): core has taken the lock; return the
/// region base (core adds `offset`), the same pointer on every call; NULL only for
/// NOT_MAPPABLE memory.
unsafe extern "C" fn mem_map(
    mem: *mut ffi::GstMemory,
    _maxsize: usize,
    _flags: ffi::GstMapFlags,
) -> glib::ffi::gpointer {
    // SAFETY: core only calls mem_map on live memory of this allocator, i.e. a GstAlignedMemory.
    let mem = unsafe { &*(mem as *const GstAlignedMemory) };
    if mem.mem.mini_object.flags & ffi::GST_MEMORY_FLAG_NOT_MAPPABLE != 0 {
        gst::debug!(CAT, "refusing to map NOT_MAPPABLE memory {:p}", mem);
        return ptr::null_mut();
    }
    stats::count(Counter::Maps, 1);
    mem.data.as_ptr().cast()
}

/// `GstAllocator.mem_unmap` (contract of `gst_memory_unmap`): nothing to release.
unsafe extern "C" fn mem_unmap(_mem: *mut ffi::GstMemory) {}

/// `GstAllocator.mem_unmap_full`: nothing to release either, but when a guarded block was
/// mapped for writing, its guards are checked now, right after the writer is done.
unsafe extern "C" fn mem_unmap_full(mem: *mut ffi::GstMemory, info: *mut ffi::GstMapInfo) {
    // SAFETY: core passes a live memory of ours and the GstMapInfo of its map.
    unsafe {
        if (*info).flags & ffi::GST_MAP_WRITE != 0 {
            let root = root_of(mem as *const GstAlignedMemory);
            if matches!(root.backing, Backing::Owned { guard: Some(_), .. }) {
                report_guard(root, "when a write mapping was released", None);
            }
        }
    }
}

/// Resolves a `mem_share`/`mem_copy` request on `m` into region-relative `(offset, size)`
/// (see `layout::sub_range`), or logs the refusal at WARNING in `cat` and gives `None`.
fn resolve_request(
    cat: gst::DebugCategory,
    what: &str,
    m: &ffi::GstMemory,
    offset: isize,
    size: isize,
    clamp: bool,
) -> Option<(usize, usize)> {
    let r = layout::sub_range(m.offset, m.size, m.maxsize, offset, size, clamp);
    if r.is_none() {
        gst::warning!(
            cat,
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
    r
}

/// The body of every memkit `mem_is_span`: core has checked that both memories have this
/// allocator and the same non-NULL parent. TRUE iff `mem2` starts where `mem1` ends;
/// `*offset` is `mem1`'s start relative to the parent's offset, ready for
/// `gst_memory_share(parent, offset, ..)`.
///
/// # Safety
/// `mem1` and `mem2` must be live memories with the same live parent; `offset` NULL or valid.
unsafe fn is_span(
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
    let Some((new_offset, new_size)) = resolve_request(*CAT, "share", &m.mem, offset, size, false)
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
    stats::count(Counter::Shares, 1);
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
    let Some((start, len)) = resolve_request(*CAT, "copy", &m.mem, offset, size, true) else {
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
            // SAFETY: [start, start + len) is inside the source region (checked by sub_range),
            // the new block's payload has room for `len` bytes, and the two never overlap.
            unsafe {
                let dst = copy.as_ref().data.as_ptr().add(block.prefix);
                ptr::copy_nonoverlapping(m.data.as_ptr().add(start), dst, len);
            }
            gst::trace!(CAT, "copied {} bytes of {:p} to {:p}", len, m, copy);
            stats::count(Counter::Copies, 1);
            stats::count(Counter::BytesCopied, len as u64);
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

/// Installs the memory vfuncs and the memory type on a new allocator instance.
pub(super) fn install_vfuncs(allocator: &AlignedAllocator) {
    let ptr: *mut ffi::GstAllocator = allocator.upcast_ref::<gst::Allocator>().to_glib_none().0;
    // SAFETY: called from `constructed`, before the instance is shared; the fields belong to
    // the GstAllocator instance struct, and `MEMORY_TYPE_CSTR` is a static NUL-terminated string
    // (core stores the pointer without copying it).
    unsafe {
        (*ptr).mem_type = MEMORY_TYPE_CSTR.as_ptr();
        (*ptr).mem_map = Some(mem_map);
        (*ptr).mem_unmap = Some(mem_unmap);
        (*ptr).mem_copy = Some(mem_copy);
        (*ptr).mem_share = Some(mem_share);
        (*ptr).mem_is_span = Some(mem_is_span);
        (*ptr).mem_map_full = None;
        (*ptr).mem_unmap_full = Some(mem_unmap_full);
    }
}

// SAFETY: `alloc` returns either NULL or a fully initialised GstAlignedMemory whose allocator is
// this instance; `free` releases exactly what `alloc`, `mem_share`, `mem_copy` or `wrap` created.
unsafe impl gst::subclass::prelude::AllocatorImpl for imp::AlignedAllocator {
    /// `GstAllocatorClass.alloc` (contract of `gst_allocator_alloc`): NULL and a warning on
    /// overflow or out-of-memory, never a panic.
    unsafe fn alloc(&self, size: usize, params: &gst::AllocationParams) -> *mut ffi::GstMemory {
        let result = BlockLayout::new(size, params.prefix(), params.padding(), params.align())
            .map_err(AllocError::from)
            .and_then(|block| {
                let allocator: *mut ffi::GstAllocator =
                    self.obj().upcast_ref::<gst::Allocator>().to_glib_none().0;
                alloc_block(allocator, &block, flags_bits(params.flags()))
            });
        match result {
            Ok(mem) => mem.as_ptr().cast(),
            Err(err) => {
                gst::warning!(CAT, imp = self, "allocation failed: {}", err);
                ptr::null_mut()
            }
        }
    }

    /// `GstAllocatorClass.free` (contract of `gst_allocator_free`): core has already released
    /// the parent. Free the struct, and the storage if this is a root.
    unsafe fn free(&self, memory: *mut ffi::GstMemory) {
        // SAFETY: core calls free once, with refcount 0, on a memory this allocator created
        // (with gst_memory_init, for instances other than the registered one).
        unsafe { release(memory) };
    }
}

/// Allocates through this allocator, returning the typed memory or the reason it failed.
pub(super) fn alloc(
    allocator: &AlignedAllocator,
    size: usize,
    params: &gst::AllocationParams,
) -> Result<AlignedMemory, AllocError> {
    let block = BlockLayout::new(size, params.prefix(), params.padding(), params.align())?;
    let ptr: *mut ffi::GstAllocator = allocator.upcast_ref::<gst::Allocator>().to_glib_none().0;
    let mem = alloc_block(ptr, &block, flags_bits(params.flags())).inspect_err(|err| {
        gst::warning!(CAT, obj = allocator, "allocation failed: {}", err);
    })?;
    // SAFETY: alloc_block returns a new memory with refcount 1 that we own.
    Ok(unsafe { from_glib_full(mem.as_ptr()) })
}

/// Wraps a foreign owner's bytes as `AlignedMemory`. `bytes` extracts the region from the
/// owner once it is boxed (so a `[u8; N]` owner does not move after we take its address).
pub(super) fn wrap<T: Send + 'static>(
    allocator: &AlignedAllocator,
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
    let alloc_ptr: *mut ffi::GstAllocator =
        allocator.upcast_ref::<gst::Allocator>().to_glib_none().0;
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
        mapped_addr(self)
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

// ---------------------------------------------------------------------------------------------
// Safe helpers for any GstMemory (of any allocator), used by the elements.
// ---------------------------------------------------------------------------------------------

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

/// How many holders (shares and buffers) a memory may have before memkit's elements copy
/// instead of sharing it again: well below the 65535 that core's 16-bit share count in
/// `GstMiniObject.lockstate` can hold (past it, lock accounting is corrupted).
pub const MAX_LIVE_SHARES: u32 = 16384;

/// How many holders the block behind `mem` has now: core's share count of its root (each
/// share of a memory and each buffer holding it takes an exclusive lock on it).
pub fn live_shares(mem: &gst::MemoryRef) -> u32 {
    let root = root_memory(mem);
    // SAFETY: the root is live while `mem` is; core only ever changes `lockstate` atomically.
    let state = unsafe {
        std::sync::atomic::AtomicI32::from_ptr(&raw mut (*root).mini_object.lockstate)
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    (state as u32) >> 16
}

/// The root of `mem`: itself, or the memory it shares (core makes every share's parent the
/// root). Live for as long as `mem` is (a share holds a reference to its parent).
fn root_memory(mem: &gst::MemoryRef) -> *mut ffi::GstMemory {
    let m = mem.as_ptr() as *mut ffi::GstMemory;
    // SAFETY: `mem` is live.
    let parent = unsafe { (*m).parent };
    if parent.is_null() { m } else { parent }
}

/// The memory type `allocator` gives its memories (`GstAllocator.mem_type`), if it set one.
/// `gst::Allocator::memory_type` assumes it did; some allocators (shmsink's) leave it NULL.
pub fn memory_type_of(allocator: &gst::Allocator) -> Option<String> {
    let ptr = allocator.as_ptr();
    // SAFETY: `allocator` is a live GstAllocator; `mem_type` is set (if at all) before the
    // allocator is handed out and never freed while it lives, and is a NUL-terminated string.
    unsafe {
        let t = (*ptr).mem_type;
        if t.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(t).to_str().ok().map(str::to_owned)
    }
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
