# SPDX-License-Identifier: MPL-2.0
"""GStreamer's own bugs that protect mode catches: each reproducer of docs/gstreamer-bugs.md
dies in protect mode with the report naming the violation, the library and the element, and
runs to its end without memkit. Known-bug tests: they pass while the bug is in the installed
GStreamer, and fail (saying so) once it is fixed there.

A reproducer whose elements are not installed (the 1.28 stage has only core, a minimal
gst-plugins-base and unixfd) is skipped. The overlay's global-alpha bug has its test in
test_protect.py. Run with Debian's /usr/bin/python3, GST_PLUGIN_PATH holding the memkit plugin.
"""

import os
import re
import signal
import subprocess
import unittest

TIMEOUT = 120
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
REPORT = re.compile(r"^memkit protect: (.+?) \((a read|a write)\) at 0x[0-9a-f]+", re.M)
FRAME = re.compile(r"^\s+(\S+?)\((\S*?)\)\[0x[0-9a-f]+\]$", re.M)

# name: (the reproducer: a gst-launch-1.0 pipeline, run with the tracer in protect mode, or a
# Python program, run with MEMKIT_GUARD=protect; the elements it needs; the report's kind; read
# or write; the plugin of the first frame in a plugin (frames of a library the plugin calls
# may precede it); the element running, or None when the tracer does
# not know it there: a thread that pushed nothing yet, or an event rather than a buffer)
BUGS = {
    "matroskamux-ebml-read-after-unmap": (
        "audiotestsrc num-buffers=1 ! matroskamux ! fakesink", ["matroskamux"],
        "access with no mapping alive", "a read", "libgstmatroska.so", "matroskamux0"),
    "mpegtsmux-write-through-read-map": (
        "audiotestsrc num-buffers=1 ! opusenc ! mpegtsmux ! fakesink", ["opusenc", "mpegtsmux"],
        "write through a READ mapping", "a write", "libgstmpegtsmux.so", None),
    "rglimiter-write-through-read-map": (
        "audiotestsrc num-buffers=1 wave=square ! audio/x-raw,format=F32LE ! rglimiter ! "
        "fakesink", ["rglimiter"],
        "write through a READ mapping", "a write", "libgstreplaygain.so", "rglimiter0"),
    "rtph261depay-writes-its-input": (
        ["/usr/bin/python3", os.path.join(ROOT, "tests", "gstreamer-bugs", "rtph261depay.py")],
        ["appsrc", "rtph261depay"],
        "write through a READ mapping", "a write", "libgstrtp.so", None),
    "rtpmp4adepay-config-write-through-read-map": (
        ["/usr/bin/python3", os.path.join(ROOT, "tests", "gstreamer-bugs", "rtpmp4adepay.py")],
        ["appsrc", "rtpmp4adepay"],
        "write through a READ mapping", "a write", "libgstrtp.so", None),
    "speexenc-stereo-write-through-read-map": (
        "audiotestsrc num-buffers=1 ! audio/x-raw,rate=16000,channels=2 ! speexenc ! fakesink",
        ["speexenc"], "write through a READ mapping", "a write", "libgstspeex.so", "speexenc0"),
    "jifmux-read-after-unmap": (
        "videotestsrc num-buffers=1 ! jpegenc ! jifmux ! fakesink", ["jpegenc", "jifmux"],
        "access with no mapping alive", "a read", "libgstjpegformat.so", "jifmux0"),
    "pnmdec-ascii-read-after-flush": (
        "videotestsrc num-buffers=1 ! video/x-raw,format=GRAY8,width=16,height=16 ! "
        "pnmenc ascii=true ! pnmdec ! fakesink", ["pnmenc", "pnmdec"],
        "access with no mapping alive", "a read", "libgstpnm.so", "pnmdec0"),
    "rgb2bayer-write-through-read-map": (
        "videotestsrc num-buffers=1 ! video/x-raw,format=ARGB,width=64,height=64 ! rgb2bayer ! "
        "fakesink", ["rgb2bayer"],
        "write through a READ mapping", "a write", "libgstbayer.so", "rgb2bayer0"),
    "zxing-reads-past-the-frame": (
        "videotestsrc num-buffers=1 ! video/x-raw,format=xRGB,width=64,height=64 ! zxing ! "
        "fakesink", ["zxing"], "access past maxsize", "a read", "libgstzxing.so", "zxing0"),
    "av1enc-read-after-unmap": (
        "videotestsrc num-buffers=1 ! video/x-raw,width=64,height=64 ! av1enc cpu-used=8 ! "
        "fakesink", ["av1enc"],
        "access with no mapping alive", "a read", "libgstaom.so", "av1enc0"),
    "amrnbenc-write-through-read-map": (
        "audiotestsrc num-buffers=1 ! audio/x-raw,rate=8000,channels=1 ! amrnbenc ! fakesink",
        ["amrnbenc"], "write through a READ mapping", "a write", "libgstamrnb.so", "amrnbenc0"),
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
        argv = reproducer
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)


class GStreamerBugsTest(unittest.TestCase):
    def check(self, name):
        reproducer, needs, kind, access, library, element = BUGS[name]
        missing = [e for e in needs if not have(e)]
        if missing:
            self.skipTest(f"no {', '.join(missing)} in this GStreamer")
        plain = reproduce(reproducer, protect=False)
        self.assertEqual(plain.returncode, 0, plain.stderr[-2000:])
        self.assertNotIn("memkit protect", plain.stderr)
        proc = reproduce(reproducer, protect=True)
        reports = REPORT.findall(proc.stderr)
        self.assertTrue(reports, f"{name}: no violation reported; fixed in this GStreamer? "
                                 f"(exit {proc.returncode})\n{proc.stderr[-2000:]}")
        self.assertEqual(proc.returncode, -signal.SIGSEGV, proc.stderr[-2000:])
        self.assertEqual(reports, [(kind, access)])
        frames = FRAME.findall(proc.stderr.split("backtrace", 1)[1])
        # a plugin's file is libgstNAME.so; GStreamer's libraries are libgstNAME-1.0.so.0
        plugins = [os.path.basename(lib) for lib, _ in frames
                   if re.match(r"libgst\w+\.so$", os.path.basename(lib))]
        self.assertEqual(plugins[:1], [library], proc.stderr[-2000:])
        running = re.search(r"element running: (\S+),", proc.stderr).group(1)
        if element is not None:
            self.assertEqual(running, element)

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
