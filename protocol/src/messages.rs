//! JSON messages exchanged over the signaling WebSocket (`docs/protocol.md`).

use crate::{CompanionKind, Role, TrackKind, TrackLabel};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A participant's id within one consultation, assigned by the server at join.
pub type ParticipantId = String;

/// Which of the participant's two peer connections a message is about.
/// The client offers on the `publisher` connection; the server offers on the `subscriber` one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerTarget {
    Publisher,
    Subscriber,
}

/// A trickled ICE candidate, as the browser's `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, rename = "sdpMid", skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        default,
        rename = "sdpMLineIndex",
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
}

/// A track the client declares in its publisher offer: which m-line carries what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedTrack {
    /// The `a=mid` of the m-line in the publisher offer.
    pub mid: String,
    pub label: TrackLabel,
    #[serde(default)]
    pub muted: bool,
}

/// A track as other participants see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// Stable id of the track in the room: `<participant id>/<publisher mid>`.
    pub track_id: String,
    pub label: TrackLabel,
    pub kind: TrackKind,
    pub muted: bool,
}

/// A track chosen for recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedTrack {
    pub track_id: String,
    pub participant_id: ParticipantId,
    pub label: TrackLabel,
    pub kind: TrackKind,
}

/// Where a recording stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingPhase {
    /// Asked; waiting for every participant's consent. Nothing is written.
    Pending,
    Recording,
    /// Refused, withdrawn, stopped by the physician, or ended with the consultation.
    Stopped,
}

/// A track the server sends on the subscriber connection: which m-line carries whose track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribedTrack {
    /// The `a=mid` of the m-line in the subscriber offer.
    pub mid: String,
    pub track_id: String,
    pub participant_id: ParticipantId,
    pub label: TrackLabel,
    pub kind: TrackKind,
}

/// Where a participant stands in the consultation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionState {
    Waiting,
    Admitted,
}

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub participant_id: ParticipantId,
    pub identity: String,
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub companion_kind: Option<CompanionKind>,
    pub state: AdmissionState,
    #[serde(default)]
    pub tracks: Vec<TrackInfo>,
}

/// Messages from a client to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// First message on a connection. `room`, if given, must be the token's room.
    Join {
        version: u32,
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// The client takes Opus retransmissions (NACK + RTX, RFC 4588) on its subscriber
        /// connection: the server then offers each audio track an RTX stream. Browsers do
        /// not (an audio RTX stream in an offer makes them refuse it): leave it out.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        audio_rtx: bool,
        /// The client's transport-wide congestion control feedback leaves out the SFU's probe
        /// packets (webrtc-rs 0.17), which sinks a send-side estimate on a healthy link: its
        /// downlink is then not estimated and every track goes at its best layer. Browsers
        /// leave it out.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        twcc_omits_probes: bool,
    },
    /// SDP offer of the publisher connection, with what each sending m-line carries.
    /// Tracks missing from the list (or m-lines no longer sending) are unpublished.
    PublishOffer {
        sdp: String,
        tracks: Vec<PublishedTrack>,
    },
    /// SDP answer to a `subscriber_offer`.
    SubscriberAnswer {
        sdp: String,
    },
    /// Trickled ICE candidate of one of the client's connections.
    Candidate {
        target: PeerTarget,
        candidate: IceCandidate,
    },
    /// Restart ICE on the subscriber connection (the network path failed or changed): the
    /// server sends a `subscriber_offer` with new credentials. The publisher connection
    /// restarts with a `publish_offer` made with new credentials.
    IceRestart,
    /// Mute state of one of the client's published tracks.
    Mute {
        mid: String,
        muted: bool,
    },
    /// Physician: admit a waiting participant.
    Admit {
        participant_id: ParticipantId,
    },
    /// Physician: refuse a waiting participant.
    Refuse {
        participant_id: ParticipantId,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Physician: remove a participant from the consultation.
    Remove {
        participant_id: ParticipantId,
    },
    /// Physician: end the consultation for everyone.
    EndConsultation,
    /// Physician: steer a device of another participant's cart (far-end camera control).
    DeviceControl {
        participant_id: ParticipantId,
        command: DeviceCommand,
    },
    /// Physician: ask to record these tracks (`track_id`s). Every admitted participant must
    /// consent before anything is written.
    RequestRecording {
        track_ids: Vec<String>,
    },
    /// Answer to a recording request, or (`accept: false`) withdrawal of consent at any time.
    RecordingConsent {
        recording_id: String,
        accept: bool,
    },
    /// Physician: stop the recording.
    StopRecording,
    /// Physician: this track matters now — keep it ahead of others of lower clinical rank
    /// when bandwidth is short (`pinned: false` to release it).
    PinTrack {
        track_id: String,
        pinned: bool,
    },
    Leave,
    Ping,
}

/// Messages from the server to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Answer to `join`. `participants` lists the admitted participants (empty while waiting).
    Joined {
        version: u32,
        participant_id: ParticipantId,
        room: String,
        role: Role,
        state: AdmissionState,
        participants: Vec<ParticipantInfo>,
    },
    /// The participant was admitted by a physician: media may now flow.
    Admitted {
        participants: Vec<ParticipantInfo>,
    },
    /// The participant was refused; the connection closes.
    Refused {
        reason: Option<String>,
    },
    /// The participant was removed by a physician; the connection closes.
    Removed,
    /// To participants with the admit grant: who is waiting now.
    WaitingRoom {
        waiting: Vec<ParticipantInfo>,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: ParticipantId,
        reason: LeaveReason,
    },
    /// SDP answer to `publish_offer`.
    PublishAnswer {
        sdp: String,
    },
    /// SDP offer of the subscriber connection, with what each m-line carries.
    SubscriberOffer {
        sdp: String,
        tracks: Vec<SubscribedTrack>,
    },
    TrackPublished {
        participant_id: ParticipantId,
        track: TrackInfo,
    },
    TrackUnpublished {
        participant_id: ParticipantId,
        track_id: String,
    },
    MuteChanged {
        participant_id: ParticipantId,
        track_id: String,
        muted: bool,
    },
    ConsultationEnded {
        by: ParticipantId,
    },
    /// The server is stopping (a deploy, a restart): the connection closes next. Join again
    /// with the same token after about `retry_after_ms` (to this server once it is back, or
    /// to another one); a recording in progress was stopped and its files kept.
    ServerShutdown {
        retry_after_ms: u32,
    },
    /// To a cart: a physician steers one of its devices.
    DeviceControl {
        from: ParticipantId,
        command: DeviceCommand,
    },
    /// To every admitted participant, at each change of the recording: who must still consent
    /// (`waiting_for`), whether it is running, and why it stopped.
    Recording {
        recording_id: String,
        phase: RecordingPhase,
        requested_by: ParticipantId,
        tracks: Vec<RecordedTrack>,
        waiting_for: Vec<ParticipantId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// To physicians: a still image was uploaded to the consultation.
    StillAvailable {
        still: StillInfo,
    },
    /// The participant's downlink changed mode: `audio_only` when every video track it
    /// receives is paused because the link cannot carry even its lowest layer (the last frame
    /// stays on screen; audio, the stethoscope first, keeps flowing); `low_link` when the
    /// estimate is under the rate for a usable consultation with video.
    Bandwidth {
        audio_only: bool,
        low_link: bool,
        estimate_kbps: u64,
        paused_track_ids: Vec<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    Pong,
    /// To a video publisher: the layers (rids) of its simulcast track `mid` that someone
    /// receives. The others may be paused to spare the uplink; a layer listed again is to be
    /// sent again (starting with a keyframe). `uplink_paused`: send nothing at all on this
    /// track (simulcast or not), the publisher's own uplink cannot carry video; sent again with
    /// `false` when it may try.
    PublisherLayers {
        mid: String,
        active_rids: Vec<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        uplink_paused: bool,
    },
    /// To an audio publisher: the packet loss its receivers see on track `mid` (its uplink
    /// plus the worst downlink, percent). An Opus encoder adds in-band FEC only when told to
    /// expect loss: set it as the encoder's expected packet loss.
    PublisherAudio {
        mid: String,
        expected_loss_pct: u8,
        /// Encode at most this many bits/s (`RTCRtpSender.setParameters` `maxBitrate`; the
        /// Opus encoder's bitrate), for the thinnest receiver's downlink.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_bitrate_bps: Option<u32>,
        /// Opus frame duration to use, ms (`a=ptime` in the answer the sender applies): longer
        /// frames spend less of a thin link on packet headers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ptime_ms: Option<u16>,
        /// `false`: send plain Opus, no redundancy (RED): the publisher's own uplink is thin
        /// and RED would double its audio there (the SFU adds RED toward lossy receivers
        /// itself). `true` or absent: the publisher's default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        redundancy: Option<bool>,
    },
}

/// Why a participant is no longer in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    Left,
    Disconnected,
    Removed,
    Refused,
    /// Another connection with the same identity took over.
    Replaced,
    ConsultationEnded,
}

/// Error codes of `error` messages and of HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    UnknownType,
    MessageTooLarge,
    UnsupportedVersion,
    BadToken,
    TokenExpired,
    WrongRoom,
    Forbidden,
    NotJoined,
    AlreadyJoined,
    NotAdmitted,
    NotFound,
    InvalidState,
    ConsultationEnded,
    BadSdp,
    Unauthorized,
    BadRequest,
    /// An upload larger than the server accepts.
    TooLarge,
    /// A file type the server does not accept.
    UnsupportedType,
    /// An upload chunk at the wrong offset (the answer carries the right one).
    Conflict,
    /// The server is stopping: join again in a moment.
    ShuttingDown,
    /// Too many attempts (wrong credentials, joins): try again after the time said.
    RateLimited,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::BadToken => "bad_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::WrongRoom => "wrong_room",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::NotAdmitted => "not_admitted",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::ConsultationEnded => "consultation_ended",
            ErrorCode::BadSdp => "bad_sdp",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedType => "unsupported_type",
            ErrorCode::Conflict => "conflict",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Body of every HTTP error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

/// `POST /api/tokens`: mint one access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    pub room: String,
    pub identity: String,
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub companion_kind: Option<CompanionKind>,
    /// Lifetime in seconds (default: the server's configured token lifetime).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub expires_at: u64,
}

/// One expected participant of a new consultation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitee {
    pub identity: String,
    pub name: String,
    #[serde(default)]
    pub companion_kind: Option<CompanionKind>,
}

/// `POST /api/consultations`: create a consultation and its join links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateConsultation {
    /// The physician; optional when the caller is a physician (their own token is used).
    #[serde(default)]
    pub physician: Option<Invitee>,
    pub patient: Invitee,
    #[serde(default)]
    pub companion: Option<Invitee>,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A join link for one participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinLink {
    pub role: Role,
    pub identity: String,
    pub name: String,
    pub token: String,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsultationCreated {
    pub room: String,
    pub expires_at: u64,
    pub links: Vec<JoinLink>,
}

/// One row of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    pub room: String,
    pub actor: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub detail: serde_json::Value,
}

/// `GET /api/consultations/{room}/summary`: who took part, when, and the technical incidents,
/// for the physician's report. Built from the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsultationSummary {
    pub room: String,
    /// First join, and end (or last leave); milliseconds since the Unix epoch.
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    /// Ended by a physician (rather than everyone leaving or still running).
    pub ended: bool,
    pub participants: Vec<ParticipantSummary>,
    pub incidents: Vec<Incident>,
    /// Still images stored during the consultation.
    pub stills: Vec<serde_json::Value>,
    pub device_controls: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantSummary {
    pub identity: String,
    pub name: Option<String>,
    pub role: Option<Role>,
    pub first_join_ms: i64,
    pub last_leave_ms: Option<i64>,
    pub joins: usize,
    pub admitted: bool,
}

/// A technical incident: `kind` is `media_lost`, `media_restored` (with `lost_ms`),
/// `ice_restart`, `signaling_lost` (the connection dropped without leaving) or `rejoined`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub ts_ms: i64,
    pub identity: Option<String>,
    pub kind: String,
    pub detail: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_snake_case() {
        let m = ClientMsg::Admit {
            participant_id: "p1".into(),
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"admit","participant_id":"p1"}"#
        );
        let back: ClientMsg = serde_json::from_str(r#"{"type":"end_consultation"}"#).unwrap();
        assert_eq!(back, ClientMsg::EndConsultation);
        let e = ServerMsg::Error {
            code: ErrorCode::TokenExpired,
            message: "x".into(),
        };
        assert!(serde_json::to_string(&e)
            .unwrap()
            .contains(r#""code":"token_expired""#));
    }

    #[test]
    fn ice_candidate_uses_browser_field_names() {
        let c: IceCandidate = serde_json::from_str(
            r#"{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}"#,
        )
        .unwrap();
        assert_eq!(c.sdp_mid.as_deref(), Some("0"));
        assert_eq!(c.sdp_mline_index, Some(0));
    }
}

/// `POST /api/stills`: announce a still image upload (téléexpertise store-and-forward).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StillUploadRequest {
    /// Which track the still was taken from.
    pub label: TrackLabel,
    /// `image/jpeg` or `image/png`.
    pub content_type: String,
    pub size: u64,
    /// Hex SHA-256 of the whole file, checked when the upload completes.
    pub sha256: String,
    /// When the still was taken, milliseconds since the Unix epoch.
    pub taken_at_ms: i64,
    /// The capturing device, e.g. "otoscope USB 2.0".
    #[serde(default)]
    pub device: Option<String>,
}

/// The still image type a file's first bytes say it is (the types the upload API takes).
pub fn still_content_type(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else {
        None
    }
}

/// State of an upload: where to resume, and the still once complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StillUploadStatus {
    pub upload_id: String,
    pub offset: u64,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub still: Option<StillInfo>,
}

/// A stored still image and its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StillInfo {
    pub still_id: String,
    pub room: String,
    pub author_identity: String,
    pub author_name: String,
    pub author_role: Role,
    pub label: TrackLabel,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    pub taken_at_ms: i64,
    pub uploaded_at_ms: i64,
    #[serde(default)]
    pub device: Option<String>,
}

/// What a physician may ask of a cart's camera or otoscope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum DeviceCommand {
    /// Switch the device's track on (publishing again) or off.
    Enable {
        label: TrackLabel,
    },
    Disable {
        label: TrackLabel,
    },
    /// Hold the current frame (for a careful look at a lesion), and release it.
    Freeze {
        label: TrackLabel,
    },
    Unfreeze {
        label: TrackLabel,
    },
    /// Optical or digital zoom factor, 1.0 = none.
    Zoom {
        label: TrackLabel,
        level: f32,
    },
    /// Take a full-resolution still on the device and upload it (`still_available` follows).
    Capture {
        label: TrackLabel,
    },
}

impl DeviceCommand {
    pub fn label(&self) -> TrackLabel {
        match self {
            DeviceCommand::Enable { label }
            | DeviceCommand::Disable { label }
            | DeviceCommand::Freeze { label }
            | DeviceCommand::Unfreeze { label }
            | DeviceCommand::Zoom { label, .. }
            | DeviceCommand::Capture { label } => *label,
        }
    }
}
