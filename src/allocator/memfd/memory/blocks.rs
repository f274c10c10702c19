// SPDX-License-Identifier: MPL-2.0
//! The transport's view of blocks: which stream a block belongs to, ids, retired blocks,
//! freed-block queues.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use gst::ffi;
use gst::glib;

use crate::allocator::raw::root_memory;

use super::fd::is_memfd_memory;

/// Whose a block is: what decides where it may be recycled and whether a `memfdsink` may
/// send it as it is. A consumer keeps the blocks it was sent mapped, the whole block, so a
/// block may only ever carry bytes of the one stream it belongs to, and a block of private
/// memory never goes to a consumer (`memfdsink` copies it into a block of its stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Private memory (the registered allocator's, a copy, a wrapped descriptor): recycled for
    /// private memory only, never sent as it is.
    Private,
    /// Made by stream `s`'s own allocator (the one its `memfdsink` proposes): recycled for
    /// that allocator only, and the one kind of block that stream sends as it is.
    Stream(u64),
}

/// A root block of a stream: its id (never reused in this process), its stream, whether it
/// was retired (is never to be recycled), and the audience its bytes were last sent to whole.
pub(super) struct BlockEntry {
    pub(super) id: u64,
    pub(super) owner: Owner,
    pub(super) retired: bool,
    /// The stream's audience (see [`new_audience`]) when what the block holds was sent to
    /// every consumer of the stream; 0: not so (not sent yet, or some consumer missed it).
    seen: u64,
    /// Reused without zeroing: the audience that was sent what it held before (which its new
    /// content may not cover); 0: it holds nothing from before it was taken (new, zeroed).
    before: u64,
    /// Sent as it is since it was taken (see [`freeze`]): read-only for the producer, and held
    /// by one more exclusive lock, until its last reference goes.
    pub(super) frozen: bool,
}

/// The blocks of streams, keyed by the root memory's address (an entry is removed when its
/// root is freed, before the address can be reused), and their addresses by id.
#[derive(Default)]
pub(super) struct Registry {
    pub(super) by_root: HashMap<usize, BlockEntry>,
    by_id: HashMap<u64, usize>,
    /// Each running stream's audience: a number never used before, new whenever a consumer
    /// joins the stream (see [`new_audience`]).
    audience: HashMap<u64, u64>,
}

impl Registry {
    /// Block `id`'s entry and root, marked retired.
    pub(super) fn retire(&mut self, id: u64) -> Option<usize> {
        let root = *self.by_id.get(&id)?;
        if let Some(entry) = self.by_root.get_mut(&root) {
            entry.retired = true;
        }
        Some(root)
    }
}

pub(super) static BLOCKS: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);
static NEXT_BLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
static NEXT_AUDIENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn blocks() -> std::sync::MutexGuard<'static, Registry> {
    BLOCKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The new root block `root` was made by stream `stream`'s allocator: it is that stream's
/// for as long as it lives (recycling included).
pub(super) fn claim(root: *mut ffi::GstMemory, stream: u64) {
    let mut b = blocks();
    if b.by_root.contains_key(&(root as usize)) {
        return;
    }
    let id = NEXT_BLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    b.by_root.insert(
        root as usize,
        BlockEntry {
            id,
            owner: Owner::Stream(stream),
            retired: false,
            seen: 0,
            before: 0,
            frozen: false,
        },
    );
    b.by_id.insert(id, root as usize);
}

/// Stream `stream` has a new audience: its transport started, or a consumer joined it. What
/// its blocks held until now was not sent to everyone who may map them from now on: a block
/// is zeroed whole before it is reused, unless what it holds is sent to every consumer of
/// this audience first ([`sent_to_all`]). Returns the new audience's number (they grow);
/// stream 0 (private memory) has none (0).
pub fn new_audience(stream: u64) -> u64 {
    if stream == 0 {
        return 0;
    }
    let audience = NEXT_AUDIENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    blocks().audience.insert(stream, audience);
    audience
}

/// Stream `stream`'s audience now (0: it has none, its transport is not running).
pub fn audience(stream: u64) -> u64 {
    blocks().audience.get(&stream).copied().unwrap_or(0)
}

/// What the blocks `ids` hold was sent to every consumer of `audience` (read with
/// [`audience`] when the consumers to send it to were chosen): if no consumer joined since,
/// the blocks are reused without zeroing.
pub fn sent_to_all(ids: impl IntoIterator<Item = u64>, audience: u64) {
    if audience == 0 {
        return;
    }
    let mut b = blocks();
    for id in ids {
        if let Some(root) = b.by_id.get(&id).copied()
            && let Some(entry) = b.by_root.get_mut(&root)
        {
            entry.seen = audience;
        }
    }
}

/// Whether the recycled block `root`, taken for reuse by stream `stream`, holds only what
/// every consumer of the stream's audience now was sent (it need not be zeroed; a consumer
/// that joins before it is sent does not get it: see [`Block::before`]). Its new content
/// is not sent yet either way.
pub(super) fn take_seen(root: *mut ffi::GstMemory, stream: u64) -> bool {
    let mut b = blocks();
    let now = b.audience.get(&stream).copied().unwrap_or(0);
    b.by_root.get_mut(&(root as usize)).is_some_and(|e| {
        let seen = now != 0 && e.seen == now;
        e.seen = 0;
        e.before = if seen { now } else { 0 };
        seen
    })
}

/// Stream `stream` stopped: it has no audience until its transport starts again.
pub(super) fn forget_audience(stream: u64) {
    blocks().audience.remove(&stream);
}

/// Ids of blocks of one stream freed since they were last taken, for its transport to retire
/// at the consumers that map them.
#[derive(Default)]
pub struct FreedBlocks {
    stream: u64,
    ids: Mutex<Vec<u64>>,
}

impl FreedBlocks {
    /// The ids freed since the last call.
    pub fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.ids.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many wait to be taken.
    pub fn len(&self) -> usize {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

static FREED: LazyLock<Mutex<Vec<std::sync::Weak<FreedBlocks>>>> = LazyLock::new(Default::default);

/// A queue that receives the id of every block of stream `stream` that is freed, until the
/// returned `Arc` is dropped. Other streams' blocks never reach it.
pub fn subscribe_freed(stream: u64) -> std::sync::Arc<FreedBlocks> {
    let q = std::sync::Arc::new(FreedBlocks {
        stream,
        ids: Mutex::default(),
    });
    let mut subs = FREED.lock().unwrap_or_else(|e| e.into_inner());
    subs.retain(|w| w.strong_count() > 0);
    subs.push(std::sync::Arc::downgrade(&q));
    q
}

/// Called from `free` for a root: forgets its entry and tells its stream's subscribers.
pub(super) fn block_freed(root: *mut ffi::GstMemory) {
    let gone = {
        let mut b = blocks();
        let gone = b.by_root.remove(&(root as usize));
        if let Some(e) = &gone {
            b.by_id.remove(&e.id);
        }
        gone
    };
    if let Some(BlockEntry {
        id,
        owner: Owner::Stream(stream),
        ..
    }) = gone
    {
        for q in FREED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|w| w.upgrade())
            .filter(|q| q.stream == stream)
        {
            q.ids.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        }
    }
}

/// Whose the block behind `mem` is.
pub fn owner_of(mem: &gst::MemoryRef) -> Owner {
    let root = root_memory(mem);
    blocks()
        .by_root
        .get(&(root as usize))
        .map_or(Owner::Private, |b| b.owner)
}

/// The block behind a memory, as the transport sends it.
pub struct Block<'a> {
    /// The block's id: the same for every memory of this block for as long as it lives
    /// (recycling included), never reused.
    pub id: u64,
    /// The size of the block's file (its root's maxsize).
    pub size: usize,
    /// The block's descriptor, owned by the memory.
    pub fd: std::os::fd::BorrowedFd<'a>,
    /// The block was reused without zeroing: what it held before was sent to every consumer
    /// of this audience (numbers grow), not to a consumer that joined since, which must not
    /// be sent the block until it holds only what that consumer may see. 0: the block holds
    /// nothing from before (new, or zeroed when reused).
    pub before: u64,
}

/// The `MemfdMemory` block behind `mem` (a block or a share of one), if stream `stream` may
/// send it as it is: a block its own allocator made (sealed against shrinking and against
/// writes by receivers). Anything else (private memory, another stream's block, a block
/// received from another process) is `None`: a consumer maps the whole block, and the bytes
/// of such a block outside `mem` are not the stream's to show.
pub fn block_of(mem: &gst::MemoryRef, stream: u64) -> Option<Block<'_>> {
    if stream == 0 || !is_memfd_memory(mem) {
        return None;
    }
    let fd_mem = mem.downcast_memory_ref::<gst_allocators::FdMemory>()?;
    let raw = fd_mem.fd();
    if raw < 0 {
        return None;
    }
    let root = root_memory(mem);
    let (id, before) = match blocks().by_root.get(&(root as usize)) {
        Some(b) if b.owner == Owner::Stream(stream) => (b.id, b.before),
        _ => return None,
    };
    // SAFETY: the descriptor is owned by the live memory `mem` borrows (a share uses its
    // root's), open for as long as the borrow we return it with.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    // SAFETY: the root is live while `mem` is.
    let size = unsafe { (*root).maxsize };
    Some(Block {
        id,
        size,
        fd,
        before,
    })
}

/// Stream `stream` sends `mem` (a block of its own, see [`block_of`]) as it is: the block is
/// frozen until its last reference goes (to MemfdMemory's free, where it is recycled, zeroed
/// on reuse when an audience did not see what it holds, or retired). Frozen, it maps for
/// reading only (a write map fails, `gst_buffer_map` for writing gets a copy), and one more
/// exclusive lock makes it not writable for `gst_memory_is_writable`: a `GstBufferPool` whose
/// buffer holds it discards that buffer when it comes back instead of handing the memory out
/// again. So a frame is never written into a block a consumer was sent, however the block is
/// kept, and a pool's blocks go through the zeroing and the retirement too. Returns false
/// (nothing frozen) when `mem` is not such a block or cannot be locked (it is mapped for
/// writing now): then it is not to be sent as it is.
pub fn freeze(mem: &gst::MemoryRef, stream: u64) -> bool {
    if stream == 0 || !is_memfd_memory(mem) {
        return false;
    }
    let root = root_memory(mem);
    let mut b = blocks();
    match b.by_root.get_mut(&(root as usize)) {
        Some(e) if e.owner == Owner::Stream(stream) => {
            if !e.frozen {
                // SAFETY: the root is live while `mem` is; it is lockable (every block is,
                // gst_memory_init makes it so and recycling keeps the flag). The lock is
                // released once, by `thaw`, when its last reference goes.
                e.frozen = unsafe {
                    ffi::gst_mini_object_lock(
                        root as *mut ffi::GstMiniObject,
                        ffi::GST_LOCK_FLAG_EXCLUSIVE,
                    ) != glib::ffi::GFALSE
                };
            }
            e.frozen
        }
        _ => false,
    }
}

/// Called from `dispose` for a root (refcount 0), with the registry: a frozen block is thawed
/// (its extra lock released), before it is recycled or freed.
pub(super) fn thaw(b: &mut Registry, root: *mut ffi::GstMemory) {
    if let Some(e) = b.by_root.get_mut(&(root as usize))
        && e.frozen
    {
        e.frozen = false;
        // SAFETY: the root is live (being disposed), and holds the lock `freeze` took.
        unsafe {
            ffi::gst_mini_object_unlock(
                root as *mut ffi::GstMiniObject,
                ffi::GST_LOCK_FLAG_EXCLUSIVE,
            )
        };
    }
}

/// Whether the block whose root is `root` is frozen (see [`freeze`]).
pub(super) fn is_frozen(root: *mut ffi::GstMemory) -> bool {
    blocks()
        .by_root
        .get(&(root as usize))
        .is_some_and(|e| e.frozen)
}
