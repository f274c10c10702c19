// SPDX-License-Identifier: MPL-2.0
//! `MemfdMemory`'s statistics. Its operations are system calls and mappings, so plain shared
//! atomic counters cost nothing measurable here.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::attribution;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    Allocations,
    Recycled,
    Frees,
    Wraps,
    Shares,
    Copies,
    BytesCopied,
    SpanHits,
    Maps,
}

const NAMES: [&str; 9] = [
    "allocations",
    "recycled",
    "frees",
    "wraps",
    "shares",
    "copies",
    "bytes-copied",
    "span-hits",
    "maps",
];

static COUNTERS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];
static BLOCKS_LIVE: AtomicI64 = AtomicI64::new(0);
static BYTES_LIVE: AtomicI64 = AtomicI64::new(0);

pub fn count(c: Counter, n: u64) {
    COUNTERS[c as usize].fetch_add(n, Ordering::Relaxed);
}

/// The root block at `addr` came to life (allocated, recycled or wrapped) or died
/// (`born == false`); with the tracer, it is charged to the element running.
pub fn block(addr: usize, bytes: usize, born: bool) {
    if born {
        attribution::allocated(addr, bytes, false);
    } else {
        attribution::freed(addr);
    }
    let sign = if born { 1 } else { -1 };
    BLOCKS_LIVE.fetch_add(sign, Ordering::Relaxed);
    BYTES_LIVE.fetch_add(sign * bytes as i64, Ordering::Relaxed);
}

pub fn get(c: Counter) -> u64 {
    COUNTERS[c as usize].load(Ordering::Relaxed)
}

/// `memkit-memfd-stats`: blocks-live, bytes-live, cached-bytes and the counters.
pub fn to_structure(cached_bytes: usize) -> gst::Structure {
    let mut s = gst::Structure::new_empty("memkit-memfd-stats");
    s.set(
        "blocks-live",
        BLOCKS_LIVE.load(Ordering::Relaxed).max(0) as u64,
    );
    s.set(
        "bytes-live",
        BYTES_LIVE.load(Ordering::Relaxed).max(0) as u64,
    );
    s.set("cached-bytes", cached_bytes as u64);
    for (i, name) in NAMES.iter().enumerate() {
        s.set(*name, COUNTERS[i].load(Ordering::Relaxed));
    }
    s
}

/// Zeroes the counters (the live figures stay).
pub fn reset() {
    for c in &COUNTERS {
        c.store(0, Ordering::Relaxed);
    }
}
