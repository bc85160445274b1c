//! Simulcast: a cart publishes its room camera as three layers (webrtc-rs, rids q/h/f); the
//! physician gets one continuous stream at the best layer being sent. When the cart stops
//! sending the top layer, the SFU switches the physician to the next one at its keyframe, and
//! back when the top layer returns — with sequence numbers that never jump (nothing to NACK)
//! and timestamps that never go back. Asserted on what the physician received.

mod common;

use common::*;
use consult_client::synthetic::{check_payload, split_tag};
use consult_client::SyntheticVideo;
use consult_protocol::{ClientMsg, Role, TrackKind, TrackLabel};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One packet as the physician's application got it.
#[derive(Debug, Clone, Copy)]
struct Got {
    at: Duration,
    seq: u16,
    timestamp: u32,
    layer: u8,
    keyframe_start: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_physician_follows_the_best_layer_in_one_continuous_stream() {
    let srv = start_server().await;
    let room = "room-simulcast";
    let mut doc = srv.join(room, "dr-sim", Role::Physician).await;
    let mut cart = srv.join(room, "cart-sim", Role::Companion).await;
    doc.send(ClientMsg::Admit {
        participant_id: cart.participant_id.clone(),
    })
    .unwrap();
    cart.wait_admitted(WAIT).await.unwrap();
    let local = cart
        .publish_layers(
            &[TrackLabel::Stethoscope, TrackLabel::Camera],
            &[TrackLabel::Camera],
        )
        .await
        .unwrap();
    let camera = &local[1];
    assert_eq!(camera.layers.len(), 3, "three simulcast layers");
    let duration = Duration::from_secs(16);
    let sent = camera.send_synthetic_video(SyntheticVideo {
        tag: tag(1, TrackLabel::Camera),
        bitrate_bps: 900_000,
        fps: 30,
        duration,
        keyframe_interval: Duration::from_secs(10),
    });
    let steth = local[0].send_synthetic(
        tag(1, TrackLabel::Stethoscope),
        (duration.as_millis() / 20) as u32,
        Duration::from_millis(20),
        80,
    );

    let remote = take_tracks(&mut doc, 2).await;
    let t0 = Instant::now();
    let cam = remote
        .into_iter()
        .find(|r| r.info.label == TrackLabel::Camera)
        .expect("camera");
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let corrupt = Arc::new(std::sync::atomic::AtomicU32::new(0));
    {
        let got = got.clone();
        let corrupt = corrupt.clone();
        tokio::spawn(async move {
            while let Ok((pkt, _)) = cam.track.read_rtp().await {
                match check_payload(TrackKind::Video, &pkt.payload) {
                    Some(info) => got.lock().unwrap().push(Got {
                        at: t0.elapsed(),
                        seq: pkt.header.sequence_number,
                        timestamp: pkt.header.timestamp,
                        layer: split_tag(info.tag).1,
                        // "BSYN" after the VP8 descriptor: the first packet of a keyframe.
                        keyframe_start: pkt.payload.get(1) == Some(&b'B'),
                    }),
                    None => {
                        corrupt.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }

    // Phase 1 (0–5 s): all three layers. Phase 2 (5–10 s): the top layer stops.
    // Phase 3 (10–16 s): it is back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Nobody receives the two lower layers: the SFU told the cart it may pause them.
    let active = |l: usize| camera.layers[l].active.load(Ordering::Relaxed);
    let hints_1 = (active(0), active(1), active(2));
    // The cart stops its top layer (as a browser does when its own uplink shrinks): the SFU
    // asks the middle one back and switches the physician to it.
    let top = &camera.layers[2];
    top.held.store(true, Ordering::Relaxed);
    let paused_at = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let hints_2 = (active(0), active(1));
    top.held.store(false, Ordering::Relaxed);
    let resumed_at = t0.elapsed();
    let _ = sent.await.unwrap();
    let _ = steth.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut hints = Vec::new();
    while let Some(ev) = cart.next_event(Duration::from_millis(50)).await {
        if let consult_client::ClientEvent::Server(consult_protocol::ServerMsg::PublisherLayers {
            active_rids,
            ..
        }) = ev
        {
            hints.push(active_rids);
        }
    }
    eprintln!("layer hints to the cart: {hints:?}");
    assert_eq!(hints_1, (false, false, true), "q, h paused; f sent");
    assert_eq!(hints_2, (false, true), "h asked back while f is off");
    assert!(hints.len() >= 3, "{hints:?}");
    let got = got.lock().unwrap().clone();
    assert_eq!(corrupt.load(Ordering::Relaxed), 0, "corrupt packets");
    assert!(got.len() > 300, "only {} camera packets", got.len());
    let in_window = |from: Duration, to: Duration| -> Vec<Got> {
        got.iter()
            .filter(|g| g.at >= from && g.at < to)
            .copied()
            .collect()
    };
    let share = |v: &[Got], layer: u8| {
        v.iter().filter(|g| g.layer == layer).count() as f64 / v.len().max(1) as f64
    };
    let first_of = |layer: u8, after: Duration| {
        got.iter()
            .find(|g| g.layer == layer && g.at >= after)
            .map(|g| g.at)
    };

    // Only one layer is forwarded at a time: the top one while it is sent.
    let steady1 = in_window(Duration::from_secs(2), paused_at);
    let steady2 = in_window(paused_at + Duration::from_secs(2), resumed_at);
    let steady3 = in_window(
        resumed_at + Duration::from_secs(3),
        resumed_at + Duration::from_secs(6),
    );
    let (s1, s2, s3) = (share(&steady1, 2), share(&steady2, 1), share(&steady3, 2));
    let to_mid = first_of(1, paused_at).map(|t| t - paused_at);
    let back_top = first_of(2, resumed_at).map(|t| t - resumed_at);
    eprintln!(
        "simulcast: {} packets; top layer {:.1} % of 2–5 s, middle {:.1} % of the top's pause, \
         top {:.1} % after it returned; switch down after {:?}, back up after {:?}",
        got.len(),
        s1 * 100.0,
        s2 * 100.0,
        s3 * 100.0,
        to_mid,
        back_top
    );
    assert!(s1 > 0.99, "top layer share {s1}");
    assert!(s2 > 0.99, "middle layer share while the top is paused {s2}");
    assert!(s3 > 0.99, "top layer share after it returned {s3}");
    assert!(
        to_mid.is_some_and(|d| d < Duration::from_secs(2)),
        "{to_mid:?}"
    );
    assert!(
        back_top.is_some_and(|d| d < Duration::from_secs(3)),
        "{back_top:?}"
    );

    // One continuous stream: every sequence number once, none skipped (loopback loses
    // nothing), timestamps never backwards; each layer change starts on a keyframe.
    let mut switches = 0;
    for w in got.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert_eq!(
            b.seq,
            a.seq.wrapping_add(1),
            "sequence jump {} → {} at {:?}",
            a.seq,
            b.seq,
            b.at
        );
        assert!(
            b.timestamp.wrapping_sub(a.timestamp) < u32::MAX / 2,
            "timestamp back {} → {} at {:?}",
            a.timestamp,
            b.timestamp,
            b.at
        );
        if a.layer != b.layer {
            switches += 1;
            assert!(
                b.keyframe_start,
                "switch to layer {} not on a keyframe",
                b.layer
            );
        }
    }
    // Start (lowest layers may come first), down when the top stops, up when it returns.
    assert!((2..=6).contains(&switches), "{switches} layer switches");
}
