//! One decoder thread: its inbox of jobs and the loop that works through it.
//!
//! A decoder is owned by one named OS thread (decoding never runs on the async runtime); the
//! dispatcher in [`pool`](crate::engine::pool) puts jobs in its [`Inbox`], and the thread takes
//! the job [`schedule::pick`] chooses, runs it at its class's CPU priority, lets it yield at
//! frame boundaries to more urgent work, and hands every frame that comes out to the
//! [`Registry`] directly (which caches it and wakes whoever waits). Read-ahead and the
//! backtrack fill are jobs in the same inbox, so this loop is the one place that decides what a
//! decoder does next.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::engine::buffers::BufferPool;
use crate::engine::decoder::{DecodeOptions, FrameDecoder, Luma, RawFrame};
use crate::engine::output::OutputSpec;
use crate::engine::plan::{self, Plan, Position};
use crate::engine::registry::Registry;
use crate::engine::schedule::{self, Candidate, Class, ClassCell, PoolConfig, SlotTicket};
use crate::engine::stats::EngineStats;
use crate::engine::threads::ThreadGroup;
use crate::engine::video::OpenVideo;
use crate::engine::EngineError;
use crate::units::FrameIndex;

pub type Reply = Box<dyn FnOnce(Result<RawFrame, EngineError>) + Send>;

/// A bulk pass: frames decoded in ascending order and handed to a sink on the decoder thread,
/// never cached (a pass over a whole video would flush everyone's frames).
pub struct Pass {
    /// Frames still to hand over, ascending.
    pub frames: VecDeque<FrameIndex>,
    pub spec: OutputSpec,
    /// Whether the frames carry their luma (see [`Luma`]).
    pub luma: Luma,
    /// Takes each frame; answers false when nobody wants more (the pass then stops).
    pub sink: Box<dyn FnMut(RawFrame) -> bool + Send>,
    /// Whether the sink can take another frame now (a client reading slowly); `None`: always.
    /// While it cannot, the pass waits between frames and gives way to more urgent work.
    pub ready: Option<Box<dyn Fn() -> bool + Send>>,
}

/// How a pass ends: handed back with the frames not done (none on success). A pass given back
/// with [`EngineError::Preempted`] is submitted again by its owner.
pub type PassReply = Box<dyn FnOnce(Pass, Result<(), EngineError>) + Send>;

pub(crate) struct Job {
    pub(crate) target: FrameIndex,
    pub(crate) spec: OutputSpec,
    /// Frames before the target to keep (the request's choice, or the configured default).
    pub(crate) keep_behind: u32,
    pub(crate) reply: ReplyOnce,
}

/// A job's reply, answered once. Dropped unanswered while its thread panics, it answers
/// [`EngineError::Panicked`], so the requests it stands for learn what happened instead of
/// waiting for a frame that will never come (a drop otherwise, as for a job nobody waits for,
/// answers nothing).
pub(crate) struct ReplyOnce(Option<Reply>, Arc<OpenVideo>);

impl ReplyOnce {
    pub(crate) fn new(reply: Reply, video: &Arc<OpenVideo>) -> ReplyOnce {
        ReplyOnce(Some(reply), video.clone())
    }

    pub(crate) fn send(mut self, result: Result<RawFrame, EngineError>) {
        if let Some(reply) = self.0.take() {
            reply(result);
        }
    }
}

impl Drop for ReplyOnce {
    fn drop(&mut self) {
        if let Some(reply) = self.0.take() {
            if std::thread::panicking() {
                reply(Err(EngineError::Panicked { video: self.1.name.clone(), what: "the decoder" }));
            }
        }
    }
}

/// A pass's reply, answered once; like [`ReplyOnce`], it answers [`EngineError::Panicked`] when
/// its thread panics (with an empty pass: the owner gives up on it).
pub(crate) struct PassReplyOnce(Option<PassReply>, Arc<OpenVideo>, OutputSpec);

impl PassReplyOnce {
    pub(crate) fn new(reply: PassReply, video: &Arc<OpenVideo>, spec: OutputSpec) -> PassReplyOnce {
        PassReplyOnce(Some(reply), video.clone(), spec)
    }

    pub(crate) fn send(mut self, pass: Pass, result: Result<(), EngineError>) {
        if let Some(reply) = self.0.take() {
            reply(pass, result);
        }
    }
}

impl Drop for PassReplyOnce {
    fn drop(&mut self) {
        if let Some(reply) = self.0.take() {
            if std::thread::panicking() {
                let empty = Pass {
                    frames: VecDeque::new(),
                    spec: self.2,
                    luma: Luma::Off,
                    sink: Box::new(|_| false),
                    ready: None,
                };
                reply(empty, Err(EngineError::Panicked { video: self.1.name.clone(), what: "a bulk pass" }));
            }
        }
    }
}

/// What a decoder can be asked to do.
pub(crate) enum Work {
    /// A frame some request waits for.
    Frame(Job),
    /// Read ahead of a sequential reader, up to and including `until` (speculative).
    Ahead { until: FrameIndex, spec: OutputSpec },
    /// The backtrack window behind a cold target, ascending, each frame registered in flight.
    Fill { frames: VecDeque<FrameIndex>, spec: OutputSpec },
    /// A bulk pass (or a part of one).
    Pass(Pass, PassReplyOnce),
}

pub(crate) struct Queued {
    /// Arrival order; a job that yields goes back with its number.
    seq: u64,
    class: Arc<ClassCell>,
    /// The CPU priority to run it at when more urgent than its class: read-ahead is queued as
    /// speculative (anything else goes first) but serves a reader who is about to ask, so it
    /// runs at that reader's priority.
    cpu: Class,
    work: Work,
    /// When it was queued, or went back in line after a turn (see [`schedule::aged`]).
    since: Instant,
}

/// A decoder's queue: filled by the dispatcher (and by the decoder itself, for fills), drained
/// by the decoder thread in the order [`schedule::pick`] decides.
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    ready: Condvar,
    /// The most urgent class queued (`NONE` when empty), read between frames without a lock.
    urgent: AtomicU8,
    /// The class the decoder is running now (`NONE` when idle).
    running: AtomicU8,
    /// CPU priorities per class are on.
    priorities: bool,
    /// The decoder thread and its codec's threads, and the nice value they run at.
    threads: ThreadGroup,
    /// Closed to make room for more urgent work: stop at the next frame boundary and give every
    /// job not done back to be submitted again, instead of finishing the queue first.
    evicted: AtomicBool,
    dead: AtomicBool,
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
    pub(crate) fn new(priorities: bool) -> Inbox {
        Inbox {
            state: Mutex::new(InboxState::default()),
            ready: Condvar::new(),
            urgent: AtomicU8::new(NONE),
            running: AtomicU8::new(NONE),
            priorities,
            threads: ThreadGroup::default(),
            evicted: AtomicBool::new(false),
            dead: AtomicBool::new(false),
        }
    }

    /// Whether the thread is gone (it panicked, or its decoder could not open): the pool drops
    /// such a decoder instead of routing work to it.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    pub(crate) fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.close();
    }

    fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Whether a job of class `running` must stop at this frame boundary: more urgent work is
    /// queued, or the decoder was closed for it.
    fn must_yield(&self, running: Class) -> bool {
        schedule::must_yield(running, self.waiting()) || self.evicted()
    }

    /// Run the decoder thread and its codec threads at `class`'s CPU priority (called by the
    /// thread at each job).
    fn set_priority(&self, class: Class) {
        if self.priorities && self.threads.nice() != class.nice() {
            self.threads.set_nice(class.nice());
        }
    }

    /// Work of `class` arrived: if the thread runs at a lower priority (in the middle of
    /// speculative work, say), raise it now, so the frame boundary where the running job yields
    /// is not itself slowed down by the low priority (an inversion otherwise).
    fn prioritise(&self, class: Class) {
        if self.priorities && self.threads.nice() > class.nice() {
            self.set_priority(class);
        }
    }

    pub(crate) fn push(&self, class: Arc<ClassCell>, work: Work) {
        self.prioritise(class.get());
        let cpu = class.get();
        let mut state = self.state.lock();
        self.enqueue(&mut state, class, cpu, work);
    }

    /// A new job at the end of the line; the decoder is woken for it.
    fn enqueue(&self, state: &mut InboxState, class: Arc<ClassCell>, cpu: Class, work: Work) {
        let seq = state.next_seq;
        state.next_seq += 1;
        state.jobs.push(Queued { seq, class, cpu, work, since: Instant::now() });
        self.refresh(state);
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
    pub(crate) fn raised(&self, class: Class) {
        self.prioritise(class);
        let state = self.state.lock();
        self.refresh(&state);
        self.ready.notify_one();
    }

    pub(crate) fn waiting(&self) -> Option<Class> {
        class_of(self.urgent.load(Ordering::Acquire))
    }

    /// The most urgent work queued or running (`None`: idle).
    pub(crate) fn busy(&self) -> Option<Class> {
        let running = class_of(self.running.load(Ordering::Acquire));
        match (running, self.waiting()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Read ahead up to `until`: extend the read-ahead job if there is one, else queue one.
    /// Returns false if nothing changed.
    pub(crate) fn read_ahead(&self, until: FrameIndex, spec: OutputSpec, reader: Class) -> bool {
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
        let class = Arc::new(ClassCell::new(Class::Speculative));
        self.enqueue(&mut state, class, reader, Work::Ahead { until, spec });
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

    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }
}

fn class_of(v: u8) -> Option<Class> {
    (v != NONE).then(|| Class::from_u8(v))
}

/// Whether this process may move a thread's nice value up and back down again (a probe on a
/// short-lived thread of its own, so no real thread is left changed).
pub(crate) fn cpu_priorities_work() -> bool {
    use crate::engine::ffmpeg::{current_thread_id, set_thread_nice};
    std::thread::spawn(|| {
        let me = current_thread_id();
        set_thread_nice(me, 1) && set_thread_nice(me, 0)
    })
    .join()
    .unwrap_or(false)
}

/// The state a decoder thread owns.
pub(crate) struct WorkerThread {
    /// The pool's count of live decoder threads; this thread leaves it when it exits.
    pub(crate) alive: Arc<AtomicUsize>,
    pub(crate) busy: Arc<Busy>,
    /// Codec threads this decoder counts in `busy` for the job it runs (0 for speculative work).
    pub(crate) busy_threads: std::cell::Cell<usize>,
    /// The pool's requests waiting for a decoder slot.
    pub(crate) slots: Arc<SlotLine>,
    pub(crate) cores: usize,
    pub(crate) room: Arc<tokio::sync::Notify>,
    pub(crate) id: u64,
    pub(crate) video: Arc<OpenVideo>,
    /// The video from the next job on (see `Worker::serve` in the pool).
    pub(crate) latest: Arc<Mutex<Arc<OpenVideo>>>,
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) queued: Arc<AtomicUsize>,
    pub(crate) reported: Arc<Mutex<Option<Position>>>,
    pub(crate) config: PoolConfig,
    pub(crate) stats: Arc<EngineStats>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) buffers: Arc<BufferPool>,
}

/// Requests waiting for a decoder slot, in line by class and arrival: a slot that frees up goes
/// to the first of them ([`schedule::may_take_slot`]); while a click is among them, no backtrack
/// fill starts or goes on (a fill is a guess; the click is not).
#[derive(Debug, Default)]
pub(crate) struct SlotLine {
    tickets: Mutex<std::collections::BTreeSet<SlotTicket>>,
    next: std::sync::atomic::AtomicU64,
}

impl SlotLine {
    /// Stand in line with a request of `class` until the returned guard is dropped.
    pub(crate) fn join(self: &Arc<Self>, class: Class) -> (SlotTicket, impl Drop) {
        let ticket = SlotTicket { class, arrival: self.next.fetch_add(1, Ordering::Relaxed) };
        self.tickets.lock().insert(ticket);
        let line = self.clone();
        let guard = scopeguard(move || {
            line.tickets.lock().remove(&ticket);
        });
        (ticket, guard)
    }

    /// The first in line: the most urgent class, the longest waiting within it.
    pub(crate) fn first(&self) -> Option<SlotTicket> {
        self.tickets.lock().first().copied()
    }

    /// Interactive requests in line (they come first).
    fn clicks(&self) -> usize {
        self.tickets.lock().iter().take_while(|t| t.class == Class::Interactive).count()
    }
}

/// Decoders running work somebody waits for (a class above speculative), and the codec threads
/// they run on: adaptive codec threads ask whether any other decoder works, a fill whether a
/// core is free (a decoder working alone runs on every core).
#[derive(Debug, Default)]
pub(crate) struct Busy {
    decoders: AtomicUsize,
    threads: AtomicUsize,
}

impl Busy {
    pub(crate) fn decoders(&self) -> usize {
        self.decoders.load(Ordering::Acquire)
    }

    fn threads(&self) -> usize {
        self.threads.load(Ordering::Acquire)
    }
}

/// Counts a decoder and its codec threads as busy while a non-speculative job runs.
struct BusyGuard<'a> {
    busy: &'a Busy,
    threads: usize,
}

impl<'a> BusyGuard<'a> {
    fn enter(busy: &'a Busy, counts: bool, threads: usize) -> Option<BusyGuard<'a>> {
        counts.then(|| {
            busy.decoders.fetch_add(1, Ordering::AcqRel);
            busy.threads.fetch_add(threads, Ordering::AcqRel);
            BusyGuard { busy, threads }
        })
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.busy.decoders.fetch_sub(1, Ordering::AcqRel);
        self.busy.threads.fetch_sub(self.threads, Ordering::AcqRel);
    }
}

impl WorkerThread {
    pub(crate) fn run(mut self) {
        self.stats.open_decoders.inc();
        // Runs after the decoder (declared below, so dropped first) has closed.
        let _guard = scopeguard(|| {
            crate::engine::ffmpeg::release_freed_memory();
            self.stats.open_decoders.sub(1);
            self.alive.fetch_sub(1, Ordering::AcqRel);
            self.room.notify_waiters();
        });
        self.inbox.threads.enter();
        // Codec threads inherit the nice value of the thread that opens the codec: open it at
        // the priority of the first job's class.
        if let Some(class) = self.inbox.waiting() {
            self.inbox.set_priority(class);
        }
        let threads = self.codec_threads();
        let decoder = FrameDecoder::open(
            &self.video.id,
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
                self.inbox.dead.store(true, Ordering::Release);
                self.inbox.close();
                while let Some((job, _)) = self.inbox.take(|q| self.describe(q, None)) {
                    self.fail(job.work, &e);
                }
                return;
            }
        };
        self.inbox.threads.set_codec_threads(decoder.codec_thread_ids());
        while let Some((job, closing)) = self.inbox.take(|q| self.describe(q, Some(&decoder))) {
            // More of a file being indexed, for a job routed here for frames counted since.
            let latest = self.latest.lock().clone();
            if latest.counts_further(&self.video) {
                decoder.count_further(latest.index.clone());
                self.video = latest;
            }
            // A stream frame that waited too long runs this turn as interactive (see `aged`).
            let class = schedule::aged(job.class.get(), job.since.elapsed(), self.config.stream_max_wait);
            self.inbox.set_priority(class.min(job.cpu));
            let threads = self.codec_threads();
            decoder.set_threads(threads);
            // The job runs on the threads open now, or on the new count from its seek.
            let busy = BusyGuard::enter(&self.busy, class != Class::Speculative, threads.max(decoder.threads()));
            self.busy_threads.set(busy.as_ref().map_or(0, |b| b.threads));
            let Queued { seq, class: cell, cpu, work, .. } = job;
            if closing && self.inbox.evicted() {
                self.give_back(work);
                continue;
            }
            if matches!(work, Work::Frame(_)) {
                self.cancel_fills();
            }
            // Frames of a fill are registered in flight: should the decoder panic, their
            // waiters must hear of it too.
            let filling = match &work {
                Work::Fill { frames, spec } => Some((frames.clone(), *spec)),
                _ => None,
            };
            let run = std::panic::AssertUnwindSafe(|| match work {
                Work::Frame(job) => self.frame(&mut decoder, job, class, closing),
                Work::Ahead { until, spec } => {
                    if closing {
                        None
                    } else {
                        self.read_one_ahead(&mut decoder, until, spec, class)
                    }
                }
                Work::Fill { frames, spec } => self.fill_one(&mut decoder, frames, spec, closing, &cell),
                Work::Pass(pass, reply) => self.pass_some(&mut decoder, pass, reply, (class, cell.get())),
            });
            let more = match std::panic::catch_unwind(run) {
                Ok(more) => more,
                Err(panic) => {
                    self.panicked(panic, filling);
                    return;
                }
            };
            *self.reported.lock() = decoder.position();
            // A seek may have opened the codec again, on new threads.
            self.inbox.threads.set_codec_threads(decoder.codec_thread_ids());
            if let Some(work) = more {
                self.inbox.requeue(Queued { seq, class: cell, cpu, work, since: Instant::now() });
            }
        }
    }

    /// This thread's decoder panicked (a bug): the job's requests were answered INTERNAL by
    /// their replies; answer the fill's, log and count it, and hand every queued job back to be
    /// routed to another decoder. The thread then exits and the pool drops this decoder.
    fn panicked(&self, panic: Box<dyn std::any::Any + Send>, filling: Option<(VecDeque<FrameIndex>, OutputSpec)>) {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        tracing::error!(video = %self.video.name, decoder = self.id, panic = %message, "a decoder panicked; it is replaced");
        self.stats.panics.inc();
        if let Some((frames, spec)) = filling {
            let error = EngineError::Panicked { video: self.video.name.clone(), what: "the decoder" };
            for i in frames {
                self.registry.fail(&self.video, &spec, i, error.clone());
            }
        }
        self.inbox.dead.store(true, Ordering::Release);
        self.inbox.close();
        while let Some((job, _)) = self.inbox.take(|q| self.describe(q, None)) {
            self.fail(job.work, &EngineError::Preempted);
        }
    }

    /// [`schedule::fill_may_run`] for this decoder. `counted`: this decoder is running work
    /// somebody waits for, so the busy count includes its codec threads; the cores taken are
    /// those of the decoders busy elsewhere.
    fn fill_may_run(&self, counted: bool) -> bool {
        let waiting = self.slots.clicks();
        let mine = if counted { self.busy_threads.get() } else { 0 };
        schedule::fill_may_run(self.busy.threads().saturating_sub(mine), waiting, self.cores)
    }

    /// Codec threads for this decoder's next job: every core when no other decoder works.
    /// Asked before the job counts this decoder as busy.
    fn codec_threads(&self) -> usize {
        schedule::codec_threads(self.config.threads, self.busy.decoders(), self.cores)
    }

    /// What the scheduler needs to know of a queued job, given where the decoder stands.
    fn describe(&self, job: &Queued, decoder: Option<&FrameDecoder>) -> Candidate {
        let index = &self.video.index;
        let position = decoder.and_then(|d| d.position());
        let target = match &job.work {
            Work::Frame(j) => j.target,
            Work::Fill { frames, .. } => frames.front().copied().unwrap_or(FrameIndex(0)),
            Work::Pass(pass, _) => pass.frames.front().copied().unwrap_or(FrameIndex(0)),
            Work::Ahead { until, .. } => {
                position.and_then(|p| p.last_output).map(|l| FrameIndex(l.0 + 1)).unwrap_or(*until)
            }
        };
        let gop = index.frame(target).map(|f| f.seek).unwrap_or(crate::engine::index::SeekTarget::Start);
        let reachable = plan::plan(index, position, target, self.config.decode.continue_slack) == Plan::Continue;
        let class = schedule::aged(job.class.get(), job.since.elapsed(), self.config.stream_max_wait);
        Candidate { class, seq: job.seq, target, gop, reachable }
    }

    /// The decoder is wanted for a request: drop the fills nobody waits for yet (their frames
    /// are forgotten, so a later step back is a cold request of its own); frames somebody
    /// started waiting for in the meantime stay, as an interactive fill.
    fn cancel_fills(&self) {
        for (frames, spec) in self.inbox.take_fills() {
            let waited: VecDeque<FrameIndex> =
                frames.into_iter().filter(|&i| self.registry.release(&self.video, &spec, i)).collect();
            if !waited.is_empty() {
                self.inbox.push(Arc::new(ClassCell::new(Class::Interactive)), Work::Fill { frames: waited, spec });
            }
        }
    }

    /// This decoder was closed for more urgent work: hand back every request a job stands for,
    /// to be submitted again elsewhere (or here again, once room allows).
    fn give_back(&self, work: Work) {
        if matches!(work, Work::Frame(_)) {
            self.stats.preempted.inc();
        }
        self.fail(work, &EngineError::Preempted);
    }

    /// Answer every request a job stands for with `error` (the decoder could not open, or was
    /// closed for more urgent work: [`EngineError::Preempted`] makes the requests resubmit).
    fn fail(&self, work: Work, error: &EngineError) {
        match work {
            Work::Frame(job) => self.job_done(|| job.reply.send(Err(error.clone()))),
            Work::Fill { frames, spec } => {
                for i in frames {
                    self.registry.fail(&self.video, &spec, i, error.clone());
                }
            }
            Work::Pass(pass, reply) => self.job_done(|| reply.send(pass, Err(error.clone()))),
            Work::Ahead { .. } => {}
        }
    }

    /// Frames of a pass until it is done or more urgent work waits (the pass then goes back in
    /// line with its progress). Returns the pass when it yielded. `classes`: the class of this
    /// turn and the pass's own. They differ for a stream segment's lane that waited long enough
    /// to be taken as interactive ([`schedule::aged`]): it then decodes one frame as
    /// interactive, and yields to clicks again from the next one on, as a stream frame would.
    fn pass_some(
        &self,
        decoder: &mut FrameDecoder,
        pass: Pass,
        reply: PassReplyOnce,
        classes: (Class, Class),
    ) -> Option<Work> {
        decoder.set_luma(pass.luma);
        // A stream segment's frames go to the cache (`segments`), with the planes it keeps; a
        // bulk pass's (hashes, clips) are never cached.
        decoder.set_planes(classes.1 == Class::Stream);
        let more = self.pass_frames(decoder, pass, reply, classes);
        decoder.set_luma(Luma::Off);
        decoder.set_planes(true);
        more
    }

    fn pass_frames(
        &self,
        decoder: &mut FrameDecoder,
        mut pass: Pass,
        reply: PassReplyOnce,
        (mut class, own): (Class, Class),
    ) -> Option<Work> {
        let inbox = &self.inbox;
        loop {
            let Some(&next) = pass.frames.front() else {
                self.job_done(|| reply.send(pass, Ok(())));
                return None;
            };
            if let Some(ready) = &pass.ready {
                while !ready() {
                    if inbox.must_yield(class) {
                        return Some(Work::Pass(pass, reply));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
            // Frames that come out beyond the target in the same decode step wait in the
            // decoder's look-ahead for the next call: nothing to keep on the side.
            match decoder.frame_keeping(next, &pass.spec, 0, &mut |_| {}, &mut || inbox.must_yield(class)) {
                Ok(None) => return Some(Work::Pass(pass, reply)),
                Ok(Some(frame)) => {
                    pass.frames.pop_front();
                    class = own;
                    if !(pass.sink)(frame) {
                        pass.frames.clear();
                        self.job_done(|| reply.send(pass, Ok(())));
                        return None;
                    }
                }
                Err(e) => {
                    self.job_done(|| reply.send(pass, Err(e)));
                    return None;
                }
            }
            if inbox.must_yield(class) {
                return Some(Work::Pass(pass, reply));
            }
        }
    }

    /// A request's frame. Returns the job when it yielded to more urgent work.
    fn frame(&self, decoder: &mut FrameDecoder, job: Job, class: Class, closing: bool) -> Option<Work> {
        tracing::trace!(video = %self.video.name, decoder = self.id, target = job.target.0, class = class.name(), "job");
        let registry = &self.registry;
        let video = &self.video;
        let spec = job.spec.as_raw();
        crate::engine::faults::check(&video.name, job.target.0);
        if let Some(frame) = registry.cached(video, &spec, job.target) {
            self.job_done(|| job.reply.send(frame));
            return None;
        }
        if registry.abandoned(video, &spec, job.target) {
            tracing::debug!(video = %video.name, target = job.target.0, "dropped a job nobody waits for");
            self.stats.abandoned.inc();
            self.job_done(|| {});
            return None;
        }
        // Answer first: a decoder that must seek goes to the target as fast as the reference
        // chain allows (keeping nothing, so non-reference frames before it are skipped); the
        // window behind it is filled afterwards. One already positioned keeps the window on the
        // way, which costs only conversions. Both only while a core is free (`fill_may_run`).
        let continuing = plan::plan(&video.index, decoder.position(), job.target, self.config.decode.continue_slack)
            == Plan::Continue;
        let window = schedule::window_depth(job.keep_behind, registry.speculative_room(video, spec));
        let keep = if continuing && self.fill_may_run(true) { window } else { 0 };
        let keep = keep.max(self.waited_on_the_way(decoder, job.target, &spec, continuing));
        let inbox = &self.inbox;
        // Frames after the target (several come out of one decode step) are what a sequential
        // reader asks for next: cached as converted, so its next step costs no conversion.
        let target = job.target;
        let side = &mut |f: RawFrame| {
            let f = if f.index > target { RawFrame { planes: None, ..f } } else { f };
            registry.side_frame(video, &spec, f)
        };
        let result = decoder.frame_keeping(job.target, &spec, keep, side, &mut || inbox.must_yield(class));
        let Some(result) = result.transpose() else {
            return Some(Work::Frame(job));
        };
        // The window to fill, registered in flight before the answer leaves, so a client that
        // steps back at once waits for the fill rather than starting a cold decode of its own.
        let fill = if class == Class::Interactive && window > 0 && result.is_ok() && !closing && self.fill_may_run(true)
        {
            self.reserve_fill(job.target, window, &spec)
        } else {
            None
        };
        *self.reported.lock() = decoder.position();
        self.job_done(|| job.reply.send(result));
        if let Some((frames, cell)) = fill {
            self.inbox.push(cell, Work::Fill { frames: frames.into(), spec });
        }
        None
    }

    /// How many frames behind `target` to keep so that the frames before it that requests wait
    /// for, and that the decode to `target` passes, come out with it: requests queued here
    /// behind it or on no decoder yet, such as the earlier frames of a stream that waited for a
    /// decoder slot
    /// (they retry in no particular order, and a decoder opened for a later one would otherwise
    /// seek back for each earlier one afterwards). A continuing decode passes the frames after
    /// the last one output; a seek, those that decode from the same seek point as `target`.
    fn waited_on_the_way(
        &self,
        decoder: &FrameDecoder,
        target: FrameIndex,
        spec: &OutputSpec,
        continuing: bool,
    ) -> u32 {
        let frames = &self.video.index.frames;
        let last = decoder.position().and_then(|p| p.last_output);
        // A sequential reader's next frame (a stream's every frame): nothing lies between, so
        // the in-flight map is not scanned.
        if continuing && last.is_some_and(|l| l.0 + 1 >= target.0) {
            return 0;
        }
        let passed = |i: FrameIndex| match (continuing, last) {
            (true, Some(last)) => i > last,
            _ => frames[i.get()].seek == frames[target.get()].seek,
        };
        self.registry
            .earliest_waited(&self.video, spec, (target, self.id), passed)
            .map_or(0, |first| target.0 - first.0)
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
            |i| self.registry.has_frame(&self.video, spec, i),
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
        let frames = self.registry.reserve(&self.video, spec, &window, promote);
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
        let registry = &self.registry;
        let video = &self.video;
        if closing || (cell.get() == Class::Speculative && !self.fill_may_run(false)) {
            // Only what somebody waits for is still decoded.
            frames.retain(|&i| registry.release(video, &spec, i));
        }
        // Frames that came out on the way (a decode step outputs several) are done.
        while frames.front().is_some_and(|&i| registry.is_cached(video, &spec, i)) {
            frames.pop_front();
        }
        let next = *frames.front()?;
        let class = cell.get();
        let inbox = &self.inbox;
        // A fill nobody waits for also stops at its next decode step when a core stops being
        // free (a click on another decoder), and is dropped on its next turn above.
        let result = decoder.frame_keeping(next, &spec, 0, &mut |f| registry.side_frame(video, &spec, f), &mut || {
            inbox.must_yield(class) || (cell.get() == Class::Speculative && !self.fill_may_run(false))
        });
        match result {
            Ok(None) => {}
            Ok(Some(frame)) => {
                frames.pop_front();
                registry.side_frame(video, &spec, frame);
            }
            Err(e) => {
                for i in frames.drain(..) {
                    registry.fail(video, &spec, i, e.clone());
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
        crate::engine::faults::check(&self.video.name, next.0);
        let raw = spec.as_raw();
        let registry = &self.registry;
        let video = &self.video;
        let inbox = &self.inbox;
        // Read ahead for a sequential reader, whose next step should cost no conversion: the
        // frames are cached as converted, not as planes.
        decoder.set_planes(false);
        // Frames that come out beside the target (frame threads can hand over two in one step)
        // are read ahead too: a fault armed for one fires there.
        let mut side = |f: RawFrame| {
            crate::engine::faults::check(&video.name, f.index.0);
            registry.side_frame(video, &raw, f)
        };
        let result = decoder.frame_keeping(next, &raw, 0, &mut side, &mut || inbox.must_yield(class));
        decoder.set_planes(true);
        match result {
            Ok(Some(f)) => registry.side_frame(video, &raw, f),
            Ok(None) => {}
            Err(_) => return None,
        }
        (next < until).then_some(Work::Ahead { until, spec })
    }
}

/// Runs a closure when dropped (the thread's exit path, however it exits).
pub(crate) fn scopeguard<F: FnMut()>(f: F) -> impl Drop {
    struct Guard<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Guard<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    Guard(f)
}
