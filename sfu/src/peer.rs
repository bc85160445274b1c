//! One server-side peer connection (a str0m `Rtc` in ICE-lite + RTP mode).

use std::net::SocketAddr;
use std::time::Instant;
use str0m::bwe::Bitrate;
use str0m::format::{Codec, CodecConfig};
use str0m::{Candidate, Rtc};

/// Packets kept per outgoing video stream to answer NACKs (~3 s of 720p at 30 fps).
const SEND_BUFFER_VIDEO: usize = 1000;
const SEND_BUFFER_AUDIO: usize = 100;
/// How long str0m keeps a sent packet for resending, and the retransmitted share over which it
/// stops resending: its defaults (crate-private in str0m), restored when a cache is emptied.
const RESEND_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3);
const RESEND_RATIO_CAP: f32 = 0.15;

/// Estimate a subscriber connection starts from, before TWCC feedback says more: enough for
/// all the audio and a low video layer, not so much that a weak link is flooded at first.
const INITIAL_ESTIMATE_KBPS: u64 = 500;

pub struct Peer {
    pub rtc: Rtc,
    pub ufrag: String,
    /// When str0m next wants `Input::Timeout`.
    pub next_timeout: Instant,
    /// ICE and DTLS are up: media can flow (false again while ICE is disconnected).
    pub connected: bool,
    /// DTLS completed once (it survives ICE losses and restarts).
    pub dtls_up: bool,
    pub counters: crate::stats::PeerCounters,
    /// When the client was last heard from (any datagram).
    pub last_rx: Instant,
    /// Nothing heard for a while: the path is considered lost.
    pub silent: bool,
}

impl Peer {
    /// A peer advertising `candidate_addr` (the SFU's one UDP address) as its only candidate.
    /// With `estimate`, str0m's send-side estimator (TWCC feedback) and pacer run on it.
    pub fn new(now: Instant, candidate_addr: SocketAddr, estimate: bool) -> Result<Peer, String> {
        let mut config = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_send_buffer_video(SEND_BUFFER_VIDEO)
            .set_send_buffer_audio(SEND_BUFFER_AUDIO)
            // Cumulative counters for metrics (`stats.rs`), and the RTT the allocator's
            // congestion gate reads: four times a second.
            .set_stats_interval(Some(std::time::Duration::from_millis(250)));
        if estimate {
            config = config.enable_bwe(Some(Bitrate::kbps(INITIAL_ESTIMATE_KBPS)));
        }
        // Only codecs every peer can forward to every other: Opus, VP8, H.264.
        *config.codec_config() = forwardable_codecs();
        let mut rtc = config.build(now);
        let candidate = Candidate::host(candidate_addr, "udp").map_err(|e| e.to_string())?;
        rtc.add_local_candidate(candidate);
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        Ok(Peer {
            rtc,
            ufrag,
            next_timeout: now,
            connected: false,
            dtls_up: false,
            counters: Default::default(),
            last_rx: now,
            silent: false,
        })
    }

    /// Empty the resend cache of the outgoing video stream on `mid` (see `crate::resend`),
    /// keeping its configuration. Returns whether there was such a stream.
    pub fn empty_video_resend_cache(&mut self, mid: str0m::media::Mid) -> bool {
        let mut api = self.rtc.direct_api();
        let Some(stream) = api.stream_tx_by_mid(mid, None) else {
            return false;
        };
        stream.set_rtx_cache(SEND_BUFFER_VIDEO, RESEND_MAX_AGE, Some(RESEND_RATIO_CAP));
        true
    }
}

fn forwardable_codecs() -> CodecConfig {
    let mut c = CodecConfig::empty();
    // RED (RFC 2198) around Opus is offered and accepted: see `red`.
    c.enable_opus(true, true);
    c.enable_vp8(true);
    c.enable_h264(true);
    // And Opus retransmissions for peers that take them: see `audio_rtx`.
    let params = c
        .params()
        .iter()
        .map(|p| match p.spec().codec {
            Codec::Opus => crate::audio_rtx::codec(p).unwrap_or(*p),
            _ => *p,
        })
        .collect();
    CodecConfig::new_from_payload_params(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_is_offered_with_red_and_retransmissions() {
        let c = forwardable_codecs();
        let opus = c.find(|p| p.spec().codec == Codec::Opus).unwrap();
        assert_eq!(
            opus.resend().map(|p| *p),
            Some(crate::audio_rtx::PT_OPUS_RTX)
        );
        assert!(opus.fb_nack() && opus.red().is_some());
        let vp8 = c.find(|p| p.spec().codec == Codec::Vp8).unwrap();
        assert!(vp8.resend().is_some());
    }
}
