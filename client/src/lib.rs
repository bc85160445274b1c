//! Rust client of the consultation engine, on webrtc-rs: join with a token, wait for admission,
//! publish labelled tracks, receive the other participants' tracks.
//!
//! Used by the integration tests now, and by the cart and the load tester. It speaks the same
//! protocol as the web client (`docs/protocol.md`): one publisher connection on which the client
//! offers, one subscriber connection on which the server offers.

pub mod audio;
pub mod fidelity;
pub mod heart;
mod peer;
pub mod relay;
mod rtx;
mod signal;
pub mod stills;
pub mod synthetic;
pub mod tls;

use anyhow::{anyhow, bail, Context};
use consult_protocol::{
    AdmissionState, ClientMsg, ErrorCode, ParticipantId, ParticipantInfo, PublishedTrack,
    ServerMsg, SubscribedTrack, TrackLabel, PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::track::track_remote::TrackRemote;

pub use peer::LocalTrack;

/// How a client connects.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Send media to this address instead of the SFU's candidate (e.g. a [`relay::LossyRelay`]).
    pub media_via: Option<SocketAddr>,
    /// Leave out the RTX repair interceptor (`rtx.rs`): only to show the webrtc-rs defect it
    /// works around.
    pub without_rtx_repair: bool,
    /// An extra certificate (PEM) to trust for `wss://`, e.g. the server's self-signed
    /// development certificate.
    pub trusted_cert_pem: Option<Vec<u8>>,
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

/// Shared between the client handle and its dispatcher task.
struct Inner {
    out: mpsc::UnboundedSender<ClientMsg>,
    pending_publish: Mutex<Option<oneshot::Sender<Result<String, String>>>>,
    /// Subscriber-side mid → what it carries, from the latest offer.
    subscribed: Mutex<HashMap<String, SubscribedTrack>>,
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
    publisher: Option<Arc<RTCPeerConnection>>,
    subscriber: Arc<RTCPeerConnection>,
    published: Vec<PublishedTrack>,
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
            subscribed: Mutex::new(HashMap::new()),
            options,
            closer,
        });
        let (events_tx, events) = mpsc::unbounded_channel();
        let subscriber = peer::new_peer_connection(!inner.options.without_rtx_repair).await?;
        peer::on_remote_track(&subscriber, inner.clone(), events_tx.clone());
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
            publisher: None,
            subscriber,
            published: Vec::new(),
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
        let pc = match &self.publisher {
            Some(pc) => pc.clone(),
            None => {
                let pc = peer::new_peer_connection(!self.inner.options.without_rtx_repair).await?;
                self.publisher = Some(pc.clone());
                pc
            }
        };
        let mut added = Vec::new();
        for label in labels {
            added.push(peer::add_local_track(&pc, *label).await?);
        }
        let offer = pc.create_offer(None).await?;
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(offer).await?;
        let _ = gathered.recv().await;
        let local = pc
            .local_description()
            .await
            .ok_or_else(|| anyhow!("no local description"))?;
        for t in added.iter_mut() {
            t.mid = peer::mid_of_sender(&t.rtp)?;
            self.published.push(PublishedTrack {
                mid: t.mid.clone(),
                label: t.label,
                muted: false,
            });
        }
        let (tx, rx) = oneshot::channel();
        *self.inner.pending_publish.lock().expect("lock") = Some(tx);
        self.send(ClientMsg::PublishOffer {
            sdp: local.sdp,
            tracks: self.published.clone(),
        })?;
        let answer = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .context("no publish answer")?
            .map_err(|_| anyhow!("signaling closed"))?
            .map_err(|e| anyhow!("publish refused: {e}"))?;
        let answer = peer::rewrite_candidates(&answer, self.inner.options.media_via);
        pc.set_remote_description(
            webrtc::peer_connection::sdp::session_description::RTCSessionDescription::answer(
                answer,
            )?,
        )
        .await?;
        Ok(added)
    }

    /// Drop every connection at once without leaving, as a lost link does. The server keeps
    /// the participant's admission for a grace period, so connecting again with the same
    /// token goes straight back into the room.
    pub async fn disconnect(self) {
        self.inner.closer.notify_one();
        if let Some(pc) = &self.publisher {
            let _ = pc.close().await;
        }
        let _ = self.subscriber.close().await;
    }

    /// Leave the consultation and close the connections.
    pub async fn leave(self) {
        let _ = self.inner.out.send(ClientMsg::Leave);
        if let Some(pc) = &self.publisher {
            let _ = pc.close().await;
        }
        let _ = self.subscriber.close().await;
    }
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
