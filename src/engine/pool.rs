//! The decoders of all videos, a bounded number of them, and which one gets a request.
//!
//! Decoding is CPU work that must never run on the async runtime's workers, and a decoder is
//! worth most when it keeps its position between requests. So each decoder lives on its own
//! named OS thread that owns it ([`worker`](crate::engine::worker)), takes jobs from its inbox,
//! and answers through a callback; nobody else ever touches it. This module only routes: it
//! puts each job in the right inbox, starts and closes decoders, and keeps the bounds.
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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::engine::buffers::BufferPool;
use crate::engine::output::OutputSpec;
use crate::engine::plan::{self, Plan, Position};
use crate::engine::registry::Registry;
pub use crate::engine::schedule::PoolConfig;
use crate::engine::schedule::{self, Class, ClassCell, Occupant, SlotTicket};
use crate::engine::stats::EngineStats;
pub use crate::engine::video::{OpenVideo, VideoId};
use crate::engine::worker::{
    cpu_priorities_work, Busy, Inbox, Job, PassReplyOnce, ReplyOnce, SlotLine, Work, WorkerThread,
};
pub use crate::engine::worker::{Pass, PassReply, Reply};
use crate::engine::EngineError;
use crate::units::FrameIndex;

/// Packets of decoding one queued job is assumed to cost, when comparing decoders.
const QUEUE_WEIGHT: u64 = 8;

/// How long a decoder must have been idle for a lane of a bulk pass to close it (see
/// [`schedule::lane_may_close`]).
const LANE_MAY_CLOSE_IDLE: Duration = Duration::from_secs(2);

/// The dispatcher's view of one decoder thread.
struct Worker {
    id: u64,
    video: Arc<OpenVideo>,
    /// The video as the thread is to decode it from its next job on: more of a file being
    /// indexed, once a job for frames counted since was routed here ([`Worker::serve`]).
    latest: Arc<Mutex<Arc<OpenVideo>>>,
    inbox: Arc<Inbox>,
    /// Request jobs sent and not yet answered.
    queued: Arc<AtomicUsize>,
    /// Where the decoder will stand after its queued jobs (a prediction for routing; the
    /// decoder itself plans from its real position).
    predicted: Option<Position>,
    /// Real position reported by the thread after each job.
    reported: Arc<Mutex<Option<Position>>>,
    last_used: Instant,
    /// The class of the last job routed here.
    last_class: Class,
}

impl Worker {
    /// A job for `video` is routed here: if it counts more frames of the file than this
    /// decoder's index, the decoder takes it (before it takes the job).
    fn serve(&mut self, video: &Arc<OpenVideo>) {
        if video.counts_further(&self.video) {
            self.video = video.clone();
            *self.latest.lock() = video.clone();
        }
    }

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
pub enum SubmitError<T = Reply> {
    /// Every decoder slot is taken and none could be freed right now: wait for
    /// [`DecoderPool::room`] and try again with the job handed back.
    NoRoom(T),
    /// Too much work is already queued.
    Overloaded(EngineError),
}

pub struct DecoderPool {
    config: PoolConfig,
    /// Decoder threads alive, routable or draining: the global bound applies to these.
    alive: Arc<AtomicUsize>,
    /// Decoders running a job of a class above speculative, and their codec threads.
    busy: Arc<Busy>,
    cores: usize,
    /// Signalled whenever a decoder thread exits or goes idle.
    room: Arc<tokio::sync::Notify>,
    /// Requests waiting for a decoder slot.
    slots: Arc<SlotLine>,
    buffers: Arc<BufferPool>,
    workers: Mutex<Vec<Worker>>,
    next_id: AtomicUsize,
    epoch: Instant,
    stats: Arc<EngineStats>,
    registry: Arc<Registry>,
}

impl DecoderPool {
    pub fn new(
        mut config: PoolConfig,
        stats: Arc<EngineStats>,
        registry: Arc<Registry>,
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
            busy: Arc::new(Busy::default()),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            room: Arc::new(tokio::sync::Notify::new()),
            slots: Arc::default(),
            buffers,
            workers: Mutex::new(Vec::new()),
            next_id: AtomicUsize::new(0),
            epoch: Instant::now(),
            stats,
            registry,
        }
    }

    /// Send a request of class `class` for `target` of `video` to the best decoder; `ticket` is
    /// its place in line if it waits for a decoder slot ([`DecoderPool::waiting_for_room`]).
    /// `reply` is called on the decoder's thread with the outcome.
    pub fn submit(
        &self,
        video: &Arc<OpenVideo>,
        target: FrameIndex,
        spec: OutputSpec,
        keep_behind: Option<u32>,
        (class, ticket): (Arc<ClassCell>, Option<SlotTicket>),
        reply: Reply,
    ) -> Result<u64, SubmitError> {
        let mut workers = self.workers.lock();
        let w = match self.route(&mut workers, video, target, target, class.get(), (false, ticket)) {
            Ok(w) => w,
            Err(SubmitError::NoRoom(())) => return Err(SubmitError::NoRoom(reply)),
            Err(SubmitError::Overloaded(e)) => return Err(SubmitError::Overloaded(e)),
        };
        w.serve(video);
        let keep_behind = keep_behind.unwrap_or(self.config.decode.keep_behind);
        let job = Job { target, spec, keep_behind, reply: ReplyOnce::new(reply, video) };
        w.inbox.push(class, Work::Frame(job));
        Ok(w.id)
    }

    /// What a request that joins a frame job calls to raise it to its own class: the job's
    /// class cell, and a nudge to the video's decoders to look at their queues again (the job
    /// may have moved to another decoder since it was submitted).
    pub fn promoter(
        self: &Arc<Self>,
        video: &Arc<OpenVideo>,
        cell: Arc<ClassCell>,
    ) -> Arc<dyn Fn(Class) + Send + Sync> {
        let (pool, id) = (Arc::downgrade(self), video.id.clone());
        Arc::new(move |class| {
            if cell.raise(class) {
                if let Some(pool) = pool.upgrade() {
                    for w in pool.workers.lock().iter().filter(|w| w.video.id == id) {
                        w.inbox.raised(class);
                    }
                }
            }
        })
    }

    /// Send a bulk pass (or one lane of it) to the decoder that reaches its first frame
    /// cheapest; a pass starting far from every decoder of its video gets a decoder of its own
    /// when the bounds allow, so the lanes of one pass decode in parallel.
    pub fn submit_pass(
        &self,
        video: &Arc<OpenVideo>,
        pass: Pass,
        class: Class,
        reply: PassReply,
    ) -> Result<(), SubmitError<(Pass, PassReply)>> {
        let Some(&first) = pass.frames.front() else {
            reply(pass, Ok(()));
            return Ok(());
        };
        let last = pass.frames.back().copied().unwrap_or(first);
        let mut workers = self.workers.lock();
        let w = match self.route(&mut workers, video, first, last, class, (true, None)) {
            Ok(w) => w,
            Err(SubmitError::NoRoom(())) => return Err(SubmitError::NoRoom((pass, reply))),
            Err(SubmitError::Overloaded(e)) => return Err(SubmitError::Overloaded(e)),
        };
        w.serve(video);
        let reply = PassReplyOnce::new(reply, video, pass.spec);
        w.inbox.push(Arc::new(ClassCell::new(class)), Work::Pass(pass, reply));
        Ok(())
    }

    /// The decoder a job of `class` for `target` goes to, counted as queued there (see the
    /// module docs for the rule); the job leaves it at `until`. A `lane` of a pass only goes to
    /// a decoder with nothing queued, else to a new one while the bounds allow.
    fn route<'a>(
        &self,
        workers: &'a mut Vec<Worker>,
        video: &Arc<OpenVideo>,
        target: FrameIndex,
        until: FrameIndex,
        class: Class,
        (lane, ticket): (bool, Option<SlotTicket>),
    ) -> Result<&'a mut Worker, SubmitError<()>> {
        let may_take_slot = schedule::may_take_slot(class, ticket, self.slots.first());
        // A decoder whose thread is gone (it panicked, or could not open) takes no more work.
        workers.retain(|w| !w.inbox.is_dead());
        let slack = self.config.decode.continue_slack;
        let index = &video.index;
        // Pick the decoder that reaches the target cheapest. Work queued on a decoder that will
        // continue forward to the target is on the way and costs nothing extra; queued work
        // elsewhere is waiting time.
        // Decoders are named by id: making room below may remove entries from the list.
        let mut best: Option<(u64, u64, bool)> = None;
        let mut same_video = 0;
        // An idle decoder of the video a pass's lane left, by position (for a pass's lane: see
        // below; `workers` is not changed before it is used).
        let mut left_by_a_lane = None;
        for (i, w) in workers.iter().enumerate() {
            if !w.video.decodes_like(video) {
                continue;
            }
            same_video += 1;
            let queued = w.queued.load(Ordering::Acquire);
            if lane && class == Class::Bulk && w.last_class == Class::Bulk && queued == 0 {
                left_by_a_lane.get_or_insert(i);
            }
            let position = w.position();
            let cost = plan::cost(index, position, target, slack);
            // A lane of a pass wants a decoder to itself: one with work queued, even work that
            // ends where the lane starts (the lane before it), would run the lanes in turn.
            let taken = lane && queued > 0;
            let continues = !taken && plan::plan(index, position, target, slack) == Plan::Continue;
            let waiting = if continues { 0 } else { queued as u64 * QUEUE_WEIGHT };
            let score = if taken { u64::MAX } else { cost.saturating_add(waiting) };
            if best.is_none_or(|(_, c, _)| score < c) {
                best = Some((w.id, score, continues));
            }
        }
        let cold_cost = plan::cost(index, None, target, slack);
        // Every decoder of the video runs another lane of this pass and the total bound is
        // reached: close a decoder a finished pass left, or one left idle a while, and wait for
        // its slot, rather than queue behind a lane and run the lanes in turn.
        if lane
            && best.is_some_and(|(_, score, _)| score == u64::MAX)
            && same_video < self.config.max_per_video
            && self.alive.load(Ordering::Acquire) >= self.config.max_total
        {
            let now = self.epoch.elapsed().as_nanos() as u64;
            if let Some(i) =
                schedule::lane_may_close(&self.occupants(workers), now, LANE_MAY_CLOSE_IDLE.as_nanos() as u64)
            {
                workers.swap_remove(i);
                return Err(SubmitError::NoRoom(()));
            }
        }
        let chosen = match best {
            // A video with no decoder gets one as soon as there is room; at the global bound a
            // decoder is closed (idle ones first, then the least urgent work; a busy one stops
            // taking work, finishes its queue, then exits) and the request waits for its thread
            // to go.
            None => {
                if !may_take_slot {
                    return Err(SubmitError::NoRoom(()));
                }
                if !self.make_room(workers, Some(class)) {
                    return Err(SubmitError::NoRoom(()));
                }
                workers.push(self.spawn(video));
                workers.len() - 1
            }
            // A pass's lane moving on to its next chunk, where every decoder would have to seek:
            // it takes an idle decoder a lane of the pass left (its own, usually) rather than open
            // another one that only looks as cheap on paper.
            Some((_, score, false))
                if score >= cold_cost
                    && let Some(i) = left_by_a_lane =>
            {
                i
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
                    && may_take_slot
                    && self.alive.load(Ordering::Acquire) < self.config.max_total =>
            {
                workers.push(self.spawn(video));
                workers.len() - 1
            }
            Some((id, _, _)) => match workers.iter().position(|w| w.id == id) {
                Some(i) => i,
                // It was the idle decoder closed to make room: wait for a slot.
                None => return Err(SubmitError::NoRoom(())),
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
        w.last_class = class;
        let entry = index.frame(until);
        w.predicted = Some(Position {
            decoding_from: entry.map_or(crate::units::PacketNo(0), |f| index.seek_packet(f.seek)),
            next_packet: entry
                .and_then(|f| f.packet)
                .map(|p| crate::units::PacketNo(p.0 + 1))
                .unwrap_or(crate::units::PacketNo(until.0 + 1)),
            last_output: Some(until),
            ended: false,
        });
        Ok(w)
    }

    /// A client (whose requests are of class `reader`) read `index` right after `index - 1`:
    /// ask the decoder that can continue from there to decode the next frames into the cache
    /// before they are requested ([`schedule::readahead_depth`] of them).
    pub fn read_ahead(&self, video: &Arc<OpenVideo>, index: FrameIndex, spec: OutputSpec, reader: Class) {
        let depth = schedule::readahead_depth(self.config.readahead, self.registry.speculative_room(video, spec));
        if depth == 0 {
            return;
        }
        let count = video.index.frame_count() as u32;
        let until = FrameIndex((index.0 + depth).min(count.saturating_sub(1)));
        if until <= index {
            return;
        }
        let mut workers = self.workers.lock();
        let slack = self.config.decode.continue_slack;
        // The decoder that can go on from around `index` to `until` without seeking.
        let best = workers
            .iter_mut()
            .filter(|w| w.video.decodes_like(video))
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
            w.serve(video);
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

    /// A request of `class` waits for a decoder slot, in line, until the returned guard is
    /// dropped: slots go to the most urgent class first, and within it to the request that has
    /// waited longest ([`schedule::may_take_slot`]). Pass the ticket to [`DecoderPool::submit`].
    pub fn waiting_for_room(&self, class: Class) -> (SlotTicket, impl Drop) {
        self.slots.join(class)
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
        let occupants = self.occupants(workers);
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

    /// The decoders as [`schedule::victim`] and [`schedule::lane_may_close`] see them: speculative
    /// work counts as idle, queued work as busy.
    fn occupants(&self, workers: &[Worker]) -> Vec<Occupant> {
        workers
            .iter()
            .map(|w| Occupant {
                busy: if w.queued.load(Ordering::Acquire) == 0 {
                    w.inbox.busy().filter(|c| *c != Class::Speculative)
                } else {
                    w.inbox.busy().or(Some(Class::Interactive))
                },
                last_used: w.last_used.duration_since(self.epoch).as_nanos() as u64,
                last_class: w.last_class,
            })
            .collect()
    }

    fn bound(&self, class: Option<Class>) -> usize {
        schedule::decoder_bound(self.config.max_total, self.config.interactive_reserve, class)
    }

    fn spawn(&self, video: &Arc<OpenVideo>) -> Worker {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) as u64;
        let queued = Arc::new(AtomicUsize::new(0));
        let reported = Arc::new(Mutex::new(None));
        let inbox = Arc::new(Inbox::new(self.config.cpu_priorities));
        let latest = Arc::new(Mutex::new(video.clone()));
        self.alive.fetch_add(1, Ordering::AcqRel);
        let thread = WorkerThread {
            alive: self.alive.clone(),
            busy: self.busy.clone(),
            busy_threads: std::cell::Cell::new(0),
            slots: self.slots.clone(),
            cores: self.cores,
            room: self.room.clone(),
            id,
            video: video.clone(),
            latest: latest.clone(),
            inbox: inbox.clone(),
            queued: queued.clone(),
            reported: reported.clone(),
            config: self.config,
            stats: self.stats.clone(),
            registry: self.registry.clone(),
            buffers: self.buffers.clone(),
        };
        // The kernel keeps 15 bytes of a thread's name, and codec threads are told from others
        // by the name they inherit (see `threads::started_by`): six digits stay distinct among
        // the decoders alive at once ("framesrv-dec-10" and "-100" did not).
        let name = format!("fsrv-dec-{}", id % 1_000_000);
        let alive = self.alive.clone();
        if let Err(e) = std::thread::Builder::new().name(name).spawn(move || thread.run()) {
            alive.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(error = %e, "could not start a decoder thread");
        }
        Worker {
            id,
            video: video.clone(),
            latest,
            inbox,
            queued,
            predicted: None,
            reported,
            last_used: Instant::now(),
            last_class: Class::Interactive,
        }
    }

    /// Close every decoder: each thread finishes its queued jobs, frees its FFmpeg state and
    /// exits. Used at shutdown.
    pub fn close_all(&self) {
        self.workers.lock().clear();
    }

    /// Whether classes of work run at CPU priorities of their own (configured, and allowed here).
    pub fn cpu_priorities(&self) -> bool {
        self.config.cpu_priorities
    }

    pub fn decoder_count(&self) -> usize {
        self.workers.lock().len()
    }

    /// Decoders running non-speculative work, and jobs queued on all decoders.
    pub fn load(&self) -> (u64, u64) {
        let queued = self.workers.lock().iter().map(|w| w.queued.load(Ordering::Acquire) as u64).sum();
        (self.busy.decoders() as u64, queued)
    }
}
