//! Recording needs every participant's consent: nothing is written while one has not
//! answered, a refusal ends the request, and a withdrawal stops a running recording. The
//! stethoscope file is checked with `ffprobe` (codec, channel, rate, duration against the time
//! it ran), and the audit trail tells the whole story.

mod common;

use common::*;
use consult_client::audio::AudioEncoder;
use consult_client::heart::{generate, HeartSoundConfig};
use consult_client::{Client, ClientEvent};
use consult_protocol::{ClientMsg, RecordingPhase, Role, ServerMsg, TrackLabel};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The next `recording` message a client gets: phase, waiting-for list, reason.
async fn next_recording(c: &mut Client) -> (String, RecordingPhase, Vec<String>, Option<String>) {
    c.wait_for(WAIT, |ev| match ev {
        ClientEvent::Server(ServerMsg::Recording {
            recording_id,
            phase,
            waiting_for,
            reason,
            ..
        }) => Some((recording_id, phase, waiting_for, reason)),
        _ => None,
    })
    .await
    .expect("a recording message")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_needs_every_consent_and_stops_on_withdrawal() {
    let srv = start_server().await;
    let room = "room-rec";
    let rec_dir = srv.dir.join("recordings").join(room);
    let mut doc = srv.join(room, "dr-rec", Role::Physician).await;
    let mut ide = srv.join(room, "ide-rec", Role::Companion).await;
    doc.send(ClientMsg::Admit {
        participant_id: ide.participant_id.clone(),
    })
    .unwrap();
    ide.wait_admitted(WAIT).await.unwrap();
    let t = ide.publish(&[TrackLabel::Stethoscope]).await.unwrap();
    let heart = generate(&HeartSoundConfig::default(), 20.0);
    let frames = AudioEncoder::stethoscope(64_000)
        .unwrap()
        .encode_all(&heart.samples)
        .unwrap();
    let _sending = t[0].send_frames(frames, Duration::from_millis(20));
    let steth = take_tracks(&mut doc, 1).await.remove(0);
    let track_id = steth.info.track_id.clone();
    // What the physician receives, to compare with what is recorded.
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let rx = received.clone();
    tokio::spawn(async move {
        while let Ok((p, _)) = steth.track.read_rtp().await {
            rx.lock().unwrap().push(p.payload.to_vec());
        }
    });

    // Asked: the companion must answer; nothing is written meanwhile.
    doc.send(ClientMsg::RequestRecording {
        track_ids: vec![track_id.clone()],
    })
    .unwrap();
    let (id1, phase, waiting, _) = next_recording(&mut ide).await;
    assert_eq!(phase, RecordingPhase::Pending);
    assert_eq!(waiting, [ide.participant_id.clone()]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        files(&rec_dir).is_empty(),
        "nothing written without consent"
    );
    // The companion refuses: the request is over.
    ide.send(ClientMsg::RecordingConsent {
        recording_id: id1.clone(),
        accept: false,
    })
    .unwrap();
    let (_, phase, _, reason) = next_recording(&mut ide).await;
    assert_eq!(phase, RecordingPhase::Stopped);
    eprintln!("refused: {reason:?}");
    assert!(files(&rec_dir).is_empty());

    // Asked again; consent given; recording runs until the companion withdraws.
    doc.send(ClientMsg::RequestRecording {
        track_ids: vec![track_id.clone()],
    })
    .unwrap();
    let (id2, _, _, _) = next_recording(&mut ide).await;
    assert_ne!(id1, id2);
    ide.send(ClientMsg::RecordingConsent {
        recording_id: id2.clone(),
        accept: true,
    })
    .unwrap();
    let (_, phase, _, _) = next_recording(&mut ide).await;
    assert_eq!(phase, RecordingPhase::Recording);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, m) = srv.api_get("/metrics").await;
    assert_eq!(metric(&m, "consult_recordings_active", ""), Some(1.0));
    ide.send(ClientMsg::RecordingConsent {
        recording_id: id2.clone(),
        accept: false,
    })
    .unwrap();
    let (_, phase, _, reason) = next_recording(&mut ide).await;
    let ran = started.elapsed();
    assert_eq!(phase, RecordingPhase::Stopped);
    assert!(reason.unwrap_or_default().contains("withdrawn"));

    // The file closes once the writer has drained.
    let file = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let audit = srv.server.state.audit.read(Some(room)).await.unwrap();
            if audit.iter().any(|r| r.action == "recording_file") {
                return files(&rec_dir);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the recording file is closed");
    assert_eq!(file.len(), 1, "{file:?}");
    let sealed = &file[0];
    let name = sealed.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with(&id2) && name.ends_with(".ogg.sealed"),
        "{name}"
    );
    // Encrypted at rest: no Ogg page in sight; the export command's function gives it back.
    let raw = std::fs::read(sealed).unwrap();
    assert!(!raw.windows(4).any(|w| w == b"OggS"), "encrypted at rest");
    let key = srv.server.state.config.recording_key().unwrap();
    let exported = srv.dir.join("exported.ogg");
    let complete = consult_signaling::recording::export(sealed, &exported, &key).unwrap();
    assert!(complete, "closed properly");
    let mut wrong = key;
    wrong[0] ^= 1;
    assert!(
        consult_signaling::recording::export(sealed, &exported.with_extension("x"), &wrong)
            .is_err()
    );
    let path = &exported;

    // Lossless: the file's Opus packets are, byte for byte, a run of what the physician got.
    let mut reader = ogg::PacketReader::new(std::fs::File::open(path).unwrap());
    let mut packets = Vec::new();
    while let Some(p) = reader.read_packet().unwrap() {
        packets.push(p.data);
    }
    let audio = &packets[2..packets.len() - 1]; // headers; closing lost-frame packet
    let got = received.lock().unwrap().clone();
    let start = got
        .iter()
        .position(|p| *p == audio[0])
        .expect("the first recorded packet was received");
    let same = audio
        .iter()
        .zip(&got[start..])
        .take_while(|(a, b)| a == b)
        .count();
    eprintln!(
        "recorded {} Opus packets, {same} identical in order to the physician's",
        audio.len()
    );
    assert_eq!(same, audio.len());

    if std::process::Command::new("ffprobe")
        .arg("-version")
        .output()
        .is_ok()
    {
        let out = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-show_entries"])
            .arg("stream=codec_name,channels,sample_rate:format=duration")
            .args(["-of", "default=noprint_wrappers=1"])
            .arg(path)
            .output()
            .unwrap();
        let info = String::from_utf8_lossy(&out.stdout).to_string();
        let duration: f64 = info
            .lines()
            .find_map(|l| l.strip_prefix("duration="))
            .and_then(|d| d.parse().ok())
            .unwrap_or(0.0);
        eprintln!("{name}: recorded for {ran:?}\n{info}");
        assert!(info.contains("codec_name=opus"));
        assert!(info.contains("channels=1"));
        assert!(info.contains("sample_rate=48000"));
        let ran = ran.as_secs_f64();
        assert!(
            (duration - ran).abs() <= ran * 0.05,
            "file {duration} s vs {ran} s recorded"
        );
    }

    let actions: Vec<String> = srv
        .server
        .state
        .audit
        .read(Some(room))
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action.starts_with("recording"))
        .map(|r| r.action)
        .collect();
    eprintln!("audit: {actions:?}");
    assert_eq!(
        actions,
        [
            "recording_requested",
            "recording_consent",
            "recording_stopped",
            "recording_requested",
            "recording_consent",
            "recording_started",
            "recording_consent",
            "recording_stopped",
            "recording_file"
        ]
    );
}
