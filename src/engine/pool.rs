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

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::Mutex;

use crate::engine::buffers::BufferPool;
use crate::engine::decoder::{DecodeOptions, FrameDecoder, RawFrame};
use crate::engine::index::VideoIndex;
use crate::engine::output::OutputSpec;
use crate::engine::plan::{self, Plan, Position};
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
    /// Whether everyone who asked for this frame has gone (cancelled, timed out, disconnected).
    /// If so the sink forgets the request, so a later ask starts afresh, and the decoder drops
    /// the job without decoding or answering it: a labelling tool scrubbing fast, or a loader
    /// whose deadline passed, must not leave the decoders grinding through stale work.
    fn abandoned(&self, video: &OpenVideo, spec: &OutputSpec, index: FrameIndex) -> bool;
}

pub type Reply = Box<dyn FnOnce(Result<RawFrame, EngineError>) + Send>;

/// Packets of decoding one queued job is assumed to cost, when comparing decoders.
const QUEUE_WEIGHT: u64 = 8;

struct Job {
    target: FrameIndex,
    spec: OutputSpec,
    /// Frames before the target to keep (the request's choice, or the configured default).
    keep_behind: u32,
    reply: Reply,
}

enum Command {
    /// Decode a frame for a request.
    Frame(Job),
    /// The readahead target moved: wake up and read ahead.
    Wake,
}

/// How far a decoder should read ahead of a sequential reader, and in which output spec.
#[derive(Default)]
struct Ahead {
    until: Option<(FrameIndex, OutputSpec)>,
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
    tx: Sender<Command>,
    /// Readahead target, set by [`DecoderPool::read_ahead`].
    ahead: Arc<Mutex<Ahead>>,
    /// Jobs sent and not yet answered.
    queued: Arc<AtomicUsize>,
    /// Where the decoder will stand after its queued jobs (a prediction for routing; the
    /// decoder itself plans from its real position).
    predicted: Option<Position>,
    /// Real position reported by the thread after each job.
    reported: Arc<Mutex<Option<Position>>>,
    last_used: Instant,
}

impl Worker {
    /// Where this decoder stands for routing: its real position when idle, else where its
    /// queued jobs will leave it.
    fn position(&self) -> Option<Position> {
        if self.queued.load(Ordering::Acquire) == 0 {
            *self.reported.lock()
        } else {
            self.predicted
        }
    }
}

/// Why a job was not sent.
pub enum SubmitError {
    /// Every decoder slot is taken and none could be freed right now: wait for
    /// [`DecoderPool::room`] and try again with the reply handed back.
    NoRoom(Reply),
    /// Too much work is already queued.
    Overloaded(EngineError),
}

pub struct DecoderPool {
    config: PoolConfig,
    /// Decoder threads alive, routable or draining: the global bound applies to these.
    alive: Arc<AtomicUsize>,
    /// Signalled whenever a decoder thread exits or goes idle.
    room: Arc<tokio::sync::Notify>,
    buffers: Arc<BufferPool>,
    workers: Mutex<Vec<Worker>>,
    next_id: AtomicUsize,
    stats: Arc<EngineStats>,
    sink: Arc<dyn FrameSink>,
}

impl DecoderPool {
    pub fn new(
        config: PoolConfig,
        stats: Arc<EngineStats>,
        sink: Arc<dyn FrameSink>,
        buffers: Arc<BufferPool>,
    ) -> Self {
        DecoderPool {
            config,
            alive: Arc::new(AtomicUsize::new(0)),
            room: Arc::new(tokio::sync::Notify::new()),
            buffers,
            workers: Mutex::new(Vec::new()),
            next_id: AtomicUsize::new(0),
            stats,
            sink,
        }
    }

    /// Send a request for `target` of `video` to the best decoder. `reply` is called on the
    /// decoder's thread with the outcome.
    pub fn submit(
        &self,
        video: &Arc<OpenVideo>,
        target: FrameIndex,
        spec: OutputSpec,
        keep_behind: Option<u32>,
        reply: Reply,
    ) -> Result<(), SubmitError> {
        let mut workers = self.workers.lock();
        let slack = self.config.decode.continue_slack;
        let index = &video.index;
        // Pick the decoder that reaches the target cheapest. Work queued on a decoder that will
        // continue forward to the target is on the way and costs nothing extra; queued work
        // elsewhere is waiting time.
        // Decoders are named by id: making room below may remove entries from the list.
        let mut best: Option<(u64, u64)> = None;
        let mut same_video = 0;
        for w in workers.iter() {
            if w.video.id != video.id {
                continue;
            }
            same_video += 1;
            let queued = w.queued.load(Ordering::Acquire);
            let position = w.position();
            let cost = plan::cost(index, position, target, slack);
            let waiting = match plan::plan(index, position, target, slack) {
                Plan::Continue => 0,
                Plan::Seek(_) => queued as u64 * QUEUE_WEIGHT,
            };
            let score = cost.saturating_add(waiting);
            if best.is_none_or(|(_, c)| score < c) {
                best = Some((w.id, score));
            }
        }
        let cold_cost = plan::cost(index, None, target, slack);
        let chosen = match best {
            // A video with no decoder gets one as soon as there is room; at the global bound the
            // least recently used decoder is closed (a busy one stops taking work, finishes its
            // queue, then exits) and the request waits for its thread to go.
            None => {
                if !self.make_room(&mut workers, true) {
                    return Err(SubmitError::NoRoom(reply));
                }
                workers.push(self.spawn(video));
                workers.len() - 1
            }
            // No decoder does better than a fresh one would: start another (for parallelism, or
            // to keep the others where they are), if the bounds allow without closing a busy one.
            Some((_, score))
                if score >= cold_cost
                    && same_video < self.config.max_per_video
                    && self.make_room(&mut workers, false) =>
            {
                workers.push(self.spawn(video));
                workers.len() - 1
            }
            Some((id, _)) => match workers.iter().position(|w| w.id == id) {
                Some(i) => i,
                // It was the idle decoder closed to make room: wait for a slot.
                None => return Err(SubmitError::NoRoom(reply)),
            },
        };
        tracing::trace!(video = %video.name, target = target.0, decoder = workers[chosen].id, same_video, cold_cost, "routed");
        let w = &mut workers[chosen];
        if w.queued.load(Ordering::Acquire) >= self.config.max_queue {
            return Err(SubmitError::Overloaded(EngineError::Overloaded {
                what: format!("{} requests already wait for the decoders of {}", self.config.max_queue, video.name),
            }));
        }
        w.queued.fetch_add(1, Ordering::AcqRel);
        w.last_used = Instant::now();
        w.predicted = Some(Position {
            next_packet: index
                .frame(target)
                .and_then(|f| f.packet)
                .map(|p| crate::units::PacketNo(p.0 + 1))
                .unwrap_or(crate::units::PacketNo(target.0 + 1)),
            last_output: Some(target),
            ended: false,
        });
        let keep_behind = keep_behind.unwrap_or(self.config.decode.keep_behind);
        let job = Job { target, spec, keep_behind, reply };
        if let Err(e) = w.tx.send(Command::Frame(job)) {
            w.queued.fetch_sub(1, Ordering::AcqRel);
            if let Command::Frame(job) = e.into_inner() {
                (job.reply)(Err(EngineError::ShuttingDown));
            }
        }
        Ok(())
    }

    /// A client read `index` right after `index - 1`: ask the decoder that can continue from
    /// there to decode the next `readahead` frames into the cache before they are requested.
    pub fn read_ahead(&self, video: &Arc<OpenVideo>, index: FrameIndex, spec: OutputSpec) {
        if self.config.readahead == 0 {
            return;
        }
        let count = video.index.frame_count() as u32;
        let until = FrameIndex((index.0 + self.config.readahead).min(count.saturating_sub(1)));
        if until <= index {
            return;
        }
        let workers = self.workers.lock();
        let slack = self.config.decode.continue_slack;
        // The decoder that can go on from around `index` to `until` without seeking.
        let best = workers
            .iter()
            .filter(|w| w.video.id == video.id)
            .filter_map(|w| {
                let position = w.position();
                let p = position.filter(|p| !p.ended)?;
                let last = p.last_output?;
                // Just behind the reader (or a little ahead of it, but not done yet).
                let near = last.0 + 1 >= index.0 && last < until;
                let next = FrameIndex(last.0 + 1);
                (near && plan::plan(&video.index, position, next, slack) == Plan::Continue).then_some((last, w))
            })
            .max_by_key(|(last, _)| *last);
        if let Some((_, w)) = best {
            let mut ahead = w.ahead.lock();
            tracing::trace!(video = %video.name, index = index.0, until = until.0, "read-ahead hint");
            if ahead.until.is_none_or(|(u, s)| s != spec || u < until) {
                ahead.until = Some((until, spec));
                let _ = w.tx.send(Command::Wake);
            }
        }
    }

    /// Signalled whenever a decoder thread exits or goes idle: a request that got
    /// [`SubmitError::NoRoom`] waits for it.
    pub fn room(&self) -> Arc<tokio::sync::Notify> {
        self.room.clone()
    }

    /// Whether a new decoder thread fits under the global bound. At the bound, close the least
    /// recently used idle decoder (or, with `even_busy`, the least recently used one, which
    /// finishes its queued jobs first); room appears when its thread has exited, so this
    /// answers false and the caller waits for [`DecoderPool::room`].
    fn make_room(&self, workers: &mut Vec<Worker>, even_busy: bool) -> bool {
        if self.alive.load(Ordering::Acquire) < self.config.max_total {
            return true;
        }
        let victim = workers
            .iter()
            .enumerate()
            .filter(|(_, w)| even_busy || w.queued.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, w)| w.last_used)
            .map(|(i, _)| i);
        match victim {
            Some(i) => {
                // Dropping the sender ends the thread once its queue is done; it frees its own
                // FFmpeg state.
                workers.swap_remove(i);
                false
            }
            None => false,
        }
    }

    fn spawn(&self, video: &Arc<OpenVideo>) -> Worker {
        let (tx, rx) = crossbeam_channel::unbounded::<Command>();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) as u64;
        let queued = Arc::new(AtomicUsize::new(0));
        let reported = Arc::new(Mutex::new(None));
        let ahead = Arc::new(Mutex::new(Ahead::default()));
        self.alive.fetch_add(1, Ordering::AcqRel);
        let thread = WorkerThread {
            alive: self.alive.clone(),
            room: self.room.clone(),
            id,
            video: video.clone(),
            rx,
            ahead: ahead.clone(),
            queued: queued.clone(),
            reported: reported.clone(),
            config: self.config,
            stats: self.stats.clone(),
            sink: self.sink.clone(),
            buffers: self.buffers.clone(),
        };
        let name = format!("framesrv-dec-{id}");
        let alive = self.alive.clone();
        if let Err(e) = std::thread::Builder::new().name(name).spawn(move || thread.run()) {
            alive.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(error = %e, "could not start a decoder thread");
        }
        Worker { id, video: video.clone(), tx, ahead, queued, predicted: None, reported, last_used: Instant::now() }
    }

    /// Close every decoder: each thread finishes its queued jobs, frees its FFmpeg state and
    /// exits. Used at shutdown.
    pub fn close_all(&self) {
        self.workers.lock().clear();
    }

    pub fn decoder_count(&self) -> usize {
        self.workers.lock().len()
    }
}

/// The state a decoder thread owns.
struct WorkerThread {
    /// The pool's count of live decoder threads; this thread leaves it when it exits.
    alive: Arc<AtomicUsize>,
    room: Arc<tokio::sync::Notify>,
    id: u64,
    video: Arc<OpenVideo>,
    rx: Receiver<Command>,
    ahead: Arc<Mutex<Ahead>>,
    queued: Arc<AtomicUsize>,
    reported: Arc<Mutex<Option<Position>>>,
    config: PoolConfig,
    stats: Arc<EngineStats>,
    sink: Arc<dyn FrameSink>,
    buffers: Arc<BufferPool>,
}

impl WorkerThread {
    fn run(self) {
        self.stats.open_decoders.inc();
        // Runs after the decoder (declared below, so dropped first) has closed.
        let _guard = scopeguard(|| {
            crate::engine::ffmpeg::release_freed_memory();
            self.stats.open_decoders.sub(1);
            self.alive.fetch_sub(1, Ordering::AcqRel);
            self.room.notify_waiters();
        });
        let decoder = FrameDecoder::open(
            &self.video.id.path,
            &self.video.name,
            self.video.index.clone(),
            self.config.decode,
            self.stats.clone(),
            self.buffers.clone(),
        );
        let mut decoder = match decoder {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(video = %self.video.name, error = %e, "could not open a decoder");
                while let Ok(command) = self.rx.recv() {
                    if let Command::Frame(job) = command {
                        self.job_done(|| (job.reply)(Err(e.clone())));
                    }
                }
                return;
            }
        };
        loop {
            // Requests first; read ahead only when none is waiting.
            let command = if self.ahead_pending(&decoder) {
                match self.rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                }
            } else {
                match self.rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                }
            };
            match command {
                Some(Command::Frame(job)) => {
                    tracing::trace!(video = %self.video.name, decoder = self.id, target = job.target.0, "job");
                    let sink = &self.sink;
                    let video = &self.video;
                    let spec = job.spec.as_raw();
                    let result = match sink.cached(video, &spec, job.target) {
                        Some(frame) => Ok(frame),
                        None if sink.abandoned(video, &spec, job.target) => {
                            tracing::debug!(video = %video.name, target = job.target.0, "dropped a job nobody waits for");
                            self.stats.abandoned.inc();
                            self.job_done(|| {});
                            continue;
                        }
                        None => {
                            let restart = self.window_has_gaps(&decoder, job.target, &spec, job.keep_behind);
                            decoder.frame_keeping(job.target, &job.spec, job.keep_behind, restart, &mut |f| {
                                sink.side_frame(video, &spec, f)
                            })
                        }
                    };
                    *self.reported.lock() = decoder.position();
                    self.job_done(|| (job.reply)(result));
                }
                Some(Command::Wake) => {}
                None => self.read_one_ahead(&mut decoder),
            }
        }
    }

    /// A job leaves the queue, then `answer` runs. The queue shrinks first, so a request the
    /// answer sets off (the next frame of a sequential reader) sees this decoder as free. A
    /// decoder whose queue is empty is idle and may be closed to make room for another video:
    /// tell whoever waits for room.
    fn job_done(&self, answer: impl FnOnce()) {
        let idle = self.queued.fetch_sub(1, Ordering::AcqRel) == 1;
        answer();
        if idle {
            self.room.notify_waiters();
        }
    }

    /// Whether continuing forward to `target` would leave holes in the frames to keep behind
    /// it: frames of the window this decoder has already passed (for another output, or
    /// without keeping them) that are not in the cache. Continuing cannot produce them again.
    fn window_has_gaps(&self, decoder: &FrameDecoder, target: FrameIndex, spec: &OutputSpec, keep_behind: u32) -> bool {
        let Some(last) = decoder.position().filter(|p| !p.ended).and_then(|p| p.last_output) else {
            return false;
        };
        let keep_from = target.0.saturating_sub(keep_behind);
        if keep_behind == 0 || last.0 < keep_from || last >= target {
            return false;
        }
        (keep_from..=last.0).any(|i| !self.sink.has_frame(&self.video, spec, FrameIndex(i)))
    }

    /// The next frame this decoder would read ahead, if it has been asked to.
    fn ahead_target(&self, decoder: &FrameDecoder) -> Option<(FrameIndex, OutputSpec)> {
        let (until, spec) = self.ahead.lock().until?;
        let last = decoder.position().filter(|p| !p.ended)?.last_output?;
        let next = FrameIndex(last.0 + 1);
        (next <= until).then_some((next, spec))
    }

    fn ahead_pending(&self, decoder: &FrameDecoder) -> bool {
        self.ahead_target(decoder).is_some()
    }

    /// Decode the next frame ahead of a sequential reader into the cache (one per turn, so a
    /// waiting request is never delayed by more than one frame).
    fn read_one_ahead(&self, decoder: &mut FrameDecoder) {
        let Some((next, spec)) = self.ahead_target(decoder) else { return };
        tracing::trace!(video = %self.video.name, decoder = self.id, next = next.0, "reading ahead");
        let raw = spec.as_raw();
        let sink = &self.sink;
        let video = &self.video;
        match decoder.frame(next, &raw, &mut |f| sink.side_frame(video, &raw, f)) {
            Ok(f) => sink.side_frame(video, &raw, f),
            Err(_) => self.ahead.lock().until = None,
        }
        *self.reported.lock() = decoder.position();
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
