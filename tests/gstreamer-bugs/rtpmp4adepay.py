#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""A GStreamer bug, shown by memkit's protect mode: rtpmp4adepay writes its caps' config
through a READ mapping.

gst_rtp_mp4a_depay_setcaps (gst-plugins-good, gst/rtp/gstrtpmp4adepay.c, 1.22 and main)
deserializes the `config` of its caps (the StreamMuxConfig) into a buffer, maps it GST_MAP_READ
and shifts it 15 bits down in place (`data[i] = ...`) to make the AudioSpecificConfig that it
then puts in its source caps as `codec_data`. This program makes AlignedMemory the default
allocator (which gst_value_deserialize allocates the buffer from), and pushes one RTP packet
with such caps through rtpmp4adepay; with MEMKIT_GUARD=protect the write is stopped at the
instruction:

    MEMKIT_GUARD=protect GST_PLUGIN_PATH=$PWD/builddir /usr/bin/python3 tests/gstreamer-bugs/rtpmp4adepay.py

Without protect mode it prints the codec_data of the depayloader's caps: 1208, the shifted
bytes written through the READ mapping (with memory whose READ mapping is a copy, the shift
would be lost and codec_data would be the unshifted 4000).
"""

import struct

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

Gst.init(None)
if Gst.Plugin.load_by_name("memkit") is None:
    raise SystemExit("the memkit plugin is not on GST_PLUGIN_PATH")
Gst.Allocator.find("AlignedMemory").set_default()

pipeline = Gst.parse_launch(
    "appsrc name=src format=time caps=application/x-rtp,media=audio,clock-rate=44100,"
    "encoding-name=MP4A-LATM,cpresent=(string)0,config=(string)40002410 ! rtpmp4adepay "
    "name=depay ! fakesink")
src = pipeline.get_by_name("src")
pipeline.set_state(Gst.State.PLAYING)
# One RTP packet (payload type 96, marker set) carrying one LATM frame of 5 bytes.
payload = bytes([5]) + b"\x21\x00\x49\x90\x02"
src.emit("push-buffer", Gst.Buffer.new_wrapped(
    struct.pack("!BBHII", 0x80, 0x80 | 96, 1, 0, 0x1234) + payload))
src.emit("end-of-stream")
msg = pipeline.get_bus().timed_pop_filtered(10 * Gst.SECOND,
                                            Gst.MessageType.EOS | Gst.MessageType.ERROR)
assert msg is not None and msg.type == Gst.MessageType.EOS, msg
caps = pipeline.get_by_name("depay").get_static_pad("src").get_current_caps()
ok, info = caps.get_structure(0).get_value("codec_data").map(Gst.MapFlags.READ)
print(f"codec_data of the depayloader's caps: {bytes(info.data).hex()}")
pipeline.set_state(Gst.State.NULL)
