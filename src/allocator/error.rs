// SPDX-License-Identifier: MPL-2.0
//! Why an allocation, share, copy, resize or wrap failed: the errors both allocators return.

use super::layout::LayoutError;

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// `params.align` is not a mask of the form `2^n - 1`.
    #[error("{}", LayoutError::InvalidAlignMask(*.0))]
    InvalidAlignMask(usize),
    /// The alignment is larger than [`MAX_ALIGN`](super::MAX_ALIGN).
    #[error("{}", LayoutError::AlignTooLarge(*.0))]
    AlignTooLarge(usize),
    /// `MemfdMemory`: the alignment is larger than a page.
    #[error("{}", LayoutError::AlignAbovePage { align: *align, page: *page })]
    AlignAbovePage { align: usize, page: usize },
    /// `MemfdMemory`: a system call failed (`what`, with its errno: a system call's error is
    /// never 0, so this never reads "Success").
    #[error("{what} failed: {errno}")]
    System {
        what: &'static str,
        errno: rustix::io::Errno,
    },
    /// `prefix + size + padding`, rounded up to the alignment, overflows.
    #[error(
        "{}",
        LayoutError::Overflow { size: *size, prefix: *prefix, padding: *padding, align: *align }
    )]
    Overflow {
        size: usize,
        prefix: usize,
        padding: usize,
        align: usize,
    },
    /// The system allocator could not provide `size` bytes aligned to `align`.
    #[error("out of memory: {size} bytes aligned to {align}")]
    OutOfMemory { size: usize, align: usize },
    /// An internal invariant did not hold (a bug in memkit): the allocation is refused.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<LayoutError> for AllocError {
    fn from(err: LayoutError) -> Self {
        match err {
            LayoutError::InvalidAlignMask(m) => AllocError::InvalidAlignMask(m),
            LayoutError::AlignTooLarge(m) => AllocError::AlignTooLarge(m),
            LayoutError::AlignAbovePage { align, page } => {
                AllocError::AlignAbovePage { align, page }
            }
            LayoutError::Overflow {
                size,
                prefix,
                padding,
                align,
            } => AllocError::Overflow {
                size,
                prefix,
                padding,
                align,
            },
        }
    }
}

/// Why a share, copy, resize or wrap was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// The requested range does not fit in the `available` bytes.
    #[error("range out of bounds: offset {offset} size {size}, only {available} bytes available")]
    OutOfRange {
        offset: isize,
        size: usize,
        available: usize,
    },
    /// The memory carries `GST_MEMORY_FLAG_NO_SHARE`.
    #[error("the memory is flagged NO_SHARE")]
    NoShare,
    /// The memory is shared or read-only, and the operation needs it writable.
    #[error("the memory is not writable")]
    NotWritable,
    /// GStreamer or the system refused the operation.
    #[error("{0}")]
    Refused(&'static str),
}

/// Why a received descriptor was not wrapped as `MemfdMemory`
/// ([`memfd::wrap_fd`](super::memfd::wrap_fd)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FdError {
    /// `offset + size` does not fit in `maxsize`, or `maxsize` is 0.
    #[error("bad layout: offset {offset} size {size} maxsize {maxsize}")]
    BadLayout {
        offset: usize,
        size: usize,
        maxsize: usize,
    },
    /// The descriptor is not a memfd whose seals can be read.
    #[error("not a sealable memfd: {0}")]
    NotSealable(rustix::io::Errno),
    /// The file could shrink under a mapping.
    #[error("the file is not sealed against shrinking")]
    NotSealedAgainstShrinking,
    /// `fstat` failed.
    #[error("fstat: {0}")]
    Stat(rustix::io::Errno),
    /// The file is shorter than the memory would be.
    #[error("the file has {len} bytes, fewer than maxsize {maxsize}")]
    TooShort { len: u64, maxsize: usize },
    /// A share of a block that does not lie inside it.
    #[error("bytes {offset}..{end} are outside the {block}-byte block")]
    OutsideBlock {
        offset: usize,
        end: u128,
        block: usize,
    },
    /// GStreamer did not make a memory of it.
    #[error("gst_fd_allocator_alloc failed")]
    Refused,
    /// The descriptor was opened write-only: it cannot be mapped for reading.
    #[error("the descriptor is write-only: it cannot be mapped for reading")]
    WriteOnly,
    /// Not a shmem (tmpfs) memfd: a hugetlbfs memfd maps only while huge pages are free,
    /// and its owner can punch holes in it under the seals.
    #[error("not a shmem memfd (file system magic {0:#x}; hugetlbfs is 0x958458f6)")]
    NotShmem(u64),
    /// Not a regular file (a device, a socket, a directory...): no memfd.
    #[error("not a regular file (a memfd is one)")]
    NotAFile,
    /// The block does not map (read-only) in this process.
    #[error("the block does not map for reading")]
    Unmappable,
}
