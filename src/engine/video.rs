//! What a video is to the engine: its identity on disk, its name, and its index, built once when
//! it is first opened.
//!
//! A [`VideoId`] names the file's content as far as caching goes (a replaced file is a new
//! video, so stale frames are never served); an [`OpenVideo`] is what requests, decoders and the
//! frame registry share. [`open_video`] reads a video's index from the state directory, or has
//! [`build_index`] make it with one demux pass (or, for files without usable timestamps, one
//! decode pass, which takes turns with the other files' passes).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::engine::ffmpeg::{
    current_thread_id, set_thread_nice, DecodedFrame, FfmpegError, MediaFile, PacketMeta, VideoPacket,
};
use crate::engine::index::{pts_in_decode_order, DecodedFrameMeta, KeyPacket, VideoIndex};
use crate::engine::index_store::{self, ContentKey, StateDir};
use crate::engine::output::OutputSpec;
use crate::engine::stats::EngineStats;
use crate::engine::EngineError;
use crate::units::PacketNo;

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
    /// The raw size of one frame of this video in `spec` (an upper bound for PNG and JPEG).
    pub fn frame_bytes(&self, spec: OutputSpec) -> u64 {
        let (width, height) = self.index.stream.shown_size(spec.upright);
        let raw = spec.raw_spec(width, height);
        u64::from(raw.width) * u64::from(raw.height) * raw.pixel_format.bytes_per_pixel() as u64
    }
}

/// Open a video on a blocking thread: its index from the state directory, or built (and then
/// stored).
pub fn open_video(
    id: VideoId,
    name: String,
    state: &StateDir,
    stats: &EngineStats,
    pass_nice: Option<i32>,
) -> Result<Arc<OpenVideo>, EngineError> {
    let unreadable = |e: std::io::Error| EngineError::NotAVideo { video: name.clone(), reason: e.to_string() };
    let started = std::time::Instant::now();
    let content_key = ContentKey::of(&id.path).map_err(unreadable)?;
    let keyed = started.elapsed();
    let stored = state.dir.as_deref().and_then(|dir| index_store::load(dir, &content_key));
    let index = match stored {
        Some(index) => {
            stats.index_loads.inc();
            tracing::debug!(
                video = %name,
                frames = index.frame_count(),
                key_ms = keyed.as_secs_f64() * 1e3,
                load_ms = (started.elapsed() - keyed).as_secs_f64() * 1e3,
                "index read from the state directory"
            );
            index
        }
        None => {
            let started = std::time::Instant::now();
            let index = build_index_niced(&id.path, &name, pass_nice)?;
            stats.videos_indexed.inc();
            stats.index_build_us.add(started.elapsed().as_micros() as u64);
            tracing::info!(
                video = %name,
                frames = index.frame_count(),
                keyframes = index.keyframe_count,
                identity = ?index.identity,
                ms = started.elapsed().as_millis() as u64,
                "indexed"
            );
            if let Some(dir) = state.dir.as_deref() {
                if let Err(e) = index_store::save(dir, &content_key, &index, state.max_bytes) {
                    tracing::warn!(video = %name, error = %e, "cannot store the index");
                }
            }
            index
        }
    };
    Ok(Arc::new(OpenVideo { id, name, index: Arc::new(index), content_key }))
}

/// Build a video's index: one demux pass without decoding, or, for files whose packets carry
/// no usable timestamps, one sequential decode pass.
pub fn build_index(path: &Path, video: &str) -> Result<VideoIndex, EngineError> {
    build_index_niced(path, video, None)
}

/// [`build_index`], with the decode pass (where one is needed) and its codec threads at nice
/// `pass_nice`: a daemon runs it as bulk work, so that a minute-long pass over a file without
/// timestamps does not slow the clicks and streams on videos already open. The demux pass,
/// milliseconds, runs at the caller's priority.
pub fn build_index_niced(path: &Path, video: &str, pass_nice: Option<i32>) -> Result<VideoIndex, EngineError> {
    let mut file = MediaFile::open(path).map_err(|e| EngineError::from_ffmpeg(video, e))?;
    let mut packets = Vec::new();
    while let Some(p) = file.read_packet().map_err(|e| EngineError::from_ffmpeg(video, e))? {
        packets.push(p.meta);
    }
    let stream = file.info().clone();
    let by_packets = if pts_in_decode_order(&packets, file.reorders()) && !shown_in_pts_order(path, video)? {
        tracing::warn!(video, "packet timestamps follow decode order, not presentation order: indexing by decoding");
        None
    } else {
        VideoIndex::from_packets(stream.clone(), &packets)
    };
    let index = match by_packets {
        Some(index) => index,
        None => {
            let _turn = DECODE_PASSES.enter(video);
            let _nice = pass_nice.map(AtNice::enter);
            decode_pass(path, video, &file, &packets)?
        }
    };
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
    decode_from_start(path, video, Some(PROBED), 1, &mut |_, _| {}, &mut |f| shown.push(f.pts().map(|p| p.0)))?;
    Ok(shown.windows(2).all(|w| matches!((w[0], w[1]), (Some(a), Some(b)) if a < b)))
}

/// The index of a file whose packets cannot name its frames: one decode from the start, which
/// counts the frames, digests each, and notes where its keyframe packets lie (`file` is the
/// demux pass's, `packets` what it read). On frame threads ([`pass_threads`]): the whole file is
/// decoded, and it is what opening such a file costs.
fn decode_pass(path: &Path, video: &str, file: &MediaFile, packets: &[PacketMeta]) -> Result<VideoIndex, EngineError> {
    let threads = pass_threads();
    let mut metas = Vec::new();
    let mut keys = Vec::new();
    let mut last_pos = None;
    // The frames are counted by the frame callback and the keyframe packets noted by the packet
    // callback, which the decode calls in turn: both need the count.
    let shown = std::cell::Cell::new(0u32);
    let delay = decode_from_start(
        path,
        video,
        None,
        threads,
        &mut |packet, p| {
            last_pos = p.byte_position().or(last_pos);
            if p.meta.key {
                let (pts, dts) = (p.meta.pts, p.meta.dts);
                keys.push(KeyPacket { packet, pts, dts, pos: last_pos, shown_before: shown.get() });
            }
        },
        &mut |f| {
            shown.set(shown.get() + 1);
            metas.push(DecodedFrameMeta {
                best_effort_timestamp: f.best_effort_timestamp(),
                key: f.is_key(),
                digest: f.digest(),
            });
        },
    )?;
    // What one thread would have shown before each keyframe packet: frame threads hold `delay`
    // more frames back (counting them shown is safe where the pipeline was not full yet: a
    // frame is then served from the keyframe before, a GOP more decoded, never missed).
    for k in &mut keys {
        k.shown_before = k.shown_before.saturating_add(delay as u32);
    }
    let dts: Option<Vec<i64>> = packets.iter().map(|p| p.dts).collect();
    let dts_in_order = dts.is_some_and(|d| d.windows(2).all(|w| w[0] < w[1]));
    Ok(VideoIndex::from_decode(file.info().clone(), packets.len(), &metas, &keys, file.seek_ways(), dts_in_order))
}

/// The codec threads of a decode pass: every core, up to eight (frame threads scale little
/// beyond that, and each holds pictures of its own).
fn pass_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

/// Decode passes running now. Each uses every core and holds a decoder's frames per frame
/// thread, so a folder of DVD VOBs or camera streams opened at once (a labelling tool listing
/// them) would otherwise start them all together: their memory adds up, they share the cores,
/// and all of them finish at the end. Taking turns, the first files open early.
static DECODE_PASSES: Turns = Turns::new();

struct Turns {
    running: Mutex<usize>,
    freed: Condvar,
}

struct Turn(&'static Turns);

impl Turns {
    const fn new() -> Turns {
        Turns { running: Mutex::new(0), freed: Condvar::new() }
    }

    /// Wait (on the calling blocking thread) until fewer passes run than it takes to keep every
    /// core busy (each runs [`pass_threads`] codec threads), two at least so that one long file
    /// does not hold up all the others, and run.
    fn enter(&'static self, video: &str) -> Turn {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.enter_within((cores / pass_threads()).max(2), video)
    }

    fn enter_within(&'static self, limit: usize, video: &str) -> Turn {
        let mut running = self.running.lock();
        if *running >= limit {
            tracing::info!(video, running = *running, "waiting for another file's decode pass to finish");
        }
        while *running >= limit {
            self.freed.wait(&mut running);
        }
        *running += 1;
        Turn(self)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *self.0.running.lock() -= 1;
        self.0.freed.notify_one();
    }
}

/// The calling thread at a nice value until dropped, then back at 0 (a blocking-pool thread is
/// used again for other work). Threads it starts meanwhile, such as a codec's frame threads,
/// keep the value. Only used where lowering it back is allowed (the pool's probe).
struct AtNice(i32);

impl AtNice {
    fn enter(nice: i32) -> AtNice {
        let me = current_thread_id();
        set_thread_nice(me, nice);
        AtNice(me)
    }
}

impl Drop for AtNice {
    fn drop(&mut self) {
        set_thread_nice(self.0, 0);
    }
}

/// Decode `path` from its start on `threads` codec threads, handing every packet (with its number
/// in decode order) to `on_packet` before it is decoded and every frame to `on_frame`: the whole file, or its first `packets`
/// packets and what the decoder then still holds. Returns the frames frame threading held the
/// output back by ([`frame_thread_delay`](crate::engine::ffmpeg::VideoDecoder::frame_thread_delay)).
fn decode_from_start(
    path: &Path,
    video: &str,
    packets: Option<usize>,
    threads: usize,
    on_packet: &mut dyn FnMut(PacketNo, &VideoPacket),
    on_frame: &mut dyn FnMut(DecodedFrame),
) -> Result<usize, EngineError> {
    let map = |e: FfmpegError| EngineError::from_ffmpeg(video, e);
    let mut file = MediaFile::open(path).map_err(map)?;
    let mut decoder = file.new_decoder(threads).map_err(map)?;
    let mut read = 0;
    loop {
        let packet = if packets.is_some_and(|n| read >= n) { None } else { file.read_packet().map_err(map)? };
        if let Some(p) = &packet {
            on_packet(PacketNo(read as u32), p);
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn decode_passes_take_turns_within_their_limit() {
        static TURNS: Turns = Turns::new();
        static NOW: AtomicUsize = AtomicUsize::new(0);
        static MOST: AtomicUsize = AtomicUsize::new(0);
        let passes: Vec<_> = (0..6)
            .map(|_| {
                std::thread::spawn(|| {
                    let _turn = TURNS.enter_within(2, "v");
                    MOST.fetch_max(NOW.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    NOW.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for p in passes {
            p.join().unwrap();
        }
        assert_eq!(MOST.load(Ordering::SeqCst), 2);
        assert_eq!(*TURNS.running.lock(), 0, "every turn was given back");
    }
}
