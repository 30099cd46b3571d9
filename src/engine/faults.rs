//! A fault hook for tests: make a decoder thread panic on a given frame, to prove that a panic
//! is isolated (the request gets INTERNAL, the decoder is replaced, others carry on).
//!
//! Inert unless a test arms it: one relaxed atomic load per decoded target.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

static ARMED: AtomicBool = AtomicBool::new(false);
static TARGET: Mutex<Option<(String, u32)>> = Mutex::new(None);

/// Make the next decode of frame `index` of `video` (its name) panic, once.
pub fn panic_on_frame(video: &str, index: u32) {
    *TARGET.lock() = Some((video.to_string(), index));
    ARMED.store(true, Ordering::Release);
}

/// Panics if a test armed this frame (and disarms).
pub(crate) fn check(video: &str, index: u32) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let mut target = TARGET.lock();
    if target.as_ref().is_some_and(|(v, i)| v == video && *i == index) {
        *target = None;
        ARMED.store(false, Ordering::Release);
        drop(target);
        panic!("fault hook: a panic injected at {video} frame {index}");
    }
}
