//! The audit trail is a hash chain: `consult-server verify-audit` says it is intact, and after
//! a record is edited with the triggers removed (what someone holding the file could do), it
//! says at which record the chain breaks and exits with 1.

mod common;

use common::*;
use consult_protocol::{ClientMsg, Role};
use std::process::Command;

fn verify(dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_consult-server"))
        .arg("--data-dir")
        .arg(dir)
        .arg("verify-audit")
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_audit_finds_an_edited_record() {
    let srv = start_server().await;
    let room = "room-chain";
    let doc = srv.join(room, "dr-chain", Role::Physician).await;
    let pat = srv.join(room, "pat-chain", Role::Patient).await;
    doc.send(ClientMsg::Admit {
        participant_id: pat.participant_id.clone(),
    })
    .unwrap();
    doc.send(ClientMsg::EndConsultation).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let rows = srv.server.state.audit.read(None).await.unwrap();
    assert!(rows.len() >= 4, "{} records", rows.len());

    let (ok, said) = verify(&srv.dir);
    assert!(ok, "{said}");
    assert!(said.contains("intact"), "{said}");

    // Someone with the file removes the trigger and rewrites the admission.
    let admit = rows
        .iter()
        .find(|r| r.action == "admit")
        .expect("an admission");
    let db = rusqlite::Connection::open(srv.dir.join("audit.db")).unwrap();
    db.execute_batch("DROP TRIGGER audit_no_update").unwrap();
    db.execute(
        "UPDATE audit SET actor = 'dr-someone-else' WHERE seq = ?1",
        [admit.seq],
    )
    .unwrap();
    let (ok, said) = verify(&srv.dir);
    assert!(!ok, "{said}");
    assert!(
        said.contains(&format!("BROKEN at record {}", admit.seq)),
        "{said}"
    );
}
