// SPDX-License-Identifier: MPL-2.0
//! The recycling cache of `AlignedMemory`: freed root blocks go to per-size-class free lists,
//! a thread-local magazine first and a shared pool second, and are reused without touching
//! malloc, the kernel or fresh pages.
//!
//! Safe code: it only moves owned blocks around. Dropping a block frees it (`memory::Block`).
//!
//! Bounds: the shared pool holds at most `max-cached-bytes`; each thread's magazine holds at
//! most a quarter of that (and at most [`MAGAZINE_MAX_BYTES`]) and [`MAGAZINE_BLOCKS`] blocks
//! per class. `max-cached-bytes = 0` disables the cache.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Smallest size class.
pub const MIN_CLASS: usize = 64;
/// Blocks larger than this are never cached.
pub const MAX_CACHED_BLOCK: usize = 64 << 20;
/// Default bound of the shared pool.
pub const DEFAULT_MAX_CACHED_BYTES: usize = 64 << 20;
/// Blocks a thread keeps per size class.
pub const MAGAZINE_BLOCKS: usize = 8;
/// Upper bound of one thread's magazine.
pub const MAGAZINE_MAX_BYTES: usize = 16 << 20;
/// Environment variable that sets the initial `max-cached-bytes` (0 disables the cache).
pub const ENV_MAX_CACHED_BYTES: &str = "MEMKIT_MAX_CACHED_BYTES";

/// Alignments a thread's magazine keeps (`1 << 6` to `1 << 12` bytes); others go to the pool.
const MAGAZINE_MIN_SHIFT: u8 = 6;
const MAGAZINE_ALIGNS: usize = 7;

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

/// One thread's free lists, for the common alignments (64 B to 4 KiB).
pub struct Magazine<T> {
    lists: Vec<Vec<T>>,
    bytes: usize,
}

impl<T> Default for Magazine<T> {
    fn default() -> Self {
        Magazine {
            lists: Vec::new(),
            bytes: 0,
        }
    }
}

impl<T> Magazine<T> {
    #[inline]
    fn slot(key: Key) -> Option<usize> {
        let align = key.align_shift.wrapping_sub(MAGAZINE_MIN_SHIFT) as usize;
        (align < MAGAZINE_ALIGNS).then_some(key.class as usize * MAGAZINE_ALIGNS + align)
    }

    #[inline]
    pub fn take(&mut self, key: Key) -> Option<T> {
        let block = self.lists.get_mut(Self::slot(key)?)?.pop()?;
        self.bytes -= key.bytes();
        Some(block)
    }

    /// Keeps `block` if its list and the thread's `budget` have room; else gives it back.
    #[inline]
    pub fn put(&mut self, key: Key, block: T, budget: usize) -> Result<(), T> {
        let Some(slot) = Self::slot(key) else {
            return Err(block);
        };
        if self.bytes + key.bytes() > budget {
            return Err(block);
        }
        if self.lists.len() <= slot {
            self.lists.resize_with(slot + 1, Vec::new);
        }
        let list = &mut self.lists[slot];
        if list.len() >= MAGAZINE_BLOCKS {
            return Err(block);
        }
        self.bytes += key.bytes();
        list.push(block);
        Ok(())
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Everything the magazine holds, with its keys.
    pub fn drain(&mut self) -> Vec<(Key, T)> {
        let mut out = Vec::new();
        for (slot, list) in self.lists.iter_mut().enumerate() {
            let key = Key {
                class: (slot / MAGAZINE_ALIGNS) as u16,
                align_shift: MAGAZINE_MIN_SHIFT + (slot % MAGAZINE_ALIGNS) as u8,
            };
            out.extend(list.drain(..).map(|b| (key, b)));
        }
        self.bytes = 0;
        out
    }
}

/// The free lists shared by all threads.
pub struct Pool<T> {
    lists: HashMap<Key, Vec<T>>,
    bytes: usize,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool {
            lists: HashMap::new(),
            bytes: 0,
        }
    }
}

impl<T> Pool<T> {
    #[inline]
    pub fn take(&mut self, key: Key) -> Option<T> {
        let block = self.lists.get_mut(&key)?.pop()?;
        self.bytes -= key.bytes();
        Some(block)
    }

    /// Keeps `block` if the pool stays within `max` bytes; else gives it back.
    pub fn put(&mut self, key: Key, block: T, max: usize) -> Result<(), T> {
        if self.bytes + key.bytes() > max {
            return Err(block);
        }
        self.bytes += key.bytes();
        self.lists.entry(key).or_default().push(block);
        Ok(())
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Removes blocks until at most `max` bytes remain; returns them (to be freed outside any
    /// lock), largest classes first.
    pub fn trim_to(&mut self, max: usize) -> Vec<T> {
        let mut keys: Vec<Key> = self.lists.keys().copied().collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.class));
        let mut out = Vec::new();
        for key in keys {
            let list = self.lists.get_mut(&key).expect("key from the map");
            while self.bytes > max {
                match list.pop() {
                    Some(b) => {
                        self.bytes -= key.bytes();
                        out.push(b);
                    }
                    None => break,
                }
            }
        }
        self.lists.retain(|_, l| !l.is_empty());
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The process-wide cache of one block type (aligned/memory/lifecycle.rs instantiates it for its blocks).
// ---------------------------------------------------------------------------------------------

/// The initial bound of a recycling cache: `MEMKIT_MAX_CACHED_BYTES`, else the default.
pub fn initial_max() -> usize {
    std::env::var(ENV_MAX_CACHED_BYTES)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MAX_CACHED_BYTES)
}

/// A shared pool plus one magazine per thread, for blocks of type `T`.
pub struct Cache<T: Send + 'static> {
    max_bytes: AtomicUsize,
    shared: Mutex<Pool<T>>,
    local: &'static std::thread::LocalKey<RefCell<LocalMagazine<T>>>,
}

/// A thread's magazine; its blocks go to the shared pool (or are freed) when the thread ends.
pub struct LocalMagazine<T: Send + 'static> {
    magazine: Magazine<T>,
    cache: Option<&'static Cache<T>>,
}

impl<T: Send + 'static> LocalMagazine<T> {
    pub const fn new() -> Self {
        LocalMagazine {
            magazine: Magazine {
                lists: Vec::new(),
                bytes: 0,
            },
            cache: None,
        }
    }
}

impl<T: Send + 'static> Default for LocalMagazine<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + 'static> Drop for LocalMagazine<T> {
    fn drop(&mut self) {
        let blocks = self.magazine.drain();
        if let Some(cache) = self.cache {
            let max = cache.max_bytes();
            let mut rejected = Vec::new();
            if let Ok(mut pool) = cache.shared.lock() {
                for (key, block) in blocks {
                    if let Err(b) = pool.put(key, block, max) {
                        rejected.push(b);
                    }
                }
            }
            drop(rejected);
        }
    }
}

impl<T: Send + 'static> Cache<T> {
    pub fn new(local: &'static std::thread::LocalKey<RefCell<LocalMagazine<T>>>) -> Self {
        Cache {
            max_bytes: AtomicUsize::new(initial_max()),
            shared: Mutex::new(Pool::default()),
            local,
        }
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes.load(Ordering::Relaxed)
    }

    fn magazine_budget(max: usize) -> usize {
        (max / 4).min(MAGAZINE_MAX_BYTES)
    }

    /// A cached block for `key`: this thread's magazine first, then the shared pool.
    #[inline]
    pub fn take(&'static self, key: Key) -> Option<T> {
        if self.max_bytes() == 0 {
            return None;
        }
        let local = self
            .local
            .try_with(|l| l.try_borrow_mut().ok()?.magazine.take(key))
            .ok()
            .flatten();
        local.or_else(|| self.shared.lock().ok()?.take(key))
    }

    /// Caches `block` if there is room; gives it back otherwise (the caller drops it).
    #[inline]
    pub fn put(&'static self, key: Key, block: T) -> Option<T> {
        let max = self.max_bytes();
        if max == 0 {
            return Some(block);
        }
        let budget = Self::magazine_budget(max);
        let mut block = Some(block);
        let _ = self.local.try_with(|l| {
            let Ok(mut l) = l.try_borrow_mut() else {
                return;
            };
            if l.cache.is_none() {
                l.cache = Some(self);
            }
            if let Some(b) = block.take()
                && let Err(b) = l.magazine.put(key, b, budget)
            {
                block = Some(b);
            }
        });
        let block = block?;
        match self.shared.lock() {
            Ok(mut pool) => pool.put(key, block, max).err(),
            Err(_) => Some(block),
        }
    }

    /// Sets the bound and trims the shared pool to it (other threads' magazines shrink as
    /// they are used: they no longer grow past the new budget).
    pub fn set_max_bytes(&'static self, max: usize) {
        self.max_bytes.store(max, Ordering::Relaxed);
        let freed = self
            .shared
            .lock()
            .map(|mut p| p.trim_to(max))
            .unwrap_or_default();
        drop(freed);
        if max == 0 {
            self.trim_local();
        }
    }

    /// Frees everything in the shared pool and in this thread's magazine.
    pub fn trim(&'static self) {
        self.trim_local();
        let freed = self
            .shared
            .lock()
            .map(|mut p| p.trim_to(0))
            .unwrap_or_default();
        drop(freed);
    }

    fn trim_local(&'static self) {
        let freed = self
            .local
            .try_with(|l| l.try_borrow_mut().map(|mut l| l.magazine.drain()))
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        drop(freed);
    }

    /// Bytes held by the shared pool and by this thread's magazine.
    pub fn cached_bytes(&'static self) -> usize {
        let local = self
            .local
            .try_with(|l| l.try_borrow().map_or(0, |l| l.magazine.bytes()))
            .unwrap_or(0);
        local + self.shared.lock().map(|p| p.bytes()).unwrap_or(0)
    }
}

/// A thread-local LIFO of spare objects (share headers), bounded by `max`.
pub struct Spares<T> {
    items: Vec<T>,
    max: usize,
}

impl<T> Spares<T> {
    pub const fn new(max: usize) -> Self {
        Spares {
            items: Vec::new(),
            max,
        }
    }

    pub fn take(&mut self) -> Option<T> {
        self.items.pop()
    }

    pub fn put(&mut self, item: T) -> Result<(), T> {
        if self.items.len() >= self.max {
            return Err(item);
        }
        self.items.push(item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in block that remembers which key it was cached under.
    #[derive(Debug, PartialEq)]
    struct Fake(Key);

    fn key_of(size: usize, align_shift: u8) -> Key {
        Key {
            class: size_class(size).unwrap().0,
            align_shift,
        }
    }

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

    #[test]
    fn magazine_bounds_blocks_per_list_and_bytes() {
        let mut m = Magazine::<Fake>::default();
        let key = key_of(112, 6);
        assert_eq!(key.bytes(), 112);
        for _ in 0..MAGAZINE_BLOCKS {
            assert!(m.put(key, Fake(key), 1 << 20).is_ok());
        }
        assert!(m.put(key, Fake(key), 1 << 20).is_err(), "list full");
        assert_eq!(m.bytes(), MAGAZINE_BLOCKS * 112);
        let big = key_of(1 << 20, 6);
        assert!(m.put(big, Fake(big), 1 << 20).is_err(), "over budget");
        let big_align = key_of(112, 13);
        assert!(
            m.put(big_align, Fake(big_align), 1 << 20).is_err(),
            "alignment not kept per thread"
        );
        assert_eq!(m.take(key), Some(Fake(key)));
        assert!(m.take(big).is_none());
        let drained = m.drain();
        assert_eq!(drained.len(), MAGAZINE_BLOCKS - 1);
        assert!(drained.iter().all(|(k, b)| *k == key && b.0 == key));
        assert_eq!(m.bytes(), 0);
    }

    #[test]
    fn pool_bounds_bytes_and_trims_largest_first() {
        let mut p = Pool::<Fake>::default();
        let small = key_of(100, 6);
        let large = key_of(800, 6);
        let max = small.bytes() + large.bytes();
        assert!(p.put(small, Fake(small), max).is_ok());
        assert!(p.put(large, Fake(large), max).is_ok());
        assert!(p.put(small, Fake(small), max).is_err(), "would exceed max");
        assert_eq!(p.bytes(), max);
        let freed = p.trim_to(small.bytes());
        assert_eq!(freed, vec![Fake(large)]);
        assert_eq!(p.bytes(), small.bytes());
        assert!(p.take(large).is_none());
        assert_eq!(p.take(small), Some(Fake(small)));
        assert_eq!(p.trim_to(0).len(), 0);
    }

    #[test]
    fn spares_are_bounded() {
        let mut s = Spares::new(2);
        assert!(s.put(1).is_ok() && s.put(2).is_ok());
        assert_eq!(s.put(3), Err(3));
        assert_eq!(s.take(), Some(2));
    }
}
