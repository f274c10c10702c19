// SPDX-License-Identifier: MPL-2.0
//! Randomized test: long random sequences of alloc / share / copy / resize / map / write /
//! is_span / unref on `AlignedMemory`, compared after every step with a simple model of what
//! the GstMemory contract says must happen. Out-of-range requests are part of the mix: the
//! model predicts which ones fail.
//!
//! The sequences come from proptest, which shrinks a failing one to a short sequence of
//! small choices. `PROPTEST_CASES=n` and `MEMKIT_MODEL_STEPS=n` run more and longer
//! sequences.

mod common;
use common::init;

use gstmemkit::allocator::{AlignedMemory, MemoryError, aligned_allocator};
use proptest::prelude::*;

/// The choices of one step, drawn from words proptest generated (0 once they run out), so
/// that shrinking the words shrinks the step: fewer steps, smaller sizes and offsets.
struct Rng<'a> {
    words: &'a [u64],
}

impl Rng<'_> {
    fn next(&mut self) -> u64 {
        match self.words.split_first() {
            Some((&w, rest)) => {
                self.words = rest;
                w
            }
            None => 0,
        }
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn range(&mut self, lo: isize, hi: isize) -> isize {
        lo + self.below((hi - lo + 1) as usize) as isize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const CHECKED_FLAGS: gst::MemoryFlags = gst::MemoryFlags::from_bits_truncate(
    gst::MemoryFlags::READONLY.bits()
        | gst::MemoryFlags::NO_SHARE.bits()
        | gst::MemoryFlags::ZERO_PREFIXED.bits()
        | gst::MemoryFlags::ZERO_PADDED.bits()
        | gst::MemoryFlags::NOT_MAPPABLE.bits(),
);

/// The model of one root block: its bytes (None = never written, so unknown), its current
/// offset (for is_span), and how many live shares lock it.
struct Root {
    region: Vec<Option<u8>>,
    offset: usize,
    flags: gst::MemoryFlags,
    shares: usize,
}

struct Entry {
    mem: AlignedMemory,
    root: usize,
    is_root: bool,
    offset: usize,
    size: usize,
    maxsize: usize,
    align: usize,
    flags: gst::MemoryFlags,
}

struct Model {
    roots: Vec<Root>,
    entries: Vec<Entry>,
}

impl Model {
    fn writable(&self, e: &Entry) -> bool {
        // gst_memory_is_writable: fewer than two exclusive locks (shares) on the memory.
        !e.is_root || self.roots[e.root].shares < 2
    }

    fn check(&self, ctx: &str) {
        let mut bases = std::collections::HashMap::new();
        for (i, e) in self.entries.iter().enumerate() {
            let m = &e.mem;
            assert_eq!(
                (m.offset(), m.size(), m.maxsize(), m.align()),
                (e.offset, e.size, e.maxsize, e.align),
                "{ctx}: entry {i} sizes"
            );
            assert_eq!(m.flags() & CHECKED_FLAGS, e.flags, "{ctx}: entry {i} flags");
            assert_eq!(
                m.is_writable(),
                self.writable(e),
                "{ctx}: entry {i} writable"
            );
            assert_eq!(m.parent().is_some(), !e.is_root, "{ctx}: entry {i} parent");
            // Every share of a root sees the same region base (zero-copy).
            let base = m.payload_addr() - e.offset;
            let first = *bases.entry(e.root).or_insert(base);
            assert_eq!(base, first, "{ctx}: entry {i} region base");
            let map = m.map_readable().unwrap();
            let bytes = map.as_slice();
            assert_eq!(bytes.len(), e.size);
            let expected = &self.roots[e.root].region[e.offset..e.offset + e.size];
            for (k, (&got, want)) in bytes.iter().zip(expected).enumerate() {
                if let Some(want) = want {
                    assert_eq!(got, *want, "{ctx}: entry {i} byte {k}");
                }
            }
        }
    }

    fn add_root(&mut self, mem: AlignedMemory, region: Vec<Option<u8>>, flags: gst::MemoryFlags) {
        let root = self.roots.len();
        self.roots.push(Root {
            region,
            offset: mem.offset(),
            flags,
            shares: 0,
        });
        self.entries.push(Entry {
            root,
            is_root: true,
            offset: mem.offset(),
            size: mem.size(),
            maxsize: mem.maxsize(),
            align: mem.align(),
            flags,
            mem,
        });
    }
}

const MASKS: [usize; 6] = [0, 1, 7, 63, 127, 4095];

fn round_up(v: usize, mask: usize) -> usize {
    (v + mask) & !mask
}

fn step(model: &mut Model, rng: &mut Rng<'_>, ctx: &str) {
    let n = model.entries.len();
    match rng.below(100) {
        // alloc
        0..=14 => {
            let size = rng.below(300);
            let prefix = rng.below(130);
            let padding = rng.below(130);
            let mask = MASKS[rng.below(MASKS.len())];
            let mut flags = gst::MemoryFlags::empty();
            if rng.chance(50) {
                flags |= gst::MemoryFlags::ZERO_PREFIXED;
            }
            if rng.chance(50) {
                flags |= gst::MemoryFlags::ZERO_PADDED;
            }
            if rng.chance(5) {
                flags |= gst::MemoryFlags::NO_SHARE;
            }
            let p = gst::AllocationParams::new(flags, mask, prefix, padding);
            let mem = aligned_allocator().alloc_aligned(size, Some(&p)).unwrap();
            let align = mask | 63;
            let maxsize = round_up(prefix + size + padding, align);
            assert_eq!(mem.maxsize(), maxsize, "{ctx}: alloc maxsize");
            assert_eq!(mem.payload_addr() & align, 0, "{ctx}: alloc alignment");
            let mut region = vec![None; maxsize];
            if flags.contains(gst::MemoryFlags::ZERO_PREFIXED) {
                region[..prefix].fill(Some(0));
            }
            if flags.contains(gst::MemoryFlags::ZERO_PADDED) {
                region[prefix + size..].fill(Some(0));
            }
            model.add_root(mem, region, flags);
        }
        // write through a map
        15..=29 if n > 0 => {
            let i = rng.below(n);
            let writable = model.writable(&model.entries[i]);
            let readonly = model.entries[i].flags.contains(gst::MemoryFlags::READONLY);
            let seed = rng.next() as u8;
            let e = &mut model.entries[i];
            match e.mem.get_mut() {
                None => assert!(!writable, "{ctx}: get_mut refused a writable memory"),
                Some(m) => {
                    assert!(writable, "{ctx}: get_mut on a locked memory");
                    match m.map_writable() {
                        Err(_) => assert!(readonly, "{ctx}: write map refused"),
                        Ok(mut map) => {
                            assert!(!readonly, "{ctx}: read-only memory mapped for writing");
                            for (k, b) in map.as_mut_slice().iter_mut().enumerate() {
                                *b = seed.wrapping_add(k as u8);
                            }
                            let (root, off, size) = (e.root, e.offset, e.size);
                            for k in 0..size {
                                model.roots[root].region[off + k] =
                                    Some(seed.wrapping_add(k as u8));
                            }
                        }
                    }
                }
            }
        }
        // share
        30..=49 if n > 0 => {
            let i = rng.below(n);
            let e = &model.entries[i];
            let start = rng.below(e.size + 8);
            let end = if rng.chance(80) {
                start + rng.below(e.size + 4)
            } else {
                rng.below(e.size + 8)
            };
            let result = e.mem.share(start..end);
            let valid = start <= end && end <= e.size;
            let no_share = e.flags.contains(gst::MemoryFlags::NO_SHARE);
            match result {
                Ok(share) => {
                    assert!(
                        valid && !no_share,
                        "{ctx}: share {start}..{end} of {} succeeded",
                        e.size
                    );
                    let root = e.root;
                    let root_flags = model.roots[root].flags;
                    let entry = Entry {
                        root,
                        is_root: false,
                        offset: e.offset + start,
                        size: end - start,
                        maxsize: e.maxsize,
                        align: e.align,
                        // the root's flags (not the shared memory's) | READONLY
                        flags: root_flags | gst::MemoryFlags::READONLY,
                        mem: share,
                    };
                    if std::env::var_os("MEMKIT_MODEL_TRACE").is_some() {
                        eprintln!(
                            "{ctx}: share of entry {i} -> entry {} {:?}",
                            model.entries.len(),
                            entry.flags
                        );
                    }
                    model.roots[root].shares += 1;
                    model.entries.push(entry);
                }
                Err(MemoryError::NoShare) => assert!(no_share, "{ctx}: NoShare"),
                Err(MemoryError::OutOfRange { .. }) => {
                    assert!(!valid, "{ctx}: share {start}..{end} refused")
                }
                Err(err) => panic!("{ctx}: unexpected share error {err:?}"),
            }
        }
        // copy
        50..=59 if n > 0 => {
            let i = rng.below(n);
            let e = &model.entries[i];
            let start = rng.below(e.size + 4);
            let end = start + rng.below(e.size + 4);
            let valid = end <= e.size;
            match e.mem.copy_range(start..end) {
                Ok(copy) => {
                    assert!(valid, "{ctx}: copy {start}..{end} of {} succeeded", e.size);
                    assert_eq!(copy.size(), end - start);
                    assert_eq!(copy.offset(), 0);
                    assert_eq!(copy.align(), e.align);
                    assert_eq!(copy.payload_addr() & e.align, 0, "{ctx}: copy alignment");
                    let src = &model.roots[e.root].region[e.offset + start..e.offset + end];
                    let mut region = src.to_vec();
                    region.resize(copy.maxsize(), None);
                    model.add_root(copy, region, gst::MemoryFlags::empty());
                }
                Err(MemoryError::OutOfRange { .. }) => assert!(!valid, "{ctx}: copy refused"),
                Err(err) => panic!("{ctx}: unexpected copy error {err:?}"),
            }
        }
        // resize
        60..=71 if n > 0 => {
            let i = rng.below(n);
            let writable = model.writable(&model.entries[i]);
            let e = &mut model.entries[i];
            let delta = rng.range(-(e.offset as isize) - 2, 16);
            let size = rng.below(e.maxsize + 4);
            let new_start = e.offset as isize + delta;
            let valid = new_start >= 0 && new_start as usize + size <= e.maxsize;
            let (old_size, is_root, root) = (e.size, e.is_root, e.root);
            if std::env::var_os("MEMKIT_MODEL_TRACE").is_some() {
                eprintln!(
                    "{ctx}: resize entry {i} ({} {} {:?}) by {delta} to {size}",
                    e.offset, e.size, e.flags
                );
            }
            match e.mem.get_mut() {
                None => assert!(!writable, "{ctx}: resize: get_mut refused"),
                Some(m) => match m.try_resize(delta, size) {
                    Ok(()) => {
                        assert!(valid, "{ctx}: resize {delta} {size} succeeded");
                        e.offset = new_start as usize;
                        e.size = size;
                        if delta > 0 {
                            e.flags.remove(gst::MemoryFlags::ZERO_PREFIXED);
                        }
                        // The end moved down (SEMANTICS.md; try_resize also covers the case
                        // core's unsigned check misses).
                        if delta + (size as isize) < old_size as isize {
                            e.flags.remove(gst::MemoryFlags::ZERO_PADDED);
                        }
                        if is_root {
                            model.roots[root].offset = e.offset;
                            model.roots[root].flags = e.flags;
                        }
                    }
                    Err(MemoryError::OutOfRange { .. }) => assert!(!valid, "{ctx}: resize refused"),
                    Err(err) => panic!("{ctx}: unexpected resize error {err:?}"),
                },
            }
        }
        // is_span between two memories
        72..=84 if n > 1 => {
            let (i, j) = (rng.below(n), rng.below(n));
            let (a, b) = (&model.entries[i], &model.entries[j]);
            let got = a.mem.is_span(&b.mem);
            let same_parent = !a.is_root && !b.is_root && a.root == b.root;
            let expected = (same_parent && a.offset + a.size == b.offset)
                .then(|| a.offset.wrapping_sub(model.roots[a.root].offset));
            assert_eq!(got, expected, "{ctx}: is_span {i} {j}");
        }
        // unref
        85..=99 if n > 0 => {
            let e = model.entries.swap_remove(rng.below(n));
            if !e.is_root {
                model.roots[e.root].shares -= 1;
            }
        }
        _ => {}
    }
}

/// Words drawn per step: more than any step uses.
const WORDS_PER_STEP: usize = 8;

fn run(steps: &[Vec<u64>]) {
    let mut model = Model {
        roots: Vec::new(),
        entries: Vec::new(),
    };
    for (s, words) in steps.iter().enumerate() {
        let ctx = format!("step {s}");
        step(&mut model, &mut Rng { words }, &ctx);
        // Keep the live set bounded so every step can check everything.
        while model.entries.len() > 40 {
            let e = model.entries.swap_remove(0);
            if !e.is_root {
                model.roots[e.root].shares -= 1;
            }
        }
        model.check(&ctx);
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    // 16 sequences by default (PROPTEST_CASES sets another number), of up to 2000 steps.
    #![proptest_config(ProptestConfig {
        cases: env("PROPTEST_CASES", 16) as u32,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_sequences_match_the_model(
        steps in proptest::collection::vec(
            proptest::collection::vec(any::<u64>(), WORDS_PER_STEP),
            1..env("MEMKIT_MODEL_STEPS", 2000),
        )
    ) {
        init();
        run(&steps);
    }
}
