//! The consultation summary for the physician's report, built from the audit trail alone (so
//! it is the same after a restart): participants with their times, technical incidents, stills.

use consult_protocol::{AuditRecord, ConsultationSummary, Incident, ParticipantSummary, Role};
use serde_json::Value;

pub fn summarize(room: &str, records: &[AuditRecord]) -> ConsultationSummary {
    let mut s = ConsultationSummary {
        room: room.to_owned(),
        started_at_ms: None,
        ended_at_ms: None,
        ended: false,
        participants: Vec::new(),
        incidents: Vec::new(),
        stills: Vec::new(),
        device_controls: 0,
    };
    for r in records.iter().filter(|r| r.room == room) {
        let identity = r.actor.clone();
        match r.action.as_str() {
            "join" => {
                s.started_at_ms.get_or_insert(r.ts_ms);
                let Some(id) = &identity else { continue };
                let p = participant(&mut s.participants, id, r.ts_ms);
                p.joins += 1;
                p.name = r.detail["name"]
                    .as_str()
                    .map(str::to_owned)
                    .or(p.name.take());
                if let Ok(role) = serde_json::from_value::<Role>(r.detail["role"].clone()) {
                    p.role = Some(role);
                }
                if r.detail["state"] == "admitted" {
                    p.admitted = true;
                }
                if r.detail["rejoin"] == true {
                    s.incidents.push(incident(r, "rejoined", Value::Null));
                }
            }
            "admit" => {
                if let Some(t) = &r.target {
                    participant(&mut s.participants, t, r.ts_ms).admitted = true;
                }
            }
            "leave" | "disconnect" | "remove" => {
                let who = if r.action == "remove" {
                    r.target.clone()
                } else {
                    identity.clone()
                };
                if let Some(p) = who
                    .as_deref()
                    .and_then(|w| s.participants.iter_mut().find(|p| p.identity == w))
                {
                    p.last_leave_ms = Some(r.ts_ms);
                }
                if r.action == "disconnect" {
                    s.incidents.push(incident(r, "signaling_lost", Value::Null));
                }
            }
            "incident" => {
                let kind = r.detail["kind"].as_str().unwrap_or("unknown").to_owned();
                s.incidents.push(incident(r, &kind, r.detail.clone()));
            }
            "still_uploaded" => {
                let mut still = r.detail.clone();
                still["author_identity"] = identity.clone().into();
                s.stills.push(still);
            }
            "device_control" => s.device_controls += 1,
            "consultation_end" => {
                s.ended = true;
                s.ended_at_ms = Some(r.ts_ms);
            }
            _ => {}
        }
    }
    if !s.ended && s.participants.iter().all(|p| p.last_leave_ms.is_some()) {
        s.ended_at_ms = s.participants.iter().filter_map(|p| p.last_leave_ms).max();
    }
    s
}

/// A file name for a room: the name itself when plain, else its hex.
pub fn file_stem(room: &str) -> String {
    let plain = !room.is_empty()
        && room.len() <= 100
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        room.to_owned()
    } else {
        format!("x-{}", hex::encode(room.as_bytes()))
    }
}

fn participant<'a>(
    list: &'a mut Vec<ParticipantSummary>,
    identity: &str,
    ts: i64,
) -> &'a mut ParticipantSummary {
    let i = match list.iter().position(|p| p.identity == identity) {
        Some(i) => i,
        None => {
            list.push(ParticipantSummary {
                identity: identity.to_owned(),
                name: None,
                role: None,
                first_join_ms: ts,
                last_leave_ms: None,
                joins: 0,
                admitted: false,
            });
            list.len() - 1
        }
    };
    &mut list[i]
}

fn incident(r: &AuditRecord, kind: &str, detail: Value) -> Incident {
    Incident {
        ts_ms: r.ts_ms,
        identity: r.actor.clone(),
        kind: kind.to_owned(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(ts: i64, actor: &str, action: &str, target: Option<&str>, detail: Value) -> AuditRecord {
        AuditRecord {
            seq: ts,
            ts_ms: ts,
            room: "r".into(),
            actor: Some(actor.into()),
            action: action.into(),
            target: target.map(str::to_owned),
            detail,
        }
    }

    #[test]
    fn file_stems_stay_inside_the_directory() {
        assert_eq!(file_stem("room-1_a"), "room-1_a");
        assert_eq!(file_stem("../etc"), "x-2e2e2f657463");
        assert_eq!(file_stem(""), "x-");
    }

    #[test]
    fn participants_incidents_and_end() {
        let trail = vec![
            rec(
                1,
                "dr",
                "join",
                None,
                json!({"role": "physician", "name": "Dr A", "state": "admitted", "rejoin": false}),
            ),
            rec(
                2,
                "ide",
                "join",
                None,
                json!({"role": "companion", "name": "IDE B", "state": "waiting", "rejoin": false}),
            ),
            rec(3, "dr", "admit", Some("ide"), json!({})),
            rec(
                4,
                "ide",
                "incident",
                None,
                json!({"kind": "media_lost", "connection": "publisher"}),
            ),
            rec(5, "ide", "incident", None, json!({"kind": "ice_restart"})),
            rec(
                6,
                "ide",
                "incident",
                None,
                json!({"kind": "media_restored", "connection": "publisher", "lost_ms": 2000}),
            ),
            rec(7, "ide", "disconnect", None, json!({})),
            rec(
                8,
                "ide",
                "join",
                None,
                json!({"role": "companion", "name": "IDE B", "state": "admitted", "rejoin": true}),
            ),
            rec(
                9,
                "ide",
                "still_uploaded",
                None,
                json!({"still_id": "s1", "size": 10}),
            ),
            rec(10, "dr", "device_control", Some("ide"), json!({})),
            rec(11, "dr", "consultation_end", None, json!({})),
        ];
        let s = summarize("r", &trail);
        assert_eq!(s.started_at_ms, Some(1));
        assert_eq!(s.ended_at_ms, Some(11));
        assert!(s.ended);
        assert_eq!(s.participants.len(), 2);
        let ide = &s.participants[1];
        assert_eq!(ide.identity, "ide");
        assert_eq!(ide.role, Some(Role::Companion));
        assert_eq!(ide.joins, 2);
        assert!(ide.admitted);
        let kinds: Vec<&str> = s.incidents.iter().map(|i| i.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "media_lost",
                "ice_restart",
                "media_restored",
                "signaling_lost",
                "rejoined"
            ]
        );
        assert_eq!(s.incidents[2].detail["lost_ms"], 2000);
        assert_eq!(s.stills.len(), 1);
        assert_eq!(s.stills[0]["author_identity"], "ide");
        assert_eq!(s.device_controls, 1);
    }
}
