#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""Runs a corpus of stock pipelines in protect mode, and without memkit.

Each pipeline of CORPUS (what users run: decoders and encoders, muxers and demuxers, RTP,
overlays, compositing, video and audio filters, queues, applications) runs twice with
gst-launch-1.0 -e (a live one is stopped with SIGINT after a few seconds): with
GST_TRACERS="memkittracer(guard=protect-continue,report=...)" (the tracer makes protected
AlignedMemory the default allocator; continue mode reports every violation and goes on) and
without memkit. Prints one table: the pipeline, its exit with and
without memkit, the AlignedMemory blocks it allocated, and its violations by kind, by element
(the JSON report's `protect-by-element`) and by the first two functions of their backtraces
(standard error). Then each distinct violation with the pipelines it was seen in. Pipelines
that read a file name the pipeline that writes it (`needs`); `$T` is the scratch directory.

    /usr/bin/python3 scripts/hunt-pipelines.py [--only TEXT] [--work DIR] [--list]

Needs Debian's gstreamer1.0-plugins-good, -bad, -ugly and gstreamer1.0-libav (installed when
missing, as root; a pipeline whose elements are still missing is skipped and said so). Not
part of .ci/run: about ten minutes.
"""

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time

import debian_packages
import protect_reports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 180

V = "videotestsrc num-buffers=30 ! video/x-raw,width=320,height=240,framerate=30/1"
VI420 = V.replace("video/x-raw,", "video/x-raw,format=I420,")
A = "audiotestsrc num-buffers=30 ! audio/x-raw,rate=48000,channels=2"
S16 = "audiotestsrc num-buffers=30 ! audio/x-raw,format=S16LE,rate=44100,channels=2"

# An application: appsrc fed from Python, a jpeg round trip, appsink drained from Python.
APP = r"""
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
p = Gst.parse_launch("appsrc name=src format=time caps=video/x-raw,format=I420,width=64,"
                     "height=48,framerate=30/1 ! jpegenc ! jpegdec ! appsink name=sink")
src, sink = p.get_by_name("src"), p.get_by_name("sink")
p.set_state(Gst.State.PLAYING)
for i in range(20):
    buf = Gst.Buffer.new_allocate(None, 64 * 48 * 3 // 2, None)
    buf.memset(0, i * 10, 64 * 48 * 3 // 2)
    buf.pts = i * Gst.SECOND // 30
    buf.duration = Gst.SECOND // 30
    src.emit("push-buffer", buf)
    sample = sink.emit("pull-sample")
    ok, info = sample.get_buffer().map(Gst.MapFlags.READ)
    assert ok and info.size == 64 * 48 * 3 // 2
    sample.get_buffer().unmap(info)
src.emit("end-of-stream")
p.get_bus().timed_pop_filtered(10 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
p.set_state(Gst.State.NULL)
"""

# (name, pipeline or ["argv", ...], options: needs=<name>, eos_after=<seconds>)
CORPUS = [
    # image and video codecs
    ("jpegenc", f"{V} ! jpegenc ! fakesink", {}),
    ("jpegdec", f"{V} ! jpegenc ! jpegparse ! jpegdec ! videoconvert ! fakesink", {}),
    ("pngenc-file", "videotestsrc num-buffers=1 ! video/x-raw,width=64,height=64 ! pngenc ! "
                    "filesink location=$T/logo.png", {}),
    ("pngdec", f"{V} ! pngenc ! pngdec ! videoconvert ! fakesink", {}),
    ("vp8enc-webmmux", f"{V} ! vp8enc deadline=1 ! webmmux ! filesink location=$T/vp8.webm", {}),
    ("webm-vp8dec", "filesrc location=$T/vp8.webm ! matroskademux ! vp8dec ! videoconvert ! "
                    "fakesink", {"needs": "vp8enc-webmmux"}),
    ("vp9enc-matroskamux", f"{V} ! vp9enc deadline=1 ! matroskamux ! "
                           "filesink location=$T/vp9.mkv", {}),
    ("mkv-vp9dec", "filesrc location=$T/vp9.mkv ! matroskademux ! vp9dec ! fakesink",
     {"needs": "vp9enc-matroskamux"}),
    ("x264enc-mp4mux", f"{V} ! x264enc speed-preset=ultrafast ! h264parse ! mp4mux ! "
                       "filesink location=$T/h264.mp4", {}),
    ("mp4-avdec_h264", "filesrc location=$T/h264.mp4 ! qtdemux ! h264parse ! avdec_h264 ! "
                       "videoconvert ! fakesink", {"needs": "x264enc-mp4mux"}),
    ("x264enc-mpegtsmux", f"{V} ! x264enc speed-preset=ultrafast ! h264parse ! mpegtsmux ! "
                          "filesink location=$T/h264.ts", {}),
    ("ts-avdec_h264", "filesrc location=$T/h264.ts ! tsdemux ! h264parse ! avdec_h264 ! "
                      "fakesink", {"needs": "x264enc-mpegtsmux"}),
    ("x264enc-flvmux", f"{V} ! x264enc speed-preset=ultrafast ! h264parse ! flvmux ! "
                       "filesink location=$T/h264.flv", {}),
    ("flv-avdec_h264", "filesrc location=$T/h264.flv ! flvdemux ! h264parse ! avdec_h264 ! "
                       "fakesink", {"needs": "x264enc-flvmux"}),
    ("x264enc-matroskamux", f"{V} ! x264enc speed-preset=ultrafast ! h264parse ! matroskamux ! "
                            "filesink location=$T/h264.mkv", {}),
    ("mkv-avdec_h264", "filesrc location=$T/h264.mkv ! matroskademux ! h264parse ! avdec_h264 "
                       "! fakesink", {"needs": "x264enc-matroskamux"}),
    ("openh264", f"{V} ! openh264enc ! h264parse ! openh264dec ! fakesink", {}),
    ("x265enc-h265", f"{VI420} ! x265enc speed-preset=ultrafast ! h265parse ! avdec_h265 ! "
                     "fakesink", {}),
    ("theora-ogg", f"{V} ! theoraenc ! oggmux ! filesink location=$T/theora.ogg", {}),
    ("ogg-theoradec", "filesrc location=$T/theora.ogg ! oggdemux ! theoradec ! fakesink",
     {"needs": "theora-ogg"}),
    ("mpeg2-mpeg2dec", f"{VI420.replace('30/1', '25/1')} ! mpeg2enc ! mpegvideoparse ! mpeg2dec ! "
                       "fakesink", {}),
    ("mpeg4-avdec", f"{VI420} ! avenc_mpeg4 ! mpeg4videoparse ! avdec_mpeg4 ! fakesink", {}),
    ("av1enc", "videotestsrc num-buffers=5 ! video/x-raw,width=64,height=64 ! av1enc "
               "cpu-used=8 ! av1parse ! fakesink", {}),
    # audio codecs
    ("opus-ogg", f"{A} ! audioconvert ! opusenc ! oggmux ! filesink location=$T/opus.ogg", {}),
    ("ogg-opusdec", "filesrc location=$T/opus.ogg ! oggdemux ! opusparse ! opusdec ! "
                    "audioconvert ! fakesink", {"needs": "opus-ogg"}),
    ("vorbis-ogg", f"{A} ! audioconvert ! vorbisenc ! oggmux ! filesink "
                   "location=$T/vorbis.ogg", {}),
    ("ogg-vorbisdec", "filesrc location=$T/vorbis.ogg ! oggdemux ! vorbisdec ! audioconvert ! "
                      "fakesink", {"needs": "vorbis-ogg"}),
    ("flacenc", f"{S16} ! flacenc ! filesink location=$T/a.flac", {}),
    ("flacdec", "filesrc location=$T/a.flac ! flacparse ! flacdec ! audioconvert ! fakesink",
     {"needs": "flacenc"}),
    ("lamemp3enc", f"{S16} ! lamemp3enc ! filesink location=$T/a.mp3", {}),
    ("mp3-mpg123", "filesrc location=$T/a.mp3 ! mpegaudioparse ! mpg123audiodec ! "
                   "audioconvert ! fakesink", {"needs": "lamemp3enc"}),
    ("aac-mp4", f"{A} ! audioconvert ! avenc_aac ! aacparse ! mp4mux ! "
                "filesink location=$T/aac.mp4", {}),
    ("mp4-avdec_aac", "filesrc location=$T/aac.mp4 ! qtdemux ! aacparse ! avdec_aac ! "
                      "audioconvert ! fakesink", {"needs": "aac-mp4"}),
    ("ac3-a52dec", f"{A} ! audioconvert ! avenc_ac3 ! ac3parse ! a52dec ! fakesink", {}),
    ("wav", f"{S16} ! wavenc ! filesink location=$T/a.wav", {}),
    ("wavparse", "filesrc location=$T/a.wav ! wavparse ! audioconvert ! fakesink",
     {"needs": "wav"}),
    ("speex", f"{S16} ! audioresample ! audio/x-raw,rate=16000 ! speexenc ! speexdec ! "
              "fakesink", {}),
    ("wavpack", f"{S16} ! audioconvert ! wavpackenc ! wavpackparse ! wavpackdec ! fakesink", {}),
    ("mulaw-alaw", f"{S16} ! audioconvert ! audio/x-raw,channels=1 ! mulawenc ! mulawdec ! "
                   "alawenc ! alawdec ! fakesink", {}),
    # muxers and demuxers with both streams
    ("mp4mux-av", f"{V} ! x264enc speed-preset=ultrafast ! h264parse ! mp4mux name=m ! "
                  f"filesink location=$T/av.mp4 {A} ! audioconvert ! avenc_aac ! aacparse ! m.",
     {}),
    ("qtdemux-av", "filesrc location=$T/av.mp4 ! qtdemux name=d d.video_0 ! queue ! h264parse "
                   "! avdec_h264 ! fakesink d.audio_0 ! queue ! avdec_aac ! fakesink",
     {"needs": "mp4mux-av"}),
    ("matroskamux-av", f"{V} ! vp8enc deadline=1 ! matroskamux name=m ! filesink "
                       f"location=$T/av.mkv {A} ! audioconvert ! opusenc ! m.", {}),
    ("matroskademux-av", "filesrc location=$T/av.mkv ! matroskademux name=d d.video_0 ! "
                         "queue ! vp8dec ! fakesink d.audio_0 ! queue ! opusdec ! fakesink",
     {"needs": "matroskamux-av"}),
    ("avimux", f"{V} ! jpegenc ! avimux name=m ! filesink location=$T/a.avi {S16} ! m.", {}),
    ("avidemux", "filesrc location=$T/a.avi ! avidemux name=d d.video_0 ! queue ! jpegdec ! "
                 "fakesink d.audio_0 ! queue ! fakesink", {"needs": "avimux"}),
    ("mpegtsmux-av", f"{V} ! x264enc speed-preset=ultrafast ! h264parse ! mpegtsmux name=m ! "
                     f"filesink location=$T/av.ts {A} ! audioconvert ! avenc_aac ! aacparse ! "
                     "m.", {}),
    ("playbin", "playbin uri=file://$T/av.ts video-sink=fakesink audio-sink=fakesink",
     {"needs": "mpegtsmux-av"}),
    ("uridecodebin-mkv", "uridecodebin uri=file://$T/av.mkv name=d d. ! queue ! videoconvert "
                         "! fakesink d. ! queue ! audioconvert ! fakesink",
     {"needs": "matroskamux-av"}),
    # (x264enc ! h264parse ! splitmuxsink hangs at EOS on Debian's 1.22, without memkit too)
    ("splitmuxsink", f"{V} ! jpegenc ! splitmuxsink muxer=matroskamux "
                     "location=$T/split%02d.mkv max-size-time=300000000", {}),
    ("splitmuxsrc", "splitmuxsrc location=$T/split*.mkv ! jpegdec ! fakesink",
     {"needs": "splitmuxsink"}),
    ("multifilesink", f"{V} ! pngenc ! multifilesink location=$T/frame%03d.png", {}),
    ("multifilesrc", "multifilesrc location=$T/frame%03d.png caps=image/png,framerate=30/1 ! "
                     "pngdec ! fakesink", {"needs": "multifilesink"}),
    ("y4menc", f"{VI420} ! y4menc ! filesink location=$T/a.y4m", {}),
    # RTP
    ("rtp-h264", f"{V} ! x264enc speed-preset=ultrafast ! rtph264pay ! rtph264depay ! "
                 "avdec_h264 ! fakesink", {}),
    ("rtp-vp8", f"{V} ! vp8enc deadline=1 ! rtpvp8pay ! rtpvp8depay ! vp8dec ! fakesink", {}),
    ("rtp-opus", f"{A} ! audioconvert ! opusenc ! rtpopuspay ! rtpopusdepay ! opusdec ! "
                 "fakesink", {}),
    ("rtp-L16", f"{S16} ! audioconvert ! audio/x-raw,format=S16BE ! rtpL16pay ! rtpL16depay ! "
                "fakesink", {}),
    ("rtp-jpeg", f"{V} ! jpegenc ! rtpjpegpay ! rtpjpegdepay ! jpegdec ! fakesink", {}),
    ("rtp-mp4a", f"{A} ! audioconvert ! avenc_aac ! rtpmp4apay ! rtpmp4adepay ! avdec_aac ! "
                 "fakesink", {}),
    ("rtp-mp2t", f"{V} ! x264enc speed-preset=ultrafast ! h264parse ! mpegtsmux ! rtpmp2tpay "
                 "! rtpmp2tdepay ! tsdemux ! h264parse ! avdec_h264 ! fakesink", {}),
    ("rtpbin-udp", "rtpbin name=tx videotestsrc is-live=true ! video/x-raw,width=320,"
                   "height=240,framerate=30/1 ! vp8enc deadline=1 ! rtpvp8pay ! "
                   "tx.send_rtp_sink_0 tx.send_rtp_src_0 ! udpsink host=127.0.0.1 port=50410 "
                   "tx.send_rtcp_src_0 ! udpsink host=127.0.0.1 port=50411 sync=false "
                   "async=false rtpbin name=rx udpsrc port=50410 caps=application/x-rtp,"
                   "media=video,encoding-name=VP8,clock-rate=90000,payload=96 ! "
                   "rx.recv_rtp_sink_0 udpsrc port=50411 ! rx.recv_rtcp_sink_0 rx. ! "
                   "rtpvp8depay ! vp8dec ! fakesink", {"eos_after": 4}),
    ("rtpjitterbuffer", f"{V} ! jpegenc ! rtpjpegpay ! rtpjitterbuffer ! rtpjpegdepay ! "
                        "jpegdec ! fakesink", {}),
    ("rtp-fec-rtx", f"{V} ! vp8enc deadline=1 ! rtpvp8pay ! rtpulpfecenc percentage=50 pt=122 "
                    "! rtprtxsend payload-type-map=application/x-rtp-pt-map,96=(uint)97 ! "
                    "fakesink", {}),
    # overlays
    ("textoverlay", f"{V} ! textoverlay text=memkit ! videoconvert ! fakesink", {}),
    ("clockoverlay", f"{V} ! clockoverlay ! fakesink", {}),
    ("timeoverlay", f"{VI420} ! timeoverlay ! fakesink", {}),
    ("gdkpixbufoverlay", f"{V} ! gdkpixbufoverlay location=$T/logo.png offset-x=10 ! "
                         "fakesink", {"needs": "pngenc-file"}),
    ("textrender", "filesrc location=$T/a.srt ! subparse ! textrender ! videoconvert ! "
                   "fakesink", {"needs": "srt-file"}),
    ("subtitle-overlay", f"{V} ! textoverlay name=o ! fakesink "
                         "filesrc location=$T/a.srt ! subparse ! o.text_sink",
     {"needs": "srt-file"}),
    # compositing and video filters
    ("compositor", f"compositor name=c sink_1::xpos=100 ! videoconvert ! fakesink {V} ! c. "
                   f"{V.replace('videotestsrc', 'videotestsrc pattern=ball')} ! c.", {}),
    ("videomixer", f"videomixer name=c ! fakesink {VI420} ! c. {VI420} ! c.", {}),
    ("videobox", f"{V} ! videobox top=10 left=-20 border-alpha=0.5 ! videoconvert ! fakesink",
     {}),
    ("videocrop", f"{V} ! videocrop top=10 left=20 right=4 ! videoconvert ! fakesink", {}),
    ("videoflip", f"{V} ! videoflip method=clockwise ! fakesink", {}),
    ("interlace-deinterlace", f"{VI420} ! interlace ! deinterlace ! fakesink", {}),
    ("videoscale-convert-rate", f"{V} ! videoscale ! video/x-raw,width=640,height=360 ! "
                                "videoconvert ! video/x-raw,format=NV12 ! videorate ! "
                                "video/x-raw,framerate=15/1 ! fakesink", {}),
    ("alpha", f"{V} ! alpha method=green ! videoconvert ! fakesink", {}),
    ("imagefreeze", "filesrc location=$T/logo.png ! pngdec ! imagefreeze num-buffers=20 ! "
                    "videoconvert ! fakesink", {"needs": "pngenc-file"}),
    ("effectv", f"{V} ! videoconvert ! agingtv ! videoconvert ! fakesink", {}),
    # audio
    ("audioresample", f"{A} ! audioresample ! audio/x-raw,rate=44100 ! fakesink", {}),
    ("audioconvert", f"{A} ! audioconvert ! audio/x-raw,format=S16LE,channels=1 ! fakesink",
     {}),
    ("audiomixer", f"audiomixer name=m ! fakesink {A} ! m. "
                   f"{A.replace('audiotestsrc', 'audiotestsrc freq=880')} ! m.", {}),
    ("adder", f"adder name=m ! fakesink {S16} ! m. {S16} ! m.", {}),
    ("audio-filters", f"{A} ! audioconvert ! volume volume=0.5 ! equalizer-10bands band3=3 ! "
                      "audiopanorama panorama=0.3 ! audioecho delay=10000000 ! level ! "
                      "spectrum ! audioconvert ! fakesink", {}),
    ("interleave", f"interleave name=i ! audioconvert ! fakesink "
                   f"{A.replace('channels=2', 'channels=1')} ! i. "
                   f"{A.replace('channels=2', 'channels=1')} ! i.", {}),
    ("deinterleave", f"{A} ! deinterleave name=d d.src_0 ! queue ! fakesink d.src_1 ! queue ! "
                     "fakesink", {}),
    # flow: tee, queues, selectors
    ("tee-queue", f"{V} ! tee name=t t. ! queue ! videoconvert ! fakesink t. ! queue ! "
                  "timeoverlay ! fakesink", {}),
    ("multiqueue", f"{V} ! multiqueue name=q ! fakesink {A} ! q. q. ! fakesink", {}),
    ("queue2", f"{V} ! queue2 ring-buffer-max-size=10000000 ! fakesink", {}),
    ("funnel-selector", f"funnel name=f ! input-selector ! fakesink {V} ! f. {V} ! f.", {}),
    ("valve-identity", f"{V} ! valve ! identity check-imperfect-timestamp=true ! fakesink", {}),
    ("tcp", "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 ! "
            "jpegenc ! gdppay ! tcpserversink host=127.0.0.1 port=50413 "
            "tcpclientsrc host=127.0.0.1 port=50413 ! gdpdepay ! jpegdec ! fakesink async=false",
     {"eos_after": 4}),
    ("appsrc-appsink", ["/usr/bin/python3", "-c", APP], {}),
]
# Files the corpus writes without needing a pipeline of its own.
FILES = {"srt-file": ("a.srt", "1\n00:00:00,000 --> 00:00:00,800\nmemkit\n\n"
                                "2\n00:00:00,800 --> 00:00:01,000\nprotect\n")}


def elements_of(pipeline):
    if isinstance(pipeline, list):
        return []
    names = re.findall(r"(?:^|!\s*|\s)([a-z][a-z0-9_]*[a-z0-9])(?=\s|$)", pipeline)
    return sorted({n for n in names if "=" not in n and not n.startswith("video_")
                   and n not in ("t", "m", "d", "i", "f", "c", "o", "q", "rx", "tx")})


def missing(pipeline, cache={}):
    out = []
    for e in elements_of(pipeline):
        if e not in cache:
            cache[e] = subprocess.run(["gst-inspect-1.0", "--exists", e]).returncode == 0
        if not cache[e]:
            out.append(e)
    return out


def run(name, pipeline, opts, work, memkit):
    env = dict(os.environ)
    for k in ("GST_TRACERS", "MEMKIT_GUARD", "GST_PLUGIN_PATH", "GST_DEBUG"):
        env.pop(k, None)
    report = os.path.join(work, "logs", f"{name}.json")
    if os.path.exists(report):
        os.unlink(report)
    if memkit:
        env["GST_PLUGIN_PATH"] = os.path.join(ROOT, "builddir")
        env["GST_TRACERS"] = f"memkittracer(guard=protect-continue,report={report})"
    tmp = os.path.join(work, "files")
    if isinstance(pipeline, list):
        argv = pipeline
    else:
        # a live pipeline is stopped by SIGINT (to NULL, which writes the report): no -e
        eos = [] if "eos_after" in opts else ["-e"]
        argv = ["gst-launch-1.0", "-q", *eos, *pipeline.replace("$T", tmp).split()]
    start = time.monotonic()
    proc = subprocess.Popen(["nice", "-n", "10", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace",
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=opts.get("eos_after", TIMEOUT))
        status = proc.returncode
    except subprocess.TimeoutExpired:
        if "eos_after" in opts:  # a live pipeline: SIGINT, and gst-launch stops it
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
        status = proc.returncode if "eos_after" in opts else "timeout"
    with open(os.path.join(work, "logs", f"{name}.{'memkit' if memkit else 'plain'}.log"),
              "w") as f:
        f.write(f"status {status}, {time.monotonic() - start:.1f} s\n{err}")
    data = None
    if memkit and os.path.exists(report):
        with open(report) as f:
            data = json.load(f)
    return status, err, data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the pipelines whose name holds this text "
                                       "(and those they need)")
    parser.add_argument("--work", default=os.path.join(ROOT, ".gst-hunt", "pipelines"))
    parser.add_argument("--list", action="store_true", help="print the corpus and exit")
    args = parser.parse_args()
    if args.list:
        for name, pipeline, _ in CORPUS:
            print(f"{name}: {pipeline if isinstance(pipeline, str) else 'a Python application'}")
        print(f"{len(CORPUS)} pipelines")
        return 0
    if not os.path.exists(os.path.join(ROOT, "builddir", "libgstmemkit.so")):
        sys.exit("build memkit first: meson setup builddir && meson compile -C builddir")
    debian_packages.ensure(["gstreamer1.0-plugins-good", "gstreamer1.0-plugins-bad",
                            "gstreamer1.0-plugins-ugly", "gstreamer1.0-libav"])
    for d in ("logs", "files"):
        os.makedirs(os.path.join(args.work, d), exist_ok=True)
    for fname, text in FILES.values():
        with open(os.path.join(args.work, "files", fname), "w") as f:
            f.write(text)
    by_name = {n: (p, o) for n, p, o in CORPUS}
    wanted = [n for n, _, _ in CORPUS if not args.only or args.only in n]
    closure = []
    for n in wanted:
        need = by_name[n][1].get("needs")
        if need in by_name and need not in closure:
            closure.append(need)
        if n not in closure:
            closure.append(n)
    ok, rows, skipped = set(FILES), [], []
    seen = collections.defaultdict(lambda: [0, set()])
    totals = collections.Counter()
    for name in [n for n, _, _ in CORPUS if n in closure]:
        pipeline, opts = by_name[name]
        gone = missing(pipeline)
        if gone:
            skipped.append(f"- {name}: no element {', '.join(gone)}")
            continue
        if opts.get("needs") and opts["needs"] not in ok:
            skipped.append(f"- {name}: needs {opts['needs']}, which failed")
            continue
        plain, _, _ = run(name, pipeline, opts, args.work, False)
        status, err, data = run(name, pipeline, opts, args.work, True)
        if status == 0 and plain == 0:
            ok.add(name)
        reports = protect_reports.blocks(err)
        kinds = collections.Counter(protect_reports.kind(r) for r in reports)
        for r in reports:
            v = (protect_reports.kind(r), protect_reports.element(r)[0],
                 protect_reports.frames(r))
            seen[v][0] += 1
            seen[v][1].add(name)
        totals.update(kinds)
        allocs = data["stats"]["allocations"] if data else "no report"
        by_el = ", ".join(f"{e['element']} {e['kind']} {e['count']}"
                          for e in (data or {}).get("protect-by-element", []))
        funcs = collections.Counter(protect_reports.frames(r, 1) for r in reports)
        where = ", ".join(f[0] if f else "?" for f, _ in funcs.most_common(3))
        viol = "; ".join(f"{n} x {k}" for k, n in kinds.most_common())
        rows.append((name, status, plain, allocs, viol, by_el, where))
        print(f"{name}: exit {status} with memkit, {plain} without, {allocs} AlignedMemory "
              f"allocations, {len(reports)} violations", file=sys.stderr, flush=True)
    table = ["| pipeline | with memkit | without | AlignedMemory allocations | violations | "
             "by element | in (innermost functions outside libc) |",
             "|---|---|---|---|---|---|---|"]
    table += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    summary = [f"{len(rows)} pipelines run, {len(skipped)} skipped; {sum(totals.values())} "
               f"violations ({dict(totals)}) in {sum(1 for r in rows if r[4])} pipelines, "
               f"{len(seen)} distinct (kind, element, first two functions); exit differs in "
               f"{sum(1 for r in rows if r[1] != r[2])}"]
    for (kind, el, frames), (n, where) in sorted(seen.items(), key=lambda e: -e[1][0]):
        summary.append(f"\n{n} x {kind} by {el} in {', '.join(sorted(where))}")
        summary += [f"    {f}" for f in frames]
    text = "\n".join(table + ["", "Skipped:"] + skipped + [""] + summary) + "\n"
    with open(os.path.join(args.work, "pipelines-table.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
