//! `bench compare --only jobs`: the work users script around frames, against what they would
//! run instead, in the same run: the hash pass against the ffmpeg CLI's decode (one thread,
//! and every core), a repeated hash request, a storyboard from keyframes against one from exact
//! frames, and a clip export against `ffmpeg -ss … -frames:v N -c:v libx264`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::compare::{cold_indices, ffmpeg_rate, on_fresh_daemon, timed, timed_requests, Clip, CompareArgs, Report};
use super::load::{ms, percentile};
use framesrv::proto::v1 as pb;

type Client = framesrv::proto::v1::frame_server_client::FrameServerClient<tonic::transport::Channel>;

/// The ffmpeg CLI decoding every frame and throwing it away (`-f null`), frames per second.
fn null_decode_rate(clip: &Clip, threads: usize) -> Result<f64, String> {
    ffmpeg_rate(clip, threads, &["-f", "null", "-"])
}

async fn hash_all(c: &mut Client, video: &str, md5: bool) -> Result<(usize, Duration), String> {
    let t = Instant::now();
    let req = pb::FrameHashesRequest { video: video.into(), selection: None, md5 };
    let mut s = c.get_frame_hashes(req).await.map_err(|s| s.message().to_string())?.into_inner();
    let mut n = 0;
    while s.message().await.map_err(|s| s.message().to_string())?.is_some() {
        n += 1;
    }
    Ok((n, t.elapsed()))
}

/// Open (index) a video, so that the figures after it time the job alone.
async fn open(c: &mut Client, video: &str) -> Result<(), String> {
    c.get_video_info(pb::GetVideoInfoRequest { video: video.into(), ..Default::default() })
        .await
        .map_err(|s| s.message().to_string())?;
    Ok(())
}

async fn storyboard(c: &mut Client, video: &str, exact: bool) -> Result<Duration, String> {
    let t = Instant::now();
    let req = pb::StoryboardRequest { video: video.into(), tiles: 50, exact, ..Default::default() };
    c.get_storyboard(req).await.map_err(|s| s.message().to_string())?;
    Ok(t.elapsed())
}

/// The 50-tile storyboard of `video` from keyframes against the one from exact frames, as the
/// figure `what`; the video is opened first so neither side times its index build.
async fn storyboard_figure(c: &mut Client, report: &mut Report, video: &str, what: &str) -> Result<(), String> {
    open(c, video).await?;
    let keyframes = storyboard(c, video, false).await?;
    let exact = storyboard(c, video, true).await?;
    let ratio = exact.as_secs_f64() / keyframes.as_secs_f64();
    report.add(
        &format!("storyboard, 50 tiles, {what}: keyframes (vs exact frames)"),
        ms(keyframes),
        ms(exact),
        Some(ratio),
        "exact/keyframes >= 10",
        Some(ratio >= 10.0),
    );
    Ok(())
}

/// The hash pass, repeated requests and clip export of `clip` (named `name` in `media`), and
/// storyboards of the long-GOP clip `long_gop` (named so in `media`).
pub(super) fn figures(
    runtime: &tokio::runtime::Runtime,
    args: &CompareArgs,
    report: &mut Report,
    media: &Path,
    (clip, name): (&Clip, &str),
    long_gop: &str,
    fps: f64,
) -> Result<(), String> {
    let one = null_decode_rate(clip, 1)?;
    let all = null_decode_rate(clip, 0)?;
    println!("  ffmpeg -f null decode: {one:.1} frames/s one thread, {all:.1} all cores");
    let state = media.join("..").join("state");
    let _ = std::fs::remove_dir_all(&state);
    // The pass is timed on two copies of the clip (each hashed afresh: a copy is another file)
    // and the faster counts, as the faster of two runs does for the ffmpeg references.
    let copies: Vec<String> = (1..=2).map(|k| format!("pass-{k}-{name}")).collect();
    for copy in &copies {
        std::fs::copy(media.join(name), media.join(copy)).map_err(|e| format!("copying the clip: {e}"))?;
    }
    let timed_passes = on_fresh_daemon(runtime, media, "512MiB", args, async |_, mut c| {
        let mut best = 0f64;
        for copy in &copies {
            open(&mut c, copy).await?;
            let (n, took) = hash_all(&mut c, copy, false).await?;
            let rate = n as f64 / took.as_secs_f64();
            println!("  hash pass of {copy}: {rate:.1} frames/s");
            best = best.max(rate);
        }
        let (_, again) = hash_all(&mut c, copies.last().map_or(name, |c| c.as_str()), false).await?;
        Ok((best, again))
    });
    for copy in &copies {
        let _ = std::fs::remove_file(media.join(copy));
    }
    let (rate, again) = timed_passes?;
    on_fresh_daemon(runtime, media, "512MiB", args, async |_, mut c| {
        open(&mut c, name).await?;
        report.add(
            "hash pass (aHash+dHash) vs ffmpeg -threads 1 -f null",
            format!("{rate:.1} fps"),
            format!("{one:.1} fps"),
            Some(rate / one),
            ">= 1.6",
            Some(rate / one >= 1.6),
        );
        report.add(
            "the same vs ffmpeg -threads 0 -f null",
            format!("{rate:.1} fps"),
            format!("{all:.1} fps"),
            Some(rate / all),
            "",
            None,
        );
        // A labelling client clicking random frames (640x360, keep_behind 0) of one video, idle
        // and then while a hash pass (with MD5s, the longest kind) runs over another.
        let small = Some(pb::OutputSpec { max_width: 640, max_height: 360, ..Default::default() });
        let clicks = cold_indices(clip.frames, 12, 0, 7);
        open(&mut c, long_gop).await?;
        let (mut idle, _) = timed_requests(&mut c, name, &clicks[..6], small, Some(0)).await?;
        let mut hasher = c.clone();
        let video = long_gop.to_string();
        let pass = tokio::spawn(async move { hash_all(&mut hasher, &video, true).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (mut busy, _) = timed_requests(&mut c, name, &clicks[6..], small, Some(0)).await?;
        let pass_running = !pass.is_finished();
        pass.await.map_err(|e| e.to_string())??;
        idle.sort();
        busy.sort();
        let (p50_idle, p50_busy) = (percentile(&idle, 0.5), percentile(&busy, 0.5));
        report.add(
            &format!(
                "a click (random 640x360 frame) while another video's hash pass runs{}: median",
                if pass_running { "" } else { " (the pass ended before the clicks did)" }
            ),
            ms(p50_busy),
            format!("idle {}", ms(p50_idle)),
            Some(p50_busy.as_secs_f64() / p50_idle.as_secs_f64()),
            "",
            None,
        );
        report.add(
            "hashes asked again (memory)",
            ms(again),
            String::new(),
            None,
            "<= 50 ms",
            Some(again.as_millis() <= 50),
        );
        let (n, took) = hash_all(&mut c, name, true).await?;
        let rate = n as f64 / took.as_secs_f64();
        report.add(
            "hash pass with MD5 of every rgb24 frame, vs ffmpeg -threads 1 -f null",
            format!("{rate:.1} fps"),
            format!("{one:.1} fps"),
            Some(rate / one),
            "",
            None,
        );
        Ok(())
    })?;
    on_fresh_daemon(runtime, media, "512MiB", args, async |_, mut c| {
        let (_, took) = hash_all(&mut c, name, true).await?;
        report.add(
            "hashes after a restart (stored table read)",
            ms(took),
            String::new(),
            None,
            "<= 50 ms",
            Some(took.as_millis() <= 50),
        );
        storyboard_figure(&mut c, report, long_gop, "GOP 250 clip").await?;
        // Export: 300 frames from the middle, H.264 veryfast crf 23, fragmented MP4, both sides.
        let frames = 300.min(clip.frames / 2);
        let start = clip.frames / 3;
        let out = media.join("..").join("bench-clip.mp4");
        let t = Instant::now();
        let req = pb::ClipRequest {
            video: name.into(),
            selection: Some(pb::clip_request::Selection::Range(pb::IndexRange {
                start: start as i64,
                stop: (start + frames) as i64,
                step: 1,
            })),
            ..Default::default()
        };
        let mut s = c.export_clip(req).await.map_err(|s| s.message().to_string())?.into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = s.message().await.map_err(|s| s.message().to_string())? {
            bytes.extend_from_slice(&chunk.data);
        }
        let ours = t.elapsed();
        std::fs::write(&out, &bytes).map_err(|e| e.to_string())?;
        let theirs = timed(
            Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-ss", &format!("{:.6}", start as f64 / fps), "-i"])
                .arg(&clip.path)
                .args(["-frames:v", &frames.to_string(), "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23"])
                .args(["-movflags", "frag_keyframe+empty_moov+default_base_moof", "-f", "mp4"])
                .arg(media.join("..").join("bench-clip-ffmpeg.mp4")),
        )?;
        let (a, b) = (frames as f64 / ours.as_secs_f64(), frames as f64 / theirs.as_secs_f64());
        report.add(
            &format!("clip export, {frames} frames to MP4 (veryfast, crf 23)"),
            format!("{a:.1} fps"),
            format!("ffmpeg -ss -frames:v -c:v libx264 {b:.1} fps"),
            Some(a / b),
            "",
            None,
        );
        Ok(())
    })
}

/// The one-hour 1080p file (named `name` in `media`): the hash pass and the storyboards.
pub(super) fn hour_figures(
    runtime: &tokio::runtime::Runtime,
    args: &CompareArgs,
    report: &mut Report,
    media: &Path,
    hour: &Clip,
    name: &str,
) -> Result<(), String> {
    on_fresh_daemon(runtime, media, "256MiB", args, async |_, mut c| {
        storyboard_figure(&mut c, report, name, "one hour of 1080p").await?;
        if args.only.iter().any(|o| o == "hour-hashes") {
            let (n, took) = hash_all(&mut c, name, false).await?;
            report.add(
                "hash pass, one hour of 1080p (aHash+dHash)",
                format!("{:.0} s, {:.1} fps", took.as_secs_f64(), n as f64 / took.as_secs_f64()),
                format!("{} frames", hour.frames),
                None,
                "",
                None,
            );
        }
        Ok(())
    })
}
