#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""A GStreamer bug, shown by memkit's protect mode: rtph261depay writes into its input.

gst_rtp_h261_depay_process (gst-plugins-good, gst/rtp/gstrtph261depay.c, 1.22 and main)
merges the bits left over from the previous packet into the first payload byte of the packet
it received (`payload[0] &= 0xFF >> header->sbit; payload[0] |= depay->leftover`). The base
depayloader mapped that packet GST_MAP_READ, and the packet is not the depayloader's to change:
another branch (tee), a retransmission store or a recorder may hold the same memory. This
program pushes two RTP/H.261 packets whose payload starts mid-byte (sbit = 4) from
AlignedMemory; with MEMKIT_GUARD=protect the write is stopped at the instruction:

    MEMKIT_GUARD=protect GST_PLUGIN_PATH=$PWD/builddir /usr/bin/python3 tests/gstreamer-bugs/rtph261depay.py

Without protect mode it prints the second packet's first H.261 byte as it reads it back after
the depayloader ran: 0xf0 where it pushed 0x00 (the first packet's last four bits, merged in:
the write went through unnoticed, and the sender's packet changed under it).
"""

import struct

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

Gst.init(None)
if Gst.Plugin.load_by_name("memkit") is None:
    raise SystemExit("the memkit plugin is not on GST_PLUGIN_PATH")
allocator = Gst.Allocator.find("AlignedMemory")


def packet(seq, marker, payload):
    """An RTP packet (payload type 31, H.261) in one AlignedMemory block."""
    header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | 31, seq, 0, 0x1234)
    data = header + payload
    buf = Gst.Buffer.new()
    buf.append_memory(allocator.alloc(len(data), None))
    buf.fill(0, data)
    return buf


# The H.261 payload header (RFC 4587) with sbit = 4, ebit = 4: its first byte is
# SBIT(3) EBIT(3) I V = 100 100 0 0; then a picture start code shifted by sbit.
h261 = bytes([0x90, 0, 0, 0]) + struct.pack("!I", 0x000100FF >> 4) + b"\xff" * 88
pipeline = Gst.parse_launch(
    "appsrc name=src caps=application/x-rtp,media=video,encoding-name=H261,clock-rate=90000,"
    "payload=31 format=time ! rtph261depay ! fakesink")
src = pipeline.get_by_name("src")
pipeline.set_state(Gst.State.PLAYING)
second = packet(1, True, h261)
src.emit("push-buffer", packet(0, False, h261))
src.emit("push-buffer", second)
src.emit("end-of-stream")
msg = pipeline.get_bus().timed_pop_filtered(10 * Gst.SECOND,
                                            Gst.MessageType.EOS | Gst.MessageType.ERROR)
pipeline.set_state(Gst.State.NULL)
assert msg is not None and msg.type == Gst.MessageType.EOS, msg
ok, info = second.map(Gst.MapFlags.READ)
print(f"the second packet's first H.261 byte, pushed as 0x00: {info.data[16]:#04x}")
second.unmap(info)
