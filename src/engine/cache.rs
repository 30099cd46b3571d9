//! A cache of output frames bounded in bytes.
//!
//! Frames are large (a 1080p RGB frame is 6 MiB) and their sizes vary with the output spec, so
//! an entry count says nothing about memory: the bound is in bytes, counts every entry's pixels
//! plus a fixed per-entry overhead, and is never exceeded, not even for a moment. Inserting
//! evicts least-recently-used entries first; an entry larger than the whole bound is not
//! cached. Values are `Bytes`, so a hit hands out the cached pixels without copying them.

use std::hash::Hash;

use lru::LruCache;
use parking_lot::Mutex;

use crate::units::ByteSize;

/// Bytes charged per entry on top of its payload: the key, the LRU links and the frame's
/// metadata.
pub const ENTRY_OVERHEAD: u64 = 192;

/// Something the cache can weigh.
pub trait Weigh {
    /// The payload's size in bytes.
    fn payload_bytes(&self) -> u64;
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub bytes: u64,
    pub capacity: u64,
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub rejected: u64,
}

struct Inner<K: Hash + Eq, V> {
    lru: LruCache<K, V>,
    stats: CacheStats,
}

/// A byte-bounded LRU map. `std` mutex semantics: the lock is held only for map operations,
/// never across an await or a decode.
pub struct ByteLru<K: Hash + Eq, V> {
    inner: Mutex<Inner<K, V>>,
}

fn weight<V: Weigh>(v: &V) -> u64 {
    v.payload_bytes() + ENTRY_OVERHEAD
}

impl<K: Hash + Eq, V: Weigh + Clone> ByteLru<K, V> {
    pub fn new(capacity: ByteSize) -> Self {
        ByteLru {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                stats: CacheStats { capacity: capacity.0, ..Default::default() },
            }),
        }
    }

    /// Look up and mark as recently used; counts a hit or a miss.
    pub fn get(&self, key: &K) -> Option<V> {
        let mut inner = self.inner.lock();
        match inner.lru.get(key).cloned() {
            Some(v) => {
                inner.stats.hits += 1;
                Some(v)
            }
            None => {
                inner.stats.misses += 1;
                None
            }
        }
    }

    /// Look up without touching recency or counters.
    pub fn contains(&self, key: &K) -> bool {
        self.inner.lock().lru.contains(key)
    }

    /// Insert, evicting least-recently-used entries until it fits. Returns false (and caches
    /// nothing) when the entry alone is larger than the capacity.
    pub fn insert(&self, key: K, value: V) -> bool {
        let w = weight(&value);
        let mut inner = self.inner.lock();
        if w > inner.stats.capacity {
            inner.stats.rejected += 1;
            return false;
        }
        if let Some(old) = inner.lru.pop(&key) {
            inner.stats.bytes -= weight(&old);
            inner.stats.entries -= 1;
        }
        while inner.stats.bytes + w > inner.stats.capacity {
            let Some((_, old)) = inner.lru.pop_lru() else { break };
            inner.stats.bytes -= weight(&old);
            inner.stats.entries -= 1;
            inner.stats.evictions += 1;
        }
        inner.stats.bytes += w;
        inner.stats.entries += 1;
        inner.lru.put(key, value);
        debug_assert!(inner.stats.bytes <= inner.stats.capacity);
        true
    }

    pub fn stats(&self) -> CacheStats {
        self.inner.lock().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Blob(u64);
    impl Weigh for Blob {
        fn payload_bytes(&self) -> u64 {
            self.0
        }
    }

    fn cap(entries_of_1000: u64) -> ByteSize {
        ByteSize(entries_of_1000 * (1000 + ENTRY_OVERHEAD))
    }

    #[test]
    fn the_byte_bound_is_never_exceeded_and_lru_goes_first() {
        let c = ByteLru::new(cap(3));
        for k in 0..3 {
            assert!(c.insert(k, Blob(1000)));
        }
        assert!(c.get(&0).is_some()); // 0 is now most recent; 1 is least
        assert!(c.insert(3, Blob(1000)));
        assert!(!c.contains(&1), "least recently used is evicted first");
        assert!(c.contains(&0) && c.contains(&2) && c.contains(&3));
        let s = c.stats();
        assert_eq!(s.entries, 3);
        assert_eq!(s.evictions, 1);
        assert_eq!(s.bytes, 3 * (1000 + ENTRY_OVERHEAD));
        assert!(s.bytes <= s.capacity);
    }

    #[test]
    fn a_large_entry_evicts_as_many_as_needed() {
        let c = ByteLru::new(cap(3));
        for k in 0..3 {
            c.insert(k, Blob(1000));
        }
        assert!(c.insert(9, Blob(2000)));
        let s = c.stats();
        assert!(s.bytes <= s.capacity);
        assert_eq!(s.entries, 2, "two small entries made room for one double one");
    }

    #[test]
    fn an_entry_larger_than_the_bound_is_not_cached() {
        let c = ByteLru::new(ByteSize(500));
        assert!(!c.insert(1, Blob(1000)));
        assert_eq!(c.stats().entries, 0);
        assert_eq!(c.stats().bytes, 0);
        assert_eq!(c.stats().rejected, 1);
    }

    #[test]
    fn replacing_a_key_does_not_double_count() {
        let c = ByteLru::new(cap(3));
        c.insert(1, Blob(1000));
        c.insert(1, Blob(500));
        assert_eq!(c.stats().bytes, 500 + ENTRY_OVERHEAD);
        assert_eq!(c.stats().entries, 1);
    }

    #[test]
    fn hits_and_misses_are_counted() {
        let c = ByteLru::new(cap(3));
        c.insert(1, Blob(10));
        c.get(&1);
        c.get(&2);
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (1, 1));
    }
}
