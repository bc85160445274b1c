//! Stethoscope fidelity through the SFU: a synthetic heart sound (S1/S2, murmur, breath) goes
//! cart → SFU → physician as our stethoscope profile (Opus audio application, fullband, no DTX,
//! 64 kbps) and, for comparison, as a generic speech profile (VoIP application, DTX, 32 kbps).
//! The physician's side decodes both and compares them with the source: energy per
//! third-octave band from 20 Hz to 2 kHz, and S1/S2 timing.

mod common;

use common::*;
use consult_client::audio::{decode_timeline, AudioEncoder, SAMPLE_RATE};
use consult_client::fidelity::{compare, FidelityReport};
use consult_client::heart::{generate, HeartSoundConfig};
use consult_protocol::{ClientMsg, Role, TrackLabel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECONDS: f32 = 10.0;

/// RTP timestamp and payload of each packet received.
type Packets = Vec<(u32, Vec<u8>)>;

fn table(name: &str, r: &FidelityReport) -> String {
    let mut s = format!(
        "{name}: {:.1} s compared, max band error {:.2} dB, waveform corr {:.3}, envelope corr {:.3}, max S1/S2 shift {:.1} ms\n",
        r.seconds,
        r.max_band_error_db(),
        r.correlation,
        r.envelope_correlation,
        r.max_onset_shift_ms
    );
    for (c, src, dec) in &r.bands {
        s += &format!(
            "  {c:7.1} Hz  source {src:7.2} dB  decoded {dec:7.2} dB  diff {:+6.2} dB\n",
            dec - src
        );
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stethoscope_profile_keeps_heart_sounds_speech_profile_is_measured() {
    let srv = start_server().await;
    let room = "room-steth";
    let mut doc = srv.join(room, "dr-steth", Role::Physician).await;
    let mut cart = srv.join(room, "ide-steth", Role::Companion).await;
    doc.send(ClientMsg::Admit {
        participant_id: cart.participant_id.clone(),
    })
    .unwrap();
    cart.wait_admitted(WAIT).await.unwrap();

    let heart = generate(&HeartSoundConfig::default(), SECONDS);
    let onsets: Vec<usize> = heart
        .s1_onsets
        .iter()
        .chain(&heart.s2_onsets)
        .copied()
        .collect();
    let ours = AudioEncoder::stethoscope(64_000)
        .unwrap()
        .encode_all(&heart.samples)
        .unwrap();
    let speech = AudioEncoder::speech()
        .unwrap()
        .encode_all(&heart.samples)
        .unwrap();
    let dtx_frames = speech.iter().filter(|f| f.is_none()).count();

    let tracks = cart
        .publish(&[TrackLabel::Stethoscope, TrackLabel::Microphone])
        .await
        .unwrap();
    let frame = Duration::from_millis(20);
    let senders = [
        tracks[0].send_frames(ours, frame),
        tracks[1].send_frames(speech, frame),
    ];
    let mut received: Vec<(TrackLabel, Arc<Mutex<Packets>>)> = Vec::new();
    for t in take_tracks(&mut doc, 2).await {
        let store = Arc::new(Mutex::new(Vec::new()));
        let s = store.clone();
        let track = t.track.clone();
        tokio::spawn(async move {
            while let Ok((pkt, _)) = track.read_rtp().await {
                s.lock()
                    .unwrap()
                    .push((pkt.header.timestamp, pkt.payload.to_vec()));
            }
        });
        received.push((t.info.label, store));
    }
    for s in senders {
        s.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut reports = serde_json::Map::new();
    let mut ours_report = None;
    for (label, store) in &received {
        let packets = store.lock().unwrap().clone();
        let pcm = decode_timeline(&packets).unwrap();
        let r = compare(&heart.samples, &pcm, &onsets, SAMPLE_RATE);
        let name = match label {
            TrackLabel::Stethoscope => "stethoscope profile (audio, fullband, no DTX, 64 kbps)",
            _ => "speech profile (VoIP, DTX, 32 kbps)",
        };
        eprint!("{}", table(name, &r));
        let mut j = r.to_json();
        j["packets_received"] = packets.len().into();
        if *label == TrackLabel::Microphone {
            j["dtx_frames_not_sent"] = dtx_frames.into();
        }
        reports.insert(label.as_str().to_owned(), j);
        if *label == TrackLabel::Stethoscope {
            ours_report = Some(r);
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("stethoscope-fidelity.json"),
        serde_json::to_string_pretty(&reports).unwrap(),
    )
    .unwrap();

    let r = ours_report.expect("stethoscope track received");
    assert!(
        r.seconds >= SECONDS - 3.0,
        "compared only {:.1} s",
        r.seconds
    );
    assert!(
        r.max_band_error_db() <= 3.0,
        "band energy within ±3 dB from 20 Hz to 2 kHz:\n{}",
        table("stethoscope", &r)
    );
    assert!(r.envelope_correlation >= 0.95, "S1/S2 envelope preserved");
    assert!(r.max_onset_shift_ms <= 5.0, "S1/S2 timing preserved");
}
