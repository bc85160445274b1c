//! The HTTP API: consultation creation with join links, token minting, the audit trail, and
//! HTTPS with the generated development certificate.

mod common;

use base64::Engine as _;
use common::*;
use consult_client::{Client, ClientOptions};
use consult_protocol::{
    ApiError, AuditRecord, ConsultationCreated, ErrorCode, Role, TokenResponse,
};
use consult_signaling::Config;
use serde_json::json;

fn basic(key: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
    )
}

async fn api_error(resp: reqwest::Response, status: u16) -> ErrorCode {
    assert_eq!(resp.status().as_u16(), status);
    resp.json::<ApiError>().await.expect("JSON error body").code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consultation_links_tokens_and_audit() {
    let srv = start_server().await;
    let http = reqwest::Client::new();
    let cfg = &srv.server.state.config;
    let api = basic(&cfg.api_key, &cfg.api_secret);
    let body = json!({
        "physician": {"identity": "rpps-10001", "name": "Dr Martin"},
        "patient": {"identity": "ins-1", "name": "Mme Durand"},
        "companion": {"identity": "ide-7", "name": "Julie", "companion_kind": "nurse"}
    });

    // Credentials are required and checked.
    let r = http
        .post(srv.http_url("/api/consultations"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(api_error(r, 401).await, ErrorCode::Unauthorized);
    let r = http
        .post(srv.http_url("/api/consultations"))
        .header(
            "authorization",
            basic(&cfg.api_key, "wrong-secret-xxxxxxxx"),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(api_error(r, 401).await, ErrorCode::Unauthorized);
    let r = http
        .post(srv.http_url("/api/consultations"))
        .header("authorization", &api)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(api_error(r, 400).await, ErrorCode::BadJson);
    let r = http
        .post(srv.http_url("/api/consultations"))
        .header("authorization", &api)
        .json(&json!({"physician": body["physician"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(api_error(r, 400).await, ErrorCode::BadRequest);

    // Created: one link per participant, each a token for this room and role.
    let created: ConsultationCreated = http
        .post(srv.http_url("/api/consultations"))
        .header("authorization", &api)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created.links.len(), 3);
    for link in &created.links {
        let claims = srv.server.state.tokens.verify(&link.token).unwrap();
        assert_eq!(claims.room, created.room);
        assert_eq!(claims.role, link.role);
        assert!(link.url.starts_with(&srv.server.base_url));
        assert!(link.url.ends_with(&link.token));
    }
    let token_of = |role: Role| {
        created
            .links
            .iter()
            .find(|l| l.role == role)
            .unwrap()
            .token
            .clone()
    };
    let companion = srv
        .server
        .state
        .tokens
        .verify(&token_of(Role::Companion))
        .unwrap();
    assert_eq!(
        companion.companion_kind,
        Some(consult_protocol::CompanionKind::Nurse)
    );

    // The links work: the physician joins straight in, the patient waits.
    let doc = Client::connect(
        &srv.ws_url(),
        &token_of(Role::Physician),
        ClientOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(doc.state, consult_protocol::AdmissionState::Admitted);
    let pat = Client::connect(
        &srv.ws_url(),
        &token_of(Role::Patient),
        ClientOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(pat.state, consult_protocol::AdmissionState::Waiting);

    // A patient's token cannot create consultations or read the audit trail.
    let bearer = |t: &str| format!("Bearer {t}");
    let r = http
        .post(srv.http_url("/api/consultations"))
        .header("authorization", bearer(&token_of(Role::Patient)))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(api_error(r, 403).await, ErrorCode::Forbidden);
    let r = http
        .get(srv.http_url(&format!("/api/audit?room={}", created.room)))
        .header("authorization", bearer(&token_of(Role::Patient)))
        .send()
        .await
        .unwrap();
    assert_eq!(api_error(r, 403).await, ErrorCode::Forbidden);
    // A physician reads the trail of their consultation, and of no other.
    let r = http
        .get(srv.http_url("/api/audit?room=someone-else"))
        .header("authorization", bearer(&token_of(Role::Physician)))
        .send()
        .await
        .unwrap();
    assert_eq!(api_error(r, 403).await, ErrorCode::WrongRoom);
    let trail: Vec<AuditRecord> = http
        .get(srv.http_url(&format!("/api/audit?room={}", created.room)))
        .header("authorization", bearer(&token_of(Role::Physician)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = trail.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["consultation_created", "join", "join"]);
    assert_eq!(trail[1].actor.as_deref(), Some("rpps-10001"));
    assert_eq!(trail[2].detail["state"], "waiting");

    // A physician's token can create a consultation for themselves.
    let mine: ConsultationCreated = http
        .post(srv.http_url("/api/consultations"))
        .header("authorization", bearer(&token_of(Role::Physician)))
        .json(&json!({"patient": {"identity": "ins-2", "name": "M. Petit"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let doc_link = mine
        .links
        .iter()
        .find(|l| l.role == Role::Physician)
        .unwrap();
    assert_eq!(doc_link.identity, "rpps-10001");

    // Token minting needs the API secret.
    let minted: TokenResponse = http
        .post(srv.http_url("/api/tokens"))
        .header("authorization", &api)
        .json(
            &json!({"room": "r9", "identity": "i", "name": "n", "role": "patient", "ttl_secs": 60}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        srv.server.state.tokens.verify(&minted.token).unwrap().room,
        "r9"
    );
    let r = http
        .post(srv.http_url("/api/tokens"))
        .header("authorization", &api)
        .json(
            &json!({"room": "r9", "identity": "i", "name": "n", "role": "patient", "ttl_secs": 0}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(api_error(r, 400).await, ErrorCode::BadRequest);
    let r = http
        .post(srv.http_url("/api/tokens"))
        .header("authorization", bearer(&token_of(Role::Physician)))
        .json(&json!({"room": "r9", "identity": "i", "name": "n", "role": "physician"}))
        .send()
        .await
        .unwrap();
    assert_eq!(api_error(r, 403).await, ErrorCode::Forbidden);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_generated_development_certificate() {
    init_tracing();
    let dir = std::env::temp_dir().join(format!("consult-tls-{:016x}", rand::random::<u64>()));
    let mut config = Config::for_tests(dir.clone());
    config.insecure_http = false;
    let server = consult_signaling::start(config).await.unwrap();
    assert!(server.base_url.starts_with("https://"));
    let cert = std::fs::read(dir.join("dev-cert.pem")).expect("certificate written");
    assert!(consult_signaling::tls::fingerprint(&cert).is_some());

    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let r = http
        .get(format!("{}/healthz", server.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    // Plain HTTP to the TLS port gets no page.
    let plain = reqwest::get(format!("http://{}/healthz", server.http_addr)).await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    server.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

/// Every answer carries the security headers: the page's content security policy (no framing),
/// no sniffing, no referrer (join links carry a token), and no caching of API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_on_pages_and_api_answers() {
    let srv = start_server().await;
    let http = reqwest::Client::new();
    let cfg = &srv.server.state.config;
    let api = basic(&cfg.api_key, &cfg.api_secret);
    let page = http.get(srv.http_url("/")).send().await.unwrap();
    let audit = http
        .get(srv.http_url("/api/audit"))
        .header("authorization", &api)
        .send()
        .await
        .unwrap();
    let refused = http.get(srv.http_url("/api/audit")).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    for r in [&page, &audit, &refused] {
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        // Plain HTTP (tests, development): no HSTS.
        assert!(!h.contains_key("strict-transport-security"));
    }
    assert_eq!(audit.headers()["cache-control"], "no-store");
    assert_eq!(refused.headers()["cache-control"], "no-store");
}

#[test]
fn plain_http_off_loopback_is_refused() {
    let mut config = Config::for_tests(std::env::temp_dir());
    config.http_bind = "0.0.0.0:0".parse().unwrap();
    config.api_secret = "a-real-production-secret".into();
    assert!(config.validate().is_err());
}
