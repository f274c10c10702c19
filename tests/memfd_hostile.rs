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
    pub mod socket;
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

#[test]
fn a_reference_timestamp_of_none_is_refused_not_a_panic() {
    let (bytes, fds) = registry_packet(1, vec![(7, memfd(&[0; 4096]))], &[(7, 0, 10)]);
    let Message::Buffer(mut w) = Message::decode(&bytes).unwrap() else {
        unreachable!()
    };
    w.refs = vec![("timestamp/x-test".into(), u64::MAX, u64::MAX)];
    assert_refused(
        consume_registry("ref-none", vec![(Message::Buffer(w).encode(), fds)], ""),
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
fn descriptors_lost_on_the_way_are_said_so() {
    init();
    let path = socket_path("40-fds");
    let producer = too_many_descriptors(path.clone(), 40);
    let result = run_until_done(&format!(
        "memfdsrc socket-path={} timeout=5000 ! fakesink",
        path.display()
    ));
    producer.join().unwrap();
    assert_refused(result, "descriptors of a message were lost");
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
