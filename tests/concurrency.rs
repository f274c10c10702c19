// SPDX-License-Identifier: MPL-2.0
//! Thread safety: shares, copies, maps, is_span and unrefs of the same memory from several
//! threads at once, and allocation from several threads.

mod common;
use common::init;

use std::sync::Barrier;
use std::thread;

use gstmemkit::allocator::{AlignedMemory, aligned_allocator};

const THREADS: usize = 4;
const ROUNDS: usize = 5_000;
const SIZE: usize = 4096;

fn pattern(i: usize) -> u8 {
    (i * 7 + 3) as u8
}

#[test]
fn one_memory_shared_copied_mapped_and_unreffed_from_many_threads() {
    init();
    let p = gst::AllocationParams::new(gst::MemoryFlags::empty(), 0, 32, 0);
    let mut mem = aligned_allocator().alloc_aligned(SIZE, Some(&p)).unwrap();
    {
        let m = mem.get_mut().unwrap();
        let mut map = m.map_writable().unwrap();
        for (i, b) in map.as_mut_slice().iter_mut().enumerate() {
            *b = pattern(i);
        }
    }
    let base = mem.payload_addr();
    let barrier = Barrier::new(THREADS);
    thread::scope(|s| {
        for t in 0..THREADS {
            let mem = mem.clone();
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                let mut seed = t as u64 * 0x9e37_79b9 + 1;
                for _ in 0..ROUNDS {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let start = (seed >> 33) as usize % SIZE;
                    let len = (seed >> 13) as usize % (SIZE - start + 1);
                    // share + map: zero-copy view of the same bytes
                    let share = mem.share(start..start + len).unwrap();
                    {
                        let map = share.map_readable().unwrap();
                        if len > 0 {
                            // (gst-rs maps an empty memory as an empty slice)
                            assert_eq!(map.as_slice().as_ptr() as usize, base + start);
                        }
                        for (k, &b) in map.as_slice().iter().enumerate().step_by(97) {
                            assert_eq!(b, pattern(start + k));
                        }
                    }
                    // share of the share, and a span with its neighbour
                    let half = len / 2;
                    let a = share.share(..half).unwrap();
                    let b = share.share(half..).unwrap();
                    assert_eq!(a.is_span(&b), Some(start));
                    // copy: new aligned root with the same bytes
                    let copy = b.copy_range(..).unwrap();
                    assert!(copy.parent().is_none());
                    assert_eq!(copy.payload_addr() & 63, 0);
                    let map = copy.map_readable().unwrap();
                    for (k, &byte) in map.as_slice().iter().enumerate().step_by(89) {
                        assert_eq!(byte, pattern(start + half + k));
                    }
                }
            });
        }
    });
    // Every share and clone is gone: the root is held once, unlocked and writable again.
    assert_eq!(mem.ref_count(), 1);
    assert!(mem.is_writable());
    assert!(mem.get_mut().unwrap().map_writable().is_ok());
}

#[test]
fn allocation_from_many_threads_gives_distinct_aligned_blocks() {
    init();
    let barrier = Barrier::new(THREADS);
    thread::scope(|s| {
        for t in 0..THREADS {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                let mut live: Vec<AlignedMemory> = Vec::new();
                for i in 0..ROUNDS {
                    let size = (i * 31 + t) % 5000;
                    let p =
                        gst::AllocationParams::new(gst::MemoryFlags::ZERO_PADDED, 127, i % 70, 16);
                    let mut mem = aligned_allocator().alloc_aligned(size, Some(&p)).unwrap();
                    assert_eq!(mem.payload_addr() & 127, 0);
                    mem.get_mut()
                        .unwrap()
                        .map_writable()
                        .unwrap()
                        .as_mut_slice()
                        .fill(t as u8);
                    live.push(mem);
                    if live.len() > 16 {
                        let old = live.remove(0);
                        // Nobody else wrote into our block.
                        assert!(
                            old.map_readable()
                                .unwrap()
                                .as_slice()
                                .iter()
                                .all(|&b| b == t as u8)
                        );
                    }
                }
            });
        }
    });
}

#[test]
fn concurrent_read_maps_of_one_memory() {
    init();
    let mem: gst::Memory = aligned_allocator()
        .alloc_aligned(1024, None)
        .unwrap()
        .upcast_memory();
    let expected = mem.map_readable().unwrap().as_slice().as_ptr() as usize;
    thread::scope(|s| {
        for _ in 0..THREADS {
            let mem = &mem;
            s.spawn(move || {
                for _ in 0..ROUNDS {
                    let map = mem.map_readable().unwrap();
                    assert_eq!(map.as_slice().as_ptr() as usize, expected);
                }
            });
        }
    });
    // All read maps were released: a write map is possible again.
    let mut mem = mem;
    assert!(mem.get_mut().unwrap().map_writable().is_ok());
}
