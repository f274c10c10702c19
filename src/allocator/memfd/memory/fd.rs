// SPDX-License-Identifier: MPL-2.0
//! Descriptors of fd memory.

use std::sync::OnceLock;

use gst::glib;

use crate::allocator::shared::allocator_is;

/// The GType name of the `MemfdAllocator` subclass.
pub const ALLOCATOR_TYPE_NAME: &str = "MemkitMemfdAllocator";

/// `true` when `mem` is `MemfdMemory` memory (a check of its allocator's GType, looked up by
/// name once it is registered).
pub fn is_memfd_memory(mem: &gst::MemoryRef) -> bool {
    static TYPE: OnceLock<glib::Type> = OnceLock::new();
    mem.allocator()
        .is_some_and(|a| allocator_is(a, &TYPE, ALLOCATOR_TYPE_NAME))
}

/// `true` when `mem` is fd memory whose file is a memfd sealed against shrinking and against
/// writes by whoever receives it (`F_SEAL_FUTURE_WRITE` or `F_SEAL_WRITE`): what `memfdsink`
/// can send as it is (another process can map it without risk of it shrinking, and cannot
/// change what other consumers read).
pub fn is_sealed_memfd(mem: &gst::MemoryRef) -> bool {
    use rustix::fs::SealFlags;
    let Some(raw) = mem
        .downcast_memory_ref::<gst_allocators::FdMemory>()
        .map(|m| m.fd())
        .filter(|&fd| fd >= 0)
    else {
        return false;
    };
    // SAFETY: `raw` is owned by the live memory `mem` borrows, open for at least as long as
    // this borrow, which ends before we return. (No duplicate: this check must work when
    // the process is out of descriptors.)
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| {
        s.contains(SealFlags::SHRINK) && s.intersects(SealFlags::FUTURE_WRITE | SealFlags::WRITE)
    })
}

/// A new descriptor (close-on-exec) for the file behind `mem`, if it is fd memory of any
/// allocator: for sending to another process, or checking seals. `mem` keeps its own.
pub fn dup_fd(mem: &gst::MemoryRef) -> std::io::Result<std::os::fd::OwnedFd> {
    let Some(fd_mem) = mem.downcast_memory_ref::<gst_allocators::FdMemory>() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not fd memory",
        ));
    };
    let raw = fd_mem.fd();
    if raw < 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "fd memory without a descriptor",
        ));
    }
    // SAFETY: `raw` is owned by the live memory `mem` borrows, open for at least as long as
    // this borrow, which ends before we return.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    Ok(rustix::io::fcntl_dupfd_cloexec(borrowed, 0)?)
}
