//! What the fuzz targets check of an index, whatever produced it.
//!
//! Two levels: an index a demux or decode pass built must be sound (frames in presentation
//! order, every frame's seek point at or before its packet, finite times) and survive the state
//! directory unchanged; any index that passed [`VideoIndex::checked`] (a state-directory entry,
//! however it was made) must only keep every lookup and plan in range, never panic.

use framesrv::engine::index::{SeekTarget, VideoIndex};
use framesrv::engine::index_store::{self, ContentKey};
use framesrv::engine::plan::{self, Plan, Position};
use framesrv::units::{FrameIndex, PacketNo, Pts};

/// The soundness of an index a demux or decode pass built.
pub fn check_built(index: &VideoIndex) {
    let points = index.seek_points.len();
    for w in index.frames.windows(2) {
        assert!(w[0].pts < w[1].pts, "frames out of presentation order: {:?} then {:?}", w[0], w[1]);
        assert!(w[0].time_s <= w[1].time_s, "times going back: {:?} then {:?}", w[0], w[1]);
    }
    for f in &index.frames {
        assert!(f.time_s.is_finite() && f.duration_s.is_finite(), "a time that is not finite: {f:?}");
        if let SeekTarget::Point(i) = f.seek {
            assert!(i < points, "seek point {i} of {points}: {f:?}");
        }
        if let Some(packet) = f.packet {
            assert!(packet.get() < index.packet_count, "packet out of range: {f:?}");
            assert!(index.seek_packet(f.seek) <= packet, "a frame decoded from a keyframe after it: {f:?}");
        }
    }
    for p in &index.seek_points {
        assert!(p.packet.get() < index.packet_count, "seek point out of range: {p:?}");
    }
    assert!(
        index.duration_s.is_finite() && index.avg_fps.is_finite(),
        "duration {} fps {}",
        index.duration_s,
        index.avg_fps
    );
    if index.frame_count() == 0 {
        return;
    }
    // What is saved to the state directory loads back, the same.
    let key = ContentKey([7; 16]);
    let back = index_store::decode(&index_store::encode(index, &key), &key).expect("a built index must load back");
    assert_eq!(back.frames, index.frames);
    assert_eq!(back.seek_points, index.seek_points);
    assert_eq!(back.identity, index.identity);
}

/// Lookups and plans over any index stay in range; `queries` are the fuzzer's bytes, eight per
/// query.
pub fn check_queries(index: &VideoIndex, queries: &[u8]) {
    let n = index.frame_count() as u64;
    let points = index.seek_points.len();
    for chunk in queries.chunks(8).take(64) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let target = FrameIndex((w % n.saturating_add(2)) as u32);
        let position = (w >> 63 == 1).then(|| Position {
            decoding_from: PacketNo(((w >> 16) % (index.packet_count as u64).saturating_add(2)) as u32),
            next_packet: PacketNo(((w >> 8) % (index.packet_count as u64).saturating_add(2)) as u32),
            last_output: (w >> 62 & 1 == 1).then(|| FrameIndex(((w >> 24) % n.saturating_add(2)) as u32)),
            ended: w >> 61 & 1 == 1,
        });
        let slack = (w >> 40) as u8 as u32;
        match plan::plan(index, position, target, slack) {
            Plan::Continue => assert!(position.is_some() && u64::from(target.0) < n, "continue to {target:?}"),
            Plan::Seek(seek) => {
                if let SeekTarget::Point(i) = seek {
                    assert!(i < points, "seek to point {i} of {points}");
                }
                let _ = index.seek_packet(seek);
                let _ = index.seek_packet(index.earlier(seek));
            }
        }
        let _ = plan::cost(index, position, target, slack);
        for time in [f64::from_bits(w), (w % 10_007) as f64 / 10_007.0 * index.duration_s * 1.1] {
            if let Some(f) = index.frame_at(time) {
                assert!(u64::from(f.0) < n, "frame_at({time}) = {f:?} of {n}");
            }
        }
        if let Some(f) = index.frame_by_pts(Pts(w as i64)) {
            assert!(u64::from(f.0) < n);
        }
        if let Some(p) = index.packet_by_pts(w as i64) {
            assert!(p.get() < index.packet_count);
        }
    }
}
