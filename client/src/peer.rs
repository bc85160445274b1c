//! webrtc-rs peer connections set up the way the engine expects.

use crate::{ClientEvent, Inner, RemoteTrack};
use anyhow::anyhow;
use consult_protocol::{TrackKind, TrackLabel};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use webrtc::api::interceptor_registry::configure_twcc_receiver_only;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::nack::generator::Generator;
use webrtc::interceptor::nack::responder::Responder;
use webrtc::interceptor::registry::Registry;
use webrtc::interceptor::report::receiver::ReceiverReport;
use webrtc::interceptor::report::sender::SenderReport;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::{RTCPFeedback, RTCRtpTransceiver, RTCRtpTransceiverInit};
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

const PT_OPUS: u8 = 111;
/// RED around Opus (the payload type str0m and browsers use).
pub const PT_RED: u8 = 63;
/// Opus retransmissions (the SFU's `audio_rtx::PT_OPUS_RTX`).
const PT_OPUS_RTX: u8 = 112;
const PT_VP8: u8 = 96;
const PT_VP8_RTX: u8 = 97;

fn media_engine(red: bool) -> anyhow::Result<MediaEngine> {
    let mut m = MediaEngine::default();
    if red {
        // Listed before Opus: the preferred audio format when the SFU offers it.
        m.register_codec(
            RTCRtpCodecParameters {
                capability: RTCRtpCodecCapability {
                    mime_type: "audio/red".to_owned(),
                    clock_rate: 48000,
                    channels: 2,
                    sdp_fmtp_line: format!("{PT_OPUS}/{PT_OPUS}"),
                    rtcp_feedback: vec![],
                },
                payload_type: PT_RED,
                ..Default::default()
            },
            RTPCodecType::Audio,
        )?;
    }
    m.register_codec(
        RTCRtpCodecParameters {
            capability: RTCRtpCodecCapability {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                rtcp_feedback: vec![],
            },
            payload_type: PT_OPUS,
            ..Default::default()
        },
        RTPCodecType::Audio,
    )?;
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    m.register_codec(
        RTCRtpCodecParameters {
            capability: RTCRtpCodecCapability {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![
                    fb("goog-remb", ""),
                    fb("ccm", "fir"),
                    fb("nack", ""),
                    fb("nack", "pli"),
                ],
            },
            payload_type: PT_VP8,
            ..Default::default()
        },
        RTPCodecType::Video,
    )?;
    m.register_codec(
        RTCRtpCodecParameters {
            capability: RTCRtpCodecCapability {
                mime_type: "video/rtx".to_owned(),
                clock_rate: 90000,
                channels: 0,
                sdp_fmtp_line: format!("apt={PT_VP8}"),
                rtcp_feedback: vec![],
            },
            payload_type: PT_VP8_RTX,
            ..Default::default()
        },
        RTPCodecType::Video,
    )?;
    // Opus retransmissions (RFC 4588), which our SFU offers to peers that take them: on a
    // thin lossy link a resent packet still makes its playout, where RED does not fit.
    m.register_codec(
        RTCRtpCodecParameters {
            capability: RTCRtpCodecCapability {
                mime_type: "audio/rtx".to_owned(),
                clock_rate: 48000,
                channels: 0,
                sdp_fmtp_line: format!("apt={PT_OPUS}"),
                rtcp_feedback: vec![],
            },
            payload_type: PT_OPUS_RTX,
            ..Default::default()
        },
        RTPCodecType::Audio,
    )?;
    // Simulcast layers are told apart by the rid header extension (with the mid's).
    for uri in [
        webrtc::sdp::extmap::SDES_MID_URI,
        webrtc::sdp::extmap::SDES_RTP_STREAM_ID_URI,
    ] {
        m.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            RTPCodecType::Video,
            None,
        )?;
    }
    Ok(m)
}

/// Simulcast layers a publisher sends, lowest first, and each one's share of the track's
/// bitrate (as browsers do: quarter and half resolution).
pub const SIMULCAST_LAYERS: [(&str, u64, u64); 3] = [("q", 1, 10), ("h", 1, 3), ("f", 1, 1)];

/// How often the NACK generator looks for missing packets (webrtc-rs's default: 100 ms). A
/// loss is asked for at the next tick; `nack_limit` spaces the repeats of one request.
const NACK_INTERVAL: Duration = Duration::from_millis(20);

/// NACK and PLI feedback for video, NACK for audio (Opus retransmissions: see the audio
/// `rtx` codec), the NACK responder for what we send, and a generator ticking every
/// [`NACK_INTERVAL`]: on a 100 ms link a retransmitted audio packet has little time to spare.
fn configure_nack(mut registry: Registry, m: &mut MediaEngine) -> Registry {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    m.register_feedback(fb("nack", ""), RTPCodecType::Video);
    m.register_feedback(fb("nack", "pli"), RTPCodecType::Video);
    m.register_feedback(fb("nack", ""), RTPCodecType::Audio);
    registry.add(Box::new(Responder::builder()));
    registry.add(Box::new(Generator::builder().with_interval(NACK_INTERVAL)));
    registry
}

/// How often our peers send RTCP receiver reports.
const RECEIVER_REPORT_INTERVAL: Duration = Duration::from_millis(250);

pub async fn new_peer_connection(
    rtx_repair: bool,
    ice_failed_after: Option<std::time::Duration>,
    red: bool,
) -> anyhow::Result<Arc<RTCPeerConnection>> {
    let mut m = media_engine(red)?;
    let mut registry = Registry::new();
    if rtx_repair {
        // First, so it sits next to the network: see `rtx.rs`.
        registry.add(Box::new(crate::rtx::RtxRepairBuilder));
    }
    // Next to the network too, below the NACK generator: see `nack_limit.rs`.
    registry.add(Box::new(crate::nack_limit::NackLimitBuilder));
    // Below the receiver-report interceptor: one report packet per tick, see `rr_merge.rs`.
    registry.add(Box::new(crate::rr_merge::RrMergeBuilder));
    // webrtc-rs's defaults, but NACKs for audio too and sooner, and receiver reports four
    // times a second (default: one): the SFU reads the round-trip time from them, its signal
    // of a queue building on the link.
    let mut registry = configure_nack(registry, &mut m);
    registry.add(Box::new(
        ReceiverReport::builder().with_interval(RECEIVER_REPORT_INTERVAL),
    ));
    registry.add(Box::new(SenderReport::builder()));
    let registry = configure_twcc_receiver_only(registry, &mut m)?;
    let mut s = SettingEngine::default();
    s.set_include_loopback_candidate(true);
    s.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    s.set_network_types(vec![NetworkType::Udp4, NetworkType::Udp6]);
    if let Some(failed) = ice_failed_after {
        // Disconnected at half the time, consent checks four times as often.
        s.set_ice_timeouts(Some(failed / 2), Some(failed), Some(failed / 4));
    }
    let api = APIBuilder::new()
        .with_media_engine(m)
        .with_interceptor_registry(registry)
        .with_setting_engine(s)
        .build();
    Ok(Arc::new(
        api.new_peer_connection(RTCConfiguration::default()).await?,
    ))
}

/// A track this client publishes.
pub struct LocalTrack {
    pub label: TrackLabel,
    pub kind: TrackKind,
    /// Mid in the publisher offer (set once the offer is made).
    pub mid: String,
    pub track: Arc<TrackLocalStaticRTP>,
    pub rtp: Arc<RTCRtpTransceiver>,
    clock_rate: u32,
    /// PLI and FIR received from the SFU for this track.
    pub keyframe_requests: Arc<AtomicU64>,
    /// Simulcast: every layer, lowest first (the first is `track`); empty for a plain track.
    pub layers: Vec<SimulcastLayer>,
    /// Audio: the loss the SFU says receivers see (percent), for the encoder's in-band FEC
    /// ([`crate::audio::AudioEncoder::set_expected_loss`]).
    pub expected_loss_pct: Arc<std::sync::atomic::AtomicU8>,
    /// Audio sent as RED: [`LocalTrack::send_synthetic`] wraps each payload with the previous.
    pub red: bool,
}

/// One simulcast encoding of a published track.
pub struct SimulcastLayer {
    pub rid: String,
    pub track: Arc<TrackLocalStaticRTP>,
    /// Share of the track's bitrate: numerator, denominator.
    pub share: (u64, u64),
    /// PLI and FIR received for this layer.
    pub keyframe_requests: Arc<AtomicU64>,
    /// Sent (true) or paused on the SFU's hint (nobody receives it): a paused layer sends
    /// nothing, and starts again on a keyframe.
    pub active: Arc<AtomicBool>,
    /// Held back by the publisher itself whatever the hints say (as a browser drops a layer
    /// its uplink cannot carry).
    pub held: Arc<AtomicBool>,
}

impl LocalTrack {
    /// Write one RTP packet (SSRC and payload type are set by the connection).
    pub async fn write(&self, packet: &webrtc::rtp::packet::Packet) -> anyhow::Result<()> {
        self.track.write_rtp(packet).await?;
        Ok(())
    }

    /// Send encoded frames (e.g. Opus packets) one per `interval`, in real time. `None` frames
    /// (DTX) are not sent but advance the RTP clock. Returns how many packets were written.
    pub fn send_frames(
        &self,
        frames: Vec<Option<Vec<u8>>>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<u32> {
        let track = self.track.clone();
        let ticks = (u64::from(self.clock_rate) * interval.as_micros() as u64 / 1_000_000) as u32;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let (mut sent, mut seq, mut gap) = (0u32, 0u16, true);
            for (i, frame) in frames.into_iter().enumerate() {
                tick.tick().await;
                let Some(payload) = frame else {
                    gap = true;
                    continue;
                };
                let pkt = webrtc::rtp::packet::Packet {
                    header: webrtc::rtp::header::Header {
                        version: 2,
                        // RFC 7587: the marker flags the first packet after a DTX gap.
                        marker: gap,
                        sequence_number: seq,
                        timestamp: (i as u32).wrapping_mul(ticks),
                        ..Default::default()
                    },
                    payload: payload.into(),
                };
                gap = false;
                seq = seq.wrapping_add(1);
                if track.write_rtp(&pkt).await.is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    }

    /// Send `count` synthetic packets (see [`crate::synthetic`]) every `interval`, tagged `tag`.
    /// Returns how many were written.
    pub fn send_synthetic(
        &self,
        tag: u32,
        count: u32,
        interval: Duration,
        size: usize,
    ) -> tokio::task::JoinHandle<u32> {
        let track = self.track.clone();
        let kind = self.kind;
        let red = self.red;
        let ticks_per_packet =
            (u64::from(self.clock_rate) * interval.as_micros() as u64 / 1_000_000) as u32;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = 0;
            let mut previous: Option<Vec<u8>> = None;
            for i in 0..count {
                tick.tick().await;
                let mut payload =
                    crate::synthetic::make_payload(kind, tag, i, crate::synthetic::now_us(), size);
                if red {
                    let primary = payload;
                    payload = crate::red::encode(
                        PT_OPUS,
                        &primary,
                        previous.as_deref().map(|p| (ticks_per_packet, p)),
                    );
                    previous = Some(primary);
                }
                let pkt = webrtc::rtp::packet::Packet {
                    header: webrtc::rtp::header::Header {
                        version: 2,
                        marker: true,
                        sequence_number: i as u16,
                        timestamp: i.wrapping_mul(ticks_per_packet),
                        ..Default::default()
                    },
                    payload: payload.into(),
                };
                if track.write_rtp(&pkt).await.is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    }
}

/// How a synthetic video sender behaves: like an encoder at a target rate.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticVideo {
    pub tag: u32,
    pub bitrate_bps: u64,
    pub fps: u32,
    pub duration: Duration,
    /// A keyframe at least this often (and whenever the SFU asks for one).
    pub keyframe_interval: Duration,
}

/// What a synthetic video sender sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct VideoSent {
    pub packets: u32,
    pub frames: u32,
    pub keyframes: u32,
}

/// Largest synthetic video packet payload.
const VIDEO_PACKET_BYTES: usize = 1000;

impl LocalTrack {
    /// Send synthetic video frames in real time: each frame's bytes split into packets (the
    /// last with the marker bit), a keyframe four times the size of an interframe, sent on
    /// each keyframe request from the SFU and every `keyframe_interval`. Each packet is a
    /// synthetic payload with a packet counter (see [`crate::synthetic`]).
    ///
    /// A simulcast track sends every layer at its share of `v.bitrate_bps`, each with its own
    /// keyframes; layer `i`'s packets carry the tag [`crate::synthetic::layer_tag`]`(tag, i)`.
    pub fn send_synthetic_video(&self, v: SyntheticVideo) -> tokio::task::JoinHandle<VideoSent> {
        if self.layers.is_empty() {
            return synthetic_video(
                self.track.clone(),
                self.keyframe_requests.clone(),
                None,
                self.clock_rate,
                v,
            );
        }
        let senders: Vec<_> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let layer = SyntheticVideo {
                    tag: crate::synthetic::layer_tag(v.tag, i as u8),
                    bitrate_bps: v.bitrate_bps * l.share.0 / l.share.1.max(1),
                    ..v
                };
                synthetic_video(
                    l.track.clone(),
                    l.keyframe_requests.clone(),
                    Some((l.active.clone(), l.held.clone())),
                    self.clock_rate,
                    layer,
                )
            })
            .collect();
        tokio::spawn(async move {
            let mut total = VideoSent::default();
            for s in senders {
                if let Ok(sent) = s.await {
                    total.packets += sent.packets;
                    total.frames += sent.frames;
                    total.keyframes += sent.keyframes;
                }
            }
            total
        })
    }
}

/// Send synthetic video on one encoding (see [`LocalTrack::send_synthetic_video`]).
fn synthetic_video(
    track: Arc<TrackLocalStaticRTP>,
    requests: Arc<AtomicU64>,
    switches: Option<(Arc<AtomicBool>, Arc<AtomicBool>)>,
    clock_rate: u32,
    v: SyntheticVideo,
) -> tokio::task::JoinHandle<VideoSent> {
    let ticks = clock_rate / v.fps.max(1);
    tokio::spawn(async move {
        let interval = Duration::from_secs(1) / v.fps.max(1);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let frame_count = (v.duration.as_micros() / interval.as_micros().max(1)) as u32;
        // Keyframes count four interframes: keep the average at the target rate.
        let per_interval = v.keyframe_interval.as_micros() / interval.as_micros().max(1);
        let frames_per_key = per_interval.max(1) as u64;
        let delta_bytes = (v.bitrate_bps / 8 * frames_per_key
            / (u64::from(v.fps.max(1)) * (frames_per_key + 3)))
            .max(60) as usize;
        let mut sent = VideoSent::default();
        let (mut seq, mut counter) = (0u16, 0u32);
        let mut last_key: Option<tokio::time::Instant> = None;
        let mut seen_requests = requests.load(Ordering::Relaxed);
        for frame in 0..frame_count {
            let now = tick.tick().await;
            let sending = switches.as_ref().is_none_or(|(active, held)| {
                active.load(Ordering::Relaxed) && !held.load(Ordering::Relaxed)
            });
            if !sending {
                // Paused: the next frame sent is a keyframe.
                last_key = None;
                continue;
            }
            let asked = requests.load(Ordering::Relaxed);
            let key =
                asked != seen_requests || last_key.is_none_or(|t| now - t >= v.keyframe_interval);
            seen_requests = asked;
            if key {
                last_key = Some(now);
                sent.keyframes += 1;
            }
            let bytes = if key { delta_bytes * 4 } else { delta_bytes };
            let packets = bytes.div_ceil(VIDEO_PACKET_BYTES);
            for i in 0..packets {
                let size = bytes / packets;
                let payload = crate::synthetic::make_video_payload(
                    v.tag,
                    counter,
                    crate::synthetic::now_us(),
                    size,
                    i == 0,
                    key,
                );
                let pkt = webrtc::rtp::packet::Packet {
                    header: webrtc::rtp::header::Header {
                        version: 2,
                        marker: i + 1 == packets,
                        sequence_number: seq,
                        timestamp: frame.wrapping_mul(ticks),
                        ..Default::default()
                    },
                    payload: payload.into(),
                };
                seq = seq.wrapping_add(1);
                counter += 1;
                if track.write_rtp(&pkt).await.is_ok() {
                    sent.packets += 1;
                }
            }
            sent.frames += 1;
        }
        sent
    })
}

/// Add a track to publish: Opus for audio labels, VP8 for video ones, as simulcast layers
/// ([`SIMULCAST_LAYERS`]) when `simulcast` is set for a video label.
///
/// With `red`, audio goes out as RED (RFC 2198): each packet also carries the previous one.
pub async fn add_local_track(
    pc: &Arc<RTCPeerConnection>,
    label: TrackLabel,
    simulcast: bool,
    red: bool,
) -> anyhow::Result<LocalTrack> {
    let kind = label.kind();
    let red = red && kind == TrackKind::Audio;
    let (mime, clock_rate, channels) = match kind {
        TrackKind::Audio if red => ("audio/red", 48000, 2),
        TrackKind::Audio => (MIME_TYPE_OPUS, 48000, 2),
        TrackKind::Video => (MIME_TYPE_VP8, 90000, 0),
    };
    let capability = RTCRtpCodecCapability {
        mime_type: mime.to_owned(),
        clock_rate,
        channels,
        sdp_fmtp_line: if red {
            format!("{PT_OPUS}/{PT_OPUS}")
        } else {
            String::new()
        },
        ..Default::default()
    };
    let simulcast = simulcast && kind == TrackKind::Video;
    let mut layers = Vec::new();
    if simulcast {
        for (rid, num, den) in SIMULCAST_LAYERS {
            layers.push(SimulcastLayer {
                rid: rid.to_owned(),
                track: Arc::new(TrackLocalStaticRTP::new_with_rid(
                    capability.clone(),
                    label.as_str().to_owned(),
                    rid.to_owned(),
                    "consult".to_owned(),
                )),
                share: (num, den),
                keyframe_requests: Arc::new(AtomicU64::new(0)),
                active: Arc::new(AtomicBool::new(true)),
                held: Arc::new(AtomicBool::new(false)),
            });
        }
    }
    let track = match layers.first() {
        Some(l) => l.track.clone(),
        None => Arc::new(TrackLocalStaticRTP::new(
            capability,
            label.as_str().to_owned(),
            "consult".to_owned(),
        )),
    };
    let transceiver = pc
        .add_transceiver_from_track(
            track.clone() as Arc<dyn TrackLocal + Send + Sync>,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                send_encodings: vec![],
            }),
        )
        .await?;
    // RTCP for this sender must be read for the interceptors (NACK responder, reports) to run;
    // keyframe requests are counted for the user (per layer with simulcast).
    let sender = transceiver.sender().await;
    for l in layers.iter().skip(1) {
        sender
            .add_encoding(l.track.clone() as Arc<dyn TrackLocal + Send + Sync>)
            .await?;
    }
    let keyframe_requests = Arc::new(AtomicU64::new(0));
    let readers: Vec<(Option<String>, Arc<AtomicU64>)> = if layers.is_empty() {
        vec![(None, keyframe_requests.clone())]
    } else {
        layers
            .iter()
            .map(|l| (Some(l.rid.clone()), l.keyframe_requests.clone()))
            .collect()
    };
    for (rid, layer_counter) in readers {
        let sender = sender.clone();
        let total = keyframe_requests.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            loop {
                let read = match &rid {
                    Some(rid) => sender.read_simulcast(&mut buf, rid).await,
                    None => sender.read(&mut buf).await,
                };
                let Ok((packets, _)) = read else { break };
                for p in packets {
                    let any = p.as_any();
                    if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                        layer_counter.fetch_add(1, Ordering::Relaxed);
                        if rid.is_some() {
                            total.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
    Ok(LocalTrack {
        label,
        kind,
        mid: String::new(),
        track,
        rtp: transceiver,
        clock_rate,
        keyframe_requests,
        layers,
        expected_loss_pct: Arc::default(),
        red,
    })
}

pub fn mid_of_sender(transceiver: &Arc<RTCRtpTransceiver>) -> anyhow::Result<String> {
    transceiver
        .mid()
        .map(|m| m.to_string())
        .ok_or_else(|| anyhow!("transceiver has no mid after the offer"))
}

/// Route incoming tracks to the user, labelled from the latest subscriber offer.
pub fn on_remote_track(
    pc: &Arc<RTCPeerConnection>,
    inner: Arc<Inner>,
    events: mpsc::UnboundedSender<ClientEvent>,
) {
    pc.on_track(Box::new(move |track, _receiver, transceiver| {
        let inner = inner.clone();
        let events = events.clone();
        Box::pin(async move {
            let Some(mid) = transceiver.mid() else { return };
            let info = inner
                .subscribed
                .lock()
                .expect("lock")
                .get(mid.as_str())
                .cloned();
            match info {
                Some(info) => {
                    let _ = events.send(ClientEvent::Track(RemoteTrack { info, track }));
                }
                None => tracing::warn!(%mid, "track on an m-line the server did not describe"),
            }
        })
    }));
}

/// Answer a subscriber offer; returns the answer SDP (all candidates gathered).
pub async fn answer(pc: &Arc<RTCPeerConnection>, offer: String) -> anyhow::Result<String> {
    pc.set_remote_description(RTCSessionDescription::offer(offer)?)
        .await?;
    let answer = pc.create_answer(None).await?;
    set_local_gathered(pc, answer).await
}

/// Make an offer and set it; returns its SDP (all candidates gathered).
pub async fn offer(
    pc: &Arc<RTCPeerConnection>,
    options: Option<webrtc::peer_connection::offer_answer_options::RTCOfferOptions>,
) -> anyhow::Result<String> {
    let offer = pc.create_offer(options).await?;
    set_local_gathered(pc, offer).await
}

/// Set a local description and wait for ICE gathering to end (no trickle): the SDP returned
/// carries every candidate.
async fn set_local_gathered(
    pc: &Arc<RTCPeerConnection>,
    description: RTCSessionDescription,
) -> anyhow::Result<String> {
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(description).await?;
    let _ = gathered.recv().await;
    pc.local_description()
        .await
        .map(|d| d.sdp)
        .ok_or_else(|| anyhow!("no local description"))
}

/// Point every remote candidate at `via` (a relay), if set.
pub fn rewrite_candidates(sdp: &str, via: Option<SocketAddr>) -> String {
    let Some(via) = via else {
        return sdp.to_owned();
    };
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("a=candidate:") {
            let mut fields: Vec<String> = line.trim_end().split(' ').map(str::to_owned).collect();
            if fields.len() > 5 {
                fields[4] = via.ip().to_string();
                fields[5] = via.port().to_string();
            }
            out.push_str(&fields.join(" "));
            out.push_str("\r\n");
        } else {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_rewritten() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\na=mid:0\r\n";
        let out = rewrite_candidates(sdp, Some("127.0.0.1:4242".parse().unwrap()));
        assert!(out.contains("a=candidate:1 1 udp 2130706431 127.0.0.1 4242 typ host\r\n"));
        assert!(out.contains("a=mid:0\r\n"));
        assert_eq!(rewrite_candidates(sdp, None), sdp);
    }
}
