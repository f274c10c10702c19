// SPDX-License-Identifier: MPL-2.0
//! The transport's view of blocks: ids, blocks sent and retired, freed-block queues.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use gst::ffi;

use crate::allocator::raw::root_memory;

use super::fd::{is_memfd_memory, is_sealed_memfd};

/// Which streams a block was sent by: what decides where it may be recycled. A consumer
/// keeps the blocks it was sent mapped, so a block may only ever carry frames of the one
/// stream it was sent by, and private memory never goes to a block any consumer maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Never sent: private memory, recycled for anyone.
    Private,
    /// Sent by this stream only: recycled for this stream's allocator only.
    Stream(u64),
    /// Sent by more than one stream: never recycled.
    Streams,
}

impl Owner {
    fn sent_by(self, stream: u64) -> Owner {
        match self {
            Owner::Private => Owner::Stream(stream),
            Owner::Stream(s) if s == stream => self,
            _ => Owner::Streams,
        }
    }
}

/// A root block the transport has seen: its id (never reused in this process), which streams
/// sent it, and whether it was retired (is never to be recycled).
pub(super) struct BlockEntry {
    pub(super) id: u64,
    pub(super) owner: Owner,
    pub(super) retired: bool,
}

/// The transport's view of live root blocks, keyed by the root memory's address (an entry is
/// removed when its root is freed, before the address can be reused).
pub(super) static BLOCKS: LazyLock<Mutex<HashMap<usize, BlockEntry>>> =
    LazyLock::new(Default::default);
static NEXT_BLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Ids of blocks sent to another process and since freed, for one transport to retire.
#[derive(Default)]
pub struct FreedBlocks(Mutex<Vec<u64>>);

impl FreedBlocks {
    /// The ids freed since the last call.
    pub fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

static FREED: LazyLock<Mutex<Vec<std::sync::Weak<FreedBlocks>>>> = LazyLock::new(Default::default);

/// A queue that receives the id of every block that was [`block_of`]'d and has since been
/// freed, until the returned `Arc` is dropped.
pub fn subscribe_freed() -> std::sync::Arc<FreedBlocks> {
    let q = std::sync::Arc::new(FreedBlocks::default());
    let mut subs = FREED.lock().unwrap_or_else(|e| e.into_inner());
    subs.retain(|w| w.strong_count() > 0);
    subs.push(std::sync::Arc::downgrade(&q));
    q
}

/// Called from `free` for a root: forgets its entry and tells the subscribers.
pub(super) fn block_freed(root: *mut ffi::GstMemory) {
    let gone = BLOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(root as usize));
    if let Some(BlockEntry { id, owner, .. }) = gone
        && owner != Owner::Private
    {
        for q in FREED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|w| w.upgrade())
        {
            q.0.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        }
    }
}

/// Which streams sent the block behind `mem` (`Private` for one never sent).
pub fn owner_of(mem: &gst::MemoryRef) -> Owner {
    let root = root_memory(mem);
    BLOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
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
}

/// The `MemfdMemory` block behind `mem` (a block or a share of one), if it may be sent to
/// another process as it is: a root of this allocator whose memfd is sealed against shrinking
/// and against writes by receivers. Marks the block as sent by `stream` (see [`Owner`]).
/// No system call is made under the registry's lock.
pub fn block_of(mem: &gst::MemoryRef, stream: u64) -> Option<Block<'_>> {
    if !is_memfd_memory(mem) {
        return None;
    }
    let fd_mem = mem.downcast_memory_ref::<gst_allocators::FdMemory>()?;
    let raw = fd_mem.fd();
    if raw < 0 {
        return None;
    }
    // SAFETY: the descriptor is owned by the live memory `mem` borrows (a share uses its
    // root's), open for as long as the borrow we return it with.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    let root = root_memory(mem);
    // SAFETY: the root is live while `mem` is.
    let size = unsafe { (*root).maxsize };
    if let Some(b) = BLOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(&(root as usize))
    {
        b.owner = b.owner.sent_by(stream);
        return Some(Block { id: b.id, size, fd });
    }
    // First seen: a block we allocated is sealed; a wrapped one (received) must be checked.
    if !is_sealed_memfd(mem) {
        return None;
    }
    let mut blocks = BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
    let b = blocks.entry(root as usize).or_insert_with(|| BlockEntry {
        id: NEXT_BLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        owner: Owner::Private,
        retired: false,
    });
    b.owner = b.owner.sent_by(stream);
    Some(Block { id: b.id, size, fd })
}
