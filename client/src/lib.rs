//! Rust client of the consultation engine, on webrtc-rs: join with a token, wait for admission,
//! publish labelled tracks, receive the other participants' tracks.
//!
//! Used by the integration tests now, and by the cart and the load tester. It speaks the same
//! protocol as the web client (`docs/protocol.md`): one publisher connection on which the client
//! offers, one subscriber connection on which the server offers.

pub mod audio;
pub mod fidelity;
pub mod heart;
pub mod impair;
pub mod nack_limit;
mod peer;
pub mod red;
pub mod relay;
pub mod rr_merge;
mod rtx;
mod signal;
pub mod stills;
pub mod synthetic;
pub mod tls;

use anyhow::{anyhow, bail, Context};
use consult_protocol::{
    AdmissionState, ClientMsg, ErrorCode, ParticipantId, ParticipantInfo, PeerTarget,
    PublishedTrack, ServerMsg, SubscribedTrack, TrackLabel, PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use webrtc::ice_transport::ice_connection_state::RTCIceConnectionState;
use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::track::track_remote::TrackRemote;

pub use peer::{
    add_local_track, answer, new_peer_connection, offer, rewrite_candidates, LocalTrack,
    SimulcastLayer, SyntheticVideo, VideoSent, PT_RED, SIMULCAST_LAYERS,
};
/// The webrtc-rs crate the client is built on (its RTP types appear in this API).
pub use webrtc;

/// How a client connects.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Send media to this address instead of the SFU's candidate (e.g. a [`relay::LossyRelay`]).
    pub media_via: Option<SocketAddr>,
    /// Leave out the RTX repair interceptor (`rtx.rs`): only to show the webrtc-rs defect it
    /// works around.
    pub without_rtx_repair: bool,
    /// Have the SFU estimate this client's downlink although webrtc-rs 0.17's TWCC feedback
    /// leaves out its probe packets (the SFU's congestion gate copes with the estimate that
    /// then sinks; for thin-link tests and benches). Off: `join` says `twcc_omits_probes`,
    /// and every track comes at its best layer.
    pub downlink_estimation: bool,
    /// An extra certificate (PEM) to trust for `wss://`, e.g. the server's self-signed
    /// development certificate.
    pub trusted_cert_pem: Option<Vec<u8>>,
    /// ICE is declared failed after this long without connectivity (webrtc-rs default: 25 s);
    /// the client then restarts ICE on both connections by itself.
    pub ice_failed_after: Option<Duration>,
    /// Negotiate RED (RFC 2198) around Opus: the SFU may then send audio with redundancy when
    /// this client's link loses packets (the application reads RED payloads as they come, see
    /// [`red::blocks`]), and published audio goes out as RED (synthetic audio is wrapped with
    /// the previous packet).
    pub red: bool,
}

/// A remote track the client now receives.
pub struct RemoteTrack {
    pub info: SubscribedTrack,
    pub track: Arc<TrackRemote>,
}

/// What the client tells its user.
pub enum ClientEvent {
    /// A server message not handled inside the client (participants, waiting room, errors…).
    Server(ServerMsg),
    Track(RemoteTrack),
    /// The signaling connection closed.
    Closed,
}

impl std::fmt::Debug for ClientEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientEvent::Server(m) => write!(f, "Server({m:?})"),
            ClientEvent::Track(t) => write!(f, "Track({:?})", t.info),
            ClientEvent::Closed => write!(f, "Closed"),
        }
    }
}

/// A simulcast layer's rid and its on/off switch.
type LayerSwitch = (String, Arc<std::sync::atomic::AtomicBool>);

/// Shared between the client handle and its dispatcher task.
struct Inner {
    out: mpsc::UnboundedSender<ClientMsg>,
    pending_publish: Mutex<Option<oneshot::Sender<Result<String, String>>>>,
    /// One publisher negotiation at a time (a publish and an ICE restart may race).
    negotiating: tokio::sync::Mutex<()>,
    publisher: Mutex<Option<Arc<RTCPeerConnection>>>,
    published: Mutex<Vec<PublishedTrack>>,
    /// ICE restarts done (asked by the user or after a failure).
    ice_restarts: std::sync::atomic::AtomicU32,
    /// Subscriber-side mid → what it carries, from the latest offer.
    subscribed: Mutex<HashMap<String, SubscribedTrack>>,
    /// Publisher-side mid of each simulcast track → its layers' rids and on/off switches,
    /// which the SFU's `publisher_layers` hints set.
    layer_switches: Mutex<HashMap<String, Vec<LayerSwitch>>>,
    /// Publisher-side mid of each audio track → the expected loss the SFU reports for it.
    expected_loss: Mutex<HashMap<String, Arc<std::sync::atomic::AtomicU8>>>,
    options: ClientOptions,
    closer: Arc<tokio::sync::Notify>,
}

pub struct Client {
    inner: Arc<Inner>,
    pub participant_id: ParticipantId,
    pub state: AdmissionState,
    /// Admitted participants at join time (empty while waiting).
    pub participants: Vec<ParticipantInfo>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    subscriber: Arc<RTCPeerConnection>,
    restart_needed: mpsc::UnboundedSender<PeerTarget>,
}

impl Client {
    /// Connect to `ws_url` (e.g. `ws://127.0.0.1:8443/ws`) and join with `token`.
    pub async fn connect(
        ws_url: &str,
        token: &str,
        options: ClientOptions,
    ) -> anyhow::Result<Client> {
        let signal::Signal {
            out,
            mut incoming,
            closer,
        } = signal::connect(
            ws_url,
            tls::client_config(options.trusted_cert_pem.as_deref())?,
        )
        .await?;
        out.send(ClientMsg::Join {
            version: PROTOCOL_VERSION,
            token: token.to_owned(),
            room: None,
            // webrtc-rs repairs audio from RTX through `rtx::RtxRepairBuilder`.
            audio_rtx: !options.without_rtx_repair,
            twcc_omits_probes: !options.downlink_estimation,
        })
        .map_err(|_| anyhow!("signaling closed"))?;
        let first = tokio::time::timeout(Duration::from_secs(10), incoming.recv())
            .await
            .context("no answer to join")?
            .ok_or_else(|| anyhow!("signaling closed before join was answered"))?;
        let (participant_id, state, participants) = match first {
            ServerMsg::Joined {
                participant_id,
                state,
                participants,
                ..
            } => (participant_id, state, participants),
            ServerMsg::Error { code, message } => bail!(JoinError { code, message }),
            other => bail!("unexpected answer to join: {other:?}"),
        };
        let inner = Arc::new(Inner {
            out,
            pending_publish: Mutex::new(None),
            negotiating: tokio::sync::Mutex::new(()),
            publisher: Mutex::new(None),
            published: Mutex::new(Vec::new()),
            ice_restarts: Default::default(),
            subscribed: Mutex::new(HashMap::new()),
            layer_switches: Mutex::new(HashMap::new()),
            expected_loss: Mutex::new(HashMap::new()),
            options,
            closer,
        });
        let (events_tx, events) = mpsc::unbounded_channel();
        let subscriber = peer::new_peer_connection(
            !inner.options.without_rtx_repair,
            inner.options.ice_failed_after,
            inner.options.red,
        )
        .await?;
        peer::on_remote_track(&subscriber, inner.clone(), events_tx.clone());
        let restart_needed = restart_on_failure(inner.clone());
        watch_ice(&subscriber, PeerTarget::Subscriber, restart_needed.clone());
        tokio::spawn(dispatch(
            inner.clone(),
            incoming,
            subscriber.clone(),
            events_tx,
        ));
        Ok(Client {
            inner,
            participant_id,
            state,
            participants,
            events,
            subscriber,
            restart_needed,
        })
    }

    pub fn send(&self, msg: ClientMsg) -> anyhow::Result<()> {
        self.inner
            .out
            .send(msg)
            .map_err(|_| anyhow!("signaling closed"))
    }

    /// The next event, or `None` after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<ClientEvent> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Wait for an event `pick` accepts, passing over others; errors after `timeout`.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(ClientEvent) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let ev = tokio::time::timeout(left, self.events.recv())
                .await
                .map_err(|_| anyhow!("timed out after {timeout:?}"))?
                .ok_or_else(|| anyhow!("client closed"))?;
            if let Some(t) = pick(ev) {
                return Ok(t);
            }
        }
    }

    /// Wait until a physician admits this participant.
    pub async fn wait_admitted(&mut self, timeout: Duration) -> anyhow::Result<()> {
        if self.state == AdmissionState::Admitted {
            return Ok(());
        }
        self.wait_for(timeout, |ev| match ev {
            ClientEvent::Server(ServerMsg::Admitted { .. }) => Some(Ok(())),
            ClientEvent::Server(ServerMsg::Refused { reason }) => {
                Some(Err(anyhow!("refused: {reason:?}")))
            }
            ClientEvent::Closed => Some(Err(anyhow!("closed while waiting"))),
            _ => None,
        })
        .await??;
        self.state = AdmissionState::Admitted;
        Ok(())
    }

    /// Publish tracks (Opus for audio labels, VP8 for video labels) in one offer.
    pub async fn publish(&mut self, labels: &[TrackLabel]) -> anyhow::Result<Vec<LocalTrack>> {
        self.publish_layers(labels, &[]).await
    }

    /// Publish tracks in one offer, the video labels listed in `simulcast` as simulcast
    /// layers (see [`peer::SIMULCAST_LAYERS`]).
    pub async fn publish_layers(
        &mut self,
        labels: &[TrackLabel],
        simulcast: &[TrackLabel],
    ) -> anyhow::Result<Vec<LocalTrack>> {
        let existing = self.inner.publisher.lock().expect("lock").clone();
        let pc = match existing {
            Some(pc) => pc,
            None => {
                let pc = peer::new_peer_connection(
                    !self.inner.options.without_rtx_repair,
                    self.inner.options.ice_failed_after,
                    self.inner.options.red,
                )
                .await?;
                watch_ice(&pc, PeerTarget::Publisher, self.restart_needed.clone());
                *self.inner.publisher.lock().expect("lock") = Some(pc.clone());
                pc
            }
        };
        let _one_at_a_time = self.inner.negotiating.lock().await;
        let mut added = Vec::new();
        for label in labels {
            added.push(
                peer::add_local_track(
                    &pc,
                    *label,
                    simulcast.contains(label),
                    self.inner.options.red,
                )
                .await?,
            );
        }
        negotiate_publisher(&self.inner, &pc, false, |published| {
            for t in added.iter_mut() {
                t.mid = peer::mid_of_sender(&t.rtp)?;
                published.push(PublishedTrack {
                    mid: t.mid.clone(),
                    label: t.label,
                    muted: false,
                });
            }
            Ok(())
        })
        .await?;
        let mut switches = self.inner.layer_switches.lock().expect("lock");
        for t in added.iter().filter(|t| !t.layers.is_empty()) {
            let layers = t
                .layers
                .iter()
                .map(|l| (l.rid.clone(), l.active.clone()))
                .collect();
            switches.insert(t.mid.clone(), layers);
        }
        drop(switches);
        let mut losses = self.inner.expected_loss.lock().expect("lock");
        for t in added
            .iter()
            .filter(|t| t.kind == consult_protocol::TrackKind::Audio)
        {
            losses.insert(t.mid.clone(), t.expected_loss_pct.clone());
        }
        drop(losses);
        Ok(added)
    }

    /// Restart ICE on both connections (the network path changed or failed) without leaving
    /// the room: new credentials on the publisher connection, and the server asked to do the
    /// same on the subscriber connection.
    pub async fn ice_restart(&self) -> anyhow::Result<()> {
        ice_restart(&self.inner, PeerTarget::Publisher).await?;
        ice_restart(&self.inner, PeerTarget::Subscriber).await
    }

    /// ICE restarts done so far (asked for, or automatic after an ICE failure).
    pub fn ice_restarts(&self) -> u32 {
        self.inner
            .ice_restarts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drop every connection at once without leaving, as a lost link does. The server keeps
    /// the participant's admission for a grace period, so connecting again with the same
    /// token goes straight back into the room.
    pub async fn disconnect(self) {
        self.inner.closer.notify_one();
        let publisher = self.inner.publisher.lock().expect("lock").take();
        if let Some(pc) = publisher {
            let _ = pc.close().await;
        }
        let _ = self.subscriber.close().await;
    }

    /// Leave the consultation and close the connections.
    pub async fn leave(self) {
        let _ = self.inner.out.send(ClientMsg::Leave);
        let publisher = self.inner.publisher.lock().expect("lock").take();
        if let Some(pc) = publisher {
            let _ = pc.close().await;
        }
        let _ = self.subscriber.close().await;
    }
}

/// Offer on the publisher connection (with new ICE credentials if `ice_restart`) and apply the
/// server's answer. `update` edits the declared tracks once the offer is set (mids known).
/// The caller holds `inner.negotiating`.
async fn negotiate_publisher(
    inner: &Inner,
    pc: &Arc<RTCPeerConnection>,
    ice_restart: bool,
    update: impl FnOnce(&mut Vec<PublishedTrack>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let options = ice_restart.then_some(RTCOfferOptions {
        ice_restart: true,
        voice_activity_detection: false,
    });
    let sdp = peer::offer(pc, options).await?;
    let tracks = {
        let mut published = inner.published.lock().expect("lock");
        update(&mut published)?;
        published.clone()
    };
    let (tx, rx) = oneshot::channel();
    *inner.pending_publish.lock().expect("lock") = Some(tx);
    inner
        .out
        .send(ClientMsg::PublishOffer { sdp, tracks })
        .map_err(|_| anyhow!("signaling closed"))?;
    let answer = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .context("no publish answer")?
        .map_err(|_| anyhow!("signaling closed"))?
        .map_err(|e| anyhow!("publish refused: {e}"))?;
    let answer = peer::rewrite_candidates(&answer, inner.options.media_via);
    pc.set_remote_description(
        webrtc::peer_connection::sdp::session_description::RTCSessionDescription::answer(answer)?,
    )
    .await?;
    Ok(())
}

/// Restart ICE on one connection: the publisher offers new credentials; for the subscriber
/// the server is asked to (its offer is answered by the dispatcher).
async fn ice_restart(inner: &Inner, which: PeerTarget) -> anyhow::Result<()> {
    match which {
        PeerTarget::Subscriber => inner
            .out
            .send(ClientMsg::IceRestart)
            .map_err(|_| anyhow!("signaling closed"))?,
        PeerTarget::Publisher => {
            let _one_at_a_time = inner.negotiating.lock().await;
            let publisher = inner.publisher.lock().expect("lock").clone();
            if let Some(pc) = publisher {
                negotiate_publisher(inner, &pc, true, |_| Ok(())).await?;
            }
        }
    }
    inner
        .ice_restarts
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Report an ICE failure of `pc` on `restart_needed`.
fn watch_ice(
    pc: &Arc<RTCPeerConnection>,
    which: PeerTarget,
    restart_needed: mpsc::UnboundedSender<PeerTarget>,
) {
    pc.on_ice_connection_state_change(Box::new(move |state: RTCIceConnectionState| {
        tracing::debug!("{which:?} ICE {state}");
        if state == RTCIceConnectionState::Failed {
            tracing::warn!("{which:?} ICE failed: restarting");
            let _ = restart_needed.send(which);
        }
        Box::pin(async {})
    }));
}

/// The task restarting ICE on a connection that failed (only that one: restarting a healthy
/// connection interrupts its media for a moment).
fn restart_on_failure(inner: Arc<Inner>) -> mpsc::UnboundedSender<PeerTarget> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PeerTarget>();
    let weak = Arc::downgrade(&inner);
    drop(inner);
    tokio::spawn(async move {
        while let Some(which) = rx.recv().await {
            let Some(inner) = weak.upgrade() else { break };
            if let Err(e) = ice_restart(&inner, which).await {
                tracing::warn!("ICE restart of the {which:?} connection failed: {e:#}");
            }
        }
    });
    tx
}

/// A join refused by the server, with its protocol error code.
#[derive(Debug, Clone)]
pub struct JoinError {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "join refused ({}): {}", self.code, self.message)
    }
}

impl std::error::Error for JoinError {}

/// Handles server messages: answers publish offers' futures, answers subscriber offers, and
/// passes everything else to the user.
async fn dispatch(
    inner: Arc<Inner>,
    mut incoming: mpsc::UnboundedReceiver<ServerMsg>,
    subscriber: Arc<RTCPeerConnection>,
    events: mpsc::UnboundedSender<ClientEvent>,
) {
    while let Some(msg) = incoming.recv().await {
        match msg {
            ServerMsg::PublishAnswer { sdp } => {
                if let Some(tx) = inner.pending_publish.lock().expect("lock").take() {
                    let _ = tx.send(Ok(sdp));
                }
            }
            ServerMsg::SubscriberOffer { sdp, tracks } => {
                tracing::debug!("subscriber offer:\n{sdp}");
                {
                    let mut map = inner.subscribed.lock().expect("lock");
                    for t in tracks {
                        map.insert(t.mid.clone(), t);
                    }
                }
                let sdp = peer::rewrite_candidates(&sdp, inner.options.media_via);
                match peer::answer(&subscriber, sdp).await {
                    Ok(answer) => {
                        let _ = inner.out.send(ClientMsg::SubscriberAnswer { sdp: answer });
                    }
                    Err(e) => tracing::warn!("cannot answer subscriber offer: {e:#}"),
                }
            }
            ServerMsg::PublisherAudio {
                mid,
                expected_loss_pct,
                max_bitrate_bps,
                ptime_ms,
                redundancy,
            } => {
                if let Some(l) = inner.expected_loss.lock().expect("lock").get(&mid) {
                    l.store(expected_loss_pct, std::sync::atomic::Ordering::Relaxed);
                }
                let _ = events.send(ClientEvent::Server(ServerMsg::PublisherAudio {
                    mid,
                    expected_loss_pct,
                    max_bitrate_bps,
                    ptime_ms,
                    redundancy,
                }));
            }
            ServerMsg::PublisherLayers {
                mid,
                active_rids,
                uplink_paused,
            } => {
                if let Some(layers) = inner.layer_switches.lock().expect("lock").get(&mid) {
                    for (rid, on) in layers {
                        on.store(
                            !uplink_paused && active_rids.contains(rid),
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                }
                tracing::debug!(%mid, ?active_rids, uplink_paused, "publisher layers");
                let _ = events.send(ClientEvent::Server(ServerMsg::PublisherLayers {
                    mid,
                    active_rids,
                    uplink_paused,
                }));
            }
            ServerMsg::Error { code, message } => {
                let pending = inner.pending_publish.lock().expect("lock").take();
                match pending {
                    Some(tx) if matches!(code, ErrorCode::BadSdp | ErrorCode::NotAdmitted) => {
                        let _ = tx.send(Err(format!("{code}: {message}")));
                    }
                    other => {
                        *inner.pending_publish.lock().expect("lock") = other;
                        let _ =
                            events.send(ClientEvent::Server(ServerMsg::Error { code, message }));
                    }
                }
            }
            other => {
                let _ = events.send(ClientEvent::Server(other));
            }
        }
    }
    let _ = events.send(ClientEvent::Closed);
}
