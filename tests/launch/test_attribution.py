# SPDX-License-Identifier: MPL-2.0
"""The tracer's charges by element when threads are reused, names collide, events flush work,
memkit's own elements copy, and the timeline is drawn (issue 28).

Each test runs its pipelines in a process of its own (gst-launch-1.0, or Debian's python3 with
GI for several pipelines in one process) under GST_TRACERS=memkittracer(report=...), and reads
the JSON report. Run with Debian's /usr/bin/python3.
"""

import csv
import json
import os
import re
import subprocess
import tempfile
import time
import unittest
import xml.etree.ElementTree as ET

TIMEOUT = 180

# Runs the pipelines given as arguments one after another, each to EOS then NULL, in one
# process: GStreamer's task pool hands the threads of one to the next.
SEQUENCE_APP = """
import sys
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
for desc in sys.argv[1:]:
    p = Gst.parse_launch(desc)
    p.set_state(Gst.State.PLAYING)
    msg = p.get_bus().timed_pop_filtered(Gst.SECOND * 60,
                                         Gst.MessageType.EOS | Gst.MessageType.ERROR)
    assert msg and msg.type == Gst.MessageType.EOS, (desc, msg and msg.parse_error())
    p.set_state(Gst.State.NULL)
"""

# Runs the pipelines given as arguments all at once, each to EOS, then all to NULL.
CONCURRENT_APP = """
import sys
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
ps = [Gst.parse_launch(desc) for desc in sys.argv[1:]]
for p in ps:
    p.set_state(Gst.State.PLAYING)
for p in ps:
    msg = p.get_bus().timed_pop_filtered(Gst.SECOND * 60,
                                         Gst.MessageType.EOS | Gst.MessageType.ERROR)
    assert msg and msg.type == Gst.MessageType.EOS, msg and msg.parse_error()
for p in ps:
    p.set_state(Gst.State.NULL)
"""

# One memsrc named "before" runs in a pipeline, is taken out, renamed "after", and runs again
# in another.
RENAME_APP = """
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
src = Gst.ElementFactory.make("memsrc", "before")
src.set_property("num-buffers", 5)
src.set_property("blocksize", 4096)
for name in ("one", "two"):
    p = Gst.Pipeline.new(name)
    sink = Gst.ElementFactory.make("fakesink", None)
    p.add(src)
    p.add(sink)
    assert src.link(sink)
    p.set_state(Gst.State.PLAYING)
    msg = p.get_bus().timed_pop_filtered(Gst.SECOND * 60,
                                         Gst.MessageType.EOS | Gst.MessageType.ERROR)
    assert msg and msg.type == Gst.MessageType.EOS, msg and msg.parse_error()
    p.set_state(Gst.State.NULL)
    src.unlink(sink)
    p.remove(src)
    src.set_name("after")
"""


def traced(args, params="", timeout=TIMEOUT):
    """Runs `args` under the tracer: (its standard error, the last JSON report written). The
    standard error must be UTF-8 and the report UTF-8 JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "report.json")
        sep = "," if params else ""
        env = dict(os.environ, G_DEBUG="fatal_warnings",
                   GST_TRACERS=f"memkittracer(report={path}{sep}{params})")
        env.pop("MEMKIT_GUARD", None)
        proc = subprocess.run(args, env=env, capture_output=True, timeout=timeout)
        err = proc.stderr.decode("utf-8")
        assert proc.returncode == 0, err[-3000:]
        assert "CRITICAL" not in err, err[-3000:]
        with open(path, encoding="utf-8") as f:
            return err, json.load(f)


def launch(pipeline, params="", timeout=TIMEOUT):
    return traced(["gst-launch-1.0", "-q", *pipeline.split()], params, timeout)


def app(script, *args, params="", timeout=TIMEOUT):
    return traced(["/usr/bin/python3", "-c", script, *args], params, timeout)


def by_element(data):
    rows = {}
    for e in data["by-element"]:
        assert e["element"] not in rows, f"two rows named {e['element']}: {data['by-element']}"
        rows[e["element"]] = e
    return rows


def has(name):
    return subprocess.run(["gst-inspect-1.0", "--exists", name]).returncode == 0


class ThreadReuseTest(unittest.TestCase):
    """A thread is charged to the task it runs now, not to the first it ever ran."""

    def test_three_pipelines_in_sequence_are_charged_to_their_own_sources(self):
        counts = {"first": 10, "second": 20, "third": 30}
        pipelines = [f"memsrc name={name} num-buffers={n} blocksize=4096 ! queue ! fakesink"
                     for name, n in counts.items()]
        _, data = app(SEQUENCE_APP, *pipelines)
        el = by_element(data)
        for name, n in counts.items():
            self.assertIn(name, el, data["by-element"])
            self.assertEqual((el[name]["allocations"], el[name]["bytes"]), (n, n * 4096), name)
            self.assertEqual(el[name]["write-maps"], n, name)
        self.assertEqual(sum(e["allocations"] for e in data["by-element"]),
                         data["stats"]["allocations"], "every allocation is charged once")

    @unittest.skipUnless(has("audiomixer"), "audiomixer is not installed (the 1.28 stage builds no audiomixer)")
    def test_an_aggregator_on_a_reused_thread_is_charged_for_its_output(self):
        # The first pipeline leaves its task threads in the pool; the mixer's source thread
        # (mix:src) takes one of them and allocates every output buffer on it.
        _, data = app(SEQUENCE_APP,
                      "memsrc name=warm num-buffers=10 blocksize=4096 ! queue ! fakesink",
                      "audiotestsrc num-buffers=20 samplesperbuffer=1024 ! "
                      "audio/x-raw,format=S16LE,channels=2,rate=48000 ! audiomixer name=mix ! "
                      "fakesink")
        el = by_element(data)
        self.assertEqual(el["warm"]["allocations"], 10)
        self.assertGreaterEqual(el["mix"]["allocations"], 20, data["by-element"])
        self.assertGreaterEqual(el["mix"]["bytes"], 20 * 1024 * 4)
        self.assertGreaterEqual(el["mix"]["write-maps"], el["mix"]["allocations"])


class IdentityTest(unittest.TestCase):
    """Charges are kept per element, not per name."""

    def test_two_pipelines_at_once_with_the_same_names_get_a_row_each(self):
        _, data = app(CONCURRENT_APP,
                      "memsrc name=src num-buffers=10 blocksize=4096 ! queue name=q ! fakesink",
                      "memsrc name=src num-buffers=20 blocksize=8192 ! queue name=q ! fakesink")
        el = by_element(data)
        self.assertNotIn("src", el, "the names collide: each row shows its path")
        self.assertEqual((el["pipeline0/src"]["allocations"], el["pipeline0/src"]["bytes"]),
                         (10, 10 * 4096))
        self.assertEqual((el["pipeline1/src"]["allocations"], el["pipeline1/src"]["bytes"]),
                         (20, 20 * 8192))

    def test_a_renamed_element_is_reported_under_its_new_name(self):
        _, data = app(RENAME_APP)
        el = by_element(data)
        self.assertNotIn("before", el)
        self.assertEqual(el["after"]["allocations"], 10, "one element, one row: both runs")


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


# A MemfdMemory block freed when a timeline sample is due: the free holds MemfdMemory's
# recycling lock while it tells the tracer, which reads the caches' bytes for the sample.
MEMFD_FREE_APP = """
import time
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
Gst.Plugin.load_by_name("memkit")
a = Gst.Allocator.find("MemfdMemory")
for i in range(10):
    m = a.alloc(4096, None)
    time.sleep(0.02)  # past the 10 ms between samples: one is due at the free
    del m
p = Gst.parse_launch("fakesrc num-buffers=1 ! fakesink")  # its stop writes the report
p.set_state(Gst.State.PLAYING)
p.get_bus().timed_pop_filtered(10 * Gst.SECOND, Gst.MessageType.EOS)
p.set_state(Gst.State.NULL)
"""


class DeadlockTest(unittest.TestCase):
    """No charge made under an allocator's lock waits for that lock again."""

    def test_a_memfd_block_recycled_when_a_sample_is_due_does_not_hang(self):
        with tempfile.TemporaryDirectory() as tmp:
            _, data = app(MEMFD_FREE_APP, params=f"timeline={tmp}/t.csv", timeout=60)
        el = by_element(data)
        self.assertGreaterEqual(el["application"]["allocations"], 10, data["by-element"])
        self.assertEqual(data["memfd-stats"]["bytes-live"], 0)

    def test_a_live_memfdsink_pipeline_finishes(self):
        with tempfile.TemporaryDirectory() as tmp:
            _, data = launch("videotestsrc num-buffers=30 is-live=true ! "
                             "video/x-raw,width=320,height=240 ! "
                             f"memfdsink socket-path={tmp}/s min-consumers=0",
                             f"timeline={tmp}/t.csv", timeout=60)
        # 30 frames written, none left. (Each frame is mapped once on 1.22 and once per plane
        # and whole frame on 1.28: 30 or 120.) videotestsrc's pool does not reuse a block
        # memfdsink sent (it is read-only until it goes back through MemfdMemory), and with
        # the tracer on MemfdMemory recycles nothing: one allocation per frame.
        el = by_element(data)["videotestsrc0"]
        self.assertIn(el["write-maps"], (30, 120), data["by-element"])
        self.assertEqual(el["allocations"], 30, "a block memfdsink sent, not reused by the pool")
        self.assertEqual(data["memfd-stats"]["bytes-live"], 0)


# The application stops a recording the usual way, an EOS sent into the encoder's sink pad
# from its own thread: the encoder flushes and pushes on that thread. Then the application
# feeds another pipeline with buffers of its own (10 of 100,000 bytes), from the same thread.
EOS_FROM_APP = """
import sys, time
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
a = Gst.parse_launch(sys.argv[1])
src = a.get_by_name("src")
a.set_state(Gst.State.PLAYING)
for i in range(int(sys.argv[3])):
    b = Gst.Buffer.new_wrapped(bytes(int(sys.argv[2])))
    b.pts = i * Gst.SECOND // 30
    b.duration = Gst.SECOND // 30
    src.emit("push-buffer", b)
time.sleep(1.0)
a.get_by_name("work").get_static_pad("sink").send_event(Gst.Event.new_eos())
msg = a.get_bus().timed_pop_filtered(10 * Gst.SECOND, Gst.MessageType.EOS)
assert msg, "the EOS reached the sink"
a.set_state(Gst.State.NULL)
b = Gst.parse_launch("appsrc name=feed format=bytes ! fakesink")
feed = b.get_by_name("feed")
b.set_state(Gst.State.PLAYING)
for i in range(10):
    feed.emit("push-buffer", Gst.Buffer.new_allocate(None, 100000, None))
feed.emit("end-of-stream")
assert b.get_bus().timed_pop_filtered(10 * Gst.SECOND, Gst.MessageType.EOS)
b.set_state(Gst.State.NULL)
"""


class ApplicationThreadTest(unittest.TestCase):
    """A thread that runs no pad task is nobody's once the element it pushed for returns."""

    def check_the_application_keeps_its_thread(self, data, worker):
        el = by_element(data)
        self.assertGreaterEqual(el["application"]["bytes"], 10 * 100000, data["by-element"])
        self.assertLess(el.get(worker, {"bytes": 0})["bytes"], 10 * 100000,
                        f"{worker} is charged none of the application's buffers")

    @unittest.skipUnless(has("x264enc"), "x264enc is not installed")
    def test_an_encoder_flushing_at_an_eos_from_the_application(self):
        _, data = app(EOS_FROM_APP,
                      "appsrc name=src caps=video/x-raw,format=I420,width=320,height=240,"
                      "framerate=30/1 format=time ! x264enc name=work ! fakesink",
                      str(320 * 240 * 3 // 2), "10")
        self.check_the_application_keeps_its_thread(data, "work")

    def test_memmerge_pushing_its_remainder_at_an_eos_from_the_application(self):
        _, data = app(EOS_FROM_APP,
                      "appsrc name=src format=bytes ! memmerge name=work target-size=1048576 ! "
                      "fakesink", "4096", "3")
        self.check_the_application_keeps_its_thread(data, "work")


# The application posts a stream-status ENTER for an element from its own thread (no task
# runs there), then allocates 4 buffers of 50,000 bytes.
FAKE_ENTER_APP = """
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
p = Gst.parse_launch("memsrc name=victim num-buffers=1 ! fakesink")
victim = p.get_by_name("victim")
victim.post_message(Gst.Message.new_stream_status(victim.get_static_pad("src"),
                                                  Gst.StreamStatusType.ENTER, victim))
bufs = [Gst.Buffer.new_allocate(None, 50000, None) for _ in range(4)]
del bufs
p.set_state(Gst.State.READY)
p.set_state(Gst.State.NULL)
"""


class TaskTrustTest(unittest.TestCase):
    """Only a pad task's own thread makes a thread its element's."""

    def test_an_enter_posted_by_the_application_changes_nothing(self):
        _, data = app(FAKE_ENTER_APP)
        el = by_element(data)
        self.assertEqual(el["application"]["allocations"], 4, data["by-element"])
        self.assertGreaterEqual(el["application"]["bytes"], 200000, data["by-element"])
        self.assertNotIn("victim", el)


# Builds a pipeline with ctypes (Python GI refuses names that are not UTF-8): a memsrc named
# with the bytes of argv[1] (hex) and a fakesink named with those of argv[2], 50 buffers of
# 65,536 bytes, then gst_deinit (the exit report).
CTYPES_NAMES_APP = """
import ctypes, sys
gst = ctypes.CDLL("libgstreamer-1.0.so.0")
gobject = ctypes.CDLL("libgobject-2.0.so.0")
vp = ctypes.c_void_p
for f, res, args in [
        ("gst_pipeline_new", vp, [ctypes.c_char_p]),
        ("gst_element_factory_make", vp, [ctypes.c_char_p, ctypes.c_char_p]),
        ("gst_bin_add", ctypes.c_int, [vp, vp]),
        ("gst_element_link", ctypes.c_int, [vp, vp]),
        ("gst_element_set_state", ctypes.c_int, [vp, ctypes.c_int]),
        ("gst_element_get_bus", vp, [vp]),
        ("gst_bus_timed_pop_filtered", vp, [vp, ctypes.c_uint64, ctypes.c_int]),
        ("gst_mini_object_unref", None, [vp]),
        ("gst_object_unref", None, [vp])]:
    getattr(gst, f).restype = res
    getattr(gst, f).argtypes = args
gst.gst_init(None, None)
p = gst.gst_pipeline_new(b"p")
src = gst.gst_element_factory_make(b"memsrc", bytes.fromhex(sys.argv[1]))
sink = gst.gst_element_factory_make(b"fakesink", bytes.fromhex(sys.argv[2]))
gobject.g_object_set(vp(src), b"num-buffers", ctypes.c_int(50), b"blocksize",
                     ctypes.c_uint(65536), None)
assert gst.gst_bin_add(p, src) and gst.gst_bin_add(p, sink) and gst.gst_element_link(src, sink)
gst.gst_element_set_state(p, 4)
bus = gst.gst_element_get_bus(p)
msg = gst.gst_bus_timed_pop_filtered(bus, 10 * 10**9, 1 | 2)  # EOS | ERROR
assert msg
gst.gst_mini_object_unref(msg)
gst.gst_object_unref(bus)
gst.gst_element_set_state(p, 1)
gst.gst_object_unref(p)
gst.gst_deinit()
"""


class NameTest(unittest.TestCase):
    """Element names are bytes: every output of the report is valid and readable."""

    def test_names_that_are_not_utf8_give_valid_utf8_reports(self):
        err, data = app(CTYPES_NAMES_APP, b"src\xff\xfe".hex(), b'sink"\\\n,\x01'.hex())
        el = by_element(data)
        self.assertEqual(el["src\ufffd\ufffd"]["allocations"], 50, data["by-element"])
        self.assertIn("src\ufffd\ufffd", err)

    def test_control_characters_in_names_give_a_valid_svg(self):
        with tempfile.TemporaryDirectory() as tmp:
            svg = os.path.join(tmp, "t.svg")
            err, data = app(CTYPES_NAMES_APP, b"ctl\x01\x02name".hex(), b"sink".hex(),
                            params=f"timeline={svg}")
            root = ET.parse(svg).getroot()  # not well-formed XML raises
        texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
        self.assertIn("ctl\\x01\\x02name", texts)
        self.assertEqual(by_element(data)["ctl\x01\x02name"]["allocations"], 50,
                         "the JSON holds the name itself")
        self.assertIn("ctl\\x01\\x02name", err, "the text report shows the characters")
        self.assertNotIn("\x01", err)


# N pipelines each leave one buffer alive (the application keeps the sample each appsink gave,
# as a thumbnailer does), then a steady pipeline runs.
HELD_APP = """
import sys
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
kept = []
for i in range(int(sys.argv[1])):
    p = Gst.parse_launch(f"memsrc name=s{i} num-buffers=1 blocksize=64 ! appsink name=k")
    p.set_state(Gst.State.PLAYING)
    kept.append(p.get_by_name("k").emit("pull-sample"))
    p.set_state(Gst.State.NULL)
p = Gst.parse_launch("memsrc name=steady blocksize=64 num-buffers=200 ! "
                     "identity sleep-time=5000 ! fakesink")
p.set_state(Gst.State.PLAYING)
assert p.get_bus().timed_pop_filtered(60 * Gst.SECOND, Gst.MessageType.EOS)
p.set_state(Gst.State.NULL)
"""


class BoundTest(unittest.TestCase):
    """The timeline's cost does not grow with the elements that hold bytes."""

    def test_a_thousand_elements_holding_bytes(self):
        with tempfile.TemporaryDirectory() as tmp:
            table = os.path.join(tmp, "t.csv")
            start = time.monotonic()
            _, data = app(HELD_APP, "1000", params=f"timeline={table}", timeout=300)
            took = time.monotonic() - start
            size = os.path.getsize(table)
            with open(table, newline="") as f:
                rows = list(csv.reader(f))
        self.assertLess(size, 1 << 20, "the CSV stays under 1 MiB")
        # The tracer of before issue 28 takes about 4 s here; before this bound, 114 s.
        self.assertLess(took, 60, "no work per sample for each element holding bytes")
        live = sum(e["live-bytes"] for e in data["by-element"])
        self.assertGreaterEqual(live, 1000 * 64, "the samples' buffers are alive")
        self.assertIn("others", " ".join(rows[0]))
        self.assertEqual(int(rows[-1][1]), live, "the total at the end: the bytes held")


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


# 400 buffers through a tee in a few tens of milliseconds: many allocations and frees between
# two samples of the timeline.
FAST = ("audiotestsrc num-buffers=400 samplesperbuffer=256 ! tee name=t "
        "t. ! queue ! fakesink t. ! queue ! fakesink")


def svg_peaks(path):
    """The highest value each series of the chart reaches, in bytes, read from the drawing:
    each legend entry's colour finds its shapes, the y axis's labels give the scale."""
    root = ET.parse(path).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    texts = [(t.text.strip(), float(t.get("y")), float(t.get("x"))) for t in root.iter(ns + "text")
             if t.text]
    # The y axis labels: numbers at the same x, left of the plot.
    ticks = [(float(s), y) for s, y, x in texts if re.fullmatch(r"[0-9.]+", s)]
    xs = {}
    for s, y, x in texts:
        if re.fullmatch(r"[0-9.]+", s):
            xs.setdefault(x, []).append((float(s), y))
    ticks = max(xs.values(), key=len)
    (v0, y0), (v1, y1) = min(ticks), max(ticks)
    unit = re.search(r"live memory \((\w+)\)", " ".join(s for s, _, _ in texts)).group(1)
    scale = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]

    def value(py):
        return (v0 + (py - y0) * (v1 - v0) / (y1 - y0)) * scale

    def points(el):
        pts = el.get("points") or ""
        return [tuple(map(float, p.split(","))) for p in pts.split()]

    shapes = {}
    for el in root.iter():
        if el.tag in (ns + "polyline", ns + "polygon"):
            colour = el.get("stroke") if el.tag.endswith("polyline") else el.get("fill")
            shapes.setdefault(colour, []).append(points(el))
    # Legend entries: a short two-point line, then the name right of it.
    peaks = {}
    labels = [(s, y, x) for s, y, x in texts]
    for colour, lines in shapes.items():
        for line in lines:
            if len(line) == 2 and line[0][1] == line[1][1] and line[1][0] - line[0][0] == 20:
                lx, ly = line[1]
                name = min(labels, key=lambda t: abs(t[1] - ly) + abs(t[2] - lx))[0]
                top = min(py for shape in lines if shape is not line for _, py in shape)
                peaks[name] = value(top)
    return peaks, (v1 - v0) * scale / abs(y1 - y0)


class TimelineTest(unittest.TestCase):
    """Each interval of the timeline shows the most (and the least) reached in it."""

    def test_the_csv_peak_of_each_element_is_the_reports(self):
        with tempfile.TemporaryDirectory() as tmp:
            table = os.path.join(tmp, "t.csv")
            _, data = launch(FAST, f"timeline={table}")
            with open(table, newline="") as f:
                rows = list(csv.reader(f))
        head = rows[0]
        self.assertEqual(head[:5], ["seconds", "total", "total min", "total max", "cached"])
        for e in data["by-element"]:
            if not e["allocations"]:
                continue
            name = e["element"]
            self.assertIn(name, head, f"{name} allocated: it has a column")
            peak = max(int(r[head.index(name + " max")]) for r in rows[1:])
            self.assertEqual(peak, e["peak-live-bytes"], name)
            low = min(int(r[head.index(name + " min")]) for r in rows[1:])
            self.assertEqual(low, 0, name)
        for r in rows[1:]:
            v = dict(zip(head, r))
            self.assertLessEqual(int(v["total min"]), int(v["total"]))
            self.assertLessEqual(int(v["total"]), int(v["total max"]))
        # The most alive at once in all: at least any one element's, at most their sum.
        total = max(int(r[3]) for r in rows[1:])
        peaks = [e["peak-live-bytes"] for e in data["by-element"]]
        self.assertGreaterEqual(total, max(peaks))
        self.assertLessEqual(total, sum(peaks))

    def test_the_svg_peak_of_each_element_is_the_reports(self):
        with tempfile.TemporaryDirectory() as tmp:
            svg = os.path.join(tmp, "t.svg")
            _, data = launch(FAST, f"timeline={svg}")
            peaks, pixel = svg_peaks(svg)
        for e in data["by-element"]:
            if not e["allocations"]:
                continue
            name = e["element"]
            self.assertIn(name, peaks, f"{name} allocated: it has a line ({peaks})")
            self.assertAlmostEqual(peaks[name], e["peak-live-bytes"], delta=2 * pixel,
                                   msg=name)
        self.assertGreaterEqual(peaks["total"] + 2 * pixel,
                                max(e["peak-live-bytes"] for e in data["by-element"]))


if __name__ == "__main__":
    unittest.main()
