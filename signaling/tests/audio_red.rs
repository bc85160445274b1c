//! Audio redundancy (RFC 2198 RED) chosen per subscriber: the cart sends plain Opus-sized
//! stethoscope packets; the physician negotiated RED and sits behind a link losing 5 % of
//! packets, so the SFU adds each previous packet to the next one for it and the physician
//! recovers almost every loss. The patient, on the same kind of link, did not negotiate RED
//! and keeps getting plain packets, its losses repaired by retransmission (NACK + RTX) instead.
//! A cart whose uplink loses packets gets them asked for again, or rebuilt from its own RED.
//! Measured on what arrived.

mod common;

use common::*;
use consult_client::relay::LossyRelay;
use consult_client::synthetic::check_payload;
use consult_client::ClientOptions;
use consult_client::PT_RED;
use consult_protocol::{ClientMsg, Role, TrackKind, TrackLabel};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PACKETS: u32 = 500; // 10 s of 20 ms packets
const LOSS: f64 = 0.05;

#[derive(Default, Debug)]
struct Heard {
    /// Counters recovered from any block, after `from`.
    counters: BTreeSet<u32>,
    /// Counters carried as the primary block (what arrived without help).
    primaries: BTreeSet<u32>,
    red_packets: u64,
    plain_packets: u64,
    corrupt: u64,
}

fn listen(track: consult_client::RemoteTrack, t0: Instant, from: Duration) -> Arc<Mutex<Heard>> {
    let heard: Arc<Mutex<Heard>> = Arc::default();
    let h = heard.clone();
    tokio::spawn(async move {
        while let Ok((pkt, _)) = track.track.read_rtp().await {
            let mut h = h.lock().unwrap();
            let blocks = if pkt.header.payload_type == PT_RED {
                h.red_packets += 1;
                consult_client::red::blocks(&pkt.payload).unwrap_or_default()
            } else {
                h.plain_packets += 1;
                vec![&pkt.payload[..]]
            };
            let n = blocks.len();
            for (i, b) in blocks.into_iter().enumerate() {
                match check_payload(TrackKind::Audio, b) {
                    Some(info) if t0.elapsed() >= from => {
                        h.counters.insert(info.counter);
                        if i + 1 == n {
                            h.primaries.insert(info.counter);
                        }
                    }
                    Some(_) => {}
                    None => h.corrupt += 1,
                }
            }
        }
    });
    heard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_subscriber_that_negotiated_red_recovers_the_stethoscope() {
    let srv = start_server().await;
    let room = "room-red";
    let doc_link = LossyRelay::start(srv.server.udp_addr, LOSS, 0x7ed1)
        .await
        .unwrap();
    let patient_link = LossyRelay::start(srv.server.udp_addr, LOSS, 0x7ed2)
        .await
        .unwrap();
    let mut doc = srv
        .join_with(
            room,
            "dr-red",
            Role::Physician,
            ClientOptions {
                media_via: Some(doc_link.addr()),
                red: true,
                ..ClientOptions::default()
            },
        )
        .await;
    let mut cart = srv.join(room, "cart-red", Role::Companion).await;
    let mut patient = srv
        .join_with(
            room,
            "patient-red",
            Role::Patient,
            ClientOptions {
                media_via: Some(patient_link.addr()),
                ..ClientOptions::default()
            },
        )
        .await;
    for p in [&cart, &patient] {
        doc.send(ClientMsg::Admit {
            participant_id: p.participant_id.clone(),
        })
        .unwrap();
    }
    cart.wait_admitted(WAIT).await.unwrap();
    patient.wait_admitted(WAIT).await.unwrap();

    let t = cart.publish(&[TrackLabel::Stethoscope]).await.unwrap();
    let sender = t[0].send_synthetic(
        tag(1, TrackLabel::Stethoscope),
        PACKETS,
        Duration::from_millis(20),
        80,
    );
    let t0 = Instant::now();
    // The SFU switches RED on from the physician's receiver reports: count from 2 s on.
    let from = Duration::from_secs(2);
    let doc_heard = listen(take_tracks(&mut doc, 1).await.remove(0), t0, from);
    let patient_heard = listen(take_tracks(&mut patient, 1).await.remove(0), t0, from);
    assert_eq!(sender.await.unwrap(), PACKETS);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The cart was told how much its receivers lose, for its encoder's in-band FEC.
    let mut hints = Vec::new();
    while let Some(ev) = cart.next_event(Duration::from_millis(50)).await {
        if let consult_client::ClientEvent::Server(consult_protocol::ServerMsg::PublisherAudio {
            mid,
            expected_loss_pct,
            ..
        }) = ev
        {
            assert_eq!(mid, t[0].mid);
            hints.push(expected_loss_pct);
        }
    }
    let applied = t[0].expected_loss_pct.load(Ordering::Relaxed);
    eprintln!("expected-loss hints to the cart: {hints:?} (applied: {applied} %)");
    assert!(
        hints.iter().any(|p| (2..=15).contains(p)),
        "publisher_audio hints {hints:?}"
    );
    assert_eq!(Some(&applied), hints.last());

    let d = doc_heard.lock().unwrap();
    let p = patient_heard.lock().unwrap();
    // Loss in the measured span: counters from the first one heard to the last sent.
    let residual = |h: &Heard, set: &BTreeSet<u32>| {
        let first = *h.counters.first().unwrap();
        let expected = (PACKETS - first) as usize;
        1.0 - set.len() as f64 / expected as f64
    };
    let doc_raw = residual(&d, &d.primaries);
    let doc_residual = residual(&d, &d.counters);
    let patient_loss = residual(&p, &p.counters);
    let dropped = doc_link.stats.rtp_dropped.load(Ordering::Relaxed);
    eprintln!(
        "physician (RED): {} RED and {} plain packets, primaries lost {:.2} %, after RED {:.2} % \
         ({dropped} RTP dropped toward it); patient (no RED): {} RED, {} plain, lost {:.2} %",
        d.red_packets,
        d.plain_packets,
        doc_raw * 100.0,
        doc_residual * 100.0,
        p.red_packets,
        p.plain_packets,
        patient_loss * 100.0
    );
    let first = *d.counters.first().unwrap();
    let missing: Vec<u32> = (first..PACKETS)
        .filter(|c| !d.counters.contains(c))
        .collect();
    eprintln!("physician: still missing {missing:?}");
    assert_eq!((d.corrupt, p.corrupt), (0, 0));
    // The physician's link loses (the primaries show it), RED repairs most of it.
    assert!(doc_raw > 0.02, "raw loss {doc_raw}");
    assert!(d.red_packets > u64::from(PACKETS) / 2, "{d:?}");
    // The bound for lung sounds after repair: under 2 % (5 % on the link).
    assert!(doc_residual < 0.02, "residual loss {doc_residual}");
    assert!(doc_residual * 3.0 < doc_raw);
    // The patient never negotiated RED: plain packets only. Its link loses as much, and Opus
    // retransmissions (NACK + RTX, which our Rust peers negotiate) repair it instead.
    assert_eq!(p.red_packets, 0);
    let patient_dropped = patient_link.stats.rtp_dropped.load(Ordering::Relaxed);
    assert!(
        patient_dropped as f64 > 0.02 * f64::from(PACKETS),
        "{patient_dropped} dropped toward the patient"
    );
    assert!(patient_loss < 0.02, "patient loss {patient_loss}");
}

/// A publisher that sends RED itself (as a browser may): subscribers that negotiated RED get it
/// as is, the others get the primary Opus packet alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_red_is_passed_through_or_stripped() {
    let srv = start_server().await;
    let room = "room-red-pub";
    let red = ClientOptions {
        red: true,
        ..ClientOptions::default()
    };
    let mut doc = srv
        .join_with(room, "dr-redpub", Role::Physician, red.clone())
        .await;
    let mut cart = srv
        .join_with(room, "cart-redpub", Role::Companion, red)
        .await;
    let mut patient = srv.join(room, "patient-redpub", Role::Patient).await;
    for p in [&cart, &patient] {
        doc.send(ClientMsg::Admit {
            participant_id: p.participant_id.clone(),
        })
        .unwrap();
    }
    cart.wait_admitted(WAIT).await.unwrap();
    patient.wait_admitted(WAIT).await.unwrap();
    let t = cart.publish(&[TrackLabel::Stethoscope]).await.unwrap();
    assert!(t[0].red);
    let packets = 150;
    let sender = t[0].send_synthetic(
        tag(2, TrackLabel::Stethoscope),
        packets,
        Duration::from_millis(20),
        80,
    );
    let t0 = Instant::now();
    let doc_heard = listen(take_tracks(&mut doc, 1).await.remove(0), t0, Duration::ZERO);
    let patient_heard = listen(
        take_tracks(&mut patient, 1).await.remove(0),
        t0,
        Duration::ZERO,
    );
    assert_eq!(sender.await.unwrap(), packets);
    // Broken RED from the publisher (a block header promising more than the packet holds) is
    // dropped and counted; what follows is forwarded as before.
    let before = srv.server.sfu().stats().await.unwrap();
    for i in 0..5u16 {
        let garbage = consult_client::webrtc::rtp::packet::Packet {
            header: consult_client::webrtc::rtp::header::Header {
                version: 2,
                sequence_number: packets as u16 + i,
                timestamp: (packets + u32::from(i)) * 960,
                ..Default::default()
            },
            payload: vec![0x80 | 111, 0, 0, 200, 111, 1, 2].into(),
        };
        t[0].write(&garbage).await.unwrap();
    }
    // Then valid RED again, continuing the stream.
    let mut previous: Option<Vec<u8>> = None;
    for i in 0..50u32 {
        let n = packets + 5 + i;
        let primary = consult_client::synthetic::make_payload(
            TrackKind::Audio,
            tag(2, TrackLabel::Stethoscope),
            packets + i,
            consult_client::synthetic::now_us(),
            80,
        );
        let payload =
            consult_client::red::encode(111, &primary, previous.as_deref().map(|p| (960, p)));
        previous = Some(primary);
        let pkt = consult_client::webrtc::rtp::packet::Packet {
            header: consult_client::webrtc::rtp::header::Header {
                version: 2,
                marker: true,
                sequence_number: n as u16,
                timestamp: n * 960,
                ..Default::default()
            },
            payload: payload.into(),
        };
        t[0].write(&pkt).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = srv.server.sfu().stats().await.unwrap();
    let malformed = after.rtp_malformed_red - before.rtp_malformed_red;
    let d = doc_heard.lock().unwrap();
    let p = patient_heard.lock().unwrap();
    eprintln!("broken RED: {malformed} dropped as malformed");
    assert!(malformed >= 5, "{malformed}");
    assert!(
        d.counters.len() >= packets as usize - 20 + 45,
        "{} after the broken RED",
        d.counters.len()
    );
    eprintln!(
        "RED from the cart: physician {} RED / {} plain, patient {} RED / {} plain",
        d.red_packets, d.plain_packets, p.red_packets, p.plain_packets
    );
    assert_eq!((d.corrupt, p.corrupt), (0, 0));
    // Passed through: every packet RED, and the redundancy is the cart's own.
    assert_eq!(d.plain_packets, 0);
    // (The first few packets leave before the subscribers are connected.)
    assert!(d.red_packets >= u64::from(packets) - 20, "{d:?}");
    // Stripped: plain Opus-sized packets, each one intact.
    assert_eq!(p.red_packets, 0);
    assert!(p.plain_packets >= u64::from(packets) - 20, "{p:?}");
    assert_eq!(p.counters.len() as u64, p.plain_packets);
}

/// The cart's uplink loses 5 %, and the cart sends RED: the SFU rebuilds each lost packet from
/// the next one's redundancy for the patient, who gets plain Opus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_lost_upstream_are_rebuilt_from_red_for_plain_subscribers() {
    use consult_client::impair::{Loss, Profile};
    let srv = start_server().await;
    let room = "room-red-up";
    let uplink = LossyRelay::start_impaired(
        srv.server.udp_addr,
        vec![(
            Duration::ZERO,
            Profile {
                loss: Loss::Random(LOSS),
                ..Profile::default()
            },
        )],
        vec![(Duration::ZERO, Profile::default())],
        0x7ed3,
    )
    .await
    .unwrap();
    let mut doc = srv.join(room, "dr-redup", Role::Physician).await;
    let mut cart = srv
        .join_with(
            room,
            "cart-redup",
            Role::Companion,
            ClientOptions {
                red: true,
                media_via: Some(uplink.addr()),
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
    let before = srv.server.sfu().stats().await.unwrap();
    let sender = t[0].send_synthetic(
        tag(4, TrackLabel::Stethoscope),
        PACKETS,
        Duration::from_millis(20),
        80,
    );
    let t0 = Instant::now();
    let heard = listen(take_tracks(&mut doc, 1).await.remove(0), t0, Duration::ZERO);
    assert_eq!(sender.await.unwrap(), PACKETS);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = srv.server.sfu().stats().await.unwrap();
    let recovered = after.red_recovered - before.red_recovered;
    let dropped = uplink.link_stats().0.dropped_loss;
    let h = heard.lock().unwrap();
    let first = *h.counters.first().unwrap();
    let expected = (PACKETS - first) as usize;
    let lost = 1.0 - h.counters.len() as f64 / expected as f64;
    eprintln!(
        "uplink dropped {dropped} datagrams; SFU rebuilt {recovered} packets from RED; the \
         physician (plain Opus) lost {:.2} % of {expected}",
        lost * 100.0
    );
    assert_eq!(h.red_packets, 0, "plain Opus only");
    assert_eq!(h.corrupt, 0);
    assert!(recovered >= 5, "{recovered}");
    assert!(lost < 0.02, "residual loss {lost}");
}

/// The cart's uplink loses 5 % and the cart sends plain Opus: the SFU asks for each lost
/// packet again (NACK; webrtc-rs resends it on its own SSRC) and forwards it late into its
/// gap, so the physician hears (nearly) all of the stethoscope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_lost_upstream_are_asked_for_again() {
    use consult_client::impair::{Loss, Profile};
    let srv = start_server().await;
    let room = "room-nack-up";
    let uplink = LossyRelay::start_impaired(
        srv.server.udp_addr,
        vec![(
            Duration::ZERO,
            Profile {
                loss: Loss::Random(LOSS),
                ..Profile::default()
            },
        )],
        vec![(Duration::ZERO, Profile::default())],
        0x7ed4,
    )
    .await
    .unwrap();
    let mut doc = srv.join(room, "dr-nackup", Role::Physician).await;
    let mut cart = srv
        .join_with(
            room,
            "cart-nackup",
            Role::Companion,
            ClientOptions {
                media_via: Some(uplink.addr()),
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
    assert!(!t[0].red);
    let before = srv.server.sfu().stats().await.unwrap();
    let sender = t[0].send_synthetic(
        tag(5, TrackLabel::Stethoscope),
        PACKETS,
        Duration::from_millis(20),
        80,
    );
    let t0 = Instant::now();
    let heard = listen(take_tracks(&mut doc, 1).await.remove(0), t0, Duration::ZERO);
    assert_eq!(sender.await.unwrap(), PACKETS);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = srv.server.sfu().stats().await.unwrap();
    let dropped = uplink.link_stats().0.dropped_loss;
    let h = heard.lock().unwrap();
    let first = *h.counters.first().unwrap();
    let expected = (PACKETS - first) as usize;
    let lost = 1.0 - h.counters.len() as f64 / expected as f64;
    eprintln!(
        "uplink dropped {dropped} datagrams (RTP and RTCP); the physician lost {:.2} % of \
         {expected} stethoscope packets",
        lost * 100.0
    );
    assert_eq!(h.corrupt, 0);
    assert_eq!(after.red_recovered, before.red_recovered, "no RED here");
    // The link lost packets; retransmission repaired them.
    assert!(
        dropped as f64 > 0.02 * f64::from(PACKETS),
        "{dropped} dropped"
    );
    assert!(lost < 0.01, "residual loss {lost}");
}
