//! A cache of output frames bounded in bytes.
//!
//! Frames are large (a 1080p RGB frame is 6 MiB) and their sizes vary with the output spec, so
//! an entry count says nothing about memory: the bound is in bytes, counts every entry's pixels
//! plus a fixed per-entry overhead, and is never exceeded, not even for a moment. Inserting
//! evicts least-recently-used entries first; an entry larger than the whole bound is not
//! cached. Values are `Bytes`, so a hit hands out the cached pixels without copying them.
//!
//! Making room never evicts a requested entry used more often lately than the new one
//! (frequencies as TinyLFU keeps them, [`crate::engine::frequency`]; uses are hits and decodes):
//! such an entry is passed over, moved to the recent end, and the next oldest looked at; when
//! several in a row are all used more often, the new entry is not cached. Among entries used
//! equally often, which is every entry under uniform or sequential access, the order is LRU
//! as before; under skewed access the hot frames stay while one-off frames and the frames a
//! stream passes through come and go among themselves.

use std::hash::{BuildHasher, Hash};

use lru::LruCache;
use parking_lot::Mutex;

use crate::engine::frequency::Frequency;
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
    /// Bytes held by speculative entries (decoded on the way, not asked for yet).
    pub speculative_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub rejected: u64,
}

/// Whether a client asked for an entry, or it was decoded on the way to something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Asked for: lives in the main segment.
    Requested,
    /// Decoded while scanning to a target or reading ahead: lives in the probation segment,
    /// which is evicted first and may hold at most `speculative_share` of the capacity, so
    /// speculation can never flush what clients actually use. A hit promotes it.
    Speculative,
}

struct Inner<K: Hash + Eq, V> {
    /// Requested entries, each with the tick of its last use.
    main: LruCache<K, (V, u64)>,
    /// Speculative entries, each with the tick it was inserted at.
    probation: LruCache<K, (V, u64)>,
    stats: CacheStats,
    speculative_cap: u64,
    /// A logical clock: entries are evicted oldest first across both segments.
    tick: u64,
    /// How often keys were used lately (hits and inserts of requested entries).
    used: Frequency,
}

/// Uses recorded before the frequencies are halved, per entry held (TinyLFU's sample of ten
/// times the cache's size), with a floor: frames are large, so a cache holds few of them (97
/// frames of 720p RGB in 256 MiB, 43 of 1080p), and ten times that is so short a sample that
/// frames near the cache's edge have been counted about once, which ranks nothing. Replayed
/// skewed loads (the `replay` tests below) keep 2-4 points more hits with a floor of 2048
/// than with 1024 (720p: 47.1% against 43.6%, LRU 34.9%); larger floors gain little more on a
/// steady load and remember an old hot set too long when it moves (every 2000 requests: 1024
/// keeps 38.8%, 2048 36.8%, 4096 33.3%, 16384 24.6%, LRU 34.2%).
const SAMPLE_PER_ENTRY: u64 = 10;
const MIN_SAMPLE: u64 = 2048;
/// Requested entries used more often than a new one that making room for it may pass over
/// before the new one is turned away.
const MAX_PASSED_OVER: usize = 8;

impl<K: Hash + Eq, V: Weigh> Inner<K, V> {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn record_use(&mut self, hash: u64) {
        let sample = (self.stats.entries * SAMPLE_PER_ENTRY).max(MIN_SAMPLE);
        self.used.record(hash, sample);
    }

    /// How to make room for an entry of weight `w` used `uses` times lately, looking at the
    /// entries [`Inner::evict_oldest`] would take, in its order: a requested entry used more
    /// often than the new one is passed over (at most [`MAX_PASSED_OVER`] of them) and the
    /// next one looked at. `Some(passed over)` when what is left to evict makes room (the
    /// caller moves those to the recent end, so that eviction takes the others), `None` when
    /// the new entry should not come in.
    fn room_for(&self, w: u64, uses: u8, hash_of: impl Fn(&K) -> u64) -> Option<Vec<K>>
    where
        K: Clone,
    {
        let mut excess = (self.stats.bytes + w).saturating_sub(self.stats.capacity);
        let mut passed_over = Vec::new();
        let mut main = self.main.iter().rev().peekable();
        let mut probation = self.probation.iter().rev().peekable();
        while excess > 0 {
            let tick = |entry: Option<&(&K, &(V, u64))>| entry.map(|(_, (_, t))| *t);
            let from_main = match oldest_segment(tick(main.peek()), tick(probation.peek())) {
                Some(segment) => segment == Segment::Main,
                None => break,
            };
            let Some((key, (value, _))) = (if from_main { main.next() } else { probation.next() }) else { break };
            if from_main && self.used.estimate(hash_of(key)) > uses {
                if passed_over.len() == MAX_PASSED_OVER {
                    return None;
                }
                passed_over.push(key.clone());
                continue;
            }
            excess = excess.saturating_sub(weight(value));
        }
        (excess == 0).then_some(passed_over)
    }

    /// Account for an entry that left a segment.
    fn forget(&mut self, old: &V, admission: Admission) {
        let w = weight(old);
        self.stats.bytes -= w;
        self.stats.entries -= 1;
        if admission == Admission::Speculative {
            self.stats.speculative_bytes -= w;
        }
    }

    fn evict_probation(&mut self) -> bool {
        let Some((_, (old, _))) = self.probation.pop_lru() else { return false };
        self.forget(&old, Admission::Speculative);
        self.stats.evictions += 1;
        true
    }

    fn evict_main(&mut self) -> bool {
        let Some((_, (old, _))) = self.main.pop_lru() else { return false };
        self.forget(&old, Admission::Requested);
        self.stats.evictions += 1;
        true
    }

    /// Evict the least recently used entry of either segment.
    fn evict_oldest(&mut self) -> bool {
        let main = self.main.peek_lru().map(|(_, (_, t))| *t);
        let probation = self.probation.peek_lru().map(|(_, (_, t))| *t);
        match oldest_segment(main, probation) {
            Some(Segment::Main) => self.evict_main(),
            Some(Segment::Probation) => self.evict_probation(),
            None => false,
        }
    }

    fn remove(&mut self, key: &K) {
        if let Some((old, _)) = self.main.pop(key) {
            self.forget(&old, Admission::Requested);
        }
        if let Some((old, _)) = self.probation.pop(key) {
            self.forget(&old, Admission::Speculative);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    Main,
    Probation,
}

/// Which segment's least recently used entry goes first, given the ticks of the two (`None`:
/// the segment is empty): the older one, the main segment's on a tie.
fn oldest_segment(main: Option<u64>, probation: Option<u64>) -> Option<Segment> {
    match (main, probation) {
        (Some(m), Some(p)) if p < m => Some(Segment::Probation),
        (Some(_), _) => Some(Segment::Main),
        (None, Some(_)) => Some(Segment::Probation),
        (None, None) => None,
    }
}

/// A byte-bounded LRU map in two segments (requested and speculative) with one recency order
/// across both. `std` mutex semantics: the lock is held only for map operations, never across
/// an await or a decode.
pub struct ByteLru<K: Hash + Eq, V> {
    inner: Mutex<Inner<K, V>>,
    /// The speculative share in bytes, fixed at creation (read without the lock).
    speculative_cap: u64,
    /// Hashes keys for the frequency sketch.
    hasher: std::collections::hash_map::RandomState,
}

fn weight<V: Weigh>(v: &V) -> u64 {
    v.payload_bytes() + ENTRY_OVERHEAD
}

/// Share of the capacity speculative entries may hold.
pub const SPECULATIVE_SHARE: f64 = 0.25;

impl<K: Hash + Eq + Clone, V: Weigh + Clone> ByteLru<K, V> {
    pub fn new(capacity: ByteSize) -> Self {
        let speculative_cap = (capacity.0 as f64 * SPECULATIVE_SHARE) as u64;
        ByteLru {
            inner: Mutex::new(Inner {
                main: LruCache::unbounded(),
                probation: LruCache::unbounded(),
                stats: CacheStats { capacity: capacity.0, ..Default::default() },
                speculative_cap,
                tick: 0,
                used: Frequency::default(),
            }),
            speculative_cap,
            hasher: Default::default(),
        }
    }

    /// Look up and mark as recently used; counts a hit (a caller that then decodes counts its
    /// miss with [`ByteLru::record_miss`], once per request however often it looked). A
    /// speculative entry that is hit becomes a requested one.
    pub fn get(&self, key: &K) -> Option<V> {
        let hash = self.hasher.hash_one(key);
        let mut inner = self.inner.lock();
        let now = inner.next_tick();
        if let Some((v, t)) = inner.main.get_mut(key) {
            *t = now;
            let v = v.clone();
            inner.stats.hits += 1;
            inner.record_use(hash);
            return Some(v);
        }
        match inner.probation.pop(key) {
            Some((v, _)) => {
                inner.stats.hits += 1;
                inner.record_use(hash);
                inner.stats.speculative_bytes -= weight(&v);
                inner.main.put(key.clone(), (v.clone(), now));
                Some(v)
            }
            None => None,
        }
    }

    /// Count one request that the cache could not serve.
    pub fn record_miss(&self) {
        self.inner.lock().stats.misses += 1;
    }

    /// Look up without touching recency or counters.
    pub fn contains(&self, key: &K) -> bool {
        let inner = self.inner.lock();
        inner.main.contains(key) || inner.probation.contains(key)
    }

    /// Insert, evicting the least recently used entries (of either segment) until it fits; a
    /// speculative insert first evicts older speculation to stay within the speculative
    /// share. Returns false, caching nothing, when the entry cannot fit, or when it is
    /// requested and fitting it would evict a requested entry used more often (see the module
    /// docs; the insert counts as a use of the key).
    pub fn insert(&self, key: K, value: V, admission: Admission) -> bool {
        let w = weight(&value);
        let hash = self.hasher.hash_one(&key);
        let mut inner = self.inner.lock();
        let fits = match admission {
            Admission::Requested => w <= inner.stats.capacity,
            Admission::Speculative => w <= inner.speculative_cap,
        };
        if !fits {
            inner.stats.rejected += 1;
            return false;
        }
        if admission == Admission::Speculative && inner.main.contains(&key) {
            return true;
        }
        if admission == Admission::Requested {
            inner.record_use(hash);
            let present = inner.main.contains(&key) || inner.probation.contains(&key);
            if !present {
                let uses = inner.used.estimate(hash);
                let Some(passed_over) = inner.room_for(w, uses, |k| self.hasher.hash_one(k)) else {
                    inner.stats.rejected += 1;
                    return false;
                };
                for hot in passed_over {
                    let now = inner.next_tick();
                    if let Some((_, t)) = inner.main.get_mut(&hot) {
                        *t = now;
                    }
                }
            }
        }
        inner.remove(&key);
        if admission == Admission::Speculative {
            while inner.stats.speculative_bytes + w > inner.speculative_cap && inner.evict_probation() {}
        }
        while inner.stats.bytes + w > inner.stats.capacity && inner.evict_oldest() {}
        inner.stats.bytes += w;
        inner.stats.entries += 1;
        let now = inner.next_tick();
        match admission {
            Admission::Requested => {
                inner.main.put(key, (value, now));
            }
            Admission::Speculative => {
                inner.stats.speculative_bytes += w;
                inner.probation.put(key, (value, now));
            }
        }
        debug_assert!(inner.stats.bytes <= inner.stats.capacity);
        true
    }

    /// How many entries of `payload` bytes the speculative share holds at most.
    pub fn speculative_room(&self, payload: u64) -> u64 {
        self.speculative_cap / (payload + ENTRY_OVERHEAD)
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
            assert!(c.insert(k, Blob(1000), Admission::Requested));
        }
        assert!(c.get(&0).is_some()); // 0 is now most recent; 1 is least
        assert!(c.insert(3, Blob(1000), Admission::Requested));
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
            c.insert(k, Blob(1000), Admission::Requested);
        }
        assert!(c.insert(9, Blob(2000), Admission::Requested));
        let s = c.stats();
        assert!(s.bytes <= s.capacity);
        assert_eq!(s.entries, 2, "two small entries made room for one double one");
    }

    #[test]
    fn an_entry_larger_than_the_bound_is_not_cached() {
        let c = ByteLru::new(ByteSize(500));
        assert!(!c.insert(1, Blob(1000), Admission::Requested));
        assert_eq!(c.stats().entries, 0);
        assert_eq!(c.stats().bytes, 0);
        assert_eq!(c.stats().rejected, 1);
    }

    #[test]
    fn replacing_a_key_does_not_double_count() {
        let c = ByteLru::new(cap(3));
        c.insert(1, Blob(1000), Admission::Requested);
        c.insert(1, Blob(500), Admission::Requested);
        assert_eq!(c.stats().bytes, 500 + ENTRY_OVERHEAD);
        assert_eq!(c.stats().entries, 1);
    }

    #[test]
    fn speculative_entries_never_flush_requested_ones() {
        let c = ByteLru::new(cap(8)); // speculative share: 2 entries
        for k in 0..6 {
            c.insert(k, Blob(1000), Admission::Requested);
        }
        for k in 100..120 {
            c.insert(k, Blob(1000), Admission::Speculative);
        }
        for k in 0..6 {
            assert!(c.contains(&k), "requested entry {k} survived a flood of speculation");
        }
        let s = c.stats();
        assert!(s.speculative_bytes <= (s.capacity as f64 * SPECULATIVE_SHARE) as u64);
        assert!(s.bytes <= s.capacity);
        assert!(c.contains(&119) && !c.contains(&100), "the newest speculation is kept");
    }

    #[test]
    fn fresh_speculation_outlives_older_requested_entries() {
        // A reader's next frame, read ahead, must not be evicted by the frame it just got.
        let c = ByteLru::new(cap(4));
        for k in 0..3 {
            c.insert(k, Blob(1000), Admission::Requested);
        }
        c.insert(100, Blob(1000), Admission::Speculative);
        c.insert(3, Blob(1000), Admission::Requested);
        assert!(c.contains(&100), "the newer speculative entry stays");
        assert!(!c.contains(&0), "the oldest requested entry goes");
    }

    #[test]
    fn old_speculation_goes_before_newer_requested_entries() {
        let c = ByteLru::new(cap(4));
        c.insert(100, Blob(1000), Admission::Speculative);
        for k in 1..=4 {
            c.insert(k, Blob(1000), Admission::Requested);
        }
        assert!(!c.contains(&100));
        assert!((1..=4).all(|k| c.contains(&k)));
    }

    #[test]
    fn a_hit_promotes_speculation() {
        let c = ByteLru::new(cap(8));
        c.insert(100, Blob(1000), Admission::Speculative);
        assert!(c.get(&100).is_some());
        assert_eq!(c.stats().speculative_bytes, 0);
        for k in 0..8 {
            c.insert(k + 200, Blob(1000), Admission::Speculative);
        }
        assert!(c.contains(&100), "promoted entries are not in the speculative segment");
    }

    #[test]
    fn a_one_off_entry_does_not_push_out_one_used_more() {
        let c = ByteLru::new(cap(3));
        for k in 0..3 {
            c.insert(k, Blob(1000), Admission::Requested);
        }
        // 0 is hot: used again and again; then it becomes the least recently used.
        for _ in 0..5 {
            c.get(&0);
        }
        c.get(&1);
        c.get(&2);
        // Frames asked for once each (a stream passing through, the tail of the load).
        for k in 10..20 {
            c.insert(k, Blob(1000), Admission::Requested);
        }
        assert!(c.contains(&0), "the hot entry stays");
        assert!(c.stats().rejected > 0);
        assert!(c.stats().bytes <= c.stats().capacity);
        // A frame asked for again is counted again, and comes in over entries used as often.
        for _ in 0..2 {
            c.insert(30, Blob(1000), Admission::Requested);
        }
        assert!(c.contains(&30), "the frame used twice came in");
        assert!(c.contains(&0), "over one used once, not over the hot one");
    }

    #[test]
    fn entries_used_equally_often_are_evicted_in_lru_order() {
        let c = ByteLru::new(cap(3));
        for k in 0..20 {
            assert!(c.insert(k, Blob(1000), Admission::Requested), "a sequential reader's frame {k} is cached");
        }
        assert!((17..20).all(|k| c.contains(&k)));
        assert_eq!(c.stats().rejected, 0);
    }

    #[test]
    fn speculation_never_stops_a_requested_entry() {
        let c = ByteLru::new(cap(4));
        c.insert(100, Blob(1000), Admission::Speculative);
        for _ in 0..5 {
            c.get(&100); // promoted, and hot
        }
        c.insert(101, Blob(1000), Admission::Speculative);
        for k in 0..2 {
            c.insert(k, Blob(1000), Admission::Requested);
        }
        assert!(c.insert(2, Blob(1000), Admission::Requested), "room is made from the speculative entry");
        assert!(!c.contains(&101) && c.contains(&100));
    }

    #[test]
    fn hits_and_misses_are_counted() {
        let c = ByteLru::new(cap(3));
        c.insert(1, Blob(10), Admission::Requested);
        c.get(&1);
        if c.get(&2).is_none() {
            c.record_miss();
        }
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (1, 1));
    }

    /// Skewed loads replayed through the cache and through plain LRU of the same size: the
    /// load harness's distribution (8 videos drawn with Zipf exponent 1.0, 1800 frames each
    /// with `exponent`), for caches of a few large entries, steady or with the hot set moving.
    mod replay {
        use super::*;

        struct Load {
            entries: u64,
            exponent: f64,
            requests: usize,
            /// Every this many requests the hot frames are others (0: never).
            moves_every: usize,
        }

        fn cumulative_zipf(n: usize, exponent: f64) -> Vec<f64> {
            let mut total = 0.0;
            (1..=n)
                .map(|k| {
                    total += 1.0 / (k as f64).powf(exponent);
                    total
                })
                .collect()
        }

        /// The keys, drawn with a fixed xorshift generator so every run replays the same.
        fn keys(load: &Load) -> impl Iterator<Item = (usize, usize, usize)> {
            const FRAMES: usize = 1800;
            let videos = cumulative_zipf(8, 1.0);
            let frames = cumulative_zipf(FRAMES, load.exponent);
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut uniform = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 11) as f64 / (1u64 << 53) as f64
            };
            let mut draw = move |table: &[f64]| {
                let u = uniform() * table[table.len() - 1];
                table.partition_point(|c| *c < u).min(table.len() - 1)
            };
            let moves_every = load.moves_every;
            (0..load.requests).map(move |i| {
                let (video, rank) = (draw(&videos), draw(&frames));
                let epoch = i.checked_div(moves_every).unwrap_or(0);
                (video, (rank * 7 + epoch * 1000) % FRAMES, epoch)
            })
        }

        /// Hit rates of this cache and of LRU.
        fn hit_rates(load: &Load) -> (f64, f64) {
            let c = ByteLru::new(cap(load.entries));
            let mut lru = LruCache::new(std::num::NonZeroUsize::new(load.entries as usize).unwrap());
            let (mut hits, mut lru_hits) = (0, 0);
            for key in keys(load) {
                if c.get(&key).is_some() {
                    hits += 1;
                } else {
                    c.insert(key, Blob(1000), Admission::Requested);
                }
                if lru.get(&key).is_some() {
                    lru_hits += 1;
                } else {
                    lru.put(key, ());
                }
            }
            let n = load.requests as f64;
            (hits as f64 / n, lru_hits as f64 / n)
        }

        #[test]
        fn skewed_loads_keep_more_hits_than_lru_and_a_moving_hot_set_no_fewer() {
            let steady = |entries, exponent| Load { entries, exponent, requests: 40_000, moves_every: 0 };
            for (name, load, gain) in [
                ("720p frames in 256 MiB", steady(97, 1.1), 0.10),
                ("1080p frames in 256 MiB", steady(43, 1.1), 0.10),
                ("a flatter load", steady(97, 0.8), 0.06),
                ("the hot set moving every 10000", Load { moves_every: 10_000, ..steady(97, 1.1) }, 0.06),
                ("the hot set moving every 2000", Load { moves_every: 2_000, ..steady(97, 1.1) }, 0.0),
            ] {
                let (ours, lru) = hit_rates(&load);
                eprintln!("{name}: {:.1}% hits, LRU {:.1}%", ours * 100.0, lru * 100.0);
                assert!(ours >= lru + gain, "{name}: {ours:.3} against LRU {lru:.3}");
            }
        }
    }
}
