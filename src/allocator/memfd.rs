// SPDX-License-Identifier: MPL-2.0
//! `MemfdMemory`: a `GstFdAllocator` whose blocks are sealed memfds, so another process can
//! map them through their descriptor (`gst_fd_memory_get_fd`). Same payload alignment (64 bytes
//! minimum, up to a page) and zeroing guarantees as `AlignedMemory`; shares of shares get the
//! right size and contiguous shares span (both missing from 1.22's fd memory).
//!
//! Safe code: the memfd is made with rustix; handing it to GStreamer is in `memory::memfd`.

use std::os::fd::OwnedFd;
use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;

use super::AllocError;

/// The name `MemfdMemory` is registered under.
pub const MEMFD_MEMORY: &str = "MemfdMemory";

glib::wrapper! {
    /// The `MemfdMemory` allocator (GType `MemkitMemfdAllocator`), a `GstFdAllocator`.
    pub struct MemfdAllocator(ObjectSubclass<super::memfd_imp::MemfdAllocator>)
        @extends gst_allocators::FdAllocator, gst::Allocator, gst::Object;
}

static ALLOCATOR: LazyLock<MemfdAllocator> = LazyLock::new(|| {
    let allocator = glib::Object::new::<MemfdAllocator>();
    gst::Allocator::register(MEMFD_MEMORY, allocator.clone());
    allocator
});

/// The registered `MemfdMemory` allocator.
pub fn memfd_allocator() -> MemfdAllocator {
    ALLOCATOR.clone()
}

pub(super) fn register() {
    LazyLock::force(&ALLOCATOR);
}

/// The system page size.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

fn errno(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> AllocError {
    move |e| AllocError::System {
        what,
        errno: e.raw_os_error(),
    }
}

/// A new memfd of `len` bytes (zero-filled by the kernel), close-on-exec, sealed against
/// shrinking and growing (so no holder can cut it short under someone's mapping) and against
/// further seal changes.
pub(super) fn create_memfd(len: usize) -> Result<OwnedFd, AllocError> {
    use rustix::fs::{self, MemfdFlags, SealFlags};
    let fd = fs::memfd_create(c"memkit", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(errno("memfd_create"))?;
    fs::ftruncate(&fd, len as u64).map_err(errno("ftruncate"))?;
    fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(errno("fcntl(F_ADD_SEALS)"))?;
    Ok(fd)
}

impl MemfdAllocator {
    /// Allocates `size` bytes with `params` (or the defaults): the memory is fd memory whose
    /// payload is aligned to `params.align() | 63` (at most a page). Errors are typed.
    pub fn alloc(
        &self,
        size: usize,
        params: Option<&gst::AllocationParams>,
    ) -> Result<gst::Memory, AllocError> {
        let default = gst::AllocationParams::default();
        super::memory::memfd::alloc(self, size, params.unwrap_or(&default))
    }
}

pub use super::memory::memfd::{dup_fd, wrap_fd};

/// `true` when `mem` is `MemfdMemory` memory.
pub fn is_memfd_memory(mem: &gst::MemoryRef) -> bool {
    mem.allocator()
        .is_some_and(|a| a.type_().is_a(MemfdAllocator::static_type()))
}

/// `true` when `mem` is fd memory whose file is a memfd sealed against shrinking: what
/// `memfdsink` can send as it is (another process can map it without risk of it shrinking).
pub fn is_sealed_memfd(mem: &gst::MemoryRef) -> bool {
    dup_fd(mem)
        .ok()
        .and_then(|fd| rustix::fs::fcntl_get_seals(&fd).ok())
        .is_some_and(|s| s.contains(rustix::fs::SealFlags::SHRINK))
}
