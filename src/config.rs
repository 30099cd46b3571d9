//! The daemon's configuration: one typed struct, loaded once at start and passed down.
//!
//! Precedence, highest first: command-line flags, `FRAMESRV_*` environment variables (clap
//! reads both for the flags that have them), the config file, the defaults below. A missing
//! default config file means defaults; a config file named explicitly must exist. Unknown keys
//! are errors that name the key, so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::decoder::DecodeOptions;
use crate::engine::pool::PoolConfig;
use crate::engine::store::StoreConfig;
use crate::units::ByteSize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server binds.
    pub listen: String,
    /// Directories clients may read videos from; names are relative to them.
    pub media_roots: Vec<PathBuf>,
    /// Bound on the bytes of cached frames (never exceeded).
    pub cache_size: ByteSize,
    /// tracing filter (`info`, `debug`, `framesrv=debug`); RUST_LOG wins when set.
    pub log_level: String,
    /// Where indexes and computed tables (frame hashes) are kept across restarts, keyed by
    /// each file's identity (`index_dir` is accepted as another name for it). Empty: `$XDG_CACHE_HOME/framesrv`, else `~/.cache/framesrv`; `none`: keep
    /// nothing on disk.
    #[serde(alias = "index_dir")]
    pub state_dir: String,
    /// Bound on what the state directory holds (indexes and hash tables); the least recently
    /// used files go first.
    pub state_max_size: ByteSize,
    /// The name this daemon answers with in the `x-framesrv-replica` header (which replica
    /// served a request behind a load balancer); empty: its listen address.
    pub replica_name: String,
    /// `text` or `json` (one JSON object per line, for log pipelines).
    pub log_format: String,
    pub decoder: DecoderConfig,
    pub limits: LimitsConfig,
    pub http: HttpConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain and private key: set both to serve gRPC and HTTP over TLS only.
    pub cert: String,
    pub key: String,
    /// PEM CA certificates: when set, clients must present a certificate signed by one of them
    /// (mutual TLS).
    pub client_ca: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A file of `sha256:<hex>` lines (`framesrv token` makes them): when set, every request
    /// needs `authorization: Bearer <token>` with one of those tokens.
    pub tokens_file: String,
    /// Paths that pass without a token: gRPC methods (`/grpc.health.v1.Health/Check`) or HTTP
    /// routes (`/metrics`). By default the viewer page (it holds no data), health and readiness.
    pub exempt: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            tokens_file: String::new(),
            exempt: ["/", "/healthz", "/readyz", "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"]
                .map(String::from)
                .to_vec(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve the HTTP routes (frames as URLs, the viewer, /metrics, /healthz, /readyz) on the
    /// gRPC port beside gRPC.
    pub enabled: bool,
    /// `Cache-Control: max-age` of frame URLs that do not name the content key (`?v=`).
    pub max_age_s: u32,
    /// Origins allowed to call the HTTP routes and gRPC-web from a browser page (CORS); empty:
    /// none (same-origin only), `["*"]`: any.
    pub cors_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { enabled: true, max_age_s: 3600, cors_origins: Vec::new() }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DecoderConfig {
    /// Codec threads per decoder; 0 adapts them to load (every core for a decoder working
    /// alone, one each when several work).
    pub threads: usize,
    /// Run interactive, stream, bulk and speculative decode work at decreasing CPU priorities
    /// (per-thread nice values), where the system allows it.
    pub cpu_priorities: bool,
    /// Decoders one video may have, positioned in different places.
    pub max_per_video: usize,
    /// Decoders in total; the least recently used idle one is closed to make room.
    pub max_total: usize,
    /// Decoders beyond `max_total` that only interactive (unary) requests may open.
    pub interactive_reserve: usize,
    /// Requests that may wait on one decoder before new ones get RESOURCE_EXHAUSTED.
    pub max_queue: usize,
    /// Frames before a target cached while decoding up to it (backward steps hit the cache).
    pub keep_behind: u32,
    /// Frames decoded ahead of a client reading frame by frame.
    pub readahead: u32,
    /// Skip decoding non-reference frames too early to be kept.
    pub skip_nonref: bool,
    /// Spare pixel buffers kept for reuse (fresh allocations cost page zeroing).
    pub buffer_pool: ByteSize,
    /// Split a long stream (`RequestFrames`, 32 frames or more over several GOPs) on an idle
    /// daemon into segments of whole GOPs decoded by parallel decoders, delivered in order; the
    /// segments decoded ahead take at most half of `limits.inflight_bytes`.
    pub parallel_streams: bool,
    /// Seconds a stream frame may wait behind interactive work before it is taken as
    /// interactive for one turn (so streams and storyboards progress under any load).
    pub stream_max_wait_s: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Videos whose index stays in memory.
    pub max_open_videos: usize,
    /// Frames one RequestFrames call may ask for.
    pub max_batch_frames: usize,
    /// Largest max_width / max_height a client may ask for.
    pub max_output_dimension: u32,
    /// Frames decoded ahead of the one being sent in a stream.
    pub batch_lookahead: usize,
    /// Longest a unary request may take before DEADLINE_EXCEEDED.
    pub request_timeout_s: f64,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace_s: f64,
    /// After SIGTERM, how long new requests are still accepted (readiness already failing)
    /// before the drain: long enough for a load balancer to take the replica out of rotation.
    pub shutdown_delay_s: f64,
    /// Largest frame message sent (bytes); a 4K RGBA frame is 33 MB.
    pub max_message_size: ByteSize,
    /// Largest `keep_behind` a request may ask for.
    pub max_keep_behind: u32,
    /// Bytes of frames handed to responses and not yet taken by the transport (slow readers,
    /// stream look-ahead); past it new work waits. 0: unbounded.
    pub inflight_bytes: ByteSize,
    /// Frames one ExportClip call may encode.
    pub max_clip_frames: usize,
    /// Tiles one GetStoryboard call may ask for.
    pub max_storyboard_tiles: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:50051".into(),
            media_roots: vec![PathBuf::from("./media")],
            cache_size: ByteSize::mib(512),
            log_level: "info".into(),
            replica_name: String::new(),
            log_format: "text".into(),
            state_dir: String::new(),
            state_max_size: ByteSize::mib(2048),
            decoder: DecoderConfig::default(),
            limits: LimitsConfig::default(),
            http: HttpConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            threads: 0,
            cpu_priorities: true,
            max_per_video: 3,
            max_total: 4,
            interactive_reserve: 1,
            max_queue: 256,
            keep_behind: 32,
            readahead: 8,
            skip_nonref: true,
            buffer_pool: ByteSize::mib(16),
            parallel_streams: true,
            stream_max_wait_s: 2.0,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_open_videos: 256,
            max_batch_frames: 100_000,
            max_output_dimension: 16_384,
            batch_lookahead: 8,
            request_timeout_s: 60.0,
            shutdown_grace_s: 10.0,
            shutdown_delay_s: 0.0,
            max_message_size: ByteSize::mib(64),
            max_keep_behind: 300,
            inflight_bytes: ByteSize::mib(128),
            max_clip_frames: 3000,
            max_storyboard_tiles: 1000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The longest timeout or grace period a config may set, in seconds.
const MAX_SECONDS: f64 = 86_400.0;

impl Config {
    /// Load `path`. With `required == false` a missing file means defaults.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message }),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read { path: path.to_path_buf(), source }),
        }
    }

    /// Parse a config file's text; an error names the line it is on and shows it.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count();
                let shown = text.lines().nth(line).unwrap_or("").trim();
                format!("line {}: `{shown}`: {}", line + 1, e.message())
            }
            None => e.message().to_string(),
        })
    }

    /// Reject values that make no sense, before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.media_roots.is_empty() {
            return bad("media_roots is empty");
        }
        if self.decoder.max_per_video == 0 || self.decoder.max_total == 0 {
            return bad("decoder.max_per_video and decoder.max_total must be at least 1");
        }
        if self.decoder.threads > 64 {
            return bad("decoder.threads must be 0 (adaptive) or 1..=64");
        }
        // Up to a day: a NaN, an infinity or 1e300 would panic where they become durations,
        // and no request or shutdown sensibly waits longer (the config fuzz target found it).
        let seconds = |v: f64| (0.0..=MAX_SECONDS).contains(&v);
        let l = &self.limits;
        let timeouts_ok = seconds(l.request_timeout_s)
            && l.request_timeout_s > 0.0
            && seconds(l.shutdown_grace_s)
            && seconds(l.shutdown_delay_s)
            && seconds(self.decoder.stream_max_wait_s);
        if !timeouts_ok {
            return bad(
                "limits.request_timeout_s must be positive, limits.shutdown_grace_s, limits.shutdown_delay_s and decoder.stream_max_wait_s not negative, all at most 86400 (a day)",
            );
        }
        if self.tls.cert.is_empty() != self.tls.key.is_empty() {
            return bad("tls.cert and tls.key go together: set both (TLS) or neither");
        }
        if !self.tls.client_ca.is_empty() && self.tls.cert.is_empty() {
            return bad("tls.client_ca needs tls.cert and tls.key (mutual TLS is TLS)");
        }
        if self.log_format != "text" && self.log_format != "json" {
            return bad("log_format must be \"text\" or \"json\"");
        }
        if self.limits.batch_lookahead == 0 {
            return bad("limits.batch_lookahead must be at least 1");
        }
        Ok(())
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            cache_size: self.cache_size,
            max_open_videos: self.limits.max_open_videos,
            batch_lookahead: self.limits.batch_lookahead,
            parallel_streams: self.decoder.parallel_streams,
            buffer_pool: self.decoder.buffer_pool,
            decoder_wait: self.request_timeout(),
            inflight: self.limits.inflight_bytes,
            state_dir: self.state_dir(),
            state_max_bytes: self.state_max_size.0,
            pool: PoolConfig {
                max_per_video: self.decoder.max_per_video,
                max_total: self.decoder.max_total,
                interactive_reserve: self.decoder.interactive_reserve,
                max_queue: self.decoder.max_queue,
                readahead: self.decoder.readahead,
                threads: self.decoder.threads,
                cpu_priorities: self.decoder.cpu_priorities,
                stream_max_wait: Duration::from_secs_f64(self.decoder.stream_max_wait_s),
                decode: DecodeOptions {
                    threads: self.decoder.threads.max(1),
                    keep_behind: self.decoder.keep_behind,
                    skip_nonref: self.decoder.skip_nonref,
                    continue_slack: 4,
                },
            },
        }
    }

    /// The state directory `state_dir` names (see there), or `None` for none.
    pub fn state_dir(&self) -> Option<PathBuf> {
        match self.state_dir.as_str() {
            "none" => None,
            "" => std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
                .map(|d| d.join("framesrv")),
            dir => Some(PathBuf::from(dir)),
        }
    }

    /// `replica_name`, or the listen address when it is empty.
    pub fn replica_name(&self) -> String {
        if self.replica_name.is_empty() {
            self.listen.clone()
        } else {
            self.replica_name.clone()
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.limits.request_timeout_s)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.limits.shutdown_grace_s)
    }

    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_secs_f64(self.limits.shutdown_delay_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_file_is_the_defaults() {
        let text = include_str!("../config/framesrv.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let err = Config::parse("cache_sise = \"1GiB\"").unwrap_err();
        assert!(err.contains("cache_sise"), "{err}");
        let err = Config::parse("[decoder]\nthreds = 2").unwrap_err();
        assert!(err.contains("threds"), "{err}");
    }

    #[test]
    fn a_wrong_type_names_the_line_it_is_on() {
        let err = Config::parse("cache_size = \"1GiB\"\n[http]\nenabled = \"yes\"\n").unwrap_err();
        assert!(err.starts_with("line 3: `enabled = \"yes\"`"), "{err}");
    }

    #[test]
    fn sizes_and_partial_sections_parse() {
        let c = Config::parse("cache_size = \"2GiB\"\n[decoder]\nthreads = 2").unwrap();
        assert_eq!(c.cache_size, ByteSize(2 << 30));
        assert_eq!(c.decoder.threads, 2);
        assert_eq!(c.decoder.max_total, DecoderConfig::default().max_total);
    }

    #[test]
    fn timeouts_that_cannot_be_durations_are_refused_not_a_panic() {
        for value in ["inf", "nan", "1e300", "-1.0", "86401"] {
            let c = Config::parse(&format!("[limits]\nrequest_timeout_s = {value}")).unwrap();
            assert!(matches!(c.validate(), Err(ConfigError::Invalid(_))), "{value}");
            let c = Config::parse(&format!("[limits]\nshutdown_grace_s = {value}")).unwrap();
            assert!(matches!(c.validate(), Err(ConfigError::Invalid(_))), "{value}");
        }
        let c = Config::parse("[limits]\nrequest_timeout_s = 0.5\nshutdown_delay_s = 0").unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn a_missing_optional_file_means_defaults_and_a_missing_named_one_is_an_error() {
        let missing = Path::new("/nonexistent/framesrv.toml");
        assert_eq!(Config::load(missing, false).unwrap(), Config::default());
        assert!(matches!(Config::load(missing, true), Err(ConfigError::Read { .. })));
    }
}
