// SPDX-License-Identifier: MPL-2.0
//! Guard mode: canaries around the region, prefix and padding filled, freed blocks poisoned.

use std::ptr::{self, NonNull};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::allocator::debug::ALIGNED as CAT;
use gst::ffi;

use crate::allocator::aligned::stats::{self, Counter};
use crate::allocator::error::AllocError;
use crate::allocator::layout::{self, BlockLayout};
use crate::attribution;

use super::block::{AlignedMemory, GstAlignedMemory};
use super::storage::{Backing, Guard, Storage};

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

/// Whether a guarded block was ever made: until then no unmap looks for guards.
static GUARDED_EVER: AtomicBool = AtomicBool::new(false);

/// Whether a guarded block may exist (one was made since the process started). Any thread that
/// holds a guarded block got it through a hand-over that orders this flag's store before.
#[inline(always)]
pub(super) fn guarded_ever() -> bool {
    GUARDED_EVER.load(Ordering::Relaxed)
}

/// Whether new blocks get guards.
pub fn guard_enabled() -> bool {
    GUARD.load(Ordering::Relaxed)
}

/// Turns guard mode on or off for blocks allocated from now on.
pub fn set_guard_enabled(on: bool) {
    GUARD.store(on, Ordering::Relaxed);
    super::protect::set_special(super::protect::GUARD_BIT, on);
}

/// A protected block was made: from now on unmaps look at the block (see [`guarded_ever`]).
pub(super) fn mark_guarded() {
    GUARDED_EVER.store(true, Ordering::Relaxed);
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

/// A copy of the `len` bytes at `src`, each read once with a volatile read.
///
/// # Safety
/// `src..src + len` must be readable for the whole call (its contents may change meanwhile).
unsafe fn snapshot(src: *const u8, len: usize) -> Vec<u8> {
    // SAFETY: every address read lies in the range the caller vouches for.
    (0..len)
        .map(|i| unsafe { std::ptr::read_volatile(src.add(i)) })
        .collect()
}

/// Checks the canaries, prefix and padding of a guarded root.
fn check_guard(root: &GstAlignedMemory) -> Vec<GuardViolation> {
    let Backing::Owned { guard: Some(g), .. } = &root.backing else {
        return Vec::new();
    };
    let (offset, size, maxsize) = (root.mem.offset, root.mem.size, root.mem.maxsize);
    let base = root.data.as_ptr();
    // The prefix still outside the valid data, and the padding still after it.
    let prefix_end = g.prefix.min(offset).min(maxsize);
    let pad_start = g.end.max(offset.saturating_add(size)).min(maxsize);
    // SAFETY: a guarded block's storage holds CANARY bytes before and after its region
    // (`alloc_guarded`), and the region itself; the root is alive. Each range below lies in
    // them. The bytes are copied out with volatile reads, never borrowed: another thread (or
    // C code) may be writing them, and a reference to memory being written is undefined
    // behaviour whatever the element type.
    let (front, prefix, padding, back) = unsafe {
        (
            snapshot(base.sub(CANARY), CANARY),
            snapshot(base, prefix_end),
            snapshot(base.add(pad_start), maxsize - pad_start),
            snapshot(base.add(maxsize), CANARY),
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
    if let Some(r) = damaged(&front, CANARY_BYTE) {
        push("before the region", r, -(CANARY as isize));
    }
    if let Some(r) = damaged(&prefix, g.prefix_fill) {
        push("prefix", r, 0);
    }
    if let Some(r) = damaged(&padding, g.padding_fill) {
        push("padding", r, pad_start as isize);
    }
    if let Some(r) = damaged(&back, CANARY_BYTE) {
        push("after maxsize", r, maxsize as isize);
    }
    out
}

/// Logs, counts and records violations of `root` (once per block), naming `element` when
/// known; aborts under `MEMKIT_GUARD=abort`. Returns whether there were any.
pub(super) fn report_guard(root: &GstAlignedMemory, when: &str, element: Option<&str>) -> bool {
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
    // Found at an unmap or a free: with the tracer, the element running on this thread (the
    // one that released its write mapping, when found there).
    let running = (element.is_none() && attribution::active()).then(attribution::current_name);
    let element = element.or(running.as_deref());
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
pub(super) unsafe fn root_of<'a>(mem: *const GstAlignedMemory) -> &'a GstAlignedMemory {
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
pub(super) fn alloc_guarded(
    block: &BlockLayout,
    flags: ffi::GstMemoryFlags,
) -> Result<Box<GstAlignedMemory>, AllocError> {
    GUARDED_EVER.store(true, Ordering::Relaxed);
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
        next: None,
        slot: crate::allocator::aligned::cache::NO_SLOT,
        maps: AtomicU64::new(0),
    }))
}

/// A block of protect mode (see `protect`): its own region (zeros where `flags` promise
/// them). `None` when the system or the registry refuses one (the caller then allocates an
/// ordinary block).
pub(super) fn alloc_protected(
    block: &BlockLayout,
    flags: ffi::GstMemoryFlags,
) -> Option<NonNull<GstAlignedMemory>> {
    super::fault::install();
    let p = super::protect::Protect::new(block, flags)?;
    mark_guarded();
    let boxed = Box::new(GstAlignedMemory {
        // SAFETY: zeroed GstMemory, initialised by `init_memory`.
        mem: unsafe { std::mem::zeroed() },
        data: p.data,
        maps: AtomicU64::new(0),
        slot: crate::allocator::aligned::cache::NO_SLOT,
        backing: Backing::Protected(p),
        next: None,
    });
    // SAFETY: Box::into_raw never returns NULL.
    Some(unsafe { NonNull::new_unchecked(Box::into_raw(boxed)) })
}
