// SPDX-License-Identifier: MPL-2.0
//! Protect mode: every block gets its own mapping between two inaccessible guard pages, placed
//! so that the region ends as close to the second guard page as the alignment allows, and the
//! pages' protection follows the mappings alive: none without a mapping, read-only while only
//! `GST_MAP_READ` mappings are alive, read-write while a `GST_MAP_WRITE` one is. A freed block
//! stays inaccessible in quarantine until [`QUARANTINE_BYTES`] of later frees have passed. A
//! SIGSEGV/SIGBUS handler ([`fault`]) reports an access to a block at the faulting instruction.
//!
//! The fault handler reads only the registry (`registry.rs`: atomics, no lock, no allocation).

use std::collections::VecDeque;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use rustix::mm::{self, MapFlags, MprotectFlags, ProtFlags};

use super::fault::{self, Kind};
use super::registry::{self, GUARD_OPENED, MAX_BLOCKS, PAGES_OPENED, REGISTRY, SLACK_BYTE};
pub(super) use super::registry::{ProtectMode, protect_mode};
use crate::allocator::layout::{self, BlockLayout};
use crate::attribution::published;

/// Bytes of freed blocks kept inaccessible before the oldest is unmapped.
pub const QUARANTINE_BYTES: usize = 64 << 20;
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

/// Blocks allocated unprotected in protect mode because [`MAX_BLOCKS`] were known already.
pub fn unprotected() -> usize {
    UNPROTECTED.load(Ordering::Relaxed)
}

fn page() -> usize {
    rustix::param::page_size()
}

/// How many protected blocks (live or in quarantine) may exist at once. Each takes three of
/// the process's memory mappings (two guard pages and the pages between, which protection
/// changes split), and the kernel allows `vm.max_map_count` of them (65,530 by default): a
/// third of what that leaves after 16,384 for everything else, [`MAX_BLOCKS`] at most. Past
/// the budget, blocks are allocated unprotected.
fn budget() -> usize {
    let max_maps = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(65_530);
    (max_maps.saturating_sub(16_384) / 3).clamp(64, MAX_BLOCKS)
}

/// Entries not in use (their indices); taken under this lock, never by the fault handler.
static FREE_SLOTS: LazyLock<Mutex<Vec<usize>>> =
    LazyLock::new(|| Mutex::new((0..*BUDGET).rev().collect()));

/// [`budget`], read once.
static BUDGET: LazyLock<usize> = LazyLock::new(budget);

/// A freed block's mapping in quarantine: (start, length, registry slot).
type Quarantined = (usize, usize, usize);

/// Freed blocks' mappings, oldest first, and their bytes.
static QUARANTINE: LazyLock<Mutex<(VecDeque<Quarantined>, usize)>> =
    LazyLock::new(|| Mutex::new((VecDeque::new(), 0)));

/// A protected block's mapping and protection.
pub(super) struct Protect {
    map: NonNull<u8>,
    map_len: usize,
    /// The accessible pages: after the first guard page, before the last.
    pages: NonNull<u8>,
    pages_len: usize,
    /// The region base.
    pub(super) data: NonNull<u8>,
    slot: usize,
    /// Serialises a change of the counts with the `mprotect` that follows it.
    lock: Mutex<()>,
}

// SAFETY: the pointers are to our own mapping; every change goes through `lock` and atomics.
unsafe impl Send for Protect {}
// SAFETY: as above.
unsafe impl Sync for Protect {}

impl Protect {
    /// A new protected block for `block` (fresh anonymous pages: its region holds zeros),
    /// inaccessible until mapped; `None` when the system refuses the mapping or the registry
    /// is full (the caller then allocates an ordinary block).
    pub(super) fn new(block: &BlockLayout) -> Option<Box<Protect>> {
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
        let pages_len = layout::round_up(maxsize.checked_add(extra)?, page - 1)?;
        let map_len = pages_len.checked_add(2 * page)?;
        let slot = match FREE_SLOTS.lock() {
            Ok(mut free) => free.pop(),
            Err(_) => None,
        };
        let Some(slot) = slot else {
            UNPROTECTED.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        // SAFETY: a new anonymous mapping at an address of the kernel's choosing touches no
        // existing memory. Writable until its slack is filled, below.
        let map = unsafe {
            mm::mmap_anonymous(
                ptr::null_mut(),
                map_len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        };
        let Ok(map) = map else {
            if let Ok(mut free) = FREE_SLOTS.lock() {
                free.push(slot);
            }
            return None;
        };
        let map = NonNull::new(map.cast::<u8>())?;
        let start = map.as_ptr() as usize;
        let pages = start + page;
        // The region's end as close to the last guard page as the payload's alignment allows
        // (the payload, `prefix` bytes into the region, is what is aligned).
        let payload = (pages + pages_len - maxsize + block.prefix) & !block.align_mask;
        let data = payload - block.prefix;
        let slack_after = pages + pages_len - (data + block.maxsize);
        // SAFETY: both ranges are inside our new, writable mapping: before the region and
        // after it, within the pages.
        unsafe {
            ptr::write_bytes(pages as *mut u8, SLACK_BYTE, data - pages);
            ptr::write_bytes((data + block.maxsize) as *mut u8, SLACK_BYTE, slack_after);
        }
        // SAFETY: our own new mapping; nothing else knows it yet.
        if unsafe { mm::mprotect(map.as_ptr().cast(), map_len, MprotectFlags::empty()) }.is_err() {
            // SAFETY: as above.
            let _ = unsafe { mm::munmap(map.as_ptr().cast(), map_len) };
            if let Ok(mut free) = FREE_SLOTS.lock() {
                free.push(slot);
            }
            return None;
        }
        let r = &REGISTRY;
        r.map_start[slot].store(start, Ordering::Relaxed);
        r.data[slot].store(data, Ordering::Relaxed);
        r.maxsize[slot].store(block.maxsize, Ordering::Relaxed);
        r.offset[slot].store(block.prefix, Ordering::Relaxed);
        r.size[slot].store(block.size, Ordering::Relaxed);
        r.mapper[slot].store(published::NO_SLOT, Ordering::Relaxed);
        r.readers[slot].store(0, Ordering::Relaxed);
        r.writers[slot].store(0, Ordering::Relaxed);
        r.freed[slot].store(0, Ordering::Relaxed);
        r.opened[slot].store(0, Ordering::Relaxed);
        r.map_end[slot].store(start + map_len, Ordering::Release);
        Some(Box::new(Protect {
            map,
            map_len,
            // SAFETY: inside the mapping, so non-null.
            pages: unsafe { NonNull::new_unchecked(pages as *mut u8) },
            pages_len,
            // SAFETY: inside the mapping, so non-null.
            data: unsafe { NonNull::new_unchecked(data as *mut u8) },
            slot,
            lock: Mutex::new(()),
        }))
    }

    /// Sets the pages' protection from the counts (the lock held); whether the system did.
    fn apply(&self) -> bool {
        self.close_opened_guards();
        let r = &REGISTRY;
        let flags = if r.writers[self.slot].load(Ordering::Relaxed) > 0 {
            MprotectFlags::READ | MprotectFlags::WRITE
        } else if r.readers[self.slot].load(Ordering::Relaxed) > 0 {
            MprotectFlags::READ
        } else {
            MprotectFlags::empty()
        };
        // SAFETY: the pages are our own mapping; only their protection changes.
        unsafe { mm::mprotect(self.pages.as_ptr().cast(), self.pages_len, flags) }.is_ok()
    }

    /// Closes the guard pages continue mode opened at a violation, if it did.
    fn close_opened_guards(&self) {
        let r = &REGISTRY;
        if r.opened[self.slot].fetch_and(!GUARD_OPENED, Ordering::AcqRel) & GUARD_OPENED != 0 {
            let page = page();
            for guard in [
                self.map.as_ptr(),
                self.pages.as_ptr().wrapping_add(self.pages_len),
            ] {
                // SAFETY: a guard page of our own mapping, closed again (continue mode
                // opened it at a violation).
                let _ = unsafe { mm::mprotect(guard.cast(), page, MprotectFlags::empty()) };
            }
        }
    }

    /// A mapping of the block begins (`write`: with `GST_MAP_WRITE`). `false` when the pages
    /// cannot be opened for it (the system refused the protection change): the map fails.
    pub(super) fn map(&self, write: bool) -> bool {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let r = &REGISTRY;
        r.mapper[self.slot].store(
            crate::attribution::charge::current_slot(),
            Ordering::Relaxed,
        );
        let count = if write { &r.writers } else { &r.readers };
        count[self.slot].fetch_add(1, Ordering::Relaxed);
        if self.apply() {
            return true;
        }
        let _ = count[self.slot]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        false
    }

    /// A mapping of the block ends. When it is the last WRITE mapping (the pages are still
    /// writable), the slack is checked: a write there went unnoticed by the guard pages.
    pub(super) fn unmap(&self, write: bool) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let r = &REGISTRY;
        if write && r.writers[self.slot].load(Ordering::Relaxed) == 1 {
            self.check_slack("when its last WRITE mapping ended");
        }
        let count = if write { &r.writers } else { &r.readers };
        let _ = count[self.slot]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        let _ = self.apply();
    }

    /// Runs `f` with the pages accessible (`write`: writable too), memkit's own access (a
    /// copy from or into the block): then the protection the mappings ask for again. `None`
    /// (and `f` not run) when the system refuses to open them.
    pub(super) fn with_access<R>(&self, write: bool, f: impl FnOnce() -> R) -> Option<R> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let flags = if write {
            MprotectFlags::READ | MprotectFlags::WRITE
        } else {
            MprotectFlags::READ
        };
        // SAFETY: the pages are our own mapping; only their protection changes.
        unsafe { mm::mprotect(self.pages.as_ptr().cast(), self.pages_len, flags) }.ok()?;
        let out = f();
        let _ = self.apply();
        Some(out)
    }

    /// Reports damage to the slack, and restores it (the pages must be writable: the last
    /// WRITE mapping is alive, or [`Protect::with_open`] runs this).
    fn check_slack(&self, when: &str) {
        let pages = self.pages.as_ptr() as usize;
        let data = self.data.as_ptr() as usize;
        let end = data + REGISTRY.maxsize[self.slot].load(Ordering::Relaxed);
        let pages_end = pages + self.pages_len;
        for (from, to, kind) in [
            (pages, data, Kind::BeforeBlock),
            (end, pages_end, Kind::PastMaxsize),
        ] {
            // SAFETY: inside our pages, accessible per the caller's contract; nothing else may
            // write the slack (a write there is what this looks for).
            let slack = unsafe { std::slice::from_raw_parts(from as *const u8, to - from) };
            // The damaged byte nearest the region: the write that went furthest astray
            // reports last, the one just outside first.
            let damaged = if kind == Kind::BeforeBlock {
                slack.iter().rposition(|&b| b != SLACK_BYTE)
            } else {
                slack.iter().position(|&b| b != SLACK_BYTE)
            };
            if let Some(i) = damaged {
                fault::report_slack(kind, from + i, self.slot, when);
                // Restored, so that each damage is reported once (continue mode).
                // SAFETY: the slack of our pages, writable per the caller's contract.
                unsafe { ptr::write_bytes(from as *mut u8, SLACK_BYTE, to - from) };
            }
        }
    }

    /// Runs `f` with the pages writable, then the protection the mappings ask for (the lock
    /// held by the caller).
    fn with_open<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        // SAFETY: the pages are our own mapping; only their protection changes.
        unsafe {
            mm::mprotect(
                self.pages.as_ptr().cast(),
                self.pages_len,
                MprotectFlags::READ | MprotectFlags::WRITE,
            )
        }
        .ok()?;
        let out = f();
        let _ = self.apply();
        Some(out)
    }
}

impl Drop for Protect {
    /// The block is freed: its slack checked, then inaccessible, in quarantine; the oldest
    /// blocks past the bound are unmapped and forgotten.
    fn drop(&mut self) {
        // The slack can have changed unseen only while the pages were writable: a WRITE
        // mapping alive at the free, or pages continue mode opened at a violation (the end
        // of every other WRITE mapping checked it already).
        let r = &REGISTRY;
        if r.writers[self.slot].load(Ordering::Relaxed) > 0
            || r.opened[self.slot].load(Ordering::Acquire) & PAGES_OPENED != 0
        {
            let _ = self.with_open(|| self.check_slack("when it was freed"));
        }
        self.close_opened_guards();
        // SAFETY: the pages are our own mapping; only their protection changes.
        let _ = unsafe {
            mm::mprotect(
                self.pages.as_ptr().cast(),
                self.pages_len,
                MprotectFlags::empty(),
            )
        };
        REGISTRY.freed[self.slot].store(1, Ordering::Release);
        let evicted: Vec<(usize, usize, usize)> = {
            let mut q = QUARANTINE.lock().unwrap_or_else(|e| e.into_inner());
            q.0.push_back((self.map.as_ptr() as usize, self.map_len, self.slot));
            q.1 += self.map_len;
            let mut out = Vec::new();
            // Bytes, and a quarter of the blocks' budget: new blocks keep room.
            let max_blocks = (*BUDGET / 4).max(1);
            while q.1 > QUARANTINE_BYTES || q.0.len() > max_blocks {
                let Some(old) = q.0.pop_front() else { break };
                q.1 -= old.1;
                out.push(old);
            }
            out
        };
        for (start, len, slot) in evicted {
            // Forgotten by the handler before the pages go.
            REGISTRY.map_end[slot].store(0, Ordering::Release);
            // SAFETY: a mapping of ours that nothing references any more (its block was
            // freed a quarantine ago).
            let _ = unsafe { mm::munmap(start as *mut _, len) };
            if let Ok(mut free) = FREE_SLOTS.lock() {
                free.push(slot);
            }
        }
    }
}
