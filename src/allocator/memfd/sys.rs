// SPDX-License-Identifier: MPL-2.0
//! The memfd system calls `MemfdMemory` makes (safe code, through rustix).

use std::os::fd::OwnedFd;

use crate::allocator::error::AllocError;

fn errno(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> AllocError {
    move |e| AllocError::System { what, errno: e }
}

/// A new memfd of `len` bytes (zero-filled by the kernel), close-on-exec, sealed against
/// shrinking and growing (so no holder can cut it short under someone's mapping). The
/// allocator seals it against writes next, once it has its own mapping ([`seal_writes`]).
pub fn create_memfd(len: usize) -> Result<OwnedFd, AllocError> {
    use rustix::fs::{self, MemfdFlags, SealFlags};
    let fd = fs::memfd_create(c"memkit", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(errno("memfd_create"))?;
    fs::ftruncate(&fd, len as u64).map_err(errno("ftruncate"))?;
    fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW)
        .map_err(errno("fcntl(F_ADD_SEALS)"))?;
    Ok(fd)
}

/// Seals a memfd against writes through any new descriptor or mapping
/// (`F_SEAL_FUTURE_WRITE`, Linux >= 5.1) and against further seal changes: the mapping the
/// allocator already holds stays writable, but no process the descriptor is sent to can
/// write the block, not even by reopening `/proc/self/fd/N`.
pub fn seal_writes(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), AllocError> {
    use rustix::fs::{self, SealFlags};
    fs::fcntl_add_seals(fd, SealFlags::FUTURE_WRITE | SealFlags::SEAL)
        .map_err(errno("fcntl(F_ADD_SEALS, F_SEAL_FUTURE_WRITE)"))
}
