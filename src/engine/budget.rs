//! A budget for the bytes of frames on their way to clients.
//!
//! The cache is bounded in bytes, but a frame handed to a response lives on outside it: in a
//! stream's look-ahead, in a response waiting for a slow reader, and after the cache evicted it
//! while a response still held it. With many slow readers of raw 720p frames that memory grew
//! without bound (48 clients reading one frame a second: peak RSS 800-950 MiB with a 256 MiB
//! cache). So every frame a request produces is first paid for from this budget, and the
//! payment travels with the frame's bytes ([`Budget::hold`]): it is returned exactly when the
//! last reference to those bytes is dropped, i.e. when the transport has taken the frame. Past
//! the budget, new work waits instead of growing memory.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::units::ByteSize;

#[derive(Debug, Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// 0: unbounded.
    capacity: u64,
    used: Mutex<u64>,
    /// Signalled whenever bytes are returned.
    returned: Notify,
}

/// Bytes paid for, returned when dropped.
#[derive(Debug)]
pub struct Paid {
    inner: Arc<Inner>,
    bytes: u64,
}

impl Drop for Paid {
    fn drop(&mut self) {
        *self.inner.used.lock() -= self.bytes;
        self.inner.returned.notify_waiters();
    }
}

impl Paid {
    /// `bytes` of this payment (at most what is left of it) as a payment of their own: a
    /// stream segment is paid for at once, and each of its frames carries its part.
    pub fn split_off(&mut self, bytes: u64) -> Paid {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        Paid { inner: self.inner.clone(), bytes }
    }
}

/// Frame bytes that keep their payment until the last clone is dropped.
struct Held {
    data: Bytes,
    _paid: Paid,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Budget {
    /// A budget of `size` bytes (0: unbounded).
    pub fn new(size: ByteSize) -> Budget {
        Budget { inner: Arc::new(Inner { capacity: size.0, used: Mutex::new(0), returned: Notify::new() }) }
    }

    /// Take `bytes`, waiting until they fit. A frame larger than the whole budget waits until
    /// nothing else is paid for, then is served alone.
    pub async fn pay(&self, bytes: u64) -> Paid {
        loop {
            let returned = self.inner.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(paid) = self.try_pay(bytes) {
                return paid;
            }
            returned.await;
        }
    }

    /// Take `bytes` without waiting, over the budget if need be: for a unary request, which
    /// holds one frame (so concurrency bounds what it adds) and must never queue behind slow
    /// stream readers.
    pub fn pay_now(&self, bytes: u64) -> Paid {
        *self.inner.used.lock() += bytes;
        Paid { inner: self.inner.clone(), bytes }
    }

    fn try_pay(&self, bytes: u64) -> Option<Paid> {
        let mut used = self.inner.used.lock();
        let fits = self.inner.capacity == 0 || *used == 0 || *used + bytes <= self.inner.capacity;
        fits.then(|| {
            *used += bytes;
            Paid { inner: self.inner.clone(), bytes }
        })
    }

    /// `data`, carrying `paid` until its last clone is dropped.
    pub fn hold(data: Bytes, paid: Paid) -> Bytes {
        Bytes::from_owner(Held { data, _paid: paid })
    }

    /// Bytes paid for and not yet returned.
    pub fn in_use(&self) -> u64 {
        *self.inner.used.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: u64 = 4096;

    #[tokio::test]
    async fn payment_returns_when_the_last_clone_of_the_bytes_is_dropped() {
        let budget = Budget::new(ByteSize(10 * UNIT));
        let paid = budget.pay(4 * UNIT).await;
        assert_eq!(budget.in_use(), 4 * UNIT);
        let bytes = Budget::hold(Bytes::from(vec![7u8; 100]), paid);
        let clone = bytes.clone();
        assert_eq!(&clone[..3], &[7, 7, 7]);
        drop(bytes);
        assert_eq!(budget.in_use(), 4 * UNIT, "a clone still holds it");
        drop(clone);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn past_the_budget_new_work_waits() {
        let budget = Arc::new(Budget::new(ByteSize(10 * UNIT)));
        let first = budget.pay(8 * UNIT).await;
        let b = budget.clone();
        let waiting = tokio::spawn(async move { b.pay(4 * UNIT).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "8 + 4 units do not fit in 10");
        drop(first);
        let second = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert_eq!(budget.in_use(), 4 * UNIT);
        drop(second);
    }

    #[tokio::test]
    async fn a_split_payment_is_returned_part_by_part() {
        let budget = Budget::new(ByteSize(10 * UNIT));
        let mut segment = budget.pay(6 * UNIT).await;
        let first = segment.split_off(2 * UNIT);
        let second = segment.split_off(2 * UNIT);
        let too_much = segment.split_off(5 * UNIT);
        assert_eq!(budget.in_use(), 6 * UNIT);
        drop(first);
        assert_eq!(budget.in_use(), 4 * UNIT);
        drop(segment);
        assert_eq!(budget.in_use(), 4 * UNIT, "what is left of it is all split off");
        drop((second, too_much));
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_is_served_alone() {
        let budget = Budget::new(ByteSize(2 * UNIT));
        let paid = budget.pay(100 * UNIT).await;
        assert_eq!(budget.in_use(), 100 * UNIT);
        drop(paid);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn unary_payments_never_wait_and_count() {
        let budget = Budget::new(ByteSize(2 * UNIT));
        let a = budget.pay(2 * UNIT).await;
        let b = budget.pay_now(3 * UNIT);
        assert_eq!(budget.in_use(), 5 * UNIT);
        drop((a, b));
        assert_eq!(budget.in_use(), 0);
    }
}
