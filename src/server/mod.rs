//! The daemon: the gRPC service plus health and reflection, on a listener the caller bound,
//! until a shutdown future resolves.
//!
//! Taking a bound listener and a shutdown future (rather than an address and signals) is what
//! lets the integration tests run the real server on `127.0.0.1:0` and stop it at will.

pub mod service;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::engine::store::FrameStore;
use crate::media_roots::MediaRoots;
use crate::proto::v1::frame_server_server::FrameServerServer;
use crate::proto::FILE_DESCRIPTOR_SET;
use service::FrameService;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error("reflection setup failed: {0}")]
    Reflection(String),
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serve until `shutdown` resolves, then stop accepting, let in-flight requests finish for at
/// most the configured grace period, and return.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let roots = MediaRoots::new(&config.media_roots).map_err(ServerError::Config)?;
    let store = Arc::new(FrameStore::new(roots, config.store_config()));
    run_with_store(listener, config, store, shutdown).await
}

/// [`run`] with a store the caller made (tests inspect its counters).
pub async fn run_with_store(
    listener: TcpListener,
    config: Config,
    store: Arc<FrameStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let max_message = config.limits.max_message_size.0.min(usize::MAX as u64) as usize;
    let in_flight = service::InFlight::default();
    let frames = FrameServerServer::new(FrameService::new(store.clone(), config.limits.clone(), in_flight.clone()))
        .max_decoding_message_size(4 << 20)
        .max_encoding_message_size(max_message);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FrameServerServer<FrameService>>().await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    let addr = listener.local_addr().ok();
    tracing::info!(?addr, roots = ?config.media_roots, cache = %config.cache_size, "framesrv serving");

    // Small responses must not wait for Nagle's algorithm (40 ms with delayed ACKs): with a
    // caller-bound listener tonic leaves TCP_NODELAY to us.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)));
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signal = stopping.clone();
    let grace = config.shutdown_grace();
    let serve = tonic::transport::Server::builder()
        .timeout(config.request_timeout())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(frames)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight requests");
            health.set_not_serving::<FrameServerServer<FrameService>>().await;
            signal.notify_one();
            // Let every request and stream hand over its last frame before connections close
            // (closing right after a stream's end can cut what the client has not read yet),
            // then give clients a moment to read it.
            if tokio::time::timeout(grace, in_flight.idle()).await.is_err() {
                tracing::warn!(grace_s = grace.as_secs_f64(), "requests still in flight after the grace period");
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        });
    tokio::pin!(serve);
    let result = tokio::select! {
        r = &mut serve => r.map_err(ServerError::from),
        _ = async { stopping.notified().await; tokio::time::sleep(grace + std::time::Duration::from_secs(1)).await } => {
            tracing::warn!(grace_s = grace.as_secs_f64(), "in-flight requests still running after the grace period; exiting anyway");
            Ok(())
        }
    };
    store.close_decoders();
    tracing::info!("stopped");
    result
}
