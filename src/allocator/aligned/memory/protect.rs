// SPDX-License-Identifier: MPL-2.0
//! Protect mode: every block gets its own mapping (a region) between two inaccessible guard
//! pages, placed so that the region ends as close to the second guard page as the alignment
//! allows, and the pages' protection follows the mappings alive, whichever thread holds them:
//! none without a mapping, read-only while only `GST_MAP_READ` mappings are alive, read-write
//! while a `GST_MAP_WRITE` one is. memkit's own accesses (a copy from or into the block) count
//! like mappings while they last: every protection change is the union of all of them.
//!
//! A freed block stays inaccessible in quarantine until [`regions::QUARANTINE_BYTES`] of later frees
//! have passed (or a quarter of the blocks protect mode may keep); then its region, still
//! inaccessible, is kept for reuse ([`regions::CACHE_BYTES`] of regions, by size class) instead of
//! being unmapped: a new block of the class takes it, and only its protection changes. New
//! regions are mapped several at a time. A SIGSEGV/SIGBUS handler ([`fault`]) reports an
//! access to a block (live, in quarantine or kept for reuse) at the faulting instruction.
//!
//! The fault handler reads only the registry (`registry.rs`: atomics, no lock, no allocation).
//! Before a region is reused or unmapped, its entry is released there, which waits for any
//! handler still at work on it (`registry::release`).

use std::ops::Range;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use rustix::mm::{self, MprotectFlags};

use super::regions::{self, Region, class_of, page, take_region};
use super::registry::{
    self, GUARD_OPENED, OVERRAN_AFTER, OVERRAN_BEFORE, PAGES_OPENED, REGISTRY, SLACK_BYTE,
};
pub(super) use super::registry::{ProtectMode, protect_mode};
use super::report::{self, Kind};
use crate::allocator::layout::{self, BlockLayout};
use crate::attribution::published;

/// A memory flag of ours (above `GST_MEMORY_FLAG_LAST`, free for allocators): the memory is a
/// protected block or a share of one.
pub(super) const PROTECTED_FLAG: u32 = gst::ffi::GST_MEMORY_FLAG_LAST << 2;

static UNPROTECTED: AtomicUsize = AtomicUsize::new(0);

/// Sets the protect mode of blocks allocated from now on.
pub fn set_protect_mode(mode: ProtectMode) {
    if mode != ProtectMode::Off {
        // The fault handler names the elements running (with the tracer on).
        published::enable(registry::thread_id);
    }
    registry::set_mode(mode);
    set_special(PROTECT_BIT, mode != ProtectMode::Off);
}

/// Guard mode (set by `guard`) or protect mode is on, one bit each: allocations take the
/// general path, with one load on the fast path for both.
static SPECIAL: AtomicU8 = AtomicU8::new(0);
pub(super) const GUARD_BIT: u8 = 1;
const PROTECT_BIT: u8 = 2;

/// Sets or clears `bit` of [`special_mode`].
pub(super) fn set_special(bit: u8, on: bool) {
    if on {
        SPECIAL.fetch_or(bit, Ordering::Relaxed);
    } else {
        SPECIAL.fetch_and(!bit, Ordering::Relaxed);
    }
}

/// Whether new blocks need the general path (guard or protect mode).
#[inline(always)]
pub(super) fn special_mode() -> bool {
    SPECIAL.load(Ordering::Relaxed) != 0
}

/// Blocks allocated unprotected in protect mode: every registry entry was taken (the budget
/// of mappings, 65,536 at most, even after unmapping the regions kept for
/// reuse), or the system refused a new mapping.
pub fn unprotected() -> usize {
    UNPROTECTED.load(Ordering::Relaxed)
}

/// This thread did something with a protected block (an allocation, a map, an unmap, a copy,
/// a free): its next fault is a new violation even at the same address by the same
/// instruction (see `registry::same_fault_again`).
fn own_operation() {
    thread_local! {
        static TID: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
    }
    let tid = TID.with(|t| {
        if t.get() == 0 {
            t.set(registry::thread_id());
        }
        t.get()
    });
    registry::forget_last_fault(tid);
}

/// What a block's pages still need the first time they open: the slack filled, and the
/// prefix and padding zeroed where the flags promise zeros (a region used before holds an
/// earlier block's bytes).
struct Init {
    /// Addresses to fill with [`SLACK_BYTE`].
    fill: [Range<usize>; 2],
    /// Region offsets to zero.
    zero: [Range<usize>; 2],
}

/// A protected block's state behind its lock.
struct State {
    /// memkit's own accesses in progress (a copy from or into the block), counted like
    /// mappings.
    own_readers: u32,
    own_writers: u32,
    /// The pages' protection as last set here.
    prot: MprotectFlags,
    /// Work left for the first opening of the pages.
    init: Option<Init>,
}

/// A protected block's region and protection.
pub(super) struct Protect {
    region: Region,
    /// The block's pages: at the end of the region's usable pages.
    pages: usize,
    pages_len: usize,
    /// The region base.
    pub(super) data: NonNull<u8>,
    maxsize: usize,
    /// Serialises a change of the counts with the `mprotect` that follows it.
    state: Mutex<State>,
}

// SAFETY: the pointers are to our own mapping; every change goes through `state` and atomics.
unsafe impl Send for Protect {}
// SAFETY: as above.
unsafe impl Sync for Protect {}

impl Protect {
    /// A new protected block for `block` (`flags`: its memory flags), inaccessible until
    /// mapped; `None` when the system refuses the mapping or the registry is full (the caller
    /// then allocates an ordinary block).
    pub(super) fn new(
        block: &BlockLayout,
        flags: gst::ffi::GstMemoryFlags,
    ) -> Option<Box<Protect>> {
        let page = page();
        let maxsize = block.maxsize.max(1);
        // Room below the region for aligning its payload: with an alignment up to a page the
        // page end is aligned too, so exactly what aligning `maxsize - prefix` adds (often 0:
        // then a region of whole pages starts right after the first guard page); beyond a
        // page, the worst case.
        let extra = if block.align_mask < page {
            maxsize.saturating_sub(block.prefix).wrapping_neg() & block.align_mask
        } else {
            block.align_mask
        };
        let need = layout::round_up(maxsize.checked_add(extra)?, page - 1)?;
        own_operation();
        let Some(mut region) = take_region(class_of(need / page)) else {
            UNPROTECTED.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let usable_end = region.pages_end();
        // The region's end as close to the last guard page as the payload's alignment allows
        // (the payload, `prefix` bytes into the region, is what is aligned).
        let payload = (usable_end - maxsize + block.prefix) & !block.align_mask;
        let data = payload - block.prefix;
        let end = data + block.maxsize;
        // The block's pages: the ones the region touches. With an alignment up to a page they
        // end at the last guard page; beyond a page the pages around them stay inaccessible
        // like a guard page, so that the slack filled and checked is under a page on each
        // side, whatever the alignment.
        let pages = data & !(page - 1);
        let pages_end = layout::round_up(data + maxsize, page - 1)?;
        let pages_len = pages_end - pages;
        let mut zero = [0..0, 0..0];
        if region.used {
            if flags & gst::ffi::GST_MEMORY_FLAG_ZERO_PREFIXED != 0 {
                zero[0] = block.prefix_range();
            }
            if flags & gst::ffi::GST_MEMORY_FLAG_ZERO_PADDED != 0 {
                zero[1] = block.padding_range();
            }
        }
        // The last fill counts for pages ending where ours end (see `slack_to_fill`).
        let filled = region
            .filled
            .filter(|&(_, _, e)| layout::round_up(e, page - 1) == Some(pages_end));
        let fill = regions::slack_to_fill(filled, pages, data, end, pages_end);
        let init = (fill.iter().chain(&zero).any(|r| !r.is_empty())).then_some(Init { fill, zero });
        region.used = true;
        let slot = region.slot;
        let r = &REGISTRY;
        registry::registering(slot);
        r.map_start[slot].store(region.start, Ordering::Relaxed);
        r.pages_start[slot].store(pages, Ordering::Relaxed);
        r.pages_end[slot].store(pages_end, Ordering::Relaxed);
        r.data[slot].store(data, Ordering::Relaxed);
        r.maxsize[slot].store(block.maxsize, Ordering::Relaxed);
        r.offset[slot].store(block.prefix, Ordering::Relaxed);
        r.size[slot].store(block.size, Ordering::Relaxed);
        r.mapper[slot].store(published::NO_SLOT, Ordering::Relaxed);
        r.readers[slot].store(0, Ordering::Relaxed);
        r.writers[slot].store(0, Ordering::Relaxed);
        r.freed[slot].store(0, Ordering::Relaxed);
        r.opened[slot].store(0, Ordering::Relaxed);
        r.slack_reported[slot].store(0, Ordering::Relaxed);
        r.map_end[slot].store(region.start + region.len, Ordering::SeqCst);
        registry::released();
        Some(Box::new(Protect {
            region,
            pages,
            pages_len,
            // SAFETY: inside the mapping, so non-null.
            data: unsafe { NonNull::new_unchecked(data as *mut u8) },
            maxsize: block.maxsize,
            state: Mutex::new(State {
                own_readers: 0,
                own_writers: 0,
                prot: MprotectFlags::empty(),
                init,
            }),
        }))
    }

    fn slot(&self) -> usize {
        self.region.slot
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the block's pages to `flags` (the lock held); whether the system did.
    fn protect(&self, st: &mut State, flags: MprotectFlags) -> bool {
        if st.prot == flags {
            return true;
        }
        // SAFETY: the pages are our own mapping; only their protection changes.
        let ok = unsafe { mm::mprotect(self.pages as *mut _, self.pages_len, flags) }.is_ok();
        if ok {
            st.prot = flags;
        } else {
            regions::REFUSED.store(true, Ordering::Relaxed);
        }
        ok
    }

    /// Sets the pages' protection to the union of the mappings and memkit's own accesses
    /// alive (the lock held), after closing what continue mode opened at a violation and
    /// doing what the first opening must; whether the system did.
    fn apply(&self, st: &mut State) -> bool {
        let r = &REGISTRY;
        let slot = self.slot();
        if r.opened[slot].fetch_and(!GUARD_OPENED, Ordering::AcqRel) & GUARD_OPENED != 0 {
            self.close_outside_pages();
            // The handler opened the pages too.
            st.prot = MprotectFlags::READ | MprotectFlags::WRITE;
        }
        let writers = r.writers[slot].load(Ordering::Relaxed) + st.own_writers;
        let readers = r.readers[slot].load(Ordering::Relaxed) + st.own_readers;
        let want = if writers > 0 {
            MprotectFlags::READ | MprotectFlags::WRITE
        } else if readers > 0 {
            MprotectFlags::READ
        } else {
            MprotectFlags::empty()
        };
        if !want.is_empty() && st.init.is_some() {
            if !self.protect(st, MprotectFlags::READ | MprotectFlags::WRITE) {
                return false;
            }
            if let Some(init) = st.init.take() {
                self.initialise(&init);
            }
        }
        self.protect(st, want)
    }

    /// Closes the region but the block's pages: its guard pages and unused pages, which
    /// continue mode opened at a violation.
    fn close_outside_pages(&self) {
        let start = self.region.start;
        let end = start + self.region.len;
        let pages_end = self.pages + self.pages_len;
        for (from, to) in [(start, self.pages), (pages_end, end)] {
            // SAFETY: a part of our own mapping; only its protection changes.
            let _ = unsafe { mm::mprotect(from as *mut _, to - from, MprotectFlags::empty()) };
        }
    }

    /// The first opening's work (the pages writable, the lock held).
    fn initialise(&self, init: &Init) {
        let data = self.data.as_ptr() as usize;
        // SAFETY: the ranges lie in our pages, which are writable; no mapping of the block
        // has been handed out before this.
        unsafe {
            for f in &init.fill {
                ptr::write_bytes(f.start as *mut u8, SLACK_BYTE, f.len());
            }
            for z in &init.zero {
                ptr::write_bytes((data + z.start) as *mut u8, 0, z.len());
            }
        }
    }

    /// A mapping of the block begins (`write`: with `GST_MAP_WRITE`). `false` when the pages
    /// cannot be opened for it (the system refused the protection change): the map fails.
    pub(super) fn map(&self, write: bool) -> bool {
        own_operation();
        let mut st = self.lock();
        let r = &REGISTRY;
        let slot = self.slot();
        r.mapper[slot].store(
            crate::attribution::charge::current_slot(),
            Ordering::Relaxed,
        );
        let count = if write { &r.writers } else { &r.readers };
        count[slot].fetch_add(1, Ordering::Relaxed);
        if self.apply(&mut st) {
            return true;
        }
        let _ =
            count[slot].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        let _ = self.apply(&mut st);
        false
    }

    /// A mapping of the block ends. When it is the last WRITE mapping (the pages are still
    /// writable), the slack is checked: a write there went unnoticed by the guard pages.
    pub(super) fn unmap(&self, write: bool) {
        own_operation();
        let mut st = self.lock();
        let r = &REGISTRY;
        let slot = self.slot();
        if write
            && r.writers[slot].load(Ordering::Relaxed) == 1
            && st.own_writers == 0
            && st.init.is_none()
            && st.prot.contains(MprotectFlags::WRITE)
        {
            self.check_slack("when its last WRITE mapping ended");
        }
        let count = if write { &r.writers } else { &r.readers };
        let _ =
            count[slot].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        let _ = self.apply(&mut st);
    }

    /// Runs `f` with the pages accessible (`write`: writable too), memkit's own access (a
    /// copy from or into the block), counted like a mapping meanwhile. `None` (and `f` not
    /// run) when the system refuses to open them.
    pub(super) fn with_access<R>(&self, write: bool, f: impl FnOnce() -> R) -> Option<R> {
        own_operation();
        let mut st = self.lock();
        let own = |st: &mut State, up: bool| {
            let n = if write {
                &mut st.own_writers
            } else {
                &mut st.own_readers
            };
            *n = if up { *n + 1 } else { n.saturating_sub(1) };
        };
        own(&mut st, true);
        if !self.apply(&mut st) {
            own(&mut st, false);
            let _ = self.apply(&mut st);
            return None;
        }
        let out = f();
        own(&mut st, false);
        let _ = self.apply(&mut st);
        Some(out)
    }

    /// Reports damage to the slack, and restores it (the pages writable, the lock held). The
    /// bytes are read with volatile reads: another thread may be writing them (that is what
    /// this looks for), and a reference to bytes being written is undefined behaviour.
    fn check_slack(&self, when: &str) {
        let r = &REGISTRY;
        let slot = self.slot();
        let opened = r.opened[slot].fetch_and(
            !(PAGES_OPENED | OVERRAN_AFTER | OVERRAN_BEFORE),
            Ordering::AcqRel,
        );
        // A write to the slack already reported at the instruction (continue mode): not
        // reported again (an access writes at most 64 bytes).
        let reported = r.slack_reported[slot].swap(0, Ordering::Relaxed);
        let known = |a: usize| reported != 0 && a >= reported && a < reported + 64;
        let data = self.data.as_ptr() as usize;
        let end = data + self.maxsize;
        let pages_end = self.pages + self.pages_len;
        for (from, to, kind) in [
            (self.pages, data, Kind::BeforeBlock),
            (end, pages_end, Kind::PastMaxsize),
        ] {
            // SAFETY: inside our pages, accessible per the caller's contract.
            let damaged = unsafe { damaged_bytes(from, to) };
            let Some((first, last)) = damaged else {
                continue;
            };
            // An overrun reported at the guard page (or the unused pages) beyond this side,
            // whose damage reaches the edge it crossed: the same violation.
            let crossed = if kind == Kind::BeforeBlock {
                opened & OVERRAN_BEFORE != 0 && first == from
            } else {
                opened & OVERRAN_AFTER != 0 && last + 1 == to
            };
            // The damaged byte nearest the region (the write that went furthest astray
            // reports last, the one just outside first), not counting one already reported.
            let nearest = if kind == Kind::BeforeBlock {
                // SAFETY: as above.
                (first..=last)
                    .rev()
                    .find(|&a| !known(a) && unsafe { damaged_at(a) })
            } else {
                // SAFETY: as above.
                (first..=last).find(|&a| !known(a) && unsafe { damaged_at(a) })
            };
            if let Some(a) = nearest.filter(|_| !crossed) {
                report::report_slack(kind, a, slot, when);
            }
            // Restored, so that each damage is reported once (continue mode).
            for a in first..=last {
                // SAFETY: the slack of our pages, writable per the caller's contract.
                unsafe { ptr::write_volatile(a as *mut u8, SLACK_BYTE) };
            }
        }
    }
}

/// Whether the byte at `a` differs from [`SLACK_BYTE`] (a volatile read).
///
/// # Safety
/// `a` must be readable.
unsafe fn damaged_at(a: usize) -> bool {
    // SAFETY: per the contract.
    unsafe { ptr::read_volatile(a as *const u8) != SLACK_BYTE }
}

/// The first and last address in `[from, to)` whose byte differs from [`SLACK_BYTE`], read
/// with volatile reads (eight bytes at a time where aligned and intact).
///
/// # Safety
/// `[from, to)` must be readable.
unsafe fn damaged_bytes(from: usize, to: usize) -> Option<(usize, usize)> {
    const WORD: u64 = u64::from_ne_bytes([SLACK_BYTE; 8]);
    let (mut first, mut last) = (None, 0);
    let mut a = from;
    while a < to {
        // SAFETY: per the contract: every address read lies in [from, to).
        if a.is_multiple_of(8)
            && a + 8 <= to
            && unsafe { ptr::read_volatile(a as *const u64) } == WORD
        {
            a += 8;
            continue;
        }
        // SAFETY: as above.
        if unsafe { damaged_at(a) } {
            first.get_or_insert(a);
            last = a;
        }
        a += 1;
    }
    first.map(|f| (f, last))
}

impl Drop for Protect {
    /// The block is freed: its slack checked, then inaccessible, in quarantine; the oldest
    /// regions past the bound are kept for reuse (still known to the handler as freed) or
    /// unmapped.
    fn drop(&mut self) {
        own_operation();
        let r = &REGISTRY;
        let slot = self.slot();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // The slack can have changed unseen only while the pages were writable: a WRITE
        // mapping alive at the free, or pages continue mode opened at a violation (the end
        // of every other WRITE mapping checked it already).
        let unseen = r.writers[slot].load(Ordering::Relaxed) > 0
            || r.opened[slot].load(Ordering::Acquire) & PAGES_OPENED != 0;
        let mut checked = true;
        if unseen && st.init.is_none() {
            checked = self.protect(&mut st, MprotectFlags::READ | MprotectFlags::WRITE);
            if checked {
                self.check_slack("when it was freed");
            }
        }
        if r.opened[slot].swap(0, Ordering::AcqRel) & GUARD_OPENED != 0 {
            self.close_outside_pages();
            st.prot = MprotectFlags::READ | MprotectFlags::WRITE;
        }
        let mut region = self.region;
        // Still accessible if the system refused: never reused, unmapped when it leaves the
        // quarantine.
        region.open = !self.protect(&mut st, MprotectFlags::empty());
        r.freed[slot].store(1, Ordering::Release);
        // The slack as the last fill left it, unless it changed unchecked.
        if st.init.is_none() {
            let data = self.data.as_ptr() as usize;
            region.filled = checked.then_some((self.pages, data, data + self.maxsize));
        }
        drop(st);
        regions::quarantine(region);
    }
}
