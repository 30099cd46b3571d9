//! `framesrv-bench compare`: the whole comparison in one command.
//!
//! It generates its clips (1280x720 h264 30 fps with B-frames, GOP 50 and GOP 250), measures
//! the references in the same run (the decode limit of the ffmpeg CLI, a per-request
//! `ffmpeg -ss`, a PyAV seek-and-scan reader in its own venv), then framesrv: the engine
//! in-process, and a real daemon (this binary, `serve`) over loopback gRPC. Each figure is
//! printed with its reference and the ratio the targets are stated in.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::load::{self, ms, percentile, LoadArgs, Pattern};
use framesrv::engine::decoder::{DecodeOptions, FrameDecoder};
use framesrv::engine::output::OutputSpec;
use framesrv::engine::stats::EngineStats;
use framesrv::engine::video::build_index;
use framesrv::proto::v1 as pb;
use framesrv::proto::v1::frame_server_client::FrameServerClient;
use framesrv::units::FrameIndex;

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// A seconds-long pass on tiny clips, so the harness never rots (CI runs it).
    #[arg(long)]
    pub smoke: bool,
    /// Where clips, the PyAV venv and the daemon's media go (reused between runs).
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// framesrv's `decoder.threads` (0: adaptive, its default). The references are measured
    /// both with one codec thread and in their best all-core configuration.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Seconds of the 64-client load test.
    #[arg(long, default_value_t = 60.0)]
    pub load_seconds: f64,
    /// Skip the one-hour 1080p index benchmark (it writes a ~1 GB file).
    #[arg(long)]
    pub skip_hour: bool,
    /// Skip the PyAV reference (no venv, no download).
    #[arg(long)]
    pub skip_pyav: bool,
    /// Only the references and the in-process engine figures (no daemon, no load).
    #[arg(long)]
    pub engine_only: bool,
    /// Run the daemon with `decoder.cpu_priorities = false` (to measure what they cost or gain).
    #[arg(long)]
    pub no_cpu_priorities: bool,
    /// Only these figures (comma-separated): engine, stream, fbf, cold, counted, opening, warm, backtrack,
    /// interactive, python, jobs, load, hour, restart; hour-hashes (the hash pass over the one-hour file,
    /// some 20 minutes) only when named. All the others by default (the references are always
    /// measured).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

impl CompareArgs {
    pub(super) fn wants(&self, figure: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == figure)
    }
}

struct Scale {
    width: u32,
    height: u32,
    seconds: u32,
    fps: u32,
    random_samples: usize,
    cli_samples: usize,
    warm_set: usize,
    load_clients: usize,
}

const FULL: Scale = Scale {
    width: 1280,
    height: 720,
    seconds: 60,
    fps: 30,
    random_samples: 40,
    cli_samples: 12,
    warm_set: 200,
    load_clients: 64,
};
const SMOKE: Scale = Scale {
    width: 320,
    height: 180,
    seconds: 4,
    fps: 30,
    random_samples: 6,
    cli_samples: 3,
    warm_set: 20,
    load_clients: 8,
};

pub(super) struct Clip {
    pub(super) path: PathBuf,
    pub(super) frames: usize,
    pub(super) seconds: f64,
}

/// One line of the results table.
struct Row {
    figure: String,
    value: String,
    reference: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

pub(super) struct Report {
    rows: Vec<Row>,
}

impl Report {
    pub(super) fn add(
        &mut self,
        figure: &str,
        value: String,
        reference: String,
        ratio: Option<f64>,
        target: &str,
        met: Option<bool>,
    ) {
        println!(
            "  {figure}: {value}{}{}",
            if reference.is_empty() { String::new() } else { format!("  (reference {reference})") },
            ratio.map(|r| format!("  ratio {r:.3}")).unwrap_or_default()
        );
        self.rows.push(Row { figure: figure.into(), value, reference, ratio, target: target.into(), met });
    }

    /// A throughput figure against the decode limit, with an optional minimum ratio.
    fn rate(&mut self, figure: &str, fps: f64, limit: f64, at_least: Option<f64>) {
        let ratio = fps / limit;
        let target = at_least.map(|t| format!(">= {t}")).unwrap_or_default();
        self.add(
            figure,
            format!("{fps:.1} fps"),
            format!("{limit:.1} fps"),
            Some(ratio),
            &target,
            at_least.map(|t| ratio >= t),
        );
    }

    fn print_table(&self) {
        println!();
        println!("| figure | framesrv | reference | ratio | target | met |");
        println!("|---|---|---|---|---|---|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.figure,
                r.value,
                r.reference,
                r.ratio.map(|x| format!("{x:.3}")).unwrap_or_default(),
                r.target,
                match r.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                }
            );
        }
    }
}

fn run_quiet(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

pub(super) fn timed(cmd: &mut Command) -> Result<Duration, String> {
    let t = Instant::now();
    run_quiet(cmd)?;
    Ok(t.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    percentile(&v, 0.5)
}

fn make_clip(out: &Path, scale: &Scale, gop: u32) -> Result<Clip, String> {
    let name = format!("clip-{}x{}-{}s-g{}.mp4", scale.width, scale.height, scale.seconds, gop);
    let path = out.join(&name);
    if !path.exists() {
        eprintln!("generating {name}");
        let tmp = out.join(format!("tmp-{name}"));
        run_quiet(
            Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
                .arg(format!("testsrc2=size={}x{}:rate={}", scale.width, scale.height, scale.fps))
                .args(["-t", &scale.seconds.to_string(), "-c:v", "libx264", "-preset", "veryfast", "-bf", "3"])
                .args([
                    "-g",
                    &gop.to_string(),
                    "-keyint_min",
                    &gop.to_string(),
                    "-sc_threshold",
                    "0",
                    "-pix_fmt",
                    "yuv420p",
                ])
                .arg(&tmp),
        )?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
    }
    let frames = (scale.seconds * scale.fps) as usize;
    Ok(Clip { path, frames, seconds: scale.seconds as f64 })
}

/// The decode limit: the ffmpeg CLI decoding the whole clip to rgb24, frames per second.
fn decode_limit(clip: &Clip, threads: usize) -> Result<f64, String> {
    ffmpeg_rate(clip, threads, &["-f", "rawvideo", "-pix_fmt", "rgb24", "-y", "/dev/null"])
}

/// The ffmpeg CLI decoding the whole clip with `threads` threads into `output` (arguments),
/// frames per second, the best of two runs.
pub(super) fn ffmpeg_rate(clip: &Clip, threads: usize, output: &[&str]) -> Result<f64, String> {
    let mut best = Duration::MAX;
    for _ in 0..2 {
        let t = timed(
            Command::new("ffmpeg")
                .args(["-v", "error", "-threads", &threads.to_string(), "-i"])
                .arg(&clip.path)
                .args(output),
        )?;
        best = best.min(t);
    }
    Ok(clip.frames as f64 / best.as_secs_f64())
}

/// What people script today: one `ffmpeg -ss T -i clip -frames:v 1` per frame.
fn ffmpeg_per_request(clip: &Clip, indices: &[usize], fps: f64, threads: usize) -> Result<Duration, String> {
    let mut v = Vec::new();
    for &i in indices {
        let t = format!("{:.6}", i as f64 / fps);
        v.push(timed(
            Command::new("ffmpeg")
                .args(["-v", "error", "-threads", &threads.to_string(), "-ss", &t, "-i"])
                .arg(&clip.path)
                .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-y", "/dev/null"]),
        )?);
    }
    Ok(median(v))
}

/// Python packages of the bench venv: PyAV for the reference reader, grpcio for the Python
/// client figures (the versions the test command pins).
const BENCH_PY_PACKAGES: [&str; 5] =
    ["av>=12,<17", "numpy>=1.26,<3", "grpcio==1.76.0", "grpcio-tools==1.76.0", "protobuf>=6.31,<7"];

/// The bench venv under `out` (created, or completed, on first use): its python.
fn bench_python(out: &Path) -> Result<PathBuf, String> {
    let venv = out.join("pyav-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join(".framesrv-bench");
    let want = BENCH_PY_PACKAGES.join("\n");
    if !python.exists() || std::fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        eprintln!("installing PyAV and grpcio into {}", venv.display());
        if !python.exists() {
            run_quiet(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        run_quiet(
            Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check"])
                .args(BENCH_PY_PACKAGES),
        )?;
        std::fs::write(&stamp, want).map_err(|e| e.to_string())?;
    }
    Ok(python)
}

/// The median of the `latencies_s` a Python script printed as JSON.
fn printed_latencies(text: &str, who: &str) -> Result<Duration, String> {
    let start = text.find('[').ok_or(format!("{who} printed no latencies"))?;
    let end = text.rfind(']').ok_or(format!("{who} printed no latencies"))?;
    let v: Vec<Duration> = text[start + 1..end]
        .split(',')
        .filter_map(|s| s.trim().parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .collect();
    if v.is_empty() {
        return Err(format!("{who} printed no latencies"));
    }
    Ok(median(v))
}

/// A number a Python script printed as JSON (`"key": value`).
fn printed_number(text: &str, key: &str) -> Option<f64> {
    let at = text.find(&format!("\"{key}\":"))? + key.len() + 3;
    text[at..].split([',', '}']).next()?.trim().parse().ok()
}

fn run_python(python: &Path, args: &[&std::ffi::OsStr], who: &str) -> Result<String, String> {
    let output = Command::new(python).args(args).output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!("{who} failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The PyAV reader. `threads`: "1" or "auto" (`thread_type = "AUTO"`).
fn pyav(out: &Path, clip: &Clip, indices: &[usize], threads: &str) -> Result<Duration, String> {
    let python = bench_python(out)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/pyav_reader.py");
    let indices: Vec<std::ffi::OsString> = indices.iter().map(|i| i.to_string().into()).collect();
    let mut args: Vec<&std::ffi::OsStr> = vec![script.as_os_str(), clip.path.as_os_str(), threads.as_ref()];
    args.extend(indices.iter().map(|i| i.as_os_str()));
    printed_latencies(&run_python(&python, &args, "PyAV reader")?, "PyAV reader")
}

/// Python stubs for framesrv.v1, generated from proto/ with grpcio-tools under `out`.
fn python_stubs(out: &Path, python: &Path) -> Result<PathBuf, String> {
    let stubs = out.join("py-stubs");
    std::fs::create_dir_all(&stubs).map_err(|e| e.to_string())?;
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    run_quiet(
        Command::new(python)
            .args(["-m", "grpc_tools.protoc"])
            .arg(format!("-I{}", proto.display()))
            .arg(format!("--python_out={}", stubs.display()))
            .arg(format!("--grpc_python_out={}", stubs.display()))
            .arg(proto.join("framesrv/v1/framesrv.proto")),
    )?;
    for init in ["framesrv/__init__.py", "framesrv/v1/__init__.py"] {
        std::fs::write(stubs.join(init), "").map_err(|e| e.to_string())?;
    }
    Ok(stubs)
}

/// Uniform random indices, none inside the window a previous request scanned through (so that
/// "cold" really means nothing cached).
pub(super) fn cold_indices(frames: usize, count: usize, keep_behind: usize, seed: u64) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out: Vec<usize> = Vec::new();
    let mut tries = 0;
    while out.len() < count && tries < 100_000 {
        tries += 1;
        let i = rng.random_range(0..frames);
        if out.iter().all(|&p| !(i + keep_behind + 1 >= p && i <= p + 1)) {
            out.push(i);
        }
    }
    out
}

struct EngineFigures {
    index_ms_per_minute: f64,
    sequential_fps: f64,
    cold_median: Duration,
    backward_step_median: Duration,
}

fn engine_figures(clip: &Clip, indices: &[usize], threads: usize) -> Result<EngineFigures, String> {
    let mut best = Duration::MAX;
    let mut index = None;
    for _ in 0..3 {
        let t = Instant::now();
        index = Some(build_index(&clip.path, "bench").map_err(|e| e.to_string())?);
        best = best.min(t.elapsed());
    }
    let index = Arc::new(index.ok_or("no index")?);
    let stats = Arc::new(EngineStats::default());
    // The daemon's defaults (config.rs), with the thread count under test.
    let options =
        DecodeOptions { threads: threads.max(1), ..framesrv::config::Config::default().store_config().pool.decode };
    let buffers = framesrv::engine::buffers::BufferPool::new(framesrv::units::ByteSize::mib(64));
    let id = framesrv::engine::video::VideoId::of(clip.path.clone()).map_err(|e| e.to_string())?.0;
    let open = || {
        FrameDecoder::open(&id, "bench", index.clone(), options, stats.clone(), buffers.clone())
            .map_err(|e| e.to_string())
    };
    let spec = OutputSpec::default();
    let mut d = open()?;
    let t = Instant::now();
    for i in 0..index.frame_count() {
        d.frame(FrameIndex(i as u32), &spec, &mut |_| {}).map_err(|e| e.to_string())?;
    }
    let sequential_fps = index.frame_count() as f64 / t.elapsed().as_secs_f64();
    let mut d = open()?;
    let mut cold = Vec::new();
    for &i in indices {
        let t = Instant::now();
        d.frame(FrameIndex(i as u32), &spec, &mut |_| {}).map_err(|e| e.to_string())?;
        cold.push(t.elapsed());
    }
    let mut back = Vec::new();
    for &i in indices.iter().filter(|&&i| i > 0).take(10) {
        d.frame(FrameIndex(i as u32), &spec, &mut |_| {}).map_err(|e| e.to_string())?;
        let t = Instant::now();
        d.frame(FrameIndex(i as u32 - 1), &spec, &mut |_| {}).map_err(|e| e.to_string())?;
        back.push(t.elapsed());
    }
    Ok(EngineFigures {
        index_ms_per_minute: best.as_secs_f64() * 1000.0 / (clip.seconds / 60.0),
        sequential_fps,
        cold_median: median(cold),
        backward_step_median: median(back),
    })
}

type Client = FrameServerClient<tonic::transport::Channel>;

/// The `framesrv` binary the harness starts: `FRAMESRV_BIN`, else the one built beside this one
/// (cargo puts both workspace binaries in the same target directory).
fn daemon_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("FRAMESRV_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    me.ancestors().skip(1).take(2).map(|dir| dir.join("framesrv")).find(|candidate| candidate.is_file()).ok_or_else(
        || format!("no framesrv binary beside {}: cargo build --release (or set FRAMESRV_BIN)", me.display()),
    )
}

/// The daemon as a child process, killed and reaped when dropped.
pub(super) struct DaemonProcess {
    child: Child,
    url: String,
}

impl DaemonProcess {
    /// `decoder`: more `[decoder]` lines of its config.
    fn start(
        media: &Path,
        cache: &str,
        threads: usize,
        priorities: bool,
        decoder: &str,
    ) -> Result<DaemonProcess, String> {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let exe = daemon_binary()?;
        let config = media.join("..").join(format!("bench-{threads}.toml"));
        let state = media.join("..").join("state");
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\n[decoder]\nthreads = {threads}\ncpu_priorities = {priorities}\n{decoder}\n",
                state.display().to_string()
            ),
        )
        .map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--cache-size", cache, "--log-level", "warn"])
            .arg("--config")
            .arg(&config)
            .arg("--media-root")
            .arg(media)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok(DaemonProcess { child, url: format!("http://127.0.0.1:{port}") })
    }

    async fn client(&self) -> Result<Client, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match framesrv::cli::connect(&self.url).await {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() > deadline => return Err(format!("daemon did not start: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Peak resident memory of the daemon so far (VmHWM), in bytes.
    fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

/// Measure on a daemon of its own, so no figure profits from another's cache; the daemon is
/// stopped when `measure` is done.
pub(super) fn on_fresh_daemon<T>(
    runtime: &tokio::runtime::Runtime,
    media: &Path,
    cache: &str,
    args: &CompareArgs,
    measure: impl AsyncFnOnce(&DaemonProcess, Client) -> Result<T, String>,
) -> Result<T, String> {
    on_fresh_daemon_with(runtime, media, cache, args, "", measure)
}

/// [`on_fresh_daemon`] with more `[decoder]` config lines.
pub(super) fn on_fresh_daemon_with<T>(
    runtime: &tokio::runtime::Runtime,
    media: &Path,
    cache: &str,
    args: &CompareArgs,
    decoder: &str,
    measure: impl AsyncFnOnce(&DaemonProcess, Client) -> Result<T, String>,
) -> Result<T, String> {
    let daemon = DaemonProcess::start(media, cache, args.threads, !args.no_cpu_priorities, decoder)?;
    runtime.block_on(async {
        let c = daemon.client().await?;
        measure(&daemon, c).await
    })
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn request(video: &str, i: usize, output: Option<pb::OutputSpec>, keep_behind: Option<u32>) -> pb::FrameRequest {
    pb::FrameRequest {
        video: video.into(),
        target: Some(pb::frame_request::Target::Index(i as i64)),
        output,
        clamp: false,
        keep_behind,
    }
}

pub(super) async fn timed_requests(
    c: &mut Client,
    video: &str,
    indices: &[usize],
    output: Option<pb::OutputSpec>,
    keep_behind: Option<u32>,
) -> Result<(Vec<Duration>, usize), String> {
    let mut lat = Vec::new();
    let mut hits = 0;
    for &i in indices {
        let t = Instant::now();
        let f = c
            .request_frame(request(video, i, output, keep_behind))
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        lat.push(t.elapsed());
        hits += f.cache_hit as usize;
    }
    Ok((lat, hits))
}

fn clip_name(clip: &Clip) -> String {
    clip.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Stream frames `start..stop` of a video (0, 0: all of it); returns how many came.
async fn stream_range(c: &mut Client, video: &str, start: i64, stop: i64) -> Result<usize, String> {
    stream_range_as(c, video, start, stop, None).await
}

/// [`stream_range`] in the given output.
async fn stream_range_as(
    c: &mut Client,
    video: &str,
    start: i64,
    stop: i64,
    output: Option<pb::OutputSpec>,
) -> Result<usize, String> {
    let req = pb::FramesRequest {
        video: video.into(),
        selection: Some(pb::frames_request::Selection::Range(pb::IndexRange { start, stop, step: 1 })),
        output,
    };
    let mut s = c.request_frames(req).await.map_err(|s| s.message().to_string())?.into_inner();
    let mut n = 0;
    while s.message().await.map_err(|s| s.message().to_string())?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// A file without timestamps, whose frames are counted: the GOP-50 clip's own H.264 stream copied
/// out of its mp4 as a raw `.h264` (what many cameras write). Opening it decodes it whole;
/// a cold frame then seeks by byte and recognises the frames it lands on by their digests. The
/// reference is the same stream in its mp4, in the same run, over the same indices.
fn counted_figures(
    runtime: &tokio::runtime::Runtime,
    media: &Path,
    args: &CompareArgs,
    g50: &Clip,
    indices: &[usize],
    report: &mut Report,
) -> Result<(), String> {
    raw_stream(g50, &media.join("g50.h264"))?;
    let mut medians = Vec::new();
    let mut opened = Vec::new();
    for name in ["g50.mp4", "g50.h264"] {
        on_fresh_daemon(runtime, media, "1GiB", args, async |_, mut c| {
            let t = Instant::now();
            open_checked(&mut c, name.to_string(), g50.frames).await?;
            opened.push(t.elapsed());
            let mut lat = Vec::new();
            for &i in indices {
                lat.extend(timed_requests(&mut c, name, &[i], None, Some(0)).await?.0);
            }
            medians.push(median(lat));
            Ok(())
        })?;
    }
    println!("  opening g50 (index): mp4 by demuxing {}, raw .h264 by decoding {}", ms(opened[0]), ms(opened[1]));
    let r = medians[1].as_secs_f64() / medians[0].as_secs_f64();
    report.add(
        "cold random, raw .h264 (frames counted), keep_behind 0 (median)",
        ms(medians[1]),
        format!("same stream in mp4 {}", ms(medians[0])),
        Some(r),
        "",
        None,
    );
    Ok(())
}

/// Files without timestamps opened together, as a labelling tool listing a folder of camera
/// streams opens them: each is indexed by a decode of the whole file. Fresh copies of the GOP-50
/// clip's raw stream (new files, so no stored index is found), one opened alone first as the
/// reference; then four at once, with cold clicks on the mp4 (already open) while they index,
/// against the same clicks on an idle daemon. Decode passes take turns and run as bulk work, so
/// the first file should open about as fast as one alone and the clicks stay near idle.
fn opening_figures(
    runtime: &tokio::runtime::Runtime,
    media: &Path,
    args: &CompareArgs,
    g50: &Clip,
    indices: &[usize],
    report: &mut Report,
) -> Result<(), String> {
    const FILES: usize = 4;
    let fresh = |name: &str| -> Result<(), String> {
        let path = media.join(name);
        let _ = std::fs::remove_file(&path);
        raw_stream(g50, &path)
    };
    let frames = g50.frames;
    fresh("opening-alone.h264")?;
    for k in 0..FILES {
        fresh(&format!("opening-{k}.h264"))?;
    }
    let (alone, idle, busy, opened) = on_fresh_daemon(runtime, media, "1GiB", args, async |_, mut c| {
        open_checked(&mut c, "g50.mp4".to_string(), frames).await?;
        let t = Instant::now();
        open_checked(&mut c, "opening-alone.h264".to_string(), frames).await?;
        let alone = t.elapsed();
        let mut idle = Vec::new();
        for &i in indices {
            idle.extend(timed_requests(&mut c, "g50.mp4", &[i], None, Some(0)).await?.0);
        }
        let t = Instant::now();
        let opens: Vec<_> = (0..FILES)
            .map(|k| {
                let mut c = c.clone();
                let name = format!("opening-{k}.h264");
                tokio::spawn(async move { open_checked(&mut c, name, frames).await.map(|_| t.elapsed()) })
            })
            .collect();
        // Clicks on other frames than the idle ones (those are cached), while a pass runs.
        let mut busy = Vec::new();
        for &i in indices {
            if opens.iter().all(|o| o.is_finished()) {
                break;
            }
            let i = (i + g50.frames / 2) % g50.frames;
            busy.extend(timed_requests(&mut c, "g50.mp4", &[i], None, Some(0)).await?.0);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut opened = Vec::new();
        for o in opens {
            opened.push(o.await.map_err(|e| e.to_string())??);
        }
        opened.sort();
        Ok((alone, idle, busy, opened))
    })?;
    let (first, all) = (opened[0], opened[FILES - 1]);
    println!("  opening {FILES} raw .h264 at once: {}", opened.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", "));
    let r = first.as_secs_f64() / alone.as_secs_f64();
    report.add(
        &format!("opening {FILES} raw .h264 at once: the first (vs one alone)"),
        ms(first),
        ms(alone),
        Some(r),
        "",
        None,
    );
    let r = all.as_secs_f64() / (FILES as f64 * alone.as_secs_f64());
    report.add(
        &format!("opening {FILES} raw .h264 at once: all of them (vs {FILES}x one alone)"),
        ms(all),
        ms(alone * FILES as u32),
        Some(r),
        "",
        None,
    );
    if busy.len() >= 5 {
        let n = busy.len();
        let (busy, idle) = (median(busy), median(idle));
        let r = busy.as_secs_f64() / idle.as_secs_f64();
        report.add(
            &format!("cold random on an mp4 while they are indexed, keep_behind 0 ({n} clicks, median)"),
            ms(busy),
            format!("idle {}", ms(idle)),
            Some(r),
            "",
            None,
        );
    }
    for name in std::iter::once("opening-alone.h264".to_string()).chain((0..FILES).map(|k| format!("opening-{k}.h264")))
    {
        let _ = std::fs::remove_file(media.join(name));
    }
    Ok(())
}

/// The clip's H.264 stream copied out of its mp4 into `out`, as a raw `.h264` (no timestamps).
fn raw_stream(clip: &Clip, out: &Path) -> Result<(), String> {
    run_quiet(
        Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(&clip.path)
            .args(["-c", "copy", "-f", "h264"])
            .arg(out),
    )
}

/// Open `name` (its first `GetVideoInfo`) and check it has `frames` frames.
async fn open_checked(c: &mut Client, name: String, frames: usize) -> Result<(), String> {
    let info = c.get_video_info(pb::GetVideoInfoRequest { video: name.clone(), ..Default::default() }).await;
    let info = info.map_err(|s| format!("{name}: {}", s.message()))?.into_inner();
    if info.frame_count as usize != frames {
        return Err(format!("{name}: {} frames, not {frames}", info.frame_count));
    }
    Ok(())
}

fn link_media(media: &Path, clip: &Clip, name: &str) -> Result<(), String> {
    let target = media.join(name);
    if !target.exists() {
        std::fs::copy(&clip.path, &target).map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub fn run(runtime: &tokio::runtime::Runtime, args: &CompareArgs) -> Result<(), String> {
    let scale = if args.smoke { &SMOKE } else { &FULL };
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let out = std::fs::canonicalize(&args.out).map_err(|e| e.to_string())?;
    let media = out.join(if args.smoke { "media-smoke" } else { "media" });
    if media.exists() {
        std::fs::remove_dir_all(&media).map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(&media).map_err(|e| e.to_string())?;
    let threads = args.threads;
    let g50 = make_clip(&out, scale, 50)?;
    let g250 = make_clip(&out, scale, 250)?;
    let fps = scale.fps as f64;
    let keep_behind = framesrv::config::DecoderConfig::default().keep_behind as usize;
    let cold250 = cold_indices(g250.frames, scale.random_samples, keep_behind, 250);
    let cold50 = cold_indices(g50.frames, scale.random_samples, keep_behind, 50);
    let mut report = Report { rows: Vec::new() };
    println!(
        "framesrv-bench compare: {}x{} h264 {} fps, {} s, B-frames; framesrv decoder.threads = {} (0: adaptive)",
        scale.width, scale.height, scale.fps, scale.seconds, threads
    );

    println!("references");
    let limit1 = decode_limit(&g50, 1)?;
    let limit = decode_limit(&g50, 0)?;
    println!("  decode limit (ffmpeg CLI to rgb24): {limit1:.1} frames/s one thread, {limit:.1} all cores");
    let cli_indices: Vec<usize> = cold250.iter().copied().take(scale.cli_samples).collect();
    let cli250 = ffmpeg_per_request(&g250, &cli_indices, fps, 0)?;
    println!("  ffmpeg -ss per request, GOP 250: median {}", ms(cli250));
    let pyav_ref = |clip: &Clip, indices: &[usize], threads: &str| -> Option<Duration> {
        if args.skip_pyav {
            return None;
        }
        match pyav(&out, clip, indices, threads) {
            Ok(d) => {
                println!("  PyAV seek + scan ({threads} threads), {}: median {}", clip_name(clip), ms(d));
                Some(d)
            }
            Err(e) => {
                eprintln!("PyAV reference unavailable: {e}");
                None
            }
        }
    };
    let pyav250 = pyav_ref(&g250, &cold250, "1");
    let pyav250_auto = pyav_ref(&g250, &cold250, "auto");
    let pyav50_auto = pyav_ref(&g50, &cold50, "auto");

    if args.wants("engine") || args.engine_only {
        println!("engine (in-process, no cache, one codec thread)");
        let e50 = engine_figures(&g50, &cold50, 1)?;
        let e250 = engine_figures(&g250, &cold250, 1)?;
        report.add(
            "index build per minute of video (720p)",
            format!("{:.0} ms", e50.index_ms_per_minute),
            String::new(),
            None,
            "~1 s per hour",
            None,
        );
        report.rate(
            "engine sequential decode to rgb24, one thread (vs 1-thread limit)",
            e50.sequential_fps,
            limit1,
            None,
        );
        report.add("engine cold random, GOP 50 (median)", ms(e50.cold_median), String::new(), None, "", None);
        report.add(
            "engine cold random, GOP 250 (median)",
            ms(e250.cold_median),
            pyav250.map(|p| format!("PyAV 1 thread {}", ms(p))).unwrap_or_default(),
            pyav250.map(|p| e250.cold_median.as_secs_f64() / p.as_secs_f64()),
            "",
            None,
        );
        report.add(
            "engine backward step in a GOP, no cache (median)",
            ms(e250.backward_step_median),
            String::new(),
            None,
            "",
            None,
        );
    }
    if args.engine_only {
        report.print_table();
        return Ok(());
    }

    println!("daemon over loopback gRPC (decoder.threads = {threads})");
    link_media(&media, &g50, "g50.mp4")?;
    link_media(&media, &g250, "g250.mp4")?;
    if args.wants("stream") {
        on_fresh_daemon(runtime, &media, "512MiB", args, async |_, mut c| {
            // Fill the cache with another clip first (steady state, see below).
            stream_range(&mut c, "g250.mp4", 0, g250.frames.min(400) as i64).await?;
            // Streaming a whole clip.
            let t = Instant::now();
            let n = stream_range(&mut c, "g50.mp4", 0, 0).await?;
            let stream_fps = n as f64 / t.elapsed().as_secs_f64();
            report.rate(
                "sequential streaming (RequestFrames, raw rgb24) vs all-core limit",
                stream_fps,
                limit,
                Some(1.0),
            );
            // The same transport with no decoding at all: frames already in the cache. On a
            // machine where the client shares the cores, this is the ceiling of any stream.
            let n = g50.frames.min(150) as i64;
            stream_range(&mut c, "g50.mp4", 0, n).await?;
            let t = Instant::now();
            let m = stream_range(&mut c, "g50.mp4", 0, n).await?;
            let cached_fps = m as f64 / t.elapsed().as_secs_f64();
            report.rate(
                "streaming cached frames (gRPC and client only, no decode) vs all-core limit",
                cached_fps,
                limit,
                None,
            );
            Ok(())
        })?;
    }
    if args.wants("stream") {
        // A data loader's size: the whole clip fit in 224x224. Its segments fit in the
        // in-flight budget, so an idle daemon splits the stream over parallel decoders; the same
        // stream on one decoder (parallel_streams = false, frame threads on every core) and
        // ffmpeg's all-core decode scaled to the same size are measured beside it.
        let small = pb::OutputSpec { max_width: 224, max_height: 224, ..Default::default() };
        let scale = "scale=224:224:force_original_aspect_ratio=decrease";
        let small_limit =
            ffmpeg_rate(&g50, 0, &["-vf", scale, "-f", "rawvideo", "-pix_fmt", "rgb24", "-y", "/dev/null"])?;
        let mut rates = Vec::new();
        for decoder in ["parallel_streams = true", "parallel_streams = false"] {
            let fps = on_fresh_daemon_with(runtime, &media, "512MiB", args, decoder, async |_, mut c| {
                // Opened (indexed) before the clock starts.
                let info = pb::GetVideoInfoRequest { video: "g50.mp4".into(), ..Default::default() };
                c.get_video_info(info).await.map_err(|s| s.message().to_string())?;
                let t = Instant::now();
                let n = stream_range_as(&mut c, "g50.mp4", 0, 0, Some(small)).await?;
                Ok(n as f64 / t.elapsed().as_secs_f64())
            })?;
            rates.push(fps);
        }
        report.rate(
            "streaming at 224x224, parallel segments vs all-core limit at 224x224",
            rates[0],
            small_limit,
            None,
        );
        report.rate("streaming at 224x224, one decoder vs all-core limit at 224x224", rates[1], small_limit, None);
        report.rate("streaming at 224x224: parallel segments vs one decoder", rates[0], rates[1], None);
    }
    if args.wants("fbf") {
        on_fresh_daemon(runtime, &media, "512MiB", args, async |_, mut c| {
            let all: Vec<usize> = (0..g50.frames).collect();
            let t = Instant::now();
            timed_requests(&mut c, "g50.mp4", &all, None, None).await?;
            let filling = g50.frames as f64 / t.elapsed().as_secs_f64();
            report.rate(
                "sequential frame by frame, fresh daemon (cache filling) vs all-core limit",
                filling,
                limit,
                None,
            );
            // Steady state: the cache is full and pixel buffers are recycled, as in a daemon
            // that has been serving for a while. Read the other clip so nothing is a hit.
            let t = Instant::now();
            timed_requests(&mut c, "g250.mp4", &all, None, None).await?;
            let fbf = g50.frames as f64 / t.elapsed().as_secs_f64();
            report.rate(
                "sequential frame by frame (RequestFrame i, i+1, ...) vs all-core limit",
                fbf,
                limit,
                Some(0.9),
            );
            Ok(())
        })?;
    }
    // Cold random with the request fields a new user sends (none), then as a data loader asks
    // (keep_behind 0), each on a fresh daemon, against PyAV in its best configuration.
    let cold_clips = if args.wants("cold") {
        vec![(&g50, "g50.mp4", &cold50, pyav50_auto), (&g250, "g250.mp4", &cold250, pyav250_auto)]
    } else {
        Vec::new()
    };
    for (clip, name, indices, reference) in cold_clips {
        for keep_behind in [None, Some(0)] {
            on_fresh_daemon(runtime, &media, "1GiB", args, async |_, mut c| {
                let mut lat = Vec::new();
                let mut hits = 0;
                for &i in indices.iter() {
                    let (l, h) = timed_requests(&mut c, name, &[i], None, keep_behind).await?;
                    lat.extend(l);
                    hits += h;
                    // A user clicking around, 150 ms apart (the fill behind a default-fields
                    // answer runs in the pause). Both rows are paced alike, so they differ only
                    // in the fields: sent back to back, `keep_behind 0` measured 10-20% faster
                    // on a 2-vCPU VM than paced, which read as a cost of the default fields.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                let cold = median(lat);
                if hits > 0 {
                    println!("  warning: {hits} of the cold requests were cache hits");
                }
                let fields = if keep_behind.is_none() { "default request fields" } else { "keep_behind 0" };
                let figure = format!("cold random, {}, {fields} (median)", clip_name(clip));
                match reference {
                    Some(p) => {
                        let r = cold.as_secs_f64() / p.as_secs_f64();
                        report.add(&figure, ms(cold), format!("PyAV AUTO {}", ms(p)), Some(r), "<= 0.6", Some(r <= 0.6))
                    }
                    None => report.add(&figure, ms(cold), String::new(), None, "", None),
                }
                if name == "g250.mp4" && keep_behind == Some(0) {
                    if let Some(p) = pyav250 {
                        let r = cold.as_secs_f64() / p.as_secs_f64();
                        report.add(&format!("{figure} vs 1-thread PyAV"), ms(cold), ms(p), Some(r), "", None);
                    }
                    let r = cold.as_secs_f64() / cli250.as_secs_f64();
                    report.add(
                        &format!("{figure} vs ffmpeg -ss"),
                        ms(cold),
                        ms(cli250),
                        Some(r),
                        "<= 0.05",
                        Some(r <= 0.05),
                    );
                }
                Ok(())
            })?;
        }
    }
    if args.wants("counted") {
        counted_figures(runtime, &media, args, &g50, &cold50, &mut report)?;
    }
    if args.wants("opening") {
        opening_figures(runtime, &media, args, &g50, &cold50, &mut report)?;
    }
    // The per-request reference for the figures below: PyAV when it ran, else the ffmpeg CLI.
    let (reference_name, reference) = match pyav250_auto {
        Some(p) => ("PyAV AUTO", p),
        None => ("ffmpeg -ss", cli250),
    };
    if args.wants("warm") {
        on_fresh_daemon(runtime, &media, "1GiB", args, async |_, mut c| {
            // Warm random: a working set that fits the cache, requested again in shuffled order.
            let mut rng = StdRng::seed_from_u64(9);
            let mut set: Vec<usize> = (0..g250.frames).collect();
            set.shuffle(&mut rng);
            set.truncate(scale.warm_set);
            timed_requests(&mut c, "g250.mp4", &set, None, Some(0)).await?;
            set.shuffle(&mut rng);
            let (lat, hits) = timed_requests(&mut c, "g250.mp4", &set, None, Some(0)).await?;
            let warm = median(lat);
            let r = warm.as_secs_f64() / reference.as_secs_f64();
            report.add(
                &format!("warm random, {} frames in cache ({hits} hits)", set.len()),
                ms(warm),
                format!("{reference_name} cold {}", ms(reference)),
                Some(r),
                "<= 0.05",
                Some(r <= 0.05),
            );
            Ok(())
        })?;
    }
    if args.wants("backtrack") {
        on_fresh_daemon(runtime, &media, "1GiB", args, async |_, mut c| {
            // Backtracking at 640x360, stepping back right after the cold answer: the first step
            // waits for the fill to reach it (the fill runs in ascending order, so i-1 is its last
            // frame: that wait is when the window is complete), every later one is a hit.
            let small = Some(pb::OutputSpec { max_width: 640, max_height: 360, ..Default::default() });
            let mut steps = Vec::new();
            let mut complete = Vec::new();
            let mut step_hits = 0;
            let mut rng = StdRng::seed_from_u64(31);
            for _ in 0..5 {
                // Targets at least 31 frames past their keyframe, so the whole window is in the GOP.
                let gop = 250;
                let i = loop {
                    let i = rng.random_range(31..g250.frames);
                    if i % gop >= 31 {
                        break i;
                    }
                };
                let (answer, _) = timed_requests(&mut c, "g250.mp4", &[i], small, None).await?;
                let answered = Instant::now();
                let back: Vec<usize> = (i - 30..i).rev().collect();
                let mut missed = Vec::new();
                for (k, &j) in back.iter().enumerate() {
                    let (lat, hits) = timed_requests(&mut c, "g250.mp4", &[j], small, None).await?;
                    if k == 0 {
                        complete.push(answered.elapsed());
                    } else if hits == 0 {
                        missed.push(j);
                    }
                    steps.extend(lat);
                    step_hits += hits;
                }
                println!(
                    "  backtracking from {i}: answer {}, window complete {} later",
                    ms(answer[0]),
                    ms(*complete.last().unwrap_or(&Duration::ZERO))
                );
                if !missed.is_empty() {
                    println!("  backtracking from {i}: steps {missed:?} after the first missed the cache");
                }
            }
            let total = steps.len();
            let m = median(steps);
            report.add(
                &format!("backtracking i-1..i-30 at 640x360 right after the cold answer ({step_hits}/{total} hits)"),
                ms(m),
                String::new(),
                None,
                "p50 <= 1 ms",
                Some(m <= Duration::from_millis(1)),
            );
            let done = median(complete);
            report.add(
                "backtrack window complete after the cold answer (median)",
                ms(done),
                String::new(),
                None,
                "<= 300 ms",
                Some(done <= Duration::from_millis(300)),
            );
            Ok(())
        })?;
    }
    // An interactive client (random unary requests, 640x360, keep_behind 0) alone, then while
    // four other clients stream whole videos.
    for k in 0..6 {
        link_media(&media, &g50, &format!("inter-{k}.mp4"))?;
    }
    if args.wants("interactive") {
        on_fresh_daemon(runtime, &media, "1GiB", args, async |_, mut c| {
            let small = Some(pb::OutputSpec { max_width: 640, max_height: 360, ..Default::default() });
            let samples = scale.random_samples;
            let idle_targets = cold_indices(g50.frames, samples, 0, 77);
            let (idle, _) = timed_requests(&mut c, "inter-4.mp4", &idle_targets, small, Some(0)).await?;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let streamed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut streams = Vec::new();
            for k in 0..4 {
                let mut sc = c.clone();
                let stop = stop.clone();
                let streamed = streamed.clone();
                streams.push(tokio::spawn(async move {
                    let err = |s: tonic::Status| s.message().to_string();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let req = pb::FramesRequest {
                            video: format!("inter-{k}.mp4"),
                            selection: Some(pb::frames_request::Selection::Range(pb::IndexRange {
                                start: 0,
                                stop: 0,
                                step: 1,
                            })),
                            output: None,
                        };
                        let mut s = sc.request_frames(req).await.map_err(err)?.into_inner();
                        while s.message().await.map_err(err)?.is_some() {
                            streamed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                    Ok::<(), String>(())
                }));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let loaded_targets = cold_indices(g50.frames, samples, 0, 78);
            let t = Instant::now();
            let (loaded, _) = timed_requests(&mut c, "inter-5.mp4", &loaded_targets, small, Some(0)).await?;
            let stream_fps =
                streamed.load(std::sync::atomic::Ordering::Relaxed) as f64 / (t.elapsed().as_secs_f64() + 0.5);
            println!("  interactive under streams: idle {idle:?}\n  loaded {loaded:?}");
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for s in streams {
                s.await.map_err(|e| e.to_string())??;
            }
            let mut idle = idle;
            let mut loaded = loaded;
            idle.sort();
            loaded.sort();
            let (ip90, lp90) = (percentile(&idle, 0.9), percentile(&loaded, 0.9));
            let r = lp90.as_secs_f64() / ip90.as_secs_f64();
            report.add(
                &format!(
                    "interactive random 640x360 under 4 streams: p90 (p50 {} vs idle {}; streams {stream_fps:.0} frames/s)",
                    ms(percentile(&loaded, 0.5)),
                    ms(percentile(&idle, 0.5))
                ),
                ms(lp90),
                format!("idle p90 {}", ms(ip90)),
                Some(r),
                "<= 2.5",
                Some(r <= 2.5),
            );
            Ok(())
        })?;
    }

    // The same daemon through Python's grpcio, as data loaders use it: streaming (each frame an
    // array) and cold random, against the same references.
    if args.wants("python") && !args.skip_pyav {
        link_media(&media, &g250, "g250-python.mp4")?;
        let python_figures = on_fresh_daemon(runtime, &media, "1GiB", args, async |daemon, _| {
            let python = bench_python(&out)?;
            let stubs = python_stubs(&out, &python)?;
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/python_client.py");
            let addr = daemon.url.trim_start_matches("http://").to_string();
            let n = g50.frames.min(150).to_string();
            let base = [script.as_os_str(), addr.as_ref(), stubs.as_os_str()];
            let mut stream_args = base.to_vec();
            stream_args.extend(["g50.mp4", "stream", "0", n.as_str()].map(std::ffi::OsStr::new));
            let text = run_python(&python, &stream_args, "Python client")?;
            let fps = printed_number(&text, "fps").ok_or("the Python client printed no fps")?;
            let cached = printed_number(&text, "cached_fps").ok_or("the Python client printed no fps")?;
            let mut cold = Vec::new();
            // Each pass on a copy of its own, so that the second finds nothing of the first cached.
            for (keep, video) in [("0", "g250.mp4"), ("-1", "g250-python.mp4")] {
                let indices: Vec<String> = cold250.iter().map(|i| i.to_string()).collect();
                let mut random_args = base.to_vec();
                random_args.extend([video, "random", keep].map(std::ffi::OsStr::new));
                random_args.extend(indices.iter().map(std::ffi::OsStr::new));
                cold.push(printed_latencies(&run_python(&python, &random_args, "Python client")?, "Python client")?);
            }
            Ok((fps, cached, cold))
        });
        match python_figures {
            Ok((fps, cached, cold)) => {
                report.rate("Python grpcio: streaming 150 frames to numpy vs all-core limit", fps, limit, None);
                report.rate(
                    "Python grpcio: the same frames again, cached (transport and client only)",
                    cached,
                    limit,
                    None,
                );
                for (c, fields) in cold.iter().zip(["keep_behind 0", "default request fields"]) {
                    let figure = format!("Python grpcio: cold random, GOP 250, {fields} (median)");
                    match pyav250_auto {
                        Some(p) => {
                            let r = c.as_secs_f64() / p.as_secs_f64();
                            report.add(&figure, ms(*c), format!("PyAV AUTO {}", ms(p)), Some(r), "", None)
                        }
                        None => report.add(&figure, ms(*c), String::new(), None, "", None),
                    }
                }
            }
            Err(e) => eprintln!("Python client figures unavailable: {e}"),
        }
    }

    // Load: 8 videos, zipf, many clients, a cache of 256 MiB.
    for k in 0..8 {
        link_media(&media, &g50, &format!("load-{k}.mp4"))?;
    }
    let cache = framesrv::units::ByteSize::mib(256);
    if args.wants("jobs") {
        super::jobs::figures(runtime, args, &mut report, &media, (&g50, "g50.mp4"), "g250.mp4", fps)?;
    }
    if args.wants("load") {
        on_fresh_daemon(runtime, &media, "256MiB", args, async |daemon, mut c| {
            let load_args = LoadArgs {
                server: daemon.url.clone(),
                concurrency: scale.load_clients,
                requests: 0,
                duration: Some(if args.smoke { 3.0 } else { args.load_seconds }),
                pattern: Pattern::Zipf,
                videos: (0..8).map(|k| format!("load-{k}.mp4")).collect(),
                max_size: None,
                seed: 1,
                quiet: true,
                keep_behind: None,
                slow_readers: if args.smoke { 2 } else { 16 },
            };
            let r = load::run_load(&load_args).await?;
            r.print(&format!("  load: zipf, {} clients, 8 videos", scale.load_clients));
            let rss = daemon.peak_rss().unwrap_or(0);
            let bound = cache.0 + 200 * 1024 * 1024;
            report.add(
                &format!(
                    "load: {} clients x 8 videos, zipf, plus {} slow stream readers ({:.0} req/s, p50 {}, p99 {})",
                    scale.load_clients,
                    load_args.slow_readers,
                    r.rps(),
                    ms(r.percentile(0.5)),
                    ms(r.percentile(0.99))
                ),
                format!("{} errors", r.errors),
                String::new(),
                None,
                "0 errors",
                Some(r.errors == 0),
            );
            report.add(
                "load: peak RSS (cache 256 MiB, slow readers included)",
                format!("{:.0} MiB", rss as f64 / 1048576.0),
                format!("{:.0} MiB bound", bound as f64 / 1048576.0),
                Some(rss as f64 / bound as f64),
                "<= 1.0",
                Some(rss <= bound),
            );
            // Time to the first frame of a video nobody opened yet.
            link_media(&media, &g50, "cold-open.mp4")?;
            let t = Instant::now();
            timed_requests(&mut c, "cold-open.mp4", &[0], None, None).await?;
            report.add("time to first frame of a cold 60 s 720p video", ms(t.elapsed()), String::new(), None, "", None);
            Ok(())
        })?;
    }

    if !args.smoke && !args.skip_hour {
        let hour = make_hour(&out)?;
        let size_mb = std::fs::metadata(&hour).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
        // The scan reads the whole file once: first as the page cache has it (possibly from
        // disk), then again with the file cached, which is the demuxing cost alone.
        let mut hour_frames = 0;
        let mut cached_build = Duration::ZERO;
        for pass in ["first scan", "file in page cache"] {
            let t = Instant::now();
            let index = build_index(&hour, "hour").map_err(|e| e.to_string())?;
            hour_frames = index.frame_count();
            let took = t.elapsed();
            cached_build = took;
            let minutes = index.duration_s / 60.0;
            report.add(
                &format!(
                    "index build, one hour of 1080p h264, {size_mb:.0} MB, {} frames ({pass})",
                    index.frame_count()
                ),
                format!("{:.2} s ({:.0} ms per minute)", took.as_secs_f64(), took.as_secs_f64() * 1000.0 / minutes),
                String::new(),
                None,
                "~1 s",
                None,
            );
        }
        link_media(&media, &Clip { path: hour.clone(), frames: 0, seconds: 0.0 }, "hour.mp4").ok();
        if args.wants("hour") {
            on_fresh_daemon(runtime, &media, "256MiB", args, async |_, mut c| {
                let t = Instant::now();
                timed_requests(&mut c, "hour.mp4", &[54_000], None, None).await?;
                report.add(
                    "time to a middle frame of a cold one-hour 1080p video",
                    ms(t.elapsed()),
                    String::new(),
                    None,
                    "",
                    None,
                );
                Ok(())
            })?;
        }
        if args.wants("hour") || args.wants("restart") {
            restart_figure(runtime, args, &mut report, &media, cached_build)?;
        }
        if args.wants("hour") || args.wants("hour-hashes") {
            let clip = Clip { path: hour.clone(), frames: hour_frames, seconds: 3600.0 };
            super::jobs::hour_figures(runtime, args, &mut report, &media, &clip, "hour.mp4")?;
        }
        let _ = std::fs::remove_file(media.join("hour.mp4"));
    }
    report.print_table();
    Ok(())
}

/// The first request after a restart on the one-hour file: a daemon indexes it (and stores the
/// index in the state directory), stops; the next daemon's first `GetVideoInfo` is timed,
/// against the index build of the same file measured in this run (file in page cache).
fn restart_figure(
    runtime: &tokio::runtime::Runtime,
    args: &CompareArgs,
    report: &mut Report,
    media: &Path,
    build: Duration,
) -> Result<(), String> {
    let info = |video: &str| pb::GetVideoInfoRequest { video: video.into(), ..Default::default() };
    on_fresh_daemon(runtime, media, "256MiB", args, async |_, mut c| {
        c.get_video_info(info("hour.mp4")).await.map_err(|e| e.to_string())?;
        Ok(())
    })?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let took = on_fresh_daemon(runtime, media, "256MiB", args, async |_, mut c| {
            let t = Instant::now();
            let r = c.get_video_info(info("hour.mp4")).await.map_err(|e| e.to_string())?;
            let took = t.elapsed();
            if r.into_inner().frame_count == 0 {
                return Err("the restarted daemon reports no frames".into());
            }
            Ok(took)
        })?;
        times.push(took);
    }
    times.sort();
    let median = times[1];
    report.add(
        "first GetVideoInfo after a restart, one-hour 1080p (index read from state_dir; median of 3 restarts)",
        format!("{} (runs {})", ms(median), times.iter().map(|t| ms(*t)).collect::<Vec<_>>().join(", ")),
        format!("{} index build, file in page cache", ms(build)),
        Some(median.as_secs_f64() / build.as_secs_f64()),
        "<= 50 ms",
        Some(median <= Duration::from_millis(50)),
    );
    Ok(())
}

/// One hour of 1080p h264: one minute encoded, then stream-copied 60 times.
fn make_hour(out: &Path) -> Result<PathBuf, String> {
    let hour = out.join("hour-1080p.mp4");
    if hour.exists() {
        return Ok(hour);
    }
    let minute = out.join("minute-1080p.mp4");
    if !minute.exists() {
        eprintln!("generating one minute of 1080p");
        run_quiet(
            Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30", "-t", "60"])
                .args(["-c:v", "libx264", "-preset", "ultrafast", "-bf", "3", "-g", "250", "-pix_fmt", "yuv420p"])
                .arg(&minute),
        )?;
    }
    let list = out.join("hour.txt");
    let line = format!("file '{}'\n", minute.display());
    std::fs::write(&list, line.repeat(60)).map_err(|e| e.to_string())?;
    eprintln!("concatenating one hour of 1080p");
    run_quiet(
        Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "concat", "-safe", "0", "-i"])
            .arg(&list)
            .args(["-c", "copy"])
            .arg(&hour),
    )?;
    Ok(hour)
}
