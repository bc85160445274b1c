//! The sans-I/O core of the media plane: participants, their peers, and forwarding.
//!
//! Every entry point takes `now`; datagrams to send go to a [`Transmit`] sink. The runner owns
//! the socket and the clock; tests can drive the engine directly.

use crate::allocator::{Allocator, TrackDemand};
use crate::api::{Command, PeerReport, SfuError, SfuEvent, SfuStats, TapPacket};
use crate::congestion::CongestionGate;
use crate::demux::{Demux, PeerKey};
use crate::forwarder::{SourcePacket, Vp8Ids};
use crate::keyframe::starts_keyframe;
use crate::peer::Peer;
use crate::stats::MediaTotals;
use crate::track::{map_payload_type, OutState, TrackIn, TrackOut};
use consult_protocol::{ParticipantId, PeerTarget, PublishedTrack, SubscribedTrack, TrackKind};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rids};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo, Vp8Descriptor};
use str0m::{Candidate, Event, IceConnectionState, Input, Output};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

/// Where the engine sends datagrams.
pub trait Transmit {
    fn send(&mut self, to: SocketAddr, data: &[u8]);
}

impl<F: FnMut(SocketAddr, &[u8])> Transmit for F {
    fn send(&mut self, to: SocketAddr, data: &[u8]) {
        self(to, data)
    }
}

/// Nothing at all (media, RTCP, consent checks) from a connected client for this long means
/// its path is lost. Clients send RTCP about every second and STUN consent checks every few.
pub const SILENCE_IS_LOSS: Duration = Duration::from_secs(4);

/// The longest the runner sleeps without a timeout check.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// Inputs held for a throttled subscriber connection at most (then handed over at once): a
/// browser sends some 40 RTCP packets a second, a throttle gap holds a few.
const HELD_INPUT_MAX: usize = 64;
/// How long after a video copy is paused its packets still leaving str0m's pacer are dropped.
/// str0m paces what it was given at its estimate and never drops: when a link collapses, the
/// video written at the old estimate kept reaching the physician for 1-4 s after the pause
/// (38-59 kbit/s of a 100 kbit/s link, the queue full ahead of the stethoscope, measured on
/// the rural-link capture). Its pacer lets a packet wait 2 s at most.
const STALE_AFTER_PAUSE: Duration = Duration::from_millis(2500);

/// A simulcast layer nobody has received for this long may be paused by its publisher.
pub const LAYER_PAUSE_AFTER: Duration = Duration::from_secs(3);

/// A publisher's uplink losing this share or more counts as a thin link for its audio's
/// encoding step.
const UPLINK_LOSSY: f32 = 0.05;

/// The link an audio-only subscriber whose queue still grows is taken to have, for its audio
/// publishers' encoding step: under the thinnest step's threshold.
const AUDIO_ONLY_QUEUEING_LINK_BPS: u64 = 100_000;

/// The longest a publisher's video waits for its subscriber connection to come up.
const SUBSCRIBER_WAIT: Duration = Duration::from_secs(10);

/// How long a queue seen on a link reported low keeps it counted as thin.
const THIN_EVIDENCE_FOR: Duration = Duration::from_secs(30);

/// Shortest gap between two loss hints to one audio publisher.
pub const AUDIO_HINT_INTERVAL: Duration = Duration::from_secs(2);

/// How often every subscriber's allocation is redone (besides on each new estimate).
const ALLOCATION_INTERVAL: Duration = Duration::from_millis(250);
/// Redundancy toward a subscriber, once turned off, is not turned back on before this.
const RED_REARM: Duration = Duration::from_secs(5);

/// Under this estimate a subscriber's link is reported low (`low_link`); it is reported fine
/// again above [`LINK_OK_BPS`].
pub const LOW_LINK_BPS: u64 = 250_000;
pub const LINK_OK_BPS: u64 = 300_000;
/// Under this much forwarded, str0m is asked to probe only toward the next step up.
const THIN_LINK_BPS: u64 = 250_000;
/// How long the estimate must stay under [`LOW_LINK_BPS`] before the link is reported low.
pub const LOW_LINK_AFTER: Duration = Duration::from_secs(3);

/// Bytes a packet costs on the wire beyond its RTP payload that the estimate also counts:
/// RTP header and extensions, SRTP tag.
const PACKET_OVERHEAD: usize = 30;

struct Participant {
    id: ParticipantId,
    room: String,
    publisher: Peer,
    subscriber: Peer,
    events: UnboundedSender<SfuEvent>,
    tracks: Vec<TrackIn>,
    outs: Vec<TrackOut>,
    pending_offer: Option<SdpPendingOffer>,
    /// The client asked for an ICE restart of the subscriber connection: in the next offer.
    ice_restart_wanted: bool,
    /// The client takes Opus retransmissions: its audio m-lines get an RTX SSRC.
    audio_rtx: bool,
    /// Splits the subscriber connection's estimate across the tracks it receives.
    allocator: Allocator<(u64, Mid)>,
    /// Whether the estimate may take tracks down (queueing seen), and media probing.
    gate: CongestionGate,
    /// How much speech its link cannot carry (see `audio_shed`).
    shedder: crate::audio_shed::AudioShedder,
    /// Latest downlink estimates of the subscriber connection (see `estimate_bps`).
    twcc_bps: Option<u64>,
    remb_bps: Option<u64>,
    allocated_bps: u64,
    /// What the allocator's next step up would take in all (see `Allocation::next_step_bps`).
    next_step_bps: u64,
    /// The estimate the allocator last split (str0m's, through the congestion gate).
    allocation_estimate_bps: Option<u64>,
    /// The allocator's latest result put every video track on pause.
    allocation_audio_only: bool,
    /// Audio-only as last told to the client.
    audio_only: bool,
    low_link: bool,
    /// Tracks paused for this subscriber, as last told to the client.
    paused_notified: Vec<(u64, Mid)>,
    /// Since when the estimate has been under the low-link threshold.
    low_since: Option<Instant>,
    /// (minimum, desired) last given to str0m's estimator.
    bwe_targets: (u64, u64),
    /// Tracks the participant pinned: served before others of lower clinical rank.
    pinned: Vec<(u64, Mid)>,
    /// Whether its link loses enough for audio redundancy.
    red_policy: crate::red::RedPolicy,
    /// Whether its uplink carries its video (see `uplink`).
    uplink: crate::uplink::UplinkVideoGate,
    /// When its subscriber link last queued (see `link_shown_thin`).
    queued_at: Option<Instant>,
    /// Since when it has had something to receive (reset while it has nothing).
    receiving_since: Instant,
    /// Feeds str0m's timers sparingly toward a thin link (see `padding_throttle`).
    tick_throttle: crate::padding_throttle::TimerThrottle,
    /// Media was written to its subscriber connection since it was last polled.
    media_written: bool,
    /// What its subscriber connection received while str0m's timers are throttled (RTCP,
    /// STUN), handed over at the next tick: str0m runs its timers on every input, so each
    /// receiver report would otherwise let it pad (see `padding_throttle`).
    held_input: Vec<(Instant, SocketAddr, Vec<u8>)>,
    /// SSRCs of its video copies paused recently, and when: what str0m's pacer still holds of
    /// them is dropped rather than sent (see [`STALE_AFTER_PAUSE`]).
    stale_video: Vec<(u32, Instant)>,
}

impl Participant {
    /// Whether the subscriber's link has shown it is thin: it queues now, or it is reported low
    /// and queued within [`THIN_EVIDENCE_FOR`]. A low estimate alone is no evidence: a
    /// subscriber that receives little (audio only) probes little and its estimate stays low
    /// on a good link.
    fn link_shown_thin(&self, now: Instant) -> bool {
        self.gate.congested()
            || (self.low_link
                && self
                    .queued_at
                    .is_some_and(|t| now.saturating_duration_since(t) < THIN_EVIDENCE_FOR))
    }

    /// Loss on what it receives. str0m's figure counts the packets sent in the last second
    /// that feedback has reported on: behind a queue deeper than a second (a collapsing link,
    /// RTT 1-1.2 s measured) there are none, and it reads None just when it matters. Then the
    /// receiver reports' loss, the worst of the streams forwarded now (a paused stream's last
    /// report is stale).
    fn loss_to_client(&self) -> Option<f32> {
        self.subscriber.counters.link.loss_to_client.or_else(|| {
            self.outs
                .iter()
                .filter(|o| o.state == OutState::Open && o.forwarding())
                .filter_map(|o| o.mid.and_then(|m| self.subscriber.counters.egress_loss(m)))
                .reduce(f32::max)
        })
    }

    /// When its subscriber connection next needs str0m fed: its timeout, or at once when
    /// input is held (before the throttle, which may hold both).
    fn subscriber_wants_at(&self) -> Instant {
        match self.held_input.first() {
            Some((since, ..)) => self.subscriber.next_timeout.min(*since),
            None => self.subscriber.next_timeout,
        }
    }

    /// What its access link shows, for its uplink's video (see `uplink`).
    fn uplink_view(&self, now: Instant) -> crate::uplink::UplinkView {
        // Before its subscriber connection is up (while it has something to receive, and
        // bounded: a client may never set that connection up): on a thin link a camera
        // starting at the browser's initial rate starves that connection's ICE and DTLS (18 s
        // to connect at 100 kbit/s); on a good link the wait is a fraction of a second.
        let connecting = !self.subscriber.connected
            && !self.outs.is_empty()
            && now.saturating_duration_since(self.receiving_since) < SUBSCRIBER_WAIT;
        // Only a downlink that wanted video and queued: not one that receives little.
        let thin = self.allocation_audio_only && self.link_shown_thin(now);
        // Or one that is collapsing now (a deep queue): when an access link drops, its own
        // video fills the uplink and the feedback about the downlink is lost in that queue,
        // so waiting for the downlink's audio-only switch (or for the uplink's loss) left the
        // SFU blind for 3-4 s, the stethoscope losing 15-70 % a second meanwhile.
        let collapsing = self.gate.congested()
            && self
                .gate
                .queue_ms()
                .is_some_and(|q| q >= crate::congestion::DEEP_QUEUE_MS);
        crate::uplink::UplinkView {
            loss: self.publisher.counters.link.loss_from_client,
            downlink_thin: connecting || thin || collapsing,
        }
    }

    /// The subscriber connection's downlink estimate: TWCC, else REMB.
    fn estimate_bps(&self) -> Option<u64> {
        self.twcc_bps.or(self.remb_bps)
    }

    fn peer_mut(&mut self, target: PeerTarget) -> &mut Peer {
        match target {
            PeerTarget::Publisher => &mut self.publisher,
            PeerTarget::Subscriber => &mut self.subscriber,
        }
    }

    fn notify(&self, event: SfuEvent) {
        // The session may be gone already; it then gets a Leave soon.
        let _ = self.events.send(event);
    }
}

pub struct Engine {
    candidate_addr: SocketAddr,
    participants: HashMap<u64, Participant>,
    ids: HashMap<ParticipantId, u64>,
    rooms: HashMap<String, Vec<u64>>,
    demux: Demux,
    next_key: u64,
    stats: SfuStats,
    /// Media counters of connections that closed.
    departed: MediaTotals,
    /// Peers with new input to poll.
    dirty: Vec<PeerKey>,
    /// Scratch buffers reused across packets.
    events: Vec<(PeerKey, Event)>,
    fanout: Vec<u64>,
    keyframes_due: Vec<(u64, Mid, usize)>,
    next_allocation: Option<Instant>,
    /// Subscriber connections run str0m's estimator, and the allocator acts on it.
    downlink_estimation: bool,
}

impl Engine {
    /// An engine whose peers all advertise `candidate_addr` (the one UDP port).
    pub fn new(candidate_addr: SocketAddr, downlink_estimation: bool) -> Engine {
        Engine::with_demux(candidate_addr, downlink_estimation, Demux::default())
    }

    /// One shard of several: its peers' ICE ufrags are registered in the shared
    /// `router` under `shard`.
    pub fn shard(
        candidate_addr: SocketAddr,
        downlink_estimation: bool,
        router: std::sync::Arc<crate::router::Router>,
        shard: crate::router::ShardId,
    ) -> Engine {
        Engine::with_demux(
            candidate_addr,
            downlink_estimation,
            Demux::shared(router, shard),
        )
    }

    fn with_demux(candidate_addr: SocketAddr, downlink_estimation: bool, demux: Demux) -> Engine {
        Engine {
            candidate_addr,
            participants: HashMap::new(),
            ids: HashMap::new(),
            rooms: HashMap::new(),
            demux,
            next_key: 1,
            stats: SfuStats::default(),
            departed: MediaTotals::default(),
            dirty: Vec::new(),
            events: Vec::new(),
            fanout: Vec::new(),
            keyframes_due: Vec::new(),
            next_allocation: None,
            downlink_estimation,
        }
    }

    pub fn stats(&self) -> SfuStats {
        let mut media = self.departed;
        let mut peers = Vec::with_capacity(self.participants.len() * 2);
        for p in self.participants.values() {
            for (target, peer) in [
                (PeerTarget::Publisher, &p.publisher),
                (PeerTarget::Subscriber, &p.subscriber),
            ] {
                media.add_peer(&peer.counters);
                let subscriber = target == PeerTarget::Subscriber;
                let mut link = peer.counters.link;
                if subscriber {
                    link.loss_to_client = p.loss_to_client();
                }
                peers.push(PeerReport {
                    participant: p.id.clone(),
                    room: p.room.clone(),
                    target,
                    link,
                    allocated_bps: (subscriber && p.estimate_bps().is_some())
                        .then_some(p.allocated_bps),
                    allocation_estimate_bps: p
                        .allocation_estimate_bps
                        .filter(|_| subscriber && p.estimate_bps().is_some()),
                    audio_only: subscriber && p.audio_only,
                });
            }
        }
        SfuStats {
            participants: self.participants.len(),
            media,
            peers,
            ..self.stats.clone()
        }
    }

    /// Peer addresses learned (true) or forgotten (false) since the last call.
    pub fn take_address_changes(&mut self) -> std::vec::Drain<'_, (SocketAddr, bool)> {
        self.demux.take_changes()
    }

    /// When the engine next needs [`Engine::handle_timeout`].
    pub fn next_timeout(&self, now: Instant) -> Instant {
        self.participants
            .values()
            .flat_map(|p| {
                [
                    p.publisher.next_timeout,
                    p.tick_throttle.allowed_at(p.subscriber_wants_at()),
                ]
            })
            .fold(now + MAX_SLEEP, Instant::min)
    }

    /// One datagram from the UDP socket.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        buf: &[u8],
        tx: &mut impl Transmit,
    ) {
        self.stats.datagrams_in += 1;
        let Some(key) = self.demux.route(source, buf) else {
            self.stats.datagrams_dropped += 1;
            if crate::demux::classify(buf) == crate::demux::DatagramKind::Garbage {
                self.stats.dropped_malformed += 1;
            } else {
                self.stats.dropped_unknown_sender += 1;
            }
            return;
        };
        let Some(input) = udp_input(now, source, self.candidate_addr, buf) else {
            self.stats.datagrams_dropped += 1;
            self.stats.dropped_malformed += 1;
            return;
        };
        let Some(p) = self.participants.get_mut(&key.0) else {
            return;
        };
        // Not from a client that takes audio retransmissions: its NACKs are answered at once.
        let hold = key.1 == PeerTarget::Subscriber
            && !p.audio_rtx
            && !p.tick_throttle.may_tick(now)
            && p.held_input.len() < HELD_INPUT_MAX;
        let peer = p.peer_mut(key.1);
        peer.last_rx = now;
        if peer.silent {
            // The path is back (consent regained, or after an ICE restart).
            peer.silent = false;
            peer.connected = true;
            info!(participant = %p.id, target = ?key.1, "media path back");
            p.notify(SfuEvent::Connected(key.1));
        }
        if hold {
            p.held_input.push((now, source, buf.to_vec()));
            return;
        }
        if key.1 == PeerTarget::Subscriber {
            feed_held(
                &mut p.subscriber,
                &mut p.held_input,
                self.candidate_addr,
                &p.id,
            );
        }
        // A malformed packet from a known address must not end the session: log and go on.
        if let Err(e) = p.peer_mut(key.1).rtc.handle_input(input) {
            debug!(participant = %p.id, ?key, "input rejected: {e}");
        }
        self.drive(now, key, tx);
    }

    /// Timers: feed every peer whose timeout is due, and flush delayed keyframe requests.
    pub fn handle_timeout(&mut self, now: Instant, tx: &mut impl Transmit) {
        for (key, p) in self.participants.iter_mut() {
            let subscriber_due = p.subscriber_wants_at() <= now;
            for target in [PeerTarget::Publisher, PeerTarget::Subscriber] {
                let Participant {
                    id,
                    publisher,
                    subscriber,
                    events,
                    tick_throttle,
                    held_input,
                    ..
                } = p;
                let peer = match target {
                    PeerTarget::Publisher => publisher,
                    PeerTarget::Subscriber => subscriber,
                };
                // Toward a thin link, str0m's timers are fed sparingly (see `padding_throttle`).
                let (due, throttled) = match target {
                    PeerTarget::Publisher => (peer.next_timeout <= now, false),
                    PeerTarget::Subscriber => (subscriber_due, !tick_throttle.may_tick(now)),
                };
                if due && !throttled {
                    if target == PeerTarget::Subscriber {
                        tick_throttle.ticked(now);
                        // What arrived meanwhile first (each input also runs str0m's timers).
                        feed_held(peer, held_input, self.candidate_addr, id);
                    }
                    if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                        debug!(participant = %id, "timeout rejected: {e}");
                    }
                    self.dirty.push((*key, target));
                }
                // ICE-lite never declares a nominated pair dead: silence does.
                if peer.dtls_up && !peer.silent && now - peer.last_rx > SILENCE_IS_LOSS {
                    peer.silent = true;
                    peer.connected = false;
                    info!(participant = %id, ?target, "media path silent");
                    let _ = events.send(SfuEvent::Disconnected(target));
                }
            }
        }
        // Timers fire often: reuse one buffer instead of allocating on every tick.
        let mut due = std::mem::take(&mut self.keyframes_due);
        due.extend(self.participants.iter().flat_map(|(key, p)| {
            p.tracks.iter().flat_map(move |t| {
                t.layers
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.keyframe_pending)
                    .map(move |(i, _)| (*key, t.mid, i))
            })
        }));
        for (key, mid, layer) in due.drain(..) {
            self.request_keyframe(now, key, mid, layer, KeyframeRequestKind::Pli);
        }
        self.keyframes_due = due;
        if self.next_allocation.is_none_or(|t| t <= now) {
            self.next_allocation = Some(now + ALLOCATION_INTERVAL);
            let keys: Vec<u64> = self.participants.keys().copied().collect();
            for key in keys {
                self.allocate(now, key);
            }
            self.update_layer_hints(now);
            self.update_audio_hints(now);
            self.clear_idle_resend_caches(now);
        }
        self.drain(now, tx);
    }

    pub fn handle_command(&mut self, now: Instant, cmd: Command, tx: &mut impl Transmit) {
        match cmd {
            Command::Join {
                room,
                participant,
                caps,
                events,
                reply,
            } => {
                let _ = reply.send(self.join(now, room, participant, caps, events));
            }
            Command::PublishOffer {
                participant,
                sdp,
                tracks,
                reply,
            } => {
                let r = self.publish_offer(now, &participant, &sdp, tracks);
                let _ = reply.send(r);
            }
            Command::SubscriberAnswer {
                participant,
                sdp,
                reply,
            } => {
                let r = self.subscriber_answer(now, &participant, &sdp);
                let _ = reply.send(r);
            }
            Command::Candidate {
                participant,
                target,
                candidate,
            } => {
                let Some(p) = self
                    .key(&participant)
                    .and_then(|k| self.participants.get_mut(&k))
                else {
                    return;
                };
                let line = candidate.trim_start_matches("a=");
                match Candidate::from_sdp_string(line) {
                    Ok(c) => p.peer_mut(target).rtc.add_remote_candidate(c),
                    Err(e) => debug!(participant, "ignoring bad candidate: {e}"),
                }
            }
            Command::IceRestart { participant } => {
                if let Some(key) = self.key(&participant) {
                    if let Some(p) = self.participants.get_mut(&key) {
                        info!(
                            participant,
                            "ICE restart of the subscriber connection asked"
                        );
                        p.ice_restart_wanted = true;
                    }
                    self.negotiate_subscriber(key);
                }
            }
            Command::Pin {
                participant,
                track_id,
                pinned,
                reply,
            } => {
                let key = self.key(&participant);
                let p = key.and_then(|k| self.participants.get_mut(&k));
                let source = p.as_ref().and_then(|p| {
                    p.outs
                        .iter()
                        .find(|o| o.track_id() == track_id)
                        .map(|o| o.source)
                });
                let _ = reply.send(match (p, source) {
                    (Some(p), Some(src)) => {
                        p.pinned.retain(|s| *s != src);
                        if pinned {
                            p.pinned.push(src);
                        }
                        info!(participant, track_id, pinned, "pin");
                        Ok(())
                    }
                    _ => Err(SfuError::BadTrack(format!("no received track {track_id}"))),
                });
                if let Some(key) = key {
                    self.allocate(now, key);
                }
            }
            Command::Tap {
                participant,
                mid,
                sink,
                reply,
            } => {
                let track = self
                    .key(&participant)
                    .and_then(|k| self.participants.get_mut(&k))
                    .and_then(|p| p.tracks.iter_mut().find(|t| *t.mid == *mid));
                let _ = reply.send(match track {
                    Some(t) => {
                        t.taps.push(sink);
                        Ok(())
                    }
                    None => Err(SfuError::BadTrack(format!("no track {participant}/{mid}"))),
                });
            }
            Command::Leave { participant } => self.leave(&participant),
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
        }
        self.drain(now, tx);
    }

    fn key(&self, id: &str) -> Option<u64> {
        self.ids.get(id).copied()
    }

    fn join(
        &mut self,
        now: Instant,
        room: String,
        id: ParticipantId,
        caps: crate::api::ClientCaps,
        events: UnboundedSender<SfuEvent>,
    ) -> Result<(), SfuError> {
        if self.ids.contains_key(&id) {
            return Err(SfuError::AlreadyJoined);
        }
        let publisher = Peer::new(now, self.candidate_addr, false).map_err(SfuError::BadSdp)?;
        // A client whose TWCC feedback omits probes would sink the estimate on a good link.
        let estimate = self.downlink_estimation && !caps.twcc_omits_probes;
        let subscriber = Peer::new(now, self.candidate_addr, estimate).map_err(SfuError::BadSdp)?;
        let key = self.next_key;
        self.next_key += 1;
        self.demux
            .add_peer(publisher.ufrag.clone(), (key, PeerTarget::Publisher));
        self.demux
            .add_peer(subscriber.ufrag.clone(), (key, PeerTarget::Subscriber));

        // Everything already published in the room is to be sent to the newcomer.
        let members = self.rooms.entry(room.clone()).or_default();
        let mut outs = Vec::new();
        for other in members.iter() {
            if let Some(o) = self.participants.get_mut(other) {
                for t in o.tracks.iter_mut() {
                    t.subscribers.push(key);
                    outs.push(TrackOut::new((*other, t.mid), o.id.clone(), t));
                }
            }
        }
        members.push(key);
        info!(participant = %id, room, "media session created");
        self.ids.insert(id.clone(), key);
        self.participants.insert(
            key,
            Participant {
                id,
                room,
                publisher,
                subscriber,
                events,
                tracks: Vec::new(),
                outs,
                pending_offer: None,
                ice_restart_wanted: false,
                audio_rtx: caps.audio_rtx,
                allocator: Allocator::default(),
                shedder: Default::default(),
                gate: CongestionGate::default(),
                twcc_bps: None,
                remb_bps: None,
                allocated_bps: 0,
                next_step_bps: 0,
                allocation_estimate_bps: None,
                allocation_audio_only: false,
                paused_notified: Vec::new(),
                audio_only: false,
                low_link: false,
                low_since: None,
                bwe_targets: (0, 0),
                pinned: Vec::new(),
                red_policy: crate::red::RedPolicy::default(),
                uplink: Default::default(),
                tick_throttle: Default::default(),
                media_written: false,
                held_input: Vec::new(),
                stale_video: Vec::new(),
                queued_at: None,
                receiving_since: now,
            },
        );
        self.negotiate_subscriber(key);
        Ok(())
    }

    fn publish_offer(
        &mut self,
        now: Instant,
        id: &str,
        sdp: &str,
        declared: Vec<PublishedTrack>,
    ) -> Result<String, SfuError> {
        let key = self.key(id).ok_or(SfuError::UnknownParticipant)?;
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        for (i, t) in declared.iter().enumerate() {
            if declared[..i].iter().any(|o| o.mid == t.mid) {
                return Err(SfuError::BadTrack(format!("mid {} declared twice", t.mid)));
            }
        }
        let p = self
            .participants
            .get_mut(&key)
            .ok_or(SfuError::UnknownParticipant)?;
        let answer = p
            .publisher
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        // New remote credentials (an ICE restart) gave the connection new local ones.
        if sync_ufrag(
            &mut self.demux,
            &mut p.publisher,
            (key, PeerTarget::Publisher),
        ) {
            p.notify(SfuEvent::IceRestarted(PeerTarget::Publisher));
        }

        // Which declared tracks are really received on this connection now.
        let mut live = Vec::with_capacity(declared.len());
        let mut uplink_nack = Vec::new();
        let mut bad = None;
        for t in &declared {
            let mid = Mid::from(t.mid.as_str());
            let kind_ok = |k: MediaKind| match t.label.kind() {
                TrackKind::Audio => k == MediaKind::Audio,
                TrackKind::Video => k == MediaKind::Video,
            };
            match p.publisher.rtc.media(mid) {
                Some(m) if !kind_ok(m.kind()) => {
                    bad = Some(format!("mid {} is not {:?}", t.mid, t.label.kind()))
                }
                Some(m) if matches!(m.direction(), Direction::RecvOnly | Direction::SendRecv) => {
                    let rids = match m.rids_rx() {
                        Rids::Specific(rids) => rids.clone(),
                        _ => Vec::new(),
                    };
                    if m.kind() == MediaKind::Audio && crate::audio_rtx::offers_nack(sdp, &t.mid) {
                        uplink_nack.push(mid);
                    }
                    live.push((mid, t.label, rids))
                }
                Some(_) => {}
                None => bad = Some(format!("mid {} is not in the offer", t.mid)),
            }
        }

        // Audio whose publisher answers NACKs is asked for what its uplink loses.
        for mid in uplink_nack {
            crate::audio_rtx::nack_uplink(&mut p.publisher.rtc, mid);
        }

        // Unpublish what is gone, publish what is new.
        let gone: Vec<Mid> = p
            .tracks
            .iter()
            .filter(|t| !live.iter().any(|(m, l, _)| *m == t.mid && *l == t.label))
            .map(|t| t.mid)
            .collect();
        for mid in gone {
            self.unpublish(key, mid);
        }
        let room = self.participants[&key].room.clone();
        let others: Vec<u64> = self.rooms[&room]
            .iter()
            .copied()
            .filter(|k| *k != key)
            .collect();
        for (mid, label, rids) in live {
            let p = self.participants.get_mut(&key).expect("checked above");
            if p.tracks.iter().any(|t| t.mid == mid) {
                continue;
            }
            let rid_names: Vec<&str> = rids.iter().map(|r| r.as_ref()).collect();
            info!(participant = %p.id, %mid, %label, simulcast = ?rid_names, "track published");
            let pid = p.id.clone();
            let mut track = TrackIn::new(mid, label, &rids, now);
            track.subscribers = others.clone();
            for other in &others {
                if let Some(o) = self.participants.get_mut(other) {
                    o.outs.push(TrackOut::new((key, mid), pid.clone(), &track));
                }
            }
            if let Some(p) = self.participants.get_mut(&key) {
                p.tracks.push(track);
            }
        }
        for other in &others {
            self.negotiate_subscriber(*other);
        }
        self.dirty.push((key, PeerTarget::Publisher));
        match bad {
            Some(msg) => Err(SfuError::BadTrack(msg)),
            None => Ok(answer.to_sdp_string()),
        }
    }

    fn subscriber_answer(&mut self, now: Instant, id: &str, sdp: &str) -> Result<(), SfuError> {
        let key = self.key(id).ok_or(SfuError::UnknownParticipant)?;
        let p = self
            .participants
            .get_mut(&key)
            .ok_or(SfuError::UnknownParticipant)?;
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let pending = p.pending_offer.take().ok_or(SfuError::NoPendingOffer)?;
        if let Err(e) = p.subscriber.rtc.sdp_api().accept_answer(pending, answer) {
            // The offer is spent; mark its tracks for a fresh offer.
            for o in p.outs.iter_mut() {
                match o.state {
                    OutState::Negotiating => {
                        o.state = OutState::ToOpen;
                        o.mid = None;
                        o.audio_rtx = None;
                    }
                    OutState::Stopping => o.state = OutState::ToStop,
                    _ => {}
                }
            }
            return Err(SfuError::BadSdp(e.to_string()));
        }
        if sync_ufrag(
            &mut self.demux,
            &mut p.subscriber,
            (key, PeerTarget::Subscriber),
        ) {
            p.notify(SfuEvent::IceRestarted(PeerTarget::Subscriber));
        }
        let mut opened = Vec::new();
        let rtc = &mut p.subscriber.rtc;
        p.outs.retain_mut(|o| match o.state {
            OutState::Negotiating => {
                o.state = OutState::Open;
                if let (Some(mid), Some(rtx)) = (o.mid, o.audio_rtx) {
                    crate::audio_rtx::enable(rtc, mid, rtx);
                }
                if o.kind == TrackKind::Video {
                    opened.push((o.source, o.fwd.target()));
                }
                true
            }
            OutState::Stopping => false,
            _ => true,
        });
        // A new subscriber needs a keyframe to start decoding.
        for ((src, mid), layer) in opened {
            self.request_keyframe(now, src, mid, layer.unwrap_or(0), KeyframeRequestKind::Pli);
        }
        self.negotiate_subscriber(key);
        self.dirty.push((key, PeerTarget::Subscriber));
        Ok(())
    }

    /// Remove a published track from the publisher and every subscriber.
    fn unpublish(&mut self, key: u64, mid: Mid) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let Some(i) = p.tracks.iter().position(|t| t.mid == mid) else {
            return;
        };
        let track = p.tracks.swap_remove(i);
        info!(participant = %p.id, %mid, "track unpublished");
        for sub in track.subscribers {
            if let Some(s) = self.participants.get_mut(&sub) {
                stop_outs(&mut s.outs, |src| src == (key, mid));
                self.negotiate_subscriber(sub);
            }
        }
    }

    fn leave(&mut self, id: &str) {
        let Some(key) = self.ids.remove(id) else {
            return;
        };
        let Some(mut p) = self.participants.remove(&key) else {
            return;
        };
        info!(participant = %id, room = %p.room, "media session closed");
        self.demux
            .remove_peer(&p.publisher.ufrag, (key, PeerTarget::Publisher));
        self.demux
            .remove_peer(&p.subscriber.ufrag, (key, PeerTarget::Subscriber));
        p.publisher.rtc.disconnect();
        p.subscriber.rtc.disconnect();
        self.departed.add_peer(&p.publisher.counters);
        self.departed.add_peer(&p.subscriber.counters);
        if let Some(members) = self.rooms.get_mut(&p.room) {
            members.retain(|k| *k != key);
            if members.is_empty() {
                self.rooms.remove(&p.room);
            }
        }
        // Its subscriptions leave the publishers' fan-out lists.
        for o in &p.outs {
            if let Some(src) = self.participants.get_mut(&o.source.0) {
                for t in src.tracks.iter_mut().filter(|t| t.mid == o.source.1) {
                    t.subscribers.retain(|k| *k != key);
                }
            }
        }
        // Its tracks leave every subscriber.
        let subs: Vec<u64> = p
            .tracks
            .iter()
            .flat_map(|t| t.subscribers.iter().copied())
            .collect();
        for sub in subs {
            if let Some(s) = self.participants.get_mut(&sub) {
                stop_outs(&mut s.outs, |src| src.0 == key);
                self.negotiate_subscriber(sub);
            }
        }
    }

    /// Send a new offer on a participant's subscriber peer if its tracks changed and no offer
    /// is outstanding (the answer to the current one triggers the next).
    fn negotiate_subscriber(&mut self, key: u64) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.pending_offer.is_some()
            || !(p.ice_restart_wanted
                || p.outs
                    .iter()
                    .any(|o| matches!(o.state, OutState::ToOpen | OutState::ToStop)))
        {
            return;
        }
        let Participant {
            subscriber,
            outs,
            ice_restart_wanted,
            ..
        } = p;
        let mut api = subscriber.rtc.sdp_api();
        // A connection that carries nothing yet has no ICE session to restart.
        if std::mem::take(ice_restart_wanted) && !outs.is_empty() {
            // Keep the one host candidate; only the credentials change.
            api.ice_restart(true);
        }
        for o in outs.iter_mut() {
            match o.state {
                OutState::ToOpen => {
                    let kind = match o.kind {
                        TrackKind::Audio => MediaKind::Audio,
                        TrackKind::Video => MediaKind::Video,
                    };
                    // The stethoscope in a stream of its own: a receiver must not delay it to
                    // play in sync with the participant's video (lip sync is for speech).
                    let stream_id = if o.label == consult_protocol::TrackLabel::Stethoscope {
                        format!("{}-stethoscope", o.source_participant)
                    } else {
                        o.source_participant.clone()
                    };
                    let track_id = format!("{}-{}", o.source_participant, o.source.1);
                    let mid = api.add_media(
                        kind,
                        Direction::SendOnly,
                        Some(stream_id),
                        Some(track_id),
                        None,
                    );
                    o.mid = Some(mid);
                    o.state = OutState::Negotiating;
                }
                OutState::ToStop => {
                    if let Some(mid) = o.mid {
                        api.set_direction(mid, Direction::Inactive);
                    }
                    o.state = OutState::Stopping;
                }
                _ => {}
            }
        }
        match api.apply() {
            Some((offer, pending)) => {
                p.pending_offer = Some(pending);
                // New audio m-sections get an RTX SSRC for retransmissions (`audio_rtx`).
                let mut rtx = Vec::new();
                if p.audio_rtx {
                    for o in p.outs.iter_mut() {
                        if let (TrackKind::Audio, OutState::Negotiating, Some(mid), None) =
                            (o.kind, o.state, o.mid, o.audio_rtx)
                        {
                            let ssrc = p.subscriber.rtc.direct_api().new_ssrc();
                            o.audio_rtx = Some(ssrc);
                            rtx.push((mid, ssrc));
                        }
                    }
                }
                let sdp = crate::audio_rtx::add_rtx_ssrcs(&offer.to_sdp_string(), &rtx);
                let tracks = p
                    .outs
                    .iter()
                    .filter(|o| matches!(o.state, OutState::Negotiating | OutState::Open))
                    .filter_map(|o| {
                        Some(SubscribedTrack {
                            mid: o.mid?.to_string(),
                            track_id: o.track_id(),
                            participant_id: o.source_participant.clone(),
                            label: o.label,
                            kind: o.kind,
                        })
                    })
                    .collect();
                p.notify(SfuEvent::SubscriberOffer { sdp, tracks });
            }
            None => p.outs.retain(|o| o.state != OutState::Stopping),
        }
    }

    /// Choose the layer each track a subscriber receives is forwarded at, and apply it: with
    /// an estimate, the allocator splits it by clinical rank (pausing video that does not
    /// fit); without one, every track goes at its best layer. A track that must change layer
    /// (or resume) waits for a keyframe, asked for at once. With an estimate, also tell the
    /// client when it enters or leaves audio-only mode, and aim the estimator's probing at
    /// the next step up.
    fn allocate(&mut self, now: Instant, key: u64) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let estimate = p.estimate_bps();
        let mut demands: Vec<TrackDemand<(u64, Mid)>> = Vec::with_capacity(p.outs.len());
        // Per demand: the source's layer indices, lowest rate first.
        let mut orders: Vec<Vec<usize>> = Vec::with_capacity(p.outs.len());
        // What forwarding everything would take, and what flows now, at today's rates.
        let (mut wanted, mut flowing) = (0, 0);
        for o in p.outs.iter().filter(|o| o.state == OutState::Open) {
            let track = self
                .participants
                .get(&o.source.0)
                .and_then(|s| s.tracks.iter().find(|t| t.mid == o.source.1));
            let Some(track) = track else { continue };
            let by_rate = track.layers_by_rate(now);
            // A track not measured yet is let through; its rate counts once known.
            let (order, mut layers): (Vec<usize>, Vec<u64>) = if by_rate.is_empty() {
                (vec![0], vec![1])
            } else {
                by_rate.into_iter().unzip()
            };
            for r in layers.iter_mut() {
                *r = (*r).max(1);
            }
            wanted += layers.last().copied().unwrap_or(0);
            if o.forwarding() {
                let current = o.fwd.current().or(o.fwd.target());
                flowing += track.rate_of(current, now).max(1);
            }
            demands.push(TrackDemand {
                key: o.source,
                label: o.label,
                layers,
                pinned: p.pinned.contains(&o.source),
                speaking: track.speaking(now),
            });
            orders.push(order);
        }
        let decisions: Vec<((u64, Mid), Option<usize>)> = match estimate {
            Some(estimate) => {
                let Some(allocation) =
                    self.allocate_estimate(now, key, estimate, &demands, flowing, wanted)
                else {
                    return;
                };
                allocation
                    .decisions
                    .iter()
                    .map(|d| (d.key, d.layer))
                    .collect()
            }
            // No estimate: everything at its best layer.
            None => demands
                .iter()
                .map(|d| (d.key, Some(d.layers.len() - 1)))
                .collect(),
        };
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let mut keyframes = Vec::new();
        p.stale_video
            .retain(|(_, at)| now.saturating_duration_since(*at) < STALE_AFTER_PAUSE);
        for (source, choice) in decisions {
            let Some(i) = demands.iter().position(|d| d.key == source) else {
                continue;
            };
            let layer = choice.and_then(|c| orders[i].get(c).copied());
            for o in p.outs.iter_mut().filter(|o| o.source == source) {
                let before = o.fwd.target();
                if o.fwd.set_target(layer) {
                    if let Some(l) = layer {
                        keyframes.push((source, l));
                    }
                }
                if o.kind == TrackKind::Video && before.is_some() != layer.is_some() {
                    let ssrc = o.mid.and_then(|mid| {
                        let mut api = p.subscriber.rtc.direct_api();
                        api.stream_tx_by_mid(mid, None).map(|s| *s.ssrc())
                    });
                    if let Some(ssrc) = ssrc {
                        p.stale_video.retain(|(s, _)| *s != ssrc);
                        if layer.is_none() {
                            p.stale_video.push((ssrc, now));
                        }
                    }
                }
                if before != layer {
                    debug!(participant = %p.id, track = %o.track_id(), ?before, ?layer, rates = ?demands[i].layers, order = ?orders[i], "layer target");
                }
            }
        }
        self.choose_red(now, key, estimate, &demands);
        self.notify_bandwidth(now, key);
        for ((src, mid), layer) in keyframes {
            self.request_keyframe(now, src, mid, layer, KeyframeRequestKind::Pli);
        }
    }

    /// Empty the resend cache of video copies that forward nothing (paused, or their
    /// publisher stopped): see [`crate::resend`].
    fn clear_idle_resend_caches(&mut self, now: Instant) {
        for p in self.participants.values_mut() {
            for o in p.outs.iter_mut() {
                if o.kind != TrackKind::Video || o.state != OutState::Open {
                    continue;
                }
                let Some(mid) = o.mid else { continue };
                if !o.resend_cache.due(now, o.fwd.last_forwarded()) {
                    continue;
                }
                if p.subscriber.empty_video_resend_cache(mid) {
                    debug!(participant = %p.id, track = %o.track_id(), "idle copy: resend cache emptied");
                }
            }
        }
    }

    /// Tell simulcast publishers which layers someone receives: a layer no subscriber (nor
    /// recorder) has wanted for [`LAYER_PAUSE_AFTER`] may be paused, one wanted again is asked
    /// back at once.
    fn update_layer_hints(&mut self, now: Instant) {
        // (publisher, mid, layer) wanted by some subscriber: forwarded or switched to.
        let mut wanted: HashSet<(u64, Mid, usize)> = HashSet::new();
        for p in self.participants.values() {
            for o in p.outs.iter().filter(|o| o.state == OutState::Open) {
                for l in [o.fwd.current(), o.fwd.target()].into_iter().flatten() {
                    wanted.insert((o.source.0, o.source.1, l));
                }
            }
        }
        for (key, p) in self.participants.iter_mut() {
            if p.outs.is_empty() {
                p.receiving_since = now;
            }
            // No video at all when its own uplink cannot carry it (see `uplink`).
            let view = p.uplink_view(now);
            let was_paused = p.uplink.paused();
            let uplink_paused = p.uplink.update(now, view);
            if uplink_paused != was_paused {
                info!(participant = %p.id, uplink_paused, ?view, "publisher video on its uplink");
            }
            for t in p.tracks.iter_mut().filter(|t| t.kind == TrackKind::Video) {
                // Per track: one published while paused is told too.
                let uplink_changed = t.uplink_paused != uplink_paused;
                t.uplink_paused = uplink_paused;
                if !t.simulcast() {
                    if uplink_changed {
                        let _ = p.events.send(SfuEvent::PublisherLayers {
                            mid: t.mid.to_string(),
                            active_rids: Vec::new(),
                            uplink_paused,
                        });
                    }
                    continue;
                }
                let mut changed = uplink_changed;
                let tapped = (!t.taps.is_empty()).then_some(t.tap_layer).flatten();
                for (i, l) in t.layers.iter_mut().enumerate() {
                    let is_wanted = tapped == Some(i) || wanted.contains(&(*key, t.mid, i));
                    if is_wanted {
                        l.unwanted_since = None;
                        if l.hinted_off {
                            l.hinted_off = false;
                            l.resumed_at = Some(now);
                            changed = true;
                        }
                    } else {
                        // Only a layer being sent is worth pausing; one the publisher stopped
                        // on its own must stay free to come back (and be switched to). The
                        // time counts while it flows: one that just came back gets the full
                        // delay for the allocator to choose it.
                        let rate = l.rate.bps(now);
                        if rate == 0 && !l.hinted_off {
                            l.unwanted_since = None;
                            continue;
                        }
                        let since = *l.unwanted_since.get_or_insert(now);
                        if !l.hinted_off
                            && rate > 0
                            && now.saturating_duration_since(since) >= LAYER_PAUSE_AFTER
                        {
                            l.hinted_off = true;
                            l.last_rate = rate;
                            changed = true;
                        }
                    }
                }
                if changed {
                    let active_rids: Vec<String> = t
                        .layers
                        .iter()
                        .filter(|l| !l.hinted_off && !uplink_paused)
                        .filter_map(|l| l.rid.map(|r| r.to_string()))
                        .collect();
                    info!(participant = %p.id, mid = %t.mid, ?active_rids, "publisher layers");
                    let _ = p.events.send(SfuEvent::PublisherLayers {
                        mid: t.mid.to_string(),
                        active_rids,
                        uplink_paused,
                    });
                }
            }
        }
    }

    /// Which audio tracks a subscriber gets with redundancy (RED): when its link loses packets,
    /// by clinical rank (the stethoscope first), as long as the doubled rate fits what the
    /// estimate leaves (all of them without an estimate).
    fn choose_red(
        &mut self,
        now: Instant,
        key: u64,
        estimate: Option<u64>,
        demands: &[TrackDemand<(u64, Mid)>],
    ) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let lossy = p
            .red_policy
            .update(now, p.subscriber.counters.link.loss_to_client);
        let congested = p.gate.congested();
        let thin = p.link_shown_thin(now);
        debug!(participant = %p.id, lossy, loss = ?p.subscriber.counters.link.loss_to_client, red_pts = ?p.outs.iter().map(|o| o.red_pt).collect::<Vec<_>>(), "red policy");
        let mut room = estimate
            .map(|e| (e as f64 * crate::allocator::USABLE_SHARE) as i64 - p.allocated_bps as i64);
        let mut audio: Vec<(u8, usize)> = p
            .outs
            .iter()
            .enumerate()
            .filter(|(_, o)| o.kind == TrackKind::Audio && o.state == OutState::Open)
            .map(|(i, o)| (crate::allocator::clinical_rank(o.label), i))
            .collect();
        audio.sort_unstable();
        for (_, i) in audio {
            let o = &mut p.outs[i];
            let rate = demands
                .iter()
                .find(|d| d.key == o.source)
                .and_then(|d| d.layers.first().copied())
                .unwrap_or(0) as i64;
            let fits = room.is_none_or(|r| r >= rate);
            // Not while the link queues: loss from a full queue is congestion, and redundancy
            // would add to it (a collapsing link's reports show 40-60 % loss while the lagging
            // estimate still has room: RED doubled the audio into it).
            let rearmed = o.red
                || o.red_off_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= RED_REARM);
            let red = lossy && !congested && o.red_pt.is_some() && fits && rearmed;
            if red {
                if let Some(r) = room.as_mut() {
                    *r -= rate;
                }
            }
            if red != o.red {
                info!(participant = %p.id, track = %o.track_id(), red, loss = ?p.subscriber.counters.link.loss_to_client, "audio redundancy");
                o.red = red;
                if !red {
                    o.red_off_at = Some(now);
                }
            }
            // The publisher's own redundancy toward a thin link: speech never (a queue that
            // empties for a moment must not get it back, or it refills at once), the
            // stethoscope only while it is given redundancy (the link loses without queueing:
            // random loss it repairs).
            let steth = o.label == consult_protocol::TrackLabel::Stethoscope;
            let strip = thin && !(steth && red);
            if strip != o.strip_red {
                info!(participant = %p.id, track = %o.track_id(), strip, "publisher's redundancy stripped");
                o.strip_red = strip;
            }
        }
    }

    /// Tell audio publishers how much loss their receivers see (their own uplink plus the
    /// worst downlink, smoothed), so their encoders add in-band FEC: libopus sends none unless
    /// told to expect loss; and the encoding (bitrate, frame duration) the thinnest
    /// receiver's downlink carries ([`consult_protocol::audio_steps`]). Loss is sent on a
    /// change of 2 points or more, at most every [`AUDIO_HINT_INTERVAL`]; a step down at once,
    /// a step up once the room for it has lasted [`crate::track::AUDIO_STEP_UP_HOLD`].
    fn update_audio_hints(&mut self, now: Instant) {
        let mut worst: HashMap<(u64, Mid), f32> = HashMap::new();
        let mut thinnest: HashMap<(u64, Mid), u64> = HashMap::new();
        for p in self.participants.values() {
            let link_loss = p.subscriber.counters.link.loss_to_client.unwrap_or(0.0);
            for o in p
                .outs
                .iter()
                .filter(|o| o.kind == TrackKind::Audio && o.state == OutState::Open)
            {
                // This track's own loss (its receiver reports) when known.
                let loss = o
                    .mid
                    .and_then(|m| p.subscriber.counters.egress_loss(m))
                    .unwrap_or(link_loss);
                let w = worst.entry(o.source).or_insert(0.0);
                *w = w.max(loss);
                // Only a link that shows it is thin (queueing, or reported low): an estimate
                // that is still ramping up at a join says nothing about the link.
                let thin = p.link_shown_thin(now);
                if let Some(mut link) = p.allocation_estimate_bps.filter(|_| thin) {
                    // Audio alone still queues: the link is thinner than the audio, whatever
                    // the estimate (it lags a drop by seconds): the thinnest step at once.
                    if p.gate.congested() && p.allocation_audio_only {
                        link = link.min(AUDIO_ONLY_QUEUEING_LINK_BPS);
                    }
                    let t = thinnest.entry(o.source).or_insert(u64::MAX);
                    *t = (*t).min(link);
                }
            }
        }
        for (key, p) in self.participants.iter_mut() {
            let up = p.publisher.counters.link.loss_from_client.unwrap_or(0.0);
            // The publisher's own uplink, when it loses: what gets through of all it sends is
            // what it carries (a physician behind the same thin link as its downlink).
            let uplink = (up >= UPLINK_LOSSY).then(|| {
                let sent: u64 = p
                    .tracks
                    .iter()
                    .flat_map(|t| t.layers.iter())
                    .map(|l| l.rate.bps(now))
                    .sum();
                (sent as f64 * f64::from(1.0 - up)) as u64
            });
            // No RED up an uplink too thin for video: it doubles the audio there.
            let redundancy = !p.uplink.paused();
            for t in p.tracks.iter_mut().filter(|t| t.kind == TrackKind::Audio) {
                let down = worst.get(&(*key, t.mid)).copied().unwrap_or(0.0);
                let sample = (up + down).clamp(0.0, 0.5);
                t.loss_ewma = t.loss_ewma * 0.8 + sample * 0.2;
                let pct = (t.loss_ewma * 100.0).round() as u8;
                let loss_due = match t.loss_hint {
                    None => pct > 0,
                    Some((last, at)) => {
                        (pct.abs_diff(last) >= 2 || (pct == 0) != (last == 0))
                            && now.saturating_duration_since(at) >= AUDIO_HINT_INTERVAL
                    }
                };
                let steps = consult_protocol::audio_steps::audio_steps(t.label);
                let link = match (thinnest.get(&(*key, t.mid)).copied(), uplink) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let step_changed = link.is_some_and(|link| t.audio_step.update(now, steps, link));
                let red_changed = t.redundancy_told != redundancy;
                t.redundancy_told = redundancy;
                if loss_due || step_changed || red_changed {
                    if loss_due {
                        t.loss_hint = Some((pct, now));
                    }
                    let step = t.audio_step.current().map(|i| steps[i]);
                    debug!(participant = %p.id, mid = %t.mid, pct, ?step, "publisher audio hint");
                    let _ = p.events.send(SfuEvent::PublisherAudio {
                        mid: t.mid.to_string(),
                        expected_loss_pct: t.loss_hint.map_or(pct, |h| h.0),
                        max_bitrate_bps: step.map(|s| s.max_bitrate_bps),
                        ptime_ms: step.map(|s| s.ptime_ms),
                        redundancy: Some(redundancy),
                    });
                }
            }
        }
    }

    /// Run the allocator on `estimate` (through the congestion gate) and aim str0m's
    /// estimator at what the result wants.
    fn allocate_estimate(
        &mut self,
        now: Instant,
        key: u64,
        estimate: u64,
        demands: &[TrackDemand<(u64, Mid)>],
        flowing: u64,
        wanted: u64,
    ) -> Option<crate::allocator::Allocation<(u64, Mid)>> {
        let p = self.participants.get_mut(&key)?;
        // str0m's estimate counts where the link shows queueing (see `congestion`).
        let raw_estimate = estimate;
        let rtt = p.subscriber.counters.link.rtt_ms;
        let loss = p.loss_to_client();
        let estimate = p
            .gate
            .effective_estimate(now, estimate, rtt, loss, flowing, wanted);
        if p.gate.congested() {
            p.queued_at = Some(now);
        }
        // Speech the link cannot carry, on its evidence (see `audio_shed`).
        let video_flowing = p
            .outs
            .iter()
            .any(|o| o.kind == TrackKind::Video && o.state == OutState::Open && o.forwarding());
        let speech = demands
            .iter()
            .filter(|d| d.label == consult_protocol::TrackLabel::Microphone)
            .count();
        // The audio's own loss (receiver reports per stream): the worst forwarded track's.
        let audio_loss = p
            .outs
            .iter()
            .filter(|o| o.kind == TrackKind::Audio && o.state == OutState::Open && o.forwarding())
            .filter_map(|o| o.mid.and_then(|m| p.subscriber.counters.egress_loss(m)))
            .reduce(f32::max)
            .or(loss);
        let link = crate::audio_shed::LinkView {
            audio_only: !video_flowing,
            queue_ms: p.gate.queue_ms(),
            rtt_ms: rtt,
            loss: audio_loss,
            may_step_up: p.gate.may_step_up(now),
        };
        let shed = p.shedder.update(now, link, speech);
        debug!(participant = %p.id, ?link, shed, "audio shedding");
        p.allocator.set_speech_shed(shed);
        // On a link reported low, video comes back only as the congestion gate's trial of a
        // step up (no queue for its hold, which grows after each trial that queues), not on
        // the estimate alone: a probe through a shaper's bucket reads 2-3x the link, and some
        // peers' estimates stay low on a link that has come back. And only once str0m's own
        // estimate (its probes in the throttle's free windows) has room for that step: at
        // 100 kbit/s it read 38-71 kbit/s, and each trial of the lowest video layer filled the
        // link's queue, 10-23 % of the audio lost for two seconds and the receiver's jitter
        // buffer raised for tens of seconds. Peers whose estimate cannot be trusted keep the
        // trial alone: without str0m's estimate (theirs is REMB, which some keep low on a link
        // that came back), or our webrtc-rs peers (they take audio retransmissions), whose
        // TWCC feedback leaves str0m's probes out and keeps the estimate low once the link is
        // back (the top layer never came back in `signaling/tests/bandwidth.rs`).
        let estimate_trusted = p.twcc_bps.is_some() && !p.audio_rtx;
        let room_for_step = !estimate_trusted
            || raw_estimate as f64 * crate::allocator::USABLE_SHARE >= p.next_step_bps as f64;
        p.allocator
            .set_video_resume(!p.low_link || (p.gate.may_step_up(now) && room_for_step));
        let allocation = p.allocator.allocate(now, estimate, demands);
        debug!(participant = %p.id, raw_estimate, flowing, estimate, ?rtt, ?demands, ?allocation, "allocation");
        p.allocated_bps = allocation.allocated_bps;
        p.next_step_bps = allocation.next_step_bps;
        p.allocation_estimate_bps = Some(estimate);
        p.allocation_audio_only = allocation.audio_only;
        // No padding (minimum 0): webrtc-rs peers leave str0m's probe packets out of their
        // TWCC feedback, which reads as loss, and on a thin link padding would queue ahead of
        // the audio. While the link shows a queue the desired rate is what flows (no probe
        // clusters into a full queue); on a thin link, the next step up only (a probe cluster
        // aimed at the full demand fills a 100 kbit/s queue for seconds); otherwise the full
        // demand, which str0m probes for.
        let desired = if p.gate.congested() {
            allocation.allocated_bps
        } else if p.tick_throttle.throttling() {
            // A thin link that does not queue now: str0m's timers are throttled but for a
            // free window every few seconds, the time for a probe (raising the desired rate
            // asks for one); see `padding_throttle`.
            match p.tick_throttle.in_free_window(now) {
                true => allocation.next_step_bps.max(2 * LINK_OK_BPS),
                false => allocation.allocated_bps,
            }
        } else if p.low_link {
            // A link reported low that does not queue: probe for one good enough to leave
            // the low mode (str0m probes at up to twice this; a cluster is a few kB).
            allocation.next_step_bps.max(2 * LINK_OK_BPS)
        } else if allocation.allocated_bps < THIN_LINK_BPS {
            allocation.next_step_bps
        } else {
            allocation.desired_bps
        };
        let targets = (0, desired);
        let differs = |a: u64, b: u64| a.abs_diff(b) * 10 > b.max(1);
        if differs(targets.0, p.bwe_targets.0) || differs(targets.1, p.bwe_targets.1) {
            p.bwe_targets = targets;
            p.subscriber.rtc.bwe().set_bitrate(
                Bitrate::bps(targets.0.min(targets.1)),
                Bitrate::bps(targets.1),
            );
            self.dirty.push((key, PeerTarget::Subscriber));
        }
        Some(allocation)
    }

    /// Tell the client when it enters or leaves audio-only mode or a low link.
    fn notify_bandwidth(&mut self, now: Instant, key: u64) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let Some(estimate) = p.estimate_bps() else {
            return;
        };
        // Low once under the threshold for LOW_LINK_AFTER; fine again above LINK_OK_BPS.
        let under = if p.low_link {
            estimate < LINK_OK_BPS
        } else {
            estimate < LOW_LINK_BPS
        };
        if !under {
            p.low_since = None;
        } else if p.low_since.is_none() {
            p.low_since = Some(now);
        }
        let low_link = p
            .low_since
            .is_some_and(|t| now.saturating_duration_since(t) >= LOW_LINK_AFTER);
        let audio_only = p.allocation_audio_only;
        // Compared by source every tick; the track ids are only formatted for a notice.
        let paused_now = p
            .outs
            .iter()
            .filter(|o| o.state == OutState::Open && !o.forwarding())
            .map(|o| o.source);
        let unchanged = paused_now.clone().eq(p.paused_notified.iter().copied());
        if audio_only != p.audio_only || low_link != p.low_link || !unchanged {
            p.audio_only = audio_only;
            p.low_link = low_link;
            p.paused_notified = paused_now.collect();
            let paused: Vec<String> = p
                .outs
                .iter()
                .filter(|o| o.state == OutState::Open && !o.forwarding())
                .map(|o| o.track_id())
                .collect();
            info!(participant = %p.id, estimate, audio_only, low_link, ?paused, "allocation mode");
            p.notify(SfuEvent::Bandwidth {
                audio_only,
                low_link,
                estimate_bps: estimate,
                paused,
            });
        }
        // While the link has shown it is thin: right after a drop, before the estimate says
        // low, str0m's padding (40-60 kbit/s on the wire) is what keeps the queue full; on the
        // low link after it, padding would take the room of the speech the allocator paused
        // (25-37 kbit/s measured). str0m's probes still find the link back in the throttle's
        // free windows. Not on a low link that never queued: one receiving little (audio only)
        // probes little, and its estimate stays low on a good link.
        // Only while no video is forwarded, unless the link queues now: video paced in bursts a
        // tick apart reads as queueing to str0m's delay-based estimator, which then sinks the
        // estimate on a link that came back (the top layer never returned in one run of five).
        // A client that takes audio retransmissions (our Rust peers) only while the link
        // queues: between the throttle's ticks, the resends it asks for would wait.
        let was = p.tick_throttle.throttling();
        let thin = p.gate.congested()
            || (!p.audio_rtx && p.allocation_audio_only && p.link_shown_thin(now));
        p.tick_throttle.set_thin(now, thin);
        if was != thin {
            info!(participant = %p.id, throttled = thin, "str0m timers toward a thin link");
        }
    }

    /// Ask a publisher for a keyframe on one layer of one of its video tracks, at most every
    /// 500 ms per layer.
    fn request_keyframe(
        &mut self,
        now: Instant,
        key: u64,
        mid: Mid,
        layer: usize,
        kind: KeyframeRequestKind,
    ) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let Some(t) = p.tracks.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        if t.kind != TrackKind::Video {
            return;
        }
        let Some(l) = t.layers.get_mut(layer) else {
            return;
        };
        // str0m drops RTCP queued before SRTP is up: hold the request until connected.
        if !p.publisher.connected {
            l.keyframe_pending = true;
            return;
        }
        if !l.take_keyframe_slot(now) {
            return;
        }
        if let Some(rx) = p.publisher.rtc.direct_api().stream_rx_by_mid(mid, l.rid) {
            rx.request_keyframe(kind);
            debug!(participant = %p.id, %mid, rid = ?l.rid, ssrc = %rx.ssrc(), ?kind, "keyframe requested");
            self.stats.keyframe_requests_sent += 1;
            self.dirty.push((key, PeerTarget::Publisher));
        } else {
            // No packet seen yet on this layer: retry on the next timer.
            l.keyframe_pending = true;
            l.last_keyframe_request = None;
        }
    }

    /// Poll every dirty peer until it has nothing more to say, handling what it says.
    fn drive(&mut self, now: Instant, key: PeerKey, tx: &mut impl Transmit) {
        self.dirty.push(key);
        self.drain(now, tx);
    }

    fn drain(&mut self, now: Instant, tx: &mut impl Transmit) {
        while let Some(key) = self.dirty.pop() {
            self.poll_peer(now, key, tx);
            let mut events = std::mem::take(&mut self.events);
            for (key, event) in events.drain(..) {
                self.handle_event(now, key, event);
            }
            self.events = events;
        }
    }

    fn poll_peer(&mut self, now: Instant, key: PeerKey, tx: &mut impl Transmit) {
        let Some(p) = self.participants.get_mut(&key.0) else {
            return;
        };
        let peer = match key.1 {
            PeerTarget::Publisher => &mut p.publisher,
            PeerTarget::Subscriber => &mut p.subscriber,
        };
        // str0m queues a written packet behind its pacer and asks for a timeout at `now`:
        // feeding it at once sends forwarded media in this turn rather than the next one
        // (which also spares a pass over every peer in `handle_timeout`). Bounded, in case a
        // peer keeps asking for `now`. Toward a thin link, only to flush media just written
        // or when the throttle allows a tick (see `padding_throttle`).
        let mut due_feeds = 4;
        if key.1 == PeerTarget::Subscriber && p.tick_throttle.throttling() {
            let wrote = std::mem::take(&mut p.media_written);
            if p.tick_throttle.may_tick(now) {
                p.tick_throttle.ticked(now);
            } else {
                // One feed sends what was written; a second would find the queues empty and
                // pad (audio is unpaced: it leaves no pacer debt that would hold padding back).
                due_feeds = usize::from(wrote);
            }
        }
        loop {
            match peer.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    if !p.stale_video.is_empty() && stale_video(&p.stale_video, &t.contents, now) {
                        self.stats.stale_video_dropped += 1;
                        continue;
                    }
                    // str0m only sends to addresses whose STUN checked out: learn them.
                    self.demux.learn(t.destination, key);
                    tx.send(t.destination, &t.contents);
                }
                Ok(Output::Timeout(t)) => {
                    peer.next_timeout = t;
                    if t <= now && due_feeds > 0 {
                        due_feeds -= 1;
                        if key.1 == PeerTarget::Subscriber {
                            feed_held(peer, &mut p.held_input, self.candidate_addr, &p.id);
                        }
                        if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                            debug!(participant = %p.id, "timeout rejected: {e}");
                        }
                        continue;
                    }
                    break;
                }
                Ok(Output::Event(e)) => self.events.push((key, e)),
                Err(e) => {
                    warn!(participant = %p.id, ?key, "peer failed: {e}");
                    peer.rtc.disconnect();
                    peer.next_timeout = Instant::now() + Duration::from_secs(3600);
                    break;
                }
            }
        }
    }

    fn handle_event(&mut self, now: Instant, key: PeerKey, event: Event) {
        match event {
            Event::RtpPacket(pkt) if key.1 == PeerTarget::Publisher => {
                self.forward(now, key.0, pkt)
            }
            Event::KeyframeRequest(req) if key.1 == PeerTarget::Subscriber => {
                let source = self
                    .participants
                    .get(&key.0)
                    .and_then(|p| p.outs.iter().find(|o| o.mid == Some(req.mid)))
                    .map(|o| (o.source, o.fwd.current().or(o.fwd.target())));
                if let Some(((src, mid), Some(layer))) = source {
                    self.request_keyframe(now, src, mid, layer, req.kind);
                }
            }
            Event::EgressBitrateEstimate(bwe) if key.1 == PeerTarget::Subscriber => {
                let Some(p) = self.participants.get_mut(&key.0) else {
                    return;
                };
                match bwe {
                    BweKind::Twcc { estimate, .. } => p.twcc_bps = Some(estimate.as_u64()),
                    BweKind::Remb { estimate, .. } => p.remb_bps = Some(estimate.as_u64()),
                    _ => {}
                }
                self.allocate(now, key.0);
            }
            Event::MediaIngressStats(s) => {
                if let Some(p) = self.participants.get_mut(&key.0) {
                    p.peer_mut(key.1).counters.on_ingress(&s);
                }
            }
            Event::MediaEgressStats(s) => {
                if let Some(p) = self.participants.get_mut(&key.0) {
                    p.peer_mut(key.1).counters.on_egress(&s);
                }
            }
            Event::PeerStats(s) => {
                if let Some(p) = self.participants.get_mut(&key.0) {
                    p.peer_mut(key.1).counters.on_peer(&s);
                }
            }
            Event::Connected => {
                if let Some(p) = self.participants.get_mut(&key.0) {
                    info!(participant = %p.id, target = ?key.1, "connected");
                    let peer = p.peer_mut(key.1);
                    peer.connected = true;
                    peer.dtls_up = true;
                    p.notify(SfuEvent::Connected(key.1));
                }
            }
            // ICE back after a loss (consent regained, or an ICE restart): DTLS is still up,
            // so str0m sends no second `Connected`.
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) => {
                if let Some(p) = self.participants.get_mut(&key.0) {
                    let peer = p.peer_mut(key.1);
                    if peer.dtls_up && !peer.connected {
                        peer.connected = true;
                        info!(participant = %p.id, target = ?key.1, "ICE reconnected");
                        p.notify(SfuEvent::Connected(key.1));
                    }
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                if let Some(p) = self.participants.get_mut(&key.0) {
                    info!(participant = %p.id, target = ?key.1, "ICE disconnected");
                    p.peer_mut(key.1).connected = false;
                    p.notify(SfuEvent::Disconnected(key.1));
                }
            }
            _ => {}
        }
    }

    /// The hot path: one RTP packet from a publisher to every subscriber of its track.
    fn forward(&mut self, now: Instant, key: u64, pkt: RtpPacket) {
        self.stats.rtp_in += 1;
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let Some((mid, rid)) = p
            .publisher
            .rtc
            .direct_api()
            .stream_rx(&pkt.header.ssrc)
            .map(|s| (s.mid(), s.rid()))
        else {
            return;
        };
        let Some(track) = p.tracks.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        let Some(layer) = track.layer_of(rid, now) else {
            return;
        };
        track.layers[layer]
            .rate
            .add(now, pkt.payload.len() + PACKET_OVERHEAD);
        let kind = track.kind;
        if kind == TrackKind::Audio {
            let ext = &pkt.header.ext_vals;
            track.note_voice(now, ext.audio_level, ext.voice_activity);
        }
        let simulcast = track.simulcast();
        let in_pt = pkt.header.payload_type;
        // The codec, and whether the packet is RED (RFC 2198) around it.
        let params = p.publisher.rtc.codec_config().params();
        let (in_spec, in_red) = match params.iter().find(|c| c.pt() == in_pt) {
            Some(c) => (Some(*c), false),
            None => (
                params.iter().find(|c| c.red() == Some(in_pt)).copied(),
                true,
            ),
        };
        let codec = in_spec.map(|c| c.spec().codec);
        // Audio as plain Opus, and as RED when some subscriber takes it (built once).
        // A publisher's RED also carries the packet before: stands in for it when it was lost
        // on the way, for subscribers that get plain Opus.
        let mut redundant: Option<crate::red::Redundant> = None;
        let (plain, mut red): (Arc<[u8]>, Option<Arc<[u8]>>) = if in_red {
            let Some((primary, before)) = crate::red::split(&pkt.payload) else {
                // Not valid RED: dropped (and counted), the stream goes on.
                self.stats.rtp_malformed_red += 1;
                return;
            };
            redundant = before;
            (Arc::from(primary), Some(pkt.payload.clone()))
        } else {
            (pkt.payload.clone(), None)
        };
        if !track.taps.is_empty() {
            if track.tap_layer.is_none() {
                // Recorders get one layer: the best one, once the rates are known.
                track.tap_layer = track
                    .top_layer(now)
                    .filter(|i| track.layers[*i].rate.settled_bps(now).is_some());
            }
            if track.tap_layer == Some(layer) {
                // Recorders write plain Opus (a publisher's RED stripped to its primary). A
                // full recorder loses this packet (it fills the gap); a closed one is dropped.
                let copy = TapPacket {
                    seq: *pkt.seq_no,
                    timestamp: pkt.header.timestamp,
                    marker: pkt.header.marker,
                    payload: plain.clone(),
                };
                track.taps.retain(|t| {
                    !matches!(
                        t.try_send(copy.clone()),
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(_))
                    )
                });
            }
        }
        self.fanout.clear();
        self.fanout.extend_from_slice(&track.subscribers);
        let previous = if kind == TrackKind::Audio && !in_red {
            track.red_prev.replace(crate::red::Previous {
                seq: pkt.seq_no,
                timestamp: pkt.header.timestamp,
                payload: pkt.payload.clone(),
            })
        } else {
            None
        };
        // Simulcast VP8: the descriptor's picture ids are rewritten across layer switches.
        let vp8 = if simulcast && codec == Some(Codec::Vp8) {
            Vp8Descriptor::parse(&pkt.payload).ok()
        } else {
            None
        };
        let source = SourcePacket {
            layer,
            seq: pkt.seq_no,
            timestamp: pkt.header.timestamp,
            vp8: vp8.map(|d| Vp8Ids {
                picture_id: d.picture_id(),
                tl0_pic_idx: d.tl0_pic_idx(),
                key_idx: d.key_idx(),
            }),
        };
        // Parsed at most once, and only when a subscriber waits for a keyframe.
        let mut keyframe: Option<bool> = None;

        for &sub in &self.fanout {
            let Some(s) = self.participants.get_mut(&sub) else {
                continue;
            };
            let Some(out) = s
                .outs
                .iter_mut()
                .find(|o| o.source == (key, mid) && o.state == OutState::Open)
            else {
                continue;
            };
            let Some(out_mid) = out.mid else { continue };
            let recover = redundant.is_some() && out.fwd.lost_just_before(layer, pkt.seq_no);
            // Audio resumes on any packet: each one decodes on its own.
            let Some(rewritten) = out.fwd.accept(now, source, || {
                *keyframe.get_or_insert_with(|| {
                    kind == TrackKind::Audio
                        || codec.is_some_and(|c| starts_keyframe(c, &pkt.payload))
                })
            }) else {
                continue;
            };
            let Some(spec) = in_spec else { continue };
            let out_pt = match out.pt_map.iter().find(|(i, _)| *i == spec.pt()) {
                Some((_, o)) => *o,
                None => {
                    let sub_params = s.subscriber.rtc.codec_config().params();
                    let Some(o) = map_payload_type(&[spec], sub_params, spec.pt()) else {
                        continue;
                    };
                    out.pt_map.push((spec.pt(), o));
                    // Whether the subscriber negotiated RED for this codec (str0m keeps the
                    // RED payload type on the codec only if the answer had it).
                    out.red_pt = sub_params
                        .iter()
                        .find(|c| c.pt() == o)
                        .and_then(|c| c.red());
                    o
                }
            };
            // Audio: RED to a subscriber that takes it now, plain Opus otherwise.
            // A publisher's own RED goes to every subscriber that negotiated it, unless its
            // link queues (then only the stethoscope keeps it).
            let use_red = kind == TrackKind::Audio && ((in_red && !out.strip_red) || out.red);
            let sent_red = use_red && out.red_pt.is_some();
            let (out_pt, payload) = match out.red_pt.filter(|_| use_red) {
                Some(red_pt) => {
                    let payload = red
                        .get_or_insert_with(|| {
                            crate::red::encode(
                                *out_pt,
                                pkt.seq_no,
                                pkt.header.timestamp,
                                &plain,
                                previous.as_ref(),
                            )
                        })
                        .clone();
                    (red_pt, payload)
                }
                None => (out_pt, plain.clone()),
            };
            // Plain Opus after a packet lost upstream: send the copy the RED carried first.
            let recovered =
                redundant
                    .filter(|_| recover && !sent_red)
                    .and_then(|(offset, block)| {
                        let before = SourcePacket {
                            layer,
                            seq: SeqNo::from((*pkt.seq_no).saturating_sub(1)),
                            timestamp: pkt.header.timestamp.wrapping_sub(offset),
                            vp8: None,
                        };
                        out.fwd
                            .accept(now, before, || false)
                            .map(|r| (r, Arc::<[u8]>::from(block)))
                    });
            let mut api = s.subscriber.rtc.direct_api();
            let Some(stream) = api.stream_tx_by_mid(out_mid, None) else {
                continue;
            };
            let ext = ExtensionValues {
                audio_level: pkt.header.ext_vals.audio_level,
                voice_activity: pkt.header.ext_vals.voice_activity,
                video_orientation: pkt.header.ext_vals.video_orientation,
                ..Default::default()
            };
            if let Some((r, block)) = recovered {
                stream.write_rtp(
                    RtpWrite::new(out_pt, r.seq, r.timestamp, pkt.timestamp, block)
                        .ext_vals(ext.clone()),
                );
                self.stats.rtp_forwarded += 1;
                self.stats.red_recovered += 1;
            }
            let mut write = RtpWrite::new(
                out_pt,
                rewritten.seq,
                rewritten.timestamp,
                pkt.timestamp,
                payload,
            )
            .marker(pkt.header.marker)
            .ext_vals(ext)
            // Audio only where its stream has an RTX SSRC (see `audio_rtx`).
            .nackable(kind == TrackKind::Video || stream.rtx().is_some());
            if let (Some(ids), Some(d)) = (rewritten.vp8, vp8) {
                if let Some(patch) = vp8_patch(&d, ids) {
                    write = write.vp8_patch(patch);
                }
            }
            stream.write_rtp(write);
            s.media_written = true;
            self.stats.rtp_forwarded += 1;
            self.dirty.push((sub, PeerTarget::Subscriber));
        }
    }
}

/// The descriptor patch writing `ids` into a VP8 payload described by `d`, keeping its
/// 7- or 15-bit picture id form.
fn vp8_patch(d: &Vp8Descriptor, ids: Vp8Ids) -> Option<str0m::rtp::Vp8Patch> {
    let build = |pid_mask: u16| {
        let mut b = d.patch();
        if let Some(v) = ids.picture_id {
            b = b.picture_id(v & pid_mask);
        }
        if let Some(v) = ids.tl0_pic_idx {
            b = b.tl0_pic_idx(v);
        }
        if let Some(v) = ids.key_idx {
            b = b.key_idx(v);
        }
        b.build()
    };
    build(0x7fff).or_else(|_| build(0x7f)).ok()
}

/// Mark every subscriber copy whose source matches for removal at the next negotiation.
fn stop_outs(outs: &mut Vec<TrackOut>, matches: impl Fn((u64, Mid)) -> bool) {
    outs.retain_mut(|o| {
        if !matches(o.source) {
            return true;
        }
        match o.state {
            // Never offered: just forget it.
            OutState::ToOpen => false,
            OutState::Negotiating | OutState::Open => {
                o.state = OutState::ToStop;
                true
            }
            OutState::ToStop | OutState::Stopping => true,
        }
    });
}

/// After an ICE restart the peer's local ufrag changed: STUN requests now name the new one.
/// Learned addresses stay (the path may well be the same).
fn sync_ufrag(demux: &mut Demux, peer: &mut Peer, key: PeerKey) -> bool {
    let ufrag = peer.rtc.direct_api().local_ice_credentials().ufrag;
    if ufrag == peer.ufrag {
        return false;
    }
    info!(old = %peer.ufrag, new = %ufrag, "ICE credentials changed");
    demux.rename_peer(&peer.ufrag, ufrag.clone(), key);
    peer.ufrag = ufrag;
    true
}

/// Hands what was held for a throttled subscriber connection to str0m, each datagram at the
/// time it arrived. str0m reads the round trip from when it handles feedback: fed at the tick,
/// a hold of up to `MIN_GAP` read as a queue to the congestion gate, which kept the throttle
/// on (a loop: a physician on loopback was held at audio only for 20 s). Called before
/// anything else is fed to that connection, so that its clock never goes back. No extra
/// padding: str0m pads only when its queues are empty, and the first padding packet queued
/// fills them until the connection is polled.
fn feed_held(
    peer: &mut Peer,
    held: &mut Vec<(Instant, SocketAddr, Vec<u8>)>,
    destination: SocketAddr,
    id: &str,
) {
    for (at, source, buf) in held.drain(..) {
        let Some(input) = udp_input(at, source, destination, &buf) else {
            continue;
        };
        if let Err(e) = peer.rtc.handle_input(input) {
            debug!(participant = %id, "input rejected: {e}");
        }
    }
}

/// A datagram read from the UDP socket, as str0m takes it (`None`: not one it can parse).
fn udp_input(
    now: Instant,
    source: SocketAddr,
    destination: SocketAddr,
    buf: &[u8],
) -> Option<Input<'_>> {
    let contents = buf.try_into().ok()?;
    Some(Input::Receive(
        now,
        Receive {
            proto: Protocol::Udp,
            source,
            destination,
            contents,
        },
    ))
}

/// Whether `datagram` is an RTP packet of a video copy paused less than
/// [`STALE_AFTER_PAUSE`] ago (its header is in the clear under SRTP).
fn stale_video(paused: &[(u32, Instant)], datagram: &[u8], now: Instant) -> bool {
    let [first, second, _, _, _, _, _, _, a, b, c, d, ..] = *datagram else {
        return false;
    };
    // RTP (version 2), not RTCP (payload types 72-79 with the marker bit: 200-207).
    if first >> 6 != 2 || (72..=79).contains(&(second & 0x7f)) {
        return false;
    }
    let ssrc = u32::from_be_bytes([a, b, c, d]);
    paused
        .iter()
        .any(|(s, at)| *s == ssrc && now.saturating_duration_since(*at) < STALE_AFTER_PAUSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(pt: u8, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 1, 0, 0, 0, 0];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0; 20]);
        p
    }

    #[test]
    fn only_rtp_of_a_copy_paused_moments_ago_is_stale() {
        let t = Instant::now();
        let paused = [(0x1234_5678, t)];
        assert!(stale_video(&paused, &rtp(96, 0x1234_5678), t));
        assert!(stale_video(
            &paused,
            &rtp(96 | 0x80, 0x1234_5678),
            t + Duration::from_secs(2)
        ));
        // Another stream, RTCP (a sender report has its SSRC elsewhere), too short, too late.
        assert!(!stale_video(&paused, &rtp(97, 0x1234_5679), t));
        assert!(!stale_video(&paused, &rtp(200, 0x1234_5678), t));
        assert!(!stale_video(&paused, &[0x80, 96, 0, 1], t));
        assert!(!stale_video(
            &paused,
            &rtp(96, 0x1234_5678),
            t + STALE_AFTER_PAUSE
        ));
    }
}
