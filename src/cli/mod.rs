//! The `framesrv` command line: `serve` runs the daemon; `info`, `ls`, `get`, `stats`,
//! `hashes`, `dups`, `storyboard` and `clip` are a client of a running daemon. The benchmarks
//! are a binary of their own, `framesrv-bench` (`bench/`).

pub mod client;
pub mod jobs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use tonic::transport::{Channel, Endpoint};

use crate::config::Config;
use crate::proto::v1::frame_server_client::FrameServerClient;
use crate::units::ByteSize;

#[derive(Debug, Parser)]
#[command(name = "framesrv", version, about = "Decoded video frames by index or by time, frame-exactly, over gRPC")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Show what the index says about a video.
    Info {
        video: String,
        /// While a file without timestamps is being indexed, show what its decode pass has
        /// counted so far rather than wait for the whole index.
        #[arg(long)]
        while_indexing: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List the videos under the daemon's media roots.
    Ls {
        #[arg(default_value = "")]
        prefix: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Fetch one frame into a file.
    Get(client::GetArgs),
    /// Show the daemon's cache and decoder counters.
    Stats {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print every frame's aHash and dHash (and MD5) as tab-separated lines.
    Hashes(jobs::HashesArgs),
    /// Find repeated frames and loops in a video (or between two).
    Dups(jobs::DupsArgs),
    /// Write a storyboard (a grid of thumbnails) as JPEG and print where each tile is.
    Storyboard(jobs::StoryboardArgs),
    /// Export a range of frames as MP4 (H.264) or lossless MKV (FFV1).
    Clip(jobs::ClipArgs),
    /// Make a random bearer token and the line `auth.tokens_file` needs for it.
    Token,
}

#[derive(Debug, Clone, Args)]
pub struct ServerArg {
    /// The daemon's address.
    #[arg(long, env = "FRAMESRV_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (see config/framesrv.toml). Without it, defaults apply.
    #[arg(long, env = "FRAMESRV_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on, like 127.0.0.1:50051.
    #[arg(long, env = "FRAMESRV_LISTEN")]
    pub listen: Option<String>,
    /// A media root; repeat for several. Replaces the config file's list.
    #[arg(long = "media-root", env = "FRAMESRV_MEDIA_ROOT", value_delimiter = ':')]
    pub media_roots: Vec<PathBuf>,
    /// Cache bound, like 512MiB or 2GiB.
    #[arg(long, env = "FRAMESRV_CACHE_SIZE")]
    pub cache_size: Option<ByteSize>,
    /// Log filter, like info or framesrv=debug (RUST_LOG wins).
    #[arg(long, env = "FRAMESRV_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Where frame hashes are kept across restarts ("none": memory only).
    #[arg(long, env = "FRAMESRV_STATE_DIR")]
    pub state_dir: Option<String>,
    /// The name answered in the x-framesrv-replica header (default: the listen address).
    #[arg(long, env = "FRAMESRV_REPLICA_NAME")]
    pub replica_name: Option<String>,
    /// Log lines as `text` or `json` (one object per line, for log pipelines).
    #[arg(long, env = "FRAMESRV_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
}

impl ServeArgs {
    /// The config file (or defaults) with flags and environment applied on top.
    pub fn config(&self) -> Result<Config, crate::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path, true)?,
            None => Config::default(),
        };
        if let Some(listen) = &self.listen {
            config.listen = listen.clone();
        }
        if !self.media_roots.is_empty() {
            config.media_roots = self.media_roots.clone();
        }
        if let Some(size) = self.cache_size {
            config.cache_size = size;
        }
        if let Some(level) = &self.log_level {
            config.log_level = level.clone();
        }
        if let Some(dir) = &self.state_dir {
            config.state_dir = dir.clone();
        }
        if let Some(name) = &self.replica_name {
            config.replica_name = name.clone();
        }
        if let Some(format) = &self.log_format {
            config.log_format = format.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

/// Connect to a daemon with HTTP/2 settings sized for frame messages of several megabytes:
/// large flow-control windows and frames, so a 1080p frame does not wait for window updates.
/// An `https://` address uses TLS: the server's certificate is checked against
/// `FRAMESRV_CA_CERT` (a PEM file) or else the public web roots, and `FRAMESRV_CLIENT_CERT` /
/// `FRAMESRV_CLIENT_KEY` give a client certificate for mutual TLS.
pub async fn connect(server: &str) -> Result<FrameServerClient<Channel>, String> {
    let mut endpoint =
        Endpoint::from_shared(server.to_string()).map_err(|e| format!("invalid server address {server:?}: {e}"))?;
    if server.starts_with("https://") {
        endpoint = endpoint.tls_config(client_tls()?).map_err(|e| format!("TLS for {server}: {e}"))?;
    }
    let endpoint = endpoint
        .tcp_nodelay(true)
        .initial_stream_window_size(32 << 20)
        .initial_connection_window_size(64 << 20)
        .max_frame_size(1 << 20);
    let channel = endpoint.connect().await.map_err(|e| format!("cannot connect to {server}: {e}"))?;
    Ok(FrameServerClient::new(channel).max_decoding_message_size(256 << 20))
}

fn client_tls() -> Result<tonic::transport::ClientTlsConfig, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |var: &str| -> Result<Option<Vec<u8>>, String> {
        match std::env::var(var).ok().filter(|p| !p.is_empty()) {
            None => Ok(None),
            Some(path) => std::fs::read(&path).map(Some).map_err(|e| format!("{var} {path}: {e}")),
        }
    };
    let mut tls = ClientTlsConfig::new();
    tls = match read("FRAMESRV_CA_CERT")? {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
        None => tls.with_webpki_roots(),
    };
    if let (Some(cert), Some(key)) = (read("FRAMESRV_CLIENT_CERT")?, read("FRAMESRV_CLIENT_KEY")?) {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(tls)
}

/// Log to stderr at `level` (or `RUST_LOG`), as text or JSON lines.
pub fn init_tracing(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("framesrv: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config.log_level, config.log_format == "json");
    disable_huge_pages();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("framesrv: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&config.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %config.listen, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        match crate::server::run(listener, config, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "framesrv stopped with an error");
                ExitCode::FAILURE
            }
        }
    });
    // Blocking work still running (a conversion, a file read) gets a moment to end; dropping the
    // runtime would wait for it however long it takes.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

/// Transparent huge pages off for the daemon. The cache frees and allocates frames of megabytes
/// all the time, and the allocator asks for huge pages: the pages a freed frame leaves partly
/// used stay resident whole. Under the 64-client load of `bench compare` (256 MiB cache) the
/// daemon's RSS sat at 450-465 MiB with them and 390-415 MiB without, peaks 485-511 against
/// 441-453. Frame buffers are recycled (`engine::buffers`), so small pages' extra faults are rare.
fn disable_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "transparent huge pages stay as the system has them");
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        other => client::run(other),
    }
}
