//! Damaged files served by a real daemon: mutated copies of generated videos (mp4, mkv, avi,
//! webm, and a raw h264 stream indexed by a decode pass) with bit flips, zeroed runs,
//! truncations, spliced files, shuffled chunks and damaged headers. Every call must answer OK or
//! INVALID_ARGUMENT / DATA_LOSS / OUT_OF_RANGE within its deadline, no panic may be caught, the
//! daemon must keep serving, and a clean video must still be served exactly afterwards.
//! Deterministic (seeded).

mod common;

use std::time::Duration;

use common::daemon::Daemon;
use common::*;
use framesrv::proto::v1 as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

/// What a damaged file may be answered with.
const ALLOWED: [Code; 4] = [Code::Ok, Code::InvalidArgument, Code::DataLoss, Code::OutOfRange];

fn mutate(kind: &str, clean: &[u8], other: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut b = clean.to_vec();
    let n = b.len();
    match kind {
        "flips" => {
            for _ in 0..20 {
                let i = rng.random_range(0..n);
                b[i] ^= 1 << rng.random_range(0..8);
            }
        }
        "zeroed" => {
            let start = rng.random_range(0..n);
            let len = rng.random_range(64..4096).min(n - start);
            b[start..start + len].fill(0);
        }
        "truncated" => b.truncate(rng.random_range(n / 10..n)),
        "spliced" => {
            let cut = rng.random_range(n / 4..n);
            b.truncate(cut);
            b.extend_from_slice(&other[rng.random_range(0..other.len() / 2)..]);
        }
        "shuffled" => {
            let chunk = 1024;
            let mut chunks: Vec<Vec<u8>> = b.chunks(chunk).map(|c| c.to_vec()).collect();
            for _ in 0..6 {
                let (i, j) = (rng.random_range(0..chunks.len()), rng.random_range(0..chunks.len()));
                chunks.swap(i, j);
            }
            b = chunks.concat();
        }
        "header" => {
            for byte in b.iter_mut().take(256) {
                if rng.random_range(0..4) == 0 {
                    *byte = rng.random();
                }
            }
        }
        _ => unreachable!(),
    }
    b
}

async fn call<T>(what: &str, f: impl std::future::Future<Output = Result<T, tonic::Status>>) -> Option<T> {
    match tokio::time::timeout(Duration::from_secs(30), f).await {
        Err(_) => panic!("{what}: no answer within 30 s (a hang)"),
        Ok(Ok(v)) => Some(v),
        Ok(Err(s)) => {
            assert!(ALLOWED.contains(&s.code()), "{what}: {:?} {}", s.code(), s.message());
            assert!(!s.message().is_empty(), "{what}: an empty message");
            None
        }
    }
}

/// The clean videos the damaged ones are made from.
fn sources(media: &std::path::Path) -> Vec<std::path::PathBuf> {
    vec![
        encode(&media.join("clean.mp4"), 48, 25, &["-c:v", "libx264", "-bf", "2", "-g", "12", "-pix_fmt", "yuv420p"]),
        encode(&media.join("clean.mkv"), 48, 25, &["-c:v", "libx264", "-g", "12", "-pix_fmt", "yuv420p"]),
        encode(&media.join("clean.avi"), 48, 25, &["-c:v", "mpeg4", "-g", "12"]),
        encode(&media.join("clean.webm"), 24, 25, &["-c:v", "libvpx-vp9", "-g", "8", "-deadline", "realtime"]),
        // No timestamps: indexed by a decode pass, the path damaged files took to a panic once.
        encode(&media.join("clean.h264"), 48, 25, &["-c:v", "libx264", "-bf", "2", "-g", "12", "-f", "h264"]),
    ]
}

/// More containers and codecs, small, for the fuzz seeds only.
fn more_sources(media: &std::path::Path) -> Vec<std::path::PathBuf> {
    vec![
        encode(&media.join("seed.ts"), 12, 25, &["-c:v", "libx264", "-bf", "2", "-g", "6", "-pix_fmt", "yuv420p"]),
        encode(&media.join("seed.mov"), 12, 25, &["-c:v", "libx265", "-x265-params", "log-level=none", "-g", "6"]),
        encode(&media.join("seed.hevc"), 12, 25, &["-c:v", "libx265", "-x265-params", "log-level=none", "-f", "hevc"]),
        encode(&media.join("seed.flv"), 12, 25, &["-c:v", "flv1", "-g", "6"]),
        encode(&media.join("seed.ivf"), 12, 25, &["-c:v", "libvpx", "-g", "6", "-deadline", "realtime"]),
        encode(&media.join("seed.mpg"), 12, 25, &["-c:v", "mpeg2video", "-bf", "2", "-g", "6"]),
        encode(&media.join("seed.nut"), 12, 25, &["-c:v", "ffv1"]),
    ]
}

/// The fuzz targets' seed corpus (`fuzz/seed.sh`), from the videos above: for `index_build`
/// each file behind the byte that picks its extension there, for `index_entry` the body of
/// each one's state-directory entry.
#[test]
#[ignore = "writes the fuzz seed corpus: fuzz/seed.sh"]
fn write_fuzz_seeds() {
    use framesrv::engine::index_store::{self, ContentKey};
    const EXTENSIONS: &[&str] = &["mp4", "mkv", "avi", "webm", "h264", "ts", "mov", "hevc", "flv", "ivf", "mpg", "nut"];
    let corpus = std::path::PathBuf::from(std::env::var("FRAMESRV_FUZZ_CORPUS").expect("FRAMESRV_FUZZ_CORPUS"));
    let dir = scratch();
    let (build, entry) = (corpus.join("index_build"), corpus.join("index_entry"));
    std::fs::create_dir_all(&build).unwrap();
    std::fs::create_dir_all(&entry).unwrap();
    for source in sources(dir.path()).into_iter().chain(more_sources(dir.path())) {
        let ext = source.extension().unwrap().to_str().unwrap();
        let pick = EXTENSIONS.iter().position(|e| *e == ext).unwrap() as u8;
        let mut seed = vec![pick];
        seed.extend(std::fs::read(&source).unwrap());
        std::fs::write(build.join(format!("clean-{ext}")), seed).unwrap();
        let index = framesrv::engine::video::build_index(&source, "seed").unwrap();
        let key = ContentKey(*b"framesrv-seed-ky");
        std::fs::write(entry.join(format!("clean-{ext}")), &index_store::encode(&index, &key)[16..]).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_files_get_clear_statuses_and_the_daemon_keeps_serving_exactly() {
    let dir = scratch();
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let sources = sources(&media);
    let bytes: Vec<Vec<u8>> = sources.iter().map(|p| std::fs::read(p).unwrap()).collect();
    // Another seed by hand: FRAMESRV_CORRUPT_SEED=n cargo test --test corrupt
    let seed = std::env::var("FRAMESRV_CORRUPT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(2026);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut names = Vec::new();
    for (s, source) in sources.iter().enumerate() {
        let ext = source.extension().unwrap().to_str().unwrap();
        for kind in ["flips", "zeroed", "truncated", "spliced", "shuffled", "header"] {
            for k in 0..2 {
                let name = format!("{kind}-{k}-{s}.{ext}");
                let other = &bytes[(s + 1) % bytes.len()];
                std::fs::write(media.join(&name), mutate(kind, &bytes[s], other, &mut rng)).unwrap();
                names.push(name);
            }
        }
    }
    let d = Daemon::start(dir, |c| c.limits.request_timeout_s = 20.0).await;
    let mut c = d.client().await;
    let (mut served, mut refused) = (0, 0);
    for name in &names {
        let info =
            call(name, c.get_video_info(pb::GetVideoInfoRequest { video: name.clone(), ..Default::default() })).await;
        let Some(info) = info.map(|i| i.into_inner()) else {
            refused += 1;
            continue;
        };
        let n = info.frame_count;
        assert!(n > 0, "{name}: an opened video with no frames");
        for i in [0, n / 2, n - 1, n] {
            let request = pb::FrameRequest {
                video: name.clone(),
                target: Some(pb::frame_request::Target::Index(i)),
                ..Default::default()
            };
            if call(&format!("{name} frame {i}"), c.request_frame(request)).await.is_some() {
                served += 1;
            }
        }
        let selection = pb::frames_request::Selection::Range(pb::IndexRange { start: 0, stop: 0, step: 1 });
        let request = pb::FramesRequest { video: name.clone(), selection: Some(selection), output: None };
        if let Some(stream) = call(&format!("{name} stream"), c.request_frames(request)).await {
            let mut stream = stream.into_inner();
            while call(&format!("{name} stream frame"), stream.message()).await.flatten().is_some() {}
        }
    }
    eprintln!("{} damaged files: {refused} refused at open, {served} single frames served", names.len());
    // Still serving, and exactly.
    let reference = reference_frames(&d.media.join("clean.mp4"));
    for i in [0usize, 47, 20] {
        let request = pb::FrameRequest {
            video: "clean.mp4".into(),
            target: Some(pb::frame_request::Target::Index(i as i64)),
            ..Default::default()
        };
        assert_eq!(c.request_frame(request).await.unwrap().into_inner().data, reference[i], "clean frame {i}");
    }
    assert_eq!(d.store.stats().panics, 0, "a panic was caught while serving damaged files");
}

/// An mkv whose packets all claim one timestamp (so the index falls back to a decode pass) and
/// whose stream lost its IDR slices (so that pass yields no frame): once a panic on an empty
/// timestamp list, answered UNAVAILABLE "shutting down". Must be DATA_LOSS "no decodable
/// frame", every time it is asked, with the daemon serving on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_decode_pass_yields_no_frame_is_data_loss() {
    let dir = scratch();
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let clean = encode(&media.join("clean.mkv"), 24, 25, &["-c:v", "libx264", "-g", "12", "-pix_fmt", "yuv420p"]);
    let damaged = media.join("noframe.mkv");
    ffmpeg(&[
        "-i",
        clean.to_str().unwrap(),
        "-c",
        "copy",
        "-bsf:v",
        "filter_units=remove_types=5,setts=pts=0:dts=0",
        damaged.to_str().unwrap(),
    ]);
    let d = Daemon::start(dir, |_| {}).await;
    let mut c = d.client().await;
    for _ in 0..2 {
        let status = c
            .get_video_info(pb::GetVideoInfoRequest { video: "noframe.mkv".into(), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DataLoss, "{}", status.message());
        assert!(status.message().contains("no decodable frame"), "{}", status.message());
        let request = pb::FrameRequest {
            video: "noframe.mkv".into(),
            target: Some(pb::frame_request::Target::Index(0)),
            ..Default::default()
        };
        assert_eq!(c.request_frame(request).await.unwrap_err().code(), Code::DataLoss);
    }
    let info = c
        .get_video_info(pb::GetVideoInfoRequest { video: "clean.mkv".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.frame_count, 24);
    assert_eq!(d.store.stats().panics, 0);
}

/// A few hundred bytes of IVF that declare a 32960x6400 picture (found by the index_build fuzz
/// target: its decode pass took a GB). Refused at open as INVALID_ARGUMENT, naming the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_declaring_a_huge_picture_is_refused_before_decoding() {
    let dir = scratch();
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let small = encode(&media.join("small.ivf"), 6, 25, &["-c:v", "libvpx", "-deadline", "realtime"]);
    let mut bytes = std::fs::read(&small).unwrap();
    // IVF header: width and height are little-endian u16 at bytes 12 and 14.
    bytes[12..14].copy_from_slice(&32960u16.to_le_bytes());
    bytes[14..16].copy_from_slice(&6400u16.to_le_bytes());
    std::fs::write(media.join("huge.ivf"), &bytes).unwrap();
    std::fs::write(media.join("found.ivf"), FOUND_BY_FUZZING).unwrap();
    let d = Daemon::start(dir, |_| {}).await;
    let mut c = d.client().await;
    // The fuzz target's file: refused before FFmpeg's stream probing decodes a frame of it
    // (which took 760 MB of this process's memory before).
    let before = peak_rss_kib();
    let status = c
        .get_video_info(pb::GetVideoInfoRequest { video: "found.ivf".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("32960x6400"), "{}", status.message());
    let grew = peak_rss_kib() - before;
    assert!(grew < 300 * 1024, "opening it raised the peak RSS by {grew} KiB");
    let status =
        c.get_video_info(pb::GetVideoInfoRequest { video: "huge.ivf".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("32960x6400"), "{}", status.message());
    let info = c
        .get_video_info(pb::GetVideoInfoRequest { video: "small.ivf".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.frame_count, 6);
}

/// The 236 bytes the index_build fuzz target found (its first byte, the extension pick, cut):
/// an IVF whose header declares a VP4 stream of 32960x6400.
const FOUND_BY_FUZZING: &[u8] = &[
    0x44, 0x4b, 0x49, 0x46, 0x00, 0x00, 0x20, 0x00, 0x56, 0x50, 0x34, 0x30, 0xc0, 0x80, 0x00, 0x19, 0x00, 0xed, 0x00,
    0x00, 0x00, 0x00, 0xa9, 0x24, 0x5a, 0x4a, 0x7a, 0x84, 0x8a, 0x1a, 0x77, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x77, 0x00, 0x00, 0x00, 0xfe, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x31, 0x09, 0x00, 0x2e, 0x0a, 0x10, 0xac, 0x00, 0x18, 0x45, 0x41, 0xc0, 0x2c, 0xbf,
    0x8d, 0x19, 0x05, 0xe9, 0x7d, 0xcd, 0xf8, 0x00, 0x51, 0xdb, 0xad, 0x2b, 0xdb, 0xbb, 0x28, 0xba, 0x51, 0x28, 0x7a,
    0x48, 0x7c, 0x45, 0x67, 0x94, 0xa5, 0xa8, 0x16, 0xc7, 0x2b, 0x5e, 0x52, 0xaf, 0x29, 0x6e, 0x58, 0x17, 0xb2, 0xa6,
    0x50, 0x6c, 0xa1, 0xed, 0x65, 0x00, 0xd8, 0xe3, 0x57, 0x94, 0xab, 0xca, 0x55, 0xe5, 0x21, 0x4c, 0x09, 0x97, 0xca,
    0xd2, 0x53, 0x0f, 0x74, 0x94, 0x47, 0x0a, 0x23, 0x87, 0x9b, 0x5f, 0x54, 0x00, 0xb4, 0x1a, 0x50, 0x48, 0xdd, 0xc9,
    0x23, 0x77, 0x24, 0x8d, 0xdc, 0x1e, 0x3d, 0x8e, 0x9d, 0x54, 0x66, 0x32, 0x8d, 0xd8, 0x13, 0x00, 0xc6, 0xea, 0x23,
    0x2a, 0xf2, 0x95, 0x79, 0x4b, 0x9b, 0xce, 0x87, 0x7f, 0xfa, 0xb1, 0x07, 0x27, 0xac, 0x37, 0x5c, 0xff, 0x75, 0x4f,
    0x99, 0x51, 0x1d, 0xed, 0x8a, 0x98, 0x00,
];

fn peak_rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
