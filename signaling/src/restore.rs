//! What a restarted server takes back from the audit trail, its source of truth (sans-I/O):
//! which consultations were ended (they keep refusing joins: an ended room's tokens live on),
//! and who was admitted in the others when the server stopped (they are admitted again at
//! once if they come back within the rejoin grace, as after any dropped link, instead of
//! waiting for the physician a second time).

use consult_protocol::AuditRecord;
use std::collections::{BTreeMap, HashMap};

/// One room as the trail leaves it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RestoredRoom {
    pub ended: bool,
    /// Identities admitted when the trail stops (a server shutdown or a crash).
    pub admitted: Vec<String>,
}

/// Replay `records` (oldest first, any rooms mixed).
pub fn replay(records: &[AuditRecord]) -> BTreeMap<String, RestoredRoom> {
    #[derive(Default)]
    struct Replay {
        ended: bool,
        /// participant id → (identity, admitted)
        members: HashMap<String, (String, bool)>,
    }
    let mut rooms: BTreeMap<String, Replay> = BTreeMap::new();
    for r in records {
        let room = rooms.entry(r.room.clone()).or_default();
        let participant = r.detail["participant"].as_str().map(str::to_owned);
        match (r.action.as_str(), participant) {
            ("consultation_end", _) => {
                room.ended = true;
                room.members.clear();
            }
            ("join", Some(id)) => {
                let admitted = r.detail["state"] == "admitted";
                if let Some(identity) = &r.actor {
                    // A new session of the same identity replaces the old one.
                    room.members.retain(|_, (who, _)| who != identity);
                    room.members.insert(id, (identity.clone(), admitted));
                }
            }
            ("admit", Some(id)) => {
                if let Some(m) = room.members.get_mut(&id) {
                    m.1 = true;
                }
            }
            // A dropped connection (the server's own shutdown included) keeps the place, as
            // the rejoin grace does; leaving, being removed or refused gives it up.
            ("leave" | "remove" | "refuse", Some(id)) => {
                room.members.remove(&id);
            }
            _ => {}
        }
    }
    rooms
        .into_iter()
        .map(|(name, r)| {
            let mut admitted: Vec<String> = r
                .members
                .into_values()
                .filter(|(_, admitted)| *admitted)
                .map(|(identity, _)| identity)
                .collect();
            admitted.sort();
            admitted.dedup();
            (
                name,
                RestoredRoom {
                    ended: r.ended,
                    admitted,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(room: &str, actor: &str, action: &str, detail: serde_json::Value) -> AuditRecord {
        AuditRecord {
            seq: 0,
            ts_ms: 0,
            room: room.into(),
            actor: Some(actor.into()),
            action: action.into(),
            target: None,
            detail,
        }
    }

    #[test]
    fn ended_rooms_and_who_was_admitted() {
        let trail = vec![
            rec(
                "a",
                "dr",
                "join",
                json!({"participant": "p1", "state": "admitted"}),
            ),
            rec(
                "a",
                "pat",
                "join",
                json!({"participant": "p2", "state": "waiting"}),
            ),
            rec("a", "dr", "consultation_end", json!({"participant": "p1"})),
            rec(
                "b",
                "dr",
                "join",
                json!({"participant": "p3", "state": "admitted"}),
            ),
            rec(
                "b",
                "ide",
                "join",
                json!({"participant": "p4", "state": "waiting"}),
            ),
            rec(
                "b",
                "pat",
                "join",
                json!({"participant": "p5", "state": "waiting"}),
            ),
            rec("b", "dr", "admit", json!({"participant": "p4"})),
            // The patient was never admitted; the nurse dropped and came back (a new session).
            rec("b", "ide", "disconnect", json!({"participant": "p4"})),
            rec(
                "b",
                "ide",
                "join",
                json!({"participant": "p6", "state": "admitted", "rejoin": true}),
            ),
            rec(
                "c",
                "dr",
                "join",
                json!({"participant": "p7", "state": "admitted"}),
            ),
            rec("c", "dr", "leave", json!({"participant": "p7"})),
        ];
        let rooms = replay(&trail);
        assert_eq!(
            rooms["a"],
            RestoredRoom {
                ended: true,
                admitted: vec![]
            }
        );
        assert_eq!(rooms["b"].admitted, ["dr", "ide"]);
        assert!(!rooms["b"].ended);
        assert!(rooms["c"].admitted.is_empty(), "left of their own accord");
    }
}
