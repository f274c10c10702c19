// SPDX-License-Identifier: MPL-2.0
//! Size classes of the recycling caches: four per power of two, so a block rounded up to its
//! class wastes at most a quarter; and the free list (class and alignment) a block belongs to.

/// Smallest size class.
pub const MIN_CLASS: usize = 64;
/// Blocks larger than this are never cached.
pub const MAX_CACHED_BLOCK: usize = 64 << 20;

/// Which free list a block belongs to: its size class and alignment (`1 << align_shift`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub class: u16,
    pub align_shift: u8,
}

impl Key {
    /// Bytes a block of this key holds: its class size.
    pub const fn bytes(self) -> usize {
        class_bytes(self.class)
    }
}

/// The size of class `class` (the inverse of [`size_class`]).
pub const fn class_bytes(class: u16) -> usize {
    if class == 0 {
        return MIN_CLASS;
    }
    let c = class as usize - 1;
    let e = 6 + c / 4;
    let k = c % 4 + 1;
    (1 << e) + (k << (e - 2))
}

/// Rounds `size` up to its size class (four per power of two, so at most 25% is wasted):
/// `(class index, class size)`, or `None` for blocks too large to cache.
pub const fn size_class(size: usize) -> Option<(u16, usize)> {
    if size > MAX_CACHED_BLOCK {
        return None;
    }
    if size <= MIN_CLASS {
        return Some((0, MIN_CLASS));
    }
    // 2^e < size <= 2^(e+1), e >= 6
    let e = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize;
    let base = 1usize << e;
    // k = ceil((size - base) / step) with step = base / 4, by shifts (no division here: this
    // runs on every allocation).
    let k = (size - base + (base >> 2) - 1) >> (e - 2);
    Some((((e - 6) * 4 + k) as u16, base + (k << (e - 2))))
}

/// The free list for a block of `size` bytes aligned to `align` (a power of two), and the
/// bytes such a block holds; `None` for blocks too large to cache.
pub fn key(size: usize, align: usize) -> Option<(Key, usize)> {
    let (class, bytes) = size_class(size)?;
    let key = Key {
        class,
        align_shift: align.trailing_zeros() as u8,
    };
    Some((key, bytes))
}

/// Size classes (the last one holds [`MAX_CACHED_BLOCK`]).
pub const CLASSES: usize = match size_class(MAX_CACHED_BLOCK) {
    Some((class, _)) => class as usize + 1,
    None => 0,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_are_monotonic_and_waste_at_most_a_quarter() {
        let mut last = size_class(1).unwrap();
        for size in 1..=1 << 16 {
            let (class, cap) = size_class(size).unwrap();
            assert!(cap >= size);
            if size > MIN_CLASS {
                assert!((cap - size) * 4 <= cap, "size {size} cap {cap}");
            }
            assert!(class >= last.0 && cap >= last.1);
            if class == last.0 {
                assert_eq!(cap, last.1);
            }
            assert_eq!(class_bytes(class), cap, "class_bytes inverts size_class");
            last = (class, cap);
        }
        assert_eq!(size_class(64), Some((0, 64)));
        assert_eq!(size_class(65), Some((1, 80)));
        assert_eq!(size_class(128), Some((4, 128)));
        assert_eq!(size_class(129), Some((5, 160)));
        assert_eq!(size_class(MAX_CACHED_BLOCK), Some((80, MAX_CACHED_BLOCK)));
        assert_eq!(size_class(MAX_CACHED_BLOCK + 1), None);
        // A class size is its own class, also for large classes.
        for size in [64usize, 80, 3 << 20, 5 << 19, (12 << 20) + 1] {
            let (class, cap) = size_class(size).unwrap();
            assert_eq!(size_class(cap).unwrap().1, cap);
            assert_eq!(class_bytes(class), cap);
        }
        assert_eq!(
            key(1000, 4096).map(|(k, b)| (k.align_shift, b)),
            Some((12, 1024))
        );
    }
}
