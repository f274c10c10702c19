// SPDX-License-Identifier: MPL-2.0
//! The Unix sockets of the transport (rustix): one `SOCK_SEQPACKET` connection per consumer,
//! every message one packet of at most [`MAX_MESSAGE`](super::wire::MAX_MESSAGE) bytes, descriptors as `SCM_RIGHTS`.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use super::closer::Fds;

use super::sys;
use super::wire::{MAX_MEMORIES, ProtoError};

/// The most descriptors the kernel passes with one message (`SCM_MAX_FD`): room for all of
/// them is given to every receive, so that none is discarded by the kernel, whose discarding
/// closes them in the receiving thread (see [`closer`](super::closer)).
const SCM_MAX_FD: usize = 253;

/// Why a socket path cannot be used.
pub fn path_error(path: &Path, why: impl std::fmt::Display) -> String {
    format!("socket path {}: {why}", path.display())
}

fn seqpacket() -> std::io::Result<OwnedFd> {
    Ok(net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Creates the listening socket at `path` with permissions `mode`. An existing path is
/// replaced only when it is a stale socket of ours (owned by us, nobody listening); anything
/// else there (a file, another user's socket, a live producer) is an error.
pub fn listen_at(path: &Path, mode: u32) -> Result<OwnedFd, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(path_error(path, "exists and is not a socket"));
        }
        let uid = rustix::process::getuid().as_raw();
        if meta.uid() != uid {
            return Err(path_error(
                path,
                format!("is owned by uid {}, not by us (uid {uid})", meta.uid()),
            ));
        }
        // Refused (`ECONNREFUSED`): nobody listens. A full backlog (`EAGAIN`) is a live one.
        let live = match connect_once(path) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        };
        if live {
            return Err(path_error(path, "is in use by a running memfdsink"));
        }
        std::fs::remove_file(path).map_err(|e| path_error(path, format!("stale: {e}")))?;
    }
    let addr = SocketAddrUnix::new(path).map_err(|e| path_error(path, e))?;
    let fd = seqpacket().map_err(|e| path_error(path, e))?;
    net::bind(&fd, &addr).map_err(|e| path_error(path, format!("cannot bind: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| path_error(path, format!("cannot set permissions: {e}")))?;
    refuse_descriptors(fd.as_fd());
    net::listen(&fd, 16).map_err(|e| path_error(path, format!("cannot listen: {e}")))?;
    Ok(fd)
}

/// In protocol 2 a consumer sends no descriptor: where the kernel can refuse them (Linux 6.16,
/// `SO_PASSRIGHTS`) it does, for every connection of the listener `fd`, before any connects;
/// a consumer's `sendmsg` with one then fails (`EPERM`) and nothing it could attach ever
/// reaches this process. On older kernels they are received, and the consumer dropped.
/// `MEMKIT_MEMFDSINK_PASSRIGHTS=1` leaves them passing, as older kernels do (to test that).
fn refuse_descriptors(fd: BorrowedFd<'_>) {
    if std::env::var_os("MEMKIT_MEMFDSINK_PASSRIGHTS").is_some_and(|v| v == "1") {
        return;
    }
    if let Err(e) = sys::refuse_descriptors(fd) {
        gst::debug!(
            super::closer::CAT,
            "the kernel cannot refuse consumers' descriptors ({}): \
             they are received, and the consumer dropped",
            e
        );
    }
}

/// One attempt, never waiting: a Unix connection is made at once or refused, and a
/// listener whose backlog is full (a producer that accepts nothing) answers `EAGAIN` to a
/// non-blocking socket, where a blocking one would wait for room for as long as it likes.
/// The socket is blocking again once connected.
fn connect_once(path: &Path) -> std::io::Result<OwnedFd> {
    let addr = SocketAddrUnix::new(path)?;
    let fd = net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    net::connect(&fd, &addr)?;
    rustix::io::ioctl_fionbio(&fd, false)?;
    Ok(fd)
}

/// Connects to the producer at `path`, retrying until `timeout` has passed (the producer may
/// not be there yet) or `cancelled` says to stop.
pub fn connect(
    path: &Path,
    timeout: Duration,
    cancelled: impl Fn() -> bool,
) -> Result<OwnedFd, String> {
    let start = std::time::Instant::now();
    loop {
        match connect_once(path) {
            Ok(fd) => return Ok(fd),
            Err(e) => {
                if start.elapsed() >= timeout || cancelled() {
                    return Err(path_error(
                        path,
                        format!("no producer after {} ms: {e}", timeout.as_millis()),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Accepts a pending connection (the listener is polled first: a pending connection of a
/// Unix socket cannot vanish before it is accepted).
pub fn accept(listener: &OwnedFd) -> std::io::Result<OwnedFd> {
    Ok(net::accept_with(listener, SocketFlags::CLOEXEC)?)
}

/// Sends one packet with `fds` attached, waiting while the peer's queue is full (up to the
/// socket's send timeout). Never raises SIGPIPE: a gone peer is an error. For tests' peers:
/// the elements never block in the kernel ([`send_until`]).
#[cfg(test)]
pub fn send(sock: BorrowedFd<'_>, packet: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    send_with(sock, packet, fds, SendFlags::NOSIGNAL)
}

/// Whether the peer of the Unix socket `sock` has read every packet we sent on it (nothing of
/// ours waits in its queue); `false` when that cannot be told.
pub fn read_everything(sock: BorrowedFd<'_>) -> bool {
    sys::unread(sock).is_ok_and(|n| n == 0)
}

/// Sends one packet without ever waiting: a full queue is `ErrorKind::WouldBlock`.
pub fn try_send(
    sock: BorrowedFd<'_>,
    packet: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    send_with(sock, packet, fds, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
}

/// How often a waiting send looks at its `stop` condition.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Sends one packet, waiting for room in the peer's queue until `deadline`
/// (`ErrorKind::WouldBlock` then) or until `stop` says to give up, looked at every 50 ms
/// (`ErrorKind::Interrupted`). Never blocks in the kernel: a flush can always interrupt it.
pub fn send_until(
    sock: BorrowedFd<'_>,
    packet: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Instant,
    stop: impl Fn() -> bool,
) -> std::io::Result<()> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    loop {
        match try_send(sock, packet, fds) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => return other,
        }
        if stop() {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let wait = left.min(STOP_POLL);
        let ts = Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: wait.subsec_nanos() as i64,
        };
        let mut pfd = [PollFd::new(&sock, PollFlags::OUT)];
        match poll(&mut pfd, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn send_with(
    sock: BorrowedFd<'_>,
    packet: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: SendFlags,
) -> std::io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MEMORIES))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other(
            "too many descriptors for one message",
        ));
    }
    let n = net::sendmsg(sock, &[IoSlice::new(packet)], &mut control, flags)?;
    if n != packet.len() {
        return Err(std::io::Error::other("short send"));
    }
    Ok(())
}

/// What one receive gave.
pub enum Received {
    /// A packet of this many bytes (in the caller's buffer), and the descriptors that came
    /// with it (closed on a closer thread when dropped).
    Packet(usize, Fds),
    /// The peer closed the connection.
    Closed,
    /// Nothing within the timeout.
    Idle,
}

/// Waits up to `timeout` for a packet on `sock` and receives it into `buf` (which must hold
/// [`MAX_MESSAGE`](super::wire::MAX_MESSAGE) bytes). A larger packet is an error, and so is
/// one with more than [`MAX_MEMORIES`] descriptors (which are closed on a closer thread).
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], timeout: Duration) -> Result<Received, String> {
    recv_hinted(sock, buf, timeout, true)
}

/// [`recv`], told whether a packet is likely queued already (`busy`: the last receive found
/// one). Then it is taken without a poll; otherwise the poll comes first, which saves a
/// receive that would find nothing.
pub fn recv_hinted(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    timeout: Duration,
    busy: bool,
) -> Result<Received, String> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    if busy || timeout.is_zero() {
        match receive_now(sock, buf)? {
            Received::Idle if !timeout.is_zero() => {}
            got => return Ok(got),
        }
    }
    let mut pfd = [PollFd::new(&sock, PollFlags::IN)];
    let ts = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as i64,
    };
    match poll(&mut pfd, Some(&ts)) {
        Ok(0) => return Ok(Received::Idle),
        Ok(_) => {}
        Err(rustix::io::Errno::INTR) => return Ok(Received::Idle),
        Err(e) => return Err(format!("poll failed: {e}")),
    }
    receive_now(sock, buf)
}

/// Whether the packet queued first on `sock` carries descriptors, looked at without taking it
/// (`MSG_PEEK`) and with no room for them: the kernel says it had some (`MSG_CTRUNC`) and
/// installs none. (A copy installed and closed here would release nothing, but its close
/// still runs the file's flush: a FUSE file's waits for its server.)
pub fn carries_descriptors(sock: BorrowedFd<'_>) -> bool {
    let mut control = RecvAncillaryBuffer::new(&mut []);
    let mut byte = [0u8; 1];
    net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::PEEK | RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )
    .is_ok_and(|msg| msg.flags.contains(net::ReturnFlags::CTRUNC))
}

/// Receives a packet already queued on `sock`, never waiting.
fn receive_now(sock: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Received, String> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // A peer that closes while our own messages to it are unread (a producer stopping with
    // releases in flight) makes the kernel report ECONNRESET once, ahead of the packets it
    // had already queued for us: read on, so that none of them (the EOS above all) is lost.
    let mut reset = false;
    let msg = loop {
        match net::recvmsg(
            sock.as_fd(),
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Ok(m) => break m,
            Err(rustix::io::Errno::CONNRESET) if !reset => reset = true,
            Err(rustix::io::Errno::CONNRESET) => return Ok(Received::Closed),
            Err(rustix::io::Errno::AGAIN) if reset => return Ok(Received::Closed),
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {
                return Ok(Received::Idle);
            }
            Err(e) => return Err(format!("receive failed: {e}")),
        }
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    drop(control);
    let fds = Fds::new(fds);
    if msg.flags.contains(net::ReturnFlags::TRUNC) {
        return Err(ProtoError::Oversized.to_string());
    }
    if msg.flags.contains(net::ReturnFlags::CTRUNC) {
        return Err(
            "descriptors of a message were lost: this process is out of descriptors".into(),
        );
    }
    if fds.len() > MAX_MEMORIES {
        return Err(format!(
            "{} descriptors came with one message, more than any message carries \
             ({MAX_MEMORIES})",
            fds.len()
        ));
    }
    if msg.bytes == 0 {
        // End of stream, or an empty packet (which no message is): one meaning each.
        if hung_up(sock) {
            return Ok(Received::Closed);
        }
        return Err("an empty message (0 bytes)".into());
    }
    Ok(Received::Packet(msg.bytes, fds))
}

/// Whether the peer of `sock` has closed its end (nothing more will come).
fn hung_up(sock: BorrowedFd<'_>) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut pfd = [PollFd::new(&sock, PollFlags::RDHUP)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    poll(&mut pfd, Some(&now)).is_ok()
        && pfd[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_waiting_for_room_gives_up_when_told_to_stop() {
        let (ours, theirs) = net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        // Fill the queue towards `ours`: it reads nothing.
        let packet = vec![0u8; 4096];
        while try_send(theirs.as_fd(), &packet, &[]).is_ok() {}
        let far = Instant::now() + Duration::from_secs(60);
        let start = Instant::now();
        let stopped = send_until(theirs.as_fd(), &packet, &[], far, || true);
        assert_eq!(stopped.unwrap_err().kind(), std::io::ErrorKind::Interrupted);
        let soon = Instant::now() + Duration::from_millis(100);
        let timed_out = send_until(theirs.as_fd(), &packet, &[], soon, || false);
        assert_eq!(
            timed_out.unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(ours);
    }

    #[test]
    fn more_descriptors_than_a_message_carries_are_refused_and_closed_elsewhere() {
        let (ours, theirs) = net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..40)
            .map(|_| {
                let (r, w) = std::io::pipe().unwrap();
                (OwnedFd::from(r), OwnedFd::from(w))
            })
            .collect();
        let fds: Vec<BorrowedFd<'_>> = pipes.iter().map(|(r, _)| r.as_fd()).collect();
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(40))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        net::sendmsg(
            &ours,
            &[IoSlice::new(b"x")],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .unwrap();
        let mut buf = vec![0u8; super::super::wire::MAX_MESSAGE];
        let err = recv(theirs.as_fd(), &mut buf, Duration::ZERO)
            .err()
            .unwrap();
        assert!(
            err.contains("40 descriptors came with one message"),
            "{err}"
        );
    }

    #[test]
    fn a_peek_at_a_packets_descriptors_installs_none() {
        // Third review of issue 27: the peek installed copies of what a consumer attached and
        // closed them on the service thread. A close runs the file's flush (a FUSE file's
        // waits for its server: the producer's service thread hung, its stop too) and drops
        // the process's POSIX locks on the file, which is what this test sees.
        let path = std::env::temp_dir().join(format!("memkit-peek-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        rustix::fs::fcntl_lock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .unwrap();
        let (ours, theirs) = net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        send(theirs.as_fd(), b"plain", &[]).unwrap();
        send(theirs.as_fd(), b"with", &[file.as_fd()]).unwrap();
        assert!(!carries_descriptors(ours.as_fd()));
        let mut buf = [0u8; 16];
        assert!(matches!(
            receive_now(ours.as_fd(), &mut buf),
            Ok(Received::Packet(5, _))
        ));
        assert!(carries_descriptors(ours.as_fd()));
        let probe = "import fcntl, sys; fcntl.lockf(open(sys.argv[1], 'r+'), \
                     fcntl.LOCK_EX | fcntl.LOCK_NB)";
        let taken = std::process::Command::new("/usr/bin/python3")
            .args(["-c", probe])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        let _ = std::fs::remove_file(&path);
        assert!(
            !taken,
            "a copy was installed and closed: our lock went with it"
        );
        // The packet is still there, its descriptor with it.
        match receive_now(ours.as_fd(), &mut buf) {
            Ok(Received::Packet(4, fds)) => assert_eq!(fds.len(), 1),
            _ => panic!("the peeked packet is gone"),
        }
    }
}
