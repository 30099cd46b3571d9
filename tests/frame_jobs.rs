//! The jobs users script around frames, through a real daemon on loopback against real FFmpeg:
//! per-frame hashes (and their table kept across restarts), duplicates and loops, keyframes,
//! storyboards and clips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::daemon::Daemon;
use common::*;
use framesrv::proto::v1 as pb;
use tonic::Code;

/// The ffmpeg CLI's per-frame md5 of the rgb24 decode (`-f framemd5`), in order.
fn framemd5(path: &Path) -> Vec<String> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-fps_mode", "passthrough", "-pix_fmt", "rgb24", "-f", "framemd5", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.rsplit(',').next().unwrap().trim().to_string())
        .collect()
}

/// Each frame's presentation time in seconds, as ffprobe reads the file.
fn probe_times(path: &Path) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().trim_end_matches(',').parse().ok()).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn all_hashes(
    c: &mut framesrv::proto::v1::frame_server_client::FrameServerClient<tonic::transport::Channel>,
    video: &str,
    md5: bool,
) -> Vec<pb::FrameHash> {
    let req = pb::FrameHashesRequest { video: video.into(), selection: None, md5 };
    let mut s = c.get_frame_hashes(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(h) = s.message().await.unwrap() {
        out.push(h);
    }
    out
}

/// h264 with B-frames, a VFR mkv and an mp4 whose edit list cuts off its first keyframe.
fn hard_videos(media: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(media).unwrap();
    let bframes =
        encode(&media.join("b.mp4"), 90, 25, &["-c:v", "libx264", "-bf", "3", "-g", "24", "-pix_fmt", "yuv420p"]);
    let vfr = vfr_video(&media.join("vfr.mkv"), 60);
    let src =
        encode(&media.join("src.mp4"), 100, 25, &["-c:v", "libx264", "-bf", "3", "-g", "25", "-pix_fmt", "yuv420p"]);
    let cut = media.join("cut.mp4");
    ffmpeg(&["-ss", "1.3", "-i", src.to_str().unwrap(), "-c", "copy", cut.to_str().unwrap()]);
    std::fs::remove_file(&src).unwrap();
    vec![bframes, vfr, cut]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_md5s_are_ffmpegs_rgb24_md5s_and_the_table_survives_a_restart() {
    let dir = scratch();
    let mut videos = hard_videos(&dir.path().join("media"));
    // Long enough to be cut into chunks taken by two lanes: 400 frames in 34 open GOPs. Twice:
    // the second pass finds the decoders the first left at the total bound, and must close them
    // to run its lanes side by side rather than one behind the other.
    let chunks = encode(&dir.path().join("media/chunks.mkv"), 400, 25, &OPEN_GOP_H264);
    std::fs::copy(&chunks, dir.path().join("media/chunks-again.mkv")).unwrap();
    videos.splice(0..0, [chunks.clone(), dir.path().join("media/chunks-again.mkv")]);
    let d = Daemon::start(dir, |_| {}).await;
    let mut c = d.client().await;
    // As many lanes as cores, within decoder.max_per_video (3).
    let lanes = std::thread::available_parallelism().map_or(1, |n| n.get()).min(3);
    for path in &videos {
        let name = path.file_name().unwrap().to_str().unwrap();
        let expected = framemd5(path);
        let seeks = d.store.stats().seeks;
        let hashes = all_hashes(&mut c, name, true).await;
        if name.starts_with("chunks") && lanes >= 2 {
            // Eight or more chunks of whole GOPs on two or three lanes, each lane's first chunk
            // on a decoder of its own: a seek each (one behind the other on one decoder, the
            // chunks would follow on with one seek). How many later chunks also cost a seek
            // depends on which lane is free first, so that is not asserted.
            let seeks = d.store.stats().seeks - seeks;
            assert!(seeks >= 2, "{name}: {seeks} seeks: the pass was not cut into chunks, or its lanes ran in turn");
            // Each lane moves on to its next chunk on a decoder a lane left: a decoder per lane
            // (on a fresh daemon).
            let open = d.store.stats().open_decoders;
            assert!(name != "chunks.mkv" || open == lanes as u64, "{name}: {open} decoders open after {lanes} lanes");
        }
        assert_eq!(hashes.len(), expected.len(), "{name}: one hash per frame");
        for (i, h) in hashes.iter().enumerate() {
            assert_eq!(h.index, i as i64);
            assert_eq!(hex(&h.md5), expected[i], "{name}: frame {i}");
        }
        // The md5 is of exactly the bytes RequestFrame returns.
        let f = c
            .request_frame(pb::FrameRequest {
                video: name.into(),
                target: Some(pb::frame_request::Target::Index(7)),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hex(&md5_of(&f.data)), expected[7]);
        // Selections pick from the table; without md5 the field is empty.
        let req = pb::FrameHashesRequest {
            video: name.into(),
            selection: Some(pb::frame_hashes_request::Selection::Range(pb::IndexRange { start: 3, stop: 6, step: 1 })),
            md5: false,
        };
        let mut s = c.get_frame_hashes(req).await.unwrap().into_inner();
        let mut some = Vec::new();
        while let Some(h) = s.message().await.unwrap() {
            some.push(h);
        }
        assert_eq!(some.iter().map(|h| h.index).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(some.iter().all(|h| h.md5.is_empty()));
        assert_eq!((some[0].ahash, some[0].dhash), (hashes[3].ahash, hashes[3].dhash));
    }
    // Asking again decodes nothing (memory); a new daemon on the same state directory reads
    // the stored tables and decodes nothing either.
    d.settle().await;
    let decoded = d.store.stats().frames_decoded;
    let again = all_hashes(&mut c, "b.mp4", true).await;
    assert_eq!(d.store.stats().frames_decoded, decoded);
    let state: Vec<_> = std::fs::read_dir(d.dir.path().join("state/hashes")).unwrap().collect();
    assert_eq!(state.len(), videos.len(), "one stored table per video");
    let dir_path = d.dir.path().to_path_buf();
    let mut d = d;
    d.signal_stop();
    let restarted = Daemon::start(tempfile::tempdir().unwrap(), |c| {
        c.media_roots = vec![dir_path.join("media")];
        c.state_dir = dir_path.join("state").display().to_string();
    })
    .await;
    let mut c2 = restarted.client().await;
    assert_eq!(all_hashes(&mut c2, "b.mp4", true).await, again);
    assert_eq!(restarted.store.stats().frames_decoded, 0, "the stored table was read, nothing decoded");
    // A changed file is hashed again, never answered from the old table.
    std::thread::sleep(std::time::Duration::from_millis(20));
    encode(&dir_path.join("media/b.mp4"), 50, 25, &["-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p"]);
    let fresh = all_hashes(&mut c2, "b.mp4", true).await;
    assert_eq!(fresh.len(), 50);
    assert_eq!(fresh.iter().map(|h| hex(&h.md5)).collect::<Vec<_>>(), framemd5(&dir_path.join("media/b.mp4")));
    restarted.stop().await;
    d.stop().await;
}

fn md5_of(data: &[u8]) -> Vec<u8> {
    use md5::Digest;
    md5::Md5::digest(data).to_vec()
}

/// Grey frame showing content `id`: an 8x8 grid of dark and bright cells from a hash of the id
/// (so different ids are far apart in aHash), with a little texture for the encoder.
fn content_frame(id: u32) -> Vec<u8> {
    let mut bits = u64::from(id).wrapping_add(0x9E37_79B9_7F4A_7C15);
    bits = (bits ^ (bits >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    bits = (bits ^ (bits >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    bits ^= bits >> 31;
    let mut f = vec![0u8; (W * H) as usize];
    for y in 0..H {
        for x in 0..W {
            let cell = (y * 8 / H) * 8 + x * 8 / W;
            let base: i32 = if (bits >> (63 - cell)) & 1 == 1 { 190 } else { 60 };
            let texture = ((x * 7 + y * 3 + id * 5) % 23) as i32 - 11;
            f[(y * W + x) as usize] = (base + texture).clamp(0, 255) as u8;
        }
    }
    f
}

/// Encode grey frames (W x H) with extra ffmpeg arguments.
fn encode_frames(out: &Path, frames: &[Vec<u8>], args: &[&str]) {
    use std::io::Write;
    let size = format!("{W}x{H}");
    let mut child = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "gray", "-s", &size, "-r", "25", "-i", "-"])
        .args(args)
        .arg(out)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for f in frames {
        stdin.write_all(f).unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// The grey frames of a decode of `path`.
fn decode_grey(path: &Path) -> Vec<Vec<u8>> {
    reference_frames_as(path, "gray", 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reencoded_repeat_is_a_loop_and_a_frozen_tail_an_exact_group() {
    let dir = scratch();
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let segment: Vec<Vec<u8>> = (0..60).map(content_frame).collect();
    let other: Vec<Vec<u8>> = (1000..1060).map(content_frame).collect();
    // The segment as a good encode and as a poor one (what a re-upload does to it).
    let (good, poor) = (dir.path().join("good.mp4"), dir.path().join("poor.mp4"));
    encode_frames(&good, &segment, &["-c:v", "libx264", "-crf", "16", "-pix_fmt", "yuv420p"]);
    encode_frames(&poor, &segment, &["-c:v", "libx264", "-crf", "40", "-pix_fmt", "yuv420p"]);
    let mut frames = decode_grey(&good);
    frames.extend(other.iter().cloned());
    frames.extend(decode_grey(&poor));
    frames.extend(std::iter::repeat_n(content_frame(2000), 40));
    assert_eq!(frames.len(), 220);
    // Lossless, so the frozen frames stay identical pixels.
    encode_frames(&media.join("looped.mp4"), &frames, &["-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p"]);
    let distinct: Vec<Vec<u8>> = (0..200).map(content_frame).collect();
    encode_frames(&media.join("plain.mp4"), &distinct, &["-c:v", "libx264", "-crf", "20", "-pix_fmt", "yuv420p"]);
    let d = Daemon::start(dir, |_| {}).await;
    let mut c = d.client().await;

    let req = |video: &str, max_distance| pb::FindDuplicatesRequest {
        video: video.into(),
        max_distance,
        min_loop_frames: 0,
        other_video: String::new(),
    };
    let report = c.find_duplicates(req("looped.mp4", 6)).await.unwrap().into_inner();
    assert_eq!(report.loops.len(), 1, "{:?}", report.loops);
    let l = &report.loops[0];
    assert!(l.first_start.abs() <= 2 && (l.second_start - 120).abs() <= 2, "{l:?}");
    assert!((l.length - 60).abs() <= 2, "{l:?}");
    assert_eq!(report.groups.len(), 1, "{:?}", report.groups);
    let g = &report.groups[0];
    assert!(g.exact);
    assert_eq!(g.indices, (180..220).collect::<Vec<i64>>());

    // Identical pixels only: the poor copy no longer matches, the frozen tail still does.
    let exact = c.find_duplicates(req("looped.mp4", 0)).await.unwrap().into_inner();
    assert!(exact.loops.is_empty(), "{:?}", exact.loops);
    assert_eq!(exact.groups.len(), 1);
    assert_eq!(exact.groups[0].indices, (180..220).collect::<Vec<i64>>());

    let none = c.find_duplicates(req("plain.mp4", 6)).await.unwrap().into_inner();
    assert!(none.loops.is_empty() && none.groups.is_empty(), "{none:?}");

    // Against another video: where plain.mp4's frames 0..60 appear in looped.mp4.
    let cross = c
        .find_duplicates(pb::FindDuplicatesRequest {
            video: "plain.mp4".into(),
            max_distance: 6,
            min_loop_frames: 0,
            other_video: "looped.mp4".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let found: Vec<(i64, i64)> = cross.loops.iter().map(|l| (l.first_start, l.second_start)).collect();
    assert!(found.contains(&(0, 0)) && found.contains(&(0, 120)), "{found:?}");

    let bad = c.find_duplicates(req("looped.mp4", 65)).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{}", bad.message());
    let missing = c.find_duplicates(req("nope.mp4", 4)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    d.stop().await;
}

/// 300 barcode frames, a keyframe every 50.
fn long_gops(media: &Path) -> PathBuf {
    std::fs::create_dir_all(media).unwrap();
    encode(
        &media.join("k.mp4"),
        300,
        25,
        &["-c:v", "libx264", "-bf", "2", "-g", "50", "-keyint_min", "50", "-sc_threshold", "0", "-pix_fmt", "yuv420p"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframes_decode_only_keyframes_and_are_exact() {
    let dir = scratch();
    let path = long_gops(&dir.path().join("media"));
    let reference = reference_frames(&path);
    let d = Daemon::start(dir, |_| {}).await;
    let mut c = d.client().await;
    let info = c
        .get_video_info(pb::GetVideoInfoRequest { video: "k.mp4".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let keyframes = |every, time_range| pb::KeyframesRequest { video: "k.mp4".into(), every, time_range, output: None };
    let before = d.store.stats().frames_decoded;
    let mut s = c.request_keyframes(keyframes(0, None)).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(f) = s.message().await.unwrap() {
        assert!(f.key_frame);
        assert_eq!(f.data, reference[f.index as usize], "keyframe {} is exact", f.index);
        got.push(f.index);
    }
    assert_eq!(got.len() as i64, info.keyframe_count);
    assert_eq!(got, (0..6).map(|k| k * 50).collect::<Vec<i64>>());
    let decoded = d.store.stats().frames_decoded - before;
    assert!(decoded <= 4 * got.len() as u64, "{decoded} frames decoded for {} keyframes (of 300 frames)", got.len());

    let mut s = c
        .request_keyframes(keyframes(2, Some(pb::TimeRange { start_s: 1.0, stop_s: 12.0 })))
        .await
        .unwrap()
        .into_inner();
    let mut some = Vec::new();
    while let Some(f) = s.message().await.unwrap() {
        some.push(f.index);
    }
    assert_eq!(some, vec![50, 150, 250], "every other keyframe from 1 s on");
    let bad = c.request_keyframes(keyframes(1, Some(pb::TimeRange { start_s: 5.0, stop_s: 1.0 }))).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    d.stop().await;
}

/// Decode a JPEG with the ffmpeg CLI into rgb24 and its size.
fn decode_jpeg(data: &[u8], dir: &Path) -> Vec<u8> {
    let file = dir.join("board.jpg");
    std::fs::write(&file, data).unwrap();
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&file)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storyboards_show_the_frames_their_tiles_name() {
    let dir = scratch();
    long_gops(&dir.path().join("media"));
    let d = Daemon::start(dir, |_| {}).await;
    let mut c = d.client().await;
    let req = |tiles, tile_width, exact| pb::StoryboardRequest {
        video: "k.mp4".into(),
        tiles,
        tile_width,
        tile_height: 0,
        columns: 4,
        exact,
        jpeg_quality: 95,
        upright: false,
    };
    for exact in [false, true] {
        let board = c.get_storyboard(req(12, W, exact)).await.unwrap().into_inner();
        assert_eq!((board.columns, board.rows, board.width, board.height), (4, 3, 4 * W, 3 * H));
        assert_eq!(board.tiles.len(), 12);
        let rgb = decode_jpeg(&board.image, d.dir.path());
        assert_eq!(rgb.len(), (board.width * board.height * 3) as usize);
        for (t, tile) in board.tiles.iter().enumerate() {
            let expected = if exact { t as i64 * 25 } else { ((t as i64 * 25 + 24) / 50) * 50 };
            let expected = if exact { expected } else { expected.min(250) };
            assert_eq!(tile.index, expected, "tile {t} (exact {exact})");
            // The tile's pixels carry the frame's barcode.
            let mut frame = Vec::with_capacity((W * H * 3) as usize);
            for y in tile.y..tile.y + tile.height {
                let row = ((y * board.width + tile.x) * 3) as usize;
                frame.extend_from_slice(&rgb[row..row + (tile.width * 3) as usize]);
            }
            assert_eq!(barcode(&frame) as i64, tile.index, "tile {t} shows frame {}", tile.index);
        }
    }
    let small = c.get_storyboard(req(50, 0, false)).await.unwrap().into_inner();
    assert_eq!(small.tiles.len(), 50);
    assert_eq!(small.tiles[0].width, 160, "160 wide by default");
    for (bad, what) in
        [(req(0, 0, false), "tiles"), (req(5000, 0, false), "tiles"), (req(10, 100_000, false), "tile_width")]
    {
        let e = c.get_storyboard(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}");
        assert!(e.message().contains(what), "{}", e.message());
    }
    d.stop().await;
}

async fn export(
    c: &mut framesrv::proto::v1::frame_server_client::FrameServerClient<tonic::transport::Channel>,
    req: pb::ClipRequest,
) -> Result<(String, Vec<u8>), tonic::Status> {
    let mut s = c.export_clip(req).await?.into_inner();
    let (mut kind, mut bytes) = (String::new(), Vec::new());
    while let Some(chunk) = s.message().await? {
        if kind.is_empty() {
            kind = chunk.content_type;
        }
        bytes.extend_from_slice(&chunk.data);
    }
    Ok((kind, bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clips_are_lossless_or_playable_and_bounded() {
    let dir = scratch();
    let videos = hard_videos(&dir.path().join("media"));
    let d = Daemon::start(dir, |c| c.limits.max_clip_frames = 50).await;
    let mut c = d.client().await;
    let clip = |video: &str, start, stop, format: pb::ClipFormat| pb::ClipRequest {
        video: video.into(),
        selection: Some(pb::clip_request::Selection::Range(pb::IndexRange { start, stop, step: 1 })),
        format: format as i32,
        output: None,
        crf: 0,
        preset: String::new(),
    };
    // Lossless: the clip decodes to the very bytes of each frame, with each frame's own
    // timestamp (VFR), counted from the clip's start.
    let vfr = &videos[1];
    let (kind, bytes) = export(&mut c, clip("vfr.mkv", 11, 41, pb::ClipFormat::MkvFfv1)).await.unwrap();
    assert_eq!(kind, "video/x-matroska");
    let out = d.dir.path().join("clip.mkv");
    std::fs::write(&out, &bytes).unwrap();
    let source = framemd5(vfr);
    assert_eq!(framemd5(&out), source[11..41].to_vec(), "FFV1 clip decodes to the same rgb24 bytes");
    let info = c
        .get_video_info(pb::GetVideoInfoRequest { video: "vfr.mkv".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(info.variable_frame_rate);
    let times = probe_times(&out);
    assert_eq!(times.len(), 30);
    let t0 = 11.0 * 0.05 + 0.02;
    for (k, t) in times.iter().enumerate() {
        let i = 11 + k;
        let expected = i as f64 * 0.05 + 0.02 * (i % 2) as f64 - t0;
        assert!((t - expected).abs() < 0.0015, "clip frame {k} at {t}s, expected {expected}s");
    }

    // MP4: plays as it arrives (fragmented), every frame there, the duration of the range.
    let (kind, bytes) = export(&mut c, clip("b.mp4", 10, 60, pb::ClipFormat::Mp4H264)).await.unwrap();
    assert_eq!(kind, "video/mp4");
    assert!(bytes.windows(4).any(|w| w == b"moof"), "fragmented MP4");
    let out = d.dir.path().join("clip.mp4");
    std::fs::write(&out, &bytes).unwrap();
    let frames = reference_frames(&out);
    assert_eq!(frames.len(), 50);
    // Lossy, but the barcodes survive: the right frames, in order.
    for (k, f) in frames.iter().enumerate() {
        assert_eq!(barcode(f), 10 + k as u32, "clip frame {k}");
    }
    let times = probe_times(&out);
    assert!((times[49] - times[0] - 49.0 / 25.0).abs() < 0.002, "{:?}", (times[0], times[49]));
    // Tagged with the YCbCr it was converted to, so players do not guess (browsers take
    // untagged HD video for BT.709).
    let tags = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v", "-show_entries", "stream=color_space,color_range"])
        .args(["-of", "compact=p=0"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&tags.stdout).trim(), "color_range=tv|color_space=smpte170m");

    // Bad requests.
    for (req, code, needle) in [
        (clip("b.mp4", 0, 80, pb::ClipFormat::Mp4H264), Code::InvalidArgument, "at most 50"),
        (clip("b.mp4", 85, 95, pb::ClipFormat::Mp4H264), Code::OutOfRange, "out of range"),
        (
            pb::ClipRequest {
                selection: Some(pb::clip_request::Selection::Range(pb::IndexRange { start: 0, stop: 10, step: 2 })),
                ..clip("b.mp4", 0, 0, pb::ClipFormat::Mp4H264)
            },
            Code::InvalidArgument,
            "step",
        ),
        (
            pb::ClipRequest { preset: "turbo".into(), ..clip("b.mp4", 0, 10, pb::ClipFormat::Mp4H264) },
            Code::InvalidArgument,
            "preset",
        ),
        (
            pb::ClipRequest { format: 7, ..clip("b.mp4", 0, 10, pb::ClipFormat::Mp4H264) },
            Code::InvalidArgument,
            "format",
        ),
    ] {
        let e = export(&mut c, req).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().contains(needle), "{}", e.message());
    }
    // The daemon still serves.
    let (_, again) = export(&mut c, clip("b.mp4", 0, 5, pb::ClipFormat::MkvFfv1)).await.unwrap();
    assert!(!again.is_empty());
    d.stop().await;
}

/// A clip across a picture size change keeps the first frame's size and scales the others to
/// it, as the CLI does with its own output (the encoder had refused the first frame of the new
/// size, and the export failed as an internal error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clip_across_a_picture_size_change_keeps_the_first_size() {
    let dir = scratch();
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let source = size_change_video(&media.join("changes.ts"), 24);
    let d = Daemon::start(dir, |_| {}).await;
    let mut c = d.client().await;
    for (format, name) in [(pb::ClipFormat::MkvFfv1, "clip.mkv"), (pb::ClipFormat::Mp4H264, "clip.mp4")] {
        let req = pb::ClipRequest {
            video: "changes.ts".into(),
            selection: Some(pb::clip_request::Selection::Range(pb::IndexRange { start: 16, stop: 32, step: 1 })),
            format: format as i32,
            output: None,
            crf: 0,
            preset: String::new(),
        };
        let (_, bytes) = export(&mut c, req).await.unwrap_or_else(|e| panic!("{name}: {}", e.message()));
        let out = d.dir.path().join(name);
        std::fs::write(&out, &bytes).unwrap();
        // Whole frames of the first size (reference_frames checks), the right ones in order.
        let frames = reference_frames(&out);
        assert_eq!(frames.len(), 16, "{name}");
        for (k, f) in frames.iter().enumerate() {
            assert_eq!(barcode(f), 16 + k as u32, "{name}: frame {k}");
        }
        if format == pb::ClipFormat::MkvFfv1 {
            // Lossless before the change: the source's own bytes.
            assert_eq!(framemd5(&out)[..8], framemd5(&source)[16..24], "{name}");
        }
    }
    d.stop().await;
}

/// Run the `framesrv` binary (off the runtime's workers).
async fn cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || Command::new(env!("CARGO_BIN_EXE_framesrv")).args(&args).output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_writes_hashes_storyboards_and_clips() {
    let dir = scratch();
    let path = long_gops(&dir.path().join("media"));
    let d = Daemon::start(dir, |_| {}).await;
    let out = d.dir.path();
    let s = |v: &[&str]| -> Vec<String> {
        v.iter().map(|x| x.to_string()).chain(["--server".into(), d.addr.clone()]).collect()
    };

    let hashes = cli(s(&["hashes", "k.mp4", "--md5", "--range", "10:13"])).await;
    assert!(hashes.status.success(), "{}", String::from_utf8_lossy(&hashes.stderr));
    let text = String::from_utf8_lossy(&hashes.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "index\ttime_s\tahash\tdhash\tmd5");
    let expected = framemd5(&path);
    for (k, line) in lines[1..].iter().enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols[0], (10 + k).to_string());
        assert_eq!(cols[4], expected[10 + k]);
    }

    let board = out.join("strip.jpg");
    let run = cli(s(&["storyboard", "k.mp4", "--tiles", "6", "-o", board.to_str().unwrap()])).await;
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(&std::fs::read(&board).unwrap()[..2], &[0xFF, 0xD8], "a JPEG");
    assert_eq!(String::from_utf8_lossy(&run.stdout).lines().count(), 7, "a header and one line per tile");

    let clip = out.join("c.mkv");
    let run = cli(s(&["clip", "k.mp4", "--range", "100:130", "-o", clip.to_str().unwrap()])).await;
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(framemd5(&clip), expected[100..130].to_vec(), ".mkv is the lossless clip");

    // Identical pixels only: the barcodes make every frame distinct (their moving texture is
    // periodic, so at the 8x8 scale of aHash frames 50 apart do look alike).
    let dups = cli(s(&["dups", "k.mp4", "--max-distance", "0"])).await;
    assert!(dups.status.success(), "{}", String::from_utf8_lossy(&dups.stderr));
    assert!(String::from_utf8_lossy(&dups.stdout).starts_with("0 loops"), "{}", String::from_utf8_lossy(&dups.stdout));

    let bad = cli(s(&["clip", "k.mp4", "--range", "100:900", "-o", "/dev/null"])).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("OutOfRange"), "{}", String::from_utf8_lossy(&bad.stderr));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_does_not_wait_for_a_hash_pass_on_its_decoder_and_the_pass_stays_exact() {
    let dir = scratch();
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    // 600 frames in one lane (one GOP): the pass holds the video's only decoder for a while.
    let path =
        encode(&media.join("one.mp4"), 600, 25, &["-c:v", "libx264", "-g", "600", "-bf", "2", "-pix_fmt", "yuv420p"]);
    let reference = reference_frames(&path);
    let d = Daemon::start(dir, |c| {
        c.decoder.max_per_video = 1;
        c.decoder.max_total = 1;
        c.decoder.interactive_reserve = 0;
    })
    .await;
    let mut hasher = d.client().await;
    let pass = tokio::spawn(async move { all_hashes(&mut hasher, "one.mp4", true).await });
    while d.store.stats().frames_decoded < 20 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let mut c = d.client().await;
    // Behind the pass's position: the decoder must leave the pass (at a frame boundary), seek,
    // answer, and let the pass continue from where it was.
    let f = c
        .request_frame(pb::FrameRequest {
            video: "one.mp4".into(),
            target: Some(pb::frame_request::Target::Index(3)),
            keep_behind: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let decoded = d.store.stats().frames_decoded;
    assert!(decoded < 600, "{decoded} frames decoded by the time of the answer: the click waited for the pass");
    assert!(!pass.is_finished(), "the hash pass finished first: the click waited behind it");
    assert_eq!(f.data, reference[3]);
    let hashes = pass.await.unwrap();
    assert_eq!(hashes.len(), 600);
    for (h, r) in hashes.iter().zip(&reference) {
        assert_eq!(h.md5, md5_of(r), "frame {} hashed after the pass yielded", h.index);
    }
    d.stop().await;
}
