// SPDX-License-Identifier: MPL-2.0
//! memfdsrc against a hostile producer (issue 9): a fake producer in this process speaks the
//! wire protocol and sends what a real memfdsink never would. Every attack must end in a clean
//! element error (or be harmless), never a crash, a hang, a CRITICAL, or bytes from outside
//! what the producer sent reaching downstream.

mod common;
use common::init;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use gst::prelude::*;
use rustix::fs::{MemfdFlags, SealFlags};
use transport::socket as proto;
use transport::wire::{BlockWire, BufferWire, EventKind, MemWire, Message, VideoMetaWire};
use video::plane_ranges;

/// The wire protocol and socket helpers are private to the plugin; a fake peer speaks them
/// through the same source files, compiled into this test.
#[allow(dead_code)]
#[path = "../src/transport"]
mod transport {
    pub mod closer;
    pub mod parsed;
    pub mod socket;
    /// In the plugin, `allocator::memfd::sockopt`: the socket calls rustix lacks.
    #[path = "../allocator/memfd/memory/sockopt.rs"]
    mod sys;
    pub mod wire;
}
#[allow(dead_code)]
#[path = "../src/elements/memfdsrc/video.rs"]
mod video;

/// One packet and the descriptors that go with it.
type Packet = (Vec<u8>, Vec<OwnedFd>);

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("memkit-hostile-{}-{name}.sock", std::process::id()))
}

/// A sealed memfd holding `bytes`.
fn memfd(bytes: &[u8]) -> OwnedFd {
    let fd = rustix::fs::memfd_create(c"hostile", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .unwrap();
    rustix::fs::ftruncate(&fd, bytes.len() as u64).unwrap();
    let mut done = 0;
    while done < bytes.len() {
        done += rustix::io::pwrite(&fd, &bytes[done..], done as u64).unwrap();
    }
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    fd
}

fn caps_packet(caps: &str) -> Packet {
    (Message::Caps(caps.into()).encode(), vec![])
}

fn segment_text() -> String {
    init();
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    gst::event::Segment::new(&segment)
        .structure()
        .unwrap()
        .to_string()
}

fn segment_packet() -> Packet {
    (
        Message::Event(EventKind::Segment, segment_text()).encode(),
        vec![],
    )
}

fn eos_packet() -> Packet {
    (
        Message::Event(EventKind::Eos, String::new()).encode(),
        vec![],
    )
}

/// A buffer message: one memory per `(fd, offset, size, maxsize)`, each in a block of its own
/// (announced with this buffer, ids from `id * 100`).
fn buffer_packet(
    id: u64,
    mems: Vec<(OwnedFd, u64, u64, u64)>,
    video: Vec<VideoMetaWire>,
) -> Packet {
    flagged_buffer_packet(id, mems, video, 0)
}

/// [`buffer_packet`] with buffer flags.
fn flagged_buffer_packet(
    id: u64,
    mems: Vec<(OwnedFd, u64, u64, u64)>,
    video: Vec<VideoMetaWire>,
    flags: u32,
) -> Packet {
    let mut fds = Vec::new();
    let mut blocks = Vec::new();
    let mut wires = Vec::new();
    for (i, (fd, offset, size, maxsize)) in mems.into_iter().enumerate() {
        let block = id * 100 + i as u64;
        fds.push(fd);
        blocks.push(BlockWire {
            id: block,
            size: maxsize,
        });
        wires.push(MemWire {
            block,
            offset,
            size,
        });
    }
    let msg = Message::Buffer(BufferWire {
        blocks,
        mems: wires,
        video,
        id,
        pts: u64::MAX,
        dts: u64::MAX,
        duration: u64::MAX,
        offset: u64::MAX,
        offset_end: u64::MAX,
        flags,
        ..BufferWire::default()
    });
    (msg.encode(), fds)
}

/// Waits (up to 60 s) for the consumer on `sock` to hang up, then removes the socket `path`.
fn wait_for_hang_up(sock: &OwnedFd, path: &std::path::Path) {
    let mut pfd = [rustix::event::PollFd::new(
        sock,
        rustix::event::PollFlags::RDHUP,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: 60,
        tv_nsec: 0,
    };
    let _ = rustix::event::poll(&mut pfd, Some(&ts));
    let _ = std::fs::remove_file(path);
}

/// Serves `packets` to the first consumer, then keeps the connection open (reading nothing)
/// until the consumer leaves. Returns the producer's thread.
fn fake_producer(path: PathBuf, packets: Vec<Packet>) -> std::thread::JoinHandle<()> {
    let _ = std::fs::remove_file(&path);
    let listener = proto::listen_at(&path, 0o600).unwrap();
    std::thread::spawn(move || {
        let sock = proto::accept(&listener).unwrap();
        for (bytes, fds) in &packets {
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            if proto::send(sock.as_fd(), bytes, &borrowed).is_err() {
                break; // the consumer already gave up
            }
        }
        // Wait for the consumer to hang up; never read its releases.
        wait_for_hang_up(&sock, &path);
    })
}

/// Runs `memfdsrc ! <sink>` against a fake producer sending `packets`: the error message the
/// pipeline ended with, or `None` at EOS.
fn consume(name: &str, packets: Vec<Packet>, props: &str) -> Option<String> {
    init();
    let path = socket_path(name);
    let producer = fake_producer(path.clone(), packets);
    let result = run_until_done(&format!(
        "memfdsrc socket-path={} timeout=5000 {props} ! fakesink",
        path.display()
    ));
    producer.join().unwrap();
    result
}

fn assert_refused(result: Option<String>, pattern: &str) {
    let msg = result.unwrap_or_else(|| panic!("accepted; expected an error with {pattern:?}"));
    assert!(
        msg.contains(pattern),
        "expected an error with {pattern:?}, got: {msg}"
    );
}

fn video_meta(
    format: &str,
    width: u32,
    height: u32,
    offsets: &[u64],
    strides: &[i32],
) -> VideoMetaWire {
    VideoMetaWire {
        flags: 0,
        format: format.into(),
        width,
        height,
        offsets: offsets.to_vec(),
        strides: strides.to_vec(),
    }
}

fn video_caps(format: &str, width: u32, height: u32) -> String {
    format!(
        "video/x-raw, format=(string){format}, width=(int){width}, height=(int){height}, framerate=(fraction)0/1"
    )
}

// ----- fault 1: video metas -----------------------------------------------------------------

/// A deterministic byte stream.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

const TRAIL: usize = 64 * 1024;

/// Every raw format GStreamer knows, each frame sent three times with a meta of libgstvideo's
/// own layout and a memory of exactly the bytes memfdsrc computes its planes to need: twice
/// with different bytes after the memory (inside the same memfd), once flush against the end
/// of its memfd. Each received frame is converted with libgstvideo (`VideoConverter`, to the
/// format's unpack format: no colour conversion) and the first two outputs must be equal: had
/// any plane been read past the bytes memfdsrc accepted, the trailing bytes would show.
#[test]
fn every_format_reads_only_the_bytes_sent() {
    formats_read_only_the_bytes_sent(false);
}

/// The same with caps `interlace-mode=interleaved` at a height of 2 mod 4 (and 6 mod 8):
/// libgstvideo reads the chroma planes field by field, one row more than a progressive frame
/// for 4:2:0 and 4:1:0 formats (before: videoconvert read past the memfd, SIGSEGV).
#[test]
fn every_interlaced_format_reads_only_the_bytes_sent() {
    formats_read_only_the_bytes_sent(true);
}

fn formats_read_only_the_bytes_sent(interlaced: bool) {
    init();
    let width = 70u32;
    let mode = if interlaced {
        gst_video::VideoInterlaceMode::Interleaved
    } else {
        gst_video::VideoInterlaceMode::Progressive
    };
    let formats: Vec<gst_video::VideoFormat> = gst_video::VideoFormat::iter_raw()
        .filter(|f| {
            let finfo = gst_video::VideoFormatInfo::from_format(*f);
            // Tiled formats have no interlaced layout in libgstvideo.
            finfo.unpack_format() != gst_video::VideoFormat::Unknown
                && !(interlaced && finfo.is_tiled())
        })
        .collect();
    let mut packets = vec![segment_packet()];
    let mut expected = Vec::new();
    let page = rustix::param::page_size();
    for (n, &format) in formats.iter().enumerate() {
        // 2 mod 4 (4:2:0's extra row); 4 mod 8 for 4:1:0 (YUV9, YVU9).
        let finfo = gst_video::VideoFormatInfo::from_format(format);
        let height = if finfo.h_sub().get(1) == Some(&2) {
            36
        } else {
            38
        };
        let info = gst_video::VideoInfo::builder(format, width, height)
            .interlace_mode(mode)
            .build()
            .unwrap();
        let offsets: Vec<u64> = info.offset().iter().map(|&o| o as u64).collect();
        let planes = plane_ranges(format, width, height, &offsets, info.stride(), interlaced)
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        let size = planes.iter().map(|r| r.end).max().unwrap() as usize;
        let frame = noise(size, n as u64);
        let name = format.to_str().to_string();
        packets.push(caps_packet(&format!(
            "{}, interlace-mode=(string){}",
            video_caps(&name, width, height),
            mode.to_str()
        )));
        let meta = || video_meta(&name, width, height, &offsets, info.stride());
        for trail in [0x00u8, 0xff] {
            // [ 4096 lead bytes | the frame | TRAIL bytes of `trail` ]
            let mut bytes = vec![0x5a; page];
            bytes.extend_from_slice(&frame);
            bytes.extend(std::iter::repeat_n(trail, TRAIL));
            let total = bytes.len() as u64;
            packets.push(buffer_packet(
                packets.len() as u64,
                vec![(memfd(&bytes), page as u64, size as u64, total)],
                vec![meta()],
            ));
        }
        // Flush against the end of a page-rounded memfd.
        let total = size.div_ceil(page) * page;
        let mut bytes = vec![0x5a; total - size];
        bytes.extend_from_slice(&frame);
        packets.push(buffer_packet(
            packets.len() as u64,
            vec![(
                memfd(&bytes),
                (total - size) as u64,
                size as u64,
                total as u64,
            )],
            vec![meta()],
        ));
        expected.push(format);
    }
    packets.push(eos_packet());
    // Every raw format of GStreamer 1.22 has an unpack function: about a hundred.
    assert!(expected.len() >= 90, "only {} formats", expected.len());
    eprintln!("{} formats", expected.len());

    // Each of the two tests (they run at once) has a socket of its own.
    let path = socket_path(if interlaced {
        "formats-interlaced"
    } else {
        "formats-progressive"
    });
    let producer = fake_producer(path.clone(), packets);
    let pipeline = gst::parse::launch(&format!(
        "memfdsrc socket-path={} ! appsink name=out sync=false max-buffers=4",
        path.display()
    ))
    .unwrap();
    let sink = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("out")
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    // One converter per format, to its unpack format: the frame as libgstvideo reads it.
    let converter_for = |info: &gst_video::VideoInfo| {
        let unpack = info.format_info().unpack_format();
        let out_info = gst_video::VideoInfo::builder(unpack, info.width(), info.height())
            .interlace_mode(info.interlace_mode())
            .build()
            .unwrap();
        let converter = gst_video::VideoConverter::new(
            info,
            &out_info,
            Some(gst_video::VideoConverterConfig::new()),
        )
        .unwrap();
        (converter, out_info)
    };
    for format in &expected {
        let mut outputs = Vec::new();
        let mut converter = None;
        for _ in 0..3 {
            let sample = sink
                .emit_by_name::<Option<gst::Sample>>("pull-sample", &[])
                .unwrap_or_else(|| panic!("{format:?}: no sample (refused?)"));
            let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
            assert_eq!(info.format(), *format);
            let (conv, out_info) = converter.get_or_insert_with(|| converter_for(&info));
            let frame =
                gst_video::VideoFrame::from_buffer_readable(sample.buffer_owned().unwrap(), &info)
                    .unwrap();
            let mut out = gst_video::VideoFrame::from_buffer_writable(
                gst::Buffer::with_size(out_info.size()).unwrap(),
                out_info,
            )
            .unwrap();
            conv.frame(&frame, &mut out);
            outputs.push(out.plane_data(0).unwrap().to_vec());
        }
        assert!(
            outputs[0] == outputs[1],
            "{format:?}: the bytes after the memory changed the frame: read past the memory"
        );
        assert!(
            outputs[0] == outputs[2],
            "{format:?}: the frame flush against the end of its memfd converts differently"
        );
    }
    pipeline.set_state(gst::State::Null).unwrap();
    drop((sink, pipeline));
    producer.join().unwrap();
}

/// One frame of `format` whose memory is one byte shorter than its planes need, the planes as
/// libgstvideo lays them out: refused.
fn one_byte_short(format: gst_video::VideoFormat, strides: Option<&[i32]>) -> Option<String> {
    init();
    let (width, height) = (64u32, 256u32);
    let info = gst_video::VideoInfo::builder(format, width, height)
        .build()
        .unwrap();
    let offsets: Vec<u64> = info.offset().iter().map(|&o| o as u64).collect();
    let strides = strides.unwrap_or(info.stride());
    let name = format.to_str().to_string();
    let size = match plane_ranges(format, width, height, &offsets, strides, false) {
        Ok(p) => p.iter().map(|r| r.end).max().unwrap() - 1,
        Err(_) => info.size() as u64,
    };
    let fd = memfd(&vec![0u8; size as usize]);
    consume(
        &format!("short-{name}"),
        vec![
            caps_packet(&video_caps(&name, width, height)),
            segment_packet(),
            buffer_packet(
                1,
                vec![(fd, 0, size, size)],
                vec![video_meta(&name, width, height, &offsets, strides)],
            ),
            eos_packet(),
        ],
        "",
    )
}

#[test]
fn frames_one_byte_short_are_refused_for_packed_tiled_and_palette_formats() {
    use gst_video::VideoFormat as F;
    for format in [
        F::I420,
        F::V210,
        F::Uyvp,
        F::Iyu1,
        F::Gray10Le32,
        F::Nv1210le32,
        F::Nv128l128,
        F::Nv1232l32,
        F::Nv1264z32,
        F::Nv1216l32s,
        F::Nv124l4,
        F::Rgb8p,
    ] {
        assert_refused(one_byte_short(format, None), "Unusable video meta");
    }
}

#[test]
fn tile_counts_that_do_not_cover_the_frame_are_refused() {
    // NV12_8L128 whose strides say one row of tiles and no column count worth the name: the
    // old row-based check let this through and videoconvert read past the memfd (SIGSEGV).
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Nv128l128, 64, 256)
        .build()
        .unwrap();
    let x_tiles = info.stride()[0] & 0xffff;
    assert_refused(
        one_byte_short(gst_video::VideoFormat::Nv128l128, Some(&[x_tiles, x_tiles])),
        "tiles, the frame needs",
    );
}

#[test]
fn a_plane_across_two_memories_is_refused() {
    // I420 320x240 over two memories: plane 0 starts in the first and runs into the second;
    // gst_video_meta_map maps only the first.
    init();
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 320, 240)
        .build()
        .unwrap();
    let offsets: Vec<u64> = info.offset().iter().map(|&o| o as u64).collect();
    let half = info.size() as u64 / 2;
    let result = consume(
        "two-memories",
        vec![
            caps_packet(&video_caps("I420", 320, 240)),
            segment_packet(),
            buffer_packet(
                1,
                vec![
                    (memfd(&vec![0; half as usize]), 0, half, half),
                    (memfd(&vec![0; half as usize]), 0, half, half),
                ],
                vec![video_meta("I420", 320, 240, &offsets, info.stride())],
            ),
            eos_packet(),
        ],
        "",
    );
    assert_refused(result, "past the memory it starts in");
}

#[test]
fn a_meta_that_disagrees_with_the_caps_is_refused() {
    // The caps say 640x480, the meta a smaller frame: gst_video_frame_map would raise a
    // CRITICAL; memfdsrc refuses the buffer instead.
    init();
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Gray8, 16, 16)
        .build()
        .unwrap();
    let result = consume(
        "meta-vs-caps",
        vec![
            caps_packet(&video_caps("GRAY8", 640, 480)),
            segment_packet(),
            buffer_packet(
                1,
                vec![(memfd(&[0; 256]), 0, 256, 256)],
                vec![video_meta("GRAY8", 16, 16, &[0], info.stride())],
            ),
            eos_packet(),
        ],
        "",
    );
    assert_refused(result, "does not match the caps");
}

// ----- fault 2: a producer that never reads releases -----------------------------------------

#[test]
fn a_producer_that_reads_no_releases_is_an_error_not_a_hang() {
    // Thousands of small buffers, every release left unread: the socket fills, releases queue
    // up without blocking the streaming thread, and past the bound the stream fails cleanly.
    // (Before: the free blocked in sendmsg forever, with the streaming thread in it.)
    let fd = memfd(&[7u8; 4096]);
    let mut packets = vec![caps_packet("application/octet-stream"), segment_packet()];
    packets.push(buffer_packet(1, vec![(fd, 0, 4096, 4096)], vec![]));
    for id in 2..6000 {
        // The block announced with the first buffer (id 100), named again: no descriptor.
        let msg = Message::Buffer(BufferWire {
            mems: vec![MemWire {
                block: 100,
                offset: 0,
                size: 4096,
            }],
            id,
            ..BufferWire::default()
        });
        packets.push((msg.encode(), vec![]));
    }
    packets.push(eos_packet());
    let start = std::time::Instant::now();
    let result = consume("no-releases", packets, "");
    assert_refused(result, "does not read its release messages");
    assert!(start.elapsed() < Duration::from_secs(30));
}

// ----- fault 4: caps and segments that would raise CRITICALs --------------------------------

#[test]
fn caps_that_are_not_fixed_are_refused() {
    for caps in [
        "video/x-raw, width=(int)[ 1, 100 ]",
        "video/x-raw, format=(string){ I420, NV12 }",
        "ANY",
        "EMPTY",
        "audio/x-raw; video/x-raw",
    ] {
        let result = consume(
            "unfixed",
            vec![caps_packet(caps), segment_packet(), eos_packet()],
            "",
        );
        assert_refused(result, "are not fixed");
    }
}

#[test]
fn a_segment_with_rate_zero_is_refused() {
    let text = segment_text();
    let zero = text.replacen(", rate=(double)1", ", rate=(double)0", 1);
    assert_ne!(zero, text, "the segment string has a rate field: {text}");
    let result = consume(
        "rate0",
        vec![
            caps_packet("application/octet-stream"),
            (Message::Event(EventKind::Segment, zero).encode(), vec![]),
            eos_packet(),
        ],
        "",
    );
    assert_refused(result, "Invalid segment from the producer: rate 0");
}

// ----- fault 5: memory size bound -----------------------------------------------------------

#[test]
fn a_huge_sparse_memfd_is_refused() {
    // A sealed, sparse 64 TiB memfd: costs the producer nothing, and was mapped.
    let fd =
        rustix::fs::memfd_create(c"huge", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    let huge = 64u64 << 40;
    rustix::fs::ftruncate(&fd, huge).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    let result = consume(
        "huge",
        vec![
            caps_packet("application/octet-stream"),
            segment_packet(),
            buffer_packet(1, vec![(fd, 0, huge, huge)], vec![]),
            eos_packet(),
        ],
        "",
    );
    assert_refused(result, "more than max-memory-size (1073741824)");
}

#[test]
fn max_memory_size_is_a_property() {
    let fd = memfd(&[1u8; 8192]);
    let packets = |fd: OwnedFd| {
        vec![
            caps_packet("application/octet-stream"),
            segment_packet(),
            buffer_packet(1, vec![(fd, 0, 8192, 8192)], vec![]),
            eos_packet(),
        ]
    };
    assert_eq!(
        consume(
            "max-ok",
            packets(fd.try_clone().unwrap()),
            "max-memory-size=8192"
        ),
        None
    );
    assert_refused(
        consume("max-small", packets(fd), "max-memory-size=8191"),
        "8192 bytes, more than max-memory-size (8191)",
    );
}

// ----- protocol 2: the block registry -------------------------------------------------------

/// A buffer message that announces `blocks` (id and memfd each) and has one memory per
/// `(block, offset, size)`.
fn registry_packet(id: u64, blocks: Vec<(u64, OwnedFd)>, mems: &[(u64, u64, u64)]) -> Packet {
    let (ids, fds): (Vec<u64>, Vec<OwnedFd>) = blocks.into_iter().unzip();
    let msg = Message::Buffer(BufferWire {
        blocks: ids.iter().map(|&id| BlockWire { id, size: 4096 }).collect(),
        mems: mems
            .iter()
            .map(|&(block, offset, size)| MemWire {
                block,
                offset,
                size,
            })
            .collect(),
        id,
        ..BufferWire::default()
    });
    (msg.encode(), fds)
}

fn consume_registry(name: &str, buffers: Vec<Packet>, props: &str) -> Option<String> {
    let mut packets = vec![caps_packet("application/octet-stream"), segment_packet()];
    packets.extend(buffers);
    packets.push(eos_packet());
    consume(name, packets, props)
}

#[test]
fn a_producer_that_announces_more_blocks_than_the_bound_is_refused() {
    // Sixteen blocks fit; the seventeenth, with none retired, is refused.
    let buffers = (1..=17)
        .map(|b| registry_packet(b, vec![(b, memfd(&[0; 4096]))], &[(b, 0, 4096)]))
        .collect();
    let result = consume_registry("too-many", buffers, "max-blocks=16");
    assert_refused(
        result,
        "the producer announced more than 16 blocks (max-blocks) without retiring any",
    );
}

#[test]
fn retired_blocks_make_room() {
    // The same seventeen blocks, each retired with the next buffer: accepted.
    let buffers = (1..=17)
        .map(|b| {
            let (bytes, fds) = registry_packet(b, vec![(b, memfd(&[0; 4096]))], &[(b, 0, 4096)]);
            let mut msg = match Message::decode(&bytes).unwrap() {
                Message::Buffer(w) => w,
                _ => unreachable!(),
            };
            msg.retire = if b > 1 { vec![b - 1] } else { vec![] };
            (Message::Buffer(msg).encode(), fds)
        })
        .collect();
    assert_eq!(consume_registry("retired", buffers, "max-blocks=16"), None);
}

#[test]
fn a_memory_in_a_block_never_announced_is_refused() {
    let buffers = vec![registry_packet(1, vec![], &[(42, 0, 100)])];
    assert_refused(
        consume_registry("unknown-block", buffers, ""),
        "a memory lies in block 42, never announced",
    );
}

#[test]
fn a_memory_outside_its_block_is_refused() {
    for (offset, size) in [(0, 4097), (4000, 200), (u64::MAX, 2), (1, u64::MAX)] {
        let buffers = vec![registry_packet(
            1,
            vec![(7, memfd(&[0; 4096]))],
            &[(7, offset, size)],
        )];
        let result = consume_registry("outside", buffers, "");
        let msg = result.unwrap_or_else(|| panic!("{offset}+{size} accepted"));
        assert!(
            msg.contains("outside the 4096-byte block") || msg.contains("bytes 18446744073"),
            "{offset}+{size}: {msg}"
        );
    }
}

#[test]
fn a_block_announced_twice_is_refused() {
    let buffers = vec![
        registry_packet(1, vec![(7, memfd(&[0; 4096]))], &[(7, 0, 10)]),
        registry_packet(2, vec![(7, memfd(&[1; 4096]))], &[(7, 0, 10)]),
    ];
    assert_refused(
        consume_registry("twice", buffers, ""),
        "block 7 was announced twice",
    );
}

#[test]
fn descriptors_that_do_not_match_the_announced_blocks_are_refused() {
    let (bytes, _fds) = registry_packet(1, vec![(7, memfd(&[0; 4096]))], &[(7, 0, 10)]);
    let extra = vec![memfd(&[0; 4096]), memfd(&[0; 4096])];
    assert_refused(
        consume_registry("descriptors", vec![(bytes, extra)], ""),
        "2 descriptors received for 1 blocks",
    );
}

#[test]
fn a_producer_speaking_another_version_is_refused_naming_both() {
    let mut old = Message::Caps("application/octet-stream".into()).encode();
    old[4] = 1;
    assert_refused(
        consume("version", vec![(old, vec![])], ""),
        "the peer speaks memfd protocol version 1, this memkit speaks version 2",
    );
}

#[test]
fn a_block_of_zero_bytes_is_refused() {
    let fd = memfd(&[]);
    let msg = Message::Buffer(BufferWire {
        blocks: vec![BlockWire { id: 1, size: 0 }],
        mems: vec![MemWire {
            block: 1,
            offset: 0,
            size: 0,
        }],
        id: 1,
        ..BufferWire::default()
    });
    assert_refused(
        consume_registry("zero-block", vec![(msg.encode(), vec![fd])], ""),
        "bad layout: offset 0 size 0 maxsize 0",
    );
}

// ----- issue 19: interlaced frames, panics, hangs, unmappable blocks --------------------------

/// How a frame is said to be interlaced.
#[derive(Debug, Clone, Copy)]
enum Interlacing {
    /// Caps `interlace-mode=interleaved`.
    Caps,
    /// Caps `interlace-mode=mixed` and the buffer flag `GST_VIDEO_BUFFER_FLAG_INTERLACED`.
    BufferFlag,
    /// Progressive caps and the meta's frame flag `GST_VIDEO_FRAME_FLAG_INTERLACED`.
    MetaFlag,
}

/// A frame laid out as libgstvideo lays out an interlaced one, whose memory holds what its
/// planes need when read progressively, but not when read field by field.
fn interlaced_frame_read_progressively(
    format: gst_video::VideoFormat,
    height: u32,
    how: Interlacing,
) -> Option<String> {
    init();
    let width = 64u32;
    let info = gst_video::VideoInfo::builder(format, width, height)
        .interlace_mode(gst_video::VideoInterlaceMode::Interleaved)
        .build()
        .unwrap();
    let offsets: Vec<u64> = info.offset().iter().map(|&o| o as u64).collect();
    let end = |interlaced| {
        let planes =
            plane_ranges(format, width, height, &offsets, info.stride(), interlaced).unwrap();
        planes.iter().map(|r| r.end).max().unwrap()
    };
    let size = end(false);
    assert!(
        end(true) > size,
        "{format:?} at {height} reads no more interlaced"
    );
    let name = format.to_str().to_string();
    let mode = match how {
        Interlacing::Caps => "interleaved",
        Interlacing::BufferFlag => "mixed",
        Interlacing::MetaFlag => "progressive",
    };
    let caps = format!(
        "{}, interlace-mode=(string){mode}",
        video_caps(&name, width, height)
    );
    let mut meta = video_meta(&name, width, height, &offsets, info.stride());
    let mut flags = 0;
    match how {
        Interlacing::Caps => {}
        Interlacing::BufferFlag => flags = gst_video::VideoBufferFlags::INTERLACED.bits(),
        Interlacing::MetaFlag => meta.flags = gst_video::VideoFrameFlags::INTERLACED.bits(),
    }
    let fd = memfd(&vec![0u8; size as usize]);
    consume(
        &format!("interlaced-{name}-{height}-{how:?}"),
        vec![
            caps_packet(&caps),
            segment_packet(),
            flagged_buffer_packet(1, vec![(fd, 0, size, size)], vec![meta], flags),
            eos_packet(),
        ],
        "",
    )
}

#[test]
fn interlaced_frames_short_of_their_field_rows_are_refused() {
    use gst_video::VideoFormat as F;
    for (format, height) in [
        (F::I420, 38),
        (F::Nv12, 38),
        (F::P01010le, 38),
        (F::Yuv9, 36),
    ] {
        for how in [
            Interlacing::Caps,
            Interlacing::BufferFlag,
            Interlacing::MetaFlag,
        ] {
            let result = interlaced_frame_read_progressively(format, height, how);
            let msg = result.unwrap_or_else(|| panic!("{format:?} {height} {how:?}: accepted"));
            assert!(
                msg.contains("Unusable video meta"),
                "{format:?} {how:?}: {msg}"
            );
        }
    }
}

/// A raw video frame without a meta, `size` bytes, of caps `format` 64x38 `mode`.
fn frame_without_meta(format: gst_video::VideoFormat, mode: &str, size: usize) -> Option<String> {
    let name = format.to_str();
    let caps = format!(
        "{}, interlace-mode=(string){mode}",
        video_caps(name, 64, 38)
    );
    consume(
        &format!("no-meta-{name}-{mode}"),
        vec![
            caps_packet(&caps),
            segment_packet(),
            buffer_packet(
                1,
                vec![(memfd(&vec![0u8; size]), 0, size as u64, size as u64)],
                vec![],
            ),
            eos_packet(),
        ],
        "",
    )
}

#[test]
fn a_frame_without_a_meta_must_hold_what_libgstvideo_reads_of_it() {
    init();
    use gst_video::VideoFormat as F;
    let size = |format, mode| {
        gst_video::VideoInfo::builder(format, 64, 38)
            .interlace_mode(mode)
            .build()
            .unwrap()
            .size()
    };
    let progressive = gst_video::VideoInterlaceMode::Progressive;
    let interleaved = gst_video::VideoInterlaceMode::Interleaved;
    // libgstvideo's own size: accepted.
    assert_eq!(
        frame_without_meta(F::I420, "progressive", size(F::I420, progressive)),
        None
    );
    assert_eq!(
        frame_without_meta(F::I420, "interleaved", size(F::I420, interleaved)),
        None
    );
    // One byte short: refused here, not left to each element downstream.
    assert_refused(
        frame_without_meta(F::I420, "progressive", size(F::I420, progressive) - 1),
        "without a video meta needs",
    );
    // GStreamer 1.22 gives P010 interleaved one chroma row too few (its reads go one row past
    // GstVideoInfo.size): refused.
    assert_refused(
        frame_without_meta(F::P01010le, "interleaved", size(F::P01010le, interleaved)),
        "interlaced frame without a video meta needs",
    );
}

/// A registry packet whose one buffer carries a reference timestamp meta: `caps`,
/// `timestamp`, `duration`.
fn meta_packet(caps: impl Into<String>, timestamp: u64, duration: u64) -> Packet {
    let (bytes, fds) = registry_packet(1, vec![(7, memfd(&[0; 4096]))], &[(7, 0, 10)]);
    let Message::Buffer(mut w) = Message::decode(&bytes).unwrap() else {
        unreachable!()
    };
    w.refs = vec![(caps.into(), timestamp, duration)];
    (Message::Buffer(w).encode(), fds)
}

#[test]
fn a_reference_timestamp_of_none_is_refused_not_a_panic() {
    assert_refused(
        consume_registry(
            "ref-none",
            vec![meta_packet("timestamp/x-test", u64::MAX, u64::MAX)],
            "",
        ),
        "reference timestamp meta from the producer: no timestamp",
    );
}

#[test]
fn a_write_only_descriptor_is_refused() {
    let sealed = memfd(&[0; 4096]);
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&sealed));
    let write_only: OwnedFd = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .into();
    let buffers = vec![registry_packet(1, vec![(7, write_only)], &[(7, 0, 10)])];
    assert_refused(
        consume_registry("write-only", buffers, ""),
        "the descriptor is write-only",
    );
}

#[test]
fn a_hugetlbfs_memfd_is_refused() {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::HUGETLB;
    let Ok(fd) = rustix::fs::memfd_create(c"hostile-huge", flags) else {
        eprintln!("no hugetlbfs memfds on this kernel: nothing to refuse");
        return;
    };
    let huge = 2 << 20;
    if rustix::fs::ftruncate(&fd, huge).is_err()
        || rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).is_err()
    {
        eprintln!("a hugetlbfs memfd cannot be sized or sealed here: nothing to refuse");
        return;
    }
    let msg = Message::Buffer(BufferWire {
        blocks: vec![BlockWire { id: 7, size: huge }],
        mems: vec![MemWire {
            block: 7,
            offset: 0,
            size: 10,
        }],
        id: 1,
        ..BufferWire::default()
    });
    assert_refused(
        consume_registry("hugetlb", vec![(msg.encode(), vec![fd])], ""),
        "not a shmem memfd",
    );
}

#[test]
fn an_empty_packet_is_an_error_not_a_hang_up() {
    let packets = vec![
        caps_packet("application/octet-stream"),
        segment_packet(),
        (Vec::new(), Vec::new()),
        eos_packet(),
    ];
    assert_refused(consume("empty", packets, ""), "an empty message (0 bytes)");
}

/// A producer that sends one buffer message with `n` descriptors attached (more than any
/// message may carry), then waits for the consumer to leave.
fn too_many_descriptors(path: PathBuf, n: usize) -> std::thread::JoinHandle<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let _ = std::fs::remove_file(&path);
    let listener = proto::listen_at(&path, 0o600).unwrap();
    std::thread::spawn(move || {
        let sock = proto::accept(&listener).unwrap();
        for (bytes, _) in [caps_packet("application/octet-stream"), segment_packet()] {
            proto::send(sock.as_fd(), &bytes, &[]).unwrap();
        }
        let fds: Vec<OwnedFd> = (0..n).map(|_| memfd(&[0; 4096])).collect();
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let (bytes, _) = registry_packet(1, vec![], &[]);
        let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(64))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        rustix::net::sendmsg(
            &sock,
            &[std::io::IoSlice::new(&bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .unwrap();
        wait_for_hang_up(&sock, &path);
    })
}

#[test]
fn more_descriptors_than_a_message_carries_are_refused() {
    init();
    let path = socket_path("40-fds");
    let producer = too_many_descriptors(path.clone(), 40);
    let result = run_until_done(&format!(
        "memfdsrc socket-path={} timeout=5000 ! fakesink",
        path.display()
    ));
    producer.join().unwrap();
    // All 40 arrive (the receive has room for what the kernel passes with one message: none
    // is closed in the streaming thread by the kernel), and are refused.
    assert_refused(result, "40 descriptors came with one message");
}

/// Runs `pipeline` to EOS or error: the error, or `None` at EOS.
fn run_until_done(pipeline: &str) -> Option<String> {
    let pipeline = gst::parse::launch(pipeline).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let mut result = Some("no EOS or error within 60 s".to_string());
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Eos(_) => {
                result = None;
                break;
            }
            gst::MessageView::Error(e) => {
                result = Some(format!("{} {:?}", e.error(), e.debug()));
                break;
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    result
}

/// Sets `pipeline` to NULL in another thread: whether that completed within `limit`.
fn stops_within(pipeline: gst::Element, limit: Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = pipeline.set_state(gst::State::Null);
        let _ = tx.send(());
    });
    rx.recv_timeout(limit).is_ok()
}

#[test]
fn a_producer_sending_only_events_cannot_stall_a_state_change() {
    init();
    let path = socket_path("event-flood");
    let _ = std::fs::remove_file(&path);
    let listener = proto::listen_at(&path, 0o600).unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let flood = std::thread::spawn(move || {
        let sock = proto::accept(&listener).unwrap();
        let (caps, _) = caps_packet("application/octet-stream");
        let _ = proto::send(sock.as_fd(), &caps, &[]);
        let (segment, _) = segment_packet();
        // A segment every 50 ms (its pace, not a wait) until the consumer leaves (or 30 s).
        for _ in 0..600 {
            if proto::try_send(sock.as_fd(), &segment, &[]).is_err() {
                break;
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let pipeline = gst::parse::launch(&format!(
        "memfdsrc socket-path={} ! fakesink",
        path.display()
    ))
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    // Connected and in the flood: a few segments went through (a poll, 30 s at most).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sent.load(std::sync::atomic::Ordering::Relaxed) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flood never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        stops_within(pipeline, Duration::from_secs(5)),
        "memfdsrc did not stop within 5 s while the producer sent segments"
    );
    flood.join().unwrap();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_producer_that_hangs_up_at_once_is_reconnected_to_with_backoff_and_can_be_stopped() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    init();
    let path = socket_path("hang-up");
    let _ = std::fs::remove_file(&path);
    let listener = proto::listen_at(&path, 0o600).unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let (a, d) = (accepted.clone(), done.clone());
    let storm = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !d.load(Ordering::Relaxed) {
            let mut pfd = [rustix::event::PollFd::new(
                &listener,
                rustix::event::PollFlags::IN,
            )];
            let tick = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 20_000_000,
            };
            if rustix::event::poll(&mut pfd, Some(&tick)).unwrap_or(0) == 0 {
                continue;
            }
            let Ok(sock) = proto::accept(&listener) else {
                continue;
            };
            // Its hello, then hang up: every connection succeeds and ends at once.
            let _ = proto::recv(sock.as_fd(), &mut buf, Duration::from_secs(1));
            a.fetch_add(1, Ordering::Relaxed);
        }
    });
    let pipeline = gst::parse::launch(&format!(
        "memfdsrc socket-path={} reconnect=true timeout=1000 ! fakesink",
        path.display()
    ))
    .unwrap();
    let start = std::time::Instant::now();
    pipeline.set_state(gst::State::Playing).unwrap();
    // Five connections (a poll, 30 s at most): the back-off puts at least 10 + 20 + 40 + 80 ms
    // between them, however busy the machine (before: 61,074 connections in 3 s).
    let deadline = start + Duration::from_secs(30);
    while accepted.load(Ordering::Relaxed) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than 5 connections in 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    let stopped = stops_within(pipeline, Duration::from_secs(5));
    done.store(true, Ordering::Relaxed);
    storm.join().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        took >= Duration::from_millis(150),
        "5 connections in {} ms: no back-off",
        took.as_millis()
    );
    assert!(stopped, "memfdsrc did not stop within 5 s");
}

// ----- issue 27: lingering descriptors, deep nesting ----------------------------------------

/// A TCP socket whose last `close()` blocks for `seconds`: `SO_LINGER {1, seconds}` and a full
/// send queue towards a peer that reads nothing. The peer and its listener are returned too:
/// kept open, they keep the queue from draining.
fn lingering_socket(seconds: u64) -> (OwnedFd, std::net::TcpStream, std::net::TcpListener) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (peer, _) = listener.accept().unwrap();
    client.set_nonblocking(true).unwrap();
    let chunk = vec![0u8; 65536];
    loop {
        match client.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the send queue: {e}"),
        }
    }
    rustix::net::sockopt::set_socket_linger(&client, Some(Duration::from_secs(seconds))).unwrap();
    (OwnedFd::from(client), peer, listener)
}

/// A producer that sends `packets` (each with its descriptors: ours are closed once sent, so
/// the consumer holds the last reference), then waits for the consumer to hang up. The TCP
/// peers of lingering sockets (`keep`) stay open until then.
fn producer_sending(
    path: PathBuf,
    packets: Vec<Packet>,
    keep: Vec<std::net::TcpStream>,
) -> std::thread::JoinHandle<()> {
    let _ = std::fs::remove_file(&path);
    let listener = proto::listen_at(&path, 0o600).unwrap();
    std::thread::spawn(move || {
        let sock = proto::accept(&listener).unwrap();
        for (bytes, fds) in packets {
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            if proto::send(sock.as_fd(), &bytes, &borrowed).is_err() {
                break;
            }
        }
        wait_for_hang_up(&sock, &path);
        drop(keep);
    })
}

/// Waits (up to 30 s) until `pipeline`'s element `name` has caps on its src pad.
fn wait_for_caps(pipeline: &gst::Element, name: &str) {
    let src = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name(name)
        .unwrap()
        .static_pad("src")
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while src.current_caps().is_none() {
        assert!(std::time::Instant::now() < deadline, "no caps within 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long the pipeline took, after `packets` were sent (the first is caps, so that the
/// consumer shows when it took them), to post an error; `None`: no error within 30 s.
fn time_to_error(
    name: &str,
    packets: Vec<Packet>,
    keep: Vec<std::net::TcpStream>,
) -> Option<(Duration, String)> {
    init();
    let path = socket_path(name);
    let producer = producer_sending(path.clone(), packets, keep);
    let pipeline = gst::parse::launch(&format!(
        "memfdsrc socket-path={} timeout=5000 ! fakesink",
        path.display()
    ))
    .unwrap();
    let bus = pipeline.bus().unwrap();
    let start = std::time::Instant::now();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut result = None;
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(30)) {
        if let gst::MessageView::Error(e) = msg.view() {
            result = Some((start.elapsed(), format!("{} {:?}", e.error(), e.debug())));
            break;
        }
    }
    let stopped = stops_within(pipeline, Duration::from_secs(30));
    producer.join().unwrap();
    assert!(stopped);
    result
}

/// The linger time of the sockets in these tests: what a close on a path we wait for would
/// cost (the limits asserted are a fraction of it).
const LINGER: u64 = 8;

#[test]
fn descriptors_attached_to_caps_or_events_are_refused_without_waiting_for_their_close() {
    let caps = Message::Caps("application/octet-stream".into()).encode();
    let start = Message::Event(
        EventKind::StreamStart,
        "GstEventStreamStart, stream-id=(string)x;".into(),
    )
    .encode();
    let (segment, _) = segment_packet();
    let (eos, _) = eos_packet();
    for (what, packet) in [
        ("caps", caps),
        ("stream-start", start),
        ("segment", segment),
        ("EOS", eos),
    ] {
        let (fd, peer, _listener) = lingering_socket(LINGER);
        let packets = vec![caps_packet("application/octet-stream"), (packet, vec![fd])];
        let (took, msg) = time_to_error(&format!("linger-{what}"), packets, vec![peer])
            .unwrap_or_else(|| panic!("{what} with a descriptor: accepted"));
        assert!(msg.contains("descriptor"), "{what}: {msg}");
        // Before: the error came after the close, LINGER s late.
        assert!(
            took < Duration::from_secs(3),
            "{what}: the error took {} ms",
            took.as_millis()
        );
    }
}

#[test]
fn a_buffer_whose_block_is_a_lingering_socket_is_refused_at_once() {
    let (fd, peer, _listener) = lingering_socket(LINGER);
    let (bytes, _) = registry_packet(1, vec![], &[(7, 0, 10)]);
    let Message::Buffer(mut w) = Message::decode(&bytes).unwrap() else {
        unreachable!()
    };
    w.blocks = vec![BlockWire { id: 7, size: 4096 }];
    let packets = vec![
        caps_packet("application/octet-stream"),
        segment_packet(),
        (Message::Buffer(w).encode(), vec![fd]),
    ];
    let (took, msg) = time_to_error("linger-block", packets, vec![peer]).expect("accepted");
    assert!(msg.contains("Unusable memory"), "{msg}");
    assert!(
        took < Duration::from_secs(3),
        "the error took {} ms",
        took.as_millis()
    );
}

#[test]
fn a_buffer_with_a_lingering_descriptor_too_many_is_refused_at_once() {
    let (fd, peer, _listener) = lingering_socket(LINGER);
    let (bytes, mut fds) = registry_packet(1, vec![(7, memfd(&[0; 4096]))], &[(7, 0, 10)]);
    fds.push(fd);
    let packets = vec![
        caps_packet("application/octet-stream"),
        segment_packet(),
        (bytes, fds),
    ];
    let (took, msg) = time_to_error("linger-count", packets, vec![peer]).expect("accepted");
    assert!(msg.contains("2 descriptors received for 1 blocks"), "{msg}");
    assert!(
        took < Duration::from_secs(3),
        "the error took {} ms",
        took.as_millis()
    );
}

#[test]
fn descriptors_queued_unread_do_not_keep_memfdsrc_from_stopping() {
    // The consumer's downstream takes one buffer and blocks; behind it the producer queues
    // segments carrying lingering sockets. Stopping closes the connection with them unread:
    // before, that close ran the sockets' lingering closes in the thread that stopped.
    init();
    let mut packets = vec![
        caps_packet("application/octet-stream"),
        segment_packet(),
        registry_packet(1, vec![(7, memfd(&[0; 4096]))], &[(7, 0, 10)]),
    ];
    let mut keep = Vec::new();
    for _ in 0..4 {
        let (fd, peer, listener) = lingering_socket(LINGER);
        let (segment, _) = segment_packet();
        packets.push((segment, vec![fd]));
        keep.push(peer);
        std::mem::forget(listener);
    }
    let path = socket_path("linger-queued");
    let producer = producer_sending(path.clone(), packets, keep);
    let pipeline = gst::parse::launch(&format!(
        "memfdsrc name=r socket-path={} ! appsink name=out max-buffers=1 sync=false",
        path.display()
    ))
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    wait_for_caps(&pipeline, "r");
    // The buffer reached appsink (prerolled): the rest waits in the socket.
    let _ = pipeline.state(gst::ClockTime::from_seconds(30));
    let start = std::time::Instant::now();
    assert!(
        stops_within(pipeline, Duration::from_secs(30)),
        "memfdsrc never stopped"
    );
    let took = start.elapsed();
    producer.join().unwrap();
    assert!(
        took < Duration::from_secs(1),
        "the stop took {} ms",
        took.as_millis()
    );
}

/// A string nested `depth` deep in GStreamer's list syntax: `{ { ... } }`.
fn nested(depth: usize) -> String {
    format!("{}1{}", "{".repeat(depth), "}".repeat(depth))
}

#[test]
fn deeply_nested_caps_segments_and_meta_caps_are_refused_before_gstreamer_parses_them() {
    // 32,000 levels in 64 KiB: GStreamer's value parser recursed once per level and overflowed
    // the streaming thread's stack (SIGSEGV).
    let deep = nested(32_000);
    let caps = format!("application/x-test, v=(int){deep}");
    assert!(Message::Caps(caps.clone()).encode().len() <= transport::wire::MAX_MESSAGE);
    assert_refused(
        consume(
            "deep-caps",
            vec![caps_packet(&caps), segment_packet(), eos_packet()],
            "",
        ),
        "nested",
    );
    let segment = format!("GstEventSegment, segment=(int){deep};");
    assert_refused(
        consume(
            "deep-segment",
            vec![
                caps_packet("application/octet-stream"),
                (Message::Event(EventKind::Segment, segment).encode(), vec![]),
                eos_packet(),
            ],
            "",
        ),
        "nested",
    );
    assert_refused(
        consume_registry(
            "deep-meta",
            vec![meta_packet(
                format!("timestamp/x-test, v=(int){}", nested(30_000)),
                1,
                u64::MAX,
            )],
            "",
        ),
        "nested",
    );
}

/// A list nested `levels` deep whose closing brackets, `group` at a time, sit inside a quoted
/// string element: `{{{"}}}", {{{"}}}", ... 1`. GStreamer's depth is `levels`; a count of
/// brackets that does not skip quoted strings sees `group`.
fn nested_behind_quoted_closers(levels: usize, group: usize) -> String {
    let mut out = String::new();
    let mut done = 0;
    while done < levels {
        let k = group.min(levels - done);
        out += &format!("{}\"{}\",", "{".repeat(k), "}".repeat(k));
        done += k;
    }
    out + "1"
}

#[test]
fn nesting_hidden_behind_quoted_closers_is_refused_not_a_crash() {
    // Found by the review of issue 27: `nesting()` counted the brackets inside quoted strings,
    // closing ones too, so 30,000 real levels were counted as 60 and GStreamer's value parser
    // overflowed the streaming thread's stack (SIGSEGV, 4 of 4 runs).
    let deep = nested_behind_quoted_closers(30_000, 60);
    let caps = format!("x/y, v={deep}");
    assert!(Message::Caps(caps.clone()).encode().len() <= transport::wire::MAX_MESSAGE);
    assert_refused(
        consume(
            "deep-quoted-caps",
            vec![caps_packet(&caps), segment_packet(), eos_packet()],
            "",
        ),
        "nested",
    );
    let segment = format!("GstEventSegment, v={deep}");
    assert_refused(
        consume(
            "deep-quoted-segment",
            vec![
                caps_packet("application/octet-stream"),
                (Message::Event(EventKind::Segment, segment).encode(), vec![]),
                eos_packet(),
            ],
            "",
        ),
        "nested",
    );
    // Brackets written as octal escapes inside a structure GStreamer parses again.
    let octal = format!(
        "x/y, v=(GstStructure)\"s, w={}1{}\"",
        "\\173".repeat(100),
        "\\175".repeat(100)
    );
    assert_refused(
        consume(
            "deep-octal-caps",
            vec![caps_packet(&octal), segment_packet(), eos_packet()],
            "",
        ),
        "nested",
    );
}

#[test]
fn caps_nested_a_little_are_fine() {
    // Arrays (fixed, unlike lists) four deep.
    let caps = format!(
        "application/x-test, v=(int){}1{}",
        "<".repeat(4),
        ">".repeat(4)
    );
    assert_eq!(
        consume(
            "shallow-caps",
            vec![caps_packet(&caps), segment_packet(), eos_packet()],
            ""
        ),
        None
    );
}

// ----- found by the fuzzer (tests/memfd_fuzz.rs) -----------------------------------------------

#[test]
fn caps_after_the_stream_began_without_caps_are_refused_not_a_warning() {
    // Caps after the stream began without them (a first buffer went with a segment, the
    // producer's or the one the source pushes itself): GStreamer warned "Sticky event
    // misordering, got 'caps' before 'segment'" (fatal under G_DEBUG=fatal_warnings).
    // (A segment then caps, before any buffer, is fine: the source holds the segment back
    // until the first buffer.)
    let segment_first = vec![
        segment_packet(),
        registry_packet(1, vec![(7, memfd(&[0; 4096]))], &[(7, 0, 10)]),
        caps_packet("application/octet-stream"),
        eos_packet(),
    ];
    assert_refused(
        consume("segment-then-caps", segment_first, ""),
        "after its stream began without caps",
    );
    let buffer_first = vec![
        registry_packet(1, vec![(7, memfd(&[0; 4096]))], &[(7, 0, 10)]),
        caps_packet("application/octet-stream"),
        eos_packet(),
    ];
    assert_refused(
        consume("buffer-then-caps", buffer_first, ""),
        "after its stream began without caps",
    );
}

#[test]
fn caps_features_gstreamer_would_warn_about_are_refused_before_it_parses_them() {
    // "Invalid caps feature name: ?" (a GLib warning, fatal under G_DEBUG=fatal_warnings) from
    // caps garbled in a producer's message: found by the fuzzer's long run.
    let bad = "application/x-test(?)";
    assert!(gst_is_silent_about(
        "application/x-test(memory:SystemMemory)"
    ));
    assert_refused(
        consume(
            "bad-features",
            vec![caps_packet(bad), segment_packet(), eos_packet()],
            "",
        ),
        "caps features",
    );
    assert_refused(
        consume_registry(
            "bad-meta-features",
            vec![meta_packet("timestamp/x-test(memory:)", 1, u64::MAX)],
            "",
        ),
        "caps features",
    );
}

/// Whether `caps` parse (a warning would abort the test under `G_DEBUG=fatal_warnings`).
fn gst_is_silent_about(caps: &str) -> bool {
    init();
    caps.parse::<gst::Caps>().is_ok()
}

#[test]
fn structure_names_gstreamer_would_warn_about_are_refused_before_it_parses_them() {
    // "gst_structure_new_empty: assertion 'gst_structure_validate_name (name)' failed" (a
    // CRITICAL) from caps whose name is not one GStreamer takes: found by the fuzzer's long
    // run. The same for a second structure, a quoted name, 0.10-style raw caps (a warning)
    // and caps in a reference timestamp meta.
    for (i, caps) in [
        "1abc, a=(int)1",
        "application/x-test; 2x",
        "\"x y\", a=(int)1",
        "video/x-raw-yuv, format=(string)I420",
    ]
    .into_iter()
    .enumerate()
    {
        assert_refused(
            consume(
                &format!("bad-name-{i}"),
                vec![caps_packet(caps), segment_packet(), eos_packet()],
                "",
            ),
            "structure name",
        );
    }
    assert_refused(
        consume_registry(
            "bad-meta-name",
            vec![meta_packet("0timestamp", 1, u64::MAX)],
            "",
        ),
        "structure name",
    );
}

#[test]
fn a_producer_whose_backlog_is_full_does_not_hold_up_a_start() {
    // Review of issue 27: memfdsrc connected with a blocking connect(), which waits for as
    // long as a producer that accepts nothing keeps its backlog full: `timeout` never
    // applied, and with `reconnect=true` a stop never completed.
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    init();
    let path = socket_path("full-backlog");
    let _ = std::fs::remove_file(&path);
    let addr = SocketAddrUnix::new(&path).unwrap();
    let socket = |flags| {
        rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, flags, None).unwrap()
    };
    let listener = socket(SocketFlags::CLOEXEC);
    rustix::net::bind(&listener, &addr).unwrap();
    rustix::net::listen(&listener, 1).unwrap();
    let mut queued = Vec::new();
    loop {
        let c = socket(SocketFlags::CLOEXEC | SocketFlags::NONBLOCK);
        match rustix::net::connect(&c, &addr) {
            Ok(()) => queued.push(c),
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(queued.len() < 64, "the backlog never filled");
    }
    let pipeline = gst::parse::launch(&format!(
        "memfdsrc socket-path={} timeout=500 ! fakesink",
        path.display()
    ))
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let p = pipeline.clone();
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let result = p.set_state(gst::State::Paused);
        let _ = tx.send((result, start.elapsed()));
    });
    let (result, took) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the start still waited for the producer after 10 s");
    pipeline.set_state(gst::State::Null).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        result.is_err(),
        "started against a producer that accepts nothing"
    );
    assert!(
        took < Duration::from_secs(3),
        "the start gave up after {took:?}"
    );
}

// ----- found by the second attack review of issue 27 -----------------------------------------

/// Caps whose parse made GStreamer raise a CRITICAL or a warning (SIGTRAP under
/// `G_DEBUG=fatal_warnings`), and the words the refusal must name.
const STRINGS_GSTREAMER_ASSERTS_ON: &[(&str, &str)] = &[
    // gst_value_set_int_range_step: 'start < end', 'step > 0', 'start % step == 0'.
    ("application/x-test, v=[ 5, 1 ]", "range"),
    ("application/x-test, v=(int)[ 0, 10, 0 ]", "range"),
    ("application/x-test, v=(int)[ 1, 10, 3 ]", "range"),
    ("application/x-test, v=(gint64)[ 7, 7 ]", "range"),
    // gst_value_set_double_range: 'start < end' (a NaN is below nothing).
    ("application/x-test, v=[ nan, 1.0 ]", "range"),
    ("application/x-test, v=(double)[ 2.5, 2.5 ]", "range"),
    // gst_value_set_fraction_range: start below end; gst_value_set_fraction: numerator
    // and denominator above -G_MAXINT (2147483648 wraps to G_MININT in sscanf).
    ("application/x-test, v=(fraction)[ 1/2, 2/4 ]", "range"),
    ("application/x-test, v=(fraction)2147483648/1", "fraction"),
    ("application/x-test, v=2147483648/1", "fraction"),
    // Structures and caps inside caps: gst_structure_new_empty CRITICAL, a 0.10-style
    // caps warning, a tag list's caps.
    (
        "application/x-test, c=(GstCaps)[1bad, a=(int)1]",
        "typed (GstCaps)",
    ),
    (
        "application/x-test, c=(GstCaps)[video/x-raw-yuv]",
        "typed (GstCaps)",
    ),
    ("application/x-test, c=[1bad, a=(int)1]", "range"),
    (
        "x/y, v=(GstTagList)\"taglist, a=(GstCaps)[1bad]\"",
        "typed (GstTagList)",
    ),
    // "unimplemented" warnings.
    ("x/y, v=(GstInt64Range)[5,1]", "typed (GstInt64Range)"),
    ("x/y, v=(GValueArray)\"< 1 >\"", "typed (GValueArray)"),
    // Flags no name stands for: "Could not serialize invalid flags" when printed.
    (
        "application/x-test, e=(GstSegmentFlags)9999, v={ (int)1, (int)2 }",
        "typed (GstSegmentFlags)",
    ),
    // An untyped quoted number: "Received a structure string that contains '=\"1\"'".
    ("x/y, v=\"1\"", "quoted value"),
];

#[test]
fn strings_gstreamer_would_assert_on_are_refused_before_it_parses_them() {
    // Found by the second attack review of issue 27 (p2_range_critical.py): each made
    // memfdsrc raise a CRITICAL or a warning, fatal under G_DEBUG=fatal_warnings.
    for (i, (caps, why)) in STRINGS_GSTREAMER_ASSERTS_ON.iter().enumerate() {
        assert_refused(
            consume(
                &format!("assert-caps-{i}"),
                vec![caps_packet(caps), segment_packet(), eos_packet()],
                "",
            ),
            why,
        );
    }
    // The same range in a segment's structure and in a reference timestamp meta's caps.
    let segment = segment_text().replacen(";\";", ";\", v=[ 5, 1 ];", 1);
    assert_ne!(segment, segment_text(), "{segment}");
    assert_refused(
        consume(
            "assert-segment",
            vec![
                caps_packet("application/octet-stream"),
                (Message::Event(EventKind::Segment, segment).encode(), vec![]),
                eos_packet(),
            ],
            "",
        ),
        "range",
    );
    assert_refused(
        consume_registry(
            "assert-meta",
            vec![meta_packet("timestamp/x-test, v=[ 5, 1 ]", 1, u64::MAX)],
            "",
        ),
        "range",
    );
    // Flags no name stands for inside the segment itself.
    let flags = segment_text().replacen("GST_SEGMENT_FLAG_NONE", "9999", 1);
    assert_ne!(flags, segment_text(), "{flags}");
    assert_refused(
        consume(
            "assert-segment-flags",
            vec![
                caps_packet("application/octet-stream"),
                (Message::Event(EventKind::Segment, flags).encode(), vec![]),
                eos_packet(),
            ],
            "",
        ),
        "flags",
    );
}

#[test]
fn caps_a_real_producer_sends_still_pass() {
    // What gst_caps_to_string writes for real streams: plain types, a fixed fraction, a
    // bitmask, a buffer, caps features, and a segment with named flags.
    init();
    // The flag set's type exists once libgstvideo registered it (any video element does);
    // the suite may run with core's elements only.
    // SAFETY: a GType getter: no arguments, registers the type once, thread-safe.
    let _ = unsafe { gst_video::ffi::gst_video_multiview_flagset_get_type() };
    for (i, caps) in [
        "video/x-raw(memory:SystemMemory), format=(string)NV12, width=(int)320, \
         height=(int)240, framerate=(fraction)30/1, pixel-aspect-ratio=(fraction)1/1, \
         interlace-mode=(string)progressive, colorimetry=(string)bt601, \
         multiview-mode=(string)mono, multiview-flags=(GstVideoMultiviewFlagsSet)0:ffffffff:\
         /right-view-first/left-flipped/left-flopped/right-flipped/right-flopped/half-aspect\
         /mixed-mono",
        "audio/x-raw, format=(string)S16LE, layout=(string)interleaved, rate=(int)48000, \
         channels=(int)2, channel-mask=(bitmask)0x0000000000000003",
        "video/x-h264, stream-format=(string)avc, codec_data=(buffer)0164001fffe1, \
         level=(string)\"3.1\", b=(boolean)true, d=(double)-1.5e3, u=(guint64)18446744073709551615",
    ]
    .into_iter()
    .enumerate()
    {
        assert!(gst_is_silent_about(caps), "{caps}");
        assert_eq!(
            consume(
                &format!("real-caps-{i}"),
                vec![caps_packet(caps), segment_packet(), eos_packet()],
                ""
            ),
            None,
            "{caps}"
        );
    }
    let flags = segment_text().replacen(
        "GST_SEGMENT_FLAG_NONE",
        "GST_SEGMENT_FLAG_RESET+GST_SEGMENT_FLAG_TRICKMODE_NO_AUDIO",
        1,
    );
    assert_eq!(
        consume(
            "real-segment-flags",
            vec![
                caps_packet("application/octet-stream"),
                (Message::Event(EventKind::Segment, flags).encode(), vec![]),
                eos_packet(),
            ],
            "",
        ),
        None
    );
}

/// A segment of rate -1 with `stop` (`None`: no stop), then a buffer, then EOS.
fn reverse_segment(name: &str, stop: Option<u64>) -> Option<String> {
    let text = segment_text().replacen(", rate=(double)1", ", rate=(double)-1", 1);
    let text = match stop {
        Some(stop) => text.replacen(
            "stop=(guint64)18446744073709551615",
            &format!("stop=(guint64){stop}"),
            1,
        ),
        None => text,
    };
    assert!(text.contains("rate=(double)-1"), "{text}");
    consume(
        name,
        vec![
            caps_packet("application/octet-stream"),
            (Message::Event(EventKind::Segment, text).encode(), vec![]),
            registry_packet(1, vec![(7, memfd(&[0; 4096]))], &[(7, 0, 10)]),
            eos_packet(),
        ],
        "",
    )
}

#[test]
fn a_reverse_segment_without_a_stop_is_refused_not_a_critical() {
    // Found by the second attack review of issue 27 (p4_segment_fuzz.py reverse-nostop):
    // gst_segment_to_running_time_full: assertion 'stop != -1' failed downstream.
    assert_refused(
        reverse_segment("reverse-nostop", None),
        "Invalid segment from the producer: a negative rate and no stop",
    );
    assert_eq!(reverse_segment("reverse-stop", Some(1_000_000_000)), None);
}

// ----- found by the third attack review of issue 27 ------------------------------------------

/// Segment events whose parse made GStreamer warn or raise a CRITICAL (SIGTRAP under
/// `G_DEBUG=fatal_warnings`), each made from a real segment's structure, and the words the
/// refusal must name.
fn hostile_segments() -> Vec<(String, &'static str)> {
    let good = segment_text();
    assert!(good.ends_with(";\";"), "{good}");
    let after = "after the end of a structure";
    let cases = vec![
        // gst_structure_from_string(.., NULL): "did not consume whole string".
        (format!("{good}x"), after),
        (format!("{good} "), after),
        // The same inside the segment's string, which its deserialiser parses so too.
        (good.replacen(";\";", ";x\";", 1), after),
        (good.replacen(";\";", "; \";", 1), after),
        // gst_structure_new_empty: assertion 'gst_structure_validate_name (name)' failed.
        (
            good.replacen("GstEventSegment", "1bad", 1),
            "structure name",
        ),
        (
            good.replacen("GstEventSegment", "\"1bad\"", 1),
            "structure name",
        ),
        (
            good.replacen("GstEventSegment", "\\ 1bad", 1),
            "structure name",
        ),
        (good.replacen("\"segment,", "\"1bad,", 1), "structure name"),
    ];
    for (text, _) in &cases {
        assert_ne!(text, &good);
    }
    cases
}

#[test]
fn structure_strings_gstreamer_would_warn_about_are_refused_before_it_parses_them() {
    // Found by the third attack review of issue 27 (s1_strings.py seg_trailing,
    // seg_inner_trailing, seg_badname): each made memfdsrc raise a warning or a CRITICAL.
    for (i, (segment, why)) in hostile_segments().into_iter().enumerate() {
        assert_refused(
            consume(
                &format!("structure-{i}"),
                vec![
                    caps_packet("application/octet-stream"),
                    (Message::Event(EventKind::Segment, segment).encode(), vec![]),
                    eos_packet(),
                ],
                "",
            ),
            why,
        );
    }
    // A name behind `\ `, which GStreamer skips as a space: in caps and a meta's caps too.
    assert_refused(
        consume(
            "structure-caps",
            vec![
                caps_packet("application/x-test; \\ 1bad"),
                segment_packet(),
                eos_packet(),
            ],
            "",
        ),
        "structure name",
    );
    assert_refused(
        consume_registry(
            "structure-meta",
            vec![meta_packet("\\ 1bad", 1, u64::MAX)],
            "",
        ),
        "structure name",
    );
}
