#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""Two-process throughput: memkit's memfdsink/memfdsrc against GStreamer's shmsink/shmsrc
(gst-plugins-bad) or, with --against unixfd, against unixfdsink/unixfdsrc (gst-plugins-bad
since 1.24: run it in the newest-GStreamer environment, see the README), interleaved in one
run. Each repeat streams BUFFERS x BLOCK bytes from a producer process to a consumer process
and times it from the producer's start to the consumer's exit; prints the median GB/s of each
and the median per-repeat ratio.

    GST_PLUGIN_PATH=$PWD/builddir /usr/bin/python3 scripts/bench_crossprocess.py [repeats]
    scripts/gst-newest-env.sh /usr/bin/python3 scripts/bench_crossprocess.py --against unixfd
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

BUFFERS = 500
BLOCK = 1 << 20


def run(producer, consumer, sock, buffers, block):
    env = dict(os.environ)
    t0 = time.perf_counter()
    prod = subprocess.Popen(["gst-launch-1.0", "-q", *producer.split()], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not os.path.exists(sock):
        time.sleep(0.001)
    cons = subprocess.run(["gst-launch-1.0", "-q", *consumer.split()], env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    try:
        prod.wait(timeout=10)
    except subprocess.TimeoutExpired:
        # shmsink waits at EOS for its shm area to drain; the consumer is done: stop it.
        prod.terminate()
        prod.wait(timeout=10)
        prod.returncode = 0
    if cons.returncode != 0 or prod.returncode != 0:
        sys.exit(f"failed:\n{consumer}\n{cons.stderr}\n{producer}\n{prod.stderr.read()}")
    return buffers * block / elapsed / 1e9


def source(kind, buffers, block, timed):
    """A producer of `buffers` buffers of `block` bytes. unixfdsink needs a TIME segment:
    against it both sides stream GRAY8 frames of `block` bytes from videotestsrc (a solid
    fill), allocated from what the sink proposes; otherwise memsrc (a byte stream)."""
    if timed:
        side = {1 << 20: (1024, 1024), 4096: (64, 64)}[block]
        return (f"videotestsrc num-buffers={buffers} pattern=black ! "
                f"video/x-raw,format=GRAY8,width={side[0]},height={side[1]},framerate=0/1")
    allocator = "allocator=MemfdMemory " if kind == "memfd" else ""
    return f"memsrc {allocator}num-buffers={buffers} blocksize={block}"


def pipelines(kind, sock, buffers, block, timed):
    """(producer, consumer) for one transport. The producers allocate what the sink proposes
    (MemfdMemory, unixfd's memfd allocator) or, for shm, plain memory that shmsink copies."""
    src = source(kind, buffers, block, timed)
    if kind == "memfd":
        return (f"{src} ! memfdsink on-full=wait socket-path={sock}",
                f"memfdsrc socket-path={sock} ! fakesink sync=false")
    if kind == "unixfd":
        return (f"{src} ! unixfdsink socket-path={sock} wait-for-connection=true sync=false",
                f"unixfdsrc socket-path={sock} ! fakesink sync=false")
    return (f"{src} ! shmsink socket-path={sock} shm-size={64 * block} "
            f"wait-for-connection=true sync=false",
            f"shmsrc socket-path={sock} num-buffers={buffers} ! fakesink sync=false")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repeats", nargs="?", type=int, default=5)
    parser.add_argument("--against", choices=["shm", "unixfd"], default="shm")
    args = parser.parse_args()
    other = args.against
    # Small buffers are left out: unixfdsrc (1.28.6) here hangs on streams of 4 KiB buffers
    # (every one of 3000, one in five of 1000) before EOS.
    sizes = [(BUFFERS, BLOCK)]
    print(f"{'stream':<40} {'memfd':>10} {other:>10} {'ratio':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for buffers, block in sizes:
            memfd, theirs, ratios = [], [], []
            for i in range(args.repeats):
                a = os.path.join(tmp, f"memfd{block}-{i}.sock")
                b = os.path.join(tmp, f"{other}{block}-{i}.sock")
                timed = other == "unixfd"
                mk = lambda: run(*pipelines("memfd", a, buffers, block, timed), a, buffers,  # noqa: E731
                                 block)
                ot = lambda: run(*pipelines(other, b, buffers, block, timed), b, buffers,  # noqa: E731
                                 block)
                x, y = (mk(), ot()) if i % 2 == 0 else tuple(reversed((ot(), mk())))
                memfd.append(x)
                theirs.append(y)
                ratios.append(x / y)
            size = f"{block >> 20} MiB" if block >= 1 << 20 else f"{block >> 10} KiB"
            print(f"{f'{buffers} x {size}, GB/s':<40} {statistics.median(memfd):>10.2f} "
                  f"{statistics.median(theirs):>10.2f} {statistics.median(ratios):>8.2f}")
            print(f"  per repeat (memfd/{other}):", " ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
