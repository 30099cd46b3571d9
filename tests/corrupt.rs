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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_files_get_clear_statuses_and_the_daemon_keeps_serving_exactly() {
    let dir = scratch();
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let sources = [
        encode(&media.join("clean.mp4"), 48, 25, &["-c:v", "libx264", "-bf", "2", "-g", "12", "-pix_fmt", "yuv420p"]),
        encode(&media.join("clean.mkv"), 48, 25, &["-c:v", "libx264", "-g", "12", "-pix_fmt", "yuv420p"]),
        encode(&media.join("clean.avi"), 48, 25, &["-c:v", "mpeg4", "-g", "12"]),
        encode(&media.join("clean.webm"), 24, 25, &["-c:v", "libvpx-vp9", "-g", "8", "-deadline", "realtime"]),
        // No timestamps: indexed by a decode pass, the path damaged files took to a panic once.
        encode(&media.join("clean.h264"), 48, 25, &["-c:v", "libx264", "-bf", "2", "-g", "12", "-f", "h264"]),
    ];
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
        let info = call(name, c.get_video_info(pb::GetVideoInfoRequest { video: name.clone() })).await;
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
