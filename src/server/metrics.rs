//! `GET /metrics`: what an operator scrapes, in the Prometheus/OpenMetrics text format.
//!
//! Two kinds of figures. Requests are counted and timed by one middleware around every route,
//! gRPC and HTTP alike ([`track`]): by method or route, by the code they were answered with (a
//! stream by the code it started with) and, for latency, by the priority class their decode work
//! runs at. Everything the engine already counts (cache, decoders, queues, decodes, seeks, index
//! builds, bytes in flight) is read from [`FrameStore::stats`] at scrape time by a collector, so
//! the engine knows nothing of Prometheus and no figure is kept twice.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::engine::store::FrameStore;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// `grpc` or `http`.
    protocol: &'static str,
    /// The gRPC method (`RequestFrame`) or the HTTP route (`/v1/videos/{video}/frames/{index}`).
    method: String,
    /// The gRPC code's name, or the HTTP status.
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ClassLabels, Histogram>,
}

impl Metrics {
    pub fn new(store: Arc<FrameStore>) -> Metrics {
        let mut registry = Registry::with_prefix("framesrv");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered, by protocol, method or route, and code", requests.clone());
        let latency = Family::<ClassLabels, Histogram>::new_with_constructor(|| {
            // 0.5 ms to ~65 s.
            Histogram::new(exponential_buckets(0.0005, 2.0, 18))
        });
        registry.register(
            "request_duration_seconds",
            "Time to answer a request (to the first message of a stream), by the priority class of its work",
            latency.clone(),
        );
        registry.register_collector(Box::new(EngineCollector(store)));
        Metrics { registry, requests, latency }
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    fn observe(&self, protocol: &'static str, method: String, code: String, class: &'static str, seconds: f64) {
        self.requests.get_or_create(&RequestLabels { protocol, method, code }).inc();
        self.latency.get_or_create(&ClassLabels { class }).observe(seconds);
    }
}

/// The gRPC methods this daemon serves, the only ones counted by name (any other path would
/// let a client grow the label set without bound).
const GRPC_METHODS: [&str; 14] = [
    "/framesrv.v1.FrameServer/GetVideoInfo",
    "/framesrv.v1.FrameServer/ListVideos",
    "/framesrv.v1.FrameServer/RequestFrame",
    "/framesrv.v1.FrameServer/RequestFrames",
    "/framesrv.v1.FrameServer/GetStats",
    "/framesrv.v1.FrameServer/GetFrameHashes",
    "/framesrv.v1.FrameServer/FindDuplicates",
    "/framesrv.v1.FrameServer/RequestKeyframes",
    "/framesrv.v1.FrameServer/GetStoryboard",
    "/framesrv.v1.FrameServer/ExportClip",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The priority class a request's decode work runs at (`control` for requests that decode
/// nothing).
pub fn class_of(method: &str) -> &'static str {
    match method.rsplit('/').next().unwrap_or("") {
        "RequestFrame" | "{index}" | "{seconds}" => "interactive",
        "RequestFrames" | "RequestKeyframes" => "stream",
        "GetFrameHashes" | "FindDuplicates" | "GetStoryboard" | "ExportClip" | "storyboard" => "bulk",
        _ => "control",
    }
}

/// Count and time one request, whatever route or service answers it.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let grpc = crate::server::is_grpc(request.headers());
    let path = request.uri().path().to_string();
    let matched = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    if grpc {
        let method = match GRPC_METHODS.iter().find(|m| **m == path) {
            Some(m) => m.rsplit('/').next().unwrap_or("").to_string(),
            None => "other".to_string(),
        };
        // Errors before the first message come as headers (trailers-only responses); an answer
        // that started carries its code in the trailers, after this has returned.
        let code = match response.headers().get("grpc-status").and_then(|v| v.to_str().ok()) {
            Some(n) => crate::error::code_name(tonic::Code::from(n.parse::<i32>().unwrap_or(2))).to_string(),
            None => "OK".to_string(),
        };
        let class = class_of(&method);
        metrics.observe("grpc", method, code, class, seconds);
    } else {
        let route = http_route(matched.as_deref(), &path);
        let class = class_of(&route);
        metrics.observe("http", route, response.status().as_u16().to_string(), class, seconds);
    }
    response
}

/// A bounded name for an HTTP request's route: the wildcard video routes by their kind.
fn http_route(matched: Option<&str>, path: &str) -> String {
    match matched {
        Some("/v1/videos/{*rest}") => {
            match crate::server::http::VideoRoute::parse(path.trim_start_matches("/v1/videos/")) {
                Ok(crate::server::http::VideoRoute::Frame(..)) => "/v1/videos/{video}/frames/{index}",
                Ok(crate::server::http::VideoRoute::At(..)) => "/v1/videos/{video}/at/{seconds}",
                Ok(crate::server::http::VideoRoute::Storyboard(..)) => "/v1/videos/{video}/storyboard",
                _ => "/v1/videos/{video}",
            }
            .to_string()
        }
        Some(m) => m.to_string(),
        None => "other".to_string(),
    }
}

/// The engine's own counters, read at scrape time.
struct EngineCollector(Arc<FrameStore>);

impl std::fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineCollector")
    }
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        let mut counter = |name: &str, help: &str, value: u64| -> Result<(), std::fmt::Error> {
            ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
        };
        counter("cache_hits", "Frame requests answered from the cache", s.cache.hits)?;
        counter("cache_misses", "Frame requests the cache could not answer", s.cache.misses)?;
        counter("cache_evictions", "Frames evicted from the cache to stay within its bound", s.cache.evictions)?;
        counter(
            "cache_rejected",
            "Frames not cached: larger than the cache, or used less often than what they would evict",
            s.cache.rejected,
        )?;
        counter("frames_decoded", "Frames decoded", s.frames_decoded)?;
        counter("seeks", "Decoder seeks", s.seeks)?;
        counter("index_builds", "Indexes built (a demux or decode pass over a file)", s.videos_indexed)?;
        counter("index_loads", "Indexes read back from the state directory instead of built", s.index_loads)?;
        counter("decodes_abandoned", "Decodes never started because every requester had gone", s.abandoned)?;
        counter("decodes_preempted", "Decodes handed back to make room for more urgent work", s.preempted)?;
        counter(
            "requests_joined",
            "Frame requests that waited on a decode of the same frame already under way (also cache misses)",
            s.joined,
        )?;
        counter("stream_segments", "Segments of streams decoded on parallel decoders", s.stream_segments)?;
        counter("panics", "Panics caught in decoder threads, index builds and encoders (bugs; each logged)", s.panics)?;
        let seconds = encoder.encode_descriptor(
            "index_build_seconds",
            "Time spent building indexes",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.index_build_s).encode(seconds)?;
        let mut gauge = |name: &str, help: &str, value: f64| -> Result<(), std::fmt::Error> {
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
        };
        gauge("cache_bytes", "Bytes of frames in the cache", s.cache.bytes as f64)?;
        gauge("cache_capacity_bytes", "The cache's bound in bytes", s.cache.capacity as f64)?;
        gauge("cache_entries", "Frames in the cache", s.cache.entries as f64)?;
        gauge("decoders_open", "Decoders open", s.open_decoders as f64)?;
        gauge(
            "videos_indexing",
            "Videos being opened (index read or built) that requests wait for",
            s.videos_indexing as f64,
        )?;
        gauge("decoders_busy", "Decoders running interactive, stream or bulk work", s.decoders_busy as f64)?;
        gauge("decode_queue_depth", "Decode jobs queued on all decoders", s.queued_jobs as f64)?;
        gauge("inflight_bytes", "Bytes of frames handed to responses and not yet sent", s.inflight_bytes as f64)?;
        gauge("process_resident_memory_bytes", "Resident set size of the daemon", resident_bytes() as f64)?;
        Ok(())
    }
}

/// The process's resident set size, from `/proc/self/status` (0 where there is none).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_the_class_their_work_runs_at() {
        assert_eq!(class_of("RequestFrame"), "interactive");
        assert_eq!(class_of("/v1/videos/{video}/frames/{index}"), "interactive");
        assert_eq!(class_of("/v1/videos/{video}/at/{seconds}"), "interactive");
        assert_eq!(class_of("RequestFrames"), "stream");
        assert_eq!(class_of("GetFrameHashes"), "bulk");
        assert_eq!(class_of("GetVideoInfo"), "control");
        assert_eq!(class_of("/metrics"), "control");
    }

    #[test]
    fn http_routes_have_bounded_names() {
        let r = |p: &str| http_route(Some("/v1/videos/{*rest}"), p);
        assert_eq!(r("/v1/videos/a/b.mp4/frames/3"), "/v1/videos/{video}/frames/{index}");
        assert_eq!(r("/v1/videos/a/b.mp4/at/1.5"), "/v1/videos/{video}/at/{seconds}");
        assert_eq!(r("/v1/videos/a/b.mp4"), "/v1/videos/{video}");
        assert_eq!(http_route(None, "/nope"), "other");
        assert_eq!(http_route(Some("/metrics"), "/metrics"), "/metrics");
    }
}
