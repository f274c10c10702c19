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
    /// In the plugin, `allocator::memfd::sockopt`: the socket calls rustix lacks.
    #[path = "../allocator/memfd/memory/sockopt.rs"]
    mod sys;
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

/// Blocks every closer thread for `seconds` (lingering sockets nested deeper than the closer
/// empties Unix sockets): since when, and what keeps them blocking.
fn block_every_closer(seconds: u64) -> (Instant, Vec<impl Sized>) {
    let mut keep = Vec::new();
    for _ in 0..MAX_CLOSERS {
        let (fd, k) = lingering(seconds);
        keep.push(k);
        closer::close(nested(fd, PURGE_DEPTH + 1));
    }
    let since = Instant::now();
    std::thread::sleep(Duration::from_millis(200)); // the closer threads take them
    (since, keep)
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
    // A listener that lets descriptors pass, as on kernels before 6.16 (`listen_at` has newer
    // ones refuse them: then nothing can be queued in its connections at all).
    let listener = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(&listener, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
    rustix::net::listen(&listener, 16).unwrap();
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
    let (blocked_since, _keep) = block_every_closer(8);
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

#[test]
fn one_close_that_blocks_does_not_hold_up_the_others() {
    // Moved from the closer's unit tests, which every test binary that compiles the closer ran
    // beside its own tests: their lingering sockets could hold every closer thread.
    let _one = serial();
    // A lingering socket nested deeper than the closer empties Unix sockets: its close (when
    // the innermost Unix socket is closed) blocks the closer thread that does it, for 4 s.
    let (fd, _keep) = lingering(4);
    let start = Instant::now();
    closer::close(nested(fd, PURGE_DEPTH + 1));
    // The next descriptor is closed by another thread meanwhile: a pipe's write end, whose
    // read end sees the hang-up.
    let (read, write) = std::io::pipe().unwrap();
    closer::close(OwnedFd::from(write));
    let mut read = read;
    let mut byte = [0u8; 1];
    let eof = std::io::Read::read(&mut read, &mut byte).unwrap();
    let pipe_closed = start.elapsed();
    let done = closed_within(Duration::from_secs(30));
    let all_closed = start.elapsed();
    assert_eq!(eof, 0);
    assert!(done.is_some(), "the closer never finished");
    assert!(
        pipe_closed < Duration::from_secs(2) && all_closed >= Duration::from_secs(3),
        "the pipe closed after {pipe_closed:?}, the socket after {all_closed:?}"
    );
}

#[test]
fn the_closer_is_saturated_while_its_backlog_waits_and_not_after() {
    // What a peer hands the closer while every closer thread is blocked waits; past
    // BACKLOG the transport takes no new peer (a sink accepts nothing, a source does not
    // reconnect), so `saturated` must say it, and stop saying it once they are closed.
    let _one = serial();
    let (blocked_since, _keep) = block_every_closer(4);
    assert!(!closer::saturated(), "{} wait", closer::pending());
    let pipes: Vec<OwnedFd> = (0..closer::BACKLOG)
        .map(|_| OwnedFd::from(std::io::pipe().unwrap().1))
        .collect();
    closer::close_all(pipes);
    let saturated = closer::saturated();
    let still_blocked = blocked_since.elapsed() < Duration::from_secs(3);
    let done = closed_within(Duration::from_secs(60));
    assert!(still_blocked, "the check came too late to mean anything");
    assert!(saturated, "{} wait, not saturated", closer::pending());
    assert!(done.is_some(), "the closer never finished");
    assert!(!closer::saturated());
}

#[test]
fn blocking_closes_handed_over_together_are_closed_side_by_side() {
    // Review of issue 27: one hand-over started at most one closer thread, so 16 blocking
    // descriptors given at once were closed one after another by it.
    let _one = serial();
    let mut keep = Vec::new();
    let mut chains = Vec::new();
    for _ in 0..3 {
        let (fd, k) = lingering(3);
        keep.push(k);
        chains.push(nested(fd, PURGE_DEPTH + 1));
    }
    let start = Instant::now();
    closer::close_all(chains);
    let done = closed_within(Duration::from_secs(30));
    assert!(
        done.is_some_and(|d| d < Duration::from_millis(5500)),
        "three 3 s closes took {:?} in all",
        start.elapsed()
    );
}

/// `count` descriptors of `/dev/null`.
fn nulls(count: usize) -> Vec<OwnedFd> {
    (0..count)
        .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
        .collect()
}

#[test]
fn a_purge_never_takes_more_descriptors_than_the_process_has_room_for() {
    // Review of issue 27: a purge received every packet of a Unix socket; once the process
    // was out of descriptors, the kernel closed what did not fit in the purging thread (the
    // producer's service thread), a lingering socket among them: blocked for its linger.
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let _one = serial();
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let send_all = |fds: &[OwnedFd]| {
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        rustix::net::sendmsg(&a, &[IoSlice::new(b"x")], &mut control, SendFlags::empty()).unwrap();
    };
    send_all(&nulls(253));
    let (lingering_fd, _keep) = lingering(4);
    let mut second = nulls(252);
    second.push(lingering_fd); // last: the first the kernel would have to discard
    send_all(&second);
    drop(second);
    drop(a);
    // Room for the first packet, not for both.
    let saved = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(open_fds() as u64 + 400),
            maximum: saved.maximum,
        },
    )
    .unwrap();
    let start = Instant::now();
    closer::close_all([b]);
    let took = start.elapsed();
    setrlimit(Resource::Nofile, saved).unwrap();
    let done = closed_within(Duration::from_secs(30));
    assert!(done.is_some(), "the closer never finished");
    assert!(
        took < Duration::from_secs(1),
        "close_all blocked its caller for {took:?}"
    );
}

#[test]
fn a_lingering_socket_sent_out_of_band_inside_a_unix_stream_is_disarmed_not_waited_for() {
    // Found by the third review of issue 27: a Unix stream socket's out-of-band packet is
    // skipped by a plain receive, which frees it in the receiving thread: the lingering socket
    // it carried was closed there, never disarmed (memfdsrc's stop took 7.9 s for a linger
    // of 8, the producer's service thread stalled as long).
    let _one = serial();
    let (fd, _keep) = lingering(20);
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd.as_fd()];
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(&a, &[IoSlice::new(b"!")], &mut control, SendFlags::OOB).unwrap();
    drop((a, fd)); // only the out-of-band packet holds it now
    let start = Instant::now();
    closer::close(b);
    let handed = start.elapsed();
    let took = closed_within(Duration::from_secs(30));
    assert!(
        handed < Duration::from_secs(1),
        "the caller waited {handed:?}"
    );
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(2)),
        "closed after {took:?}"
    );
}
