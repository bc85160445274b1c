//! Rate limits: wrong API secrets from one address are answered 401 ten times, then 429 with
//! Retry-After (another address is not held back); a patient token rejoining in a loop is held
//! to a few joins (`rate_limited`), so the physician is not flooded with waiting-room updates;
//! each burst of refusals is audited once, with its count.

mod common;

use common::*;
use consult_client::{Client, ClientEvent, ClientOptions, JoinError};
use consult_protocol::{ErrorCode, Role, ServerMsg};
use consult_signaling::rate_limit::JOINS;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secrets_are_answered_429_after_a_few() {
    let srv = start_server().await;
    let http = reqwest::Client::new();
    let wrong = format!("{}:not-the-secret", srv.server.state.config.api_key);
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, wrong)
    );
    let mut statuses = Vec::new();
    for _ in 0..1000 {
        let r = http
            .get(srv.http_url("/api/audit"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 429 {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry), "Retry-After {retry}");
        }
        statuses.push(r.status().as_u16());
    }
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    eprintln!("401: {unauthorized}, 429: {limited}");
    assert_eq!(unauthorized, 10);
    assert_eq!(limited, 990);
    // Even the right secret waits, from that address (and that key)…
    let (status, _) = srv.api_get("/api/audit").await;
    assert_eq!(status, 429);
    // …but another address with another key's failures is not held back: a wrong secret
    // there is a plain 401.
    let other = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let r = other
        .get(srv.http_url("/api/audit"))
        .header("authorization", "Basic b3RoZXI6d3Jvbmc=")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // The burst is audited once, with its count, once it ends.
    srv.server
        .state
        .report_rate_limits(std::time::Instant::now() + Duration::from_secs(3600));
    let rows = srv.server.state.audit.read(None).await.unwrap();
    let bursts: Vec<_> = rows.iter().filter(|r| r.action == "rate_limited").collect();
    assert!(!bursts.is_empty());
    let by_address = bursts
        .iter()
        .find(|r| r.detail["what"] == "auth_failures_by_address")
        .expect("the address's burst");
    assert!(by_address.detail["refused"].as_u64().unwrap() >= 990);
    assert!(
        rows.len() < 20,
        "one record per burst, not per attempt: {}",
        rows.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rejoining_in_a_loop_is_held_back() {
    let srv = start_server().await;
    let room = "room-rejoin-loop";
    let mut doc = srv.join(room, "dr-loop", Role::Physician).await;
    let token = srv.token(room, "pat-loop", Role::Patient);
    let mut joined = 0;
    let mut limited = 0;
    for _ in 0..200 {
        match Client::connect(&srv.ws_url(), &token, ClientOptions::default()).await {
            Ok(c) => {
                joined += 1;
                c.disconnect().await;
            }
            Err(e) => {
                let e = e.downcast_ref::<JoinError>().expect("a join error");
                assert_eq!(e.code, ErrorCode::RateLimited, "{}", e.message);
                limited += 1;
            }
        }
    }
    eprintln!("joined {joined}, held back {limited}");
    assert!(joined <= JOINS.burst as usize + 2, "joined {joined} times");
    assert_eq!(joined + limited, 200);
    // The physician heard of the few joins only.
    let mut updates = 0;
    while let Some(ev) = doc.next_event(Duration::from_millis(300)).await {
        if matches!(ev, ClientEvent::Server(ServerMsg::WaitingRoom { .. })) {
            updates += 1;
        }
    }
    assert!(
        updates <= 2 * (JOINS.burst as usize + 2),
        "{updates} waiting-room updates"
    );
    srv.server
        .state
        .report_rate_limits(std::time::Instant::now() + Duration::from_secs(3600));
    let rows = srv.server.state.audit.read(Some(room)).await.unwrap();
    let joins = rows.iter().filter(|r| r.action == "join").count();
    assert!(joins <= JOINS.burst as usize + 3, "{joins} join records");
    let burst = rows
        .iter()
        .find(|r| r.action == "rate_limited")
        .expect("the burst audited");
    assert_eq!(burst.detail["refused"].as_u64(), Some(limited as u64));
}
