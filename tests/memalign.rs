// SPDX-License-Identifier: MPL-2.0
//! memalign: allocation proposal, passthrough of aligned buffers, copies of the others.

mod common;
use common::{init, message_text};

use gst::prelude::*;
use gst_check::Harness;
use gstmemkit::allocator::{AlignedMemory, aligned_allocator};
use gstmemkit::elements::memory::mapped_addr;

fn harness(props: &str) -> Harness {
    let mut h = Harness::new("memalign");
    let e = h.element().unwrap();
    for kv in props.split_whitespace() {
        let (k, v) = kv.split_once('=').unwrap();
        e.set_property_from_str(k, v);
    }
    h.set_src_caps_str("application/x-memkit-test");
    h
}

fn stats(h: &Harness) -> gst::Structure {
    h.element().unwrap().property::<gst::Structure>("stats")
}

fn count(h: &Harness, field: &str) -> u64 {
    stats(h).get::<u64>(field).unwrap()
}

/// A buffer whose payload is deliberately misaligned: a wrapped Vec starting at offset 1.
fn misaligned(size: usize) -> gst::Buffer {
    let v: Vec<u8> = (0..size + 1).map(|i| i as u8).collect();
    let mem = aligned_allocator().wrap(v, 1, size).unwrap();
    assert_ne!(mem.payload_addr() % 2, 0);
    let mut buf = gst::Buffer::new();
    {
        let b = buf.get_mut().unwrap();
        b.append_memory(mem.upcast_memory());
        b.set_pts(gst::ClockTime::from_mseconds(40));
        b.set_dts(gst::ClockTime::from_mseconds(20));
        b.set_duration(gst::ClockTime::from_mseconds(10));
        b.set_offset(7);
        b.set_flags(gst::BufferFlags::DISCONT | gst::BufferFlags::DELTA_UNIT);
    }
    buf
}

#[test]
fn proposal_makes_upstream_allocate_aligned_memory() {
    init();
    let mut h = harness("alignment=4096 padding=32");
    // The harness negotiated with memalign: its allocator is what memalign proposed.
    let buf = h.create_buffer(1000).unwrap();
    let mem = buf.peek_memory(0);
    assert!(mem.is_memory_type::<AlignedMemory>(), "{mem:?}");
    assert_eq!(mapped_addr(mem).unwrap() % 4096, 0);
    assert!(mem.flags().contains(gst::MemoryFlags::ZERO_PADDED));
    assert!(mem.maxsize() - mem.offset() - mem.size() >= 32);
}

#[test]
fn aligned_buffers_pass_through_untouched() {
    init();
    let mut h = harness("alignment=4096");
    let buf = h.create_buffer(5000).unwrap();
    let ptr = buf.as_ptr();
    let out = h.push_and_pull(buf).unwrap();
    assert_eq!(out.as_ptr(), ptr, "the very same buffer");
    assert_eq!(
        (count(&h, "buffers-passed"), count(&h, "buffers-copied")),
        (1, 0)
    );
}

#[test]
fn misaligned_buffers_are_copied_once_with_metadata() {
    init();
    let mut h = harness("alignment=64");
    let mut input = misaligned(1000);
    // A 10x50 GRAY8 frame whose rows are padded to 20 bytes, from a producer that ignored
    // the ALLOCATION query (the harness): the meta must reach downstream with the copy,
    // which reads the frame with the default stride (10) otherwise.
    gst_video::VideoMeta::add_full(
        input.get_mut().unwrap(),
        gst_video::VideoFrameFlags::empty(),
        gst_video::VideoFormat::Gray8,
        10,
        50,
        &[0],
        &[20],
    )
    .unwrap();
    let ntp = gst::Caps::builder("timestamp/x-ntp").build();
    gst::ReferenceTimestampMeta::add(
        input.get_mut().unwrap(),
        &ntp,
        gst::ClockTime::from_seconds(3),
        None,
    );
    let expected = input.map_readable().unwrap().as_slice().to_vec();
    let out = h.push_and_pull(input).unwrap();
    let meta = out
        .meta::<gst_video::VideoMeta>()
        .expect("the video meta was copied");
    assert_eq!(
        (meta.format(), meta.width(), meta.height()),
        (gst_video::VideoFormat::Gray8, 10, 50)
    );
    assert_eq!(
        (meta.offset(), meta.stride()),
        (&[0usize][..], &[20i32][..])
    );
    let reference = out.meta::<gst::ReferenceTimestampMeta>().unwrap();
    assert_eq!(reference.timestamp(), gst::ClockTime::from_seconds(3));
    let mem = out.peek_memory(0);
    assert!(mem.is_memory_type::<AlignedMemory>());
    assert_eq!(mapped_addr(mem).unwrap() % 64, 0);
    assert_eq!(out.map_readable().unwrap().as_slice(), expected.as_slice());
    assert_eq!(out.pts(), Some(gst::ClockTime::from_mseconds(40)));
    assert_eq!(out.dts(), Some(gst::ClockTime::from_mseconds(20)));
    assert_eq!(out.duration(), Some(gst::ClockTime::from_mseconds(10)));
    assert_eq!(out.offset(), 7);
    assert!(
        out.flags()
            .contains(gst::BufferFlags::DISCONT | gst::BufferFlags::DELTA_UNIT)
    );
    let s = stats(&h);
    assert_eq!(s.get::<u64>("buffers-copied").unwrap(), 1);
    assert_eq!(s.get::<u64>("bytes-copied").unwrap(), 1000);
    assert_eq!(s.get::<u64>("buffers-passed").unwrap(), 0);
}

#[test]
fn missing_zeroed_padding_is_a_reason_to_copy() {
    init();
    let mut h = harness("alignment=64 padding=128");
    // Aligned, but with no guaranteed zero padding after the payload.
    let mem = aligned_allocator().alloc_aligned(1024, None).unwrap();
    let mut buf = gst::Buffer::new();
    buf.get_mut().unwrap().append_memory(mem.upcast_memory());
    let out = h.push_and_pull(buf).unwrap();
    let m = out.peek_memory(0);
    assert!(m.flags().contains(gst::MemoryFlags::ZERO_PADDED));
    assert!(m.maxsize() - m.offset() - m.size() >= 128);
    assert_eq!(count(&h, "buffers-copied"), 1);
}

#[test]
fn multi_memory_buffers_are_checked_per_memory_and_merged_when_copied() {
    init();
    let mut h = harness("alignment=64");
    let a = aligned_allocator().alloc_aligned(100, None).unwrap();
    let b = misaligned(50);
    let mut buf = gst::Buffer::new();
    {
        let bm = buf.get_mut().unwrap();
        bm.append_memory(a.upcast_memory());
        bm.append_memory(b.memory(0).unwrap());
    }
    // Memory by memory: gst_buffer_map would merge the two into one memory of the default
    // allocator and put it in the (writable) buffer, which memalign might then find aligned.
    let expected: Vec<u8> = buf
        .iter_memories()
        .flat_map(|m| m.map_readable().unwrap().as_slice().to_vec())
        .collect();
    assert_eq!(buf.n_memory(), 2);
    let out = h.push_and_pull(buf).unwrap();
    assert_eq!(out.n_memory(), 1);
    assert_eq!(out.map_readable().unwrap().as_slice(), expected.as_slice());
    assert_eq!(count(&h, "buffers-copied"), 1);
}

#[test]
fn buffers_without_memory_and_empty_buffers_pass_through() {
    init();
    let mut h = harness("");
    let out = h.push_and_pull(gst::Buffer::new()).unwrap();
    assert_eq!(out.n_memory(), 0);
    let empty = aligned_allocator().alloc_aligned(0, None).unwrap();
    let mut buf = gst::Buffer::new();
    buf.get_mut().unwrap().append_memory(empty.upcast_memory());
    let out = h.push_and_pull(buf).unwrap();
    assert_eq!(out.size(), 0);
    assert_eq!(count(&h, "buffers"), 2);
}

#[test]
fn unmappable_memory_is_an_error_not_a_crash() {
    init();
    let mut h = harness("");
    let p = gst::AllocationParams::new(gst::MemoryFlags::NOT_MAPPABLE, 0, 0, 0);
    let mem = aligned_allocator().alloc_aligned(64, Some(&p)).unwrap();
    let mut buf = gst::Buffer::new();
    buf.get_mut().unwrap().append_memory(mem.upcast_memory());
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    assert_eq!(h.push(buf), Err(gst::FlowError::Error));
    let text = message_text(&bus, gst::MessageType::Error);
    assert!(
        text.contains("Memory 0 of buffer #0") && text.contains("cannot be mapped for reading"),
        "{text}"
    );
}

#[test]
fn invalid_alignment_is_refused_and_the_old_value_kept() {
    init();
    let e = gst::ElementFactory::make("memalign")
        .property("alignment", 4096u32)
        .build()
        .unwrap();
    e.set_property("alignment", 100u32);
    assert_eq!(e.property::<u32>("alignment"), 4096);
    e.set_property("alignment", 3u32);
    assert_eq!(e.property::<u32>("alignment"), 4096);
    // Out of the 1..2 MiB range: GObject itself refuses (the param spec's range).
    let pspec = e.find_property("alignment").unwrap();
    let pspec = pspec.downcast_ref::<gst::glib::ParamSpecUInt>().unwrap();
    assert_eq!(
        (pspec.minimum(), pspec.maximum(), pspec.default_value()),
        (1, 2 * 1024 * 1024, 64)
    );
}

#[test]
fn stats_are_posted_on_eos() {
    init();
    let mut h = harness("");
    h.push(misaligned(10)).unwrap();
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    assert!(h.push_event(gst::event::Eos::new()));
    let msg = bus
        .pop_filtered(&[gst::MessageType::Element])
        .expect("stats message");
    let s = msg.structure().unwrap();
    assert_eq!(s.name(), "memalign");
    assert_eq!(s.get::<u64>("buffers-copied").unwrap(), 1);
    assert_eq!(s, &stats(&h));
}
