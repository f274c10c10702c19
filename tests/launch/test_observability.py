# SPDX-License-Identifier: MPL-2.0
"""Guard mode and the memkit tracer, in real gst-launch-1.0 processes.

GST_PLUGIN_PATH holds the memkit plugin and the test-only memkittest plugin (tests/plugin),
whose memkitscribble writes outside the payload on purpose and memkitleak keeps a buffer for
ever. Run with Debian's /usr/bin/python3.
"""

import json
import os
import re
import signal
import subprocess
import tempfile
import unittest

TIMEOUT = 120

# memsrc blocks of 1100 bytes with the default alignment have maxsize 1152 and live in a
# 1280-byte size class: a byte past maxsize is still inside memkit's own storage, so the
# pipelines without guard mode damage nothing of anyone else's.
BLOCK = 1100
MAXSIZE = 1152


def launch(pipeline, tracers=None, env_extra=None):
    env = dict(os.environ)
    env["G_DEBUG"] = "fatal_warnings"
    env.pop("GST_TRACERS", None)
    env.pop("MEMKIT_GUARD", None)
    if tracers is not None:
        env["GST_TRACERS"] = tracers
    env.update(env_extra or {})
    args = ["gst-launch-1.0", "-q", *pipeline.split()]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def report(text, title="exit"):
    """The lines of the report with this title."""
    m = re.search(r"^memkit report \(" + re.escape(title) + r"\)\n((?:  .*\n)*)", text, re.M)
    assert m, f"no '{title}' report in:\n{text[-3000:]}"
    return m.group(1)


def field(rep, pattern):
    m = re.search(pattern, rep)
    assert m, f"{pattern!r} not in:\n{rep}"
    return m


class ObservabilityTest(unittest.TestCase):
    def run_ok(self, pipeline, **kw):
        proc = launch(pipeline, **kw)
        self.assertEqual(proc.returncode, 0, f"{pipeline}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        self.assertNotIn("CRITICAL", proc.stderr)
        return proc

    # ----- the tracer -----------------------------------------------------------------------

    def test_tracer_audits_a_stock_pipeline_with_no_leaks(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "report.json")
            proc = self.run_ok("videotestsrc num-buffers=100 ! videoconvert ! fakesink",
                               tracers=f"memkittracer(report={path})")
            stopped = report(proc.stderr, "pipeline pipeline0 stopped")
            self.assertIn("in use        0 blocks", stopped)
            final = report(proc.stderr)
            allocations = int(field(final, r"allocations +(\d+)").group(1))
            self.assertGreater(allocations, 0, "videotestsrc allocated through AlignedMemory")
            self.assertIn("leaks         0 blocks", final)
            # The JSON says the same.
            data = json.load(open(path))
            self.assertTrue(data["at-exit"])
            self.assertEqual(data["stats"]["allocations"], allocations)
            self.assertEqual(data["leaks"], [])
            self.assertGreaterEqual(data["stats"]["peak-bytes"], 320 * 240 * 3 // 2)
            self.assertEqual(sum(c["allocations"] for c in data["by-size-class"]), allocations)

    def test_tracer_reports_a_deliberate_leak_with_its_size(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "report.json")
            proc = self.run_ok(f"memsrc num-buffers=5 blocksize=4096 ! memkitleak ! fakesink",
                               tracers=f"memkittracer(report={path})")
            final = report(proc.stderr)
            self.assertIn("leaks         1 blocks, 4.0 KiB", final)
            self.assertRegex(final, r"block 0x[0-9a-f]+: 4096 bytes")
            data = json.load(open(path))
            self.assertEqual([b["bytes"] for b in data["leaks"]], [4096])

    def test_tracer_counts_zero_copy_merges_and_copies(self):
        proc = self.run_ok("memsrc num-buffers=10 blocksize=65536 ! memslice chunk-size=4096 ! "
                           "memmerge target-size=65536 ! fakesink", tracers="memkittracer")
        final = report(proc.stderr)
        m = field(final, r"shares (\d+), zero-copy merges \(is_span\) (\d+), copies (\d+)")
        shares, spans, copies = map(int, m.groups())
        self.assertEqual(copies, 0)
        # memmerge asks is_span once for the parent offset, then for each of the 15 adjacent
        # pairs of the 16 pieces of an output buffer: every answer is yes.
        self.assertEqual(spans, 10 * 16)
        self.assertGreaterEqual(shares, 10 * 16)

    # ----- guard mode -----------------------------------------------------------------------

    def test_write_past_maxsize_is_caught_and_the_element_named(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "report.json")
            proc = self.run_ok(f"memsrc num-buffers=3 blocksize={BLOCK} ! "
                               "memkitscribble damage=past-maxsize ! fakesink",
                               tracers=f"memkittracer(guard=true,report={path})")
            final = report(proc.stderr)
            self.assertIn("guard         on, 3 violations", final)
            self.assertIn(f"memkitscribble0: after maxsize damaged, bytes {MAXSIZE}..{MAXSIZE + 1} "
                          f"of a block of maxsize {MAXSIZE}", final)
            data = json.load(open(path))
            self.assertEqual(data["stats"]["guard-violations"], 3)
            self.assertEqual({v["element"] for v in data["violations"]}, {"memkitscribble0"})
            self.assertEqual({(v["area"], v["start"], v["end"]) for v in data["violations"]},
                             {("after maxsize", MAXSIZE, MAXSIZE + 1)})

    def test_write_into_the_prefix_is_caught_and_the_element_named(self):
        proc = self.run_ok(f"memsrc num-buffers=2 blocksize={BLOCK} prefix=64 ! "
                           "memkitscribble damage=prefix ! fakesink",
                           tracers="memkittracer(guard=true)")
        final = report(proc.stderr)
        self.assertIn("guard         on, 2 violations", final)
        self.assertIn("memkitscribble0: prefix damaged, bytes 63..64", final)

    def test_guard_mode_without_the_tracer_logs_the_damage(self):
        proc = self.run_ok(f"memsrc num-buffers=2 blocksize={BLOCK} ! "
                           "memkitscribble damage=past-maxsize ! fakesink",
                           env_extra={"MEMKIT_GUARD": "1", "GST_DEBUG": "alignedmemory:1"})
        hits = re.findall(r"ERROR .*alignedmemory .*guard: block 0x[0-9a-f]+ after maxsize "
                          rf"damaged: bytes {MAXSIZE}..{MAXSIZE + 1} of a block of maxsize {MAXSIZE}"
                          r".*\(found when a write mapping was released\)", proc.stderr)
        self.assertEqual(len(hits), 2, proc.stderr[-3000:])

    def test_guard_abort_mode_aborts_with_a_clear_message(self):
        proc = launch(f"memsrc num-buffers=2 blocksize={BLOCK} ! "
                      "memkitscribble damage=past-maxsize ! fakesink",
                      env_extra={"MEMKIT_GUARD": "abort"})
        self.assertEqual(proc.returncode, -signal.SIGABRT, proc.stderr[-2000:])
        self.assertIn("memkit guard: block", proc.stderr)
        self.assertIn("aborting (MEMKIT_GUARD=abort)", proc.stderr)

    def test_without_guard_mode_the_same_pipelines_behave_as_before(self):
        for damage in ("past-maxsize", "prefix", "none"):
            proc = self.run_ok(f"memsrc num-buffers=3 blocksize={BLOCK} prefix=64 ! "
                               f"memkitscribble damage={damage} ! memcheck ! fakesink",
                               tracers="memkittracer")
            final = report(proc.stderr)
            self.assertIn("guard         off, 0 violations", final)
            self.assertIn("leaks         0 blocks", final)

    def test_clean_pipelines_in_guard_mode_report_nothing(self):
        proc = self.run_ok("videotestsrc num-buffers=20 ! videoconvert ! memalign ! "
                           "memcheck fail-on-violation=true ! fakesink",
                           tracers="memkittracer(guard=true)")
        final = report(proc.stderr)
        self.assertIn("guard         on, 0 violations", final)
        self.assertIn("leaks         0 blocks", final)


if __name__ == "__main__":
    unittest.main()
