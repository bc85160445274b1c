//! One participant's WebSocket session: join, then relay between the client, the room and the SFU.

use crate::hub::{Outbound, SessionHandle};
use crate::room::{Input, Refusal};
use crate::server::AppState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use consult_protocol::{
    ClientMsg, ErrorCode, LeaveReason, ServerMsg, TokenClaims, MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};
use consult_sfu::api::ClientCaps;
use consult_sfu::SfuEvent;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info};

/// A WebSocket ping to the client this often at most, and three times per idle timeout (its
/// pong keeps the connection from being cut as idle).
const SERVER_PING_EVERY: Duration = Duration::from_secs(15);

/// How long a new connection has to send `join`.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// WebSocket close code for "message too big" (RFC 6455 §7.4.1).
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_NORMAL: u16 = 1000;

type Sink = SplitSink<WebSocket, Message>;

/// A message that could not be used, with the error to send back.
struct Rejected {
    code: ErrorCode,
    message: String,
}

impl Rejected {
    fn new(code: ErrorCode, message: impl Into<String>) -> Rejected {
        Rejected {
            code,
            message: message.into(),
        }
    }
}

impl From<Refusal> for Rejected {
    fn from(r: Refusal) -> Self {
        Rejected::new(r.code, r.message)
    }
}

/// Parse a client text message, telling malformed JSON from an unknown type from bad fields.
fn parse(text: &str) -> Result<ClientMsg, Rejected> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(Rejected::new(
            ErrorCode::MessageTooLarge,
            format!(
                "message of {} bytes exceeds {MAX_MESSAGE_BYTES}",
                text.len()
            ),
        ));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Rejected::new(ErrorCode::BadJson, format!("malformed JSON: {e}")))?;
    let ty = value
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| Rejected::new(ErrorCode::BadJson, "missing string field \"type\""))?
        .to_owned();
    serde_json::from_value(value).map_err(|e| {
        if e.to_string().starts_with("unknown variant") {
            Rejected::new(
                ErrorCode::UnknownType,
                format!("unknown message type {ty:?}"),
            )
        } else {
            Rejected::new(ErrorCode::BadRequest, format!("bad {ty:?} message: {e}"))
        }
    })
}

async fn send(sink: &mut Sink, msg: &ServerMsg) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => sink.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

async fn send_error(sink: &mut Sink, r: &Rejected) -> bool {
    send(
        sink,
        &ServerMsg::Error {
            code: r.code,
            message: r.message.clone(),
        },
    )
    .await
}

async fn close(sink: &mut Sink, code: u16, reason: &str) {
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason.to_owned()),
        })))
        .await;
}

/// What the reader got from the socket.
enum Incoming {
    Msg(ClientMsg),
    Bad(Rejected),
    Ignore,
    Closed,
}

async fn next_incoming(stream: &mut SplitStream<WebSocket>) -> Incoming {
    match stream.next().await {
        Some(Ok(Message::Text(t))) => match parse(t.as_str()) {
            Ok(m) => Incoming::Msg(m),
            Err(r) => Incoming::Bad(r),
        },
        Some(Ok(Message::Binary(b))) => Incoming::Bad(if b.len() > MAX_MESSAGE_BYTES {
            Rejected::new(ErrorCode::MessageTooLarge, "message too large")
        } else {
            Rejected::new(
                ErrorCode::BadJson,
                "binary messages are not part of the protocol",
            )
        }),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Ignore,
        Some(Ok(Message::Close(_))) | None => Incoming::Closed,
        // Frames over the transport limit or broken framing end the connection.
        Some(Err(e)) => {
            debug!("websocket read error: {e}");
            Incoming::Closed
        }
    }
}

/// Wait for a valid `join`, verifying its token; also returns whether the client takes
/// Opus retransmissions.
async fn await_join(
    state: &AppState,
    sink: &mut Sink,
    stream: &mut SplitStream<WebSocket>,
    peer: IpAddr,
) -> Option<(TokenClaims, ClientCaps)> {
    let first = match tokio::time::timeout(JOIN_TIMEOUT, next_incoming(stream)).await {
        Ok(i) => i,
        Err(_) => {
            let r = Rejected::new(ErrorCode::NotJoined, "no join message in time");
            send_error(sink, &r).await;
            close(sink, CLOSE_POLICY, "join timeout").await;
            return None;
        }
    };
    let rejected = match first {
        Incoming::Msg(ClientMsg::Join {
            version,
            token,
            room,
            audio_rtx,
            twcc_omits_probes,
        }) => match check_join(state, version, &token, room.as_deref())
            .and_then(|claims| limit_joins(state, claims))
        {
            Ok(claims) => {
                let caps = ClientCaps {
                    audio_rtx,
                    twcc_omits_probes,
                };
                return Some((claims, caps));
            }
            Err(r) => {
                if matches!(r.code, ErrorCode::BadToken | ErrorCode::TokenExpired) {
                    // Wrong credentials count against the address, as on the HTTP API.
                    let now = std::time::Instant::now();
                    if let Some(b) = state.with_limits(|l| l.auth_by_address.spend(&peer, now)) {
                        state.audit_burst(
                            "",
                            "auth_failures_by_address",
                            &peer.to_string(),
                            b.refused,
                        );
                    }
                }
                r
            }
        },
        Incoming::Msg(_) => Rejected::new(ErrorCode::NotJoined, "the first message must be join"),
        Incoming::Bad(r) => r,
        Incoming::Ignore | Incoming::Closed => return None,
    };
    send_error(sink, &rejected).await;
    let code = if rejected.code == ErrorCode::MessageTooLarge {
        CLOSE_TOO_BIG
    } else {
        CLOSE_POLICY
    };
    close(sink, code, rejected.code.as_str()).await;
    None
}

fn check_join(
    state: &AppState,
    version: u32,
    token: &str,
    room: Option<&str>,
) -> Result<TokenClaims, Rejected> {
    if version != PROTOCOL_VERSION {
        return Err(Rejected::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {version} is not supported (server speaks {PROTOCOL_VERSION})"
            ),
        ));
    }
    let claims = state.tokens.verify(token).map_err(|e| {
        Rejected::new(
            e.code(),
            match e.code() {
                ErrorCode::TokenExpired => "the access token has expired",
                _ => "the access token is invalid",
            },
        )
    })?;
    if state.is_revoked(&claims) {
        return Err(Rejected::new(
            ErrorCode::BadToken,
            "the access token was revoked",
        ));
    }
    if let Some(room) = room {
        if room != claims.room {
            return Err(Rejected::new(
                ErrorCode::WrongRoom,
                "the token is for another consultation",
            ));
        }
    }
    Ok(claims)
}

/// Joins per identity are limited (`rate_limit`): a client rejoining in a loop would flood the
/// physician with waiting-room updates and the trail with rows.
fn limit_joins(state: &AppState, claims: TokenClaims) -> Result<TokenClaims, Rejected> {
    let now = std::time::Instant::now();
    let key = (claims.room.clone(), claims.sub.clone());
    let outcome = state.with_limits(|l| match l.joins.check(&key, now) {
        Err(retry) => Err(retry),
        Ok(()) => Ok(l.joins.spend(&key, now)),
    });
    match outcome {
        Err(retry) => Err(Rejected::new(
            ErrorCode::RateLimited,
            format!(
                "too many joins: try again in {} s",
                crate::rate_limit::whole_secs(retry)
            ),
        )),
        Ok(ended) => {
            if let Some(b) = ended {
                state.audit_burst(&b.key.0, "joins", &b.key.1, b.refused);
            }
            Ok(claims)
        }
    }
}

fn new_participant_id() -> String {
    format!("p{:016x}", rand::random::<u64>())
}

pub async fn run_session(state: Arc<AppState>, socket: WebSocket, peer: IpAddr) {
    let (mut sink, mut stream) = socket.split();
    let Some((claims, caps)) = await_join(&state, &mut sink, &mut stream, peer).await else {
        return;
    };
    let id = new_participant_id();
    let room = claims.room.clone();
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(1024);
    let (sfu_tx, mut sfu_rx) = mpsc::unbounded_channel::<SfuEvent>();
    state.hub.register(
        id.clone(),
        SessionHandle {
            out: out_tx,
            sfu_events: sfu_tx,
            caps,
            claims: claims.clone(),
        },
    );
    let joined = state.hub.input(
        &room,
        Input::Join {
            id: id.clone(),
            identity: claims.sub.clone(),
            name: claims.name.clone(),
            role: claims.role,
            companion_kind: claims.companion_kind,
            now: std::time::Instant::now(),
        },
    );
    if let Err(r) = joined {
        state.hub.unregister(&id);
        send_error(&mut sink, &r.into()).await;
        close(&mut sink, CLOSE_POLICY, "join refused").await;
        return;
    }
    info!(participant = id, room, role = %claims.role, "joined");
    // What the join produced (`joined` first) goes out before any media event: the SFU, on
    // its own thread, may already have an offer for a participant admitted at once (one who
    // comes back), and a client ignores everything before `joined`.
    let mut ended = false;
    while let Ok(out) = out_rx.try_recv() {
        match out {
            Outbound::Msg(m) => ended = !send(&mut sink, &m).await,
            Outbound::Close => {
                close(&mut sink, CLOSE_NORMAL, "closed by the server").await;
                ended = true;
            }
        }
        if ended {
            break;
        }
    }

    let mut leave_reason = LeaveReason::Disconnected;
    let mut media = crate::incidents::MediaIncidents::default();
    // The connection closes after a silence (see `conn_guard`): a ping makes every client
    // answer (a pong), whether or not it pings itself.
    let every = SERVER_PING_EVERY.min(state.config.conn_limits().idle_read / 3);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    if !ended {
        loop {
            tokio::select! {
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                }
                incoming = next_incoming(&mut stream) => match incoming {
                    Incoming::Msg(ClientMsg::Leave) => {
                        leave_reason = LeaveReason::Left;
                        break;
                    }
                    Incoming::Msg(msg) => {
                        if let Err(r) = handle_msg(&state, &room, &id, msg, &mut sink).await {
                            send_error(&mut sink, &r).await;
                        }
                    }
                    Incoming::Bad(r) => {
                        send_error(&mut sink, &r).await;
                        if r.code == ErrorCode::MessageTooLarge {
                            close(&mut sink, CLOSE_TOO_BIG, "message too large").await;
                            break;
                        }
                    }
                    Incoming::Ignore => {}
                    Incoming::Closed => break,
                },
                out = out_rx.recv() => match out {
                    Some(Outbound::Msg(m)) => {
                        if !send(&mut sink, &m).await {
                            break;
                        }
                    }
                    Some(Outbound::Close) | None => {
                        close(&mut sink, CLOSE_NORMAL, "closed by the server").await;
                        break;
                    }
                },
                Some(ev) = sfu_rx.recv() => match ev {
                    SfuEvent::SubscriberOffer { sdp, tracks } => {
                        if !send(&mut sink, &ServerMsg::SubscriberOffer { sdp, tracks }).await {
                            break;
                        }
                    }
                    SfuEvent::Disconnected(target) => {
                        // Reported after this much silence: the loss began that long ago.
                        let silence = consult_sfu::engine::SILENCE_IS_LOSS;
                        let now = std::time::Instant::now();
                        let since = now.checked_sub(silence).unwrap_or(now);
                        if let Some(detail) = media.lost(since, target) {
                            state.audit.record(&room, Some(&claims.sub), "incident", None, detail);
                        }
                    }
                    SfuEvent::Bandwidth { audio_only, low_link, estimate_bps, paused } => {
                        let now = std::time::Instant::now();
                        for detail in media.bandwidth(now, audio_only, low_link, estimate_bps) {
                            state.audit.record(&room, Some(&claims.sub), "incident", None, detail);
                        }
                        let msg = ServerMsg::Bandwidth {
                            audio_only,
                            low_link,
                            estimate_kbps: estimate_bps / 1000,
                            paused_track_ids: paused,
                        };
                        if !send(&mut sink, &msg).await {
                            break;
                        }
                    }
                    SfuEvent::PublisherLayers { mid, active_rids, uplink_paused } => {
                        let msg = ServerMsg::PublisherLayers { mid, active_rids, uplink_paused };
                        if !send(&mut sink, &msg).await {
                            break;
                        }
                    }
                    SfuEvent::PublisherAudio {
                        mid,
                        expected_loss_pct,
                        max_bitrate_bps,
                        ptime_ms,
                        redundancy,
                    } => {
                        let msg = ServerMsg::PublisherAudio {
                            mid,
                            expected_loss_pct,
                            max_bitrate_bps,
                            ptime_ms,
                            redundancy,
                        };
                        if !send(&mut sink, &msg).await {
                            break;
                        }
                    }
                    SfuEvent::IceRestarted(target) => {
                        let detail = crate::incidents::ice_restart(target);
                        state.audit.record(&room, Some(&claims.sub), "incident", None, detail);
                    }
                    SfuEvent::Connected(target) => {
                        if let Some(detail) = media.connected(std::time::Instant::now(), target) {
                            state.audit.record(&room, Some(&claims.sub), "incident", None, detail);
                        }
                    }
                },
            }
        }
    }
    state.hub.unregister(&id);
    // Unknown to the room if it was removed, refused or replaced: then this does nothing.
    let _ = state.hub.input(
        &room,
        Input::Leave {
            id: id.clone(),
            reason: leave_reason,
            now: std::time::Instant::now(),
        },
    );
    // Make sure the media session is gone even if the room had already forgotten us.
    state.hub.sfu().leave(&id);
    info!(participant = id, room, "session ended");
}

async fn handle_msg(
    state: &AppState,
    room: &str,
    id: &str,
    msg: ClientMsg,
    sink: &mut Sink,
) -> Result<(), Rejected> {
    let hub = &state.hub;
    let require_admitted = || {
        if hub.is_admitted(room, id) {
            Ok(())
        } else {
            Err(Rejected::new(
                ErrorCode::NotAdmitted,
                "waiting for admission: no media before a physician admits you",
            ))
        }
    };
    match msg {
        ClientMsg::Join { .. } => {
            return Err(Rejected::new(ErrorCode::AlreadyJoined, "already joined"))
        }
        ClientMsg::PublishOffer { sdp, tracks } => {
            require_admitted()?;
            let answer = hub
                .sfu()
                .publish_offer(id, sdp, tracks.clone())
                .await
                .map_err(|e| Rejected::new(ErrorCode::BadSdp, e.to_string()))?;
            send(sink, &ServerMsg::PublishAnswer { sdp: answer }).await;
            hub.input(
                room,
                Input::TracksPublished {
                    id: id.to_owned(),
                    tracks,
                },
            )?;
        }
        ClientMsg::SubscriberAnswer { sdp } => {
            require_admitted()?;
            hub.sfu()
                .subscriber_answer(id, sdp)
                .await
                .map_err(|e| Rejected::new(ErrorCode::BadSdp, e.to_string()))?;
        }
        ClientMsg::Candidate { target, candidate } => {
            require_admitted()?;
            hub.sfu().candidate(id, target, candidate.candidate);
        }
        ClientMsg::IceRestart => {
            require_admitted()?;
            hub.sfu().ice_restart(id);
        }
        ClientMsg::PinTrack { track_id, pinned } => {
            if !hub.is_admitted_physician(room, id) {
                return Err(Rejected::new(
                    ErrorCode::Forbidden,
                    "only an admitted physician pins tracks",
                ));
            }
            hub.sfu()
                .pin(id, &track_id, pinned)
                .await
                .map_err(|e| Rejected::new(ErrorCode::BadRequest, e.to_string()))?;
        }
        ClientMsg::Mute { mid, muted } => hub.input(
            room,
            Input::Mute {
                id: id.to_owned(),
                mid,
                muted,
            },
        )?,
        ClientMsg::Admit { participant_id } => hub.input(
            room,
            Input::Admit {
                by: id.to_owned(),
                target: participant_id,
            },
        )?,
        ClientMsg::Refuse {
            participant_id,
            reason,
        } => hub.input(
            room,
            Input::Refuse {
                by: id.to_owned(),
                target: participant_id,
                reason,
            },
        )?,
        ClientMsg::Remove { participant_id } => hub.input(
            room,
            Input::Remove {
                by: id.to_owned(),
                target: participant_id,
            },
        )?,
        ClientMsg::EndConsultation => hub.input(room, Input::End { by: id.to_owned() })?,
        ClientMsg::DeviceControl {
            participant_id,
            command,
        } => hub.input(
            room,
            Input::DeviceControl {
                by: id.to_owned(),
                target: participant_id,
                command,
            },
        )?,
        ClientMsg::RequestRecording { track_ids } => hub.input(
            room,
            Input::RequestRecording {
                by: id.to_owned(),
                id: format!("rec{:016x}", rand::random::<u64>()),
                track_ids,
            },
        )?,
        ClientMsg::RecordingConsent {
            recording_id,
            accept,
        } => hub.input(
            room,
            Input::RecordingConsent {
                by: id.to_owned(),
                recording_id,
                accept,
            },
        )?,
        ClientMsg::StopRecording => hub.input(room, Input::StopRecording { by: id.to_owned() })?,
        ClientMsg::Ping => {
            send(sink, &ServerMsg::Pong).await;
        }
        ClientMsg::Leave => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_tells_errors_apart() {
        assert_eq!(parse("{not json").err().unwrap().code, ErrorCode::BadJson);
        assert_eq!(parse("[1,2]").err().unwrap().code, ErrorCode::BadJson);
        assert_eq!(
            parse(r#"{"type":"fly"}"#).err().unwrap().code,
            ErrorCode::UnknownType
        );
        assert_eq!(
            parse(r#"{"type":"admit"}"#).err().unwrap().code,
            ErrorCode::BadRequest
        );
        let big = format!(
            r#"{{"type":"ping","x":"{}"}}"#,
            "a".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(parse(&big).err().unwrap().code, ErrorCode::MessageTooLarge);
        assert!(matches!(parse(r#"{"type":"ping"}"#), Ok(ClientMsg::Ping)));
    }
}
