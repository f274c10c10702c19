// SPDX-License-Identifier: MPL-2.0
//! Who owns which setting (structure issue, point 3): each allocator's `max-cached-bytes`
//! governs that allocator's cache only, and disposing an allocator instance leaves every cache
//! alone. The settings are process-wide, so the tests of this binary take turns.

mod common;
use common::init;

use std::sync::Mutex;

use gst::prelude::*;
use gstmemkit::allocator::memfd::{self, memfd_allocator, page_size};
use gstmemkit::allocator::{self, AlignedAllocator, aligned_allocator};

static SERIAL: Mutex<()> = Mutex::new(());

const BOUND: u64 = 64 << 20;

/// Sets both bounds, and puts back what they were when dropped.
struct Bounds {
    aligned: u64,
    memfd: u64,
}

impl Bounds {
    fn set(aligned: u64, memfd: u64) -> Bounds {
        let saved = Bounds {
            aligned: aligned_allocator().property("max-cached-bytes"),
            memfd: memfd_allocator().property("max-cached-bytes"),
        };
        aligned_allocator().set_property("max-cached-bytes", aligned);
        memfd_allocator().set_property("max-cached-bytes", memfd);
        saved
    }
}

impl Drop for Bounds {
    fn drop(&mut self) {
        aligned_allocator().set_property("max-cached-bytes", self.aligned);
        memfd_allocator().set_property("max-cached-bytes", self.memfd);
    }
}

fn aligned_cached() -> u64 {
    aligned_allocator().property("cached-bytes")
}

fn memfd_cached() -> u64 {
    memfd_allocator().property("cached-bytes")
}

/// Allocates and frees one block of each allocator.
fn churn() {
    drop(aligned_allocator().alloc_aligned(1000, None).unwrap());
    drop(
        memfd_allocator()
            .alloc_memfd(2 * page_size(), None)
            .unwrap(),
    );
}

#[test]
fn each_allocator_has_its_own_cache_bound() {
    init();
    let _serial = SERIAL.lock().unwrap();

    let _restore = Bounds::set(BOUND, 0);
    assert_eq!(memfd_allocator().property::<u64>("max-cached-bytes"), 0);
    assert_eq!(
        aligned_allocator().property::<u64>("max-cached-bytes"),
        BOUND,
        "setting MemfdMemory's bound leaves AlignedMemory's"
    );
    churn();
    assert_eq!(memfd_cached(), 0, "MemfdMemory recycles nothing at 0");
    assert!(aligned_cached() > 0, "AlignedMemory still caches");

    aligned_allocator().set_property("max-cached-bytes", 0u64);
    memfd_allocator().set_property("max-cached-bytes", BOUND);
    churn();
    assert_eq!(aligned_cached(), 0, "AlignedMemory caches nothing at 0");
    assert!(
        memfd_cached() >= 2 * page_size() as u64,
        "MemfdMemory still recycles ({} bytes)",
        memfd_cached()
    );
    assert_eq!(memfd::max_cached_bytes() as u64, BOUND);

    // Lowering the bound frees what no longer fits.
    memfd_allocator().set_property("max-cached-bytes", 0u64);
    assert_eq!(memfd_cached(), 0);
}

#[test]
fn disposing_an_allocator_instance_leaves_the_caches() {
    init();
    let _serial = SERIAL.lock().unwrap();
    let _restore = Bounds::set(BOUND, BOUND);
    churn();
    let (aligned_before, memfd_before) = (aligned_cached(), memfd_cached());
    assert!(aligned_before > 0 && memfd_before > 0);

    let own = gst::glib::Object::new::<AlignedAllocator>();
    drop(own.alloc_aligned(1000, None).unwrap());
    drop(own);
    let own = gst::glib::Object::new::<memfd::MemfdAllocator>();
    drop(own.alloc_memfd(page_size(), None).unwrap());
    drop(own);

    assert!(
        aligned_cached() >= aligned_before,
        "AlignedMemory's cache kept ({aligned_before} -> {})",
        aligned_cached()
    );
    assert!(
        memfd_cached() >= memfd_before,
        "MemfdMemory's recycled blocks kept ({memfd_before} -> {})",
        memfd_cached()
    );
    allocator::trim_cache();
    assert_eq!((aligned_cached(), memfd_cached()), (0, 0));
}
