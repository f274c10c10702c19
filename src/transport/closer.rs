// SPDX-License-Identifier: MPL-2.0
//! Closing what a peer sent, off every path another thread waits on.
//!
//! The last `close()` of a descriptor runs its file's release in the closing thread, and
//! that can block for as long as the sender likes: a TCP socket with `SO_LINGER {1, N}` and a
//! full send queue waits N seconds; a Unix socket takes the descriptors queued in it along,
//! each closed the same way. So no descriptor a peer chose (sent with a message, or a peer's
//! connection, whose queue may hold more) is closed on a streaming or service thread, nor
//! under a lock: it is handed here. A socket's linger is turned off first (`SO_LINGER` off:
//! its close returns at once, the kernel finishing the shutdown in the background), which a
//! sender can only undo while it still holds the socket, and then its own close is the last
//! one, not ours. A Unix socket is emptied before it is closed ([`purge`]): shut for reading
//! (so that nothing more can be queued in it), then what it holds is received (pending
//! connections of a listener accepted), each descriptor that came disarmed the same way and
//! Unix sockets emptied in turn, [`PURGE_DEPTH`] deep; an emptied Unix socket's close then
//! releases nothing a peer chose and is done at once, by the caller. What still blocks (a
//! socket re-armed in that window, a file whose release waits on its server, Unix sockets
//! nested deeper) blocks a closer thread: one is started for each descriptor no idle one will
//! take, up to [`MAX_CLOSERS`], so one slow close never holds up the others; and as only those
//! few reach the closer threads, a clean connection's close never queues behind them. A purge
//! never receives more descriptors than the process has room for (the kernel would close the
//! rest in the receiving thread): what it cannot take goes to a closer thread as it is.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

pub static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memkit-closer",
        gst::DebugColorFlags::empty(),
        Some("memkit transport: closing what peers sent"),
    )
});

/// The most closer threads at once.
pub const MAX_CLOSERS: usize = 8;
/// Descriptors handed over and not closed yet past which the closer is [`saturated`].
pub const BACKLOG: usize = 64;
/// A closer thread with nothing to close for this long ends.
const IDLE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Queue {
    fds: VecDeque<OwnedFd>,
    /// Closer threads running, and those waiting for work.
    threads: usize,
    idle: usize,
    /// Descriptors handed over and not yet closed (queued or being closed).
    open: usize,
}

static QUEUE: LazyLock<(Mutex<Queue>, Condvar)> = LazyLock::new(Default::default);

fn queue() -> MutexGuard<'static, Queue> {
    QUEUE.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// Turns a socket's linger off (any other descriptor is left as it is): its close then
/// returns at once.
fn disarm(fd: BorrowedFd<'_>) {
    // ENOTSOCK for anything but a socket: nothing to do.
    let _ = rustix::net::sockopt::set_socket_linger(fd, None);
}

/// How deep Unix sockets inside Unix sockets are emptied before they are closed.
pub const PURGE_DEPTH: usize = 4;
/// The most packets (or pending connections) taken from one Unix socket being emptied: one
/// that holds more is left to a closer thread.
const PURGE_PACKETS: usize = 1024;
/// The most packets and pending connections taken in all by one [`close_all`], so that its
/// caller's work stays bounded whatever is queued (past it, Unix sockets go to a closer
/// thread as they are).
const PURGE_BUDGET: usize = 4096;

/// Descriptors this process keeps free whatever a purge receives: other threads open some
/// meanwhile.
const PURGE_MARGIN: usize = 64;
/// The most descriptors one [`close_all`] holds at once from what it received.
const PURGE_HOLD: usize = 1024;
/// What one packet may bring (`SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// What one [`close_all`] may still take out of Unix sockets.
struct Budget {
    /// Packets and connections.
    packets: usize,
    /// Descriptors it may still receive: the process's free descriptors less
    /// [`PURGE_MARGIN`], at most [`PURGE_HOLD`]; counted once, when first needed. Were the
    /// process to run out while receiving, the kernel would close what does not fit in the
    /// receiving thread, which is the caller's: what it cannot take stays for a closer thread.
    room: Option<usize>,
}

impl Budget {
    fn room(&mut self) -> &mut usize {
        self.room.get_or_insert_with(|| {
            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(u64::MAX);
            let open = std::fs::read_dir("/proc/self/fd").map_or(usize::MAX, |d| d.count());
            usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .saturating_sub(open)
                .saturating_sub(PURGE_MARGIN)
                .min(PURGE_HOLD)
        })
    }

    /// Whether one more packet bringing up to `fds` descriptors may be taken.
    fn take(&mut self, fds: usize) -> bool {
        if self.packets == 0 || *self.room() < fds {
            return false;
        }
        self.packets -= 1;
        true
    }
}

/// Whether `fd` is a Unix socket.
fn is_unix(fd: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_domain(fd).is_ok_and(|d| d == rustix::net::AddressFamily::UNIX)
}

/// Empties the Unix socket `fd` (about to be closed) of what a peer may have queued in it:
/// shut for reading first (a peer can queue nothing more), then its packets are received and
/// dropped, or, for a listener, its pending connections accepted; the descriptors that came
/// are pushed to `found`, `depth` deep. Never waits. `true` when the socket is empty now, so
/// that its close releases nothing a peer chose (a listener is never said to be: a peer may
/// connect until it is closed).
/// `budget`: packets, connections and descriptors that may still be taken; none left, `false`.
/// A listener's pending connections are accepted only when it is our own (`depth` 0 in
/// [`close_listener`]): a listener a peer sent may still be its own, in use.
fn purge(
    fd: BorrowedFd<'_>,
    depth: usize,
    found: &mut Vec<(OwnedFd, usize)>,
    budget: &mut Budget,
    own_listener: bool,
) -> bool {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketFlags};
    use std::io::IoSliceMut;
    use std::mem::MaybeUninit;
    if rustix::net::sockopt::socket_acceptconn(fd).unwrap_or(false) {
        if !own_listener {
            return false;
        }
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        for _ in 0..PURGE_PACKETS {
            if !budget.take(1) {
                break;
            }
            // A blocking listener's accept waits: asked first whether one is pending (a
            // pending Unix connection cannot vanish before it is accepted).
            let mut pfd = [PollFd::new(&fd, PollFlags::IN)];
            if !matches!(poll(&mut pfd, Some(&now)), Ok(1)) {
                break;
            }
            match rustix::net::accept_with(fd, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
                Ok(conn) => {
                    *budget.room() -= 1;
                    found.push((conn, depth + 1));
                }
                Err(_) => break,
            }
        }
        return false;
    }
    let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Read);
    // Every packet received then comes with its sender's credentials, even one of no bytes:
    // a receive of nothing without them is the end of the queue (a socket shut for reading
    // answers 0, not EAGAIN, once it is empty).
    let _ = rustix::net::sockopt::set_socket_passcred(fd, true);
    // A Unix stream socket's out-of-band packet is skipped by a plain receive, and freed in
    // the receiving thread: what it carries would be closed here, never disarmed. Inline, it
    // is received like any other, its descriptors with it.
    let _ = rustix::net::sockopt::set_socket_oobinline(fd, true);
    let mut buf = [0u8; 64];
    // SCM_MAX_FD: room for every descriptor one packet may carry, so that none is discarded
    // (the kernel would close it here).
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253), ScmCredentials(1))];
    for _ in 0..PURGE_PACKETS {
        if !budget.take(SCM_MAX_FD) {
            return false;
        }
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            fd,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        );
        let mut packet = false;
        for m in control.drain() {
            packet = true;
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                for f in rights {
                    *budget.room() -= 1;
                    found.push((f, depth + 1));
                }
            }
        }
        match got {
            Ok(m) if m.bytes == 0 && !packet => return true,
            Ok(_) => continue,
            Err(rustix::io::Errno::AGAIN) => return true,
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::CONNRESET) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// Closes `fds` without ever blocking the caller: sockets disarmed, Unix sockets emptied (see
/// [`purge`]) and then closed here, what may still block handed to a closer thread.
pub fn close_all(fds: impl IntoIterator<Item = OwnedFd>) {
    close_with(fds.into_iter().map(|f| (f, 0)).collect(), false);
}

/// Closes our own listening socket like [`close_all`], its pending connections accepted and
/// emptied first (what their peers queued in them is disarmed, not waited for).
pub fn close_listener(listener: OwnedFd) {
    close_with(vec![(listener, 0)], true);
}

fn close_with(mut work: Vec<(OwnedFd, usize)>, own_listener: bool) {
    let mut fds = Vec::new();
    let mut budget = Budget {
        packets: PURGE_BUDGET,
        room: None,
    };
    while let Some((fd, depth)) = work.pop() {
        disarm(fd.as_fd());
        if depth < PURGE_DEPTH
            && is_unix(fd.as_fd())
            && purge(
                fd.as_fd(),
                depth,
                &mut work,
                &mut budget,
                own_listener && depth == 0,
            )
        {
            drop(fd);
            if let Some(room) = budget.room.as_mut() {
                *room += 1;
            }
        } else {
            fds.push(fd);
        }
    }
    enqueue(fds);
}

/// Hands `fds` to the closer threads, starting one for each descriptor no idle one will take.
fn enqueue(fds: Vec<OwnedFd>) {
    if fds.is_empty() {
        return;
    }
    let mut q = queue();
    q.open += fds.len();
    q.fds.extend(fds);
    // A thread for each descriptor no idle one will take, up to MAX_CLOSERS: any of them may
    // block, and none must wait behind another.
    let mut started = 0;
    while q.idle + started < q.fds.len() && q.threads < MAX_CLOSERS {
        let spawned = std::thread::Builder::new()
            .name("memkit-closer".into())
            .spawn(closer);
        match spawned {
            Ok(_) => {
                q.threads += 1;
                started += 1;
            }
            // The queue waits for a closer thread that can start (the next hand-over tries
            // again); nothing is closed here.
            Err(e) => {
                gst::warning!(CAT, "cannot start a closer thread: {}", e);
                break;
            }
        }
    }
    drop(q);
    QUEUE.1.notify_all();
}

/// Closes `fd` on a closer thread; never blocks the caller.
pub fn close(fd: OwnedFd) {
    close_all([fd]);
}

/// Descriptors handed over and not closed yet.
pub fn pending() -> usize {
    queue().open
}

/// Whether [`BACKLOG`] descriptors or more wait to be closed (every closer thread blocked, by
/// what no disarming reaches): a peer is then taking descriptors out of this process faster
/// than they can be closed. The transport takes no new peer meanwhile (a sink accepts no
/// connection, a source does not reconnect), which bounds what waits here.
pub fn saturated() -> bool {
    pending() >= BACKLOG
}

/// A closer thread: closes what is queued, ends after [`IDLE`] without work.
fn closer() {
    let mut q = queue();
    loop {
        if let Some(fd) = q.fds.pop_front() {
            drop(q);
            drop(fd);
            q = queue();
            q.open -= 1;
            continue;
        }
        q.idle += 1;
        let (guard, waited) = QUEUE
            .1
            .wait_timeout(q, IDLE)
            .unwrap_or_else(|e| e.into_inner());
        q = guard;
        q.idle -= 1;
        if waited.timed_out() && q.fds.is_empty() {
            q.threads -= 1;
            return;
        }
    }
}

/// Descriptors received from a peer: closed on a closer thread when dropped, unless taken.
#[derive(Default, Debug)]
pub struct Fds(Vec<OwnedFd>);

impl Fds {
    pub fn new(fds: Vec<OwnedFd>) -> Self {
        Fds(fds)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The descriptors, in order: closing any of them is the taker's business now.
    pub fn take(mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Fds {
    fn drop(&mut self) {
        close_all(std::mem::take(&mut self.0));
    }
}

/// A connection to a peer, closed on a closer thread when dropped: its queue may hold
/// descriptors the peer sent, whose close would run in the closing thread.
#[derive(Debug)]
pub struct Conn(Option<OwnedFd>, std::sync::atomic::AtomicBool);

impl Conn {
    pub fn new(fd: OwnedFd) -> Self {
        Conn(Some(fd), std::sync::atomic::AtomicBool::new(false))
    }

    /// Closes it, when dropped, as it is: what its queue holds is not received first (never
    /// takes a descriptor of this process), all of it released by the closer thread.
    pub fn close_unemptied(&self) {
        self.1.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_ref().expect("a connection until dropped").as_fd()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            if self.1.load(std::sync::atomic::Ordering::Relaxed) {
                disarm(fd.as_fd());
                enqueue(vec![fd]);
            } else {
                close(fd);
            }
        }
    }
}

/// Held by every test that counts on the closer threads of its process (they are shared): one
/// such test at a time.
#[cfg(test)]
pub static TEST_SERIAL: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn serial() -> MutexGuard<'static, ()> {
        TEST_SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A TCP socket whose last close blocks for `seconds` (a full send queue, linger on),
    /// and its peer (which reads nothing) and listener.
    fn lingering(seconds: u64) -> (OwnedFd, std::net::TcpStream, std::net::TcpListener) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        c.set_nonblocking(true).unwrap();
        while c.write(&[0u8; 65536]).is_ok() {}
        rustix::net::sockopt::set_socket_linger(&c, Some(Duration::from_secs(seconds))).unwrap();
        (OwnedFd::from(c), peer, listener)
    }

    fn wait_closed() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while pending() > 0 {
            assert!(Instant::now() < deadline, "{} never closed", pending());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_lingering_socket_is_disarmed_and_closed_without_waiting() {
        gst::init().unwrap();
        let _one = serial();
        let (fd, _peer, _l) = lingering(30);
        let start = Instant::now();
        close(fd);
        wait_closed();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }
}
