//! The daemon on a network: TLS (with a certificate chain generated here by rcgen), mutual TLS,
//! and bearer tokens, over real gRPC and HTTP on loopback.

mod common;

use std::path::Path;

use common::daemon::Daemon;
use common::*;
use framesrv::proto::v1 as pb;
use framesrv::proto::v1::frame_server_client::FrameServerClient;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    stranger: (String, String),
}

/// A CA, a server certificate for localhost signed by it, a client certificate signed by it, and
/// a client certificate signed by another CA.
fn pki() -> Pki {
    // Distinct names: a leaf named like its issuer looks self-signed to OpenSSL (curl).
    let named = |names: Vec<String>, cn: &str| {
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = named(vec![], "framesrv test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, issuer: &Issuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let cn = names[0].clone();
        let cert = named(names, &cn).signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(vec!["localhost".into()], &issuer);
    let client = leaf(vec!["client".into()], &issuer);
    let other_key = KeyPair::generate().unwrap();
    let mut other_params = named(vec![], "another CA");
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = Issuer::new(other_params, other_key);
    let stranger = leaf(vec!["stranger".into()], &other);
    Pki { ca: ca.pem(), server, client, stranger }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn tls_daemon(pki: &Pki, mutual: bool, tokens: Option<&str>) -> Daemon {
    let dir = scratch();
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    encode(&media.join("a.mp4"), 30, 25, &["-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p"]);
    let d = dir.path().to_path_buf();
    let (cert, key) = (write(&d, "server.pem", &pki.server.0), write(&d, "server.key", &pki.server.1));
    let ca = write(&d, "ca.pem", &pki.ca);
    let tokens_file = tokens.map(|t| write(&d, "tokens", &format!("{}\n", framesrv::server::auth::token_line(t))));
    Daemon::start(dir, |c| {
        c.tls.cert = cert;
        c.tls.key = key;
        if mutual {
            c.tls.client_ca = ca;
        }
        if let Some(f) = tokens_file {
            c.auth.tokens_file = f;
        }
    })
    .await
}

async fn tls_client(
    d: &Daemon,
    pki: &Pki,
    identity: Option<&(String, String)>,
) -> Result<FrameServerClient<tonic::transport::Channel>, tonic::transport::Error> {
    let port = d.addr.rsplit(':').next().unwrap();
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://localhost:{port}"))?.tls_config(tls)?.connect().await?;
    Ok(FrameServerClient::new(channel))
}

fn frame_request(video: &str, token: Option<&str>) -> tonic::Request<pb::FrameRequest> {
    let mut r = tonic::Request::new(pb::FrameRequest {
        video: video.into(),
        target: Some(pb::frame_request::Target::Index(4)),
        ..Default::default()
    });
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_frames_to_clients_that_trust_the_chain_and_refuses_plaintext() {
    let pki = pki();
    let d = tls_daemon(&pki, false, None).await;
    let mut c = tls_client(&d, &pki, None).await.unwrap();
    let frame = c.request_frame(frame_request("a.mp4", None)).await.unwrap().into_inner();
    assert_eq!(frame.index, 4);
    assert_eq!(frame.data, reference_frames(&d.media.join("a.mp4"))[4]);
    // A plaintext client gets no answer from a TLS port.
    let plain = FrameServerClient::connect(d.addr.clone()).await;
    match plain {
        Err(_) => {}
        Ok(mut p) => assert!(p.request_frame(frame_request("a.mp4", None)).await.is_err()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_from_the_configured_ca() {
    let pki = pki();
    let d = tls_daemon(&pki, true, None).await;
    let mut ok = tls_client(&d, &pki, Some(&pki.client)).await.unwrap();
    assert_eq!(ok.request_frame(frame_request("a.mp4", None)).await.unwrap().into_inner().index, 4);
    for identity in [None, Some(&pki.stranger)] {
        let refused = match tls_client(&d, &pki, identity).await {
            Err(_) => true,
            Ok(mut c) => c.request_frame(frame_request("a.mp4", None)).await.is_err(),
        };
        assert!(refused, "a client without a certificate from the CA was served");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_on_grpc_and_http_except_for_health() {
    let pki = pki();
    let d = tls_daemon(&pki, false, Some("open-sesame")).await;
    let mut c = tls_client(&d, &pki, None).await.unwrap();
    let err = c.request_frame(frame_request("a.mp4", None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(err.message().contains("Bearer"), "{}", err.message());
    let err = c.request_frame(frame_request("a.mp4", Some("wrong"))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(c.request_frame(frame_request("a.mp4", Some("open-sesame"))).await.unwrap().into_inner().index, 4);
    // Health stays open for load balancers.
    let port = d.addr.rsplit(':').next().unwrap();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca)).domain_name("localhost");
    let channel =
        Endpoint::from_shared(format!("https://localhost:{port}")).unwrap().tls_config(tls).unwrap().connect().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.unwrap());
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(status.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    // HTTP: 401 with a JSON body and WWW-Authenticate, 200 with the token; /healthz open.
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(d.dir.path().join("ca.pem"))
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let url = format!("https://localhost:{port}/v1/videos/a.mp4/frames/4");
    assert_eq!(curl(&[&url]), "401");
    assert_eq!(curl(&["-H", "Authorization: Bearer open-sesame", &url]), "200");
    assert_eq!(curl(&[&format!("https://localhost:{port}/healthz")]), "200");
    assert_eq!(curl(&[&format!("https://localhost:{port}/metrics")]), "401");
}
