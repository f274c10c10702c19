#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""Cross-process transports, steady state: memkit's memfdsink/memfdsrc against GStreamer's
shmsink/shmsrc (gst-plugins-bad), interleaved in one run.

Each figure is differential: every case streams two lengths (a short and a long stream of the
same buffers) and takes the difference, so process start-up, connection and the first faults
of a fresh mapping cancel out; GB/s is (extra bytes) / (extra time of the producer process).
The transports alternate within each repeat (memfd first in even repeats, shm first in odd
ones). Printed per case: the median GB/s of each transport, the median of the per-repeat
ratios memfd/shm, the consumer's page faults per buffer and both sides' CPU µs per buffer
(getrusage, also differential).
Latency (separate, paced runs in Python/GI processes): producer push (the buffer reaching the
sink) to consumer push (the buffer reaching the consumer's sink), p50 and p99, CLOCK_MONOTONIC
being the same clock in both processes.

    GST_PLUGIN_PATH=$PWD/builddir /usr/bin/python3 scripts/bench_crossprocess.py [--repeats 3]
    ... --quick    # one short repeat of a few cases: checks that it runs (CI), measures nothing
    scripts/gst-newest-env.sh /usr/bin/python3 scripts/bench_crossprocess.py --against unixfd

With `--against unixfd` (gst-plugins-bad >= 1.24: the newest-GStreamer environment) the other
transport is unixfdsink/unixfdsrc, which needs TIME segments: both transports then stream GRAY8
frames from `videotestsrc pattern=black` (a writing producer) to fakesink, 1 MiB only.

Producers: `memsrc pattern=zero` writes every frame; `memsrc pattern=none` (camera-like)
leaves the payload as the allocator gives it. Both take the allocator the sink proposes
(MemfdMemory from memfdsink, shmsink's shared area from shmsink: neither side copies in the
producer). Consumers: `fakesink` reads nothing; `memcheck read-pages=true` reads one byte of
every page; the application consumer is a Python/GI process (this script, `--app`) that pulls
each buffer from `appsink`, maps it READ and reads one byte of every page, as an application
would. Its floor is the same work on one block mapped once, in one process. Per case the CPU
time of the first consumer and of the producer per buffer (all threads, getrusage,
differential) shows which side a difference comes from. shmsink's area holds 64 buffers (at most 256 MiB), as memfdsink's default bound of
64 outstanding buffers per consumer; memfdsink runs with on-full=wait (lossless, like shm).
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

KIB, MIB = 1 << 10, 1 << 20

# (name, producer pattern, consumer, buffer size, consumers, (short, long) counts)
CASES = [
    ("camera-like, fakesink, 1 MiB", "none", "fakesink", MIB, 1, (2000, 60000)),
    ("camera-like, fakesink, 8 MiB", "none", "fakesink", 8 * MIB, 1, (2000, 40000)),
    ("writing, fakesink, 1 MiB", "zero", "fakesink", MIB, 1, (500, 10000)),
    ("writing, fakesink, 8 MiB", "zero", "fakesink", 8 * MIB, 1, (50, 1200)),
    ("camera-like, reads every page, 1 MiB", "none", "read", MIB, 1, (2000, 40000)),
    ("writing, application reads every page, 1 MiB", "zero", "app", MIB, 1, (1000, 20000)),
    ("camera-like, fakesink, 4 KiB", "none", "fakesink", 4 * KIB, 1, (2000, 60000)),
    ("camera-like, fakesink, 1 MiB, 4 consumers", "none", "fakesink", MIB, 4, (2000, 30000)),
]
QUICK = [
    ("camera-like, fakesink, 1 MiB", "none", "fakesink", MIB, 1, (20, 60)),
    ("writing, reads every page, 4 KiB, 2 consumers", "zero", "read", 4 * KIB, 2, (100, 300)),
    ("writing, application reads every page, 1 MiB", "zero", "app", MIB, 1, (20, 60)),
]
UNIXFD = [
    ("videotestsrc (writing), fakesink, 1 MiB", "black", "fakesink", MIB, 1, (200, 4000)),
]
TRANSPORTS = ["memfd", "shm"]


def env():
    e = dict(os.environ)
    e.pop("GST_TRACERS", None)
    return e


def producer(kind, sock, pattern, size, buffers, consumers, tap=False):
    src = f"memsrc num-buffers={buffers} blocksize={size} pattern={pattern}"
    if "unixfd" in TRANSPORTS:
        src = (f"videotestsrc num-buffers={buffers} pattern={pattern} ! video/x-raw,format=GRAY8,"
               f"width=1024,height={size // 1024},framerate=0/1")
    pace = " ! identity sleep-time=2000" if tap else ""
    name = " name=tap" if tap else ""
    if kind == "memfd":
        return (f"{src}{pace} ! memfdsink{name} socket-path={sock} on-full=wait "
                f"min-consumers={consumers}")
    if kind == "unixfd":
        return (f"{src}{pace} ! unixfdsink{name} socket-path={sock} wait-for-connection=true "
                f"sync=false")
    area = min(64 * size, 256 * MIB)
    return (f"{src}{pace} ! shmsink{name} socket-path={sock} shm-size={area} "
            f"wait-for-connection=true sync=false")


def consumer(kind, sock, reader, tap=False):
    src = {"memfd": f"memfdsrc socket-path={sock}",
           "unixfd": f"unixfdsrc socket-path={sock}",
           "shm": f"shmsrc socket-path={sock} is-live=false"}[kind]
    if reader == "app":
        return f"{src} ! appsink name=app sync=false"
    read = " ! memcheck read-pages=true" if reader == "read" else ""
    name = " name=tap" if tap else ""
    # No last sample: shmsink waits at EOS until every buffer is released.
    return f"{src}{read} ! fakesink{name} sync=false enable-last-sample=false"


def spawn(pipeline, app_buffers=None):
    """A gst-launch-1.0 process, or with `app_buffers` an application (this script, see
    `app_main`) that pulls that many buffers from the pipeline's appsink."""
    if app_buffers is not None:
        cmd = [sys.executable, os.path.abspath(__file__), "--app", pipeline, str(app_buffers)]
    else:
        cmd = ["gst-launch-1.0", "-q", *pipeline.split()]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def read_pages(data):
    """What the application consumer does with a buffer: one byte of every 4 KiB page."""
    return sum(data[::4096])


def app_main(pipeline, buffers):
    """An application consumer (Python/GI): pulls `buffers` samples from the appsink named
    `app` (or until EOS), maps each buffer READ and reads one byte of every page."""
    import gi
    gi.require_version("Gst", "1.0")
    from gi.repository import Gst
    Gst.init(None)
    p = Gst.parse_launch(pipeline)
    app = p.get_by_name("app")
    p.set_state(Gst.State.PLAYING)
    got = 0
    while got < buffers:
        sample = app.emit("pull-sample")
        if sample is None:
            break
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if not ok:
            sys.exit("a buffer did not map")
        read_pages(info.data)
        buf.unmap(info)
        got += 1
    p.set_state(Gst.State.NULL)
    sys.exit(0 if got == buffers else 1)


def reap(proc):
    """Waits for `proc`: (exit code, its minor page faults, its CPU seconds)."""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_minflt, usage.ru_utime + usage.ru_stime


def wait_for(path, procs, timeout=20):
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        for p in procs:
            if p.poll() is not None:
                sys.exit(f"a process exited early: {p.args}\n{p.stderr.read()}")
        if time.monotonic() > end:
            sys.exit(f"{path} never appeared")
        time.sleep(0.001)


def reap_within(proc, timeout):
    """`reap` with a deadline: None when `proc` is still running then."""
    end = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_minflt, usage.ru_utime + usage.ru_stime
        if time.monotonic() > end:
            return None
        time.sleep(0.001)


def run(kind, sock, pattern, reader, size, buffers, consumers):
    """One stream: (seconds the producer ran, page faults of the first consumer, CPU seconds
    of the first consumer, CPU seconds of the producer)."""
    t0 = time.perf_counter()
    prod = spawn(producer(kind, sock, pattern, size, buffers, consumers))
    wait_for(sock, [prod])
    app = buffers if reader == "app" else None
    cons = [spawn(consumer(kind, sock, reader), app) for _ in range(consumers)]
    reaped = reap_within(prod, 300)
    if reaped is None:
        for p in [prod, *cons]:
            p.kill()
        sys.exit(f"{kind}: the producer did not finish: {prod.args}")
    elapsed = time.perf_counter() - t0
    prod_cpu = reaped[2]
    if prod.returncode != 0:
        err = prod.stderr.read()
        # shmsink 1.22 posts this error when it stops, after EOS: not a failed stream.
        if kind != "shm" or "Failed waiting on fd activity" not in err:
            sys.exit(f"{kind} producer failed:\n{err}")
    first = None
    if kind == "shm" and not app:
        # shmsrc never sees EOS: it idles once the producer is gone (after every buffer was
        # released: shmsink waits for that at EOS). An application consumer stops by itself
        # once it has every buffer.
        for c in cons:
            # Not Popen.terminate(): it would reap an exited child, and its page faults
            # with it (a zombie takes the signal harmlessly).
            os.kill(c.pid, signal.SIGTERM)
    for c in cons:
        rc, flt, cpu = reap(c)
        if (kind != "shm" or app) and rc != 0:
            sys.exit(f"{kind} consumer failed:\n{c.stderr.read()}")
        first = first or (flt, cpu)
    try:
        os.unlink(sock)
    except FileNotFoundError:
        pass
    return elapsed, first[0], first[1], prod_cpu


def measure(kind, tmp, tag, case):
    """Differential figures of one transport for one case: GB/s, and per buffer the page
    faults of the first consumer and the CPU µs of that consumer and of the producer."""
    _name, pattern, reader, size, consumers, (short, long_) = case
    runs = []
    for n in (short, long_):
        sock = os.path.join(tmp, f"{kind}-{tag}-{n}.sock")
        runs.append(run(kind, sock, pattern, reader, size, n, consumers))
    extra = max(runs[1][0] - runs[0][0], 1e-6)
    per = [(runs[1][i] - runs[0][i]) / (long_ - short) for i in (1, 2, 3)]
    return (long_ - short) * size / extra / 1e9, per[0], per[1] * 1e6, per[2] * 1e6


def throughput(cases, repeats, tmp):
    rows = {}
    other = TRANSPORTS[1]
    print(f"{'case':<46} {'memfd GB/s':>10} {other + ' GB/s':>11} {'ratio':>6} "
          f"{'faults/buf memfd':>16} {other:>6} {'CPU µs/buf cons.':>16} {'prod.':>11}"
          f"   per-repeat ratios")
    for c, case in enumerate(cases):
        res = {k: [] for k in TRANSPORTS}
        for r in range(repeats):
            order = TRANSPORTS if r % 2 == 0 else tuple(reversed(TRANSPORTS))
            for kind in order:
                res[kind].append(measure(kind, tmp, f"{c}-{r}", case))
        ratios = [m[0] / s[0] for m, s in zip(res["memfd"], res[other])]
        med = {k: [statistics.median(x[i] for x in v) for i in range(4)]
               for k, v in res.items()}
        rows[case[0]] = ({k: v[0] for k, v in med.items()}, ratios)
        m, o = med["memfd"], med[other]
        print(f"{case[0]:<46} {m[0]:>10.2f} {o[0]:>11.2f} "
              f"{statistics.median(ratios):>6.2f} {m[1]:>16.2f} {o[1]:>6.2f} "
              f"{m[2]:>8.1f}/{o[2]:<7.1f} {m[3]:>5.1f}/{o[3]:<5.1f}   "
              + " ".join(f"{x:.2f}" for x in ratios), flush=True)
    return rows


def floor(repeats, tmp):
    """The floor of the message pattern (scripts/socket_floor.c): µs per buffer of a bare
    message and release over a SOCK_SEQPACKET pair between two processes, median of `repeats`
    runs, or None without a C compiler."""
    exe = os.path.join(tmp, "socket_floor")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "socket_floor.c")
    if subprocess.run(["cc", "-O2", "-o", exe, src], capture_output=True).returncode != 0:
        return None
    runs = [int(subprocess.run([exe, "300000"], capture_output=True, text=True,
                               check=True).stdout) for _ in range(repeats)]
    return statistics.median(runs) / 1000


def app_floor(repeats, size=MIB, buffers=20000):
    """The floor of the application consumer: µs per buffer of its per-buffer work on one
    block mapped once, in one process (map READ, one byte of every page, unmap; no
    transport, no appsink, its pages in the cache), median of `repeats` runs."""
    import gi
    gi.require_version("Gst", "1.0")
    from gi.repository import Gst
    Gst.init(None)
    buf = Gst.Buffer.new_allocate(None, size, None)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(buffers):
            ok, info = buf.map(Gst.MapFlags.READ)
            read_pages(info.data)
            buf.unmap(info)
        runs.append((time.perf_counter() - t0) / buffers * 1e6)
    return statistics.median(runs)


def producer_alone(repeats, size, counts):
    """GB/s of the writing producer with no transport at all (`memsrc pattern=zero !
    fakesink`, one process, differential like the cases): what writing each frame costs by
    itself. Its one block in flight stays in the CPU cache, which a transport's 64 do not."""
    rates = []
    for _ in range(repeats):
        t = []
        for n in counts:
            t0 = time.perf_counter()
            subprocess.run(["gst-launch-1.0", "-q", *(f"memsrc num-buffers={n} blocksize={size} "
                            "pattern=zero ! fakesink sync=false").split()], env=env(), check=True)
            t.append(time.perf_counter() - t0)
        rates.append((counts[1] - counts[0]) * size / max(t[1] - t[0], 1e-6) / 1e9)
    return statistics.median(rates)


# ----- latency: GI processes with a probe on the element named "tap" --------------------------

def tap_main(pipeline, out):
    """Runs `pipeline`, writing the CLOCK_MONOTONIC time (ns) at which each buffer reached
    the sink pad of the element named `tap`, one per line, to `out`."""
    import gi
    gi.require_version("Gst", "1.0")
    from gi.repository import Gst
    Gst.init(None)
    p = Gst.parse_launch(pipeline)
    times = []

    def probe(_pad, _info):
        times.append(time.monotonic_ns())
        return Gst.PadProbeReturn.OK

    p.get_by_name("tap").get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, probe)
    p.set_state(Gst.State.PLAYING)
    msg = p.get_bus().timed_pop_filtered(Gst.CLOCK_TIME_NONE,
                                         Gst.MessageType.EOS | Gst.MessageType.ERROR)
    p.set_state(Gst.State.NULL)
    with open(out, "w") as f:
        f.write("\n".join(map(str, times)))
    sys.exit(0 if msg.type == Gst.MessageType.EOS else 1)


def latency_run(kind, tmp, tag, size, buffers):
    sock = os.path.join(tmp, f"lat-{kind}-{tag}.sock")
    pout, cout = sock + ".p", sock + ".c"
    me = os.path.abspath(__file__)
    prod = subprocess.Popen([sys.executable, me, "--tap", producer(kind, sock, "zero", size,
                                                                     buffers, 1, tap=True), pout],
                            env=env(), stderr=subprocess.PIPE, text=True)
    wait_for(sock, [prod])
    cons = subprocess.Popen([sys.executable, me, "--tap", consumer(kind, sock, "fakesink",
                                                                     tap=True), cout],
                            env=env(), stderr=subprocess.PIPE, text=True)
    if kind == "memfd":
        prod.wait(timeout=120)
        cons.wait(timeout=120)
    else:
        # shmsrc sees no EOS: stop it (SIGINT ends gst's loop cleanly) once it has them all.
        prod.wait(timeout=120)
        time.sleep(0.2)
        cons.send_signal(2)
        cons.wait(timeout=30)
    with open(pout) as f:
        sent = [int(x) for x in f.read().split()]
    received = []
    if os.path.exists(cout):
        with open(cout) as f:
            received = [int(x) for x in f.read().split()]
    n = min(len(sent), len(received))
    if n < buffers * 9 // 10:
        sys.exit(f"{kind} latency run: {len(received)} of {len(sent)} buffers received\n"
                 f"{cons.stderr.read()}")
    # Skip the first tenth: the first faults of the mappings are start-up, not steady state.
    return [(received[i] - sent[i]) / 1000 for i in range(n // 10, n)]


def latency(repeats, tmp, buffers=300, size=MIB):
    print(f"\none-way latency, writing producer paced at 2 ms, {size >> 20} MiB, "
          f"{buffers} buffers (µs):")
    print(f"{'':<10} {'p50':>8} {'p99':>8}")
    res = {k: [] for k in TRANSPORTS}
    for r in range(repeats):
        order = TRANSPORTS if r % 2 == 0 else tuple(reversed(TRANSPORTS))
        for kind in order:
            res[kind].extend(latency_run(kind, tmp, r, size, buffers))
    for kind in TRANSPORTS:
        q = statistics.quantiles(res[kind], n=100)
        print(f"{kind:<10} {q[49]:>8.1f} {q[98]:>8.1f}")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--tap":
        tap_main(sys.argv[2], sys.argv[3])
    if len(sys.argv) == 4 and sys.argv[1] == "--app":
        app_main(sys.argv[2], int(sys.argv[3]))
    # Children must stay to be reaped with their resource usage (an inherited SIG_IGN would
    # have the kernel reap them at once).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="one short repeat of two cases, to check that it runs")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--only", metavar="TEXT",
                        help="only the cases whose name contains TEXT (no summary lines)")
    parser.add_argument("--against", choices=["shm", "unixfd"], default="shm")
    args = parser.parse_args()
    TRANSPORTS[1] = args.against
    sink = args.against + "sink"
    if subprocess.run(["gst-inspect-1.0", sink], capture_output=True).returncode != 0:
        print(f"{sink} not found: install gstreamer1.0-plugins-bad (scripts/install-deps.sh)",
              file=sys.stderr)
        # 77: meson's "skipped" (the newest-GStreamer build has no gst-plugins-bad).
        sys.exit(77 if args.quick else 1)
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        cases = UNIXFD if args.against == "unixfd" else QUICK if args.quick else CASES
        if args.only:
            cases = [c for c in cases if args.only in c[0]]
        rows = throughput(cases, repeats, tmp)
        if cases is CASES:
            one = rows["camera-like, fakesink, 1 MiB"][0]
            four = rows["camera-like, fakesink, 1 MiB, 4 consumers"][0]
            print("\nproducer throughput, 4 consumers against 1: "
                  + ", ".join(f"{k} {four[k] / one[k]:.2f}" for k in TRANSPORTS))
            small = rows["camera-like, fakesink, 4 KiB"][0]
            per = ", ".join(f"{k} {4 * KIB / small[k] / 1e3:.1f}" for k in TRANSPORTS)
            bare = floor(repeats, tmp)
            print(f"per buffer at 4 KiB (µs): {per}; floor, a bare message and release "
                  f"between two processes: {bare:.1f}" if bare else "(no cc: no floor)")
            print(f"the application consumer's floor, its own work on one 1 MiB block mapped "
                  f"once: {app_floor(repeats):.1f} µs per buffer")
            for case in CASES:
                if case[1] == "zero" and case[2] != "app":
                    print(f"the writing producer alone at {case[3] >> 20} MiB (no transport): "
                          f"{producer_alone(repeats, case[3], case[5]):.2f} GB/s")
        if not args.no_latency and args.against == "shm":
            latency(repeats, tmp, buffers=60 if args.quick else 300)


if __name__ == "__main__":
    main()
