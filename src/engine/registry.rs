//! The frame registry: decoded frames in the byte-bounded cache, frames being decoded, and who
//! waits for them.
//!
//! It sits below the scheduler: the store registers requests here (the first to miss a frame
//! becomes its leader and submits a job; later ones wait on the same entry: single-flight), and
//! the decoder threads call it directly as frames come out, which caches them and wakes the
//! waiters. A speculative fill registers the frames it will produce before its cold answer
//! leaves, so a client stepping back waits on the fill; the entry carries a way to raise the
//! fill's class to the waiter's.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::engine::buffers::BufferPool;
use crate::engine::cache::{Admission, ByteLru, Weigh};
use crate::engine::decoder::RawFrame;
use crate::engine::ffmpeg::{output_capacity, Planes};
use crate::engine::output::{self, Encoding, OutputSpec, PixelFormat};
use crate::engine::schedule::Class;
use crate::engine::video::{OpenVideo, VideoId};
use crate::engine::EngineError;
use crate::units::{ByteSize, FrameIndex};

/// Everything about a returned frame but its bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameMeta {
    pub index: FrameIndex,
    pub pts: i64,
    pub time_s: f64,
    pub duration_s: f64,
    pub width: u32,
    pub height: u32,
    pub key_frame: bool,
    pub pixel_format: PixelFormat,
    pub encoding: Encoding,
}

/// A frame as a decode or a hit produced it. Cloning shares the pixels.
#[derive(Debug, Clone)]
pub struct CachedFrame {
    pub meta: FrameMeta,
    pub data: Bytes,
    /// The decoder's planes, when the cache keeps them instead of `data`.
    pub planes: Option<Arc<Planes>>,
}

/// A frame as the cache holds it: its output bytes, or, where the decoder handed its planes
/// along (smaller than the output), those planes (a 720p 4:2:0 frame is half its RGB, so the
/// same bytes hold twice the frames), converted again on each hit (about 0.3 ms of a core at
/// 720p). Converting the planes gives exactly the bytes the decode gave ([`Planes`]). Frames
/// read ahead of a sequential reader come without planes (the worker's choice): the decoder
/// converted them already, and the reader's next step should not pay a conversion again
/// (frame by frame reading lost a fifth of its speed when they were kept as planes).
#[derive(Debug, Clone)]
pub(crate) enum Stored {
    Packed(FrameMeta, Bytes),
    Planes(FrameMeta, Arc<Planes>),
}

impl Weigh for Stored {
    fn payload_bytes(&self) -> u64 {
        match self {
            Stored::Packed(_, data) => data.len() as u64,
            Stored::Planes(_, planes) => planes.len() as u64,
        }
    }
}

impl Stored {
    /// What the cache keeps of `frame`: its planes where it carries them.
    pub(crate) fn new(frame: &CachedFrame) -> Stored {
        match &frame.planes {
            Some(planes) => Stored::Planes(frame.meta, planes.clone()),
            None => Stored::Packed(frame.meta, frame.data.clone()),
        }
    }

    /// Whether [`Stored::unpack`] converts (CPU work, for a blocking thread).
    pub(crate) fn converts(&self) -> bool {
        matches!(self, Stored::Planes(..))
    }

    /// The frame as it was handed out when decoded: its planes converted on this thread.
    pub(crate) fn unpack(self, video: &str, buffers: &Arc<BufferPool>) -> Result<CachedFrame, EngineError> {
        match self {
            Stored::Packed(meta, data) => Ok(CachedFrame { meta, data, planes: None }),
            Stored::Planes(meta, planes) => {
                let out = buffers.take(output_capacity(meta.pixel_format, meta.width, meta.height));
                let data = planes
                    .convert(meta.pixel_format, meta.width, meta.height, out)
                    .map_err(|e| EngineError::from_ffmpeg(video, e))?;
                Ok(CachedFrame { meta, data: buffers.share(data), planes: Some(planes) })
            }
        }
    }
}

/// A frame handed to a caller.
#[derive(Debug, Clone)]
pub struct Frame {
    pub meta: FrameMeta,
    pub data: Bytes,
    pub cache_hit: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FrameKey {
    pub(crate) video: VideoId,
    pub(crate) index: FrameIndex,
    pub(crate) spec: OutputSpec,
}

/// A frame being decoded and who waits for it.
#[derive(Default)]
pub(crate) struct InFlight {
    pub(crate) waiters: Vec<oneshot::Sender<Result<CachedFrame, EngineError>>>,
    /// Raises the job producing the frame to a class: a request that joins calls it with its
    /// own, so a click never waits behind the stream or fill that asked first at a lower class.
    pub(crate) promote: Option<Arc<dyn Fn(Class) + Send + Sync>>,
    /// A speculative fill, not a request, registered the frame.
    pub(crate) fill: bool,
    /// The decoder the request's job is queued on (`None`: waiting for a decoder slot, or not
    /// submitted yet).
    pub(crate) decoder: Option<u64>,
}

/// The cache and the frames in flight, shared by the store (requests) and the decoder threads.
pub struct Registry {
    pub(crate) cache: ByteLru<FrameKey, Stored>,
    pub(crate) inflight: Mutex<HashMap<FrameKey, InFlight>>,
    /// Pixel memory for frames converted from the cache's planes.
    pub(crate) buffers: Arc<BufferPool>,
}

impl Registry {
    pub fn new(cache_size: ByteSize, buffers: Arc<BufferPool>) -> Registry {
        Registry { cache: ByteLru::new(cache_size), inflight: Mutex::new(HashMap::new()), buffers }
    }

    pub(crate) fn cached_from_raw(video: &OpenVideo, frame: &RawFrame) -> CachedFrame {
        let entry = &video.index.frames[frame.index.get()];
        CachedFrame {
            meta: FrameMeta {
                index: frame.index,
                pts: entry.pts.0,
                time_s: entry.time_s,
                duration_s: entry.duration_s,
                width: frame.spec.width,
                height: frame.spec.height,
                key_frame: frame.key,
                pixel_format: frame.spec.pixel_format,
                encoding: Encoding::Raw,
            },
            data: frame.data.clone(),
            planes: frame.planes.clone(),
        }
    }

    /// How many frames of `video` in `spec` the cache's speculative share holds: the bound on
    /// read-ahead and on the backtrack window
    /// ([`readahead_depth`](crate::engine::schedule::readahead_depth),
    /// [`window_depth`](crate::engine::schedule::window_depth)).
    pub(crate) fn speculative_room(&self, video: &OpenVideo, spec: OutputSpec) -> u32 {
        u32::try_from(self.cache.speculative_room(video.frame_bytes(spec))).unwrap_or(u32::MAX)
    }

    /// A decode finished: cache it and wake everyone waiting for it.
    pub(crate) fn complete(&self, key: FrameKey, result: Result<CachedFrame, EngineError>) {
        if let Ok(frame) = &result {
            // A frame a fill produced that nobody has asked for yet is speculation, cached as
            // such: counted as a use it would look used twice once a stream passes through it,
            // and a window's frames would then keep out the stream's frames clients ask for.
            let asked =
                self.inflight.lock().get(&key).is_none_or(|f| !f.fill || f.waiters.iter().any(|w| !w.is_closed()));
            let admission = if asked { Admission::Requested } else { Admission::Speculative };
            self.cache.insert(key.clone(), Stored::new(frame), admission);
        }
        let waiters = self.inflight.lock().remove(&key).unwrap_or_default().waiters;
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }

    pub fn side_frame(&self, video: &OpenVideo, spec: &OutputSpec, frame: RawFrame) {
        let key = FrameKey { video: video.id.clone(), index: frame.index, spec: *spec };
        let cached = Self::cached_from_raw(video, &frame);
        // Someone may be waiting for exactly this frame (a batch asks ahead): serve them too.
        // Speculation is cached under the in-flight lock, the order `FrameStore::raw` takes them
        // in, so a request sees either this frame in the cache or its own registration here.
        // A registration stays until `complete` has cached the frame, so a request arriving in
        // between joins it.
        let inflight = self.inflight.lock();
        if inflight.contains_key(&key) {
            drop(inflight);
            self.complete(key, Ok(cached));
        } else if !self.cache.contains(&key) {
            self.cache.insert(key, Stored::new(&cached), Admission::Speculative);
        }
    }

    pub fn abandoned(&self, video: &OpenVideo, spec: &OutputSpec, index: FrameIndex) -> bool {
        let key = FrameKey { video: video.id.clone(), index, spec: *spec };
        // Decided and forgotten under the lock `raw` registers under: a request arriving after
        // this finds no entry and submits a job of its own, never waits on a dropped one.
        let mut inflight = self.inflight.lock();
        let gone = inflight.get(&key).is_some_and(|f| !f.fill && f.waiters.iter().all(|w| w.is_closed()));
        if gone {
            inflight.remove(&key);
        }
        gone
    }

    /// The earliest frame of `video` in `spec` before `before` that a request waits for
    /// (registered in flight by a request, not a fill, with a waiter still listening) and that
    /// no decoder but `decoder` has queued, among those `passed` accepts: what a decode on
    /// `decoder` on its way to `before` should keep, so that those requests are answered on the
    /// way rather than by a seek back afterwards (a frame another decoder works on is left to
    /// it: keeping it here would make this answer wait for conversions done twice).
    pub fn earliest_waited(
        &self,
        video: &OpenVideo,
        spec: &OutputSpec,
        (before, decoder): (FrameIndex, u64),
        passed: impl Fn(FrameIndex) -> bool,
    ) -> Option<FrameIndex> {
        self.inflight
            .lock()
            .iter()
            .filter(|(k, f)| {
                k.index < before
                    && k.video == video.id
                    && k.spec == *spec
                    && !f.fill
                    && f.decoder.is_none_or(|d| d == decoder)
                    && f.waiters.iter().any(|w| !w.is_closed())
            })
            .map(|(k, _)| k.index)
            .filter(|&i| passed(i))
            .min()
    }

    /// The request for `key` is queued on `decoder` (`None`: it waits for a slot again).
    pub(crate) fn routed(&self, key: &FrameKey, decoder: Option<u64>) {
        if let Some(f) = self.inflight.lock().get_mut(key) {
            f.decoder = decoder;
        }
    }

    pub fn has_frame(&self, video: &OpenVideo, spec: &OutputSpec, index: FrameIndex) -> bool {
        let key = FrameKey { video: video.id.clone(), index, spec: *spec };
        self.cache.contains(&key) || self.inflight.lock().contains_key(&key)
    }

    pub fn reserve(
        &self,
        video: &OpenVideo,
        spec: &OutputSpec,
        frames: &[FrameIndex],
        promote: Arc<dyn Fn(Class) + Send + Sync>,
    ) -> Vec<FrameIndex> {
        let mut inflight = self.inflight.lock();
        frames
            .iter()
            .copied()
            .filter(|&index| {
                let key = FrameKey { video: video.id.clone(), index, spec: *spec };
                if self.cache.contains(&key) || inflight.contains_key(&key) {
                    return false;
                }
                inflight.insert(
                    key,
                    InFlight { waiters: Vec::new(), promote: Some(promote.clone()), fill: true, decoder: None },
                );
                true
            })
            .collect()
    }

    pub fn release(&self, video: &OpenVideo, spec: &OutputSpec, index: FrameIndex) -> bool {
        let key = FrameKey { video: video.id.clone(), index, spec: *spec };
        let mut inflight = self.inflight.lock();
        let waited = inflight.get(&key).is_some_and(|f| f.waiters.iter().any(|w| !w.is_closed()));
        if !waited {
            inflight.remove(&key);
        }
        waited
    }

    pub fn fail(&self, video: &OpenVideo, spec: &OutputSpec, index: FrameIndex, error: EngineError) {
        let key = FrameKey { video: video.id.clone(), index, spec: *spec };
        self.complete(key, Err(error));
    }

    /// Whether the cache holds the frame (not counted as a use).
    pub fn is_cached(&self, video: &OpenVideo, spec: &OutputSpec, index: FrameIndex) -> bool {
        self.cache.contains(&FrameKey { video: video.id.clone(), index, spec: *spec })
    }

    /// The frame from the cache, converted on this thread where the cache keeps planes.
    pub fn cached(
        &self,
        video: &OpenVideo,
        spec: &OutputSpec,
        index: FrameIndex,
    ) -> Option<Result<RawFrame, EngineError>> {
        let key = FrameKey { video: video.id.clone(), index, spec: *spec };
        let hit = match self.cache.get(&key)?.unpack(&video.name, &self.buffers) {
            Ok(hit) => hit,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(RawFrame {
            index,
            spec: output::RawSpec {
                pixel_format: hit.meta.pixel_format,
                width: hit.meta.width,
                height: hit.meta.height,
            },
            key: hit.meta.key_frame,
            data: hit.data,
            planes: hit.planes,
            luma: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ffmpeg::{PacketMeta, StreamInfo};
    use crate::engine::index::VideoIndex;
    use crate::engine::index_store::ContentKey;

    fn video(name: &str) -> OpenVideo {
        let packets: Vec<PacketMeta> = (0..10)
            .map(|i| PacketMeta { pts: Some(i), dts: Some(i), duration: 1, key: i == 0, discard: false })
            .collect();
        let index = VideoIndex::from_packets(StreamInfo::for_tests(64, 25), &packets).unwrap();
        let id = VideoId { path: name.into(), device: 0, inode: 0, size: 0, modified_ns: 0 };
        OpenVideo { id, name: name.into(), index: Arc::new(index), content_key: ContentKey([0; 16]) }
    }

    /// Registers `index` as a request would; the receiver is the request listening.
    fn request(
        r: &Registry,
        v: &OpenVideo,
        spec: OutputSpec,
        index: u32,
    ) -> oneshot::Receiver<Result<CachedFrame, EngineError>> {
        let (tx, rx) = oneshot::channel();
        let key = FrameKey { video: v.id.clone(), index: FrameIndex(index), spec };
        r.inflight.lock().insert(key, InFlight { waiters: vec![tx], promote: None, fill: false, decoder: None });
        rx
    }

    fn frame(v: &OpenVideo, index: u32) -> CachedFrame {
        let raw = RawFrame {
            index: FrameIndex(index),
            spec: output::RawSpec { pixel_format: PixelFormat::Rgb24, width: 4, height: 4 },
            key: false,
            data: Bytes::from(vec![index as u8; 48]),
            planes: None,
            luma: None,
        };
        Registry::cached_from_raw(v, &raw)
    }

    #[test]
    fn a_fills_frames_nobody_asked_for_are_cached_as_speculation() {
        let r = Registry::new(ByteSize(1 << 20), BufferPool::new(ByteSize(0)));
        let v = video("v.mp4");
        let spec = OutputSpec::default();
        let key = |i| FrameKey { video: v.id.clone(), index: FrameIndex(i), spec };
        assert_eq!(r.reserve(&v, &spec, &[FrameIndex(1), FrameIndex(2)], Arc::new(|_| {})).len(), 2);
        r.complete(key(1), Ok(frame(&v, 1)));
        let speculative = r.cache.stats().speculative_bytes;
        assert!(speculative > 0, "nobody waited for frame 1: speculation");
        // A client stepping back waits on the fill's frame 2: it was asked for.
        let (tx, rx) = oneshot::channel();
        r.inflight.lock().get_mut(&key(2)).unwrap().waiters.push(tx);
        r.complete(key(2), Ok(frame(&v, 2)));
        assert!(rx.blocking_recv().unwrap().is_ok());
        assert_eq!(r.cache.stats().speculative_bytes, speculative, "frame 2 was requested");
        assert_eq!(r.cache.stats().entries, 2);
        // A request's own decode is requested, whoever else waits.
        let _three = request(&r, &v, spec, 3);
        r.complete(key(3), Ok(frame(&v, 3)));
        assert_eq!(r.cache.stats().speculative_bytes, speculative);
    }

    #[test]
    fn the_earliest_waited_frame_is_a_listened_request_before_the_target_no_other_decoder_has() {
        let r = Registry::new(ByteSize(1 << 20), BufferPool::new(ByteSize(0)));
        let (v, other) = (video("v.mp4"), video("w.mp4"));
        let spec = OutputSpec::default();
        let gray = OutputSpec { pixel_format: PixelFormat::Gray8, ..spec };
        let all = |_: FrameIndex| true;
        assert_eq!(r.earliest_waited(&v, &spec, (FrameIndex(7), 1), all), None);
        let _w = request(&r, &other, spec, 1);
        let _g = request(&r, &v, gray, 2);
        let _after = request(&r, &v, spec, 8);
        assert_eq!(r.earliest_waited(&v, &spec, (FrameIndex(7), 1), all), None, "other video, other spec, after");
        let gone = request(&r, &v, spec, 3);
        drop(gone);
        assert_eq!(r.earliest_waited(&v, &spec, (FrameIndex(7), 1), all), None, "nobody listens any more");
        r.reserve(&v, &spec, &[FrameIndex(4)], Arc::new(|_| {}));
        assert_eq!(r.earliest_waited(&v, &spec, (FrameIndex(7), 1), all), None, "a fill produces its own frames");
        let _five = request(&r, &v, spec, 5);
        let _six = request(&r, &v, spec, 6);
        assert_eq!(r.earliest_waited(&v, &spec, (FrameIndex(7), 1), all), Some(FrameIndex(5)));
        assert_eq!(r.earliest_waited(&v, &spec, (FrameIndex(7), 1), |i| i > FrameIndex(5)), Some(FrameIndex(6)));
        assert_eq!(r.earliest_waited(&v, &spec, (FrameIndex(5), 1), all), None, "the target itself is not behind it");
        // Frame 5 queued on decoder 1 (the one asking) still counts; on decoder 2 it is left to
        // that decoder; waiting for a slot again, it counts.
        let five = FrameKey { video: v.id.clone(), index: FrameIndex(5), spec };
        r.routed(&five, Some(1));
        assert_eq!(r.earliest_waited(&v, &spec, (FrameIndex(7), 1), all), Some(FrameIndex(5)));
        r.routed(&five, Some(2));
        assert_eq!(r.earliest_waited(&v, &spec, (FrameIndex(7), 1), all), Some(FrameIndex(6)));
        r.routed(&five, None);
        assert_eq!(r.earliest_waited(&v, &spec, (FrameIndex(7), 1), all), Some(FrameIndex(5)));
    }
}
