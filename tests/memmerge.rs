// SPDX-License-Identifier: MPL-2.0
//! memmerge: target-size outputs, zero-copy when pieces are spans, remainder at EOS/DISCONT/caps.

mod common;
use common::{init, message_text};

use gst::prelude::*;
use gst_check::Harness;
use gstmemkit::allocator::{AlignedMemory, aligned_allocator};
use gstmemkit::elements::memory::mapped_addr;

fn harness(target: u32) -> Harness {
    let mut h = Harness::new("memmerge");
    h.element().unwrap().set_property("target-size", target);
    h.set_src_caps_str("application/x-memkit-test");
    h
}

fn stat(h: &Harness, field: &str) -> u64 {
    h.element()
        .unwrap()
        .property::<gst::Structure>("stats")
        .get::<u64>(field)
        .unwrap()
}

fn parent(size: usize, seed: u8) -> gst::Buffer {
    let p = gst::AllocationParams::new(gst::MemoryFlags::empty(), 0, 64, 0);
    let mut mem = aligned_allocator().alloc_aligned(size, Some(&p)).unwrap();
    mem.get_mut()
        .unwrap()
        .map_writable()
        .unwrap()
        .as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = seed.wrapping_add((i % 251) as u8));
    let mut buf = gst::Buffer::new();
    buf.get_mut().unwrap().append_memory(mem.upcast_memory());
    buf
}

fn bytes(buf: &gst::BufferRef) -> Vec<u8> {
    buf.map_readable().unwrap().as_slice().to_vec()
}

#[test]
fn contiguous_shares_merge_without_copying() {
    init();
    let mut h = harness(4000);
    let whole = parent(8000, 3);
    let base = mapped_addr(whole.peek_memory(0)).unwrap();
    for i in 0..8 {
        let mut piece = whole
            .copy_region(gst::BufferCopyFlags::MEMORY, i * 1000..(i + 1) * 1000)
            .unwrap();
        if i == 0 {
            piece
                .get_mut()
                .unwrap()
                .set_pts(gst::ClockTime::from_seconds(5));
        }
        h.push(piece).unwrap();
    }
    assert_eq!(h.buffers_in_queue(), 2);
    let a = h.pull().unwrap();
    let b = h.pull().unwrap();
    assert_eq!((a.n_memory(), b.n_memory()), (1, 1));
    assert_eq!(
        mapped_addr(a.peek_memory(0)).unwrap(),
        base,
        "one share of the parent"
    );
    assert_eq!(mapped_addr(b.peek_memory(0)).unwrap(), base + 4000);
    assert_eq!(bytes(&a), bytes(&whole)[..4000]);
    assert_eq!(bytes(&b), bytes(&whole)[4000..]);
    assert_eq!(a.pts(), Some(gst::ClockTime::from_seconds(5)));
    assert_eq!((a.offset(), a.offset_end(), b.offset()), (0, 4000, 4000));
    assert_eq!(
        (
            stat(&h, "zero-copy-merges"),
            stat(&h, "copied-merges"),
            stat(&h, "bytes-copied")
        ),
        (2, 0, 0)
    );
}

#[test]
fn unrelated_buffers_are_copied_once_into_aligned_memory() {
    init();
    let mut h = harness(3000);
    let inputs: Vec<_> = (0..3).map(|i| parent(1000, i as u8 * 50)).collect();
    let mut expected = Vec::new();
    for b in &inputs {
        expected.extend(bytes(b));
    }
    for b in inputs {
        h.push(b).unwrap();
    }
    let out = h.pull().unwrap();
    assert_eq!(out.n_memory(), 1);
    assert!(out.peek_memory(0).is_memory_type::<AlignedMemory>());
    assert_eq!(mapped_addr(out.peek_memory(0)).unwrap() % 64, 0);
    assert_eq!(bytes(&out), expected);
    assert_eq!(
        (stat(&h, "copied-merges"), stat(&h, "bytes-copied")),
        (1, 3000)
    );
}

#[test]
fn a_piece_crossing_the_target_is_split_by_sharing() {
    init();
    let mut h = harness(1500);
    let whole = parent(1000, 0);
    let second = parent(1000, 100);
    h.push(whole.clone()).unwrap();
    h.push(second.clone()).unwrap();
    let out = h.pull().unwrap();
    assert_eq!(out.size(), 1500);
    let mut expected = bytes(&whole);
    expected.extend(&bytes(&second)[..500]);
    assert_eq!(bytes(&out), expected);
    h.push_event(gst::event::Eos::new());
    let rest = h.pull().unwrap();
    assert_eq!(bytes(&rest), bytes(&second)[500..]);
    assert_eq!(
        mapped_addr(rest.peek_memory(0)).unwrap(),
        mapped_addr(second.peek_memory(0)).unwrap() + 500,
        "the tail is a share"
    );
}

#[test]
fn remainder_is_pushed_at_eos() {
    init();
    let mut h = harness(2048);
    for _ in 0..3 {
        h.push(parent(1000, 1)).unwrap();
    }
    assert_eq!(h.buffers_in_queue(), 1);
    assert!(h.push_event(gst::event::Eos::new()));
    assert_eq!(h.buffers_in_queue(), 2);
    assert_eq!(h.pull().unwrap().size(), 2048);
    assert_eq!(h.pull().unwrap().size(), 3000 - 2048);
}

#[test]
fn discont_pushes_the_remainder_first() {
    init();
    let mut h = harness(10_000);
    h.push(parent(1000, 1)).unwrap();
    let mut d = parent(500, 2);
    d.get_mut().unwrap().set_flags(gst::BufferFlags::DISCONT);
    h.push(d).unwrap();
    let first = h.pull().unwrap();
    assert_eq!(first.size(), 1000);
    assert!(!first.flags().contains(gst::BufferFlags::DISCONT));
    h.push_event(gst::event::Eos::new());
    let second = h.pull().unwrap();
    assert_eq!(second.size(), 500);
    assert!(second.flags().contains(gst::BufferFlags::DISCONT));
}

#[test]
fn renegotiation_pushes_old_bytes_before_the_new_caps() {
    init();
    let mut h = harness(10_000);
    h.push(parent(700, 1)).unwrap();
    assert_eq!(h.buffers_in_queue(), 0);
    h.set_src_caps_str("application/x-memkit-other");
    assert_eq!(h.buffers_in_queue(), 1, "drained at the caps event");
    assert_eq!(h.pull().unwrap().size(), 700);
    h.push(parent(300, 1)).unwrap();
    h.push_event(gst::event::Eos::new());
    assert_eq!(h.pull().unwrap().size(), 300);
}

#[test]
fn flush_discards_what_is_pending() {
    init();
    let mut h = harness(10_000);
    h.push(parent(700, 1)).unwrap();
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    h.push(parent(300, 1)).unwrap();
    h.push_event(gst::event::Eos::new());
    let out = h.pull().unwrap();
    assert_eq!((out.size(), out.offset()), (300, 0));
    assert_eq!(h.buffers_in_queue(), 0);
}

#[test]
fn empty_buffers_contribute_nothing() {
    init();
    let mut h = harness(100);
    h.push(gst::Buffer::new()).unwrap();
    h.push(parent(100, 0)).unwrap();
    assert_eq!(h.pull().unwrap().size(), 100);
    assert_eq!(h.buffers_in_queue(), 0);
}

#[test]
fn unmappable_memory_that_must_be_copied_is_an_error() {
    init();
    let mut h = harness(200);
    h.push(parent(100, 0)).unwrap();
    let p = gst::AllocationParams::new(gst::MemoryFlags::NOT_MAPPABLE, 0, 0, 0);
    let mem = aligned_allocator().alloc_aligned(100, Some(&p)).unwrap();
    let mut buf = gst::Buffer::new();
    buf.get_mut().unwrap().append_memory(mem.upcast_memory());
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    assert_eq!(h.push(buf), Err(gst::FlowError::Error));
    let text = message_text(&bus, gst::MessageType::Error);
    assert_eq!(text, "A memory to merge cannot be mapped for reading");
}

#[test]
fn slice_then_merge_round_trips_byte_exactly() {
    init();
    for (chunk, target) in [(1000u32, 3000u32), (777, 1234), (4096, 65536), (1, 7)] {
        let mut h = Harness::new_parse(&format!(
            "memslice chunk-size={chunk} ! memmerge target-size={target}"
        ));
        h.set_src_caps_str("application/x-memkit-test");
        let mut expected = Vec::new();
        for i in 0..5 {
            let b = parent(1500 + i * 333, i as u8);
            expected.extend(bytes(&b));
            h.push(b).unwrap();
        }
        h.push_event(gst::event::Eos::new());
        let mut got = Vec::new();
        while let Some(b) = h.try_pull() {
            got.extend(bytes(&b));
        }
        assert_eq!(got, expected, "chunk {chunk} target {target}");
    }
}

/// Hardening (issue 9, fault 10): a 65535-byte buffer merged into one-byte outputs, every
/// output kept downstream (the harness holds them): outputs are made one at a time, and past
/// `MAX_LIVE_SHARES` holders of the memory they are copies, so core's 16-bit share count
/// never overflows (which raised CRITICALs, fatal here).
#[test]
fn one_byte_outputs_held_downstream_never_overflow_the_share_count() {
    init();
    let mut h = harness(1);
    let input = parent(65_535, 3);
    let expected = bytes(&input);
    h.push(input).unwrap();
    let mut outputs = Vec::with_capacity(65_535);
    while let Some(out) = h.try_pull() {
        outputs.push(out);
    }
    assert_eq!(outputs.len(), 65_535);
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(bytes(out), &expected[i..i + 1]);
    }
    assert!(stat(&h, "pieces-copied") > 0);
}

/// Many small spans pending at once are merged into one share as they come (not held as
/// 70000 shares): a memslice-style stream of one-byte shares into a 70000-byte output.
#[test]
fn many_pending_pieces_are_merged_as_they_come() {
    init();
    let mut h = harness(70_000);
    let input = parent(70_000, 5);
    let expected = bytes(&input);
    for i in 0..70_000 {
        let piece = input
            .copy_region(gst::BufferCopyFlags::MEMORY, i..i + 1)
            .unwrap();
        h.push(piece).unwrap();
        assert!(
            gstmemkit::elements::memory::live_shares(input.peek_memory(0)) < 2048,
            "at most about a thousand pending shares at any time"
        );
    }
    let out = h.pull().unwrap();
    assert_eq!(bytes(&out), expected);
    assert_eq!(stat(&h, "bytes-copied"), 0, "contiguous spans: zero-copy");
}
