//! Token policy: a physician's own token creates consultations only as that physician, and
//! cannot renew itself (what it mints expires no later than it does); every token has a
//! server-side maximum lifetime whatever its `exp` says; and tokens can be revoked, per
//! identity or per token id, durably (a restart keeps the revocation), live sessions included.

mod common;

use common::*;
use consult_client::{Client, ClientEvent, ClientOptions, JoinError};
use consult_protocol::{ConsultationCreated, ErrorCode, Role, TokenClaims};
use consult_signaling::token::{unix_now, Grant, TokenService};
use serde_json::json;
use std::time::Duration;

fn claims(srv: &TestServer, token: &str) -> TokenClaims {
    srv.server
        .state
        .tokens
        .verify(token)
        .expect("a valid token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_physician_token_creates_only_as_itself_and_cannot_renew_itself() {
    let srv = start_server().await;
    let http = reqwest::Client::new();
    let mine = srv.token_at("room-own", "dr-own", Role::Physician, unix_now(), 3600);
    let mine_exp = claims(&srv, &mine).exp;
    let create = |token: String, body: serde_json::Value| {
        let http = http.clone();
        let url = srv.http_url("/api/consultations");
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    // Another physician's identity: refused.
    let r = create(
        mine.clone(),
        json!({"physician": {"identity": "dr-someone-else", "name": "Dr X"},
               "patient": {"identity": "ins-9", "name": "P"}}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 403);
    // As itself, asking for 11 hours: what it gets expires with its own token.
    let r = create(
        mine.clone(),
        json!({"physician": {"identity": "dr-own", "name": "Dr Own"},
               "patient": {"identity": "ins-9", "name": "P"}, "ttl_secs": 39600}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    let created: ConsultationCreated = r.json().await.unwrap();
    assert!(
        created.expires_at <= mine_exp,
        "{} > {mine_exp}",
        created.expires_at
    );
    for l in &created.links {
        assert!(claims(&srv, &l.token).exp <= mine_exp);
    }
    // The physician's new token, used in turn, cannot go further either.
    let next = created
        .links
        .iter()
        .find(|l| l.role == Role::Physician)
        .unwrap()
        .token
        .clone();
    let r = create(
        next,
        json!({"patient": {"identity": "ins-10", "name": "Q"}, "ttl_secs": 39600}),
    )
    .await;
    let again: ConsultationCreated = r.json().await.unwrap();
    assert!(again.expires_at <= mine_exp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_older_than_the_maximum_lifetime_are_refused() {
    let srv = start_server_with(|c| c.max_token_lifetime_secs = 600).await;
    let cfg = &srv.server.state.config;
    let issuer = TokenService::new(&cfg.api_key, &cfg.api_secret);
    let grant = Grant {
        room: "room-old",
        identity: "dr-old",
        name: "Dr Old",
        role: Role::Physician,
        companion_kind: None,
    };
    // Issued 20 minutes ago for a day: its exp is fine, its age is not.
    let (old, _) = issuer.mint(&grant, unix_now() - 1200, 86_400);
    let e = Client::connect(&srv.ws_url(), &old, ClientOptions::default())
        .await
        .err()
        .expect("refused");
    assert_eq!(
        e.downcast_ref::<JoinError>().unwrap().code,
        ErrorCode::TokenExpired
    );
    // The API does not mint past the maximum.
    let r = reqwest::Client::new()
        .post(srv.http_url("/api/tokens"))
        .header("authorization", srv.api_auth())
        .json(&json!({"room": "r", "identity": "i", "name": "n", "role": "patient", "ttl_secs": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_live_sessions_and_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("consult-revoke-{:016x}", rand::random::<u64>()));
    let config = consult_signaling::Config::for_tests(dir.clone());
    let server = consult_signaling::start(config.clone()).await.unwrap();
    let ws = format!("ws://{}/ws", server.http_addr);
    let issuer = TokenService::new(&config.api_key, &config.api_secret);
    let mint = |identity: &str| {
        let grant = Grant {
            room: "room-rev",
            identity,
            name: identity,
            role: Role::Physician,
            companion_kind: None,
        };
        issuer.mint(&grant, unix_now(), 3600).0
    };
    let doc_token = mint("dr-rev");
    let other_token = mint("dr-keep");
    let spare = mint("dr-keep");
    let mut doc = Client::connect(&ws, &doc_token, ClientOptions::default())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", config.api_key, config.api_secret)
        )
    );
    let revoke = |body: serde_json::Value| {
        let http = http.clone();
        let auth = auth.clone();
        let url = format!("http://{}/api/revocations", server.http_addr);
        async move {
            http.post(url)
                .header("authorization", auth)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    // A physician's token cannot revoke.
    let r = http
        .post(format!("http://{}/api/revocations", server.http_addr))
        .bearer_auth(&other_token)
        .json(&json!({"identity": "dr-rev"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // Revoked by identity: the live session ends at once…
    let r = revoke(json!({"identity": "dr-rev", "reason": "lost device"})).await;
    assert_eq!(r.status().as_u16(), 200);
    doc.wait_for(Duration::from_secs(5), |ev| {
        matches!(ev, ClientEvent::Closed).then_some(())
    })
    .await
    .expect("the revoked session is closed");
    // …and the token no longer joins.
    let e = Client::connect(&ws, &doc_token, ClientOptions::default())
        .await
        .err()
        .expect("refused");
    assert_eq!(
        e.downcast_ref::<JoinError>().unwrap().code,
        ErrorCode::BadToken
    );
    // Revoked by token id: that token only.
    let jti = server
        .state
        .tokens
        .verify(&other_token)
        .unwrap()
        .jti
        .expect("tokens carry an id");
    let r = revoke(json!({"token_id": jti})).await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(Client::connect(&ws, &other_token, ClientOptions::default())
        .await
        .is_err());
    Client::connect(&ws, &spare, ClientOptions::default())
        .await
        .expect("another token of the same identity still joins");
    // A token issued after the identity's revocation joins (the identity was re-issued);
    // one issued in the same second counts as before it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh_later = mint("dr-rev");
    Client::connect(&ws, &fresh_later, ClientOptions::default())
        .await
        .expect("a token issued after the revocation joins");
    server.shutdown();

    // Restarted on the same data: still revoked.
    let server = consult_signaling::start(config.clone()).await.unwrap();
    let ws = format!("ws://{}/ws", server.http_addr);
    let e = Client::connect(&ws, &doc_token, ClientOptions::default())
        .await
        .err()
        .expect("still refused");
    assert_eq!(
        e.downcast_ref::<JoinError>().unwrap().code,
        ErrorCode::BadToken
    );
    assert!(Client::connect(&ws, &other_token, ClientOptions::default())
        .await
        .is_err());
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
