// SPDX-License-Identifier: MPL-2.0
//! `MemfdMemory` (issue 5): fd memory another process can map, with AlignedMemory's alignment
//! and zeroing guarantees, sealed memfds, correct shares and spans.

mod common;
use common::{init, params};

use std::io::Read;
use std::process::{Command, Stdio};

use gst::prelude::*;
use gst_allocators::FdMemoryRef;
use gstmemkit::allocator::AllocError;
use gstmemkit::allocator::memfd::{
    MEMFD_MEMORY, dup_fd, is_memfd_memory, memfd_allocator, page_size,
};
use gstmemkit::elements::memory::{mapped_addr, with_mapped_region};

fn fd_of(mem: &gst::MemoryRef) -> i32 {
    mem.downcast_memory_ref::<gst_allocators::FdMemory>()
        .map(FdMemoryRef::fd)
        .expect("fd memory")
}

#[test]
fn registered_findable_and_fd_memory() {
    init();
    let found = gst::Allocator::find(Some(MEMFD_MEMORY)).expect("registered");
    assert!(
        found.is::<gst_allocators::FdAllocator>(),
        "a GstFdAllocator subclass"
    );
    let mem = found.alloc(1000, None).unwrap();
    assert!(is_memfd_memory(&mem));
    assert!(mem.is_type("fd"), "memory type is GStreamer's fd type");
    assert!(fd_of(&mem) >= 0);
    assert_eq!(mem.allocator().unwrap(), &found);
}

#[test]
fn layout_alignment_and_page_rounded_maxsize() {
    init();
    let a = memfd_allocator();
    let page = page_size();
    let m = a.alloc_memfd(100, None).unwrap();
    assert_eq!(
        (m.offset(), m.size(), m.maxsize(), m.align()),
        (0, 100, page, 63)
    );
    assert_eq!(mapped_addr(&m).unwrap() % 64, 0);

    let p = params(gst::MemoryFlags::empty(), 255, 10, 20);
    let m = a.alloc_memfd(5000, Some(&p)).unwrap();
    assert_eq!(m.offset(), 256, "the prefix is rounded up to the alignment");
    assert_eq!(m.size(), 5000);
    assert_eq!(m.maxsize(), 2 * page);
    assert_eq!(mapped_addr(&m).unwrap() % 256, 0, "payload aligned");

    let empty = a.alloc_memfd(0, None).unwrap();
    assert_eq!(empty.maxsize(), page);
    assert_ne!(
        mapped_addr(&empty),
        Some(0),
        "size 0 maps with a real pointer"
    );

    let too_much = params(gst::MemoryFlags::empty(), 2 * page - 1, 0, 0);
    assert_eq!(
        a.alloc_memfd(10, Some(&too_much)).unwrap_err(),
        AllocError::AlignAbovePage {
            align: 2 * page - 1,
            page
        }
    );
    let msg = a.alloc_memfd(10, Some(&too_much)).unwrap_err().to_string();
    assert!(msg.contains("larger than the page size"), "{msg}");
    // Through core: NULL, not a crash.
    let core: gst::Allocator = a.clone().upcast();
    assert!(core.alloc(10, Some(&too_much)).is_err());
    let bad_mask = params(gst::MemoryFlags::empty(), 5, 0, 0);
    assert_eq!(
        a.alloc_memfd(10, Some(&bad_mask)).unwrap_err(),
        AllocError::InvalidAlignMask(5)
    );
    assert!(matches!(
        a.alloc_memfd(
            usize::MAX - 100,
            Some(&params(gst::MemoryFlags::empty(), 0, 4096, 0))
        ),
        Err(AllocError::Overflow { .. })
    ));
}

/// Issue 20, point 2: where MemfdMemory keeps its own rule against SystemMemory's (the README's
/// table), given the same calls: the calls of GStreamer's core tests that differ.
#[test]
fn offset_and_maxsize_rules_against_system_memory() {
    init();
    let sys = gst::Allocator::find(Some("SystemMemory")).unwrap();
    let memfd: gst::Allocator = memfd_allocator().upcast();
    let p = params(gst::MemoryFlags::empty(), 0, 10, 0);
    let s = sys.alloc(100, Some(&p)).unwrap();
    let m = memfd.alloc(100, Some(&p)).unwrap();
    // The prefix: SystemMemory's offset is the prefix; MemfdMemory's is rounded up to the
    // payload's alignment (64), since its mapping starts on a page.
    assert_eq!((s.offset(), s.size()), (10, 100));
    assert_eq!((m.offset(), m.size()), (64, 100));
    assert_eq!(mapped_addr(&m).unwrap() % 64, 0);
    // maxsize: SystemMemory's ends after the padding; MemfdMemory's is the whole memfd,
    // whole pages, so `gst_memory_resize (mem, 200, 50)` is legal on a 100-byte memory.
    assert!(s.maxsize() < 200 + 50 + s.offset());
    assert_eq!(m.maxsize(), page_size());
    let mut m = m;
    // gst_memory_resize (mem, 200, 50): 200 bytes on from the offset, in the block's terms.
    m.get_mut().unwrap().resize_maxsize(64 + 200..64 + 250);
    assert_eq!((m.offset(), m.size()), (264, 50));
}

#[test]
fn zero_flags_hold_and_cost_nothing() {
    init();
    let a = memfd_allocator();
    let flags = gst::MemoryFlags::ZERO_PREFIXED | gst::MemoryFlags::ZERO_PADDED;
    let m = a
        .alloc_memfd(1000, Some(&params(flags, 0, 64, 64)))
        .unwrap();
    assert!(m.flags().contains(flags));
    let all_zero = with_mapped_region(&m, |region, offset, size| {
        region[..offset].iter().all(|&b| b == 0) && region[offset + size..].iter().all(|&b| b == 0)
    })
    .unwrap();
    assert!(all_zero);
}

#[test]
fn each_block_is_a_sealed_close_on_exec_memfd() {
    use rustix::fs::{SealFlags, fcntl_get_seals, ftruncate};
    init();
    let m = memfd_allocator().alloc_memfd(10_000, None).unwrap();
    let fd = fd_of(&m);
    // The duplicate shares the file (and its seals) with the memory's own descriptor.
    let dup = dup_fd(&m).unwrap();
    let seals = fcntl_get_seals(&dup).unwrap();
    assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
    assert!(
        ftruncate(&dup, 10).is_err(),
        "no one can shrink it under a mapping"
    );
    // The memory's own descriptor is close-on-exec (O_CLOEXEC = 0o2000000 in fdinfo's flags).
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap();
    assert_ne!(flags & 0o2000000, 0, "close-on-exec");
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    assert!(
        link.to_string_lossy().starts_with("/memfd:memkit"),
        "{link:?}"
    );
    assert!(
        dup_fd(&gst::Memory::from_slice(vec![1u8; 4])).is_err(),
        "not fd memory"
    );
}

#[test]
fn shares_of_shares_have_the_right_size_and_spans_merge() {
    init();
    let a = memfd_allocator();
    let mut m = a.alloc_memfd(8000, None).unwrap();
    {
        let mut w = m.get_mut().unwrap().map_writable().unwrap();
        for (i, b) in w.as_mut_slice().iter_mut().enumerate() {
            *b = i as u8;
        }
    }
    let s1 = m.share(100..4100);
    assert_eq!((s1.offset(), s1.size()), (100, 4000));
    let s2 = s1.share(1000..);
    assert_eq!((s2.offset(), s2.size()), (1100, 3000), "a share of a share");
    assert_eq!(
        s2.parent().unwrap().as_ptr(),
        m.as_ptr(),
        "parent is the root"
    );
    assert_eq!(fd_of(&s2), fd_of(&m));
    assert_eq!(s2.map_readable().unwrap()[0], (1100 % 256) as u8);

    // Contiguous shares span, and a buffer of them maps without copying.
    let left = m.share(0..4000);
    let right = m.share(4000..8000);
    assert_eq!(left.is_span(&right), Some(0));
    assert_eq!(right.is_span(&left), None);
    let base = mapped_addr(&m).unwrap();
    let mut buf = gst::Buffer::new();
    {
        let b = buf.get_mut().unwrap();
        b.append_memory(left);
        b.append_memory(right);
    }
    let map = buf.map_readable().unwrap();
    assert_eq!(map.as_slice().as_ptr() as usize, base, "zero-copy merge");
    assert_eq!(map.as_slice()[4000], (4000 % 256) as u8);
}

#[test]
fn copies_are_memfd_memory_with_the_same_bytes_and_alignment() {
    init();
    let a = memfd_allocator();
    let p = params(gst::MemoryFlags::empty(), 1023, 0, 0);
    let mut m = a.alloc_memfd(3000, Some(&p)).unwrap();
    m.get_mut()
        .unwrap()
        .map_writable()
        .unwrap()
        .as_mut_slice()
        .fill(0x3c);
    let c = m.copy_range(10..2010);
    assert!(is_memfd_memory(&c));
    assert_ne!(fd_of(&c), fd_of(&m));
    assert_eq!(c.size(), 2000);
    assert_eq!(c.align(), 1023);
    assert_eq!(mapped_addr(&c).unwrap() % 1024, 0);
    assert!(c.map_readable().unwrap().iter().all(|&b| b == 0x3c));
    assert!(c.is_writable());
}

#[test]
fn another_process_maps_the_block_through_its_descriptor() {
    init();
    let a = memfd_allocator();
    let mut m = a
        .alloc_memfd(
            4096 * 3,
            Some(&params(gst::MemoryFlags::empty(), 0, 128, 0)),
        )
        .unwrap();
    {
        let mut w = m.get_mut().unwrap().map_writable().unwrap();
        w.as_mut_slice()[..11].copy_from_slice(b"from memkit");
    }
    let (offset, maxsize) = (m.offset(), m.maxsize());
    // The child gets a duplicate of the descriptor as its standard input and mmaps it.
    let dup = dup_fd(&m).unwrap();
    let script = format!(
        "import mmap, sys; m = mmap.mmap(0, {maxsize}, prot=mmap.PROT_READ); \
         sys.stdout.write(m[{offset}:{offset} + 11].decode())"
    );
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(Stdio::from(dup))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(out, "from memkit");
}

#[test]
fn freed_blocks_are_recycled_like_fresh_ones() {
    init();
    let a = memfd_allocator();
    let flags = gst::MemoryFlags::ZERO_PREFIXED | gst::MemoryFlags::ZERO_PADDED;
    let p = params(flags, 0, 64, 64);
    // A size no other test uses, so that this block's class is ours alone.
    let size = 3 * page_size() + 17;
    let mut m = a.alloc_memfd(size, Some(&p)).unwrap();
    let inode = |m: &gst::MemoryRef| rustix::fs::fstat(dup_fd(m).unwrap()).unwrap().st_ino;
    let first = inode(&m);
    {
        // Dirty the whole region: payload through a map, prefix and padding by moving the
        // bounds over them.
        let mm = m.get_mut().unwrap();
        mm.resize_maxsize(..);
        assert_eq!(mm.offset(), 0);
        mm.map_writable().unwrap().as_mut_slice().fill(0xee);
    }
    drop(m);
    let again = a.alloc_memfd(size, Some(&p)).unwrap();
    assert_eq!(inode(&again), first, "the same memfd, reused");
    assert_eq!((again.offset(), again.size()), (64, size));
    assert!(again.flags().contains(flags));
    assert!(again.is_writable());
    let (prefix_zero, padding_zero, payload_kept) =
        with_mapped_region(&again, |region, offset, size| {
            (
                region[..offset].iter().all(|&b| b == 0),
                region[offset + size..].iter().all(|&b| b == 0),
                region[offset..offset + size].iter().all(|&b| b == 0xee),
            )
        })
        .unwrap();
    assert!(prefix_zero && padding_zero, "ZERO ranges zeroed again");
    assert!(
        payload_kept,
        "the payload is not zeroed: only the promised ranges are"
    );
    // Trimming frees recycled blocks: their descriptors close.
    drop(again);
    let before = std::fs::read_dir("/proc/self/fd").unwrap().count();
    gstmemkit::allocator::trim_cache();
    let after = std::fs::read_dir("/proc/self/fd").unwrap().count();
    assert!(
        after < before,
        "trim closes recycled memfds ({before} -> {after})"
    );
}

/// Hardening (issue 9, fault 3): `wrap_fd` reads the seals before the size. A sender that
/// shrinks an unsealed memfd and then seals it, racing the checks, must never get a memory
/// accepted whose file is now shorter than its maxsize (a mapping past the end: SIGBUS).
/// The racer busy-waits for a start flag and then waits a different number of spins each
/// round, sweeping its shrink-and-seal across the checks; with the checks the other way round
/// (size, then seals) some rounds are accepted.
///
/// What it can and cannot catch: the interleaving it is about (the shrink landing between the
/// two checks) cannot be forced from outside `wrap_fd`, so a wrong order is caught only when
/// one of the 4000 rounds happens to land there: likely on an idle machine, not certain on a
/// loaded one. A pass is evidence, not proof; the order itself is stated and argued in
/// `wrap_fd`. What it always catches: a memory accepted whose file is shorter than its maxsize
/// (every accepted round is checked), and a wrap that fails on a file sealed in time.
#[test]
fn wrap_fd_reads_seals_before_size() {
    use rustix::fs::{MemfdFlags, SealFlags, fcntl_add_seals, fstat, ftruncate, memfd_create};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    init();
    const LEN: usize = 65536;
    const ROUNDS: u32 = 4000;
    let mut accepted = 0;
    for round in 0..ROUNDS {
        let fd = memfd_create(c"race", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        ftruncate(&fd, LEN as u64).unwrap();
        let theirs = fd.try_clone().unwrap();
        let go = Arc::new(AtomicBool::new(false));
        let racer = {
            let go = go.clone();
            std::thread::spawn(move || {
                while !go.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                for _ in 0..(round % 400) {
                    std::hint::spin_loop();
                }
                ftruncate(&theirs, 0).unwrap();
                fcntl_add_seals(&theirs, SealFlags::SHRINK | SealFlags::GROW).unwrap();
            })
        };
        // Let the racer reach its spin before starting it.
        std::thread::sleep(std::time::Duration::from_micros(50));
        go.store(true, Ordering::Release);
        let wrapped = gstmemkit::allocator::memfd::wrap_fd(fd, LEN, 0, LEN, None);
        racer.join().unwrap();
        if let Ok(mem) = wrapped {
            accepted += 1;
            let size = fstat(dup_fd(&mem).unwrap()).unwrap().st_size;
            assert!(
                size as usize >= LEN,
                "round {round}: accepted a {LEN}-byte memory whose file now has {size} bytes"
            );
        }
    }
    // With seals read first, a file sealed in time was shrunk first: every round is refused.
    assert_eq!(accepted, 0, "a shrunk file was accepted");
}

#[test]
fn a_stream_sends_only_the_blocks_its_own_allocator_made() {
    use gstmemkit::allocator::memfd::{MemfdAllocator, block_of, memfd_allocator};
    init();
    let ours = MemfdAllocator::for_stream();
    let other = MemfdAllocator::for_stream();
    for _ in 0..3 {
        // Fresh, then recycled (freed at the end of each round).
        let mut mem = ours
            .upcast_ref::<gst::Allocator>()
            .alloc(3000, None)
            .unwrap();
        mem.get_mut().unwrap().resize(100..200);
        assert!(block_of(&mem, ours.stream()).is_some(), "its own block");
        assert!(block_of(&mem, other.stream()).is_none(), "another stream's");
        let private = memfd_allocator().alloc_memfd(3000, None).unwrap();
        assert!(
            block_of(&private, ours.stream()).is_none(),
            "private memory"
        );
        assert!(block_of(&private, 0).is_none());
    }
}

/// Issue 27 (fourth review): a `GstBufferPool` on a stream's allocator keeps its buffers'
/// memories and hands them out again without MemfdMemory's allocation or free, where blocks
/// are zeroed for a new audience and retired. A block the stream sent as it is (`freeze`, what
/// `memfdsink` does) is read-only from then on, and the pool discards its buffer instead of
/// reusing it, so the block goes back through MemfdMemory.
#[test]
fn a_block_a_stream_sent_goes_back_through_the_allocator_even_from_a_buffer_pool() {
    use gstmemkit::allocator::memfd::{
        MemfdAllocator, block_of, freeze, new_audience, retire_block,
    };
    init();
    let ours = MemfdAllocator::for_stream();
    let stream = ours.stream();
    new_audience(stream);
    let pool = gst::BufferPool::new();
    let mut config = pool.config();
    config.set_params(None, 100, 0, 0);
    config.set_allocator(Some(ours.upcast_ref::<gst::Allocator>()), None);
    pool.set_config(config).unwrap();
    pool.set_active(true).unwrap();
    let inode = |b: &gst::BufferRef| {
        rustix::fs::fstat(dup_fd(b.peek_memory(0)).unwrap())
            .unwrap()
            .st_ino
    };

    let mut buf = pool.acquire_buffer(None).unwrap();
    buf.get_mut().unwrap().map_writable().unwrap().fill(0xab);
    // A descriptor of the block kept open: no other file can take its inode number.
    let kept_open = dup_fd(buf.peek_memory(0)).unwrap();
    let sent = rustix::fs::fstat(&kept_open).unwrap().st_ino;
    assert!(freeze(buf.peek_memory(0), stream), "a block of the stream");
    assert!(!freeze(buf.peek_memory(0), 0), "not private memory's");
    // Not writable for the pool (it discards the buffer), read-only for the producer.
    assert!(!buf.is_all_memory_writable());
    assert!(buf.peek_memory(0).map_readable().is_ok());
    let mut held = buf.memory(0).unwrap();
    drop(buf);
    // A producer that kept the memory itself (the pool let the buffer go): writable for
    // GStreamer, but MemfdMemory refuses to map it for writing.
    assert!(held.get_mut().unwrap().map_writable().is_err());
    // A consumer joins: it was not sent what the block holds.
    new_audience(stream);
    drop(held);
    let buf = pool.acquire_buffer(None).unwrap();
    assert_eq!(
        inode(&buf),
        sent,
        "the block came back through the allocator"
    );
    let map = buf.map_readable().unwrap();
    assert!(
        map.iter().all(|&b| b == 0),
        "zeroed: its frame was not sent to the consumer that joined"
    );
    drop(map);

    // Retired (a consumer it was sent to left): freed when the pool lets it go, never reused.
    assert!(freeze(buf.peek_memory(0), stream));
    retire_block(block_of(buf.peek_memory(0), stream).unwrap().id);
    drop(buf);
    let buf = pool.acquire_buffer(None).unwrap();
    assert_ne!(
        inode(&buf),
        sent,
        "a retired block is never handed out again"
    );
    // Not sent: the pool keeps it as it is.
    let kept = inode(&buf);
    assert!(buf.is_all_memory_writable());
    drop(buf);
    assert_eq!(inode(&pool.acquire_buffer(None).unwrap()), kept);
    pool.set_active(false).unwrap();
    drop(kept_open);
}
