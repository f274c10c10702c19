// SPDX-License-Identifier: MPL-2.0
//! Who is running, as a signal handler can read it: atomics only, no lock, no allocation.
//!
//! Protect mode's fault handler names the element running on the faulting thread and the
//! element that last mapped the block. Every charge target gets its name copied here when it
//! is made (a thread's: "application", then its task owner's once known); once [`enable`]d
//! (protect mode does it), every thread the tracer sees publishes its current target in a row
//! of its own, keyed by its kernel thread id. Without the tracer nothing is published and the
//! names are "unknown".

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, Ordering};

/// What charges made outside any element go to.
pub const APPLICATION: &str = "application";

/// What is reported when no name is known (no tracer, or past the tables).
pub const UNKNOWN: &str = "unknown";
/// The slot meaning "not known".
pub const NO_SLOT: u32 = u32::MAX;
/// The slot of a thread that never ran an element while the tracer watched: "application".
const APPLICATION_SLOT: u32 = u32::MAX - 1;

/// Bytes of a name kept (longer names are cut).
const NAME_BYTES: usize = 64;
/// Charge targets whose names are kept.
const MAX_NAMES: usize = 4096;
/// Threads that can publish at once.
const MAX_THREADS: usize = 1024;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Whether the tracer charges elements (see `charge::activate`).
static TRACING: AtomicBool = AtomicBool::new(false);
static NAMES: [[AtomicU8; NAME_BYTES]; MAX_NAMES] =
    [const { [const { AtomicU8::new(0) }; NAME_BYTES] }; MAX_NAMES];
static NAME_LEN: [AtomicU8; MAX_NAMES] = [const { AtomicU8::new(0) }; MAX_NAMES];
/// A row's owner (0: free) and the slot it runs now.
static ROW_TID: [AtomicI32; MAX_THREADS] = [const { AtomicI32::new(0) }; MAX_THREADS];
static ROW_SLOT: [AtomicU32; MAX_THREADS] = [const { AtomicU32::new(NO_SLOT) }; MAX_THREADS];

/// Starts publishing what each thread runs (protect mode is on), each thread under the id
/// `thread_id` gives it (the kernel's thread id, which the fault handler asks for).
pub fn enable(thread_id: fn() -> i32) {
    let _ = THREAD_ID.set(thread_id);
    ENABLED.store(true, Ordering::Release);
}

/// The tracer charges elements from now on: a thread that published nothing runs none.
pub(crate) fn set_tracing() {
    TRACING.store(true, Ordering::Release);
}

/// Whether names are published.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Records `name` for `slot`.
pub(crate) fn set_name(slot: u32, name: &str) {
    let Some(bytes) = NAMES.get(slot as usize) else {
        return;
    };
    // Cut at a character boundary.
    let mut n = name.len().min(NAME_BYTES);
    while !name.is_char_boundary(n) {
        n -= 1;
    }
    NAME_LEN[slot as usize].store(0, Ordering::Release);
    for (dst, &b) in bytes.iter().zip(name.as_bytes()[..n].iter()) {
        dst.store(b, Ordering::Relaxed);
    }
    NAME_LEN[slot as usize].store(n as u8, Ordering::Release);
}

/// Copies the name of `slot` into `out`; its length. Async-signal-safe.
pub fn name_into(slot: u32, out: &mut [u8]) -> usize {
    if slot == APPLICATION_SLOT {
        let n = APPLICATION.len().min(out.len());
        out[..n].copy_from_slice(&APPLICATION.as_bytes()[..n]);
        return n;
    }
    let len = NAME_LEN
        .get(slot as usize)
        .map_or(0, |len| usize::from(len.load(Ordering::Acquire)));
    if len == 0 {
        let n = UNKNOWN.len().min(out.len());
        out[..n].copy_from_slice(&UNKNOWN.as_bytes()[..n]);
        return n;
    }
    let n = len.min(out.len());
    for (dst, src) in out[..n].iter_mut().zip(NAMES[slot as usize].iter()) {
        *dst = src.load(Ordering::Relaxed);
    }
    n
}

/// The name of `slot`, as [`name_into`] gives it.
pub fn name(slot: u32) -> String {
    let mut out = [0u8; NAME_BYTES];
    let n = name_into(slot, &mut out);
    String::from_utf8_lossy(&out[..n]).into_owned()
}

/// How a thread's kernel id is had (given by [`enable`]: `gettid` needs `unsafe`, which this
/// module has not).
static THREAD_ID: OnceLock<fn() -> i32> = OnceLock::new();

/// Publishes `slot` as what this thread runs, in `row` (claimed at the first call).
pub(crate) fn publish(row: &mut Option<usize>, slot: u32) {
    if !enabled() {
        return;
    }
    let r = match *row {
        Some(r) => r,
        None => {
            let Some(thread_id) = THREAD_ID.get() else {
                return;
            };
            let tid = thread_id();
            let Some(r) = (0..MAX_THREADS).find(|&r| {
                ROW_TID[r]
                    .compare_exchange(0, tid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            }) else {
                return;
            };
            *row = Some(r);
            r
        }
    };
    ROW_SLOT[r].store(slot, Ordering::Release);
}

/// The thread owning `row` exits.
pub(crate) fn release(row: usize) {
    ROW_SLOT[row].store(NO_SLOT, Ordering::Relaxed);
    ROW_TID[row].store(0, Ordering::Release);
}

/// The slot the thread `tid` runs now, [`NO_SLOT`] when it never published. Async-signal-safe.
pub fn running_on(tid: i32) -> u32 {
    if !enabled() {
        return NO_SLOT;
    }
    let published = (0..MAX_THREADS)
        .find(|&r| ROW_TID[r].load(Ordering::Acquire) == tid)
        .map(|r| ROW_SLOT[r].load(Ordering::Acquire));
    match published {
        Some(slot) if slot != NO_SLOT => slot,
        _ if TRACING.load(Ordering::Acquire) => APPLICATION_SLOT,
        _ => NO_SLOT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(slot: u32) -> String {
        let mut out = [0u8; 80];
        let n = name_into(slot, &mut out);
        String::from_utf8(out[..n].to_vec()).unwrap()
    }

    #[test]
    fn names_are_cut_at_a_character_boundary_and_unknown_slots_say_so() {
        set_name(4000, "short");
        assert_eq!(name(4000), "short");
        let long = "é".repeat(40); // 80 bytes
        set_name(4001, &long);
        assert_eq!(name(4001), "é".repeat(32));
        assert_eq!(name(NO_SLOT), UNKNOWN);
        assert_eq!(name(4002), UNKNOWN, "never named");
    }

    #[test]
    fn a_thread_publishes_in_its_own_row_and_frees_it() {
        // Ids of our own making: the test runs once per process.
        thread_local!(static ID: i32 = 7_000_000 + std::process::id() as i32 % 1000);
        fn id() -> i32 {
            ID.with(|id| *id)
        }
        enable(id);
        std::thread::spawn(|| {
            // Whichever id source was given first (another test may have enabled it).
            let tid = THREAD_ID.get().expect("enabled")();
            let mut row = None;
            publish(&mut row, 4003);
            assert_eq!(running_on(tid), 4003);
            publish(&mut row, 4004);
            assert_eq!(running_on(tid), 4004);
            release(row.unwrap());
            assert_ne!(running_on(tid), 4004, "the row is free again");
        })
        .join()
        .unwrap();
    }
}
