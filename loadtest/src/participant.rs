//! One synthetic participant: joins, waits for admission (the physician admits everyone
//! waiting), publishes synthetic media until the end of the run, and measures every track it
//! receives.

use crate::options::{MediaSpec, Options, RoleFilter, AUDIO_INTERVAL};
use crate::receive::{TrackStats, Window};
use consult_client::impair::{Loss, Profile};
use consult_client::relay::LossyRelay;
use consult_client::webrtc::track::track_remote::TrackRemote;
use consult_client::{Client, ClientEvent, ClientOptions, LocalTrack, RemoteTrack, SyntheticVideo};
use consult_protocol::{ClientMsg, ParticipantId, Role, ServerMsg, TrackKind, TrackLabel};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Counters the progress line reads while the run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    pub joined: AtomicU64,
    pub admitted: AtomicU64,
    pub failed: AtomicU64,
    pub tracks_received: AtomicU64,
    pub packets_received: AtomicU64,
}

/// What every participant of a run shares.
pub struct RunContext {
    pub options: Options,
    pub ws_url: String,
    pub trusted_cert_pem: Option<Vec<u8>>,
    pub window: Window,
    /// Senders stop here.
    pub media_end: Instant,
    /// Receivers stop here (late packets drain in between).
    pub receive_end: Instant,
    pub progress: Progress,
}

/// What the participants of one room share.
#[derive(Debug, Default)]
pub struct RoomShared {
    /// When someone in the room first started sending media.
    pub media_since: OnceLock<Instant>,
}

/// Who this participant is.
#[derive(Debug, Clone)]
pub struct Seat {
    pub room: usize,
    pub role: Role,
    /// Unique over the run; tags its synthetic streams.
    pub index: u32,
    pub token: String,
}

/// What one participant saw.
#[derive(Debug)]
pub struct Outcome {
    pub room: usize,
    pub role: Role,
    /// Connect → `joined` answer.
    pub join_ms: Option<f64>,
    /// `joined` → admitted (immediate for a physician).
    pub admit_ms: Option<f64>,
    /// Admitted → first media packet, when someone in the room was already sending.
    pub first_media_ms: Option<f64>,
    /// Connect → first media packet, same condition.
    pub connect_to_media_ms: Option<f64>,
    /// Packets written per published track.
    pub sent: Vec<(TrackLabel, u64)>,
    pub received: Vec<TrackStats>,
    pub error: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn impaired_profile(o: &Options) -> Profile {
    let base = if o.impair_rate_kbps > 0 {
        Profile::rate(o.impair_rate_kbps * 1000, o.impair_queue_ms)
    } else {
        Profile::default()
    };
    Profile {
        delay: Duration::from_millis(o.impair_delay_ms),
        jitter: Duration::from_millis(o.impair_jitter_ms),
        loss: if o.impair_loss_pct > 0.0 {
            Loss::Random(o.impair_loss_pct / 100.0)
        } else {
            Loss::None
        },
        ..base
    }
}

/// Run one participant to the end of the run. `ready` fires once it publishes (or fails), so
/// the room starts the next participants after it.
pub async fn run(
    ctx: Arc<RunContext>,
    room: Arc<RoomShared>,
    seat: Seat,
    ready: oneshot::Sender<()>,
) -> Outcome {
    let mut out = Outcome {
        room: seat.room,
        role: seat.role,
        join_ms: None,
        admit_ms: None,
        first_media_ms: None,
        connect_to_media_ms: None,
        sent: Vec::new(),
        received: Vec::new(),
        error: None,
    };
    if let Err(e) = drive(&ctx, &room, &seat, ready, &mut out).await {
        ctx.progress.failed.fetch_add(1, Ordering::Relaxed);
        out.error = Some(format!("{:?} in room {}: {e:#}", seat.role, seat.room));
    }
    out
}

async fn drive(
    ctx: &Arc<RunContext>,
    room: &RoomShared,
    seat: &Seat,
    ready: oneshot::Sender<()>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let o = &ctx.options;
    if let Some(url) = &o.janus_ws {
        return crate::janus::drive(ctx, room, seat, url, ready, out).await;
    }
    let relay = match o.impair {
        Some(f) if RoleFilter::matches(f, seat.role) => {
            let p = impaired_profile(o);
            Some(
                LossyRelay::start_impaired(
                    o.sfu_addr,
                    vec![(Duration::ZERO, p)],
                    vec![(Duration::ZERO, p)],
                    u64::from(seat.index),
                )
                .await?,
            )
        }
        _ => None,
    };
    let started = Instant::now();
    let mut client = Client::connect(
        &ctx.ws_url,
        &seat.token,
        ClientOptions {
            media_via: relay.as_ref().map(|r| r.addr()),
            trusted_cert_pem: ctx.trusted_cert_pem.clone(),
            downlink_estimation: ctx.options.downlink_estimation,
            ..ClientOptions::default()
        },
    )
    .await?;
    let joined = Instant::now();
    out.join_ms = Some(ms(joined - started));
    ctx.progress.joined.fetch_add(1, Ordering::Relaxed);
    let mut roles: HashMap<ParticipantId, Role> = client
        .participants
        .iter()
        .map(|p| (p.participant_id.clone(), p.role))
        .collect();

    client.wait_admitted(Duration::from_secs(60)).await?;
    let admitted = Instant::now();
    out.admit_ms = Some(ms(admitted - joined));
    ctx.progress.admitted.fetch_add(1, Ordering::Relaxed);
    let media_flowing = room.media_since.get().is_some_and(|t| *t <= admitted);

    let labels = o.tracks_of(seat.role).to_vec();
    let mut senders: Vec<(TrackLabel, JoinHandle<u64>)> = Vec::new();
    if !labels.is_empty() {
        let tracks = client.publish_layers(&labels, &o.simulcast.0).await?;
        senders = start_senders(ctx, seat, tracks);
        let _ = room.media_since.set(Instant::now());
    }
    let _ = ready.send(());

    let mut receivers: Vec<JoinHandle<TrackStats>> = Vec::new();
    let deadline = tokio::time::Instant::from_std(ctx.receive_end);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match client.next_event(left).await {
            None => continue,
            Some(ClientEvent::Closed) => anyhow::bail!("signaling closed"),
            Some(ClientEvent::Track(t)) => {
                let from = roles
                    .get(&t.info.participant_id)
                    .copied()
                    .unwrap_or(Role::Patient);
                receivers.push(receive(ctx.clone(), t, from));
            }
            Some(ClientEvent::Server(msg)) => match msg {
                ServerMsg::WaitingRoom { waiting } if seat.role == Role::Physician => {
                    for w in waiting {
                        roles.insert(w.participant_id.clone(), w.role);
                        client.send(ClientMsg::Admit {
                            participant_id: w.participant_id,
                        })?;
                    }
                }
                ServerMsg::ParticipantJoined { participant } => {
                    roles.insert(participant.participant_id, participant.role);
                }
                ServerMsg::Admitted { participants } => {
                    for p in participants {
                        roles.insert(p.participant_id, p.role);
                    }
                }
                ServerMsg::Error { code, message } => {
                    tracing::warn!(?code, %message, "server error");
                }
                _ => {}
            },
        }
    }
    for (label, h) in senders {
        out.sent.push((label, h.await.unwrap_or(0)));
    }
    for r in receivers {
        if let Ok(stats) = r.await {
            out.received.push(stats);
        }
    }
    if media_flowing {
        if let Some(first) = out.received.iter().filter_map(|s| s.first_at).min() {
            out.first_media_ms = Some(ms(first.saturating_duration_since(admitted)));
            out.connect_to_media_ms = Some(ms(first.saturating_duration_since(started)));
        }
    }
    client.leave().await;
    drop(relay);
    Ok(())
}

/// Send synthetic media on each published track until the end of the run; each handle gives
/// the packets written.
pub(crate) fn start_senders(
    ctx: &RunContext,
    seat: &Seat,
    tracks: Vec<LocalTrack>,
) -> Vec<(TrackLabel, JoinHandle<u64>)> {
    let o = &ctx.options;
    let left = ctx.media_end.saturating_duration_since(Instant::now());
    tracks
        .into_iter()
        .map(|t| {
            let tag = seat.index * 8 + t.label as u32;
            let handle = match o.media(t.label) {
                MediaSpec::Audio { payload_bytes } => {
                    let count = (left.as_micros() / AUDIO_INTERVAL.as_micros()) as u32;
                    let h = t.send_synthetic(tag, count, AUDIO_INTERVAL, payload_bytes);
                    tokio::spawn(async move { u64::from(h.await.unwrap_or(0)) })
                }
                MediaSpec::Video { bitrate_bps, fps } => {
                    let h = t.send_synthetic_video(SyntheticVideo {
                        tag,
                        bitrate_bps,
                        fps,
                        duration: left,
                        keyframe_interval: Duration::from_secs_f64(o.keyframe_interval),
                    });
                    tokio::spawn(async move { h.await.map(|s| u64::from(s.packets)).unwrap_or(0) })
                }
            };
            (t.label, handle)
        })
        .collect()
}

/// Read one remote track until the end of the run.
fn receive(ctx: Arc<RunContext>, t: RemoteTrack, from: Role) -> JoinHandle<TrackStats> {
    ctx.progress.tracks_received.fetch_add(1, Ordering::Relaxed);
    read_track(ctx, t.track, t.info.label, t.info.kind, from)
}

/// Read a track until the end of the run, measuring what arrives.
pub(crate) fn read_track(
    ctx: Arc<RunContext>,
    track: Arc<TrackRemote>,
    label: TrackLabel,
    kind: TrackKind,
    from: Role,
) -> JoinHandle<TrackStats> {
    tokio::spawn(async move {
        let mut stats = TrackStats::new(label, kind, from, ctx.window);
        let end = tokio::time::Instant::from_std(ctx.receive_end);
        while let Ok(Ok((pkt, _))) = tokio::time::timeout_at(end, track.read_rtp()).await {
            stats.on_packet_now(&pkt.payload);
            ctx.progress
                .packets_received
                .fetch_add(1, Ordering::Relaxed);
        }
        stats
    })
}
