//! Counters an operator reads through `GetStats`: plain relaxed atomics, bumped on the hot path
//! without locks.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sub(&self, n: u64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Engine-wide counters, shared by the store, the pool and every decoder.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub seeks: Counter,
    pub frames_decoded: Counter,
    pub open_decoders: Counter,
    /// Index builds (demux or decode passes) and the time they took, in microseconds.
    pub videos_indexed: Counter,
    pub index_build_us: Counter,
    /// Indexes read back from the state directory instead of built.
    pub index_loads: Counter,
    pub requests: Counter,
    /// Requests that missed the cache and waited on a decode of the same frame already under
    /// way (another request's, or a backtrack fill's) instead of starting one: single-flight.
    pub joined: Counter,
    /// Decoder jobs dropped unstarted because every request for the frame had gone.
    pub abandoned: Counter,
    /// Jobs handed back by a decoder closed for more urgent work (and submitted again).
    pub preempted: Counter,
    /// Segments of streams decoded on parallel decoders ([`segments`](crate::engine::segments)).
    pub stream_segments: Counter,
    /// Panics caught: in decoder threads, index builds, encoders (bugs, each logged).
    pub panics: Counter,
}
