// SPDX-License-Identifier: MPL-2.0
//! The GstMemory contract (shared/SEMANTICS.md) and memkit's own guarantees, checked on
//! `AlignedMemory` through the safe Rust API and through GStreamer's C entry points.

mod common;
use common::{init, params};

use std::sync::atomic::{AtomicUsize, Ordering};

use gst::prelude::*;
use gstmemkit::allocator::{
    ALIGNED_MEMORY, AlignedMemory, AllocError, MemoryError, aligned_allocator,
};

const ZERO_FLAGS: gst::MemoryFlags = gst::MemoryFlags::from_bits_truncate(
    gst::MemoryFlags::ZERO_PREFIXED.bits() | gst::MemoryFlags::ZERO_PADDED.bits(),
);

/// Every mask from 0 to 4095 that GStreamer accepts (2^n - 1).
fn masks() -> impl Iterator<Item = usize> {
    (0..=12).map(|n| (1usize << n) - 1)
}

/// The whole region `[0, maxsize)` of a writable root, read by moving the offset to 0.
fn region_bytes(mem: &mut AlignedMemory) -> Vec<u8> {
    let (offset, size, maxsize) = (mem.offset(), mem.size(), mem.maxsize());
    let m = mem.get_mut().unwrap();
    m.try_resize(-(offset as isize), maxsize).unwrap();
    let bytes = m.map_readable().unwrap().as_slice().to_vec();
    m.try_resize(offset as isize, size).unwrap();
    bytes
}

fn fill(mem: &mut AlignedMemory, seed: u8) {
    let m = mem.get_mut().expect("writable");
    let mut map = m.map_writable().unwrap();
    for (i, b) in map.as_mut_slice().iter_mut().enumerate() {
        *b = seed.wrapping_add(i as u8);
    }
}

fn payload(mem: &gst::MemoryRef) -> Vec<u8> {
    mem.map_readable().unwrap().as_slice().to_vec()
}

fn map_addr(mem: &gst::MemoryRef) -> usize {
    mem.map_readable().unwrap().as_slice().as_ptr() as usize
}

// ----- registry --------------------------------------------------------------------------

#[test]
fn allocator_is_registered_and_findable_by_name() {
    init();
    let found = gst::Allocator::find(Some(ALIGNED_MEMORY)).expect("registered");
    assert_eq!(found, aligned_allocator().upcast::<gst::Allocator>());
    assert_eq!(found.memory_type(), "AlignedMemory");
    assert!(gst::Allocator::find(Some("NoSuchAllocator")).is_none());
}

#[test]
fn core_alloc_path_yields_typed_aligned_memory() {
    init();
    let alloc = gst::Allocator::find(Some(ALIGNED_MEMORY)).unwrap();
    let mem = alloc.alloc(100, None).unwrap();
    assert!(mem.is_type("AlignedMemory"));
    assert!(mem.is_memory_type::<AlignedMemory>());
    let typed = mem.downcast_memory::<AlignedMemory>().unwrap();
    assert_eq!(typed.size(), 100);
    // System memory is not ours: the downcast refuses it.
    let sys = gst::Allocator::find(Some("SystemMemory"))
        .unwrap()
        .alloc(10, None)
        .unwrap();
    assert!(!sys.is_memory_type::<AlignedMemory>());
    assert!(sys.downcast_memory::<AlignedMemory>().is_err());
}

// ----- alloc -----------------------------------------------------------------------------

#[test]
fn alloc_result_has_contract_fields() {
    init();
    let a = aligned_allocator();
    let p = params(gst::MemoryFlags::ZERO_PREFIXED, 7, 16, 32);
    let mem = a.alloc_aligned(1000, Some(&p)).unwrap();
    assert_eq!(mem.size(), 1000);
    assert_eq!(mem.offset(), 16);
    assert!(mem.maxsize() >= 16 + 1000 + 32);
    assert!(mem.flags().contains(gst::MemoryFlags::ZERO_PREFIXED));
    assert!(!mem.flags().contains(gst::MemoryFlags::READONLY));
    assert!(mem.parent().is_none());
    assert_eq!(
        mem.allocator().unwrap(),
        &a.clone().upcast::<gst::Allocator>()
    );
    assert_eq!(mem.ref_count(), 1);
    assert!(mem.is_writable());
    assert_eq!(mem.align(), 63);
}

#[test]
fn minimum_alignment_is_64_and_raised_by_params() {
    init();
    let a = aligned_allocator();
    for mask in masks() {
        let mem = a
            .alloc_aligned(10, Some(&params(gst::MemoryFlags::empty(), mask, 0, 0)))
            .unwrap();
        assert_eq!(mem.align(), mask | 63, "mask {mask}");
        assert_eq!(map_addr(&mem) & (mask | 63), 0);
    }
}

#[test]
fn payload_is_aligned_for_every_prefix_and_mask() {
    init();
    let a = aligned_allocator();
    for mask in masks() {
        for prefix in 0..200 {
            let p = params(gst::MemoryFlags::empty(), mask, prefix, 0);
            let mem = a.alloc_aligned(33, Some(&p)).unwrap();
            assert_eq!(mem.offset(), prefix);
            let eff = mask | 63;
            assert_eq!(mem.payload_addr() & eff, 0, "mask {mask} prefix {prefix}");
            // The pointer a map hands out is the payload.
            assert_eq!(map_addr(&mem), mem.payload_addr());
        }
    }
}

#[test]
fn system_memory_aligns_only_the_region_start() {
    // The guarantee above is memkit's own: the system allocator's payload is off by the prefix.
    init();
    let sys = gst::Allocator::find(Some("SystemMemory")).unwrap();
    let p = params(gst::MemoryFlags::empty(), 63, 3, 0);
    let mem = sys.alloc(33, Some(&p)).unwrap();
    assert_ne!(map_addr(&mem) & 63, 0);
    let ours = aligned_allocator().alloc_aligned(33, Some(&p)).unwrap();
    assert_eq!(map_addr(&ours) & 63, 0);
}

#[test]
fn maxsize_is_prefix_size_padding_rounded_up_to_alignment() {
    init();
    let a = aligned_allocator();
    assert_eq!(a.alloc_aligned(100, None).unwrap().maxsize(), 128);
    assert_eq!(a.alloc_aligned(128, None).unwrap().maxsize(), 128);
    assert_eq!(a.alloc_aligned(129, None).unwrap().maxsize(), 192);
    let p = params(gst::MemoryFlags::empty(), 4095, 10, 5);
    assert_eq!(a.alloc_aligned(100, Some(&p)).unwrap().maxsize(), 4096);
    let p = params(gst::MemoryFlags::empty(), 0, 64, 64);
    assert_eq!(a.alloc_aligned(1000, Some(&p)).unwrap().maxsize(), 1152);
}

#[test]
fn zero_prefixed_and_zero_padded_ranges_hold_zeros() {
    init();
    let a = aligned_allocator();
    for (prefix, size, padding, mask) in [
        (10, 100, 5, 0),
        (64, 1000, 64, 63),
        (1, 1, 1, 4095),
        (0, 7, 0, 0),
    ] {
        let p = params(ZERO_FLAGS, mask, prefix, padding);
        let mut mem = a.alloc_aligned(size, Some(&p)).unwrap();
        fill(&mut mem, 0xA5);
        let region = region_bytes(&mut mem);
        assert_eq!(region.len(), mem.maxsize());
        assert!(region[..prefix].iter().all(|&b| b == 0), "prefix {prefix}");
        assert!(
            region[prefix + size..].iter().all(|&b| b == 0),
            "padding and slack up to maxsize"
        );
        // The payload we wrote is intact between them.
        assert_eq!(region[prefix], 0xA5);
    }
}

#[test]
fn size_zero_allocates_and_maps_non_null() {
    init();
    let a = aligned_allocator();
    for p in [
        params(gst::MemoryFlags::empty(), 0, 0, 0),
        params(ZERO_FLAGS, 4095, 17, 3),
    ] {
        let mut mem = a.alloc_aligned(0, Some(&p)).unwrap();
        assert_eq!(mem.size(), 0);
        assert_eq!(mem.map_readable().unwrap().size(), 0);
        // The pointer C code gets is real, non-NULL and aligned.
        let addr = mem.mapped_addr().expect("size 0 maps");
        assert_ne!(addr, 0);
        assert_eq!(addr, mem.payload_addr());
        assert_eq!(addr & mem.align(), 0);
        let m = mem.get_mut().unwrap();
        assert_eq!(m.map_writable().unwrap().size(), 0);
        assert_eq!(m.payload_addr() & m.align(), 0);
    }
}

#[test]
fn overflowing_sizes_are_typed_errors() {
    init();
    let a = aligned_allocator();
    let max = usize::MAX;
    for (size, prefix, padding) in [
        (max, 0, 0),
        (0, max, 0),
        (0, 0, max),
        (max - 63, 0, 0),
        (isize::MAX as usize, 0, 0),
        (max / 2, max / 2, 1),
    ] {
        let p = params(gst::MemoryFlags::empty(), 0, prefix, padding);
        assert!(
            matches!(
                a.alloc_aligned(size, Some(&p)),
                Err(AllocError::Overflow { .. })
            ),
            "size {size} prefix {prefix} padding {padding}"
        );
    }
    let p = params(gst::MemoryFlags::empty(), max, 0, 0);
    assert_eq!(
        a.alloc_aligned(1, Some(&p)).unwrap_err(),
        AllocError::AlignTooLarge(max)
    );
    let p = params(gst::MemoryFlags::empty(), 100, 0, 0);
    assert_eq!(
        a.alloc_aligned(1, Some(&p)).unwrap_err(),
        AllocError::InvalidAlignMask(100)
    );
    // A clear message, not just a variant.
    assert!(
        AllocError::InvalidAlignMask(100)
            .to_string()
            .contains("2^n - 1")
    );
}

#[test]
fn overflowing_sizes_through_core_give_null_not_a_crash() {
    init();
    let a = gst::Allocator::find(Some(ALIGNED_MEMORY)).unwrap();
    let max = usize::MAX;
    for (size, prefix, padding, align) in [
        (max, 0, 0, 0),
        (1, max, 0, 0),
        (1, 0, max, 0),
        (1, 0, 0, max),
        (max - 100, 50, 50, 0),
    ] {
        let p = params(gst::MemoryFlags::empty(), align, prefix, padding);
        assert!(
            a.alloc(size, Some(&p)).is_err(),
            "size {size} prefix {prefix} padding {padding} align {align}"
        );
    }
}

#[test]
fn out_of_memory_is_a_typed_error() {
    init();
    // 2^60 bytes (1 EiB) fits in isize but not in any address space (x86-64 user space is
    // 2^47 bytes, 2^56 with 5-level paging; arm64 at most 2^52): the mapping fails whatever
    // vm.overcommit_memory says, unlike 2^46 bytes, which a machine with overcommit_memory=1
    // and 4-level paging can map.
    let err = aligned_allocator()
        .alloc_aligned(1 << 60, None)
        .unwrap_err();
    assert!(matches!(err, AllocError::OutOfMemory { .. }), "{err:?}");
}

#[test]
fn params_flags_are_kept() {
    init();
    let flags = gst::MemoryFlags::PHYSICALLY_CONTIGUOUS | gst::MemoryFlags::NO_SHARE;
    let mem = aligned_allocator()
        .alloc_aligned(8, Some(&params(flags, 0, 0, 0)))
        .unwrap();
    assert!(mem.flags().contains(flags));
}

// ----- map -------------------------------------------------------------------------------

#[test]
fn repeated_and_nested_maps_return_the_same_pointer() {
    init();
    let mem = aligned_allocator().alloc_aligned(256, None).unwrap();
    let m1 = mem.map_readable().unwrap();
    let m2 = mem.map_readable().unwrap();
    assert_eq!(m1.as_slice().as_ptr(), m2.as_slice().as_ptr());
    drop((m1, m2));
    assert_eq!(map_addr(&mem), mem.payload_addr());
}

#[test]
fn not_mappable_memory_refuses_to_map() {
    init();
    let p = params(gst::MemoryFlags::NOT_MAPPABLE, 0, 0, 0);
    let mut mem = aligned_allocator().alloc_aligned(64, Some(&p)).unwrap();
    assert!(mem.map_readable().is_err());
    assert_eq!(mem.mapped_addr(), None);
    assert!(mem.get_mut().unwrap().map_writable().is_err());
    // A failed map leaves the memory unlocked: it can still be shared and freed.
    assert!(mem.share(..).is_ok());
}

#[test]
fn read_only_memory_cannot_be_written() {
    init();
    let mem = aligned_allocator()
        .alloc_aligned(64, Some(&params(gst::MemoryFlags::READONLY, 0, 0, 0)))
        .unwrap();
    let mut mem: gst::Memory = mem.upcast_memory();
    assert!(mem.get_mut().is_none_or(|m| m.map_writable().is_err()));
    assert!(mem.map_readable().is_ok());
}

// ----- share -----------------------------------------------------------------------------

#[test]
fn share_points_at_the_root_with_readonly_flags_and_same_bytes() {
    init();
    let p = params(gst::MemoryFlags::ZERO_PREFIXED, 0, 16, 0);
    let mut mem = aligned_allocator().alloc_aligned(200, Some(&p)).unwrap();
    fill(&mut mem, 1);
    let share = mem.share(10..60).unwrap();
    assert_eq!(share.offset(), 16 + 10);
    assert_eq!(share.size(), 50);
    assert_eq!(share.maxsize(), mem.maxsize());
    assert_eq!(share.align(), mem.align());
    assert!(share.flags().contains(gst::MemoryFlags::READONLY));
    assert!(share.flags().contains(gst::MemoryFlags::ZERO_PREFIXED));
    assert_eq!(share.parent().unwrap().as_ptr(), mem.as_ptr() as *const _);
    assert_eq!(map_addr(&share), map_addr(&mem) + 10);
    assert_eq!(payload(&share), payload(&mem)[10..60]);
    let mut share = share;
    assert!(
        share.get_mut().unwrap().map_writable().is_err(),
        "shares are read-only"
    );

    // A share of a share has the root as parent and accumulates offsets.
    let sub = share.share(5..15).unwrap();
    assert_eq!(sub.parent().unwrap().as_ptr(), mem.as_ptr() as *const _);
    assert_eq!(sub.offset(), 16 + 10 + 5);
    assert_eq!(payload(&sub), payload(&mem)[15..25]);
}

#[test]
fn core_share_minus_one_means_to_the_end() {
    init();
    let mem = aligned_allocator().alloc_aligned(100, None).unwrap();
    // gst-rs' share goes through gst_memory_share with size -1 for an open range.
    let share = gst::MemoryRef::share(&mem, 30..);
    assert_eq!(share.size(), 70);
    assert_eq!(share.offset(), 30);
}

#[test]
fn empty_share_is_valid() {
    init();
    let mem = aligned_allocator().alloc_aligned(100, None).unwrap();
    for k in [0, 50, 100] {
        let s = mem.share(k..k).unwrap();
        assert_eq!(s.size(), 0);
        assert_eq!(s.offset(), k);
        assert_eq!(s.map_readable().unwrap().size(), 0);
        assert_eq!(s.mapped_addr(), Some(mem.payload_addr() + k));
    }
}

#[test]
fn out_of_range_share_is_an_error() {
    init();
    let mem = aligned_allocator().alloc_aligned(100, None).unwrap();
    assert!(matches!(
        mem.share(0..101),
        Err(MemoryError::OutOfRange { .. })
    ));
    assert!(matches!(
        mem.share(101..),
        Err(MemoryError::OutOfRange { .. })
    ));
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = mem.share(60..50);
    assert!(matches!(reversed, Err(MemoryError::OutOfRange { .. })));
    assert!(matches!(
        mem.share(..=usize::MAX),
        Err(MemoryError::OutOfRange { .. })
    ));
}

#[test]
fn no_share_memory_refuses_to_share() {
    init();
    let mem = aligned_allocator()
        .alloc_aligned(10, Some(&params(gst::MemoryFlags::NO_SHARE, 0, 0, 0)))
        .unwrap();
    assert_eq!(mem.share(..).unwrap_err(), MemoryError::NoShare);
}

#[test]
fn memory_mapped_for_writing_refuses_to_share() {
    init();
    let mem = aligned_allocator().alloc_aligned(64, None).unwrap();
    let mapped = mem
        .upcast_memory::<gst::Memory>()
        .into_mapped_memory_writable()
        .unwrap();
    let typed = mapped
        .memory()
        .downcast_memory_ref::<AlignedMemory>()
        .unwrap();
    assert!(matches!(typed.share(..), Err(MemoryError::Refused(_))));
    let mem = mapped.into_memory();
    assert!(
        mem.downcast_memory_ref::<AlignedMemory>()
            .unwrap()
            .share(..)
            .is_ok()
    );
}

#[test]
fn root_stays_alive_while_shares_exist() {
    init();
    let mut mem = aligned_allocator().alloc_aligned(64, None).unwrap();
    fill(&mut mem, 9);
    let expected = payload(&mem);
    let share = mem.share(..).unwrap();
    drop(mem);
    assert_eq!(payload(&share), expected);
    assert_eq!(
        share
            .parent()
            .unwrap()
            .downcast_memory_ref::<AlignedMemory>()
            .unwrap()
            .ref_count(),
        1
    );
}

// ----- copy ------------------------------------------------------------------------------

#[test]
fn copy_is_a_writable_root_with_the_bytes_and_alignment() {
    init();
    let p = params(gst::MemoryFlags::empty(), 4095, 7, 0);
    let mut mem = aligned_allocator().alloc_aligned(300, Some(&p)).unwrap();
    fill(&mut mem, 3);
    let share = mem.share(100..200).unwrap();
    let copy = share.copy_range(10..60).unwrap();
    assert_eq!(copy.size(), 50);
    assert_eq!(copy.offset(), 0);
    assert!(copy.parent().is_none());
    assert_eq!(copy.ref_count(), 1);
    assert!(copy.is_writable());
    assert!(!copy.flags().contains(gst::MemoryFlags::READONLY));
    assert_eq!(copy.align(), 4095);
    assert_eq!(copy.payload_addr() & 4095, 0);
    assert_eq!(payload(&copy), payload(&mem)[110..160]);
    assert_ne!(map_addr(&copy), map_addr(&mem) + 110);
}

#[test]
fn core_copy_minus_one_and_past_the_end() {
    init();
    let mut mem = aligned_allocator().alloc_aligned(100, None).unwrap();
    fill(&mut mem, 0);
    let all = gst::MemoryRef::copy_range(&mem, ..);
    assert_eq!(payload(&all), payload(&mem));
    let tail = gst::MemoryRef::copy_range(&mem, 40..);
    assert_eq!(tail.size(), 60);
    assert_eq!(payload(&tail), payload(&mem)[40..]);
}

#[test]
fn zero_size_copy_works() {
    init();
    let mem = aligned_allocator().alloc_aligned(100, None).unwrap();
    let c = mem.copy_range(100..).unwrap();
    assert_eq!(c.size(), 0);
    assert_eq!(c.map_readable().unwrap().size(), 0);
    let empty = aligned_allocator().alloc_aligned(0, None).unwrap();
    assert_eq!(empty.copy_range(..).unwrap().size(), 0);
}

#[test]
fn copy_of_a_write_mapped_block_works() {
    init();
    let mut mem = aligned_allocator().alloc_aligned(4096, None).unwrap();
    fill(&mut mem, 42);
    let expected = payload(&mem);
    let mut mapped = mem
        .upcast_memory::<gst::Memory>()
        .into_mapped_memory_writable()
        .unwrap();
    mapped.as_mut_slice()[0] = 0xEE;
    let copy = mapped.memory().copy_range(..);
    let copy = copy.downcast_memory::<AlignedMemory>().unwrap();
    let got = payload(&copy);
    assert_eq!(got[0], 0xEE);
    assert_eq!(got[1..], expected[1..]);
    drop(mapped);
}

#[test]
fn out_of_range_copy_is_an_error() {
    init();
    let mem = aligned_allocator().alloc_aligned(100, None).unwrap();
    assert!(matches!(
        mem.copy_range(0..101),
        Err(MemoryError::OutOfRange { .. })
    ));
    assert!(matches!(
        mem.copy_range(101..),
        Err(MemoryError::OutOfRange { .. })
    ));
}

// ----- is_span ---------------------------------------------------------------------------

#[test]
fn is_span_requires_order_and_contiguity() {
    init();
    let mem = aligned_allocator().alloc_aligned(100, None).unwrap();
    let a = mem.share(0..10).unwrap();
    let b = mem.share(10..30).unwrap();
    let c = mem.share(31..40).unwrap();
    assert_eq!(a.is_span(&b), Some(0));
    assert_eq!(b.is_span(&a), None, "order matters");
    assert_eq!(b.is_span(&c), None, "a gap is not a span");
    let other = aligned_allocator().alloc_aligned(100, None).unwrap();
    let d = other.share(10..20).unwrap();
    assert_eq!(a.is_span(&d), None, "different parents");
    let e = mem.share(30..40).unwrap();
    assert_eq!(b.is_span(&e), Some(10));
}

#[test]
fn is_span_offset_is_relative_to_a_prefixed_parent() {
    init();
    let p = params(gst::MemoryFlags::empty(), 0, 64, 0);
    let mut mem = aligned_allocator().alloc_aligned(100, Some(&p)).unwrap();
    fill(&mut mem, 5);
    let a = mem.share(20..30).unwrap();
    let b = mem.share(30..50).unwrap();
    let off = a.is_span(&b).unwrap();
    assert_eq!(off, 20);
    // Sharing the parent from that offset gives exactly the merged bytes, without copying.
    let merged = mem.share(off..off + 30).unwrap();
    assert_eq!(map_addr(&merged), map_addr(&a));
    assert_eq!(payload(&merged), payload(&mem)[20..50]);
}

#[test]
fn buffer_of_contiguous_shares_maps_without_copying() {
    init();
    let p = params(gst::MemoryFlags::empty(), 0, 64, 0);
    let mut mem = aligned_allocator()
        .alloc_aligned(16 * 256, Some(&p))
        .unwrap();
    fill(&mut mem, 0);
    let mut buffer = gst::Buffer::new();
    {
        let b = buffer.get_mut().unwrap();
        for i in 0..16 {
            b.append_memory(mem.share(i * 256..(i + 1) * 256).unwrap().upcast_memory());
        }
    }
    let map = buffer.map_readable().unwrap();
    assert_eq!(map.as_slice().as_ptr() as usize, map_addr(&mem));
    assert_eq!(map.as_slice(), payload(&mem).as_slice());
}

// ----- resize ----------------------------------------------------------------------------

#[test]
fn resize_clears_zero_flags_like_core() {
    init();
    let p = params(ZERO_FLAGS, 0, 16, 16);
    for allocator in [
        aligned_allocator().upcast::<gst::Allocator>(),
        gst::Allocator::find(Some("SystemMemory")).unwrap(),
    ] {
        let mut mem = allocator.alloc(100, Some(&p)).unwrap();
        let m = mem.get_mut().unwrap();
        m.resize(0..100); // same range: flags stay
        assert!(m.flags().contains(ZERO_FLAGS));
        m.resize(0..90); // end moves down: ZERO_PADDED cleared
        assert!(!m.flags().contains(gst::MemoryFlags::ZERO_PADDED));
        assert!(m.flags().contains(gst::MemoryFlags::ZERO_PREFIXED));
        m.resize(1..90); // offset grows: ZERO_PREFIXED cleared
        assert!(!m.flags().contains(gst::MemoryFlags::ZERO_PREFIXED));
        assert_eq!((m.offset(), m.size()), (17, 89));
    }
}

#[test]
fn try_resize_checks_bounds_and_writability() {
    init();
    let mut mem = aligned_allocator()
        .alloc_aligned(100, Some(&params(gst::MemoryFlags::empty(), 0, 8, 0)))
        .unwrap();
    let m = mem.get_mut().unwrap();
    assert!(matches!(
        m.try_resize(0, 121),
        Err(MemoryError::OutOfRange { .. })
    ));
    assert!(matches!(
        m.try_resize(-9, 10),
        Err(MemoryError::OutOfRange { .. })
    ));
    m.try_resize(-8, 128).unwrap();
    assert_eq!((m.offset(), m.size()), (0, 128));
    let share = mem.share(..).unwrap();
    let second = mem.share(..).unwrap();
    // Two shares hold exclusive locks on the root: it is no longer writable, so no `&mut`.
    assert!(!mem.is_writable());
    assert!(mem.get_mut().is_none());
    drop(second);
    assert!(mem.is_writable());
    // As in core (gst_memory_is_writable ignores READONLY), a share held once can be resized,
    // but never mapped for writing.
    let mut share = share;
    let s = share.get_mut().expect("held once");
    s.try_resize(1, 10).unwrap();
    assert_eq!((s.offset(), s.size()), (1, 10));
    assert!(s.map_writable().is_err());
}

#[test]
fn try_resize_clears_zero_padded_when_the_end_moves_before_the_old_start() {
    init();
    let p = params(ZERO_FLAGS, 0, 100, 0);
    let mut mem = aligned_allocator().alloc_aligned(50, Some(&p)).unwrap();
    fill(&mut mem, 1);
    let m = mem.get_mut().unwrap();
    // New range [10, 20) ends before the old start (100): bytes 20..100 were prefix zeros, but
    // [100, 150) held payload and now lies in the padding.
    m.try_resize(-90, 10).unwrap();
    assert!(!m.flags().contains(gst::MemoryFlags::ZERO_PADDED));
    // Core's gst_memory_resize keeps the flag in this case (unsigned arithmetic): shown on
    // SystemMemory, so the difference stays deliberate and visible.
    let sys = gst::Allocator::find(Some("SystemMemory")).unwrap();
    let mut smem = sys.alloc(50, Some(&p)).unwrap();
    smem.get_mut().unwrap().resize_maxsize(10..20);
    assert!(smem.flags().contains(gst::MemoryFlags::ZERO_PADDED));
}

// ----- make_mapped -----------------------------------------------------------------------

#[test]
fn make_mapped_maps_in_place_or_copies() {
    init();
    let mut mem = aligned_allocator().alloc_aligned(64, None).unwrap();
    fill(&mut mem, 7);
    let addr = map_addr(&mem);
    // Writable root: mapped in place.
    let (mem, seen) = mem
        .make_mapped_writable(|b| {
            b[0] = 99;
            b.as_ptr() as usize
        })
        .unwrap();
    assert_eq!(seen, addr);
    assert_eq!(payload(&mem)[0], 99);
    // A read-only share asked for writing: a writable copy is mapped instead.
    let share = mem.share(8..24).unwrap();
    let (copy, seen) = share
        .make_mapped_writable(|b| {
            b[0] = 1;
            (b.as_ptr() as usize, b.len())
        })
        .unwrap();
    assert_ne!(seen.0, addr + 8);
    assert_eq!(seen.1, 16);
    assert!(copy.parent().is_none());
    assert_eq!(payload(&copy)[0], 1);
    assert_eq!(payload(&mem)[8], 7 + 8, "the original is untouched");
    // Read mapping of a share: in place.
    let share = mem.share(8..24).unwrap();
    let (share, seen) = share.make_mapped_readable(|b| b.as_ptr() as usize).unwrap();
    assert_eq!(seen, addr + 8);
    assert!(share.parent().is_some());
}

// ----- wrap ------------------------------------------------------------------------------

struct Counted {
    bytes: Vec<u8>,
    drops: &'static AtomicUsize,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn wrapped_owner_is_dropped_exactly_once_after_the_last_share() {
    init();
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    let owner = Counted {
        bytes: (0..=255).collect(),
        drops: &DROPS,
    };
    let mem = aligned_allocator().wrap(owner, 16, 200).unwrap();
    assert!(mem.is_wrapped());
    let s1 = mem.share(0..100).unwrap();
    let s2 = s1.share(50..60).unwrap();
    assert!(s2.is_wrapped());
    drop(mem);
    drop(s1);
    assert_eq!(DROPS.load(Ordering::SeqCst), 0, "a share is still alive");
    assert_eq!(payload(&s2), (66..76).collect::<Vec<u8>>());
    drop(s2);
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
}

#[test]
fn wrapped_memory_reports_its_real_alignment_and_is_read_only() {
    init();
    let v: Vec<u8> = (0..100).collect();
    let addr = v.as_ptr() as usize;
    let mut mem = aligned_allocator().wrap(v, 3, 90).unwrap();
    let real = (addr + 3) & (addr + 3).wrapping_neg();
    assert_eq!(mem.align(), real - 1);
    assert_eq!(mem.offset(), 3);
    assert_eq!(mem.size(), 90);
    assert_eq!(mem.maxsize(), 100);
    assert_eq!(payload(&mem), (3..93).collect::<Vec<u8>>());
    assert!(mem.flags().contains(gst::MemoryFlags::READONLY));
    assert!(mem.get_mut().is_none_or(|m| m.map_writable().is_err()));
}

#[test]
fn wrapped_memory_supports_spans_and_copies() {
    init();
    let boxed: Box<[u8]> = (0..64).collect::<Vec<u8>>().into_boxed_slice();
    let mem = aligned_allocator().wrap(boxed, 0, 64).unwrap();
    let a = mem.share(0..32).unwrap();
    let b = mem.share(32..64).unwrap();
    assert_eq!(a.is_span(&b), Some(0));
    let copy = b.copy_range(..).unwrap();
    assert!(!copy.is_wrapped());
    assert_eq!(payload(&copy), (32..64).collect::<Vec<u8>>());
    assert_eq!(copy.payload_addr() & 63, 0);
}

#[test]
fn wrap_writable_owner_is_written_through() {
    init();
    let mut mem = aligned_allocator().wrap_writable([0u8; 48], 8, 32).unwrap();
    {
        let m = mem.get_mut().unwrap();
        m.map_writable().unwrap().as_mut_slice().fill(0x5A);
    }
    assert_eq!(payload(&mem), vec![0x5A; 32]);
    // An inline array owner was boxed before its address was taken: the pointer is stable.
    assert_eq!(map_addr(&mem), mem.payload_addr());
}

#[test]
fn out_of_range_wrap_is_an_error_and_drops_the_owner_once() {
    init();
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    let owner = Counted {
        bytes: vec![0; 10],
        drops: &DROPS,
    };
    let err = aligned_allocator().wrap(owner, 5, 6).unwrap_err();
    assert_eq!(
        err,
        MemoryError::OutOfRange {
            offset: 5,
            size: 6,
            available: 10
        }
    );
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    let owner = Counted {
        bytes: vec![0; 10],
        drops: &DROPS,
    };
    assert!(aligned_allocator().wrap(owner, usize::MAX, 2).is_err());
    assert_eq!(DROPS.load(Ordering::SeqCst), 2);
}

#[test]
fn empty_wrap_maps_non_null() {
    init();
    let mem = aligned_allocator().wrap(Vec::new(), 0, 0).unwrap();
    assert_eq!(mem.map_readable().unwrap().size(), 0);
    assert_ne!(mem.mapped_addr().expect("maps"), 0);
}
