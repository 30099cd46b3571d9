//! A fault hook for tests: make a decoder thread panic on a given frame, to prove that a panic
//! is isolated (the request gets INTERNAL, the decoder is replaced, others carry on).
//!
//! Inert unless a test arms it: one relaxed atomic load per decoded target (of a request, or
//! read ahead).

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

static ARMED: AtomicBool = AtomicBool::new(false);
/// The frames armed, by video name: tests running side by side arm their own videos.
static TARGETS: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());

/// Make the next decode of frame `index` of `video` (its name) panic, once.
pub fn panic_on_frame(video: &str, index: u32) {
    TARGETS.lock().push((video.to_string(), index));
    ARMED.store(true, Ordering::Release);
}

/// Panics if a test armed this frame (and disarms it).
pub(crate) fn check(video: &str, index: u32) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let mut targets = TARGETS.lock();
    if let Some(at) = targets.iter().position(|(v, i)| v == video && *i == index) {
        targets.swap_remove(at);
        ARMED.store(!targets.is_empty(), Ordering::Release);
        drop(targets);
        panic!("fault hook: a panic injected at {video} frame {index}");
    }
}
