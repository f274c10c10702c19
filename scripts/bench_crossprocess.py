#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""Two-process throughput: memkit's memfdsink/memfdsrc against GStreamer's shmsink/shmsrc
(gst-plugins-bad), interleaved in one run. Each repeat streams BUFFERS x BLOCK bytes from a
producer process to a consumer process and times it from the producer's start to the
consumer's exit; prints the median GB/s of each and the median per-repeat ratio.

    GST_PLUGIN_PATH=$PWD/builddir /usr/bin/python3 scripts/bench_crossprocess.py [repeats]
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

BUFFERS = 500
BLOCK = 1 << 20


def run(producer, consumer, sock):
    env = dict(os.environ)
    t0 = time.perf_counter()
    prod = subprocess.Popen(["gst-launch-1.0", "-q", *producer.split()], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not os.path.exists(sock):
        time.sleep(0.001)
    cons = subprocess.run(["gst-launch-1.0", "-q", *consumer.split()], env=env,
                          capture_output=True, text=True, timeout=300)
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
    return BUFFERS * BLOCK / elapsed / 1e9


def main():
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    memfd, shm, ratios = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            a = os.path.join(tmp, f"memfd{i}.sock")
            b = os.path.join(tmp, f"shm{i}.sock")
            mk = lambda: run(  # noqa: E731
                f"memsrc allocator=MemfdMemory num-buffers={BUFFERS} blocksize={BLOCK} ! "
                f"memfdsink on-full=wait socket-path={a}",
                f"memfdsrc socket-path={a} ! fakesink sync=false", a)
            sh = lambda: run(  # noqa: E731
                f"memsrc num-buffers={BUFFERS} blocksize={BLOCK} ! shmsink socket-path={b} "
                f"shm-size={64 * BLOCK} wait-for-connection=true sync=false",
                f"shmsrc socket-path={b} num-buffers={BUFFERS} ! fakesink sync=false", b)
            x, y = (mk(), sh()) if i % 2 == 0 else tuple(reversed((sh(), mk())))
            memfd.append(x)
            shm.append(y)
            ratios.append(x / y)
    print(f"{'stream':<40} {'memfd':>10} {'shm':>10} {'ratio':>8}")
    print(f"{f'{BUFFERS} x {BLOCK >> 20} MiB, GB/s':<40} {statistics.median(memfd):>10.2f} "
          f"{statistics.median(shm):>10.2f} {statistics.median(ratios):>8.2f}")
    print("per repeat (memfd/shm):", " ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
