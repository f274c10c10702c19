// SPDX-License-Identifier: MPL-2.0
//! A thread's free lists (its magazine) and its spare share headers: intrusive LIFOs of boxed
//! blocks, linked through the blocks themselves, kept in cells.

use std::cell::Cell;

use super::classes::{CLASSES, Key, class_bytes, size_class};

/// Blocks a thread keeps per size class.
pub const MAGAZINE_BLOCKS: usize = 8;

/// Alignments a thread's magazine keeps (`1 << 6` to `1 << 12` bytes); others go to the pool.
pub const MAGAZINE_MIN_SHIFT: u8 = 6;
pub const MAGAZINE_ALIGNS: usize = 7;

/// A block that can wait in a thread's lists: it carries the link of its list, so that
/// taking and putting a block moves pointers and never allocates.
pub trait Linked: Sized {
    fn link(&mut self) -> &mut Option<Box<Self>>;
}

/// Lists of one thread's magazine: one per size class and kept alignment.
pub const MAGAZINE_SLOTS: usize = CLASSES * MAGAZINE_ALIGNS;
/// The bytes of a block of every magazine list, looked up instead of computed on the hot path.
static SLOT_BYTES: [usize; MAGAZINE_SLOTS] = {
    let mut t = [0; MAGAZINE_SLOTS];
    let mut slot = 0;
    while slot < MAGAZINE_SLOTS {
        t[slot] = class_bytes((slot / MAGAZINE_ALIGNS) as u16);
        slot += 1;
    }
    t
};
/// The [`magazine_slot`] of blocks that thread magazines do not keep.
pub const NO_SLOT: u16 = u16::MAX;

/// The list of a thread's magazine that keeps blocks of `key`, or [`NO_SLOT`].
#[inline(always)]
pub const fn magazine_slot(key: Key) -> u16 {
    let align = key.align_shift.wrapping_sub(MAGAZINE_MIN_SHIFT) as usize;
    let slot = key.class as usize * MAGAZINE_ALIGNS + align;
    if align < MAGAZINE_ALIGNS && slot < MAGAZINE_SLOTS {
        slot as u16
    } else {
        NO_SLOT
    }
}

/// Blocks up to this size that are a multiple of 64 bytes find their class in a table.
const TABLE_MAX: usize = 64 << 10;
/// The size class of every multiple of 64 bytes up to [`TABLE_MAX`], by `size / 64`.
static CLASS_OF_64S: [u8; TABLE_MAX / 64 + 1] = {
    let mut t = [0; TABLE_MAX / 64 + 1];
    let mut i = 0;
    while i < t.len() {
        if let Some((class, _)) = size_class(i * 64) {
            t[i] = class as u8;
        }
        i += 1;
    }
    t
};

/// The magazine list and size class of a block of `size` bytes with the smallest alignment
/// (64 bytes), or `None` for blocks too large to cache.
#[inline(always)]
pub fn small_slot(size: usize) -> Option<(usize, u16)> {
    let class = if size.is_multiple_of(64) && size <= TABLE_MAX {
        CLASS_OF_64S[size / 64] as u16
    } else {
        size_class(size)?.0
    };
    Some((class as usize * MAGAZINE_ALIGNS, class))
}

/// One thread's free lists, for the common alignments (64 B to 4 KiB): intrusive LIFOs in
/// cells, so that the owning thread uses them through a shared reference (no borrow flag to
/// check, nothing to refuse when a block's drop frees another memory on the same thread).
pub struct Magazine<T> {
    heads: [Cell<Option<Box<T>>>; MAGAZINE_SLOTS],
    lens: [Cell<u8>; MAGAZINE_SLOTS],
    bytes: Cell<usize>,
}

impl<T> Default for Magazine<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Magazine<T> {
    pub const fn new() -> Self {
        Magazine {
            heads: [const { Cell::new(None) }; MAGAZINE_SLOTS],
            lens: [const { Cell::new(0) }; MAGAZINE_SLOTS],
            bytes: Cell::new(0),
        }
    }

    #[inline(always)]
    fn slot(key: Key) -> Option<usize> {
        let slot = magazine_slot(key);
        (slot != NO_SLOT).then_some(slot as usize)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }
}

impl<T: Linked> Magazine<T> {
    #[inline(always)]
    pub fn take(&self, key: Key) -> Option<Box<T>> {
        self.take_slot(Self::slot(key)?)
    }

    /// [`Magazine::take`] by the list's index (a [`magazine_slot`]).
    #[inline(always)]
    pub fn take_slot(&self, slot: usize) -> Option<Box<T>> {
        let head = self.heads.get(slot)?;
        let mut block = head.take()?;
        // The list's head is empty (just taken): nothing to drop.
        std::mem::forget(head.replace(block.link().take()));
        self.lens[slot].set(self.lens[slot].get().wrapping_sub(1));
        self.bytes.set(self.bytes.get() - SLOT_BYTES[slot]);
        Some(block)
    }

    /// Keeps `block` if its list and the thread's `budget` have room; else gives it back.
    #[inline(always)]
    pub fn put(&self, key: Key, block: Box<T>, budget: usize) -> Result<(), Box<T>> {
        match Self::slot(key) {
            Some(slot) => self.put_slot(slot, block, budget),
            None => Err(block),
        }
    }

    /// [`Magazine::put`] by the list's index (a [`magazine_slot`]).
    #[inline(always)]
    pub fn put_slot(&self, slot: usize, mut block: Box<T>, budget: usize) -> Result<(), Box<T>> {
        if slot >= MAGAZINE_SLOTS {
            return Err(block);
        }
        let bytes = self.bytes.get() + SLOT_BYTES[slot];
        let len = self.lens[slot].get();
        if bytes > budget || len as usize >= MAGAZINE_BLOCKS {
            return Err(block);
        }
        let head = &self.heads[slot];
        // The block's own link is empty (it is not in a list): nothing to drop; nor in the
        // head just taken.
        std::mem::forget(std::mem::replace(block.link(), head.take()));
        std::mem::forget(head.replace(Some(block)));
        self.lens[slot].set(len + 1);
        self.bytes.set(bytes);
        Ok(())
    }

    /// Everything the magazine holds, with its keys.
    pub fn drain(&self) -> Vec<(Key, Box<T>)> {
        let mut out = Vec::new();
        for slot in 0..MAGAZINE_SLOTS {
            let key = Key {
                class: (slot / MAGAZINE_ALIGNS) as u16,
                align_shift: MAGAZINE_MIN_SHIFT + (slot % MAGAZINE_ALIGNS) as u8,
            };
            while let Some(b) = self.take(key) {
                out.push((key, b));
            }
        }
        out
    }
}

/// A thread's bounded LIFO of spare objects (share headers), linked like the magazine's.
pub struct Spares<T> {
    head: Cell<Option<Box<T>>>,
    len: Cell<usize>,
    max: usize,
}

impl<T: Linked> Spares<T> {
    pub const fn new(max: usize) -> Self {
        Spares {
            head: Cell::new(None),
            len: Cell::new(0),
            max,
        }
    }

    #[inline(always)]
    pub fn take(&self) -> Option<Box<T>> {
        let mut item = self.head.take()?;
        // The head is empty (just taken): nothing to drop.
        std::mem::forget(self.head.replace(item.link().take()));
        self.len.set(self.len.get() - 1);
        Some(item)
    }

    #[inline(always)]
    pub fn put(&self, mut item: Box<T>) -> Result<(), Box<T>> {
        let len = self.len.get();
        if len >= self.max {
            return Err(item);
        }
        // The item's link is empty (it is in no list), and so is the head just taken.
        std::mem::forget(std::mem::replace(item.link(), self.head.take()));
        std::mem::forget(self.head.replace(Some(item)));
        self.len.set(len + 1);
        Ok(())
    }
}

/// Stand-in blocks for the caches' unit tests.
#[cfg(test)]
pub(super) mod test_blocks {
    use crate::allocator::aligned::classes::{Key, size_class};
    use crate::allocator::aligned::magazine::Linked;

    /// A stand-in block that remembers which key it was cached under, with its list link.
    #[derive(Debug, PartialEq)]
    pub struct Fake(pub Key, pub Option<Box<Fake>>);

    impl Linked for Fake {
        fn link(&mut self) -> &mut Option<Box<Self>> {
            &mut self.1
        }
    }

    pub fn fake(key: Key) -> Box<Fake> {
        Box::new(Fake(key, None))
    }

    pub fn key_of(size: usize, align_shift: u8) -> Key {
        Key {
            class: size_class(size).unwrap().0,
            align_shift,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_blocks::{Fake, fake, key_of};
    use super::*;
    use crate::allocator::aligned::classes::MAX_CACHED_BLOCK;

    #[test]
    fn small_slot_agrees_with_size_class() {
        for size in (0..=TABLE_MAX + 256).chain([MAX_CACHED_BLOCK, MAX_CACHED_BLOCK + 1]) {
            let expected = size_class(size).map(|(c, _)| (c as usize * MAGAZINE_ALIGNS, c));
            assert_eq!(small_slot(size), expected, "size {size}");
        }
    }

    #[test]
    fn magazine_bounds_blocks_per_list_and_bytes() {
        let m = Magazine::<Fake>::default();
        let key = key_of(112, 6);
        assert_eq!(key.bytes(), 112);
        for _ in 0..MAGAZINE_BLOCKS {
            assert!(m.put(key, fake(key), 1 << 20).is_ok());
        }
        assert!(m.put(key, fake(key), 1 << 20).is_err(), "list full");
        assert_eq!(m.bytes(), MAGAZINE_BLOCKS * 112);
        let big = key_of(1 << 20, 6);
        assert!(m.put(big, fake(big), 1 << 20).is_err(), "over budget");
        let big_align = key_of(112, 13);
        assert!(
            m.put(big_align, fake(big_align), 1 << 20).is_err(),
            "alignment not kept per thread"
        );
        let taken = m.take(key).unwrap();
        assert_eq!(
            (taken.0, taken.1.is_none()),
            (key, true),
            "taken out of its list"
        );
        assert!(m.take(big).is_none());
        let drained = m.drain();
        assert_eq!(drained.len(), MAGAZINE_BLOCKS - 1);
        assert!(
            drained
                .iter()
                .all(|(k, b)| *k == key && b.0 == key && b.1.is_none())
        );
        assert_eq!(m.bytes(), 0);
    }

    #[test]
    fn spares_are_bounded() {
        let s = Spares::new(2);
        let (a, b) = (key_of(64, 6), key_of(128, 6));
        assert!(s.put(fake(a)).is_ok() && s.put(fake(b)).is_ok());
        assert!(s.put(fake(a)).is_err());
        assert_eq!(s.take().map(|f| f.0), Some(b));
        assert_eq!(s.take().map(|f| f.0), Some(a));
        assert!(s.take().is_none());
    }
}
