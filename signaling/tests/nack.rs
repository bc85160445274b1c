//! Loss toward one subscriber is repaired: the SFU answers the subscriber's NACKs from its
//! packet cache (over RTX), so the physician gets every video packet despite 10 % loss.

mod common;

use common::*;
use consult_client::relay::LossyRelay;
use consult_client::ClientOptions;
use consult_protocol::{Role, TrackLabel};
use std::sync::atomic::Ordering;
use std::time::Duration;

const PACKETS: u32 = 300;

/// What one run saw: (RTP dropped by the relay, distinct packets received, packets expected).
async fn run_lossy_call(room: &str, rtx_repair: bool) -> (u64, usize, usize) {
    let srv = start_server().await;
    let relay = LossyRelay::start(srv.server.udp_addr, 0.10, 0x5eed)
        .await
        .unwrap();
    let mut doc = srv
        .join_with(
            room,
            "dr-nack",
            Role::Physician,
            ClientOptions {
                media_via: Some(relay.addr()),
                without_rtx_repair: !rtx_repair,
                ..ClientOptions::default()
            },
        )
        .await;
    let mut nurse = srv.join(room, "ide-nack", Role::Companion).await;
    doc.send(consult_protocol::ClientMsg::Admit {
        participant_id: nurse.participant_id.clone(),
    })
    .unwrap();
    nurse.wait_admitted(WAIT).await.unwrap();

    let tracks = nurse.publish(&[TrackLabel::Otoscope]).await.unwrap();
    let sender = tracks[0].send_synthetic(
        tag(1, TrackLabel::Otoscope),
        PACKETS,
        Duration::from_millis(10),
        900,
    );
    let remote = take_tracks(&mut doc, 1).await.remove(0);
    assert_eq!(remote.info.label, TrackLabel::Otoscope);
    let rx = collect(remote, consult_protocol::TrackKind::Video);
    assert_eq!(sender.await.unwrap(), PACKETS);
    // Let the last NACK rounds complete.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let dropped = relay.stats.rtp_dropped.load(Ordering::Relaxed);
    let relayed = relay.stats.rtp_to_client.load(Ordering::Relaxed);
    let r = rx.lock().unwrap().clone();
    let (got, expected) = r.coverage(PACKETS - 1);
    eprintln!(
        "rtx repair {rtx_repair}: relay dropped {dropped} of {relayed} RTP packets toward the \
         physician; received {got} of {expected} distinct packets, {} corrupt",
        r.corrupt
    );
    assert_eq!(r.corrupt, 0);
    assert!(expected >= (PACKETS as usize) / 2, "media started late");
    (dropped, got, expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_and_rtx_recover_packets_dropped_toward_a_subscriber() {
    let (dropped, got, expected) = run_lossy_call("room-nack", true).await;
    assert!(
        dropped >= 15,
        "the relay must really drop packets ({dropped})"
    );
    assert_eq!(got, expected, "every dropped packet is recovered");
}

/// Reproduces the webrtc-rs 0.17 defect `client/src/rtx.rs` works around: without it, packets
/// the SFU resends over RTX never reach the track. If this fails, webrtc-rs repairs RTX itself
/// and the interceptor can go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_alone_drops_rtx_repairs() {
    let (dropped, got, expected) = run_lossy_call("room-no-repair", false).await;
    assert!(dropped >= 15);
    assert!(
        got + 10 <= expected,
        "webrtc-rs delivered RTX repairs by itself ({got}/{expected})"
    );
}
