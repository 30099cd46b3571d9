//! What a video is to the engine: its identity on disk, its name, and its index, built once when
//! it is first opened.
//!
//! A [`VideoId`] names the file's content as far as caching goes (a replaced file is a new
//! video, so stale frames are never served); an [`OpenVideo`] is what requests, decoders and the
//! frame registry share. [`start_opening`] reads a video's index from the state directory or
//! makes it with one demux pass; a file without usable timestamps needs a decode pass over the
//! whole file as well ([`PendingPass`]), which a daemon runs when its turn comes
//! ([`passes_at_once`]); while it runs, the frames it has counted can already be served
//! ([`Progress::counted_so_far`]). [`build_index`] does it all at once, for tools and tests.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::engine::decoder::{Conversion, RawFrame};
use crate::engine::ffmpeg::{
    current_thread_id, set_thread_nice, DecodedFrame, FfmpegError, MediaFile, PacketMeta, SeekWays, StreamInfo,
    VideoPacket,
};
use crate::engine::index::{pts_in_decode_order, DecodedFrameMeta, FrameIdentity, KeyPacket, VideoIndex};
use crate::engine::index_store::{self, ContentKey, StateDir};
use crate::engine::output::OutputSpec;
use crate::engine::schedule::{self, Class};
use crate::engine::selection::Selects;
use crate::engine::stats::EngineStats;
use crate::engine::threads;
use crate::engine::EngineError;
use crate::units::{FrameIndex, PacketNo};

/// Identity of a video file's content as far as caching goes: a replaced file (another inode,
/// as a rename or `cp -p` leaves it even with the old size and time), or one changed in place
/// (new size or modification time), is a new video, so stale frames are never served.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VideoId {
    pub path: PathBuf,
    pub device: u64,
    pub inode: u64,
    pub size: u64,
    pub modified_ns: i128,
}

impl VideoId {
    /// The file at `path` as it is now, with its inode's change time, which no one sets by hand
    /// (`cp -p` and `touch -d` set the modification time): it orders what two requests saw of a
    /// changing file.
    pub fn of(path: PathBuf) -> std::io::Result<(VideoId, i128)> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path)?;
        let changed_ns = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
        let id =
            VideoId { path, device: meta.dev(), inode: meta.ino(), size: meta.len(), modified_ns: modified_ns(&meta) };
        Ok((id, changed_ns))
    }

    /// Whether `meta` (the file's status now) is of this content.
    fn describes(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino(), meta.len(), modified_ns(meta))
            == (self.device, self.inode, self.size, self.modified_ns)
    }

    /// Whether the file at the path is still this content.
    pub fn unchanged(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|meta| self.describes(&meta))
    }
}

fn modified_ns(meta: &std::fs::Metadata) -> i128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// A video's file held open as it was indexed, beside the decoder that reads it by path.
///
/// Why: the index describes the bytes the file had. A file replaced by a rename leaves an open
/// decoder the bytes it opened, but one rewritten in place (`cp` onto it, `ffmpeg -y` writing to
/// it) changes them under the decoder, which then reads new bytes where the old index points:
/// with a container whose frames keep their places (raw video, or a re-encode that happens to
/// keep packet sizes) that decodes cleanly into another video's pixels. The kernel updates a
/// file's size and modification time before a write's bytes can be read, so a decoder that
/// asks [`HeldFile::unchanged`] after reading each packet never uses a byte written after the
/// index was made. One `fstat` per packet: a microsecond against a packet's decode.
#[derive(Debug)]
pub struct HeldFile {
    file: std::fs::File,
    id: VideoId,
}

impl HeldFile {
    /// The file `id` names, if the path still names it.
    pub fn open(id: &VideoId) -> Option<HeldFile> {
        let file = std::fs::File::open(&id.path).ok()?;
        let held = HeldFile { file, id: id.clone() };
        held.unchanged().then_some(held)
    }

    /// Whether the path still names this file, for opening it again by path.
    pub fn at_path(&self) -> bool {
        self.id.unchanged()
    }

    /// Whether the bytes are still the ones the index describes (see the type's docs).
    pub fn unchanged(&self) -> bool {
        self.file.metadata().is_ok_and(|meta| self.id.describes(&meta))
    }
}

/// An indexed video, shared by requests, decoders and the cache.
#[derive(Debug)]
pub struct OpenVideo {
    pub id: VideoId,
    /// The name clients use (relative to its media root).
    pub name: String,
    pub index: Arc<VideoIndex>,
    /// Names the file's bytes (identity plus a digest of both ends): keys the stored index
    /// and the HTTP ETags.
    pub content_key: ContentKey,
}

impl OpenVideo {
    /// Whether a decoder of `other` serves this video: the same file, indexed alike. While a
    /// file is indexed by a decode pass, the frames counted so far are served by an index of
    /// their own ([`Progress::counted_so_far`]), with fewer frames than the whole one: the
    /// frames of one such index are the first frames of every later one, digest for digest,
    /// so a decoder goes on from one to the next ([`OpenVideo::counts_further`]) rather than
    /// seek again.
    pub fn decodes_like(&self, other: &OpenVideo) -> bool {
        if self.id != other.id {
            return false;
        }
        let (a, b) = (&self.index, &other.index);
        let shorter = a.frame_count().min(b.frame_count());
        match (a.identity, b.identity) {
            (FrameIdentity::ByCount, FrameIdentity::ByCount) => {
                shorter == 0 || a.digests.get(shorter - 1) == b.digests.get(shorter - 1)
            }
            _ => a.frame_count() == b.frame_count(),
        }
    }

    /// Whether this video, which [`OpenVideo::decodes_like`] `other`, has more of its frames
    /// counted: a decoder of `other` takes this index from its next job on.
    pub fn counts_further(&self, other: &OpenVideo) -> bool {
        self.index.frame_count() > other.index.frame_count()
    }

    /// The raw size of one frame of this video in `spec` (an upper bound for PNG and JPEG).
    pub fn frame_bytes(&self, spec: OutputSpec) -> u64 {
        let (width, height) = self.index.stream.shown_size(spec.upright);
        let raw = spec.raw_spec(width, height);
        u64::from(raw.width) * u64::from(raw.height) * raw.pixel_format.bytes_per_pixel() as u64
    }
}

/// How far opening a video got on a blocking thread ([`start_opening`]).
pub enum Opening {
    /// Its index was stored, or one demux pass made it.
    Open(Arc<OpenVideo>),
    /// Its index needs a decode of the whole file, to run when its turn comes
    /// ([`PendingPass::run`]): a daemon lets only a few run at once ([`passes_at_once`]).
    Pass(Box<PendingPass>),
}

/// A video waiting for the decode pass that indexes it.
pub struct PendingPass {
    id: VideoId,
    name: String,
    content_key: ContentKey,
    pass: DecodePass,
    /// How long its demux pass took (counted in the build time).
    demuxed_in: Duration,
}

/// Open a video, as far as a blocking thread should go without its turn: its index from the
/// state directory, or from a demux pass; a file without usable timestamps comes back as a
/// [`PendingPass`].
pub fn start_opening(id: VideoId, name: String, state: &StateDir, stats: &EngineStats) -> Result<Opening, EngineError> {
    // A file removed since the request found it is not found.
    let unreadable = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => EngineError::Vanished { video: name.clone() },
        _ => EngineError::NotAVideo { video: name.clone(), reason: e.to_string() },
    };
    let started = Instant::now();
    let content_key = ContentKey::of(&id.path).map_err(unreadable)?;
    let keyed = started.elapsed();
    if let Some(index) = state.dir.as_deref().and_then(|dir| index_store::load(dir, &content_key)) {
        stats.index_loads.inc();
        tracing::debug!(
            video = %name,
            frames = index.frame_count(),
            key_ms = keyed.as_secs_f64() * 1e3,
            load_ms = (started.elapsed() - keyed).as_secs_f64() * 1e3,
            "index read from the state directory"
        );
        return Ok(Opening::Open(Arc::new(OpenVideo { id, name, index: Arc::new(index), content_key })));
    }
    let started = Instant::now();
    Ok(match demux(&id.path, &name)? {
        Demuxed::Index(index) => Opening::Open(indexed(id, name, content_key, index, started.elapsed(), state, stats)),
        Demuxed::NeedsDecode(pass) => {
            tracing::info!(video = %name, "no usable timestamps: indexing by decoding the whole file");
            Opening::Pass(Box::new(PendingPass { id, name, content_key, pass, demuxed_in: started.elapsed() }))
        }
    })
}

impl PendingPass {
    /// Run the decode pass (on a blocking thread) at nice `nice`, with its codec threads: a
    /// daemon runs it as bulk work, so that a minute-long pass does not slow the clicks and
    /// streams on videos already open, and at the priority of the requests waiting for it while
    /// some do ([`schedule::pass_nice`]). `between` is called between packets (where a pass
    /// nobody waits for lets an opening somebody waits for go first: [`crate::engine::turns`]).
    /// With `conversion`, it converts the frames streams following it select ([`Following`]).
    pub fn run(
        self,
        state: &StateDir,
        stats: &EngineStats,
        nice: Option<i32>,
        progress: &Progress,
        between: &mut dyn FnMut(),
        conversion: Option<&mut Conversion>,
    ) -> Result<Arc<OpenVideo>, EngineError> {
        let started = Instant::now();
        let (id, name, content_key) = (&self.id, &self.name, self.content_key);
        let mut hand_over = |index: VideoIndex| {
            let (id, name) = (id.clone(), name.clone());
            progress.counted.send_replace(Some(Arc::new(OpenVideo { id, name, index: Arc::new(index), content_key })));
        };
        let index = {
            let priority = nice.map(PassPriority::enter);
            self.pass.run(progress, &mut hand_over, between, priority.as_ref(), conversion)
        };
        // What the pass counted is of no more use (and would hold memory): its requests get the
        // whole index, or its error.
        progress.counted.send_replace(None);
        let took = self.demuxed_in + started.elapsed();
        Ok(indexed(self.id, self.name, self.content_key, index?, took, state, stats))
    }
}

/// A video whose index was just built (in `took`): counted, logged, stored.
fn indexed(
    id: VideoId,
    name: String,
    content_key: ContentKey,
    index: VideoIndex,
    took: Duration,
    state: &StateDir,
    stats: &EngineStats,
) -> Arc<OpenVideo> {
    stats.videos_indexed.inc();
    stats.index_build_us.add(took.as_micros() as u64);
    tracing::info!(
        video = %name,
        frames = index.frame_count(),
        keyframes = index.keyframe_count,
        identity = ?index.identity,
        ms = took.as_millis() as u64,
        "indexed"
    );
    if let Some(dir) = state.dir.as_deref() {
        if let Err(e) = index_store::save(dir, &content_key, &index, state.max_bytes) {
            tracing::warn!(video = %name, error = %e, "cannot store the index");
        }
    }
    Arc::new(OpenVideo { id, name, index: Arc::new(index), content_key })
}

/// Build a video's index: one demux pass without decoding, or, for files whose packets carry
/// no usable timestamps, one sequential decode pass (at once, on the calling thread).
pub fn build_index(path: &Path, video: &str) -> Result<VideoIndex, EngineError> {
    match demux(path, video)? {
        Demuxed::Index(index) => Ok(index),
        Demuxed::NeedsDecode(pass) => pass.run(&Progress::default(), &mut |_| {}, &mut || {}, None, None),
    }
}

/// What one demux pass over a file found.
enum Demuxed {
    /// The packets' timestamps name the frames: the index.
    Index(VideoIndex),
    /// They do not: the frames must be counted by decoding.
    NeedsDecode(DecodePass),
}

/// A decode pass over a whole file, ready to run ([`DecodePass::run`]).
struct DecodePass {
    path: PathBuf,
    video: String,
    /// What the demux pass found: the stream, how its demuxer seeks, and the packets it read
    /// (not the open file: a folder of files waiting for their turn would hold a descriptor
    /// each).
    stream: StreamInfo,
    seek_ways: SeekWays,
    packets: Vec<PacketMeta>,
}

impl DecodePass {
    /// Run it, counting the packets decoded in `progress`, and handing the frames counted so far
    /// to `hand_over` when requests wait for them ([`Progress::want`]).
    fn run(
        self,
        progress: &Progress,
        hand_over: &mut dyn FnMut(VideoIndex),
        between: &mut dyn FnMut(),
        priority: Option<&PassPriority>,
        conversion: Option<&mut Conversion>,
    ) -> Result<VideoIndex, EngineError> {
        progress.decoding(self.packets.len());
        let index = decode_pass(&self, progress, hand_over, between, priority, conversion)?;
        with_frames(index, &self.video)
    }
}

/// A stream of frames counted from the start following the decode pass that counts them
/// ([`Progress::follow`]).
///
/// Why: the pass decodes every frame of the file, and a stream served from the frames counted
/// so far would decode them all again beside it, on the same cores (a data loader reading a
/// camera file as it appears ended 10-20% later than the pass and the stream one after the
/// other). The pass converts the frames the stream selects as it shows them (the sequential
/// decode's pictures, converted as a decoder converts them: the same bytes) and keeps them
/// here, up to `room` bytes not yet taken; the stream takes those each hand-over counts and
/// serves them from the cache. A frame the pass did not keep (no room left, or shown before the
/// stream came) is decoded as before.
#[derive(Debug)]
pub struct Following {
    spec: OutputSpec,
    selects: Selects,
    room: u64,
    ready: parking_lot::Mutex<(std::collections::VecDeque<RawFrame>, u64)>,
}

impl Following {
    fn take(&self, counted: usize) -> Vec<RawFrame> {
        let mut ready = self.ready.lock();
        let (frames, bytes) = &mut *ready;
        let n = frames.iter().take_while(|f| f.index.get() < counted).count();
        let taken: Vec<RawFrame> = frames.drain(..n).collect();
        *bytes -= taken.iter().map(|f| f.data.len() as u64).sum::<u64>();
        taken
    }

    /// Whether half of the room is taken: the frames counted are handed over sooner.
    fn filling(&self) -> bool {
        self.ready.lock().1 * 2 >= self.room
    }

    /// Whether the pass converts frame `i` for the stream: selected, with room left.
    fn wants(&self, i: usize) -> bool {
        self.selects.frame(i as u64) && self.ready.lock().1 < self.room
    }

    fn keep(&self, frame: RawFrame) {
        let mut ready = self.ready.lock();
        ready.1 += frame.data.len() as u64;
        ready.0.push_back(frame);
    }
}

/// A stream following a decode pass ([`Progress::follow`]), until dropped.
pub struct Follows {
    progress: Arc<Progress>,
    following: Arc<Following>,
}

impl Follows {
    /// The frames the pass kept for the stream among the first `counted` of the video, taken.
    pub fn take(&self, counted: usize) -> Vec<RawFrame> {
        self.following.take(counted)
    }

    /// What the frames are converted to.
    pub fn spec(&self) -> OutputSpec {
        self.following.spec
    }
}

impl Drop for Follows {
    fn drop(&mut self) {
        self.progress.following.lock().retain(|f| !Arc::ptr_eq(f, &self.following));
    }
}

/// A request waiting for an opening ([`Progress::waited_on`]).
pub struct WaitedOn<'a>(&'a Progress, Class);

impl Drop for WaitedOn<'_> {
    fn drop(&mut self) {
        self.0.waiters[self.1 as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// How far a video's opening has got: what a request that stops waiting for it is told.
#[derive(Debug)]
pub struct Progress {
    began: Instant,
    waiting: AtomicBool,
    /// Nobody will use the index any more: the file changed (it is being written, say), and a
    /// request for it started opening the new content.
    abandoned: AtomicBool,
    /// The daemon is stopping: the decode pass stops too (the process waits for it to exit).
    stopped: AtomicBool,
    /// The opening is over, done or failed (whether or not anyone still waits for it).
    finished: AtomicBool,
    /// When the decode pass began, and its packets: decoded so far, and in all.
    decoding_since: OnceLock<Instant>,
    decoded: AtomicUsize,
    packets: AtomicUsize,
    /// Frames the pass has shown: counted, so those of them handed over are served already.
    shown: AtomicUsize,
    /// Requests waiting for the opening now, by the class of the work they are for
    /// ([`Progress::waited_on`]).
    waiters: [AtomicUsize; Class::ALL.len()],
    /// The decode pass has let an opening somebody waits for go first.
    paused: AtomicBool,
    /// One more than the lowest frame a request waits for that the decode pass has not handed
    /// over yet (`u64::MAX`: none). The lowest, so that a request for a frame near the start is
    /// not kept waiting by another's for a frame near the end.
    wanted: AtomicU64,
    /// The frames the decode pass has counted so far, as a video of their own, handed over when
    /// requests wait for them: a frame is named `i` after a seek only when its digest is frame
    /// `i`'s ([`crate::engine::anchor`]), which the frames counted so far already tell, so they
    /// are served exactly before the pass is over. Their index has fewer frames than the whole
    /// one, so decoders never mix the two ([`OpenVideo::decodes_like`]).
    counted: tokio::sync::watch::Sender<Option<Arc<OpenVideo>>>,
    /// Streams following the decode pass: it converts the frames they select as it shows them.
    following: parking_lot::Mutex<Vec<Arc<Following>>>,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            began: Instant::now(),
            waiting: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            decoding_since: OnceLock::new(),
            decoded: AtomicUsize::new(0),
            packets: AtomicUsize::new(0),
            shown: AtomicUsize::new(0),
            waiters: Default::default(),
            paused: AtomicBool::new(false),
            wanted: AtomicU64::new(NOBODY_WANTS),
            counted: tokio::sync::watch::Sender::new(None),
            following: parking_lot::Mutex::new(Vec::new()),
        }
    }
}

impl Progress {
    /// The opening waits for other files' decode passes.
    pub fn waiting(&self) {
        self.waiting.store(true, Ordering::Relaxed);
    }

    /// Stop the opening where it stands (the file changed under it): its requests are told so.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }

    pub fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Stop the opening where it stands: the daemon is stopping.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Whether the daemon stopped the opening ([`Progress::stop`]).
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    pub fn finish(&self) {
        self.finished.store(true, Ordering::Release);
    }

    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    fn decoding(&self, packets: usize) {
        self.packets.store(packets, Ordering::Relaxed);
        let _ = self.decoding_since.set(Instant::now());
    }

    fn decoded_one(&self) {
        self.decoded.fetch_add(1, Ordering::Relaxed);
    }

    fn shown_one(&self) {
        self.shown.fetch_add(1, Ordering::Relaxed);
    }

    /// A request for work of `class` waits for the opening until the guard drops: an opening
    /// somebody waits for takes the next turn for a decode pass ([`crate::engine::turns`]), and
    /// its pass runs at that class's CPU priority meanwhile ([`PassPriority`]).
    pub fn waited_on(&self, class: Class) -> WaitedOn<'_> {
        self.waiters[class as usize].fetch_add(1, Ordering::Relaxed);
        WaitedOn(self, class)
    }

    /// The most urgent class of the requests waiting for the opening now.
    pub fn most_urgent_waiter(&self) -> Option<Class> {
        Class::ALL.into_iter().find(|&c| self.waiters[c as usize].load(Ordering::Relaxed) > 0)
    }

    /// The decode pass waits (`true`) while an opening somebody waits for goes first.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Whether the decode pass is paused for a file a request waits for.
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Whether a request waits for the opening now.
    pub fn waited_for(&self) -> bool {
        self.most_urgent_waiter().is_some()
    }

    /// Frames the decode pass has shown so far.
    pub fn frames_shown(&self) -> usize {
        self.shown.load(Ordering::Relaxed)
    }

    /// A request waits for `frame`: the decode pass hands over what it has counted once it has
    /// counted that far ([`Progress::counted_so_far`]).
    pub fn want(&self, frame: u64) {
        self.wanted.fetch_min(frame.saturating_add(1), Ordering::Relaxed);
    }

    /// A stream of the frames `selects` selects (counted from the start) in `spec` follows the
    /// decode pass until the guard drops: the pass converts them as it shows them, keeping at
    /// most `room` bytes of them for it ([`Following`]).
    pub fn follow(self: &Arc<Progress>, spec: OutputSpec, selects: Selects, room: u64) -> Follows {
        let following = Arc::new(Following { spec, selects, room, ready: Default::default() });
        self.following.lock().push(following.clone());
        Follows { progress: self.clone(), following }
    }

    fn followers(&self) -> Vec<Arc<Following>> {
        self.following.lock().clone()
    }

    /// Whether a stream following the pass has half its room taken ([`Following::filling`]):
    /// asked before every packet, so without a copy of the list.
    fn followers_filling(&self) -> bool {
        self.following.lock().iter().any(|f| f.filling())
    }

    /// The frames the decode pass has counted, as last handed over (`None` before the first
    /// hand-over and once the opening is over).
    pub fn counted_so_far(&self) -> tokio::sync::watch::Receiver<Option<Arc<OpenVideo>>> {
        self.counted.subscribe()
    }

    /// Where it stands at `now`, in words.
    pub fn describe(&self, now: Instant) -> String {
        let so_far = now.saturating_duration_since(self.began).as_secs_f64();
        let Some(since) = self.decoding_since.get() else {
            return if self.waiting.load(Ordering::Relaxed) {
                format!("waiting for other files' index passes to finish, {so_far:.1} s so far")
            } else {
                format!("reading it, {so_far:.1} s so far")
            };
        };
        let (decoded, packets) = (self.decoded.load(Ordering::Relaxed), self.packets.load(Ordering::Relaxed));
        let done = decoded.min(packets) as f64 / packets.max(1) as f64;
        let took = now.saturating_duration_since(*since).as_secs_f64();
        let mut out = format!("decoding every frame: {:.0}% done, {so_far:.1} s so far", done * 100.0);
        if self.paused() {
            out.push_str(", paused while a file a request waits for is indexed");
        }
        // An estimate once there is something to go by.
        if done >= 0.02 && took >= 0.5 {
            out.push_str(&format!(", about {:.0} s left", took * (1.0 - done) / done));
        }
        // A frame counted from the start is served once the pass has shown it.
        match self.frames_shown() {
            0 => {}
            1 => out.push_str("; frame 0 can be asked for already"),
            n => out.push_str(&format!("; frames 0 to {} can be asked for already", n - 1)),
        }
        out
    }
}

/// One demux pass: the index, or the decode pass it takes.
fn demux(path: &Path, video: &str) -> Result<Demuxed, EngineError> {
    let mut file = MediaFile::open(path).map_err(|e| EngineError::from_ffmpeg(video, e))?;
    let mut packets = Vec::new();
    while let Some(p) = file.read_packet().map_err(|e| EngineError::from_ffmpeg(video, e))? {
        packets.push(p.meta);
    }
    let by_packets = if pts_in_decode_order(&packets, file.reorders()) && !shown_in_pts_order(path, video)? {
        tracing::warn!(video, "packet timestamps follow decode order, not presentation order: indexing by decoding");
        None
    } else {
        VideoIndex::from_packets(file.info().clone(), &packets)
    };
    Ok(match by_packets {
        Some(index) => Demuxed::Index(with_frames(index, video)?),
        None => Demuxed::NeedsDecode(DecodePass {
            path: path.to_path_buf(),
            video: video.to_string(),
            stream: file.info().clone(),
            seek_ways: file.seek_ways(),
            packets,
        }),
    })
}

fn with_frames(index: VideoIndex, video: &str) -> Result<VideoIndex, EngineError> {
    if index.frame_count() == 0 {
        return Err(EngineError::NoFrames { video: video.to_string() });
    }
    Ok(index)
}

/// Whether the first pictures the decoder shows come in the order of their pts: the check that
/// a stream whose pts all equal their dts although it may reorder ([`pts_in_decode_order`])
/// really does reorder. An encoder may announce reordering and use none (its pts are then
/// right, and the file seeks like any other); a remux of B-frames shows it within the first
/// frames. Decodes at most `PROBED` packets.
pub fn shown_in_pts_order(path: &Path, video: &str) -> Result<bool, EngineError> {
    const PROBED: usize = 120;
    let mut shown: Vec<Option<i64>> = Vec::new();
    decode_from_start(path, video, Some(PROBED), 1, None, &mut |_, _, _| Ok(()), &mut |f| {
        shown.push(f.pts().map(|p| p.0))
    })?;
    Ok(shown.windows(2).all(|w| matches!((w[0], w[1]), (Some(a), Some(b)) if a < b)))
}

/// The index of a file whose packets cannot name its frames: one decode from the start, which
/// counts the frames, digests each, and notes where its keyframe packets lie. On frame threads
/// ([`pass_threads`]): the whole file is decoded, and it is what opening such a file costs.
/// Requests waiting for frames it has counted get them as an index of their own, handed to
/// `hand_over` ([`hand_over_now`]); `between` is called before each packet.
fn decode_pass(
    pass: &DecodePass,
    progress: &Progress,
    hand_over: &mut dyn FnMut(VideoIndex),
    between: &mut dyn FnMut(),
    priority: Option<&PassPriority>,
    mut conversion: Option<&mut Conversion>,
) -> Result<VideoIndex, EngineError> {
    let DecodePass { path, video, stream, seek_ways, packets } = pass;
    let video = video.as_str();
    let threads = pass_threads();
    let dts: Option<Vec<i64>> = packets.iter().map(|p| p.dts).collect();
    let dts_in_order = dts.is_some_and(|d| d.windows(2).all(|w| w[0] < w[1]));
    // What one thread would have shown before each keyframe packet: frame threads hold `delay`
    // more frames back (counting them shown is safe where the pipeline was not full yet: a
    // frame is then served from the keyframe before, a GOP more decoded, never missed).
    let index = |metas: &[DecodedFrameMeta], keys: &[KeyPacket], delay: usize| {
        let keys: Vec<KeyPacket> = keys
            .iter()
            .map(|k| KeyPacket { shown_before: k.shown_before.saturating_add(delay as u32), ..*k })
            .collect();
        VideoIndex::from_decode(stream.clone(), packets.len(), metas, &keys, *seek_ways, dts_in_order)
    };
    // The frames are counted by the frame callback and the keyframe packets noted by the packet
    // callback, which the decode calls in turn: both need the frames.
    let metas = RefCell::new(Vec::new());
    let mut keys = Vec::new();
    let mut last_pos = None;
    let mut handed: Option<(usize, Instant)> = None;
    // What the last hand-over took.
    let mut built = Duration::ZERO;
    let delay = decode_from_start(
        path,
        video,
        None,
        threads,
        priority,
        &mut |packet, p, delay| {
            if progress.abandoned() {
                return Err(EngineError::Changed { video: video.to_string() });
            }
            between();
            if let Some(priority) = priority {
                priority.follow(progress.most_urgent_waiter());
            }
            if progress.stopped() {
                return Err(EngineError::ShuttingDown);
            }
            progress.decoded_one();
            let shown = metas.borrow().len();
            // A stream following the pass whose frames fill its room has them handed over
            // sooner, as often as the cost of a hand-over allows.
            let every = match progress.followers_filling() {
                true => (built * HAND_OVER_COST_SHARE).clamp(HAND_OVER_SOONEST, HAND_OVER_EVERY),
                false => HAND_OVER_EVERY,
            };
            if hand_over_now(progress.wanted.load(Ordering::Relaxed), shown, handed, Instant::now(), every) {
                // Forgotten before the hand-over: a request it does not serve asks again when it
                // sees it ([`Progress::want`] after each one).
                progress.wanted.store(NOBODY_WANTS, Ordering::Relaxed);
                let started = Instant::now();
                let counted = index(&metas.borrow(), &keys, delay);
                tracing::debug!(video, frames = shown, "frames counted so far handed over");
                hand_over(counted);
                built = started.elapsed();
                handed = Some((shown, Instant::now()));
            }
            last_pos = p.byte_position().or(last_pos);
            if p.meta.key {
                let (pts, dts) = (p.meta.pts, p.meta.dts);
                keys.push(KeyPacket { packet, pts, dts, pos: last_pos, shown_before: shown as u32 });
            }
            Ok(())
        },
        &mut |f| {
            let shown = metas.borrow().len();
            if let Some(conversion) = conversion.as_deref_mut() {
                for following in progress.followers().iter().filter(|w| w.wants(shown)) {
                    match conversion.convert(video, &f, &following.spec, &stream.orientation) {
                        Ok((spec, data)) => following.keep(RawFrame {
                            index: FrameIndex(shown as u32),
                            spec,
                            key: f.is_key(),
                            data,
                            planes: None,
                            luma: None,
                        }),
                        // Decoded again by the stream's decoder, which says what is wrong.
                        Err(e) => tracing::debug!(video, frame = shown, error = %e, "not converted for a stream"),
                    }
                }
            }
            progress.shown_one();
            metas.borrow_mut().push(DecodedFrameMeta {
                best_effort_timestamp: f.best_effort_timestamp(),
                key: f.is_key(),
                digest: f.digest(),
            })
        },
    )?;
    let whole = index(&metas.borrow(), &keys, delay);
    Ok(whole)
}

/// How often at most a decode pass hands the frames it has counted over: each hand-over builds
/// an index of every frame so far (a few milliseconds per 10,000 frames), and a reader following
/// the pass frame by frame would otherwise have one built per frame.
const HAND_OVER_EVERY: Duration = Duration::from_millis(250);

/// A stream following a pass ([`Following`]) whose room is filling has the frames counted handed
/// over sooner than [`HAND_OVER_EVERY`], once this many times what the last hand-over took has
/// passed (the pass spends at most a tenth of its time on them), and not sooner than
/// [`HAND_OVER_SOONEST`]. Why: a quarter of a second of a small video is more frames than the
/// room holds (640x360 counted at 1500 frames/s, every fifth frame kept: 52 MB), and the frames
/// past it would be decoded again.
const HAND_OVER_COST_SHARE: u32 = 10;
const HAND_OVER_SOONEST: Duration = Duration::from_millis(10);

/// [`Progress`]'s `wanted` when no request waits for a frame.
const NOBODY_WANTS: u64 = u64::MAX;

/// Whether a decode pass that has shown `shown` frames hands them over now: a request waits for
/// a frame among them (`wanted`: one more than the lowest frame waited for, [`NOBODY_WANTS`] for
/// none) that the last hand-over (`handed`: its frames, and when) did not have, and that was
/// at least `every` ago.
fn hand_over_now(wanted: u64, shown: usize, handed: Option<(usize, Instant)>, now: Instant, every: Duration) -> bool {
    let (had, at) = match handed {
        Some((had, at)) => (had as u64, Some(at)),
        None => (0, None),
    };
    wanted > had && wanted <= shown as u64 && at.is_none_or(|at| now.saturating_duration_since(at) >= every)
}

/// The codec threads of a decode pass: every core, up to eight (frame threads scale little
/// beyond that, and each holds pictures of its own).
fn pass_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

/// How many decode passes a daemon runs at once: as many as keep every core busy, two at least
/// so that one long file does not hold up all the others. Each uses every core and holds a
/// decoder's pictures per frame thread, so a folder of DVD VOBs or camera streams opened at once
/// (a labelling tool listing them) would otherwise run all together: their memory adds up, and
/// all of them finish at the end. Taking turns, the first files open early.
pub fn passes_at_once() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / pass_threads()).max(2)
}

/// The CPU priority of a decode pass, on its own thread and the codec threads it starts:
/// [`schedule::pass_nice`], followed between packets as requests come to wait for the pass and
/// give up. Dropped, its own thread is back at 0 (a blocking-pool thread is used again for other
/// work). Only used where lowering a nice value again is allowed (the pool's probe).
struct PassPriority {
    bulk: i32,
    now: Cell<i32>,
    /// The pass's own thread first.
    threads: RefCell<Vec<i32>>,
}

impl PassPriority {
    fn enter(bulk: i32) -> PassPriority {
        let me = current_thread_id();
        set_thread_nice(me, bulk);
        PassPriority { bulk, now: Cell::new(bulk), threads: RefCell::new(vec![me]) }
    }

    /// Codec threads the pass started (at the nice value it had then).
    fn started(&self, codec_threads: Vec<i32>) {
        self.threads.borrow_mut().extend(codec_threads);
    }

    /// At the priority of the most urgent request waiting for the pass now.
    fn follow(&self, waiting: Option<Class>) {
        let nice = schedule::pass_nice(self.bulk, waiting);
        if nice != self.now.get() {
            for &tid in self.threads.borrow().iter() {
                set_thread_nice(tid, nice);
            }
            self.now.set(nice);
        }
    }
}

impl Drop for PassPriority {
    fn drop(&mut self) {
        set_thread_nice(self.threads.borrow()[0], 0);
    }
}

/// Decode `path` from its start on `threads` codec threads, handing every packet (with its number
/// in decode order, and the decoder's [frame-thread
/// delay](crate::engine::ffmpeg::VideoDecoder::frame_thread_delay)) to `on_packet` before it is
/// decoded (an error from it stops the decode) and
/// every frame to `on_frame`: the whole file, or its first `packets` packets and what the decoder
/// then still holds. Returns the frames frame threading held the
/// output back by ([`frame_thread_delay`](crate::engine::ffmpeg::VideoDecoder::frame_thread_delay)).
/// The codec threads it starts are given to `priority`, if any.
fn decode_from_start(
    path: &Path,
    video: &str,
    packets: Option<usize>,
    threads: usize,
    priority: Option<&PassPriority>,
    on_packet: &mut dyn FnMut(PacketNo, &VideoPacket, usize) -> Result<(), EngineError>,
    on_frame: &mut dyn FnMut(DecodedFrame),
) -> Result<usize, EngineError> {
    let map = |e: FfmpegError| EngineError::from_ffmpeg(video, e);
    let mut file = MediaFile::open(path).map_err(map)?;
    let mut decoder = match priority {
        Some(priority) if threads > 1 => {
            let (decoder, started) = threads::started_by(|| file.new_decoder(threads));
            priority.started(started);
            decoder
        }
        _ => file.new_decoder(threads),
    }
    .map_err(map)?;
    let mut read = 0;
    loop {
        let packet = if packets.is_some_and(|n| read >= n) { None } else { file.read_packet().map_err(map)? };
        if let Some(p) = &packet {
            on_packet(PacketNo(read as u32), p, decoder.frame_thread_delay())?;
        }
        read += 1;
        decoder.decode(packet.as_ref(), false, on_frame).map_err(map)?;
        if packet.is_none() {
            return Ok(decoder.frame_thread_delay());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames a pass has counted so far are the first frames of every later count: a decoder
    /// of one goes on with the next. Not when the frames differ (another content), nor across
    /// files.
    #[test]
    fn a_decoder_of_the_frames_counted_so_far_serves_the_frames_counted_later() {
        let id = VideoId { path: PathBuf::from("/m/cam.h264"), device: 1, inode: 2, size: 3, modified_ns: 4 };
        let meta = |i: u64| DecodedFrameMeta { best_effort_timestamp: None, key: i.is_multiple_of(5), digest: 100 + i };
        let counted = |id: &VideoId, digests: &[u64]| OpenVideo {
            id: id.clone(),
            name: "cam.h264".into(),
            index: Arc::new(VideoIndex::from_decode(
                StreamInfo::for_tests(64, 25),
                20,
                &digests.iter().map(|&i| meta(i)).collect::<Vec<_>>(),
                &[],
                SeekWays { timestamp: false, byte: false },
                false,
            )),
            content_key: ContentKey([0; 16]),
        };
        let (early, later): (Vec<u64>, Vec<u64>) = ((0..7).collect(), (0..15).collect());
        let (early, later) = (counted(&id, &early), counted(&id, &later));
        assert!(early.decodes_like(&later) && later.decodes_like(&early));
        assert!(later.counts_further(&early) && !early.counts_further(&later) && !later.counts_further(&later));
        let mut other: Vec<u64> = (0..15).collect();
        other[6] = 999;
        assert!(!early.decodes_like(&counted(&id, &other)), "frame 6 differs");
        let elsewhere = VideoId { inode: 9, ..id.clone() };
        assert!(!early.decodes_like(&counted(&elsewhere, &(0..7).collect::<Vec<_>>())));
    }

    #[test]
    fn a_file_removed_before_it_is_opened_is_not_found() {
        let path = PathBuf::from("/nonexistent/framesrv-test/gone.h264");
        let id = VideoId { path, device: 0, inode: 0, size: 0, modified_ns: 0 };
        let state = StateDir { dir: None, max_bytes: 0 };
        let err = start_opening(id, "gone.h264".into(), &state, &EngineStats::default()).err().unwrap();
        assert!(matches!(err, EngineError::Vanished { .. }), "{err}");
    }

    #[test]
    fn a_pass_hands_its_frames_over_when_one_waited_for_is_counted_and_not_too_often() {
        let now = Instant::now();
        let ago = |ms| now - Duration::from_millis(ms);
        // Nobody waits, or for a frame not counted yet: nothing to hand over.
        let every = HAND_OVER_EVERY;
        assert!(!hand_over_now(NOBODY_WANTS, 500, None, now, every));
        assert!(!hand_over_now(501, 500, None, now, every));
        // Frame 499 is counted: the first hand-over is at once.
        assert!(hand_over_now(500, 500, None, now, every));
        // A frame the last hand-over already had needs no other.
        assert!(!hand_over_now(400, 600, Some((500, ago(1000))), now, every));
        // One it did not have: once a quarter of a second has passed since.
        assert!(!hand_over_now(550, 600, Some((500, ago(100))), now, every));
        assert!(hand_over_now(550, 600, Some((500, ago(250))), now, every));
        // Sooner for a stream following the pass whose room fills.
        assert!(hand_over_now(550, 600, Some((500, ago(30))), now, Duration::from_millis(20)));
    }

    #[test]
    fn a_stream_following_a_pass_takes_the_frames_counted_and_the_pass_keeps_them_within_its_room() {
        let progress = Arc::new(Progress::default());
        let spec = OutputSpec::default();
        let every_other = crate::engine::selection::Selection::Range { start: 0, stop: 0, step: 2 };
        let follows = progress.follow(spec, every_other.selects(), 300);
        let following = progress.followers().pop().unwrap();
        let frame = |i: u32| RawFrame {
            index: FrameIndex(i),
            spec: crate::engine::output::RawSpec { pixel_format: spec.pixel_format, width: 10, height: 10 },
            key: false,
            data: bytes::Bytes::from(vec![i as u8; 100]),
            planes: None,
            luma: None,
        };
        assert!(following.wants(0) && !following.wants(1), "the frames it selects");
        following.keep(frame(0));
        assert!(!following.filling());
        following.keep(frame(2));
        assert!(following.filling(), "half its room taken: hand over sooner");
        following.keep(frame(4));
        assert!(!following.wants(6), "its room is taken: decoded later instead");
        // A hand-over of the first four frames gives the stream frames 0 and 2, and room again.
        let taken: Vec<u32> = follows.take(4).iter().map(|f| f.index.0).collect();
        assert_eq!(taken, [0, 2]);
        assert!(following.wants(6) && !following.filling());
        assert_eq!(follows.take(10).len(), 1);
        drop(follows);
        assert!(progress.followers().is_empty(), "a stream gone is no longer followed");
    }

    #[test]
    fn an_opening_says_how_far_it_got() {
        let p = Progress::default();
        let at = |s: f64| p.began + Duration::from_secs_f64(s);
        assert_eq!(p.describe(at(0.25)), "reading it, 0.2 s so far");
        p.waiting();
        assert_eq!(p.describe(at(3.0)), "waiting for other files' index passes to finish, 3.0 s so far");
        p.decoding(1000);
        let since = *p.decoding_since.get().unwrap();
        let at = |s: f64| since + Duration::from_secs_f64(s);
        assert!(p.describe(at(0.1)).starts_with("decoding every frame: 0% done, "), "{}", p.describe(at(0.1)));
        for _ in 0..250 {
            p.decoded_one();
        }
        let said = p.describe(at(10.0));
        assert!(said.starts_with("decoding every frame: 25% done, ") && said.ends_with(", about 30 s left"), "{said}");
        for _ in 0..240 {
            p.shown_one();
        }
        let said = p.describe(at(10.0));
        assert!(said.ends_with(", about 30 s left; frames 0 to 239 can be asked for already"), "{said}");
    }
}
