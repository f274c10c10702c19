// SPDX-License-Identifier: MPL-2.0
//! Why an allocation, share, copy, resize or wrap failed: the errors both allocators return.

use std::fmt;

use super::layout::LayoutError;

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// `params.align` is not a mask of the form `2^n - 1`.
    InvalidAlignMask(usize),
    /// The alignment is larger than [`MAX_ALIGN`].
    AlignTooLarge(usize),
    /// `MemfdMemory`: the alignment is larger than a page.
    AlignAbovePage { align: usize, page: usize },
    /// `MemfdMemory`: a system call failed (`what`, with its errno).
    System { what: &'static str, errno: i32 },
    /// `prefix + size + padding`, rounded up to the alignment, overflows.
    Overflow {
        size: usize,
        prefix: usize,
        padding: usize,
        align: usize,
    },
    /// The system allocator could not provide `size` bytes aligned to `align`.
    OutOfMemory { size: usize, align: usize },
    /// An internal invariant did not hold (a bug in memkit): the allocation is refused.
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

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AllocError::InvalidAlignMask(m) => LayoutError::InvalidAlignMask(m).fmt(f),
            AllocError::AlignTooLarge(m) => LayoutError::AlignTooLarge(m).fmt(f),
            AllocError::AlignAbovePage { align, page } => {
                LayoutError::AlignAbovePage { align, page }.fmt(f)
            }
            AllocError::System { what, errno } => write!(
                f,
                "{what} failed: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
            AllocError::Overflow {
                size,
                prefix,
                padding,
                align,
            } => LayoutError::Overflow {
                size,
                prefix,
                padding,
                align,
            }
            .fmt(f),
            AllocError::OutOfMemory { size, align } => {
                write!(f, "out of memory: {size} bytes aligned to {align}")
            }
            AllocError::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

impl std::error::Error for AllocError {}

/// Why a share, copy, resize or wrap was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryError {
    /// The requested range does not fit in the `available` bytes.
    OutOfRange {
        offset: isize,
        size: usize,
        available: usize,
    },
    /// The memory carries `GST_MEMORY_FLAG_NO_SHARE`.
    NoShare,
    /// The memory is shared or read-only, and the operation needs it writable.
    NotWritable,
    /// GStreamer or the system refused the operation.
    Refused(&'static str),
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MemoryError::OutOfRange {
                offset,
                size,
                available,
            } => write!(
                f,
                "range out of bounds: offset {offset} size {size}, only {available} bytes available"
            ),
            MemoryError::NoShare => f.write_str("the memory is flagged NO_SHARE"),
            MemoryError::NotWritable => f.write_str("the memory is not writable"),
            MemoryError::Refused(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for MemoryError {}
