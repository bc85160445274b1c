//! The 100 kbps scenario: a cart publishes room camera, otoscope, speech and stethoscope; the
//! physician's link (both directions, through the impairment relay) goes 2 Mbps → 100 kbps
//! with 100 ms delay and 2 % loss → 2 Mbps. Everything is asserted on what the physician
//! really received (counters and send times carried in the synthetic payloads), not on what
//! the allocator meant to do. A time series goes to `test-artifacts/bandwidth-scenario.json`.

mod common;

use common::*;
use consult_client::impair::{Loss, Profile};
use consult_client::relay::LossyRelay;
use consult_client::synthetic::{check_payload, now_us, split_tag};
use consult_client::{ClientEvent, ClientOptions, RemoteTrack};
use consult_client::{SyntheticVideo, PT_RED};
use consult_protocol::{ClientMsg, PeerTarget, Role, ServerMsg, TrackKind, TrackLabel};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Link phases, from the relay's start.
const DEGRADED_AT: Duration = Duration::from_secs(10);
const RECOVERED_AT: Duration = Duration::from_secs(25);
const END_AT: Duration = Duration::from_secs(40);
/// The estimate must have settled this long after the step down.
const SETTLE: Duration = Duration::from_secs(2);
/// An audio packet later than this after it was sent misses its playout.
const PLAYOUT_DEADLINE_US: u64 = 400_000;

fn good() -> Profile {
    Profile {
        delay: Duration::from_millis(20),
        ..Profile::rate(2_000_000, 200)
    }
}

fn degraded() -> Profile {
    Profile {
        delay: Duration::from_millis(100),
        loss: Loss::Random(0.02),
        ..Profile::rate(100_000, 300)
    }
}

/// (counter, sent µs, received µs, payload bytes, simulcast layer, came as a RED block
/// carried by the next packet) of each packet received.
type Arrivals = Arc<Mutex<Vec<(u32, u64, u64, usize, u8, bool)>>>;

fn record(track: RemoteTrack, kind: TrackKind) -> Arrivals {
    let out: Arrivals = Arc::default();
    let o = out.clone();
    tokio::spawn(async move {
        while let Ok((pkt, _)) = track.track.read_rtp().await {
            // Audio may come as RED (the previous packet, then this one).
            let blocks = if pkt.header.payload_type == PT_RED {
                consult_client::red::blocks(&pkt.payload).unwrap_or_default()
            } else {
                vec![&pkt.payload[..]]
            };
            let n = blocks.len();
            for (i, b) in blocks.into_iter().enumerate() {
                if let Some(info) = check_payload(kind, b) {
                    let primary = i + 1 == n;
                    o.lock().unwrap().push((
                        info.counter,
                        info.sent_us,
                        now_us(),
                        if primary { pkt.payload.len() } else { 0 },
                        split_tag(info.tag).1,
                        !primary,
                    ));
                }
            }
        }
    });
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consultation_at_100_kbps_keeps_the_stethoscope() {
    let srv = start_server_with(|c| c.downlink_estimation = true).await;
    let room = "room-100k";
    let relay = LossyRelay::start_impaired(
        srv.server.udp_addr,
        vec![
            (Duration::ZERO, good()),
            (DEGRADED_AT, degraded()),
            (RECOVERED_AT, good()),
        ],
        vec![
            (Duration::ZERO, good()),
            (DEGRADED_AT, degraded()),
            (RECOVERED_AT, good()),
        ],
        100,
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    let t0_us = now_us();
    let mut doc = srv
        .join_with(
            room,
            "dr-100k",
            Role::Physician,
            ClientOptions {
                media_via: Some(relay.addr()),
                // As browsers do: the SFU may send the audio with redundancy, and estimates
                // the downlink.
                red: true,
                downlink_estimation: true,
                ..ClientOptions::default()
            },
        )
        .await;
    let mut cart = srv.join(room, "cart-100k", Role::Companion).await;
    doc.send(ClientMsg::Admit {
        participant_id: cart.participant_id.clone(),
    })
    .unwrap();
    cart.wait_admitted(WAIT).await.unwrap();
    let labels = [
        TrackLabel::Stethoscope,
        TrackLabel::Microphone,
        TrackLabel::Otoscope,
        TrackLabel::Camera,
    ];
    // The room camera as three simulcast layers (60, 200 and 600 kbit/s).
    let local = cart
        .publish_layers(&labels, &[TrackLabel::Camera])
        .await
        .unwrap();
    assert_eq!(local[3].layers.len(), 3);
    // The cart sends until the end of the scenario.
    let left = END_AT.saturating_sub(t0.elapsed());
    let frame = Duration::from_millis(20);
    let audio_packets = (left.as_millis() / frame.as_millis()) as u32;
    // Stethoscope 32 kbit/s and speech 16 kbit/s of payload, in 20 ms packets.
    let steth = local[0].send_synthetic(1, audio_packets, frame, 80);
    let speech = local[1].send_synthetic(2, audio_packets, frame, 40);
    let video = |tag, bitrate_bps, fps| SyntheticVideo {
        tag,
        bitrate_bps,
        fps,
        duration: left,
        keyframe_interval: Duration::from_secs(4),
    };
    let oto = local[2].send_synthetic_video(video(3, 400_000, 15));
    let cam = local[3].send_synthetic_video(video(4, 600_000, 30));

    let remote = take_tracks(&mut doc, labels.len()).await;
    let mut arrivals = Vec::new();
    for r in remote {
        let label = r.info.label;
        arrivals.push((label, record(r, label.kind())));
    }
    let arrivals_of = |l: TrackLabel| arrivals.iter().find(|(x, _)| *x == l).unwrap().1.clone();

    // Sample the physician's downlink estimate and allocation as the SFU sees them.
    let mut series = Vec::new();
    let mut degraded_metrics = None;
    let mut link_marks = Vec::new();
    while t0.elapsed() < END_AT + Duration::from_secs(1) {
        // The downlink's offered load in the settled part of the degraded phase.
        let marks = [
            DEGRADED_AT + Duration::from_secs(4),
            RECOVERED_AT - Duration::from_secs(1),
        ];
        if link_marks.len() < 2 && t0.elapsed() >= marks[link_marks.len()] {
            link_marks.push((t0.elapsed(), relay.link_stats().1, relay.traffic_mix()));
        }
        if degraded_metrics.is_none() && t0.elapsed() >= RECOVERED_AT - Duration::from_secs(2) {
            // What the operators' dashboard shows of the physician's link at 100 kbps.
            let (_, text) = srv.api_get("/metrics").await;
            let sub = format!(
                "connection=\"subscriber\",participant=\"{}\"",
                doc.participant_id
            );
            degraded_metrics = Some((
                metric(&text, "consult_peer_audio_only", &sub),
                metric(&text, "consult_peer_allocated_bps", &sub),
                metric(&text, "consult_peer_estimate_bps", &sub),
            ));
        }
        let stats = srv.server.sfu().stats().await.unwrap();
        if let Some(p) = stats
            .peers
            .iter()
            .find(|p| p.participant == doc.participant_id && p.target == PeerTarget::Subscriber)
        {
            series.push((
                t0.elapsed(),
                p.link.estimate_bps,
                p.allocated_bps,
                p.audio_only,
                p.link.loss_to_client,
                p.link.rtt_ms,
                relay.traffic_mix().1,
                p.allocation_estimate_bps,
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let sent_steth = steth.await.unwrap();
    let sent_speech = speech.await.unwrap();
    let sent_oto = oto.await.unwrap();
    let sent_cam = cam.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Which notices the physician got.
    let mut notices = Vec::new();
    while let Some(ev) = doc.next_event(Duration::from_millis(100)).await {
        if let ClientEvent::Server(ServerMsg::Bandwidth {
            audio_only,
            low_link,
            estimate_kbps,
            ..
        }) = ev
        {
            notices.push((audio_only, low_link, estimate_kbps));
        }
    }

    // Audio: in the degraded phase once the estimate has settled, packets in time for playout,
    // and the longest gap in the stethoscope.
    let rel = |us: u64| Duration::from_micros(us.saturating_sub(t0_us));
    let window = (DEGRADED_AT + SETTLE, RECOVERED_AT);
    let audio_report = |label: TrackLabel, sent_total: u32| {
        let a = arrivals_of(label);
        let a = a.lock().unwrap();
        // Counter → send time is linear: packet i was sent i × 20 ms after the first.
        let first_sent = a
            .iter()
            .map(|x| x.1 - u64::from(x.0) * 20_000)
            .min()
            .unwrap();
        let sent_at = |i: u32| Duration::from_micros(first_sent - t0_us + u64::from(i) * 20_000);
        let in_window: Vec<u32> = (0..sent_total)
            .filter(|i| (window.0..window.1).contains(&sent_at(*i)))
            .collect();
        // Each packet's earliest arrival, itself or as redundancy in the next one.
        let mut received: std::collections::HashMap<u32, u64> = Default::default();
        for x in a.iter() {
            let d = received.entry(x.0).or_insert(u64::MAX);
            *d = (*d).min(x.2 - x.1);
        }
        let primaries: std::collections::HashSet<u32> =
            a.iter().filter(|x| !x.5).map(|x| x.0).collect();
        let recovered_by_red = in_window
            .iter()
            .filter(|i| received.contains_key(i) && !primaries.contains(i))
            .count();
        let arrived = in_window
            .iter()
            .filter(|i| received.contains_key(i))
            .count();
        let in_time = in_window
            .iter()
            .filter(|i| received.get(i).is_some_and(|d| *d <= PLAYOUT_DEADLINE_US))
            .count();
        // Those that missed their playout: when sent (ms from the start) and how late.
        let late: Vec<(u64, Option<u64>)> = in_window
            .iter()
            .filter(|i| received.get(i).is_none_or(|d| *d > PLAYOUT_DEADLINE_US))
            .map(|i| {
                (
                    sent_at(*i).as_millis() as u64,
                    received.get(i).map(|d| d / 1000),
                )
            })
            .collect();
        let mut times: Vec<u64> = a
            .iter()
            .filter(|x| (window.0..window.1).contains(&rel(x.1)))
            .map(|x| x.2)
            .collect();
        times.sort_unstable();
        let max_gap_ms = times
            .windows(2)
            .map(|w| (w[1] - w[0]) / 1000)
            .max()
            .unwrap_or(u64::MAX);
        let mut delays: Vec<u64> = in_window
            .iter()
            .filter_map(|i| received.get(i))
            .copied()
            .collect();
        delays.sort_unstable();
        let pct = |q: usize| delays.get(delays.len() * q / 100).copied().unwrap_or(0) / 1000;
        let p95 = pct(95);
        // Delay variation once the step down's queue has drained (the last 8 s of the window):
        // the spread of what arrived first time, and where the resent packets land.
        let settled_delays = |lo: usize, hi: usize| {
            let mut d: Vec<u64> = in_window
                .iter()
                .filter(|i| sent_at(**i) >= window.1 - Duration::from_secs(8))
                .filter_map(|i| received.get(i))
                .copied()
                .collect();
            d.sort_unstable();
            let at = |q: usize| d.get(d.len() * q / 100).copied().unwrap_or(0) / 1000;
            (at(lo), at(50), at(hi))
        };
        let (s5, s50, s97) = settled_delays(5, 97);
        json!({
            "settled_delay_p5_p50_p97_ms": [s5, s50, s97],
            "track": label.as_str(),
            "sent_in_window": in_window.len(),
            "arrived": arrived,
            "in_time": in_time,
            "recovered_by_red": recovered_by_red,
            "in_time_share": in_time as f64 / in_window.len().max(1) as f64,
            "max_gap_ms": max_gap_ms,
            "delay_p95_ms": p95,
            "late_sent_ms_delay_ms": late,
        })
    };
    let steth_report = audio_report(TrackLabel::Stethoscope, sent_steth);
    let speech_report = audio_report(TrackLabel::Microphone, sent_speech);

    // Per second of reception, per track: the sum of `value` over the packets received.
    let per_second_sum = |label: TrackLabel, value: &dyn Fn(usize) -> u64| {
        let a = arrivals_of(label);
        let a = a.lock().unwrap();
        let mut v = vec![0u64; END_AT.as_secs() as usize + 1];
        for x in a.iter() {
            if let Some(slot) = v.get_mut(rel(x.2).as_secs() as usize) {
                *slot += value(x.3);
            }
        }
        v
    };
    // Video: packets received per second.
    let per_second = |label: TrackLabel| per_second_sum(label, &|_| 1);
    // Received payload kbit/s, for the time series.
    let kbps = |label: TrackLabel| {
        let bits = per_second_sum(label, &|bytes| bytes as u64 * 8);
        bits.into_iter().map(|b| b / 1000).collect::<Vec<_>>()
    };
    let cam_rate = per_second(TrackLabel::Camera);
    let oto_rate = per_second(TrackLabel::Otoscope);
    // Camera packets of the top simulcast layer (2) per second.
    let cam_top_rate = {
        let a = arrivals_of(TrackLabel::Camera);
        let a = a.lock().unwrap();
        let mut v = vec![0u64; END_AT.as_secs() as usize + 1];
        for x in a.iter().filter(|x| x.4 == 2) {
            if let Some(slot) = v.get_mut(rel(x.2).as_secs() as usize) {
                *slot += 1;
            }
        }
        v
    };
    // The camera's simulcast layer the physician got, per second (the most frequent one;
    // none when paused).
    let cam_layer: Vec<Option<u8>> = {
        let a = arrivals_of(TrackLabel::Camera);
        let a = a.lock().unwrap();
        let mut counts = vec![[0u32; 4]; END_AT.as_secs() as usize + 1];
        for x in a.iter() {
            if let Some(slot) = counts.get_mut(rel(x.2).as_secs() as usize) {
                slot[usize::from(x.4.min(3))] += 1;
            }
        }
        counts
            .iter()
            .map(|c| {
                (0..4u8)
                    .max_by_key(|l| c[usize::from(*l)])
                    .filter(|l| c[usize::from(*l)] > 0)
            })
            .collect()
    };
    // Video back: the first second after recovery from which the camera gets ≥ 90 % of the
    // top layer's packets of its last good second before the step down.
    let before = cam_top_rate[DEGRADED_AT.as_secs() as usize - 2].max(1);
    let back_s = (RECOVERED_AT.as_secs() as usize..cam_top_rate.len())
        .find(|s| cam_top_rate[*s] * 10 >= before * 9)
        .map(|s| s as u64 - RECOVERED_AT.as_secs());
    // Estimate settled: from the step down, the first sample under 150 kbps from which
    // every sample until recovery stays under 200 kbps. For the estimate the allocator acts
    // on (str0m's through the congestion gate), and for str0m's own.
    let settled = |estimate: &dyn Fn(usize) -> Option<u64>| {
        (0..series.len())
            .find(|&i| {
                series[i].0 >= DEGRADED_AT
                    && estimate(i).is_some_and(|e| e < 150_000)
                    && (i..series.len())
                        .filter(|&j| series[j].0 < RECOVERED_AT)
                        .all(|j| estimate(j).is_some_and(|e| e < 200_000))
            })
            .map(|i| (series[i].0 - DEGRADED_AT).as_millis() as u64)
    };
    let settle_ms = settled(&|i| series[i].7);
    let str0m_settle_ms = settled(&|i| series[i].1);

    let (ta, a, mix_a) = &link_marks[0];
    let (tb, b, mix_b) = &link_marks[1];
    let secs = (*tb - *ta).as_secs_f64();
    let mix = mix_b.1.since(&mix_a.1);
    // The physician's uplink in the same window: it sends no media here, only RTCP (receiver
    // reports, transport feedback, NACKs).
    let up = mix_b.0.since(&mix_a.0);
    let kbps_of = |bytes: u64| (bytes as f64 * 8.0 / secs / 10.0).round() / 100.0;
    let downlink = json!({
        "by_payload_type": mix.by_pt().iter().map(|(pt, n, bytes)| json!({
            "pt": pt, "packets_per_s": (*n as f64 / secs * 10.0).round() / 10.0, "kbps": kbps_of(*bytes),
        })).collect::<Vec<_>>(),
        "padded_kbps": kbps_of(mix.padded_bytes),
        "padded_packets_per_s": (mix.padded_packets as f64 / secs * 10.0).round() / 10.0,
        "rtcp_kbps": kbps_of(mix.rtcp_bytes),
        "other_kbps": kbps_of(mix.other_bytes),
        "offered_kbps": (b.bytes - a.bytes) as f64 * 8.0 / secs / 1000.0,
        "packets_per_s": (b.packets - a.packets) as f64 / secs,
        "dropped_queue": b.dropped_queue - a.dropped_queue,
        "dropped_loss": b.dropped_loss - a.dropped_loss,
    });
    // The allocator's reaction: the first sample in audio-only mode after the step down.
    let audio_only_ms = series
        .iter()
        .find(|s| s.0 >= DEGRADED_AT && s.3)
        .map(|s| (s.0 - DEGRADED_AT).as_millis() as u64);
    let report = json!({
        "audio_only_after_ms": audio_only_ms,
        "degraded_downlink": downlink,
        "degraded_uplink": {
            "rtcp_kbps": kbps_of(up.rtcp_bytes),
            "rtcp_kbps_by_first_pt": (0..8u8)
                .filter(|i| up.rtcp_bytes_by_first_pt[usize::from(*i)] > 0)
                .map(|i| ((200 + u16::from(i)).to_string(), json!(kbps_of(up.rtcp_bytes_by_first_pt[usize::from(i)]))))
                .collect::<serde_json::Map<_, _>>(),
            "other_kbps": kbps_of(up.other_bytes),
        },
        "scenario": "2 Mbps → 100 kbps, 100 ms, 2 % loss → 2 Mbps (physician's link, both ways)",
        "stethoscope": steth_report,
        "speech": speech_report,
        "estimate_settled_after_ms": settle_ms,
        "str0m_estimate_settled_after_ms": str0m_settle_ms,
        "camera_back_after_s": back_s,
        "video_packets_per_s": {"camera": cam_rate, "camera_top_layer": cam_top_rate, "otoscope": oto_rate},
        "camera_layer_per_s": cam_layer,
        "received_kbps_per_s": {
            "stethoscope": kbps(TrackLabel::Stethoscope),
            "speech": kbps(TrackLabel::Microphone),
            "otoscope": kbps(TrackLabel::Otoscope),
            "camera": kbps(TrackLabel::Camera),
        },
        "phases_s": {"degraded": DEGRADED_AT.as_secs(), "recovered": RECOVERED_AT.as_secs(), "end": END_AT.as_secs()},
        "sent": {
            "stethoscope": sent_steth, "speech": sent_speech,
            "otoscope": {"packets": sent_oto.packets, "keyframes": sent_oto.keyframes},
            "camera": {"packets": sent_cam.packets, "keyframes": sent_cam.keyframes},
        },
        "notices": notices.iter().map(|n| json!({"audio_only": n.0, "low_link": n.1, "estimate_kbps": n.2})).collect::<Vec<_>>(),
        "series": series.iter().enumerate().map(|(i, s)| json!({
            // What the physician's downlink was offered since the sample before, by RTP
            // payload type (audio, video, retransmissions), in kbit/s.
            "offered_kbps_by_pt": i.checked_sub(1).map(|j| {
                let secs = (s.0 - series[j].0).as_secs_f64();
                s.6.since(&series[j].6).by_pt().iter()
                    .map(|(pt, _, bytes)| (pt.to_string(), json!((*bytes as f64 * 8.0 / secs / 1000.0).round())))
                    .collect::<serde_json::Map<_, _>>()
            }),
            "t_ms": s.0.as_millis() as u64,
            "estimate_bps": s.1,
            "allocation_estimate_bps": s.7,
            "allocated_bps": s.2,
            "audio_only": s.3,
            "loss": s.4,
            "rtt_ms": s.5,
        })).collect::<Vec<_>>(),
        "link": format!("{:?}", relay.link_stats()),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bandwidth-scenario.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());

    // What the engine guarantees today (the targets and the figures measured are in
    // the closing notes; the ones not met yet are not asserted here).
    for r in [&steth_report, &speech_report] {
        let share = r["in_time_share"].as_f64().unwrap();
        // 2 % of the packets are lost at random on this link; RED does not fit beside the
        // audio, so lost packets are resent (NACK + RTX, `sfu/src/audio_rtx.rs`): measured
        // 99.1–99.9 % in time (target 99 %; those late were sent while the queue of the step
        // down drained), every packet arrived, gaps 44–91 ms (target 200 ms). Before
        // retransmission: 96.3–98.6 %. Regression guards:
        assert!(share >= 0.98, "{r}");
        assert!(r["max_gap_ms"].as_u64().unwrap() <= 250, "{r}");
        // Residual loss after repair under 2 % (the bound for lung sounds).
        let arrived = r["arrived"].as_u64().unwrap() as f64;
        let sent = r["sent_in_window"].as_u64().unwrap() as f64;
        assert!(arrived >= 0.98 * sent, "{r}");
    }
    // The repair is retransmission: the link carried Opus RTX (payload type 112).
    let rtx_packets = mix.by_pt().iter().find(|(pt, ..)| *pt == 112).map(|x| x.1);
    assert!(rtx_packets.is_some_and(|n| n > 0), "{downlink}");
    // Once settled, the thin downlink carries the audio and little else: no stale video
    // retransmissions, no queue overflow (measured 79–83 kbit/s offered for 77 kbit/s of
    // audio; 84–86 with the audio retransmissions).
    let offered = downlink["offered_kbps"].as_f64().unwrap();
    assert!(offered <= 120.0, "{downlink}");
    // Nor does the physician's uplink fill with NACKs for the paused video: 23 kbit/s of RTCP
    // before `nack_limit` (webrtc-rs asks forever), 14.2 kbit/s with it, 9.8 once `rr_merge`
    // sends the 4 tracks' receiver reports (4 a second) as one packet per tick (5.5 of
    // reports, 4.3 of transport feedback); 9.1–9.5 with audio NACKs, once RTX streams are left
    // out of the reports.
    let up_rtcp = report["degraded_uplink"]["rtcp_kbps"].as_f64().unwrap();
    assert!(up_rtcp <= 13.0, "{}", report["degraded_uplink"]);
    let (audio_only_gauge, allocated_gauge, estimate_gauge) = degraded_metrics.unwrap();
    eprintln!("metrics at 100 kbps: audio_only {audio_only_gauge:?}, allocated {allocated_gauge:?}, estimate {estimate_gauge:?}");
    assert_eq!(audio_only_gauge, Some(1.0));
    assert!(
        allocated_gauge.is_some_and(|a| a < 100_000.0),
        "{allocated_gauge:?}"
    );
    assert!(
        notices.iter().any(|n| n.0),
        "the physician was told video is paused: {notices:?}"
    );
    assert!(
        // The estimate the allocator acts on: measured 1.5–2.0 s (target 2 s); str0m's own
        // took 1.8–5.8 s.
        settle_ms.is_some_and(|ms| ms <= 4_000),
        "estimate settled after {settle_ms:?} ms"
    );
    // The physician's report lists the period in audio-only mode and the low estimate.
    let (status, body) = srv
        .api_get(&format!("/api/consultations/{room}/summary"))
        .await;
    assert_eq!(status, 200);
    let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
    let kinds: Vec<(String, String)> = summary["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let d = &i["detail"];
            (
                i["kind"].as_str().unwrap_or("").to_owned(),
                d["phase"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    eprintln!("incidents: {kinds:?}");
    for kind in ["audio_only", "low_estimate"] {
        assert!(
            kinds.iter().any(|k| k.0 == kind && k.1 == "start"),
            "{kind} in the summary: {kinds:?}"
        );
    }

    // The camera's top simulcast layer comes back after the recovery (measured 4–10 s to 90 %
    // of its packet rate; the target is 10 s). Regression guard:
    assert!(
        back_s.is_some_and(|s| s <= 14),
        "camera top layer back after {back_s:?} s"
    );

    // Video does not compete with the audio once the estimate has settled.
    let quiet_from = (DEGRADED_AT + SETTLE).as_secs() as usize + 2;
    let video_in_degraded: u64 = (quiet_from..RECOVERED_AT.as_secs() as usize)
        .map(|s| cam_rate[s] + oto_rate[s])
        .sum();
    assert!(
        video_in_degraded <= 20,
        "{video_in_degraded} video packets at 100 kbps"
    );
}
