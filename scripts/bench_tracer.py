#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""What the memkittracer tracer (or protect mode) costs: each pipeline with and without
GST_TRACERS=memkittracer (with --protect: MEMKIT_GUARD=protect), interleaved in one run.

Differential like bench_crossprocess.py: every figure runs a short and a long stream and
takes the difference, so process start-up and the tracer's own start and report cancel out.
Prints per pipeline the median time per buffer without and with the tracer and the median of
the per-repeat ratios (with / without).

    GST_PLUGIN_PATH=$PWD/builddir /usr/bin/python3 scripts/bench_tracer.py [--repeats 5]
    ... --protect  # protect mode instead (the tracer on in both runs, so that every element
                   # allocates AlignedMemory); also prints the peak RSS of each
    ... --quick    # one short repeat: checks that it runs (CI), measures nothing
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

# (name, pipeline with {n} buffers, (short, long) counts, what a buffer is)
CASES = [
    ("videotestsrc ! videoconvert ! fakesink, 1280x720",
     "videotestsrc num-buffers={n} ! video/x-raw,width=1280,height=720 ! videoconvert ! "
     "fakesink", (50, 1000), "frame"),
    ("memsrc ! memslice ! memmerge ! fakesink, 4 KiB pieces",
     "memsrc num-buffers={n} blocksize=65536 ! memslice chunk-size=4096 ! "
     "memmerge target-size=65536 ! fakesink", (200, 10000), "4 KiB piece"),
]
PIECES = {CASES[1][0]: 16}  # 4 KiB pieces per 64 KiB buffer


PROTECT = False
PEAK_RSS = {False: 0, True: 0}


def run(pipeline, on):
    env = dict(os.environ)
    env.pop("GST_TRACERS", None)
    env.pop("MEMKIT_GUARD", None)
    if PROTECT:
        # The tracer in both runs: it makes AlignedMemory every element's default allocator,
        # so that protect mode covers the whole pipeline.
        env["GST_TRACERS"] = "memkittracer"
        if on:
            env["MEMKIT_GUARD"] = "protect"
    elif on:
        env["GST_TRACERS"] = "memkittracer"
    t0 = time.perf_counter()
    proc = subprocess.Popen(["gst-launch-1.0", "-q", *pipeline.split()], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {pipeline}\n{proc.stderr.read()[-2000:]}")
    PEAK_RSS[on] = max(PEAK_RSS[on], usage.ru_maxrss)
    return elapsed


def per_buffer(case, tracer):
    name, pipeline, (short, long_), _unit = case
    t = [run(pipeline.format(n=n), tracer) for n in (short, long_)]
    return max(t[1] - t[0], 1e-9) / ((long_ - short) * PIECES.get(name, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--protect", action="store_true",
                        help="measure protect mode (MEMKIT_GUARD=protect) instead of the tracer")
    args = parser.parse_args()
    global PROTECT
    PROTECT = args.protect
    cases = CASES
    repeats = args.repeats
    if args.quick:
        cases = [(n, p, (2, 6), u) for n, p, _c, u in CASES]
        repeats = 1
    print(f"{'pipeline':<56} {'without':>10} {'with':>10} {'ratio':>6}   per-repeat ratios")
    for case in cases:
        off, on, ratios = [], [], []
        for r in range(repeats):
            order = (False, True) if r % 2 == 0 else (True, False)
            got = {tracer: per_buffer(case, tracer) for tracer in order}
            off.append(got[False])
            on.append(got[True])
            ratios.append(got[True] / got[False])
        unit = case[3]
        print(f"{case[0]:<56} {statistics.median(off) * 1e6:>7.2f} µs "
              f"{statistics.median(on) * 1e6:>7.2f} µs {statistics.median(ratios):>6.2f}   "
              + " ".join(f"{x:.2f}" for x in ratios) + f"   (per {unit})", flush=True)
        if PROTECT:
            print(f"{'':<56} peak RSS {PEAK_RSS[False] / 1024:.1f} MiB without, "
                  f"{PEAK_RSS[True] / 1024:.1f} MiB with")
            PEAK_RSS[False] = PEAK_RSS[True] = 0


if __name__ == "__main__":
    main()
