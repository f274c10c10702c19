# SPDX-License-Identifier: MPL-2.0
"""GStreamer's own bugs that protect mode catches: each reproducer of docs/gstreamer-bugs.md
dies in protect mode with the report naming the violation, the element, and the function of
docs/gstreamer-bugs.md, and runs to its end without memkit. Known-bug tests: they pass while the
bug is in the installed GStreamer, and fail (saying so) once it is fixed there.

The function: Debian's plugins are stripped, so a report shows a static function as
`libgstX.so(+0x...)`. Where the installed plugin is the build the triage named
(scripts/protect_reports.py, TRIAGED, keyed by the library's build-id) the frame's offset must
be the named function's; where the plugin has symbols, addr2line's name must be it. Another
build without symbols cannot be checked there, and the test says so on standard error.

A reproducer whose elements are not installed (the 1.28 stage has only core, a minimal
gst-plugins-base and unixfd) is skipped. The overlay's global-alpha bug has its test in
test_protect.py. Run with Debian's /usr/bin/python3, GST_PLUGIN_PATH holding the memkit plugin.
"""

import os
import re
import signal
import subprocess
import sys
import unittest
from typing import NamedTuple, Optional

TIMEOUT = 120
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import protect_reports  # noqa: E402

REPORT = re.compile(r"^memkit protect: (.+?) \((a read|a write)\) at 0x[0-9a-f]+", re.M)
FRAME = re.compile(r"^\s+(\S+?)\((\S*?)\)\[0x[0-9a-f]+\]$")
WHERE = re.compile(r"^memkit protect: .* at 0x[0-9a-f]+, (\d+) bytes after the region base\n"
                   r"  block: .*allocated with offset (\d+) and size (\d+)\)", re.M)


class Bug(NamedTuple):
    # a gst-launch-1.0 pipeline, run with the tracer in protect mode; or a Python program, run
    # with MEMKIT_GUARD=protect and the tracer (which names the element)
    reproducer: object
    needs: list  # the elements it needs
    kind: str  # the report's kind
    access: str  # "a read" or "a write"
    library: str  # the plugin of the first frame in a plugin
    function: str  # that frame's function (docs/gstreamer-bugs.md)
    # the library of the frames before the plugin's: the library the plugin called
    callee: Optional[str] = None
    # the element running, or None where the tracer does not know it: an event rather than a
    # buffer (rtpmp4adepay's setcaps), a thread that pushed nothing yet (mpegtsmux's source)
    element: Optional[str] = None
    thread: Optional[str] = None  # the faulting thread's name
    # (bytes after the region base, allocated size) of the faulting access, where the
    # reproducer makes the buffer itself
    at: Optional[tuple] = None


def python(name):
    return ["/usr/bin/python3", os.path.join(ROOT, "tests", "gstreamer-bugs", name)]


BUGS = {
    "matroskamux-ebml-read-after-unmap": Bug(
        "audiotestsrc num-buffers=1 ! matroskamux ! fakesink", ["matroskamux"],
        "access with no mapping alive", "a read", "libgstmatroska.so",
        "gst_ebml_write_element_push", callee="libc.so.6", element="matroskamux0"),
    "mpegtsmux-write-through-read-map": Bug(
        "audiotestsrc num-buffers=1 ! opusenc ! mpegtsmux ! fakesink", ["opusenc", "mpegtsmux"],
        "write through a READ mapping", "a write", "libgstmpegtsmux.so",
        "tsmux_write_ts_header", thread="mpegtsmux0:src"),
    "rglimiter-write-through-read-map": Bug(
        "audiotestsrc num-buffers=1 wave=square ! audio/x-raw,format=F32LE ! rglimiter ! "
        "fakesink", ["rglimiter"], "write through a READ mapping", "a write",
        "libgstreplaygain.so", "gst_rg_limiter_transform_ip", element="rglimiter0"),
    # byte 16 of the 108-byte packet: the first payload byte, after the 12-byte RTP header and
    # the 4-byte H.261 header
    "rtph261depay-writes-its-input": Bug(
        python("rtph261depay.py"), ["appsrc", "rtph261depay"],
        "write through a READ mapping", "a write", "libgstrtp.so",
        "gst_rtp_h261_depay_process", element="rtph261depay0", at=(16, 108)),
    # byte 0 of the 4 bytes of the caps' config (40002410), on the application's thread
    "rtpmp4adepay-config-write-through-read-map": Bug(
        python("rtpmp4adepay.py"), ["appsrc", "rtpmp4adepay"],
        "write through a READ mapping", "a write", "libgstrtp.so",
        "gst_rtp_mp4a_depay_setcaps", thread="src:src", at=(0, 4)),
    "speexenc-stereo-write-through-read-map": Bug(
        "audiotestsrc num-buffers=1 ! audio/x-raw,rate=16000,channels=2 ! speexenc ! fakesink",
        ["speexenc"], "write through a READ mapping", "a write", "libgstspeex.so",
        "gst_speex_enc_encode", callee="libspeex.so.1", element="speexenc0"),
    "jifmux-read-after-unmap": Bug(
        "videotestsrc num-buffers=1 ! jpegenc ! jifmux ! fakesink", ["jpegenc", "jifmux"],
        "access with no mapping alive", "a read", "libgstjpegformat.so", "gst_jif_mux_chain",
        element="jifmux0"),
    "pnmdec-ascii-read-after-flush": Bug(
        "videotestsrc num-buffers=1 ! video/x-raw,format=GRAY8,width=16,height=16 ! "
        "pnmenc ascii=true ! pnmdec ! fakesink", ["pnmenc", "pnmdec"],
        "access with no mapping alive", "a read", "libgstpnm.so", "gst_pnmdec_parse_ascii",
        callee="libglib-2.0.so.0", element="pnmdec0"),
    "rgb2bayer-write-through-read-map": Bug(
        "videotestsrc num-buffers=1 ! video/x-raw,format=ARGB,width=64,height=64 ! rgb2bayer ! "
        "fakesink", ["rgb2bayer"], "write through a READ mapping", "a write", "libgstbayer.so",
        "gst_rgb2bayer_transform", element="rgb2bayer0"),
    "zxing-reads-past-the-frame": Bug(
        "videotestsrc num-buffers=1 ! video/x-raw,format=xRGB,width=64,height=64 ! zxing ! "
        "fakesink", ["zxing"], "access past maxsize", "a read", "libgstzxing.so",
        "gst_zxing_transform_frame_ip", callee="libZXing.so", element="zxing0"),
    "av1enc-read-after-unmap": Bug(
        "videotestsrc num-buffers=1 ! video/x-raw,width=64,height=64 ! av1enc cpu-used=8 ! "
        "fakesink", ["av1enc"], "access with no mapping alive", "a read", "libgstaom.so",
        "gst_av1_enc_handle_frame", callee="libaom.so", element="av1enc0"),
    "amrnbenc-write-through-read-map": Bug(
        "audiotestsrc num-buffers=1 ! audio/x-raw,rate=8000,channels=1 ! amrnbenc ! fakesink",
        ["amrnbenc"], "write through a READ mapping", "a write", "libgstamrnb.so",
        "gst_amrnbenc_handle_frame", callee="libopencore-amrnb.so", element="amrnbenc0"),
}


def have(element):
    return subprocess.run(["gst-inspect-1.0", "--exists", element]).returncode == 0


def reproduce(reproducer, protect):
    """Runs a reproducer in protect mode (abort at the first violation), or without memkit."""
    env = dict(os.environ, G_DEBUG="fatal_warnings")
    env.pop("GST_TRACERS", None)
    env.pop("MEMKIT_GUARD", None)
    if isinstance(reproducer, str):
        if protect:
            env["GST_TRACERS"] = "memkittracer(guard=protect)"
        argv = ["gst-launch-1.0", "-q", *reproducer.split()]
    else:
        if protect:
            env["MEMKIT_GUARD"] = "protect"
            env["GST_TRACERS"] = "memkittracer"  # names the element running
        argv = reproducer
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def function_known(lib, offset):
    """Whether the function at lib's offset can be known here: lib is the build the triage
    named, or has symbols, or the report named the function itself."""
    if not offset.startswith("+"):
        return True
    key = (os.path.basename(lib), protect_reports.build_id(lib))
    return key in protect_reports.TRIAGED or protect_reports.has_symbols(lib)


class GStreamerBugsTest(unittest.TestCase):
    def check(self, name):
        bug = BUGS[name]
        missing = [e for e in bug.needs if not have(e)]
        if missing:
            self.skipTest(f"no {', '.join(missing)} in this GStreamer")
        plain = reproduce(bug.reproducer, protect=False)
        self.assertEqual(plain.returncode, 0, plain.stderr[-2000:])
        self.assertNotIn("memkit protect", plain.stderr)
        proc = reproduce(bug.reproducer, protect=True)
        err = proc.stderr[-3000:]
        reports = REPORT.findall(proc.stderr)
        self.assertTrue(reports, f"{name}: no violation reported; fixed in this GStreamer? "
                                 f"(exit {proc.returncode})\n{err}")
        self.assertEqual(proc.returncode, -signal.SIGSEGV, err)
        self.assertEqual(reports, [(bug.kind, bug.access)])
        report = protect_reports.blocks(proc.stderr)[0]
        frames = [(line, m.group(1), m.group(2)) for line in report
                  for m in [FRAME.match(line)] if m]
        # a plugin's file is libgstNAME.so; GStreamer's libraries are libgstNAME-1.0.so.0
        first = next((i for i, (_, lib, _) in enumerate(frames)
                      if re.match(r"libgst\w+\.so$", os.path.basename(lib))), None)
        self.assertIsNotNone(first, err)
        line, lib, offset = frames[first]
        self.assertEqual(os.path.basename(lib), bug.library, err)
        # the frames before the plugin's are the library it called, or none
        callees = {os.path.basename(lib) for _, lib, _ in frames[:first]}
        if bug.callee is None:
            self.assertEqual(callees, set(), err)
        else:
            self.assertTrue(callees and all(c.startswith(bug.callee) for c in callees),
                            f"frames before {bug.library}'s: {callees}\n{err}")
        if function_known(lib, offset):
            named = protect_reports.function(line)
            self.assertTrue(named == bug.function or named.startswith(bug.function + " ("),
                            f"{bug.library}{offset} is {named}, not {bug.function}\n{err}")
        else:
            print(f"{name}: {bug.library} is not the build the triage named and has no "
                  f"symbols: the function at {offset} is not checked", file=sys.stderr)
        running = protect_reports.element(report)[0]
        if bug.element is not None:
            self.assertEqual(running, bug.element, err)
        if bug.thread is not None:
            self.assertIn(f"  thread: {bug.thread}", report, err)
        if bug.at is not None:
            after, offset_in_block, size = map(int, WHERE.search(proc.stderr).groups())
            self.assertEqual((after - offset_in_block, size), bug.at, err)

    def test_matroskamux_reads_its_ebml_elements_after_unmapping_them(self):
        self.check("matroskamux-ebml-read-after-unmap")

    def test_mpegtsmux_writes_packets_through_a_read_mapping(self):
        self.check("mpegtsmux-write-through-read-map")

    def test_rglimiter_writes_samples_through_a_read_mapping(self):
        self.check("rglimiter-write-through-read-map")

    def test_rtph261depay_writes_into_the_packet_it_received(self):
        self.check("rtph261depay-writes-its-input")

    def test_rtpmp4adepay_writes_its_config_through_a_read_mapping(self):
        self.check("rtpmp4adepay-config-write-through-read-map")

    def test_speexenc_lets_libspeex_write_stereo_input_through_a_read_mapping(self):
        self.check("speexenc-stereo-write-through-read-map")

    def test_jifmux_reads_its_markers_after_unmapping_them(self):
        self.check("jifmux-read-after-unmap")

    def test_pnmdec_parses_ascii_after_flushing_its_adapter(self):
        self.check("pnmdec-ascii-read-after-flush")

    def test_rgb2bayer_writes_its_output_through_a_read_mapping(self):
        self.check("rgb2bayer-write-through-read-map")

    def test_zxing_lets_zxing_read_one_byte_past_the_frame(self):
        self.check("zxing-reads-past-the-frame")

    def test_av1enc_lets_libaom_read_the_frame_after_unmapping_it(self):
        self.check("av1enc-read-after-unmap")

    def test_amrnbenc_lets_opencore_write_its_input_through_a_read_mapping(self):
        self.check("amrnbenc-write-through-read-map")


if __name__ == "__main__":
    unittest.main()
