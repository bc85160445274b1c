//! `/metrics` moves during a call (rooms, participants, tracks, forwarded packets, each
//! connection's RTT), needs the API key; `/readyz` answers ready.

mod common;

use common::*;
use consult_protocol::{ClientMsg, ConsultationSummary, Role, TrackLabel};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_during_a_call() {
    let srv = start_server().await;
    let (status, body) = srv.api_get("/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready"));

    let room = "room-metrics";
    let mut doc = srv.join(room, "dr-m", Role::Physician).await;
    let mut ide = srv.join(room, "ide-m", Role::Companion).await;
    doc.send(ClientMsg::Admit {
        participant_id: ide.participant_id.clone(),
    })
    .unwrap();
    ide.wait_admitted(WAIT).await.unwrap();
    let t = ide
        .publish(&[TrackLabel::Stethoscope, TrackLabel::Camera])
        .await
        .unwrap();
    let _a = t[0].send_synthetic(
        tag(1, TrackLabel::Stethoscope),
        250,
        Duration::from_millis(20),
        200,
    );
    let _v = t[1].send_synthetic(
        tag(1, TrackLabel::Camera),
        250,
        Duration::from_millis(20),
        900,
    );
    let tracks = take_tracks(&mut doc, 2).await;
    let _rx: Vec<_> = tracks
        .into_iter()
        .map(|t| {
            let kind = t.info.kind;
            collect(t, kind)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, first) = srv.api_get("/metrics").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (_, second) = srv.api_get("/metrics").await;
    eprintln!("{second}");

    assert_eq!(metric(&second, "consult_rooms", ""), Some(1.0));
    assert_eq!(
        metric(&second, "consult_participants", "state=\"admitted\""),
        Some(2.0)
    );
    assert_eq!(metric(&second, "consult_tracks", ""), Some(2.0));
    assert_eq!(metric(&second, "consult_sfu_participants", ""), Some(2.0));
    let fwd = |t: &str| metric(t, "consult_sfu_rtp_forwarded_total", "").unwrap_or(0.0);
    assert!(fwd(&first) > 0.0 && fwd(&second) > fwd(&first) + 100.0);
    let bytes = |t: &str| metric(t, "consult_sfu_bytes_out_total", "").unwrap_or(0.0);
    assert!(bytes(&second) > bytes(&first), "bytes out move");
    assert!(metric(&second, "consult_sfu_keyframe_requests_sent_total", "").unwrap() >= 1.0);
    // Time inside the SFU: one sample per send caused by a datagram, within the last bucket.
    let delays = |t: &str| metric(t, "consult_sfu_forward_delay_seconds_count", "").unwrap_or(0.0);
    assert!(delays(&second) >= fwd(&second), "{second}");
    assert_eq!(
        metric(
            &second,
            "consult_sfu_forward_delay_seconds_bucket",
            "le=\"+Inf\""
        ),
        Some(delays(&second))
    );
    assert_eq!(
        metric(&second, "consult_sfu_send_failures_total", ""),
        Some(0.0)
    );
    // str0m's per-connection view: an RTT for the physician's subscriber connection.
    let rtt = metric(
        &second,
        "consult_peer_rtt_ms",
        &format!("participant=\"{}\"", doc.participant_id),
    );
    assert!(rtt.is_some_and(|r| r < 100.0), "rtt {rtt:?}");
    // The API key only.
    let http = reqwest::Client::new();
    let anon = http.get(srv.http_url("/metrics")).send().await.unwrap();
    assert_eq!(anon.status().as_u16(), 401);
    let as_doctor = http
        .get(srv.http_url("/metrics"))
        .bearer_auth(srv.token(room, "dr-m", Role::Physician))
        .send()
        .await
        .unwrap();
    assert_eq!(as_doctor.status().as_u16(), 403);

    // When the physician ends the consultation, its summary is written beside the audit trail.
    doc.send(ClientMsg::EndConsultation).unwrap();
    let path = srv.dir.join("summaries").join(format!("{room}.json"));
    let summary = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(bytes) = std::fs::read(&path) {
                return serde_json::from_slice::<ConsultationSummary>(&bytes).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("summary file written");
    assert!(summary.ended);
    let who: Vec<&str> = summary
        .participants
        .iter()
        .map(|p| p.identity.as_str())
        .collect();
    assert_eq!(who, ["dr-m", "ide-m"]);
    assert!(summary.participants.iter().all(|p| p.admitted));
    assert!(summary.incidents.is_empty(), "{:?}", summary.incidents);
}
