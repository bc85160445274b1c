//! The `consult-cart` binary against a real server: it joins with the companion's token, waits
//! for admission, publishes the stethoscope (stethoscope Opus profile) and, with ffmpeg, VP8 test
//! patterns as camera and otoscope; it follows the physician's freeze and still requests, and
//! leaves when the physician ends the consultation.

mod common;

use common::*;
use consult_client::audio::decode_timeline;
use consult_client::stills::StillQueue;
use consult_client::ClientEvent;
use consult_protocol::{ClientMsg, Role, ServerMsg, TrackLabel};
use consult_protocol::{DeviceCommand, StillInfo};
use consult_recorder::vp8_ivf::vp8_payload;
use sha2::{Digest, Sha256};
use std::process::{Command, Stdio};
use std::time::Duration;
use webrtc::track::track_remote::TrackRemote;

/// Whether an RTP payload starts a VP8 keyframe (descriptor parsed by the recorder's
/// depacketizer, then the frame tag's keyframe bit).
fn vp8_keyframe_start(p: &[u8]) -> bool {
    vp8_payload(p)
        .is_some_and(|(frame, start)| start && frame.first().is_some_and(|b| b & 0x01 == 0))
}

/// RTP timestamps (frames) of the packets read from `track` during `d`, and whether each
/// frame started with a keyframe.
async fn frames_during(track: &TrackRemote, d: Duration) -> Vec<(u32, bool)> {
    let mut frames: Vec<(u32, bool)> = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Ok(Ok((pkt, _)))) =
        tokio::time::timeout_at(deadline, tokio::time::timeout(d, track.read_rtp())).await
    {
        let key = vp8_keyframe_start(&pkt.payload);
        match frames
            .iter_mut()
            .find(|(ts, _)| *ts == pkt.header.timestamp)
        {
            Some(f) => f.1 |= key,
            None => frames.push((pkt.header.timestamp, key)),
        }
    }
    frames
}

/// Size of a baseline or progressive JPEG, from its start-of-frame marker.
fn jpeg_size(b: &[u8]) -> Option<(u16, u16)> {
    let mut i = 2;
    while i + 9 < b.len() {
        if b[i] != 0xFF {
            return None;
        }
        let marker = b[i + 1];
        let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        if matches!(marker, 0xC0..=0xC2) {
            let h = u16::from_be_bytes([b[i + 5], b[i + 6]]);
            let w = u16::from_be_bytes([b[i + 7], b[i + 8]]);
            return Some((w, h));
        }
        i += 2 + len;
    }
    None
}

/// Freeze holds the picture (only the held keyframe is sent), unfreeze brings live video back,
/// and a still asked for arrives at full resolution with its checksum.
async fn physician_steers_the_otoscope(
    srv: &TestServer,
    doc: &mut consult_client::Client,
    cart_id: &str,
    otoscope: &TrackRemote,
) {
    let steer = |command: DeviceCommand| ClientMsg::DeviceControl {
        participant_id: cart_id.to_owned(),
        command,
    };
    let label = TrackLabel::Otoscope;
    let live = frames_during(otoscope, Duration::from_secs(2)).await;
    doc.send(steer(DeviceCommand::Freeze { label })).unwrap();
    frames_during(otoscope, Duration::from_millis(700)).await;
    let frozen = frames_during(otoscope, Duration::from_secs(3)).await;
    eprintln!(
        "otoscope frames: live {} in 2 s, frozen {} in 3 s ({} keyframes)",
        live.len(),
        frozen.len(),
        frozen.iter().filter(|f| f.1).count()
    );
    assert!(live.len() >= 15, "live video: {} frames in 2 s", live.len());
    assert!(
        frozen.len() <= 3 && frozen.iter().all(|f| f.1),
        "frozen: only the held keyframe, every 2 s: {frozen:?}"
    );
    doc.send(steer(DeviceCommand::Unfreeze { label })).unwrap();
    frames_during(otoscope, Duration::from_millis(500)).await;
    let back = frames_during(otoscope, Duration::from_secs(2)).await;
    assert!(back.len() >= 15, "live again: {} frames in 2 s", back.len());

    doc.send(steer(DeviceCommand::Capture { label })).unwrap();
    let still: StillInfo = doc
        .wait_for(Duration::from_secs(20), |ev| match ev {
            ClientEvent::Server(ServerMsg::StillAvailable { still }) => Some(still),
            _ => None,
        })
        .await
        .expect("the still asked for arrives");
    assert_eq!(still.label, label);
    assert_eq!(still.content_type, "image/jpeg");
    assert_eq!(still.device.as_deref(), Some("test pattern"));
    let bytes = reqwest::Client::new()
        .get(format!(
            "{}/api/stills/{}?room={}",
            srv.http_base(),
            still.still_id,
            still.room
        ))
        .header("authorization", srv.api_auth())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), still.sha256);
    let size = jpeg_size(&bytes);
    eprintln!("still: {} bytes, {size:?} (stream is 640x360)", bytes.len());
    assert_eq!(size, Some((1280, 720)), "full resolution, not the stream's");
}

fn has_ffmpeg() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cart_binary_publishes_stethoscope_and_video() {
    let bin = env!("CARGO_BIN_EXE_consult-cart");
    let srv = start_server(false).await;
    let stills_dir = temp_dir("cart-stills");
    let room = "room-cart";
    let mut doc = srv.join(room, "dr-cart", Role::Physician).await;
    let token = srv.token(room, "cart-1", Role::Companion);
    let video = has_ffmpeg();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--server",
        &srv.ws_url(),
        "--token",
        &token,
        "--duration",
        "40",
    ]);
    cmd.arg("--stills-dir").arg(&stills_dir);
    if video {
        // Live capture through ffmpeg (as from an ALSA device), here a 200 Hz tone.
        cmd.args([
            "--test-pattern",
            "--stethoscope-input-format",
            "lavfi",
            "--stethoscope-alsa",
            "sine=frequency=200:sample_rate=48000",
        ]);
    }
    let mut cart = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cart starts");

    let (cart_id, identity) = admit_first_waiting(&mut doc).await;
    assert_eq!(identity, "cart-1");

    let expected = if video { 3 } else { 1 };
    let tracks = take_tracks(&mut doc, expected).await;
    let mut labels: Vec<TrackLabel> = tracks.iter().map(|t| t.info.label).collect();
    labels.sort_by_key(|l| *l as u32);
    eprintln!("cart publishes {labels:?} (ffmpeg: {video})");
    assert!(labels.contains(&TrackLabel::Stethoscope));
    // Three seconds of stethoscope decode to sound; video arrives as VP8 with a keyframe (the
    // cart's encoder makes one every 2 s).
    let mut otoscope = None;
    for t in tracks {
        let track = t.track.clone();
        if t.info.label == TrackLabel::Otoscope {
            otoscope = Some(track.clone());
        }
        let mut packets = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(500), track.read_rtp()).await {
                Ok(Ok((pkt, _))) => packets.push((pkt.header.timestamp, pkt.payload.to_vec())),
                _ => break,
            }
        }
        match t.info.label {
            TrackLabel::Stethoscope => {
                let pcm = decode_timeline(&packets).unwrap();
                let rms = (pcm.iter().map(|s| s * s).sum::<f32>() / pcm.len().max(1) as f32).sqrt();
                eprintln!(
                    "stethoscope: {} packets, {:.2} s decoded, rms {rms:.3}",
                    packets.len(),
                    pcm.len() as f32 / 48000.0
                );
                assert!(packets.len() >= 120, "about 50 packets a second");
                assert!(rms > 0.02, "sound, not silence");
                if video {
                    // The live source's tone comes through: 200 Hz = 400 zero crossings/s.
                    let crossings = pcm
                        .windows(2)
                        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
                        .count() as f32
                        / (pcm.len() as f32 / 48000.0);
                    eprintln!("stethoscope live tone: {crossings:.0} zero crossings/s");
                    assert!((crossings - 400.0).abs() < 20.0, "{crossings}");
                }
            }
            _ => {
                // A VP8 payload descriptor, and at least one keyframe start within 2 s.
                assert!(
                    packets.len() >= 20,
                    "{}: {} packets",
                    t.info.label,
                    packets.len()
                );
                let keyframe = packets.iter().any(|(_, p)| vp8_keyframe_start(p));
                assert!(
                    keyframe,
                    "{}: a VP8 keyframe arrives within 3 s",
                    t.info.label
                );
            }
        }
    }
    if video {
        let otoscope = otoscope.expect("otoscope track");
        physician_steers_the_otoscope(&srv, &mut doc, &cart_id, &otoscope).await;
        let queue = StillQueue::open(&stills_dir).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !queue.pending().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the cart's still queue empties once uploaded");
    }
    doc.send(ClientMsg::EndConsultation).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), cart.wait())
        .await
        .expect("cart exits when the consultation ends")
        .unwrap();
    assert!(status.success());
}
