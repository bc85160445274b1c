//! Append-only audit trail in embedded SQLite.
//!
//! Writes go through one writer thread (callers never wait on disk); a read first waits until
//! everything recorded before it is written, so it sees a consistent trail. UPDATE and DELETE
//! are refused by triggers: the table only grows.

use consult_protocol::AuditRecord;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::error;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms  INTEGER NOT NULL,
    room   TEXT NOT NULL,
    actor  TEXT,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT NOT NULL,
    hash   TEXT
);
CREATE INDEX IF NOT EXISTS audit_room ON audit(room, seq);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit trail is append-only'); END;
";

enum Job {
    Record {
        ts_ms: i64,
        room: String,
        actor: Option<String>,
        action: String,
        target: Option<String>,
        detail: Value,
    },
    Flush(tokio::sync::oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct AuditLog {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl AuditLog {
    /// Open (or create) the trail at `path` and start its writer thread.
    pub fn open(path: &Path) -> anyhow::Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        // A trail from before the hash chain gets its column; its records stay unchained.
        let has_hash: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('audit') WHERE name = 'hash'")?
            .exists([])?;
        if !has_hash {
            conn.execute_batch("ALTER TABLE audit ADD COLUMN hash TEXT")?;
        }
        let last: Option<(i64, Option<String>)> = conn
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let tip = ChainTip {
            seq: last.as_ref().map_or(0, |l| l.0),
            hash: last
                .and_then(|l| l.1)
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .unwrap_or(crate::audit_chain::GENESIS),
        };
        let (jobs, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(conn, rx, tip))?;
        Ok(AuditLog {
            path: path.to_owned(),
            jobs,
        })
    }

    pub fn record(
        &self,
        room: &str,
        actor: Option<&str>,
        action: &str,
        target: Option<&str>,
        detail: Value,
    ) {
        let job = Job::Record {
            ts_ms: now_ms(),
            room: room.to_owned(),
            actor: actor.map(str::to_owned),
            action: action.to_owned(),
            target: target.map(str::to_owned),
            detail,
        };
        if self.jobs.send(job).is_err() {
            error!("audit writer is gone: record lost");
        }
    }

    /// Whether the writer is alive and has written everything queued (for `/readyz`).
    pub async fn ping(&self) -> anyhow::Result<()> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job::Flush(done))
            .map_err(|_| anyhow::anyhow!("audit writer is gone"))?;
        wait.await?;
        Ok(())
    }

    /// Every record of `room` (all rooms if `None`), oldest first.
    pub async fn read(&self, room: Option<&str>) -> anyhow::Result<Vec<AuditRecord>> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job::Flush(done))
            .map_err(|_| anyhow::anyhow!("audit writer is gone"))?;
        wait.await?;
        let path = self.path.clone();
        let room = room.map(str::to_owned);
        tokio::task::spawn_blocking(move || read_records(&path, room.as_deref())).await?
    }
}

/// The newest record of the chain (the writer is the only one to append).
struct ChainTip {
    seq: i64,
    hash: [u8; 32],
}

fn writer(conn: Connection, jobs: mpsc::Receiver<Job>, mut tip: ChainTip) {
    for job in jobs {
        match job {
            Job::Record {
                ts_ms,
                room,
                actor,
                action,
                target,
                detail,
            } => {
                let detail = detail.to_string();
                let seq = tip.seq + 1;
                let row = crate::audit_chain::Row {
                    seq,
                    ts_ms,
                    room: &room,
                    actor: actor.as_deref(),
                    action: &action,
                    target: target.as_deref(),
                    detail: &detail,
                };
                let hash = crate::audit_chain::hash(&tip.hash, &row);
                let r = conn.execute(
                    "INSERT INTO audit (seq, ts_ms, room, actor, action, target, detail, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        seq,
                        ts_ms,
                        room,
                        actor,
                        action,
                        target,
                        detail,
                        hex::encode(hash)
                    ],
                );
                match r {
                    Ok(_) => tip = ChainTip { seq, hash },
                    Err(e) => error!("audit write failed: {e}"),
                }
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// What a restarted server replays (`crate::restore`, `crate::revocation`): every
/// consultation's end and every revocation, and the rest of the trail since `since_ms` (who
/// was admitted lately). Read before the writer starts.
pub fn read_for_restore(path: &Path, since_ms: i64) -> anyhow::Result<Vec<AuditRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare(
        "SELECT seq, ts_ms, room, actor, action, target, detail FROM audit
         WHERE action IN ('consultation_end', 'token_revoked') OR ts_ms >= ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![since_ms], record_of_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Check the trail's hash chain (`consult-server verify-audit`).
pub fn verify_chain(path: &Path) -> anyhow::Result<crate::audit_chain::Verdict> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let has_hash: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('audit') WHERE name = 'hash'")?
        .exists([])?;
    let select = if has_hash {
        "SELECT seq, ts_ms, room, actor, action, target, detail, hash FROM audit ORDER BY seq"
    } else {
        "SELECT seq, ts_ms, room, actor, action, target, detail, NULL FROM audit ORDER BY seq"
    };
    let mut stmt = conn.prepare(select)?;
    type Raw = (
        i64,
        i64,
        String,
        Option<String>,
        String,
        Option<String>,
        String,
        Option<String>,
    );
    let rows: Vec<Raw> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(crate::audit_chain::verify(rows.iter().map(|r| {
        (
            crate::audit_chain::Row {
                seq: r.0,
                ts_ms: r.1,
                room: &r.2,
                actor: r.3.as_deref(),
                action: &r.4,
                target: r.5.as_deref(),
                detail: &r.6,
            },
            r.7.as_deref(),
        )
    })))
}

fn record_of_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    let detail: String = r.get(6)?;
    Ok(AuditRecord {
        seq: r.get(0)?,
        ts_ms: r.get(1)?,
        room: r.get(2)?,
        actor: r.get(3)?,
        action: r.get(4)?,
        target: r.get(5)?,
        detail: serde_json::from_str(&detail).unwrap_or(Value::String(detail)),
    })
}

fn read_records(path: &Path, room: Option<&str>) -> anyhow::Result<Vec<AuditRecord>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare(
        "SELECT seq, ts_ms, room, actor, action, target, detail FROM audit
         WHERE ?1 IS NULL OR room = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![room], record_of_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn records_are_read_back_in_order_and_cannot_be_changed() {
        let dir = std::env::temp_dir().join(format!("audit-test-{}", rand::random::<u64>()));
        let path = dir.join("audit.db");
        let log = AuditLog::open(&path).unwrap();
        log.record("a", Some("doc"), "join", None, json!({"x": 1}));
        log.record("b", Some("pat"), "join", None, json!({}));
        log.record("a", Some("doc"), "admit", Some("pat"), json!({}));
        let a = log.read(Some("a")).await.unwrap();
        assert_eq!(
            a.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
            ["join", "admit"]
        );
        assert_eq!(a[0].detail, json!({"x": 1}));
        assert_eq!(log.read(None).await.unwrap().len(), 3);

        let conn = Connection::open(&path).unwrap();
        assert!(conn.execute("DELETE FROM audit", []).is_err());
        assert!(conn.execute("UPDATE audit SET action = 'x'", []).is_err());
        std::fs::remove_dir_all(dir).ok();
    }

    /// A trail written before the chain existed gets its column; its records are reported as
    /// unchained and the new ones chain after them.
    #[tokio::test]
    async fn a_trail_from_before_the_chain_is_taken_over() {
        let dir = std::env::temp_dir().join(format!("audit-old-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.db");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER NOT NULL,
                 room TEXT NOT NULL, actor TEXT, action TEXT NOT NULL, target TEXT,
                 detail TEXT NOT NULL);
                 INSERT INTO audit (ts_ms, room, action, detail) VALUES (1, 'r', 'join', '{}');
                 INSERT INTO audit (ts_ms, room, action, detail) VALUES (2, 'r', 'leave', '{}');",
            )
            .unwrap();
        }
        let log = AuditLog::open(&path).unwrap();
        log.record("r", Some("dr"), "join", None, json!({"n": 3}));
        log.record("r", Some("dr"), "leave", None, json!({"n": 4}));
        assert_eq!(log.read(None).await.unwrap().len(), 4);
        assert_eq!(
            verify_chain(&path).unwrap(),
            crate::audit_chain::Verdict::Intact {
                chained: 2,
                unchained: 2
            }
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
