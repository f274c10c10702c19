// SPDX-License-Identifier: MPL-2.0
//! memsrc: blocksize buffers from the chosen allocator, patterns, offsets, bad allocator names.

mod common;
use common::{init, message_text};

use gst::prelude::*;
use gst_check::Harness;
use gstmemkit::allocator::AlignedMemory;
use gstmemkit::elements::memory::mapped_addr;

fn source(props: &[(&str, &str)]) -> Harness {
    let h = Harness::new("memsrc");
    let e = h.element().unwrap();
    for (k, v) in props {
        e.set_property_from_str(k, v);
    }
    h
}

fn pull_bytes(h: &mut Harness, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.extend(h.pull().unwrap().map_readable().unwrap().as_slice());
    }
    out
}

#[test]
fn default_is_aligned_memory_with_a_counter_offset_stream() {
    init();
    let mut h = source(&[
        ("blocksize", "1000"),
        ("pattern", "counter"),
        ("num-buffers", "3"),
    ]);
    h.play();
    for i in 0..3u64 {
        let b = h.pull().unwrap();
        assert_eq!(b.size(), 1000);
        assert!(b.peek_memory(0).is_memory_type::<AlignedMemory>());
        assert_eq!((b.offset(), b.offset_end()), (i * 1000, (i + 1) * 1000));
        let bytes = b.map_readable().unwrap();
        assert_eq!(bytes[0], (i * 1000 % 256) as u8);
        assert_eq!(bytes[999], ((i * 1000 + 999) % 256) as u8);
        assert_eq!(b.flags().contains(gst::BufferFlags::DISCONT), i == 0);
    }
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("buffers").unwrap(), 3);
    assert_eq!(stats.get::<u64>("bytes").unwrap(), 3000);
    assert_eq!(stats.get::<&str>("allocator").unwrap(), "AlignedMemory");
}

#[test]
fn named_allocator_alignment_prefix_padding_and_zeroing() {
    init();
    let mut h = source(&[
        ("blocksize", "4000"),
        ("allocator", "AlignedMemory"),
        ("alignment", "4096"),
        ("prefix", "100"),
        ("padding", "50"),
        ("zero-prefix", "true"),
        ("zero-padding", "true"),
        ("pattern", "random"),
    ]);
    h.play();
    let b = h.pull().unwrap();
    let m = b.peek_memory(0);
    assert_eq!(mapped_addr(m).unwrap() % 4096, 0);
    assert_eq!(m.offset(), 100);
    assert!(m.maxsize() >= 100 + 4000 + 50);
    assert!(
        m.flags()
            .contains(gst::MemoryFlags::ZERO_PREFIXED | gst::MemoryFlags::ZERO_PADDED)
    );
}

#[test]
fn system_memory_can_be_chosen_by_name() {
    init();
    let mut h = source(&[("blocksize", "64"), ("allocator", "SystemMemory")]);
    h.play();
    let b = h.pull().unwrap();
    assert!(b.peek_memory(0).is_type("SystemMemory"));
}

#[test]
fn what_downstream_proposes_is_used_when_no_allocator_is_named() {
    init();
    let mut h = source(&[("blocksize", "64")]);
    // Play a downstream element that proposes SystemMemory: answer the ALLOCATION query
    // before it reaches the harness (which does not answer caps-less queries).
    let src = h.element().unwrap().static_pad("src").unwrap();
    src.add_probe(
        gst::PadProbeType::QUERY_DOWNSTREAM | gst::PadProbeType::PUSH,
        |_, info| {
            if let Some(gst::PadProbeData::Query(q)) = &mut info.data
                && let gst::QueryViewMut::Allocation(a) = q.view_mut()
            {
                let sys = gst::Allocator::find(Some("SystemMemory")).unwrap();
                a.add_allocation_param(Some(&sys), gst::AllocationParams::default());
                return gst::PadProbeReturn::Handled;
            }
            gst::PadProbeReturn::Ok
        },
    );
    h.play();
    let b = h.pull().unwrap();
    assert!(b.peek_memory(0).is_type("SystemMemory"));
}

#[test]
fn random_pattern_is_reproducible_from_the_seed() {
    init();
    let run = |seed: &str| {
        let mut h = source(&[("blocksize", "777"), ("pattern", "random"), ("seed", seed)]);
        h.play();
        pull_bytes(&mut h, 3)
    };
    let a = run("42");
    assert_eq!(a, run("42"));
    assert_ne!(a, run("43"));
    assert!(a.iter().filter(|&&b| b == 0).count() < 64);
}

#[test]
fn zero_pattern_is_all_zeros() {
    init();
    let mut h = source(&[("blocksize", "5000"), ("allocator", "SystemMemory")]);
    h.play();
    assert!(pull_bytes(&mut h, 2).iter().all(|&b| b == 0));
}

#[test]
fn an_unknown_allocator_fails_to_start() {
    init();
    let h = source(&[("allocator", "NoSuchAllocator")]);
    let e = h.element().unwrap();
    let bus = gst::Bus::new();
    e.set_bus(Some(&bus));
    // (Harness::play asserts success, so change the state directly.)
    assert!(e.set_state(gst::State::Playing).is_err());
    let msg = bus
        .pop_filtered(&[gst::MessageType::Error])
        .expect("an error");
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    assert!(
        err.error().to_string().contains("NoSuchAllocator"),
        "{}",
        err.error()
    );
    assert_ne!(e.current_state(), gst::State::Playing);
    e.set_state(gst::State::Null).unwrap();
}

#[test]
fn invalid_alignment_is_refused() {
    init();
    let e = gst::ElementFactory::make("memsrc").build().unwrap();
    e.set_property("alignment", 24u32);
    assert_eq!(e.property::<u32>("alignment"), 1);
    // The refusal is posted as a WARNING when the element starts (it had no bus before).
    let bus = gst::Bus::new();
    e.set_bus(Some(&bus));
    e.set_state(gst::State::Paused).unwrap();
    let text = message_text(&bus, gst::MessageType::Warning);
    e.set_state(gst::State::Null).unwrap();
    assert_eq!(
        text,
        "alignment 24 is not a power of two: keeping alignment 1"
    );
}

#[test]
fn pattern_none_leaves_the_payload_unwritten() {
    use gstmemkit::allocator::memfd::stats::{self, Counter};
    init();
    // MemfdMemory counts every map: memsrc maps a block only to write the pattern.
    let maps = |pattern: &str| {
        let mut h = source(&[
            ("allocator", "MemfdMemory"),
            ("blocksize", "8192"),
            ("pattern", pattern),
            ("num-buffers", "5"),
        ]);
        // Counted from before the source starts: it may produce all five at once.
        let before = stats::get(Counter::Maps);
        h.play();
        let buffers: Vec<gst::Buffer> = (0..5).map(|_| h.pull().unwrap()).collect();
        let after = stats::get(Counter::Maps);
        assert!(buffers.iter().all(|b| b.size() == 8192));
        after - before
    };
    assert_eq!(maps("zero"), 5, "pattern=zero writes every buffer");
    assert_eq!(maps("none"), 0, "pattern=none writes nothing");
}

#[test]
fn stats_are_kept_after_stop_and_start_again_from_zero() {
    init();
    let pipeline = gst::parse::launch("memsrc name=src num-buffers=3 blocksize=100 ! fakesink")
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let src = pipeline.by_name("src").unwrap();
    let bus = pipeline.bus().unwrap();
    let run_to_eos = || {
        pipeline.set_state(gst::State::Playing).unwrap();
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(10),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .expect("EOS");
        assert_eq!(msg.type_(), gst::MessageType::Eos);
        pipeline.set_state(gst::State::Null).unwrap();
        let stats = src.property::<gst::Structure>("stats");
        (
            stats.get::<u64>("buffers").unwrap(),
            stats.get::<u64>("bytes").unwrap(),
        )
    };
    // Read after stop(): the counters of the run that ended.
    assert_eq!(run_to_eos(), (3, 300));
    // start() zeroes them: a second run counts its own buffers, not 6.
    assert_eq!(run_to_eos(), (3, 300));
}
