// SPDX-License-Identifier: MPL-2.0
//! Allocator statistics (issue 6): exact counter values after a scripted sequence, read
//! through the Rust API and through the allocator's `stats` property, and reset.
//!
//! Statistics are process-wide, so this binary has one test that runs the whole script.

use gst::prelude::*;
use gstmemkit::allocator::{self, aligned_allocator, stats::Counter};

const MIB: usize = 1 << 20;

fn get(s: &gst::Structure, field: &str) -> u64 {
    s.get::<u64>(field)
        .unwrap_or_else(|e| panic!("{field}: {e} in {s}"))
}

#[test]
fn scripted_sequence_gives_exact_counts() {
    gst::init().unwrap();
    gstmemkit::plugin_register_static().unwrap();
    let a = aligned_allocator();
    allocator::set_max_cached_bytes(allocator::DEFAULT_MAX_CACHED_BYTES);
    allocator::trim_cache();
    allocator::set_guard_enabled(false);
    a.emit_by_name::<()>("reset-stats", &[]);

    let s = allocator::stats();
    assert_eq!(s.get(Counter::Allocations), 0, "reset zeroes the counters");
    assert_eq!((s.blocks_live, s.bytes_live), (0, 0));

    // Two 1 MiB blocks: both misses (the cache was trimmed).
    let m1 = a.alloc_aligned(MIB, None).unwrap();
    let m2 = a.alloc_aligned(MIB, None).unwrap();
    let s = allocator::stats();
    assert_eq!(s.get(Counter::Allocations), 2);
    assert_eq!(s.get(Counter::CacheMisses), 2);
    assert_eq!(s.get(Counter::CacheHits), 0);
    assert_eq!((s.blocks_live, s.bytes_live), (2, 2 * MIB as u64));
    assert_eq!(s.peak_bytes, 2 * MIB as u64);

    // Shares: three; two contiguous ones span once; one map of m1, three of m2.
    let left = m1.share(0..1000).unwrap();
    let right = m1.share(1000..3000).unwrap();
    let other = m2.share(..10).unwrap();
    assert_eq!(left.is_span(&right), Some(0));
    assert_eq!(
        right.is_span(&left),
        None,
        "not contiguous in that order: no hit"
    );
    drop(m1.map_readable().unwrap());
    for _ in 0..3 {
        drop(m2.map_readable().unwrap());
    }
    // A copy of 3000 bytes: one more allocation (a miss: no 3 KiB block cached).
    let copy = right.copy_range(..).unwrap();
    assert_eq!(copy.size(), 2000);

    let s = allocator::stats();
    assert_eq!(s.get(Counter::Shares), 3);
    assert_eq!(s.get(Counter::SpanHits), 1);
    assert_eq!(
        s.get(Counter::Maps),
        0,
        "maps are counted when their memory is freed"
    );
    assert_eq!(s.get(Counter::Copies), 1);
    assert_eq!(s.get(Counter::BytesCopied), 2000);
    assert_eq!(s.get(Counter::Allocations), 3);
    assert_eq!(s.blocks_live, 3, "shares are not blocks");
    assert_eq!(s.bytes_live, 2 * MIB as u64 + 2048);

    // A wrapped vector is a live block too.
    let wrapped = a.wrap(vec![7u8; 500], 0, 500).unwrap();
    assert_eq!(allocator::stats().get(Counter::Wraps), 1);
    assert_eq!(allocator::stats().blocks_live, 4);

    // Free everything: shares first (they hold the roots).
    drop((left, right, other, copy, wrapped));
    drop((m1, m2));
    let s = allocator::stats();
    assert_eq!(s.get(Counter::Maps), 4, "every map, counted at the free");
    assert_eq!(s.get(Counter::Frees), 4);
    assert_eq!((s.blocks_live, s.bytes_live), (0, 0));
    assert_eq!(
        s.peak_bytes,
        2 * MIB as u64 + 2048 + 500,
        "peak seen while all were live"
    );
    assert!(s.cached_bytes >= 2 * MIB as u64);

    // Allocating again is served by the cache: hits.
    let again: Vec<_> = (0..2)
        .map(|_| a.alloc_aligned(MIB, None).unwrap())
        .collect();
    let s = allocator::stats();
    assert_eq!(s.get(Counter::CacheHits), 2);
    assert_eq!(s.get(Counter::CacheMisses), 3);
    assert_eq!(
        s.by_class,
        vec![(2048, 1), (MIB, 4)],
        "allocations by size class"
    );

    // The same numbers through the GObject property, as C and Python read them.
    let st = a.property::<gst::Structure>("stats");
    assert_eq!(st.name(), "memkit-allocator-stats");
    for (field, value) in s.fields() {
        if field != "peak-bytes" && field != "cached-bytes" {
            assert_eq!(get(&st, field), value, "{field}");
        }
    }
    assert_eq!(get(&st, "allocations"), 5);
    assert_eq!(get(&st, "blocks-live"), 2);

    // Reset: counters to zero, the live figures stay, the peak drops to what is live.
    a.emit_by_name::<()>("reset-stats", &[]);
    let st = a.property::<gst::Structure>("stats");
    assert_eq!(get(&st, "allocations"), 0);
    assert_eq!(get(&st, "cache-hits"), 0);
    assert_eq!(get(&st, "frees"), 0);
    assert_eq!(get(&st, "blocks-live"), 2);
    assert_eq!(get(&st, "bytes-live"), 2 * MIB as u64);
    assert_eq!(get(&st, "peak-bytes"), 2 * MIB as u64);
    drop(again);
    let s = allocator::stats();
    assert_eq!(s.get(Counter::Frees), 2);
    assert_eq!(s.blocks_live, 0);

    // With collection off, nothing is counted.
    a.set_property("collect-stats", false);
    drop(a.alloc_aligned(100, None).unwrap());
    a.set_property("collect-stats", true);
    assert_eq!(allocator::stats().get(Counter::Allocations), 0);

    // Another thread allocates through GStreamer's API (the class's `alloc`, whose common path
    // counts on the thread's own shard), frees, and ends: its counts stay after it is gone,
    // and its second round is served by the blocks of its first.
    let before = allocator::stats();
    let generic = a.clone().upcast::<gst::Allocator>();
    std::thread::spawn(move || {
        for _ in 0..2 {
            let mems: Vec<gst::Memory> = (0..10)
                .map(|_| generic.alloc(1000, None).unwrap())
                .collect();
            drop(mems);
        }
    })
    .join()
    .unwrap();
    let s = allocator::stats();
    let delta = |c: Counter| s.get(c) - before.get(c);
    assert_eq!(delta(Counter::Allocations), 20);
    assert_eq!(delta(Counter::Frees), 20);
    assert_eq!(
        delta(Counter::CacheHits),
        10,
        "the second round reuses the first's"
    );
    assert_eq!(delta(Counter::CacheMisses), 10);
    assert_eq!(
        (s.blocks_live, s.bytes_live),
        (before.blocks_live, before.bytes_live)
    );

    // Guard mode: a violation is found at write-unmap, counted, and not counted twice.
    a.set_property("guard", true);
    let mut g = a.alloc_aligned(100, None).unwrap();
    assert_eq!(g.maxsize(), 128, "guard mode changes no observable size");
    assert_eq!(g.payload_addr() % 64, 0);
    {
        let m = g.get_mut().unwrap();
        m.try_resize(0, 128).unwrap();
        // Writing the tail slack is legal: it is inside maxsize.
        m.map_writable().unwrap().as_mut_slice()[127] = 1;
    }
    assert_eq!(
        allocator::stats().get(Counter::GuardViolations),
        0,
        "no false alarm"
    );
    drop(g);
    a.set_property("guard", false);
    assert_eq!(allocator::stats().get(Counter::GuardViolations), 0);
}
