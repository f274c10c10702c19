# SPDX-License-Identifier: MPL-2.0
"""Protect mode (MEMKIT_GUARD=protect / protect-continue) in real gst-launch-1.0 processes.

GST_PLUGIN_PATH holds the memkit plugin and the test-only memkittest plugin (tests/plugin),
whose memkitscribble touches memory it has no right to on purpose. Run with Debian's
/usr/bin/python3.
"""

import os
import re
import signal
import subprocess
import tempfile
import unittest

TIMEOUT = 120
REPORT = re.compile(r"^memkit protect: (.+?) \((a read|a write)\) at 0x[0-9a-f]+", re.M)


def launch(pipeline, mode):
    env = dict(os.environ)
    env["G_DEBUG"] = "fatal_warnings"
    env.pop("GST_TRACERS", None)
    env["MEMKIT_GUARD"] = mode
    args = ["gst-launch-1.0", "-q", *pipeline.split()]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def scribble(damage, buffers=3):
    return (f"memsrc num-buffers={buffers} blocksize=1100 ! memkitscribble damage={damage} ! "
            "fakesink enable-last-sample=false")


# The allocator's `protect` property from an application: the mode round-trips, and a new
# block's region ends where its pages end (the guard page right after maxsize).
PROPERTY_APP = """
import ctypes, mmap
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
Gst.Plugin.load_by_name("memkit")
a = Gst.Allocator.find("AlignedMemory")
assert int(a.get_property("protect")) == 0
a.set_property("protect", 2)  # continue
assert int(a.get_property("protect")) == 2
mem = a.alloc(4032, None)
ok, info = mem.map(Gst.MapFlags.WRITE)
assert ok
info.data[0] = 7  # allowed: a WRITE mapping is alive
addr = ctypes.addressof(ctypes.c_char.from_buffer(info.data))
mem.unmap(info)
assert (addr + 4032) % mmap.PAGESIZE == 0, hex(addr)
a.set_property("protect", 0)
print("ok")
"""


class ProtectTest(unittest.TestCase):
    # damage, the kind reported, read or write, reports in continue mode for 3 buffers
    CASES = [
        ("write-read-mapped", "write through a READ mapping", "a write", 3),
        ("after-unmap", "access with no mapping alive", "a write", 3),
        ("after-free", "access after free", "a read", 2),
        ("past-maxsize", "access past maxsize", "a read", 3),
    ]

    def test_each_violation_stops_the_process_at_the_instruction(self):
        for damage, kind, access, _n in self.CASES:
            with self.subTest(damage=damage):
                proc = launch(scribble(damage), "protect")
                self.assertEqual(proc.returncode, -signal.SIGSEGV, proc.stderr[-2000:])
                reports = REPORT.findall(proc.stderr)
                self.assertEqual(reports, [(kind, access)], proc.stderr[-2000:])
                self.assertIn("thread: memsrc0:src", proc.stderr)
                self.assertRegex(proc.stderr, r"block: region 0x[0-9a-f]+\.\.0x[0-9a-f]+ "
                                              r"\(maxsize 1152\), mappings alive: \d READ, \d WRITE")

    def test_continue_mode_reports_each_violation_and_reaches_eos(self):
        for damage, kind, access, n in self.CASES:
            with self.subTest(damage=damage):
                proc = launch(scribble(damage), "protect-continue")
                self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
                self.assertEqual(REPORT.findall(proc.stderr), [(kind, access)] * n)

    def test_the_mappings_alive_are_reported(self):
        proc = launch(scribble("write-read-mapped", 1), "protect")
        self.assertIn("mappings alive: 1 READ, 0 WRITE", proc.stderr)
        proc = launch(scribble("after-unmap", 1), "protect")
        self.assertIn("mappings alive: 0 READ, 0 WRITE", proc.stderr)

    def test_without_protect_mode_nothing_is_reported(self):
        for damage, _kind, _access, _n in self.CASES:
            env_mode = ""
            proc = launch(scribble(damage), env_mode)
            self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
            self.assertNotIn("memkit protect", proc.stderr)

    def test_the_allocator_property_turns_it_on_from_an_application(self):
        env = dict(os.environ, G_DEBUG="fatal_warnings")
        env.pop("MEMKIT_GUARD", None)
        proc = subprocess.run(["/usr/bin/python3", "-c", PROPERTY_APP], env=env,
                              capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual((proc.returncode, proc.stdout.strip()), (0, "ok"), proc.stderr[-2000:])
        self.assertNotIn("memkit protect", proc.stderr)

    def test_stock_and_memkit_pipelines_run_clean(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "out.bin")
            pipelines = [
                "videotestsrc num-buffers=20 ! video/x-raw,width=320,height=240 ! videoconvert ! "
                "video/x-raw,format=RGBA ! videoscale ! video/x-raw,width=160,height=120 ! "
                "fakesink",
                "audiotestsrc num-buffers=20 ! audioconvert ! audio/x-raw,format=S16LE ! "
                "fakesink",
                "videotestsrc num-buffers=20 ! tee name=t t. ! queue ! fakesink "
                "t. ! queue ! videoconvert ! fakesink",
                f"memsrc num-buffers=20 blocksize=5000 pattern=counter ! filesink location={out}",
                f"filesrc location={out} blocksize=3000 ! memalign alignment=4096 ! "
                "memslice chunk-size=1000 ! memmerge target-size=4000 ! "
                "memcheck read-pages=true fail-on-violation=true ! fakesink",
                "memsrc num-buffers=20 blocksize=65536 prefix=64 padding=64 zero-prefix=true "
                "zero-padding=true ! memcheck alignment=64 memory-type=AlignedMemory "
                "fail-on-violation=true read-pages=true ! fakesink",
            ]
            for pipeline in pipelines:
                with self.subTest(pipeline=pipeline):
                    proc = launch(pipeline, "protect")
                    self.assertEqual(proc.returncode, 0, f"{pipeline}\n{proc.stderr[-2000:]}")
                    self.assertNotIn("memkit protect", proc.stderr)


if __name__ == "__main__":
    unittest.main()
