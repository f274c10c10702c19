// SPDX-License-Identifier: MPL-2.0
//! MemfdMemory statistics: exact counts after a scripted sequence, through the allocator's
//! `stats` property and `reset-stats` signal. One test: the counters are process-wide.

use gst::prelude::*;
use gstmemkit::allocator::memfd::{MEMFD_MEMORY, dup_fd, wrap_fd};

fn get(s: &gst::Structure, f: &str) -> u64 {
    s.get::<u64>(f).unwrap()
}

#[test]
fn scripted_sequence_gives_exact_counts() {
    gst::init().unwrap();
    gstmemkit::plugin_register_static().unwrap();
    gstmemkit::allocator::trim_cache();
    let a = gst::Allocator::find(Some(MEMFD_MEMORY)).unwrap();
    a.emit_by_name::<()>("reset-stats", &[]);
    let st = || a.property::<gst::Structure>("stats");
    assert_eq!(st().name(), "memkit-memfd-stats");
    assert_eq!(get(&st(), "allocations"), 0);

    let m = a.alloc(10_000, None).unwrap(); // maxsize 12288
    let left = m.share(0..100);
    let right = m.share(100..200);
    assert!(left.is_span(&right).is_some());
    drop(m.map_readable().unwrap());
    let copy = right.copy_range(..); // a second allocation, maxsize 4096
    let s = st();
    assert_eq!(get(&s, "allocations"), 2);
    assert_eq!(get(&s, "recycled"), 0);
    assert_eq!(get(&s, "shares"), 2);
    assert_eq!(get(&s, "span-hits"), 1);
    assert_eq!(get(&s, "copies"), 1);
    assert_eq!(get(&s, "bytes-copied"), 100);
    // One read map of the block, one write map of the copy (filled by pread, not a map).
    assert_eq!(get(&s, "maps"), 2);
    assert_eq!(
        (get(&s, "blocks-live"), get(&s, "bytes-live")),
        (2, 12288 + 4096)
    );

    // A received descriptor wrapped as memory counts as a wrap.
    let received = wrap_fd(dup_fd(&copy).unwrap(), 4096, 0, 100, None).unwrap();
    assert_eq!(get(&st(), "wraps"), 1);
    assert_eq!(get(&st(), "blocks-live"), 3);

    drop((left, right, received));
    drop((m, copy));
    let s = st();
    assert_eq!(get(&s, "frees"), 3);
    assert_eq!((get(&s, "blocks-live"), get(&s, "bytes-live")), (0, 0));
    assert_eq!(
        get(&s, "cached-bytes"),
        12288 + 4096,
        "both allocated blocks recycled"
    );

    let again = a.alloc(10_000, None).unwrap();
    assert_eq!(get(&st(), "recycled"), 1);
    assert_eq!(get(&st(), "allocations"), 3);
    drop(again);
    gstmemkit::allocator::trim_cache();
    let s = st();
    assert_eq!(
        get(&s, "frees"),
        4,
        "a trim frees cached blocks without counting them twice"
    );
    assert_eq!(get(&s, "cached-bytes"), 0);

    a.emit_by_name::<()>("reset-stats", &[]);
    assert_eq!(get(&st(), "frees"), 0);
}
