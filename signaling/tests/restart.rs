//! A restart (a deploy, a crash: SIGKILL) keeps the consultations' lifecycle: an ended
//! consultation keeps refusing its tokens, and a participant admitted when the server died is
//! admitted again at once when it comes back (within the rejoin grace), while one who was
//! still waiting waits again. The audit trail is the source of truth the restarted server
//! reads. Runs the real binary.

mod common;

use common::{start_binary, BinaryServer};
use consult_client::{Client, ClientOptions, JoinError};
use consult_protocol::{AdmissionState, ClientMsg, CompanionKind, ErrorCode, Role};
use consult_signaling::token::{unix_now, Grant, TokenService};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const KEY: &str = "restart-test";
const SECRET: &str = "a-secret-for-the-restart-test-0123456789";

/// The server on `dir`, and its WebSocket URL.
fn start(dir: &Path) -> (BinaryServer, String) {
    let server = start_binary(dir, &["--api-key", KEY, "--api-secret", SECRET]);
    let ws = server.ws_url.clone();
    (server, ws)
}

fn token(room: &str, identity: &str, role: Role) -> String {
    let grant = Grant {
        room,
        identity,
        name: identity,
        role,
        companion_kind: (role == Role::Companion).then_some(CompanionKind::Nurse),
    };
    TokenService::new(KEY, SECRET)
        .mint(&grant, unix_now(), 600)
        .0
}

async fn join(ws: &str, token: &str) -> anyhow::Result<Client> {
    Client::connect(ws, token, ClientOptions::default()).await
}

/// SIGKILL: nothing is closed, nothing is flushed by the server itself.
fn crash(server: BinaryServer) {
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_ended_consultations_ended_and_admissions_admitted() {
    let dir = std::env::temp_dir().join(format!("consult-restart-{:016x}", rand::random::<u64>()));
    let (server, ws) = start(&dir);

    // Consultation A ends.
    let doc_a = token("room-a", "dr-a", Role::Physician);
    let pat_a = token("room-a", "pat-a", Role::Patient);
    let doc = join(&ws, &doc_a).await.unwrap();
    doc.send(ClientMsg::EndConsultation).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Consultation B goes on: the nurse admitted, the patient waiting.
    let doc_b = token("room-b", "dr-b", Role::Physician);
    let ide_b = token("room-b", "ide-b", Role::Companion);
    let pat_b = token("room-b", "pat-b", Role::Patient);
    let doc = join(&ws, &doc_b).await.unwrap();
    let mut ide = join(&ws, &ide_b).await.unwrap();
    let pat = join(&ws, &pat_b).await.unwrap();
    doc.send(ClientMsg::Admit {
        participant_id: ide.participant_id.clone(),
    })
    .unwrap();
    ide.wait_admitted(WAIT).await.unwrap();
    assert_eq!(pat.state, AdmissionState::Waiting);
    // The audit writer commits within milliseconds; give it that before the crash.
    tokio::time::sleep(Duration::from_millis(500)).await;
    crash(server);
    drop((doc, ide, pat));

    let (server, ws) = start(&dir);
    for t in [&doc_a, &pat_a] {
        let e = join(&ws, t)
            .await
            .err()
            .expect("an ended consultation refuses");
        let e = e.downcast_ref::<JoinError>().expect("a join error");
        assert_eq!(e.code, ErrorCode::ConsultationEnded);
    }
    let ide = join(&ws, &ide_b).await.unwrap();
    assert_eq!(
        ide.state,
        AdmissionState::Admitted,
        "admitted again at once"
    );
    let pat = join(&ws, &pat_b).await.unwrap();
    assert_eq!(
        pat.state,
        AdmissionState::Waiting,
        "still waits for the physician"
    );
    crash(server);
    let _ = std::fs::remove_dir_all(&dir);
}
