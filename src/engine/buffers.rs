//! Recycled pixel buffers.
//!
//! Every converted frame needs megabytes of memory (2.7 MB for 720p RGB). Allocating them fresh
//! made the kernel zero new pages for each frame: a third of a decoder thread's time went to
//! `clear_page` in profiles. Buffers are therefore recycled: a frame's `Bytes` owns a
//! [`PooledBuf`] whose drop (when the last cache entry or response holding it goes away) gives
//! the memory back to the pool, up to a byte bound, for the next frame of a similar size.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::units::ByteSize;

/// A bounded free list of byte buffers.
pub struct BufferPool {
    free: Mutex<Free>,
    /// Spare bytes kept at most; beyond this, returned buffers are freed.
    capacity: u64,
}

struct Free {
    buffers: Vec<Vec<u8>>,
    bytes: u64,
}

impl BufferPool {
    pub fn new(capacity: ByteSize) -> Arc<BufferPool> {
        Arc::new(BufferPool { free: Mutex::new(Free { buffers: Vec::new(), bytes: 0 }), capacity: capacity.0 })
    }

    /// An empty buffer with room for at least `len` bytes: a recycled one when a spare of a
    /// fitting size (no more than a quarter larger) exists.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut free = self.free.lock();
        let fit = free.buffers.iter().position(|b| b.capacity() >= len && b.capacity() <= len + len / 4 + 4096);
        match fit {
            Some(i) => {
                let mut b = free.buffers.swap_remove(i);
                free.bytes -= b.capacity() as u64;
                b.clear();
                b
            }
            None => Vec::with_capacity(len),
        }
    }

    /// Wrap a filled buffer as `Bytes` that returns it to the pool when dropped.
    pub fn share(self: &Arc<Self>, data: Vec<u8>) -> Bytes {
        Bytes::from_owner(PooledBuf { data, pool: self.clone() })
    }

    fn give_back(&self, data: Vec<u8>) {
        let size = data.capacity() as u64;
        let mut free = self.free.lock();
        if free.bytes + size <= self.capacity {
            free.bytes += size;
            free.buffers.push(data);
        }
    }

    /// Spare bytes held right now.
    pub fn spare_bytes(&self) -> u64 {
        self.free.lock().bytes
    }
}

/// Pixels whose memory goes back to the pool when the last `Bytes` referring to it drops.
pub struct PooledBuf {
    data: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_reference_drops() {
        let pool = BufferPool::new(ByteSize(1 << 20));
        let mut b = pool.take(1000);
        b.extend_from_slice(&[7u8; 1000]);
        let ptr = b.as_ptr();
        let bytes = pool.share(b);
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(pool.spare_bytes(), 0, "still referenced");
        assert_eq!(&clone[..3], &[7, 7, 7]);
        drop(clone);
        assert!(pool.spare_bytes() >= 1000);
        let again = pool.take(900);
        assert_eq!(again.as_ptr(), ptr, "the same memory is reused");
        assert!(again.is_empty());
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_bound() {
        let pool = BufferPool::new(ByteSize(1500));
        let a = pool.share(vec![0u8; 1000]);
        let b = pool.share(vec![0u8; 1000]);
        drop(a);
        drop(b);
        assert!(pool.spare_bytes() <= 1500);
    }

    #[test]
    fn much_larger_spares_are_not_used_for_small_frames() {
        let pool = BufferPool::new(ByteSize(1 << 20));
        drop(pool.share(vec![0u8; 100_000]));
        let small = pool.take(1000);
        assert!(small.capacity() < 100_000);
    }
}
