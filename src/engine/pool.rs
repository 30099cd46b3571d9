//! Decoder threads, a bounded number of them, and which one gets a request.
//!
//! Decoding is CPU work that must never run on the async runtime's workers, and a decoder is
//! worth most when it keeps its position between requests. So each decoder lives on its own
//! named OS thread that owns it, receives jobs over a channel, and answers through a callback;
//! nobody else ever touches it.
//!
//! Routing: a request goes to the decoder of its video that reaches the target cheapest (one
//! already just behind it decodes forward; a cold one must seek). When the best one would have
//! to seek and the video may have another decoder, a new one is started, so several decoders of
//! one video end up positioned in different parts of it. The number of decoders is bounded per
//! video and in total; at the global bound, the least recently used idle decoder (of any video)
//! is closed to make room.
//!
//! Readahead: a decoder whose last requests were consecutive frames, and that has nothing
//! queued, decodes the next frames into the cache, so a client reading frame by frame finds
//! them ready.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::Mutex;

use crate::engine::decoder::{DecodeOptions, FrameDecoder, RawFrame};
use crate::engine::index::VideoIndex;
use crate::engine::output::OutputSpec;
use crate::engine::plan::{self, Position};
use crate::engine::stats::EngineStats;
use crate::engine::EngineError;
use crate::units::FrameIndex;

/// Identity of a video file's content as far as caching goes: a replaced file (new size or
/// modification time) is a new video, so stale frames are never served.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VideoId {
    pub path: PathBuf,
    pub size: u64,
    pub modified_ns: i128,
}

/// An indexed video, shared by requests, decoders and the cache.
#[derive(Debug)]
pub struct OpenVideo {
    pub id: VideoId,
    /// The name clients use (relative to its media root).
    pub name: String,
    pub index: Arc<VideoIndex>,
}

/// Where decoded frames go besides the request that asked: the cache.
pub trait FrameSink: Send + Sync {
    /// A frame decoded on the way to a target, or ahead of a sequential reader.
    fn side_frame(&self, video: &OpenVideo, spec: &OutputSpec, frame: RawFrame);
    /// Whether the sink already holds this frame or awaits it (readahead skips those).
    fn has_frame(&self, video: &OpenVideo, spec: &OutputSpec, index: FrameIndex) -> bool;
    /// The frame, if already cached (a job whose frame arrived while it waited is answered
    /// from here instead of decoding it again).
    fn cached(&self, video: &OpenVideo, spec: &OutputSpec, index: FrameIndex) -> Option<RawFrame>;
}

pub type Reply = Box<dyn FnOnce(Result<RawFrame, EngineError>) + Send>;

struct Job {
    target: FrameIndex,
    spec: OutputSpec,
    reply: Reply,
}

#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub max_per_video: usize,
    pub max_total: usize,
    /// Jobs one decoder may have waiting before requests are refused as overload.
    pub max_queue: usize,
    /// Frames decoded ahead of a sequential reader.
    pub readahead: u32,
    pub decode: DecodeOptions,
}

/// The dispatcher's view of one decoder thread.
struct Worker {
    id: u64,
    video: Arc<OpenVideo>,
    tx: Sender<Job>,
    /// Jobs sent and not yet answered.
    queued: Arc<AtomicUsize>,
    /// Where the decoder will stand after its queued jobs (a prediction for routing; the
    /// decoder itself plans from its real position).
    predicted: Option<Position>,
    /// Real position reported by the thread after each job.
    reported: Arc<Mutex<Option<Position>>>,
    last_used: Instant,
}

pub struct DecoderPool {
    config: PoolConfig,
    workers: Mutex<Vec<Worker>>,
    next_id: AtomicUsize,
    stats: Arc<EngineStats>,
    sink: Arc<dyn FrameSink>,
}

impl DecoderPool {
    pub fn new(config: PoolConfig, stats: Arc<EngineStats>, sink: Arc<dyn FrameSink>) -> Self {
        DecoderPool { config, workers: Mutex::new(Vec::new()), next_id: AtomicUsize::new(0), stats, sink }
    }

    /// Send a request for `target` of `video` to the best decoder. `reply` is called on the
    /// decoder's thread with the outcome.
    pub fn submit(
        &self,
        video: &Arc<OpenVideo>,
        target: FrameIndex,
        spec: OutputSpec,
        reply: Reply,
    ) -> Result<(), EngineError> {
        let mut workers = self.workers.lock();
        let slack = self.config.decode.continue_slack;
        let index = &video.index;
        let mut best: Option<(usize, u64)> = None;
        for (i, w) in workers.iter().enumerate() {
            if w.video.id != video.id {
                continue;
            }
            let position = if w.queued.load(Ordering::Acquire) == 0 { *w.reported.lock() } else { w.predicted };
            let queued = w.queued.load(Ordering::Acquire) as u64;
            let cost = plan::cost(index, position, target, slack).saturating_add(queued * 8);
            if best.is_none_or(|(_, c)| cost < c) {
                best = Some((i, cost));
            }
        }
        let same_video = workers.iter().filter(|w| w.video.id == video.id).count();
        let cold_cost = plan::cost(index, None, target, slack);
        let spawn = match best {
            None => true,
            // A fresh decoder helps only if the best existing one would do no better than a
            // seek, and only while there is room for it.
            Some((_, c)) => c >= cold_cost && same_video < self.config.max_per_video,
        };
        let chosen = if spawn && self.make_room(&mut workers) {
            workers.push(self.spawn(video));
            workers.len() - 1
        } else if let Some((i, _)) = best {
            i
        } else {
            return Err(EngineError::Overloaded {
                what: format!("all {} decoders are busy", self.config.max_total),
            });
        };
        let w = &mut workers[chosen];
        if w.queued.load(Ordering::Acquire) >= self.config.max_queue {
            return Err(EngineError::Overloaded {
                what: format!(
                    "{} requests already wait for the decoders of {}",
                    self.config.max_queue, video.name
                ),
            });
        }
        w.queued.fetch_add(1, Ordering::AcqRel);
        w.last_used = Instant::now();
        w.predicted = Some(Position {
            next_packet: index.frame(target).and_then(|f| f.packet).map(|p| crate::units::PacketNo(p.0 + 1)).unwrap_or(crate::units::PacketNo(target.0 + 1)),
            last_output: Some(target),
            ended: false,
        });
        let job = Job { target, spec, reply };
        if let Err(e) = w.tx.send(job) {
            w.queued.fetch_sub(1, Ordering::AcqRel);
            (e.into_inner().reply)(Err(EngineError::ShuttingDown));
        }
        Ok(())
    }

    /// Ensure a new decoder fits under the global bound, closing the least recently used idle
    /// decoder if needed. False when every decoder is busy.
    fn make_room(&self, workers: &mut Vec<Worker>) -> bool {
        if workers.len() < self.config.max_total {
            return true;
        }
        let victim = workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.queued.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, w)| w.last_used)
            .map(|(i, _)| i);
        match victim {
            Some(i) => {
                // Dropping the sender ends the thread once it is idle; it frees its own FFmpeg state.
                workers.swap_remove(i);
                true
            }
            None => false,
        }
    }

    fn spawn(&self, video: &Arc<OpenVideo>) -> Worker {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) as u64;
        let queued = Arc::new(AtomicUsize::new(0));
        let reported = Arc::new(Mutex::new(None));
        let thread = WorkerThread {
            video: video.clone(),
            rx,
            queued: queued.clone(),
            reported: reported.clone(),
            config: self.config,
            stats: self.stats.clone(),
            sink: self.sink.clone(),
        };
        let name = format!("framesrv-dec-{id}");
        if let Err(e) = std::thread::Builder::new().name(name).spawn(move || thread.run()) {
            tracing::error!(error = %e, "could not start a decoder thread");
        }
        Worker { id, video: video.clone(), tx, queued, predicted: None, reported, last_used: Instant::now() }
    }

    /// Close every decoder of videos other than the current version of a file (after a file
    /// was replaced) — and, with `None`, every decoder.
    pub fn close_all(&self) {
        self.workers.lock().clear();
    }

    pub fn decoder_count(&self) -> usize {
        self.workers.lock().len()
    }

    /// Ids of the decoders serving `video`, for tests and stats.
    pub fn decoders_of(&self, video: &OpenVideo) -> Vec<u64> {
        self.workers.lock().iter().filter(|w| w.video.id == video.id).map(|w| w.id).collect()
    }
}

/// The state a decoder thread owns.
struct WorkerThread {
    video: Arc<OpenVideo>,
    rx: Receiver<Job>,
    queued: Arc<AtomicUsize>,
    reported: Arc<Mutex<Option<Position>>>,
    config: PoolConfig,
    stats: Arc<EngineStats>,
    sink: Arc<dyn FrameSink>,
}

impl WorkerThread {
    fn run(self) {
        self.stats.open_decoders.inc();
        let _guard = scopeguard(|| self.stats.open_decoders.sub(1));
        let decoder = FrameDecoder::open(
            &self.video.id.path,
            &self.video.name,
            self.video.index.clone(),
            self.config.decode,
            self.stats.clone(),
        );
        let mut decoder = match decoder {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(video = %self.video.name, error = %e, "could not open a decoder");
                while let Ok(job) = self.rx.recv() {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    (job.reply)(Err(e.clone()));
                }
                return;
            }
        };
        // Recent targets, to detect a sequential reader.
        let mut recent: VecDeque<FrameIndex> = VecDeque::with_capacity(3);
        let mut readahead: Option<(FrameIndex, OutputSpec)> = None;
        loop {
            let job = match readahead {
                Some(_) => match self.rx.try_recv() {
                    Ok(job) => Some(job),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                },
                None => match self.rx.recv() {
                    Ok(job) => Some(job),
                    Err(_) => return,
                },
            };
            match job {
                Some(job) => {
                    let sink = &self.sink;
                    let video = &self.video;
                    let spec = job.spec.as_raw();
                    let result = match sink.cached(video, &spec, job.target) {
                        Some(frame) => Ok(frame),
                        None => decoder.frame(job.target, &job.spec, &mut |f| sink.side_frame(video, &spec, f)),
                    };
                    *self.reported.lock() = decoder.position();
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    (job.reply)(result);
                    if recent.len() == 3 {
                        recent.pop_front();
                    }
                    recent.push_back(job.target);
                    let sequential = recent.len() >= 2
                        && recent.iter().zip(recent.iter().skip(1)).all(|(a, b)| b.0 == a.0 + 1);
                    readahead = (sequential && self.config.readahead > 0).then_some((job.target, job.spec));
                }
                None => {
                    let Some((last, spec)) = readahead else { continue };
                    readahead = self.read_ahead(&mut decoder, last, spec);
                }
            }
        }
    }

    /// Decode one frame ahead of a sequential reader; returns the next readahead state.
    fn read_ahead(
        &self,
        decoder: &mut FrameDecoder,
        last_requested: FrameIndex,
        spec: OutputSpec,
    ) -> Option<(FrameIndex, OutputSpec)> {
        let raw = spec.as_raw();
        let limit = last_requested.0 as u64 + self.config.readahead as u64;
        let count = self.video.index.frame_count() as u64;
        let mut next = last_requested.0 + 1;
        while (next as u64) <= limit && (next as u64) < count {
            if !self.sink.has_frame(&self.video, &raw, FrameIndex(next)) {
                let sink = &self.sink;
                let video = &self.video;
                match decoder.frame(FrameIndex(next), &raw, &mut |f| sink.side_frame(video, &raw, f)) {
                    Ok(f) => sink.side_frame(video, &raw, f),
                    Err(_) => return None,
                }
                *self.reported.lock() = decoder.position();
                // One frame per turn, so a waiting request is never delayed by more.
                return Some((last_requested, spec));
            }
            next += 1;
        }
        None
    }
}

/// Runs a closure when dropped (the thread's exit path, however it exits).
fn scopeguard<F: FnMut()>(f: F) -> impl Drop {
    struct Guard<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Guard<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    Guard(f)
}
