# SPDX-License-Identifier: MPL-2.0
"""Guard mode and the memkit tracer, in real gst-launch-1.0 processes.

GST_PLUGIN_PATH holds the memkit plugin and the test-only memkittest plugin (tests/plugin),
whose memkitscribble writes outside the payload on purpose and memkitleak keeps a buffer for
ever. Run with Debian's /usr/bin/python3.
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

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
            with open(path) as f:
                data = json.load(f)
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
            with open(path) as f:
                data = json.load(f)
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
            with open(path) as f:
                data = json.load(f)
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


def gst_minor():
    out = subprocess.run(["gst-launch-1.0", "--gst-version"], capture_output=True, text=True)
    return int(re.search(r"version 1\.(\d+)", out.stdout).group(1))


# An application in its own process: allocates buffers on its main thread (with the tracer,
# from AlignedMemory) and pushes them into appsrc, whose own thread pushes them on.
APPSRC_APP = """
import sys
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
p = Gst.parse_launch("appsrc name=src format=bytes ! queue ! fakesink")
src = p.get_by_name("src")
p.set_state(Gst.State.PLAYING)
for i in range(int(sys.argv[1])):
    buf = Gst.Buffer.new_allocate(None, int(sys.argv[2]), None)
    assert src.emit("push-buffer", buf) == Gst.FlowReturn.OK
src.emit("end-of-stream")
msg = p.get_bus().timed_pop_filtered(Gst.SECOND * 60, Gst.MessageType.EOS | Gst.MessageType.ERROR)
assert msg and msg.type == Gst.MessageType.EOS
p.set_state(Gst.State.NULL)
"""


class AttributionTest(unittest.TestCase):
    """The tracer's charges by element (issue 21): who allocated, copied, mapped, leaked."""

    def traced(self, pipeline, params=""):
        """Runs `pipeline` under the tracer: (the exit report's text, the JSON report)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "report.json")
            sep = "," if params else ""
            proc = launch(pipeline, tracers=f"memkittracer(report={path}{sep}{params})")
            self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
            self.assertNotIn("CRITICAL", proc.stderr)
            with open(path) as f:
                return report(proc.stderr), json.load(f)

    @staticmethod
    def by_element(data):
        return {e["element"]: e for e in data["by-element"]}

    def test_the_one_element_that_copies_is_named_with_its_bytes(self):
        text, data = self.traced("memsrc num-buffers=10 blocksize=4096 ! identity ! memkitcopy ! "
                                 "queue ! fakesink")
        self.assertIn("COPIED BY     memkitcopy0 10 (40.0 KiB)", text)
        copiers = {e["element"]: (e["copies"], e["bytes-copied"])
                   for e in data["by-element"] if e["copies"]}
        self.assertEqual(copiers, {"memkitcopy0": (10, 40960)})
        el = self.by_element(data)
        self.assertEqual(el["memsrc0"]["allocations"], 10)
        self.assertEqual(el["memsrc0"]["bytes"], 10 * 4096)
        self.assertEqual(el["memsrc0"]["write-maps"], 10, "memsrc writes each buffer once")
        self.assertEqual(el["memkitcopy0"]["allocations"], 10, "a copy is an allocation too")
        self.assertNotIn("identity0", el, "identity neither allocates nor copies")
        # The copying element is the first row of the table.
        self.assertEqual(data["by-element"][0]["element"], "memkitcopy0")

    def test_a_pipeline_that_copies_nothing_says_so(self):
        text, data = self.traced("memsrc num-buffers=10 blocksize=4096 ! identity ! queue ! "
                                 "fakesink")
        self.assertIn("copied by     no element: nothing was copied", text)
        self.assertEqual([e for e in data["by-element"] if e["copies"]], [])

    def test_a_leak_is_charged_to_the_element_that_allocated_it(self):
        text, data = self.traced("memsrc num-buffers=5 blocksize=4096 ! memkitleak ! fakesink")
        self.assertIn("leaks         1 blocks, 4.0 KiB", text)
        self.assertRegex(text, r"block 0x[0-9a-f]+: 4096 bytes, allocated by memsrc0\n")
        self.assertEqual([(b["bytes"], b["element"]) for b in data["leaks"]], [(4096, "memsrc0")])
        self.assertEqual(self.by_element(data)["memsrc0"]["live-bytes"], 4096)

    def test_tee_branches_and_queue_threads_are_charged_apart(self):
        text, data = self.traced(
            "memsrc num-buffers=20 blocksize=4096 ! tee name=t "
            "t. ! queue ! memkitcopy name=c1 ! fakesink "
            "t. ! queue ! memkitcopy name=c2 ! fakesink "
            "t. ! queue ! fakesink")
        el = self.by_element(data)
        for name in ("c1", "c2"):
            self.assertEqual((el[name]["copies"], el[name]["bytes-copied"]), (20, 20 * 4096), name)
            self.assertEqual(el[name]["allocations"], 20, name)
        self.assertEqual(el["memsrc0"]["allocations"], 20)
        self.assertEqual(el["memsrc0"]["copies"], 0)
        self.assertEqual(set(el) - {"memsrc0", "c1", "c2"}, set(),
                         "tee and the queues neither allocate nor copy")
        self.assertRegex(text, r"COPIED BY     c[12] 20 \(80\.0 KiB\), c[12] 20 \(80\.0 KiB\)")

    def test_a_stock_conversion_is_charged_to_videoconvert_and_a_passthrough_to_nobody(self):
        text, data = self.traced(
            "videotestsrc num-buffers=30 ! video/x-raw,format=I420,width=320,height=240 ! "
            "tee name=t t. ! queue ! videoconvert name=convert ! video/x-raw,format=RGBA ! "
            "fakesink t. ! queue ! videoconvert name=pass ! video/x-raw,format=I420 ! fakesink")
        el = self.by_element(data)
        # videoconvert allocates its frames from its own buffer pool (a few, reused) and
        # writes every one of them.
        self.assertGreaterEqual(el["convert"]["allocations"], 1)
        self.assertGreaterEqual(el["convert"]["peak-live-bytes"], 320 * 240 * 4)
        self.assertGreaterEqual(el["convert"]["write-maps"], 30)
        self.assertNotIn("pass", el, "a passthrough videoconvert allocates nothing")
        # videotestsrc too allocates from a pool, and writes every frame.
        self.assertGreaterEqual(el["videotestsrc0"]["allocations"], 1)
        self.assertEqual(el["videotestsrc0"]["write-maps"], 30)
        self.assertEqual(sum(e["allocations"] for e in data["by-element"]),
                         data["stats"]["allocations"], "every allocation is charged once")

    def test_an_application_pushing_into_appsrc_is_charged_as_application(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "report.json")
            env = dict(os.environ, G_DEBUG="fatal_warnings",
                       GST_TRACERS=f"memkittracer(report={path})")
            proc = subprocess.run(["/usr/bin/python3", "-c", APPSRC_APP, "12", "3000"], env=env,
                                  capture_output=True, text=True, timeout=TIMEOUT)
            self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
            with open(path) as f:
                data = json.load(f)  # written when the pipeline stopped
        el = self.by_element(data)
        self.assertEqual(el["application"]["allocations"], 12)
        self.assertEqual(el["application"]["bytes"] % 12, 0)
        self.assertGreaterEqual(el["application"]["bytes"], 12 * 3000)
        self.assertNotIn("src", el, "appsrc allocates nothing of its own")

    def test_the_timeline_is_an_svg_chart_and_a_csv_table(self):
        pipeline = ("memsrc num-buffers=3000 blocksize=65536 ! queue max-size-buffers=50 ! "
                    "identity sleep-time=100 ! fakesink")
        with tempfile.TemporaryDirectory() as tmp:
            svg, table = os.path.join(tmp, "t.svg"), os.path.join(tmp, "t.csv")
            self.traced(pipeline, f"timeline={svg}")
            root = ET.parse(svg).getroot()  # well-formed XML
            self.assertTrue(root.tag.endswith("svg"), root.tag)
            texts = {t.text.strip() for t in root.iter() if t.tag.endswith("text") and t.text}
            for label in ("live memory (MiB)", "time since the tracer started (s)", "memsrc0",
                          "total", "cached by the allocators"):
                self.assertIn(label, texts)
            self.assertGreaterEqual(sum(1 for t in root.iter() if t.tag.endswith("polyline")), 3)
            self.traced(pipeline, f"timeline={table}")
            with open(table, newline="") as f:
                rows = list(csv.reader(f))
        head = rows[0]
        self.assertEqual(head[:5], ["seconds", "total", "total min", "total max", "cached"])
        self.assertEqual(head[5:8], ["memsrc0", "memsrc0 min", "memsrc0 max"])
        self.assertGreater(len(rows), 10, "sampled over the run")
        peak = 0
        for row in rows[1:]:
            values = [int(v) for v in row[1:]]
            # At the end of each interval the total is the elements' sum (every third column
            # from the sixth: each element's value, its least and its most).
            self.assertEqual(values[0], sum(values[4::3]), "total = the elements' sum")
            peak = max(peak, values[head.index("memsrc0 max") - 1])
        # The queue holds up to 50 buffers of memsrc's: its live bytes rise to about that.
        self.assertGreaterEqual(peak, 20 * 65536)

    def test_memory_of_other_allocators(self):
        text, data = self.traced("memsrc allocator=SystemMemory num-buffers=5 blocksize=4096 ! "
                                 "fakesink")
        if gst_minor() < 26:
            self.assertFalse(data["other-memory-seen"])
            self.assertIn("other memory  not seen: memory of other allocators is counted from "
                          "GStreamer 1.26", text)
        else:
            self.assertTrue(data["other-memory-seen"])
            el = self.by_element(data)
            self.assertEqual(el["memsrc0"]["other-allocations"], 5)
            self.assertGreaterEqual(el["memsrc0"]["other-bytes"], 5 * 4096)
            self.assertRegex(text, r"other memory  allocated by other allocators: memsrc0 5 ")
            self.assertEqual(data["other-leaks"], [])


if __name__ == "__main__":
    unittest.main()
