//! The frame store: what the gRPC service (or any Rust caller) talks to.
//!
//! It opens the video a client names ([`opened`](super::opened): resolved inside the media
//! roots, indexed once, shared by concurrent first requests), and answers frame requests from
//! the byte-bounded cache or by sending a job to the decoder pool. Concurrent requests for the
//! same missing frame wait for one decode: the first registers the frame as in flight, later
//! ones queue behind it, and the decoder thread itself completes them all, so a client that
//! gives up does not strand the others. PNG and JPEG are encoded from the cached raw pixels on the blocking pool.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::{self, Stream, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::engine::budget::{Budget, Paid};
use crate::engine::buffers::BufferPool;
use crate::engine::cache::{Admission, CacheStats};
use crate::engine::clip::{self, ClipChunk};
use crate::engine::decoder::RawFrame;
use crate::engine::dups;
pub use crate::engine::ffmpeg::ClipCodec;
use crate::engine::fingerprints::Fingerprints;
use crate::engine::hashes::HashTable;
use crate::engine::index_store::StateDir;
use crate::engine::opened::{Opener, VideoSlot, Videos};
use crate::engine::output::{self, Encoding, OutputSpec};
use crate::engine::pool::{DecoderPool, OpenVideo, PoolConfig, SubmitError, VideoId};
pub use crate::engine::registry::{CachedFrame, Frame, FrameMeta};
use crate::engine::registry::{FrameKey, InFlight, Registry, Stored};
use crate::engine::schedule::{self, Class, ClassCell, SlotTicket};
use crate::engine::segments;
pub use crate::engine::selection::{Selection, SelectionError, Target};
use crate::engine::stats::EngineStats;
use crate::engine::storyboard::{self, Layout};
use crate::engine::turns::Turns;
use crate::engine::video::{self, Follows};
use crate::engine::EngineError;
use crate::error::Error;
use crate::media_roots::MediaRoots;
use crate::units::{ByteSize, FrameIndex};

/// Everything a store needs to know, from config.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub cache_size: ByteSize,
    pub max_open_videos: usize,
    pub pool: PoolConfig,
    /// Frames requested ahead of the one being sent in a batch.
    pub batch_lookahead: usize,
    /// Split a long stream on an idle daemon into segments on parallel decoders
    /// ([`segments`](crate::engine::segments)).
    pub parallel_streams: bool,
    /// Spare pixel buffers kept for reuse.
    pub buffer_pool: ByteSize,
    /// Longest a request waits for a decoder slot before RESOURCE_EXHAUSTED.
    pub decoder_wait: std::time::Duration,
    /// Bytes of frames handed to responses and not yet taken by the transport (0: unbounded).
    pub inflight: ByteSize,
    /// Where computed tables (frame hashes) are kept across restarts; `None`: memory only.
    pub state_dir: Option<std::path::PathBuf>,
    /// Bound on the bytes the state directory holds (least recently used files go first).
    pub state_max_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct StoreStats {
    pub cache: CacheStats,
    pub open_decoders: u64,
    pub seeks: u64,
    pub frames_decoded: u64,
    pub abandoned: u64,
    pub preempted: u64,
    /// Requests that waited on a decode already under way (counted among the misses too).
    pub joined: u64,
    /// Segments of streams decoded on parallel decoders.
    pub stream_segments: u64,
    /// Bytes of frames paid for by responses in flight.
    pub inflight_bytes: u64,
    pub videos_indexed: u64,
    /// Videos being opened now (their index read or built; requests for them wait).
    pub videos_indexing: u64,
    pub requests: u64,
    /// Time spent building indexes, in seconds, and indexes read back from the state directory.
    pub index_build_s: f64,
    pub index_loads: u64,
    /// Decoders running non-speculative work, and jobs queued on all decoders.
    pub decoders_busy: u64,
    pub queued_jobs: u64,
    /// Panics caught (bugs): in decoder threads, index builds, encoders.
    pub panics: u64,
}

/// A decode request as the pool sees it, able to submit itself again from anywhere: when no
/// decoder has room it waits for one on a task of its own (so that every request waiting for
/// the frame is answered even if the one that asked first is cancelled), and when a decoder
/// closed for more urgent work gives the job back it is submitted again.
#[derive(Clone)]
struct Submission {
    pool: Arc<DecoderPool>,
    registry: Arc<Registry>,
    video: Arc<OpenVideo>,
    key: FrameKey,
    keep_behind: Option<u32>,
    /// The job's class, raised when a more urgent request joins it (see [`FrameStore::raw`]).
    class: Arc<ClassCell>,
    /// Longest wait for a decoder slot before RESOURCE_EXHAUSTED.
    patience: std::time::Duration,
    /// Decoder threads answer through [`Submission::reply`]; a job given back is resubmitted
    /// from there, outside the runtime.
    runtime: tokio::runtime::Handle,
}

impl Submission {
    /// The decoder's answer: cache the frame and wake the waiters, or submit again.
    fn reply(&self) -> crate::engine::pool::Reply {
        let this = self.clone();
        Box::new(move |result: Result<RawFrame, EngineError>| match result {
            Err(EngineError::Preempted) => this.submit(),
            result => {
                let result = result.map(|raw| Registry::cached_from_raw(&this.video, &raw));
                this.registry.complete(this.key.clone(), result);
            }
        })
    }

    fn submit(self) {
        if let Some(reply) = self.try_submit(self.reply(), None) {
            let runtime = self.runtime.clone();
            runtime.spawn(self.wait_for_room(reply));
        }
    }

    /// One attempt: sent, or refused as overload (which answers the waiters), or no room yet
    /// (the reply comes back to try again); nothing to do once the frame is answered.
    fn try_submit(
        &self,
        reply: crate::engine::pool::Reply,
        ticket: Option<SlotTicket>,
    ) -> Option<crate::engine::pool::Reply> {
        // Answered while it waited (a decoder passing it on the way to another frame kept it).
        if !self.registry.inflight.lock().contains_key(&self.key) {
            return None;
        }
        let (index, spec) = (self.key.index, self.key.spec);
        match self.pool.submit(&self.video, index, spec, self.keep_behind, (self.class.clone(), ticket), reply) {
            Ok(decoder) => {
                self.registry.routed(&self.key, Some(decoder));
                None
            }
            Err(SubmitError::Overloaded(e)) => {
                self.registry.complete(self.key.clone(), Err(e));
                None
            }
            Err(SubmitError::NoRoom(back)) => {
                self.registry.routed(&self.key, None);
                Some(back)
            }
        }
    }

    async fn wait_for_room(self, mut reply: crate::engine::pool::Reply) {
        if let Some(delay) = crate::engine::faults::waiting_delay(&self.video.name, self.key.index.0) {
            tokio::time::sleep(delay).await;
        }
        let (ticket, _waiting) = self.pool.waiting_for_room(self.class.get());
        let room = self.pool.room();
        let started = tokio::time::Instant::now();
        let deadline = started + self.patience;
        loop {
            let notified = room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_submit(reply, Some(ticket)) {
                None => {
                    let waited_ms = started.elapsed().as_millis() as u64;
                    tracing::debug!(video = %self.video.name, index = self.key.index.0, waited_ms, "had a decoder slot");
                    return;
                }
                Some(back) => reply = back,
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let e = EngineError::Overloaded {
                    what: format!("no decoder became free within {:.0}s", self.patience.as_secs_f64()),
                };
                return self.registry.complete(self.key, Err(e));
            }
            let _ = tokio::time::timeout((deadline - now).min(std::time::Duration::from_millis(100)), notified).await;
        }
    }
}

/// A stream following a decode pass has the pass keep at most this share of
/// `limits.inflight_bytes` of converted frames for it ([`video::Following`]): 32 MiB by default,
/// more than a hand-over's worth at the sizes data loaders ask for (a quarter of a second of
/// 480x270 at 300 frames/s is 29 MiB), and a bound when the stream's client reads slower than
/// the pass counts.
const FOLLOWING_SHARE: u64 = 4;

/// The room a stream following a decode pass has, out of `inflight` bytes (0: unbounded, as
/// though the default).
fn following_room(inflight: u64) -> u64 {
    match inflight {
        0 => crate::config::LimitsConfig::default().inflight_bytes.0 / FOLLOWING_SHARE,
        bytes => bytes / FOLLOWING_SHARE,
    }
}

/// The frames a decode pass kept for the stream following it among those `video` counts, put in
/// the cache, where the stream's requests for them find them ([`video::Following`]).
fn cache_kept(follows: &Follows, video: &OpenVideo, registry: &Registry) {
    for frame in follows.take(video.index.frame_count()) {
        registry.side_frame(video, &follows.spec(), frame);
    }
}

/// What [`FrameStore::open_for`] opened for a selection.
pub enum ForSelection {
    /// The video's whole index.
    Whole(Arc<OpenVideo>),
    /// The frames counted so far of a file being indexed, for [`FrameStore::frames_as_counted`].
    Counting(Counting),
}

/// A selection of a file being indexed, opened with the frames counted so far and the part of
/// the selection they hold.
pub struct Counting {
    slot: Arc<VideoSlot>,
    selection: Selection,
    max: usize,
    /// The frames the pass converts for the stream as it counts them, and the cache they go to.
    follows: Follows,
    registry: Arc<Registry>,
    video: Arc<OpenVideo>,
    part: Vec<FrameIndex>,
}

impl Counting {
    /// The frames counted so far when it was opened.
    pub fn counted(&self) -> &Arc<OpenVideo> {
        &self.video
    }
}

/// Where a stream of a file being indexed ([`FrameStore::frames_as_counted`]) is.
enum Step {
    /// A part to deliver, from `video`, after the `done` frames before it.
    Part { done: usize, video: Arc<OpenVideo>, part: Vec<FrameIndex> },
    /// The next part to wait for, after `done` frames.
    Next { done: usize },
}

pub struct FrameStore {
    /// Recently requested frames per video and spec, to recognise sequential readers.
    recent: Mutex<HashMap<(VideoId, OutputSpec), std::collections::VecDeque<FrameIndex>>>,
    config: StoreConfig,
    registry: Arc<Registry>,
    pool: Arc<DecoderPool>,
    stats: Arc<EngineStats>,
    budget: Budget,
    fingerprints: Fingerprints,
    videos: Videos,
}

/// A storyboard: the grid as JPEG, its layout and the frame each tile shows.
#[derive(Debug, Clone)]
pub struct StoryboardImage {
    pub jpeg: bytes::Bytes,
    pub layout: Layout,
    /// Per tile: the frame it shows and that frame's time.
    pub tiles: Vec<(FrameIndex, f64)>,
}

impl FrameStore {
    pub fn new(roots: MediaRoots, config: StoreConfig) -> FrameStore {
        crate::engine::ffmpeg::init();
        let stats = Arc::new(EngineStats::default());
        let buffers = BufferPool::new(config.buffer_pool);
        let registry = Arc::new(Registry::new(config.cache_size, buffers.clone()));
        let pool = Arc::new(DecoderPool::new(config.pool, stats.clone(), registry.clone(), buffers.clone()));
        let fingerprints = Fingerprints::new(pool.clone(), config.state_dir.clone(), config.pool.max_per_video);
        let budget = Budget::new(config.inflight);
        let opener = Opener::new(
            StateDir { dir: config.state_dir.clone(), max_bytes: config.state_max_bytes },
            stats.clone(),
            Turns::new(video::passes_at_once()),
            pool.cpu_priorities().then(|| Class::Bulk.nice()),
            buffers,
        );
        FrameStore {
            recent: Mutex::new(HashMap::new()),
            videos: Videos::new(roots, opener, config.max_open_videos),
            config,
            registry,
            pool,
            stats,
            budget,
            fingerprints,
        }
    }

    pub fn roots(&self) -> &MediaRoots {
        self.videos.roots()
    }

    /// Open (index, on first use) the video a client names, for work of `class` (while it
    /// waits for a decode pass, the pass runs at that priority: [`schedule::pass_nice`]).
    pub async fn open(&self, name: &str, class: Class) -> Result<Arc<OpenVideo>, Error> {
        let slot = self.videos.slot(name).await?;
        Ok(slot.open(class).await?)
    }

    /// Open the video a client names for its frame `frame` alone. While a file without
    /// timestamps is indexed by a decode pass, that is the frames the pass has counted once it
    /// has counted that far ([`video::Progress::counted_so_far`]): an hour of camera footage shows its
    /// first frames in a second rather than after minutes.
    pub async fn open_through(&self, name: &str, frame: u64, class: Class) -> Result<Arc<OpenVideo>, Error> {
        let slot = self.videos.slot(name).await?;
        Ok(slot.through(frame, class).await?.0)
    }

    /// Open the video a client names as far as it is indexed: while a file without timestamps
    /// is being indexed by a decode pass, the frames the pass has counted (at least one), with
    /// `true`. What a page showing a long camera file while it is indexed asks for.
    pub async fn open_so_far(&self, name: &str) -> Result<(Arc<OpenVideo>, bool), Error> {
        let slot = self.videos.slot(name).await?;
        let shown = slot.progress().frames_shown() as u64;
        Ok(slot.through(shown.saturating_sub(1), Class::Interactive).await?)
    }

    /// Open the video a client names for `selection` (at most `max` frames). A selection of
    /// frames counted from the start ([`Selection::first_counted`]) of a file being indexed by
    /// a decode pass does not wait for the whole index: it is opened once the pass has counted
    /// its first frame, and [`FrameStore::frames_as_counted`] streams it as the pass goes on (a
    /// data loader reading a camera file from its start), its frames in `spec` converted by the
    /// pass as it counts them ([`video::Following`]). Stream work.
    pub async fn open_for(
        &self,
        name: &str,
        selection: &Selection,
        max: usize,
        spec: OutputSpec,
    ) -> Result<ForSelection, Error> {
        let Some(first) = selection.first_counted() else {
            return Ok(ForSelection::Whole(self.open(name, Class::Stream).await?));
        };
        let slot = self.videos.slot(name).await?;
        // Before the first frame is counted, so that the pass converts it too; to the raw frame
        // an encoded one is made from, cached where a request for it looks
        // ([`FrameStore::frame`]).
        let follows =
            slot.progress().follow(spec.as_raw(), selection.selects(), following_room(self.config.inflight.0));
        let (video, so_far) = slot.through(first, Class::Stream).await?;
        if !so_far {
            return Ok(ForSelection::Whole(video));
        }
        let part = selection.counted_part(0, video.index.frame_count() as u64, max)?;
        let registry = self.registry.clone();
        Ok(ForSelection::Counting(Counting { slot, selection: selection.clone(), max, follows, registry, video, part }))
    }

    /// The frames of a selection opened while its file is indexed ([`FrameStore::open_for`]),
    /// each once the decode pass has counted it, in order. `send` streams a part of them from
    /// the frames counted so far (the video it is given); when that part is delivered the next
    /// one starts from the frames counted by then, and the whole index serves the rest. The
    /// decoder of a part goes on into the next without a seek ([`OpenVideo::decodes_like`]). A
    /// range past the end of the file is found out when the pass ends: its frames up to the
    /// end are delivered, then `OUT_OF_RANGE`.
    pub fn frames_as_counted<S>(
        counting: Counting,
        send: impl Fn(Arc<OpenVideo>, Vec<FrameIndex>) -> S + Send + Sync + 'static,
    ) -> impl Stream<Item = Result<Frame, Error>> + Send + 'static
    where
        S: Stream<Item = Result<Frame, EngineError>> + Send + 'static,
    {
        let Counting { slot, selection, max, follows, registry, video, part } = counting;
        let (send, follows) = (Arc::new(send), Arc::new(follows));
        let parts = stream::unfold(Some(Step::Part { done: 0, video, part }), move |step| {
            let (slot, selection, send) = (slot.clone(), selection.clone(), send.clone());
            let (follows, registry) = (follows.clone(), registry.clone());
            async move {
                match step? {
                    Step::Part { done, video, part } => {
                        // What the pass converted of these frames is served from the cache.
                        cache_kept(&follows, &video, &registry);
                        let done = done + part.len();
                        let next = selection.needed_after(done).map(|_| Step::Next { done });
                        Some((send(video, part).map_err(Error::from).boxed(), next))
                    }
                    // Once a part is delivered: the frames counted by then, or with the whole
                    // index the rest of the selection (a range past the end of the file fails
                    // after the frames up to it).
                    Step::Next { done } => {
                        let needed = selection.needed_after(done)?;
                        let next = async {
                            let (video, so_far) = slot.through(needed, Class::Stream).await?;
                            let part = selection.counted_part(done, video.index.frame_count() as u64, max)?;
                            let past_end =
                                if so_far { None } else { selection.resolve(&video.name, &video.index, max).err() };
                            Ok::<_, Error>((video, part, so_far, past_end))
                        };
                        match next.await {
                            Ok((video, part, true, _)) => {
                                Some((stream::empty().boxed(), Some(Step::Part { done, video, part })))
                            }
                            Ok((video, rest, false, past_end)) => {
                                cache_kept(&follows, &video, &registry);
                                let failed = stream::iter(past_end.map(|e| Err(e.into())));
                                Some((send(video, rest).map_err(Error::from).chain(failed).boxed(), None))
                            }
                            Err(e) => Some((stream::once(async move { Err(e) }).boxed(), None)),
                        }
                    }
                }
            }
        });
        parts.flatten()
    }

    /// How far the opening of the video a client calls `name` has got, while it is being opened
    /// (its first request came and its index is not ready): what a request that ran out of time
    /// was waiting for.
    pub fn indexing(&self, name: &str) -> Option<String> {
        self.videos.indexing(name)
    }

    /// The frame a target points at, clamped to the video or an OUT_OF_RANGE error.
    pub fn resolve(&self, video: &OpenVideo, target: Target, clamp: bool) -> Result<FrameIndex, EngineError> {
        target.resolve(&video.name, &video.index, clamp)
    }

    /// The frames a selection selects, checked against the video and at most `max` of them.
    pub fn select(
        &self,
        video: &OpenVideo,
        selection: &Selection,
        max: usize,
    ) -> Result<Vec<FrameIndex>, SelectionError> {
        selection.resolve(&video.name, &video.index, max)
    }

    /// One frame in the requested output, for a request of class `class` (a unary request is
    /// interactive, a stream's frames are stream work). `keep_behind`: how many frames before the
    /// target a cold decode keeps cached for stepping back (`None`: the configured default).
    pub async fn frame(
        &self,
        video: &Arc<OpenVideo>,
        index: FrameIndex,
        spec: OutputSpec,
        class: Class,
        keep_behind: Option<u32>,
    ) -> Result<Frame, EngineError> {
        let paid = self.pay(video, spec, class).await;
        let frame = self.produce(video, index, spec, class, keep_behind).await?;
        Ok(Frame { data: Budget::hold(frame.data, paid), ..frame })
    }

    /// A frame as `video`'s index describes it. Why: a frame cached while its file was being
    /// indexed was described by the frames counted then (the last one counted lasted as long as
    /// the median interval, its next frame not shown yet), and is served again by the whole
    /// index, whose description is the one that stays.
    fn described(video: &OpenVideo, frame: Frame) -> Frame {
        let Some(entry) = video.index.frame(frame.meta.index) else { return frame };
        let (pts, time_s, duration_s, key_frame) = (entry.pts.0, entry.time_s, entry.duration_s, entry.key);
        let meta = FrameMeta { pts, time_s, duration_s, key_frame, ..frame.meta };
        Frame { meta, ..frame }
    }

    /// Pay for a frame before it exists, in its raw size (an upper bound for PNG and JPEG); the
    /// payment is returned when the transport drops the bytes. Past `limits.inflight_bytes`
    /// stream work waits; a unary request is counted but never waits behind slow stream readers.
    async fn pay(&self, video: &OpenVideo, spec: OutputSpec, class: Class) -> Paid {
        let size = video.frame_bytes(spec);
        match class {
            Class::Interactive => self.budget.pay_now(size),
            _ => self.budget.pay(size).await,
        }
    }

    /// One frame, from the cache or decoded, described by `video` ([`FrameStore::described`]).
    async fn produce(
        &self,
        video: &Arc<OpenVideo>,
        index: FrameIndex,
        spec: OutputSpec,
        class: Class,
        keep_behind: Option<u32>,
    ) -> Result<Frame, EngineError> {
        let frame = async {
            self.stats.requests.inc();
            // Streams queue their own look-ahead (and know where they end): read-ahead is for
            // clients reading frame by frame with unary requests.
            if class == Class::Interactive {
                self.note_access(video, index, spec.as_raw(), class);
            }
            let key = FrameKey { video: video.id.clone(), index, spec };
            if let Some(hit) = self.registry.cache.get(&key) {
                let hit = self.unpack(video, hit).await?;
                return Ok(Frame { meta: hit.meta, data: hit.data, cache_hit: true });
            }
            if spec.encoding == Encoding::Raw {
                let (frame, hit) = self.raw(video, index, spec, class, keep_behind).await?;
                return Ok(Frame { meta: frame.meta, data: frame.data, cache_hit: hit });
            }
            let (raw, hit) = self.raw(video, index, spec.as_raw(), class, keep_behind).await?;
            let encoded = self.encode(video, raw, spec).await?;
            Ok(Frame { meta: encoded.meta, data: encoded.data, cache_hit: hit })
        };
        frame.await.map(|frame| Self::described(video, frame))
    }

    /// A cached frame as clients get it: planes the cache keeps are converted on a blocking
    /// thread (a fraction of a millisecond per frame, CPU work all the same).
    async fn unpack(&self, video: &OpenVideo, hit: Stored) -> Result<CachedFrame, EngineError> {
        if !hit.converts() {
            return hit.unpack(&video.name, &self.registry.buffers);
        }
        let (name, buffers) = (video.name.clone(), self.registry.buffers.clone());
        tokio::task::spawn_blocking(move || hit.unpack(&name, &buffers)).await.map_err(EngineError::joined(
            &self.stats,
            &video.name,
            "the pixel converter",
        ))?
    }

    /// A raw frame encoded as `spec` asks (PNG or JPEG), on a blocking thread, and cached.
    async fn encode(&self, video: &OpenVideo, raw: CachedFrame, spec: OutputSpec) -> Result<CachedFrame, EngineError> {
        let key = FrameKey { video: video.id.clone(), index: raw.meta.index, spec };
        let video_name = video.name.clone();
        let encoded = tokio::task::spawn_blocking(move || {
            let raw_spec =
                output::RawSpec { pixel_format: raw.meta.pixel_format, width: raw.meta.width, height: raw.meta.height };
            output::encode(&raw.data, raw_spec, spec.encoding, spec.jpeg_quality).map(|data| CachedFrame {
                meta: FrameMeta { encoding: spec.encoding, ..raw.meta },
                data,
                planes: None,
            })
        })
        .await
        .map_err(EngineError::joined(&self.stats, &video_name, "the image encoder"))?
        .map_err(|e| EngineError::EncodeFailed { video: video_name, reason: e.to_string() })?;
        self.registry.cache.insert(key, Stored::new(&encoded), Admission::Requested);
        Ok(encoded)
    }

    /// Remember the access; when it continues an earlier one (frame i after i-1), ask the pool
    /// to read ahead. Several readers of one video are told apart by keeping a few positions.
    fn note_access(&self, video: &Arc<OpenVideo>, index: FrameIndex, spec: OutputSpec, class: Class) {
        /// Sequential readers of one video (and output spec) told apart.
        const READERS: usize = 16;
        let sequential = {
            let mut recent = self.recent.lock();
            if recent.len() > 4096 {
                recent.clear();
            }
            let positions = recent.entry((video.id.clone(), spec)).or_default();
            let previous = index.0.checked_sub(1).and_then(|p| positions.iter().position(|&q| q.0 == p));
            if let Some(i) = previous {
                positions.remove(i);
            } else if positions.len() == READERS {
                positions.pop_front();
            }
            positions.push_back(index);
            previous.is_some()
        };
        if sequential {
            self.pool.read_ahead(video, index, spec, class);
        }
    }

    /// Raw pixels from the cache, or decoded once however many ask at the same time. A frame
    /// whose decode was given back (its decoder was closed for more urgent work while a fill
    /// was producing it) is asked for again.
    async fn raw(
        &self,
        video: &Arc<OpenVideo>,
        index: FrameIndex,
        spec: OutputSpec,
        class: Class,
        keep_behind: Option<u32>,
    ) -> Result<(CachedFrame, bool), EngineError> {
        let mut attempts = 0;
        loop {
            match self.raw_once(video, index, spec, class, keep_behind).await {
                Err(EngineError::Preempted) if attempts < 3 => attempts += 1,
                result => return result,
            }
        }
    }

    async fn raw_once(
        &self,
        video: &Arc<OpenVideo>,
        index: FrameIndex,
        spec: OutputSpec,
        class: Class,
        keep_behind: Option<u32>,
    ) -> Result<(CachedFrame, bool), EngineError> {
        let key = FrameKey { video: video.id.clone(), index, spec };
        if let Some(hit) = self.registry.cache.get(&key) {
            return Ok((self.unpack(video, hit).await?, true));
        }
        let (tx, rx) = oneshot::channel();
        let cell = Arc::new(ClassCell::new(class));
        let (leader, promote) = {
            let mut inflight = self.registry.inflight.lock();
            // Checked again under the lock: a decoder may have completed it in between.
            if let Some(hit) = self.registry.cache.get(&key) {
                drop(inflight);
                return Ok((self.unpack(video, hit).await?, true));
            }
            match inflight.entry(key.clone()) {
                std::collections::hash_map::Entry::Occupied(mut joined) => {
                    joined.get_mut().waiters.push(tx);
                    self.stats.joined.inc();
                    (false, joined.get().promote.clone())
                }
                std::collections::hash_map::Entry::Vacant(new) => {
                    let promote = self.pool.promoter(video, cell.clone());
                    new.insert(InFlight { waiters: vec![tx], promote: Some(promote), fill: false, decoder: None });
                    (true, None)
                }
            }
        };
        // Another request or a fill is producing this frame: make it as urgent as this request.
        if let Some(promote) = promote {
            promote(class);
        }
        self.registry.cache.record_miss();
        // A decoder may have answered it in the meantime (a frame that came out with another
        // target); then there is nothing to route.
        if leader && self.registry.inflight.lock().contains_key(&key) {
            Submission {
                pool: self.pool.clone(),
                registry: self.registry.clone(),
                video: video.clone(),
                key,
                keep_behind,
                class: cell,
                patience: self.config.decoder_wait,
                runtime: tokio::runtime::Handle::current(),
            }
            .submit();
        }
        let frame = rx.await.map_err(|_| EngineError::ShuttingDown)??;
        Ok((frame, false))
    }

    /// Frames in the given order, with a bounded number decoded ahead of the one being
    /// consumed: a slow consumer holds back the decoding, never the memory.
    pub fn frames(
        self: &Arc<Self>,
        video: Arc<OpenVideo>,
        indices: Vec<FrameIndex>,
        spec: OutputSpec,
    ) -> impl Stream<Item = Result<Frame, EngineError>> + Send + 'static {
        let lookahead = self.config.batch_lookahead.max(1);
        let bytes = video.frame_bytes(spec);
        if let Some((segments, parallel)) = self.segments(&video, &indices, spec, bytes) {
            return self.segmented(video, segments, parallel, spec, bytes).left_stream();
        }
        let (payer, producer) = (self.clone(), self.clone());
        let paying = video.clone();
        // Frames are paid for one after another, in delivery order, before their decode starts
        // (`then` is sequential): the earliest frame not yet delivered is always paid for, so a
        // stream never holds payments for later frames while its next one waits for budget, which
        // would deadlock streams that wait on each other's payments.
        stream::iter(indices)
            .then(move |i| {
                let (store, video) = (payer.clone(), paying.clone());
                async move { (i, store.pay(&video, spec, Class::Stream).await) }
            })
            .map(move |(i, paid)| {
                let (store, video) = (producer.clone(), video.clone());
                async move {
                    let frame = store.produce(&video, i, spec, Class::Stream, None).await?;
                    Ok(Frame { data: Budget::hold(frame.data, paid), ..frame })
                }
            })
            .buffered(lookahead)
            .right_stream()
    }

    /// [`FrameStore::frames`] for a response stream: each frame delivered also pays for the
    /// transport's copy of it until the consumer asks for the next one.
    ///
    /// HTTP/2 holds a sent frame (its bytes, or for gRPC-web tonic's copy of them, whose
    /// original is dropped and its payment returned) until the client has read most of it;
    /// hyper asks the stream for the next frame only then. For slow readers that memory was
    /// outside the budget (one frame per stream: 43 MiB for 16 streams of 720p).
    /// The copy's payment does not wait (the frame is already made, and waiting here while the
    /// look-ahead holds payments could leave streams waiting on each other); it makes the
    /// look-ahead of every stream wait instead, so streams hold at most the budget plus one
    /// frame each.
    pub fn frames_to_send(
        self: &Arc<Self>,
        video: Arc<OpenVideo>,
        indices: Vec<FrameIndex>,
        spec: OutputSpec,
    ) -> impl Stream<Item = Result<Frame, EngineError>> + Send + 'static {
        let budget = self.budget.clone();
        let frames = self.frames(video, indices, spec).boxed();
        stream::unfold((frames, None::<Paid>), move |(mut frames, sent)| {
            let budget = budget.clone();
            async move {
                // Asked for the next frame: the transport is done with the previous one.
                drop(sent);
                let next = frames.next().await?;
                let copy = next.as_ref().ok().map(|f| budget.pay_now(f.data.len() as u64));
                Some((next, (frames, copy)))
            }
        })
    }

    /// How a stream of `indices` is split into segments for parallel decoders, and how many
    /// decode at once: only when nothing else is decoding (under load, decoders already run in
    /// parallel, and a stream's frames take turns with everyone else's). Segments decoded ahead
    /// may take half the in-flight budget; `frame_bytes` is what one frame is paid for.
    fn segments(
        &self,
        video: &OpenVideo,
        indices: &[FrameIndex],
        spec: OutputSpec,
        frame_bytes: u64,
    ) -> Option<(Vec<Vec<FrameIndex>>, usize)> {
        if !self.config.parallel_streams || indices.len() < schedule::MIN_SEGMENTED_FRAMES {
            return None;
        }
        // Lanes decode every frame of their segments: a stream whose frames the cache holds (a
        // range read again, frames a decode pass converted for the stream following it) is
        // served from it instead, a frame at a time, and what it misses decoded as it comes.
        let sample = &indices[..schedule::MIN_SEGMENTED_FRAMES];
        let cached = |i| self.registry.is_cached(video, &spec, i) || self.registry.is_cached(video, &spec.as_raw(), i);
        if sample.iter().filter(|&&i| cached(i)).count() * 2 > sample.len() {
            return None;
        }
        let (busy, queued) = self.pool.load();
        if busy > 0 || queued > 0 {
            return None;
        }
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let parallel = cores.min(self.config.pool.max_per_video);
        let index = &video.index;
        let segments = schedule::stream_segments(
            indices,
            |i| index.frames[i.get()].seek,
            frame_bytes,
            self.config.inflight.0 / 2,
            parallel,
        )?;
        let parallel = parallel.min(segments.len());
        Some((segments, parallel))
    }

    /// The frames of `segments` decoded on parallel decoders (see
    /// [`segments`](crate::engine::segments)), encoded as `spec` asks, in order, each paid for
    /// `bytes`.
    fn segmented(
        self: &Arc<Self>,
        video: Arc<OpenVideo>,
        segments: Vec<Vec<FrameIndex>>,
        parallel: usize,
        spec: OutputSpec,
        bytes: u64,
    ) -> impl Stream<Item = Result<Frame, EngineError>> + Send + 'static {
        let engine = segments::Engine {
            pool: self.pool.clone(),
            registry: self.registry.clone(),
            budget: self.budget.clone(),
            stats: self.stats.clone(),
        };
        let lookahead = self.config.batch_lookahead.max(1);
        let store = self.clone();
        segments::deliver(engine, video.clone(), segments, parallel, spec.as_raw(), bytes)
            .map(move |item| {
                let (store, video) = (store.clone(), video.clone());
                async move {
                    let (raw, paid) = item?;
                    store.stats.requests.inc();
                    let frame =
                        if spec.encoding == Encoding::Raw { raw } else { store.encode(&video, raw, spec).await? };
                    Ok(Frame { meta: frame.meta, data: Budget::hold(frame.data, paid), cache_hit: false })
                }
            })
            .buffered(lookahead)
    }

    /// Every frame's fingerprints (with md5s when `md5`): computed once by a bulk pass, then
    /// read from memory or the state directory.
    pub async fn hashes(&self, video: &Arc<OpenVideo>, md5: bool) -> Result<Arc<HashTable>, EngineError> {
        self.fingerprints.table(video, md5).await
    }

    /// Repeated frames and loops in `video` (or between it and `other`), from the fingerprints
    /// (md5s included, for the exact groups).
    pub async fn duplicates(
        &self,
        video: &Arc<OpenVideo>,
        other: Option<&Arc<OpenVideo>>,
        max_distance: u32,
        min_loop_frames: u32,
    ) -> Result<dups::Report, EngineError> {
        let first = self.hashes(video, true).await?;
        let second = match other {
            Some(o) => Some(self.hashes(o, true).await?),
            None => None,
        };
        tokio::task::spawn_blocking(move || {
            dups::find(&first.frames, second.as_ref().map(|t| t.frames.as_slice()), max_distance, min_loop_frames)
        })
        .await
        .map_err(EngineError::joined(&self.stats, &video.name, "the duplicate search"))
    }

    /// `frames` (consecutive) encoded as a clip of `codec`, at the size `size` asks for,
    /// streamed as the container's bytes.
    pub fn clip(
        &self,
        video: Arc<OpenVideo>,
        frames: Vec<FrameIndex>,
        size: OutputSpec,
        codec: ClipCodec,
    ) -> impl Stream<Item = Result<ClipChunk, EngineError>> + Send + 'static {
        clip::export(self.pool.clone(), video, frames, size, codec)
    }

    /// A storyboard of `layout.tiles` tiles (keyframes nearest evenly spaced times, or with
    /// `exact` the frames at those times), as one JPEG grid; turned as the video is shown with
    /// `upright` (the layout must be of the turned size then).
    pub async fn storyboard(
        self: &Arc<Self>,
        video: &Arc<OpenVideo>,
        layout: Layout,
        exact: bool,
        jpeg_quality: u8,
        upright: bool,
    ) -> Result<StoryboardImage, EngineError> {
        let chosen = storyboard::frames(&video.index, layout.tiles, exact);
        let mut unique = chosen.clone();
        unique.sort();
        unique.dedup();
        let spec = OutputSpec {
            encoding: Encoding::Raw,
            pixel_format: output::PixelFormat::Rgb24,
            max_width: layout.tile_width,
            max_height: layout.tile_height,
            jpeg_quality: 0,
            upright,
        };
        let fetched: Vec<Frame> = self.frames(video.clone(), unique.clone(), spec).try_collect().await?;
        let name = video.name.clone();
        let times: Vec<(FrameIndex, f64)> = chosen.iter().map(|&f| (f, video.index.frames[f.get()].time_s)).collect();
        let jpeg = tokio::task::spawn_blocking(move || {
            let by_tile: Vec<(&[u8], u32, u32)> = chosen
                .iter()
                .map(|f| {
                    let i = unique.binary_search(f).unwrap_or(0);
                    let m = &fetched[i].meta;
                    (&fetched[i].data[..], m.width, m.height)
                })
                .collect();
            let grid = storyboard::compose(&layout, &by_tile);
            let raw = output::RawSpec {
                pixel_format: output::PixelFormat::Rgb24,
                width: layout.width(),
                height: layout.height(),
            };
            output::encode(&bytes::Bytes::from(grid), raw, Encoding::Jpeg, jpeg_quality)
        })
        .await
        .map_err(EngineError::joined(&self.stats, &name, "the storyboard encoder"))?
        .map_err(|e| EngineError::EncodeFailed { video: name, reason: e.to_string() })?;
        Ok(StoryboardImage { jpeg, layout, tiles: times })
    }

    pub fn stats(&self) -> StoreStats {
        let (decoders_busy, queued_jobs) = self.pool.load();
        StoreStats {
            cache: self.registry.cache.stats(),
            open_decoders: self.stats.open_decoders.get(),
            seeks: self.stats.seeks.get(),
            frames_decoded: self.stats.frames_decoded.get(),
            abandoned: self.stats.abandoned.get(),
            preempted: self.stats.preempted.get(),
            joined: self.stats.joined.get(),
            stream_segments: self.stats.stream_segments.get(),
            inflight_bytes: self.budget.in_use(),
            videos_indexed: self.stats.videos_indexed.get(),
            videos_indexing: self.videos.indexing_count() as u64,
            requests: self.stats.requests.get(),
            index_build_s: self.stats.index_build_us.get() as f64 / 1e6,
            index_loads: self.stats.index_loads.get(),
            decoders_busy,
            queued_jobs,
            panics: self.stats.panics.get(),
        }
    }

    /// Close every decoder (their threads exit once idle), and stop the decode passes of the
    /// openings under way: the process exits only once its blocking threads are done, and a pass
    /// over an hour of video would hold it for minutes after it said it stopped.
    pub fn shut_down(&self) {
        self.pool.close_all();
        self.videos.stop_all();
    }

    pub fn decoder_count(&self) -> usize {
        self.pool.decoder_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_following_a_pass_has_a_quarter_of_the_inflight_budget_and_room_when_unbounded() {
        assert_eq!(following_room(128 << 20), 32 << 20);
        assert_eq!(following_room(0), 32 << 20, "unbounded: as though the default");
    }
}
