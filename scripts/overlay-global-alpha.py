#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""A known GStreamer bug, shown by memkit's protect mode.

gst_video_overlay_rectangle_apply_global_alpha (gst-plugins-base,
gst-libs/gst/video/video-overlay-composition.c, 1.22 to 1.28.6 at least) maps the rectangle's
pixels with GST_MAP_READ and writes the new alpha through that mapping. It runs when the pixels
of a rectangle made with GST_VIDEO_OVERLAY_FORMAT_FLAG_GLOBAL_ALPHA are asked for without that
flag after a global alpha was set. This script builds such a rectangle from AlignedMemory
pixels and asks; with MEMKIT_GUARD=protect the write is stopped at the instruction:

    MEMKIT_GUARD=protect GST_PLUGIN_PATH=$PWD/builddir /usr/bin/python3 scripts/overlay-global-alpha.py

Without protect mode it prints the alpha it read back (the write went through, unnoticed).
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import Gst, GstVideo  # noqa: E402

Gst.init(None)
if Gst.Plugin.load_by_name("memkit") is None:
    raise SystemExit("the memkit plugin is not on GST_PLUGIN_PATH")
allocator = Gst.Allocator.find("AlignedMemory")
width, height = 16, 8
# GST_VIDEO_OVERLAY_COMPOSITION_FORMAT_RGB (a C macro, not in the typelib): ARGB in memory order.
fmt = GstVideo.VideoFormat.BGRA if sys.byteorder == "little" else GstVideo.VideoFormat.ARGB
pixels = Gst.Buffer.new()
pixels.append_memory(allocator.alloc(width * height * 4, None))
pixels.memset(0, 0xFF, width * height * 4)  # opaque white
GstVideo.buffer_add_video_meta(pixels, GstVideo.VideoFrameFlags.NONE, fmt, width, height)
rect = GstVideo.VideoOverlayRectangle.new_raw(
    pixels, 0, 0, width, height, GstVideo.VideoOverlayFormatFlags.GLOBAL_ALPHA)
del pixels  # the rectangle holds the only reference: it writes into this very memory
rect.set_global_alpha(0.5)
# Asked without GLOBAL_ALPHA: the library applies the global alpha itself, through a READ map.
out = rect.get_pixels_unscaled_argb(GstVideo.VideoOverlayFormatFlags.NONE)
ok, info = out.map(Gst.MapFlags.READ)
print(f"alpha after the global alpha was applied: {info.data[3]}")
out.unmap(info)
