//! `framesrv-bench load`: a load generator in the spirit of ghz, with access patterns that
//! match framesrv's users (a labelling tool scrubbing back, a data loader pulling random frames,
//! a player reading forward, a popular subset of videos).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use framesrv::proto::v1 as pb;
use framesrv::server::REPLICA_HEADER;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pattern {
    /// Each client reads forward frame by frame from a random start.
    Sequential,
    /// Uniformly random frames of uniformly random videos.
    Random,
    /// A random frame, then the 30 before it, one by one (a labelling tool scrubbing back).
    Backtrack,
    /// Videos and frames drawn from Zipf distributions: a few are hot, most are cold.
    Zipf,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// Clients sending one request at a time each.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Total requests (unless --duration is given).
    #[arg(long, default_value_t = 1000)]
    pub requests: u64,
    /// Run for this many seconds instead of a request count.
    #[arg(long)]
    pub duration: Option<f64>,
    #[arg(long, value_enum, default_value = "random")]
    pub pattern: Pattern,
    /// Comma-separated video names.
    #[arg(long, value_delimiter = ',', required = true)]
    pub videos: Vec<String>,
    /// Fit frames inside WxH (like 640x360); native size by default.
    #[arg(long)]
    pub max_size: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Frames before each target a cold decode keeps cached (server default when unset).
    #[arg(long)]
    pub keep_behind: Option<u32>,
    /// Extra clients that stream whole videos (raw, native size) and read one frame a second,
    /// each on its own connection, while the load runs: what slow readers cost the server.
    #[arg(long, default_value_t = 0)]
    pub slow_readers: usize,
}

/// What a load run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub requests: u64,
    pub errors: u64,
    pub cache_hits: u64,
    pub elapsed: Duration,
    /// Sorted latencies of successful requests.
    pub latencies: Vec<Duration>,
    pub first_error: Option<String>,
    /// Requests answered per replica (by its `x-framesrv-replica` header) and video: what a
    /// load balancer in front did with each video.
    pub served: BTreeMap<String, BTreeMap<String, u64>>,
}

impl LoadReport {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }

    pub fn print(&self, title: &str) {
        println!("{title}");
        println!("  requests     {} in {:.2}s = {:.1} req/s", self.requests, self.elapsed.as_secs_f64(), self.rps());
        println!(
            "  errors       {}{}",
            self.errors,
            self.first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default()
        );
        println!("  cache hits   {}", self.cache_hits);
        println!(
            "  latency      p50 {}  p90 {}  p99 {}  max {}",
            ms(self.percentile(0.5)),
            ms(self.percentile(0.9)),
            ms(self.percentile(0.99)),
            ms(self.latencies.last().copied().unwrap_or_default())
        );
        if self.served.len() > 1 {
            println!("  replicas     (requests: videos)");
            for (replica, videos) in &self.served {
                let total: u64 = videos.values().sum();
                let names: Vec<&str> = videos.keys().map(String::as_str).collect();
                println!("    {replica}: {total} requests, {} videos: {}", videos.len(), names.join(" "));
            }
            let split: Vec<&String> = self
                .served
                .values()
                .flat_map(|v| v.keys())
                .fold(BTreeMap::<&String, usize>::new(), |mut m, v| {
                    *m.entry(v).or_default() += 1;
                    m
                })
                .into_iter()
                .filter(|(_, n)| *n > 1)
                .map(|(v, _)| v)
                .collect();
            println!("  videos served by more than one replica: {}", split.len());
        }
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1000.0)
}

/// The p-th percentile (0..=1) of sorted durations, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Draws ranks 0..n with P(k) proportional to 1/(k+1)^s, by inverting the cumulative table.
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        let cumulative = (0..n.max(1))
            .map(|k| {
                acc += 1.0 / ((k + 1) as f64).powf(s);
                acc
            })
            .collect();
        Zipf { cumulative }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let total = *self.cumulative.last().unwrap_or(&1.0);
        let x = rng.random::<f64>() * total;
        self.cumulative.partition_point(|c| *c < x).min(self.cumulative.len() - 1)
    }
}

/// One client's sequence of (video, index) targets.
struct Walker {
    pattern: Pattern,
    counts: Vec<i64>,
    rng: StdRng,
    video_zipf: Zipf,
    frame_zipf: Vec<Zipf>,
    /// Zipf ranks map to frames through a fixed shuffle, so hot frames are spread out.
    frame_perm: Vec<Vec<i64>>,
    current: (usize, i64),
    left_in_run: u32,
}

impl Walker {
    fn new(pattern: Pattern, counts: Vec<i64>, seed: u64, perm_seed: u64) -> Walker {
        let mut perm_rng = StdRng::seed_from_u64(perm_seed);
        let frame_perm = counts
            .iter()
            .map(|&n| {
                let mut p: Vec<i64> = (0..n).collect();
                for i in (1..p.len()).rev() {
                    let j = perm_rng.random_range(0..=i);
                    p.swap(i, j);
                }
                p
            })
            .collect();
        Walker {
            pattern,
            video_zipf: Zipf::new(counts.len(), 1.0),
            frame_zipf: counts.iter().map(|&n| Zipf::new(n as usize, 1.1)).collect(),
            frame_perm,
            counts,
            rng: StdRng::seed_from_u64(seed),
            current: (0, 0),
            left_in_run: 0,
        }
    }

    fn next(&mut self) -> (usize, i64) {
        let v = self.rng.random_range(0..self.counts.len());
        match self.pattern {
            Pattern::Random => (v, self.rng.random_range(0..self.counts[v])),
            Pattern::Zipf => {
                let v = self.video_zipf.sample(&mut self.rng);
                let rank = self.frame_zipf[v].sample(&mut self.rng);
                (v, self.frame_perm[v][rank])
            }
            Pattern::Sequential => {
                let (cv, ci) = self.current;
                if self.left_in_run == 0 || ci + 1 >= self.counts[cv] {
                    self.left_in_run = 300;
                    self.current = (v, self.rng.random_range(0..self.counts[v]));
                } else {
                    self.left_in_run -= 1;
                    self.current = (cv, ci + 1);
                }
                self.current
            }
            Pattern::Backtrack => {
                let (cv, ci) = self.current;
                if self.left_in_run == 0 || ci == 0 {
                    self.left_in_run = 30;
                    self.current = (v, self.rng.random_range(0..self.counts[v]));
                } else {
                    self.left_in_run -= 1;
                    self.current = (cv, ci - 1);
                }
                self.current
            }
        }
    }
}

fn parse_size(s: &Option<String>) -> Result<(u32, u32), String> {
    match s {
        None => Ok((0, 0)),
        Some(s) => {
            let (w, h) = s.split_once('x').ok_or_else(|| format!("--max-size {s:?}: expected WxH"))?;
            Ok((w.parse().map_err(|_| "bad width".to_string())?, h.parse().map_err(|_| "bad height".to_string())?))
        }
    }
}

/// Run a load test and return what it measured.
pub async fn run_load(args: &LoadArgs) -> Result<LoadReport, String> {
    let client = framesrv::cli::connect(&args.server).await?;
    let mut counts = Vec::new();
    for v in &args.videos {
        let info = client
            .clone()
            .get_video_info(pb::GetVideoInfoRequest { video: v.clone(), ..Default::default() })
            .await
            .map_err(|s| format!("{v}: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        counts.push(info.frame_count);
    }
    let (max_width, max_height) = parse_size(&args.max_size)?;
    let output = pb::OutputSpec { max_width, max_height, ..Default::default() };
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let limit = if args.duration.is_some() { u64::MAX } else { args.requests };
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        match args.duration {
            Some(d) => indicatif::ProgressBar::new((d * 10.0) as u64),
            None => indicatif::ProgressBar::new(limit),
        }
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut slow = Vec::new();
    for k in 0..args.slow_readers {
        let mut client = framesrv::cli::connect(&args.server).await?;
        let video = args.videos[k % args.videos.len()].clone();
        let stop = stop.clone();
        slow.push(tokio::spawn(async move {
            let video_name = video.clone();
            let request = pb::FramesRequest {
                video,
                selection: Some(pb::frames_request::Selection::Range(pb::IndexRange { start: 0, stop: 0, step: 1 })),
                output: None,
            };
            let request = framesrv::cli::client::for_video(request, &video_name);
            let Ok(response) = client.request_frames(request).await else { return };
            let mut frames = response.into_inner();
            while !stop.load(Ordering::Relaxed) {
                match frames.message().await {
                    Ok(Some(_)) => tokio::time::sleep(Duration::from_secs(1)).await,
                    _ => return,
                }
            }
        }));
    }
    let mut tasks = Vec::new();
    for c in 0..args.concurrency {
        let mut client = client.clone();
        let mut walker = Walker::new(args.pattern, counts.clone(), args.seed * 1000 + c as u64, args.seed);
        let videos = args.videos.clone();
        let sent = sent.clone();
        let stop = stop.clone();
        let bar = bar.clone();
        let timed = args.duration.is_some();
        let keep_behind = args.keep_behind;
        tasks.push(tokio::spawn(async move {
            let mut report = LoadReport::default();
            while !stop.load(Ordering::Relaxed) {
                if sent.fetch_add(1, Ordering::Relaxed) >= limit {
                    break;
                }
                let (v, index) = walker.next();
                let request = pb::FrameRequest {
                    video: videos[v].clone(),
                    target: Some(pb::frame_request::Target::Index(index)),
                    output: Some(output),
                    clamp: false,
                    keep_behind,
                };
                let request = framesrv::cli::client::for_video(request, &videos[v]);
                let t = Instant::now();
                let result = client.request_frame(request).await;
                let took = t.elapsed();
                report.requests += 1;
                match result {
                    Ok(frame) => {
                        report.latencies.push(took);
                        if let Some(replica) = frame.metadata().get(REPLICA_HEADER).and_then(|v| v.to_str().ok()) {
                            *report
                                .served
                                .entry(replica.to_string())
                                .or_default()
                                .entry(videos[v].clone())
                                .or_default() += 1;
                        }
                        report.cache_hits += frame.into_inner().cache_hit as u64;
                    }
                    Err(s) => {
                        report.errors += 1;
                        report.first_error.get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                    }
                }
                if !timed {
                    bar.inc(1);
                }
            }
            report
        }));
    }
    if let Some(d) = args.duration {
        let end = started + Duration::from_secs_f64(d);
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(100)).await;
            bar.set_position((started.elapsed().as_secs_f64() * 10.0) as u64);
            bar.set_message(format!("{} requests", sent.load(Ordering::Relaxed)));
        }
        stop.store(true, Ordering::Relaxed);
    }
    let mut total = LoadReport::default();
    for t in tasks {
        let r = t.await.map_err(|e| e.to_string())?;
        total.requests += r.requests;
        total.errors += r.errors;
        total.cache_hits += r.cache_hits;
        total.latencies.extend(r.latencies);
        for (replica, videos) in r.served {
            let mine = total.served.entry(replica).or_default();
            for (video, n) in videos {
                *mine.entry(video).or_default() += n;
            }
        }
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    total.elapsed = started.elapsed();
    total.latencies.sort();
    stop.store(true, Ordering::Relaxed);
    for s in slow {
        s.abort();
    }
    bar.finish_and_clear();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn zipf_prefers_low_ranks() {
        let z = Zipf::new(100, 1.1);
        let mut rng = StdRng::seed_from_u64(7);
        let mut hist = [0u32; 100];
        for _ in 0..10_000 {
            hist[z.sample(&mut rng)] += 1;
        }
        assert!(hist[0] > hist[1] && hist[1] > hist[10] && hist[10] > hist[90]);
    }

    #[test]
    fn walkers_stay_in_range_and_backtrack_steps_back() {
        let mut w = Walker::new(Pattern::Backtrack, vec![50, 80], 1, 1);
        let (v0, i0) = w.next();
        let (v1, i1) = w.next();
        assert_eq!(v0, v1);
        assert!(i0 == 0 || i1 == i0 - 1);
        for p in [Pattern::Random, Pattern::Zipf, Pattern::Sequential, Pattern::Backtrack] {
            let mut w = Walker::new(p, vec![50, 80], 3, 1);
            for _ in 0..1000 {
                let (v, i) = w.next();
                assert!(i >= 0 && i < [50, 80][v]);
            }
        }
    }
}
