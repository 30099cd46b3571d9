//! A real daemon on loopback over a scratch media root, for the gRPC tests.

use std::path::PathBuf;
use std::sync::Arc;

use framesrv::config::Config;
use framesrv::engine::store::FrameStore;
use framesrv::media_roots::MediaRoots;
use framesrv::proto::v1::frame_server_client::FrameServerClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub struct Daemon {
    pub addr: String,
    pub store: Arc<FrameStore>,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), framesrv::server::ServerError>>,
    /// The scratch directory holding the media root (and whatever else the test put there).
    pub dir: tempfile::TempDir,
    pub media: PathBuf,
}

/// With `FRAMESRV_TEST_LOG` set (a `RUST_LOG`-style filter, e.g. `framesrv::engine=trace`), the
/// daemons of the test binary log to stderr, uncaptured: for chasing a failure that only the
/// whole suite shows. The daemons of all tests running at once share the output.
fn trace_if_asked() {
    if let Ok(filter) = std::env::var("FRAMESRV_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_thread_names(true)
            .try_init();
    }
}

impl Daemon {
    /// Serve `dir`/media (made by the caller), with `configure` applied to the defaults (the
    /// state directory is `dir`/state unless `configure` says otherwise).
    pub async fn start(dir: tempfile::TempDir, configure: impl FnOnce(&mut Config)) -> Daemon {
        trace_if_asked();
        let media = dir.path().join("media");
        let mut config = Config {
            media_roots: vec![media.clone()],
            state_dir: dir.path().join("state").display().to_string(),
            ..Config::default()
        };
        configure(&mut config);
        let store = Arc::new(FrameStore::new(MediaRoots::new(&config.media_roots).unwrap(), config.store_config()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(framesrv::server::run_with_store(listener, config, store.clone(), async move {
            let _ = rx.await;
        }));
        Daemon { addr, store, stop: Some(tx), handle, dir, media }
    }

    pub async fn client(&self) -> FrameServerClient<Channel> {
        FrameServerClient::connect(self.addr.clone()).await.unwrap().max_decoding_message_size(64 << 20)
    }

    /// Wait until the decoders have settled (no frame decoded for 150 ms): speculative work such
    /// as the backtrack fill has finished.
    pub async fn settle(&self) {
        let mut last = u64::MAX;
        loop {
            let now = self.store.stats().frames_decoded;
            if now == last {
                return;
            }
            last = now;
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        }
    }

    /// Ask the daemon to shut down (SIGTERM's path) without waiting for it.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shut down and wait until the server has finished cleanly.
    pub async fn stop(mut self) {
        self.signal_stop();
        self.handle.await.unwrap().unwrap();
    }
}
