//! Fault hooks for tests: make a decoder thread panic on a given frame, to prove that a panic
//! is isolated (the request gets INTERNAL, the decoder is replaced, others carry on); hold back
//! the requests for some frames that wait for a decoder slot, to give a new decoder the frames
//! of a stream in the order the runtime may happen to retry them in under load.
//!
//! Inert unless a test arms them: one relaxed atomic load per decoded target of a request, per
//! frame read ahead, and per request that waits for a slot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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

static DELAYS_ARMED: AtomicBool = AtomicBool::new(false);
/// By video name: requests for frames below the index that wait for a slot retry after the delay.
static DELAYS: Mutex<Vec<(String, u32, Duration)>> = Mutex::new(Vec::new());

/// Make the requests for frames of `video` below `index` that find no decoder slot wait `delay`
/// before they try again (each, every time it waits).
pub fn delay_waiting_below(video: &str, index: u32, delay: Duration) {
    DELAYS.lock().push((video.to_string(), index, delay));
    DELAYS_ARMED.store(true, Ordering::Release);
}

/// How long a request for frame `index` of `video` that waits for a slot holds back.
pub(crate) fn waiting_delay(video: &str, index: u32) -> Option<Duration> {
    if !DELAYS_ARMED.load(Ordering::Relaxed) {
        return None;
    }
    DELAYS.lock().iter().find(|(v, below, _)| v == video && index < *below).map(|(_, _, d)| *d)
}
