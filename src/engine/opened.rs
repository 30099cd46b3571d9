//! The videos a store has open: each opened once, shared by every request for it.
//!
//! A name a client sends is resolved inside the media roots and looked up by the file it names
//! (device, inode, size and times: a file replaced or still being written is another opening).
//! The first request starts the opening on a task of its own (the index read from the state
//! directory, or built by demuxing, or by a decode pass for a file without timestamps); later
//! requests wait for that one, and it goes on when they give up, so its result is there for the
//! next. The most recently used are kept, up to `max_open_videos`; a video still being opened is
//! never forgotten. A module of its own because what is open, and how far its opening got, is
//! one concern, and serving frames of an open video ([`store`](super::store)) another.

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt, Shared};
use lru::LruCache;
use parking_lot::Mutex;

use crate::engine::buffers::BufferPool;
use crate::engine::decoder::Conversion;
use crate::engine::index_store::StateDir;
use crate::engine::pool::{OpenVideo, VideoId};
use crate::engine::schedule::Class;
use crate::engine::stats::EngineStats;
use crate::engine::turns::{Turn, Turns};
use crate::engine::video::{self, Opening, Progress};
use crate::engine::EngineError;
use crate::error::Error;
use crate::media_roots::{MediaRoots, RootsError};

/// The videos open, by path, the most recently used first.
pub(crate) struct Videos {
    roots: MediaRoots,
    slots: Mutex<LruCache<std::path::PathBuf, Arc<VideoSlot>>>,
    opener: Opener,
    /// How many opened videos are kept.
    keep: usize,
}

impl Videos {
    pub(crate) fn new(roots: MediaRoots, opener: Opener, keep: usize) -> Videos {
        Videos { roots, slots: Mutex::new(LruCache::unbounded()), opener, keep: keep.max(1) }
    }

    pub(crate) fn roots(&self) -> &MediaRoots {
        &self.roots
    }

    /// The slot of the video a client names, its opening started on first use.
    pub(crate) async fn slot(&self, name: &str) -> Result<Arc<VideoSlot>, Error> {
        let roots = self.roots.clone();
        let owned = name.to_string();
        let (id, changed_ns) = tokio::task::spawn_blocking(move || -> Result<(VideoId, i128), RootsError> {
            let path = roots.resolve(&owned)?;
            VideoId::of(path).map_err(|_| RootsError::NotFound { name: owned.clone() })
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)??;
        let slot = {
            let mut videos = self.slots.lock();
            match videos.get(&id.path) {
                Some(slot) if slot.serves(&id, changed_ns) => {
                    slot.also_called(name);
                    slot.clone()
                }
                stale => {
                    // The file changed: an opening of its old content still under way is of no
                    // use to anyone (a file being written would otherwise queue a pass over it
                    // for every request).
                    if let Some(old) = stale {
                        old.progress.abandon();
                    }
                    let progress = Arc::new(Progress::default());
                    let job = self.opener.open(id.clone(), name.to_string(), progress.clone());
                    let slot = Arc::new(VideoSlot::new(id.clone(), changed_ns, name, job, progress));
                    videos.put(id.path.clone(), slot.clone());
                    forget_opened(&mut videos, self.keep);
                    slot
                }
            }
        };
        Ok(slot)
    }

    /// How far the opening of the video a client calls `name` has got, while it is being opened
    /// (its first request came and its index is not ready): what a request that ran out of time
    /// was waiting for.
    pub(crate) fn indexing(&self, name: &str) -> Option<String> {
        let videos = self.slots.lock();
        let (_, slot) = videos.iter().find(|(_, slot)| slot.called(name) && !slot.progress.finished())?;
        Some(slot.progress.describe(std::time::Instant::now()))
    }

    /// How many are being opened now.
    pub(crate) fn indexing_count(&self) -> usize {
        self.slots.lock().iter().filter(|(_, slot)| !slot.progress.finished()).count()
    }

    /// Stop every opening under way (the daemon is shutting down).
    pub(crate) fn stop_all(&self) {
        for (_, slot) in self.slots.lock().iter() {
            slot.progress.stop();
        }
    }
}

/// One video as requests found it: the file, the names it was asked by, its opening (shared by
/// all of them) and how far that got.
pub(crate) struct VideoSlot {
    id: VideoId,
    /// The file's change time when its opening started (see [`VideoSlot::serves`]).
    changed_ns: i128,
    /// The names requests called it by (relative to different roots, or spelt differently): the
    /// first, and a few more, so that each is told how far its opening got.
    names: Mutex<Vec<String>>,
    video: IndexJob,
    progress: Arc<Progress>,
}

/// How many names of one video a slot remembers.
const NAMES_KEPT: usize = 8;

impl VideoSlot {
    fn new(id: VideoId, changed_ns: i128, name: &str, video: IndexJob, progress: Arc<Progress>) -> VideoSlot {
        VideoSlot { id, changed_ns, names: Mutex::new(vec![name.to_string()]), video, progress }
    }

    /// Whether a request that found the file as `id`, changed at `changed_ns`, is served by this
    /// slot: the same content, or an older look at a file that has changed since (a request
    /// that looked just before a camera wrote more, or a file was replaced). That request gets
    /// the file as it is now rather than reopening the content it saw, which would abandon the
    /// newer opening and have the next request start it again.
    fn serves(&self, id: &VideoId, changed_ns: i128) -> bool {
        self.id == *id || changed_ns < self.changed_ns
    }

    fn called(&self, name: &str) -> bool {
        self.names.lock().iter().any(|n| n == name)
    }

    /// A request called it `name`.
    fn also_called(&self, name: &str) {
        let mut names = self.names.lock();
        if names.len() < NAMES_KEPT && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }

    /// The video opened, for work of `class` (while it waits for a decode pass, the pass runs at
    /// that priority: [`schedule::pass_nice`](crate::engine::schedule::pass_nice)).
    pub(crate) async fn open(&self, class: Class) -> Result<Arc<OpenVideo>, EngineError> {
        let _waiting = self.progress.waited_on(class);
        self.video.clone().await
    }

    /// The video once indexed through `frame`: its whole index, or the frames its decode pass
    /// has counted so far (with `true`). For work of `class`, as [`VideoSlot::open`].
    pub(crate) async fn through(&self, frame: u64, class: Class) -> Result<(Arc<OpenVideo>, bool), EngineError> {
        // Most requests: a video open for a while, nothing to wait for or hand over.
        if let Some(Ok(video)) = self.video.peek() {
            return Ok((video.clone(), false));
        }
        let _waiting = self.progress.waited_on(class);
        let mut counted = self.progress.counted_so_far();
        let whole = self.video.clone();
        tokio::pin!(whole);
        loop {
            let far_enough = counted.borrow_and_update().clone().filter(|v| frame < v.index.frame_count() as u64);
            if let Some(video) = far_enough {
                return Ok((video, true));
            }
            self.progress.want(frame);
            tokio::select! {
                biased;
                video = &mut whole => return Ok((video?, false)),
                changed = counted.changed() => {
                    if changed.is_err() {
                        return Ok((whole.await?, false));
                    }
                }
            }
        }
    }

    /// How its opening goes.
    pub(crate) fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }
}

/// A video's opening (its index read from the state directory, or built), shared by every
/// request for it. It runs on a task of its own and goes on when the requests that wait for it
/// give up (a deadline shorter than a decode pass over a long file): its result stays in the
/// slot, so the next request gets it rather than starting the pass again.
pub(crate) type IndexJob = Shared<BoxFuture<'static, Result<Arc<OpenVideo>, EngineError>>>;

/// Forget the least recently used videos beyond `keep`, only those whose opening has finished: a
/// video still being indexed stays, so its result is there for the next request rather than
/// built again (its pass goes on either way). So more than `keep` are held only while more are
/// being opened at once.
fn forget_opened(videos: &mut LruCache<std::path::PathBuf, Arc<VideoSlot>>, keep: usize) {
    while videos.len() > keep {
        let Some(path) = videos.iter().rev().find(|(_, slot)| slot.progress.finished()).map(|(p, _)| p.clone()) else {
            return;
        };
        videos.pop(&path);
    }
}

/// What opening a video needs besides the video.
#[derive(Clone)]
pub(crate) struct Opener {
    state: StateDir,
    stats: Arc<EngineStats>,
    /// Turns for decode passes ([`video::passes_at_once`]). Taken before the pass's blocking
    /// thread starts, so files waiting for a turn hold no thread of the blocking pool (a folder
    /// of a thousand camera streams opened at once would otherwise fill it, and stall every other
    /// blocking task of the daemon). An opening somebody waits for goes first.
    passes: Arc<Turns>,
    /// The nice value decode passes run at: bulk work, as a hash pass is.
    pass_nice: Option<i32>,
    /// Where the frames a pass converts for the streams following it take their memory from.
    buffers: Arc<BufferPool>,
}

impl Opener {
    pub(crate) fn new(
        state: StateDir,
        stats: Arc<EngineStats>,
        passes: Arc<Turns>,
        pass_nice: Option<i32>,
        buffers: Arc<BufferPool>,
    ) -> Opener {
        Opener { state, stats, passes, pass_nice, buffers }
    }

    fn open(&self, id: VideoId, name: String, progress: Arc<Progress>) -> IndexJob {
        let (this, video) = (self.clone(), name.clone());
        let task = tokio::spawn(async move {
            let result = this.opening(id, name, &progress).await;
            progress.finish();
            result
        });
        let stats = self.stats.clone();
        async move { task.await.unwrap_or_else(|e| Err(EngineError::joined(&stats, &video, "the index build")(e))) }
            .boxed()
            .shared()
    }

    /// The opening itself, on the task [`Opener::open`] spawned.
    async fn opening(self, id: VideoId, name: String, progress: &Arc<Progress>) -> Result<Arc<OpenVideo>, EngineError> {
        let Opener { state, stats, passes, pass_nice, buffers } = self;
        let failed = |e| EngineError::joined(&stats, &name, "the index build")(e);
        let opening = {
            let (state, stats, name) = (state.clone(), stats.clone(), name.clone());
            tokio::task::spawn_blocking(move || video::start_opening(id, name, &state, &stats))
        };
        let pass = match opening.await.map_err(failed)?? {
            Opening::Open(video) => return Ok(video),
            Opening::Pass(pass) => pass,
        };
        if passes.all_taken() {
            tracing::info!(video = %name, "waiting for other files' decode passes to finish");
            progress.waiting();
        }
        let Some(turn) = passes.take(progress).await else {
            return Err(EngineError::ShuttingDown);
        };
        if progress.abandoned() {
            return Err(EngineError::Changed { video: name });
        }
        let run = {
            let (stats, progress) = (stats.clone(), progress.clone());
            tokio::task::spawn_blocking(move || {
                let mut turn = Some(turn);
                let mut between = || turn = turn.take().and_then(Turn::let_pass);
                let mut conversion = Conversion::new(buffers);
                pass.run(&state, &stats, pass_nice, &progress, &mut between, Some(&mut conversion))
            })
        };
        run.await.map_err(failed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, opened: bool) -> (std::path::PathBuf, Arc<VideoSlot>) {
        let path = std::path::PathBuf::from(name);
        let id = VideoId { path: path.clone(), device: 0, inode: 0, size: 0, modified_ns: 0 };
        let video: IndexJob = futures::future::pending().boxed().shared();
        let progress = Arc::new(Progress::default());
        if opened {
            progress.finish();
        }
        (path, Arc::new(VideoSlot::new(id, 0, name, video, progress)))
    }

    #[test]
    fn a_request_that_saw_a_file_before_it_changed_is_served_as_it_is_now() {
        let (_, slot) = slot("cam.h264", false);
        let now = VideoId { size: 1000, modified_ns: 50, ..slot.id.clone() };
        let slot = VideoSlot::new(now.clone(), 2_000, "cam.h264", slot.video.clone(), slot.progress.clone());
        assert!(slot.serves(&now, 2_000));
        let before = VideoId { size: 600, modified_ns: 40, ..now.clone() };
        assert!(slot.serves(&before, 1_000), "an older look reopened the file");
        // A newer one is another opening (the file changed after this one started).
        let after = VideoId { size: 1400, modified_ns: 60, ..now.clone() };
        assert!(!slot.serves(&after, 3_000));
        // A file replaced by another whose times were copied (`cp -p`): its change time is new.
        let copied = VideoId { inode: 99, modified_ns: 10, ..now };
        assert!(!slot.serves(&copied, 2_500));
    }

    #[test]
    fn a_slot_knows_the_names_it_was_asked_by() {
        let (_, slot) = slot("cam/a.h264", false);
        slot.also_called("./cam/a.h264");
        slot.also_called("cam/a.h264");
        assert!(slot.called("cam/a.h264") && slot.called("./cam/a.h264") && !slot.called("b.h264"));
        assert_eq!(slot.names.lock().len(), 2, "each name once");
        for i in 0..20 {
            slot.also_called(&format!("alias{i}"));
        }
        assert_eq!(slot.names.lock().len(), NAMES_KEPT, "a bounded list");
    }

    #[test]
    fn videos_still_being_opened_are_not_forgotten() {
        let mut videos = LruCache::unbounded();
        for (name, opened) in [("a", true), ("b", false), ("c", true), ("d", false)] {
            let (path, slot) = slot(name, opened);
            videos.put(path, slot);
        }
        forget_opened(&mut videos, 2);
        let kept: Vec<String> = videos.iter().map(|(_, s)| s.names.lock()[0].clone()).collect();
        assert_eq!(kept, ["d", "b"], "the opened ones go first, the least recently used first");
        // Beyond the bound only while more are being opened.
        forget_opened(&mut videos, 1);
        assert_eq!(videos.len(), 2);
    }
}
