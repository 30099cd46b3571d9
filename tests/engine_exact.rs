//! Frame-exactness of the engine on the hard cases: every frame, under sequential, backward,
//! random and interleaved access, must be byte-identical to the ffmpeg CLI's sequential decode
//! of the same file, and carry the barcode of the right source frame. Every pattern runs with
//! one codec thread and with frame threads (what a decoder working alone gets), and once more
//! with decodes that yield to other work at frame boundaries, as the scheduler makes them.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use framesrv::engine::buffers::BufferPool;
use framesrv::engine::decoder::{DecodeOptions, FrameDecoder, RawFrame};
use framesrv::engine::index::{FrameIdentity, SeekBy, VideoIndex};
use framesrv::engine::output::{OutputSpec, PixelFormat};
use framesrv::engine::stats::EngineStats;
use framesrv::engine::video::{build_index, shown_in_pts_order, VideoId};
use framesrv::engine::EngineError;
use framesrv::units::ByteSize;
use framesrv::units::FrameIndex;

fn options(threads: usize) -> DecodeOptions {
    DecodeOptions { threads, keep_behind: 6, skip_nonref: true, continue_slack: 0 }
}

fn decoder(path: &Path, index: &Arc<VideoIndex>, stats: &Arc<EngineStats>) -> FrameDecoder {
    decoder_with(path, index, stats, 1)
}

fn decoder_with(path: &Path, index: &Arc<VideoIndex>, stats: &Arc<EngineStats>, threads: usize) -> FrameDecoder {
    let id = VideoId::of(path.to_path_buf()).expect("the video exists").0;
    FrameDecoder::open(&id, "test", index.clone(), options(threads), stats.clone(), BufferPool::new(ByteSize::mib(16)))
        .expect("decoder opens")
}

/// Frame threads: FFmpeg delays output by a frame per thread and decodes frames in parallel;
/// the result must not change by a byte.
const THREAD_COUNTS: [usize; 2] = [1, 3];

thread_local! {
    /// Frames whose planes (what the cache keeps of them) were checked on this test's thread.
    static PLANES_CHECKED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The planes the cache would keep of `f`, converted as a cache hit converts them, must give
/// the reference's bytes too.
fn check_planes(f: &RawFrame, reference: &[Vec<u8>], pattern: &str) {
    if let Some(planes) = &f.planes {
        let hit = planes.convert(f.spec.pixel_format, f.spec.width, f.spec.height, Vec::new()).expect("converts");
        assert!(
            hit[..] == reference[f.index.get()][..],
            "{pattern}: frame {} converted from the cached planes differs from the reference",
            f.index
        );
        PLANES_CHECKED.with(|c| c.set(c.get() + 1));
    }
}

/// Decode `i` and compare it, and every frame decoded on the way, with the reference (also as
/// the cache would give it back).
fn expect_frame(d: &mut FrameDecoder, i: usize, reference: &[Vec<u8>], pattern: &str) {
    let mut check_side = |f: RawFrame| {
        assert!(
            f.data[..] == reference[f.index.get()][..],
            "{pattern}: frame {} decoded on the way to {i} differs from the reference",
            f.index
        );
        check_planes(&f, reference, pattern);
    };
    let f = d
        .frame(FrameIndex(i as u32), &OutputSpec::default(), &mut check_side)
        .unwrap_or_else(|e| panic!("{pattern}: frame {i}: {e}"));
    assert_eq!(f.index.get(), i);
    assert!(
        f.data[..] == reference[i][..],
        "{pattern}: frame {i} differs from the reference (barcode {} instead of {})",
        barcode(&f.data),
        barcode(&reference[i])
    );
    check_planes(&f, reference, pattern);
}

/// The whole battery on one file. Returns the index for case-specific checks.
fn check_exact(path: &Path) -> Arc<VideoIndex> {
    check_exact_with(path, true)
}

/// `consecutive`: the file holds every source frame (false for damaged files, whose decode
/// legitimately skips source frames whose data is gone).
fn check_exact_with(path: &Path, consecutive: bool) -> Arc<VideoIndex> {
    let reference = reference_frames(path);
    assert!(reference.len() > 10, "{}: reference decode produced {} frames", path.display(), reference.len());
    let first = barcode(&reference[0]);
    for (i, f) in reference.iter().enumerate().skip(1) {
        if consecutive {
            assert_eq!(barcode(f), first + i as u32, "the reference itself has consecutive frames");
        } else {
            assert!(barcode(f) > barcode(&reference[i - 1]), "the reference itself is in order");
        }
    }
    let index = Arc::new(build_index(path, "test").expect("index builds"));
    let n = index.frame_count();
    assert_eq!(n, reference.len(), "{}: index frame count vs ffmpeg's decode", path.display());

    for threads in THREAD_COUNTS {
        let stats = Arc::new(EngineStats::default());
        let mut d = decoder_with(path, &index, &stats, threads);
        for i in 0..n {
            expect_frame(&mut d, i, &reference, &format!("sequential, {threads} threads"));
        }
        assert_eq!(stats.seeks.get(), 1, "sequential reading seeks once, to start, and never again");

        let mut d = decoder_with(path, &index, &stats, threads);
        for i in (0..n).rev() {
            expect_frame(&mut d, i, &reference, &format!("backward, {threads} threads"));
        }

        let mut d = decoder_with(path, &index, &stats, threads);
        for i in shuffled(n, 40, n as u64) {
            expect_frame(&mut d, i, &reference, &format!("random, {threads} threads"));
        }

        let mut d = decoder_with(path, &index, &stats, threads);
        let (mut a, mut b) = (0usize, n - 1);
        while a < b {
            expect_frame(&mut d, a, &reference, &format!("interleaved, {threads} threads"));
            expect_frame(&mut d, b, &reference, &format!("interleaved, {threads} threads"));
            a += 3;
            b = b.saturating_sub(2);
        }
    }
    check_yielding(path, &index, &reference);
    check_thread_change(path, &index, &reference);
    index
}

/// Decodes that stop at frame boundaries for other work and resume (or re-seek) afterwards, as
/// the scheduler makes a stream frame yield to an interactive request on the same decoder.
fn check_yielding(path: &Path, index: &Arc<VideoIndex>, reference: &[Vec<u8>]) {
    let n = index.frame_count();
    let stats = Arc::new(EngineStats::default());
    let mut d = decoder(path, index, &stats);
    let targets = shuffled(n, 12, 7 + n as u64);
    let urgent = shuffled(n, 64, 11 + n as u64);
    let mut urgent = urgent.into_iter();
    for &t in &targets {
        let mut steps = 0;
        loop {
            steps += 1;
            let mut calls = 0;
            // Yield after every second decode step.
            let mut yield_now = || {
                calls += 1;
                calls % 2 == 0
            };
            let got = d
                .frame_keeping(FrameIndex(t as u32), &OutputSpec::default(), 2, &mut |_| {}, &mut yield_now)
                .unwrap_or_else(|e| panic!("yielding: frame {t}: {e}"));
            match got {
                Some(f) => {
                    assert_eq!(f.index.get(), t);
                    assert!(f.data[..] == reference[t][..], "yielding: frame {t} differs from the reference");
                    break;
                }
                None => {
                    assert!(steps < 10_000, "yielding: frame {t} never finishes");
                    // Every third time, urgent work moves the decoder elsewhere in between.
                    if steps % 3 == 0 {
                        if let Some(u) = urgent.next() {
                            expect_frame(&mut d, u, reference, "urgent work between yields");
                        }
                    }
                }
            }
        }
    }
}

/// The thread count changes at a seek (a decoder that was alone gets company, and back).
fn check_thread_change(path: &Path, index: &Arc<VideoIndex>, reference: &[Vec<u8>]) {
    let n = index.frame_count();
    let stats = Arc::new(EngineStats::default());
    let mut d = decoder_with(path, index, &stats, 1);
    for (k, i) in shuffled(n, 16, 3 + n as u64).into_iter().enumerate() {
        d.set_threads(if k % 2 == 0 { 3 } else { 1 });
        expect_frame(&mut d, i, reference, "thread count changing at seeks");
        if i + 1 < n {
            expect_frame(&mut d, i + 1, reference, "thread count changing at seeks, next frame");
        }
    }
}

#[test]
fn h264_with_b_frames_in_mp4_is_frame_exact() {
    let dir = scratch();
    let p =
        encode(&dir.path().join("b.mp4"), 60, 25, &["-c:v", "libx264", "-bf", "3", "-g", "12", "-pix_fmt", "yuv420p"]);
    let index = check_exact(&p);
    assert_eq!(index.identity, FrameIdentity::ByPts);
    assert_eq!(index.keyframe_count, 5);
    assert!(PLANES_CHECKED.with(|c| c.get()) > 100, "4:2:0 frames keep their planes for the cache");
}

/// Widths that are not a multiple of eight (854x480 is a common one): swscale's SIMD converts
/// rows eight pixels at a time, and into rows packed tightly it left the last pixels of each
/// row unwritten (stale memory served as pixels). Every output format, every access order, and
/// the planes the cache keeps must give the CLI's bytes at such sizes too.
#[test]
fn widths_not_a_multiple_of_eight_are_frame_exact() {
    let dir = scratch();
    for (size, codec, pix_fmt) in
        [("854x480", "libx264", "yuv420p"), ("643x361", "ffv1", "yuv420p"), ("643x361", "ffv1", "yuv422p")]
    {
        let p = dir.path().join(format!("{codec}-{pix_fmt}-{size}.mkv"));
        let source = format!("testsrc2=size={size}:rate=25");
        ffmpeg(
            &["-f", "lavfi", "-i", &source, "-frames:v", "24", "-c:v", codec, "-g", "8", "-pix_fmt", pix_fmt]
                .into_iter()
                .chain([p.to_str().unwrap()])
                .collect::<Vec<_>>(),
        );
        check_formats(&p, &format!("{codec} {pix_fmt} {size}"));
    }
}

/// Every output format of every frame of `p`, in order and in random order, and from the planes
/// the cache keeps, against the CLI's conversion to the same format.
fn check_formats(p: &Path, what: &str) {
    let index = Arc::new(build_index(p, "test").expect("index builds"));
    let (w, h) = index.stream.shown_size(false);
    for (format, name) in [
        (PixelFormat::Rgb24, "rgb24"),
        (PixelFormat::Bgr24, "bgr24"),
        (PixelFormat::Rgba, "rgba"),
        (PixelFormat::Gray8, "gray"),
    ] {
        let len = w as usize * h as usize * format.bytes_per_pixel();
        let reference = reference_frames_sized(p, &[], name, len);
        assert_eq!(reference.len(), index.frame_count());
        let spec = OutputSpec { pixel_format: format, ..OutputSpec::default() };
        let stats = Arc::new(EngineStats::default());
        let mut d = decoder(p, &index, &stats);
        let order = (0..reference.len()).chain(shuffled(reference.len(), 24, 5));
        for i in order {
            let what = format!("{what} as {name}, frame {i}");
            let f = d.frame(FrameIndex(i as u32), &spec, &mut |_| {}).expect("decodes");
            assert!(f.data[..] == reference[i][..], "{what} differs from the CLI's");
            if let Some(planes) = &f.planes {
                let hit = planes.convert(format, w, h, Vec::new()).unwrap();
                assert!(hit[..] == reference[i][..], "{what} from the cached planes differs from the CLI's");
            }
        }
    }
}

/// Every codec and pixel format family Debian's FFmpeg encodes that a user may bring: high bit
/// depth, 4:2:2 and 4:4:4, alpha, RGB and palette sources, semi-planar, 1-bit, 16-bit gray.
/// Each is converted by swscale along another path; each must give the CLI's bytes in every
/// output format, in order, at random and from the cache.
#[test]
fn a_matrix_of_codecs_and_pixel_formats_is_frame_exact() {
    let dir = scratch();
    for (name, args) in [
        ("x264-422-10bit.mkv", &["-c:v", "libx264", "-pix_fmt", "yuv422p10le", "-g", "5"][..]),
        ("x264-444.mkv", &["-c:v", "libx264", "-pix_fmt", "yuv444p", "-g", "5"]),
        ("x265-420-10bit.mkv", &["-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params", "log-level=none"]),
        ("vp9-alpha.webm", &["-c:v", "libvpx-vp9", "-pix_fmt", "yuva420p", "-g", "5"]),
        ("vp9-444-10bit.mkv", &["-c:v", "libvpx-vp9", "-pix_fmt", "yuv444p10le", "-g", "5"]),
        ("prores-4444.mov", &["-c:v", "prores_ks", "-profile:v", "4", "-pix_fmt", "yuva444p10le"]),
        ("png-rgb48.mov", &["-c:v", "png", "-pix_fmt", "rgb48be"]),
        ("png-mono.mov", &["-c:v", "png", "-pix_fmt", "monob"]),
        ("png-gray-alpha.mov", &["-c:v", "png", "-pix_fmt", "ya8"]),
        ("ffv1-gbrp.mkv", &["-c:v", "ffv1", "-pix_fmt", "gbrp"]),
        ("ffv1-gray16.mkv", &["-c:v", "ffv1", "-pix_fmt", "gray16le"]),
        ("raw-nv12.nut", &["-c:v", "rawvideo", "-pix_fmt", "nv12"]),
        ("raw-p010.nut", &["-c:v", "rawvideo", "-pix_fmt", "p010le"]),
        ("raw-pal8.nut", &["-c:v", "rawvideo", "-pix_fmt", "pal8"]),
        ("mjpeg-440.avi", &["-c:v", "mjpeg", "-pix_fmt", "yuvj440p"]),
        ("utvideo-422.avi", &["-c:v", "utvideo", "-pix_fmt", "yuv422p"]),
        ("qtrle-rgb24.mov", &["-c:v", "qtrle", "-pix_fmt", "rgb24"]),
        ("palette.gif", &[]),
    ] {
        let p = dir.path().join(name);
        let source = "testsrc2=size=98x66:rate=25";
        let mut all = vec!["-f", "lavfi", "-i", source, "-frames:v", "12"];
        all.extend(args);
        all.push(p.to_str().unwrap());
        ffmpeg(&all);
        check_formats(&p, name);
    }
}

/// The CLI converts each frame with the YCbCr matrix and the range the frame is tagged with
/// (FFmpeg 5.1's scale filter reads both from the frame), and almost every HD camera and phone
/// video is tagged BT.709. Converted with swscale's defaults (BT.601, limited range), every
/// frame of such a video was served with other colours than the CLI's.
#[test]
fn colour_tagged_videos_are_converted_with_their_own_matrix_and_range() {
    let dir = scratch();
    for (name, tags) in [
        ("bt709", &["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709"][..]),
        ("bt709-full-range", &["-colorspace", "bt709", "-color_range", "pc"]),
        ("bt2020", &["-colorspace", "bt2020nc", "-color_primaries", "bt2020", "-color_trc", "smpte2084"]),
        ("smpte240m", &["-colorspace", "smpte240m"]),
        // A matrix swscale has no table for: the scale filter falls back to BT.601.
        ("ycgco", &["-colorspace", "ycgco"]),
    ] {
        let p = dir.path().join(format!("{name}.mkv"));
        let source = format!("testsrc2=size={W}x{H}:rate=25");
        let mut args = vec!["-f", "lavfi", "-i", &source, "-frames:v", "24", "-c:v", "libx264", "-g", "8"];
        args.extend(["-pix_fmt", "yuv420p"]);
        args.extend(tags);
        args.push(p.to_str().unwrap());
        ffmpeg(&args);
        // The tags change the CLI's pixels (so this test can fail), but for the fallback.
        let untagged = Command::new("ffmpeg")
            .args(["-v", "error", "-i", p.to_str().unwrap(), "-frames:v", "1"])
            .args(["-vf", "scale=in_color_matrix=bt601:in_range=tv", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            .output()
            .unwrap()
            .stdout;
        let tagged = &reference_frames(&p)[0];
        assert_eq!(untagged[..] == tagged[..], name == "ycgco", "{name}: the tags matter to the CLI");
        check_formats(&p, name);
    }
}

/// What the cache keeps of a frame is the decoder's planes wherever they are smaller than the
/// output (see `Stored` in the registry), converted again on each hit: at odd sizes (chroma
/// rows and columns rounded up) and in every subsampling, that conversion gives the bytes the
/// decoder's own gave, and planes no smaller than the RGB keep nothing.
#[test]
fn cached_planes_convert_to_the_decoders_own_bytes() {
    let dir = scratch();
    // Whether the planes are kept for rgb24 and for rgba output.
    for (size, pix_fmt, kept) in [
        ("643x361", "yuv420p", [true, true]),
        ("643x361", "yuv422p", [true, true]),
        ("643x361", "yuv410p", [true, true]),
        ("643x361", "gray", [true, true]),
        ("643x361", "yuv444p", [false, true]),
        // Row padding dominates a tiny picture: its planes are no smaller than its RGB (but
        // smaller than its RGBA).
        ("67x39", "yuv420p", [false, true]),
    ] {
        let p = dir.path().join(format!("{pix_fmt}-{size}.mkv"));
        let source = format!("testsrc2=size={size}:rate=25");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            &source,
            "-frames:v",
            "12",
            "-c:v",
            "ffv1",
            "-pix_fmt",
            pix_fmt,
            p.to_str().unwrap(),
        ]);
        let index = Arc::new(build_index(&p, "test").expect("index builds"));
        let stats = Arc::new(EngineStats::default());
        let mut d = decoder(&p, &index, &stats);
        for (format, kept) in [PixelFormat::Rgb24, PixelFormat::Rgba].into_iter().zip(kept) {
            let spec = OutputSpec { pixel_format: format, ..OutputSpec::default() };
            for i in 0..index.frame_count() {
                let f = d.frame(FrameIndex(i as u32), &spec, &mut |_| {}).expect("decodes");
                assert_eq!(f.planes.is_some(), kept, "{pix_fmt} {size} as {format:?}: planes kept");
                if let Some(planes) = &f.planes {
                    assert!(planes.len() < f.data.len(), "{pix_fmt} {size}: planes are kept only when smaller");
                    let hit = planes.convert(f.spec.pixel_format, f.spec.width, f.spec.height, Vec::new()).unwrap();
                    let what = format!("{pix_fmt} {size} {:?}: frame {i}", spec.pixel_format);
                    assert!(hit == f.data[..], "{what} from the planes differs from the decoder's");
                }
            }
        }
        // Passes whose frames are never cached (hashes, clips) copy no planes.
        d.set_planes(false);
        assert!(d.frame(FrameIndex(3), &OutputSpec::default(), &mut |_| {}).unwrap().planes.is_none());
    }
}

/// A raw H.264 stream with B-frames remuxed into mp4 without timestamps: ffmpeg stamps each
/// packet as it reads it, so every pts equals its dts, and sorted, the pts are the decode order,
/// not the order the decoder shows the pictures in. Indexed by those pts, frame 2 was the
/// picture shown fourth, and some frames were "never produced" (data loss). Such files are
/// indexed by decoding.
#[test]
fn a_raw_stream_remuxed_without_timestamps_is_frame_exact() {
    let dir = scratch();
    let raw = encode(
        &dir.path().join("b-frames.h264"),
        60,
        25,
        &["-c:v", "libx264", "-x264-params", "keyint=12:bframes=3:scenecut=0", "-pix_fmt", "yuv420p"],
    );
    let mp4 = dir.path().join("remuxed.mp4");
    ffmpeg(&["-r", "25", "-f", "h264", "-i", raw.to_str().unwrap(), "-c", "copy", mp4.to_str().unwrap()]);
    let index = check_exact(&mp4);
    assert_eq!(index.identity, FrameIdentity::ByCount, "indexed by decoding");
    // What sends it there: the decoder shows its first pictures out of pts order. A stream
    // without B-frames remuxed the same way shows them in order (its pts equal to its dts are
    // right), so an encoder that announces reordering and uses none keeps a seekable index.
    assert!(!shown_in_pts_order(&mp4, "test").unwrap());
    let plain =
        encode(&dir.path().join("p-frames.h264"), 60, 25, &["-c:v", "libx264", "-bf", "0", "-pix_fmt", "yuv420p"]);
    let plain_mp4 = dir.path().join("plain.mp4");
    ffmpeg(&["-r", "25", "-f", "h264", "-i", plain.to_str().unwrap(), "-c", "copy", plain_mp4.to_str().unwrap()]);
    assert!(shown_in_pts_order(&plain_mp4, "test").unwrap());
    assert_eq!(check_exact(&plain_mp4).identity, FrameIdentity::ByPts);
}

/// A picture size that changes mid-stream: each frame is served at its own size, with the bytes
/// the CLI decodes when it is told not to scale frames to the first one's size
/// (`-autoscale 0`; by default it scales them, because its raw output has one size).
#[test]
fn a_picture_size_change_mid_stream_serves_each_frame_at_its_own_size() {
    let dir = scratch();
    let p = size_change_video(&dir.path().join("changes.ts"), 24);
    let output = Command::new("ffmpeg")
        .args(["-v", "error", "-i", p.to_str().unwrap(), "-autoscale", "0", "-fps_mode", "passthrough"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    let (first, second) = ((W * H * 3) as usize, (CHANGED.0 * CHANGED.1 * 3) as usize);
    assert_eq!(output.stdout.len(), 24 * first + 24 * second, "the CLI's frames at their own sizes");
    let (a, b) = output.stdout.split_at(24 * first);
    let reference: Vec<Vec<u8>> = a.chunks(first).chain(b.chunks(second)).map(|c| c.to_vec()).collect();
    let index = Arc::new(build_index(&p, "test").expect("index builds"));
    assert_eq!(index.frame_count(), 48);
    assert_eq!(index.identity, FrameIdentity::ByPts);
    for threads in THREAD_COUNTS {
        let stats = Arc::new(EngineStats::default());
        let mut d = decoder_with(&p, &index, &stats, threads);
        for (k, i) in (0..48).chain(shuffled(48, 40, 7)).enumerate() {
            if k == 48 {
                assert_eq!(stats.seeks.get(), 1, "reading in order across the change seeks once");
            }
            let f = d.frame(FrameIndex(i as u32), &OutputSpec::default(), &mut |_| {}).expect("decodes");
            let size = if i < 24 { (W, H) } else { CHANGED };
            assert_eq!((f.spec.width, f.spec.height), size, "frame {i}: its own size");
            assert!(f.data[..] == reference[i][..], "frame {i} ({threads} threads) differs from the CLI's");
            check_planes(&f, &reference, "size change");
        }
    }
}

#[test]
fn h264_open_gop_in_mkv_is_frame_exact() {
    let dir = scratch();
    let p = encode(&dir.path().join("open.mkv"), 72, 25, &OPEN_GOP_H264);
    check_exact(&p);
}

#[test]
fn h264_open_gop_raw_stream_is_frame_exact() {
    let dir = scratch();
    let p = encode(&dir.path().join("open.h264"), 60, 25, &OPEN_GOP_H264);
    let index = check_exact(&p);
    assert_eq!(index.identity, FrameIdentity::ByCount, "a raw stream has no timestamps");
}

#[test]
fn hevc_is_frame_exact() {
    let dir = scratch();
    let p = encode(
        &dir.path().join("h.mp4"),
        48,
        25,
        &[
            "-c:v",
            "libx265",
            "-x265-params",
            "keyint=12:min-keyint=12:bframes=3:log-level=error",
            "-pix_fmt",
            "yuv420p",
            "-tag:v",
            "hvc1",
        ],
    );
    check_exact(&p);
}

#[test]
fn vp9_in_webm_is_frame_exact() {
    let dir = scratch();
    let p = encode(
        &dir.path().join("v.webm"),
        48,
        25,
        &[
            "-c:v",
            "libvpx-vp9",
            "-g",
            "12",
            "-deadline",
            "good",
            "-cpu-used",
            "8",
            "-b:v",
            "400k",
            "-auto-alt-ref",
            "1",
            "-lag-in-frames",
            "16",
        ],
    );
    check_exact(&p);
}

#[test]
fn av1_is_frame_exact() {
    let dir = scratch();
    let p = encode(
        &dir.path().join("a.mkv"),
        48,
        25,
        &["-c:v", "libsvtav1", "-g", "12", "-preset", "12", "-pix_fmt", "yuv420p"],
    );
    check_exact(&p);
}

/// The CLI's frames of `p` and its index, which must count its frames and have a seek point per
/// GOP (at least eight).
fn counted_with_seek_points(p: &Path, name: &str) -> (Vec<Vec<u8>>, Arc<VideoIndex>) {
    let reference = reference_frames(p);
    let index = Arc::new(build_index(p, "test").expect("index builds"));
    assert_eq!(index.frame_count(), reference.len(), "{name}: frame count");
    assert_eq!(index.identity, FrameIdentity::ByCount, "{name}: frames counted");
    assert!(index.seek_points.len() >= 8, "{name}: a seek point per GOP, not {}", index.seek_points.len());
    (reference, index)
}

/// Videos whose packets carry no usable timestamps (MPEG-PS, raw H.264 streams) are indexed by
/// decoding, and were decoded from their start for every cold frame: seconds per request on a
/// long VOB. They now seek to a keyframe packet and recognise the frames they land on by the
/// digests of the sequential decode, also in a still scene (forty equal frames) where one
/// digest names many frames.
#[test]
fn videos_without_timestamps_seek_and_recognise_the_frames_they_land_on() {
    let dir = scratch();
    const GOP: u64 = 15;
    let mpeg2 = ["-c:v", "mpeg2video", "-bf", "2", "-g", "15", "-f", "mpeg"];
    let h264 =
        ["-c:v", "libx264", "-x264-params", "keyint=15:bframes=3:scenecut=0", "-pix_fmt", "yuv420p", "-f", "h264"];
    let still = ["-vf", "loop=loop=40:size=1:start=60"];
    // Every frame a keyframe: the index pass runs on frame threads, which show each frame later
    // than one thread does; a seek point must still serve the frame of its own packet.
    let intra = ["-c:v", "libx264", "-x264-params", "keyint=1", "-pix_fmt", "yuv420p", "-f", "h264"];
    for (name, args) in [
        ("ps.mpg", mpeg2.to_vec()),
        ("raw.h264", h264.to_vec()),
        ("intra.h264", intra.to_vec()),
        ("still.mpg", [&still[..], &mpeg2[..]].concat()),
        ("still.h264", [&still[..], &h264[..]].concat()),
    ] {
        let p = encode(&dir.path().join(name), 150, 25, &args);
        let (reference, index) = counted_with_seek_points(&p, name);
        let n = index.frame_count();
        let gop = if name == "intra.h264" { 1 } else { GOP };
        if name.ends_with(".h264") {
            assert_eq!(index.seek_by, SeekBy::Byte, "{name}: a raw stream seeks by byte");
        }
        for threads in THREAD_COUNTS {
            let pattern = format!("{name}, {threads} threads");
            let stats = Arc::new(EngineStats::default());
            let mut d = decoder_with(&p, &index, &stats, threads);
            expect_frame(&mut d, n - 1, &reference, &pattern);
            let decoded = stats.frames_decoded.get();
            assert!(decoded <= 2 * gop + 8, "{pattern}: the last frame cold decoded {decoded} frames, not about a GOP");
            // And every frame of a stretch in the middle, each on a fresh decoder: a raw stream
            // seeks by byte to the frame's own keyframe packet, once, and lands where it should.
            for i in n / 2..n / 2 + 4 {
                let (decoded, seeks) = (stats.frames_decoded.get(), stats.seeks.get());
                expect_frame(&mut decoder_with(&p, &index, &stats, threads), i, &reference, &pattern);
                let decoded = stats.frames_decoded.get() - decoded;
                assert!(decoded <= 2 * gop + 8, "{pattern}: frame {i} cold decoded {decoded} frames");
                if name.ends_with(".h264") {
                    assert_eq!(stats.seeks.get() - seeks, 1, "{pattern}: frame {i} took more than one seek");
                }
            }
            for i in shuffled(n, 60, n as u64 + threads as u64) {
                expect_frame(&mut d, i, &reference, &pattern);
            }
            for i in (0..n).rev().step_by(7) {
                expect_frame(&mut d, i, &reference, &format!("{pattern}, backward"));
            }
        }
        if name == "raw.h264" {
            // Non-reference frames well before the target are skipped, as in files with
            // timestamps: the last frame of a GOP decodes fewer frames than the GOP has.
            let options = DecodeOptions { keep_behind: 0, ..options(1) };
            let stats = Arc::new(EngineStats::default());
            let buffers = BufferPool::new(ByteSize::mib(16));
            let id = VideoId::of(p.clone()).unwrap().0;
            let mut d = FrameDecoder::open(&id, "test", index.clone(), options, stats.clone(), buffers).unwrap();
            let first = index.first_frame_of(index.frames[n / 2].seek).get();
            expect_frame(&mut d, first + GOP as usize - 1, &reference, "raw.h264, keep_behind 0");
            assert!(stats.frames_decoded.get() < GOP, "decoded {} of a GOP of {GOP}", stats.frames_decoded.get());
        }
        // Digests that match nothing (a decoder that decodes differently after a seek): every
        // seek is given up for the start of the file, slower and still exact.
        let mut wrong = build_index(&p, "test").expect("index builds");
        wrong.digests.iter_mut().for_each(|d| *d = !*d);
        let wrong = Arc::new(wrong);
        let stats = Arc::new(EngineStats::default());
        let mut d = decoder_with(&p, &wrong, &stats, 1);
        for i in shuffled(n, 8, 5) {
            expect_frame(&mut d, i, &reference, &format!("{name}, digests that never match"));
        }
    }
}

/// Two recordings joined as bytes (a broadcast capture split into files, a DVD's VOBs): the
/// timestamps start again halfway, so pts repeat and the file is counted; it still seeks. Both
/// halves are the same source, so every frame has a look-alike in the other half, and where a
/// decode after a seek stands is never certain from one frame: it is served by its digest.
#[test]
fn recordings_joined_as_bytes_are_counted_and_still_seek() {
    let dir = scratch();
    const GOP: u64 = 15;
    let h264 =
        ["-c:v", "libx264", "-x264-params", "keyint=15:bframes=2:scenecut=0", "-pix_fmt", "yuv420p", "-f", "mpegts"];
    let mpeg2 = ["-c:v", "mpeg2video", "-bf", "2", "-g", "15", "-f", "vob"];
    for (name, args) in [("joined.ts", &h264[..]), ("joined.vob", &mpeg2[..])] {
        let half = encode(&dir.path().join(format!("half-{name}")), 90, 25, args);
        let bytes = std::fs::read(&half).unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, [&bytes[..], &bytes[..]].concat()).unwrap();
        let (reference, index) = counted_with_seek_points(&p, name);
        let n = index.frame_count();
        let stats = Arc::new(EngineStats::default());
        let mut d = decoder(&p, &index, &stats);
        for i in shuffled(n, 40, 17) {
            expect_frame(&mut d, i, &reference, name);
        }
        for i in [n - 1, n / 2 + 20, n / 2 - 20] {
            let before = stats.frames_decoded.get();
            expect_frame(&mut decoder(&p, &index, &stats), i, &reference, name);
            let decoded = stats.frames_decoded.get() - before;
            assert!(decoded <= 2 * GOP + 8, "{name}: frame {i} cold decoded {decoded} frames");
        }
    }
}

#[test]
fn mpeg4_in_avi_with_packets_lacking_pts_is_frame_exact() {
    let dir = scratch();
    let p = encode(&dir.path().join("m.avi"), 48, 25, &["-c:v", "mpeg4", "-bf", "2", "-g", "12", "-q:v", "4"]);
    check_exact(&p);
}

#[test]
fn intra_only_mjpeg_and_ffv1_are_frame_exact() {
    let dir = scratch();
    let p = encode(&dir.path().join("j.avi"), 30, 25, &["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"]);
    let index = check_exact(&p);
    assert_eq!(index.keyframe_count, index.frame_count(), "every mjpeg frame is a keyframe");
    let p = encode(&dir.path().join("f.mkv"), 30, 25, &["-c:v", "ffv1"]);
    check_exact(&p);
}

/// Animated GIF and APNG (each frame drawn over the last: only the first is a keyframe) and
/// YUV4MPEG (raw frames, what video research datasets ship).
#[test]
fn animated_gif_apng_and_y4m_are_frame_exact() {
    let dir = scratch();
    let gif = encode(&dir.path().join("a.gif"), 30, 10, &[]);
    let index = check_exact(&gif);
    assert_eq!(index.keyframe_count, 1, "GIF frames are drawn over the previous ones");
    check_exact(&encode(&dir.path().join("a.apng"), 30, 10, &["-plays", "0", "-f", "apng"]));
    check_exact(&encode(&dir.path().join("a.y4m"), 30, 25, &["-pix_fmt", "yuv420p"]));
}

#[test]
fn mpeg_ts_is_frame_exact() {
    let dir = scratch();
    let p = encode(
        &dir.path().join("t.ts"),
        60,
        25,
        &["-c:v", "libx264", "-bf", "3", "-g", "12", "-pix_fmt", "yuv420p", "-f", "mpegts"],
    );
    check_exact(&p);
}

#[test]
fn variable_frame_rate_is_exact_by_index_and_by_time() {
    let dir = scratch();
    // Intervals alternate 70 ms and 30 ms.
    let p = vfr_video(&dir.path().join("vfr.mkv"), 40);
    let index = check_exact(&p);
    assert!(index.variable_frame_rate);
    for (i, f) in index.frames.iter().enumerate() {
        let expected = i as f64 * 0.05 + 0.02 * (i % 2) as f64;
        assert!((f.time_s - expected).abs() < 0.0015, "frame {i} at {}s, expected {expected}s", f.time_s);
        assert_eq!(index.frame_at(f.time_s), Some(FrameIndex(i as u32)));
        assert_eq!(index.frame_at(f.time_s + 0.025), Some(FrameIndex(i as u32)), "still on screen 25 ms later");
    }
}

#[test]
fn mp4_edit_list_cut_off_a_keyframe_is_frame_exact() {
    let dir = scratch();
    let src = encode(
        &dir.path().join("src.mp4"),
        100,
        25,
        &["-c:v", "libx264", "-bf", "3", "-g", "25", "-pix_fmt", "yuv420p"],
    );
    let cut = dir.path().join("cut.mp4");
    ffmpeg(&["-ss", "1.3", "-i", src.to_str().unwrap(), "-c", "copy", cut.to_str().unwrap()]);
    let index = check_exact(&cut);
    assert!(index.start_time_s.abs() < 0.05, "the edit list makes the first shown frame time 0");
    let first = barcode(&reference_frames(&cut)[0]);
    assert!((30..=34).contains(&first), "the cut starts near source frame 32, got {first}");
}

#[test]
fn truncated_file_serves_what_exists_and_refuses_the_rest() {
    let dir = scratch();
    let full = encode(
        &dir.path().join("full.mkv"),
        80,
        25,
        &["-c:v", "libx264", "-bf", "3", "-g", "12", "-pix_fmt", "yuv420p"],
    );
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.path().join("cut.mkv");
    std::fs::write(&cut, &bytes[..bytes.len() * 55 / 100]).unwrap();
    let index = check_exact_with(&cut, false);
    let n = index.frame_count();
    assert!(n > 20 && n < 80, "{n} frames survive the cut");
    let stats = Arc::new(EngineStats::default());
    let mut d = decoder(&cut, &index, &stats);
    match d.frame(FrameIndex(n as u32), &OutputSpec::default(), &mut |_| {}) {
        Err(EngineError::IndexOutOfRange { count, .. }) => assert_eq!(count, n),
        other => panic!("expected out of range, got {other:?}"),
    }
}

/// A file truncated under a decoder that has its index from before: the decoder says the file
/// changed (ABORTED, ask again) rather than DATA_LOSS, a hang or another frame, and serves
/// nothing more of it, not even the part before the cut (the file may be rewritten from there).
#[test]
fn a_file_truncated_under_an_open_decoder_answers_that_it_changed() {
    let dir = scratch();
    let path = encode(
        &dir.path().join("shrinks.mkv"),
        80,
        25,
        // Lossless, so that the file is far larger than what the demuxer buffers.
        &["-c:v", "libx264", "-qp", "0", "-bf", "3", "-g", "12", "-pix_fmt", "yuv420p"],
    );
    let index = check_exact_with(&path, false);
    let stats = Arc::new(EngineStats::default());
    let mut d = decoder(&path, &index, &stats);
    let frame = |d: &mut FrameDecoder, i: u32| {
        d.frame(FrameIndex(i), &OutputSpec::default(), &mut |_| {}).map(|f| barcode(&f.data))
    };
    assert_eq!(frame(&mut d, 10).unwrap(), 10);
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 100_000, "{len} bytes: more than the demuxer buffers");
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
    for target in [70, 79, 12] {
        match frame(&mut d, target) {
            Err(EngineError::ChangedWhileRead { .. }) => {}
            other => panic!("frame {target}: expected the change, got {other:?}"),
        }
    }
}

#[test]
fn audio_longer_than_video_adds_no_frames() {
    let dir = scratch();
    let p = encode_with_input(
        &dir.path().join("av.mp4"),
        50,
        25,
        &["-f", "lavfi", "-i", "sine=frequency=440:duration=5"],
        &["-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-g", "12", "-pix_fmt", "yuv420p", "-c:a", "aac"],
    );
    let index = check_exact(&p);
    assert_eq!(index.frame_count(), 50);
    assert!((index.duration_s - 2.0).abs() < 0.05, "video lasts 2 s, not the audio's 5 s: {}", index.duration_s);
}
