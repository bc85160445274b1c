//! The `consult-cart` binary against a real server: it joins with the companion's token, waits
//! for admission, publishes the stethoscope (synthetic heart sound, stethoscope Opus profile) and,
//! with ffmpeg, VP8 test patterns as camera and otoscope; it leaves when the physician ends the
//! consultation.

mod common;

use common::*;
use consult_client::audio::decode_timeline;
use consult_client::ClientEvent;
use consult_protocol::{ClientMsg, Role, ServerMsg, TrackLabel};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn cart_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join("target/debug/consult-cart");
    // Built here if `cargo test` did not build it (it belongs to another package).
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "consult-client",
            "--bin",
            "consult-cart",
        ])
        .current_dir(&root)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "consult-cart builds");
    bin
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
    let bin = cart_binary();
    let srv = start_server().await;
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
        "20",
    ]);
    if video {
        cmd.arg("--test-pattern");
    }
    let mut cart = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cart starts");

    let waiting = doc
        .wait_for(WAIT, |ev| match ev {
            ClientEvent::Server(ServerMsg::WaitingRoom { waiting }) if !waiting.is_empty() => {
                Some(waiting)
            }
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(waiting[0].identity, "cart-1");
    doc.send(ClientMsg::Admit {
        participant_id: waiting[0].participant_id.clone(),
    })
    .unwrap();

    let expected = if video { 3 } else { 1 };
    let tracks = take_tracks(&mut doc, expected).await;
    let mut labels: Vec<TrackLabel> = tracks.iter().map(|t| t.info.label).collect();
    labels.sort_by_key(|l| *l as u32);
    eprintln!("cart publishes {labels:?} (ffmpeg: {video})");
    assert!(labels.contains(&TrackLabel::Stethoscope));
    // Three seconds of stethoscope decode to sound; video arrives as VP8 with a keyframe (the
    // cart's encoder makes one every 2 s).
    for t in tracks {
        let track = t.track.clone();
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
                assert!(rms > 0.02, "heart sound, not silence");
            }
            _ => {
                // A VP8 payload descriptor, and at least one keyframe start within 2 s.
                assert!(
                    packets.len() >= 20,
                    "{}: {} packets",
                    t.info.label,
                    packets.len()
                );
                let keyframe = packets.iter().any(|(_, p)| {
                    let skip = if p[0] & 0x80 != 0 {
                        1 + usize::from(p[1] & 0x80 != 0) * 2
                    } else {
                        0
                    };
                    p[0] & 0x10 != 0 && p.get(1 + skip).is_some_and(|b| b & 0x01 == 0)
                });
                assert!(
                    keyframe,
                    "{}: a VP8 keyframe arrives within 3 s",
                    t.info.label
                );
            }
        }
    }
    doc.send(ClientMsg::EndConsultation).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), cart.wait())
        .await
        .expect("cart exits when the consultation ends")
        .unwrap();
    assert!(status.success());
}
