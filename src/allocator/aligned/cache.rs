// SPDX-License-Identifier: MPL-2.0
//! The recycling cache of `AlignedMemory`: freed root blocks go to per-size-class free lists,
//! a thread-local magazine first and a shared pool second, and are reused without touching
//! malloc, the kernel or fresh pages.
//!
//! Safe code: it only moves owned blocks around. Dropping a block frees it.
//!
//! Bounds: the shared pool holds at most `max-cached-bytes`; each thread's magazine holds at
//! most a quarter of that (and at most [`MAGAZINE_MAX_BYTES`]) and [`MAGAZINE_BLOCKS`](super::magazine::MAGAZINE_BLOCKS) blocks
//! per class. `max-cached-bytes = 0` disables the cache.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use super::classes::{Key, key};
pub use super::magazine::{Linked, Magazine, NO_SLOT, Spares, magazine_slot, small_slot};

pub use crate::allocator::shared::initial_max;

/// Upper bound of one thread's magazine.
pub const MAGAZINE_MAX_BYTES: usize = 16 << 20;

/// The free lists shared by all threads.
pub struct Pool<T> {
    lists: HashMap<Key, Vec<Box<T>>>,
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
    pub fn take(&mut self, key: Key) -> Option<Box<T>> {
        let block = self.lists.get_mut(&key)?.pop()?;
        self.bytes -= key.bytes();
        Some(block)
    }

    /// Keeps `block` if the pool stays within `max` bytes; else gives it back.
    pub fn put(&mut self, key: Key, block: Box<T>, max: usize) -> Result<(), Box<T>> {
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
    pub fn trim_to(&mut self, max: usize) -> Vec<Box<T>> {
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

/// A shared pool and the cache's bound, for blocks of type `T`; each thread's
/// [`LocalMagazine`] (kept by the user of the cache, in its own thread-local state) sits in
/// front of it.
pub struct Cache<T: Linked + Send + 'static> {
    max_bytes: AtomicUsize,
    shared: Mutex<Pool<T>>,
    /// The shared pool's bytes, written under its lock after every change: read without it
    /// (the tracer's timeline reads it at an allocation or a free, which may hold a lock).
    shared_bytes: AtomicUsize,
}

/// A thread's magazine; its blocks go to the shared pool (or are freed) when the thread ends.
pub struct LocalMagazine<T: Linked + Send + 'static> {
    magazine: Magazine<T>,
    cache: Cell<Option<&'static Cache<T>>>,
}

impl<T: Linked + Send + 'static> LocalMagazine<T> {
    pub const fn new() -> Self {
        LocalMagazine {
            magazine: Magazine::new(),
            cache: Cell::new(None),
        }
    }
}

impl<T: Linked + Send + 'static> Default for LocalMagazine<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Linked + Send + 'static> Drop for LocalMagazine<T> {
    fn drop(&mut self) {
        self.retire();
    }
}

impl<T: Linked + Send + 'static> LocalMagazine<T> {
    /// Hands this magazine's blocks to the shared pool of the cache it last put into (what
    /// does not fit is freed): when its thread ends.
    pub fn retire(&self) {
        let blocks = self.magazine.drain();
        if let Some(cache) = self.cache.get() {
            let max = cache.max_bytes();
            let mut rejected = Vec::new();
            if let Ok(mut pool) = cache.shared.lock() {
                for (key, block) in blocks {
                    if let Err(b) = pool.put(key, block, max) {
                        rejected.push(b);
                    }
                }
                cache.shared_bytes.store(pool.bytes(), Ordering::Relaxed);
            }
            drop(rejected);
        }
    }
}

impl<T: Linked + Send + 'static> Cache<T> {
    pub fn new() -> Self {
        Cache {
            max_bytes: AtomicUsize::new(initial_max()),
            shared: Mutex::new(Pool::default()),
            shared_bytes: AtomicUsize::new(0),
        }
    }

    #[inline(always)]
    pub fn max_bytes(&self) -> usize {
        self.max_bytes.load(Ordering::Relaxed)
    }

    #[inline(always)]
    fn magazine_budget(max: usize) -> usize {
        (max / 4).min(MAGAZINE_MAX_BYTES)
    }

    /// A cached block of magazine list `slot` from this thread's magazine alone (`local`).
    #[inline(always)]
    pub fn take_local(&self, local: &LocalMagazine<T>, slot: usize) -> Option<Box<T>> {
        if self.max_bytes() == 0 {
            return None;
        }
        local.magazine.take_slot(slot)
    }

    /// Keeps `block` in this thread's magazine list `slot` when it and the thread's budget
    /// have room and the cache is on; gives it back otherwise (for [`Cache::put`]).
    #[inline(always)]
    pub fn put_local(
        &'static self,
        local: &LocalMagazine<T>,
        slot: usize,
        block: Box<T>,
    ) -> Result<(), Box<T>> {
        let max = self.max_bytes();
        if max == 0 {
            return Err(block);
        }
        local
            .magazine
            .put_slot(slot, block, Self::magazine_budget(max))?;
        if local.cache.get().is_none() {
            local.cache.set(Some(self));
        }
        Ok(())
    }

    /// A cached block for `key`: this thread's magazine first (`local`, when the thread's state
    /// is available), then the shared pool.
    #[inline]
    pub fn take(&self, local: Option<&LocalMagazine<T>>, key: Key) -> Option<Box<T>> {
        if self.max_bytes() == 0 {
            return None;
        }
        local.and_then(|l| l.magazine.take(key)).or_else(|| {
            let mut pool = self.shared.lock().ok()?;
            let block = pool.take(key);
            self.shared_bytes.store(pool.bytes(), Ordering::Relaxed);
            block
        })
    }

    /// Caches `block` if there is room (this thread's magazine first, then the shared pool);
    /// gives it back otherwise (the caller drops it).
    #[inline(always)]
    pub fn put(
        &'static self,
        local: Option<&LocalMagazine<T>>,
        key: Key,
        block: Box<T>,
    ) -> Option<Box<T>> {
        let max = self.max_bytes();
        if max == 0 {
            return Some(block);
        }
        let block = match local {
            Some(l) => match l.magazine.put(key, block, Self::magazine_budget(max)) {
                Ok(()) => {
                    if l.cache.get().is_none() {
                        l.cache.set(Some(self));
                    }
                    return None;
                }
                Err(b) => b,
            },
            None => block,
        };
        self.put_shared(key, block, max)
    }

    #[cold]
    fn put_shared(&self, key: Key, block: Box<T>, max: usize) -> Option<Box<T>> {
        match self.shared.lock() {
            Ok(mut pool) => {
                let rejected = pool.put(key, block, max).err();
                self.shared_bytes.store(pool.bytes(), Ordering::Relaxed);
                rejected
            }
            Err(_) => Some(block),
        }
    }

    /// Sets the bound and trims the shared pool to it (other threads' magazines shrink as
    /// they are used: they no longer grow past the new budget); 0 also empties `local`.
    pub fn set_max_bytes(&self, max: usize, local: Option<&LocalMagazine<T>>) {
        self.max_bytes.store(max, Ordering::Relaxed);
        let freed = self
            .shared
            .lock()
            .map(|mut p| {
                let freed = p.trim_to(max);
                self.shared_bytes.store(p.bytes(), Ordering::Relaxed);
                freed
            })
            .unwrap_or_default();
        drop(freed);
        if max == 0 {
            Self::trim_local(local);
        }
    }

    /// Frees everything in the shared pool and in `local`.
    pub fn trim(&self, local: Option<&LocalMagazine<T>>) {
        Self::trim_local(local);
        let freed = self
            .shared
            .lock()
            .map(|mut p| {
                let freed = p.trim_to(0);
                self.shared_bytes.store(0, Ordering::Relaxed);
                freed
            })
            .unwrap_or_default();
        drop(freed);
    }

    fn trim_local(local: Option<&LocalMagazine<T>>) {
        let freed = local.map(|l| l.magazine.drain()).unwrap_or_default();
        drop(freed);
    }

    /// Bytes held by the shared pool and by `local`. Takes no lock: callable from anywhere,
    /// an allocator's locked section included.
    pub fn cached_bytes(&self, local: Option<&LocalMagazine<T>>) -> usize {
        local.map_or(0, |l| l.magazine.bytes()) + self.shared_bytes.load(Ordering::Relaxed)
    }
}

impl<T: Linked + Send + 'static> Default for Cache<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::aligned::magazine::test_blocks::{Fake, fake, key_of};

    #[test]
    fn pool_bounds_bytes_and_trims_largest_first() {
        let mut p = Pool::<Fake>::default();
        let small = key_of(100, 6);
        let large = key_of(800, 6);
        let max = small.bytes() + large.bytes();
        assert!(p.put(small, fake(small), max).is_ok());
        assert!(p.put(large, fake(large), max).is_ok());
        assert!(p.put(small, fake(small), max).is_err(), "would exceed max");
        assert_eq!(p.bytes(), max);
        let freed = p.trim_to(small.bytes());
        assert_eq!(freed, vec![fake(large)]);
        assert_eq!(p.bytes(), small.bytes());
        assert!(p.take(large).is_none());
        assert_eq!(p.take(small), Some(fake(small)));
        assert_eq!(p.trim_to(0).len(), 0);
    }
}
