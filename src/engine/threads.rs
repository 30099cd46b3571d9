//! The kernel threads one decoder's work runs on, so that a class's CPU priority reaches the
//! threads that actually decode.
//!
//! With frame threading the decoding happens on the codec's own threads, which FFmpeg starts
//! when the codec opens and which inherit the opening thread's nice value at that moment.
//! Renicing only the decoder thread afterwards leaves them where they were: a backtrack fill
//! "at nice 19" on a decoder opened for a click decoded at nice 0 on its two codec threads and
//! took half the machine from the next click. So a decoder notes the threads its codec started
//! ([`started_by`]), and [`ThreadGroup::set_nice`] moves them all.
//!
//! Linux only (`/proc/self/task`, per-thread nice values); elsewhere the lists are empty and the
//! pool runs without CPU priorities anyway.

use parking_lot::Mutex;

use crate::engine::ffmpeg::{current_thread_id, set_thread_nice};

/// Run `f` (which opens a codec) and return, with its result, the threads it started: threads
/// that did not exist before and carry either the calling thread's name (a new thread inherits
/// its creator's name; FFmpeg up to 6.0 leaves it so) or the name FFmpeg gives its frame
/// threads from 6.1 on (`av:h264:df0`, set by the thread itself, so either may be seen). Codec
/// opens that look for their threads take turns, so no other decoder's codec threads appear
/// meanwhile; threads the runtime or the pool start carry names of their own.
pub fn started_by<T>(f: impl FnOnce() -> T) -> (T, Vec<i32>) {
    static OPENING: Mutex<()> = Mutex::new(());
    let Some(me) = name_of(current_thread_id()) else { return (f(), Vec::new()) };
    let _turn = OPENING.lock();
    let before = task_ids();
    let out = f();
    let started = task_ids()
        .into_iter()
        .filter(|t| !before.contains(t))
        .filter(|t| name_of(*t).is_some_and(|name| name == me || name.starts_with(FFMPEG_THREAD_PREFIX)))
        .collect();
    (out, started)
}

/// How FFmpeg (6.1 and later) names the frame threads it starts.
const FFMPEG_THREAD_PREFIX: &str = "av:";

fn task_ids() -> Vec<i32> {
    match std::fs::read_dir("/proc/self/task") {
        Ok(dir) => dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect(),
        Err(_) => Vec::new(),
    }
}

fn name_of(tid: i32) -> Option<String> {
    if tid <= 0 {
        return None;
    }
    let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
    Some(comm.trim_end_matches('\n').to_string())
}

/// A decoder thread and the codec threads it runs now, moved to one nice value together.
#[derive(Debug, Default)]
pub struct ThreadGroup {
    inner: Mutex<Members>,
}

#[derive(Debug, Default)]
struct Members {
    /// The decoder thread (0 until it starts).
    own: i32,
    codec: Vec<i32>,
    /// The nice value they were last moved to.
    nice: i32,
}

impl ThreadGroup {
    /// The calling thread is the decoder thread.
    pub fn enter(&self) {
        self.inner.lock().own = current_thread_id();
    }

    /// The nice value the group runs at.
    pub fn nice(&self) -> i32 {
        self.inner.lock().nice
    }

    /// Move every thread of the group to `nice`; false (and nothing recorded) if the system
    /// refused it for the decoder thread. Codec threads that have exited are skipped.
    pub fn set_nice(&self, nice: i32) -> bool {
        let mut m = self.inner.lock();
        if !set_thread_nice(m.own, nice) {
            return false;
        }
        for &t in &m.codec {
            set_thread_nice(t, nice);
        }
        m.nice = nice;
        true
    }

    /// The codec now runs on `threads` (after it opened again). They started at the decoder
    /// thread's nice value of that moment, which a concurrent [`ThreadGroup::set_nice`] may
    /// have changed since: they are moved to the group's.
    pub fn set_codec_threads(&self, threads: &[i32]) {
        let mut m = self.inner.lock();
        if m.codec != threads {
            m.codec = threads.to_vec();
            for &t in &m.codec {
                set_thread_nice(t, m.nice);
            }
        }
    }

    #[cfg(test)]
    fn codec_threads(&self) -> Vec<i32> {
        self.inner.lock().codec.clone()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice_of(tid: i32) -> i32 {
        // Field 19 of /proc/<pid>/task/<tid>/stat, counted after the parenthesised name.
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(16).unwrap().parse().unwrap()
    }

    /// Starts `n` threads named like the caller (as FFmpeg's do) that live until `stop`.
    fn start_like_codec(n: usize, stop: &std::sync::Arc<std::sync::Barrier>) -> Vec<std::thread::JoinHandle<()>> {
        // The first keeps the name it inherits (FFmpeg up to 6.0), the others name themselves
        // as FFmpeg 6.1 and later do.
        (0..n)
            .map(|i| {
                let stop = stop.clone();
                let named = std::thread::Builder::new();
                let named = if i == 0 { named } else { named.name(format!("av:h264:df{i}")) };
                named
                    .spawn(move || {
                        stop.wait();
                    })
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn the_threads_a_codec_starts_are_found_and_follow_the_group() {
        std::thread::Builder::new()
            .name("threads-test-1".into())
            .spawn(|| {
                let stop = std::sync::Arc::new(std::sync::Barrier::new(3));
                // Another thread starts one of its own meanwhile: not ours.
                let (go, went) = (std::sync::mpsc::channel::<()>(), std::sync::mpsc::channel());
                let elsewhere = std::thread::Builder::new().name("someone-else".into()).spawn(move || {
                    go.1.recv().unwrap();
                    let theirs = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
                    went.0.send(()).unwrap();
                    theirs.join().unwrap();
                });
                let (handles, started) = started_by(|| {
                    go.0.send(()).unwrap();
                    went.1.recv().unwrap();
                    start_like_codec(2, &stop)
                });
                // Rust names unnamed threads nothing, so the kernel keeps the creator's name.
                assert_eq!(started.len(), 2, "the two threads started by the open, either name: {started:?}");
                let group = ThreadGroup::default();
                group.enter();
                group.set_codec_threads(&started);
                assert_eq!(group.codec_threads(), started);
                // Where the process may not lower a nice value again, the pool runs without
                // priorities and there is nothing to check.
                if crate::engine::worker::cpu_priorities_work() {
                    assert!(group.set_nice(7));
                    for &t in &started {
                        assert_eq!(nice_of(t), 7, "codec thread {t} moved with the group");
                    }
                    assert_eq!(nice_of(current_thread_id()), 7);
                    assert!(group.set_nice(0), "a process that may lower a nice value may move it back");
                    for &t in &started {
                        assert_eq!(nice_of(t), 0);
                    }
                }
                stop.wait();
                for h in handles {
                    h.join().unwrap();
                }
                elsewhere.unwrap().join().unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
