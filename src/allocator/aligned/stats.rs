// SPDX-License-Identifier: MPL-2.0
//! Allocator statistics that cost next to nothing on the fast path: every thread counts into
//! its own shard (single-writer counters: a plain load and store, no locked instruction, no
//! shared cache line), and a reader sums the shards. A thread's shard is folded into the
//! retired totals when the thread ends.
//!
//! `peak-bytes` is kept by the threads themselves: when a thread's own live bytes exceed by
//! [`PEAK_STEP`] the highest value at which it last looked, it sums every shard and raises the
//! peak; every read does the same. So in one thread the peak is exact for blocks of
//! `PEAK_STEP` or more, and otherwise it may miss up to `PEAK_STEP` bytes per thread (and a
//! peak reached while a thread's own balance is below its earlier high, e.g. a thread that
//! frees what others allocated, shows only when the statistics are read).
//!
//! When tracking is on (the `memkit` tracer turns it on), every live root block is also
//! recorded with its size, under one lock, so blocks still alive at exit can be reported as
//! leaks and the peak of those blocks is exact.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use super::classes;
use crate::attribution;

/// How much a thread's live bytes grow before it recomputes the global peak.
pub const PEAK_STEP: i64 = 256 << 10;
/// Environment variable: `MEMKIT_STATS=0` starts with statistics off.
pub const ENV_STATS: &str = "MEMKIT_STATS";

/// The monotonic counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    Allocations,
    Frees,
    CacheHits,
    CacheMisses,
    Shares,
    Copies,
    BytesCopied,
    SpanHits,
    Maps,
    Wraps,
    GuardViolations,
}

const COUNTERS: usize = Counter::GuardViolations as usize + 1;
const COUNTER_NAMES: [&str; COUNTERS] = [
    "allocations",
    "frees",
    "cache-hits",
    "cache-misses",
    "shares",
    "copies",
    "bytes-copied",
    "span-hits",
    "maps",
    "wraps",
    "guard-violations",
];
/// Histogram buckets: one per size class, and one for blocks too large to cache.
const CLASSES: usize = classes::size_class(classes::MAX_CACHED_BLOCK).unwrap().0 as usize + 2;

/// A thread's counters. `Allocations`, `CacheHits` and `blocks-live` are not counted: they
/// are derived on read (from the histogram, `CacheMisses`, `Wraps` and `Frees`), which keeps
/// the allocation path to two or three stores.
struct Shard {
    counters: [AtomicU64; COUNTERS],
    bytes_live: AtomicI64,
    /// The highest `bytes_live` of this thread when it last recomputed the peak (it never
    /// goes down, so a steady alloc/free loop never recomputes).
    peak_mark: AtomicI64,
    by_class: [AtomicU64; CLASSES],
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_live: AtomicI64::new(0),
            peak_mark: AtomicI64::new(0),
            by_class: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Adds `n` to a counter that only the owning thread writes: a plain load and store.
#[inline]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

#[inline]
fn bump_signed(c: &AtomicI64, n: i64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Shard {
    /// Adds this shard's values to `into` (which several threads may add to at once).
    fn fold_into(&self, into: &Shard) {
        for (a, b) in self.counters.iter().zip(&into.counters) {
            b.fetch_add(a.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (a, b) in self.by_class.iter().zip(&into.by_class) {
            b.fetch_add(a.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        into.bytes_live
            .fetch_add(self.bytes_live.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

struct Registry {
    shards: Vec<Arc<Shard>>,
    /// Totals of the threads that have ended.
    retired: Shard,
    /// Counter values at the last reset, subtracted from what is reported.
    baseline: [u64; COUNTERS],
    baseline_by_class: [u64; CLASSES],
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        shards: Vec::new(),
        retired: Shard::default(),
        baseline: [0; COUNTERS],
        baseline_by_class: [0; CLASSES],
    })
});

/// On unless `MEMKIT_STATS=0` (read when the allocator is created, see [`init_from_env`]).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Applies `MEMKIT_STATS` (called once, when the registered allocator is created).
pub(super) fn init_from_env() {
    if std::env::var(ENV_STATS).is_ok_and(|v| v.trim() == "0") {
        set_enabled(false);
    }
}
static PEAK: AtomicI64 = AtomicI64::new(0);
static TRACKING: AtomicBool = AtomicBool::new(false);
/// Every live root block while tracking is on, with exact live and peak bytes of those.
#[derive(Default)]
struct Tracked {
    blocks: HashMap<usize, usize>,
    live: u64,
    peak: u64,
}

static LIVE: LazyLock<Mutex<Tracked>> = LazyLock::new(Default::default);

/// A thread's handle on its shard: registers it on first use, folds it away at thread exit.
struct Local(Arc<Shard>);

impl Local {
    fn new() -> Local {
        let shard = Arc::new(Shard::default());
        if let Ok(mut r) = REGISTRY.lock() {
            r.shards.push(shard.clone());
        }
        Local(shard)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Ok(mut r) = REGISTRY.lock() {
            self.0.fold_into(&r.retired);
            r.shards.retain(|s| !Arc::ptr_eq(s, &self.0));
        }
    }
}

thread_local! {
    static LOCAL: Local = Local::new();
}

/// Whether statistics are being collected.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns collection on or off (counts made while off are simply not made).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

#[inline]
fn with_shard(f: impl FnOnce(&Shard)) {
    if enabled() {
        let _ = LOCAL.try_with(|l| f(&l.0));
    }
}

/// A shard owned by another thread-local (the allocator's per-thread state), so that the
/// allocation path reaches its statistics and its free lists with one thread-local lookup.
/// Registered when it is made; folded into the retired totals when it drops with its thread.
pub struct ThreadShard(Local);

impl ThreadShard {
    /// A new shard, registered at once.
    pub fn new() -> ThreadShard {
        ThreadShard(Local::new())
    }

    #[inline(always)]
    fn with(&self, f: impl FnOnce(&Shard)) {
        if enabled() {
            f(&self.0.0);
        }
    }

    /// [`count`] on this shard.
    #[inline]
    pub fn count(&self, counter: Counter, n: u64) {
        self.with(|s| bump(&s.counters[counter as usize], n));
    }

    /// [`block_born`] on this shard.
    #[inline(always)]
    pub fn block_born(&self, addr: usize, bytes: usize, class: Option<u16>) {
        self.with(|s| born(s, bytes, class, false));
        track_born(addr, bytes);
    }

    /// [`block_died`] on this shard.
    #[inline(always)]
    pub fn block_died(&self, addr: usize, bytes: usize) {
        self.with(|s| died(s, bytes));
        track_died(addr);
    }
}

impl Default for ThreadShard {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts `n` of `counter` on this thread.
#[inline]
pub fn count(counter: Counter, n: u64) {
    with_shard(|s| bump(&s.counters[counter as usize], n));
}

#[inline(always)]
fn born(s: &Shard, bytes: usize, class: Option<u16>, wrapped: bool) {
    if wrapped {
        bump(&s.counters[Counter::Wraps as usize], 1);
    } else {
        let bucket = class.map_or(CLASSES - 1, |c| c as usize);
        bump(&s.by_class[bucket], 1);
    }
    let live = s
        .bytes_live
        .load(Ordering::Relaxed)
        .wrapping_add(bytes as i64);
    s.bytes_live.store(live, Ordering::Relaxed);
    if live - s.peak_mark.load(Ordering::Relaxed) >= PEAK_STEP {
        s.peak_mark.store(live, Ordering::Relaxed);
        update_peak();
    }
}

#[inline(always)]
fn died(s: &Shard, bytes: usize) {
    bump(&s.counters[Counter::Frees as usize], 1);
    bump_signed(&s.bytes_live, -(bytes as i64));
}

#[inline(always)]
fn track_born(addr: usize, bytes: usize) {
    if TRACKING.load(Ordering::Relaxed) {
        tracked_born(addr, bytes);
    }
}

#[inline(always)]
fn track_died(addr: usize) {
    if TRACKING.load(Ordering::Relaxed) {
        tracked_died(addr);
    }
}

/// [`track_born`] while tracking: the block is recorded, and charged to the element running.
#[cold]
#[inline(never)]
fn tracked_born(addr: usize, bytes: usize) {
    if let Ok(mut t) = LIVE.lock()
        && t.blocks.insert(addr, bytes).is_none()
    {
        t.live += bytes as u64;
        t.peak = t.peak.max(t.live);
    }
    attribution::allocated(addr, bytes, false);
}

/// [`track_died`] while tracking.
#[cold]
#[inline(never)]
fn tracked_died(addr: usize) {
    if let Ok(mut t) = LIVE.lock()
        && let Some(bytes) = t.blocks.remove(&addr)
    {
        t.live -= bytes as u64;
    }
    attribution::freed(addr);
}

/// A root block of `bytes` bytes came to life: allocated (`class`: its size class, `None`:
/// too large to cache) or, with `wrapped`, wrapped. `addr` identifies it for leak tracking.
#[inline]
pub fn block_born(addr: usize, bytes: usize, class: Option<u16>, wrapped: bool) {
    with_shard(|s| born(s, bytes, class, wrapped));
    track_born(addr, bytes);
}

/// A root block of `bytes` bytes was freed.
#[inline]
pub fn block_died(addr: usize, bytes: usize) {
    with_shard(|s| died(s, bytes));
    track_died(addr);
}

/// Sums live bytes over all shards and raises the peak to it; returns the sum.
fn update_peak() -> i64 {
    let live = match REGISTRY.lock() {
        Ok(r) => {
            r.retired.bytes_live.load(Ordering::Relaxed)
                + r.shards
                    .iter()
                    .map(|s| s.bytes_live.load(Ordering::Relaxed))
                    .sum::<i64>()
        }
        Err(_) => 0,
    };
    PEAK.fetch_max(live, Ordering::Relaxed);
    live
}

/// A guard violation, as the tracer reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The damaged block (its address, for matching).
    pub block: usize,
    /// The element that pushed the damaged buffer, when known.
    pub element: Option<String>,
    pub block_maxsize: usize,
    pub area: &'static str,
    pub range: std::ops::Range<isize>,
    pub when: String,
}

static VIOLATIONS: Mutex<Vec<Violation>> = Mutex::new(Vec::new());
/// Violations kept for reports; more are counted but not kept.
const MAX_VIOLATIONS: usize = 1000;

/// Keeps `v` for reports.
pub fn record_violation(v: Violation) {
    if let Ok(mut l) = VIOLATIONS.lock()
        && l.len() < MAX_VIOLATIONS
    {
        l.push(v);
    }
}

/// Names `element` as the one that pushed `block`, on its violations found without one.
pub fn name_violations(block: usize, element: &str) {
    if let Ok(mut l) = VIOLATIONS.lock() {
        for v in l
            .iter_mut()
            .filter(|v| v.block == block && v.element.is_none())
        {
            v.element = Some(element.to_owned());
        }
    }
}

/// The violations kept so far.
pub fn violations() -> Vec<Violation> {
    VIOLATIONS.lock().map(|l| l.clone()).unwrap_or_default()
}

/// Starts or stops recording every live root block (for leak reports).
pub fn set_tracking(on: bool) {
    if let Ok(mut t) = LIVE.lock() {
        *t = Tracked::default();
    }
    TRACKING.store(on, Ordering::Relaxed);
}

/// The root blocks alive now that were born while tracking was on: `(address, bytes)`,
/// largest first.
pub fn tracked_blocks() -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = LIVE
        .lock()
        .map(|t| t.blocks.iter().map(|(&a, &b)| (a, b)).collect())
        .unwrap_or_default();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// A snapshot of every statistic, summed over all threads, minus the last reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub blocks_live: u64,
    pub bytes_live: u64,
    pub peak_bytes: u64,
    pub cached_bytes: u64,
    counters: [u64; COUNTERS],
    /// Allocations per size class: `(class size in bytes, count)`; `usize::MAX` stands for
    /// blocks too large to cache.
    pub by_class: Vec<(usize, u64)>,
}

impl Stats {
    pub fn get(&self, counter: Counter) -> u64 {
        self.counters[counter as usize]
    }

    /// `(name, value)` of every field, in the order of the `stats` structure.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        let mut v = vec![
            ("blocks-live", self.blocks_live),
            ("bytes-live", self.bytes_live),
            ("peak-bytes", self.peak_bytes),
            ("cached-bytes", self.cached_bytes),
        ];
        v.extend(
            COUNTER_NAMES
                .iter()
                .zip(self.counters)
                .map(|(n, c)| (*n, c)),
        );
        v
    }

    /// The statistics as a `memkit-allocator-stats` structure of `guint64` fields.
    pub fn to_structure(&self) -> gst::Structure {
        let mut s = gst::Structure::new_empty("memkit-allocator-stats");
        for (name, value) in self.fields() {
            s.set(name, value);
        }
        s
    }
}

/// Every counter of `total`, the derived ones (allocations, cache hits) included.
fn absolute_counters(total: &Shard) -> [u64; COUNTERS] {
    let mut absolute = [0u64; COUNTERS];
    for (i, c) in absolute.iter_mut().enumerate() {
        *c = total.counters[i].load(Ordering::Relaxed);
    }
    let all: u64 = total
        .by_class
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum();
    let uncached = total.by_class[CLASSES - 1].load(Ordering::Relaxed);
    absolute[Counter::Allocations as usize] = all;
    absolute[Counter::CacheHits as usize] =
        (all - uncached).saturating_sub(absolute[Counter::CacheMisses as usize]);
    absolute
}

/// The exact peak of the tracked blocks (0 when tracking is off).
fn tracked_peak() -> u64 {
    LIVE.lock().map(|t| t.peak).unwrap_or(0)
}

/// Sums every shard.
pub fn snapshot(cached_bytes: usize) -> Stats {
    let live_now = update_peak();
    let Ok(r) = REGISTRY.lock() else {
        return Stats {
            blocks_live: 0,
            bytes_live: 0,
            peak_bytes: 0,
            cached_bytes: cached_bytes as u64,
            counters: [0; COUNTERS],
            by_class: Vec::new(),
        };
    };
    let total = Shard::default();
    r.retired.fold_into(&total);
    for s in &r.shards {
        s.fold_into(&total);
    }
    let absolute = absolute_counters(&total);
    let blocks_live = (absolute[Counter::Allocations as usize] + absolute[Counter::Wraps as usize])
        .saturating_sub(absolute[Counter::Frees as usize]);
    let mut counters = [0u64; COUNTERS];
    for (i, c) in counters.iter_mut().enumerate() {
        *c = absolute[i].wrapping_sub(r.baseline[i]);
    }
    let by_class = (0..CLASSES)
        .filter_map(|i| {
            let n = total.by_class[i]
                .load(Ordering::Relaxed)
                .wrapping_sub(r.baseline_by_class[i]);
            let bytes = if i == CLASSES - 1 {
                usize::MAX
            } else {
                classes::class_bytes(i as u16)
            };
            (n > 0).then_some((bytes, n))
        })
        .collect();
    Stats {
        blocks_live,
        bytes_live: live_now.max(0) as u64,
        peak_bytes: (PEAK.load(Ordering::Relaxed).max(0) as u64).max(tracked_peak()),
        cached_bytes: cached_bytes as u64,
        counters,
        by_class,
    }
}

/// Zeroes the counters and the histogram, and lowers the peak to the bytes live now. The live
/// figures are state, not counts: they stay.
pub fn reset() {
    let live = update_peak();
    if let Ok(mut r) = REGISTRY.lock() {
        let total = Shard::default();
        r.retired.fold_into(&total);
        for s in &r.shards {
            s.fold_into(&total);
        }
        r.baseline = absolute_counters(&total);
        for i in 0..CLASSES {
            r.baseline_by_class[i] = total.by_class[i].load(Ordering::Relaxed);
        }
    }
    PEAK.store(live, Ordering::Relaxed);
    if let Ok(mut t) = LIVE.lock() {
        t.peak = t.live;
    }
}
