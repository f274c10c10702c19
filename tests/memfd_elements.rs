// SPDX-License-Identifier: MPL-2.0
//! memfdsink and memfdsrc in one process (two pipelines): every block is released back to the
//! producer, the bytes arrive intact, and no descriptor is left open afterwards.

mod common;
use common::init;

/// The descriptor count is process-wide: the tests here run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

use gst::prelude::*;

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
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    init();
    let path = std::env::temp_dir().join(format!("memkit-test-{}.sock", std::process::id()));
    let path = path.to_str().unwrap().to_owned();
    gstmemkit::allocator::trim_cache();
    // An earlier test's peers may still be closing (on a closer thread).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while gstmemkit::peer_descriptors_closing() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let before = open_fds();
    let producer = gst::parse::launch(&format!(
        "memsrc allocator=MemfdMemory num-buffers=200 blocksize=65536 pattern=counter ! \
         memfdsink name=s on-full=wait socket-path={path}"
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
    // Releases travel asynchronously: poll the producer's count, generously (30 s).
    let mut released = 0;
    for _ in 0..1500 {
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
    // What a peer sent (its connection included) is closed on a closer thread: poll,
    // generously (30 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while (open_fds() != before || gstmemkit::peer_descriptors_closing() > 0)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(gstmemkit::peer_descriptors_closing(), 0);
    let what: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(open_fds(), before, "no descriptor left open: {what:?}");
    assert!(!std::path::Path::new(&path).exists(), "socket removed");
}

fn by_name(pipeline: &gst::Element, name: &str) -> gst::Element {
    pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name(name)
        .unwrap()
}

/// `appsrc name=in ! memfdsink` and `memfdsrc ! appsink name=out` on a socket named after
/// `name`, both playing.
fn app_to_app(name: &str) -> (gst::Element, gst::Element) {
    init();
    let path = std::env::temp_dir().join(format!("memkit-{name}-{}.sock", std::process::id()));
    let path = path.to_str().unwrap().to_owned();
    let producer = gst::parse::launch(&format!(
        "appsrc name=in format=time caps=application/x-test ! memfdsink name=s on-full=wait socket-path={path}"
    ))
    .unwrap();
    let consumer = gst::parse::launch(&format!(
        "memfdsrc socket-path={path} ! appsink name=out sync=false"
    ))
    .unwrap();
    producer.set_state(gst::State::Playing).unwrap();
    consumer.set_state(gst::State::Playing).unwrap();
    (producer, consumer)
}

#[test]
fn timestamps_flags_and_metas_cross() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (producer, consumer) = app_to_app("meta");
    let src = by_name(&producer, "in");
    let ntp = gst::Caps::builder("timestamp/x-ntp").build();
    let interlaced_tff =
        gst_video::VideoBufferFlags::INTERLACED.bits() | gst_video::VideoBufferFlags::TFF.bits();
    for i in 0..3u64 {
        // A 16x4 GRAY8 frame with rows padded to 32 bytes: the video meta says so.
        let mut b = gst::Buffer::from_mut_slice(vec![i as u8; 128]);
        {
            let b = b.get_mut().unwrap();
            gst_video::VideoMeta::add_full(
                b,
                gst_video::VideoFrameFlags::empty(),
                gst_video::VideoFormat::Gray8,
                16,
                4,
                &[0],
                &[32],
            )
            .unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(40 * i));
            b.set_duration(gst::ClockTime::from_mseconds(40));
            b.set_offset(i);
            if i == 1 {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
            if i == 2 {
                // Video flags lie above core's: they crossed neither way before.
                b.set_flags(gst::BufferFlags::from_bits_retain(interlaced_tff));
            }
            gst::ReferenceTimestampMeta::add(
                b,
                &ntp,
                gst::ClockTime::from_seconds(1000 + i),
                gst::ClockTime::NONE,
            );
        }
        let _ = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&b]);
    }
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    let sink = by_name(&consumer, "out");
    for i in 0..3u64 {
        let sample = sink
            .emit_by_name::<Option<gst::Sample>>("pull-sample", &[])
            .expect("a sample");
        assert_eq!(
            sample.caps().unwrap().structure(0).unwrap().name(),
            "application/x-test"
        );
        let b = sample.buffer().unwrap();
        assert_eq!(b.pts(), Some(gst::ClockTime::from_mseconds(40 * i)));
        assert_eq!(b.duration(), Some(gst::ClockTime::from_mseconds(40)));
        assert_eq!(b.offset(), i);
        assert_eq!(b.flags().contains(gst::BufferFlags::DELTA_UNIT), i == 1);
        let bits = gstmemkit::elements::memory::buffer_flag_bits(b);
        assert_eq!(bits & interlaced_tff == interlaced_tff, i == 2, "{bits:#x}");
        let metas: Vec<_> = b
            .iter_meta::<gst::ReferenceTimestampMeta>()
            .map(|m| (m.reference().to_string(), m.timestamp(), m.duration()))
            .collect();
        assert_eq!(
            metas,
            vec![(
                "timestamp/x-ntp".to_string(),
                gst::ClockTime::from_seconds(1000 + i),
                None
            )]
        );
        let vm = b
            .meta::<gst_video::VideoMeta>()
            .expect("the video meta crossed");
        assert_eq!(
            (
                vm.format(),
                vm.width(),
                vm.height(),
                vm.stride(),
                vm.offset()
            ),
            (
                gst_video::VideoFormat::Gray8,
                16,
                4,
                &[32][..],
                &[0usize][..]
            )
        );
        assert_eq!(b.map_readable().unwrap().as_slice(), &[i as u8; 128][..]);
    }
    consumer.set_state(gst::State::Null).unwrap();
    producer.set_state(gst::State::Null).unwrap();
}

/// Streams `n` buffers of `blocksize` from `memsrc allocator=MemfdMemory` to `memfdsrc` (with
/// `src_props`), reading each; returns the producer's and the consumer's stats.
fn stream(name: &str, n: u32, blocksize: u32, src_props: &str) -> (gst::Structure, gst::Structure) {
    let path = std::env::temp_dir().join(format!("memkit-{name}-{}.sock", std::process::id()));
    let path = path.to_str().unwrap().to_owned();
    let producer = gst::parse::launch(&format!(
        "memsrc allocator=MemfdMemory num-buffers={n} blocksize={blocksize} pattern=counter ! \
         memfdsink name=s on-full=wait socket-path={path}"
    ))
    .unwrap();
    let consumer = gst::parse::launch(&format!(
        "memfdsrc name=r socket-path={path} {src_props} ! appsink name=out sync=false"
    ))
    .unwrap();
    producer.set_state(gst::State::Playing).unwrap();
    consumer.set_state(gst::State::Playing).unwrap();
    let sink = by_name(&consumer, "out");
    let mut received = 0;
    while let Some(sample) = sink.emit_by_name::<Option<gst::Sample>>("pull-sample", &[]) {
        let map = sample.buffer().unwrap().map_readable().unwrap();
        assert_eq!(
            map[1],
            map[0].wrapping_add(1),
            "the counter pattern crossed"
        );
        received += 1;
    }
    assert_eq!(received, n, "every buffer arrived");
    run_to_eos(&producer);
    let r = by_name(&consumer, "r").property::<gst::Structure>("stats");
    consumer.set_state(gst::State::Null).unwrap();
    producer.set_state(gst::State::Null).unwrap();
    let s = by_name(&producer, "s").property::<gst::Structure>("stats");
    (s, r)
}

#[test]
fn each_block_crosses_once_and_is_wrapped_once() {
    use gstmemkit::allocator::memfd::stats::{self, Counter};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    init();
    stats::reset();
    let (s, r) = stream("once", 400, 65536, "");
    let announced = r.get::<u64>("blocks-announced").unwrap();
    assert_eq!(s.get::<u64>("blocks-announced").unwrap(), announced);
    // The blocks circulate: far fewer cross than buffers do.
    assert!(
        announced > 0 && announced < 100,
        "{announced} blocks for 400 buffers"
    );
    // The consumer wraps (and maps) each block once, not each buffer's memory.
    assert_eq!(stats::get(Counter::Wraps), announced);
}

/// Runs `f` with `MemfdMemory` recycling off (a cache bound of 0), restoring it after.
fn without_recycling<T>(f: impl FnOnce() -> T) -> T {
    let max = gstmemkit::allocator::memfd::max_cached_bytes();
    gstmemkit::allocator::memfd::set_max_cached_bytes(0);
    let result = f();
    gstmemkit::allocator::memfd::set_max_cached_bytes(max);
    result
}

#[test]
fn blocks_freed_by_the_producer_are_unmapped_by_the_consumer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    init();
    // No recycling: every block the consumer releases is freed at the producer. Its mapping
    // at the consumer would keep its pages alive: the producer retires it.
    let (s, r) = without_recycling(|| stream("freed", 300, 4096, ""));
    assert!(s.get::<u64>("blocks-announced").unwrap() >= 300, "{s}");
    // Still mapped at the end, at most: the blocks of the buffers it may hold (max-outstanding
    // 64), and those freed after the last buffer that could carry their retirement (a release
    // batch and the service thread's lag). Without retirement: all 300.
    let mapped = r.get::<u64>("blocks-mapped").unwrap();
    assert!(mapped <= 100, "{mapped} blocks still mapped: {r}");
    assert!(
        r.get::<u64>("blocks-retired").unwrap() >= 300 - mapped,
        "{r}"
    );
}

#[test]
fn the_consumers_bound_is_kept_by_retiring_idle_blocks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    init();
    // 300 blocks cross (none recycled); the consumer maps at most 16 at once.
    let (_s, r) = without_recycling(|| stream("bound", 300, 4096, "max-blocks=16"));
    assert!(r.get::<u64>("blocks-announced").unwrap() >= 300, "{r}");
    assert!(r.get::<u64>("blocks-mapped").unwrap() <= 16, "{r}");
}

/// Pulls the next buffer from appsink `sink`.
fn pull(sink: &gst::Element) -> gst::Buffer {
    sink.emit_by_name::<Option<gst::Sample>>("pull-sample", &[])
        .expect("a sample")
        .buffer_owned()
        .unwrap()
}

#[test]
fn metas_that_do_not_fit_in_one_message_are_dropped_with_a_warning() {
    // Sixteen reference timestamp metas of 5000 bytes each: more than a message holds.
    // Before: the producer sent it anyway and the consumer failed ("message larger than
    // 65536 bytes"). Now the metas that do not fit stay behind; the frame and its video meta
    // cross.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (producer, consumer) = app_to_app("bigmeta");
    let (src, sink) = (by_name(&producer, "in"), by_name(&consumer, "out"));
    let mut b = gst::Buffer::from_mut_slice(vec![3u8; 64]);
    {
        let b = b.get_mut().unwrap();
        gst_video::VideoMeta::add(
            b,
            gst_video::VideoFrameFlags::empty(),
            gst_video::VideoFormat::Gray8,
            8,
            8,
        )
        .unwrap();
        for i in 0..16u64 {
            let caps = gst::Caps::builder("timestamp/x-test")
                .field("pad", "p".repeat(5000))
                .build();
            gst::ReferenceTimestampMeta::add(b, &caps, gst::ClockTime::from_seconds(i), None);
        }
    }
    let pushed = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&b]);
    assert_eq!(pushed, gst::FlowReturn::Ok);
    let got = pull(&sink);
    let refs = got.iter_meta::<gst::ReferenceTimestampMeta>().count();
    assert!((1..16).contains(&refs), "{refs} reference metas crossed");
    assert!(
        got.meta::<gst_video::VideoMeta>().is_some(),
        "the video meta stayed behind"
    );
    assert_eq!(got.map_readable().unwrap().as_slice(), &[3u8; 64][..]);
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    consumer.set_state(gst::State::Null).unwrap();
    producer.set_state(gst::State::Null).unwrap();
}

#[test]
fn start_only_properties_are_refused_once_started() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    init();
    let path = std::env::temp_dir().join(format!("memkit-props-{}.sock", std::process::id()));
    let path = path.to_str().unwrap().to_owned();
    let producer = gst::parse::launch(&format!(
        "memsrc blocksize=4096 ! identity sleep-time=10000 ! memfdsink name=s socket-path={path}"
    ))
    .unwrap();
    let consumer =
        gst::parse::launch(&format!("memfdsrc name=r socket-path={path} ! fakesink")).unwrap();
    producer.set_state(gst::State::Playing).unwrap();
    consumer.set_state(gst::State::Playing).unwrap();
    let (sink, src) = (by_name(&producer, "s"), by_name(&consumer, "r"));
    let _ = consumer.state(gst::ClockTime::from_seconds(10));
    for element in [&sink, &src] {
        element.set_property("socket-path", "/elsewhere.sock");
        assert_eq!(
            element.property::<String>("socket-path"),
            path,
            "{}",
            element.name()
        );
    }
    sink.set_property_from_str("on-full", "wait");
    assert_eq!(
        sink.property_value("on-full").serialize().unwrap().as_str(),
        "drop"
    );
    src.set_property("max-blocks", 64u32);
    assert_eq!(src.property::<u32>("max-blocks"), 512);
    // Bounds that apply while streaming may change.
    sink.set_property("max-outstanding", 8u32);
    assert_eq!(sink.property::<u32>("max-outstanding"), 8);
    src.set_property("reconnect", true);
    assert!(src.property::<bool>("reconnect"));
    consumer.set_state(gst::State::Null).unwrap();
    producer.set_state(gst::State::Null).unwrap();
    // Stopped: they may change again.
    sink.set_property("socket-path", "/elsewhere.sock");
    assert_eq!(sink.property::<String>("socket-path"), "/elsewhere.sock");
}

#[test]
fn a_buffer_mixing_the_streams_blocks_and_other_memory_sends_its_blocks_as_they_are() {
    // Found by the fuzzer (tests/memfd_fuzz.rs): the sink put the stream's own blocks of such
    // a buffer through `MemoryRef::to_owned`, which copies (into private memory), so that
    // no block of it crossed as it was (and, once private memory was no longer sent, the
    // buffer was refused).
    use gstmemkit::allocator::memfd::stats::{self, Counter};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (producer, consumer) = app_to_app("mixed");
    let (src, sink) = (by_name(&producer, "in"), by_name(&consumer, "out"));
    // The allocator the sink proposes: the stream's own.
    let caps = gst::Caps::builder("application/x-test").build();
    let mut query = gst::query::Allocation::new(Some(&caps), true);
    assert!(src.static_pad("src").unwrap().peer_query(&mut query));
    let ours = query.allocation_params().next().unwrap().0.unwrap();
    stats::reset();
    let mut own = ours.alloc(4096, None).unwrap();
    own.get_mut().unwrap().map_writable().unwrap().fill(1);
    let mut b = gst::Buffer::new();
    {
        let b = b.get_mut().unwrap();
        b.append_memory(own);
        b.append_memory(gst::Memory::from_slice(vec![2u8; 1000]));
    }
    let pushed = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&b]);
    assert_eq!(pushed, gst::FlowReturn::Ok);
    let got = pull(&sink);
    let map = got.map_readable().unwrap();
    assert_eq!(map.len(), 5096);
    assert!(map[..4096].iter().all(|&x| x == 1) && map[4096..].iter().all(|&x| x == 2));
    drop(map);
    assert_eq!(
        stats::get(Counter::Copies),
        0,
        "the stream's own block was copied"
    );
    let s = by_name(&producer, "s").property::<gst::Structure>("stats");
    assert_eq!(s.get::<u64>("bytes-copied").unwrap(), 1000, "{s}");
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    consumer.set_state(gst::State::Null).unwrap();
    producer.set_state(gst::State::Null).unwrap();
}
