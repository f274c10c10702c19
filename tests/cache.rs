// SPDX-License-Identifier: MPL-2.0
//! The recycling cache of `AlignedMemory` (issue 4): a reused block is indistinguishable from
//! a fresh one, the cache is bounded and can be disabled and trimmed, memories of the
//! registered allocator take no reference on it, and large blocks are page/huge-page aligned.
//!
//! The cache bound is process-wide, so every test here takes `LOCK` and restores the bound.

mod common;
use common::init;

use std::sync::{Mutex, MutexGuard};

use gst::prelude::*;
use gstmemkit::allocator::{self, AlignedAllocator, AlignedMemory, aligned_allocator};
use gstmemkit::elements::memory::with_mapped_region;

static LOCK: Mutex<()> = Mutex::new(());

/// One test's hold on the cache: the test lock, and on drop this thread's free lists emptied
/// before the lock is released. Otherwise the test's thread, ending after the lock is free,
/// would hand its lists to the shared pool in the middle of the next test (which then saw a
/// pool holding blocks it never freed).
struct Serial(#[allow(dead_code, reason = "held for its Drop")] MutexGuard<'static, ()>);

impl Drop for Serial {
    fn drop(&mut self) {
        allocator::trim_cache();
    }
}

/// Initialises GStreamer, takes the test lock and re-enables the cache with its default bound
/// (this binary runs with and without `MEMKIT_MAX_CACHED_BYTES=0`).
fn setup() -> Serial {
    init();
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    allocator::set_max_cached_bytes(allocator::DEFAULT_MAX_CACHED_BYTES);
    allocator::trim_cache();
    Serial(guard)
}

fn zero_params(prefix: usize, padding: usize) -> gst::AllocationParams {
    gst::AllocationParams::new(
        gst::MemoryFlags::ZERO_PREFIXED | gst::MemoryFlags::ZERO_PADDED,
        63,
        prefix,
        padding,
    )
}

/// Overwrites the whole region `[0, maxsize)` of a writable root with `byte`.
fn dirty_region(mem: &mut AlignedMemory, byte: u8) {
    let (offset, maxsize) = (mem.offset(), mem.maxsize());
    let m = mem.get_mut().unwrap();
    m.try_resize(-(offset as isize), maxsize).unwrap();
    m.map_writable().unwrap().as_mut_slice().fill(byte);
}

#[test]
fn a_reused_block_is_indistinguishable_from_a_fresh_one() {
    let _g = setup();
    let a = aligned_allocator();
    let params = zero_params(64, 64);

    let mut first = a.alloc_aligned(1000, Some(&params)).unwrap();
    let addr = first.payload_addr();
    // Leave the block dirty in every way a user can: bytes everywhere, offset and size moved,
    // ZERO flags cleared by the resize, a share taken and dropped (exclusive lock + release).
    dirty_region(&mut first, 0xAA);
    drop(first.share(..16).unwrap());
    drop(first);

    let again = a.alloc_aligned(1000, Some(&params)).unwrap();
    assert_eq!(
        again.payload_addr(),
        addr,
        "same thread, same class: the block is reused"
    );
    assert_eq!((again.offset(), again.size()), (64, 1000));
    assert_eq!(
        again.maxsize(),
        64 + 1000 + 64 + 24,
        "rounded up to 64 as when fresh"
    );
    assert_eq!(
        again.flags(),
        gst::MemoryFlags::ZERO_PREFIXED | gst::MemoryFlags::ZERO_PADDED
    );
    assert!(again.parent().is_none());
    assert_eq!(again.ref_count(), 1);
    assert!(again.is_writable());
    assert_eq!(again.allocator().unwrap(), a.upcast_ref::<gst::Allocator>());
    // The ZERO ranges are zeroed again; the payload is not (that would cost the whole block).
    let (prefix, pay, pad) = with_mapped_region(&again, |region, offset, size| {
        (
            region[..offset].to_vec(),
            region[offset..offset + size].to_vec(),
            region[offset + size..].to_vec(),
        )
    })
    .unwrap();
    assert!(prefix.iter().all(|&b| b == 0), "prefix zeroed on reuse");
    assert!(
        pad.iter().all(|&b| b == 0),
        "padding and slack zeroed on reuse"
    );
    assert!(
        pay.iter().all(|&b| b == 0xAA),
        "payload left as it was: no full zeroing"
    );

    // The lock state is fresh: it maps for writing and shares.
    let mut again = again;
    again
        .get_mut()
        .unwrap()
        .map_writable()
        .unwrap()
        .as_mut_slice()[0] = 1;
    assert_eq!(again.share(..1).unwrap().size(), 1);
}

#[test]
fn without_zero_flags_a_reused_block_keeps_no_zero_promise() {
    let _g = setup();
    let a = aligned_allocator();
    let mut m = a.alloc_aligned(4000, None).unwrap();
    dirty_region(&mut m, 0x55);
    let addr = m.payload_addr();
    drop(m);
    let m = a.alloc_aligned(4000, None).unwrap();
    assert_eq!(m.payload_addr(), addr);
    assert!(
        m.flags().is_empty(),
        "flags are the new request's, not the old block's"
    );
    assert_eq!((m.offset(), m.size(), m.maxsize()), (0, 4000, 4032));
}

#[test]
fn blocks_of_different_alignment_or_class_are_not_mixed() {
    let _g = setup();
    let a = aligned_allocator();
    let page = gst::AllocationParams::new(gst::MemoryFlags::empty(), 4095, 0, 0);
    let m = a.alloc_aligned(1000, None).unwrap();
    drop(m);
    let p = a.alloc_aligned(1000, Some(&page)).unwrap();
    assert_eq!(
        p.payload_addr() % 4096,
        0,
        "a 4 KiB request never gets a 64 B block"
    );
    let big = a.alloc_aligned(100_000, None).unwrap();
    assert!(big.maxsize() >= 100_000);
    // Writing the whole of it proves the storage really holds that many bytes.
    let mut big = big;
    big.get_mut()
        .unwrap()
        .map_writable()
        .unwrap()
        .as_mut_slice()
        .fill(7);
}

#[test]
fn cache_holds_bytes_is_trimmed_and_can_be_disabled() {
    let _g = setup();
    let a = aligned_allocator();
    let blocks: Vec<_> = (0..4)
        .map(|_| a.alloc_aligned(1 << 20, None).unwrap())
        .collect();
    drop(blocks);
    assert!(
        allocator::cached_bytes() >= 4 << 20,
        "freed blocks are cached"
    );
    assert_eq!(
        a.property::<u64>("cached-bytes"),
        allocator::cached_bytes() as u64
    );
    allocator::trim_cache();
    assert_eq!(allocator::cached_bytes(), 0, "trim frees everything");

    a.set_property("max-cached-bytes", 0u64);
    assert_eq!(a.property::<u64>("max-cached-bytes"), 0);
    let blocks: Vec<_> = (0..4)
        .map(|_| a.alloc_aligned(4096, None).unwrap())
        .collect();
    drop(blocks);
    assert_eq!(
        allocator::cached_bytes(),
        0,
        "max-cached-bytes=0 disables the cache"
    );

    // A small bound is honoured: the shared pool stops at it, this thread's own lists at a
    // quarter of it.
    a.set_property("max-cached-bytes", 64u64 << 10);
    let blocks: Vec<_> = (0..64)
        .map(|_| a.alloc_aligned(4096, None).unwrap())
        .collect();
    drop(blocks);
    let cached = allocator::cached_bytes();
    assert_eq!(
        cached,
        (64 << 10) + (16 << 10),
        "pool full, thread lists full"
    );
    a.set_property(
        "max-cached-bytes",
        allocator::DEFAULT_MAX_CACHED_BYTES as u64,
    );
}

#[test]
fn blocks_freed_by_another_thread_come_back_through_the_shared_pool() {
    let _g = setup();
    let a = aligned_allocator();
    let blocks: Vec<_> = (0..4)
        .map(|_| a.alloc_aligned(200_000, None).unwrap())
        .collect();
    let addrs: Vec<usize> = blocks.iter().map(|m| m.payload_addr()).collect();
    // The other thread frees them into its own lists, which go to the shared pool when it ends.
    std::thread::spawn(move || drop(blocks)).join().unwrap();
    let again: Vec<_> = (0..4)
        .map(|_| a.alloc_aligned(200_000, None).unwrap())
        .collect();
    for m in &again {
        assert!(
            addrs.contains(&m.payload_addr()),
            "reused from the shared pool"
        );
    }
}

#[test]
fn registered_allocator_memories_hold_no_reference_on_it() {
    let _g = setup();
    let a = aligned_allocator();
    let before = a.ref_count();
    let mems: Vec<_> = (0..10)
        .map(|_| a.alloc_aligned(100, None).unwrap())
        .collect();
    let shares: Vec<_> = mems.iter().map(|m| m.share(..10).unwrap()).collect();
    assert_eq!(
        a.ref_count(),
        before,
        "no allocator refcount traffic per memory"
    );
    // ... and the contract is intact: allocator, type, span, free through core.
    let found = gst::Allocator::find(Some(allocator::ALIGNED_MEMORY)).unwrap();
    assert_eq!(mems[0].allocator().unwrap(), &found);
    assert!(mems[0].is_type(allocator::ALIGNED_MEMORY));
    let left = mems[1].share(..5).unwrap();
    let right = mems[1].share(5..10).unwrap();
    assert_eq!(left.is_span(&right), Some(0));
    drop((shares, mems, left, right, found));
    assert_eq!(a.ref_count(), before);
}

#[test]
fn other_instances_are_referenced_by_their_memories_and_freed_after_them() {
    let _g = setup();
    let other = gst::glib::Object::new::<AlignedAllocator>();
    let weak = other.downgrade();
    let mem = other.alloc_aligned(1000, None).unwrap();
    assert_eq!(
        other.ref_count(),
        2,
        "a memory of a non-registered instance refs it"
    );
    let share = mem.share(..10).unwrap();
    drop(other);
    assert!(weak.upgrade().is_some(), "kept alive by its memories");
    assert_eq!(
        mem.allocator().unwrap().type_(),
        AlignedAllocator::static_type()
    );
    drop((mem, share));
    // The block went to the cache, which holds no reference: the instance is gone.
    assert!(
        weak.upgrade().is_none(),
        "no allocator<->memory reference cycle"
    );
}

#[test]
fn large_blocks_are_page_and_huge_page_aligned() {
    let _g = setup();
    let a = aligned_allocator();
    let one = a.alloc_aligned(1 << 20, None).unwrap();
    assert_eq!(
        one.payload_addr() % 4096,
        0,
        "1 MiB blocks are mapped: page aligned"
    );
    let four = a.alloc_aligned(4 << 20, None).unwrap();
    assert_eq!(
        four.payload_addr() % (2 << 20),
        0,
        "blocks of 2 MiB and more start on a huge page"
    );
    assert_eq!(
        four.align(),
        63,
        "the reported alignment is still the requested one"
    );
    let mut four = four;
    let m = four.get_mut().unwrap();
    m.map_writable().unwrap().as_mut_slice().fill(3);
    assert!(m.map_readable().unwrap().as_slice().iter().all(|&b| b == 3));
    // With a prefix the payload stays aligned (the region starts before it).
    let p = gst::AllocationParams::new(gst::MemoryFlags::empty(), 4095, 100, 0);
    let m = a.alloc_aligned(3 << 20, Some(&p)).unwrap();
    assert_eq!(m.payload_addr() % 4096, 0);
}
