// SPDX-License-Identifier: MPL-2.0
//! The wire protocol of `memfdsink` and `memfdsrc`, and their Unix socket helpers (rustix).
//!
//! One `SOCK_SEQPACKET` connection per consumer: every message is one packet (at most
//! [`MAX_MESSAGE`] bytes), so a message can never be split or merged. A packet starts with
//! [`MAGIC`], the protocol version and a kind byte; numbers are little-endian, strings are a
//! `u32` length and UTF-8 bytes. A `Buffer` carries one descriptor per memory (`SCM_RIGHTS`).
//!
//! Producer to consumer: `Caps`, `Event` (stream-start, segment, EOS, as their structure's
//! string), `Buffer`. Consumer to producer: `Release` (the consumer has freed a buffer's
//! memories: the producer may reuse them).
//!
//! Decoding checks every length against what is left, so garbage, truncated or oversized
//! packets give a [`ProtoError`], never a panic or an allocation larger than the packet.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

pub const MAGIC: u32 = 0x4446_4b4d; // "MKFD"
pub const VERSION: u8 = 1;
/// The largest packet either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The most memories (descriptors) one buffer may carry.
pub const MAX_MEMORIES: usize = 16;
/// The most reference timestamp metas one buffer may carry.
pub const MAX_METAS: usize = 16;

const KIND_CAPS: u8 = 1;
const KIND_EVENT: u8 = 2;
const KIND_BUFFER: u8 = 3;
const KIND_RELEASE: u8 = 4;

/// An event that crosses: stream-start, segment or EOS, as the string of its structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    StreamStart = 1,
    Segment = 2,
    Eos = 3,
}

/// Where one memory of a buffer lies in its descriptor's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemWire {
    pub offset: u64,
    pub size: u64,
    pub maxsize: u64,
}

/// A GstVideoMeta: how the frame's planes lie in the buffer (strides may be padded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoMetaWire {
    pub flags: u32,
    /// The format's name (`I420`, `RGBA`, ...).
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub offsets: Vec<u64>,
    pub strides: Vec<i32>,
}

/// The most planes a video meta has.
pub const MAX_PLANES: usize = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct BufferWire {
    /// Video metas of the buffer.
    pub video: Vec<VideoMetaWire>,
    /// Reference timestamp metas: `(reference caps, timestamp, duration)` in nanoseconds
    /// (`u64::MAX`: none). The one kind of GstMeta that 1.22 can carry generically.
    pub refs: Vec<(String, u64, u64)>,
    pub id: u64,
    pub pts: u64,
    pub dts: u64,
    pub duration: u64,
    pub offset: u64,
    pub offset_end: u64,
    pub flags: u32,
    pub mems: Vec<MemWire>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Caps(String),
    Event(EventKind, String),
    Buffer(BufferWire),
    Release(u64),
}

/// Why a packet was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// Not our magic number: not a memfdsink/memfdsrc peer, or garbage.
    BadMagic(u32),
    UnsupportedVersion(u8),
    UnknownKind(u8),
    /// The packet ends before its fields do.
    Truncated {
        needed: usize,
        left: usize,
    },
    /// The packet was larger than [`MAX_MESSAGE`].
    Oversized,
    /// Bytes left over after the last field.
    Trailing(usize),
    TooManyMemories(u32),
    TooManyMetas(u32),
    TooManyPlanes(u32),
    /// The number of descriptors does not match the memories.
    Descriptors {
        expected: usize,
        received: usize,
    },
    BadString,
    BadEvent(u8),
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoError::BadMagic(m) => write!(f, "bad magic {m:#010x}: not a memfdsink peer"),
            ProtoError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            ProtoError::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            ProtoError::Truncated { needed, left } => {
                write!(
                    f,
                    "truncated message: {needed} more bytes needed, {left} left"
                )
            }
            ProtoError::Oversized => write!(f, "message larger than {MAX_MESSAGE} bytes"),
            ProtoError::Trailing(n) => write!(f, "{n} unexpected bytes after the message"),
            ProtoError::TooManyMemories(n) => {
                write!(f, "{n} memories in one buffer (at most {MAX_MEMORIES})")
            }
            ProtoError::TooManyMetas(n) => {
                write!(f, "{n} metas in one buffer (at most {MAX_METAS})")
            }
            ProtoError::TooManyPlanes(n) => {
                write!(f, "{n} planes in a video meta (at most {MAX_PLANES})")
            }
            ProtoError::Descriptors { expected, received } => {
                write!(f, "{received} descriptors received for {expected} memories")
            }
            ProtoError::BadString => write!(f, "a string is not valid UTF-8"),
            ProtoError::BadEvent(k) => write!(f, "unknown event kind {k}"),
        }
    }
}

impl std::error::Error for ProtoError {}

// ----- encoding ----------------------------------------------------------------------------

fn header(kind: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(&MAGIC.to_le_bytes());
    v.push(VERSION);
    v.push(kind);
    v
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&(s.len() as u32).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Caps(caps) => {
                let mut v = header(KIND_CAPS);
                put_str(&mut v, caps);
                v
            }
            Message::Event(kind, s) => {
                let mut v = header(KIND_EVENT);
                v.push(*kind as u8);
                put_str(&mut v, s);
                v
            }
            Message::Buffer(b) => {
                let mut v = header(KIND_BUFFER);
                for x in [b.id, b.pts, b.dts, b.duration, b.offset, b.offset_end] {
                    v.extend_from_slice(&x.to_le_bytes());
                }
                v.extend_from_slice(&b.flags.to_le_bytes());
                v.extend_from_slice(&(b.mems.len() as u32).to_le_bytes());
                for m in &b.mems {
                    for x in [m.offset, m.size, m.maxsize] {
                        v.extend_from_slice(&x.to_le_bytes());
                    }
                }
                v.extend_from_slice(&(b.refs.len() as u32).to_le_bytes());
                for (caps, ts, dur) in &b.refs {
                    put_str(&mut v, caps);
                    v.extend_from_slice(&ts.to_le_bytes());
                    v.extend_from_slice(&dur.to_le_bytes());
                }
                v.extend_from_slice(&(b.video.len() as u32).to_le_bytes());
                for m in &b.video {
                    v.extend_from_slice(&m.flags.to_le_bytes());
                    put_str(&mut v, &m.format);
                    v.extend_from_slice(&m.width.to_le_bytes());
                    v.extend_from_slice(&m.height.to_le_bytes());
                    v.extend_from_slice(&(m.offsets.len() as u32).to_le_bytes());
                    for (o, s) in m.offsets.iter().zip(&m.strides) {
                        v.extend_from_slice(&o.to_le_bytes());
                        v.extend_from_slice(&s.to_le_bytes());
                    }
                }
                v
            }
            Message::Release(id) => {
                let mut v = header(KIND_RELEASE);
                v.extend_from_slice(&id.to_le_bytes());
                v
            }
        }
    }

    /// Decodes one packet.
    pub fn decode(bytes: &[u8]) -> Result<Message, ProtoError> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.u32()?;
        if magic != MAGIC {
            return Err(ProtoError::BadMagic(magic));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(ProtoError::UnsupportedVersion(version));
        }
        let msg = match r.u8()? {
            KIND_CAPS => Message::Caps(r.string()?),
            KIND_EVENT => {
                let kind = match r.u8()? {
                    1 => EventKind::StreamStart,
                    2 => EventKind::Segment,
                    3 => EventKind::Eos,
                    k => return Err(ProtoError::BadEvent(k)),
                };
                Message::Event(kind, r.string()?)
            }
            KIND_BUFFER => {
                let (id, pts, dts, duration, offset, offset_end) =
                    (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
                let flags = r.u32()?;
                let n = r.u32()?;
                if n as usize > MAX_MEMORIES {
                    return Err(ProtoError::TooManyMemories(n));
                }
                let mut mems = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    mems.push(MemWire {
                        offset: r.u64()?,
                        size: r.u64()?,
                        maxsize: r.u64()?,
                    });
                }
                let nrefs = r.u32()?;
                if nrefs as usize > MAX_METAS {
                    return Err(ProtoError::TooManyMetas(nrefs));
                }
                let mut refs = Vec::with_capacity(nrefs as usize);
                for _ in 0..nrefs {
                    refs.push((r.string()?, r.u64()?, r.u64()?));
                }
                let nvideo = r.u32()?;
                if nvideo as usize > MAX_METAS {
                    return Err(ProtoError::TooManyMetas(nvideo));
                }
                let mut video = Vec::with_capacity(nvideo as usize);
                for _ in 0..nvideo {
                    let flags = r.u32()?;
                    let format = r.string()?;
                    let (width, height) = (r.u32()?, r.u32()?);
                    let planes = r.u32()?;
                    if planes as usize > MAX_PLANES {
                        return Err(ProtoError::TooManyPlanes(planes));
                    }
                    let mut offsets = Vec::with_capacity(planes as usize);
                    let mut strides = Vec::with_capacity(planes as usize);
                    for _ in 0..planes {
                        offsets.push(r.u64()?);
                        strides.push(r.u32()? as i32);
                    }
                    video.push(VideoMetaWire {
                        flags,
                        format,
                        width,
                        height,
                        offsets,
                        strides,
                    });
                }
                Message::Buffer(BufferWire {
                    video,
                    refs,
                    id,
                    pts,
                    dts,
                    duration,
                    offset,
                    offset_end,
                    flags,
                    mems,
                })
            }
            KIND_RELEASE => Message::Release(r.u64()?),
            k => return Err(ProtoError::UnknownKind(k)),
        };
        if r.pos != bytes.len() {
            return Err(ProtoError::Trailing(bytes.len() - r.pos));
        }
        Ok(msg)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ProtoError> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(ProtoError::Truncated { needed: n, left });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, ProtoError> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::BadString)
    }
}

// ----- sockets -----------------------------------------------------------------------------

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
        if connect_once(path).is_ok() {
            return Err(path_error(path, "is in use by a running memfdsink"));
        }
        std::fs::remove_file(path).map_err(|e| path_error(path, format!("stale: {e}")))?;
    }
    let addr = SocketAddrUnix::new(path).map_err(|e| path_error(path, e))?;
    let fd = seqpacket().map_err(|e| path_error(path, e))?;
    net::bind(&fd, &addr).map_err(|e| path_error(path, format!("cannot bind: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| path_error(path, format!("cannot set permissions: {e}")))?;
    net::listen(&fd, 16).map_err(|e| path_error(path, format!("cannot listen: {e}")))?;
    Ok(fd)
}

fn connect_once(path: &Path) -> std::io::Result<OwnedFd> {
    let addr = SocketAddrUnix::new(path)?;
    let fd = seqpacket()?;
    net::connect(&fd, &addr)?;
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

/// Accepts a pending connection, if any (the listener is polled first).
pub fn accept(listener: &OwnedFd) -> std::io::Result<OwnedFd> {
    Ok(net::accept_with(listener, SocketFlags::CLOEXEC)?)
}

/// Sends one packet with `fds` attached, waiting while the peer's queue is full (up to the
/// socket's send timeout). Never raises SIGPIPE: a gone peer is an error.
pub fn send(sock: BorrowedFd<'_>, packet: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    send_with(sock, packet, fds, SendFlags::NOSIGNAL)
}

/// Sends one packet without ever waiting: a full queue is `ErrorKind::WouldBlock`.
pub fn try_send(
    sock: BorrowedFd<'_>,
    packet: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    send_with(sock, packet, fds, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
}

/// Sends one packet, waiting at most `timeout` for room in the peer's queue (whatever the
/// socket's own send timeout): `ErrorKind::WouldBlock` when there was none.
pub fn send_within(
    sock: BorrowedFd<'_>,
    packet: &[u8],
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
) -> std::io::Result<()> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match try_send(sock, packet, fds) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => return other,
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let ts = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos() as i64,
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
    /// with it (closed when dropped).
    Packet(usize, Vec<OwnedFd>),
    /// The peer closed the connection.
    Closed,
    /// Nothing within the timeout.
    Idle,
}

/// Waits up to `timeout` for a packet on `sock` and receives it into `buf` (which must hold
/// [`MAX_MESSAGE`] bytes). A larger packet is an error (and its descriptors are closed).
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], timeout: Duration) -> Result<Received, String> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
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
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MEMORIES))];
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
    if msg.flags.contains(net::ReturnFlags::TRUNC) || msg.flags.contains(net::ReturnFlags::CTRUNC) {
        return Err(ProtoError::Oversized.to_string());
    }
    if msg.bytes == 0 {
        return Ok(Received::Closed);
    }
    Ok(Received::Packet(msg.bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer() -> Message {
        Message::Buffer(BufferWire {
            video: vec![VideoMetaWire {
                flags: 0,
                format: "I420".into(),
                width: 320,
                height: 240,
                offsets: vec![0, 81920, 102400],
                strides: vec![320, 160, 160],
            }],
            refs: vec![("timestamp/x-ntp".into(), 5, u64::MAX)],
            id: 7,
            pts: 1,
            dts: u64::MAX,
            duration: 3,
            offset: 4,
            offset_end: 5,
            flags: 0x40,
            mems: vec![
                MemWire {
                    offset: 64,
                    size: 1000,
                    maxsize: 4096,
                };
                3
            ],
        })
    }

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::Caps("video/x-raw, width=(int)320".into()),
            Message::Event(EventKind::Segment, "GstEventSegment, x=(int)1;".into()),
            Message::Event(EventKind::Eos, String::new()),
            buffer(),
            Message::Release(u64::MAX),
        ] {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error() {
        let bytes = buffer().encode();
        for n in 0..bytes.len() {
            assert!(Message::decode(&bytes[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Message::decode(&long), Err(ProtoError::Trailing(1)));
        assert_eq!(
            Message::decode(b"garbage!"),
            Err(ProtoError::BadMagic(u32::from_le_bytes(*b"garb")))
        );
        let mut kind = Message::Release(1).encode();
        kind[5] = 99;
        assert_eq!(Message::decode(&kind), Err(ProtoError::UnknownKind(99)));
        let mut version = Message::Release(1).encode();
        version[4] = 9;
        assert_eq!(
            Message::decode(&version),
            Err(ProtoError::UnsupportedVersion(9))
        );
        // A huge string length does not allocate: it is checked against what is left.
        let mut caps = header(KIND_CAPS);
        caps.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Message::decode(&caps),
            Err(ProtoError::Truncated { .. })
        ));
        // Too many memories is refused before reading them.
        let mut many = header(KIND_BUFFER);
        many.extend_from_slice(&[0u8; 52]);
        many.extend_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            Message::decode(&many),
            Err(ProtoError::TooManyMemories(1000))
        );
        let mut utf = header(KIND_CAPS);
        utf.extend_from_slice(&2u32.to_le_bytes());
        utf.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(Message::decode(&utf), Err(ProtoError::BadString));
    }
}
