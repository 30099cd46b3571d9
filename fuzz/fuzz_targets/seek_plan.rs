//! The index and the seek planner over arbitrary packet lists: what any demuxer could report
//! (timestamps missing, repeated, huge or going back; keyframes anywhere; packets to discard)
//! or, when packets cannot identify frames, what a decode pass could output. The index built
//! must be sound and survive the state directory, and every plan must stay in range.
#![no_main]

use framesrv::engine::ffmpeg::{PacketMeta, SeekWays, StreamInfo};
use framesrv::engine::index::{DecodedFrameMeta, KeyPacket, VideoIndex};
use framesrv::units::{PacketNo, TimeBase};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// A timestamp: mostly small (so that frames line up and reorder), sometimes anything.
fn stamp(u: &mut Unstructured) -> Result<Option<i64>> {
    Ok(match u.int_in_range(0..=15u8)? {
        0 => None,
        1 => Some(u.arbitrary()?),
        _ => Some(u.int_in_range(-8..=600)?),
    })
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let stream = StreamInfo {
        codec: "h264".into(),
        container: "mp4".into(),
        pixel_format: "yuv420p".into(),
        width: 64,
        height: 48,
        // As FFmpeg hands them over: a positive time base (`MediaFile::open` refuses others),
        // a frame rate that is a ratio of two ints or unknown.
        time_base: TimeBase { num: u.int_in_range(1..=i32::MAX)?, den: u.int_in_range(1..=i32::MAX)? },
        header_fps: match (u.arbitrary::<i32>()?, u.arbitrary::<i32>()?) {
            (num, den) if num > 0 && den > 0 => f64::from(num) / f64::from(den),
            _ => 0.0,
        },
        orientation: Default::default(),
        sample_aspect_ratio: (1, 1),
    };
    let count = u.int_in_range(0..=400usize)?;
    let mut packets = Vec::with_capacity(count);
    for _ in 0..count {
        packets.push(PacketMeta {
            pts: stamp(&mut u)?,
            dts: stamp(&mut u)?,
            duration: u.int_in_range(-1..=4)?,
            key: u.ratio(1, 8)?,
            discard: u.ratio(1, 32)?,
        });
    }
    let index = match VideoIndex::from_packets(stream.clone(), &packets) {
        Some(index) => index,
        None => {
            let frames = u.int_in_range(0..=count)?;
            let mut metas = Vec::with_capacity(frames);
            for _ in 0..frames {
                let (best_effort_timestamp, key) = (stamp(&mut u)?, u.ratio(1, 8)?);
                metas.push(DecodedFrameMeta { best_effort_timestamp, key, digest: u.int_in_range(0..=7)? });
            }
            let mut keys = Vec::new();
            for (no, p) in packets.iter().enumerate().filter(|(_, p)| p.key) {
                let pos = if u.ratio(7, 8)? { Some(no as i64 * 100) } else { None };
                let shown_before = u.int_in_range(0..=frames as u32)?;
                keys.push(KeyPacket { packet: PacketNo(no as u32), pts: p.pts, dts: p.dts, pos, shown_before });
            }
            let ways = SeekWays { timestamp: u.arbitrary()?, byte: u.arbitrary()? };
            VideoIndex::from_decode(stream, count, &metas, &keys, ways, u.arbitrary()?)
        }
    };
    framesrv_fuzz::check_built(&index);
    framesrv_fuzz::check_queries(&index, u.take_rest());
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
