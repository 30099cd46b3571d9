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
//! Each decoder has an inbox, not a FIFO: jobs carry a [`Class`], and the decoder takes the
//! job [`schedule::pick`] chooses (the most urgent class, same-GOP targets coalesced into one
//! forward scan). A job of a lower class yields at the next frame boundary when something more
//! urgent arrives, and the decoder thread runs each job at its class's CPU priority.
//!
//! Speculative work lives in the same inbox, at the lowest class, so there is one place that
//! decides what a decoder does next:
//! - read-ahead: a decoder whose last requests were consecutive frames decodes the next frames
//!   into the cache, so a client reading frame by frame finds them ready;
//! - the backtrack fill: a cold interactive request is answered as soon as the reference chain
//!   allows (non-reference frames before the target skipped, only the target converted), and
//!   the `keep_behind` window behind it is decoded afterwards. The window's frames are
//!   registered as in flight before the answer leaves, so a client stepping back waits on the
//!   fill (which its wait makes interactive) instead of starting a second cold decode.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::engine::buffers::BufferPool;
use crate::engine::decoder::{DecodeOptions, FrameDecoder, RawFrame};
use crate::engine::output::OutputSpec;
use crate::engine::plan::{self, Plan, Position};
use crate::engine::schedule::{self, Candidate, Class, ClassCell, Occupant};
use crate::engine::stats::EngineStats;
pub use crate::engine::video::{OpenVideo, VideoId};
use crate::engine::EngineError;
use crate::units::FrameIndex;

/// Where decoded frames go besides the request that asked: the frame registry (cache and
/// frames in flight).
pub trait FrameSink: Send + Sync {
    /// A frame decoded on the way to a target, ahead of a sequential reader, or by a fill.
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
    /// Register `frames` as in flight for a fill, each that is neither cached nor in flight
    /// already; returns those registered. A request for one of them then waits for the fill
    /// and calls `promote` with its class.
    fn reserve(
        &self,
        video: &OpenVideo,
        spec: &OutputSpec,
        frames: &[FrameIndex],
        promote: Arc<dyn Fn(Class) + Send + Sync>,
    ) -> Vec<FrameIndex>;
    /// A reserved frame the fill will not produce: forget it. True if a request waits for it
    /// (the caller must then produce it or fail it).
    fn release(&self, video: &OpenVideo, spec: &OutputSpec, index: FrameIndex) -> bool;
    /// A reserved frame that cannot be decoded: answer whoever waits with the error.
    fn fail(&self, video: &OpenVideo, spec: &OutputSpec, index: FrameIndex, error: EngineError);
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

/// What a decoder can be asked to do.
enum Work {
    /// A frame some request waits for.
    Frame(Job),
    /// Read ahead of a sequential reader, up to and including `until` (speculative).
    Ahead { until: FrameIndex, spec: OutputSpec },
    /// The backtrack window behind a cold target, ascending, each frame registered in flight.
    Fill { frames: VecDeque<FrameIndex>, spec: OutputSpec },
}

struct Queued {
    /// Arrival order; a job that yields goes back with its number.
    seq: u64,
    class: Arc<ClassCell>,
    /// The CPU priority to run it at when more urgent than its class: read-ahead is queued as
    /// speculative (anything else goes first) but serves a reader who is about to ask, so it
    /// runs at that reader's priority.
    cpu: Class,
    work: Work,
}

/// A decoder's queue: filled by the dispatcher (and by the decoder itself, for fills), drained
/// by the decoder thread in the order [`schedule::pick`] decides.
struct Inbox {
    state: Mutex<InboxState>,
    ready: Condvar,
    /// The most urgent class queued (`NONE` when empty), read between frames without a lock.
    urgent: AtomicU8,
    /// The class the decoder is running now (`NONE` when idle).
    running: AtomicU8,
    /// CPU priorities per class are on.
    priorities: bool,
    /// The decoder thread's kernel id (0 until it starts) and the nice value it runs at.
    tid: AtomicI32,
    nice: AtomicI32,
    /// Closed to make room for more urgent work: stop at the next frame boundary and give every
    /// job not done back to be submitted again, instead of finishing the queue first.
    evicted: AtomicBool,
}

const NONE: u8 = u8::MAX;

#[derive(Default)]
struct InboxState {
    jobs: Vec<Queued>,
    next_seq: u64,
    /// The dispatcher has let go of this decoder: finish what requests wait for, then exit.
    closed: bool,
}

impl Inbox {
    fn new(priorities: bool) -> Inbox {
        Inbox {
            state: Mutex::new(InboxState::default()),
            ready: Condvar::new(),
            urgent: AtomicU8::new(NONE),
            running: AtomicU8::new(NONE),
            priorities,
            tid: AtomicI32::new(0),
            nice: AtomicI32::new(0),
            evicted: AtomicBool::new(false),
        }
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.close();
    }

    fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Run the decoder thread at `class`'s CPU priority (called by the thread at each job).
    fn set_priority(&self, class: Class) {
        if self.priorities
            && self.nice.load(Ordering::Acquire) != class.nice()
            && crate::engine::ffmpeg::set_thread_nice(self.tid.load(Ordering::Acquire), class.nice())
        {
            self.nice.store(class.nice(), Ordering::Release);
        }
    }

    /// Work of `class` arrived: if the thread runs at a lower priority (in the middle of
    /// speculative work, say), raise it now, so the frame boundary where the running job yields
    /// is not itself slowed down by the low priority (an inversion otherwise).
    fn prioritise(&self, class: Class) {
        if self.priorities && self.nice.load(Ordering::Acquire) > class.nice() {
            self.set_priority(class);
        }
    }

    fn push(&self, class: Arc<ClassCell>, work: Work) {
        self.prioritise(class.get());
        let mut state = self.state.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        let cpu = class.get();
        state.jobs.push(Queued { seq, class, cpu, work });
        self.refresh(&state);
        self.ready.notify_one();
    }

    /// Take every fill nobody waits for out of the queue: the decoder is wanted for a request,
    /// and a fill would move it back into an earlier part of the video (a client that jumped
    /// and then reads forward would pay a pass over the GOP for each fill).
    fn take_fills(&self) -> Vec<(VecDeque<FrameIndex>, OutputSpec)> {
        let mut state = self.state.lock();
        let mut out = Vec::new();
        let mut i = 0;
        while i < state.jobs.len() {
            let job = &state.jobs[i];
            if matches!(job.work, Work::Fill { .. }) && job.class.get() == Class::Speculative {
                if let Work::Fill { frames, spec } = state.jobs.swap_remove(i).work {
                    out.push((frames, spec));
                }
            } else {
                i += 1;
            }
        }
        self.refresh(&state);
        out
    }

    /// Put back a job that yielded (or has more frames to do), keeping its place in line.
    fn requeue(&self, job: Queued) {
        let mut state = self.state.lock();
        state.jobs.push(job);
        self.refresh(&state);
    }

    /// Recompute the most urgent class queued (after a push, a take, or a class raised).
    fn refresh(&self, state: &InboxState) {
        let best = state.jobs.iter().map(|j| j.class.get() as u8).min().unwrap_or(NONE);
        self.urgent.store(best, Ordering::Release);
    }

    /// A queued job's class was raised: make the running job see it at its next frame boundary.
    fn raised(&self, class: Class) {
        self.prioritise(class);
        let state = self.state.lock();
        self.refresh(&state);
        self.ready.notify_one();
    }

    fn waiting(&self) -> Option<Class> {
        class_of(self.urgent.load(Ordering::Acquire))
    }

    /// The most urgent work queued or running (`None`: idle).
    fn busy(&self) -> Option<Class> {
        let running = class_of(self.running.load(Ordering::Acquire));
        match (running, self.waiting()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Read ahead up to `until`: extend the read-ahead job if there is one, else queue one.
    /// Returns false if nothing changed.
    fn read_ahead(&self, until: FrameIndex, spec: OutputSpec, reader: Class) -> bool {
        let mut state = self.state.lock();
        for job in state.jobs.iter_mut() {
            if let Work::Ahead { until: u, spec: s } = &mut job.work {
                if *s == spec && *u >= until {
                    return false;
                }
                *u = until;
                *s = spec;
                job.cpu = reader;
                self.ready.notify_one();
                return true;
            }
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let class = Arc::new(ClassCell::new(Class::Speculative));
        state.jobs.push(Queued { seq, class, cpu: reader, work: Work::Ahead { until, spec } });
        self.refresh(&state);
        self.ready.notify_one();
        true
    }

    /// The next job, as `pick` chooses among the candidates `describe` makes of the queued jobs;
    /// waits while the queue is empty. `None` once closed and empty. Whether the inbox is closed
    /// is returned with the job.
    fn take(&self, describe: impl Fn(&Queued) -> Candidate) -> Option<(Queued, bool)> {
        let mut state = self.state.lock();
        loop {
            if !state.jobs.is_empty() {
                let candidates: Vec<Candidate> = state.jobs.iter().map(&describe).collect();
                let i = schedule::pick(&candidates).unwrap_or(0);
                let job = state.jobs.swap_remove(i);
                self.running.store(job.class.get() as u8, Ordering::Release);
                self.refresh(&state);
                return Some((job, state.closed));
            }
            self.running.store(NONE, Ordering::Release);
            if state.closed {
                return None;
            }
            self.ready.wait(&mut state);
        }
    }

    fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }
}

fn class_of(v: u8) -> Option<Class> {
    (v != NONE).then(|| Class::ALL.into_iter().find(|c| *c as u8 == v).unwrap_or(Class::Speculative))
}

#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub max_per_video: usize,
    pub max_total: usize,
    /// Decoder threads beyond `max_total` that only interactive requests may open.
    pub interactive_reserve: usize,
    /// Jobs one decoder may have waiting before requests are refused as overload.
    pub max_queue: usize,
    /// Frames decoded ahead of a sequential reader.
    pub readahead: u32,
    /// Codec threads per decoder; 0 adapts them to load ([`schedule::codec_threads`]).
    pub threads: usize,
    /// Run each class of work at its CPU priority ([`Class::nice`]), where the system allows.
    pub cpu_priorities: bool,
    pub decode: DecodeOptions,
}

/// The dispatcher's view of one decoder thread.
struct Worker {
    id: u64,
    video: Arc<OpenVideo>,
    inbox: Arc<Inbox>,
    /// Request jobs sent and not yet answered.
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

impl Drop for Worker {
    /// The dispatcher lets go: the thread finishes what requests wait for, then exits and frees
    /// its own FFmpeg state.
    fn drop(&mut self) {
        self.inbox.close();
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
    /// Decoder threads running a job of a class above speculative (for adaptive codec threads).
    busy: Arc<AtomicUsize>,
    cores: usize,
    /// Signalled whenever a decoder thread exits or goes idle.
    room: Arc<tokio::sync::Notify>,
    /// Interactive requests waiting for a decoder slot: while there are any, less urgent
    /// requests do not take a slot that frees up.
    interactive_waiting: Arc<AtomicUsize>,
    buffers: Arc<BufferPool>,
    workers: Mutex<Vec<Worker>>,
    next_id: AtomicUsize,
    epoch: Instant,
    stats: Arc<EngineStats>,
    sink: Arc<dyn FrameSink>,
}

impl DecoderPool {
    pub fn new(
        mut config: PoolConfig,
        stats: Arc<EngineStats>,
        sink: Arc<dyn FrameSink>,
        buffers: Arc<BufferPool>,
    ) -> Self {
        if config.cpu_priorities && !cpu_priorities_work() {
            tracing::warn!(
                "CPU priorities per class of work are off: this process may not lower a thread's nice value \
                 (grant CAP_SYS_NICE or raise RLIMIT_NICE); queue order still puts interactive work first"
            );
            config.cpu_priorities = false;
        }
        DecoderPool {
            config,
            alive: Arc::new(AtomicUsize::new(0)),
            busy: Arc::new(AtomicUsize::new(0)),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            room: Arc::new(tokio::sync::Notify::new()),
            interactive_waiting: Arc::new(AtomicUsize::new(0)),
            buffers,
            workers: Mutex::new(Vec::new()),
            next_id: AtomicUsize::new(0),
            epoch: Instant::now(),
            stats,
            sink,
        }
    }

    /// Send a request of class `class` for `target` of `video` to the best decoder. `reply` is
    /// called on the decoder's thread with the outcome.
    pub fn submit(
        &self,
        video: &Arc<OpenVideo>,
        target: FrameIndex,
        spec: OutputSpec,
        keep_behind: Option<u32>,
        class: Class,
        reply: Reply,
    ) -> Result<(), SubmitError> {
        let mut workers = self.workers.lock();
        let slack = self.config.decode.continue_slack;
        let index = &video.index;
        // Pick the decoder that reaches the target cheapest. Work queued on a decoder that will
        // continue forward to the target is on the way and costs nothing extra; queued work
        // elsewhere is waiting time.
        // Decoders are named by id: making room below may remove entries from the list.
        let mut best: Option<(u64, u64, bool)> = None;
        let mut same_video = 0;
        for w in workers.iter() {
            if w.video.id != video.id {
                continue;
            }
            same_video += 1;
            let queued = w.queued.load(Ordering::Acquire);
            let position = w.position();
            let cost = plan::cost(index, position, target, slack);
            let continues = plan::plan(index, position, target, slack) == Plan::Continue;
            let waiting = if continues { 0 } else { queued as u64 * QUEUE_WEIGHT };
            let score = cost.saturating_add(waiting);
            if best.is_none_or(|(_, c, _)| score < c) {
                best = Some((w.id, score, continues));
            }
        }
        let cold_cost = plan::cost(index, None, target, slack);
        let chosen = match best {
            // A video with no decoder gets one as soon as there is room; at the global bound a
            // decoder is closed (idle ones first, then the least urgent work; a busy one stops
            // taking work, finishes its queue, then exits) and the request waits for its thread
            // to go.
            None => {
                let at_bound = self.alive.load(Ordering::Acquire) >= self.bound(Some(class));
                if at_bound && class != Class::Interactive && self.interactive_waiting.load(Ordering::Acquire) > 0 {
                    return Err(SubmitError::NoRoom(reply));
                }
                if !self.make_room(&mut workers, Some(class)) {
                    return Err(SubmitError::NoRoom(reply));
                }
                workers.push(self.spawn(video));
                workers.len() - 1
            }
            // Every decoder of the video would have to seek, and none does better than a fresh one
            // would: start another (for parallelism, or to keep the others where they are), if
            // the bounds allow it without closing anything. A decoder that can continue forward is
            // always used: at a GOP boundary a fresh decoder looks as cheap on paper, and taking a
            // slot for it at the bound would close another video's decoder that happens to be
            // between two frames (a stream), which then closes another to get back: thrash.
            Some((_, score, false))
                if score >= cold_cost
                    && same_video < self.config.max_per_video
                    && self.alive.load(Ordering::Acquire) < self.config.max_total =>
            {
                workers.push(self.spawn(video));
                workers.len() - 1
            }
            Some((id, _, _)) => match workers.iter().position(|w| w.id == id) {
                Some(i) => i,
                // It was the idle decoder closed to make room: wait for a slot.
                None => return Err(SubmitError::NoRoom(reply)),
            },
        };
        tracing::trace!(video = %video.name, target = target.0, decoder = workers[chosen].id, class = class.name(), same_video, cold_cost, "routed");
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
        w.inbox.push(Arc::new(ClassCell::new(class)), Work::Frame(job));
        Ok(())
    }

    /// A client (whose requests are of class `reader`) read `index` right after `index - 1`:
    /// ask the decoder that can continue from there to decode the next `readahead` frames into
    /// the cache before they are requested.
    pub fn read_ahead(&self, video: &Arc<OpenVideo>, index: FrameIndex, spec: OutputSpec, reader: Class) {
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
            if w.inbox.read_ahead(until, spec, reader) {
                tracing::trace!(video = %video.name, index = index.0, until = until.0, "read-ahead hint");
            }
        }
    }

    /// Signalled whenever a decoder thread exits or goes idle: a request that got
    /// [`SubmitError::NoRoom`] waits for it.
    pub fn room(&self) -> Arc<tokio::sync::Notify> {
        self.room.clone()
    }

    /// A request of `class` waits for a decoder slot until the returned guard is dropped;
    /// interactive ones get slots before anyone else.
    pub fn waiting_for_room(&self, class: Class) -> impl Drop {
        let counter = (class == Class::Interactive).then(|| self.interactive_waiting.clone());
        if let Some(c) = &counter {
            c.fetch_add(1, Ordering::AcqRel);
        }
        scopeguard(move || {
            if let Some(c) = &counter {
                c.fetch_sub(1, Ordering::AcqRel);
            }
        })
    }

    /// Whether a new decoder thread fits under the global bound. At the bound, close the decoder
    /// [`schedule::victim`] chooses for a request of class `urgent` (with `None`, only an idle
    /// one); room appears when its thread has exited, so this answers false and the caller waits
    /// for [`DecoderPool::room`].
    fn make_room(&self, workers: &mut Vec<Worker>, urgent: Option<Class>) -> bool {
        let bound = self.bound(urgent);
        if self.alive.load(Ordering::Acquire) < bound {
            return true;
        }
        // Decoders closed earlier are still finishing (alive, no longer listed): their room is
        // on its way. Closing another for every retry of a waiting request would close one
        // decoder after another (a stream's decoder between two frames looks idle), each of
        // whose streams then closes another to get back.
        if workers.len() < bound {
            return false;
        }
        let occupants: Vec<Occupant> = workers
            .iter()
            .map(|w| Occupant {
                busy: if w.queued.load(Ordering::Acquire) == 0 {
                    w.inbox.busy().filter(|c| *c != Class::Speculative)
                } else {
                    w.inbox.busy().or(Some(Class::Interactive))
                },
                last_used: w.last_used.duration_since(self.epoch).as_nanos() as u64,
            })
            .collect();
        let victim = match urgent {
            Some(class) => schedule::victim(&occupants, class),
            None => schedule::victim(&occupants, Class::Speculative).filter(|&i| occupants[i].busy.is_none()),
        };
        if let Some(i) = victim {
            // A decoder busy with less urgent work stops at its next frame boundary and gives its
            // jobs back (they are submitted again and wait for a slot like this request), so the
            // urgent request waits for one frame, not for someone else's queue. One busy with work
            // as urgent finishes its queue first: equals take turns, and every turn gets work done
            // (evicting equals could hand the same jobs back and forth forever). Dropping the
            // worker closes its inbox.
            if let (Some(busy), Some(class)) = (occupants[i].busy, urgent) {
                if busy > class {
                    workers[i].inbox.evict();
                }
            }
            workers.swap_remove(i);
        }
        false
    }

    fn bound(&self, class: Option<Class>) -> usize {
        schedule::decoder_bound(self.config.max_total, self.config.interactive_reserve, class)
    }

    fn spawn(&self, video: &Arc<OpenVideo>) -> Worker {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) as u64;
        let queued = Arc::new(AtomicUsize::new(0));
        let reported = Arc::new(Mutex::new(None));
        let inbox = Arc::new(Inbox::new(self.config.cpu_priorities));
        self.alive.fetch_add(1, Ordering::AcqRel);
        let thread = WorkerThread {
            alive: self.alive.clone(),
            busy: self.busy.clone(),
            cores: self.cores,
            room: self.room.clone(),
            id,
            video: video.clone(),
            inbox: inbox.clone(),
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
        Worker { id, video: video.clone(), inbox, queued, predicted: None, reported, last_used: Instant::now() }
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

/// Whether this process may move a thread's nice value up and back down again (a probe on a
/// short-lived thread of its own, so no real thread is left changed).
fn cpu_priorities_work() -> bool {
    use crate::engine::ffmpeg::{current_thread_id, set_thread_nice};
    std::thread::spawn(|| {
        let me = current_thread_id();
        set_thread_nice(me, 1) && set_thread_nice(me, 0)
    })
    .join()
    .unwrap_or(false)
}

/// The state a decoder thread owns.
struct WorkerThread {
    /// The pool's count of live decoder threads; this thread leaves it when it exits.
    alive: Arc<AtomicUsize>,
    busy: Arc<AtomicUsize>,
    cores: usize,
    room: Arc<tokio::sync::Notify>,
    id: u64,
    video: Arc<OpenVideo>,
    inbox: Arc<Inbox>,
    queued: Arc<AtomicUsize>,
    reported: Arc<Mutex<Option<Position>>>,
    config: PoolConfig,
    stats: Arc<EngineStats>,
    sink: Arc<dyn FrameSink>,
    buffers: Arc<BufferPool>,
}

/// Counts a decoder as busy (for adaptive codec threads) while a non-speculative job runs.
struct BusyGuard(Option<Arc<AtomicUsize>>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Some(busy) = &self.0 {
            busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
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
        self.inbox.tid.store(crate::engine::ffmpeg::current_thread_id(), Ordering::Release);
        // Codec threads inherit the nice value of the thread that opens the codec: open it at
        // the priority of the first job's class.
        if let Some(class) = self.inbox.waiting() {
            self.inbox.set_priority(class);
        }
        let threads = self.codec_threads();
        let decoder = FrameDecoder::open(
            &self.video.id.path,
            &self.video.name,
            self.video.index.clone(),
            DecodeOptions { threads, ..self.config.decode },
            self.stats.clone(),
            self.buffers.clone(),
        );
        let mut decoder = match decoder {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(video = %self.video.name, error = %e, "could not open a decoder");
                while let Some((job, _)) = self.inbox.take(|q| self.describe(q, None)) {
                    self.fail(job.work, &e);
                }
                return;
            }
        };
        while let Some((job, closing)) = self.inbox.take(|q| self.describe(q, Some(&decoder))) {
            let class = job.class.get();
            self.inbox.set_priority(class.min(job.cpu));
            let _busy = (class != Class::Speculative).then(|| {
                self.busy.fetch_add(1, Ordering::AcqRel);
                self.busy.clone()
            });
            let _busy = BusyGuard(_busy);
            decoder.set_threads(self.codec_threads());
            let Queued { seq, class: cell, cpu, work } = job;
            if closing && self.inbox.evicted() {
                self.give_back(work);
                continue;
            }
            if matches!(work, Work::Frame(_)) {
                self.cancel_fills();
            }
            let more = match work {
                Work::Frame(job) => self.frame(&mut decoder, job, class),
                Work::Ahead { until, spec } => {
                    if closing {
                        None
                    } else {
                        self.read_one_ahead(&mut decoder, until, spec, class)
                    }
                }
                Work::Fill { frames, spec } => self.fill_one(&mut decoder, frames, spec, closing, &cell),
            };
            *self.reported.lock() = decoder.position();
            if let Some(work) = more {
                self.inbox.requeue(Queued { seq, class: cell, cpu, work });
            }
        }
    }

    /// Codec threads for this decoder now: every core when no other decoder works.
    fn codec_threads(&self) -> usize {
        let busy_elsewhere = self.busy.load(Ordering::Acquire).saturating_sub(1);
        schedule::codec_threads(self.config.threads, busy_elsewhere, self.cores)
    }

    /// What the scheduler needs to know of a queued job, given where the decoder stands.
    fn describe(&self, job: &Queued, decoder: Option<&FrameDecoder>) -> Candidate {
        let index = &self.video.index;
        let position = decoder.and_then(|d| d.position());
        let target = match &job.work {
            Work::Frame(j) => j.target,
            Work::Fill { frames, .. } => frames.front().copied().unwrap_or(FrameIndex(0)),
            Work::Ahead { until, .. } => {
                position.and_then(|p| p.last_output).map(|l| FrameIndex(l.0 + 1)).unwrap_or(*until)
            }
        };
        let gop = index.frame(target).map(|f| f.seek).unwrap_or(crate::engine::index::SeekTarget::Start);
        let reachable = plan::plan(index, position, target, self.config.decode.continue_slack) == Plan::Continue;
        Candidate { class: job.class.get(), seq: job.seq, target, gop, reachable }
    }

    /// The decoder is wanted for a request: drop the fills nobody waits for yet (their frames
    /// are forgotten, so a later step back is a cold request of its own); frames somebody
    /// started waiting for in the meantime stay, as an interactive fill.
    fn cancel_fills(&self) {
        for (frames, spec) in self.inbox.take_fills() {
            let waited: VecDeque<FrameIndex> =
                frames.into_iter().filter(|&i| self.sink.release(&self.video, &spec, i)).collect();
            if !waited.is_empty() {
                self.inbox.push(Arc::new(ClassCell::new(Class::Interactive)), Work::Fill { frames: waited, spec });
            }
        }
    }

    /// This decoder was closed for more urgent work: hand back every request a job stands for,
    /// to be submitted again elsewhere (or here again, once room allows).
    fn give_back(&self, work: Work) {
        match work {
            Work::Frame(job) => {
                self.stats.preempted.inc();
                self.job_done(|| (job.reply)(Err(EngineError::Preempted)))
            }
            Work::Fill { frames, spec } => {
                for i in frames {
                    if self.sink.release(&self.video, &spec, i) {
                        self.sink.fail(&self.video, &spec, i, EngineError::Preempted);
                    }
                }
            }
            Work::Ahead { .. } => {}
        }
    }

    /// Answer every request a job stands for with `error` (the decoder could not open).
    fn fail(&self, work: Work, error: &EngineError) {
        match work {
            Work::Frame(job) => self.job_done(|| (job.reply)(Err(error.clone()))),
            Work::Fill { frames, spec } => {
                for i in frames {
                    self.sink.fail(&self.video, &spec, i, error.clone());
                }
            }
            Work::Ahead { .. } => {}
        }
    }

    /// A request's frame. Returns the job when it yielded to more urgent work.
    fn frame(&self, decoder: &mut FrameDecoder, job: Job, class: Class) -> Option<Work> {
        tracing::trace!(video = %self.video.name, decoder = self.id, target = job.target.0, class = class.name(), "job");
        let sink = &self.sink;
        let video = &self.video;
        let spec = job.spec.as_raw();
        if let Some(frame) = sink.cached(video, &spec, job.target) {
            self.job_done(|| (job.reply)(Ok(frame)));
            return None;
        }
        if sink.abandoned(video, &spec, job.target) {
            tracing::debug!(video = %video.name, target = job.target.0, "dropped a job nobody waits for");
            self.stats.abandoned.inc();
            self.job_done(|| {});
            return None;
        }
        // Answer first: a decoder that must seek goes to the target as fast as the reference
        // chain allows (keeping nothing, so non-reference frames before it are skipped); the
        // window behind it is filled afterwards. One already positioned keeps the window on the
        // way, which costs only conversions.
        let continuing = plan::plan(&video.index, decoder.position(), job.target, self.config.decode.continue_slack)
            == Plan::Continue;
        let keep = if continuing { job.keep_behind } else { 0 };
        let inbox = &self.inbox;
        let result =
            decoder.frame_keeping(job.target, &spec, keep, &mut |f| sink.side_frame(video, &spec, f), &mut || {
                schedule::must_yield(class, inbox.waiting()) || inbox.evicted()
            });
        let result = match result {
            Ok(None) => return Some(Work::Frame(job)),
            Ok(Some(frame)) => Ok(frame),
            Err(e) => Err(e),
        };
        // The window to fill, registered in flight before the answer leaves, so a client that
        // steps back at once waits for the fill rather than starting a cold decode of its own.
        let fill = if class == Class::Interactive && job.keep_behind > 0 && result.is_ok() && !self.inbox_closed() {
            self.reserve_fill(job.target, job.keep_behind, &spec)
        } else {
            None
        };
        *self.reported.lock() = decoder.position();
        self.job_done(|| (job.reply)(result));
        if let Some((frames, cell)) = fill {
            self.inbox.push(cell, Work::Fill { frames: frames.into(), spec });
        }
        None
    }

    fn inbox_closed(&self) -> bool {
        self.inbox.state.lock().closed
    }

    /// Register the frames of the backtrack window behind `target` that are missing, for a fill.
    fn reserve_fill(
        &self,
        target: FrameIndex,
        keep_behind: u32,
        spec: &OutputSpec,
    ) -> Option<(Vec<FrameIndex>, Arc<ClassCell>)> {
        let index = &self.video.index;
        let window = schedule::fill_window(
            target,
            keep_behind,
            |i| index.frames[i.get()].seek,
            |i| self.sink.has_frame(&self.video, spec, i),
        );
        if window.is_empty() {
            return None;
        }
        let cell = Arc::new(ClassCell::new(Class::Speculative));
        let inbox: Weak<Inbox> = Arc::downgrade(&self.inbox);
        let raise = cell.clone();
        let promote: Arc<dyn Fn(Class) + Send + Sync> = Arc::new(move |class| {
            if raise.raise(class) {
                if let Some(inbox) = inbox.upgrade() {
                    inbox.raised(class);
                }
            }
        });
        let frames = self.sink.reserve(&self.video, spec, &window, promote);
        (!frames.is_empty()).then_some((frames, cell))
    }

    /// One frame of a fill (a frame boundary between each, so urgent work passes). Returns the
    /// rest of the fill, if any.
    fn fill_one(
        &self,
        decoder: &mut FrameDecoder,
        mut frames: VecDeque<FrameIndex>,
        spec: OutputSpec,
        closing: bool,
        cell: &ClassCell,
    ) -> Option<Work> {
        let sink = &self.sink;
        let video = &self.video;
        if closing {
            // Only what somebody waits for is still decoded.
            frames.retain(|&i| sink.release(video, &spec, i));
        }
        // Frames that came out on the way (a decode step outputs several) are done.
        while frames.front().is_some_and(|&i| sink.cached(video, &spec, i).is_some()) {
            frames.pop_front();
        }
        let next = *frames.front()?;
        let class = cell.get();
        let inbox = &self.inbox;
        let result = decoder.frame_keeping(next, &spec, 0, &mut |f| sink.side_frame(video, &spec, f), &mut || {
            schedule::must_yield(class, inbox.waiting()) || inbox.evicted()
        });
        match result {
            Ok(None) => {}
            Ok(Some(frame)) => {
                frames.pop_front();
                sink.side_frame(video, &spec, frame);
            }
            Err(e) => {
                for i in frames.drain(..) {
                    sink.fail(video, &spec, i, e.clone());
                }
            }
        }
        (!frames.is_empty()).then_some(Work::Fill { frames, spec })
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

    /// Decode the next frame ahead of a sequential reader into the cache (one per turn, so a
    /// waiting request is never delayed by more than one frame). Returns the read-ahead job
    /// while frames up to `until` remain.
    fn read_one_ahead(
        &self,
        decoder: &mut FrameDecoder,
        until: FrameIndex,
        spec: OutputSpec,
        class: Class,
    ) -> Option<Work> {
        let last = decoder.position().filter(|p| !p.ended)?.last_output?;
        let next = FrameIndex(last.0 + 1);
        if next > until {
            return None;
        }
        tracing::trace!(video = %self.video.name, decoder = self.id, next = next.0, "reading ahead");
        let raw = spec.as_raw();
        let sink = &self.sink;
        let video = &self.video;
        let inbox = &self.inbox;
        match decoder.frame_keeping(next, &raw, 0, &mut |f| sink.side_frame(video, &raw, f), &mut || {
            schedule::must_yield(class, inbox.waiting()) || inbox.evicted()
        }) {
            Ok(Some(f)) => sink.side_frame(video, &raw, f),
            Ok(None) => {}
            Err(_) => return None,
        }
        (next < until).then_some(Work::Ahead { until, spec })
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
