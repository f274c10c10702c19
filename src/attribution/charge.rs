// SPDX-License-Identifier: MPL-2.0
//! What each element is charged: allocations and bytes, live bytes and their peak, shares,
//! copies with their bytes, read and write maps, and the blocks still alive (leaks at exit).
//! Recording starts with [`activate`]; until then every entry point is one relaxed load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, OnceLock};

use super::running::{self, Slot};
use super::timeline::{self, Sample, Timeline};

static ACTIVE: AtomicBool = AtomicBool::new(false);

/// What an element did with memory: the counts the report shows for it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub allocations: u64,
    pub bytes: u64,
    pub shares: u64,
    pub copies: u64,
    pub bytes_copied: u64,
    pub read_maps: u64,
    pub write_maps: u64,
    /// Memory of other allocators (seen through core's `memory-init`, GStreamer 1.26+).
    pub foreign_allocations: u64,
    pub foreign_bytes: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.allocations += o.allocations;
        self.bytes += o.bytes;
        self.shares += o.shares;
        self.copies += o.copies;
        self.bytes_copied += o.bytes_copied;
        self.read_maps += o.read_maps;
        self.write_maps += o.write_maps;
        self.foreign_allocations += o.foreign_allocations;
        self.foreign_bytes += o.foreign_bytes;
    }
}

/// One slot's charges.
#[derive(Debug, Default, Clone)]
pub(crate) struct Raw {
    pub counts: Counts,
    pub live: i64,
    pub peak: i64,
}

#[derive(Default)]
pub(crate) struct State {
    pub per: Vec<Raw>,
    /// Live blocks by address: (the slot that allocated it, bytes, another allocator's).
    live: HashMap<usize, (Slot, usize, bool)>,
    pub timeline: Timeline,
}

impl State {
    /// Whether a sample is due after an event; if not, the event's state is owed to the
    /// timeline.
    fn due_or_owe(&mut self) -> bool {
        if self.timeline.due() {
            return true;
        }
        let per = super::timeline::live(self.per.iter().map(|r| r.live));
        self.timeline.owe(per);
        false
    }

    fn raw(&mut self, slot: Slot) -> &mut Raw {
        let i = slot as usize;
        if self.per.len() <= i {
            self.per.resize(i + 1, Raw::default());
        }
        &mut self.per[i]
    }
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(Mutex::default);
static CACHED_BYTES: OnceLock<fn() -> u64> = OnceLock::new();

pub(crate) fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts recording (the tracer calls it once, before any pipeline runs).
pub fn activate() {
    let _ = state().timeline.start();
    super::published::set_tracing();
    ACTIVE.store(true, Ordering::Release);
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
        super::published::id(running::current() as usize, 0)
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
    let slot = running::current();
    let due = {
        let mut s = state();
        let r = s.raw(slot);
        if foreign {
            r.counts.foreign_allocations += 1;
            r.counts.foreign_bytes += bytes as u64;
        } else {
            r.counts.allocations += 1;
            r.counts.bytes += bytes as u64;
        }
        r.live += bytes as i64;
        r.peak = r.peak.max(r.live);
        s.live.insert(addr, (slot, bytes, foreign));
        s.due_or_owe()
    };
    if due {
        sample();
    }
}

/// The block at `addr` was freed: the element that allocated it holds it no more.
pub fn freed(addr: usize) {
    if !active() {
        return;
    }
    let due = {
        let mut s = state();
        let Some((slot, bytes, _)) = s.live.remove(&addr) else {
            return;
        };
        s.raw(slot).live -= bytes as i64;
        s.due_or_owe()
    };
    if due {
        sample();
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
    let slot = running::current();
    let mut s = state();
    let c = &mut s.raw(slot).counts;
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

/// A memory of `bytes` was copied.
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
    pub name: String,
    pub counts: Counts,
    /// Bytes of the blocks it allocated still alive now.
    pub live: u64,
    /// The most of those alive at once (per slot: an element whose task thread was charged
    /// before it was known adds both peaks).
    pub peak: u64,
}

impl ElementCharges {
    fn add(&mut self, r: &Raw) {
        self.counts.add(&r.counts);
        self.live += r.live.max(0) as u64;
        self.peak += r.peak.max(0) as u64;
    }

    fn is_empty(&self) -> bool {
        let c = &self.counts;
        c.allocations + c.foreign_allocations + c.shares + c.copies + c.read_maps + c.write_maps
            == 0
    }
}

/// The charges by element (threads resolved to the element whose task they run, or
/// "application"), the ones that copied first (most bytes first), then by bytes allocated.
pub fn report() -> Vec<ElementCharges> {
    let names = running::names();
    let per = state().per.clone();
    let mut by_name: Vec<ElementCharges> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (slot, raw) in per.iter().enumerate() {
        let name = names
            .get(slot)
            .cloned()
            .unwrap_or_else(|| running::APPLICATION.to_owned());
        let i = *index.entry(name.clone()).or_insert_with(|| {
            by_name.push(ElementCharges {
                name,
                ..ElementCharges::default()
            });
            by_name.len() - 1
        });
        by_name[i].add(raw);
    }
    by_name.retain(|e| !e.is_empty());
    let key = |e: &ElementCharges| {
        (
            e.counts.bytes_copied,
            e.counts.bytes + e.counts.foreign_bytes,
        )
    };
    by_name.sort_by(|a, b| (key(b), &a.name).cmp(&(key(a), &b.name)));
    by_name
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
    let names = running::names();
    let mut out: Vec<Leak> = state()
        .live
        .iter()
        .map(|(&address, &(slot, bytes, foreign))| Leak {
            element: names
                .get(slot as usize)
                .cloned()
                .unwrap_or_else(|| running::APPLICATION.to_owned()),
            address,
            bytes,
            foreign,
        })
        .collect();
    out.sort_by(|a, b| (b.bytes, a.address).cmp(&(a.bytes, b.address)));
    out
}

/// Takes a timeline sample now (after the one owed, if any).
pub fn sample() {
    // Outside our lock: the allocators take their own locks to count their cache.
    let cached = cached_bytes();
    let mut s = state();
    let Some(start) = s.timeline.start else {
        return;
    };
    let per = timeline::live(s.per.iter().map(|r| r.live));
    let total = per.iter().map(|p| p.1).sum();
    let seconds = start.elapsed().as_secs_f64();
    if let Some(owed) = s.timeline.owed.take() {
        s.timeline.push(owed);
    }
    s.timeline.last_cached = cached;
    s.timeline.push(Sample {
        seconds,
        per,
        total,
        cached,
    });
}

/// The timeline's samples so far, with the slots' names as the report shows them.
pub fn samples() -> (Vec<Sample>, Vec<String>) {
    let names = running::names();
    (state().timeline.samples.clone(), names)
}
