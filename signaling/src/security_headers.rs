//! Security headers on every HTTP answer: the web client runs under a strict content security
//! policy (its own scripts and styles only, no framing), nothing is sniffed or sent as a
//! referrer (join links carry the token in their query), API answers (patient data) are never
//! cached, and HSTS is sent when the server has a real certificate.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// The web client loads its own scripts and styles only; media come from WebRTC (no URL),
/// stills are shown from blob URLs, and the page talks to its own origin (HTTP and WebSocket).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One year, the usual preload-list minimum.
pub const HSTS: &str = "max-age=31536000; includeSubDomains";

/// Whether HSTS is sent (a real certificate, not the generated development one).
#[derive(Clone, Copy)]
pub struct Policy {
    pub hsts: bool,
}

/// axum middleware: see the module's comment.
pub async fn add(State(policy): State<Policy>, request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    apply(response.headers_mut(), api, policy);
    response
}

/// The headers of one answer; `api`: to a path under `/api/`.
pub fn apply(h: &mut HeaderMap, api: bool, policy: Policy) {
    let set = |h: &mut HeaderMap, name, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    if api {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    if policy.hsts {
        set(h, header::STRICT_TRANSPORT_SECURITY, HSTS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_answers_are_not_cached_and_hsts_follows_the_policy() {
        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        apply(&mut h, true, Policy { hsts: false });
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert!(!h.contains_key(header::STRICT_TRANSPORT_SECURITY));
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");

        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        apply(&mut h, false, Policy { hsts: true });
        assert_eq!(h[header::CACHE_CONTROL], "no-cache", "assets keep theirs");
        assert_eq!(h[header::STRICT_TRANSPORT_SECURITY], HSTS);
        assert!(h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'"));
    }
}
