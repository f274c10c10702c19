// SPDX-License-Identifier: MPL-2.0
//! Who is running, as a signal handler can read it: atomics only, no lock, no allocation.
//!
//! Protect mode's fault handler names the element running on the faulting thread and the
//! element that last mapped the block. Each charge target (see `running`) is known here by an
//! **id**: the index of its entry in a table of [`MAX_NAMES`] names, and the entry's generation
//! (bumped each time the entry is given to another target), so that an id kept in a record
//! outlives its target honestly: once the entry names another target, the old id reads
//! "unknown", never the newcomer's name. Entries are reused oldest-retired first, so a gone
//! target's name stays readable until [`MAX_NAMES`] later targets have come.
//!
//! Each entry is a sequence lock: a writer makes its sequence odd, writes, and makes it even
//! again, one higher than before; a reader copies the name between two reads of the sequence
//! and keeps the copy only when both are the same even number, so that a copy spanning a whole
//! rewrite (a rename: the same generation) is taken again, never kept torn.
//!
//! Once [`enable`]d (protect mode does it), every thread the tracer sees running an element
//! publishes the id of the target it runs now in a row of its own, keyed by its kernel thread
//! id; a thread that runs nothing (a pool thread between tasks, the application between two
//! calls into an element) gives its row back, as it does when it exits, so that
//! [`MAX_THREADS`] bounds the threads inside an element at once, not the threads ever seen.
//! Without the tracer nothing is published and the names are "unknown".

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, Ordering, fence};

/// What charges made outside any element go to.
pub const APPLICATION: &str = "application";

/// What is reported when no name is known (no tracer, or an entry given to another target).
pub const UNKNOWN: &str = "unknown";
/// The id meaning "not known".
pub const NO_SLOT: u32 = u32::MAX;
/// The id of a thread that runs no element while the tracer watches: "application".
pub(crate) const APPLICATION_SLOT: u32 = u32::MAX - 1;

/// Bytes of a name kept (longer names are cut).
const NAME_BYTES: usize = 64;
/// Bits of an id that index the table; the generation is above them.
const INDEX_BITS: u32 = 12;
/// Names kept at once: targets in use (elements alive, or gone with blocks still alive) and the
/// most recently retired ones.
pub(crate) const MAX_NAMES: usize = 1 << INDEX_BITS;
/// Generations an entry goes through before they repeat (the top one is left out, so that no
/// id is [`NO_SLOT`] or [`APPLICATION_SLOT`]).
const GENERATIONS: u32 = (u32::MAX >> INDEX_BITS) - 1;
/// Threads that can publish at once (a thread past them is named "application" by protect
/// mode): 32 KiB of rows.
pub(crate) const MAX_THREADS: usize = 4096;
/// What an entry's generation is before it is first named: no id has it.
const NEVER: u32 = u32::MAX;
/// Tries of a reader racing a writer of the same entry before it says "unknown" (a signal
/// handler may have interrupted that writer on its own thread: it must not wait).
const READ_TRIES: usize = 4;

/// The id of entry `index` in its `generation`; [`NO_SLOT`] past the table.
pub(crate) fn id(index: usize, generation: u32) -> u32 {
    if index >= MAX_NAMES {
        return NO_SLOT;
    }
    ((generation % GENERATIONS) << INDEX_BITS) | index as u32
}

/// The names and the threads' rows. One static instance serves the process; tests make their
/// own.
pub(crate) struct Table<const NAMES: usize, const THREADS: usize> {
    names: [[AtomicU8; NAME_BYTES]; NAMES],
    len: [AtomicU8; NAMES],
    /// The generation each entry names ([`NEVER`] at first).
    generation: [AtomicU32; NAMES],
    /// A sequence lock per entry: odd while it is written, one higher after each write.
    seq: [AtomicU32; NAMES],
    /// A row's owner (0: free) and the id it runs now.
    row_tid: [AtomicI32; THREADS],
    row_id: [AtomicU32; THREADS],
}

impl<const NAMES: usize, const THREADS: usize> Table<NAMES, THREADS> {
    pub(crate) const fn new() -> Self {
        Table {
            names: [const { [const { AtomicU8::new(0) }; NAME_BYTES] }; NAMES],
            len: [const { AtomicU8::new(0) }; NAMES],
            generation: [const { AtomicU32::new(NEVER) }; NAMES],
            seq: [const { AtomicU32::new(0) }; NAMES],
            row_tid: [const { AtomicI32::new(0) }; THREADS],
            row_id: [const { AtomicU32::new(NO_SLOT) }; THREADS],
        }
    }

    /// Names `id` (its entry now names this generation). One writer at a time: the charges'
    /// lock is held. [`NO_SLOT`] (a slot past the table) and [`APPLICATION_SLOT`] name no
    /// entry.
    pub(crate) fn set_name(&self, id: u32, name: &str) {
        if id == NO_SLOT || id == APPLICATION_SLOT {
            return;
        }
        let index = (id & ((1 << INDEX_BITS) - 1)) as usize;
        let Some(bytes) = self.names.get(index) else {
            return;
        };
        let generation = id >> INDEX_BITS;
        // Cut at a character boundary.
        let mut n = name.len().min(NAME_BYTES);
        while !name.is_char_boundary(n) {
            n -= 1;
        }
        // The only writer: the sequence is even here.
        let seq = self.seq[index].load(Ordering::Relaxed);
        self.seq[index].store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.generation[index].store(generation, Ordering::Relaxed);
        for (dst, &b) in bytes.iter().zip(name.as_bytes()[..n].iter()) {
            dst.store(b, Ordering::Relaxed);
        }
        self.len[index].store(n as u8, Ordering::Relaxed);
        self.seq[index].store(seq.wrapping_add(2), Ordering::Release);
    }

    /// Copies the name of `id` into `out`; its length. Async-signal-safe.
    pub(crate) fn name_into(&self, id: u32, out: &mut [u8]) -> usize {
        let copy = |s: &str, out: &mut [u8]| {
            let n = s.len().min(out.len());
            out[..n].copy_from_slice(&s.as_bytes()[..n]);
            n
        };
        if id == APPLICATION_SLOT {
            return copy(APPLICATION, out);
        }
        let index = (id & ((1 << INDEX_BITS) - 1)) as usize;
        let generation = id >> INDEX_BITS;
        if id == NO_SLOT || index >= NAMES {
            return copy(UNKNOWN, out);
        }
        for _ in 0..READ_TRIES {
            let before = self.seq[index].load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let named = self.generation[index].load(Ordering::Relaxed);
            let len = usize::from(self.len[index].load(Ordering::Relaxed));
            let n = len.min(out.len());
            for (dst, src) in out[..n].iter_mut().zip(self.names[index].iter()) {
                *dst = src.load(Ordering::Relaxed);
            }
            fence(Ordering::Acquire);
            if self.seq[index].load(Ordering::Relaxed) != before {
                continue; // written meanwhile: the copy may mix two names
            }
            if named != generation {
                break; // never named, or named another target since
            }
            if n > 0 {
                return n;
            }
        }
        copy(UNKNOWN, out)
    }

    /// The name of `id`, as [`Table::name_into`] gives it.
    pub(crate) fn name(&self, id: u32) -> String {
        let mut out = [0u8; NAME_BYTES];
        let n = self.name_into(id, &mut out);
        String::from_utf8_lossy(&out[..n]).into_owned()
    }

    /// The rows in the order the thread `tid` looks at them: from a place its id picks, so that
    /// threads seldom race for the same row, then round.
    fn rows_of(tid: i32) -> impl Iterator<Item = usize> {
        let start = (tid as u32).wrapping_mul(0x9e37_79b9) as usize % THREADS;
        (start..THREADS).chain(0..start)
    }

    /// Publishes `id` as what the thread `tid` runs, in `row` (claimed when it is `None`; a
    /// thread past the rows publishes nothing); [`APPLICATION_SLOT`] (the thread runs
    /// nothing) gives the row back instead.
    pub(crate) fn publish_as(&self, row: &mut Option<usize>, id: u32, tid: i32) {
        if id == APPLICATION_SLOT {
            if let Some(r) = row.take() {
                self.release(r);
            }
            return;
        }
        let r = match *row {
            Some(r) => r,
            None => {
                let Some(r) = Self::rows_of(tid).find(|&r| {
                    self.row_tid[r]
                        .compare_exchange(0, tid, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                }) else {
                    return;
                };
                *row = Some(r);
                r
            }
        };
        self.row_id[r].store(id, Ordering::Release);
    }

    /// The thread owning `row` runs nothing now, or exits: the row is free for another.
    pub(crate) fn release(&self, row: usize) {
        self.row_id[row].store(NO_SLOT, Ordering::Relaxed);
        self.row_tid[row].store(0, Ordering::Release);
    }

    /// The id the thread `tid` published last, if it has a row. Async-signal-safe.
    pub(crate) fn published_by(&self, tid: i32) -> Option<u32> {
        Self::rows_of(tid)
            .find(|&r| self.row_tid[r].load(Ordering::Acquire) == tid)
            .map(|r| self.row_id[r].load(Ordering::Acquire))
            .filter(|&id| id != NO_SLOT)
    }
}

/// The process's table.
pub(crate) type Names = Table<MAX_NAMES, MAX_THREADS>;
static TABLE: Names = Table::new();

/// The process's table (tests make their own).
pub(crate) fn table() -> &'static Names {
    &TABLE
}
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Whether the tracer charges elements (see `charge::activate`).
static TRACING: AtomicBool = AtomicBool::new(false);
/// How a thread's kernel id is had (given by [`enable`]: `gettid` needs `unsafe`, which this
/// module has not).
static THREAD_ID: OnceLock<fn() -> i32> = OnceLock::new();

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

/// Copies the name of `id` into `out`; its length. Async-signal-safe.
pub fn name_into(id: u32, out: &mut [u8]) -> usize {
    TABLE.name_into(id, out)
}

/// The name of `id`, as [`name_into`] gives it.
pub fn name(id: u32) -> String {
    TABLE.name(id)
}

/// Publishes `id` as what this thread runs, in `row` (claimed when it is `None`), when
/// enabled; [`APPLICATION_SLOT`] gives the row back instead ([`running_on`] says
/// "application" for a thread without one).
pub(crate) fn publish(row: &mut Option<usize>, id: u32) {
    if id == APPLICATION_SLOT {
        TABLE.publish_as(row, id, 0);
        return;
    }
    if !enabled() {
        return;
    }
    if let Some(thread_id) = THREAD_ID.get() {
        TABLE.publish_as(row, id, thread_id());
    }
}

/// The thread owning `row` exits.
pub(crate) fn release(row: usize) {
    TABLE.release(row);
}

/// The id of what the thread `tid` runs now, [`NO_SLOT`] when it never published.
/// Async-signal-safe.
pub fn running_on(tid: i32) -> u32 {
    if !enabled() {
        return NO_SLOT;
    }
    match TABLE.published_by(tid) {
        Some(id) => id,
        None if TRACING.load(Ordering::Acquire) => APPLICATION_SLOT,
        None => NO_SLOT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_in<const N: usize, const T: usize>(table: &Table<N, T>, id: u32) -> String {
        table.name(id)
    }

    #[test]
    fn names_are_cut_at_a_character_boundary_and_unknown_ids_say_so() {
        let table = Table::<8, 1>::new();
        table.set_name(id(1, 0), "short");
        assert_eq!(name_in(&table, id(1, 0)), "short");
        let long = "é".repeat(40); // 80 bytes
        table.set_name(id(2, 0), &long);
        assert_eq!(name_in(&table, id(2, 0)), "é".repeat(32));
        assert_eq!(name_in(&table, NO_SLOT), UNKNOWN);
        assert_eq!(name_in(&table, APPLICATION_SLOT), APPLICATION);
        assert_eq!(name_in(&table, id(3, 0)), UNKNOWN, "never named");
        assert_eq!(name_in(&table, id(9, 0)), UNKNOWN, "past the table");
    }

    #[test]
    fn an_id_of_an_entry_given_to_another_target_reads_unknown() {
        let table = Table::<8, 1>::new();
        table.set_name(id(5, 7), "gone");
        assert_eq!(name_in(&table, id(5, 7)), "gone");
        table.set_name(id(5, 8), "newcomer");
        assert_eq!(name_in(&table, id(5, 8)), "newcomer");
        assert_eq!(
            name_in(&table, id(5, 7)),
            UNKNOWN,
            "never the newcomer's name"
        );
    }

    #[test]
    fn the_special_ids_name_no_entry() {
        let table = Table::<{ MAX_NAMES }, 1>::new();
        table.set_name(id(MAX_NAMES - 1, 3), "last");
        table.set_name(id(MAX_NAMES, 0), "past the table"); // NO_SLOT
        table.set_name(APPLICATION_SLOT, "not application");
        assert_eq!(name_in(&table, id(MAX_NAMES - 1, 3)), "last");
        assert_eq!(name_in(&table, APPLICATION_SLOT), APPLICATION);
    }

    #[test]
    fn no_id_is_a_special_one() {
        for generation in [0, GENERATIONS - 1, GENERATIONS, u32::MAX] {
            for index in [0, MAX_NAMES - 2, MAX_NAMES - 1] {
                let i = id(index, generation);
                assert!(
                    i != NO_SLOT && i != APPLICATION_SLOT,
                    "{index} {generation}"
                );
            }
        }
        assert_eq!(id(MAX_NAMES, 0), NO_SLOT);
    }

    #[test]
    fn a_rewrite_moves_the_sequence_so_that_a_read_across_it_tries_again() {
        let table = Table::<2, 1>::new();
        let id = id(1, 3);
        table.set_name(id, "old");
        let before = table.seq[1].load(Ordering::Acquire);
        table.set_name(id, "new");
        assert_ne!(
            table.seq[1].load(Ordering::Acquire),
            before,
            "a reader that began before the rewrite and ends after it must see it"
        );
        assert_eq!(table.name(id), "new");
    }

    #[test]
    fn a_reader_never_sees_a_name_torn_by_a_rewrite_of_the_same_target() {
        // A rename rewrites the entry in the same generation: a reader whose copy spans a
        // whole rewrite must notice it and try again, never mix the old bytes and the new.
        // A small table, as the attack that found it used.
        static TABLE: Table<4, 1> = Table::new();
        let table = &TABLE;
        let (a, b) = ("A".repeat(NAME_BYTES), "b".repeat(NAME_BYTES));
        let id = id(1, 3);
        table.set_name(id, &a);
        let stop = AtomicBool::new(false);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let (reads, torn) = std::thread::scope(|s| {
            s.spawn(|| {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    table.set_name(id, if i.is_multiple_of(2) { &b } else { &a });
                    i += 1;
                }
            });
            let mut out = [0u8; NAME_BYTES];
            let (mut reads, mut torn) = (0u64, None);
            while torn.is_none() && std::time::Instant::now() < deadline {
                for _ in 0..10_000 {
                    let n = table.name_into(id, &mut out);
                    let got = &out[..n];
                    reads += 1;
                    if got != a.as_bytes() && got != b.as_bytes() && got != UNKNOWN.as_bytes() {
                        torn = Some(String::from_utf8_lossy(got).into_owned());
                        break;
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
            (reads, torn)
        });
        assert_eq!(torn, None, "a torn name after {reads} reads");
    }

    #[test]
    fn a_thread_that_runs_nothing_gives_its_row_to_another() {
        let table = Table::<2, 1>::new();
        let (mut first, mut second) = (None, None);
        table.publish_as(&mut first, 7, 100);
        assert_eq!(table.published_by(100), Some(7));
        table.publish_as(&mut second, 9, 200);
        assert_eq!(table.published_by(200), None, "one row, taken");
        table.publish_as(&mut first, APPLICATION_SLOT, 100);
        assert_eq!(first, None);
        assert_eq!(table.published_by(100), None, "runs nothing: application");
        table.publish_as(&mut second, 9, 200);
        assert_eq!(
            table.published_by(200),
            Some(9),
            "the row given back serves another"
        );
    }

    #[test]
    fn rows_given_back_serve_more_threads_than_there_are_rows() {
        let table = Table::<2, 4>::new();
        for round in 0..10 {
            let mut rows: Vec<Option<usize>> = vec![None; 4];
            for (i, row) in rows.iter_mut().enumerate() {
                let tid = 100 + round * 4 + i as i32;
                table.publish_as(row, 7, tid);
                assert!(row.is_some(), "thread {tid} has a row");
                assert_eq!(table.published_by(tid), Some(7));
            }
            let mut fifth = None;
            table.publish_as(&mut fifth, 7, 99);
            assert_eq!(fifth, None, "four rows, four threads at once");
            for row in rows {
                table.release(row.unwrap());
            }
        }
    }

    #[test]
    fn a_thread_publishes_in_its_own_row_and_frees_it() {
        // The table and the thread ids are this test's own: no process-wide source is
        // installed, so no other test can change what this one sees.
        let table = Table::<2, 4>::new();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut row = None;
                table.publish_as(&mut row, 4003, 11);
                assert_eq!(table.published_by(11), Some(4003));
                table.publish_as(&mut row, 4004, 11);
                assert_eq!(table.published_by(11), Some(4004));
                assert_eq!(table.published_by(12), None, "another thread's id");
                table.release(row.unwrap());
                assert_eq!(table.published_by(11), None, "the row is free again");
            });
        });
    }
}
