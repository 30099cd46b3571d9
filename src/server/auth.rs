//! Bearer tokens, for a daemon reachable from a network: `authorization: Bearer <token>` on
//! every gRPC call and HTTP request, checked by one middleware in front of every route.
//!
//! Tokens are kept hashed at rest: the file `auth.tokens_file` holds one `sha256:<hex>` per line
//! (`framesrv token` makes a token and its line), so reading the file does not reveal a token.
//! Paths in `auth.exempt` (by default health and readiness, for load balancers and probes) pass
//! without one. A request without a valid token gets UNAUTHENTICATED (gRPC) or 401 (HTTP).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

pub struct Tokens {
    hashes: HashSet<[u8; 32]>,
    exempt: Vec<String>,
}

/// Shows how many tokens, never their hashes.
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} tokens, exempt {:?})", self.hashes.len(), self.exempt)
    }
}

impl Tokens {
    /// The tokens in `path` (one `sha256:<64 hex digits>` per line; blank lines and `#`
    /// comments allowed; text after the hash on a line is a name for people).
    pub fn load(path: &Path, exempt: Vec<String>) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("auth.tokens_file {}: cannot read it: {e}", path.display()))?;
        Tokens::parse(&text, exempt).map_err(|e| format!("auth.tokens_file {}: {e}", path.display()))
    }

    pub fn parse(text: &str, exempt: Vec<String>) -> Result<Tokens, String> {
        let mut hashes = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let hex = line.split_whitespace().next().unwrap_or("").strip_prefix("sha256:").unwrap_or("");
            let bytes = (hex.len() == 64).then(|| decode_hex(hex)).flatten();
            let Some(bytes) = bytes else {
                return Err(format!(
                    "line {}: expected `sha256:` and 64 hex digits (make one with `framesrv token`)",
                    n + 1
                ));
            };
            hashes.insert(bytes);
        }
        if hashes.is_empty() {
            return Err("no token in it: every request would be refused".into());
        }
        Ok(Tokens { hashes, exempt })
    }

    /// Whether an `authorization` header value carries a known token.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        let token = authorization.and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer ")));
        token.is_some_and(|t| self.hashes.contains(&hash(t.trim())))
    }

    fn exempt(&self, path: &str) -> bool {
        self.exempt.iter().any(|e| e == path)
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The line `auth.tokens_file` holds for `token`.
pub fn token_line(token: &str) -> String {
    let hex: String = hash(token).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The middleware: pass requests with a known token, or to an exempt path; refuse the rest.
pub async fn require(State(tokens): State<Arc<Tokens>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if tokens.exempt(path) || tokens.allows(authorization) {
        return next.run(request).await;
    }
    let message = match authorization {
        None => "this server needs a token: send `authorization: Bearer <token>`",
        Some(_) => "the token is not valid here",
    };
    if crate::server::is_grpc(request.headers()) {
        return tonic::Status::unauthenticated(message).into_http();
    }
    let mut response = crate::server::http::error_response(tonic::Code::Unauthenticated, message);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_tokens_pass_and_the_file_holds_hashes() {
        let line = token_line("s3cret");
        assert!(line.starts_with("sha256:") && !line.contains("s3cret"));
        let tokens = Tokens::parse(&format!("# ops\n{line} alice\n\n"), vec!["/healthz".into()]).unwrap();
        assert!(tokens.allows(Some("Bearer s3cret")));
        assert!(!tokens.allows(Some("Bearer s3cret2")));
        assert!(!tokens.allows(Some("s3cret")));
        assert!(!tokens.allows(None));
        assert!(tokens.exempt("/healthz") && !tokens.exempt("/metrics"));
    }

    #[test]
    fn a_bad_or_empty_file_is_an_error_that_says_why() {
        assert!(Tokens::parse("sha256:abc\n", vec![]).unwrap_err().contains("line 1"));
        assert!(Tokens::parse("s3cret\n", vec![]).unwrap_err().contains("framesrv token"));
        assert!(Tokens::parse("# nothing\n", vec![]).unwrap_err().contains("no token"));
    }
}
