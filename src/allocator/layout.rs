// SPDX-License-Identifier: MPL-2.0
//! Pure arithmetic for `AlignedMemory` blocks: alignment masks, checked sizes and the
//! zero ranges. Nothing here touches memory or GStreamer, so it is unit-tested directly.

/// The smallest alignment mask `AlignedMemory` ever uses: 64 bytes (a cache line, AVX-512).
pub const MIN_ALIGN_MASK: usize = 63;

/// The largest alignment `AlignedMemory` accepts: 1 GiB (a huge page). Larger masks are refused
/// with [`LayoutError::AlignTooLarge`] instead of being passed to the system allocator.
pub const MAX_ALIGN: usize = 1 << 30;

/// Why a block cannot be laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// `align` is not of the form `2^n - 1`.
    #[error("invalid alignment mask {0:#x}: it must be 2^n - 1 (e.g. 63 for 64 bytes)")]
    InvalidAlignMask(usize),
    /// The alignment is a valid mask but larger than [`MAX_ALIGN`].
    #[error("alignment mask {0:#x} is larger than the maximum alignment of {MAX_ALIGN} bytes")]
    AlignTooLarge(usize),
    /// A `MemfdMemory` payload can be aligned at most to a page.
    #[error(
        "alignment mask {align:#x} is larger than the page size ({page} bytes): memfd memory \
         is mapped from a page boundary, so its payload aligns at most to a page"
    )]
    AlignAbovePage { align: usize, page: usize },
    /// `prefix + size + padding`, rounded up to the alignment, does not fit in `isize`.
    #[error(
        "block size overflows: size {size} + prefix {prefix} + padding {padding} aligned to \
         mask {align:#x} does not fit in isize"
    )]
    Overflow {
        size: usize,
        prefix: usize,
        padding: usize,
        align: usize,
    },
}

/// `true` when `mask` is `2^n - 1` (0, 1, 3, 7, ...), the form GStreamer uses for alignments.
pub const fn is_valid_align_mask(mask: usize) -> bool {
    mask & mask.wrapping_add(1) == 0
}

/// The largest alignment mask that `addr` satisfies (`addr` must be non-zero for a useful
/// answer; 0 is reported as the largest supported mask).
pub const fn align_mask_of(addr: usize) -> usize {
    if addr == 0 {
        return MAX_ALIGN - 1;
    }
    let lowest = addr & addr.wrapping_neg();
    let mask = lowest - 1;
    if mask > MAX_ALIGN - 1 {
        MAX_ALIGN - 1
    } else {
        mask
    }
}

/// Rounds `value` up to a multiple of `mask + 1`, or `None` on overflow.
pub const fn round_up(value: usize, mask: usize) -> Option<usize> {
    match value.checked_add(mask) {
        Some(v) => Some(v & !mask),
        None => None,
    }
}

/// Where everything sits in one `AlignedMemory` block.
///
/// The system allocation (`alloc_size` bytes aligned to `align_mask + 1`) starts with `shift`
/// unused bytes, then the GstMemory *region* of `maxsize` bytes: `prefix` bytes, the payload
/// (`size` bytes, starting at an address that is a multiple of the alignment), `padding`
/// bytes, and the tail slack up to `maxsize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    /// Effective alignment mask: `params.align | MIN_ALIGN_MASK`.
    pub align_mask: usize,
    /// Bytes between the start of the system allocation and the region base.
    pub shift: usize,
    /// `round_up(prefix + size + padding, align)`: the region's size, the GstMemory `maxsize`.
    pub maxsize: usize,
    /// Size of the system allocation: `shift + maxsize`, never 0.
    pub alloc_size: usize,
    pub prefix: usize,
    pub size: usize,
    pub padding: usize,
}

impl BlockLayout {
    /// Lays out a block for `size` payload bytes with the given prefix, padding and requested
    /// alignment mask. Every computation is checked.
    pub fn new(
        size: usize,
        prefix: usize,
        padding: usize,
        align: usize,
    ) -> Result<BlockLayout, LayoutError> {
        if !is_valid_align_mask(align) {
            return Err(LayoutError::InvalidAlignMask(align));
        }
        let align_mask = align | MIN_ALIGN_MASK;
        if align_mask > MAX_ALIGN - 1 {
            return Err(LayoutError::AlignTooLarge(align));
        }
        let overflow = LayoutError::Overflow {
            size,
            prefix,
            padding,
            align,
        };

        // The payload starts at region + prefix; the region starts `shift` bytes into an
        // allocation aligned to `align_mask + 1`, so region + prefix is aligned when
        // shift + prefix is a multiple of the alignment.
        let shift = prefix.wrapping_neg() & align_mask;
        let used = prefix
            .checked_add(size)
            .and_then(|v| v.checked_add(padding))
            .ok_or(overflow)?;
        let maxsize = round_up(used, align_mask).ok_or(overflow)?;
        let alloc_size = shift.checked_add(maxsize).ok_or(overflow)?;
        // std::alloc::Layout (and gssize offsets in GStreamer) need the rounded size to fit in
        // isize. Never ask for a zero-sized allocation: a zero-byte block still gets one
        // aligned unit so that mapping it yields a real, non-NULL pointer.
        let alloc_size = alloc_size.max(align_mask + 1);
        if alloc_size > isize::MAX as usize - align_mask {
            return Err(overflow);
        }

        Ok(BlockLayout {
            align_mask,
            shift,
            maxsize,
            alloc_size,
            prefix,
            size,
            padding,
        })
    }

    /// The largest `size`, `prefix` and `padding` that [`BlockLayout::small`] lays out: small
    /// enough that no sum or rounding below can overflow.
    pub const SMALL_MAX: usize = (1 << 24) - 1;

    /// [`BlockLayout::new`] for the common request, without a `Result` to carry: an alignment
    /// mask of at most [`MIN_ALIGN_MASK`] and sizes of at most [`Self::SMALL_MAX`] each. `None`
    /// for any other request (which [`BlockLayout::new`] then lays out or refuses); where it
    /// answers, it answers exactly what `new` does (unit-tested).
    #[inline(always)]
    pub const fn small(size: usize, prefix: usize, padding: usize, align: usize) -> Option<Self> {
        if align > MIN_ALIGN_MASK
            || !is_valid_align_mask(align)
            || (size | prefix | padding) > Self::SMALL_MAX
        {
            return None;
        }
        let align_mask = MIN_ALIGN_MASK;
        let shift = prefix.wrapping_neg() & align_mask;
        let maxsize = (prefix + size + padding + align_mask) & !align_mask;
        let alloc_size = shift + maxsize;
        Some(BlockLayout {
            align_mask,
            shift,
            maxsize,
            alloc_size: if alloc_size > align_mask {
                alloc_size
            } else {
                align_mask + 1
            },
            prefix,
            size,
            padding,
        })
    }

    /// Alignment in bytes of the system allocation.
    pub const fn alloc_align(&self) -> usize {
        self.align_mask + 1
    }

    /// The region-relative range that `ZERO_PREFIXED` promises is zero.
    pub const fn prefix_range(&self) -> std::ops::Range<usize> {
        0..self.prefix
    }

    /// The region-relative range that `ZERO_PADDED` promises is zero: the padding and the
    /// tail slack up to `maxsize`.
    pub const fn padding_range(&self) -> std::ops::Range<usize> {
        self.prefix + self.size..self.maxsize
    }
}

/// Resolves a GStreamer `(offset, size)` request (as given to `gst_memory_share` or
/// `gst_memory_copy`, both `gssize`, `size == -1` meaning "to the end of the valid data") into
/// region-relative bounds, checking that the result lies inside `[0, maxsize]`.
///
/// `mem_offset`/`mem_size`/`maxsize` describe the memory being shared or copied. On success
/// returns `(new_offset, new_size)` relative to the region base.
pub fn sub_range(
    mem_offset: usize,
    mem_size: usize,
    maxsize: usize,
    offset: isize,
    size: isize,
    clamp_negative_size: bool,
) -> Option<(usize, usize)> {
    let start = mem_offset.checked_add_signed(offset)?;
    let size = if size == -1 {
        // size -1: from `offset` to the end of the valid data.
        let remaining = (mem_size as isize).checked_sub(offset)?;
        if remaining < 0 {
            // Only a copy clamps: "0 bytes if the offset is past the end". Nothing is read,
            // so the start needs no bounds check.
            return clamp_negative_size.then_some((start.min(maxsize), 0));
        } else {
            remaining as usize
        }
    } else {
        usize::try_from(size).ok()?
    };
    let end = start.checked_add(size)?;
    if end > maxsize {
        return None;
    }
    Some((start, size))
}

/// Where everything sits in one `MemfdMemory` block: one memfd of `maxsize` bytes (a multiple
/// of the page size, at least one page), mapped from its start, so the payload can only be
/// aligned by its offset: `offset` is `prefix` rounded up to the alignment (the payload is
/// aligned because mappings start on a page and the alignment is at most a page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemfdLayout {
    pub align_mask: usize,
    pub offset: usize,
    pub size: usize,
    pub maxsize: usize,
}

impl MemfdLayout {
    pub fn new(
        size: usize,
        prefix: usize,
        padding: usize,
        align: usize,
        page_size: usize,
    ) -> Result<MemfdLayout, LayoutError> {
        if !is_valid_align_mask(align) {
            return Err(LayoutError::InvalidAlignMask(align));
        }
        let align_mask = align | MIN_ALIGN_MASK;
        if align_mask > page_size - 1 {
            return Err(LayoutError::AlignAbovePage {
                align,
                page: page_size,
            });
        }
        let overflow = LayoutError::Overflow {
            size,
            prefix,
            padding,
            align,
        };
        let offset = round_up(prefix, align_mask).ok_or(overflow)?;
        let used = offset
            .checked_add(size)
            .and_then(|v| v.checked_add(padding))
            .ok_or(overflow)?;
        let maxsize = round_up(used.max(1), page_size - 1).ok_or(overflow)?;
        if maxsize > isize::MAX as usize {
            return Err(overflow);
        }
        Ok(MemfdLayout {
            align_mask,
            offset,
            size,
            maxsize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_masks_are_power_of_two_minus_one() {
        for n in 0..usize::BITS {
            assert!(is_valid_align_mask((1usize << n) - 1), "2^{n}-1");
        }
        assert!(is_valid_align_mask(usize::MAX));
        for bad in [2, 5, 6, 62, 64, 100, 4096, usize::MAX - 1] {
            assert!(!is_valid_align_mask(bad), "{bad}");
        }
    }

    #[test]
    fn default_block_of_100_bytes_has_maxsize_128() {
        let l = BlockLayout::new(100, 0, 0, 0).unwrap();
        assert_eq!(l.align_mask, 63);
        assert_eq!(l.maxsize, 128);
        assert_eq!(l.shift, 0);
        assert_eq!(l.padding_range(), 100..128);
    }

    #[test]
    fn minimum_alignment_is_raised_by_params() {
        assert_eq!(BlockLayout::new(1, 0, 0, 7).unwrap().align_mask, 63);
        assert_eq!(BlockLayout::new(1, 0, 0, 4095).unwrap().align_mask, 4095);
    }

    #[test]
    fn payload_offset_is_aligned_for_every_prefix() {
        for mask in [0usize, 63, 127, 4095] {
            for prefix in 0..200 {
                let l = BlockLayout::new(10, prefix, 3, mask).unwrap();
                assert_eq!((l.shift + prefix) & l.align_mask, 0, "prefix {prefix}");
                assert!(l.shift <= l.align_mask);
                assert!(l.maxsize >= prefix + 10 + 3);
                assert_eq!(l.maxsize & l.align_mask, 0);
                assert!(l.maxsize - (prefix + 13) <= l.align_mask);
                assert_eq!(l.alloc_size, (l.shift + l.maxsize).max(l.align_mask + 1));
            }
        }
    }

    #[test]
    fn zero_ranges_cover_exactly_prefix_and_padding_plus_slack() {
        let l = BlockLayout::new(100, 10, 5, 0).unwrap();
        assert_eq!(l.prefix_range(), 0..10);
        assert_eq!(l.padding_range(), 110..128);
        assert_eq!(l.maxsize, 128);
    }

    #[test]
    fn zero_size_still_allocates_one_aligned_unit() {
        let l = BlockLayout::new(0, 0, 0, 0).unwrap();
        assert_eq!(l.maxsize, 0);
        assert_eq!(l.alloc_size, 64);
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        let max = usize::MAX;
        for (size, prefix, padding) in [
            (max, 0, 0),
            (0, max, 0),
            (0, 0, max),
            (max / 2, max / 2, 2),
            (isize::MAX as usize, 0, 0),
            (isize::MAX as usize - 10, 0, 0),
        ] {
            assert!(
                matches!(
                    BlockLayout::new(size, prefix, padding, 0),
                    Err(LayoutError::Overflow { .. })
                ),
                "{size} {prefix} {padding}"
            );
        }
    }

    #[test]
    fn small_agrees_with_new_where_it_answers() {
        let sizes = [0, 1, 63, 64, 65, 100, 1000, 1024, 4095, 4096, 65_537];
        let edges = [
            BlockLayout::SMALL_MAX,
            BlockLayout::SMALL_MAX + 1,
            usize::MAX,
        ];
        let mut answered = 0;
        for align in [0, 1, 3, 5, 7, 15, 31, 63, 64, 127, 4095] {
            for &size in sizes.iter().chain(&edges) {
                for &prefix in sizes.iter().chain(&edges) {
                    for &padding in [0, 1, 17, 64, 4096].iter().chain(&edges) {
                        let Some(small) = BlockLayout::small(size, prefix, padding, align) else {
                            continue;
                        };
                        answered += 1;
                        assert_eq!(
                            Ok(small),
                            BlockLayout::new(size, prefix, padding, align),
                            "size {size} prefix {prefix} padding {padding} align {align}"
                        );
                    }
                }
            }
        }
        // It answers the common requests, and only those.
        assert!(answered > 1000, "{answered}");
        assert!(BlockLayout::small(64, 0, 0, 0).is_some());
        assert!(BlockLayout::small(64, 0, 0, 5).is_none(), "invalid mask");
        assert!(
            BlockLayout::small(64, 0, 0, 127).is_none(),
            "larger alignment"
        );
        let too_big = BlockLayout::SMALL_MAX + 1;
        assert!(BlockLayout::small(too_big, 0, 0, 0).is_none());
        assert!(BlockLayout::small(0, too_big, 0, 0).is_none());
        assert!(BlockLayout::small(0, 0, too_big, 0).is_none());
    }

    #[test]
    fn huge_or_invalid_masks_are_refused() {
        assert_eq!(
            BlockLayout::new(1, 0, 0, usize::MAX),
            Err(LayoutError::AlignTooLarge(usize::MAX))
        );
        assert_eq!(
            BlockLayout::new(1, 0, 0, (1 << 40) - 1),
            Err(LayoutError::AlignTooLarge((1 << 40) - 1))
        );
        assert_eq!(
            BlockLayout::new(1, 0, 0, 100),
            Err(LayoutError::InvalidAlignMask(100))
        );
        assert!(BlockLayout::new(1, 0, 0, MAX_ALIGN - 1).is_ok());
    }

    #[test]
    fn align_mask_of_addresses() {
        assert_eq!(align_mask_of(1), 0);
        assert_eq!(align_mask_of(0x1000), 0xfff);
        assert_eq!(align_mask_of(0x1040), 0x3f);
        assert_eq!(align_mask_of(1 << 40), MAX_ALIGN - 1);
    }

    #[test]
    fn sub_range_resolves_minus_one_and_checks_bounds() {
        // memory: offset 10, size 100, maxsize 128
        assert_eq!(sub_range(10, 100, 128, 0, -1, false), Some((10, 100)));
        assert_eq!(sub_range(10, 100, 128, 20, -1, false), Some((30, 80)));
        assert_eq!(sub_range(10, 100, 128, 100, -1, false), Some((110, 0)));
        assert_eq!(sub_range(10, 100, 128, 101, -1, false), None);
        assert_eq!(sub_range(10, 100, 128, 101, -1, true), Some((111, 0)));
        assert_eq!(sub_range(10, 100, 128, 500, -1, true), Some((128, 0)));
        assert_eq!(sub_range(10, 100, 128, -10, 5, false), Some((0, 5)));
        assert_eq!(sub_range(10, 100, 128, -11, 5, false), None);
        assert_eq!(sub_range(10, 100, 128, 0, 118, false), Some((10, 118)));
        assert_eq!(sub_range(10, 100, 128, 0, 119, false), None);
        assert_eq!(sub_range(10, 100, 128, isize::MAX, 1, false), None);
        assert_eq!(sub_range(10, 100, 128, 0, -2, false), None);
        assert_eq!(sub_range(10, 100, 128, 200, 0, true), None);
    }

    #[test]
    fn memfd_layout_rounds_offset_and_maxsize() {
        let l = MemfdLayout::new(100, 0, 0, 0, 4096).unwrap();
        assert_eq!(
            (l.align_mask, l.offset, l.size, l.maxsize),
            (63, 0, 100, 4096)
        );
        let l = MemfdLayout::new(5000, 10, 20, 255, 4096).unwrap();
        assert_eq!((l.offset, l.maxsize), (256, 8192));
        let l = MemfdLayout::new(0, 0, 0, 0, 4096).unwrap();
        assert_eq!(l.maxsize, 4096, "an empty block still maps a page");
        let l = MemfdLayout::new(4096, 0, 0, 4095, 4096).unwrap();
        assert_eq!((l.offset, l.maxsize), (0, 4096));
        assert_eq!(
            MemfdLayout::new(1, 0, 0, 8191, 4096),
            Err(LayoutError::AlignAbovePage {
                align: 8191,
                page: 4096
            })
        );
        assert_eq!(
            MemfdLayout::new(1, 0, 0, 5, 4096),
            Err(LayoutError::InvalidAlignMask(5))
        );
        assert!(matches!(
            MemfdLayout::new(usize::MAX - 10, 64, 0, 0, 4096),
            Err(LayoutError::Overflow { .. })
        ));
    }
}
