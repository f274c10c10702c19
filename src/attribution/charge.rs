// SPDX-License-Identifier: MPL-2.0
//! What each element is charged: allocations and bytes, live bytes and their peak, shares,
//! copies with their bytes, read and write maps, and the blocks still alive (leaks at exit).
//! Recording starts with [`activate`]; until then every entry point is one relaxed load.
//!
//! **Work per event.** An allocation, free, share, copy or map takes one lock and does
//! constant work: the counts of one slot, a hash map insert or remove for the block, the
//! interval's least and most of that slot (or of the others summed) and of the total, and a
//! look at the clock, those only with a timeline. A sample of the timeline (100 per second at
//! most, fewer as a run grows long) reads at most `TRACKED` slots (see [`super::timeline`]).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::running;
use super::slots::{self, Counts, RowId};
use super::state::state;
use super::timeline::Sample;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static CACHED_BYTES: OnceLock<fn() -> u64> = OnceLock::new();

/// Starts recording (the tracer calls it once, before any pipeline runs).
pub fn activate() {
    super::published::set_tracing();
    ACTIVE.store(true, Ordering::Release);
}

/// Starts the timeline's samples (the tracer calls it when it writes a timeline: none are
/// taken without one).
pub fn start_timeline() {
    let _ = state().timeline.start();
}

/// Whether charges are being recorded.
#[inline(always)]
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// The id (see `published`) of what charges made now on this thread go to, for the record of
/// a mapping: [`NO_SLOT`](super::published::NO_SLOT) while nothing is charged (no tracer).
pub fn current_slot() -> u32 {
    if active() {
        running::current().published_id()
    } else {
        super::published::NO_SLOT
    }
}

/// Where the timeline reads the allocators' cached bytes from.
pub fn set_cached_bytes_source(f: fn() -> u64) {
    let _ = CACHED_BYTES.set(f);
}

pub(crate) fn cached_bytes() -> u64 {
    CACHED_BYTES.get().map_or(0, |f| f())
}

/// A block of `bytes` at `addr` was allocated (`foreign`: by an allocator not memkit's).
pub fn allocated(addr: usize, bytes: usize, foreign: bool) {
    if !active() {
        return;
    }
    let target = running::current();
    let bytes = bytes as u64;
    let sampled = {
        let mut s = state();
        let sampled = s.sample_if_due();
        let slot = s.slots.charged(target);
        if let Some((old, old_bytes, _)) = s.live.insert(addr, (slot, bytes, foreign)) {
            // An address alive twice: its free was not seen. The old block is gone.
            s.slots.raw(old).blocks -= 1;
            s.change_live(old, old_bytes, false);
        }
        let r = s.slots.raw(slot);
        if foreign {
            r.counts.foreign_allocations += 1;
            r.counts.foreign_bytes += bytes;
        } else {
            r.counts.allocations += 1;
            r.counts.bytes += bytes;
        }
        r.blocks += 1;
        s.change_live(slot, bytes, true);
        sampled
    };
    if let Some(seconds) = sampled {
        read_cached(seconds);
    }
}

/// Reads the allocators' cached bytes (out of our lock) for the sample taken at `seconds`.
/// The source must take no lock of an allocator: a free may charge while it holds one.
fn read_cached(seconds: f64) {
    let cached = cached_bytes();
    state().set_cached(seconds, cached);
}

/// The block at `addr` was freed: the element that allocated it holds it no more.
pub fn freed(addr: usize) {
    if !active() {
        return;
    }
    let sampled = {
        let mut s = state();
        let Some((slot, bytes, _)) = s.live.remove(&addr) else {
            return;
        };
        let sampled = s.sample_if_due();
        s.slots.raw(slot).blocks -= 1;
        s.change_live(slot, bytes, false);
        sampled
    };
    if let Some(seconds) = sampled {
        read_cached(seconds);
    }
}

/// What happened to a memory, for [`charge`].
#[derive(Debug, Clone, Copy)]
enum Event {
    Share,
    Copy(usize),
    Map { write: bool },
}

/// Charges `event` to the element running, when recording.
#[inline(always)]
fn charge(event: Event) {
    if active() {
        charge_now(event);
    }
}

#[cold]
#[inline(never)]
fn charge_now(event: Event) {
    let target = running::current();
    let mut s = state();
    let slot = s.slots.charged(target);
    let c = &mut s.slots.raw(slot).counts;
    match event {
        Event::Share => c.shares += 1,
        Event::Copy(bytes) => {
            c.copies += 1;
            c.bytes_copied += bytes as u64;
        }
        Event::Map { write: true } => c.write_maps += 1,
        Event::Map { write: false } => c.read_maps += 1,
    }
}

/// A share was made.
#[inline(always)]
pub fn shared() {
    charge(Event::Share);
}

/// A memory of `bytes` was copied (by `gst_memory_copy`, or by an element of ours into a
/// block of its own).
#[inline(always)]
pub fn copied(bytes: usize) {
    charge(Event::Copy(bytes));
}

/// A memory was mapped (`write`: with `GST_MAP_WRITE`).
#[inline(always)]
pub fn mapped(write: bool) {
    charge(Event::Map { write });
}

/// One element's charges, as the report shows them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ElementCharges {
    /// Its name; its path where another element of the report has the same name.
    pub name: String,
    pub counts: Counts,
    /// Bytes of the blocks it allocated still alive now.
    pub live: u64,
    /// The most of those alive at once.
    pub peak: u64,
}

/// The report's rows and the names they are shown under, by row.
fn shown_rows() -> (Vec<slots::Row>, HashMap<RowId, String>) {
    let rows = state().slots.rows();
    let names = slots::shown_names(&rows);
    let by_row = rows.iter().map(|r| r.row).zip(names).collect();
    (rows, by_row)
}

/// The charges by element (one row per element, however named), the ones that copied first
/// (most bytes first), then by bytes allocated.
pub fn report() -> Vec<ElementCharges> {
    let (rows, names) = shown_rows();
    let mut out: Vec<ElementCharges> = rows
        .into_iter()
        .map(|r| ElementCharges {
            name: names.get(&r.row).cloned().unwrap_or_default(),
            counts: r.counts,
            live: r.live,
            peak: r.peak,
        })
        .collect();
    let key = |e: &ElementCharges| {
        (
            e.counts.bytes_copied,
            e.counts.bytes + e.counts.foreign_bytes,
        )
    };
    out.sort_by(|a, b| (key(b), &a.name).cmp(&(key(a), &b.name)));
    out
}

/// A block alive now, charged to the element that allocated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    pub element: String,
    pub address: usize,
    pub bytes: usize,
    /// Memory of an allocator not memkit's.
    pub foreign: bool,
}

/// The blocks alive now, largest first.
pub fn leaks() -> Vec<Leak> {
    let (_, names) = shown_rows();
    let blocks: Vec<(usize, RowId, u64, bool)> = {
        let s = state();
        s.live
            .iter()
            .map(|(&addr, &(slot, bytes, foreign))| (addr, s.slots.row_of(slot), bytes, foreign))
            .collect()
    };
    let mut out: Vec<Leak> = blocks
        .into_iter()
        .map(|(address, row, bytes, foreign)| Leak {
            element: names
                .get(&row)
                .cloned()
                .unwrap_or_else(|| running::APPLICATION.to_owned()),
            address,
            bytes: bytes as usize,
            foreign,
        })
        .collect();
    out.sort_by(|a, b| (b.bytes, a.address).cmp(&(a.bytes, b.address)));
    out
}

/// Takes a timeline sample now.
pub fn sample() {
    // Outside our lock: the allocators take their own locks to count their cache.
    let cached = cached_bytes();
    let mut s = state();
    let Some(start) = s.timeline.start else {
        return;
    };
    let sample = s.take_sample(start.elapsed().as_secs_f64(), cached);
    s.timeline.push(sample);
}

/// The timeline's samples so far, and the names of their rows as the report shows them.
pub fn samples() -> (Vec<Sample>, HashMap<RowId, String>) {
    let (_, names) = shown_rows();
    (state().timeline.samples.clone(), names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gst::prelude::*;

    #[test]
    fn elements_are_named_for_protect_mode_past_4096_gone_ones() {
        gst::init().unwrap();
        running::set_namer(|o| o.name().to_string());
        activate();
        std::thread::spawn(|| {
            for i in 0..5000 {
                let e = gst::ElementFactory::make("fakesink")
                    .name(format!("churn{i}"))
                    .build()
                    .unwrap();
                running::enter(Some(&e));
                running::leave();
                // What the tracer's object-destroyed hook does.
                running::forget(e.as_ptr() as usize);
            }
            let late = gst::ElementFactory::make("fakesink")
                .name("late-comer")
                .build()
                .unwrap();
            running::enter(Some(&late));
            let id = current_slot();
            running::leave();
            assert_eq!(
                super::super::published::name(id),
                "late-comer",
                "named past 4,096"
            );
            running::forget(late.as_ptr() as usize);
        })
        .join()
        .unwrap();
    }
}
