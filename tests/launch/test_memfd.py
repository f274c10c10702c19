# SPDX-License-Identifier: MPL-2.0
"""memfdsink and memfdsrc: a stream carried between gst-launch-1.0 processes as memfd
descriptors, and every fault of issue 5, scripted.

Run with Debian's /usr/bin/python3 and GST_PLUGIN_PATH pointing at the built plugin.
"""

import os
import re
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
import unittest

TIMEOUT = 120
STATS_RE = re.compile(r'Got message #\d+ from element "([^"]+)" \(element\): (\S+), (.*);$', re.M)
FIELD_RE = re.compile(r"([\w-]+)=\((\w+)\)([^,]*)")


def env():
    e = dict(os.environ)
    e["G_DEBUG"] = "fatal_warnings"
    e.pop("GST_TRACERS", None)
    return e


def start(pipeline, messages=True, extra_env=None, preexec=None):
    args = ["gst-launch-1.0", *(["-m"] if messages else ["-q"]), *pipeline.split()]
    e = env()
    e.update(extra_env or {})
    return subprocess.Popen(args, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=preexec)


def finish(proc, timeout=TIMEOUT):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def stats(output):
    result = {}
    for element, _struct, fields in STATS_RE.findall(output):
        result[element] = {n: int(v) if t.startswith("guint") else v
                           for n, t, v in FIELD_RE.findall(fields)}
    return result


def wait_for(path, timeout=10):
    end = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > end:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


def connections(path):
    """Connections a producer at `path` has accepted and still holds: the connected sockets
    bound to that path in /proc/net/unix (an accepted socket takes its listener's address)."""
    count = 0
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and fields[5] == "03":
                count += 1
    return count


def wait_connected(path, n=1, timeout=30):
    """Waits until the producer at `path` has accepted `n` connections (a poll, never a fixed
    sleep)."""
    end = time.time() + timeout
    while connections(path) < n:
        if time.time() > end:
            raise AssertionError(f"fewer than {n} connections to {path} after {timeout} s")
        time.sleep(0.01)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class MemfdTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.sock = os.path.join(self.tmp.name, "memkit.sock")
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
        self.tmp.cleanup()

    def spawn(self, pipeline, **kw):
        p = start(pipeline, **kw)
        self.procs.append(p)
        return p

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def expected(self, n, blocksize):
        out = self.path("expected.bin")
        subprocess.run(["gst-launch-1.0", "-q", "memsrc", f"num-buffers={n}",
                        f"blocksize={blocksize}", "pattern=counter", "!", "filesink",
                        f"location={out}"], env=env(), check=True, timeout=TIMEOUT)
        return read(out)


def buffer_header(block_size):
    """The start of a protocol-2 buffer message (id 1) that retires nothing and announces
    block 1 of `block_size` bytes (its descriptor goes with the packet)."""
    msg = struct.pack("<IBB", 0x44464B4D, 2, 3) + struct.pack("<6QI", 1, 0, 0, 0, 0, 0, 0)
    return msg + struct.pack("<I", 0) + struct.pack("<I2Q", 1, 1, block_size)


class TwoProcesses(MemfdTestCase):
    def test_upstream_allocates_what_memfdsink_proposes(self):
        out = self.path("out.bin")
        prod = self.spawn(f"memsrc num-buffers=20 blocksize=10000 pattern=counter name=m ! "
                          f"memfdsink on-full=wait socket-path={self.sock} name=s")
        cons = self.spawn(f"memfdsrc socket-path={self.sock} ! filesink location={out}")
        rc, text = finish(cons)
        self.assertEqual(rc, 0, text[-3000:])
        _, ptext = finish(prod)
        self.assertEqual(stats(ptext)["m"]["allocator"], "fd", "memory type of MemfdMemory")
        self.assertEqual(stats(ptext)["s"]["bytes-copied"], 0)
        self.assertEqual(read(out), self.expected(20, 10000))

    def test_issue_stream_is_byte_identical_and_zero_copy(self):
        out = self.path("out.bin")
        prod = self.spawn("memsrc allocator=MemfdMemory num-buffers=500 blocksize=1048576 "
                          f"pattern=counter ! memfdsink on-full=wait socket-path={self.sock} name=s")
        wait_for(self.sock)
        self.assertEqual(stat.S_IMODE(os.stat(self.sock).st_mode), 0o600,
                         "only the owning user may connect")
        cons = self.spawn(f"memfdsrc socket-path={self.sock} name=r ! "
                          f"memcheck fail-on-violation=true ! filesink location={out}")
        rc, text = finish(cons)
        self.assertEqual(rc, 0, text[-3000:])
        prc, ptext = finish(prod)
        self.assertEqual(prc, 0, ptext[-3000:])
        self.assertEqual(read(out), self.expected(500, 1048576))
        s = stats(ptext)["s"]
        self.assertEqual((s["buffers"], s["bytes-copied"], s["buffers-copied"]), (500, 0, 0))
        self.assertEqual(stats(text)["r"]["buffers"], 500)
        self.assertFalse(os.path.exists(self.sock), "the socket is removed at stop")

    def test_video_through_memalign_and_videoconvert(self):
        prod = self.spawn("videotestsrc num-buffers=60 ! video/x-raw,format=I420,width=640,height=480 ! "
                          f"memalign allocator=MemfdMemory name=a ! memfdsink on-full=wait socket-path={self.sock} name=s")
        cons = self.spawn(f"memfdsrc socket-path={self.sock} name=r ! videoconvert ! "
                          "video/x-raw,format=RGBA ! fakesink")
        rc, text = finish(cons)
        self.assertEqual(rc, 0, text[-3000:])
        prc, ptext = finish(prod)
        self.assertEqual(prc, 0, ptext[-3000:])
        self.assertEqual(stats(ptext)["a"]["buffers-copied"], 0)
        self.assertEqual(stats(ptext)["s"]["bytes-copied"], 0)
        self.assertEqual(stats(text)["r"]["buffers"], 60)

    def test_encoded_video_with_a_size_crosses(self):
        # Third review of issue 27: caps of encoded video with a width and height (JPEG from
        # jpegenc) made memfdsrc check every buffer against a raw frame's layout: the first
        # failed ("unsupported video format Encoded").
        prod = self.spawn("memsrc num-buffers=20 blocksize=1000 ! "
                          "image/jpeg,width=320,height=240,framerate=30/1 ! "
                          f"memfdsink on-full=wait socket-path={self.sock} name=s")
        cons = self.spawn(f"memfdsrc socket-path={self.sock} name=r ! fakesink")
        rc, text = finish(cons)
        self.assertEqual(rc, 0, text[-3000:])
        finish(prod)
        self.assertEqual(stats(text)["r"]["buffers"], 20)

    def test_other_memory_is_copied_once_into_memfd(self):
        out = self.path("out.bin")
        # memsrc would take the MemfdMemory that memfdsink proposes: ask for AlignedMemory.
        prod = self.spawn(f"memsrc allocator=AlignedMemory num-buffers=20 blocksize=10000 "
                          f"pattern=counter ! memfdsink on-full=wait socket-path={self.sock} name=s")
        cons = self.spawn(f"memfdsrc socket-path={self.sock} ! filesink location={out}")
        rc, text = finish(cons)
        self.assertEqual(rc, 0, text[-3000:])
        _, ptext = finish(prod)
        s = stats(ptext)["s"]
        self.assertEqual((s["buffers-copied"], s["bytes-copied"]), (20, 200000))
        self.assertEqual(read(out), self.expected(20, 10000))

    def test_two_consumers_each_get_every_buffer(self):
        outs = [self.path("a.bin"), self.path("b.bin")]
        prod = self.spawn("memsrc allocator=MemfdMemory num-buffers=100 blocksize=65536 "
                          f"pattern=counter ! memfdsink on-full=wait socket-path={self.sock} min-consumers=2 name=s")
        cons = [self.spawn(f"memfdsrc socket-path={self.sock} ! filesink location={o}")
                for o in outs]
        for c in cons:
            rc, text = finish(c)
            self.assertEqual(rc, 0, text[-3000:])
        _, ptext = finish(prod)
        expected = self.expected(100, 65536)
        for o in outs:
            self.assertEqual(read(o), expected)
        self.assertEqual(stats(ptext)["s"]["consumers-connected"], 2)

    def test_consumer_may_connect_before_the_producer(self):
        out = self.path("out.bin")
        cons = self.spawn(f"memfdsrc socket-path={self.sock} timeout=20000 ! filesink location={out}")
        time.sleep(0.5)
        prod = self.spawn("memsrc allocator=MemfdMemory num-buffers=10 blocksize=4096 "
                          f"pattern=counter ! memfdsink on-full=wait socket-path={self.sock}")
        rc, text = finish(cons)
        self.assertEqual(rc, 0, text[-3000:])
        self.assertEqual(finish(prod)[0], 0)
        self.assertEqual(read(out), self.expected(10, 4096))


class Faults(MemfdTestCase):
    def test_consumer_killed_mid_stream(self):
        # Recycling off in the producer, so that every released block closes its descriptor
        # and the count below is exact.
        prod = self.spawn("memsrc allocator=MemfdMemory num-buffers=400 blocksize=65536 "
                          f"pattern=counter ! memfdsink on-full=wait socket-path={self.sock} name=s",
                          extra_env={"MEMKIT_MAX_CACHED_BYTES": "0"})
        wait_for(self.sock)
        time.sleep(0.3)  # the producer waits for a consumer (min-consumers=1)
        idle_fds = fd_count(prod.pid)
        slow = self.spawn(f"memfdsrc socket-path={self.sock} ! identity sleep-time=20000 ! fakesink")
        time.sleep(1.0)
        self.assertIsNone(prod.poll())
        slow.send_signal(signal.SIGKILL)
        slow.communicate()
        # The producer notices the hang-up on its service thread: poll, generously.
        end = time.time() + 30
        while fd_count(prod.pid) != idle_fds and time.time() < end:
            time.sleep(0.05)
        self.assertIsNone(prod.poll(), "the producer survives the consumer")
        self.assertEqual(fd_count(prod.pid), idle_fds,
                         "the dropped consumer's socket and blocks are released")
        out = self.path("out.bin")
        cons = self.spawn(f"memfdsrc socket-path={self.sock} ! filesink location={out}")
        rc, text = finish(cons)
        self.assertEqual(rc, 0, text[-3000:])
        prc, ptext = finish(prod)
        self.assertEqual(prc, 0, ptext[-3000:])
        s = stats(ptext)["s"]
        self.assertEqual((s["consumers-connected"], s["consumers-dropped"]), (2, 1))
        self.assertGreater(os.path.getsize(out), 0)

    def test_producer_killed_is_a_clear_error(self):
        prod = self.spawn("memsrc allocator=MemfdMemory blocksize=4096 ! "
                          f"identity sleep-time=10000 ! memfdsink on-full=wait socket-path={self.sock}")
        cons = self.spawn(f"memfdsrc socket-path={self.sock} ! fakesink")
        time.sleep(1.0)
        prod.send_signal(signal.SIGKILL)
        prod.communicate()
        rc, text = finish(cons)
        self.assertNotEqual(rc, 0)
        self.assertGreater(rc, 0, "an error exit, not a crash")
        self.assertRegex(text, r"The producer at .* went away \(connection closed\)")

    def test_consumer_reconnects_to_a_new_producer(self):
        first = self.spawn("memsrc allocator=MemfdMemory blocksize=4096 ! "
                           f"identity sleep-time=10000 ! memfdsink on-full=wait socket-path={self.sock}")
        cons = self.spawn(f"memfdsrc socket-path={self.sock} reconnect=true timeout=20000 name=r ! fakesink")
        time.sleep(1.0)
        first.send_signal(signal.SIGKILL)
        first.communicate()
        time.sleep(0.3)
        second = self.spawn("memsrc allocator=MemfdMemory num-buffers=20 blocksize=4096 ! "
                            f"memfdsink on-full=wait socket-path={self.sock}")
        rc, text = finish(cons)
        self.assertEqual(rc, 0, text[-3000:])
        self.assertEqual(finish(second)[0], 0)
        # At least one: a reconnection can also land in the dying producer's backlog first.
        self.assertGreaterEqual(stats(text)["r"]["reconnects"], 1)
        self.assertGreaterEqual(stats(text)["r"]["buffers"], 20)

    def fake_producer(self, packets, fds=()):
        """A listening SOCK_SEQPACKET socket that sends `packets` to its first client."""
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        srv.bind(self.sock)
        srv.listen(1)
        # async=false: gst-launch-1.0 can hang when an error during preroll races the EOS
        # that follows it (a gst-launch issue, seen with these early errors).
        cons = self.spawn(f"memfdsrc socket-path={self.sock} ! fakesink async=false")
        srv.settimeout(60)
        conn, _ = srv.accept()
        for p in packets:
            try:
                socket.send_fds(conn, [p], list(fds))
            except (BrokenPipeError, ConnectionResetError):
                break  # the consumer already gave up on an earlier packet
        rc, text = finish(cons)
        conn.close()
        srv.close()
        return rc, text

    def test_garbage_is_a_clear_error(self):
        rc, text = self.fake_producer([b"this is not memkit at all"])
        self.assertGreater(rc, 0)
        self.assertRegex(text, r"Malformed message from the producer: bad magic")

    def test_truncated_message_is_a_clear_error(self):
        header = struct.pack("<IBB", 0x44464B4D, 2, 3)  # a buffer message, fields missing
        rc, text = self.fake_producer([header + b"\x01\x02"])
        self.assertGreater(rc, 0)
        self.assertRegex(text, r"Malformed message from the producer: truncated message")

    def test_oversized_message_is_a_clear_error(self):
        rc, text = self.fake_producer([b"\x00" * (200 * 1024)])
        self.assertGreater(rc, 0)
        self.assertRegex(text, r"message larger than 65536 bytes")

    def test_descriptor_that_is_not_a_sealed_memfd_is_refused(self):
        with open(self.path("plain"), "wb") as f:
            f.write(b"\x00" * 8192)
        fd = os.open(self.path("plain"), os.O_RDWR)
        msg = buffer_header(block_size=8192)
        # one memory: 100 bytes of block 1; no reference timestamp metas, no video metas
        msg += struct.pack("<I3Q", 1, 1, 0, 100) + struct.pack("<II", 0, 0)
        rc, text = self.fake_producer([msg], fds=[fd])
        os.close(fd)
        self.assertGreater(rc, 0)
        # A file that is not a memfd is refused before anything else is asked of it (its
        # close goes to a closer thread: on some file systems a close waits for a server).
        self.assertRegex(text, r"Unusable memory from the producer: .*not a sealable memfd")

    def test_video_meta_past_the_buffer_is_refused(self):
        import fcntl
        fd = os.memfd_create("fake", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 4096)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        fmt = b"I420"
        msg = buffer_header(block_size=4096)
        msg += struct.pack("<I3Q", 1, 1, 0, 100) + struct.pack("<I", 0)  # 100 bytes, no ref metas
        # one video meta: a 640x480 I420 frame cannot lie in 100 bytes
        msg += struct.pack("<II", 1, 0) + struct.pack("<I", len(fmt)) + fmt
        msg += struct.pack("<III", 640, 480, 3)
        for offset, stride in ((0, 640), (307200, 320), (384000, 320)):
            msg += struct.pack("<Qi", offset, stride)
        rc, text = self.fake_producer([msg], fds=[fd])
        os.close(fd)
        self.assertGreater(rc, 0)
        self.assertRegex(text, r"Unusable video meta from the producer: plane 0 of a 640x480 "
                               r"I420 frame ends at byte \d+, past the 100-byte buffer")

    def test_garbage_from_a_consumer_drops_only_that_consumer(self):
        prod = self.spawn("memsrc allocator=MemfdMemory num-buffers=50 blocksize=4096 ! "
                          f"identity sleep-time=40000 ! memfdsink on-full=wait socket-path={self.sock} name=s")
        cons = self.spawn(f"memfdsrc socket-path={self.sock} name=r ! fakesink")
        time.sleep(0.8)  # mid-stream: the producer takes two seconds for its 50 buffers
        bad = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        bad.connect(self.sock)
        bad.send(b"garbage from a consumer")
        rc, text = finish(cons)
        self.assertEqual(rc, 0, text[-3000:])
        self.assertEqual(stats(text)["r"]["buffers"], 50, "the good consumer got everything")
        prc, ptext = finish(prod)
        self.assertEqual(prc, 0, ptext[-3000:])
        s = stats(ptext)["s"]
        self.assertEqual((s["consumers-connected"], s["consumers-dropped"]), (2, 1))
        bad.close()

    def test_socket_path_that_is_not_ours_is_a_clear_error(self):
        with open(self.sock, "w") as f:
            f.write("a file")
        proc = self.spawn(f"memsrc num-buffers=1 ! memfdsink on-full=wait socket-path={self.sock}")
        rc, text = finish(proc)
        self.assertGreater(rc, 0)
        self.assertRegex(text, r"socket path .* exists and is not a socket")
        self.assertEqual(read(self.sock), b"a file", "left untouched")

    def test_socket_in_use_is_a_clear_error(self):
        first = self.spawn("memsrc allocator=MemfdMemory blocksize=4096 ! "
                           f"memfdsink on-full=wait socket-path={self.sock}")
        wait_for(self.sock)
        second = self.spawn(f"memsrc num-buffers=1 ! memfdsink on-full=wait socket-path={self.sock}")
        rc, text = finish(second)
        self.assertGreater(rc, 0)
        self.assertRegex(text, r"is in use by a running memfdsink")
        self.assertIsNone(first.poll())

    def test_missing_socket_path_is_a_clear_error(self):
        proc = self.spawn("memsrc num-buffers=1 ! memfdsink")
        rc, text = finish(proc)
        self.assertGreater(rc, 0)
        self.assertIn("memfdsink needs socket-path", text)
        proc = self.spawn(f"memfdsrc socket-path={self.sock} timeout=200 ! fakesink")
        rc, text = finish(proc)
        self.assertGreater(rc, 0)
        self.assertRegex(text, r"no producer after 200 ms")


if __name__ == "__main__":
    unittest.main()
