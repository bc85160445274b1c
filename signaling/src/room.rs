//! The consultation room as a sans-I/O state machine.
//!
//! Inputs are what participants do; outputs are [`Effect`]s (messages to send, media sessions to
//! start or stop, audit records) that the hub carries out. No sockets, no clock, no locks: each
//! rule of the waiting room is unit-tested here.

use crate::consent::ConsentRound;
use consult_protocol::{
    AdmissionState, CompanionKind, DeviceCommand, ErrorCode, LeaveReason, ParticipantId,
    ParticipantInfo, PublishedTrack, RecordedTrack, Role, ServerMsg, TrackInfo, PROTOCOL_VERSION,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long an admitted participant whose connection dropped may come back without being
/// admitted again (a cart on a rural link reconnecting).
pub const REJOIN_GRACE: Duration = Duration::from_secs(120);

/// Something the hub must do after an input.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Send {
        to: ParticipantId,
        msg: ServerMsg,
    },
    /// Close the participant's connection (after the messages sent before).
    Close {
        to: ParticipantId,
    },
    /// Create the participant's media session: it was admitted.
    StartMedia {
        id: ParticipantId,
    },
    /// Tear down the participant's media session.
    StopMedia {
        id: ParticipantId,
    },
    Audit {
        actor: Option<String>,
        action: &'static str,
        target: Option<String>,
        detail: Value,
    },
    /// Everyone consented: write these tracks.
    StartRecording {
        id: String,
        tracks: Vec<RecordedTrack>,
    },
    /// Stop writing (the files are closed and kept).
    StopRecording {
        id: String,
    },
}

/// What a participant does (or what happens to its connection).
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Join {
        id: ParticipantId,
        identity: String,
        name: String,
        role: Role,
        companion_kind: Option<CompanionKind>,
        now: Instant,
    },
    Admit {
        by: ParticipantId,
        target: ParticipantId,
    },
    Refuse {
        by: ParticipantId,
        target: ParticipantId,
        reason: Option<String>,
    },
    Remove {
        by: ParticipantId,
        target: ParticipantId,
    },
    End {
        by: ParticipantId,
    },
    Leave {
        id: ParticipantId,
        reason: LeaveReason,
        now: Instant,
    },
    /// The SFU accepted a publisher offer carrying these tracks.
    TracksPublished {
        id: ParticipantId,
        tracks: Vec<PublishedTrack>,
    },
    Mute {
        id: ParticipantId,
        mid: String,
        muted: bool,
    },
    DeviceControl {
        by: ParticipantId,
        target: ParticipantId,
        command: DeviceCommand,
    },
    /// `id` names the new recording (chosen by the caller, so this stays deterministic).
    RequestRecording {
        by: ParticipantId,
        id: String,
        track_ids: Vec<String>,
    },
    RecordingConsent {
        by: ParticipantId,
        recording_id: String,
        accept: bool,
    },
    StopRecording {
        by: ParticipantId,
    },
    /// The server stops: everyone is told and disconnected, a recording is stopped. The room
    /// is not ended (its participants may join again once the server is back).
    ServerShutdown {
        retry_after_ms: u32,
    },
}

/// A refused input: the error goes back to whoever sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

fn refuse(code: ErrorCode, message: &str) -> Refusal {
    Refusal {
        code,
        message: message.to_owned(),
    }
}

#[derive(Debug, Clone)]
struct Member {
    id: ParticipantId,
    identity: String,
    name: String,
    role: Role,
    companion_kind: Option<CompanionKind>,
    state: AdmissionState,
    /// Published tracks, by publisher mid.
    tracks: Vec<(String, TrackInfo)>,
}

impl Member {
    fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            participant_id: self.id.clone(),
            identity: self.identity.clone(),
            name: self.name.clone(),
            role: self.role,
            companion_kind: self.companion_kind,
            state: self.state,
            tracks: self.tracks.iter().map(|(_, t)| t.clone()).collect(),
        }
    }

    fn admitted(&self) -> bool {
        self.state == AdmissionState::Admitted
    }
}

/// Counts of one room, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoomCensus {
    pub waiting: usize,
    pub admitted: usize,
    pub tracks: usize,
}

#[derive(Debug, Clone)]
pub struct Room {
    name: String,
    members: Vec<Member>,
    ended: bool,
    /// Identities admitted before their connection dropped, until when they may rejoin.
    rejoin_until: Vec<(String, Instant)>,
    /// The current (or last) recording and its consents.
    recording: Option<ConsentRound>,
}

impl Room {
    /// A room as a restarted server takes it back from the audit trail (`crate::restore`):
    /// ended (refusing joins), or with the identities that were admitted when the server
    /// stopped admitted again at once if they come back before `rejoin_until`.
    pub fn restored(name: &str, ended: bool, admitted: &[String], rejoin_until: Instant) -> Room {
        let mut r = Room::new(name);
        r.ended = ended;
        if !ended {
            r.rejoin_until = admitted.iter().map(|i| (i.clone(), rejoin_until)).collect();
        }
        r
    }

    pub fn new(name: &str) -> Room {
        Room {
            name: name.to_owned(),
            members: Vec::new(),
            ended: false,
            rejoin_until: Vec::new(),
            recording: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many participants wait, are admitted, and how many tracks they publish.
    pub fn census(&self) -> RoomCensus {
        let mut c = RoomCensus::default();
        for m in &self.members {
            match m.state {
                AdmissionState::Waiting => c.waiting += 1,
                AdmissionState::Admitted => {
                    c.admitted += 1;
                    c.tracks += m.tracks.len();
                }
            }
        }
        c
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn is_admitted(&self, id: &str) -> bool {
        self.member(id).is_some_and(Member::admitted)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.member(id).is_some()
    }

    /// An admitted participant with the physician's grants (admit, steer devices, pin).
    pub fn is_admitted_physician(&self, id: &str) -> bool {
        self.member(id)
            .is_some_and(|m| m.admitted() && m.role.grants().admit)
    }

    /// Admitted participants who may admit (the physicians present).
    pub fn admitted_with_admit_grant(&self) -> Vec<ParticipantId> {
        self.members
            .iter()
            .filter(|m| m.admitted() && m.role.grants().admit)
            .map(|m| m.id.clone())
            .collect()
    }

    fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    fn index(&self, id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    pub fn handle(&mut self, input: Input) -> Result<Vec<Effect>, Refusal> {
        let mut fx = Vec::new();
        let admitted_before: Vec<ParticipantId> = self
            .members
            .iter()
            .filter(|m| m.admitted())
            .map(|m| m.id.clone())
            .collect();
        self.handle_input(&mut fx, input)?;
        self.follow_recording(&mut fx, &admitted_before);
        Ok(fx)
    }

    fn handle_input(&mut self, fx: &mut Vec<Effect>, input: Input) -> Result<(), Refusal> {
        let fx = &mut *fx;
        match input {
            Input::Join {
                id,
                identity,
                name,
                role,
                companion_kind,
                now,
            } => {
                let rejoin = self.take_rejoin(&identity, now);
                self.join(fx, id, identity, name, role, companion_kind, rejoin)?
            }
            Input::Admit { by, target } => self.admit(fx, &by, &target)?,
            Input::Refuse { by, target, reason } => self.refuse(fx, &by, &target, reason)?,
            Input::Remove { by, target } => self.remove(fx, &by, &target)?,
            Input::End { by } => self.end(fx, &by)?,
            Input::Leave { id, reason, now } => self.leave(fx, &id, reason, now),
            Input::TracksPublished { id, tracks } => self.publish(fx, &id, tracks)?,
            Input::Mute { id, mid, muted } => self.mute(fx, &id, &mid, muted)?,
            Input::DeviceControl {
                by,
                target,
                command,
            } => self.device_control(fx, &by, &target, command)?,
            Input::RequestRecording { by, id, track_ids } => {
                self.request_recording(fx, &by, id, track_ids)?
            }
            Input::RecordingConsent {
                by,
                recording_id,
                accept,
            } => self.recording_consent(fx, &by, &recording_id, accept)?,
            Input::StopRecording { by } => self.stop_recording(fx, &by)?,
            Input::ServerShutdown { retry_after_ms } => self.server_shutdown(fx, retry_after_ms),
        }
        Ok(())
    }

    /// Whether `identity` dropped while admitted less than [`REJOIN_GRACE`] ago (consumed).
    fn take_rejoin(&mut self, identity: &str, now: Instant) -> bool {
        self.rejoin_until.retain(|(_, until)| *until > now);
        let found = self.rejoin_until.iter().position(|(i, _)| i == identity);
        found.map(|i| self.rejoin_until.swap_remove(i)).is_some()
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        fx: &mut Vec<Effect>,
        id: ParticipantId,
        identity: String,
        name: String,
        role: Role,
        companion_kind: Option<CompanionKind>,
        rejoin: bool,
    ) -> Result<(), Refusal> {
        if self.ended {
            return Err(refuse(
                ErrorCode::ConsultationEnded,
                "this consultation has ended",
            ));
        }
        // A second connection of the same identity takes over (a reconnect): the earlier one
        // is closed, and an admitted participant stays admitted.
        let mut state = if role.grants().bypass_waiting_room || rejoin {
            AdmissionState::Admitted
        } else {
            AdmissionState::Waiting
        };
        if let Some(i) = self.members.iter().position(|m| m.identity == identity) {
            let old = self.members.remove(i);
            state = state.max_admission(old.state);
            fx.push(Effect::Send {
                to: old.id.clone(),
                msg: ServerMsg::Error {
                    code: ErrorCode::AlreadyJoined,
                    message: "replaced by a new connection of the same identity".into(),
                },
            });
            fx.push(Effect::Close { to: old.id.clone() });
            if old.admitted() {
                fx.push(Effect::StopMedia { id: old.id.clone() });
                self.broadcast_admitted(
                    fx,
                    ServerMsg::ParticipantLeft {
                        participant_id: old.id.clone(),
                        reason: LeaveReason::Replaced,
                    },
                );
            }
            fx.push(audit(
                Some(&old.identity),
                "replaced",
                None,
                json!({"old_participant": old.id, "new_participant": id}),
            ));
        }
        let member = Member {
            id: id.clone(),
            identity,
            name,
            role,
            companion_kind,
            state,
            tracks: Vec::new(),
        };
        fx.push(audit(
            Some(&member.identity),
            "join",
            None,
            json!({"participant": id, "role": role, "name": member.name,
                   "companion_kind": companion_kind, "state": state, "rejoin": rejoin}),
        ));
        let participants = if member.admitted() {
            self.admitted_infos()
        } else {
            Vec::new()
        };
        fx.push(Effect::Send {
            to: id.clone(),
            msg: ServerMsg::Joined {
                version: PROTOCOL_VERSION,
                participant_id: id.clone(),
                room: self.name.clone(),
                role,
                state,
                participants,
            },
        });
        let admitted = member.admitted();
        let info = member.info();
        self.members.push(member);
        if admitted {
            self.broadcast_admitted_except(
                fx,
                &id,
                ServerMsg::ParticipantJoined { participant: info },
            );
            fx.push(Effect::StartMedia { id: id.clone() });
        }
        self.send_waiting_list(fx);
        Ok(())
    }

    fn admitter(&self, by: &str) -> Result<&Member, Refusal> {
        let m = self
            .member(by)
            .ok_or_else(|| refuse(ErrorCode::NotJoined, "not in this consultation"))?;
        if !m.role.grants().admit {
            return Err(refuse(
                ErrorCode::Forbidden,
                "only a physician may admit, refuse or remove participants",
            ));
        }
        if !m.admitted() {
            return Err(refuse(ErrorCode::NotAdmitted, "not admitted"));
        }
        Ok(m)
    }

    fn admit(&mut self, fx: &mut Vec<Effect>, by: &str, target: &str) -> Result<(), Refusal> {
        let by_identity = self.admitter(by)?.identity.clone();
        let i = self
            .index(target)
            .ok_or_else(|| refuse(ErrorCode::NotFound, "no such participant"))?;
        if self.members[i].admitted() {
            return Err(refuse(ErrorCode::InvalidState, "already admitted"));
        }
        let participants = self.admitted_infos();
        let m = &mut self.members[i];
        m.state = AdmissionState::Admitted;
        let info = m.info();
        fx.push(audit(
            Some(&by_identity),
            "admit",
            Some(&m.identity),
            json!({"participant": target}),
        ));
        fx.push(Effect::Send {
            to: target.to_owned(),
            msg: ServerMsg::Admitted { participants },
        });
        self.broadcast_admitted_except(
            fx,
            target,
            ServerMsg::ParticipantJoined { participant: info },
        );
        fx.push(Effect::StartMedia {
            id: target.to_owned(),
        });
        self.send_waiting_list(fx);
        Ok(())
    }

    fn refuse(
        &mut self,
        fx: &mut Vec<Effect>,
        by: &str,
        target: &str,
        reason: Option<String>,
    ) -> Result<(), Refusal> {
        let by_identity = self.admitter(by)?.identity.clone();
        let i = self
            .index(target)
            .ok_or_else(|| refuse(ErrorCode::NotFound, "no such participant"))?;
        if self.members[i].admitted() {
            return Err(refuse(
                ErrorCode::InvalidState,
                "already admitted: remove instead",
            ));
        }
        let m = self.members.remove(i);
        fx.push(audit(
            Some(&by_identity),
            "refuse",
            Some(&m.identity),
            json!({"participant": target, "reason": reason}),
        ));
        fx.push(Effect::Send {
            to: m.id.clone(),
            msg: ServerMsg::Refused { reason },
        });
        fx.push(Effect::Close { to: m.id });
        self.send_waiting_list(fx);
        Ok(())
    }

    fn remove(&mut self, fx: &mut Vec<Effect>, by: &str, target: &str) -> Result<(), Refusal> {
        let by_identity = self.admitter(by)?.identity.clone();
        if by == target {
            return Err(refuse(
                ErrorCode::InvalidState,
                "use leave to leave the consultation",
            ));
        }
        let i = self
            .index(target)
            .ok_or_else(|| refuse(ErrorCode::NotFound, "no such participant"))?;
        let m = self.members.remove(i);
        fx.push(audit(
            Some(&by_identity),
            "remove",
            Some(&m.identity),
            json!({"participant": target}),
        ));
        fx.push(Effect::Send {
            to: m.id.clone(),
            msg: ServerMsg::Removed,
        });
        fx.push(Effect::Close { to: m.id.clone() });
        if m.admitted() {
            fx.push(Effect::StopMedia { id: m.id.clone() });
            self.broadcast_admitted(
                fx,
                ServerMsg::ParticipantLeft {
                    participant_id: m.id,
                    reason: LeaveReason::Removed,
                },
            );
        } else {
            self.send_waiting_list(fx);
        }
        Ok(())
    }

    fn end(&mut self, fx: &mut Vec<Effect>, by: &str) -> Result<(), Refusal> {
        let m = self
            .member(by)
            .ok_or_else(|| refuse(ErrorCode::NotJoined, "not in this consultation"))?;
        if !m.role.grants().end {
            return Err(refuse(
                ErrorCode::Forbidden,
                "only a physician may end the consultation",
            ));
        }
        fx.push(audit(
            Some(&m.identity),
            "consultation_end",
            None,
            json!({"participant": by, "participants": self.members.len()}),
        ));
        for m in self.members.drain(..) {
            fx.push(Effect::Send {
                to: m.id.clone(),
                msg: ServerMsg::ConsultationEnded { by: by.to_owned() },
            });
            if m.admitted() {
                fx.push(Effect::StopMedia { id: m.id.clone() });
            }
            fx.push(Effect::Close { to: m.id });
        }
        self.ended = true;
        Ok(())
    }

    fn server_shutdown(&mut self, fx: &mut Vec<Effect>, retry_after_ms: u32) {
        // Stopped for this reason first (not as the participants' departure).
        if let Some(round) = self.recording.as_mut() {
            let outcome = round.server_shutdown();
            self.apply_recording(fx, outcome);
        }
        fx.push(audit(
            None,
            "server_shutdown",
            None,
            json!({"participants": self.members.len()}),
        ));
        for m in self.members.drain(..) {
            fx.push(audit(
                Some(&m.identity),
                "disconnect",
                None,
                json!({"participant": m.id, "reason": "server_shutdown"}),
            ));
            fx.push(Effect::Send {
                to: m.id.clone(),
                msg: ServerMsg::ServerShutdown { retry_after_ms },
            });
            if m.admitted() {
                fx.push(Effect::StopMedia { id: m.id.clone() });
            }
            fx.push(Effect::Close { to: m.id });
        }
    }

    fn leave(&mut self, fx: &mut Vec<Effect>, id: &str, reason: LeaveReason, now: Instant) {
        // Unknown here: already removed, refused or replaced.
        let Some(i) = self.index(id) else { return };
        let m = self.members.remove(i);
        if m.admitted() && reason == LeaveReason::Disconnected {
            self.rejoin_until
                .push((m.identity.clone(), now + REJOIN_GRACE));
        }
        let action = match reason {
            LeaveReason::Disconnected => "disconnect",
            _ => "leave",
        };
        fx.push(audit(
            Some(&m.identity),
            action,
            None,
            json!({"participant": id, "state": m.state}),
        ));
        if m.admitted() {
            fx.push(Effect::StopMedia { id: m.id.clone() });
            self.broadcast_admitted(
                fx,
                ServerMsg::ParticipantLeft {
                    participant_id: m.id,
                    reason,
                },
            );
        } else {
            self.send_waiting_list(fx);
        }
    }

    fn publish(
        &mut self,
        fx: &mut Vec<Effect>,
        id: &str,
        tracks: Vec<PublishedTrack>,
    ) -> Result<(), Refusal> {
        let i = self
            .index(id)
            .ok_or_else(|| refuse(ErrorCode::NotJoined, "not in this consultation"))?;
        if !self.members[i].admitted() {
            return Err(refuse(ErrorCode::NotAdmitted, "waiting for admission"));
        }
        let m = &mut self.members[i];
        let identity = m.identity.clone();
        let mut published = Vec::new();
        let mut unpublished = Vec::new();
        m.tracks.retain(|(mid, t)| {
            let keep = tracks.iter().any(|n| n.mid == *mid && n.label == t.label);
            if !keep {
                unpublished.push(t.clone());
            }
            keep
        });
        for t in tracks {
            if m.tracks.iter().any(|(mid, _)| *mid == t.mid) {
                continue;
            }
            let info = TrackInfo {
                track_id: format!("{id}/{}", t.mid),
                label: t.label,
                kind: t.label.kind(),
                muted: t.muted,
            };
            published.push(info.clone());
            m.tracks.push((t.mid, info));
        }
        for t in unpublished {
            fx.push(audit(
                Some(&identity),
                "track_unpublished",
                None,
                json!({"participant": id, "track_id": t.track_id, "label": t.label}),
            ));
            self.broadcast_admitted_except(
                fx,
                id,
                ServerMsg::TrackUnpublished {
                    participant_id: id.to_owned(),
                    track_id: t.track_id,
                },
            );
        }
        for t in published {
            fx.push(audit(
                Some(&identity),
                "track_published",
                None,
                json!({"participant": id, "track_id": t.track_id, "label": t.label, "kind": t.kind}),
            ));
            self.broadcast_admitted_except(
                fx,
                id,
                ServerMsg::TrackPublished {
                    participant_id: id.to_owned(),
                    track: t,
                },
            );
        }
        Ok(())
    }

    fn mute(
        &mut self,
        fx: &mut Vec<Effect>,
        id: &str,
        mid: &str,
        muted: bool,
    ) -> Result<(), Refusal> {
        let i = self
            .index(id)
            .ok_or_else(|| refuse(ErrorCode::NotJoined, "not in this consultation"))?;
        let Some((_, t)) = self.members[i].tracks.iter_mut().find(|(m, _)| m == mid) else {
            return Err(refuse(ErrorCode::NotFound, "no such track"));
        };
        if t.muted == muted {
            return Ok(());
        }
        t.muted = muted;
        let track_id = t.track_id.clone();
        self.broadcast_admitted_except(
            fx,
            id,
            ServerMsg::MuteChanged {
                participant_id: id.to_owned(),
                track_id,
                muted,
            },
        );
        Ok(())
    }

    fn device_control(
        &mut self,
        fx: &mut Vec<Effect>,
        by: &str,
        target: &str,
        command: DeviceCommand,
    ) -> Result<(), Refusal> {
        let by_identity = self.admitter(by)?.identity.clone();
        let t = self
            .member(target)
            .ok_or_else(|| refuse(ErrorCode::NotFound, "no such participant"))?;
        if !t.admitted() {
            return Err(refuse(
                ErrorCode::NotAdmitted,
                "the participant is not admitted",
            ));
        }
        if command.label().kind() != consult_protocol::TrackKind::Video {
            return Err(refuse(ErrorCode::BadRequest, "only cameras are steered"));
        }
        fx.push(audit(
            Some(&by_identity),
            "device_control",
            Some(&t.identity),
            json!({"participant": target, "command": command}),
        ));
        fx.push(Effect::Send {
            to: target.to_owned(),
            msg: ServerMsg::DeviceControl {
                from: by.to_owned(),
                command,
            },
        });
        Ok(())
    }

    fn request_recording(
        &mut self,
        fx: &mut Vec<Effect>,
        by: &str,
        id: String,
        track_ids: Vec<String>,
    ) -> Result<(), Refusal> {
        let by_identity = self.admitter(by)?.identity.clone();
        if self.recording.as_ref().is_some_and(|r| !r.is_over()) {
            return Err(refuse(
                ErrorCode::InvalidState,
                "a recording is already asked for or running",
            ));
        }
        if track_ids.is_empty() {
            return Err(refuse(ErrorCode::BadRequest, "no track chosen"));
        }
        let mut tracks = Vec::with_capacity(track_ids.len());
        for tid in &track_ids {
            let found = self.members.iter().filter(|m| m.admitted()).find_map(|m| {
                m.tracks
                    .iter()
                    .find(|(_, t)| &t.track_id == tid)
                    .map(|(_, t)| RecordedTrack {
                        track_id: t.track_id.clone(),
                        participant_id: m.id.clone(),
                        label: t.label,
                        kind: t.kind,
                    })
            });
            tracks.push(found.ok_or_else(|| refuse(ErrorCode::NotFound, "no such track"))?);
        }
        let admitted: Vec<ParticipantId> = self
            .members
            .iter()
            .filter(|m| m.admitted())
            .map(|m| m.id.clone())
            .collect();
        let (round, outcome) = ConsentRound::new(id, by, tracks, &admitted);
        fx.push(audit(
            Some(&by_identity),
            "recording_requested",
            None,
            json!({"recording_id": round.id, "tracks": round.tracks}),
        ));
        self.recording = Some(round);
        self.apply_recording(fx, outcome);
        Ok(())
    }

    fn recording_consent(
        &mut self,
        fx: &mut Vec<Effect>,
        by: &str,
        recording_id: &str,
        accept: bool,
    ) -> Result<(), Refusal> {
        let identity = self
            .member(by)
            .ok_or_else(|| refuse(ErrorCode::NotJoined, "not in this consultation"))?
            .identity
            .clone();
        let round = self
            .recording
            .as_mut()
            .filter(|r| r.id == recording_id)
            .ok_or_else(|| refuse(ErrorCode::NotFound, "no such recording"))?;
        let outcome = round
            .answer(by, accept)
            .map_err(|m| refuse(ErrorCode::InvalidState, m))?;
        fx.push(audit(
            Some(&identity),
            "recording_consent",
            None,
            json!({"recording_id": recording_id, "accept": accept, "participant": by}),
        ));
        self.apply_recording(fx, outcome);
        Ok(())
    }

    fn stop_recording(&mut self, fx: &mut Vec<Effect>, by: &str) -> Result<(), Refusal> {
        self.admitter(by)?;
        let round = self
            .recording
            .as_mut()
            .filter(|r| !r.is_over())
            .ok_or_else(|| refuse(ErrorCode::InvalidState, "no recording to stop"))?;
        let outcome = round.stop_by(by);
        self.apply_recording(fx, outcome);
        Ok(())
    }

    /// Admissions and departures change who must consent.
    fn follow_recording(&mut self, fx: &mut Vec<Effect>, admitted_before: &[ParticipantId]) {
        let Some(round) = self.recording.as_mut().filter(|r| !r.is_over()) else {
            return;
        };
        let admitted_now: Vec<&Member> = if self.ended {
            Vec::new()
        } else {
            self.members.iter().filter(|m| m.admitted()).collect()
        };
        let mut outcomes = Vec::new();
        for m in &admitted_now {
            if !admitted_before.contains(&m.id) {
                outcomes.push(round.admitted(&m.id));
            }
        }
        for id in admitted_before {
            if !admitted_now.iter().any(|m| &m.id == id) {
                outcomes.push(round.left(id));
            }
        }
        if self.ended && !round.is_over() {
            outcomes.push(round.stop_by("the end of the consultation"));
        }
        for o in outcomes {
            self.apply_recording(fx, o);
        }
    }

    /// Effects of a consent outcome, and the new state to every admitted participant.
    fn apply_recording(&mut self, fx: &mut Vec<Effect>, outcome: crate::consent::Outcome) {
        let Some(round) = &self.recording else { return };
        match &outcome {
            crate::consent::Outcome::Start => {
                fx.push(audit(
                    None,
                    "recording_started",
                    None,
                    json!({"recording_id": round.id, "tracks": round.tracks}),
                ));
                fx.push(Effect::StartRecording {
                    id: round.id.clone(),
                    tracks: round.tracks.clone(),
                });
            }
            crate::consent::Outcome::Stop(reason) => {
                fx.push(audit(
                    None,
                    "recording_stopped",
                    None,
                    json!({"recording_id": round.id, "reason": reason}),
                ));
                fx.push(Effect::StopRecording {
                    id: round.id.clone(),
                });
            }
            crate::consent::Outcome::Unchanged => {}
        }
        let msg = ServerMsg::Recording {
            recording_id: round.id.clone(),
            phase: round.phase,
            requested_by: round.requested_by.clone(),
            tracks: round.tracks.clone(),
            waiting_for: round.waiting_for(),
            reason: round.reason.clone(),
        };
        for m in self.members.iter().filter(|m| m.admitted()) {
            fx.push(Effect::Send {
                to: m.id.clone(),
                msg: msg.clone(),
            });
        }
    }

    fn admitted_infos(&self) -> Vec<ParticipantInfo> {
        self.members
            .iter()
            .filter(|m| m.admitted())
            .map(Member::info)
            .collect()
    }

    fn broadcast_admitted(&self, fx: &mut Vec<Effect>, msg: ServerMsg) {
        self.broadcast_admitted_except(fx, "", msg)
    }

    fn broadcast_admitted_except(&self, fx: &mut Vec<Effect>, except: &str, msg: ServerMsg) {
        for m in self
            .members
            .iter()
            .filter(|m| m.admitted() && m.id != except)
        {
            fx.push(Effect::Send {
                to: m.id.clone(),
                msg: msg.clone(),
            });
        }
    }

    /// Tell every admitted participant who may admit who is waiting now.
    fn send_waiting_list(&self, fx: &mut Vec<Effect>) {
        let waiting: Vec<ParticipantInfo> = self
            .members
            .iter()
            .filter(|m| !m.admitted())
            .map(Member::info)
            .collect();
        for m in self
            .members
            .iter()
            .filter(|m| m.admitted() && m.role.grants().admit)
        {
            fx.push(Effect::Send {
                to: m.id.clone(),
                msg: ServerMsg::WaitingRoom {
                    waiting: waiting.clone(),
                },
            });
        }
    }
}

trait AdmissionExt {
    fn max_admission(self, other: AdmissionState) -> AdmissionState;
}

impl AdmissionExt for AdmissionState {
    fn max_admission(self, other: AdmissionState) -> AdmissionState {
        if self == AdmissionState::Admitted || other == AdmissionState::Admitted {
            AdmissionState::Admitted
        } else {
            AdmissionState::Waiting
        }
    }
}

fn audit(actor: Option<&str>, action: &'static str, target: Option<&str>, detail: Value) -> Effect {
    Effect::Audit {
        actor: actor.map(str::to_owned),
        action,
        target: target.map(str::to_owned),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consult_protocol::TrackLabel;

    fn join(room: &mut Room, id: &str, role: Role) -> Vec<Effect> {
        room.handle(Input::Join {
            id: id.into(),
            identity: format!("ident-{id}"),
            name: id.into(),
            role,
            companion_kind: (role == Role::Companion).then_some(CompanionKind::Nurse),
            now: Instant::now(),
        })
        .expect("join accepted")
    }

    fn sent_to<'a>(fx: &'a [Effect], to: &str) -> Vec<&'a ServerMsg> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Send { to: t, msg } if t == to => Some(msg),
                _ => None,
            })
            .collect()
    }

    fn starts(fx: &[Effect], id: &str) -> bool {
        fx.iter()
            .any(|e| matches!(e, Effect::StartMedia { id: i } if i == id))
    }

    #[test]
    fn patient_waits_until_physician_admits() {
        let mut r = Room::new("r");
        let fx = join(&mut r, "doc", Role::Physician);
        assert!(starts(&fx, "doc"), "physicians skip the waiting room");

        let fx = join(&mut r, "pat", Role::Patient);
        assert!(!starts(&fx, "pat"), "no media before admission");
        assert!(matches!(
            sent_to(&fx, "pat")[0],
            ServerMsg::Joined { state: AdmissionState::Waiting, participants, .. } if participants.is_empty()
        ));
        let to_doc = sent_to(&fx, "doc");
        assert!(
            matches!(to_doc.last(), Some(ServerMsg::WaitingRoom { waiting }) if waiting.len() == 1 && waiting[0].participant_id == "pat")
        );
        assert!(!r.is_admitted("pat"));

        let fx = r
            .handle(Input::Admit {
                by: "doc".into(),
                target: "pat".into(),
            })
            .unwrap();
        assert!(starts(&fx, "pat"));
        assert!(r.is_admitted("pat"));
        assert!(
            matches!(sent_to(&fx, "pat")[0], ServerMsg::Admitted { participants } if participants.len() == 1)
        );
        assert!(sent_to(&fx, "doc")
            .iter()
            .any(|m| matches!(m, ServerMsg::ParticipantJoined { participant } if participant.participant_id == "pat")));
    }

    #[test]
    fn only_an_admitted_physician_admits() {
        let mut r = Room::new("r");
        join(&mut r, "pat", Role::Patient);
        join(&mut r, "nurse", Role::Companion);
        let e = r
            .handle(Input::Admit {
                by: "pat".into(),
                target: "nurse".into(),
            })
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        let e = r.handle(Input::End { by: "nurse".into() }).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        let e = r
            .handle(Input::TracksPublished {
                id: "pat".into(),
                tracks: vec![],
            })
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NotAdmitted);
        assert!(!r.is_admitted("nurse"));
    }

    #[test]
    fn refused_participant_is_closed_and_never_gets_media() {
        let mut r = Room::new("r");
        join(&mut r, "doc", Role::Physician);
        join(&mut r, "pat", Role::Patient);
        let fx = r
            .handle(Input::Refuse {
                by: "doc".into(),
                target: "pat".into(),
                reason: Some("wrong patient".into()),
            })
            .unwrap();
        assert!(!starts(&fx, "pat"));
        assert!(matches!(sent_to(&fx, "pat")[0], ServerMsg::Refused { .. }));
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Close { to } if to == "pat")));
        assert!(!r.contains("pat"));
    }

    #[test]
    fn a_server_shutdown_tells_and_closes_everyone_without_ending_the_room() {
        let mut r = Room::new("r");
        join(&mut r, "doc", Role::Physician);
        join(&mut r, "pat", Role::Patient);
        let fx = r
            .handle(Input::ServerShutdown {
                retry_after_ms: 5000,
            })
            .unwrap();
        for id in ["doc", "pat"] {
            assert!(matches!(
                sent_to(&fx, id)[..],
                [ServerMsg::ServerShutdown {
                    retry_after_ms: 5000
                }]
            ));
            assert!(fx
                .iter()
                .any(|e| matches!(e, Effect::Close { to } if to == id)));
        }
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::StopMedia { id } if id == "doc")));
        assert!(fx.iter().any(|e| matches!(
            e,
            Effect::Audit {
                action: "server_shutdown",
                ..
            }
        )));
        assert!(!r.contains("doc") && !r.contains("pat"));
        // Not ended: once the server is back, the consultation goes on.
        assert!(!r.is_ended());
        join(&mut r, "doc", Role::Physician);
        assert!(r.contains("doc"));
    }

    #[test]
    fn tracks_are_announced_to_admitted_only() {
        let mut r = Room::new("r");
        join(&mut r, "doc", Role::Physician);
        join(&mut r, "nurse", Role::Companion);
        join(&mut r, "pat", Role::Patient);
        r.handle(Input::Admit {
            by: "doc".into(),
            target: "nurse".into(),
        })
        .unwrap();
        let fx = r
            .handle(Input::TracksPublished {
                id: "nurse".into(),
                tracks: vec![PublishedTrack {
                    mid: "0".into(),
                    label: TrackLabel::Stethoscope,
                    muted: false,
                }],
            })
            .unwrap();
        assert_eq!(sent_to(&fx, "doc").len(), 1);
        assert!(
            sent_to(&fx, "pat").is_empty(),
            "a waiting patient sees nothing"
        );
        let fx = r
            .handle(Input::TracksPublished {
                id: "nurse".into(),
                tracks: vec![],
            })
            .unwrap();
        assert!(matches!(
            sent_to(&fx, "doc")[0],
            ServerMsg::TrackUnpublished { track_id, .. } if track_id == "nurse/0"
        ));
    }

    #[test]
    fn reconnect_of_same_identity_keeps_admission() {
        let mut r = Room::new("r");
        join(&mut r, "doc", Role::Physician);
        join(&mut r, "pat", Role::Patient);
        r.handle(Input::Admit {
            by: "doc".into(),
            target: "pat".into(),
        })
        .unwrap();
        let fx = r
            .handle(Input::Join {
                id: "pat2".into(),
                identity: "ident-pat".into(),
                name: "pat".into(),
                role: Role::Patient,
                companion_kind: None,
                now: Instant::now(),
            })
            .unwrap();
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Close { to } if to == "pat")));
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::StopMedia { id } if id == "pat")));
        assert!(starts(&fx, "pat2"));
        assert!(r.is_admitted("pat2") && !r.contains("pat"));
        // The old connection's late leave changes nothing.
        let fx = r
            .handle(Input::Leave {
                id: "pat".into(),
                reason: LeaveReason::Disconnected,
                now: Instant::now(),
            })
            .unwrap();
        assert!(fx.is_empty());
    }

    #[test]
    fn physician_removes_an_admitted_participant() {
        let mut r = Room::new("r");
        join(&mut r, "doc", Role::Physician);
        join(&mut r, "pat", Role::Patient);
        join(&mut r, "nurse", Role::Companion);
        for t in ["pat", "nurse"] {
            r.handle(Input::Admit {
                by: "doc".into(),
                target: t.into(),
            })
            .unwrap();
        }
        let e = r
            .handle(Input::Remove {
                by: "nurse".into(),
                target: "pat".into(),
            })
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        let fx = r
            .handle(Input::Remove {
                by: "doc".into(),
                target: "pat".into(),
            })
            .unwrap();
        assert_eq!(sent_to(&fx, "pat"), [&ServerMsg::Removed]);
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::StopMedia { id } if id == "pat")));
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Close { to } if to == "pat")));
        assert!(matches!(
            sent_to(&fx, "nurse")[0],
            ServerMsg::ParticipantLeft {
                reason: LeaveReason::Removed,
                ..
            }
        ));
        assert!(!r.contains("pat"));
        let e = r
            .handle(Input::Remove {
                by: "doc".into(),
                target: "doc".into(),
            })
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidState);
    }

    #[test]
    fn a_dropped_admitted_participant_rejoins_within_the_grace_period_only() {
        let t0 = Instant::now();
        let mut r = Room::new("r");
        join(&mut r, "doc", Role::Physician);
        join(&mut r, "cart", Role::Companion);
        r.handle(Input::Admit {
            by: "doc".into(),
            target: "cart".into(),
        })
        .unwrap();
        let drop = |r: &mut Room, id: &str, reason| {
            r.handle(Input::Leave {
                id: id.into(),
                reason,
                now: t0,
            })
            .unwrap();
        };
        let rejoin = |r: &mut Room, id: &str, at: Instant| {
            r.handle(Input::Join {
                id: id.into(),
                identity: "ident-cart".into(),
                name: "cart".into(),
                role: Role::Companion,
                companion_kind: None,
                now: at,
            })
            .unwrap()
        };
        drop(&mut r, "cart", LeaveReason::Disconnected);
        let fx = rejoin(&mut r, "cart2", t0 + Duration::from_secs(30));
        assert!(starts(&fx, "cart2"), "back in without a new admission");
        // The grace is used once: dropped again and back too late, it waits.
        drop(&mut r, "cart2", LeaveReason::Disconnected);
        let fx = rejoin(&mut r, "cart3", t0 + REJOIN_GRACE + Duration::from_secs(1));
        assert!(!starts(&fx, "cart3"));
        assert!(!r.is_admitted("cart3"));
        // Leaving on purpose gives no grace.
        r.handle(Input::Admit {
            by: "doc".into(),
            target: "cart3".into(),
        })
        .unwrap();
        drop(&mut r, "cart3", LeaveReason::Left);
        let fx = rejoin(&mut r, "cart4", t0 + Duration::from_secs(1));
        assert!(!starts(&fx, "cart4"));
    }

    #[test]
    fn only_physicians_steer_admitted_carts() {
        let mut r = Room::new("r");
        join(&mut r, "doc", Role::Physician);
        join(&mut r, "cart", Role::Companion);
        join(&mut r, "pat", Role::Patient);
        let zoom = DeviceCommand::Zoom {
            label: consult_protocol::TrackLabel::Otoscope,
            level: 2.0,
        };
        let steer = |r: &mut Room, by: &str, target: &str, c: DeviceCommand| {
            r.handle(Input::DeviceControl {
                by: by.into(),
                target: target.into(),
                command: c,
            })
        };
        let e = steer(&mut r, "doc", "cart", zoom.clone()).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotAdmitted);
        r.handle(Input::Admit {
            by: "doc".into(),
            target: "cart".into(),
        })
        .unwrap();
        let fx = steer(&mut r, "doc", "cart", zoom.clone()).unwrap();
        assert!(matches!(
            sent_to(&fx, "cart")[0],
            ServerMsg::DeviceControl { from, command } if from == "doc" && *command == zoom
        ));
        let e = steer(&mut r, "pat", "cart", zoom).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        let e = steer(
            &mut r,
            "doc",
            "cart",
            DeviceCommand::Disable {
                label: consult_protocol::TrackLabel::Stethoscope,
            },
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn ending_closes_everyone_and_refuses_later_joins() {
        let mut r = Room::new("r");
        join(&mut r, "doc", Role::Physician);
        join(&mut r, "pat", Role::Patient);
        let fx = r.handle(Input::End { by: "doc".into() }).unwrap();
        for id in ["doc", "pat"] {
            assert!(matches!(
                sent_to(&fx, id)[0],
                ServerMsg::ConsultationEnded { .. }
            ));
        }
        assert!(r.is_ended() && r.is_empty());
        let e = r
            .handle(Input::Join {
                id: "x".into(),
                identity: "x".into(),
                name: "x".into(),
                role: Role::Physician,
                companion_kind: None,
                now: Instant::now(),
            })
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ConsultationEnded);
    }

    #[test]
    fn every_step_is_audited() {
        let mut r = Room::new("r");
        let mut actions = Vec::new();
        let mut collect = |fx: Vec<Effect>| {
            for e in fx {
                if let Effect::Audit { action, .. } = e {
                    actions.push(action);
                }
            }
        };
        collect(join(&mut r, "doc", Role::Physician));
        collect(join(&mut r, "pat", Role::Patient));
        collect(
            r.handle(Input::Admit {
                by: "doc".into(),
                target: "pat".into(),
            })
            .unwrap(),
        );
        collect(
            r.handle(Input::Leave {
                id: "pat".into(),
                reason: LeaveReason::Left,
                now: Instant::now(),
            })
            .unwrap(),
        );
        collect(r.handle(Input::End { by: "doc".into() }).unwrap());
        assert_eq!(
            actions,
            ["join", "join", "admit", "leave", "consultation_end"]
        );
    }
}
