// SPDX-License-Identifier: MPL-2.0
//! The producer side: a listening socket, its consumers and the service thread that accepts
//! them and reads their hellos and releases. `memfdsink` is a thin element over [`Server`].
//!
//! Consumers are not trusted. Each has its own bound of unreleased buffers and of mapped
//! blocks; what happens when one is full is [`OnFull`]. Except in `Wait` mode no send ever
//! blocks: a consumer that does not read its socket misses buffers, or is dropped. The blocks
//! a consumer was ever sent are retired when it leaves (never recycled: it may keep them
//! mapped), and blocks are sealed against writes, so no consumer can change what another
//! reads. Nothing a consumer sent (its connection included) is closed on a thread anything
//! waits for: it goes to the [closer](super::closer).
//!
//! - [`state`]: the shared state behind the one lock, and its invariants;
//! - [`send`]: the send path (the streaming thread);
//! - [`service`]: the service thread.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::allocator::memfd::{self, FreedBlocks};

use super::socket;
use super::wire::{BlockWire, BufferWire, EventKind, MAX_MESSAGE, Message};

mod send;
mod service;
mod state;

use state::{Gone, Shared, State, lock};
pub use state::{Limits, OnFull, Stats, auto_pinned_blocks, auto_pinned_bytes};

/// The stream was flushed (or the server stopped) while waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushing;

/// A buffer to send: what is held while consumers use it, its description without the
/// per-consumer parts (its id is given by [`Server::send`]), and the blocks its memories lie
/// in (with their descriptors).
pub struct Outgoing<'a> {
    pub hold: gst::Buffer,
    pub wire: BufferWire,
    pub blocks: Vec<(BlockWire, BorrowedFd<'a>)>,
    /// The newest of the blocks' [`Block::before`](memfd::Block::before): a consumer that
    /// joined after that audience misses the buffer (0: none does).
    pub before: u64,
}

/// A running producer: the socket it listens on and its service thread. Stopped on drop.
pub struct Server {
    state: State,
    thread: Option<JoinHandle<()>>,
    /// The socket we bound: its path, device and inode (to unlink only that one at stop).
    bound: (PathBuf, u64, u64),
    /// Ids of this stream's blocks freed since last looked at.
    freed: Arc<FreedBlocks>,
    /// Flushing or stopping: a send waiting for room gives up (looked at without the lock).
    stopping: Arc<AtomicBool>,
    /// The stream's id for MemfdMemory's recycling: its blocks go back to its own allocator.
    stream: u64,
    /// An eventfd that wakes the service thread: a consumer's socket was found full, and the
    /// service thread is to watch it for room at once (not at its next 50 ms tick).
    wake: Arc<OwnedFd>,
}

impl Server {
    /// Listens at `path` (permissions `mode`) and starts serving consumers.
    /// `stream`: the id of the stream's MemfdMemory allocator (`MemfdAllocator::stream`).
    pub fn start(path: &Path, mode: u32, limits: Limits, stream: u64) -> Result<Server, String> {
        use std::os::unix::fs::MetadataExt;
        let listener = socket::listen_at(path, mode)?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| socket::path_error(path, e))?;
        let state: State = Arc::new((Mutex::new(Shared::new(limits, stream)), Condvar::new()));
        let freed = memfd::subscribe_freed(stream);
        // What its blocks held before (a previous run of the stream) was not sent to anyone
        // who connects now.
        memfd::new_audience(stream);
        use rustix::event::{EventfdFlags, eventfd};
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map(Arc::new)
            .map_err(|e| format!("cannot make an eventfd: {e}"))?;
        let (thread_state, thread_freed, thread_wake) =
            (state.clone(), freed.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name("memfdsink".into())
            .spawn(move || service::serve(thread_state, listener, thread_freed, thread_wake))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        Ok(Server {
            state,
            thread: Some(thread),
            bound: (path.to_owned(), meta.dev(), meta.ino()),
            freed,
            stopping: Arc::new(AtomicBool::new(false)),
            stream,
            wake,
        })
    }

    pub fn set_limits(&self, limits: Limits) {
        lock(&self.state).limits = limits;
        self.state.1.notify_all();
    }

    pub fn set_flushing(&self, flushing: bool) {
        self.stopping.store(flushing, Ordering::Relaxed);
        lock(&self.state).flushing = flushing;
        self.state.1.notify_all();
    }

    pub fn stats(&self) -> Stats {
        lock(&self.state).stats()
    }

    /// Ids of the stream's freed blocks waiting to be retired at the consumers.
    #[cfg(test)]
    fn freed_waiting(&self) -> usize {
        self.freed.len()
    }

    /// New caps: sent to every consumer, and first to each that connects later.
    pub fn caps(&self, caps: &str) -> Result<(), String> {
        let packet = Message::Caps(caps.to_owned()).encode();
        if packet.len() > MAX_MESSAGE {
            return Err(format!(
                "caps of {} bytes are too large to send",
                packet.len()
            ));
        }
        {
            let mut s = lock(&self.state);
            s.caps = Some(packet.clone());
            s.replay_generation += 1;
        }
        self.broadcast(&packet);
        Ok(())
    }

    /// A stream-start, segment or EOS (the string of its structure).
    pub fn event(&self, kind: EventKind, text: String) {
        let packet = Message::Event(kind, text).encode();
        {
            let mut s = lock(&self.state);
            s.replay_generation += 1;
            match kind {
                EventKind::StreamStart => s.stream_start = Some(packet.clone()),
                EventKind::Segment => s.segment = Some(packet.clone()),
                EventKind::Eos => {}
            }
        }
        self.broadcast(&packet);
    }

    /// Holds the stream until at least `min` consumers have said hello.
    pub fn wait_for_consumers(&self, min: usize) -> Result<(), Flushing> {
        let mut s = lock(&self.state);
        while s.ready() < min && !s.flushing && s.running {
            s = self.wait(s, Duration::from_millis(100));
        }
        if s.flushing { Err(Flushing) } else { Ok(()) }
    }

    fn wait<'a>(&self, s: MutexGuard<'a, Shared>, t: Duration) -> MutexGuard<'a, Shared> {
        self.state
            .1
            .wait_timeout(s, t)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// `OnFull::Wait`: waits while a consumer cannot take a buffer in `blocks` (it holds
    /// `max_outstanding` buffers, or every block it may map); one that releases nothing for
    /// `full_timeout` is dropped.
    pub fn wait_for_room(&self, blocks: &[BlockWire]) -> Result<(), Flushing> {
        let mut s = lock(&self.state);
        let deadline = Instant::now() + s.limits.full_timeout;
        loop {
            if s.flushing {
                return Err(Flushing);
            }
            let max = s.limits.max_outstanding;
            let full: Vec<u64> = s
                .consumers
                .iter()
                .filter(|c| c.peer.ready() && c.peer.fits(blocks, max).is_err())
                .map(|c| c.peer.id)
                .collect();
            if full.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let why = format!(
                    "released nothing for {} ms while full (max-outstanding {max})",
                    s.limits.full_timeout.as_millis()
                );
                let mut gone = Gone::default();
                for id in full {
                    gone.add(s.drop_consumer(id, &why));
                }
                drop(s);
                gone.finish();
                return Ok(());
            }
            s = self.wait(s, Duration::from_millis(50));
        }
    }

    /// Stops serving: the thread ends, every consumer's blocks are retired, our socket (and
    /// only ours) is unlinked. Returns the final statistics, and `Err` saying why the path
    /// was left in place. Never waits on a consumer: the service thread reads nothing that
    /// blocks and closes nothing a consumer sent.
    pub fn stop(mut self) -> (Stats, Result<(), String>) {
        let unlinked = self.shutdown();
        (self.stats(), unlinked)
    }

    fn shutdown(&mut self) -> Result<(), String> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stopping.store(true, Ordering::Relaxed);
        lock(&self.state).running = false;
        self.state.1.notify_all();
        let _ = thread.join();
        let gone = lock(&self.state).leave_all();
        gone.finish();
        // Blocks of this stream kept for its allocator: no consumer maps them any more.
        memfd::forget_stream(self.stream);
        let (path, dev, ino) = &self.bound;
        remove_own_socket(path, *dev, *ino)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Unlinks the socket at `path` if it is still the one we bound (same device and inode):
/// never another producer's socket that took the path over, nor a file put there.
fn remove_own_socket(path: &Path, dev: u64, ino: u64) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() && m.dev() == dev && m.ino() == ino => {
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        Ok(_) => Err(format!(
            "{} is no longer our socket: left in place",
            path.display()
        )),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests;
