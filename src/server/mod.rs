//! The daemon: the gRPC service plus health and reflection, and the HTTP routes beside them
//! (frames as URLs, the viewer, health, readiness, metrics), on one listener the caller bound,
//! until a shutdown future resolves.
//!
//! One port serves both protocols: tonic accepts HTTP/1.1 as well as HTTP/2, and every request
//! goes through one axum router in which the gRPC services are routes like the HTTP ones. A
//! gRPC call is recognised by its path (`/framesrv.v1.FrameServer/…`), so operators open one
//! port, put one load balancer in front and health-check the same address they route to.
//! gRPC-web is translated in front of the router, so browsers reach the typed API too.
//!
//! Taking a bound listener and a shutdown future (rather than an address and signals) is what
//! lets the integration tests run the real server on `127.0.0.1:0` and stop it at will.

pub mod auth;
pub mod grpc_frames;
pub mod http;
pub mod metrics;
pub mod service;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::engine::store::FrameStore;
use crate::media_roots::MediaRoots;
use crate::proto::v1::frame_server_server::FrameServerServer;
use crate::proto::FILE_DESCRIPTOR_SET;
use metrics::Metrics;
use service::FrameService;

/// The response header naming the replica that answered (`replica_name`), for clients and load
/// tests behind a load balancer.
pub const REPLICA_HEADER: &str = "x-framesrv-replica";

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
    let service = Arc::new(FrameService::new(store.clone(), config.limits.clone(), in_flight.clone()));
    let frames = FrameServerServer::from_arc(service.clone())
        .max_decoding_message_size(grpc_frames::MAX_REQUEST)
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

    let draining = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::new(store.clone()));
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha).add_service(frames);
    // gRPC-web is translated on the gRPC routes only: tonic-web refuses every other HTTP/1.1
    // request, and the HTTP routes are HTTP/1.1 for most clients.
    // The frame methods in the plain case are answered without copying the pixels (see
    // `grpc_frames`); gRPC-web, compressed and HTTP/1.1 calls go on to tonic.
    let mut router = grpc
        .routes()
        .into_axum_router()
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(axum::middleware::from_fn_with_state(service.clone(), grpc_frames::answer));
    if config.http.enabled {
        router = router.merge(http::router(http::HttpState {
            service: service.clone(),
            metrics: metrics.clone(),
            draining: draining.clone(),
            max_age_s: config.http.max_age_s,
        }));
    }
    let mut router = router.fallback(not_found).layer(axum::middleware::from_fn_with_state(metrics, metrics::track));
    let replica = axum::http::HeaderValue::from_str(&config.replica_name())
        .map_err(|_| ServerError::Config(format!("replica_name {:?} is not a header value", config.replica_name)))?;
    router = router.layer(axum::middleware::map_response(move |mut response: axum::response::Response| {
        response.headers_mut().insert(REPLICA_HEADER, replica.clone());
        async move { response }
    }));
    let secured = !config.auth.tokens_file.is_empty();
    if secured {
        let tokens = auth::Tokens::load(std::path::Path::new(&config.auth.tokens_file), config.auth.exempt.clone())
            .map_err(ServerError::Config)?;
        router = router.layer(axum::middleware::from_fn_with_state(Arc::new(tokens), auth::require));
    }
    // CORS outside the token check: a browser's preflight carries no token.
    if !config.http.cors_origins.is_empty() {
        router = router.layer(cors(&config.http.cors_origins)?);
    }
    let tls = tls_config(&config.tls)?;
    let loopback = listener.local_addr().map(|a| a.ip().is_loopback()).unwrap_or(true);
    if !loopback && (tls.is_none() || !secured) {
        tracing::warn!(
            tls = tls.is_some(),
            tokens = secured,
            "listening beyond loopback without TLS and tokens: anyone who reaches this port can read every video \
             under the media roots (set tls.cert/tls.key and auth.tokens_file)"
        );
    }

    let addr = listener.local_addr().ok();
    tracing::info!(?addr, roots = ?config.media_roots, cache = %config.cache_size, "framesrv serving");

    // Small responses must not wait for Nagle's algorithm (40 ms with delayed ACKs): with a
    // caller-bound listener tonic leaves TCP_NODELAY to us.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)));
    // The signal is watched by a task of its own, so the exit deadline below starts when it
    // fires, whatever the steps of the graceful path (run inside tonic's accept loop) wait for.
    let (stopping, mut begun) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(async move {
        shutdown.await;
        let _ = stopping.send(true);
    });
    let mut deadline = begun.clone();
    let grace = config.shutdown_grace();
    let delay = config.shutdown_delay();
    // No server-wide timeout layer: the service bounds each unary call itself (one place, and
    // its DEADLINE_EXCEEDED reaches HTTP clients as 504 rather than as a gRPC status).
    let mut builder = tonic::transport::Server::builder().accept_http1(true);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| ServerError::Config(format!("tls: {e}")))?;
    }
    let serve =
        builder.add_routes(tonic::service::Routes::from(router)).serve_with_incoming_shutdown(incoming, async move {
            // An error here means the sender is gone without firing: the server is being dropped.
            let _ = begun.wait_for(|b| *b).await;
            tracing::info!("shutting down: draining in-flight requests");
            draining.store(true, Ordering::Relaxed);
            health.set_not_serving::<FrameServerServer<FrameService>>().await;
            // Keep taking requests until load balancers have seen the failing readiness (their
            // health-check interval times the failures they need), so none is sent to a replica
            // that has already closed its connections.
            if !delay.is_zero() {
                tracing::info!(delay_s = delay.as_secs_f64(), "readiness fails; still serving until balancers notice");
                tokio::time::sleep(delay).await;
            }
            // Let every request and stream hand over its last frame before connections close
            // (closing right after a stream's end can cut what the client has not read yet),
            // then give clients a moment to read it.
            if tokio::time::timeout(grace, in_flight.idle()).await.is_err() {
                tracing::warn!(grace_s = grace.as_secs_f64(), "requests still in flight after the grace period");
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            tracing::debug!("closing connections");
        });
    tokio::pin!(serve);
    let result = tokio::select! {
        r = &mut serve => r.map_err(ServerError::from),
        _ = async {
            if deadline.wait_for(|b| *b).await.is_err() {
                return std::future::pending().await;
            }
            tokio::time::sleep(delay + grace + std::time::Duration::from_secs(1)).await
        } => {
            tracing::warn!(grace_s = grace.as_secs_f64(), "in-flight requests still running after the grace period; exiting anyway");
            Ok(())
        }
    };
    watcher.abort();
    store.shut_down();
    tracing::info!("stopped");
    result
}

/// Whether a request is a gRPC call (gRPC-web arrives here translated): such a request is
/// answered with a gRPC status, anything else with HTTP.
pub(crate) fn is_grpc(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"))
}

/// Paths nothing serves: UNIMPLEMENTED for gRPC clients, a JSON 404 for everyone else.
async fn not_found(request: axum::extract::Request) -> axum::response::Response {
    let path = request.uri().path();
    if is_grpc(request.headers()) {
        let status = tonic::Status::unimplemented(format!("no method {path}"));
        return status.into_http();
    }
    http::error_response(tonic::Code::NotFound, &format!("nothing is served at {path}"))
}

/// The TLS settings `tls` asks for (certificate, key, optional client CA), read and checked now.
fn tls_config(tls: &crate::config::TlsConfig) -> Result<Option<tonic::transport::ServerTlsConfig>, ServerError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    if tls.cert.is_empty() {
        return Ok(None);
    }
    let read = |what: &str, path: &str| {
        std::fs::read(path).map_err(|e| ServerError::Config(format!("tls.{what} {path}: cannot read it: {e}")))
    };
    let mut config =
        ServerTlsConfig::new().identity(Identity::from_pem(read("cert", &tls.cert)?, read("key", &tls.key)?));
    if !tls.client_ca.is_empty() {
        config = config.client_ca_root(Certificate::from_pem(read("client_ca", &tls.client_ca)?));
    }
    Ok(Some(config))
}

/// CORS for the origins `http.cors_origins` allows (`*` for any), with the frame headers
/// exposed so that a page on another origin can read a frame's index and time.
fn cors(origins: &[String]) -> Result<tower_http::cors::CorsLayer, ServerError> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let layer = CorsLayer::new().allow_methods(Any).allow_headers(Any).expose_headers(Any);
    if origins.iter().any(|o| o == "*") {
        return Ok(layer.allow_origin(Any));
    }
    let list = origins
        .iter()
        .map(|o| o.parse().map_err(|_| ServerError::Config(format!("http.cors_origins: {o:?} is not an origin"))))
        .collect::<Result<Vec<axum::http::HeaderValue>, _>>()?;
    Ok(layer.allow_origin(AllowOrigin::list(list)))
}
