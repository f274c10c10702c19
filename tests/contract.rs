// SPDX-License-Identifier: MPL-2.0
//! The GstMemory contract (shared/SEMANTICS.md), checked through GStreamer's generic API on
//! both of memkit's allocators, `AlignedMemory` and `MemfdMemory`, by the same code.
//!
//! Where the two differ by design it is spelled out: `MemfdMemory` rounds the prefix up to the
//! alignment (its mapping starts on a page, so the payload can only be aligned by its offset)
//! and rounds `maxsize` up to a page.

mod common;
use common::{init, params};

use gst::prelude::*;
use gstmemkit::allocator::{ALIGNED_MEMORY, memfd::MEMFD_MEMORY};
use gstmemkit::elements::memory::{mapped_addr, try_share, with_mapped_region};

const ALLOCATORS: [&str; 2] = [ALIGNED_MEMORY, MEMFD_MEMORY];

fn each(f: impl Fn(&str, &gst::Allocator)) {
    init();
    for name in ALLOCATORS {
        let a = gst::Allocator::find(Some(name)).unwrap();
        f(name, &a);
    }
}

/// The offset a block gets for `prefix` at alignment mask `mask` (after the 63 minimum).
fn expected_offset(name: &str, prefix: usize, mask: usize) -> usize {
    if name == MEMFD_MEMORY {
        (prefix + (mask | 63)) & !(mask | 63)
    } else {
        prefix
    }
}

#[test]
fn alloc_result_fields() {
    each(|name, a| {
        for (size, prefix, padding, mask) in [(100, 0, 0, 0), (1000, 10, 20, 255), (0, 64, 64, 63)]
        {
            let p = params(gst::MemoryFlags::empty(), mask, prefix, padding);
            let m = a.alloc(size, Some(&p)).unwrap();
            let off = expected_offset(name, prefix, mask);
            assert_eq!((m.size(), m.offset()), (size, off), "{name}");
            assert!(m.maxsize() >= off + size + padding, "{name}");
            assert!(m.parent().is_none());
            assert_eq!(m.allocator(), Some(a));
            assert!(m.is_writable());
            let addr = mapped_addr(&m).unwrap();
            assert_ne!(addr, 0, "{name}: size {size} maps non-NULL");
            assert_eq!(addr % ((mask | 63) + 1), 0, "{name}: payload aligned");
        }
    });
}

#[test]
fn flags_are_kept_and_zero_ranges_hold() {
    each(|name, a| {
        let flags = gst::MemoryFlags::ZERO_PREFIXED | gst::MemoryFlags::ZERO_PADDED;
        // Dirty a block first, so that a reused one would show it.
        let mut dirty = a
            .alloc(5000, Some(&params(gst::MemoryFlags::empty(), 0, 100, 100)))
            .unwrap();
        dirty.get_mut().unwrap().resize_maxsize(..);
        dirty
            .get_mut()
            .unwrap()
            .map_writable()
            .unwrap()
            .as_mut_slice()
            .fill(0xab);
        drop(dirty);
        let m = a.alloc(5000, Some(&params(flags, 0, 100, 100))).unwrap();
        assert!(m.flags().contains(flags), "{name}");
        let ok = with_mapped_region(&m, |r, off, size| {
            r[..off].iter().all(|&b| b == 0) && r[off + size..].iter().all(|&b| b == 0)
        })
        .unwrap();
        assert!(ok, "{name}: prefix and padding (to maxsize) are zero");
    });
}

#[test]
fn maps_return_the_same_pointer_and_nest_as_core_says() {
    each(|name, a| {
        let mut m = a.alloc(4096, None).unwrap();
        let p1 = mapped_addr(&m).unwrap();
        let p2 = mapped_addr(&m).unwrap();
        assert_eq!(p1, p2, "{name}");
        {
            let r1 = m.map_readable().unwrap();
            let r2 = m.map_readable().unwrap();
            assert_eq!(r1.as_ptr(), r2.as_ptr());
        }
        let w = m.get_mut().unwrap().map_writable().unwrap();
        assert_eq!(w.as_ptr() as usize, p1, "{name}: a write map too");
    });
}

#[test]
fn not_mappable_refuses_to_map_but_copies() {
    each(|name, a| {
        let m = a
            .alloc(100, Some(&params(gst::MemoryFlags::NOT_MAPPABLE, 0, 0, 0)))
            .unwrap();
        assert!(m.map_readable().is_err(), "{name}: NOT_MAPPABLE");
        let c = m.copy_range(..);
        assert!(c.map_readable().is_ok(), "{name}: the copy maps");
    });
}

#[test]
fn share_rules() {
    each(|name, a| {
        let mut m = a
            .alloc(3000, Some(&params(gst::MemoryFlags::empty(), 0, 64, 0)))
            .unwrap();
        {
            let mut w = m.get_mut().unwrap().map_writable().unwrap();
            for (i, b) in w.iter_mut().enumerate() {
                *b = i as u8;
            }
        }
        let off = m.offset();
        let s = m.share(100..1100);
        assert_eq!((s.offset(), s.size()), (off + 100, 1000), "{name}");
        assert!(s.flags().contains(gst::MemoryFlags::READONLY));
        assert_eq!((s.maxsize(), s.align()), (m.maxsize(), m.align()));
        assert_eq!(s.parent().unwrap().as_ptr(), m.as_ptr());
        assert_eq!(s.map_readable().unwrap()[0], 100);
        let ss = s.share(10..20);
        assert_eq!(
            ss.parent().unwrap().as_ptr(),
            m.as_ptr(),
            "{name}: parent is the root"
        );
        assert_eq!(ss.offset(), off + 110);
        assert_eq!(
            try_share(&s, 1000, 0).unwrap().size(),
            0,
            "{name}: empty share"
        );
        assert!(
            try_share(&s, 500, 600).is_none(),
            "{name}: out of range refused"
        );
        assert!(!m.is_writable(), "{name}: shares hold the root");
        drop((s, ss));
        assert!(m.is_writable());
    });
}

#[test]
fn copy_rules() {
    each(|name, a| {
        let mut m = a
            .alloc(2000, Some(&params(gst::MemoryFlags::empty(), 1023, 0, 0)))
            .unwrap();
        m.get_mut()
            .unwrap()
            .map_writable()
            .unwrap()
            .as_mut_slice()
            .fill(9);
        let ro = m.share(..);
        let c = ro.copy_range(500..1500);
        assert_eq!(c.size(), 1000, "{name}");
        assert!(c.parent().is_none());
        assert!(c.is_writable());
        assert!(!c.flags().contains(gst::MemoryFlags::READONLY));
        assert_eq!(c.align() & 1023, 1023, "{name}: alignment kept");
        assert_eq!(mapped_addr(&c).unwrap() % 1024, 0);
        assert!(c.map_readable().unwrap().iter().all(|&b| b == 9));
        assert_eq!(ro.copy_range(0..0).size(), 0, "{name}: an empty copy");
    });
}

#[test]
fn is_span_and_zero_copy_buffer_map() {
    each(|name, a| {
        let m = a
            .alloc(8192, Some(&params(gst::MemoryFlags::empty(), 0, 64, 0)))
            .unwrap();
        let base = mapped_addr(&m).unwrap();
        let parts: Vec<_> = (0..4).map(|i| m.share(i * 2048..(i + 1) * 2048)).collect();
        assert_eq!(
            parts[0].is_span(&parts[1]),
            Some(0),
            "{name}: relative to the parent"
        );
        assert_eq!(parts[1].is_span(&parts[2]), Some(2048));
        assert_eq!(parts[2].is_span(&parts[0]), None, "{name}: order matters");
        let mut buf = gst::Buffer::new();
        for p in parts {
            buf.get_mut().unwrap().append_memory(p);
        }
        assert_eq!(
            buf.map_readable().unwrap().as_ptr() as usize,
            base,
            "{name}: no copy"
        );
    });
}

#[test]
fn resize_within_maxsize() {
    each(|name, a| {
        let mut m = a
            .alloc(1000, Some(&params(gst::MemoryFlags::empty(), 0, 64, 0)))
            .unwrap();
        let (off, maxsize) = (m.offset(), m.maxsize());
        let r = m.get_mut().unwrap();
        r.resize_maxsize(0..maxsize);
        assert_eq!((r.offset(), r.size()), (0, maxsize), "{name}");
        r.resize_maxsize(off..off + 10);
        assert_eq!((r.offset(), r.size()), (off, 10));
    });
}

#[test]
fn threads_share_map_and_unref_the_same_memory() {
    each(|name, a| {
        let m = a.alloc(1 << 16, None).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let m = &m;
                s.spawn(move || {
                    for i in 0..500 {
                        let sh = m.share((t * 100 + i % 50)..(t * 100 + i % 50 + 10));
                        assert_eq!(sh.map_readable().unwrap().len(), 10);
                        drop(m.copy_range(0..64));
                    }
                });
            }
        });
        assert!(m.is_writable(), "{name}: every share released");
    });
}
