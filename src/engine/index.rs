//! The index of a video: which frames exist, in presentation order, and where to start decoding
//! each of them.
//!
//! Headers lie (a wrong `nb_frames`, a duration longer than the video, no count at all in
//! mkv), so framesrv never trusts them. Opening a video demuxes every packet of its video stream
//! once, without decoding, and derives everything from the packets: the frames in presentation
//! order (sorted by pts), the seek points (keyframe packets), and for every frame the seek point
//! it must be decoded from. Two kinds of files cannot be indexed from packets alone, because
//! their packets carry no usable pts (raw `.h264`/`.hevc` streams, MPEG-PS, AVI with packed
//! B-frames); for those the index is built from one sequential decode at open, and frames are
//! identified by counting from the start of the stream. That decode also records where each
//! keyframe packet lies and a digest of every frame, so that a decoder may still seek in
//! such a file: it recognises the frames it decodes after the seek by their digests (see
//! [`anchor`](crate::engine::anchor)).
//!
//! Everything here is pure data and logic, unit-tested without FFmpeg.

use crate::engine::ffmpeg::{PacketMeta, SeekWays, StreamInfo};
use crate::units::{FrameIndex, PacketNo, Pts};

/// How a decoded frame is matched to its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameIdentity {
    /// Every packet has a unique pts: a decoded frame's pts names it, and the decoder may seek
    /// to any keyframe.
    ByPts,
    /// Packets lack usable timestamps: frames are counted from the start of the stream, and
    /// after a seek recognised by their digests.
    ByCount,
}

/// How a decoder asks the demuxer for a seek point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekBy {
    /// By the packet's timestamp (pts or dts, whichever is earlier).
    Timestamp,
    /// By the packet's byte position in the file (raw streams and MPEG-PS, whose packets lack
    /// timestamps).
    Byte,
}

/// Where decoding of a frame must begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SeekTarget {
    /// The very start of the file (reopened, so no demuxer seek is involved).
    Start,
    /// A keyframe packet, by its position in [`VideoIndex::seek_points`].
    Point(usize),
}

/// A keyframe packet the decoder can start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeekPoint {
    pub packet: PacketNo,
    pub pts: Option<i64>,
    pub dts: Option<i64>,
    /// Where the packet starts in the file ([`SeekBy::Byte`] only).
    pub pos: Option<i64>,
}

impl SeekPoint {
    /// The timestamp to hand a backward seek so that it lands at or before this packet
    /// whether the demuxer indexes by dts (mp4, avi, ts) or by pts (mkv).
    pub fn seek_timestamp(&self) -> Option<i64> {
        match (self.pts, self.dts) {
            (Some(p), Some(d)) => Some(p.min(d)),
            (p, d) => p.or(d),
        }
    }
}

/// One frame of the video, in presentation order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameEntry {
    /// The frame's pts (ByPts), or FFmpeg's best-effort timestamp or the frame's ordinal
    /// (ByCount); strictly increasing with the index either way.
    pub pts: Pts,
    /// Seconds from the first frame's presentation time.
    pub time_s: f64,
    pub duration_s: f64,
    pub key: bool,
    /// The packet that holds this frame (ByPts only).
    pub packet: Option<PacketNo>,
    /// Where decoding must start to produce this frame.
    pub seek: SeekTarget,
}

/// The index of one video stream. Immutable once built and shared by every decoder of the
/// video.
#[derive(Debug)]
pub struct VideoIndex {
    pub stream: StreamInfo,
    pub identity: FrameIdentity,
    pub frames: Vec<FrameEntry>,
    pub seek_points: Vec<SeekPoint>,
    pub seek_by: SeekBy,
    /// A digest of every frame of the sequential decode (ByCount only), by which a decoder
    /// recognises the frames it decodes after a seek.
    pub digests: Vec<u64>,
    /// Whether each frame's digest is no other frame's: a frame recognised by it is certainly
    /// that frame (derived from `digests`, rebuilt on load).
    pub(crate) digest_unique: Vec<bool>,
    /// Every packet's pts with its number, sorted by pts (ByPts only), to recognise a packet
    /// after a seek. A sorted list rather than a hash map: built in a millisecond from packets
    /// that are nearly in pts order already, and no file can make its lookups slow.
    pub(crate) packet_by_pts: Vec<(i64, PacketNo)>,
    /// pts of each packet in decode order (ByPts only), to decide which packets may skip
    /// non-reference decoding.
    pub(crate) packet_pts: Vec<i64>,
    pub packet_count: usize,
    /// Presentation time of frame 0 in seconds, in the stream's own clock.
    pub start_time_s: f64,
    pub duration_s: f64,
    pub avg_fps: f64,
    pub variable_frame_rate: bool,
    pub keyframe_count: usize,
}

/// Per-frame facts a sequential decode reports, for [`VideoIndex::from_decode`].
#[derive(Debug, Clone, Copy)]
pub struct DecodedFrameMeta {
    pub best_effort_timestamp: Option<i64>,
    pub key: bool,
    pub digest: u64,
}

/// A keyframe packet met by a sequential decode, for [`VideoIndex::from_decode`].
#[derive(Debug, Clone, Copy)]
pub struct KeyPacket {
    pub packet: PacketNo,
    pub pts: Option<i64>,
    pub dts: Option<i64>,
    /// Where the packet starts in the file, or failing that (MPEG-PS gives no position to a
    /// frame that starts inside a PES packet) where the last packet before it that has one does:
    /// a byte seek there lands a little early, which recognising the frames absorbs.
    pub pos: Option<i64>,
    /// Frames the decoder had output before this packet was sent to it.
    pub shown_before: u32,
}

impl VideoIndex {
    /// Build the index from the packets of a demux pass. Returns `None` when the packets'
    /// timestamps cannot identify frames (missing or repeated pts): the caller must then build
    /// the index with a decode pass ([`VideoIndex::from_decode`]).
    pub fn from_packets(stream: StreamInfo, packets: &[PacketMeta]) -> Option<VideoIndex> {
        let mut packet_pts = Vec::with_capacity(packets.len());
        for p in packets {
            packet_pts.push(p.pts?);
        }
        let packet_by_pts = pts_lookup(&packet_pts)?;
        let seek_points: Vec<SeekPoint> = packets
            .iter()
            .enumerate()
            .filter(|(_, p)| p.key)
            .map(|(no, p)| SeekPoint { packet: PacketNo(no as u32), pts: p.pts, dts: p.dts, pos: None })
            .collect();
        // Frames a decoder outputs: every packet not marked discard, except what lies before the
        // first keyframe (undecodable: no decoder outputs it from a cold start).
        let first_key_pts = seek_points.first().and_then(|s| s.pts);
        let mut shown: Vec<(i64, usize)> = packets
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.discard)
            .filter_map(|(no, p)| {
                let pts = p.pts?;
                match first_key_pts {
                    Some(k) if pts < k => None,
                    None => None,
                    _ => Some((pts, no)),
                }
            })
            .collect();
        shown.sort_unstable();
        let tb = stream.time_base;
        let first_pts = shown.first().map(|(p, _)| *p).unwrap_or(0);
        let frames: Vec<FrameEntry> = shown
            .iter()
            .map(|&(pts, no)| FrameEntry {
                pts: Pts(pts),
                time_s: tb.seconds_between(first_pts, pts),
                duration_s: 0.0,
                key: packets[no].key,
                packet: Some(PacketNo(no as u32)),
                seek: seek_target_for(&seek_points, PacketNo(no as u32), pts),
            })
            .collect();
        let durations: Vec<f64> = shown.iter().map(|&(_, no)| tb.seconds(packets[no].duration)).collect();
        let start_time_s = tb.seconds(first_pts);
        let packet_count = packets.len();
        Some(finish(
            VideoIndex {
                stream,
                identity: FrameIdentity::ByPts,
                frames,
                keyframe_count: seek_points.len(),
                seek_points,
                seek_by: SeekBy::Timestamp,
                digests: Vec::new(),
                packet_by_pts,
                digest_unique: Vec::new(),
                packet_pts,
                packet_count,
                start_time_s,
                duration_s: 0.0,
                avg_fps: 0.0,
                variable_frame_rate: false,
            },
            &durations,
        ))
    }

    /// Build the index from one sequential decode: `frames` as the decoder output them, `keys`
    /// the keyframe packets it was sent. Frames are identified by counting from the start of the
    /// stream. Each keyframe packet the demuxer can seek to (`ways`; by timestamp only when
    /// every packet's dts is there and increasing, `dts_in_order`) becomes a seek point for the
    /// frames from the first keyframe it shows on.
    pub fn from_decode(
        stream: StreamInfo,
        packet_count: usize,
        frames: &[DecodedFrameMeta],
        keys: &[KeyPacket],
        ways: SeekWays,
        dts_in_order: bool,
    ) -> VideoIndex {
        let tb = stream.time_base;
        let stamps: Option<Vec<i64>> = frames.iter().map(|f| f.best_effort_timestamp).collect();
        // A pass that produced no frame (a damaged file) has no first timestamp to count from:
        // the index is empty and opening the video answers "no decodable frame".
        let usable = stamps.as_ref().filter(|s| !s.is_empty() && s.windows(2).all(|w| w[0] < w[1]) && tb.den != 0);
        let fps = if stream.header_fps > 0.0 { stream.header_fps } else { 25.0 };
        let (seek_by, seek_points, first_frames) = counted_seek_points(frames, keys, ways, dts_in_order);
        let entries: Vec<FrameEntry> = frames
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let (pts, time_s) = match usable {
                    Some(s) => (s[i], tb.seconds_between(s[0], s[i])),
                    None => (i as i64, i as f64 / fps),
                };
                let seek = match first_frames.partition_point(|&first| first as usize <= i) {
                    0 => SeekTarget::Start,
                    n => SeekTarget::Point(n - 1),
                };
                FrameEntry { pts: Pts(pts), time_s, duration_s: 0.0, key: f.key, packet: None, seek }
            })
            .collect();
        let start_time_s = usable.map(|s| tb.seconds(s[0])).unwrap_or(0.0);
        let keyframe_count = frames.iter().filter(|f| f.key).count();
        let durations = vec![0.0; entries.len()];
        finish(
            VideoIndex {
                stream,
                identity: FrameIdentity::ByCount,
                frames: entries,
                seek_points,
                seek_by,
                digests: frames.iter().map(|f| f.digest).collect(),
                digest_unique: Vec::new(),
                packet_by_pts: Vec::new(),
                packet_pts: Vec::new(),
                packet_count,
                start_time_s,
                duration_s: 0.0,
                avg_fps: 0.0,
                variable_frame_rate: false,
                keyframe_count,
            },
            &durations,
        )
        .with_unique_digests()
    }

    /// Fill in which frames' digests are unique.
    fn with_unique_digests(mut self) -> VideoIndex {
        let mut sorted = self.digests.clone();
        sorted.sort_unstable();
        let count = |d: &u64| sorted.partition_point(|x| x <= d) - sorted.partition_point(|x| x < d);
        self.digest_unique = self.digests.iter().map(|d| count(d) == 1).collect();
        self
    }

    /// The pts of every packet in decode order (ByPts; empty for ByCount), as stored on disk.
    pub fn packet_pts_list(&self) -> &[i64] {
        &self.packet_pts
    }

    /// An index read back from disk ([`crate::engine::index_store`]), checked as a file's
    /// claims are: unique packet pts, every frame's packet and seek point in range, times
    /// increasing; its pts lookup is rebuilt. `None` when anything is off, so a damaged or
    /// tampered entry is rebuilt, never trusted.
    pub fn checked(mut self) -> Option<VideoIndex> {
        self.packet_by_pts = pts_lookup(&self.packet_pts)?;
        let by_pts = self.identity == FrameIdentity::ByPts;
        if by_pts && self.packet_pts.len() != self.packet_count {
            return None;
        }
        let (points, packets) = (self.seek_points.len(), self.packet_count);
        // A counted video seeks only where it can recognise the frames it lands on.
        let recognisable = by_pts || self.digests.len() == self.frames.len();
        let seek_ok = |t: SeekTarget| match t {
            SeekTarget::Start => true,
            SeekTarget::Point(i) => recognisable && i < points,
        };
        let packet_ok = |p: Option<PacketNo>| match p {
            None => !by_pts,
            Some(p) => by_pts && p.get() < packets,
        };
        let frames_ok = !self.frames.is_empty()
            && self
                .frames
                .iter()
                .all(|f| seek_ok(f.seek) && packet_ok(f.packet) && f.time_s.is_finite() && f.duration_s.is_finite())
            && self.frames.windows(2).all(|w| w[0].pts < w[1].pts && w[0].time_s <= w[1].time_s);
        let reachable = |p: &SeekPoint| match self.seek_by {
            SeekBy::Timestamp => p.seek_timestamp().is_some(),
            SeekBy::Byte => !by_pts && p.pos.is_some_and(|pos| pos >= 0),
        };
        let points_ok =
            packets <= u32::MAX as usize && self.seek_points.iter().all(|p| p.packet.get() < packets && reachable(p));
        let numbers_ok =
            [self.duration_s, self.avg_fps, self.start_time_s, self.stream.header_fps].iter().all(|v| v.is_finite());
        (frames_ok && points_ok && numbers_ok).then(|| self.with_unique_digests())
    }

    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    pub fn frame(&self, index: FrameIndex) -> Option<&FrameEntry> {
        self.frames.get(index.get())
    }

    /// The frame whose pts is `pts` (ByPts).
    pub fn frame_by_pts(&self, pts: Pts) -> Option<FrameIndex> {
        self.frames.binary_search_by(|f| f.pts.cmp(&pts)).ok().map(|i| FrameIndex(i as u32))
    }

    /// The packet whose pts is `pts` (ByPts).
    pub fn packet_by_pts(&self, pts: i64) -> Option<PacketNo> {
        let at = self.packet_by_pts.binary_search_by_key(&pts, |&(p, _)| p).ok()?;
        Some(self.packet_by_pts[at].1)
    }

    /// The packet number decoding must start from for a seek target.
    pub fn seek_packet(&self, target: SeekTarget) -> PacketNo {
        match target {
            SeekTarget::Start => PacketNo(0),
            SeekTarget::Point(i) => self.seek_points[i].packet,
        }
    }

    /// The first frame decoded from `target` (ByCount; the frames are in the order of their
    /// seek targets there).
    pub fn first_frame_of(&self, target: SeekTarget) -> FrameIndex {
        FrameIndex(self.frames.partition_point(|f| f.seek < target) as u32)
    }

    /// The seek target before `target`, to back off to when a seek did not deliver.
    pub fn earlier(&self, target: SeekTarget) -> SeekTarget {
        match target {
            SeekTarget::Point(i) if i > 0 => SeekTarget::Point(i - 1),
            _ => SeekTarget::Start,
        }
    }

    /// The frame displayed at `time_s` seconds from the first frame: the last frame whose
    /// presentation time is at or before it. `None` when the time is outside the video.
    pub fn frame_at(&self, time_s: f64) -> Option<FrameIndex> {
        if !time_s.is_finite() || time_s < 0.0 || time_s >= self.duration_s || self.frames.is_empty() {
            return None;
        }
        // Tolerate float noise of a client computing `i / fps`.
        let t = time_s + 1e-9;
        let after = self.frames.partition_point(|f| f.time_s <= t);
        Some(FrameIndex(after.saturating_sub(1) as u32))
    }
}

/// Whether the packets' pts are stamps in decode order rather than presentation times: the
/// codec reorders pictures (`reorders`: B-frames, as the stream's parameters say), yet every
/// packet that has a dts has its pts equal to it. A remux of a raw H.264 stream into mp4 without
/// timestamps gives exactly this (ffmpeg stamps each packet as it reads it). Sorted, such pts
/// are the decode order, not the order the decoder shows the pictures in, so frames indexed by
/// them would be the wrong ones; those files are indexed by a decode pass instead. Files with
/// real B-frames and real timestamps have some packets whose pts is later than their dts.
pub fn pts_in_decode_order(packets: &[PacketMeta], reorders: bool) -> bool {
    reorders && packets.iter().any(|p| p.dts.is_some()) && packets.iter().all(|p| p.dts.is_none() || p.dts == p.pts)
}

/// The seek point a frame is decoded from: the last keyframe that comes before it in decode
/// order and is not presented after it. A frame presented before the keyframe that precedes it
/// in decode order is a leading frame of an open GOP; it needs the previous GOP's references,
/// so it is decoded from the previous keyframe.
fn seek_target_for(points: &[SeekPoint], packet: PacketNo, pts: i64) -> SeekTarget {
    let mut i = points.partition_point(|s| s.packet <= packet);
    while i > 0 {
        let p = &points[i - 1];
        if p.pts.is_none_or(|k| k <= pts) {
            return SeekTarget::Point(i - 1);
        }
        i -= 1;
    }
    SeekTarget::Start
}

/// The seek points of a video indexed by decoding, how to reach them, and the first frame each
/// one serves. A keyframe packet serves the frames from the first keyframe the decoder showed
/// after it was sent (not the frames still held in the decoder then, nor the leading pictures of
/// an open GOP). Points are kept where the demuxer can seek to them (one way for all), one per
/// first frame (the latest packet: the closest).
fn counted_seek_points(
    frames: &[DecodedFrameMeta],
    keys: &[KeyPacket],
    ways: SeekWays,
    dts_in_order: bool,
) -> (SeekBy, Vec<SeekPoint>, Vec<u32>) {
    let seek_by = if ways.timestamp && dts_in_order {
        SeekBy::Timestamp
    } else if ways.byte {
        SeekBy::Byte
    } else {
        return (SeekBy::Timestamp, Vec::new(), Vec::new());
    };
    let shown_keys: Vec<u32> = frames.iter().enumerate().filter(|(_, f)| f.key).map(|(i, _)| i as u32).collect();
    let mut points: Vec<SeekPoint> = Vec::new();
    let mut first_frames: Vec<u32> = Vec::new();
    for k in keys {
        let Some(&first) = shown_keys.get(shown_keys.partition_point(|&i| i < k.shown_before)) else { break };
        let reachable = match seek_by {
            SeekBy::Timestamp => k.dts.is_some(),
            SeekBy::Byte => k.pos.is_some(),
        };
        // Frame 0 onwards is served by the start of the file, which needs no recognising.
        if first == 0 || !reachable {
            continue;
        }
        let point = SeekPoint { packet: k.packet, pts: k.pts, dts: k.dts, pos: k.pos };
        if first_frames.last() == Some(&first) {
            *points.last_mut().expect("one point per first frame") = point;
        } else {
            points.push(point);
            first_frames.push(first);
        }
    }
    (seek_by, points, first_frames)
}

/// Packet numbers by pts, sorted; `None` when two packets share a pts (they cannot identify
/// frames).
fn pts_lookup(packet_pts: &[i64]) -> Option<Vec<(i64, PacketNo)>> {
    let mut by_pts: Vec<(i64, PacketNo)> =
        packet_pts.iter().enumerate().map(|(no, &pts)| (pts, PacketNo(no as u32))).collect();
    by_pts.sort_unstable_by_key(|&(pts, _)| pts);
    if by_pts.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    Some(by_pts)
}

/// Fill in the figures derived from the frames: durations, fps, VFR.
fn finish(mut index: VideoIndex, packet_durations: &[f64]) -> VideoIndex {
    let n = index.frames.len();
    let intervals: Vec<f64> = index.frames.windows(2).map(|w| w[1].time_s - w[0].time_s).collect();
    let mut sorted = intervals.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let fallback = if median > 0.0 {
        median
    } else if index.stream.header_fps > 0.0 {
        1.0 / index.stream.header_fps
    } else {
        1.0 / 25.0
    };
    // Each frame lasts until the next one; the last one as its packet says.
    for (i, frame) in index.frames.iter_mut().enumerate() {
        frame.duration_s = match intervals.get(i) {
            Some(&d) => d,
            None => packet_durations.get(i).copied().filter(|d| *d > 0.0).unwrap_or(fallback),
        };
    }
    index.duration_s = index.frames.last().map(|f| f.time_s + f.duration_s).unwrap_or(0.0);
    index.avg_fps = if n > 1 && index.frames[n - 1].time_s > 0.0 {
        (n - 1) as f64 / index.frames[n - 1].time_s
    } else if n == 1 {
        1.0 / fallback
    } else {
        0.0
    };
    // One tick of the time base, doubled, absorbs the rounding of constant rates to coarse
    // time bases (30 fps in 1/1000 ticks alternates 33 and 34).
    let tick = index.stream.time_base.seconds(1).abs() * 2.0;
    let tolerance = tick.max(median * 0.01);
    index.variable_frame_rate = intervals.iter().any(|d| (d - median).abs() > tolerance);
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> StreamInfo {
        StreamInfo::for_tests(64, 25)
    }

    /// An index built by decoding `frames`, with no way to seek.
    fn counted(packets: usize, frames: &[DecodedFrameMeta]) -> VideoIndex {
        VideoIndex::from_decode(stream(), packets, frames, &[], SeekWays { timestamp: false, byte: false }, false)
    }

    /// A decode pass over 15 frames in GOPs of 5 whose decoder holds one frame back (B-frames):
    /// the keyframe packet of each GOP is sent when the frames before it but one are out.
    fn gops_of_five() -> (Vec<DecodedFrameMeta>, Vec<KeyPacket>) {
        let frames = (0..15)
            .map(|i| DecodedFrameMeta { best_effort_timestamp: None, key: i % 5 == 0, digest: 100 + i as u64 })
            .collect();
        let keys = [0u32, 5, 10]
            .iter()
            .map(|&k| KeyPacket {
                packet: PacketNo(k),
                pts: None,
                dts: Some(k as i64),
                pos: Some(1000 * k as i64),
                shown_before: k.saturating_sub(1),
            })
            .collect();
        (frames, keys)
    }

    #[test]
    fn a_counted_video_seeks_to_the_keyframe_packet_of_each_gop_from_the_keyframe_it_shows_on() {
        let (frames, keys) = gops_of_five();
        let bytes = SeekWays { timestamp: false, byte: true };
        let idx = VideoIndex::from_decode(stream(), 15, &frames, &keys, bytes, false);
        assert_eq!(idx.seek_by, SeekBy::Byte);
        // The first GOP is decoded from the start; the frame still held when packet 5 was sent
        // (frame 4) is not decoded from it.
        assert_eq!(idx.seek_points.iter().map(|p| p.pos).collect::<Vec<_>>(), [Some(5000), Some(10_000)]);
        let seeks: Vec<SeekTarget> = idx.frames.iter().map(|f| f.seek).collect();
        assert!(seeks[..5].iter().all(|&s| s == SeekTarget::Start));
        assert!(seeks[5..10].iter().all(|&s| s == SeekTarget::Point(0)));
        assert!(seeks[10..].iter().all(|&s| s == SeekTarget::Point(1)));
        assert_eq!(idx.first_frame_of(SeekTarget::Point(1)), FrameIndex(10));
        assert_eq!(idx.digests, (100..115).collect::<Vec<u64>>());
        assert!(idx.checked().is_some());
    }

    #[test]
    fn frames_whose_digest_another_frame_shares_are_not_certain_positions() {
        let (mut frames, keys) = gops_of_five();
        frames[7].digest = frames[3].digest;
        let idx =
            VideoIndex::from_decode(stream(), 15, &frames, &keys, SeekWays { timestamp: false, byte: true }, false);
        let shared: Vec<usize> = (0..15).filter(|&i| !idx.digest_unique[i]).collect();
        assert_eq!(shared, [3, 7]);
        // Rebuilt as an index read back from disk is.
        let again = VideoIndex { digest_unique: Vec::new(), ..idx }.checked().unwrap();
        assert_eq!((0..15).filter(|&i| !again.digest_unique[i]).collect::<Vec<_>>(), [3, 7]);
    }

    #[test]
    fn a_counted_video_seeks_by_timestamp_only_when_every_dts_is_there_and_increasing() {
        let (frames, keys) = gops_of_five();
        let both = SeekWays { timestamp: true, byte: true };
        assert_eq!(VideoIndex::from_decode(stream(), 15, &frames, &keys, both, true).seek_by, SeekBy::Timestamp);
        // MPEG-PS: timestamps on some packets only, so by byte.
        assert_eq!(VideoIndex::from_decode(stream(), 15, &frames, &keys, both, false).seek_by, SeekBy::Byte);
        // By byte, a keyframe packet without a position is no seek point; the others still are.
        let mut some_pos = keys.clone();
        some_pos[1].pos = None;
        let idx = VideoIndex::from_decode(stream(), 15, &frames, &some_pos, both, false);
        assert_eq!(idx.seek_points.iter().map(|p| p.packet).collect::<Vec<_>>(), [PacketNo(10)]);
        // Neither way: from the start only.
        let neither = SeekWays { timestamp: true, byte: false };
        let idx = VideoIndex::from_decode(stream(), 15, &frames, &keys, neither, false);
        assert!(idx.seek_points.is_empty());
        assert!(idx.frames.iter().all(|f| f.seek == SeekTarget::Start));
    }

    #[test]
    fn keyframe_packets_showing_the_same_keyframe_give_one_point_the_later_one() {
        let (mut frames, keys) = gops_of_five();
        // A keyframe packet (5) whose picture the decoder did not mark as a keyframe: the first
        // keyframe shown after it is the next GOP's, which the next packet serves better.
        frames[5].key = false;
        let idx =
            VideoIndex::from_decode(stream(), 15, &frames, &keys, SeekWays { timestamp: false, byte: true }, false);
        assert_eq!(idx.seek_points.iter().map(|p| p.packet).collect::<Vec<_>>(), [PacketNo(10)]);
        assert!(idx.frames[..10].iter().all(|f| f.seek == SeekTarget::Start));
    }

    fn pkt(pts: i64, dts: i64, key: bool) -> PacketMeta {
        PacketMeta { pts: Some(pts), dts: Some(dts), duration: 1, key, discard: false }
    }

    /// Display I0 B1 B2 P3 | I4(open) with leading B... decode order below.
    fn open_gop() -> Vec<PacketMeta> {
        vec![
            pkt(0, -1, true), // I0
            pkt(3, 0, false), // P3
            pkt(1, 1, false), // B1
            pkt(2, 2, false), // B2
            pkt(6, 3, true),  // I6 open GOP
            pkt(4, 4, false), // B4 leading: refs P3 and I6
            pkt(5, 5, false), // B5 leading
            pkt(7, 6, false), // P7
        ]
    }

    #[test]
    fn pts_equal_to_dts_in_a_stream_that_reorders_are_decode_order_stamps() {
        // Real B-frames and real timestamps: some pts after their dts.
        assert!(!pts_in_decode_order(&open_gop(), true));
        // The same packets stamped as read (a raw stream remuxed without timestamps).
        let stamped: Vec<PacketMeta> = open_gop().into_iter().map(|p| PacketMeta { pts: p.dts, ..p }).collect();
        assert!(pts_in_decode_order(&stamped, true));
        // No reordering: pts equal to dts is what every packet has.
        assert!(!pts_in_decode_order(&stamped, false));
        // No dts at all is no evidence either way.
        let no_dts: Vec<PacketMeta> = open_gop().into_iter().map(|p| PacketMeta { dts: None, ..p }).collect();
        assert!(!pts_in_decode_order(&no_dts, true));
    }

    #[test]
    fn a_decode_pass_that_produced_no_frame_gives_an_empty_index_not_a_panic() {
        let idx = counted(12, &[]);
        assert_eq!(idx.frame_count(), 0);
        assert_eq!(idx.duration_s, 0.0);
        assert_eq!(idx.frame_at(0.0), None);
    }

    #[test]
    fn frames_are_in_presentation_order_with_their_packets() {
        let idx = VideoIndex::from_packets(stream(), &open_gop()).unwrap();
        let pts: Vec<i64> = idx.frames.iter().map(|f| f.pts.0).collect();
        assert_eq!(pts, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(idx.frames[3].packet, Some(PacketNo(1)));
        assert_eq!(idx.keyframe_count, 2);
        assert_eq!(idx.frame_count(), 8);
        assert!((idx.duration_s - 8.0 / 25.0).abs() < 1e-9);
        assert!(!idx.variable_frame_rate);
    }

    #[test]
    fn leading_frames_of_an_open_gop_decode_from_the_previous_keyframe() {
        let idx = VideoIndex::from_packets(stream(), &open_gop()).unwrap();
        assert_eq!(idx.frames[4].seek, SeekTarget::Point(0), "B4 precedes I6 in display");
        assert_eq!(idx.frames[5].seek, SeekTarget::Point(0));
        assert_eq!(idx.frames[6].seek, SeekTarget::Point(1));
        assert_eq!(idx.frames[7].seek, SeekTarget::Point(1));
    }

    #[test]
    fn discarded_packets_are_decoded_but_not_frames() {
        let mut p = open_gop();
        p[0].discard = true;
        p[2].discard = true;
        let idx = VideoIndex::from_packets(stream(), &p).unwrap();
        assert_eq!(idx.frame_count(), 6);
        assert_eq!(idx.frames[0].pts, Pts(2));
        assert_eq!(idx.frames[0].seek, SeekTarget::Point(0));
        assert_eq!(idx.frames[0].time_s, 0.0);
        assert!((idx.start_time_s - 2.0 / 25.0).abs() < 1e-9);
    }

    #[test]
    fn missing_or_repeated_pts_need_a_decode_pass() {
        let mut p = open_gop();
        p[3].pts = None;
        assert!(VideoIndex::from_packets(stream(), &p).is_none());
        let mut p = open_gop();
        p[3].pts = Some(1);
        assert!(VideoIndex::from_packets(stream(), &p).is_none());
    }

    #[test]
    fn time_lookup_returns_the_frame_on_screen() {
        let idx = VideoIndex::from_packets(stream(), &open_gop()).unwrap();
        assert_eq!(idx.frame_at(0.0), Some(FrameIndex(0)));
        assert_eq!(idx.frame_at(0.039), Some(FrameIndex(0)));
        assert_eq!(idx.frame_at(0.04), Some(FrameIndex(1)));
        assert_eq!(idx.frame_at(7.0 / 25.0 + 0.01), Some(FrameIndex(7)));
        assert_eq!(idx.frame_at(8.0 / 25.0), None);
        assert_eq!(idx.frame_at(-0.01), None);
        assert_eq!(idx.frame_at(f64::NAN), None);
    }

    #[test]
    fn variable_frame_rate_is_detected_from_intervals() {
        let p: Vec<PacketMeta> =
            [0, 1, 2, 4, 5, 9, 10].iter().enumerate().map(|(i, &t)| pkt(t, i as i64, i == 0)).collect();
        let idx = VideoIndex::from_packets(stream(), &p).unwrap();
        assert!(idx.variable_frame_rate);
        assert!((idx.avg_fps - 6.0 / 0.4).abs() < 1e-6);
    }

    #[test]
    fn decode_pass_index_counts_frames_and_uses_monotonic_stamps() {
        let metas: Vec<DecodedFrameMeta> =
            (0..5).map(|i| DecodedFrameMeta { best_effort_timestamp: Some(10 + i), key: i == 0, digest: 0 }).collect();
        let idx = counted(5, &metas);
        assert_eq!(idx.identity, FrameIdentity::ByCount);
        assert_eq!(idx.frame_count(), 5);
        assert!((idx.frames[4].time_s - 4.0 / 25.0).abs() < 1e-9);
        let broken: Vec<DecodedFrameMeta> =
            (0..5).map(|_| DecodedFrameMeta { best_effort_timestamp: None, key: false, digest: 0 }).collect();
        let idx = counted(5, &broken);
        assert!((idx.frames[2].time_s - 2.0 / 25.0).abs() < 1e-9);
        assert!(idx.frames.iter().all(|f| f.seek == SeekTarget::Start));
    }

    #[test]
    fn timestamps_at_both_ends_of_i64_give_increasing_times_not_an_overflow() {
        // Found by the seek_plan fuzz target: `pts - first_pts` overflowed.
        let p = [pkt(i64::MIN + 1, 0, true), pkt(0, 1, false), pkt(i64::MAX, 2, false)];
        let idx = VideoIndex::from_packets(stream(), &p).unwrap();
        assert!(idx.frames.windows(2).all(|w| w[0].time_s < w[1].time_s));
        assert!(idx.duration_s.is_finite());
        let metas: Vec<DecodedFrameMeta> = [i64::MIN + 1, i64::MAX]
            .iter()
            .map(|&t| DecodedFrameMeta { best_effort_timestamp: Some(t), key: true, digest: 0 })
            .collect();
        let idx = counted(2, &metas);
        assert!(idx.frames[1].time_s > 0.0 && idx.frames[1].time_s.is_finite());
    }
}
