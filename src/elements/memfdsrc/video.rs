// SPDX-License-Identifier: MPL-2.0
//! The bytes a GstVideoMeta makes libgstvideo read: for each plane, the range from its offset
//! to the last byte that `gst_video_frame_map` and the format's unpack function will touch,
//! computed the way libgstvideo lays the plane out:
//!
//! - linear planes: `(rows - 1) × stride` plus the larger of the stride and a row's bytes, a
//!   row being `width × pixel stride` of each component, or for packed formats whose pixel
//!   stride is 0 (v210, UYVP, IYU1, GRAY10_LE32, NV12_10LE32, ...) the row size libgstvideo
//!   itself gives that width (`GstVideoInfo.stride`);
//! - tiled planes (NV12_4L4, NV12_32L32, NV12_64Z32, NV12_8L128, ...): the stride holds tile
//!   counts; each must cover the frame (at least what `GstVideoInfo` gives for its size), and
//!   the plane ends after the highest tile index read, per the tile mode's own numbering;
//! - a palette plane (RGB8P): 256 entries of 4 bytes.
//!
//! An interlaced frame (caps `interlace-mode=interleaved`, the buffer flag or the meta's
//! frame flag `INTERLACED`) is read field by field: a subsampled plane's row of picture line
//! `L` is `2 × ⌊L / 2^(sub+1)⌋ + (L & 1)` (libgstvideo's `GET_UV_420`/`GET_UV_410`), so a
//! 4:2:0 frame whose height is 2 mod 4 reads one chroma row more than a progressive one, a
//! 4:1:0 frame whose height is 4 mod 8 the same.
//!
//! `memfdsrc` refuses a meta whose planes do not each lie inside one memory of the buffer
//! (`gst_video_meta_map` maps only the memory that holds a plane's offset).

use std::ops::Range;

use gst_video::{VideoFormat, VideoFormatInfo, VideoInfo, VideoTileMode};

/// Bytes of a GStreamer palette: 256 entries of 4 bytes.
const PALETTE_BYTES: u64 = 256 * 4;

/// Why a video meta was refused.
fn err(what: impl std::fmt::Display) -> String {
    what.to_string()
}

/// The byte range each plane of a `width`×`height` `format` frame occupies when laid out with
/// `offsets` and `strides` (a GstVideoMeta's fields), relative to the start of the buffer;
/// `interlaced`: read field by field.
pub fn plane_ranges(
    format: VideoFormat,
    width: u32,
    height: u32,
    offsets: &[u64],
    strides: &[i32],
    interlaced: bool,
) -> Result<Vec<Range<u64>>, String> {
    if matches!(format, VideoFormat::Unknown | VideoFormat::Encoded) {
        return Err(err(format!("unsupported video format {format:?}")));
    }
    if width == 0 || height == 0 {
        return Err(err(format!("empty {width}x{height} frame")));
    }
    let finfo = VideoFormatInfo::from_format(format);
    let planes = finfo.n_planes() as usize;
    if offsets.len() != planes || strides.len() != planes {
        return Err(err(format!(
            "{} has {planes} planes, the meta describes {}",
            finfo.name(),
            offsets.len()
        )));
    }
    // The layout libgstvideo gives this frame: row sizes of packed formats, tile counts.
    let info = VideoInfo::builder(format, width, height)
        .build()
        .map_err(|_| err(format!("no {} layout for {width}x{height}", finfo.name())))?;
    let mut ranges = Vec::with_capacity(planes);
    for p in 0..planes {
        let len = if finfo.has_palette() && p == 1 {
            Some(PALETTE_BYTES)
        } else if finfo.is_tiled() {
            tiled_plane_len(&finfo, &info, p, strides[p])?
        } else {
            linear_plane_len(&finfo, &info, p, (width, height), strides[p], interlaced)?
        };
        let end = len
            .and_then(|l| offsets[p].checked_add(l))
            .ok_or_else(|| err(format!("plane {p} overflows")))?;
        ranges.push(offsets[p]..end);
    }
    Ok(ranges)
}

/// The components that lie in `plane`.
fn components(finfo: &VideoFormatInfo, plane: usize) -> impl Iterator<Item = u8> {
    finfo
        .component(plane as u32)
        .into_iter()
        .filter(|&c| c >= 0)
        .map(|c| c as u8)
}

/// The rows of a plane subsampled vertically by `2^sub` that a `height`-line frame reads:
/// progressive, `⌈height / 2^sub⌉`; interlaced, the highest row either field reads, plus one.
pub fn plane_rows(height: u32, sub: u32, interlaced: bool) -> u64 {
    let height = u64::from(height);
    let sub = sub.min(16);
    if !interlaced {
        return height.div_ceil(1 << sub);
    }
    // The last line of each field (top: even lines, bottom: odd lines), and its row.
    let row = |line: u64| 2 * (line >> (sub + 1)) + (line & 1);
    let last = height.saturating_sub(1);
    let mut rows = row(last) + 1;
    if last >= 1 {
        rows = rows.max(row(last - 1) + 1);
    }
    rows
}

fn linear_plane_len(
    finfo: &VideoFormatInfo,
    info: &VideoInfo,
    p: usize,
    (width, height): (u32, u32),
    stride: i32,
    interlaced: bool,
) -> Result<Option<u64>, String> {
    if stride <= 0 {
        return Err(err(format!("stride {stride} of plane {p} is not positive")));
    }
    let stride = stride as u64;
    let mut rows = 0u64;
    let mut row_bytes = 0u64;
    for c in components(finfo, p) {
        let sub = finfo.h_sub().get(c as usize).copied().unwrap_or(0);
        rows = rows.max(plane_rows(height, sub, interlaced));
        let pstride = finfo.pixel_stride()[c as usize];
        let bytes = if pstride <= 0 {
            // Packed: several pixels share bytes; libgstvideo's own row size for the width.
            u64::try_from(info.stride()[p]).unwrap_or(0)
        } else {
            u64::from(finfo.scale_width(c, width)) * pstride as u64
        };
        row_bytes = row_bytes.max(bytes);
    }
    if rows == 0 || row_bytes == 0 {
        return Err(err(format!("plane {p} has no rows")));
    }
    Ok((rows - 1)
        .checked_mul(stride)
        .and_then(|b| b.checked_add(row_bytes.max(stride))))
}

/// `GST_VIDEO_TILE_X_TILES` and `GST_VIDEO_TILE_Y_TILES` of a tiled stride.
fn tile_counts(stride: i32) -> (u64, u64) {
    let s = stride as u32;
    (u64::from(s & 0xffff), u64::from(s >> 16))
}

/// `gst_video_tile_get_index`.
fn tile_index(mode: VideoTileMode, x: u64, y: u64, x_tiles: u64, y_tiles: u64) -> Option<u64> {
    match mode {
        VideoTileMode::Linear => y.checked_mul(x_tiles)?.checked_add(x),
        VideoTileMode::Zflipz2x2 => {
            let mut index = (y & !1).checked_mul(x_tiles)?.checked_add(x)?;
            if y & 1 == 1 {
                index = index.checked_add(2 + (x & !3))?;
            } else if y_tiles & 1 == 0 || y + 1 != y_tiles {
                index = index.checked_add((x + 2) & !3)?;
            }
            Some(index)
        }
        _ => None,
    }
}

fn tiled_plane_len(
    finfo: &VideoFormatInfo,
    info: &VideoInfo,
    p: usize,
    stride: i32,
) -> Result<Option<u64>, String> {
    let (x_tiles, y_tiles) = tile_counts(stride);
    let (need_x, need_y) = tile_counts(info.stride()[p]);
    if x_tiles < need_x || y_tiles < need_y || need_x == 0 || need_y == 0 {
        return Err(err(format!(
            "plane {p} has {x_tiles}x{y_tiles} tiles, the frame needs {need_x}x{need_y}"
        )));
    }
    let tile_size = u64::from(finfo.tile_info(p as u32).size());
    if tile_size == 0 {
        return Err(err(format!(
            "{} has no tile size for plane {p}",
            finfo.name()
        )));
    }
    // The tiles read are x < need_x, y < need_y; the index grows with each pair of tile rows,
    // so the highest one lies in the last two rows.
    let mode = finfo.tile_mode();
    let mut highest = 0u64;
    for y in need_y.saturating_sub(2)..need_y {
        for x in 0..need_x {
            let index = tile_index(mode, x, y, x_tiles, y_tiles)
                .ok_or_else(|| err(format!("{} has an unknown tile mode", finfo.name())))?;
            highest = highest.max(index);
        }
    }
    Ok(highest
        .checked_add(1)
        .and_then(|n| n.checked_mul(tile_size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() {
        gst::init().unwrap();
    }

    #[test]
    fn hostile_sizes_strides_and_offsets_are_errors_not_panics() {
        init();
        let max = u64::MAX;
        for format in VideoFormat::iter_raw() {
            let planes = VideoFormatInfo::from_format(format).n_planes() as usize;
            for (w, h) in [
                (0, 1),
                (1, 0),
                (u32::MAX, u32::MAX),
                (1 << 20, 1 << 20),
                (3, 1),
            ] {
                for stride in [i32::MIN, -1, 0, 1, i32::MAX] {
                    for offset in [0, max - 1, max] {
                        // Any answer but a panic (or a CRITICAL, fatal in the test run); and an
                        // answer, when there is one, never wraps around.
                        if let Ok(r) = plane_ranges(
                            format,
                            w,
                            h,
                            &vec![offset; planes],
                            &vec![stride; planes],
                            stride & 1 == 0,
                        ) {
                            assert!(r.iter().all(|p| p.start <= p.end), "{format:?}");
                        }
                    }
                }
            }
            // Plane counts that do not match the format.
            assert!(
                plane_ranges(
                    format,
                    8,
                    8,
                    &[0; 5][..planes.saturating_sub(1)],
                    &[8; 4][..planes.saturating_sub(1)],
                    false
                )
                .is_err()
            );
        }
        assert!(plane_ranges(VideoFormat::Unknown, 8, 8, &[0], &[8], false).is_err());
        assert!(plane_ranges(VideoFormat::Encoded, 8, 8, &[0], &[8], false).is_err());
        // Zero-sized frames are refused outright.
        assert!(plane_ranges(VideoFormat::Gray8, 0, 8, &[0], &[8], false).is_err());
    }

    #[test]
    fn zflipz_index_matches_the_documented_table() {
        // gst_video_tile_get_index's table for 8 columns.
        let rows: [[u64; 8]; 4] = [
            [0, 1, 6, 7, 8, 9, 14, 15],
            [2, 3, 4, 5, 10, 11, 12, 13],
            [16, 17, 22, 23, 24, 25, 30, 31],
            [18, 19, 20, 21, 26, 27, 28, 29],
        ];
        for (y, row) in rows.iter().enumerate() {
            for (x, &want) in row.iter().enumerate() {
                assert_eq!(
                    tile_index(VideoTileMode::Zflipz2x2, x as u64, y as u64, 8, 4),
                    Some(want)
                );
            }
        }
    }

    #[test]
    fn default_layouts_fit_in_the_size_libgstvideo_gives() {
        init();
        for format in VideoFormat::iter_raw() {
            for (w, h) in [(1, 1), (7, 5), (64, 48), (333, 129)] {
                let Ok(info) = VideoInfo::builder(format, w, h).build() else {
                    continue;
                };
                let offsets: Vec<u64> = info.offset().iter().map(|&o| o as u64).collect();
                let ranges = plane_ranges(format, w, h, &offsets, info.stride(), false)
                    .unwrap_or_else(|e| panic!("{format:?} {w}x{h}: {e}"));
                let end = ranges.iter().map(|r| r.end).max().unwrap();
                assert!(
                    end <= info.size() as u64,
                    "{format:?} {w}x{h}: planes end at {end}, info.size {}",
                    info.size()
                );
            }
        }
    }

    #[test]
    fn tile_counts_that_do_not_cover_the_frame_are_refused() {
        init();
        let info = VideoInfo::builder(VideoFormat::Nv128l128, 64, 256)
            .build()
            .unwrap();
        let offsets: Vec<u64> = info.offset().iter().map(|&o| o as u64).collect();
        let (x, _) = tile_counts(info.stride()[0]);
        // y tile count 0: the old check took this for a tiny stride.
        let strides = [x as i32, x as i32];
        assert!(plane_ranges(VideoFormat::Nv128l128, 64, 256, &offsets, &strides, false).is_err());
    }

    #[test]
    fn interlaced_rows_follow_libgstvideos_field_lines() {
        // GET_UV_420 / GET_UV_410 of video-format.c, line by line.
        let uv = |line: u64, sub: u32| ((line & !((2u64 << sub) - 1)) >> sub) + (line & 1);
        for sub in 0..3 {
            for h in 1..64u32 {
                let want = (0..u64::from(h)).map(|l| uv(l, sub)).max().unwrap() + 1;
                assert_eq!(plane_rows(h, sub, true), want, "sub {sub} height {h}");
                assert_eq!(plane_rows(h, sub, false), u64::from(h).div_ceil(1 << sub));
            }
        }
        // 4:2:0 at 2 mod 4 and 4:1:0 at 4 mod 8 read one row more interlaced.
        assert_eq!((plane_rows(6, 1, false), plane_rows(6, 1, true)), (3, 4));
        assert_eq!((plane_rows(12, 2, false), plane_rows(12, 2, true)), (3, 4));
    }

    #[test]
    fn palette_plane_is_1024_bytes() {
        init();
        let r = plane_ranges(VideoFormat::Rgb8p, 4, 4, &[0, 16], &[4, 4], false).unwrap();
        assert_eq!(r[1], 16..16 + 1024);
    }

    #[test]
    fn packed_rows_use_libgstvideos_row_size() {
        init();
        // v210 packs 6 pixels in 16 bytes, in groups of 48 pixels (128 bytes): a 1-byte
        // stride must not shrink what the last row is read as.
        let info = VideoInfo::builder(VideoFormat::V210, 6, 2).build().unwrap();
        let r = plane_ranges(VideoFormat::V210, 6, 2, &[0], &[1], false).unwrap();
        assert_eq!(r[0].end, 1 + info.stride()[0] as u64);
    }
}
