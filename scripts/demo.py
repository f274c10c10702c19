#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""Shows what AlignedMemory guarantees next to GStreamer's SystemMemory, through GObject
introspection, with the plugin loaded from GST_PLUGIN_PATH."""

import ctypes

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

Gst.init(None)
if Gst.Plugin.load_by_name("memkit") is None:
    raise SystemExit("memkit not found: set GST_PLUGIN_PATH to the directory of libgstmemkit.so")


def payload_address(mem):
    """The address gst_memory_map hands out (a write map gives PyGObject a writable view)."""
    ok, info = mem.map(Gst.MapFlags.WRITE)
    assert ok
    view = (ctypes.c_char * info.size).from_buffer(info.data)
    addr = ctypes.addressof(view)
    del view
    mem.unmap(info)
    return addr


def params(prefix, padding, align, zero):
    p = Gst.AllocationParams()
    p.prefix, p.padding, p.align = prefix, padding, align
    p.flags = (Gst.MemoryFlags.ZERO_PREFIXED | Gst.MemoryFlags.ZERO_PADDED) if zero else Gst.MemoryFlags(0)
    return p


print(f"{'allocator':<14} {'size':>5} {'prefix':>6} {'align':>5} {'maxsize':>7} {'payload % 64':>12}")
for name in ("SystemMemory", "AlignedMemory"):
    alloc = Gst.Allocator.find(name)
    for size, prefix, align in ((100, 0, 0), (100, 3, 63), (1000, 17, 63), (4000, 100, 4095)):
        mem = alloc.alloc(size, params(prefix, 8, align, True))
        addr = payload_address(mem)
        print(f"{name:<14} {size:>5} {prefix:>6} {align:>5} {mem.maxsize:>7} {addr % 64:>12}")

alloc = Gst.Allocator.find("AlignedMemory")
parent = alloc.alloc(16 * 256, params(64, 0, 0, False))
buf = Gst.Buffer.new()
for i in range(16):
    buf.append_memory(parent.share(i * 256, 256))
merged = buf.get_all_memory()
print(f"\n16 contiguous shares in one buffer merge by sharing the parent: "
      f"parent is {'the same block' if merged.parent is not None else 'a copy'} "
      f"(is_span offset relative to a 64-byte prefix), size {merged.size}")
