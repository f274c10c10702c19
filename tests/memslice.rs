// SPDX-License-Identifier: MPL-2.0
//! memslice: pieces of chunk-size bytes, shares of the input, with timestamps and offsets.

mod common;
use common::init;

use gst::prelude::*;
use gst_check::Harness;
use gstmemkit::allocator::{AlignedMemory, aligned_allocator};
use gstmemkit::elements::memory::mapped_addr;

fn harness(chunk: u32) -> Harness {
    let mut h = Harness::new("memslice");
    h.element().unwrap().set_property("chunk-size", chunk);
    h.set_src_caps_str("application/x-memkit-test");
    h
}

fn input(size: usize, seed: u8) -> gst::Buffer {
    let mut mem = aligned_allocator().alloc_aligned(size, None).unwrap();
    mem.get_mut()
        .unwrap()
        .map_writable()
        .unwrap()
        .as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = seed.wrapping_add(i as u8));
    let mut buf = gst::Buffer::new();
    {
        let b = buf.get_mut().unwrap();
        b.append_memory(mem.upcast_memory());
        b.set_pts(gst::ClockTime::from_seconds(1));
        b.set_dts(gst::ClockTime::from_mseconds(900));
        b.set_flags(gst::BufferFlags::DISCONT);
    }
    buf
}

fn stat(h: &Harness, field: &str) -> u64 {
    h.element()
        .unwrap()
        .property::<gst::Structure>("stats")
        .get::<u64>(field)
        .unwrap()
}

#[test]
fn pieces_are_zero_copy_shares_with_metadata_on_the_first() {
    init();
    let mut h = harness(4096);
    let buf = input(10000, 1);
    let base = mapped_addr(buf.peek_memory(0)).unwrap();
    let bytes = buf.map_readable().unwrap().as_slice().to_vec();
    h.push(buf).unwrap();
    assert_eq!(h.buffers_in_queue(), 3);
    let mut pos = 0;
    for (i, want) in [4096usize, 4096, 1808].into_iter().enumerate() {
        let p = h.pull().unwrap();
        assert_eq!(p.size(), want);
        assert_eq!(p.n_memory(), 1);
        let mem = p.peek_memory(0);
        assert!(mem.parent().is_some(), "a share");
        assert_eq!(mapped_addr(mem).unwrap(), base + pos, "zero-copy");
        assert_eq!(
            p.map_readable().unwrap().as_slice(),
            &bytes[pos..pos + want]
        );
        assert_eq!(
            (p.offset(), p.offset_end()),
            (pos as u64, (pos + want) as u64)
        );
        if i == 0 {
            assert_eq!(p.pts(), Some(gst::ClockTime::from_seconds(1)));
            assert_eq!(p.dts(), Some(gst::ClockTime::from_mseconds(900)));
            assert!(p.flags().contains(gst::BufferFlags::DISCONT));
        } else {
            assert_eq!((p.pts(), p.dts()), (None, None));
            assert!(!p.flags().contains(gst::BufferFlags::DISCONT));
        }
        pos += want;
    }
    assert_eq!(
        (
            stat(&h, "buffers-in"),
            stat(&h, "pieces-out"),
            stat(&h, "bytes")
        ),
        (1, 3, 10000)
    );
}

#[test]
fn offsets_continue_across_buffers_and_restart_after_flush() {
    init();
    let mut h = harness(3000);
    h.push(input(4000, 0)).unwrap();
    h.push(input(2000, 0)).unwrap();
    let offsets: Vec<_> = (0..3)
        .map(|_| {
            let p = h.pull().unwrap();
            (p.offset(), p.offset_end())
        })
        .collect();
    assert_eq!(offsets, [(0, 3000), (3000, 4000), (4000, 6000)]);
    assert_eq!(h.buffers_in_queue(), 0);
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    h.push(input(10, 0)).unwrap();
    let p = h.pull().unwrap();
    assert_eq!((p.offset(), p.offset_end()), (0, 10));
}

#[test]
fn empty_buffers_are_forwarded_as_one_empty_piece() {
    init();
    let mut h = harness(100);
    let mut empty = gst::Buffer::new();
    empty
        .get_mut()
        .unwrap()
        .set_pts(gst::ClockTime::from_seconds(3));
    let p = h.push_and_pull(empty).unwrap();
    assert_eq!(p.size(), 0);
    assert_eq!(p.pts(), Some(gst::ClockTime::from_seconds(3)));
    assert_eq!(stat(&h, "pieces-out"), 1);
}

#[test]
fn a_chunk_larger_than_the_buffer_gives_one_piece() {
    init();
    let mut h = harness(1 << 20);
    let p = h.push_and_pull(input(777, 5)).unwrap();
    assert_eq!(p.size(), 777);
    assert_eq!(p.map_readable().unwrap().as_slice()[0], 5);
}

#[test]
fn no_share_memory_is_copied_not_refused() {
    init();
    let mut h = harness(10);
    let p = gst::AllocationParams::new(gst::MemoryFlags::NO_SHARE, 0, 0, 0);
    let mut mem = aligned_allocator().alloc_aligned(25, Some(&p)).unwrap();
    mem.get_mut()
        .unwrap()
        .map_writable()
        .unwrap()
        .as_mut_slice()
        .fill(9);
    let mut buf = gst::Buffer::new();
    buf.get_mut().unwrap().append_memory(mem.upcast_memory());
    h.push(buf).unwrap();
    let sizes: Vec<_> = (0..3).map(|_| h.pull().unwrap().size()).collect();
    assert_eq!(sizes, [10, 10, 5]);
}

/// Hardening (issue 9, fault 10): core counts a memory's shares in 16 bits. 70000 one-byte
/// pieces of one memory, all kept by downstream (the harness holds every output), must not
/// overflow it (CRITICALs from gst_mini_object_unlock, fatal here): past
/// `MAX_LIVE_SHARES` holders the pieces are copies, and every byte is still right.
#[test]
fn many_pieces_held_downstream_never_overflow_the_share_count() {
    init();
    let mut h = harness(1);
    let input = input(70_000, 9);
    let expected: Vec<u8> = input.map_readable().unwrap().as_slice().to_vec();
    h.push(input).unwrap();
    let mut pieces = Vec::with_capacity(70_000);
    while let Some(piece) = h.try_pull() {
        pieces.push(piece);
    }
    assert_eq!(pieces.len(), 70_000);
    for (i, piece) in pieces.iter().enumerate() {
        assert_eq!(
            piece.map_readable().unwrap().as_slice(),
            &expected[i..i + 1]
        );
    }
    let copied = stat(&h, "pieces-copied");
    assert!(
        copied > 0 && copied < 70_000,
        "pieces beyond the holder bound are copied, the others shared: {copied}"
    );
    assert!(
        pieces
            .iter()
            .map(|p| gstmemkit::elements::memory::live_shares(p.peek_memory(0)))
            .max()
            .unwrap()
            <= gstmemkit::elements::memory::MAX_LIVE_SHARES + 1
    );
}

#[test]
fn stop_drops_an_input_left_half_cut() {
    init();
    let mut h = harness(10);
    let buf = input(100, 1);
    let mem = buf.memory(0).unwrap();
    let refs = || {
        mem.downcast_memory_ref::<AlignedMemory>()
            .unwrap()
            .ref_count()
    };
    // The first piece cannot be pushed (the sink pad is flushing): memslice is left holding
    // the rest of the input.
    h.sinkpad().unwrap().set_active(false).unwrap();
    assert_eq!(h.push(buf), Err(gst::FlowError::Flushing));
    assert!(refs() > 1, "memslice holds the input");
    h.element().unwrap().set_state(gst::State::Null).unwrap();
    assert_eq!(refs(), 1, "stop() let go of it");
}
