// SPDX-License-Identifier: MPL-2.0
//! Protect mode's regions: the mappings protected blocks live in, their registry entries, the
//! quarantine of freed blocks and the regions kept for reuse by size class.
//!
//! A region is a mapping with a guard page at each end and its own registry entry; the
//! pages between are inaccessible except the ones a block uses, at their end. Regions are
//! mapped several at a time (one `mmap` for a batch of a class). A freed block's region stays
//! in quarantine, inaccessible and known to the fault handler as freed, until
//! [`QUARANTINE_BYTES`] of later frees have passed; the oldest then leave it in a batch and
//! are kept for reuse (still known as freed) while [`CACHE_BYTES`] allow, or unmapped. Before
//! a region is reused or unmapped, its entry is released (`registry::release`, which waits
//! for any fault handler still at work on it).

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, TryLockError};

use rustix::mm::{self, MapFlags, MprotectFlags, ProtFlags};

use super::registry::{self, MAX_BLOCKS, REGISTRY};

/// Bytes of freed blocks kept inaccessible (and not reused) before the oldest are evicted.
pub const QUARANTINE_BYTES: usize = 64 << 20;
/// Bytes of evicted regions kept mapped (inaccessible) for reuse; past them, regions are
/// unmapped.
pub const CACHE_BYTES: usize = 64 << 20;
/// Regions of one class mapped at once, at most this many bytes (and 16 regions).
const BATCH_BYTES: usize = 1 << 20;

/// The system's page size.
pub(super) fn page() -> usize {
    rustix::param::page_size()
}

/// How many protected blocks (live, in quarantine or kept for reuse) may exist at once. Each
/// takes up to three of the process's memory mappings (the guard pages and the pages
/// between, which protection changes split), and the kernel allows `vm.max_map_count` of them
/// (65,530 by default): a third of what that leaves after 16,384 for everything else,
/// [`MAX_BLOCKS`] at most. Past the budget, blocks are allocated unprotected.
fn budget() -> usize {
    (MAX_MAPS.saturating_sub(16_384) / 3).clamp(64, MAX_BLOCKS)
}

/// `vm.max_map_count`, read once.
static MAX_MAPS: LazyLock<usize> = LazyLock::new(|| {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(65_530)
});

/// Memory mappings kept free for everything else the process does between two counts of its
/// mappings (and for the blocks counted as closed that open meanwhile).
fn maps_reserve() -> usize {
    (*MAX_MAPS / 64).max(256)
}

/// A protection change or mapping was refused: the mappings are counted again at the next
/// allocation.
pub(super) static REFUSED: AtomicBool = AtomicBool::new(false);

/// The mappings of the rest of the process at the last count of `/proc/self/maps` (at most:
/// the count less two for each protected block whose pages were open, each a mapping of its
/// own that splits its region's), and when the next count is due (monotonic nanoseconds).
static OTHERS: AtomicUsize = AtomicUsize::new(0);
static NEXT_COUNT_NS: AtomicU64 = AtomicU64::new(0);
/// Held by the thread counting (the others go on with the last count).
static COUNTING: Mutex<()> = Mutex::new(());

/// Counts the lines of `/proc/self/maps` (`None` if it cannot be read).
fn count_maps() -> Option<usize> {
    use std::io::Read;
    let mut f = std::fs::File::open("/proc/self/maps").ok()?;
    let mut buf = [0u8; 16 << 10];
    let mut n = 0;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Some(n),
            Ok(k) => n += buf[..k].iter().filter(|&&b| b == b'\n').count(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Whether a new block may be protected without bringing the process near
/// `vm.max_map_count`: the mappings of the rest of the process (counted from `/proc/self/maps`
/// at most every 10 ms, or 50 times as long as a count takes, and at the next allocation after
/// a refused change), plus the most protect mode's regions can take (three each: a block's
/// open pages split its region's mapping), the new one's included, plus [`maps_reserve`],
/// within the limit. Past it, new blocks are allocated unprotected (said once on stderr)
/// until a later count finds room: maps of the blocks already protected keep the room they
/// need. Between counts: a clock read and two atomic loads (no lock while every region the
/// budget allows would fit).
fn maps_allow() -> bool {
    let now = super::stack::now_ns();
    if now >= NEXT_COUNT_NS.load(Ordering::Relaxed) || REFUSED.load(Ordering::Relaxed) {
        let counting = match COUNTING.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        if counting.is_some() {
            REFUSED.store(false, Ordering::Relaxed);
            if let Some(maps) = count_maps() {
                let took = super::stack::now_ns().saturating_sub(now);
                OTHERS.store(
                    maps.saturating_sub(2 * registry::open_blocks()),
                    Ordering::Relaxed,
                );
                NEXT_COUNT_NS.store(now + (took * 50).max(10_000_000), Ordering::Relaxed);
            }
        }
    }
    let room = MAX_MAPS.saturating_sub(OTHERS.load(Ordering::Relaxed) + maps_reserve());
    if 3 * (*BUDGET + 1) <= room {
        return true;
    }
    let in_use = BUDGET.saturating_sub(free_slots().len());
    if 3 * (in_use + 1) <= room {
        return true;
    }
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        eprintln!(
            "memkit: protect mode is at the limit of memory mappings ({} of the process's own, \
             {in_use} regions of protect mode's, vm.max_map_count {}): new blocks are allocated \
             unprotected until there is room again",
            OTHERS.load(Ordering::Relaxed),
            *MAX_MAPS
        );
    }
    false
}

/// Entries not in use (their indices); taken under this lock, never by the fault handler.
static FREE_SLOTS: LazyLock<Mutex<Vec<usize>>> =
    LazyLock::new(|| Mutex::new((0..*BUDGET).rev().collect()));

/// [`budget`], read once.
static BUDGET: LazyLock<usize> = LazyLock::new(budget);

/// A mapping with its registry entry: `[start, start + len)`, a guard page at each end; the
/// pages between are inaccessible except the ones a block uses, at their end.
#[derive(Clone, Copy)]
pub(super) struct Region {
    pub(super) start: usize,
    pub(super) len: usize,
    pub(super) slot: usize,
    /// What its slack holds: [`registry::SLACK_BYTE`] in `[pages, data)` and `[end, pages_end)` for the
    /// `(pages, data, end)` of the block it was last filled for (`None`: unknown).
    pub(super) filled: Option<(usize, usize, usize)>,
    /// Used by a block before (a fresh mapping holds zeros).
    pub(super) used: bool,
    /// Left accessible (the system refused to close it): never reused.
    pub(super) open: bool,
}

impl Region {
    /// The end of its usable pages (the last guard page's start).
    pub(super) fn pages_end(&self) -> usize {
        self.start + self.len - page()
    }
}

/// The size class of a block needing `pages` pages: the pages of the region it gets (exact up
/// to 16, then in steps of a quarter of a power of two).
pub(super) fn class_of(pages: usize) -> usize {
    if pages <= 16 {
        return pages;
    }
    let step = 1usize << (usize::BITS - 1 - pages.leading_zeros() - 2);
    pages.div_ceil(step) * step
}

/// The slack a block at `pages`, `data`, `end` (its region's end) must fill in a region whose
/// last fill is `filled` (see [`Region::filled`]): `[pages, data)` and `[end, pages_end)` less
/// what already holds the fill byte.
pub(super) fn slack_to_fill(
    filled: Option<(usize, usize, usize)>,
    pages: usize,
    data: usize,
    end: usize,
    pages_end: usize,
) -> [Range<usize>; 2] {
    match filled {
        Some((old_pages, old_data, old_end)) if old_pages == pages => {
            [old_data.min(data)..data, end..old_end.max(end)]
        }
        _ => [pages..data, end..pages_end],
    }
}

/// Freed blocks' regions, oldest first, and regions kept for reuse, by class (pages).
#[derive(Default)]
struct Regions {
    quarantine: VecDeque<Region>,
    quarantine_bytes: usize,
    cache: HashMap<usize, Vec<Region>>,
    cache_bytes: usize,
}

static REGIONS: LazyLock<Mutex<Regions>> = LazyLock::new(Default::default);

fn regions() -> MutexGuard<'static, Regions> {
    REGIONS.lock().unwrap_or_else(|e| e.into_inner())
}

fn free_slots() -> MutexGuard<'static, Vec<usize>> {
    FREE_SLOTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes a region ours alone: forgotten by the fault handler (after any handler at work on
/// it is done), closed again if continue mode opened it. `registry::released` must follow,
/// once the region is registered for its next block or unmapped.
fn reclaim(region: &mut Region) {
    registry::release(region.slot);
    if REGISTRY.opened[region.slot].swap(0, Ordering::AcqRel) != 0 {
        // SAFETY: our own mapping, released by the handler; only its protection changes.
        let _ = unsafe { mm::mprotect(region.start as *mut _, region.len, MprotectFlags::empty()) };
        // Continue mode let an access write anywhere in it.
        region.filled = None;
    }
}

/// Unmaps regions, their entries released first.
fn unmap_regions(list: Vec<Region>) {
    for mut region in list {
        reclaim(&mut region);
        // SAFETY: a mapping of ours that nothing references any more (its block was freed a
        // quarantine ago, and no handler holds its entry).
        let _ = unsafe { mm::munmap(region.start as *mut _, region.len) };
        registry::released();
        free_slots().push(region.slot);
    }
}

/// A region of `class` pages: one kept for reuse, or a new one (with others of its class,
/// mapped together). `None` when the system refuses the mapping or no registry entry is free
/// even after unmapping the regions kept. The caller registers the region for its block and
/// then calls `registry::released` (for a new region too: one release is counted for each).
pub(super) fn take_region(class: usize) -> Option<Region> {
    if !maps_allow() {
        return None;
    }
    let page = page();
    let len = class.checked_add(2)?.checked_mul(page)?;
    let cached = {
        let mut r = regions();
        let region = r.cache.get_mut(&class).and_then(Vec::pop);
        if let Some(region) = &region {
            r.cache_bytes -= region.len;
        }
        region
    };
    if let Some(mut region) = cached {
        reclaim(&mut region);
        return Some(region);
    }
    let want = (BATCH_BYTES / len).clamp(1, 16);
    let mut slots = take_slots(want);
    if slots.is_empty() {
        // The regions kept for reuse of other classes hold entries: give some back.
        drop_cached(want);
        slots = take_slots(want);
    }
    if slots.is_empty() {
        return None;
    }
    let total = len.checked_mul(slots.len())?;
    // SAFETY: a new anonymous mapping at an address of the kernel's choosing touches no
    // existing memory; inaccessible until a block's pages open.
    let map = unsafe {
        mm::mmap_anonymous(
            ptr::null_mut(),
            total,
            ProtFlags::empty(),
            MapFlags::PRIVATE,
        )
    };
    let Ok(map) = map else {
        REFUSED.store(true, Ordering::Relaxed);
        free_slots().extend(slots);
        return None;
    };
    registry::mapped(map as usize, map as usize + total);
    let mut fresh = slots.into_iter().enumerate().map(|(i, slot)| Region {
        start: map as usize + i * len,
        len,
        slot,
        filled: None,
        used: false,
        open: false,
    });
    let first = fresh.next()?;
    // Never registered: released at once, for the caller's `released`.
    registry::release(first.slot);
    let mut r = regions();
    for region in fresh {
        r.cache_bytes += region.len;
        r.cache.entry(class).or_default().push(region);
    }
    Some(first)
}

/// Up to `n` free registry entries.
fn take_slots(n: usize) -> Vec<usize> {
    let mut free = free_slots();
    let keep = free.len().saturating_sub(n);
    free.split_off(keep)
}

/// Unmaps up to `n` of the regions kept for reuse, whatever their class.
fn drop_cached(n: usize) {
    let list: Vec<Region> = {
        let mut r = regions();
        let mut out = Vec::new();
        let classes: Vec<usize> = r.cache.keys().copied().collect();
        for class in classes {
            while out.len() < n {
                let Some(region) = r.cache.get_mut(&class).and_then(Vec::pop) else {
                    break;
                };
                r.cache_bytes -= region.len;
                out.push(region);
            }
        }
        out
    };
    unmap_regions(list);
}

/// Puts a freed block's region in quarantine, and moves the oldest past the bound on, in a
/// batch (down to seven eighths of the bound): kept for reuse while [`CACHE_BYTES`] allow,
/// unmapped otherwise (and when it could not be closed).
pub(super) fn quarantine(region: Region) {
    let unmap = {
        let mut r = regions();
        r.quarantine_bytes += region.len;
        r.quarantine.push_back(region);
        let max_blocks = (*BUDGET / 4).max(1);
        let mut unmap = Vec::new();
        if r.quarantine_bytes > QUARANTINE_BYTES || r.quarantine.len() > max_blocks {
            while r.quarantine_bytes > QUARANTINE_BYTES / 8 * 7
                || r.quarantine.len() > max_blocks / 8 * 7
            {
                let Some(old) = r.quarantine.pop_front() else {
                    break;
                };
                r.quarantine_bytes -= old.len;
                let class = old.len / page() - 2;
                if !old.open && r.cache_bytes + old.len <= CACHE_BYTES {
                    r.cache_bytes += old.len;
                    r.cache.entry(class).or_default().push(old);
                } else {
                    unmap.push(old);
                }
            }
        }
        unmap
    };
    unmap_regions(unmap);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_are_exact_to_16_pages_then_quarter_powers_of_two() {
        let classes: Vec<usize> = [1, 2, 16, 17, 20, 21, 33, 40, 41, 339]
            .iter()
            .map(|&p| class_of(p))
            .collect();
        assert_eq!(classes, [1, 2, 16, 20, 20, 24, 40, 40, 48, 384]);
        for pages in 1..5000 {
            let class = class_of(pages);
            assert!(
                class >= pages && class <= pages + pages / 4,
                "{pages} -> {class}"
            );
        }
    }

    #[test]
    fn a_reused_region_fills_only_the_slack_its_last_fill_left_out() {
        let (pages, pages_end) = (0x1000, 0x3000);
        // Never filled (or another page count): all of it.
        assert_eq!(
            slack_to_fill(None, pages, 0x1800, 0x2f00, pages_end),
            [0x1000..0x1800, 0x2f00..0x3000]
        );
        assert_eq!(
            slack_to_fill(
                Some((0x2000, 0x2800, 0x3000)),
                pages,
                0x1800,
                0x2f00,
                pages_end
            ),
            [0x1000..0x1800, 0x2f00..0x3000]
        );
        // The same block again: nothing.
        let same = slack_to_fill(
            Some((pages, 0x1800, 0x2f00)),
            pages,
            0x1800,
            0x2f00,
            pages_end,
        );
        assert!(same.iter().all(Range::is_empty));
        // A region starting later and ending earlier: what was the old region's.
        assert_eq!(
            slack_to_fill(
                Some((pages, 0x1800, 0x2f00)),
                pages,
                0x1900,
                0x2e00,
                pages_end
            ),
            [0x1800..0x1900, 0x2e00..0x2f00]
        );
        // Starting earlier and ending later: inside the old slack, nothing.
        let inside = slack_to_fill(
            Some((pages, 0x1800, 0x2f00)),
            pages,
            0x1700,
            0x2f80,
            pages_end,
        );
        assert!(inside.iter().all(Range::is_empty));
    }
}
