// SPDX-License-Identifier: MPL-2.0
//! memcheck: each rule detected, counted, and fatal with fail-on-violation.

mod common;
use common::init;

use gst::prelude::*;
use gst_check::Harness;
use gstmemkit::allocator::aligned_allocator;

fn harness(props: &[(&str, &str)]) -> Harness {
    let mut h = Harness::new("memcheck");
    let e = h.element().unwrap();
    for (k, v) in props {
        e.set_property_from_str(k, v);
    }
    h.set_src_caps_str("application/x-memkit-test");
    h
}

fn stats(h: &Harness) -> (u64, u64, u64) {
    let s = h.element().unwrap().property::<gst::Structure>("stats");
    (
        s.get("buffers").unwrap(),
        s.get("memories").unwrap(),
        s.get("violations").unwrap(),
    )
}

fn buffer_of(mems: Vec<gst::Memory>) -> gst::Buffer {
    let mut buf = gst::Buffer::new();
    for m in mems {
        buf.get_mut().unwrap().append_memory(m);
    }
    buf
}

fn aligned(size: usize, params: Option<&gst::AllocationParams>) -> gst::Memory {
    aligned_allocator()
        .alloc_aligned(size, params)
        .unwrap()
        .upcast_memory()
}

#[test]
fn good_memory_passes_unchanged() {
    init();
    let mut h = harness(&[("alignment", "64"), ("memory-type", "AlignedMemory")]);
    let p = gst::AllocationParams::new(
        gst::MemoryFlags::ZERO_PREFIXED | gst::MemoryFlags::ZERO_PADDED,
        0,
        16,
        16,
    );
    let buf = buffer_of(vec![aligned(100, Some(&p)), aligned(50, None)]);
    let ptr = buf.as_ptr();
    let out = h.push_and_pull(buf).unwrap();
    assert_eq!(out.as_ptr(), ptr);
    assert_eq!(stats(&h), (1, 2, 0));
}

#[test]
fn misaligned_payload_is_a_violation() {
    init();
    let mut h = harness(&[("alignment", "16")]);
    let v: Vec<u8> = vec![0; 64];
    let mem = aligned_allocator().wrap(v, 1, 32).unwrap().upcast_memory();
    h.push_and_pull(buffer_of(vec![mem])).unwrap();
    assert_eq!(stats(&h), (1, 1, 1));
}

#[test]
fn wrong_memory_type_is_a_violation() {
    init();
    let mut h = harness(&[("memory-type", "AlignedMemory")]);
    h.push_and_pull(buffer_of(vec![gst::Memory::with_size(10)]))
        .unwrap();
    h.push_and_pull(buffer_of(vec![aligned(10, None)])).unwrap();
    assert_eq!(stats(&h), (2, 2, 1));
}

#[test]
fn a_broken_zero_padding_promise_is_a_violation() {
    init();
    let mut h = harness(&[]);
    // Claims ZERO_PADDED and ZERO_PREFIXED (as gst_memory_new_wrapped callers can), but the
    // bytes say otherwise: two violations.
    let v: Vec<u8> = vec![7; 64];
    let flags = gst::MemoryFlags::ZERO_PREFIXED | gst::MemoryFlags::ZERO_PADDED;
    let liar = aligned_allocator()
        .wrap_with_flags(v, 8, 40, flags)
        .unwrap();
    h.push_and_pull(buffer_of(vec![liar.upcast_memory()]))
        .unwrap();
    assert_eq!(stats(&h), (1, 1, 2));
    // The same promise kept: no violation.
    let mut v = vec![0u8; 64];
    v[8..48].fill(7);
    let honest = aligned_allocator()
        .wrap_with_flags(v, 8, 40, flags)
        .unwrap();
    h.push_and_pull(buffer_of(vec![honest.upcast_memory()]))
        .unwrap();
    assert_eq!(stats(&h), (2, 2, 2));
}

#[test]
fn unmappable_memory_is_a_violation_not_a_crash() {
    init();
    let mut h = harness(&[]);
    let p = gst::AllocationParams::new(gst::MemoryFlags::NOT_MAPPABLE, 0, 0, 0);
    h.push_and_pull(buffer_of(vec![aligned(10, Some(&p))]))
        .unwrap();
    assert_eq!(stats(&h), (1, 1, 1));
}

#[test]
fn fail_on_violation_stops_the_stream_with_an_error_naming_the_rule() {
    init();
    let mut h = harness(&[
        ("memory-type", "AlignedMemory"),
        ("fail-on-violation", "true"),
    ]);
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    assert_eq!(
        h.push(buffer_of(vec![gst::Memory::with_size(10)])),
        Err(gst::FlowError::Error)
    );
    let msg = bus
        .pop_filtered(&[gst::MessageType::Error])
        .expect("an error message");
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    let text = err.error().to_string();
    assert!(text.contains("memory-type"), "{text}");
    assert!(
        text.contains("expected AlignedMemory, found SystemMemory"),
        "{text}"
    );
    assert!(text.contains("buffer #0"), "{text}");
}

#[test]
fn buffers_without_memory_pass_and_count() {
    init();
    let mut h = harness(&[("alignment", "4096")]);
    h.push_and_pull(gst::Buffer::new()).unwrap();
    assert_eq!(stats(&h), (1, 0, 0));
}

#[test]
fn invalid_alignment_is_refused_and_memory_type_can_be_unset() {
    init();
    let e = gst::ElementFactory::make("memcheck")
        .property("alignment", 64u32)
        .build()
        .unwrap();
    e.set_property("alignment", 48u32);
    assert_eq!(e.property::<u32>("alignment"), 64);
    e.set_property("memory-type", "SystemMemory");
    assert_eq!(
        e.property::<Option<String>>("memory-type").as_deref(),
        Some("SystemMemory")
    );
    e.set_property("memory-type", None::<&str>);
    assert_eq!(e.property::<Option<String>>("memory-type"), None);
}

#[test]
fn read_pages_reads_every_page_of_every_payload() {
    init();
    let pages = |props: &[(&str, &str)]| {
        let mut h = harness(props);
        // 3 pages and a bit, and one page exactly.
        let buf = buffer_of(vec![aligned(3 * 4096 + 1, None), aligned(4096, None)]);
        h.push_and_pull(buf).unwrap();
        let s = h.element().unwrap().property::<gst::Structure>("stats");
        s.get::<u64>("pages-read").unwrap()
    };
    assert_eq!(pages(&[]), 0, "off by default");
    assert_eq!(pages(&[("read-pages", "true")]), 5);
}
