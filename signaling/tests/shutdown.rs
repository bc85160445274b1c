//! SIGTERM (systemd, containers) stops the server gracefully: every participant is told
//! (`server_shutdown`) before its connection closes, a running recording is stopped and its
//! file closed properly (it exports as complete), the audit trail records the stop and every
//! departure, and the process exits with success within its bound. Runs the real binary.

mod common;

use common::start_binary;
use consult_client::audio::AudioEncoder;
use consult_client::heart::{generate, HeartSoundConfig};
use consult_client::{Client, ClientEvent, ClientOptions};
use consult_protocol::{ClientMsg, CompanionKind, RecordingPhase, Role, ServerMsg, TrackLabel};
use consult_signaling::token::{unix_now, Grant, TokenService};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);
const KEY: &str = "shutdown-test";
const SECRET: &str = "a-secret-for-the-shutdown-test-0123456789";
const RECORDING_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

async fn recording_phase(c: &mut Client) -> (String, RecordingPhase) {
    c.wait_for(WAIT, |ev| match ev {
        ClientEvent::Server(ServerMsg::Recording {
            recording_id,
            phase,
            ..
        }) => Some((recording_id, phase)),
        _ => None,
    })
    .await
    .expect("a recording message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_everyone_closes_recordings_and_exits() {
    let dir = std::env::temp_dir().join(format!("consult-stop-{:016x}", rand::random::<u64>()));
    let mut server = start_binary(
        &dir,
        &[
            "--api-key",
            KEY,
            "--api-secret",
            SECRET,
            "--recording-key",
            RECORDING_KEY,
        ],
    );
    let ws = server.ws_url.clone();
    let tokens = TokenService::new(KEY, SECRET);
    let room = "room-sigterm";
    let token = |identity: &str, role: Role| {
        let grant = Grant {
            room,
            identity,
            name: identity,
            role,
            companion_kind: (role == Role::Companion).then_some(CompanionKind::Nurse),
        };
        tokens.mint(&grant, unix_now(), 600).0
    };

    // A consultation with a stethoscope being recorded.
    let options = ClientOptions::default;
    let mut doc = Client::connect(&ws, &token("dr-stop", Role::Physician), options())
        .await
        .unwrap();
    let mut ide = Client::connect(&ws, &token("ide-stop", Role::Companion), options())
        .await
        .unwrap();
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
    let track_id = doc
        .wait_for(WAIT, |ev| match ev {
            ClientEvent::Track(t) => Some(t.info.track_id.clone()),
            _ => None,
        })
        .await
        .expect("the physician receives the stethoscope");
    doc.send(ClientMsg::RequestRecording {
        track_ids: vec![track_id],
    })
    .unwrap();
    let (id, _) = recording_phase(&mut ide).await;
    ide.send(ClientMsg::RecordingConsent {
        recording_id: id,
        accept: true,
    })
    .unwrap();
    loop {
        if recording_phase(&mut ide).await.1 == RecordingPhase::Recording {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // SIGTERM.
    let stopped_at = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    for c in [&mut doc, &mut ide] {
        let retry = c
            .wait_for(WAIT, |ev| match ev {
                ClientEvent::Server(ServerMsg::ServerShutdown { retry_after_ms }) => {
                    Some(retry_after_ms)
                }
                _ => None,
            })
            .await
            .expect("told of the shutdown");
        assert!(retry > 0);
    }
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(12),
            "not stopped in time"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("stopped in {:?}", stopped_at.elapsed());
    assert!(status.success(), "{status:?}");

    // The trail tells the stop, the recording closed, and every departure.
    let audit = consult_signaling::audit::AuditLog::open(&dir.join("audit.db")).unwrap();
    let rows = audit.read(Some(room)).await.unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
    eprintln!("{actions:?}");
    let stopped = rows
        .iter()
        .find(|r| r.action == "recording_stopped")
        .expect("recording stopped");
    assert_eq!(stopped.detail["reason"], "server shutdown");
    assert!(actions.contains(&"server_shutdown"));
    let departures = rows
        .iter()
        .filter(|r| r.action == "disconnect" && r.detail["reason"] == "server_shutdown")
        .count();
    assert_eq!(departures, 2);
    let file = rows
        .iter()
        .find(|r| r.action == "recording_file")
        .expect("the recording's file closed and recorded");
    let name = file.detail["file"].as_str().unwrap();
    let sealed = dir.join("recordings").join(room).join(name);
    let key = consult_signaling::Config {
        recording_key: Some(RECORDING_KEY.into()),
        ..consult_signaling::Config::for_tests(dir.clone())
    }
    .recording_key()
    .unwrap();
    let out = dir.join("exported.ogg");
    let complete = consult_signaling::recording::export(&sealed, &out, &key).unwrap();
    assert!(complete, "the file was closed properly");
    let _ = std::fs::remove_dir_all(&dir);
}
