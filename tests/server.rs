//! The daemon over real gRPC on loopback: exact bytes by index and time, streams, output
//! formats, the cache, every bad input with its status code, health, reflection and the CLI.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::daemon::Daemon;
use common::*;
use framesrv::config::Config;
use framesrv::engine::schedule::Class;
use framesrv::proto::v1 as pb;
use framesrv::proto::v1::frame_server_client::FrameServerClient;
use tonic::transport::Channel;
use tonic::Code;

/// The media root every test here serves: a barcode h264 video, a few files that are not
/// videos, and traps that point outside the root.
fn media(dir: &Path) -> (PathBuf, PathBuf) {
    let media = dir.join("media");
    let outside = dir.join("outside");
    std::fs::create_dir_all(media.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    encode(&media.join("a.mp4"), 60, 25, &["-c:v", "libx264", "-bf", "3", "-g", "12", "-pix_fmt", "yuv420p"]);
    std::fs::copy(media.join("a.mp4"), media.join("sub/copy.mp4")).unwrap();
    std::fs::copy(media.join("a.mp4"), outside.join("secret.mp4")).unwrap();
    std::fs::write(media.join("notes.mp4"), b"this is a text file, not a video\n").unwrap();
    std::fs::write(media.join("garbage.mkv"), (0..20000u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>())
        .unwrap();
    ffmpeg(&["-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", media.join("audio.mp4").to_str().unwrap()]);
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1", media.join("still.png").to_str().unwrap()]);
    std::os::unix::fs::symlink(outside.join("secret.mp4"), media.join("escape.mp4")).unwrap();
    // Playlists that would make FFmpeg open a file outside the root.
    std::fs::write(
        media.join("list.mp4"),
        format!("ffconcat version 1.0\nfile '{}'\n", outside.join("secret.mp4").display()),
    )
    .unwrap();
    std::fs::write(
        media.join("play.m3u8"),
        format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{}\n#EXT-X-ENDLIST\n",
            outside.join("secret.mp4").display()
        ),
    )
    .unwrap();
    (media, outside)
}

async fn start_with(configure: impl FnOnce(&mut Config)) -> Daemon {
    let dir = scratch();
    media(dir.path());
    Daemon::start(dir, configure).await
}

async fn start() -> Daemon {
    start_with(|_| {}).await
}

/// A daemon with one decoder in all, so that every request meets the others on it.
async fn start_with_one_decoder() -> Daemon {
    start_with(|c| {
        c.decoder.max_total = 1;
        c.decoder.max_per_video = 1;
    })
    .await
}

fn by_index(video: &str, i: i64) -> pb::FrameRequest {
    pb::FrameRequest {
        video: video.into(),
        target: Some(pb::frame_request::Target::Index(i)),
        output: None,
        clamp: false,
        keep_behind: None,
    }
}

fn batch(video: &str, selection: pb::frames_request::Selection) -> pb::FramesRequest {
    pb::FramesRequest { video: video.into(), selection: Some(selection), output: None }
}

/// Every frame of a `RequestFrames` stream, which must not fail.
async fn streamed(mut c: FrameServerClient<Channel>, request: pb::FramesRequest) -> Vec<pb::Frame> {
    let mut stream = c.request_frames(request).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(frame) = stream.message().await.unwrap() {
        got.push(frame);
    }
    got
}

fn range(start: i64, stop: i64, step: i64) -> pb::frames_request::Selection {
    pb::frames_request::Selection::Range(pb::IndexRange { start, stop, step })
}

fn by_time(video: &str, t: f64) -> pb::FrameRequest {
    pb::FrameRequest {
        video: video.into(),
        target: Some(pb::frame_request::Target::TimeS(t)),
        output: None,
        clamp: false,
        keep_behind: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_by_index_and_time_are_the_exact_bytes_of_a_sequential_decode() {
    let d = start().await;
    let reference = reference_frames(&d.media.join("a.mp4"));
    let mut c = d.client().await;
    let info = c
        .get_video_info(pb::GetVideoInfoRequest { video: "a.mp4".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.frame_count, 60);
    assert_eq!((info.width, info.height), (W, H));
    assert_eq!(info.keyframe_count, 5);
    assert!((info.duration_s - 2.4).abs() < 1e-6 && (info.avg_fps - 25.0).abs() < 1e-6);
    assert_eq!(info.codec, "h264");
    for i in [0i64, 59, 30, 31, 29, 5, 44, 12, 11] {
        let f = c.request_frame(by_index("a.mp4", i)).await.unwrap().into_inner();
        assert_eq!(f.index, i);
        assert_eq!(f.data[..], reference[i as usize][..], "frame {i}");
        assert_eq!((f.width, f.height), (W, H));
    }
    let last = c.request_frame(by_index("a.mp4", -1)).await.unwrap().into_inner();
    assert_eq!(last.index, 59);
    assert_eq!(last.data[..], reference[59][..]);
    for i in [0usize, 7, 33, 59] {
        let t = i as f64 / 25.0;
        let f = c.request_frame(by_time("a.mp4", t + 0.02)).await.unwrap().into_inner();
        assert_eq!(f.index as usize, i, "time {t}");
        assert!((f.time_s - t).abs() < 1e-9);
        assert_eq!(f.data[..], reference[i][..]);
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_and_backward_steps_are_cache_hits() {
    let d = start().await;
    let mut c = d.client().await;
    let first = c.request_frame(by_index("a.mp4", 40)).await.unwrap().into_inner();
    assert!(!first.cache_hit);
    let again = c.request_frame(by_index("a.mp4", 40)).await.unwrap().into_inner();
    assert!(again.cache_hit);
    assert_eq!(first.data, again.data);
    d.settle().await;
    let decoded = d.store.stats().frames_decoded;
    for i in (36..40).rev() {
        let f = c.request_frame(by_index("a.mp4", i)).await.unwrap().into_inner();
        assert!(f.cache_hit, "frame {i} was filled in behind 40 and kept");
    }
    assert_eq!(d.store.stats().frames_decoded, decoded, "no decoding for backward steps");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepping_back_right_after_a_cold_answer_waits_on_the_fill_not_a_second_decode() {
    let d = start().await;
    let reference = reference_frames(&d.media.join("a.mp4"));
    let mut c = d.client().await;
    // 47's GOP starts at 36: the answer comes first, then one fill decodes 36..46 behind it.
    c.request_frame(by_index("a.mp4", 47)).await.unwrap();
    for i in (36..47).rev() {
        let f = c.request_frame(by_index("a.mp4", i)).await.unwrap().into_inner();
        assert_eq!(f.data[..], reference[i as usize][..], "frame {i}");
    }
    let s = d.store.stats();
    assert_eq!(s.seeks, 2, "one seek for the answer, one for the fill; the steps back started none");
    assert!(s.frames_decoded <= 2 * 12 + 4, "{} frames decoded for two passes over one GOP", s.frames_decoded);
    d.stop().await;
}

/// The fill is a guess: while every core decodes frames clients wait for, a cold answer leaves
/// none behind (it would take CPU from them and push their frames out of the cache); on an
/// idle daemon it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_answer_is_filled_behind_only_while_a_core_is_free() {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let d = start_with(|c| c.decoder.max_total = cores + 1).await;
    let long = long_video(&d.media);
    let mut streams = Vec::new();
    for k in 0..cores {
        let name = format!("long-{k}.mp4");
        std::fs::copy(&long, d.media.join(&name)).unwrap();
        let mut c = d.client().await;
        // Each stream's first frame ends a 900-frame GOP: a job of seconds on a decoder of its own.
        streams.push(tokio::spawn(async move {
            let mut s = c.request_frames(batch(&name, range(890, 892, 1))).await.unwrap().into_inner();
            while s.message().await.unwrap().is_some() {}
        }));
    }
    while (d.store.stats().decoders_busy as usize) < cores {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let mut c = d.client().await;
    // Default fields: on an idle daemon a fill would decode 36..46 behind 47.
    c.request_frame(by_index("a.mp4", 47)).await.unwrap();
    // The test's premise: the streams still decode (the answering decoder may not have counted
    // itself out yet, so at least `cores` are busy).
    assert!(streams.iter().all(|s| !s.is_finished()), "a stream finished before the answer");
    assert!(d.store.stats().decoders_busy as usize >= cores, "the streams still decode");
    for s in streams {
        s.await.unwrap();
    }
    d.settle().await;
    let probe = |i| pb::FrameRequest { keep_behind: Some(0), ..by_index("a.mp4", i) };
    let behind = c.request_frame(probe(46)).await.unwrap().into_inner();
    assert!(!behind.cache_hit, "no fill ran behind an answer given while every core was busy");

    // Idle now: the same kind of answer is filled behind.
    c.request_frame(by_index("a.mp4", 59)).await.unwrap();
    d.settle().await;
    for i in 48..59 {
        assert!(c.request_frame(probe(i)).await.unwrap().into_inner().cache_hit, "frame {i} filled behind 59");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_stops_when_a_click_elsewhere_runs_on_every_core() {
    // Every decoder runs on as many codec threads as there are cores, as one does on an idle
    // daemon: a second decoder at work leaves no core free, though it is only one decoder.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let d = start_with(|c| c.decoder.threads = cores).await;
    let long = long_video(&d.media);
    std::fs::copy(&long, d.media.join("long-2.mp4")).unwrap();
    let mut c = d.client().await;
    // The window behind 200 is frames 0..199 of the GOP: a fill of a few hundred milliseconds.
    let click = pb::FrameRequest { keep_behind: Some(200), ..by_index("long.mp4", 200) };
    c.request_frame(click).await.unwrap();
    // At once, a click on another video at the end of its 900-frame GOP: a second of decoding.
    let far = pb::FrameRequest { keep_behind: Some(0), ..by_index("long-2.mp4", 890) };
    c.request_frame(far).await.unwrap();
    d.settle().await;
    let probe = pb::FrameRequest { keep_behind: Some(0), ..by_index("long.mp4", 199) };
    let last = c.request_frame(probe).await.unwrap().into_inner();
    assert!(!last.cache_hit, "the fill went on (its last frame was cached) while the other click had every core");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_request_does_not_wait_behind_a_stream_on_its_decoder() {
    let d = start_with_one_decoder().await;
    let long = long_video(&d.media);
    let mut streamer = d.client().await;
    // The stream's first frame is the end of a 900-frame GOP: its first job holds the only
    // decoder for a long decode.
    let stream = tokio::spawn(async move {
        let mut s = streamer.request_frames(batch("long.mp4", range(890, 895, 1))).await.unwrap().into_inner();
        let mut out = Vec::new();
        while let Some(f) = s.message().await.unwrap() {
            out.push((f.index as usize, f.data, std::time::Instant::now()));
        }
        out
    });
    while d.store.stats().frames_decoded == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let mut c = d.client().await;
    let f = c
        .request_frame(pb::FrameRequest { keep_behind: Some(0), ..by_index("long.mp4", 5) })
        .await
        .unwrap()
        .into_inner();
    let answered = std::time::Instant::now();
    assert!(!stream.is_finished(), "the stream finished first: the interactive request waited behind it");
    assert_eq!(f.data, reference_frame(&long, 5));
    let frames = stream.await.unwrap();
    assert_eq!(frames.len(), 5);
    assert!(frames[0].2 > answered, "the stream's first frame came after the interactive answer");
    for (i, data, _) in &frames {
        assert_eq!(data[..], reference_frame(&long, *i)[..], "stream frame {i} after yielding");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_decoder_bound_an_interactive_request_takes_a_decoder_from_a_stream() {
    let d = start_with(|c| {
        c.decoder.max_total = 1;
        c.decoder.interactive_reserve = 0;
    })
    .await;
    let long = long_video(&d.media);
    let reference = reference_frames(&d.media.join("a.mp4"));
    let mut streamer = d.client().await;
    let stream = tokio::spawn(async move {
        // The first frame is far into a 900-frame GOP: the decoder is in the middle of a long
        // job when the interactive request comes.
        let mut s = streamer.request_frames(batch("long.mp4", range(880, 900, 1))).await.unwrap().into_inner();
        let mut out = Vec::new();
        while let Some(f) = s.message().await.unwrap() {
            out.push((f.index as usize, f.data));
        }
        out
    });
    while d.store.stats().frames_decoded < 10 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // Another video, and the only decoder streams: it is taken at its next frame boundary.
    let mut c = d.client().await;
    let f = c.request_frame(by_index("a.mp4", 30)).await.unwrap().into_inner();
    assert_eq!(f.data[..], reference[30][..]);
    assert!(!stream.is_finished(), "the stream finished first: the test proves nothing");
    assert!(d.store.stats().preempted > 0, "the stream's queued frames were handed back, not decoded first");
    // The stream gets its decoder back and every frame, exactly, in order.
    let frames = stream.await.unwrap();
    assert_eq!(frames.iter().map(|f| f.0).collect::<Vec<_>>(), (880..900).collect::<Vec<_>>());
    for (k, i) in [(0, 880), (10, 890), (19, 899)] {
        assert_eq!(frames[k].1, reference_frame(&long, i), "stream frame {i}");
    }
    d.stop().await;
}

/// A steady interactive load on a 900-frame video (long.mp4, or gops.mp4): two clients, each
/// always waiting for a frame far into the video (far into long.mp4's single GOP), so that an
/// interactive job is always queued on its decoders.
struct SteadyLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl SteadyLoad {
    async fn start(d: &Daemon) -> SteadyLoad {
        SteadyLoad::on(d, "long.mp4", std::time::Duration::ZERO).await
    }

    /// Clicks on `video`, each client pausing `pause` between its clicks.
    async fn on(d: &Daemon, video: &'static str, pause: std::time::Duration) -> SteadyLoad {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for k in 0..2u64 {
            let (mut c, stop) = (d.client().await, stop.clone());
            clients.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let i = 300 + ((n * 7 + k * 13) * 37) % 600;
                    let mut request =
                        tonic::Request::new(pb::FrameRequest { keep_behind: Some(0), ..by_index(video, i as i64) });
                    request.set_timeout(std::time::Duration::from_secs(10));
                    c.request_frame(request).await.expect("a click of the steady load");
                    tokio::time::sleep(pause).await;
                    n += 1;
                }
            }));
        }
        let decoded = d.store.stats().frames_decoded;
        while d.store.stats().frames_decoded < decoded + 10 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        SteadyLoad { stop, clients }
    }

    fn running(&self) -> bool {
        !self.clients.iter().any(|t| t.is_finished())
    }

    /// `work` (for at most `limit`) under the load, then the load stopped: what `work` gave
    /// (`None`: it timed out) and whether the load was still running when it ended.
    async fn around<T>(
        self,
        limit: std::time::Duration,
        work: impl std::future::Future<Output = T>,
    ) -> (Option<T>, bool) {
        let done = tokio::time::timeout(limit, work).await.ok();
        let still_loaded = self.running();
        self.stop().await;
        (done, still_loaded)
    }

    async fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.clients {
            t.await.unwrap();
        }
    }
}

/// A click for a frame a stream has already asked for joins the stream's decode, and that
/// decode must then run at the click's class. Found by the soak: a slow reader's first frames,
/// queued at the stream class behind a steady interactive load, starved for 30 minutes, and
/// every click and storyboard that needed one of them waited with it until its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_joining_a_starved_stream_frame_raises_it_to_interactive() {
    let d = start_with(|c| {
        c.decoder.max_total = 1;
        c.decoder.max_per_video = 1;
        c.decoder.interactive_reserve = 0;
        // Streams never get a turn by waiting here: only the click can help the stream's frame.
        c.decoder.stream_max_wait_s = 3600.0;
    })
    .await;
    let long = long_video(&d.media);
    let load = SteadyLoad::start(&d).await;
    // A stream asks for frame 100: queued at the stream class, behind the load.
    let mut streamer = d.client().await;
    let stream = tokio::spawn(async move {
        let mut s = streamer.request_frames(batch("long.mp4", range(100, 101, 1))).await.unwrap().into_inner();
        s.message().await.unwrap().unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // A click for the same frame, with a deadline well past a few load requests.
    let mut c = d.client().await;
    let mut request = tonic::Request::new(by_index("long.mp4", 100));
    request.set_timeout(std::time::Duration::from_secs(8));
    let answered = c.request_frame(request).await;
    let still_loaded = load.running();
    load.stop().await;
    let frame = answered.expect("the click waited for a starved stream frame").into_inner();
    assert!(still_loaded, "the load stopped first: the test proves nothing");
    assert_eq!(frame.data, reference_frame(&long, 100));
    assert_eq!(stream.await.unwrap().data, frame.data);
    d.stop().await;
}

/// A stream under a steady interactive load on its only decoder still gets its frames: a
/// stream frame that waited two seconds is taken as interactive for one turn. Found by the
/// soak: storyboards (which are streams) of the busiest video waited past their deadline for
/// 30 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_under_a_steady_interactive_load_still_gets_its_frames() {
    let d = start_with(|c| {
        c.decoder.max_total = 1;
        c.decoder.max_per_video = 1;
        c.decoder.interactive_reserve = 0;
    })
    .await;
    let long = long_video(&d.media);
    let load = SteadyLoad::start(&d).await;
    let mut streamer = d.client().await;
    let mut s = streamer.request_frames(batch("long.mp4", range(100, 103, 1))).await.unwrap().into_inner();
    let (frames, still_loaded) = load
        .around(std::time::Duration::from_secs(20), async {
            let mut out = Vec::new();
            while let Some(f) = s.message().await.unwrap() {
                out.push(f);
            }
            out
        })
        .await;
    let frames = frames.expect("the stream starved behind the interactive load");
    assert!(still_loaded, "the load stopped first: the test proves nothing");
    assert_eq!(frames.iter().map(|f| f.index).collect::<Vec<_>>(), vec![100, 101, 102]);
    assert_eq!(frames[0].data, reference_frame(&long, 100));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_as_many_videos_as_decoders_keep_their_decoders() {
    let d = start_with(|c| {
        c.decoder.max_total = 2;
        c.decoder.interactive_reserve = 0;
    })
    .await;
    let long = long_video(&d.media);
    std::fs::copy(&long, d.media.join("long2.mp4")).unwrap();
    let mut c = d.client().await;
    // A decoder of a third video, idle: the second stream closes it to get a slot, and nothing
    // else may be closed on the way (a stream's decoder between two frames looks idle too).
    c.request_frame(pb::FrameRequest { keep_behind: Some(0), ..by_index("a.mp4", 3) }).await.unwrap();
    d.settle().await;
    let before = d.store.stats();
    let mut streams = Vec::new();
    for v in ["long.mp4", "long2.mp4"] {
        let mut c = c.clone();
        streams.push(tokio::spawn(async move {
            let mut s = c.request_frames(batch(v, range(0, 300, 1))).await.unwrap().into_inner();
            let mut n = 0;
            while s.message().await.unwrap().is_some() {
                n += 1;
                // A client that does something with each frame.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            n
        }));
    }
    for s in streams {
        assert_eq!(s.await.unwrap(), 300);
    }
    let s = d.store.stats();
    assert_eq!(s.seeks - before.seeks, 2, "one seek per stream: no decoder was closed under a stream");
    assert_eq!(s.frames_decoded - before.frames_decoded, 600, "no frame decoded twice");
    d.stop().await;
}

/// Frames of a stream that wait for a decoder slot retry in whatever order the runtime polls
/// them, so the decoder opened for them may start on a later one (under load, before the
/// earlier ones are queued on it). The earlier frames are in flight already: the decoder keeps
/// them on its way instead of seeking back for each afterwards. The hook holds back the first
/// seven frames of each stream (whichever stream has to wait), so that frame 7 comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoder_opened_for_a_later_frame_of_a_waiting_stream_answers_the_earlier_ones_on_its_way() {
    let d = start_with(|c| {
        c.decoder.max_total = 2;
        c.decoder.interactive_reserve = 0;
    })
    .await;
    let long = long_video(&d.media);
    let videos = ["late1.mp4", "late2.mp4"];
    for v in videos {
        std::fs::copy(&long, d.media.join(v)).unwrap();
        framesrv::engine::faults::delay_waiting_below(v, 7, std::time::Duration::from_millis(40));
    }
    // The first 30 frames of the sequential decode (960x540 rgb24).
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-i",
            long.to_str().unwrap(),
            "-frames:v",
            "30",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .output()
        .unwrap();
    let reference: Vec<Vec<u8>> = out.stdout.chunks(960 * 540 * 3).map(|c| c.to_vec()).collect();
    assert_eq!(reference.len(), 30);
    let mut c = d.client().await;
    c.request_frame(pb::FrameRequest { keep_behind: Some(0), ..by_index("a.mp4", 3) }).await.unwrap();
    d.settle().await;
    let before = d.store.stats();
    let mut streams = Vec::new();
    for v in videos {
        let mut c = c.clone();
        let reference = reference.clone();
        streams.push(tokio::spawn(async move {
            let mut s = c.request_frames(batch(v, range(0, 30, 1))).await.unwrap().into_inner();
            let mut n = 0;
            while let Some(f) = s.message().await.unwrap() {
                assert_eq!(f.index, n as i64, "{v}: in order");
                assert!(f.data == reference[n], "{v}: frame {n} exact");
                n += 1;
            }
            n
        }));
    }
    for s in streams {
        assert_eq!(s.await.unwrap(), 30);
    }
    let s = d.store.stats();
    assert_eq!(s.seeks - before.seeks, 2, "one seek per stream, none back for the frames that waited");
    assert_eq!(s.frames_decoded - before.frames_decoded, 60, "no frame decoded twice");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_stream_readers_hold_at_most_the_inflight_budget_and_clicks_still_pass() {
    let frame = 192 * 128 * 3;
    let d = start_with(|c| c.limits.inflight_bytes = framesrv::units::ByteSize(frame * 6)).await;
    let reference = reference_frames(&d.media.join("a.mp4"));
    let mut c = d.client().await;
    // Four streams whose clients read nothing for a while.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(c.request_frames(batch("a.mp4", range(0, 60, 1))).await.unwrap().into_inner());
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let in_flight = d.store.stats().inflight_bytes;
    assert!(in_flight <= frame * 6, "{in_flight} bytes held for unread streams, budget {}", frame * 6);
    assert!(in_flight > 0, "the streams did start");
    // Another client's click (its own connection: unread streams fill their connection's
    // HTTP/2 window) is served at once, whatever the streams hold.
    let mut other = d.client().await;
    let f = tokio::time::timeout(std::time::Duration::from_secs(5), other.request_frame(by_index("a.mp4", 33)))
        .await
        .expect("a unary request never waits for the budget")
        .unwrap()
        .into_inner();
    assert_eq!(f.data[..], reference[33][..]);
    // Read now (concurrently, as their clients would), every stream delivers every frame, exactly.
    let readers: Vec<_> = held
        .into_iter()
        .map(|mut s| {
            let reference = reference.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while let Some(f) = s.message().await.unwrap() {
                    assert_eq!(f.data[..], reference[i][..], "frame {i}");
                    i += 1;
                }
                i
            })
        })
        .collect();
    for r in readers {
        assert_eq!(tokio::time::timeout(std::time::Duration::from_secs(30), r).await.unwrap().unwrap(), 60);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while d.store.stats().inflight_bytes > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(d.store.stats().inflight_bytes, 0, "every payment is returned");
    d.stop().await;
}

/// The gRPC encoder copies a frame and drops it; HTTP/2 holds the copy until hyper asks the
/// stream for its next frame. The copy is paid for from the in-flight budget until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_frame_stays_paid_for_until_the_next_is_asked_for() {
    use framesrv::engine::output::OutputSpec;
    use framesrv::units::FrameIndex;
    use futures::StreamExt;
    let frame = 192 * 128 * 3;
    let d = start_with(|c| c.limits.inflight_bytes = framesrv::units::ByteSize(frame)).await;
    let reference = reference_frames(&d.media.join("a.mp4"));
    let video = d.store.open("a.mp4", Class::Interactive).await.unwrap();
    let indices: Vec<FrameIndex> = (0..12).map(FrameIndex).collect();
    let mut frames = Box::pin(d.store.frames_to_send(video, indices, OutputSpec::default()));
    let mut i = 0;
    while let Some(f) = frames.next().await {
        assert_eq!(f.unwrap().data[..], reference[i][..], "frame {i}");
        // The frame's own bytes are dropped (what the encoder does after copying them); its
        // copy is still paid for, until the next `next()` (the look-ahead is not polled meanwhile).
        assert_eq!(d.store.stats().inflight_bytes, frame, "the transport's copy of frame {i} is paid for");
        i += 1;
    }
    assert_eq!(i, 12);
    drop(frames);
    assert_eq!(d.store.stats().inflight_bytes, 0, "every payment is returned");
    d.stop().await;
}

/// A request that found a video just before its file was replaced (the same frames at the same
/// times, other pixels) never gets the new file's pixels under the old file's index: a decoder
/// opened after the change finds the file is not what was indexed, and the request is told the
/// file changed (ABORTED). Without the check it served the new file's frame 5 as the old one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoder_opened_after_its_file_was_replaced_reads_nothing_of_the_new_file() {
    use framesrv::engine::output::OutputSpec;
    use framesrv::units::FrameIndex;
    use futures::StreamExt;
    let d = start().await;
    let (a, negated) = (d.media.join("a.mp4"), d.media.join("negated.mp4"));
    ffmpeg(&["-i", a.to_str().unwrap(), "-vf", "negate", "-c:v", "libx264", "-bf", "0", negated.to_str().unwrap()]);
    let video = d.store.open("a.mp4", Class::Interactive).await.unwrap();
    std::fs::rename(&negated, &a).unwrap();
    let mut frames = Box::pin(d.store.frames(video, vec![FrameIndex(5)], OutputSpec::default()));
    let err = frames.next().await.unwrap().unwrap_err();
    assert!(matches!(err, framesrv::engine::EngineError::ChangedWhileRead { .. }), "{err}");
    assert_eq!(framesrv::error::Error::from(err).code(), Code::Aborted);
    // The next request opens the file as it is now.
    let mut c = d.client().await;
    let frame = c.request_frame(by_index("a.mp4", 5)).await.unwrap().into_inner();
    assert_eq!(frame.data, reference_frames(&a)[5]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_place_under_an_open_decoder_serves_none_of_its_new_bytes() {
    use framesrv::engine::output::OutputSpec;
    use framesrv::units::FrameIndex;
    use futures::StreamExt;
    use std::os::unix::fs::MetadataExt;
    let d = start_with_one_decoder().await;
    // Raw video keeps every frame at the same place in two files of the same size and length:
    // a decoder reading the new bytes where the old index points decodes them cleanly.
    let raw = ["-c:v", "rawvideo", "-pix_fmt", "yuv420p", "-fflags", "+bitexact", "-map_metadata", "-1"];
    let path = encode(&d.media.join("raw.avi"), 60, 25, &raw);
    let other = scratch();
    let negated = other.path().join("negated.avi");
    let mut args = vec!["-i", path.to_str().unwrap(), "-vf", "negate"];
    args.extend(raw);
    args.push(negated.to_str().unwrap());
    ffmpeg(&args);
    let (old, new) = (std::fs::read(&path).unwrap(), std::fs::read(&negated).unwrap());
    assert_eq!(old.len(), new.len(), "the premise: both files have their frames at the same places");
    let (before, after) = (reference_frames(&path), reference_frames(&negated));
    assert_ne!(before[50], after[50]);

    let video = d.store.open("raw.avi", Class::Interactive).await.unwrap();
    let mut frames = Box::pin(d.store.frames(video.clone(), vec![FrameIndex(2)], OutputSpec::default()));
    assert_eq!(frames.next().await.unwrap().unwrap().data[..], before[2][..]);
    assert_eq!(d.store.stats().open_decoders, 1);
    let inode = std::fs::metadata(&path).unwrap().ino();
    std::fs::write(&path, &new).unwrap(); // as `cp` does: truncated and written, the same inode
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);

    // The decoder that is open, not a new one (whose opening checks the file anyway), reads on.
    let mut frames = Box::pin(d.store.frames(video, vec![FrameIndex(50)], OutputSpec::default()));
    let err = match frames.next().await.unwrap() {
        Ok(f) => {
            panic!("frame 50 served after the file was rewritten (the new file's: {})", f.data[..] == after[50][..])
        }
        Err(err) => err,
    };
    assert!(matches!(err, framesrv::engine::EngineError::ChangedWhileRead { .. }), "{err}");
    assert_eq!(framesrv::error::Error::from(err).code(), Code::Aborted);
    // The next request opens the file as it is now.
    let mut c = d.client().await;
    let frame = c.request_frame(by_index("raw.avi", 50)).await.unwrap().into_inner();
    assert_eq!(frame.data, after[50]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_targets_in_one_gop_are_served_by_one_forward_scan() {
    let d = start_with_one_decoder().await;
    let long = long_video(&d.media);
    let mut c = d.client().await;
    let mut slow = c.clone();
    let blocker = tokio::spawn(async move {
        slow.request_frame(pb::FrameRequest { keep_behind: Some(0), ..by_index("long.mp4", 600) }).await
    });
    while d.store.stats().frames_decoded == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // Four clients ask for frames of the same GOP, out of order, while the decoder is busy.
    let targets = [300usize, 250, 280, 260];
    let mut asks = Vec::new();
    for &t in &targets {
        let mut c = c.clone();
        asks.push(tokio::spawn(async move {
            c.request_frame(pb::FrameRequest { keep_behind: Some(0), ..by_index("long.mp4", t as i64) }).await
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!blocker.is_finished(), "the decoder finished before the requests queued: the test proves nothing");
    blocker.await.unwrap().unwrap();
    for (t, a) in targets.iter().zip(asks) {
        let f = a.await.unwrap().unwrap().into_inner();
        assert_eq!(f.data, reference_frame(&long, *t), "frame {t}");
    }
    let s = d.store.stats();
    assert_eq!(s.seeks, 2, "one seek for the blocker, one for the four queued targets");
    assert!(
        s.frames_decoded <= 601 + 301,
        "{} frames decoded: the queued targets cost more than one pass",
        s.frames_decoded
    );
    let f = c.request_frame(by_index("long.mp4", 301)).await.unwrap().into_inner();
    assert_eq!(f.data, reference_frame(&long, 301));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_missing_frame_decode_it_once() {
    let d = start_with(|c| c.decoder.keep_behind = 0).await;
    let reference = reference_frames(&d.media.join("a.mp4"));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c = d.client().await;
        tasks.push(tokio::spawn(async move { c.request_frame(by_index("a.mp4", 47)).await.unwrap().into_inner() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().data[..], reference[47][..]);
    }
    let s = d.store.stats();
    assert_eq!(s.seeks, 1, "one decode served all sixteen");
    assert_eq!(s.joined + s.cache.hits, 15, "the others waited on it or found it cached: {s:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_return_ranges_lists_and_time_ranges_in_request_order() {
    let d = start().await;
    let reference = reference_frames(&d.media.join("a.mp4"));
    let mut c = d.client().await;
    let collect = |req: pb::FramesRequest| streamed(c.clone(), req);
    let got = collect(batch("a.mp4", range(5, 25, 2))).await;
    assert_eq!(got.iter().map(|f| f.index).collect::<Vec<_>>(), (5..25).step_by(2).collect::<Vec<_>>());
    for f in &got {
        assert_eq!(f.data[..], reference[f.index as usize][..]);
    }
    let all = collect(batch("a.mp4", range(0, 0, 0))).await;
    assert_eq!(all.len(), 60);
    for f in &all {
        assert_eq!(f.data[..], reference[f.index as usize][..], "frame {}", f.index);
    }
    let list = collect(batch(
        "a.mp4",
        pb::frames_request::Selection::Indices(pb::IndexList { indices: vec![50, 3, -1, 3, 27] }),
    ))
    .await;
    assert_eq!(list.iter().map(|f| f.index).collect::<Vec<_>>(), vec![50, 3, 59, 3, 27]);
    for f in &list {
        assert_eq!(f.data[..], reference[f.index as usize][..]);
    }
    let times =
        collect(batch("a.mp4", pb::frames_request::Selection::TimeRange(pb::TimeRange { start_s: 1.01, stop_s: 1.2 })))
            .await;
    assert_eq!(times.iter().map(|f| f.index).collect::<Vec<_>>(), vec![25, 26, 27, 28, 29]);
    // And a unary call still works on the same channel.
    c.request_frame(by_index("a.mp4", 1)).await.unwrap();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_formats_sizes_and_encodings_are_consistent() {
    let d = start().await;
    let reference = reference_frames(&d.media.join("a.mp4"));
    let c = d.client().await;
    let get = |spec: pb::OutputSpec| {
        let mut c = c.clone();
        async move {
            c.request_frame(pb::FrameRequest { output: Some(spec), ..by_index("a.mp4", 21) })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let bgr = get(pb::OutputSpec { pixel_format: pb::PixelFormat::Bgr24 as i32, ..Default::default() }).await;
    let swapped: Vec<u8> = reference[21].chunks(3).flat_map(|p| [p[2], p[1], p[0]]).collect();
    assert_eq!(bgr.data[..], swapped[..], "BGR24 is RGB24 with the bytes swapped");
    let rgba = get(pb::OutputSpec { pixel_format: pb::PixelFormat::Rgba as i32, ..Default::default() }).await;
    let rgb_of_rgba: Vec<u8> = rgba.data.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    assert_eq!(rgb_of_rgba[..], reference[21][..]);
    assert!(rgba.data.chunks(4).all(|p| p[3] == 255));
    let gray = get(pb::OutputSpec { pixel_format: pb::PixelFormat::Gray8 as i32, ..Default::default() }).await;
    assert_eq!(gray.data.len(), (W * H) as usize);
    let small = get(pb::OutputSpec { max_width: 96, max_height: 96, ..Default::default() }).await;
    assert_eq!((small.width, small.height), (96, 64), "fit inside, aspect kept");
    assert_eq!(small.data.len(), 96 * 64 * 3, "rows tightly packed");
    let big = get(pb::OutputSpec { max_width: 4000, max_height: 4000, ..Default::default() }).await;
    assert_eq!((big.width, big.height), (W, H), "never upscaled");
    let png = get(pb::OutputSpec { encoding: pb::Encoding::Png as i32, ..Default::default() }).await;
    assert_eq!(decode_png(&png.data), reference[21], "PNG holds exactly the raw pixels");
    let jpeg =
        get(pb::OutputSpec { encoding: pb::Encoding::Jpeg as i32, jpeg_quality: 80, ..Default::default() }).await;
    assert_eq!(&jpeg.data[..3], &[0xFF, 0xD8, 0xFF], "a JPEG");
    d.stop().await;
}

fn decode_png(data: &[u8]) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::Cursor::new(data.to_vec()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

async fn expect_code(c: &mut FrameServerClient<Channel>, req: pb::FrameRequest, code: Code, needle: &str) {
    let what = format!("{req:?}");
    match c.request_frame(req).await {
        Ok(_) => panic!("{what}: expected {code:?}, got a frame"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {}", s.message());
            assert!(s.message().contains(needle), "{what}: message {:?} should mention {needle:?}", s.message());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_status_and_the_daemon_keeps_serving() {
    let d = start_with(|c| c.limits.max_batch_frames = 100).await;
    let mut c = d.client().await;
    let outside = d.dir.path().join("outside").display().to_string();
    expect_code(&mut c, by_index("missing.mp4", 0), Code::NotFound, "missing.mp4").await;
    expect_code(&mut c, by_index("", 0), Code::InvalidArgument, "video").await;
    expect_code(&mut c, by_index("../outside/secret.mp4", 0), Code::PermissionDenied, "..").await;
    expect_code(&mut c, by_index(&format!("{outside}/secret.mp4"), 0), Code::PermissionDenied, "absolute").await;
    expect_code(&mut c, by_index("escape.mp4", 0), Code::PermissionDenied, "outside").await;
    for url in ["http://127.0.0.1:9/a.mp4", "concat:a.mp4|a.mp4", "pipe:0", "file:a.mp4"] {
        expect_code(&mut c, by_index(url, 0), Code::PermissionDenied, "protocol").await;
    }
    // Formats framesrv does not read are named (FFmpeg itself only says "Invalid argument").
    expect_code(&mut c, by_index("list.mp4", 0), Code::InvalidArgument, "format (concat) is not one").await;
    expect_code(&mut c, by_index("play.m3u8", 0), Code::InvalidArgument, "format (hls) is not one").await;
    expect_code(&mut c, by_index("still.png", 0), Code::InvalidArgument, "format (png_pipe) is not one").await;
    expect_code(&mut c, by_index("notes.mp4", 0), Code::InvalidArgument, "not a readable video").await;
    expect_code(&mut c, by_index("garbage.mkv", 0), Code::InvalidArgument, "garbage.mkv").await;
    expect_code(&mut c, by_index("audio.mp4", 0), Code::InvalidArgument, "no video stream").await;
    expect_code(&mut c, by_index("sub", 0), Code::NotFound, "sub").await;
    expect_code(&mut c, by_index("a.mp4", 60), Code::OutOfRange, "has 60 frames").await;
    expect_code(&mut c, by_index("a.mp4", -61), Code::OutOfRange, "-60..=-1").await;
    expect_code(&mut c, by_time("a.mp4", 2.4), Code::OutOfRange, "lasts 2.400s").await;
    expect_code(&mut c, by_time("a.mp4", -0.5), Code::OutOfRange, "-0.5").await;
    expect_code(&mut c, by_time("a.mp4", f64::NAN), Code::InvalidArgument, "NaN").await;
    expect_code(&mut c, pb::FrameRequest { target: None, ..by_index("a.mp4", 0) }, Code::InvalidArgument, "index")
        .await;
    let huge = pb::OutputSpec { max_width: 1_000_000, ..Default::default() };
    expect_code(
        &mut c,
        pb::FrameRequest { output: Some(huge), ..by_index("a.mp4", 0) },
        Code::InvalidArgument,
        "max_width",
    )
    .await;
    let odd = pb::OutputSpec { encoding: 42, ..Default::default() };
    expect_code(
        &mut c,
        pb::FrameRequest { output: Some(odd), ..by_index("a.mp4", 0) },
        Code::InvalidArgument,
        "encoding",
    )
    .await;

    let too_many = pb::frames_request::Selection::Indices(pb::IndexList { indices: vec![0; 101] });
    assert_eq!(c.request_frames(batch("a.mp4", too_many)).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(c.request_frames(batch("a.mp4", range(50, 70, 1))).await.unwrap_err().code(), Code::OutOfRange);
    let none = pb::FramesRequest { video: "a.mp4".into(), selection: None, output: None };
    assert_eq!(c.request_frames(none).await.unwrap_err().code(), Code::InvalidArgument);

    // Clamp turns out-of-range into the nearest edge.
    let clamped =
        c.request_frame(pb::FrameRequest { clamp: true, ..by_index("a.mp4", 1000) }).await.unwrap().into_inner();
    assert_eq!(clamped.index, 59);
    let clamped =
        c.request_frame(pb::FrameRequest { clamp: true, ..by_time("a.mp4", -3.0) }).await.unwrap().into_inner();
    assert_eq!(clamped.index, 0);
    // Still serving.
    let ok = c.request_frame(by_index("sub/copy.mp4", 3)).await.unwrap().into_inner();
    assert_eq!(ok.index, 3);
    let names = c.list_videos(pb::ListVideosRequest { prefix: String::new() }).await.unwrap().into_inner().videos;
    assert!(names.contains(&"a.mp4".to_string()) && names.contains(&"sub/copy.mp4".to_string()));
    assert!(!names.contains(&"escape.mp4".to_string()), "links out of the root are not listed");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_deadline_and_the_server_limit_both_answer_deadline_exceeded() {
    let d = start_with(|c| c.limits.request_timeout_s = 0.3).await;
    long_video(&d.media);
    let mut c = d.client().await;
    c.get_video_info(pb::GetVideoInfoRequest { video: "long.mp4".into(), ..Default::default() }).await.unwrap();
    // The last frame of a 900-frame GOP: a decode of the whole GOP, far longer than either bound.
    let mut request = tonic::Request::new(by_index("long.mp4", 899));
    request.set_timeout(std::time::Duration::from_millis(150));
    let err = c.request_frame(request).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    assert!(err.message().contains("client's deadline"), "{}", err.message());
    let err = c.request_frame(by_index("long.mp4", 898)).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    assert!(err.message().contains("longer than 0.3s"), "{}", err.message());
}

/// The first request for a long file without timestamps waits for a decode pass over the whole
/// file. A deadline shorter than that pass answers DEADLINE_EXCEEDED saying the video is being
/// indexed, and the pass goes on without the request: the next one gets the index it made
/// rather than starting another pass (with no state directory to find it in either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_pass_outlives_the_deadline_of_the_request_that_started_it() {
    let d = start_with(|c| c.state_dir = "none".into()).await;
    // Four times the long video: its pass outlasts both deadlines below even on an idle machine,
    // and they are long enough for the server's answer (a tenth early) to beat the client's own
    // timer on a loaded one.
    let raw = raw_h264(&long_video(&d.media), &d.media.join("once.h264"));
    std::fs::write(d.media.join("long.h264"), std::fs::read(raw).unwrap().repeat(4)).unwrap();
    let mut c = d.client().await;
    let mut request = tonic::Request::new(pb::GetVideoInfoRequest { video: "long.h264".into(), ..Default::default() });
    request.set_timeout(std::time::Duration::from_millis(500));
    let err = c.get_video_info(request).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    assert!(err.message().contains("long.h264 is still being indexed ("), "{}", err.message());
    assert_eq!(d.store.stats().videos_indexing, 1);
    // A stream's setup too, within the client's deadline (the server does not bound streams):
    // its last frames need the whole index.
    let mut request = tonic::Request::new(batch("long.h264", range(-10, 0, 1)));
    request.set_timeout(std::time::Duration::from_millis(500));
    let err = c.request_frames(request).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    assert!(err.message().contains("long.h264 is still being indexed ("), "{}", err.message());
    // The pass ends with nobody waiting for it: the video is then open, not being indexed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while d.store.stats().videos_indexing > 0 {
        assert!(std::time::Instant::now() < deadline, "the pass never ended");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(d.store.stats().videos_indexed, 1);
    let info = c
        .get_video_info(pb::GetVideoInfoRequest { video: "long.h264".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.frame_count, 3600);
    assert_eq!(d.store.stats().videos_indexed, 1, "the next request started a second decode pass");
    // Its frames are then served like any other video's.
    let frame = c.request_frame(by_index("long.h264", 450)).await.unwrap().into_inner();
    assert_eq!(frame.index, 450);
    d.stop().await;
}

/// A file without timestamps that changes while it is being indexed (a camera still writing
/// it): the next request opens the new content, and the pass over the old one stops rather than
/// running on for nobody (one more pass per request, on a file being written). Whoever waited
/// for the old one is told the file changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_grows_while_it_is_indexed_is_indexed_once_as_it_is_now() {
    let d = start_with(|c| c.state_dir = "none".into()).await;
    let raw = raw_h264(&long_video(&d.media), &d.media.join("growing.h264"));
    let first = d.store.clone();
    let waiting =
        tokio::spawn(
            async move { first.open("growing.h264", Class::Interactive).await.map(|v| v.index.frame_count()) },
        );
    // Its pass is under way; then the camera writes on (the same recording again).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !d.store.indexing("growing.h264").is_some_and(|p| p.starts_with("decoding every frame")) {
        assert!(std::time::Instant::now() < deadline, "the pass never started");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let bytes = std::fs::read(&raw).unwrap();
    std::io::Write::write_all(&mut std::fs::OpenOptions::new().append(true).open(&raw).unwrap(), &bytes).unwrap();
    let mut c = d.client().await;
    let info = c
        .get_video_info(pb::GetVideoInfoRequest { video: "growing.h264".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.frame_count, 1800, "the file as it is now");
    let err = waiting.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err}");
    assert!(err.to_string().contains("the file changed while it was being indexed"), "{err}");
    assert_eq!(d.store.stats().videos_indexed, 1, "the pass over the old content ran on");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_decoder_answers_internal_is_replaced_and_the_others_carry_on() {
    let d = start().await;
    // A video of its own: the fault hook is process-wide and other tests read a.mp4.
    std::fs::copy(d.media.join("a.mp4"), d.media.join("panic.mp4")).unwrap();
    let reference = reference_frames(&d.media.join("a.mp4"));
    let mut c = d.client().await;
    // A stream on another video keeps going through it all.
    let mut stream = c.request_frames(batch("a.mp4", range(0, 60, 1))).await.unwrap().into_inner();
    assert_eq!(c.request_frame(by_index("panic.mp4", 3)).await.unwrap().into_inner().data, reference[3]);
    framesrv::engine::faults::panic_on_frame("panic.mp4", 30);
    let err = c.request_frame(by_index("panic.mp4", 30)).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{}", err.message());
    assert!(err.message().contains("internal error") && err.message().contains("retried"), "{}", err.message());
    // The decoder is replaced: the same frame, and its neighbours, come right on the next try.
    for i in [30, 29, 31, 3] {
        let f = c.request_frame(by_index("panic.mp4", i)).await.unwrap().into_inner();
        assert_eq!(f.data, reference[i as usize], "frame {i}");
    }
    let mut n = 0;
    while let Some(f) = stream.message().await.unwrap() {
        assert_eq!(f.data, reference[f.index as usize]);
        n += 1;
    }
    assert_eq!(n, 60);
    assert_eq!(d.store.stats().panics, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decoder_panicking_while_reading_ahead_leaves_no_request_waiting() {
    let d = start().await;
    std::fs::copy(d.media.join("a.mp4"), d.media.join("ahead-panic.mp4")).unwrap();
    let reference = reference_frames(&d.media.join("a.mp4"));
    let mut c = d.client().await;
    framesrv::engine::faults::panic_on_frame("ahead-panic.mp4", 24);
    // A sequential reader: its decoder reads ahead (8 frames) past the frames asked for, into 24.
    for i in 10..=18 {
        assert_eq!(
            c.request_frame(by_index("ahead-panic.mp4", i)).await.unwrap().into_inner().data,
            reference[i as usize]
        );
    }
    // Read-ahead is speculative work at nice 19: it runs when a core is free, which under a
    // whole test suite's load can take a while.
    let t = std::time::Instant::now();
    while d.store.stats().panics == 0 {
        assert!(t.elapsed().as_secs() < 60, "read-ahead never reached frame 24");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Every frame around it is answered, exact, well within a deadline: none waits on the dead
    // decoder's read-ahead.
    for i in 19..=30 {
        let mut request = tonic::Request::new(by_index("ahead-panic.mp4", i));
        request.set_timeout(std::time::Duration::from_secs(10));
        let f = c.request_frame(request).await.unwrap_or_else(|e| panic!("frame {i}: {e:?}")).into_inner();
        assert_eq!(f.data, reference[i as usize], "frame {i}");
    }
    assert_eq!(d.store.stats().panics, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frame_above_the_message_limit_is_resource_exhausted_with_its_size_and_what_to_do() {
    // 192x128 raw RGBA is 98,304 bytes: above a 60 kB limit, while a JPEG of it fits.
    let d = start_with(|c| c.limits.max_message_size = framesrv::units::ByteSize(60_000)).await;
    let mut c = d.client().await;
    let rgba = |mut r: pb::FrameRequest| {
        r.output = Some(pb::OutputSpec { pixel_format: pb::PixelFormat::Rgba as i32, ..Default::default() });
        r
    };
    expect_code(&mut c, rgba(by_index("a.mp4", 7)), Code::ResourceExhausted, "98304 bytes (192x128 rgba raw)").await;
    let status = c.request_frame(rgba(by_index("a.mp4", 7))).await.unwrap_err();
    assert!(status.message().contains("max_message_size") && status.message().contains("JPEG"), "{}", status.message());
    let stream = c.request_frames(pb::FramesRequest {
        output: rgba(by_index("a.mp4", 0)).output,
        ..batch("a.mp4", range(0, 3, 1))
    });
    let mut stream = stream.await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap_err().code(), Code::ResourceExhausted);
    let small = pb::FrameRequest {
        output: Some(pb::OutputSpec { encoding: pb::Encoding::Jpeg as i32, ..Default::default() }),
        ..by_index("a.mp4", 7)
    };
    assert_eq!(c.request_frame(small).await.unwrap().into_inner().index, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_resource_exhausted_and_the_daemon_recovers() {
    let d = start_with(|c| {
        c.decoder.max_total = 1;
        c.decoder.max_per_video = 1;
        c.decoder.max_queue = 2;
        c.cache_size = framesrv::units::ByteSize(0);
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut c = d.client().await;
        tasks.push(tokio::spawn(async move { c.request_frame(by_index("a.mp4", (i * 7) % 60)).await }));
    }
    let mut exhausted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => {}
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
                exhausted += 1;
            }
        }
    }
    assert!(exhausted > 0, "a queue of 2 on one decoder must refuse some of 40 concurrent requests");
    let mut c = d.client().await;
    assert_eq!(c.request_frame(by_index("a.mp4", 9)).await.unwrap().into_inner().index, 9);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_file_never_serves_stale_frames() {
    let d = start().await;
    let mut c = d.client().await;
    let before = c.request_frame(by_index("sub/copy.mp4", 10)).await.unwrap().into_inner();
    assert_eq!(barcode(&before.data), 10);
    // Replace it with a video whose frames start at a different source frame.
    let full = d.media.join("a.mp4");
    let cut = d.media.join("sub/cut.mp4");
    ffmpeg(&[
        "-i",
        full.to_str().unwrap(),
        "-vf",
        "trim=start_frame=20,setpts=PTS-STARTPTS",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        cut.to_str().unwrap(),
    ]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::rename(&cut, d.media.join("sub/copy.mp4")).unwrap();
    let after = c.request_frame(by_index("sub/copy.mp4", 10)).await.unwrap().into_inner();
    assert!(!after.cache_hit);
    assert_eq!(barcode(&after.data), 30, "frame 10 of the new file is source frame 30");
    d.stop().await;
}

/// A file changed in place (same inode) while its decoders are open: truncated, then grown back,
/// then replaced by a copy of the same size with the old modification time (only the inode tells).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_truncated_grown_or_swapped_in_place_is_reindexed_never_stale() {
    use std::io::Write;
    let d = start().await;
    let mut c = d.client().await;
    let full =
        encode(&d.media.join("full.mkv"), 80, 25, &["-c:v", "libx264", "-bf", "2", "-g", "12", "-pix_fmt", "yuv420p"]);
    let bytes = std::fs::read(&full).unwrap();
    let path = d.media.join("changing.mkv");
    std::fs::write(&path, &bytes).unwrap();
    let frame = |r: pb::Frame| (r.index, barcode(&r.data));
    assert_eq!(frame(c.request_frame(by_index("changing.mkv", 70)).await.unwrap().into_inner()), (70, 70));
    // Truncated in place: the same inode, a decoder still open on it.
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(bytes.len() as u64 * 55 / 100).unwrap();
    let status = c.request_frame(by_index("changing.mkv", 70)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
    let n = c
        .get_video_info(pb::GetVideoInfoRequest { video: "changing.mkv".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .frame_count;
    assert!(n > 20 && n < 80, "{n} frames after the cut");
    assert_eq!(frame(c.request_frame(by_index("changing.mkv", 20)).await.unwrap().into_inner()), (20, 20));
    // Grown back in place.
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&bytes[bytes.len() * 55 / 100..]).unwrap();
    drop(f);
    assert_eq!(frame(c.request_frame(by_index("changing.mkv", 70)).await.unwrap().into_inner()), (70, 70));
    assert_eq!(frame(c.request_frame(by_index("changing.mkv", 5)).await.unwrap().into_inner()), (5, 5));
    // Swapped for another file of the same size and modification time (as `cp -p` or rsync
    // leave it): frames 0.. of a video that starts 10 source frames later.
    let shifted = d.media.join("shifted.mkv");
    ffmpeg(&[
        "-i",
        full.to_str().unwrap(),
        "-vf",
        "trim=start_frame=10,setpts=PTS-STARTPTS",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        shifted.to_str().unwrap(),
    ]);
    let mut other = std::fs::read(&shifted).unwrap();
    other.resize(bytes.len(), 0);
    let swap = d.media.join("swap.tmp");
    std::fs::write(&swap, &other).unwrap();
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::File::options().write(true).open(&swap).unwrap().set_modified(modified).unwrap();
    std::fs::rename(&swap, &path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes.len() as u64);
    let after = c.request_frame(by_index("changing.mkv", 5)).await.unwrap().into_inner();
    assert!(!after.cache_hit, "the old file's frame 5 served from the cache");
    assert_eq!(frame(after), (5, 15));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_and_reflection_lists_the_service() {
    let d = start().await;
    let channel = Channel::from_shared(d.addr.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "framesrv.v1.FrameServer".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("no service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"framesrv.v1.FrameServer".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_get_writes_a_png_of_the_right_frame() {
    let d = start().await;
    let reference = reference_frames(&d.media.join("a.mp4"));
    let out = d.media.join("frame.png");
    let addr = d.addr.clone();
    let target = out.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_framesrv"))
            .args(["get", "a.mp4", "--index", "-7", "--server", &addr, "-o"])
            .arg(&target)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(decode_png(&std::fs::read(&out).unwrap()), reference[53]);
    let addr = d.addr.clone();
    let failed = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_framesrv"))
            .args(["get", "a.mp4", "--index", "999", "--server", &addr, "-o", "/dev/null"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("OutOfRange") && stderr.contains("60 frames"), "{stderr}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_streams_finish() {
    let d = start().await;
    let mut c = d.client().await;
    let mut stream = c.request_frames(batch("a.mp4", range(0, 60, 1))).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.index, 0);
    let mut d = d;
    d.signal_stop();
    let mut count = 1;
    loop {
        match stream.message().await {
            Ok(Some(_)) => count += 1,
            Ok(None) => break,
            Err(s) => panic!("the stream in flight was cut after {count} frames: {:?} {}", s.code(), s.message()),
        }
    }
    assert_eq!(count, 60, "the stream in flight completed");
    d.stop().await;
}

/// A client that stops reading holds its stream in flight forever: shutdown waits for it only
/// the grace period (and a second for connections to close), then the daemon exits anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_after_its_grace_even_when_a_reader_never_reads_on() {
    let mut d = start_with(|c| c.limits.shutdown_grace_s = 1.0).await;
    long_video(&d.media);
    let mut c = d.client().await;
    let mut stream = c.request_frames(batch("long.mp4", range(0, 900, 1))).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().index, 0);
    let began = std::time::Instant::now();
    d.signal_stop();
    tokio::time::timeout(std::time::Duration::from_secs(30), d.stop())
        .await
        .expect("the daemon exits after its grace period, whatever its clients do");
    assert!(began.elapsed() >= std::time::Duration::from_secs(1), "the stream had its grace period");
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_reader_is_served_from_readahead_without_seeking() {
    let d = start().await;
    let reference = reference_frames(&d.media.join("a.mp4"));
    let mut c = d.client().await;
    let mut hits = 0;
    for (i, expected) in reference.iter().enumerate().take(20) {
        let f = c.request_frame(by_index("a.mp4", i as i64)).await.unwrap().into_inner();
        assert_eq!(f.data[..], expected[..], "frame {i}");
        hits += f.cache_hit as usize;
        // A client that does something with each frame: time for the decoder to read ahead.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    assert!(hits >= 16, "frames 2.. were decoded ahead of the reader: {hits} of 20 were cache hits");
    let stats = d.store.stats();
    assert_eq!(stats.seeks, 1, "reading forward never seeks");
    assert!(stats.frames_decoded <= 20 + 8 + 1, "readahead stays bounded: {} frames decoded", stats.frames_decoded);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_a_range_decodes_each_frame_once_on_one_decoder() {
    // Parallel segments off: this is the one-decoder path (streams under load, or too large).
    let d = start_with(|c| c.decoder.parallel_streams = false).await;
    let mut c = d.client().await;
    let mut s = c.request_frames(batch("a.mp4", range(0, 0, 1))).await.unwrap().into_inner();
    let mut n = 0;
    while s.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 60);
    let stats = d.store.stats();
    assert_eq!(stats.seeks, 1, "queued sequential jobs stay on the decoder that is positioned for them");
    assert_eq!(stats.frames_decoded, 60, "no frame decoded twice");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_behind_chooses_how_much_of_the_scan_is_cached() {
    let d = start_with(|c| c.limits.max_keep_behind = 50).await;
    let mut c = d.client().await;
    let cold = pb::FrameRequest { keep_behind: Some(0), ..by_index("a.mp4", 40) };
    assert!(!c.request_frame(cold).await.unwrap().into_inner().cache_hit);
    let probe = pb::FrameRequest { keep_behind: Some(0), ..by_index("a.mp4", 39) };
    assert!(!c.request_frame(probe).await.unwrap().into_inner().cache_hit, "nothing kept behind 40");
    // The window is filled while a core is free: none of the work above may still be running
    // (under a loaded test run, it was, and the answer below came without its fill).
    d.settle().await;
    let cold = pb::FrameRequest { keep_behind: Some(5), ..by_index("a.mp4", 20) };
    c.request_frame(cold).await.unwrap();
    d.settle().await;
    // Kept: cached by the fill behind the answer, or, when the fill (speculative work, run
    // while a core is free) has not run yet under a busy machine, produced by it while the
    // request waits on it; never a decode of the request's own.
    for i in 15..20 {
        let joined = d.store.stats().joined;
        let hit = c.request_frame(by_index("a.mp4", i)).await.unwrap().into_inner().cache_hit;
        assert!(hit || d.store.stats().joined > joined, "frame {i} kept");
    }
    assert!(!c.request_frame(by_index("a.mp4", 14)).await.unwrap().into_inner().cache_hit, "only five kept");
    let absurd = pb::FrameRequest { keep_behind: Some(51), ..by_index("a.mp4", 3) };
    expect_code(&mut c, absurd, Code::InvalidArgument, "keep_behind").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readahead_survives_a_full_cache() {
    // 2 MiB hold about 40 frames of 192x128 asked for (kept as the decoder's 4:2:0 planes,
    // rows of 256 bytes): reading 60 frames fills it, and the frames read ahead must not be
    // evicted by the frames just served.
    let d = start_with(|c| c.cache_size = framesrv::units::ByteSize::mib(2)).await;
    let mut c = d.client().await;
    let mut late_hits = 0;
    for i in 0..60usize {
        let f = c.request_frame(by_index("a.mp4", i as i64)).await.unwrap().into_inner();
        if i >= 50 {
            late_hits += f.cache_hit as usize;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(d.store.stats().cache.evictions > 0, "the cache was full");
    assert!(late_hits >= 8, "with a full cache, {late_hits} of the last 10 frames were read ahead");
    assert_eq!(d.store.stats().seeks, 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_cached_as_planes_and_frames_read_ahead_as_served() {
    let d = start().await;
    let reference = reference_frames(&d.media.join("a.mp4"));
    let mut c = d.client().await;
    // A sequential reader: three frames asked for, and read-ahead past them (no backtrack
    // window: its frames are kept as planes, as speculation a reader steps back into).
    for i in 10..13 {
        let f = c
            .request_frame(pb::FrameRequest { keep_behind: Some(0), ..by_index("a.mp4", i) })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(f.data[..], reference[i as usize][..]);
    }
    d.settle().await;
    // Bytes charged per entry: the frame plus 192 of bookkeeping (`cache::ENTRY_OVERHEAD`).
    let rgb = 192 * 128 * 3 + 192;
    let s = d.store.stats().cache;
    assert!(s.speculative_bytes > 0, "frames were read ahead");
    assert_eq!(s.speculative_bytes % rgb, 0, "read-ahead is kept as converted: {s:?}");
    // Frames asked for and decoded for the request are kept as planes; one asked for while it
    // was held as read-ahead (a hit) stays as it was.
    let decoded = s.entries - s.speculative_bytes / rgb - s.hits;
    let planes = (s.bytes - s.speculative_bytes - s.hits * rgb) / decoded.max(1);
    assert!(decoded >= 1 && planes < rgb * 3 / 4, "frames asked for are kept as 4:2:0 planes: {planes} bytes, {s:?}");
    // Both give the decoder's bytes back: the planes converted again, the frames read ahead.
    for i in 10..20 {
        let f = c.request_frame(by_index("a.mp4", i)).await.unwrap().into_inner();
        assert!(f.cache_hit, "frame {i}");
        assert_eq!(f.data[..], reference[i as usize][..], "frame {i}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_and_the_backtrack_window_stay_within_what_the_cache_holds() {
    // 640 KiB: the speculative share (a quarter) holds two 192x128 frames, as a 512 MiB cache
    // holds five 4K ones. Reading 8 frames ahead, or keeping 32 behind a cold answer, would
    // evict their first frames before anyone asked for them: a seek back at every step.
    let d = start_with(|c| c.cache_size = framesrv::units::ByteSize(640 << 10)).await;
    // One GOP, so the window behind a late frame could be 32 frames long.
    let video = encode(&d.media.join("g60.mp4"), 60, 25, &["-c:v", "libx264", "-g", "60", "-pix_fmt", "yuv420p"]);
    let reference = reference_frames(&video);
    let mut c = d.client().await;
    assert!(!c.request_frame(by_index("g60.mp4", 50)).await.unwrap().into_inner().cache_hit);
    d.settle().await;
    assert_eq!(d.store.stats().cache.evictions, 0, "the window behind 50 is what fits");
    // Kept by the fill: cached, or (the fill not run yet on a busy machine) waited on.
    for i in [49, 48] {
        let joined = d.store.stats().joined;
        let hit = c.request_frame(by_index("g60.mp4", i)).await.unwrap().into_inner().cache_hit;
        assert!(hit || d.store.stats().joined > joined, "frame {i} kept");
    }
    let seeks = d.store.stats().seeks;
    let mut hits = 0;
    for (i, expected) in reference.iter().enumerate().take(30) {
        let f = c.request_frame(by_index("g60.mp4", i as i64)).await.unwrap().into_inner();
        assert_eq!(f.data[..], expected[..], "frame {i}");
        hits += f.cache_hit as usize;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(d.store.stats().seeks - seeks, 1, "reading forward never seeks back");
    assert!(hits >= 25, "frames 2.. were read ahead and still there: {hits} of 30 were cache hits");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_clients_keep_asking_for_stay_cached_while_a_stream_passes_through() {
    // A cache the size of twelve 192x128 RGB frames (seventeen as the decoder's planes); a
    // labeller's three frames, asked for again and again, then someone streams the whole
    // 60-frame video through it. Least-recently-used alone would keep the stream's last
    // frames and none of the three.
    let frame = 192 * 128 * 3 + 192;
    let d = start_with(|c| c.cache_size = framesrv::units::ByteSize(frame * 12)).await;
    let reference = reference_frames(&d.media.join("a.mp4"));
    let mut c = d.client().await;
    let hot = [5, 20, 40];
    for _ in 0..3 {
        for i in hot {
            c.request_frame(by_index("a.mp4", i)).await.unwrap();
        }
    }
    d.settle().await;
    let mut s = c.request_frames(batch("a.mp4", range(0, 60, 1))).await.unwrap().into_inner();
    let mut streamed = 0;
    while let Some(f) = s.message().await.unwrap() {
        assert_eq!(f.data[..], reference[streamed][..], "frame {streamed}");
        streamed += 1;
    }
    assert_eq!(streamed, 60);
    d.settle().await;
    for i in hot {
        let f = c.request_frame(by_index("a.mp4", i)).await.unwrap().into_inner();
        assert!(f.cache_hit, "frame {i}, used four times, was pushed out by frames used once");
        assert_eq!(f.data[..], reference[i as usize][..]);
    }
    let stats = d.store.stats().cache;
    assert!(stats.bytes <= stats.capacity);
    // Frames used as often as each other still come and go least recently used first: the
    // stream's last frames are there.
    assert!(c.request_frame(by_index("a.mp4", 59)).await.unwrap().into_inner().cache_hit);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_videos_are_served_as_coded_or_upright_exactly() {
    let d = start().await;
    // The `rotate` tag phones write, on 8-bit and 10-bit (how phones record HDR) video.
    let ten = encode(&d.media.join("ten.mp4"), 24, 25, &["-c:v", "libx264", "-g", "12", "-pix_fmt", "yuv420p10le"]);
    let mut c = d.client().await;
    for (name, source, tag) in [
        ("r90.mp4", d.media.join("a.mp4"), 90),
        ("r180.mp4", d.media.join("a.mp4"), 180),
        ("r270.mp4", d.media.join("a.mp4"), 270),
        ("r90-10bit.mp4", ten.clone(), 90),
    ] {
        let path = d.media.join(name);
        let rotate = format!("rotate={tag}");
        ffmpeg(&["-i", source.to_str().unwrap(), "-c", "copy", "-metadata:s:v", &rotate, path.to_str().unwrap()]);
        // What the CLI reads of the matrix: ffprobe prints its counter-clockwise angle.
        let probed = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "stream_side_data=rotation", "-of"])
            .args(["csv=p=0", path.to_str().unwrap()])
            .output()
            .unwrap();
        let counter_clockwise: f64 = String::from_utf8_lossy(&probed.stdout).trim().parse().unwrap();
        let clockwise = (360.0 - counter_clockwise).rem_euclid(360.0);
        let info = c
            .get_video_info(pb::GetVideoInfoRequest { video: name.into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.display_rotation, clockwise, "{name}");
        assert_eq!((info.width, info.height), (W, H), "{name}: the size is as coded");
        let quarter = clockwise == 90.0 || clockwise == 270.0;
        // Upright: bit-identical to the CLI, which turns pictures by default.
        let upright = reference_frames(&path);
        let coded = reference_frames_with(&path, &["-noautorotate"], "rgb24", 3);
        assert_ne!(upright[3], coded[3], "{name}: the CLI turned the pictures");
        for i in shuffled(upright.len(), 6, tag) {
            let spec = pb::OutputSpec { upright: true, ..Default::default() };
            let r = pb::FrameRequest { output: Some(spec), ..by_index(name, i as i64) };
            let f = c.request_frame(r).await.unwrap().into_inner();
            assert_eq!(f.data[..], upright[i][..], "{name}: upright frame {i}");
            assert_eq!((f.width, f.height), if quarter { (H, W) } else { (W, H) }, "{name}");
            let f = c.request_frame(by_index(name, i as i64)).await.unwrap().into_inner();
            assert_eq!(f.data[..], coded[i][..], "{name}: frame {i} as coded");
            assert_eq!((f.width, f.height), (W, H));
        }
        // Another pixel format goes through the same turn.
        let gray = reference_frames_as(&path, "gray", 1);
        let spec = pb::OutputSpec { upright: true, pixel_format: pb::PixelFormat::Gray8 as i32, ..Default::default() };
        let r = pb::FrameRequest { output: Some(spec), ..by_index(name, 5) };
        assert_eq!(c.request_frame(r).await.unwrap().into_inner().data[..], gray[5][..], "{name}: gray upright");
        // Storyboards too: tiles of the turned size.
        for upright in [false, true] {
            let req =
                pb::StoryboardRequest { video: name.into(), tiles: 2, exact: true, upright, ..Default::default() };
            let board = c.get_storyboard(req).await.unwrap().into_inner();
            let tile = &board.tiles[0];
            assert_eq!(tile.width > tile.height, !(upright && quarter), "{name}: storyboard upright={upright}");
        }
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anamorphic_video_reports_its_pixel_shape_and_serves_its_pixels_as_stored() {
    let d = start().await;
    let path =
        encode(&d.media.join("dvd.mp4"), 12, 25, &["-vf", "setsar=64/45", "-c:v", "libx264", "-pix_fmt", "yuv420p"]);
    let mut c = d.client().await;
    let info = c
        .get_video_info(pb::GetVideoInfoRequest { video: "dvd.mp4".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.sample_aspect_ratio, "64:45");
    let square = c
        .get_video_info(pb::GetVideoInfoRequest { video: "a.mp4".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(square.sample_aspect_ratio, "1:1");
    // As stored, as the CLI decodes it: the pixel shape is for the viewer to apply.
    let reference = reference_frames(&path);
    let f = c.request_frame(by_index("dvd.mp4", 7)).await.unwrap().into_inner();
    assert_eq!((f.width, f.height), (W, H));
    assert_eq!(f.data[..], reference[7][..]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decoder_bound_holds_under_load_on_more_videos_than_decoders() {
    let d = start_with(|c| {
        c.decoder.max_total = 2;
        c.cache_size = framesrv::units::ByteSize(0);
    })
    .await;
    for k in 0..4 {
        std::fs::copy(d.media.join("a.mp4"), d.media.join(format!("v{k}.mp4"))).unwrap();
    }
    let reference = reference_frames(&d.media.join("a.mp4"));
    let store = d.store.clone();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = sampling.clone();
    let sampler = tokio::spawn(async move {
        let mut most = 0;
        while flag.load(std::sync::atomic::Ordering::Relaxed) {
            most = most.max(store.stats().open_decoders);
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        most
    });
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let mut c = d.client().await;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for r in 0..4u64 {
                let (v, i) = ((t + r) % 4, ((t * 7 + r * 13) % 60) as i64);
                let f = c.request_frame(by_index(&format!("v{v}.mp4"), i)).await.unwrap().into_inner();
                out.push((i as usize, f.data));
            }
            out
        }));
    }
    for t in tasks {
        for (i, data) in t.await.unwrap() {
            assert_eq!(data[..], reference[i][..], "frame {i}");
        }
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.await.unwrap();
    assert!(most <= 3, "{most} decoder threads were alive at once with max_total = 2 and interactive_reserve = 1");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backtrack_window_is_complete_in_the_gop_even_after_reading_in_another_size() {
    let d = start().await;
    let mut c = d.client().await;
    // A reader of thumbnails moves the decoder forward past frame 10 in another output size.
    let thumb = Some(pb::OutputSpec { max_width: 48, max_height: 48, ..Default::default() });
    for i in 0..11 {
        c.request_frame(pb::FrameRequest { output: thumb, ..by_index("a.mp4", i) }).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Full-size frame 23 (its GOP starts at 12), then stepping back through the GOP: every
    // step must be a hit although the decoder had passed 12..18 without keeping them.
    c.request_frame(by_index("a.mp4", 23)).await.unwrap();
    d.settle().await;
    for i in (12..23).rev() {
        let f = c.request_frame(by_index("a.mp4", i)).await.unwrap().into_inner();
        assert!(f.cache_hit, "frame {i} behind 23 was kept");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_clients_have_gone_are_never_decoded() {
    let d = start_with_one_decoder().await;
    let long = long_video(&d.media);
    let mut c = d.client().await;
    let mut slow = d.client().await;
    // keep_behind 0: no backtrack fill afterwards (it would decode the 900-frame GOP again).
    let blocker = tokio::spawn(async move {
        slow.request_frame(pb::FrameRequest { keep_behind: Some(0), ..by_index("long.mp4", 890) }).await
    });
    while d.store.stats().frames_decoded == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // Clients with a deadline ask for frames far behind the decoder (each a seek and a long
    // decode) and give up long before the decoder is free.
    let stale: Vec<i64> = (1..=8).map(|k| 900 - k * 100).collect();
    let mut waits = Vec::new();
    for &i in &stale {
        let mut c = c.clone();
        waits.push(tokio::spawn(async move {
            let mut req = tonic::Request::new(by_index("long.mp4", i));
            req.set_timeout(std::time::Duration::from_millis(100));
            c.request_frame(req).await
        }));
    }
    for w in waits {
        let code = w.await.unwrap().unwrap_err().code();
        assert!(matches!(code, Code::DeadlineExceeded | Code::Cancelled), "{code:?}");
    }
    assert!(!blocker.is_finished(), "the decoder finished before the deadlines passed: the test proves nothing");
    let f = blocker.await.unwrap().unwrap().into_inner();
    assert_eq!(f.data, reference_frame(&long, 890));
    // The decoder drops the stale jobs instead of decoding them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while d.store.stats().abandoned < stale.len() as u64 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let s = d.store.stats();
    assert_eq!(s.abandoned, stale.len() as u64, "every stale job was dropped");
    assert!(s.frames_decoded <= 900, "{} frames decoded: stale jobs were decoded", s.frames_decoded);
    // A frame whose request was dropped is served, exactly, when asked again.
    let f = c.request_frame(by_index("long.mp4", stale[0])).await.unwrap().into_inner();
    assert_eq!(f.data, reference_frame(&long, stale[0] as usize));
    let stats = c.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.abandoned, stale.len() as u64);
    d.stop().await;
}

/// Every frame of a stream, in order: (index, data).
async fn stream_all(c: &mut FrameServerClient<Channel>, req: pb::FramesRequest) -> Vec<(i64, Vec<u8>)> {
    let mut s = c.request_frames(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(f) = s.message().await.unwrap() {
        out.push((f.index, f.data.to_vec()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_on_an_idle_daemon_is_decoded_in_parallel_segments_exact_and_in_order() {
    let dir = scratch();
    let (media, _) = media(dir.path());
    // Open GOPs: the leading B-frames of a GOP decode from the previous keyframe, so a lane
    // starting at the wrong place would serve wrong pixels.
    let open = encode(&media.join("open.mkv"), 120, 25, &OPEN_GOP_H264);
    // VP9 with alternate reference frames (hidden frames that are never shown) and MPEG-TS.
    let vp9_args = ["-c:v", "libvpx-vp9", "-g", "12", "-deadline", "good", "-cpu-used", "8", "-b:v", "400k"];
    let vp9 = encode(
        &media.join("v.webm"),
        96,
        25,
        &[&vp9_args[..], &["-auto-alt-ref", "1", "-lag-in-frames", "16"]].concat(),
    );
    let ts_args = ["-c:v", "libx264", "-bf", "3", "-g", "12", "-pix_fmt", "yuv420p", "-f", "mpegts"];
    let ts = encode(&media.join("t.ts"), 96, 25, &ts_args);
    let d = Daemon::start(dir, |_| {}).await;
    let mut c = d.client().await;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let videos = [("a.mp4", media.join("a.mp4")), ("open.mkv", open), ("v.webm", vp9), ("t.ts", ts)];
    for (name, path) in videos {
        let reference = reference_frames(&path);
        let before = d.store.stats().stream_segments;
        let whole = stream_all(&mut c, batch(name, range(0, 0, 1))).await;
        let segments = d.store.stats().stream_segments - before;
        if cores >= 2 {
            assert!(segments >= 2, "{name}: an idle daemon splits a whole-video stream ({segments} segments)");
        }
        assert_eq!(whole.len(), reference.len(), "{name}");
        for (k, (index, data)) in whole.iter().enumerate() {
            assert_eq!(*index, k as i64, "{name}: in order");
            assert!(data == &reference[k], "{name}: frame {k} differs from the sequential decode");
        }
        // Every third frame from 5, as PNG: the segments' frames are encoded like any others.
        let mut stepped = batch(name, range(5, 0, 3));
        stepped.output = Some(pb::OutputSpec { encoding: pb::Encoding::Png as i32, ..Default::default() });
        let frames = stream_all(&mut c, stepped).await;
        let expected: Vec<usize> = (5..reference.len()).step_by(3).collect();
        assert_eq!(frames.iter().map(|f| f.0 as usize).collect::<Vec<_>>(), expected, "{name}");
        for (index, data) in &frames {
            assert!(decode_png(data) == reference[*index as usize], "{name}: png frame {index} differs");
        }
    }
    assert_eq!(d.store.stats().inflight_bytes, 0, "every segment's payment is returned");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_a_segmented_stream_stops_its_lanes_and_returns_its_budget() {
    let dir = scratch();
    let (media, _) = media(dir.path());
    let long = gops_video(&media);
    let d = Daemon::start(dir, |_| {}).await;
    let mut c = d.client().await;
    let mut small = batch("gops.mp4", range(0, 0, 1));
    small.output = Some(pb::OutputSpec { max_width: 160, ..Default::default() });
    let mut s = c.request_frames(small).await.unwrap().into_inner();
    assert_eq!(s.message().await.unwrap().unwrap().index, 0);
    assert!(d.store.stats().stream_segments >= 2 || std::thread::available_parallelism().map_or(true, |n| n.get() < 2));
    drop(s);
    // The lanes see the client gone at their next frame (a lane queued behind other work, at
    // the frame it starts with); then nothing is held or queued.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let stats = d.store.stats();
        if stats.inflight_bytes == 0 && stats.decoders_busy == 0 && stats.queued_jobs == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still held: {stats:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let decoded = d.store.stats().frames_decoded;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(d.store.stats().frames_decoded, decoded, "nothing decodes for a client that has gone");
    // And the daemon still serves the video exactly.
    let f = c.request_frame(by_index("gops.mp4", 450)).await.unwrap().into_inner();
    assert!(f.data == reference_frame(&long, 450));
    d.stop().await;
}

/// 900 960x540 frames in GOPs of 60: a whole-video stream keeps two decoders busy for seconds.
fn gops_video(media: &Path) -> PathBuf {
    let path = media.join("gops.mp4");
    let args = ["-f", "lavfi", "-i", "testsrc2=size=960x540:rate=30:duration=30", "-c:v", "libx264", "-preset"];
    ffmpeg(
        &[&args[..], &["ultrafast", "-g", "60", "-bf", "0", "-pix_fmt", "yuv420p", path.to_str().unwrap()]].concat(),
    );
    path
}

/// A stream split into segments while the daemon was idle keeps going when clicks keep arriving
/// on its decoders (its lanes yield to them at frame boundaries and are resubmitted from where
/// they stopped), and the clicks are answered all along. The clicks pause between them: under
/// clicks that never pause, a stream gets a frame per decoder every `stream_max_wait_s`, by
/// design (`a_stream_under_a_steady_interactive_load_still_gets_its_frames`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segmented_stream_and_clicks_on_its_decoders_both_progress() {
    let d = start_with(|c| {
        c.decoder.max_total = 2;
        c.decoder.max_per_video = 2;
        c.decoder.interactive_reserve = 0;
        // Segments of two GOPs (160x90 frames), so most of them start while the clicks run.
        c.limits.inflight_bytes = framesrv::units::ByteSize::mib(20);
    })
    .await;
    let path = gops_video(&d.media);
    let mut streamer = d.client().await;
    let mut request = batch("gops.mp4", range(0, 0, 1));
    request.output = Some(pb::OutputSpec { max_width: 160, ..Default::default() });
    let mut s = streamer.request_frames(request).await.unwrap().into_inner();
    let first = s.message().await.unwrap().unwrap();
    let before = d.store.stats().stream_segments;
    let load = SteadyLoad::on(&d, "gops.mp4", std::time::Duration::from_millis(100)).await;
    let (rest, still_loaded) = load
        .around(std::time::Duration::from_secs(60), async {
            let mut out = vec![first.index];
            while let Some(f) = s.message().await.unwrap() {
                out.push(f.index);
            }
            out
        })
        .await;
    let indices = rest.expect("the segmented stream starved behind the clicks");
    assert!(still_loaded, "the load stopped first (a click failed, or the test proves nothing)");
    if std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
        assert!(before >= 2, "split when the stream started");
        assert!(d.store.stats().stream_segments > before, "segments started while the clicks ran");
    }
    assert_eq!(indices, (0..900).collect::<Vec<i64>>());
    let mut c = d.client().await;
    let f = c.request_frame(by_index("gops.mp4", 899)).await.unwrap().into_inner();
    assert!(f.data == reference_frame(&path, 899));
    d.stop().await;
}

/// Frame `n` of the ffmpeg CLI's sequential decode of a video, as rgb24.
fn reference_frame(path: &Path, n: usize) -> Vec<u8> {
    let select = format!("select=eq(n\\,{n})");
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i", path.to_str().unwrap(), "-vf", &select, "-fps_mode", "passthrough"])
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(out.status.success() && !out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A file without timestamps is served while its decode pass runs: a frame the pass has counted
/// comes before the pass is over, with the sequential decode's pixels, after a seek too (the
/// frames a seek lands on are recognised among the frames counted so far), and so does a batch
/// of frames counted from the start; the info asked `while_indexing` describes those frames.
/// What needs the whole index (a frame counted from the end, a frame past the end) waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_a_file_being_indexed_are_served_as_its_pass_counts_them() {
    let d = start_with(|c| c.state_dir = "none".into()).await;
    // 1800 frames, a keyframe every 60: long enough a pass that its first frames come well
    // before its end, with seek points to land on.
    let raw = raw_camera(&d.media.join("camera.h264"), "640x360", 60, 60);
    let mut c = d.client().await;
    let first = c.request_frame(by_index("camera.h264", 5)).await.unwrap().into_inner();
    assert_eq!(d.store.stats().videos_indexing, 1, "frame 5 waited for the whole decode pass");
    // Asked while it is indexed, the info describes the frames counted so far.
    let so_far = pb::GetVideoInfoRequest { video: "camera.h264".into(), while_indexing: true };
    let info = c.get_video_info(so_far.clone()).await.unwrap().into_inner();
    assert!(info.indexing && (6..1800).contains(&info.frame_count), "{info:?}");
    assert_eq!((info.width, info.height, info.frame_identity.as_str()), (640, 360, "count"));
    // A batch counted from the start, as a data loader asks: the same.
    let list = pb::frames_request::Selection::Indices(pb::IndexList { indices: vec![8, 61, 7] });
    let mut stream = c.request_frames(batch("camera.h264", list)).await.unwrap().into_inner();
    let mut got = vec![first];
    while let Some(frame) = stream.message().await.unwrap() {
        got.push(frame);
    }
    assert_eq!(d.store.stats().videos_indexing, 1, "the batch waited for the whole decode pass");
    let wanted = [5, 8, 61, 7, 400, 399, 1000, 1799];
    for &i in &wanted[4..] {
        got.push(c.request_frame(by_index("camera.h264", i as i64)).await.unwrap().into_inner());
    }
    let mut sorted = wanted.to_vec();
    sorted.sort_unstable();
    let reference = reference_frames_at(&raw, &sorted, 640 * 360 * 3);
    for (i, frame) in wanted.iter().zip(&got) {
        assert_eq!(frame.index, *i as i64);
        let at = sorted.binary_search(i).unwrap();
        assert!(frame.data == reference[at], "frame {i} is not the sequential decode's");
    }
    let last = c.request_frame(by_index("camera.h264", -1)).await.unwrap().into_inner();
    assert_eq!(last.index, 1799);
    assert_eq!(d.store.stats().videos_indexing, 0);
    let info = c.get_video_info(so_far).await.unwrap().into_inner();
    assert!(!info.indexing && info.frame_count == 1800, "{info:?}");
    let err = c.request_frame(by_index("camera.h264", 1800)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert_eq!(d.store.stats().videos_indexed, 1);
    d.stop().await;
}

/// While a file without timestamps is indexed, a stream of frames counted from the start (a data
/// loader reading a camera file) goes as the pass counts them rather than after the whole pass,
/// with the sequential decode's pixels in order, to the end of the file (a range past it fails
/// there); and a request for a frame near the start is not kept waiting by another's for a frame
/// near the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_a_file_being_indexed_goes_as_its_pass_counts_the_frames() {
    let d = start_with(|c| c.state_dir = "none".into()).await;
    // 3600 frames, a keyframe every 60: a pass of several seconds.
    let raw = raw_camera(&d.media.join("camera.h264"), "640x360", 120, 60);
    let mut c = d.client().await;
    // Frame 3500 asked for by a stream, as the stream below asks: a click would have the pass
    // run at the interactive priority until it is answered, ahead of the stream's decoder.
    let far = tokio::spawn({
        let mut c = c.clone();
        async move {
            let one = pb::frames_request::Selection::Indices(pb::IndexList { indices: vec![3500] });
            c.request_frames(batch("camera.h264", one)).await.unwrap().into_inner().message().await
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !d.store.indexing("camera.h264").is_some_and(|p| p.starts_with("decoding every frame")) {
        assert!(std::time::Instant::now() < deadline, "the pass never started");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let near = c.request_frame(by_index("camera.h264", 20)).await.unwrap().into_inner();
    let so_far = pb::GetVideoInfoRequest { video: "camera.h264".into(), while_indexing: true };
    let info = c.get_video_info(so_far).await.unwrap().into_inner();
    assert!(info.indexing && info.frame_count < 3000, "frame 20 waited for frame 3500: {info:?}");

    // Every tenth frame to the end, started while the pass runs.
    let mut stream = c.request_frames(batch("camera.h264", range(0, 0, 10))).await.unwrap().into_inner();
    let (mut got, mut while_indexing) = (Vec::new(), Vec::new());
    while let Some(frame) = stream.message().await.unwrap() {
        while_indexing.push(d.store.stats().videos_indexing > 0);
        got.push(frame);
    }
    assert!(while_indexing[0], "the stream waited for the whole pass");
    let counted_first = info.frame_count as usize;
    assert!(
        got.iter().zip(&while_indexing).any(|(f, &w)| w && f.index as usize > counted_first + 600),
        "no frame counted after the stream began came before the pass ended"
    );
    let wanted: Vec<usize> = (0..3600).step_by(10).collect();
    assert_eq!(got.iter().map(|f| f.index as usize).collect::<Vec<_>>(), wanted);
    let mut all = wanted.clone();
    all.extend([20, 3500]);
    all.sort_unstable();
    all.dedup();
    let reference = reference_frames_at(&raw, &all, 640 * 360 * 3);
    let of = |i: usize| &reference[all.binary_search(&i).unwrap()];
    for frame in &got {
        assert!(frame.data == *of(frame.index as usize), "frame {} is not the sequential decode's", frame.index);
    }
    assert!(near.data == *of(20), "frame 20 is not the sequential decode's");
    let far = far.await.unwrap().unwrap().unwrap();
    assert!(far.index == 3500 && far.data == *of(3500), "frame 3500 is not the sequential decode's");
    assert_eq!(d.store.stats().videos_indexed, 1);

    // A range past the end of a file being indexed: its frames up to the end, then OUT_OF_RANGE
    // (only the whole index tells where the end is).
    std::fs::copy(&raw, d.media.join("copy.h264")).unwrap();
    let mut stream = c.request_frames(batch("copy.h264", range(0, 3650, 50))).await.unwrap().into_inner();
    let (mut got, mut first_while_indexing) = (Vec::new(), None);
    let err = loop {
        match stream.message().await {
            Ok(Some(frame)) => {
                first_while_indexing.get_or_insert(d.store.stats().videos_indexing > 0);
                got.push(frame);
            }
            Ok(None) => panic!("the stream ended without an error after {} frames", got.len()),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert_eq!(first_while_indexing, Some(true), "the range waited for the whole pass");
    assert_eq!(got.iter().map(|f| f.index as usize).collect::<Vec<_>>(), (0..3600).step_by(50).collect::<Vec<_>>());
    assert!(got.iter().all(|f| f.data == *of(f.index as usize)), "a frame is not the sequential decode's");
    d.stop().await;
}

/// Streams following the decode pass of a file without timestamps are served the frames the
/// pass converts for them as it counts them: the decoders decode (almost) none of them, where a
/// stream of every fifth frame would have them decode every frame beside the pass; each stream
/// in its own output, every frame the sequential decode's, in order, to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_following_a_decode_pass_are_served_the_frames_it_converts() {
    // Room for every frame the streams select (the default keeps 32 MiB for each, and a test
    // client reads more slowly than the pass counts): the room's bound is a unit test's.
    let d = start_with(|c| {
        c.state_dir = "none".into();
        c.limits.inflight_bytes = framesrv::units::ByteSize::mib(1024);
    })
    .await;
    // 1800 frames, a keyframe every 60.
    let raw = raw_camera(&d.media.join("camera.h264"), "640x360", 60, 60);
    // Connected first, so that the three streams come before the pass has shown many frames.
    let clients = [d.client().await, d.client().await, d.client().await];
    let stream = |c: usize, selection, output| {
        let mut request = batch("camera.h264", selection);
        request.output = Some(output);
        streamed(clients[c].clone(), request)
    };
    let output = |pixel_format: pb::PixelFormat, encoding: pb::Encoding| pb::OutputSpec {
        pixel_format: pixel_format as i32,
        encoding: encoding as i32,
        ..Default::default()
    };
    let (rgb, gray, jpeg) = tokio::join!(
        stream(0, range(0, 0, 5), output(pb::PixelFormat::Rgb24, pb::Encoding::Raw)),
        stream(1, range(3, 1500, 7), output(pb::PixelFormat::Gray8, pb::Encoding::Raw)),
        stream(2, range(1, 300, 11), output(pb::PixelFormat::Rgb24, pb::Encoding::Jpeg))
    );
    let decoded = d.store.stats().frames_decoded as usize;
    assert_eq!(d.store.stats().videos_indexed, 1);
    let (every_fifth, every_seventh): (Vec<usize>, Vec<usize>) =
        ((0..1800).step_by(5).collect(), (3..1500).step_by(7).collect());
    assert_eq!(rgb.iter().map(|f| f.index as usize).collect::<Vec<_>>(), every_fifth);
    assert_eq!(gray.iter().map(|f| f.index as usize).collect::<Vec<_>>(), every_seventh);
    assert_eq!(jpeg.iter().map(|f| f.index as usize).collect::<Vec<_>>(), (1..300).step_by(11).collect::<Vec<_>>());
    // Frames the pass showed before the streams came are decoded again; a few, not most.
    assert!(decoded < (every_fifth.len() + every_seventh.len()) / 4, "the decoders decoded {decoded} frames");
    let reference = reference_frames_at(&raw, &every_fifth, 640 * 360 * 3);
    for (frame, want) in rgb.iter().zip(&reference) {
        assert!(frame.data == *want, "rgb24 frame {} is not the sequential decode's", frame.index);
    }
    let reference = reference_frames_at_as(&raw, &every_seventh, "gray", 640 * 360);
    for (frame, want) in gray.iter().zip(&reference) {
        assert!(frame.data == *want, "gray frame {} is not the sequential decode's", frame.index);
    }
    // Asked encoded, encoded (the pass converts to the raw frame the encoder starts from).
    for frame in &jpeg {
        assert!(
            frame.encoding == pb::Encoding::Jpeg as i32 && frame.data.starts_with(&[0xFF, 0xD8]),
            "{}",
            frame.index
        );
    }
    // Each frame described as the whole index describes it (asked in another output after the
    // pass, so decoded afresh): while indexed, exactly but for the duration of the last frame
    // counted at a hand-over, the median interval (its next frame was not counted yet); asked
    // again, from the cache, exactly.
    let mut c = d.client().await;
    let describe = |f: &pb::Frame| (f.index, f.pts, f.time_s, f.key_frame, f.width, f.height);
    let ask = |i: i64, pixel_format| {
        let mut request = by_index("camera.h264", i);
        request.output = Some(output(pixel_format, pb::Encoding::Raw));
        request
    };
    for frame in &rgb {
        let fresh = c.request_frame(ask(frame.index, pb::PixelFormat::Rgba)).await.unwrap().into_inner();
        assert_eq!(describe(frame), describe(&fresh));
        assert!((frame.duration_s - fresh.duration_s).abs() < 1e-9, "frame {}", frame.index);
        let again = c.request_frame(ask(frame.index, pb::PixelFormat::Rgb24)).await.unwrap().into_inner();
        assert!(again.cache_hit && again.data == frame.data, "frame {}", frame.index);
        assert_eq!((describe(&again), again.duration_s), (describe(&fresh), fresh.duration_s));
    }
    d.stop().await;
}

/// A daemon told to stop while a file without timestamps is being indexed stops the decode pass
/// too: the process exits only once its blocking threads are done, and a pass over an hour of
/// video kept it for minutes after it said it had stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_daemon_stops_the_decode_passes_under_way() {
    let d = start_with(|c| c.state_dir = "none".into()).await;
    raw_camera(&d.media.join("big.h264"), "1280x720", 60, 250);
    let store = d.store.clone();
    let opening = tokio::spawn({
        let store = store.clone();
        async move { store.open("big.h264", Class::Interactive).await.map(|_| ()) }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !store.indexing("big.h264").is_some_and(|p| p.starts_with("decoding every frame")) {
        assert!(std::time::Instant::now() < deadline, "the pass never started");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    d.stop().await;
    let err = opening.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(store.stats().videos_indexed, 0, "the pass ran to its end");
}

/// Files without timestamps take turns for their decode passes, and an opening a request waits
/// for goes before those nobody waits for any more: a labelling tool that asked for every file
/// of a folder with a short deadline (their openings go on) and then opens the last one does not
/// wait behind the passes of the others. A pass nobody waits for even pauses to let it go first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opening_somebody_waits_for_takes_the_next_pass_turn() {
    let d = start_with(|c| c.state_dir = "none".into()).await;
    let short = raw_h264(&long_video(&d.media), &d.media.join("short.h264"));
    let bytes = std::fs::read(&short).unwrap();
    // The passes running when the click comes, long ones (four times as long as the others).
    let at_once = framesrv::engine::video::passes_at_once();
    let mut names: Vec<String> = Vec::new();
    for k in 0..at_once {
        let name = format!("running-{k}.h264");
        std::fs::write(d.media.join(&name), bytes.repeat(4)).unwrap();
        names.push(name);
    }
    for name in ["queued-first.h264", "clicked.h264"] {
        std::fs::copy(&short, d.media.join(name)).unwrap();
        names.push(name.into());
    }
    let c = d.client().await;
    let stage = |name: &str| d.store.indexing(name).unwrap_or_default();
    let until = |names: &[String], stage_begins: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let (names, stage_begins) = (names.to_vec(), stage_begins.to_string());
        let stage = &stage;
        async move {
            while !names.iter().all(|n| stage(n).starts_with(&stage_begins)) {
                let stages: Vec<String> = names.iter().map(|n| stage(n)).collect();
                assert!(std::time::Instant::now() < deadline, "{names:?}: {stages:?}");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    // Each file opened by a request that gives up once its opening is under way, in order; the
    // passes that run first have started before the others are asked for.
    for (k, name) in names.iter().enumerate() {
        let request = tokio::spawn({
            let (store, name) = (d.store.clone(), name.clone());
            async move { store.open(&name, Class::Interactive).await.map(|_| ()) }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while stage(name).is_empty() {
            assert!(std::time::Instant::now() < deadline && !request.is_finished(), "{name} never began opening");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        request.abort();
        if k + 1 == at_once {
            until(&names[..at_once], "decoding every frame").await;
        }
    }
    until(&names[at_once..], "waiting").await;
    let click = tokio::spawn({
        let mut c = c.clone();
        async move { c.get_video_info(pb::GetVideoInfoRequest { video: "clicked.h264".into(), ..Default::default() }).await }
    });
    while !stage("clicked.h264").starts_with("decoding every frame") {
        assert!(!click.is_finished(), "the click was answered before its pass was seen");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let queued = stage("queued-first.h264");
    assert!(queued.starts_with("waiting for other files' index passes"), "the file queued first went first: {queued}");
    let running: Vec<String> = names[..at_once].iter().map(|n| stage(n)).collect();
    assert!(running.iter().any(|s| s.contains("paused while a file a request waits for is indexed")), "{running:?}");
    assert_eq!(click.await.unwrap().unwrap().into_inner().frame_count, 900);
    // The paused pass goes on: every file gets indexed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while d.store.stats().videos_indexing > 0 {
        assert!(std::time::Instant::now() < deadline, "a paused pass never resumed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(d.store.stats().videos_indexed, names.len() as u64);
    d.stop().await;
}
