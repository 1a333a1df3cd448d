//! Who may call the admin and publish routes.
//!
//! Admin routes (plugins, `/health/realtime`, `/metrics`) need the configured admin bearer
//! token; without one configured they answer direct loopback callers only (no forwarding
//! headers) and hide from everyone else with a 404. Those loopback callers must not be web
//! pages: a request with an `Origin` or `Sec-Fetch-Site` header, or a `Host` that is not a
//! loopback name (DNS rebinding), is refused with 403, so a page open in the developer's browser
//! cannot publish, upload or read metrics through it. The one exception is the dashboard busbar
//! itself serves: a same-origin request (`Sec-Fetch-Site: same-origin`, a matching `Origin`) to a
//! loopback host. `POST /v1/events` also accepts the publish
//! token. Tokens are compared in constant time.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use super::AppState;
use super::error::ApiError;

/// Extracting this checks that the caller may use admin routes.
pub(super) struct Admin;

/// Extracting this checks that the caller may publish events.
pub(super) struct Publisher;

fn peer(parts: &Parts) -> Result<SocketAddr, ApiError> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .ok_or_else(|| ApiError::Internal("no peer address (serve with connect info)".into()))
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, ApiError> {
        state.access.admin(&parts.headers, peer(parts)?).map(|()| Admin)
    }
}

impl FromRequestParts<AppState> for Publisher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Publisher, ApiError> {
        state.access.publish(&parts.headers, peer(parts)?).map(|()| Publisher)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Access {
    pub admin_token: Option<String>,
    pub publish_token: Option<String>,
}

pub(super) const FORWARDING_HEADERS: [&str; 5] = ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip", "forwarded"];

impl Access {
    pub fn admin(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<(), ApiError> {
        self.check(headers, peer, &[self.admin_token.as_deref()])
    }

    pub fn publish(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<(), ApiError> {
        self.check(headers, peer, &[self.admin_token.as_deref(), self.publish_token.as_deref()])
    }

    fn check(&self, headers: &HeaderMap, peer: SocketAddr, accepted: &[Option<&str>]) -> Result<(), ApiError> {
        let configured: Vec<&str> = accepted.iter().flatten().copied().collect();
        if configured.is_empty() {
            let forwarded = FORWARDING_HEADERS.iter().any(|h| headers.contains_key(*h));
            if !peer.ip().is_loopback() || forwarded {
                return Err(ApiError::Hidden);
            }
            if from_a_browser(headers) && !from_this_origin(headers) {
                return Err(ApiError::Forbidden(
                    "without an admin token these routes refuse browser requests; set BUSBAR_ADMIN_TOKEN".into(),
                ));
            }
            return Ok(());
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        if configured.iter().any(|token| constant_time_eq(token.as_bytes(), presented.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// Whether a request comes from a web page: browsers send `Origin` with cross-origin and
/// state-changing requests and `Sec-Fetch-Site` with every request, and a page that rebinds its
/// own name to 127.0.0.1 still sends its name as `Host`.
fn from_a_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN) || headers.contains_key("sec-fetch-site") || !host_is_loopback(headers)
}

/// Whether a browser request comes from a page this server served (the dashboard), on a
/// loopback host: the browser says `Sec-Fetch-Site: same-origin`, the `Host` is a loopback name
/// (so not a page that rebound its own name to 127.0.0.1), and an `Origin`, if sent, is that host.
fn from_this_origin(headers: &HeaderMap) -> bool {
    let same_site = headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"same-origin");
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let origin_matches = match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => true,
        Some(Ok(origin)) => origin.split_once("://").is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host)),
        Some(Err(_)) => false,
    };
    same_site && host_is_loopback(headers) && origin_matches
}

/// `localhost`, `127.0.0.1`, `[::1]` and the like, with any port. No `Host` (HTTP/1.0) counts
/// as loopback: the peer address has already been checked.
pub(super) fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else { return true };
    let Ok(host) = host.to_str() else { return false };
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> SocketAddr {
        format!("{ip}:5000").parse().unwrap()
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        h
    }

    #[test]
    fn without_a_token_only_direct_loopback_callers_get_in() {
        let access = Access::default();
        assert!(access.admin(&HeaderMap::new(), peer("127.0.0.1")).is_ok());
        assert!(access.admin(&HeaderMap::new(), peer("[::1]")).is_ok());
        assert!(matches!(access.admin(&HeaderMap::new(), peer("10.0.0.1")), Err(ApiError::Hidden)));
        let mut forwarded = HeaderMap::new();
        forwarded.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        assert!(matches!(access.admin(&forwarded, peer("127.0.0.1")), Err(ApiError::Hidden)));
    }

    #[test]
    fn without_a_token_web_pages_on_the_same_machine_are_refused() {
        let access = Access::default();
        let with = |name: &str, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
            h.insert(axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
            h
        };
        for host in ["localhost:8080", "127.0.0.1:8080", "[::1]:8080", "127.0.0.1", "LOCALHOST"] {
            assert!(access.publish(&with("host", host), peer("127.0.0.1")).is_ok(), "{host}");
        }
        for refused in [
            with("origin", "https://evil.example"),
            with("origin", "null"),
            with("sec-fetch-site", "cross-site"),
            with("host", "evil.example:8080"),
            with("host", "127.0.0.1.evil.example"),
        ] {
            assert!(matches!(access.publish(&refused, peer("127.0.0.1")), Err(ApiError::Forbidden(_))), "{refused:?}");
            assert!(matches!(access.admin(&refused, peer("127.0.0.1")), Err(ApiError::Forbidden(_))), "{refused:?}");
        }
        // With a token, a browser request is judged by the token alone (it must carry it).
        let access = Access { admin_token: Some("admin-token-0123456".into()), publish_token: None };
        let mut h = bearer("admin-token-0123456");
        h.insert(header::ORIGIN, "https://ops.example".parse().unwrap());
        assert!(access.admin(&h, peer("10.0.0.1")).is_ok());
    }

    #[test]
    fn without_a_token_the_dashboard_served_here_gets_in_from_loopback_only() {
        let access = Access::default();
        let page = |host: &str, site: &str, origin: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, host.parse().unwrap());
            h.insert("sec-fetch-site", site.parse().unwrap());
            if let Some(origin) = origin {
                h.insert(header::ORIGIN, origin.parse().unwrap());
            }
            h
        };
        assert!(access.admin(&page("127.0.0.1:8080", "same-origin", None), peer("127.0.0.1")).is_ok());
        assert!(access.admin(&page("localhost:8080", "same-origin", Some("http://localhost:8080")), peer("127.0.0.1")).is_ok());
        for refused in [
            // A page that rebound its own name to 127.0.0.1 is same-origin with itself.
            page("evil.example:8080", "same-origin", Some("http://evil.example:8080")),
            page("127.0.0.1:8080", "same-origin", Some("http://evil.example")),
            page("127.0.0.1:8080", "same-site", None),
            page("127.0.0.1:8080", "cross-site", Some("https://evil.example")),
        ] {
            assert!(matches!(access.admin(&refused, peer("127.0.0.1")), Err(ApiError::Forbidden(_))), "{refused:?}");
        }
    }

    #[test]
    fn with_a_token_everyone_needs_it() {
        let access = Access { admin_token: Some("admin-token-0123456".into()), publish_token: Some("publish-token-01234".into()) };
        assert!(matches!(access.admin(&HeaderMap::new(), peer("127.0.0.1")), Err(ApiError::Unauthorized)));
        assert!(access.admin(&bearer("admin-token-0123456"), peer("10.0.0.1")).is_ok());
        assert!(matches!(access.admin(&bearer("publish-token-01234"), peer("10.0.0.1")), Err(ApiError::Unauthorized)));
        assert!(access.publish(&bearer("publish-token-01234"), peer("10.0.0.1")).is_ok());
        assert!(access.publish(&bearer("admin-token-0123456"), peer("10.0.0.1")).is_ok());
        assert!(matches!(access.publish(&bearer("wrong"), peer("127.0.0.1")), Err(ApiError::Unauthorized)));
    }
}
