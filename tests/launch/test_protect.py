# SPDX-License-Identifier: MPL-2.0
"""Protect mode (MEMKIT_GUARD=protect / protect-continue) in real gst-launch-1.0 processes.

GST_PLUGIN_PATH holds the memkit plugin and the test-only memkittest plugin (tests/plugin),
whose memkitscribble touches memory it has no right to on purpose. Run with Debian's
/usr/bin/python3.
"""

import json
import os
import re
import signal
import subprocess
import tempfile
import unittest

TIMEOUT = 120
REPORT = re.compile(r"^memkit protect: (.+?) \((a read|a write)\) at 0x[0-9a-f]+", re.M)


def launch(pipeline, mode, tracer=None, quiet=True):
    """gst-launch-1.0 with MEMKIT_GUARD=`mode`, or with the tracer's parameters `tracer`."""
    env = dict(os.environ)
    env["G_DEBUG"] = "fatal_warnings"
    env.pop("GST_TRACERS", None)
    env.pop("MEMKIT_GUARD", None)
    if tracer is not None:
        env["GST_TRACERS"] = f"memkittracer({tracer})"
    elif mode:
        env["MEMKIT_GUARD"] = mode
    args = ["gst-launch-1.0", *(["-q"] if quiet else []), *pipeline.split()]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def scribble(damage, buffers=3, source="blocksize=1100"):
    return (f"memsrc num-buffers={buffers} {source} ! memkitscribble damage={damage} ! "
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


# An application feeding appsrc and pulling from appsink, 20 buffers through videoconvert.
APP_PIPELINE = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
from gi.repository import Gst, GstApp
Gst.init(None)
p = Gst.parse_launch("appsrc name=src caps=video/x-raw,format=I420,width=64,height=48,"
                     "framerate=30/1 format=time ! videoconvert ! video/x-raw,format=RGBA ! "
                     "appsink name=sink sync=false")
src, sink = p.get_by_name("src"), p.get_by_name("sink")
p.set_state(Gst.State.PLAYING)
for i in range(20):
    buf = Gst.Buffer.new_allocate(None, 64 * 48 * 3 // 2, None)
    buf.memset(0, i, 64 * 48 * 3 // 2)
    buf.pts = i * Gst.SECOND // 30
    src.emit("push-buffer", buf)
src.emit("end-of-stream")
n = 0
while True:
    sample = sink.emit("pull-sample")
    if sample is None:
        break
    ok, info = sample.get_buffer().map(Gst.MapFlags.READ)
    assert ok and len(info.data) == 64 * 48 * 4
    sample.get_buffer().unmap(info)
    n += 1
p.set_state(Gst.State.NULL)
print(n)
"""


# N pipelines whose two pad tasks wait (appsrc without data, the queue behind it): 2N threads
# each inside an element; then a scribbler faults on a thread of its own, named `crowded`;
# then the N pipelines stop and another scribbler, `after`, faults.
MANY_THREADS_APP = """
import sys
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)

def scribble(name):
    q = Gst.parse_launch("memsrc num-buffers=3 blocksize=100 ! queue ! "
                         f"memkitscribble name={name} damage=write-read-mapped ! fakesink")
    q.set_state(Gst.State.PLAYING)
    assert q.get_bus().timed_pop_filtered(60 * Gst.SECOND, Gst.MessageType.EOS)
    q.set_state(Gst.State.NULL)

ps = []
for i in range(int(sys.argv[1])):
    p = Gst.parse_launch("appsrc ! queue ! fakesink")
    p.set_state(Gst.State.PLAYING)
    ps.append(p)
for p in ps:
    # The tracer saw each task start before its message reached the bus.
    entered = 0
    while entered < 2:
        m = p.get_bus().timed_pop_filtered(60 * Gst.SECOND, Gst.MessageType.STREAM_STATUS)
        assert m, "the tasks started"
        entered += m.parse_stream_status()[0] == Gst.StreamStatusType.ENTER
scribble("crowded")
for p in ps:
    p.set_state(Gst.State.NULL)
scribble("after")
"""


class ProtectTest(unittest.TestCase):
    # damage, memsrc's settings, the kind reported, read or write, reports in continue mode for
    # 3 buffers, the signal abort mode dies of (SIGABRT: found in the slack beside the region
    # when the last WRITE mapping ended, not at the instruction)
    CASES = [
        ("write-read-mapped", "blocksize=1100", "write through a READ mapping", "a write", 3,
         signal.SIGSEGV),
        ("after-unmap", "blocksize=1100", "access with no mapping alive", "a write", 3,
         signal.SIGSEGV),
        ("read-after-unmap", "blocksize=1100", "access with no mapping alive", "a read", 3,
         signal.SIGSEGV),
        ("after-free", "blocksize=1100", "access after free", "a read", 2, signal.SIGSEGV),
        ("past-maxsize", "blocksize=1100", "access past maxsize", "a read", 3, signal.SIGSEGV),
        # the region fills its page: the byte before it is the guard page's
        ("before-payload", "blocksize=4096", "access before the block", "a write", 3,
         signal.SIGSEGV),
        # the region starts mid-page: the byte before it is slack, checked at the unmap
        ("before-payload", "blocksize=1100", "access before the block", "a write", 3,
         signal.SIGABRT),
        # a prefix of 10 leaves slack after maxsize (the payload is aligned, not the end)
        ("past-maxsize", "blocksize=1000 prefix=10", "access past maxsize", "a write", 3,
         signal.SIGABRT),
    ]

    def test_each_violation_stops_the_process_at_the_instruction(self):
        for damage, source, kind, access, _n, sig in self.CASES:
            with self.subTest(damage=damage, source=source):
                proc = launch(scribble(damage, source=source), None, tracer="guard=protect")
                self.assertEqual(proc.returncode, -sig, proc.stderr[-2000:])
                reports = REPORT.findall(proc.stderr)
                self.assertEqual(reports, [(kind, access)], proc.stderr[-2000:])
                self.assertIn("element running: memkitscribble0, "
                              "last mapped by: memkitscribble0", proc.stderr)
                self.assertIn("thread: memsrc0:src", proc.stderr)
                self.assertRegex(proc.stderr, r"block: region 0x[0-9a-f]+\.\.0x[0-9a-f]+ "
                                              r"\(maxsize \d+, allocated with offset \d+ and "
                                              r"size \d+\), mappings alive: \d READ, \d WRITE")
                # the frame that did it (memkitscribble's static function), or the unmap
                # that found it (from 1.28 gst_memory_unmap ends in a jump to
                # gst_map_info_clear, and only the latter has a frame)
                where = (r"libgstmemkittest\.so" if sig == signal.SIGSEGV
                         else r"\((gst_memory_unmap|gst_map_info_clear)\+")
                trace = proc.stderr.split("backtrace", 1)[1]
                self.assertRegex(trace.splitlines()[1], where, proc.stderr[-3000:])
                if sig == signal.SIGABRT:
                    self.assertIn("found: in the slack beside the region, when its last WRITE "
                                  "mapping ended", proc.stderr)

    def test_continue_mode_lists_each_violation_by_element_and_reaches_eos(self):
        kinds = {"write through a READ mapping": "write-through-read",
                 "access with no mapping alive": "no-mapping",
                 "access after free": "after-free",
                 "access before the block": "before-block",
                 "access past maxsize": "past-maxsize"}
        for damage, source, kind, access, n, _sig in self.CASES:
            with self.subTest(damage=damage, source=source), \
                    tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "report.json")
                proc = launch(scribble(damage, source=source), None,
                              tracer=f"guard=protect-continue,report={path}", quiet=False)
                self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
                self.assertIn("Got EOS from element", proc.stdout)
                self.assertEqual(REPORT.findall(proc.stderr), [(kind, access)] * n)
                self.assertRegex(proc.stderr, rf"protect +continue, {n} violations: {kind} {n}\n"
                                              rf" +memkitscribble0: {kind} {n} "
                                              r"\(block last mapped by memkitscribble0\)")
                with open(path) as f:
                    report = json.load(f)
                self.assertEqual(report["protect"], "continue")
                self.assertEqual(report["protect-violations"][kinds[kind]], n)
                self.assertEqual(report["protect-by-element"],
                                 [{"element": "memkitscribble0", "kind": kinds[kind],
                                   "last-mapped-by": "memkitscribble0", "count": n}])

    def test_the_environment_switch_works_without_the_tracer(self):
        proc = launch(scribble("write-read-mapped"), "protect")
        self.assertEqual(proc.returncode, -signal.SIGSEGV, proc.stderr[-2000:])
        self.assertEqual(REPORT.findall(proc.stderr), [("write through a READ mapping", "a write")])
        self.assertIn("element running: unknown, last mapped by: unknown", proc.stderr)
        proc = launch(scribble("after-unmap"), "protect-continue")
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertEqual(len(REPORT.findall(proc.stderr)), 3)

    def test_the_tracer_parameters(self):
        # protect=<nick> sets the same mode as guard=protect-continue
        proc = launch(scribble("after-unmap", 1), None, tracer="protect=continue")
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertIn("protect       continue, 1 violations", proc.stderr)
        # guard=true is the canary guard mode, as before: no protect line
        proc = launch(scribble("none", 1), None, tracer="guard=true")
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertIn("guard         on, 0 violations", proc.stderr)
        self.assertNotIn("protect ", proc.stderr)
        # a mode that does not exist is refused with a warning (not fatal here)
        env = dict(os.environ, GST_TRACERS="memkittracer(guard=sometimes)")
        env.pop("MEMKIT_GUARD", None)
        env.pop("G_DEBUG", None)
        proc = subprocess.run(["gst-launch-1.0", "-q", *scribble("none", 1).split()], env=env,
                              capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertIn('guard="sometimes" is not a mode (true, false, protect, protect-continue)',
                      proc.stderr)
        self.assertIn("guard         off, 0 violations", proc.stderr)
        env["GST_TRACERS"] = "memkittracer(colour=blue)"
        proc = subprocess.run(["gst-launch-1.0", "-q", *scribble("none", 1).split()], env=env,
                              capture_output=True, text=True, timeout=TIMEOUT)
        self.assertIn('"colour" is not a parameter', proc.stderr)

    def test_gst_inspect_shows_the_tracer_parameters(self):
        version = subprocess.run(["gst-launch-1.0", "--gst-version"], capture_output=True,
                                 text=True).stdout
        minor = int(re.search(r"version 1\.(\d+)", version).group(1))
        proc = subprocess.run(["gst-inspect-1.0", "memkittracer"], capture_output=True,
                              text=True, timeout=TIMEOUT)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("MemkitTracer", proc.stdout)
        if minor >= 26:  # older gst-inspect-1.0 lists no tracer properties
            self.assertRegex(proc.stdout, r"protect +: Protect mode")
            self.assertIn('Enum "MemkitProtectMode" Default: 0, "off"', proc.stdout)
            for nick in ["off", "abort", "continue"]:
                self.assertRegex(proc.stdout, rf"\(\d\): {nick} +- ")
            self.assertIn("guard=protect-continue", proc.stdout)
            self.assertRegex(proc.stdout, r"fail-on-violation +: When the process exits, make "
                             r"its exit status 66 if any protect-mode or guard-mode violation")

    def test_the_mappings_alive_are_reported(self):
        proc = launch(scribble("write-read-mapped", 1), "protect")
        self.assertIn("mappings alive: 1 READ, 0 WRITE", proc.stderr)
        proc = launch(scribble("after-unmap", 1), "protect")
        self.assertIn("mappings alive: 0 READ, 0 WRITE", proc.stderr)

    def test_without_protect_mode_nothing_is_reported(self):
        for damage, source, _kind, _access, _n, _sig in self.CASES:
            if damage == "before-payload":
                continue  # without protect mode it corrupts the heap (malloc's header)
            proc = launch(scribble(damage, source=source), "")
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
            report = os.path.join(tmp, "report.json")
            for pipeline in pipelines:
                with self.subTest(pipeline=pipeline):
                    # the tracer makes AlignedMemory every element's default allocator;
                    # continue mode would list every violation
                    proc = launch(pipeline, None,
                                  tracer=f"guard=protect-continue,report={report}")
                    self.assertEqual(proc.returncode, 0, f"{pipeline}\n{proc.stderr[-2000:]}")
                    self.assertNotIn("memkit protect", proc.stderr)
                    with open(report) as f:
                        r = json.load(f)
                    self.assertEqual(r["protect"], "continue")
                    self.assertEqual(sum(r["protect-violations"].values()), 0)
                    self.assertGreater(r["stats"]["allocations"], 0, "AlignedMemory was used")

    def test_an_appsrc_appsink_application_runs_clean(self):
        with tempfile.TemporaryDirectory() as tmp:
            report = os.path.join(tmp, "report.json")
            env = dict(os.environ, G_DEBUG="fatal_warnings",
                       GST_TRACERS=f"memkittracer(guard=protect,report={report})")
            env.pop("MEMKIT_GUARD", None)
            proc = subprocess.run(["/usr/bin/python3", "-c", APP_PIPELINE], env=env,
                                  capture_output=True, text=True, timeout=TIMEOUT)
            self.assertEqual((proc.returncode, proc.stdout.strip()), (0, "20"),
                             proc.stderr[-2000:])
            self.assertNotIn("memkit protect", proc.stderr)
            with open(report) as f:
                r = json.load(f)
            self.assertEqual(r["protect"], "abort")
            self.assertGreaterEqual(r["stats"]["allocations"], 20)

    def test_faults_name_their_element_with_more_than_a_thousand_threads_at_work(self):
        env = dict(os.environ, G_DEBUG="fatal_warnings",
                   GST_TRACERS="memkittracer(guard=protect-continue)")
        env.pop("MEMKIT_GUARD", None)
        proc = subprocess.run(["/usr/bin/python3", "-c", MANY_THREADS_APP, "600"], env=env,
                              capture_output=True, text=True, timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        running = re.findall(r"element running: ([^,]+),", proc.stderr)
        self.assertEqual(running, ["crowded"] * 3 + ["after"] * 3)

    def test_the_overlay_global_alpha_bug_of_gstreamer_is_found(self):
        script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts",
                              "overlay-global-alpha.py")
        env = dict(os.environ, G_DEBUG="fatal_warnings")
        env.pop("GST_TRACERS", None)
        env.pop("MEMKIT_GUARD", None)
        # without protect mode the library writes through its READ mapping unnoticed
        proc = subprocess.run(["/usr/bin/python3", script], env=env, capture_output=True,
                              text=True, timeout=TIMEOUT)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertIn("alpha after the global alpha was applied: 127", proc.stdout)
        env["MEMKIT_GUARD"] = "protect"
        proc = subprocess.run(["/usr/bin/python3", script], env=env, capture_output=True,
                              text=True, timeout=TIMEOUT)
        self.assertEqual(proc.returncode, -signal.SIGSEGV, proc.stderr[-2000:])
        self.assertEqual(REPORT.findall(proc.stderr), [("write through a READ mapping", "a write")])
        trace = proc.stderr.split("backtrace", 1)[1]
        self.assertIn("libgstvideo-1.0.so", trace.splitlines()[1])
        self.assertRegex(trace, r"jumped to \(tail call\) by: .*"
                                r"gst_video_overlay_rectangle_get_pixels_unscaled_argb")


# An application whose code writes through a READ mapping, then ends normally (exit status 0
# of its own): fail-on-violation makes it 66.
VIOLATING_APP = """
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
Gst.Plugin.load_by_name("memkittest")
p = Gst.parse_launch("memsrc num-buffers=2 blocksize=1100 ! memkitscribble damage={damage} ! "
                     "fakesink")
p.set_state(Gst.State.PLAYING)
msg = p.get_bus().timed_pop_filtered(Gst.CLOCK_TIME_NONE,
                                     Gst.MessageType.EOS | Gst.MessageType.ERROR)
assert msg.type == Gst.MessageType.EOS, msg
p.set_state(Gst.State.NULL)
print("done")
"""

FAIL_LINE = re.compile(r"^memkit: fail-on-violation: (\d+) protect and (\d+) guard violations "
                       r"counted: exit status 66$", re.M)


class FailOnViolationTest(unittest.TestCase):
    """fail-on-violation=true: a process in which a violation was counted exits with 66."""

    def test_a_violation_makes_gst_launch_exit_66(self):
        proc = launch(scribble("write-read-mapped"), None,
                      tracer="guard=protect-continue,fail-on-violation=true")
        self.assertEqual(proc.returncode, 66, proc.stderr[-2000:])
        self.assertEqual(FAIL_LINE.findall(proc.stderr), [("3", "0")])
        # the report still comes first, whole
        self.assertIn("protect       continue, 3 violations", proc.stderr)

    def test_without_it_or_without_a_violation_the_status_is_the_programs(self):
        proc = launch(scribble("write-read-mapped"), None, tracer="guard=protect-continue")
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertNotIn("fail-on-violation", proc.stderr)
        proc = launch(scribble("none"), None,
                      tracer="guard=protect-continue,fail-on-violation=true")
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertNotIn("fail-on-violation", proc.stderr)
        # a failing pipeline keeps its own status
        proc = launch("memsrc num-buffers=1 ! memcheck memory-type=fd fail-on-violation=true ! "
                      "fakesink async=false", None,
                      tracer="guard=protect-continue,fail-on-violation=true")
        self.assertEqual(proc.returncode, 1, proc.stderr[-2000:])

    def test_guard_mode_violations_count_too(self):
        proc = launch(scribble("past-maxsize", 2), None, tracer="guard=true,fail-on-violation=true")
        self.assertEqual(proc.returncode, 66, proc.stderr[-2000:])
        self.assertEqual(FAIL_LINE.findall(proc.stderr), [("0", "2")])

    def test_an_application_that_ends_normally_exits_66(self):
        env = dict(os.environ, G_DEBUG="fatal_warnings",
                   GST_TRACERS="memkittracer(guard=protect-continue,fail-on-violation=true)")
        env.pop("MEMKIT_GUARD", None)
        for damage, status in (("after-unmap", 66), ("none", 0)):
            with self.subTest(damage=damage):
                proc = subprocess.run(["/usr/bin/python3", "-c",
                                       VIOLATING_APP.replace("{damage}", damage)],
                                      env=env, capture_output=True, text=True, timeout=TIMEOUT)
                self.assertEqual((proc.returncode, proc.stdout.strip()), (status, "done"),
                                 proc.stderr[-2000:])

    def test_a_gst_check_suite_fails_the_test_that_violates(self):
        exe = os.environ.get("MEMKIT_VIOLATING_CHECK")
        if not exe:
            self.skipTest("MEMKIT_VIOLATING_CHECK is not set (meson test sets it)")
        env = dict(os.environ, GST_TRACERS="memkittracer(guard=protect-continue,"
                                           "fail-on-violation=true)")
        env.pop("MEMKIT_GUARD", None)
        env.pop("G_DEBUG", None)
        # forked (check's default): the violating test is an error, the clean one passes
        proc = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=TIMEOUT)
        out = proc.stdout + proc.stderr
        self.assertNotEqual(proc.returncode, 0, out[-2000:])
        self.assertIn("50%: Checks: 2, Failures: 0, Errors: 1", out)
        self.assertRegex(out, r":E:general:test_writes_through_a_read_mapping:.*"
                              r"Early exit with return value 66")
        # one process (CK_FORK=no): every test passes, the process exits 66
        proc = subprocess.run([exe], env=dict(env, CK_FORK="no"), capture_output=True,
                              text=True, timeout=TIMEOUT)
        out = proc.stdout + proc.stderr
        self.assertEqual(proc.returncode, 66, out[-2000:])
        self.assertIn("100%: Checks: 2, Failures: 0, Errors: 0", out)
        # and without fail-on-violation the suite passes: the violation is only reported
        env["GST_TRACERS"] = "memkittracer(guard=protect-continue)"
        proc = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(proc.returncode, 0, (proc.stdout + proc.stderr)[-2000:])
        self.assertIn("memkit protect: write through a READ mapping", proc.stderr)


if __name__ == "__main__":
    unittest.main()
