// SPDX-License-Identifier: MPL-2.0
//! The closer (`transport::closer`) against what a hostile peer can queue inside what it
//! sends: lingering sockets inside Unix sockets, on connections never accepted, and enough of
//! them to block every closer thread. The tests run one at a time, with the closer's own (they
//! share the closer threads of the process, which one of them blocks on purpose).

use std::io::{IoSlice, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use transport::closer::{self, MAX_CLOSERS, PURGE_DEPTH};

/// The closer is private to the plugin; compiled into this test from the same source files.
#[allow(dead_code)]
#[path = "../src/transport"]
mod transport {
    pub mod closer;
    pub mod parsed;
    pub mod socket;
    pub mod wire;
}

/// One test at a time, with the closer's own tests too: they share the closer threads.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    gst::init().unwrap();
    closer::TEST_SERIAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// A TCP socket whose last close blocks for `seconds` (a full send queue, linger on), and
/// what must stay open meanwhile (its peer, which reads nothing, and the listener).
fn lingering(seconds: u64) -> (OwnedFd, impl Sized) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (peer, _) = listener.accept().unwrap();
    c.set_nonblocking(true).unwrap();
    while c.write(&[0u8; 65536]).is_ok() {}
    rustix::net::sockopt::set_socket_linger(&c, Some(Duration::from_secs(seconds))).unwrap();
    (OwnedFd::from(c), (peer, listener))
}

fn send_fd(sock: &OwnedFd, fd: &OwnedFd) {
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd.as_fd()];
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(b"x")],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
}

/// `fd` queued inside `levels` Unix sockets, each inside the next: the outermost.
fn nested(fd: OwnedFd, levels: usize) -> OwnedFd {
    let mut inner = fd;
    for _ in 0..levels {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        send_fd(&a, &inner);
        inner = b; // `a` and the sent descriptor are closed here: only the queue holds it
    }
    inner
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits up to `limit` for the closer to hold nothing; how long it took, or `None`.
fn closed_within(limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while closer::pending() > 0 {
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Some(start.elapsed())
}

#[test]
fn a_lingering_socket_queued_inside_unix_sockets_is_disarmed_not_waited_for() {
    // Found by the review of issue 27: the closer disarmed only the descriptor it was given,
    // so a lingering socket inside a Unix socket blocked a closer thread for its linger time.
    let _one = serial();
    for levels in 1..=PURGE_DEPTH {
        let (fd, _keep) = lingering(20);
        let outer = nested(fd, levels);
        let start = Instant::now();
        closer::close(outer);
        let took = closed_within(Duration::from_secs(30));
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(2)),
            "{levels} deep: closed after {took:?} ({:?} since)",
            start.elapsed()
        );
    }
}

#[test]
fn a_lingering_socket_on_a_connection_never_accepted_is_disarmed_when_the_listener_closes() {
    // Review of issue 27: closing a listener closes its pending connections and what their
    // peers queued in them; the closer thread that did it waited the linger time.
    let _one = serial();
    let dir = std::env::temp_dir().join(format!("memkit-closer-{}", std::process::id()));
    let _ = std::fs::create_dir(&dir);
    let path = dir.join("l.sock");
    let _ = std::fs::remove_file(&path);
    let listener = transport::socket::listen_at(&path, 0o600).unwrap();
    let mut keep = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..3 {
        let c = transport::socket::connect(&path, Duration::from_secs(5), || false).unwrap();
        let (fd, k) = lingering(20);
        send_fd(&c, &nested(fd, 1));
        keep.push(k);
        conns.push(c);
    }
    closer::close_listener(listener);
    let took = closed_within(Duration::from_secs(30));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(2)),
        "closed after {took:?}"
    );
}

#[test]
fn clean_closes_never_queue_behind_closer_threads_that_are_blocked() {
    // Review of issue 27: with every closer thread blocked (a lingering socket nested deeper
    // than the closer looks), every later close queued: 1,000 clean connections left 1,000
    // descriptors open in the producer, and at its descriptor limit no consumer could connect.
    let _one = serial();
    let mut keep = Vec::new();
    for _ in 0..MAX_CLOSERS {
        let (fd, k) = lingering(8);
        keep.push(k);
        closer::close(nested(fd, PURGE_DEPTH + 1));
    }
    let blocked_since = Instant::now();
    std::thread::sleep(Duration::from_millis(200)); // the closer threads take them
    let before = open_fds();
    for _ in 0..200 {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::send(&a, b"hello", SendFlags::empty()).unwrap();
        closer::close_all([a, b]);
    }
    let after = open_fds();
    let still_blocked = blocked_since.elapsed() < Duration::from_secs(6);
    // Let the blocked closes end before the next test.
    let done = closed_within(Duration::from_secs(60));
    assert!(still_blocked, "the check came too late to mean anything");
    assert!(
        after <= before + 4,
        "{} descriptors were left open behind blocked closer threads ({before} -> {after})",
        after.saturating_sub(before)
    );
    assert!(done.is_some(), "the closer never finished");
}
