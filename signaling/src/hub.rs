//! The registry of live rooms and sessions, and the executor of room effects.

use crate::audit::AuditLog;
use crate::room::{Effect, Input, Refusal, Room, RoomCensus};
use consult_protocol::{ParticipantId, ServerMsg};
use consult_sfu::{SfuEvent, SfuHandle};
use dashmap::DashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// What a session's writer task is told to do.
#[derive(Debug)]
pub enum Outbound {
    Msg(ServerMsg),
    Close,
}

/// How the hub reaches one connected participant.
pub struct SessionHandle {
    pub out: mpsc::Sender<Outbound>,
    pub sfu_events: mpsc::UnboundedSender<SfuEvent>,
    /// What its `join` said of its WebRTC stack.
    pub caps: consult_sfu::api::ClientCaps,
    /// The token it joined with (to end the session if that token is revoked).
    pub claims: consult_protocol::TokenClaims,
}

pub struct Hub {
    // Rooms are kept once created (an ended room must keep refusing joins); a room is a
    // few hundred bytes, so this is bounded by the number of consultations held.
    rooms: DashMap<String, Arc<Mutex<Room>>>,
    sessions: DashMap<ParticipantId, SessionHandle>,
    sfu: SfuHandle,
    audit: AuditLog,
    /// Where a consultation's summary is written when it ends (`<room>.json`).
    summaries_dir: Option<std::path::PathBuf>,
    pub recordings: crate::recording::Recordings,
    /// Set by [`Hub::shutdown`]: joins are refused from then on.
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Hub {
    pub fn new(
        sfu: SfuHandle,
        audit: AuditLog,
        data_dir: &std::path::Path,
        recording_key: consult_recorder::sealed::Key,
    ) -> Hub {
        Hub {
            recordings: crate::recording::Recordings::new(data_dir, recording_key),
            summaries_dir: Some(data_dir.join("summaries")),
            rooms: DashMap::new(),
            sessions: DashMap::new(),
            sfu,
            audit,
            shutting_down: Default::default(),
        }
    }

    /// The server stops: joins are refused from now on, and every room tells its participants
    /// (`server_shutdown`), stops its recording (the writers close their files) and closes
    /// their connections. Returns the number of rooms told.
    pub fn shutdown(&self, retry_after_ms: u32) -> usize {
        use std::sync::atomic::Ordering;
        self.shutting_down.store(true, Ordering::SeqCst);
        let names: Vec<String> = self.rooms.iter().map(|r| r.key().clone()).collect();
        for name in &names {
            let _ = self.input(name, Input::ServerShutdown { retry_after_ms });
        }
        names.len()
    }

    /// Take back the rooms a restarted server finds in its audit trail (see `restore`).
    pub fn restore(
        &self,
        rooms: &std::collections::BTreeMap<String, crate::restore::RestoredRoom>,
    ) {
        let until = std::time::Instant::now() + crate::room::REJOIN_GRACE;
        for (name, r) in rooms {
            let room = Room::restored(name, r.ended, &r.admitted, until);
            self.rooms.insert(name.clone(), Arc::new(Mutex::new(room)));
        }
    }

    /// End the sessions whose token `revoked` says is revoked: told why, then closed.
    pub fn close_sessions_where(&self, revoked: impl Fn(&consult_protocol::TokenClaims) -> bool) {
        let ids: Vec<ParticipantId> = self
            .sessions
            .iter()
            .filter(|s| revoked(&s.value().claims))
            .map(|s| s.key().clone())
            .collect();
        for id in ids {
            let msg = ServerMsg::Error {
                code: consult_protocol::ErrorCode::BadToken,
                message: "the access token was revoked".into(),
            };
            self.send(&id, Outbound::Msg(msg));
            self.send(&id, Outbound::Close);
        }
    }

    /// Connected participants (sessions past their `join`).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn sfu(&self) -> &SfuHandle {
        &self.sfu
    }

    /// Rooms not ended, and the summed counts of their participants.
    pub fn census(&self) -> (usize, RoomCensus, usize) {
        let mut open = 0;
        let mut total = RoomCensus::default();
        for r in self.rooms.iter() {
            let Ok(room) = r.value().lock() else { continue };
            if room.is_ended() {
                continue;
            }
            open += 1;
            let c = room.census();
            total.waiting += c.waiting;
            total.admitted += c.admitted;
            total.tracks += c.tracks;
        }
        (open, total, self.sessions.len())
    }

    pub fn register(&self, id: ParticipantId, session: SessionHandle) {
        self.sessions.insert(id, session);
    }

    pub fn unregister(&self, id: &str) {
        self.sessions.remove(id);
    }

    fn room(&self, name: &str) -> Arc<Mutex<Room>> {
        // Clone the Arc out so no map lock is held while the room is locked.
        self.rooms
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(Room::new(name))))
            .clone()
    }

    /// Whether the consultation `room` has ended.
    pub fn is_ended(&self, room: &str) -> bool {
        let Some(r) = self.rooms.get(room).map(|r| r.clone()) else {
            return false;
        };
        let ended = r.lock().map(|r| r.is_ended()).unwrap_or(false);
        ended
    }

    pub fn is_admitted(&self, room: &str, id: &str) -> bool {
        let Some(r) = self.rooms.get(room).map(|r| r.clone()) else {
            return false;
        };
        let admitted = r.lock().map(|r| r.is_admitted(id)).unwrap_or(false);
        admitted
    }

    pub fn is_admitted_physician(&self, room: &str, id: &str) -> bool {
        let Some(r) = self.rooms.get(room).map(|r| r.clone()) else {
            return false;
        };
        let physician = r
            .lock()
            .map(|r| r.is_admitted_physician(id))
            .unwrap_or(false);
        physician
    }

    /// Run one input through the room and carry out its effects, in order, under the room's
    /// lock (every effect is non-blocking), so each room's messages keep their order.
    pub fn input(&self, room: &str, input: Input) -> Result<(), Refusal> {
        let r = self.room(room);
        let mut r = r.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Checked under the room's lock: a join either comes before the room's shutdown (and
        // is told with the others) or sees the flag.
        if matches!(input, Input::Join { .. })
            && self.shutting_down.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(Refusal {
                code: consult_protocol::ErrorCode::ShuttingDown,
                message: "the server is stopping: join again in a moment".into(),
            });
        }
        let effects = r.handle(input)?;
        for e in effects {
            self.apply(room, e);
        }
        Ok(())
    }

    /// Send a message to every admitted physician of a room.
    pub fn notify_physicians(&self, room: &str, msg: ServerMsg) {
        let Some(r) = self.rooms.get(room).map(|r| r.clone()) else {
            return;
        };
        let ids = r
            .lock()
            .map(|r| r.admitted_with_admit_grant())
            .unwrap_or_default();
        for id in ids {
            self.send(&id, Outbound::Msg(msg.clone()));
        }
    }

    fn apply(&self, room: &str, effect: Effect) {
        match effect {
            Effect::Send { to, msg } => self.send(&to, Outbound::Msg(msg)),
            Effect::Close { to } => self.send(&to, Outbound::Close),
            Effect::StartMedia { id } => {
                let Some((events, caps)) = self
                    .sessions
                    .get(&id)
                    .map(|s| (s.sfu_events.clone(), s.caps))
                else {
                    return;
                };
                let joined = self.sfu.join(room, &id, caps, events);
                tokio::spawn(async move {
                    if let Err(e) = joined.await {
                        warn!(participant = id, "media session not created: {e}");
                    }
                });
            }
            Effect::StopMedia { id } => self.sfu.leave(&id),
            Effect::Audit {
                actor,
                action,
                target,
                detail,
            } => {
                self.audit
                    .record(room, actor.as_deref(), action, target.as_deref(), detail);
                if action == "consultation_end" {
                    self.export_summary(room);
                }
            }
            Effect::StartRecording { id, tracks } => {
                self.recordings
                    .start(&self.sfu, &self.audit, room, &id, &tracks)
            }
            Effect::StopRecording { id } => self.recordings.stop(&id),
        }
    }

    /// Write the ended consultation's summary (participants, incidents, stills) next to the
    /// audit trail, for the physician's report.
    fn export_summary(&self, room: &str) {
        let Some(dir) = self.summaries_dir.clone() else {
            return;
        };
        let audit = self.audit.clone();
        let room = room.to_owned();
        tokio::spawn(async move {
            let result = async {
                let records = audit.read(Some(&room)).await?;
                let summary = crate::summary::summarize(&room, &records);
                std::fs::create_dir_all(&dir)?;
                let path = dir.join(format!("{}.json", crate::summary::file_stem(&room)));
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, serde_json::to_vec_pretty(&summary)?)?;
                std::fs::rename(&tmp, &path)?;
                anyhow::Ok(path)
            }
            .await;
            match result {
                Ok(path) => tracing::info!(room, path = %path.display(), "summary written"),
                Err(e) => warn!(room, "summary not written: {e:#}"),
            }
        });
    }

    fn send(&self, to: &str, msg: Outbound) {
        let Some(s) = self.sessions.get(to) else {
            debug!(participant = to, "no session for message");
            return;
        };
        if let Err(e) = s.out.try_send(msg) {
            warn!(participant = to, "session queue full or closed: {e}");
        }
    }
}
