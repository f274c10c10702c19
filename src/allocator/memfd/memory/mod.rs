// SPDX-License-Identifier: MPL-2.0
//! The unsafe half of `MemfdMemory`: handing a memfd to `gst_fd_allocator_alloc`, setting the
//! block's layout, recycling, the transport's block registry, and the memory vfuncs that
//! 1.22's fd memory lacks or gets wrong, and the two socket calls of the transport that rustix
//! lacks (`sockopt`, which stands alone: the transport's tests compile it in). The fd memory struct itself stays GStreamer's.
//!
//! Files depend on each other in one direction: `fd` ← `blocks` ← `recycle` ← `alloc` ←
//! `vfuncs`, `class`.

mod alloc;
mod blocks;
mod class;
mod fd;
mod recycle;
pub mod sockopt;
mod vfuncs;

pub use alloc::{alloc, share_block, wrap_fd};
pub use blocks::{
    Block, FreedBlocks, Owner, audience, block_of, freeze, new_audience, owner_of, sent_to_all,
    subscribe_freed,
};
pub use fd::{ALLOCATOR_TYPE_NAME, dup_fd, is_memfd_memory, is_sealed_memfd};
pub use recycle::{
    forget_stream, max_bytes, recycled_bytes, retire_block, set_max_bytes, trim_recycled,
};
pub use vfuncs::install_vfuncs;
