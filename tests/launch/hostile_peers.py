# SPDX-License-Identifier: MPL-2.0
"""Hostile consumers of issue 27, each in a process of its own (so that its credentials are
not the test's): run as `/usr/bin/python3 hostile_peers.py ATTACK PATH ARGS...`. It prints
`landed` once the attack has reached the producer (what it sent was read or discarded: its
socket's output queue is empty), then keeps every resource the attack needs (the peers of
its lingering sockets, its connections) until its standard input closes.

- `linger KIND PATH SECONDS COUNT`: a message carrying COUNT TCP sockets whose last close
  blocks for SECONDS (`SO_LINGER {1, SECONDS}`, a full send queue towards a peer that reads
  nothing); KIND is the message: `hello`, `garbage`, `behind-garbage` (a hello queued
  behind garbage), `refused` (sent on a connection the producer refuses at accept: the
  process misbehaved just before). After `landed` it
  prints `dropped` or `kept`: whether the producer closed the connection within 5 s.
- `appsrc PATH`: a producer, not a consumer: `appsrc ! memfdsink` fed 100-byte buffers of
  zeros (500 a second until its standard input closes) in blocks from `Gst.Allocator.alloc`
  on the registered MemfdMemory, beside a private pipeline of the same process writing random
  bytes (`PRIVATE`); prints `landed` once the first is pushed.
- `stale PATH joined|unsent [alloc|pool]`: a producer, `appsrc ! memfdsink min-consumers=0`
  fed 100-byte buffers from the allocator the sink proposes, which it never writes (a
  camera's hardware does; 500 a second until its standard input closes), after 64 blocks of
  that allocator were filled with 0xAB: `joined`, sent before any consumer came; `unsent`,
  never sent (made once a line `go` has come). `alloc` (the default) takes each buffer's
  memory from the allocator; `pool`, every buffer from one `GstBufferPool` set up on that
  allocator (as `GstBaseSrc` producers do), which reuses its buffers' memories without the
  allocator. Prints `landed` when it waits for `go` (a line on its standard input), which a
  consumer sends once connected.
- `rest PATH`: keeps the producer's listener resting (see `rest_listener`).
- `hoard PATH CONNECTIONS HOLD`: CONNECTIONS consumers, one after the other, each saying it
  maps at most HOLD blocks and releasing nothing, so that each ends up holding HOLD buffers
  of its own; prints `held N` as each fills, then `landed`.
- `strand PATH CYCLES CONNECTIONS`: CYCLES times, CONNECTIONS consumers say hello and read
  nothing for 1.5 s (the producer's descriptors pile up in their queues), then each sends
  garbage and is dropped, its end kept open with what is queued; it waits out its user's
  penalty (1.2 s) before the next cycle. After the last it prints `kept N unread M` (the
  connections it keeps, and how many of them hold unread packets), then `landed`.
"""

import array
import fcntl
import os
import socket
import struct
import subprocess
import sys
import termios

import other_user  # beside this file (and staged beside it for another user)
import time

MAGIC, VERSION = 0x44464B4D, 2
KIND_BUFFER, KIND_HELLO = 3, 5


def hello_packet(max_blocks=512):
    return struct.pack("<IBBI", MAGIC, VERSION, KIND_HELLO, max_blocks)


def lingering_socket(seconds):
    """A TCP socket whose last close blocks for `seconds`, and what keeps it so (its peer,
    which reads nothing, and the listener)."""
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
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, seconds))
    return c, [peer, lst]


def outq(sock):
    """Bytes `sock` has sent that its peer has not read (nor discarded)."""
    import array
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
    return buf[0]


def wait_landed(sock, timeout=30):
    end = time.time() + timeout
    while outq(sock) > 0:
        if time.time() > end:
            raise SystemExit("the attack never reached the producer")
        time.sleep(0.005)


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    return s


def send_with(sock, packet, fds):
    raw = [f.detach() for f in fds]
    socket.send_fds(sock, [packet], raw)
    for fd in raw:
        os.close(fd)  # the producer holds the last reference


def rest_listener(path):
    """Keeps the producer's listener resting (it rests 10 ms after each connection of a
    penalized peer it refuses) from another process, of another user when run as root (a
    peer is a user): misbehaves once, then reconnects until its standard input
    closes. Returns once the listener rests."""
    def become_nobody():
        # A peer is a user: run as root (the tests), the rester is another user,
        # or its penalty would be the caller's too. The socket must let it connect.
        if os.getuid() == 0:
            os.setgid(other_user.UID)
            os.setuid(other_user.UID)
    me = other_user.script(__file__) if os.getuid() == 0 else __file__
    p = subprocess.Popen([sys.executable, me, "rest", path], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, preexec_fn=become_nobody,
                         cwd=os.path.dirname(me))
    if p.stdout.readline().strip() != "resting":
        raise SystemExit("the listener never rested")
    return p


def rest(path):
    misbehave(path)
    told = False
    sys.stdin = os.fdopen(sys.stdin.fileno(), "rb", buffering=0)
    os.set_blocking(sys.stdin.fileno(), False)
    while True:
        try:
            if sys.stdin.read() == b"":
                return
        except BlockingIOError:
            pass
        try:
            c = connect(path)
            hung_up(c, 1)  # refused: closed at once
            c.close()
        except OSError:
            pass
        if not told:
            print("resting", flush=True)
            told = True


def misbehave(path):
    """Sends garbage and waits to be dropped: this process may not connect for a second."""
    bad = connect(path)
    bad.send(b"garbage!")
    hung_up(bad, 10)
    bad.close()


def linger(kind, path, seconds, count):
    """The descriptors go on a connection the producer accepts only after they were sent and
    closed here (its listener kept resting by another process meanwhile): the producer holds
    their last reference, whatever the scheduler does."""
    keep = []
    socks = []
    for _ in range(count):
        s, k = lingering_socket(seconds)
        socks.append(s)
        keep.extend(k)
    if kind == "refused":
        misbehave(path)  # this process is refused for a second
    rester = rest_listener(path)
    conn = connect(path)
    try:
        if kind in ("hello", "refused"):
            send_with(conn, hello_packet(), socks)
        elif kind == "garbage":
            send_with(conn, b"garbage!", socks)
        elif kind == "behind-garbage":
            conn.send(b"garbage!")
            send_with(conn, hello_packet(), socks)
        else:
            raise SystemExit(f"unknown kind {kind}")
    except PermissionError:
        # Linux 6.16 and newer: the producer's socket refuses descriptors (SO_PASSRIGHTS).
        rester.stdin.close()
        rester.wait()
        print("landed", flush=True)
        print("refused by the kernel", flush=True)
        sys.stdin.read()
        return
    wait_landed(conn)
    rester.stdin.close()
    rester.wait()
    print("landed", flush=True)
    print("dropped" if hung_up(conn, 5) else "kept", flush=True)
    sys.stdin.read()
    del keep, conn


def nested(sock, levels):
    """`sock` queued inside `levels` Unix sockets, each inside the next: the outermost (only
    the queues hold the others)."""
    inner = sock
    for _ in range(levels):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        send_with(a, b"x", [inner])
        a.close()
        inner = b
    return inner


def saturate(path, seconds, connections, per):
    """Blocks every closer thread of the producer for `seconds` (8 lingering sockets nested
    deeper than it empties Unix sockets), then hands it `per` cheap descriptors on each of
    `connections` consumers it accepted before, and on as many new connections, one a second
    (a process that attached one is refused for a second): what they carry can only wait for
    a closer thread."""
    keep = []
    blockers = []
    for _ in range(8):
        s, k = lingering_socket(seconds)
        keep.extend(k)
        blockers.append(nested(s, 5))
    accepted = [connect(path) for _ in range(connections)]
    for c in accepted:
        c.send(hello_packet())
    for c in accepted:
        wait_landed(c)
    time.sleep(0.3)  # their hellos read: consumers now
    conn = connect(path)
    send_with(conn, hello_packet(), blockers)
    wait_landed(conn)
    for c in accepted:
        pipes = [os.pipe() for _ in range(per)]
        for r, w in pipes:
            os.close(w)
        try:
            socket.send_fds(c, [hello_packet()], [r for r, _w in pipes])
        except OSError:
            pass
        for r, _w in pipes:
            os.close(r)
    keep.extend(accepted)
    for _ in range(connections):
        time.sleep(1.1)
        pipes = [os.pipe() for _ in range(per)]
        for r, w in pipes:
            os.close(w)
        try:
            c = connect(path)
            socket.send_fds(c, [hello_packet()], [r for r, _w in pipes])
            keep.append(c)
        except OSError:
            pass  # the backlog is full: nothing more reaches it
        for r, _w in pipes:
            os.close(r)
    print("landed", flush=True)
    sys.stdin.read()
    del keep, conn


def hung_up(conn, timeout):
    """Whether the producer closes `conn` within `timeout` s (what it sends is discarded)."""
    conn.settimeout(0.1)
    end = time.time() + timeout
    while time.time() < end:
        try:
            msg, fds, _f, _a = socket.recv_fds(conn, 65536, 16)
        except socket.timeout:
            continue
        except OSError:
            return True
        for fd in fds:
            os.close(fd)
        if not msg:
            return True
    return False


def hoard(path, connections, hold):
    conns = []
    for _ in range(connections):
        c = connect(path)
        c.send(hello_packet(hold))
        held = 0
        while held < hold:
            msg, fds, _f, _a = socket.recv_fds(c, 65536, 16)
            for fd in fds:
                os.close(fd)
            if not msg:
                raise SystemExit("the producer hung up on a hoarder")
            if struct.unpack_from("<IBB", msg)[2] == KIND_BUFFER:
                held += 1
        conns.append(c)
        print(f"held {held}", flush=True)
    print("landed", flush=True)
    sys.stdin.read()


def strand(path, cycles, connections):
    kept = []
    for _ in range(cycles):
        conns = []
        for _ in range(connections):
            try:
                c = connect(path)
                c.send(hello_packet(512))
                conns.append(c)
            except OSError:  # refused (the producer closed it): nothing queued in it
                pass
        time.sleep(1.5)
        for c in conns:
            try:
                c.send(b"garbage!")
            except OSError:
                pass
        kept.extend(conns)
        time.sleep(1.2)
    unread = 0
    for c in kept:
        n = array.array("i", [0])
        try:
            fcntl.ioctl(c.fileno(), termios.FIONREAD, n)
        except OSError:
            continue
        unread += n[0] > 0
    print(f"kept {len(kept)} unread {unread}", flush=True)
    print("landed", flush=True)
    sys.stdin.read()


# A private pipeline: a burst of 2000 buffers of random bytes (3000 in blocks of 4096) held in
# a queue, then freed one by one: its blocks wait in MemfdMemory's recycling for whoever
# allocates next.
PRIVATE = ("memsrc allocator=MemfdMemory pattern=random blocksize=3000 num-buffers=2000 ! "
           "queue max-size-buffers=2000 max-size-bytes=0 max-size-time=0 ! "
           "identity sleep-time=200 ! fakesink")


def appsrc(path):
    import gi
    gi.require_version("Gst", "1.0")
    from gi.repository import Gst
    Gst.init(None)
    private = Gst.parse_launch(PRIVATE)
    private.set_state(Gst.State.PLAYING)
    stream = Gst.parse_launch(f"appsrc name=a format=time caps=application/x-test ! "
                              f"memfdsink socket-path={path}")
    src = stream.get_by_name("a")
    stream.set_state(Gst.State.PLAYING)
    allocator = Gst.Allocator.find("MemfdMemory")
    os.set_blocking(sys.stdin.fileno(), False)
    told = False
    while True:
        try:
            if sys.stdin.buffer.read() == b"":
                break
        except (BlockingIOError, TypeError):
            pass
        buf = Gst.Buffer.new()
        buf.append_memory(Gst.Allocator.alloc(allocator, 100, None))
        buf.fill(0, b"\0" * 100)
        if src.emit("push-buffer", buf) != Gst.FlowReturn.OK:
            break
        if not told:
            print("landed", flush=True)
            told = True
        time.sleep(0.002)
    stream.set_state(Gst.State.NULL)
    private.set_state(Gst.State.NULL)


def stale(path, case, how="alloc"):
    import gi
    gi.require_version("Gst", "1.0")
    from gi.repository import Gst
    Gst.init(None)
    stream = Gst.parse_launch(f"appsrc name=a format=time caps=application/x-test ! "
                              f"memfdsink name=s socket-path={path} min-consumers=0 "
                              f"enable-last-sample=false")
    src = stream.get_by_name("a")
    sink = stream.get_by_name("s")
    stream.set_state(Gst.State.PLAYING)
    query = Gst.Query.new_allocation(Gst.Caps.from_string("application/x-test"), True)
    if not src.get_static_pad("src").peer_query(query) or query.get_n_allocation_params() < 1:
        raise SystemExit("memfdsink proposed no allocator")
    allocator = query.parse_nth_allocation_param(0)[0]
    pool = None
    if how == "pool":
        caps = Gst.Caps.from_string("application/x-test")
        pool = Gst.BufferPool.new()
        config = pool.get_config()
        Gst.BufferPool.config_set_params(config, caps, 100, 0, 0)
        Gst.BufferPool.config_set_allocator(config, allocator, None)
        if not pool.set_config(config) or not pool.set_active(True):
            raise SystemExit("cannot set the buffer pool up")

    def buffer():
        if pool is not None:
            ret, buf = pool.acquire_buffer(None)
            if ret != Gst.FlowReturn.OK:
                raise SystemExit(f"the pool gave no buffer: {ret}")
            return buf
        buf = Gst.Buffer.new()
        buf.append_memory(allocator.alloc(100, None))
        return buf

    def earlier(push):
        bufs = [buffer() for _ in range(64)]
        for buf in bufs:
            buf.fill(0, b"\xab" * 100)
            if push:
                src.emit("push-buffer", buf)
        del bufs
        # Gone through the sink (it keeps none), freed: kept for reuse.
        deadline = time.monotonic() + 30
        while push and sink.get_property("stats").get_value("buffers") < 64:
            if time.monotonic() > deadline:
                raise SystemExit("the sink never took the earlier buffers")
            time.sleep(0.01)

    if case == "joined":
        earlier(push=True)
    print("landed", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("no go")
    if case == "unsent":
        earlier(push=False)
    os.set_blocking(sys.stdin.fileno(), False)
    while True:
        try:
            if sys.stdin.buffer.read() == b"":
                break
        except (BlockingIOError, TypeError):
            pass
        if src.emit("push-buffer", buffer()) != Gst.FlowReturn.OK:
            break
        time.sleep(0.002)
    stream.set_state(Gst.State.NULL)
    if pool is not None:
        pool.set_active(False)


def main():
    attack, *args = sys.argv[1:]
    if attack == "linger":
        kind, path, seconds, count = args
        linger(kind, path, int(seconds), int(count))
    elif attack == "saturate":
        path, seconds, connections, per = args
        saturate(path, int(seconds), int(connections), int(per))
    elif attack == "rest":
        rest(args[0])
    elif attack == "appsrc":
        appsrc(args[0])
    elif attack == "stale":
        stale(*args)
    elif attack == "hoard":
        path, connections, hold = args
        hoard(path, int(connections), int(hold))
    elif attack == "strand":
        path, cycles, connections = args
        strand(path, int(cycles), int(connections))
    else:
        raise SystemExit(f"unknown attack {attack}")


if __name__ == "__main__":
    main()
