// SPDX-License-Identifier: MPL-2.0
//! `memfdsrc`'s checks of the video frames a producer sends, against the negotiated caps and
//! the layout libgstvideo will read (see [`super::video`] for the bytes of each plane).

use std::ops::Range;

use crate::transport::wire as proto;

/// Whether libgstvideo reads a frame field by field: the caps say every frame is interleaved,
/// or the buffer (`flagged`) or its meta (`meta_flags`) says this one is.
fn interlaced(caps: Option<&gst_video::VideoInfo>, flagged: bool, meta_flags: u32) -> bool {
    flagged
        || meta_flags & gst_video::VideoFrameFlags::INTERLACED.bits() != 0
        || caps.is_some_and(|i| i.interlace_mode() == gst_video::VideoInterlaceMode::Interleaved)
}

/// Checks that a raw video frame without a meta holds every plane of the caps' default layout
/// as libgstvideo reads it (`size`: the buffer's bytes, mapped as one by
/// `gst_video_frame_map`). Its own size check (`GstVideoInfo.size`) is not enough: 1.22
/// computes too few chroma rows for some interlaced formats (P010, P012, P016).
pub(super) fn check_default_layout(
    info: &gst_video::VideoInfo,
    flagged: bool,
    size: u64,
) -> Result<(), String> {
    // A field per buffer: its own height, read progressively.
    let alternate = info.interlace_mode() == gst_video::VideoInterlaceMode::Alternate;
    let height = if alternate {
        info.field_height()
    } else {
        info.height()
    };
    let offsets: Vec<u64> = info.offset().iter().map(|&o| o as u64).collect();
    let planes = super::video::plane_ranges(
        info.format(),
        info.width(),
        height,
        &offsets,
        info.stride(),
        !alternate && interlaced(Some(info), flagged, 0),
    )?;
    let end = planes.iter().map(|p| p.end).max().unwrap_or(0);
    if end > size {
        return Err(format!(
            "a {}x{} {}{} frame without a video meta needs {end} bytes, the buffer has {size}",
            info.width(),
            info.height(),
            info.format().to_str(),
            if interlaced(Some(info), flagged, 0) {
                " interlaced"
            } else {
                ""
            },
        ));
    }
    Ok(())
}

/// Checks that a received video meta describes a frame whose every plane, as libgstvideo will
/// read it (field by field when it is interlaced), lies inside the one memory that holds its
/// first byte (`memories`: each memory's byte range in the buffer), and that it agrees with
/// the negotiated caps (what `gst_video_frame_map` would otherwise refuse with a CRITICAL).
pub(super) fn check_video_meta(
    v: &proto::VideoMetaWire,
    format: gst_video::VideoFormat,
    memories: &[Range<u64>],
    caps: Option<&gst_video::VideoInfo>,
    flagged: bool,
) -> Result<(), String> {
    let frame = format!("{}x{} {}", v.width, v.height, v.format);
    if let Some(info) = caps
        && (info.format() != format || info.width() > v.width || info.height() > v.height)
    {
        return Err(format!(
            "a {frame} frame does not match the caps ({}x{} {})",
            info.width(),
            info.height(),
            info.format().to_str()
        ));
    }
    let planes = super::video::plane_ranges(
        format,
        v.width,
        v.height,
        &v.offsets,
        &v.strides,
        interlaced(caps, flagged, v.flags),
    )?;
    let size = memories.last().map_or(0, |m| m.end);
    for (p, plane) in planes.iter().enumerate() {
        let memory = memories
            .iter()
            .find(|m| m.contains(&plane.start))
            .ok_or_else(|| {
                format!(
                    "plane {p} of a {frame} frame starts at byte {}, past the {size}-byte buffer",
                    plane.start
                )
            })?;
        if plane.end > memory.end {
            return Err(if memories.len() == 1 {
                format!(
                    "plane {p} of a {frame} frame ends at byte {}, past the {size}-byte buffer",
                    plane.end
                )
            } else {
                format!(
                    "plane {p} of a {frame} frame ends at byte {}, past the memory it starts \
                     in (bytes {}..{} of the buffer)",
                    plane.end, memory.start, memory.end
                )
            });
        }
    }
    Ok(())
}

/// Adds the received video metas to `b`, each checked first (see [`check_video_meta`]);
/// a raw video frame without a meta is checked against the caps' default layout. `Err`: the
/// error to post.
pub(super) fn add_video_metas(
    b: &mut gst::BufferRef,
    metas: &[proto::VideoMetaWire],
    flags: u32,
    caps: Option<&gst_video::VideoInfo>,
) -> Result<(), String> {
    let mut memories = Vec::with_capacity(b.n_memory());
    let mut start = 0u64;
    for m in b.iter_memories() {
        memories.push(start..start + m.size() as u64);
        start += m.size() as u64;
    }
    // The wire's flags: `BufferRef::flags` drops the video ones.
    let flagged = flags & gst_video::VideoBufferFlags::INTERLACED.bits() != 0;
    let unusable = |e| format!("Unusable video meta from the producer: {e}");
    if metas.is_empty()
        && let Some(info) = caps
    {
        return check_default_layout(info, flagged, start)
            .map_err(|e| format!("Unusable video frame from the producer: {e}"));
    }
    for v in metas {
        let format = gst_video::VideoFormat::from_string(&v.format);
        check_video_meta(v, format, &memories, caps, flagged).map_err(unusable)?;
        let offsets: Vec<usize> = v.offsets.iter().map(|&o| o as usize).collect();
        gst_video::VideoMeta::add_full(
            b,
            gst_video::VideoFrameFlags::from_bits_truncate(v.flags),
            format,
            v.width,
            v.height,
            &offsets,
            &v.strides,
        )
        .map_err(|e| unusable(e.to_string()))?;
    }
    Ok(())
}
