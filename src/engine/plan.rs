//! Seek planning: given where a decoder is and which frame is wanted, keep decoding forward or
//! seek, and to which keyframe.
//!
//! A pure function over the index and the decoder's position, so the rule that makes sequential
//! reading never seek, and backward or far jumps always seek to the right keyframe, is tested
//! without FFmpeg (see the tests below).

use crate::engine::index::{SeekTarget, VideoIndex};
use crate::units::{FrameIndex, PacketNo};

/// Where a decoder stands in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The packet it started decoding from at its last seek: it can produce no frame whose
    /// keyframe comes before.
    pub decoding_from: PacketNo,
    /// The next packet (decode order) the decoder will read.
    pub next_packet: PacketNo,
    /// The last frame it output, if any since it was positioned.
    pub last_output: Option<FrameIndex>,
    /// The decoder has been drained at the end of the stream and cannot go on.
    pub ended: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Keep reading forward from the current position.
    Continue,
    /// Flush and restart decoding at this seek target.
    Seek(SeekTarget),
}

/// Decide how a decoder at `position` reaches `target`.
///
/// Continue forward when the target has not been output yet and the decoder has already read,
/// or is about to read, the keyframe the target depends on (within `slack` packets), having
/// started decoding at or before it: decoding from there costs no more than a seek would.
/// Otherwise seek to the target's keyframe.
pub fn plan(index: &VideoIndex, position: Option<Position>, target: FrameIndex, slack: u32) -> Plan {
    let Some(entry) = index.frame(target) else {
        return Plan::Seek(SeekTarget::Start);
    };
    let Some(pos) = position else {
        return Plan::Seek(entry.seek);
    };
    if pos.ended || pos.last_output.is_some_and(|last| target <= last) {
        return Plan::Seek(entry.seek);
    }
    let key_packet = index.seek_packet(entry.seek);
    if pos.decoding_from <= key_packet && key_packet.0 <= pos.next_packet.0.saturating_add(slack) {
        Plan::Continue
    } else {
        Plan::Seek(entry.seek)
    }
}

/// How many packets a decoder at `position` would have to decode to reach `target`: the cost
/// used to pick among several decoders of one video.
pub fn cost(index: &VideoIndex, position: Option<Position>, target: FrameIndex, slack: u32) -> u64 {
    let Some(entry) = index.frame(target) else { return u64::MAX };
    // Without packet numbers (ByCount), use frame distances instead.
    let target_packet = entry.packet.map(|p| p.0 as u64).unwrap_or(target.0 as u64);
    /// A seek flushes the decoder and re-reads from a keyframe: count it as a few packets.
    const SEEK_PENALTY: u64 = 4;
    match plan(index, position, target, slack) {
        Plan::Continue => {
            let from = position
                .map(|p| match entry.packet {
                    Some(_) => p.next_packet.0 as u64,
                    None => p.last_output.map(|l| l.0 as u64 + 1).unwrap_or(0),
                })
                .unwrap_or(0);
            target_packet.saturating_sub(from)
        }
        Plan::Seek(seek) => {
            let from = match entry.packet {
                Some(_) => index.seek_packet(seek).0 as u64,
                None => index.first_frame_of(seek).0 as u64,
            };
            target_packet.saturating_sub(from) + SEEK_PENALTY
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ffmpeg::{PacketMeta, StreamInfo};

    /// Two closed GOPs of 5 frames, I P B B P each (display I B B P P).
    fn index() -> VideoIndex {
        let stream = StreamInfo::for_tests(8, 10);
        let order = [(0, true), (3, false), (1, false), (2, false), (4, false)];
        let mut packets = Vec::new();
        for gop in 0..2 {
            for (i, &(pts, key)) in order.iter().enumerate() {
                packets.push(PacketMeta {
                    pts: Some(gop * 5 + pts),
                    dts: Some(gop * 5 + i as i64 - 1),
                    duration: 1,
                    key,
                    discard: false,
                });
            }
        }
        VideoIndex::from_packets(stream, &packets).unwrap()
    }

    fn at(next_packet: u32, last: Option<u32>) -> Option<Position> {
        Some(Position {
            decoding_from: PacketNo(0),
            next_packet: PacketNo(next_packet),
            last_output: last.map(FrameIndex),
            ended: false,
        })
    }

    #[test]
    fn a_cold_decoder_seeks_to_the_targets_keyframe() {
        let idx = index();
        assert_eq!(plan(&idx, None, FrameIndex(3), 0), Plan::Seek(SeekTarget::Point(0)));
        assert_eq!(plan(&idx, None, FrameIndex(7), 0), Plan::Seek(SeekTarget::Point(1)));
    }

    #[test]
    fn sequential_reading_never_seeks() {
        let idx = index();
        // After frame 0 was output the decoder had read I0 P3 (packets 0, 1).
        assert_eq!(plan(&idx, at(2, Some(0)), FrameIndex(1), 0), Plan::Continue);
        // End of GOP 0: frame 4 out after packet 4; frame 5 is the next keyframe, packet 5.
        assert_eq!(plan(&idx, at(5, Some(4)), FrameIndex(5), 0), Plan::Continue);
    }

    #[test]
    fn going_backward_seeks_even_inside_the_gop() {
        let idx = index();
        assert_eq!(plan(&idx, at(5, Some(4)), FrameIndex(2), 0), Plan::Seek(SeekTarget::Point(0)));
        assert_eq!(plan(&idx, at(5, Some(4)), FrameIndex(4), 0), Plan::Seek(SeekTarget::Point(0)));
    }

    #[test]
    fn jumping_past_a_keyframe_seeks_unless_within_slack() {
        let idx = index();
        assert_eq!(plan(&idx, at(1, Some(0)), FrameIndex(8), 0), Plan::Seek(SeekTarget::Point(1)));
        assert_eq!(plan(&idx, at(1, Some(0)), FrameIndex(8), 4), Plan::Continue);
    }

    /// Found when counted videos learnt to seek: a decoder that had just sought to a later GOP
    /// (for a fill nobody waited for) and output nothing yet was told to continue to a frame
    /// of an earlier GOP, whose keyframe packet lay behind it.
    #[test]
    fn a_decoder_that_started_after_the_targets_keyframe_seeks_back() {
        let idx = index();
        let sought =
            Some(Position { decoding_from: PacketNo(5), next_packet: PacketNo(6), last_output: None, ended: false });
        assert_eq!(plan(&idx, sought, FrameIndex(3), 0), Plan::Seek(SeekTarget::Point(0)));
        assert_eq!(plan(&idx, sought, FrameIndex(7), 0), Plan::Continue);
    }

    #[test]
    fn an_ended_decoder_must_seek() {
        let idx = index();
        let ended = Some(Position {
            decoding_from: PacketNo(5),
            next_packet: PacketNo(10),
            last_output: Some(FrameIndex(9)),
            ended: true,
        });
        assert_eq!(plan(&idx, ended, FrameIndex(9), 0), Plan::Seek(SeekTarget::Point(1)));
    }

    #[test]
    fn cost_prefers_the_decoder_just_behind_the_target() {
        let idx = index();
        let near = cost(&idx, at(6, Some(5)), FrameIndex(7), 0);
        let cold = cost(&idx, None, FrameIndex(7), 0);
        let behind = cost(&idx, at(10, Some(9)), FrameIndex(7), 0);
        assert!(near < cold, "{near} < {cold}");
        assert_eq!(cold, behind);
    }
}
