//! The gRPC server's gate: every call, Raft or Admin, passes [`AuthLayer`] before any service sees
//! it. The layer reads the caller's credentials (the client certificate TLS verified, else the bearer
//! token), asks [`lbfleet_api::auth::authorize`] what the method needs, and either refuses the call
//! with `unauthenticated` / `permission_denied` naming what is missing, or passes it on with the
//! caller's [`Principal`] in the request's extensions ([`principal`]), from which handlers take a
//! node's identity (health votes, load reports, forwarded proposals).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use lbfleet_api::auth::{authorize, bearer, node_id_from_cert, Credentials, Denied, Principal, TokenSet};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// Wraps the gRPC routes with [`Auth`].
#[derive(Clone)]
pub struct AuthLayer {
    tokens: Arc<TokenSet>,
}

impl AuthLayer {
    pub fn new(tokens: Arc<TokenSet>) -> Self {
        AuthLayer { tokens }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, tokens: Arc::clone(&self.tokens) }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Arc<TokenSet>,
}

/// What the caller presented.
fn credentials<B>(request: &http::Request<B>, tokens: &TokenSet) -> Credentials {
    let certs = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.peer_certs());
    if let Some(leaf) = certs.as_deref().and_then(|c| c.first()) {
        return Credentials::NodeCert(node_id_from_cert(leaf.as_ref()));
    }
    match request.headers().get(http::header::AUTHORIZATION) {
        None => Credentials::None,
        Some(value) => {
            Credentials::Token(value.to_str().ok().and_then(bearer).and_then(|t| tokens.verify(t)))
        }
    }
}

/// The gRPC status a refusal is answered with.
pub fn denied_status(denied: &Denied) -> tonic::Status {
    match denied {
        Denied::Unauthenticated(m) => tonic::Status::unauthenticated(m.clone()),
        Denied::PermissionDenied(m) => tonic::Status::permission_denied(m.clone()),
    }
}

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<S::Future, std::future::Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        match authorize(&path, credentials(&request, &self.tokens)) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Either::Left(self.inner.call(request))
            }
            Err(denied) => {
                let remote = request
                    .extensions()
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|i| i.get_ref().remote_addr());
                tracing::info!(method = %path, remote = ?remote, "refused: {}", denied.message());
                Either::Right(std::future::ready(Ok(denied_status(&denied).into_http())))
            }
        }
    }
}

/// The caller [`Auth`] let through (absent only for a service called without the layer, e.g. in a
/// unit test, which is treated as nobody).
pub fn principal<T>(request: &tonic::Request<T>) -> Option<&Principal> {
    request.extensions().get::<Principal>()
}

/// The node calling, or `permission_denied` when the caller is not a node.
pub fn calling_node<T>(request: &tonic::Request<T>) -> Result<lbfleet_api::NodeId, tonic::Status> {
    match principal(request) {
        Some(Principal::Node(id)) => Ok(*id),
        Some(other) => Err(tonic::Status::permission_denied(format!("{other} is not a cluster node"))),
        None => Err(tonic::Status::permission_denied("the caller is not a cluster node")),
    }
}

/// Name of the cookie a browser keeps the token in after `?token=` (HttpOnly, SameSite=Strict).
pub const TOKEN_COOKIE: &str = "lbfleet_token";

/// How an admin HTTP request for a page that needs the read role authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpAuth {
    /// A valid token in the `authorization` header or the cookie.
    Ok,
    /// A valid token in the query (`?token=`): answer with a redirect that sets the cookie and drops
    /// the token from the address bar.
    SetCookie(String),
    /// Nothing presented.
    Missing,
    /// A token that matches no entry.
    Invalid,
}

/// Check an admin HTTP request's token: the `authorization: Bearer` header, else the
/// [`TOKEN_COOKIE`] cookie, else `token=` in `query`. Any role may read.
pub fn http_auth(headers: &http::HeaderMap, query: Option<&str>, tokens: &TokenSet) -> HttpAuth {
    let header = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
    let cookie = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == TOKEN_COOKIE)
        .map(|(_, v)| v);
    if let Some(token) = header.or(cookie) {
        return if tokens.verify(token).is_some() { HttpAuth::Ok } else { HttpAuth::Invalid };
    }
    let from_query = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v);
    match from_query {
        Some(token) if tokens.verify(token).is_some() => HttpAuth::SetCookie(token.to_string()),
        Some(_) => HttpAuth::Invalid,
        None => HttpAuth::Missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_api::auth::{hash_token, Role, TokenEntry};

    fn tokens() -> TokenSet {
        TokenSet {
            tokens: vec![TokenEntry { name: "viewer".into(), role: Role::Read, sha256: hash_token("good") }],
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn http_pages_take_the_token_from_header_cookie_or_query() {
        let t = tokens();
        assert_eq!(http_auth(&headers(&[("authorization", "Bearer good")]), None, &t), HttpAuth::Ok);
        assert_eq!(http_auth(&headers(&[("authorization", "Bearer bad")]), None, &t), HttpAuth::Invalid);
        assert_eq!(http_auth(&headers(&[("cookie", "a=b; lbfleet_token=good")]), None, &t), HttpAuth::Ok);
        assert_eq!(http_auth(&headers(&[]), Some("x=1&token=good"), &t), HttpAuth::SetCookie("good".into()));
        assert_eq!(http_auth(&headers(&[]), Some("token=bad"), &t), HttpAuth::Invalid);
        assert_eq!(http_auth(&headers(&[]), None, &t), HttpAuth::Missing);
        assert_eq!(http_auth(&headers(&[]), Some("x=1"), &t), HttpAuth::Missing);
    }
}
