// SPDX-License-Identifier: MPL-2.0
//! How `memfdsink` describes a buffer on the wire: its memories as ranges of blocks, its
//! timestamps, flags and the metas that cross, within what one message holds.

use crate::allocator::memfd;
use crate::transport::server::Outgoing;
use crate::transport::wire::{self, BlockWire, BufferWire, MemWire};

/// The most bytes of metas one buffer's description may take; metas past it are dropped
/// (with a warning): the rest of the message (retired and announced blocks) needs room too.
const MAX_DESCRIPTION: usize = wire::MAX_MESSAGE / 2;

/// The metas of `input` that cross: reference timestamp metas and video metas.
type Metas = (Vec<(String, u64, u64)>, Vec<wire::VideoMetaWire>);

fn wire_metas(input: &gst::Buffer) -> Metas {
    let refs = input
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .take(wire::MAX_METAS)
        .map(|m| {
            (
                m.reference().to_string(),
                m.timestamp().nseconds(),
                m.duration().map_or(u64::MAX, |d| d.nseconds()),
            )
        })
        .collect();
    let video = input
        .iter_meta::<gst_video::VideoMeta>()
        .take(wire::MAX_METAS)
        .map(|m| wire::VideoMetaWire {
            flags: m.video_frame_flags().bits(),
            format: m.format().to_str().to_string(),
            width: m.width(),
            height: m.height(),
            offsets: m.offset().iter().map(|&o| o as u64).collect(),
            strides: m.stride().to_vec(),
        })
        .collect();
    (refs, video)
}

/// The wire description of `sent` (its memories `MemfdMemory` blocks of `stream`) with the
/// metas of `input` (the buffer as it came: core does not copy memory-tagged metas such as
/// GstVideoMeta into a buffer it did not copy memory to), and the blocks it uses. `None`
/// when a memory is not a block that can be sent after all. Also says how many metas did not
/// fit in one message and stay behind.
pub(super) fn describe<'a>(
    input: &gst::Buffer,
    sent: &'a gst::Buffer,
    stream: u64,
) -> Option<(Outgoing<'a>, usize)> {
    let (refs, video) = wire_metas(input);
    let mut blocks = Vec::with_capacity(sent.n_memory());
    let mut mems = Vec::with_capacity(sent.n_memory());
    let mut before = 0;
    for mem in sent.iter_memories() {
        let b = memfd::block_of(mem, stream)?;
        before = before.max(b.before);
        mems.push(MemWire {
            block: b.id,
            offset: mem.offset() as u64,
            size: mem.size() as u64,
        });
        blocks.push((
            BlockWire {
                id: b.id,
                size: b.size as u64,
            },
            b.fd,
        ));
    }
    let time = |t: Option<gst::ClockTime>| t.map_or(u64::MAX, |t| t.nseconds());
    let mut wire = BufferWire {
        mems,
        video,
        refs,
        pts: time(sent.pts()),
        dts: time(sent.dts()),
        duration: time(sent.duration()),
        offset: sent.offset(),
        offset_end: sent.offset_end(),
        // Every bit that crosses: `flags()` would drop the video ones (interlaced, ...).
        flags: crate::elements::common::crossing_flags(crate::elements::memory::buffer_flag_bits(
            sent,
        )),
        ..BufferWire::default()
    };
    let dropped = fit_metas(&mut wire);
    let out = Outgoing {
        hold: sent.clone(),
        wire,
        blocks,
        before,
    };
    Some((out, dropped))
}

/// Drops metas until the buffer's description fits in [`MAX_DESCRIPTION`]: reference
/// timestamp metas first (last first), then video metas. Returns how many were dropped.
pub(super) fn fit_metas(wire: &mut BufferWire) -> usize {
    let mut dropped = 0;
    while wire::encode_buffer(wire).len() > MAX_DESCRIPTION {
        if wire.refs.pop().is_none() && wire.video.pop().is_none() {
            break;
        }
        dropped += 1;
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metas_past_half_a_message_stay_behind_reference_timestamps_first() {
        let video = wire::VideoMetaWire {
            flags: 0,
            format: "GRAY8".into(),
            width: 8,
            height: 8,
            offsets: vec![0],
            strides: vec![8],
        };
        let mut w = BufferWire {
            refs: (0..16).map(|i| ("x".repeat(5000), i, u64::MAX)).collect(),
            video: vec![video.clone()],
            ..BufferWire::default()
        };
        let dropped = fit_metas(&mut w);
        assert!(wire::encode_buffer(&w).len() <= MAX_DESCRIPTION);
        assert_eq!(dropped, 16 - w.refs.len());
        assert!(!w.refs.is_empty() && w.refs.len() < 16);
        assert_eq!(w.video, vec![video], "the video meta is kept");
        let mut small = BufferWire::default();
        assert_eq!(fit_metas(&mut small), 0);
    }
}
