# SPDX-License-Identifier: MPL-2.0
"""The tracer's charges by element when events flush work and memkit's own elements copy
(issue 28).

Each test runs its pipelines in a process of its own (gst-launch-1.0) under
GST_TRACERS=memkittracer(report=...), and reads the JSON report. Run with Debian's
/usr/bin/python3.
"""

import json
import os
import subprocess
import tempfile
import unittest

TIMEOUT = 180


def traced(args, params=""):
    """Runs `args` under the tracer: (its standard error, the last JSON report written)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "report.json")
        sep = "," if params else ""
        env = dict(os.environ, G_DEBUG="fatal_warnings",
                   GST_TRACERS=f"memkittracer(report={path}{sep}{params})")
        env.pop("MEMKIT_GUARD", None)
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "CRITICAL" not in proc.stderr, proc.stderr[-3000:]
        with open(path) as f:
            return proc.stderr, json.load(f)


def launch(pipeline, params=""):
    return traced(["gst-launch-1.0", "-q", *pipeline.split()], params)


def has(name):
    return subprocess.run(["gst-inspect-1.0", "--exists", name]).returncode == 0


def by_element(data):
    rows = {}
    for e in data["by-element"]:
        assert e["element"] not in rows, f"two rows named {e['element']}: {data['by-element']}"
        rows[e["element"]] = e
    return rows


class EventTest(unittest.TestCase):
    """Work done while an event is handled is charged to the element handling it."""

    def test_memmerge_remainder_at_eos_is_charged_to_memmerge(self):
        # Two buffers of separate blocks: at EOS memmerge copies them into one of 2000 bytes.
        _, data = launch("memsrc num-buffers=2 blocksize=1000 ! "
                         "memmerge target-size=100000 ! fakesink")
        el = by_element(data)
        self.assertEqual(el["memsrc0"]["allocations"], 2)
        self.assertEqual(el["memmerge0"]["allocations"], 1)
        self.assertGreaterEqual(el["memmerge0"]["bytes"], 2000)

    @unittest.skipUnless(has("x264enc"), "x264enc is not installed")
    def test_frames_an_encoder_flushes_at_eos_are_its_own(self):
        # x264enc holds frames back (lookahead, B-frames) and encodes them when EOS arrives:
        # every output frame (one allocation each) is x264enc's, none the source's.
        _, data = launch("videotestsrc num-buffers=20 ! video/x-raw,width=160,height=120 ! "
                         "x264enc ! fakesink")
        el = by_element(data)
        self.assertEqual((el["x264enc0"]["allocations"], el["x264enc0"]["write-maps"]), (20, 20),
                         data["by-element"])


class ElementCopyTest(unittest.TestCase):
    """Copies that memkit's own elements make are copies in the report."""

    def test_memmerge_copied_merges_are_copies(self):
        # 32 buffers of separate blocks, merged two by two: 16 copied merges of 5000 bytes.
        err, data = launch("memsrc num-buffers=32 blocksize=2500 ! memmerge target-size=5000 ! "
                           "fakesink")
        el = by_element(data)
        self.assertEqual((el["memmerge0"]["copies"], el["memmerge0"]["bytes-copied"]),
                         (16, 80000))
        self.assertIn("COPIED BY     memmerge0 16 (78.1 KiB)", err)

    def test_memmerge_zero_copy_merges_are_not_copies(self):
        _, data = launch("memsrc num-buffers=4 blocksize=65536 ! memslice chunk-size=4096 ! "
                         "memmerge target-size=65536 ! fakesink")
        self.assertEqual([e["element"] for e in data["by-element"] if e["copies"]], [])

    def test_memalign_alignment_copies_are_copies(self):
        # SystemMemory payloads are not 4096-aligned (almost never): memalign copies them.
        _, data = launch("memsrc allocator=SystemMemory num-buffers=8 blocksize=3000 ! "
                         "memalign alignment=4096 ! fakesink")
        el = by_element(data)
        self.assertGreaterEqual(el["memalign0"]["copies"], 7)
        self.assertEqual(el["memalign0"]["bytes-copied"], el["memalign0"]["copies"] * 3000)

    def test_memfdsink_copies_into_memfd_are_copies(self):
        with tempfile.TemporaryDirectory() as tmp:
            sock = os.path.join(tmp, "s")
            _, data = launch("memsrc allocator=AlignedMemory num-buffers=5 blocksize=10000 ! "
                             f"memfdsink min-consumers=0 socket-path={sock}")
        el = by_element(data)
        self.assertEqual((el["memfdsink0"]["copies"], el["memfdsink0"]["bytes-copied"]),
                         (5, 50000))



if __name__ == "__main__":
    unittest.main()
