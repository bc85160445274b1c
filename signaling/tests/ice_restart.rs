//! The cart's media path fails and comes back on a different address (an uplink switch, a NAT
//! rebinding) while signaling stays up: the client restarts ICE by itself on both connections,
//! without leaving the room, and the stethoscope reaches the physician again. The time from the
//! path's return to the first new stethoscope packet is printed (a figure, not a timed test).

mod common;

use common::*;
use consult_client::relay::LossyRelay;
use consult_client::{ClientEvent, ClientOptions};
use consult_protocol::{ClientMsg, Role, ServerMsg, TrackKind, TrackLabel};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restart_after_a_path_change_keeps_the_cart_in_the_room() {
    let srv = start_server().await;
    let room = "room-ice-restart";
    let relay = LossyRelay::start(srv.server.udp_addr, 0.0, 1)
        .await
        .unwrap();
    let mut doc = srv.join(room, "dr-ir", Role::Physician).await;
    let mut cart = srv
        .join_with(
            room,
            "cart-ir",
            Role::Companion,
            ClientOptions {
                media_via: Some(relay.addr()),
                ice_failed_after: Some(Duration::from_secs(2)),
                ..ClientOptions::default()
            },
        )
        .await;
    doc.send(ClientMsg::Admit {
        participant_id: cart.participant_id.clone(),
    })
    .unwrap();
    cart.wait_admitted(WAIT).await.unwrap();
    let t = cart.publish(&[TrackLabel::Stethoscope]).await.unwrap();
    let interval = Duration::from_millis(20);
    let started = Instant::now();
    let sender = t[0].send_synthetic(tag(1, TrackLabel::Stethoscope), 1000, interval, 200);
    let steth = take_tracks(&mut doc, 1).await.remove(0);
    let rx = collect(steth, TrackKind::Audio);
    // The physician's voice goes the other way, over the cart's subscriber connection.
    let m = doc.publish(&[TrackLabel::Microphone]).await.unwrap();
    let voice_sender = m[0].send_synthetic(tag(2, TrackLabel::Microphone), 1000, interval, 120);
    let voice = take_tracks(&mut cart, 1).await.remove(0);
    let voice_rx = collect(voice, TrackKind::Audio);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!rx.lock().unwrap().counters.is_empty(), "media flows first");
    assert!(!voice_rx.lock().unwrap().counters.is_empty());

    // The path goes dark for 4 s and comes back from another address.
    relay.set_dark(true);
    relay.change_path();
    tokio::time::sleep(Duration::from_secs(4)).await;
    relay.set_dark(false);
    let restored = Instant::now();
    // The counter both sides send now: anything at or above it crossed the new path.
    let restored_counter = (restored - started).as_millis() as u32 / 20;
    let (steth_back, voice_back) = tokio::join!(
        first_at_or_after(&rx, restored_counter, restored),
        first_at_or_after(&voice_rx, restored_counter, restored),
    );
    eprintln!(
        "path back → first new packet: stethoscope at the physician {steth_back:?}, \
         physician's voice at the cart {voice_back:?}; ICE restarts by the cart: {}; \
         dropped while dark: {}",
        cart.ice_restarts(),
        relay
            .stats
            .dark_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(cart.ice_restarts() >= 1, "recovered by an ICE restart");

    // Once back, each stream is whole again: every packet sent from a second after its
    // recovery arrives.
    for (what, rx, sender, back) in [
        ("stethoscope", &rx, sender, steth_back),
        ("voice", &voice_rx, voice_sender, voice_back),
    ] {
        let last = sender.await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = rx.lock().unwrap().clone();
        let from = restored_counter + (back.as_millis() as u32 + 1000) / 20;
        let mut after: Vec<u32> = r.counters.iter().copied().filter(|c| *c >= from).collect();
        after.sort_unstable();
        after.dedup();
        let expected = (last - from + 1) as usize;
        eprintln!("{what} after recovery: {}/{expected} packets", after.len());
        assert!(
            after.len() * 100 >= expected * 99,
            "{what}: {}/{expected}",
            after.len()
        );
        assert_eq!(r.corrupt, 0);
    }

    // Nobody left: no rejoin, no second admission.
    while let Some(ev) = doc.next_event(Duration::from_millis(50)).await {
        if let ClientEvent::Server(ServerMsg::ParticipantLeft { .. }) = ev {
            panic!("the cart left the room: {ev:?}");
        }
    }

    // The incidents are in the consultation's summary, for the physician's report.
    let (status, body) = srv
        .api_get(&format!("/api/consultations/{room}/summary"))
        .await;
    assert_eq!(status, 200, "{body}");
    let summary: consult_protocol::ConsultationSummary = serde_json::from_str(&body).unwrap();
    for i in &summary.incidents {
        eprintln!("incident: {} {:?} {}", i.kind, i.identity, i.detail);
    }
    let of_cart = |kind: &str| {
        summary
            .incidents
            .iter()
            .filter(|i| i.kind == kind && i.identity.as_deref() == Some("cart-ir"))
            .count()
    };
    let restarts = of_cart("ice_restart") as u32;
    assert!(
        restarts >= 1 && restarts <= cart.ice_restarts(),
        "{restarts}"
    );
    assert!(of_cart("media_lost") >= 1, "the lost path is recorded");
    assert!(of_cart("media_restored") >= 1, "its return is recorded");
    assert_eq!(of_cart("signaling_lost"), 0);
    assert_eq!(summary.participants.len(), 2);
}

/// Time from `since` until a packet numbered at least `counter` arrived.
async fn first_at_or_after(
    rx: &std::sync::Arc<std::sync::Mutex<Received>>,
    counter: u32,
    since: Instant,
) -> Duration {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let max = rx.lock().unwrap().counters.iter().copied().max();
            if max.is_some_and(|m| m >= counter) {
                return since.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("media comes back after the path change")
}
