#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""What hostile consumers cost a well-behaved one (issue 19): the good consumer's rate under
each attack, next to its rate under the same CPU load from a process that attacks nothing.

A producer (`memsrc pattern=none blocksize=4096 ! memfdsink`, descriptor limit 1024, the usual
default) streams as fast as it can to a good consumer (`memfdsrc ! fakesink`). Each attack runs
in a process of its own, started before the good consumer and stopped after it:

- hoarders: 16 connections that say hello, read everything and release nothing (each pins up
  to max-outstanding buffers), reconnecting whenever dropped;
- release-flood: one connection sending 4096-id releases of buffers it does not hold, as fast
  as the socket takes them, reconnecting whenever dropped;
- silent: 32 connections that never say hello, reconnected whenever dropped;
- linger: connections that attach to their hello a TCP socket whose close blocks for 10 s
  (SO_LINGER {1, 10}, a full send queue towards a peer that reads nothing), closing their own
  copy so that the producer's close is the last, reconnecting whenever dropped (issue 27);
- non-readers: 8 connections that say hello and never read, against a producer whose
  max-outstanding is 65536 (their sockets fill long before that bound; issue 27);
- churn: 27 non-readers, and 4 threads that connect, say hello, read 20 buffers (or wait
  0.5 s for one), release nothing and hang up, again and again, against a producer with
  max-outstanding=65536 max-consumers=64 (the fifth review of issue 27);
- leavers: those 4 threads alone, against max-outstanding=65536 (every block a consumer
  was sent is retired when it leaves, and the producer makes new ones for everyone);
- full-of-blocks: 4 connections whose hello allows 16 blocks, that read everything and never
  release (every block they may map is soon in use), against max-outstanding=65536 (a
  review of issue 27).

Attackers and burners run as another user (`nobody`, when the script runs as root), and the
socket is open to them: memfdsink counts a user and group as one peer, for the fair share and
for the penalty, so an attacker running as the good consumer's user would be the good
consumer (its penalty refuses the good consumer too). Not as root, they run as the same user,
and the attacks that are penalised (release-flood, linger) may get the good consumer refused.

The attacker's CPU time is measured (wait4); the same run is then repeated with a burner
instead of the attacker, twice: one that takes the same share of the CPU (paced by the CPU
time it gets, and its own share measured too), and one that spins all the time (an attacker that spins is always
runnable, and takes its fair share of the cores whatever it gets done: this is the pressure it
puts on the scheduler). Printed per attack: the good consumer's buffers/s alone, under the
attack, under each burner, and the ratio attack/load for each (1.0: the attack costs no more
than that load). Rates are medians of the
repeats; each run times the good consumer's first N buffers (memfdsrc num-buffers), start-up
included (about 50 ms).

    GST_PLUGIN_PATH=$PWD/builddir /usr/bin/python3 scripts/bench_attacks.py [--repeats 3]
    ... --quick    # one short repeat: checks that it runs, measures nothing
    ... --attacks hoarders,silent    # a subset
"""

import argparse
import atexit
import os
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

MAGIC, VERSION, KIND_RELEASE, KIND_HELLO = 0x44464B4D, 2, 4, 5
ATTACKS = ["hoarders", "release-flood", "silent", "linger", "non-readers", "churn", "leavers",
           "full-of-blocks"]
# Producer properties an attack needs (the same for its runs alone and under load).
PRODUCER = {
    "non-readers": "max-outstanding=65536",
    "churn": "max-outstanding=65536 max-consumers=64",
    "leavers": "max-outstanding=65536",
    "full-of-blocks": "max-outstanding=65536",
}
LINGER = 10
# Whom the attackers and burners run as: another user and group than the good consumer's.
OTHER = (65534, 65534) if os.geteuid() == 0 else None


def hello(path, max_blocks=512):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    s.send(struct.pack("<IBBI", MAGIC, VERSION, KIND_HELLO, max_blocks))
    return s


def drain(s):
    """Reads what the producer sent (closing descriptors); False once it hung up."""
    try:
        msg, fds, _f, _a = socket.recv_fds(s, 65536, 16)
    except (BlockingIOError, socket.timeout):
        return True
    except OSError:
        return False
    for fd in fds:
        os.close(fd)
    return bool(msg)


def connections(path, stop):
    """Connections that said hello, one after the other (each closed when the next is
    asked for), until `stop`."""
    while not stop.is_set():
        try:
            s = hello(path)
        except OSError:
            time.sleep(0.01)
            continue
        yield s
        s.close()


def lingering_socket(keep):
    """A TCP socket whose last close blocks for LINGER s; its peer and listener go to `keep`."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    c = socket.create_connection(lst.getsockname())
    peer, _ = lst.accept()
    c.setblocking(False)
    try:
        while True:
            c.send(b"\0" * 65536)
    except BlockingIOError:
        pass
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, LINGER))
    keep.append((peer, lst))
    del keep[:-64]  # the oldest peers go: their sockets' queues drain, their lingers end
    return c


def hoarder(path, stop):
    for s in connections(path, stop):
        s.settimeout(0.1)
        while not stop.is_set() and drain(s):
            pass


def prune(conns):
    """Closes and forgets the connections in `conns` whose peer hung up."""
    for c in list(conns):
        try:
            if c.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                c.close()
                conns.remove(c)
        except BlockingIOError:
            pass
        except OSError:
            c.close()
            conns.remove(c)


def non_readers(path, stop, n):
    """`n` connections that said hello and read nothing, reconnected when dropped."""
    conns = []
    while not stop.is_set():
        conns = [c for c in conns if c.fileno() >= 0]
        while len(conns) < n and not stop.is_set():
            try:
                conns.append(hello(path))
            except OSError:
                break
        time.sleep(0.05)
        prune(conns)


def churner(path, stop):
    """Connects, says hello, reads 20 buffers (or waits 0.5 s for one), releases nothing and
    hangs up, again and again."""
    for s in connections(path, stop):
        s.settimeout(0.5)
        for _ in range(20):
            if stop.is_set():
                break
            try:
                msg, fds, _f, _a = socket.recv_fds(s, 65536, 16)
            except OSError:
                break
            for fd in fds:
                os.close(fd)
            if not msg:
                break


def attack(kind, path):
    """Runs attack `kind` against the producer at `path` until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if kind == "hoarders":
        threads = [threading.Thread(target=hoarder, args=(path, stop)) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elif kind == "release-flood":
        flood = struct.pack("<IBBI", MAGIC, VERSION, KIND_RELEASE, 4096) + struct.pack(
            "<4096Q", *range(1 << 40, (1 << 40) + 4096))
        for s in connections(path, stop):
            s.setblocking(False)
            alive = True
            while alive and not stop.is_set():
                try:
                    s.send(flood)
                except BlockingIOError:
                    pass
                except OSError:
                    alive = False
                alive = alive and drain(s)
    elif kind == "linger":
        keep = []
        while not stop.is_set():
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.connect(path)
            except OSError:
                time.sleep(0.01)
                continue
            c = lingering_socket(keep)
            fd = c.detach()
            try:
                socket.send_fds(s, [struct.pack("<IBBI", MAGIC, VERSION, KIND_HELLO, 512)], [fd])
            except OSError:
                pass
            os.close(fd)  # the producer holds the last reference
            s.settimeout(0.1)
            while not stop.is_set() and drain(s):
                pass
            s.close()
    elif kind == "non-readers":
        non_readers(path, stop, 8)
    elif kind == "full-of-blocks":
        # Each may map 16 blocks (the least a hello may say); it reads everything and keeps
        # every buffer: after 16 buffers every block it may map is in use.
        conns = [hello(path, 16) for _ in range(4)]
        for c in conns:
            c.setblocking(False)
        while not stop.is_set():
            for c in conns:
                while not stop.is_set() and drain(c):
                    try:
                        c.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    except OSError:
                        break
            time.sleep(0.05)
    elif kind in ("churn", "leavers"):
        churners = [threading.Thread(target=churner, args=(path, stop)) for _ in range(4)]
        for t in churners:
            t.start()
        if kind == "churn":
            non_readers(path, stop, 27)
        for t in churners:
            t.join()
    elif kind == "silent":
        conns = []
        while not stop.is_set():
            conns = [c for c in conns if c.fileno() >= 0]
            while len(conns) < 32 and not stop.is_set():
                try:
                    c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                    c.connect(path)
                    c.setblocking(False)
                    conns.append(c)
                except OSError:
                    break
            time.sleep(0.05)
            prune(conns)


def burn(share):
    """Uses `share` of a core until SIGTERM: spins (1 ms at a time) while the CPU time it
    got is behind `share` of the time it ran, sleeps 1 ms otherwise. Paced by the CPU time
    it gets, not by the clock: on a busy machine a burner that spins for a share of every
    10 ms of wall time gets less than that share (it measured a third of the attacker's CPU
    time under release-flood)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    wall, cpu = time.perf_counter(), time.process_time()
    while not stop.is_set():
        if time.process_time() - cpu < share * (time.perf_counter() - wall):
            end = time.perf_counter() + 0.001
            while time.perf_counter() < end:
                pass
        else:
            time.sleep(0.001)


def gst(pipeline, limit=None):
    env = dict(os.environ, G_DEBUG="fatal_warnings")
    env.pop("GST_TRACERS", None)
    pre = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))) if limit else None
    return subprocess.Popen(["gst-launch-1.0", "-m", *pipeline.split()], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=pre)


_STAGED = []


def staged_self():
    """A world-readable copy of this script (made once, removed at exit)."""
    if not _STAGED:
        d = tempfile.mkdtemp(prefix="memkit-bench-attacks-")
        os.chmod(d, 0o755)
        atexit.register(shutil.rmtree, d, True)
        dst = os.path.join(d, os.path.basename(__file__))
        shutil.copyfile(os.path.abspath(__file__), dst)
        os.chmod(dst, 0o644)
        _STAGED.append(dst)
    return _STAGED[0]


def helper(*args):
    def other():
        os.setgroups([])
        os.setgid(OTHER[1])
        os.setuid(OTHER[0])

    # The checkout may be private (a CI clone in a 0700 directory): the other user runs a
    # world-readable copy of this script.
    me = staged_self() if OTHER else os.path.abspath(__file__)
    return subprocess.Popen([sys.executable, me, *args], cwd=os.path.dirname(me),
                            preexec_fn=other if OTHER else None)


def stop_helper(proc):
    """Stops a helper; its CPU share of the wall time it ran."""
    proc.send_signal(signal.SIGTERM)
    _pid, _status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return usage.ru_utime + usage.ru_stime


def run(n, attacker=None, share=None, props=""):
    """One stream of `n` buffers to the good consumer with `attacker` (or a burner of
    `share` of a core) beside it, from a producer with `props`: (good consumer's buffers/s,
    CPU seconds of the helper, wall seconds it ran)."""
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o711)  # the other user reaches the socket, and nothing else
        path = os.path.join(tmp, "s.sock")
        prod = gst(f"memsrc pattern=none blocksize=4096 ! memfdsink socket-path={path} name=s "
                   f"socket-mode={0o666} {props}", limit=1024)
        while not os.path.exists(path):
            time.sleep(0.01)
        side, started = None, time.time()
        if attacker:
            side = helper("--attacker", attacker, path)
        elif share:
            side = helper("--burn", str(share))
        time.sleep(0.5)
        start = time.time()
        good = gst(f"memfdsrc socket-path={path} num-buffers={n} name=r ! fakesink")
        out, _ = good.communicate(timeout=600)
        elapsed = time.time() - start
        cpu = stop_helper(side) if side else 0.0
        wall = time.time() - started
        prod.kill()
        prod.communicate(timeout=60)
        if good.returncode != 0 or "Got EOS" not in out:
            raise RuntimeError(f"the good consumer failed:\n{out[-2000:]}")
        return n / elapsed, cpu, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--attacker", nargs=2)
    ap.add_argument("--burn", type=float)
    ap.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated subset")
    ap.add_argument("--buffers", type=int, default=1000000, help="buffers per run")
    args = ap.parse_args()
    if args.attacker:
        return attack(*args.attacker)
    if args.burn is not None:
        return burn(args.burn)
    n, repeats = (2000, 1) if args.quick else (args.buffers, args.repeats)
    print(f"good consumer's buffers/s, 4 KiB buffers, {n} per run, median of {repeats}")
    print(f"{'attack':<14} {'alone':>9} {'attack':>9} {'cpu':>5} {'load':>9} {'lcpu':>5} "
          f"{'spin':>9} {'att/load':>9} {'att/spin':>9}")
    for kind in args.attacks.split(","):
        alone, hit, loaded, spun, shares, lshares = [], [], [], [], [], []
        props = PRODUCER.get(kind, "")
        for _ in range(repeats):
            alone.append(run(n, props=props)[0])
            rate, cpu, wall = run(n, attacker=kind, props=props)
            hit.append(rate)
            share = min(cpu / wall, 1.0)
            shares.append(share)
            rate, cpu, wall = (run(n, share=share, props=props) if share > 0.01
                               else run(n, props=props))
            loaded.append(rate)
            lshares.append(cpu / wall)
            spun.append(run(n, share=1.0, props=props)[0])
        a, h, lo, sp = (statistics.median(x) for x in (alone, hit, loaded, spun))
        print(f"{kind:<14} {a:>9.0f} {h:>9.0f} {statistics.median(shares):>5.2f} {lo:>9.0f} "
              f"{statistics.median(lshares):>5.2f} {sp:>9.0f} {h / lo:>9.2f} {h / sp:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
