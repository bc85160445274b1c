//! The control interface between signaling and the media plane.
//!
//! Signaling only ever talks to the SFU through [`SfuHandle`]; the SFU only ever talks back
//! through the per-participant [`SfuEvent`] channel. Both are small enough to carry over a
//! message bus later.

use consult_protocol::{ParticipantId, PeerTarget, PublishedTrack, SubscribedTrack};
use tokio::sync::{mpsc, oneshot};

/// Errors the SFU reports back to signaling (and so to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SfuError {
    #[error("unknown participant")]
    UnknownParticipant,
    #[error("participant already has a media session")]
    AlreadyJoined,
    #[error("bad SDP: {0}")]
    BadSdp(String),
    #[error("bad track declaration: {0}")]
    BadTrack(String),
    #[error("no subscriber offer is pending")]
    NoPendingOffer,
    #[error("the media plane has stopped")]
    Stopped,
}

/// Events the SFU sends to one participant's signaling session.
#[derive(Debug, Clone, PartialEq)]
pub enum SfuEvent {
    /// A new offer on the subscriber connection: forward to the client, which answers.
    SubscriberOffer {
        sdp: String,
        tracks: Vec<SubscribedTrack>,
    },
    /// ICE + DTLS of one of the participant's connections is up (again, after a loss).
    Connected(PeerTarget),
    /// One of the participant's connections lost ICE connectivity (or went silent).
    Disconnected(PeerTarget),
    /// One of the participant's connections restarted ICE (new credentials).
    IceRestarted(PeerTarget),
    /// The participant's downlink entered or left audio-only mode: every video track it
    /// receives is paused for lack of bandwidth (or some is back).
    Bandwidth {
        audio_only: bool,
        /// The estimate is under [`crate::engine::LOW_LINK_BPS`].
        low_link: bool,
        estimate_bps: u64,
        /// Track ids (`participant/mid`) paused now.
        paused: Vec<String>,
    },
}

/// A copy of one forwarded RTP packet, for a recorder.
#[derive(Debug, Clone)]
pub struct TapPacket {
    /// Extended sequence number (never wraps).
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: std::sync::Arc<[u8]>,
}

/// Commands from signaling to the SFU.
#[derive(Debug)]
pub enum Command {
    /// Create the media session of an admitted participant.
    Join {
        room: String,
        participant: ParticipantId,
        events: mpsc::UnboundedSender<SfuEvent>,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    /// Offer of the publisher connection; the reply is the SDP answer.
    PublishOffer {
        participant: ParticipantId,
        sdp: String,
        tracks: Vec<PublishedTrack>,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    /// Answer to the last subscriber offer.
    SubscriberAnswer {
        participant: ParticipantId,
        sdp: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    /// A trickled remote candidate (the SFU is ICE-lite and mostly learns addresses from STUN).
    Candidate {
        participant: ParticipantId,
        target: PeerTarget,
        candidate: String,
    },
    /// Restart ICE on the subscriber connection (the client's network changed or failed): a
    /// new offer with new credentials follows as [`SfuEvent::SubscriberOffer`]. The publisher
    /// connection restarts by itself when the client offers new credentials.
    IceRestart { participant: ParticipantId },
    /// Pin (or release) a track the participant receives, by its `track_id`.
    Pin {
        participant: ParticipantId,
        track_id: String,
        pinned: bool,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    /// Copy the packets of a published track (`mid` on `participant`'s publisher connection)
    /// to `sink` until it is closed or full (never blocks the forwarding path).
    Tap {
        participant: ParticipantId,
        mid: String,
        sink: mpsc::Sender<TapPacket>,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    /// Tear down the participant's media session; its tracks leave every subscriber.
    Leave { participant: ParticipantId },
    /// Counters, for tests and metrics.
    Stats { reply: oneshot::Sender<SfuStats> },
}

/// Counters of the media plane since start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SfuStats {
    pub participants: usize,
    pub datagrams_in: u64,
    /// Datagrams dropped before reaching a peer (unknown sender, not STUN/DTLS/RTP/RTCP, bad STUN).
    pub datagrams_dropped: u64,
    /// Of those: from an address and with a STUN username no peer has.
    pub dropped_unknown_sender: u64,
    /// Of those: not STUN, DTLS, RTP or RTCP, or too short.
    pub dropped_malformed: u64,
    /// Datagrams the socket refused to send (buffer full): lost as on a congested link.
    pub send_failures: u64,
    /// Time from reading a datagram to each send it causes (measured by the I/O loop).
    pub forward_delay: crate::delay::DelayHistogram,
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    pub keyframe_requests_sent: u64,
    /// str0m's per-media counters summed (NACKs and PLIs both ways, bytes, packets).
    pub media: crate::stats::MediaTotals,
    /// Every live connection's link: estimate, RTT, loss.
    pub peers: Vec<PeerReport>,
}

/// One connection's link, for metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerReport {
    pub participant: ParticipantId,
    pub room: String,
    pub target: PeerTarget,
    pub link: crate::stats::LinkReport,
    /// Subscriber connection under bandwidth allocation: the rate of what is forwarded.
    pub allocated_bps: Option<u64>,
    /// Subscriber connection with every video track paused for lack of bandwidth.
    pub audio_only: bool,
}

/// Cheap, cloneable handle on a running SFU.
#[derive(Debug, Clone)]
pub struct SfuHandle {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) local_addr: std::net::SocketAddr,
}

impl SfuHandle {
    /// The address the SFU's UDP socket is bound to.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    fn send(&self, cmd: Command) -> Result<(), SfuError> {
        self.commands.send(cmd).map_err(|_| SfuError::Stopped)
    }

    // Each call enqueues its command before returning, so commands reach the SFU in call
    // order even when the returned futures are awaited later (or elsewhere).

    pub fn join(
        &self,
        room: &str,
        participant: &str,
        events: mpsc::UnboundedSender<SfuEvent>,
    ) -> impl std::future::Future<Output = Result<(), SfuError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Command::Join {
            room: room.to_owned(),
            participant: participant.to_owned(),
            events,
            reply,
        });
        async move {
            sent?;
            rx.await.map_err(|_| SfuError::Stopped)?
        }
    }

    pub fn publish_offer(
        &self,
        participant: &str,
        sdp: String,
        tracks: Vec<PublishedTrack>,
    ) -> impl std::future::Future<Output = Result<String, SfuError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Command::PublishOffer {
            participant: participant.to_owned(),
            sdp,
            tracks,
            reply,
        });
        async move {
            sent?;
            rx.await.map_err(|_| SfuError::Stopped)?
        }
    }

    pub fn subscriber_answer(
        &self,
        participant: &str,
        sdp: String,
    ) -> impl std::future::Future<Output = Result<(), SfuError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Command::SubscriberAnswer {
            participant: participant.to_owned(),
            sdp,
            reply,
        });
        async move {
            sent?;
            rx.await.map_err(|_| SfuError::Stopped)?
        }
    }

    pub fn candidate(&self, participant: &str, target: PeerTarget, candidate: String) {
        let _ = self.send(Command::Candidate {
            participant: participant.to_owned(),
            target,
            candidate,
        });
    }

    /// Keep a track the participant receives ahead of others of lower clinical rank when its
    /// downlink is short (or release it).
    pub async fn pin(
        &self,
        participant: &str,
        track_id: &str,
        pinned: bool,
    ) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Pin {
            participant: participant.to_owned(),
            track_id: track_id.to_owned(),
            pinned,
            reply,
        })?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    pub fn ice_restart(&self, participant: &str) {
        let _ = self.send(Command::IceRestart {
            participant: participant.to_owned(),
        });
    }

    /// Tap a published track for recording; dropping the receiver ends the tap.
    pub fn tap(
        &self,
        participant: &str,
        mid: &str,
        sink: mpsc::Sender<TapPacket>,
    ) -> impl std::future::Future<Output = Result<(), SfuError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Command::Tap {
            participant: participant.to_owned(),
            mid: mid.to_owned(),
            sink,
            reply,
        });
        async move {
            sent?;
            rx.await.map_err(|_| SfuError::Stopped)?
        }
    }

    pub fn leave(&self, participant: &str) {
        let _ = self.send(Command::Leave {
            participant: participant.to_owned(),
        });
    }

    pub async fn stats(&self) -> Result<SfuStats, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Stats { reply })?;
        rx.await.map_err(|_| SfuError::Stopped)
    }
}
