# SPDX-License-Identifier: MPL-2.0
"""Every Gst.Memory method and field of the reference page, used on AlignedMemory memory
from Gst.Allocator.find("AlignedMemory"), through GObject introspection.

Run with Debian's /usr/bin/python3 and GST_PLUGIN_PATH pointing at the built plugin.
"""

import os
import unittest

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstAllocators", "1.0")
from gi.repository import GLib, Gst, GstAllocators  # noqa: E402

Gst.init(None)

ZERO = Gst.MemoryFlags.ZERO_PREFIXED | Gst.MemoryFlags.ZERO_PADDED


def setUpModule():
    plugin = Gst.Plugin.load_by_name("memkit")
    if plugin is None:
        raise RuntimeError("memkit not found: is GST_PLUGIN_PATH set?")


def params(flags=Gst.MemoryFlags(0), align=0, prefix=0, padding=0):
    p = Gst.AllocationParams()
    p.flags = flags
    p.align = align
    p.prefix = prefix
    p.padding = padding
    return p


def read(mem):
    ok, info = mem.map(Gst.MapFlags.READ)
    assert ok
    data = bytes(info.data)
    mem.unmap(info)
    return data


def write(mem, data):
    ok, info = mem.map(Gst.MapFlags.WRITE)
    assert ok
    info.data[: len(data)] = data
    mem.unmap(info)


class AlignedMemoryTest(unittest.TestCase):
    def setUp(self):
        self.alloc = Gst.Allocator.find("AlignedMemory")
        self.assertIsNotNone(self.alloc)

    def test_allocator_is_registered_under_its_memory_type(self):
        self.assertEqual(self.alloc.mem_type, "AlignedMemory")
        self.assertEqual(GObjectTypeName(self.alloc), "MemkitAlignedAllocator")
        self.assertIsNone(Gst.Allocator.find("NoSuchAllocator"))

    def test_fields(self):
        mem = self.alloc.alloc(100, params(ZERO, 0, 10, 5))
        self.assertEqual(mem.size, 100)
        self.assertEqual(mem.offset, 10)
        self.assertEqual(mem.maxsize, 128)  # 10 + 100 + 5 rounded up to 64
        self.assertEqual(mem.align, 63)
        self.assertIsNone(mem.parent)
        self.assertEqual(mem.allocator, self.alloc)
        # PyGObject's boxed wrapper holds a reference of its own: compare with SystemMemory.
        sysmem = Gst.Allocator.find("SystemMemory").alloc(100, None)
        self.assertEqual(mem.mini_object.refcount, sysmem.mini_object.refcount)
        self.assertTrue(mem.mini_object.flags & Gst.MemoryFlags.ZERO_PREFIXED)
        self.assertTrue(mem.mini_object.flags & Gst.MemoryFlags.ZERO_PADDED)

    def test_align_is_raised_by_params(self):
        mem = self.alloc.alloc(10, params(align=4095))
        self.assertEqual(mem.align, 4095)
        self.assertEqual(mem.maxsize, 4096)

    def test_get_sizes(self):
        mem = self.alloc.alloc(100, params(prefix=16, padding=4))
        size, offset, maxsize = mem.get_sizes()
        self.assertEqual((size, offset, maxsize), (100, 16, 128))

    def test_map_and_unmap(self):
        mem = self.alloc.alloc(100, None)
        write(mem, bytes(range(100)))
        self.assertEqual(read(mem), bytes(range(100)))
        ok, info = mem.map(Gst.MapFlags.READ)
        self.assertTrue(ok)
        try:
            self.assertEqual(info.size, 100)
            self.assertEqual(info.maxsize, 128)
            # READ then WRITE is refused while the read map is held; READ nests.
            ok2, info2 = mem.map(Gst.MapFlags.WRITE)
            if ok2:
                mem.unmap(info2)
            self.assertFalse(ok2)
            ok3, info3 = mem.map(Gst.MapFlags.READ)
            self.assertTrue(ok3)
            mem.unmap(info3)
        finally:
            mem.unmap(info)

    def test_size_zero_maps(self):
        mem = self.alloc.alloc(0, None)
        ok, info = mem.map(Gst.MapFlags.READ | Gst.MapFlags.WRITE)
        self.assertTrue(ok)
        self.assertEqual(info.size, 0)
        mem.unmap(info)

    def test_zero_prefix_and_padding(self):
        mem = self.alloc.alloc(100, params(ZERO, 0, 10, 5))
        write(mem, b"\xff" * 100)
        mem.resize(-10, 128)  # whole region
        region = read(mem)
        self.assertEqual(region[:10], bytes(10))
        self.assertEqual(region[10:110], b"\xff" * 100)
        self.assertEqual(region[110:], bytes(18))

    def test_share(self):
        mem = self.alloc.alloc(200, None)
        write(mem, bytes(i % 256 for i in range(200)))
        share = mem.share(10, 50)
        self.assertEqual((share.offset, share.size), (10, 50))
        self.assertEqual(share.maxsize, mem.maxsize)
        self.assertEqual(share.align, mem.align)
        self.assertTrue(share.mini_object.flags & Gst.MemoryFlags.READONLY)
        self.assertEqual(read(share), bytes(range(10, 60)))
        sub = share.share(5, -1)
        self.assertEqual((sub.offset, sub.size), (15, 45))
        self.assertEqual(read(sub), bytes(range(15, 60)))
        ok, _ = share.map(Gst.MapFlags.WRITE)
        self.assertFalse(ok, "shares are read-only")
        empty = mem.share(200, 0)
        self.assertEqual(empty.size, 0)

    def test_share_parent_is_the_root(self):
        mem = self.alloc.alloc(100, None)
        sub = mem.share(10, 50).share(5, 5)
        # PyGObject wraps the parent pointer in a new boxed proxy: compare what it describes.
        self.assertIsNotNone(sub.parent)
        self.assertEqual(sub.parent.get_sizes(), mem.get_sizes())
        self.assertIsNone(sub.parent.parent)

    def test_out_of_range_share_and_copy_give_none(self):
        mem = self.alloc.alloc(100, None)
        self.assertIsNotNone(mem.share(0, 128))  # up to maxsize is in range
        self.assertIsNone(mem.share(0, 129))
        self.assertIsNone(mem.share(101, -1))
        self.assertIsNone(mem.copy(0, 5000))

    def test_copy(self):
        mem = self.alloc.alloc(100, params(align=4095, prefix=3))
        write(mem, bytes(range(100)))
        copy = mem.copy(20, 30)
        self.assertEqual((copy.offset, copy.size), (0, 30))
        self.assertIsNone(copy.parent)
        self.assertEqual(copy.align, 4095)
        self.assertEqual(copy.allocator, self.alloc)
        self.assertFalse(copy.mini_object.flags & Gst.MemoryFlags.READONLY)
        self.assertEqual(read(copy), bytes(range(20, 50)))
        self.assertEqual(mem.copy(40, -1).size, 60)
        self.assertEqual(mem.copy(500, -1).size, 0)
        # copies are writable
        write(copy, b"\x01")
        self.assertEqual(read(copy)[0], 1)

    def test_is_span(self):
        mem = self.alloc.alloc(100, params(prefix=64))
        a = mem.share(20, 10)
        b = mem.share(30, 20)
        ok, offset = a.is_span(b)
        self.assertTrue(ok)
        self.assertEqual(offset, 20)
        ok, _ = b.is_span(a)
        self.assertFalse(ok)
        c = mem.share(51, 5)
        ok, _ = b.is_span(c)
        self.assertFalse(ok)

    def test_is_type(self):
        mem = self.alloc.alloc(10, None)
        self.assertTrue(mem.is_type("AlignedMemory"))
        self.assertFalse(mem.is_type("SystemMemory"))

    def test_stats_exact_counts(self):
        self.alloc.emit("reset-stats")

        def stat(name):
            ok, v = self.alloc.get_property("stats").get_uint64(name)
            self.assertTrue(ok, name)
            return v

        self.assertEqual(stat("allocations"), 0)
        a = self.alloc.alloc(1000, None)
        b = a.share(0, 10)
        c = a.share(10, 10)
        self.assertTrue(b.is_span(c)[0])
        d = a.copy(0, 100)
        read(a)
        self.assertEqual(stat("allocations"), 2)
        self.assertEqual(stat("blocks-live"), 2)
        self.assertEqual(stat("bytes-live"), 1024 + 128)
        self.assertEqual(stat("shares"), 2)
        self.assertEqual(stat("span-hits"), 1)
        self.assertEqual(stat("copies"), 1)
        self.assertEqual(stat("bytes-copied"), 100)
        read(a)
        # Maps are counted on the memory and added when it is freed.
        self.assertEqual(stat("maps"), 0)
        del a, b, c, d
        self.assertEqual(stat("maps"), 2)
        self.assertEqual(stat("frees"), 2)
        self.assertEqual(stat("blocks-live"), 0)
        self.alloc.emit("reset-stats")
        self.assertEqual(stat("frees"), 0)

    def test_cache_properties(self):
        default = self.alloc.get_property("max-cached-bytes")
        self.assertEqual(default, 64 << 20)
        # protect mode quarantines freed blocks instead of caching them
        protect = os.environ.get("MEMKIT_GUARD", "").startswith("protect")
        try:
            mems = [self.alloc.alloc(1 << 20, None) for _ in range(3)]
            del mems
            if protect:
                self.assertEqual(self.alloc.get_property("cached-bytes"), 0)
            else:
                self.assertGreaterEqual(self.alloc.get_property("cached-bytes"), 3 << 20)
            self.alloc.set_property("max-cached-bytes", 0)
            self.assertEqual(self.alloc.get_property("max-cached-bytes"), 0)
            mems = [self.alloc.alloc(4096, None) for _ in range(3)]
            del mems
            self.assertEqual(self.alloc.get_property("cached-bytes"), 0)
        finally:
            self.alloc.set_property("max-cached-bytes", default)

    def test_reused_block_is_zeroed_where_promised(self):
        mem = self.alloc.alloc(1000, params(ZERO, 0, 64, 64))
        mem.resize(-64, mem.get_sizes()[2])
        write(mem, b"\xaa" * mem.get_sizes()[0])
        del mem
        again = self.alloc.alloc(1000, params(ZERO, 0, 64, 64))
        self.assertEqual(again.get_sizes(), (1000, 64, 1152))
        self.assertTrue(again.mini_object.flags & Gst.MemoryFlags.ZERO_PREFIXED)
        again.resize(-64, 1152)
        region = read(again)
        self.assertEqual(region[:64], bytes(64))
        self.assertEqual(region[1064:], bytes(88))

    def test_resize(self):
        mem = self.alloc.alloc(100, params(ZERO, 0, 16, 16))
        mem.resize(0, 90)
        self.assertEqual(mem.get_sizes(), (90, 16, 192))
        self.assertFalse(mem.mini_object.flags & Gst.MemoryFlags.ZERO_PADDED)
        self.assertTrue(mem.mini_object.flags & Gst.MemoryFlags.ZERO_PREFIXED)
        mem.resize(4, 80)
        self.assertEqual(mem.get_sizes(), (80, 20, 192))
        self.assertFalse(mem.mini_object.flags & Gst.MemoryFlags.ZERO_PREFIXED)

    def test_new_wrapped_is_system_memory_and_unaffected(self):
        # Gst.Memory.new_wrapped belongs to core's allocator, not ours: check it still
        # works with memkit loaded (memkit's own wrap API is Rust-only).
        data = bytes(range(32))
        mem = Gst.Memory.new_wrapped(Gst.MemoryFlags.READONLY, data, len(data), 0, None, None)
        self.assertTrue(mem.is_type("SystemMemory"))
        self.assertEqual(read(mem), data)

    def test_make_mapped_limitation_is_recorded(self):
        # Debian 12's PyGObject cannot marshal make_mapped (a transfer-full instance plus an
        # out MapInfo): it unrefs a memory that is still mapped, which is a GStreamer critical,
        # for any allocator. Record that, in a child process so the critical cannot take this
        # test run down, and show SystemMemory fails the same way. make_mapped itself is
        # covered by the C suite (test_make_mapped) and the Rust tests (make_mapped_*).
        outcomes = {}
        for name in ("AlignedMemory", "SystemMemory"):
            outcomes[name] = make_mapped_in_child(name)
        for name, (ok, detail) in outcomes.items():
            if ok:
                # A PyGObject that can call it: then the result must be right.
                self.assertEqual(detail, "16", name)
            else:
                self.assertIn("CRITICAL", detail, name)
        self.assertEqual(outcomes["AlignedMemory"][0], outcomes["SystemMemory"][0])
        if not outcomes["AlignedMemory"][0]:
            print("\nLIMITATION: Gst.Memory.make_mapped is not callable from this PyGObject "
                  "(GStreamer critical for AlignedMemory and SystemMemory alike)")


CHILD = """
import sys, gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
Gst.Plugin.load_by_name("memkit")
mem = Gst.Allocator.find(sys.argv[1]).alloc(16, None)
mapped, info = mem.make_mapped(Gst.MapFlags.READ)
print(info.size)
mapped.unmap(info)
"""


def make_mapped_in_child(allocator):
    import os
    import subprocess

    env = dict(os.environ)
    env.pop("G_DEBUG", None)
    proc = subprocess.run(["/usr/bin/python3", "-c", CHILD, allocator], env=env,
                          capture_output=True, text=True, timeout=60)
    critical = "CRITICAL" in proc.stderr
    if proc.returncode == 0 and not critical:
        return True, proc.stdout.strip()
    return False, proc.stderr + f" (exit {proc.returncode})"

class MemfdMemoryTest(unittest.TestCase):
    """MemfdMemory through GObject introspection: fd memory whose shares have the right sizes."""

    # GI resolves .alloc() on a GstFdAllocator to gst_fd_allocator_alloc (which wraps an
    # existing descriptor): call Gst.Allocator.alloc explicitly.
    def setUp(self):
        self.alloc = Gst.Allocator.find("MemfdMemory")
        self.assertIsNotNone(self.alloc)

    def test_fd_memory(self):
        mem = Gst.Allocator.alloc(self.alloc, 1000, params(ZERO, 0, 100, 0))
        self.assertTrue(GstAllocators.is_fd_memory(mem))
        self.assertGreaterEqual(GstAllocators.fd_memory_get_fd(mem), 0)
        self.assertEqual(mem.get_sizes(), (1000, 128, 4096))
        self.assertTrue(mem.mini_object.flags & Gst.MemoryFlags.ZERO_PREFIXED)
        self.assertEqual(read(mem), bytes(1000))

    def test_share_minus_one_is_to_the_end_of_the_share(self):
        mem = Gst.Allocator.alloc(self.alloc, 8000, None)
        write(mem, bytes(range(256)) * 31 + bytes(64))
        share = mem.share(1000, 3000)
        sub = share.share(500, -1)
        # 1.22's own fd memory gives maxsize - offset here (a share running past its parent).
        self.assertEqual(sub.get_sizes()[0], 2500)
        self.assertEqual(sub.offset, 1500)
        self.assertEqual(read(sub)[:4], bytes([1500 % 256, 1501 % 256, 1502 % 256, 1503 % 256]))
        self.assertIsNone(mem.share(0, 9000), "out of range: refused, not a wild share")

    def test_contiguous_shares_span(self):
        mem = Gst.Allocator.alloc(self.alloc, 4000, None)
        a, b = mem.share(0, 1000), mem.share(1000, 1000)
        ok, offset = a.is_span(b)
        self.assertTrue(ok)
        self.assertEqual(offset, 0)
        self.assertFalse(b.is_span(a)[0])

    def test_copy_is_memfd_memory(self):
        mem = Gst.Allocator.alloc(self.alloc, 100, None)
        write(mem, b"x" * 100)
        copy = mem.copy(10, 50)
        self.assertTrue(GstAllocators.is_fd_memory(copy))
        self.assertEqual(read(copy), b"x" * 50)


def GObjectTypeName(obj):
    return obj.__gtype__.name


if __name__ == "__main__":
    unittest.main(verbosity=2)
