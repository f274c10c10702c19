// SPDX-License-Identifier: MPL-2.0
//! memfdsink and memfdsrc in one process (two pipelines): every block is released back to the
//! producer, the bytes arrive intact, and no descriptor is left open afterwards.

use std::sync::Once;

use gst::prelude::*;

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstmemkit::plugin_register_static().unwrap();
    });
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn run_to_eos(p: &gst::Element) {
    let bus = p.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Eos(_) => return,
            gst::MessageView::Error(e) => panic!("{}: {:?}", e.error(), e.debug()),
            _ => {}
        }
    }
    panic!("no EOS within 60 s");
}

#[test]
fn blocks_are_released_and_no_descriptor_leaks() {
    init();
    let path = std::env::temp_dir().join(format!("memkit-test-{}.sock", std::process::id()));
    let path = path.to_str().unwrap().to_owned();
    let before = open_fds();
    let producer = gst::parse::launch(&format!(
        "memsrc allocator=MemfdMemory num-buffers=200 blocksize=65536 pattern=counter ! \
         memfdsink name=s socket-path={path}"
    ))
    .unwrap();
    let consumer = gst::parse::launch(&format!(
        "memfdsrc name=r socket-path={path} ! appsink name=out sync=false"
    ))
    .unwrap();
    producer.set_state(gst::State::Playing).unwrap();
    consumer.set_state(gst::State::Playing).unwrap();

    // Check the bytes as they come: the counter pattern, offset by offset.
    let sink = consumer
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("out")
        .unwrap();
    let mut pos = 0u64;
    loop {
        let Some(sample) = sink.emit_by_name::<Option<gst::Sample>>("pull-sample", &[]) else {
            break;
        };
        let buffer = sample.buffer().unwrap();
        assert!(
            buffer
                .iter_memories()
                .all(gstmemkit::allocator::memfd::is_memfd_memory),
            "received memory is MemfdMemory"
        );
        let map = buffer.map_readable().unwrap();
        for (i, &b) in map.iter().enumerate() {
            assert_eq!(b, ((pos + i as u64) % 256) as u8);
        }
        pos += map.size() as u64;
    }
    assert_eq!(pos, 200 * 65536);
    run_to_eos(&producer);
    let s = producer
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("s")
        .unwrap()
        .property::<gst::Structure>("stats");
    consumer.set_state(gst::State::Null).unwrap();
    // appsink keeps the last sample until it is disposed.
    drop((consumer, sink));
    // Releases travel asynchronously: give the service thread a moment.
    let mut released = 0;
    for _ in 0..100 {
        let s = producer
            .downcast_ref::<gst::Bin>()
            .unwrap()
            .by_name("s")
            .unwrap()
            .property::<gst::Structure>("stats");
        released = s.get::<u64>("released").unwrap();
        if released == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(released, 200, "every block released by the consumer: {s}");
    assert_eq!(s.get::<u64>("bytes-copied").unwrap(), 0);
    producer.set_state(gst::State::Null).unwrap();
    drop(producer);
    // Freed MemfdMemory blocks are kept for reuse (with their descriptors) until trimmed.
    gstmemkit::allocator::trim_cache();
    assert_eq!(open_fds(), before, "no descriptor left open");
    assert!(!std::path::Path::new(&path).exists(), "socket removed");
}
