// SPDX-License-Identifier: MPL-2.0
//! What protect mode's fault handler reads: the mode, and one entry per protected mapping
//! (live or in quarantine). Atomics only; `protect.rs` writes them, `fault.rs` reads them.

use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::attribution::published;

/// Blocks (live or in quarantine) the fault handler can know at once; beyond that, blocks are
/// allocated unprotected (counted in [`unprotected`]).
pub const MAX_BLOCKS: usize = 1 << 16;

/// What protect mode does at a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ProtectMode {
    /// Off: blocks are allocated as usual.
    Off = 0,
    /// Report, then die of the signal as the process would have.
    Abort = 1,
    /// Report, count, make the block accessible and go on.
    Continue = 2,
}

impl ProtectMode {
    /// Its name, as `MEMKIT_GUARD` and the properties spell it.
    pub fn nick(self) -> &'static str {
        match self {
            ProtectMode::Off => "off",
            ProtectMode::Abort => "abort",
            ProtectMode::Continue => "continue",
        }
    }
}

static MODE: AtomicU8 = AtomicU8::new(0);

/// The protect mode of blocks allocated from now on.
pub fn protect_mode() -> ProtectMode {
    match MODE.load(Ordering::Relaxed) {
        1 => ProtectMode::Abort,
        2 => ProtectMode::Continue,
        _ => ProtectMode::Off,
    }
}

/// This thread's kernel id. Async-signal-safe (one system call).
pub(super) fn thread_id() -> i32 {
    // SAFETY: gettid(2) has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Records the mode (see `protect::set_protect_mode`, which does the rest).
pub(super) fn set_mode(mode: ProtectMode) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

/// The registry the fault handler reads: one entry per protected mapping (a region), live, in
/// quarantine or kept for reuse. An entry is claimed by storing its `map_end` (non-zero) last,
/// and released by storing 0 there first, then waiting until no handler has it pinned (see
/// [`pin`]); only then are its mapping's pages reused or unmapped.
pub(super) struct Registry {
    pub map_start: [AtomicUsize; MAX_BLOCKS],
    pub map_end: [AtomicUsize; MAX_BLOCKS],
    /// The block's accessible pages: `[pages_start, pages_end)`; the rest of the mapping is
    /// guard pages (and, in a region larger than the block needs, unused pages before them).
    pub pages_start: [AtomicUsize; MAX_BLOCKS],
    pub pages_end: [AtomicUsize; MAX_BLOCKS],
    pub data: [AtomicUsize; MAX_BLOCKS],
    pub maxsize: [AtomicUsize; MAX_BLOCKS],
    pub readers: [AtomicU32; MAX_BLOCKS],
    pub writers: [AtomicU32; MAX_BLOCKS],
    /// 1 once the block is freed (in quarantine, or its region kept for reuse).
    pub freed: [AtomicU8; MAX_BLOCKS],
    /// The offset and size the block was allocated with.
    pub offset: [AtomicUsize; MAX_BLOCKS],
    pub size: [AtomicUsize; MAX_BLOCKS],
    /// The charge target (see `attribution::published`) running when the block was last
    /// mapped.
    pub mapper: [AtomicU32; MAX_BLOCKS],
    /// What continue mode opened at a violation: [`GUARD_OPENED`] (the whole mapping, until
    /// the block's next protection change), [`PAGES_OPENED`] (the slack may have changed
    /// unseen: checked at the next slack check); and [`OVERRAN_AFTER`], [`OVERRAN_BEFORE`].
    pub opened: [AtomicU8; MAX_BLOCKS],
    /// Fault handlers at work on the entry (see [`pin`]).
    pub pins: [AtomicU32; MAX_BLOCKS],
    /// An address of the slack that a violation reported at the instruction wrote to (0:
    /// none): the slack check that finds it damaged does not report it again.
    pub slack_reported: [AtomicUsize; MAX_BLOCKS],
}

pub(super) static REGISTRY: Registry = Registry {
    map_start: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
    map_end: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
    pages_start: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
    pages_end: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
    data: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
    maxsize: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
    readers: [const { AtomicU32::new(0) }; MAX_BLOCKS],
    writers: [const { AtomicU32::new(0) }; MAX_BLOCKS],
    freed: [const { AtomicU8::new(0) }; MAX_BLOCKS],
    offset: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
    size: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
    mapper: [const { AtomicU32::new(published::NO_SLOT) }; MAX_BLOCKS],
    opened: [const { AtomicU8::new(0) }; MAX_BLOCKS],
    pins: [const { AtomicU32::new(0) }; MAX_BLOCKS],
    slack_reported: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
};

/// Threads whose last fault is remembered at once (by thread id, modulo this).
const LAST_FAULTS: usize = 1024;
static LAST_TID: [AtomicI32; LAST_FAULTS] = [const { AtomicI32::new(0) }; LAST_FAULTS];
/// The last fault's address (0: forgotten), instruction, and a hash of the registers.
static LAST_ADDR: [AtomicUsize; LAST_FAULTS] = [const { AtomicUsize::new(0) }; LAST_FAULTS];
static LAST_IP: [AtomicUsize; LAST_FAULTS] = [const { AtomicUsize::new(0) }; LAST_FAULTS];
static LAST_REGS: [AtomicU64; LAST_FAULTS] = [const { AtomicU64::new(0) }; LAST_FAULTS];

/// A fault as the handler saw it: the thread, the address, the instruction and a hash of the
/// registers (see `fault::registers_hash`).
#[derive(Clone, Copy)]
pub(super) struct Seen {
    pub tid: i32,
    pub addr: usize,
    pub ip: usize,
    pub regs: u64,
}

/// Records a fault; whether it is the thread's last fault again: the same access run again
/// before it could complete, because another thread closed what the handler had opened (or
/// reused the region meanwhile), which is the same violation and not counted twice. The same
/// address, instruction and registers (an access that runs again finds them all as they
/// were), and no protect-mode operation by the thread in between (see [`forget_last_fault`]:
/// a map, unmap, copy, allocation or free by the thread itself makes its next fault a new
/// violation). Async-signal-safe (each entry is written by its own thread; another thread
/// whose id falls on the same entry only makes a repeat look new, never the reverse).
pub(super) fn same_fault_again(seen: Seen) -> bool {
    let i = seen.tid.unsigned_abs() as usize % LAST_FAULTS;
    let again = seen.ip != 0
        && LAST_TID[i].load(Ordering::Relaxed) == seen.tid
        && LAST_ADDR[i].load(Ordering::Relaxed) == seen.addr
        && LAST_IP[i].load(Ordering::Relaxed) == seen.ip
        && LAST_REGS[i].load(Ordering::Relaxed) == seen.regs;
    LAST_TID[i].store(seen.tid, Ordering::Relaxed);
    LAST_ADDR[i].store(seen.addr, Ordering::Relaxed);
    LAST_IP[i].store(seen.ip, Ordering::Relaxed);
    LAST_REGS[i].store(seen.regs, Ordering::Relaxed);
    again
}

/// Forgets thread `tid`'s last fault: it did something of its own with a protected block
/// (see [`same_fault_again`]). Called outside the handler, by the thread itself.
pub(super) fn forget_last_fault(tid: i32) {
    let i = tid.unsigned_abs() as usize % LAST_FAULTS;
    if LAST_TID[i].load(Ordering::Relaxed) == tid && LAST_ADDR[i].load(Ordering::Relaxed) != 0 {
        LAST_ADDR[i].store(0, Ordering::Relaxed);
    }
}

/// The entry whose mapping holds `addr`, pinned, with that mapping's start and end: until
/// [`unpin`], the mapping stays the entry's (not reused, not unmapped). Async-signal-safe
/// (atomics only).
///
/// The handler increments the pin, then checks that the entry still holds `addr`; the owner
/// releasing an entry clears `map_end`, then waits for the pins to drain ([`release`]). Both
/// sides use sequentially consistent operations, so either the handler sees the entry gone
/// or the owner sees the pin. (`map_end` may read 0 after the check, while the owner waits:
/// the caller uses the bounds returned here.)
pub(super) fn pin(addr: usize) -> Option<(usize, usize, usize)> {
    let r = &REGISTRY;
    if addr < LOWEST.load(Ordering::SeqCst) || addr >= HIGHEST.load(Ordering::SeqCst) {
        return None;
    }
    let holds = |i: usize| {
        let end = r.map_end[i].load(Ordering::SeqCst);
        let start = r.map_start[i].load(Ordering::SeqCst);
        (end != 0 && addr < end && addr >= start).then_some((start, end))
    };
    let slot = slots_in_use().find(|&i| holds(i).is_some())?;
    r.pins[slot].fetch_add(1, Ordering::SeqCst);
    match holds(slot) {
        Some((start, end)) => Some((slot, start, end)),
        None => {
            unpin(slot);
            None
        }
    }
}

/// The lowest and highest address of every mapping protect mode made (they never shrink): a
/// fault outside them is not ours, found without looking at the entries.
static LOWEST: AtomicUsize = AtomicUsize::new(usize::MAX);
static HIGHEST: AtomicUsize = AtomicUsize::new(0);
/// One past the highest entry ever registered: the entries [`pin`] looks at.
static SLOTS_HIGH: AtomicUsize = AtomicUsize::new(0);

/// A new mapping of protect mode's, `[start, end)`: before any of its regions is registered.
pub(super) fn mapped(start: usize, end: usize) {
    LOWEST.fetch_min(start, Ordering::SeqCst);
    HIGHEST.fetch_max(end, Ordering::SeqCst);
}

/// Entry `slot` is about to be registered (before its `map_end` is stored).
pub(super) fn registering(slot: usize) {
    SLOTS_HIGH.fetch_max(slot + 1, Ordering::SeqCst);
}

/// The entries ever registered (a superset of those registered now). Async-signal-safe.
pub(super) fn slots_in_use() -> std::ops::Range<usize> {
    0..SLOTS_HIGH.load(Ordering::SeqCst).min(MAX_BLOCKS)
}

/// Live blocks whose pages are open now (a mapping alive, or opened by continue mode), by
/// their entries' counts: what the last count of the process's mappings owes to protect
/// mode's open pages (see `regions::maps_allow`).
pub(super) fn open_blocks() -> usize {
    let r = &REGISTRY;
    slots_in_use()
        .filter(|&i| {
            r.map_end[i].load(Ordering::Relaxed) != 0
                && r.freed[i].load(Ordering::Relaxed) == 0
                && (r.readers[i].load(Ordering::Relaxed) + r.writers[i].load(Ordering::Relaxed) > 0
                    || r.opened[i].load(Ordering::Relaxed) & GUARD_OPENED != 0)
        })
        .count()
}

/// Ends a [`pin`].
pub(super) fn unpin(slot: usize) {
    REGISTRY.pins[slot].fetch_sub(1, Ordering::SeqCst);
}

/// Entries between [`release`] and [`released`]: their mapping is being reused or unmapped.
/// A fault at an address no entry holds waits while this is not 0 ([`pin_waiting`]): it may
/// be on a region a moment away from its next block.
static RELEASING: AtomicUsize = AtomicUsize::new(0);

/// [`pin`], waiting (a bounded while) for the entries being released to be registered again
/// or unmapped: a fault on a freed block whose region is being reused at that instant is
/// still ours. Async-signal-safe (atomics and `sched_yield`).
pub(super) fn pin_waiting(addr: usize) -> Option<(usize, usize, usize)> {
    for _ in 0..100_000 {
        if let Some(pinned) = pin(addr) {
            return Some(pinned);
        }
        if RELEASING.load(Ordering::SeqCst) == 0 {
            // Whatever was released meanwhile is registered again (or gone) by now.
            return pin(addr);
        }
        // SAFETY: sched_yield(2) has no arguments.
        unsafe { libc::sched_yield() };
    }
    None
}

/// Forgets entry `slot` for the fault handler and waits until no handler has it pinned: its
/// mapping is then its owner's alone (to reuse or unmap). The owner calls [`released`] once
/// the entry is registered again or its mapping unmapped.
pub(super) fn release(slot: usize) {
    let r = &REGISTRY;
    RELEASING.fetch_add(1, Ordering::SeqCst);
    r.map_end[slot].store(0, Ordering::SeqCst);
    while r.pins[slot].load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
}

/// The end of a [`release`]: the entry is registered again, or its mapping is unmapped.
pub(super) fn released() {
    RELEASING.fetch_sub(1, Ordering::SeqCst);
}

/// Bits of [`Registry::opened`].
pub const GUARD_OPENED: u8 = 1;
pub const PAGES_OPENED: u8 = 2;
/// A violation past maxsize (before the block) was reported at or beyond the end (start) of
/// the block's pages: an overrun that crossed the slack on that side, which the next slack
/// check does not report again.
pub const OVERRAN_AFTER: u8 = 4;
pub const OVERRAN_BEFORE: u8 = 8;

/// The byte the slack of a protected block's pages holds (before the region, and after it
/// when the alignment leaves room): checked when the last WRITE mapping ends and at free.
pub const SLACK_BYTE: u8 = 0xCB;
