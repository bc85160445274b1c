//! The control interface between signaling and the media plane.
//!
//! Signaling only ever talks to the SFU through [`SfuHandle`]; the SFU only ever talks back
//! through the per-participant [`SfuEvent`] channel. Both are small enough to carry over a
//! message bus later.

use crate::router::{Router, ShardId};
use crate::shard::ShardInput;
use consult_protocol::{ParticipantId, PeerTarget, PublishedTrack, SubscribedTrack};
use std::collections::HashMap;
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
    /// To a simulcast publisher: the layers of its track `mid` someone receives (the others
    /// may be paused).
    PublisherLayers {
        mid: String,
        active_rids: Vec<String>,
        /// Send no video at all on this track: the publisher's uplink cannot carry it.
        uplink_paused: bool,
    },
    /// To an audio publisher: the loss its receivers see on track `mid` (percent), for the
    /// encoder's in-band FEC.
    PublisherAudio {
        mid: String,
        expected_loss_pct: u8,
        /// The encoding for the thinnest receiver (`consult_protocol::audio_steps`).
        max_bitrate_bps: Option<u32>,
        ptime_ms: Option<u16>,
        /// `Some(false)`: no RED on its thin uplink.
        redundancy: Option<bool>,
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

/// What a client's `join` said of its WebRTC stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCaps {
    /// It takes Opus retransmissions (see `audio_rtx`).
    pub audio_rtx: bool,
    /// Its TWCC feedback leaves out probe packets: its downlink is not estimated.
    pub twcc_omits_probes: bool,
}

/// Commands from signaling to the SFU.
#[derive(Debug)]
pub enum Command {
    /// Create the media session of an admitted participant.
    Join {
        room: String,
        participant: ParticipantId,
        caps: ClientCaps,
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
    /// Datagrams read by one shard for another shard's room and handed over to it.
    pub datagrams_handed_over: u64,
    /// Time from reading a datagram to each send it causes (measured by the I/O loop).
    pub forward_delay: crate::delay::DelayHistogram,
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    /// RTP packets dropped because their RED payload was broken.
    pub rtp_malformed_red: u64,
    /// Audio packets lost on a publisher's uplink, sent to plain-Opus subscribers from the
    /// redundancy of the next RED packet.
    pub red_recovered: u64,
    pub keyframe_requests_sent: u64,
    /// Video packets of a copy just paused that str0m's pacer still held, dropped instead of
    /// sent (see `engine::STALE_AFTER_PAUSE`).
    pub stale_video_dropped: u64,
    /// str0m's per-media counters summed (NACKs and PLIs both ways, bytes, packets).
    pub media: crate::stats::MediaTotals,
    /// Every live connection's link: estimate, RTT, loss.
    pub peers: Vec<PeerReport>,
}

impl SfuStats {
    /// Add another shard's counters (the datagram counters are the router's, set apart).
    fn add(&mut self, o: &SfuStats) {
        self.participants += o.participants;
        self.dropped_unknown_sender += o.dropped_unknown_sender;
        self.dropped_malformed += o.dropped_malformed;
        self.rtp_in += o.rtp_in;
        self.rtp_forwarded += o.rtp_forwarded;
        self.rtp_malformed_red += o.rtp_malformed_red;
        self.red_recovered += o.red_recovered;
        self.keyframe_requests_sent += o.keyframe_requests_sent;
        self.stale_video_dropped += o.stale_video_dropped;
        self.send_failures += o.send_failures;
        self.datagrams_handed_over += o.datagrams_handed_over;
        self.media.add(&o.media);
        self.forward_delay.add(&o.forward_delay);
        self.peers.extend(o.peers.iter().cloned());
    }
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
    /// Subscriber connection under bandwidth allocation: the estimate split across its tracks
    /// (str0m's estimate through the congestion gate, see [`crate::congestion`]).
    pub allocation_estimate_bps: Option<u64>,
    /// Subscriber connection with every video track paused for lack of bandwidth.
    pub audio_only: bool,
}

/// Cheap, cloneable handle on a running SFU.
#[derive(Debug, Clone)]
pub struct SfuHandle {
    shared: std::sync::Arc<HandleShared>,
    local_addr: std::net::SocketAddr,
}

#[derive(Debug)]
struct HandleShared {
    shards: Vec<mpsc::UnboundedSender<ShardInput>>,
    placement: std::sync::Mutex<Placement>,
    router: std::sync::Arc<Router>,
    /// Set when the last handle goes: the shards then stop.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for HandleShared {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Which shard holds each room and participant. A room lives on one shard (forwarding stays
/// inside one engine); a new room goes to the shard with the fewest participants.
#[derive(Debug, Default)]
struct Placement {
    rooms: HashMap<String, (ShardId, usize)>,
    participants: HashMap<ParticipantId, (ShardId, String)>,
    load: Vec<usize>,
}

impl Placement {
    fn place(&mut self, room: &str, participant: &str) -> ShardId {
        if let Some((shard, _)) = self.participants.get(participant) {
            return *shard;
        }
        let shard = match self.rooms.get_mut(room) {
            Some((shard, count)) => {
                *count += 1;
                *shard
            }
            None => {
                let shard = (0..self.load.len())
                    .min_by_key(|s| self.load[*s])
                    .unwrap_or(0);
                self.rooms.insert(room.to_owned(), (shard, 1));
                shard
            }
        };
        self.load[shard] += 1;
        self.participants
            .insert(participant.to_owned(), (shard, room.to_owned()));
        shard
    }

    fn remove(&mut self, participant: &str) -> Option<ShardId> {
        let (shard, room) = self.participants.remove(participant)?;
        self.load[shard] = self.load[shard].saturating_sub(1);
        if let Some((_, count)) = self.rooms.get_mut(&room) {
            *count -= 1;
            if *count == 0 {
                self.rooms.remove(&room);
            }
        }
        Some(shard)
    }

    fn of(&self, participant: &str) -> ShardId {
        // Unknown participants go to shard 0, whose engine answers `UnknownParticipant`.
        self.participants.get(participant).map_or(0, |p| p.0)
    }
}

impl SfuHandle {
    pub(crate) fn new(
        local_addr: std::net::SocketAddr,
        shards: Vec<mpsc::UnboundedSender<ShardInput>>,
        router: std::sync::Arc<Router>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> SfuHandle {
        let placement = Placement {
            load: vec![0; shards.len()],
            ..Placement::default()
        };
        SfuHandle {
            shared: std::sync::Arc::new(HandleShared {
                shards,
                placement: std::sync::Mutex::new(placement),
                router,
                stop,
            }),
            local_addr,
        }
    }

    /// The address the SFU's UDP socket is bound to.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// Route a command to the shard of its room or participant.
    fn send(&self, cmd: Command) -> Result<(), SfuError> {
        let shard = {
            let mut p = self
                .shared
                .placement
                .lock()
                .map_err(|_| SfuError::Stopped)?;
            match &cmd {
                Command::Join {
                    room, participant, ..
                } => p.place(room, participant),
                Command::Leave { participant } => match p.remove(participant) {
                    Some(shard) => shard,
                    None => return Ok(()),
                },
                Command::PublishOffer { participant, .. }
                | Command::SubscriberAnswer { participant, .. }
                | Command::Candidate { participant, .. }
                | Command::IceRestart { participant }
                | Command::Pin { participant, .. }
                | Command::Tap { participant, .. } => p.of(participant),
                Command::Stats { .. } => 0,
            }
        };
        self.shared.shards[shard]
            .send(ShardInput::Command(cmd))
            .map_err(|_| SfuError::Stopped)
    }

    // Each call enqueues its command before returning, so commands reach the SFU in call
    // order even when the returned futures are awaited later (or elsewhere).

    pub fn join(
        &self,
        room: &str,
        participant: &str,
        caps: ClientCaps,
        events: mpsc::UnboundedSender<SfuEvent>,
    ) -> impl std::future::Future<Output = Result<(), SfuError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Command::Join {
            room: room.to_owned(),
            participant: participant.to_owned(),
            caps,
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

    /// Counters of every shard, added up.
    pub async fn stats(&self) -> Result<SfuStats, SfuError> {
        let mut replies = Vec::with_capacity(self.shared.shards.len());
        for shard in &self.shared.shards {
            let (reply, rx) = oneshot::channel();
            shard
                .send(ShardInput::Command(Command::Stats { reply }))
                .map_err(|_| SfuError::Stopped)?;
            replies.push(rx);
        }
        let mut total = SfuStats::default();
        for rx in replies {
            total.add(&rx.await.map_err(|_| SfuError::Stopped)?);
        }
        // Every datagram is routed first, and what no shard owns is dropped there.
        use std::sync::atomic::Ordering::Relaxed;
        let r = &self.shared.router;
        total.datagrams_in = r.datagrams_in.load(Relaxed);
        total.dropped_unknown_sender += r.dropped_unknown_sender.load(Relaxed);
        total.dropped_malformed += r.dropped_malformed.load(Relaxed);
        total.datagrams_dropped = total.dropped_unknown_sender + total.dropped_malformed;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_stay_on_one_shard_and_new_rooms_go_to_the_least_loaded() {
        let mut p = Placement {
            load: vec![0, 0],
            ..Placement::default()
        };
        let a = p.place("A", "a1");
        assert_eq!(p.place("A", "a2"), a);
        let b = p.place("B", "b1");
        assert_ne!(a, b, "the empty shard takes the new room");
        assert_eq!(p.place("A", "a1"), a, "a rejoin is not counted twice");
        assert_eq!(p.load[a], 2);
        assert_eq!(p.remove("a1"), Some(a));
        assert_eq!(p.remove("a2"), Some(a));
        assert_eq!(p.remove("a2"), None);
        assert!(!p.rooms.contains_key("A"), "an empty room is forgotten");
        assert_eq!(p.of("b1"), b);
        assert_eq!(p.of("nobody"), 0);
        // A is gone: its shard is empty again and takes the next room.
        assert_eq!(p.place("C", "c1"), a);
    }
}
