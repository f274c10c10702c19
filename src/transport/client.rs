// SPDX-License-Identifier: MPL-2.0
//! The consumer side: the connection (hello, batched releases that never block) and the block
//! registry. Each block the producer announces is wrapped once as read-only `MemfdMemory`
//! (mapped once, on first use, and kept mapped); each memory of a buffer is a share of it, so
//! a buffer costs no descriptor, no mmap and, once the block's pages are mapped, no page
//! fault. `memfdsrc` is a thin element over [`Connection`] and [`Registry`].

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::allocator::FdError;
use crate::allocator::memfd;

use super::closer::{self, Conn, Fds};
use super::socket;
use super::wire::{BufferWire, MAX_IDS, Message, ProtoError};

/// `TMPFS_MAGIC`: the file system of shmem memfds.
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Releases waiting for the producer to read them (its socket queue full) before the
/// producer is taken to be misbehaving and the stream fails.
pub const MAX_PENDING_RELEASES: usize = 1024;

/// Releases gathered into one message while the consumer is busy (has packets to read).
pub const RELEASE_BATCH: usize = 8;

/// One connection to the producer, and the releases waiting to be sent on it. Releases are
/// never sent blocking. While the streaming thread waits for the producer (idle), a release is
/// sent at once, from whichever thread frees the buffer; while it is busy with packets already
/// queued, releases gather and go [`RELEASE_BATCH`] to a message, or all at once when it next
/// runs out of packets ([`Connection::idle`]): one message and one wakeup of the producer for
/// several buffers under load, none held back when the stream waits.
pub struct Connection {
    /// Closed on a closer thread: the producer may have queued descriptors in it.
    sock: Conn,
    releases: Mutex<Releases>,
}

#[derive(Default)]
struct Releases {
    pending: VecDeque<u64>,
    /// The streaming thread waits for the producer: send at once.
    idle: bool,
    /// More than [`MAX_PENDING_RELEASES`] were waiting: the producer does not read.
    overflowed: bool,
}

impl Connection {
    /// A connection on `sock`, whose hello (`max_blocks`) is sent at once.
    pub fn new(sock: OwnedFd, max_blocks: u32) -> Result<Arc<Self>, String> {
        socket::try_send(sock.as_fd(), &Message::Hello { max_blocks }.encode(), &[])
            .map_err(|e| format!("cannot greet the producer: {e}"))?;
        Ok(Arc::new(Connection {
            sock: Conn::new(sock),
            releases: Mutex::new(Releases {
                idle: true,
                ..Releases::default()
            }),
        }))
    }

    pub fn sock(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn releases(&self) -> MutexGuard<'_, Releases> {
        self.releases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the release of buffer `id` and sends what the socket takes, never waiting.
    pub fn release(&self, id: u64) {
        let mut r = self.releases();
        if r.pending.len() >= MAX_PENDING_RELEASES {
            r.overflowed = true;
            return;
        }
        r.pending.push_back(id);
        if r.idle || r.pending.len() >= RELEASE_BATCH {
            self.send_pending(&mut r);
        }
    }

    fn send_pending(&self, r: &mut Releases) {
        while !r.pending.is_empty() {
            let n = r.pending.len().min(MAX_IDS);
            let ids: Vec<u64> = r.pending.iter().take(n).copied().collect();
            match socket::try_send(self.sock.as_fd(), &Message::Release(ids).encode(), &[]) {
                Ok(()) => {
                    r.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // The producer is gone: nothing to tell it any more.
                    r.pending.clear();
                    break;
                }
            }
        }
    }

    /// The streaming thread is about to wait for the producer (`true`: what waits is sent,
    /// and later releases go at once) or has a packet to handle (`false`: releases gather).
    /// `Err(pending)` when the producer has stopped reading releases.
    pub fn idle(&self, idle: bool) -> Result<(), usize> {
        let mut r = self.releases();
        r.idle = idle;
        if idle {
            self.send_pending(&mut r);
        }
        if r.overflowed {
            Err(r.pending.len())
        } else {
            Ok(())
        }
    }

    /// `Err(pending)` when the producer has stopped reading releases.
    pub fn check(&self) -> Result<(), usize> {
        let r = self.releases();
        if r.overflowed {
            Err(r.pending.len())
        } else {
            Ok(())
        }
    }
}

/// Queues the release of buffer `id` when dropped (when every memory of the buffer is freed).
pub struct Release {
    id: u64,
    conn: Arc<Connection>,
}

impl Release {
    pub fn new(id: u64, conn: Arc<Connection>) -> Arc<Self> {
        Arc::new(Release { id, conn })
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        self.conn.release(self.id);
    }
}

/// Why the producer's blocks or memories cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// More blocks mapped than the bound we sent in our hello.
    #[error("the producer announced more than {0} blocks (max-blocks) without retiring any")]
    TooMany(usize),
    #[error("block {0} was announced twice")]
    Duplicate(u64),
    #[error("a memory lies in block {0}, never announced")]
    Unknown(u64),
    #[error("a block of {size} bytes, more than max-memory-size ({max})")]
    TooLarge { size: u64, max: u64 },
    /// A range this process cannot address.
    #[error("bytes {offset}+{size} of a block")]
    Unaddressable { offset: u64, size: u64 },
    /// Outside the block, or the descriptor is unusable.
    #[error(transparent)]
    Unusable(#[from] FdError),
    #[error(transparent)]
    Protocol(#[from] ProtoError),
}

/// The blocks the producer announced and has not retired, by id: at most `max_blocks`.
#[derive(Debug)]
pub struct Registry<M> {
    max_blocks: usize,
    blocks: HashMap<u64, M>,
}

impl<M> Registry<M> {
    pub fn new(max_blocks: usize) -> Self {
        Registry {
            max_blocks,
            blocks: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Forgets retired blocks (unknown ids are ignored): each is unmapped once no buffer
    /// still uses it. Returns how many were known.
    pub fn retire(&mut self, ids: &[u64]) -> usize {
        ids.iter()
            .filter(|id| self.blocks.remove(id).is_some())
            .count()
    }

    /// Registers block `id`, refused past the bound or for an id already registered.
    pub fn announce(&mut self, id: u64, block: M) -> Result<(), BlockError> {
        if self.blocks.contains_key(&id) {
            return Err(BlockError::Duplicate(id));
        }
        if self.blocks.len() >= self.max_blocks {
            return Err(BlockError::TooMany(self.max_blocks));
        }
        self.blocks.insert(id, block);
        Ok(())
    }

    pub fn get(&self, id: u64) -> Result<&M, BlockError> {
        self.blocks.get(&id).ok_or(BlockError::Unknown(id))
    }
}

impl Registry<gst::Memory> {
    /// Applies a buffer message's retirements and announcements (`fds`: one per announced
    /// block, in order), then returns its memories: shares of registered blocks that let
    /// `release` go when freed. Descriptors that are not made blocks go to a closer thread.
    pub fn receive(
        &mut self,
        w: &BufferWire,
        fds: Fds,
        max_size: u64,
        release: &Arc<Release>,
    ) -> Result<Vec<gst::Memory>, BlockError> {
        if fds.len() != w.blocks.len() {
            return Err(BlockError::Protocol(ProtoError::Descriptors {
                expected: w.blocks.len(),
                received: fds.len(),
            }));
        }
        self.retire(&w.retire);
        let mut fds = fds.take().into_iter();
        for (b, fd) in w.blocks.iter().zip(fds.by_ref()) {
            if let Err(e) = self.register(b.id, b.size, fd, max_size) {
                closer::close_all(fds);
                return Err(e);
            }
        }
        w.mems
            .iter()
            .map(|m| {
                let root = self.get(m.block)?;
                let range = usize::try_from(m.offset)
                    .ok()
                    .zip(usize::try_from(m.size).ok());
                let (offset, size) = range.ok_or(BlockError::Unaddressable {
                    offset: m.offset,
                    size: m.size,
                })?;
                let owner: Box<dyn Send> = Box::new(release.clone());
                memfd::share_block(root, offset, size, owner).map_err(BlockError::Unusable)
            })
            .collect()
    }

    /// Wraps and registers block `id` of `size` bytes, announced with `fd`.
    fn register(
        &mut self,
        id: u64,
        size: u64,
        fd: OwnedFd,
        max_size: u64,
    ) -> Result<(), BlockError> {
        // Anything but a shmem file goes to a closer thread: its close may block (a socket
        // with a linger, a terminal draining its output, a file of a FUSE server...), and
        // it is not a block anyway. A shmem file's close never waits.
        if let Err(e) = shmem_file(&fd) {
            closer::close(fd);
            return Err(BlockError::Unusable(e));
        }
        if size > max_size {
            return Err(BlockError::TooLarge {
                size,
                max: max_size,
            });
        }
        let len = usize::try_from(size).map_err(|_| BlockError::TooLarge {
            size,
            max: max_size,
        })?;
        let root = memfd::wrap_fd(fd, len, 0, len, None).map_err(BlockError::Unusable)?;
        // Mapped now (and kept mapped), before any memory of it goes downstream: a block
        // that does not map is refused here, not met by a failed map further down.
        if root.map_readable().is_err() {
            return Err(BlockError::Unusable(FdError::Unmappable));
        }
        self.announce(id, root)
    }
}

/// Whether `fd` is a regular file of shmem (tmpfs), as every memfd is: closing one never
/// waits for anything. Its seals are asked first: the kernel answers that itself for any
/// file (EINVAL but for shmem and hugetlbfs), where `fstatfs`/`fstat` of a file of a FUSE
/// server would wait for that server.
fn shmem_file(fd: &OwnedFd) -> Result<(), FdError> {
    rustix::fs::fcntl_get_seals(fd).map_err(FdError::NotSealable)?;
    let fs = rustix::fs::fstatfs(fd).map_err(FdError::Stat)?;
    if fs.f_type as u64 != TMPFS_MAGIC {
        return Err(FdError::NotShmem(fs.f_type as u64));
    }
    let st = rustix::fs::fstat(fd).map_err(FdError::Stat)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(FdError::NotAFile);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_is_bounded_and_refuses_duplicates_and_unknown_blocks() {
        let mut r = Registry::new(2);
        r.announce(1, "a").unwrap();
        assert_eq!(r.announce(1, "b"), Err(BlockError::Duplicate(1)));
        r.announce(2, "b").unwrap();
        assert_eq!(r.announce(3, "c"), Err(BlockError::TooMany(2)));
        assert_eq!(r.get(3), Err(BlockError::Unknown(3)));
        assert_eq!(r.retire(&[1, 99]), 1, "unknown ids are ignored");
        r.announce(3, "c").unwrap();
        assert_eq!((r.len(), *r.get(3).unwrap()), (2, "c"));
    }

    /// A connection on one end of a socket pair (its hello read from the other end), and the
    /// other end: the producer's.
    fn connection() -> (Arc<Connection>, OwnedFd) {
        let (a, b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let conn = Connection::new(a, 64).unwrap();
        let mut buf = vec![0u8; crate::transport::wire::MAX_MESSAGE];
        assert_eq!(
            next_message(&b, &mut buf),
            Some(Message::Hello { max_blocks: 64 })
        );
        (conn, b)
    }

    /// The next message queued on `sock`, if any.
    fn next_message(sock: &OwnedFd, buf: &mut [u8]) -> Option<Message> {
        match socket::recv(sock.as_fd(), buf, std::time::Duration::ZERO) {
            Ok(socket::Received::Packet(n, _)) => Some(Message::decode(&buf[..n]).unwrap()),
            _ => None,
        }
    }

    #[test]
    fn releases_gather_while_busy_and_go_at_once_when_idle() {
        let (conn, b) = connection();
        let mut buf = vec![0u8; crate::transport::wire::MAX_MESSAGE];
        let mut next = || next_message(&b, &mut buf);
        conn.release(1);
        assert_eq!(
            next(),
            Some(Message::Release(vec![1])),
            "idle: sent at once"
        );
        conn.idle(false).unwrap();
        for id in 2..2 + RELEASE_BATCH as u64 - 1 {
            conn.release(id);
        }
        assert_eq!(next(), None, "busy: gathered");
        conn.release(100);
        let batch: Vec<u64> = (2..2 + RELEASE_BATCH as u64 - 1).chain([100]).collect();
        assert_eq!(next(), Some(Message::Release(batch)), "a full batch goes");
        conn.release(101);
        assert_eq!(next(), None);
        conn.idle(true).unwrap();
        assert_eq!(
            next(),
            Some(Message::Release(vec![101])),
            "idle again: what waits goes"
        );
    }

    #[test]
    fn releases_are_batched_while_the_producer_does_not_read() {
        let (conn, b) = connection();
        let mut buf = vec![0u8; crate::transport::wire::MAX_MESSAGE];
        let mut next = || next_message(&b, &mut buf);
        // Fill the producer's queue, as a producer that stops reading would let it fill.
        let mut id = 0;
        loop {
            id += 1;
            conn.release(id);
            if !conn.releases().pending.is_empty() {
                break;
            }
        }
        for _ in 0..10 {
            id += 1;
            conn.release(id);
        }
        let waiting = conn.releases().pending.len();
        assert_eq!(waiting, 11);
        // The producer reads again: what waited goes in one message.
        let mut singles = 0;
        while let Some(Message::Release(ids)) = next() {
            assert_eq!(ids.len(), 1);
            singles += 1;
        }
        assert_eq!(singles, id - 11);
        conn.idle(true).unwrap();
        match next() {
            Some(Message::Release(ids)) => assert_eq!(ids.len(), waiting),
            other => panic!("expected one batched release, got {other:?}"),
        }
    }
}
