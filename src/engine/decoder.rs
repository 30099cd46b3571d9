//! One decoder of one video, and the frame-exact decode loop.
//!
//! A [`FrameDecoder`] owns an open file, a codec context and a pixel converter, and remembers
//! where it stands between requests, so the next frame of a sequential read costs one decode
//! step and no seek. Asked for a frame, it follows the [`plan`](crate::engine::plan): continue
//! forward, or seek to the keyframe the frame depends on, flush, and decode forward. Decoded
//! frames are named by their pts (or counted, for files without timestamps) and never by a
//! guess from the frame rate. When a seek does not deliver (the demuxer landed after the
//! keyframe, or the target never came out), the decoder backs off to an earlier keyframe and
//! finally to the start of the file: a slower answer, never a wrong frame.
//!
//! This type is synchronous and not shared: the pool runs each one on its own OS thread.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::engine::anchor::Anchor;
use crate::engine::buffers::BufferPool;
use crate::engine::ffmpeg::{
    output_capacity, Converter, DecodedFrame, MediaFile, Orientation, Planes, Turner, VideoDecoder, VideoPacket,
};
use crate::engine::index::{FrameIdentity, SeekBy, SeekTarget, VideoIndex};
use crate::engine::output::{OutputSpec, PixelFormat, RawSpec};
use crate::engine::plan::{self, Plan, Position};
use crate::engine::stats::EngineStats;
use crate::engine::threads;
use crate::engine::video::{HeldFile, VideoId};
use crate::engine::EngineError;
use crate::units::{FrameIndex, PacketNo, Pts};

/// A converted frame, ready to cache or return.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub index: FrameIndex,
    pub spec: RawSpec,
    pub key: bool,
    pub data: Bytes,
    /// The decoder's planes, when they are smaller than `data` and convert to it (the frame
    /// at its own size, not turned): what the cache keeps instead (see [`Planes`]).
    pub planes: Option<Arc<Planes>>,
    /// The frame's luma at its native size, one byte per pixel, when the decoder was asked for
    /// it (see [`Luma`]).
    pub luma: Option<Bytes>,
}

/// What a decoder hands out besides (or instead of) the converted frame: the luma a hash is
/// computed from. It is the decoder's 8-bit luma plane as it is (no conversion at all) for the
/// usual YUV formats, and the frame converted to GRAY8 for the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Luma {
    #[default]
    Off,
    /// The converted frame and the luma.
    Also,
    /// The luma alone, as the frame's data (GRAY8 at the native size); nothing is converted.
    Only,
}

/// Tuning of the decode loop, from config.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Codec threads the decoder opens with (1 = none). [`FrameDecoder::set_threads`] changes
    /// it from the next seek on.
    pub threads: usize,
    /// Frames before the target to convert and hand out while scanning to it, so that stepping
    /// backward from the target finds them cached.
    pub keep_behind: u32,
    /// Let the decoder skip non-reference frames that are too far before the target to be
    /// kept: nothing depends on them and nobody will see them.
    pub skip_nonref: bool,
    /// Continue forward instead of seeking when the target's keyframe is this few packets
    /// ahead.
    pub continue_slack: u32,
}

/// Why a pass toward the target failed, and so what to try next.
#[derive(Debug, Clone, Copy)]
enum Miss {
    /// The demuxer landed after the keyframe asked for: try an earlier one.
    Overshoot,
    /// The target was passed or the stream ended without it.
    NotProduced,
    /// The demuxer returned a packet the index does not know: only the start is trustworthy.
    Unrecognised,
    /// Asked to stop at a frame boundary before the target came out.
    Yielded,
    /// A counted video's frames decoded after a seek could not be placed before the target:
    /// try an earlier seek point, then the start.
    Unplaced,
}

pub struct FrameDecoder {
    path: PathBuf,
    video: String,
    /// The file as indexed, asked after every packet read whether it still is.
    held: HeldFile,
    file: MediaFile,
    decoder: VideoDecoder,
    conversion: Conversion,
    /// Whether frames also (or only) carry their luma; see [`FrameDecoder::set_luma`].
    luma: Luma,
    /// Whether frames carry the planes the cache keeps; see [`FrameDecoder::set_planes`].
    planes: bool,
    luma_converter: Converter,
    index: Arc<VideoIndex>,
    options: DecodeOptions,
    stats: Arc<EngineStats>,
    /// Where converted pixels' memory comes from and returns to.
    buffers: Arc<BufferPool>,
    position: Option<Position>,
    /// Codec threads of the open codec context, and the count wanted from the next seek on.
    threads: usize,
    wanted_threads: usize,
    /// Kernel ids of the codec's threads (see [`threads`]).
    codec_threads: Vec<i32>,
    /// After a seek: packets before this one are read but not decoded.
    skip_until: Option<PacketNo>,
    /// After a seek: frames presented before the keyframe (leading frames of an open GOP,
    /// decoded without their references) are not trusted.
    trusted_from: Option<Pts>,
    /// ByCount identity: frames output since the start of the file.
    counted: u32,
    /// ByCount identity after a seek: where the frames decoded since stand, by their digests.
    anchor: Option<Anchor>,
    /// Frames already decoded past the last target (several come out of one decode step, and
    /// all the last ones at the drain): the next sequential request takes them from here. With
    /// the output they were asked in (as raw): a frame's size is its own, which is not the
    /// stream's when the picture size changes mid-stream.
    ahead: std::collections::VecDeque<(OutputSpec, RawFrame)>,
}

/// A codec context for `file` on `threads` codec threads, with the kernel ids of the threads it
/// started (for CPU priorities). One thread starts none, so only frame threading looks for them.
fn open_codec(file: &MediaFile, threads: usize, video: &str) -> Result<(VideoDecoder, Vec<i32>), EngineError> {
    let (decoder, started) = if threads > 1 {
        threads::started_by(|| file.new_decoder(threads))
    } else {
        (file.new_decoder(threads), Vec::new())
    };
    Ok((decoder.map_err(|e| EngineError::from_ffmpeg(video, e))?, started))
}

/// Decoded pictures converted to an output, as the CLI converts them (swscale's bicubic path;
/// frames asked for upright whose video is not through the same filter graph as the CLI's).
/// A decoder converts the frames it hands out with one; so does the decode pass that indexes a
/// file without timestamps, for the frames streams following it wait for
/// ([`crate::engine::video`]): the same pictures, converted alike, are the same bytes.
pub struct Conversion {
    converter: Converter,
    turner: Turner,
    buffers: Arc<BufferPool>,
}

impl Conversion {
    pub fn new(buffers: Arc<BufferPool>) -> Conversion {
        Conversion { converter: Converter::default(), turner: Turner::default(), buffers }
    }

    /// Whether frames in `spec` of a video shown as `orientation` says are turned.
    pub fn turns(spec: &OutputSpec, orientation: &Orientation) -> bool {
        spec.upright && !orientation.is_upright()
    }

    /// `frame` of the video called `video` (shown as `orientation` says) in `spec`: the size and
    /// format it comes out at, and its bytes.
    pub fn convert(
        &mut self,
        video: &str,
        frame: &DecodedFrame,
        spec: &OutputSpec,
        orientation: &Orientation,
    ) -> Result<(RawSpec, Bytes), EngineError> {
        let turn = Self::turns(spec, orientation);
        let coded = (frame.width(), frame.height());
        let (width, height) = if turn { orientation.turned_size(coded) } else { coded };
        let raw = spec.raw_spec(width, height);
        let buffer = self.buffers.take(output_capacity(raw.pixel_format, raw.width, raw.height));
        let data = if turn {
            self.turner.convert(frame, orientation, raw.pixel_format, (raw.width, raw.height), buffer)
        } else {
            self.converter.convert(frame, raw.pixel_format, raw.width, raw.height, buffer)
        }
        .map_err(|e| EngineError::from_ffmpeg(video, e))?;
        Ok((raw, self.buffers.share(data)))
    }
}

/// At most this many frames are kept ahead of the last target.
const MAX_AHEAD: usize = 16;

impl FrameDecoder {
    /// A decoder of the file `id` names, as `index` describes it. Fails with
    /// [`EngineError::ChangedWhileRead`] when the file at the path is no longer that content,
    /// and from then on whenever it changes under the decoder (see [`HeldFile`]).
    pub fn open(
        id: &VideoId,
        video: &str,
        index: Arc<VideoIndex>,
        options: DecodeOptions,
        stats: Arc<EngineStats>,
        buffers: Arc<BufferPool>,
    ) -> Result<FrameDecoder, EngineError> {
        let changed = || EngineError::ChangedWhileRead { video: video.to_string() };
        // Held before FFmpeg opens the path and checked after: both are then the file `id` names.
        let held = HeldFile::open(id).ok_or_else(changed)?;
        let file = MediaFile::open(&id.path).map_err(|e| EngineError::from_ffmpeg(video, e))?;
        if !id.unchanged() {
            return Err(changed());
        }
        let (decoder, codec_threads) = open_codec(&file, options.threads, video)?;
        Ok(FrameDecoder {
            path: id.path.clone(),
            video: video.to_string(),
            held,
            file,
            decoder,
            conversion: Conversion::new(buffers.clone()),
            luma: Luma::Off,
            luma_converter: Converter::default(),
            planes: true,
            index,
            options,
            stats,
            buffers,
            position: None,
            threads: options.threads,
            wanted_threads: options.threads,
            codec_threads,
            skip_until: None,
            trusted_from: None,
            counted: 0,
            anchor: None,
            ahead: std::collections::VecDeque::new(),
        })
    }

    pub fn position(&self) -> Option<Position> {
        self.position
    }

    pub fn index(&self) -> &Arc<VideoIndex> {
        &self.index
    }

    /// Go on with `index`, which counts more of the file's frames than this decoder's, the
    /// first of them the same ([`OpenVideo::decodes_like`](crate::engine::video::OpenVideo)):
    /// while a file is indexed by a decode pass, a decoder of the frames counted so far serves
    /// the frames counted since from where it stands, without a seek. Positions and the anchor
    /// keep their meaning (frame `i` is frame `i` of both); a frame is still named only by a
    /// digest it matches.
    pub fn count_further(&mut self, index: Arc<VideoIndex>) {
        debug_assert!(index.frame_count() >= self.index.frame_count());
        self.index = index;
    }

    /// Codec threads to use from the next seek on. The thread count of an FFmpeg codec context
    /// is fixed when it opens, so changing it means a new context; a seek flushes the decoder
    /// anyway, which makes it the one moment a new context costs nothing but its opening.
    pub fn set_threads(&mut self, threads: usize) {
        self.wanted_threads = threads.max(1);
    }

    /// Codec threads of the codec context now open.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The kernel ids of those threads (none with one thread, or where they cannot be listed),
    /// for CPU priorities: they do the decoding, not the thread calling into the decoder.
    pub fn codec_thread_ids(&self) -> &[i32] {
        &self.codec_threads
    }

    /// Hand out each frame's luma from now on (or stop), as [`Luma`] says. Frames already decoded
    /// ahead without it are dropped (a frame among them asked for later is decoded again: the
    /// plan seeks for a target at or before the last frame output).
    pub fn set_luma(&mut self, luma: Luma) {
        if self.luma != luma {
            self.luma = luma;
            self.ahead.clear();
        }
    }

    /// Whether frames carry a copy of the decoder's planes (where smaller than the converted
    /// frame): what the cache keeps of them. On by default; off for passes whose frames are
    /// never cached (hashes, clips), which would copy them for nothing.
    pub fn set_planes(&mut self, planes: bool) {
        self.planes = planes;
    }

    /// Decode `target` converted to `spec`. Frames met on the way that lie within the
    /// configured `keep_behind` frames before the target, or after it in the same decode step,
    /// are converted too and handed to `side` (for the cache).
    pub fn frame(
        &mut self,
        target: FrameIndex,
        spec: &OutputSpec,
        side: &mut dyn FnMut(RawFrame),
    ) -> Result<RawFrame, EngineError> {
        self.frame_keeping(target, spec, self.options.keep_behind, side, &mut || false)?.ok_or_else(|| {
            EngineError::DecodeFailed {
                video: self.video.clone(),
                reason: "a decode that may not yield yielded".into(),
            }
        })
    }

    /// [`FrameDecoder::frame`] with this request's own number of frames to keep behind the
    /// target, stopping early when `yield_now` says so. `yield_now` is asked after each decode
    /// step that has not produced the target yet; when it answers true the decoder stops there,
    /// at a frame boundary with its position intact, and this returns `Ok(None)`: asking again
    /// later continues from there (or seeks, if the decoder was used for something else in
    /// between). That is how a scheduler lets urgent work pass without losing exactness.
    pub fn frame_keeping(
        &mut self,
        target: FrameIndex,
        spec: &OutputSpec,
        keep_behind: u32,
        side: &mut dyn FnMut(RawFrame),
        yield_now: &mut dyn FnMut() -> bool,
    ) -> Result<Option<RawFrame>, EngineError> {
        if self.index.frame(target).is_none() {
            return Err(EngineError::IndexOutOfRange {
                video: self.video.clone(),
                index: target.0 as i64,
                count: self.index.frame_count(),
            });
        }
        while let Some((_, front)) = self.ahead.front() {
            if front.index < target {
                self.ahead.pop_front();
            } else {
                break;
            }
        }
        if let Some((asked, front)) = self.ahead.front() {
            if front.index == target && *asked == spec.as_raw() {
                return Ok(self.ahead.pop_front().map(|(_, frame)| frame));
            }
        }
        self.ahead.clear();
        let mut plan = plan::plan(&self.index, self.position, target, self.options.continue_slack);
        // A seek starts at the target's keyframe, so the frames kept reach back at most to it:
        // backward steps inside the GOP are free. Going back into the previous GOP as well
        // would double the cold cost of short-GOP videos (measured: GOP 50, 47 -> 88 ms).
        let mut from_start_tried = false;
        let mut not_produced = 0;
        let mut unplaced = 0;
        loop {
            if let Plan::Seek(seek) = plan {
                from_start_tried |= seek == SeekTarget::Start;
                self.seek(seek)?;
            }
            match self.forward_to(target, spec, keep_behind, side, yield_now)? {
                Ok(frame) => return Ok(Some(frame)),
                Err(Miss::Yielded) => return Ok(None),
                Err(miss) => {
                    self.position = None;
                    not_produced += matches!(miss, Miss::NotProduced) as u32;
                    unplaced += matches!(miss, Miss::Unplaced) as u32;
                    // Decoding from the right keyframe and from the one before both failed:
                    // the frame's data is damaged; decoding the whole file again won't help.
                    if from_start_tried || not_produced >= 2 {
                        return Err(EngineError::FrameUnavailable {
                            video: self.video.clone(),
                            index: target.0,
                            reason: "the decoder never produced it, even decoding from the start of the file".into(),
                        });
                    }
                    let current = match plan {
                        Plan::Seek(s) => s,
                        Plan::Continue => self.index.frames[target.get()].seek,
                    };
                    plan = Plan::Seek(match miss {
                        Miss::Overshoot | Miss::NotProduced => self.index.earlier(current),
                        Miss::Unplaced if unplaced < 2 => self.index.earlier(current),
                        Miss::Unrecognised | Miss::Yielded | Miss::Unplaced => SeekTarget::Start,
                    });
                    tracing::debug!(video = %self.video, target = target.0, ?miss, ?plan, "seek did not deliver; backing off");
                }
            }
        }
    }

    /// Position the decoder so that the next packet decoded is the seek target's keyframe.
    fn seek(&mut self, target: SeekTarget) -> Result<(), EngineError> {
        self.stats.seeks.inc();
        tracing::trace!(video = %self.video, ?target, position = ?self.position, "seek");
        self.decoder.flush();
        self.counted = 0;
        self.ahead.clear();
        if self.wanted_threads != self.threads {
            (self.decoder, self.codec_threads) = open_codec(&self.file, self.wanted_threads, &self.video)?;
            self.threads = self.wanted_threads;
        }
        match target {
            SeekTarget::Start => {
                // Reopening is the one way to the start that no demuxer can get wrong.
                self.file = MediaFile::open(&self.path).map_err(|e| EngineError::from_ffmpeg(&self.video, e))?;
                // The path may name another file by now (replaced by a rename).
                if !self.held.at_path() {
                    return Err(EngineError::ChangedWhileRead { video: self.video.clone() });
                }
                self.skip_until = None;
                self.trusted_from = None;
                self.anchor = None;
            }
            SeekTarget::Point(i) => {
                let point = self.index.seek_points[i];
                let sought = match (self.index.seek_by, point.pos) {
                    (SeekBy::Byte, Some(pos)) => self.file.seek_byte(pos),
                    _ => self.file.seek_timestamp(point.seek_timestamp().unwrap_or(i64::MIN)),
                };
                if sought.is_err() {
                    // Fall back to the start rather than fail: slower, still exact.
                    return self.seek(SeekTarget::Start);
                }
                match self.index.identity {
                    FrameIdentity::ByPts => {
                        self.skip_until = Some(point.packet);
                        self.trusted_from = point.pts.map(Pts);
                    }
                    FrameIdentity::ByCount => {
                        // Whatever packet the demuxer lands on, the frames are recognised.
                        self.skip_until = None;
                        self.trusted_from = None;
                        self.anchor = Some(Anchor::new(self.index.first_frame_of(target)));
                    }
                }
            }
        }
        let from = self.index.seek_packet(target);
        self.position = Some(Position { decoding_from: from, next_packet: from, last_output: None, ended: false });
        Ok(())
    }

    /// Read and decode forward until `target` comes out.
    fn forward_to(
        &mut self,
        target: FrameIndex,
        spec: &OutputSpec,
        keep_behind: u32,
        side: &mut dyn FnMut(RawFrame),
        yield_now: &mut dyn FnMut() -> bool,
    ) -> Result<Result<RawFrame, Miss>, EngineError> {
        let keep_from = FrameIndex(target.0.saturating_sub(keep_behind));
        // Packets presented before this pts are too early to keep and may skip non-ref decoding.
        let skip_below = match (self.index.identity, self.options.skip_nonref) {
            (FrameIdentity::ByPts, true) => Some(self.index.frames[keep_from.get()].pts.0),
            _ => None,
        };
        let mut found: Option<RawFrame> = None;
        let mut passed = false;
        // How far a counted video's frames garbled after a seek may go on, and what not finding
        // the target means.
        let until = FrameIndex(target.0.saturating_add(MAX_AHEAD as u32 + 1));
        let missed = if self.anchor.is_some() { Miss::Unplaced } else { Miss::NotProduced };
        loop {
            let Some(pos) = self.position else { return Ok(Err(Miss::NotProduced)) };
            if pos.ended {
                return Ok(found.ok_or(missed));
            }
            let packet = self.file.read_packet();
            if !self.held.unchanged() {
                return Err(EngineError::ChangedWhileRead { video: self.video.clone() });
            }
            let packet = packet.map_err(|e| EngineError::from_ffmpeg(&self.video, e))?;
            let skip = match &packet {
                None => false,
                Some(p) => {
                    let no = match self.identify_packet(p, pos.next_packet) {
                        Ok(no) => no,
                        Err(miss) => return Ok(Err(miss)),
                    };
                    if let Some(first) = self.skip_until {
                        if no < first {
                            continue;
                        }
                        if no > first {
                            return Ok(Err(Miss::Overshoot));
                        }
                        self.skip_until = None;
                    }
                    self.position = Some(Position { next_packet: PacketNo(no.0 + 1), ..pos });
                    let pts = p.meta.pts.unwrap_or(i64::MAX);
                    skip_below.is_some_and(|limit| pts < limit && !p.meta.key)
                        || (!p.meta.key && self.counted_skippable(keep_from))
                }
            };
            let at_end = packet.is_none();
            let mut outputs: Vec<(FrameIndex, DecodedFrame)> = Vec::new();
            self.decoder
                .decode(packet.as_ref(), skip, &mut |frame| {
                    outputs.push((FrameIndex(0), frame));
                })
                .map_err(|e| EngineError::from_ffmpeg(&self.video, e))?;
            for (_, frame) in outputs.drain(..) {
                let Some(idx) = self.identify_frame(&frame) else {
                    if let Some(anchor) = &self.anchor {
                        self.stats.frames_decoded.inc();
                        // Not placed yet, but with the target's digest: its pixels. Or after the
                        // target wherever it stands.
                        let (is_target, past) = (anchor.could_be(target), anchor.past(target));
                        if found.is_none() && is_target {
                            found = Some(self.convert(target, &frame, spec)?);
                        }
                        passed |= found.is_none() && past;
                    }
                    continue;
                };
                self.stats.frames_decoded.inc();
                if let Some(p) = self.position.as_mut() {
                    p.last_output = Some(idx);
                }
                if idx > target && found.is_none() {
                    passed = true;
                }
                if idx < keep_from || (idx > target && found.is_none()) {
                    continue;
                }
                let converted = self.convert(idx, &frame, spec)?;
                if idx == target {
                    found = Some(converted);
                } else {
                    if idx > target && self.ahead.len() < MAX_AHEAD {
                        self.ahead.push_back((spec.as_raw(), converted.clone()));
                    }
                    side(converted);
                }
            }
            if at_end {
                if let Some(p) = self.position.as_mut() {
                    p.ended = true;
                }
            }
            if let Some(frame) = found.take() {
                return Ok(Ok(frame));
            }
            if passed || self.anchor.as_ref().is_some_and(|a| a.lost(until)) {
                return Ok(Err(missed));
            }
            if yield_now() {
                return Ok(Err(Miss::Yielded));
            }
        }
    }

    /// Whether a counted video's decoder, after a seek, may skip non-reference frames: nothing
    /// says which frame a packet holds, but none decoded now comes out more than the decoder's
    /// output delay after the last frame placed, so while that is well before the first frame
    /// kept, what is skipped is not wanted. Only right after a frame placed, whose digest is its
    /// own (in a still scene a frame may be placed at one of its look-alikes, which is right for
    /// its pixels but not as a position; and after a frame not placed, where the decoder stands
    /// is not known). A skipped target is still never served wrong: it would not come out, and
    /// the decode would back off.
    fn counted_skippable(&self, keep_from: FrameIndex) -> bool {
        let last = self.position.and_then(|p| p.last_output);
        let certain = |last: FrameIndex| self.index.digest_unique.get(last.get()) == Some(&true);
        match (&self.anchor, last) {
            (Some(anchor), Some(last)) if self.options.skip_nonref && anchor.placed_last() && certain(last) => {
                u64::from(last.0) + self.decoder.output_delay() as u64 + 2 < u64::from(keep_from.0)
            }
            _ => false,
        }
    }

    fn identify_packet(&self, packet: &VideoPacket, expected: PacketNo) -> Result<PacketNo, Miss> {
        match self.index.identity {
            FrameIdentity::ByCount => Ok(expected),
            FrameIdentity::ByPts => {
                packet.meta.pts.and_then(|pts| self.index.packet_by_pts(pts)).ok_or(Miss::Unrecognised)
            }
        }
    }

    /// The frame `frame` is, if known.
    fn identify_frame(&mut self, frame: &DecodedFrame) -> Option<FrameIndex> {
        match self.index.identity {
            FrameIdentity::ByPts => {
                let pts = frame.pts()?;
                if self.trusted_from.is_some_and(|t| pts < t) {
                    return None;
                }
                self.index.frame_by_pts(pts)
            }
            FrameIdentity::ByCount => match &mut self.anchor {
                Some(anchor) => anchor.place(&self.index.digests, frame.digest()),
                None => {
                    let idx = FrameIndex(self.counted);
                    self.counted += 1;
                    (idx.get() < self.index.frame_count()).then_some(idx)
                }
            },
        }
    }

    fn convert(&mut self, idx: FrameIndex, frame: &DecodedFrame, spec: &OutputSpec) -> Result<RawFrame, EngineError> {
        let key = self.index.frames[idx.get()].key;
        let luma = match self.luma {
            Luma::Off => None,
            Luma::Also | Luma::Only => Some(self.luma_of(frame)?),
        };
        if let (Luma::Only, Some(data)) = (self.luma, &luma) {
            let spec = RawSpec { pixel_format: PixelFormat::Gray8, width: frame.width(), height: frame.height() };
            return Ok(RawFrame { index: idx, spec, key, data: data.clone(), planes: None, luma });
        }
        let orientation = &self.index.stream.orientation;
        let (raw, data) = self.conversion.convert(&self.video, frame, spec, orientation)?;
        let turned = Conversion::turns(spec, orientation);
        let planes = match frame.planes_len() {
            Some(len)
                if self.planes
                    && !turned
                    && (raw.width, raw.height) == (frame.width(), frame.height())
                    && len < data.len() =>
            {
                frame.copy_planes(self.buffers.take(len), |b| self.buffers.share(b)).map(Arc::new)
            }
            _ => None,
        };
        Ok(RawFrame { index: idx, spec: raw, key, data, planes, luma })
    }

    /// The frame's luma plane, or the frame converted to GRAY8 where it has none to copy.
    fn luma_of(&mut self, frame: &DecodedFrame) -> Result<Bytes, EngineError> {
        let (w, h) = (frame.width(), frame.height());
        let mut buffer = self.buffers.take(output_capacity(PixelFormat::Gray8, w, h));
        if !frame.luma_plane(&mut buffer) {
            buffer = self
                .luma_converter
                .convert(frame, PixelFormat::Gray8, w, h, buffer)
                .map_err(|e| EngineError::from_ffmpeg(&self.video, e))?;
        }
        Ok(self.buffers.share(buffer))
    }
}
