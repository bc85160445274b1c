//! Retransmission (NACK + RTX, RFC 4588) of Opus toward subscribers that negotiate it.
//!
//! On a thin, lossy link (100 kbit/s, 2 % loss) RED does not fit beside the audio, and the
//! stethoscope's constant-bitrate Opus (fullband, hybrid mode) carries in-band FEC only when
//! libopus finds room for it (at 32 kbit/s and 2 % expected loss it does not): a lost packet
//! is a gap.
//! A retransmission costs only the lost packets (~2 % more audio) and, with a 400 ms playout
//! budget and ~250 ms round trip, arrives in time. Our Rust peers (cart, tests, load tester)
//! negotiate it; browsers offer neither `nack` nor `rtx` for audio and keep RED and FEC.
//!
//! str0m resends only over RTX, and gives an outgoing stream an RTX SSRC only for video when
//! it makes the offer (`kind.is_video()` in its `add_media`). So:
//! - the Opus payload parameters get an RTX payload type and `nack` feedback ([`codec`]);
//! - the offer gets an `a=ssrc-group:FID` for each new audio m-section, with an RTX SSRC we
//!   chose ([`add_rtx_ssrcs`]);
//! - once the answer is accepted, the audio stream is declared again with that RTX SSRC
//!   ([`enable`]) if the subscriber accepted `rtx` for Opus.
//!
//! Audio written before that (or to a subscriber without RTX) is not nackable: str0m would
//! otherwise cache it and, on a NACK, look for an RTX SSRC the stream does not have.
//!
//! The other way, a publisher whose offer asks NACKs for Opus (our cart) is asked for the
//! audio its uplink loses ([`nack_uplink`]): on a rural EHPAD link that is where the
//! stethoscope is lost first.

use str0m::format::{Codec, PayloadParams};
use str0m::media::Mid;
use str0m::rtp::Ssrc;
use str0m::Rtc;

/// The payload type of Opus retransmissions (free in str0m's defaults and in our clients').
pub const PT_OPUS_RTX: u8 = 112;

/// Packets kept per outgoing audio stream for resending (2 s of 20 ms packets).
const SEND_BUFFER: usize = 100;
/// An audio packet older than this misses any playout buffer: not worth resending.
const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);
/// Resends stop while they exceed this share of the stream's bytes (a link losing more than
/// this is better served by the allocator than by retransmissions).
const RATIO_CAP: f32 = 0.2;

/// Opus's payload parameters with `rtx` and `nack` added (RED and everything else kept).
///
/// str0m's public API sets RED only through `enable_opus` and the RTX payload type only when
/// the parameters are created: the parameters are patched through their serde form.
pub fn codec(opus: &PayloadParams) -> Option<PayloadParams> {
    let mut v = serde_json::to_value(opus).ok()?;
    let fields = v.as_object_mut()?;
    if !fields.contains_key("resend") || !fields.contains_key("fb_nack") {
        return None;
    }
    fields.insert("resend".into(), PT_OPUS_RTX.into());
    fields.insert("fb_nack".into(), true.into());
    serde_json::from_value(v).ok()
}

/// `sdp` with an RTX SSRC grouped (FID) with the main SSRC of each audio m-section in `rtx`
/// (by mid) that has a main SSRC and no group yet.
pub fn add_rtx_ssrcs(sdp: &str, rtx: &[(Mid, Ssrc)]) -> String {
    let mut out = String::with_capacity(sdp.len() + rtx.len() * 200);
    for section in split_sections(sdp) {
        out.push_str(section);
        let is_audio = section.starts_with("m=audio");
        let mid = section
            .lines()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .map(str::trim);
        let Some(repair) = mid.and_then(|m| rtx.iter().find(|(x, _)| x.to_string() == m)) else {
            continue;
        };
        if !is_audio || section.contains("a=ssrc-group:") {
            continue;
        }
        // The main SSRC's attributes (cname, msid), repeated for the RTX SSRC.
        let ssrc_lines: Vec<(&str, &str)> = section
            .lines()
            .filter_map(|l| l.strip_prefix("a=ssrc:"))
            .filter_map(|l| l.split_once(' '))
            .collect();
        let Some(main) = ssrc_lines.first().map(|(s, _)| *s) else {
            continue;
        };
        if ssrc_lines.iter().any(|(s, _)| *s != main) {
            continue;
        }
        let rtx_ssrc = *repair.1;
        // NACKs asked for on RED too: a receiver may take the first payload type (RED, which
        // goes first) as the track's codec and decide from its feedback whether to NACK.
        if let (Some(red), Some(opus)) = (pt_of(section, "red/"), pt_of(section, "opus/")) {
            if section.contains(&format!("a=rtcp-fb:{opus} nack\r\n"))
                && !section.contains(&format!("a=rtcp-fb:{red} nack\r\n"))
            {
                out.push_str(&format!("a=rtcp-fb:{red} nack\r\n"));
            }
        }
        out.push_str(&format!("a=ssrc-group:FID {main} {rtx_ssrc}\r\n"));
        for (_, attr) in &ssrc_lines {
            out.push_str(&format!("a=ssrc:{rtx_ssrc} {attr}\r\n"));
        }
    }
    out
}

/// The payload type mapped to a codec starting `codec` (e.g. `red/`) in an m-section.
fn pt_of<'a>(section: &'a str, codec: &str) -> Option<&'a str> {
    section
        .lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .find_map(|l| l.split_once(' ').filter(|(_, c)| c.starts_with(codec)))
        .map(|(pt, _)| pt)
}

/// Whether the audio m-section `mid` of a publisher's offer asks for NACKs on Opus.
pub fn offers_nack(sdp: &str, mid: &str) -> bool {
    split_sections(sdp).into_iter().any(|section| {
        section.starts_with("m=audio")
            && section
                .lines()
                .any(|l| l.strip_prefix("a=mid:").is_some_and(|m| m.trim() == mid))
            && pt_of(section, "opus/")
                .is_some_and(|opus| section.contains(&format!("a=rtcp-fb:{opus} nack\r\n")))
    })
}

/// Ask a publisher for the audio packets its uplink loses on `mid`. str0m sends NACKs only
/// for a stream with an RTX SSRC; webrtc-rs (our cart) gives audio none but answers NACKs by
/// sending the packet again on its own SSRC, which str0m takes as a late packet.
pub fn nack_uplink(rtc: &mut Rtc, mid: Mid) {
    if let Some(stream) = rtc.direct_api().stream_rx_by_mid(mid, None) {
        stream.suppress_nack(false);
    }
}

/// The session line and each m-section, each with its line ends.
fn split_sections(sdp: &str) -> Vec<&str> {
    let mut starts: Vec<usize> = sdp.match_indices("\nm=").map(|(i, _)| i + 1).collect();
    starts.insert(0, 0);
    starts.push(sdp.len());
    starts.windows(2).map(|w| &sdp[w[0]..w[1]]).collect()
}

/// Whether the subscriber accepted Opus retransmissions. str0m's payload parameters are per
/// connection: the first answer locks Opus's RTX payload type to the one the remote matched
/// (none if it did not take `rtx`).
pub fn negotiated(rtc: &Rtc, mid: Mid) -> bool {
    let Some(opus) = rtc.codec_config().find(|p| p.spec().codec == Codec::Opus) else {
        return false;
    };
    opus.resend().is_some()
        && rtc
            .media(mid)
            .is_some_and(|m| m.remote_pts().contains(&opus.pt()))
}

/// Declare the audio stream on `mid` again, with `rtx` as its repair SSRC, if the subscriber
/// negotiated Opus retransmissions and it has none yet. Returns whether it did.
pub fn enable(rtc: &mut Rtc, mid: Mid, rtx: Ssrc) -> bool {
    if !negotiated(rtc, mid) {
        return false;
    }
    let mut api = rtc.direct_api();
    let Some(stream) = api.stream_tx_by_mid(mid, None) else {
        return false;
    };
    if stream.rtx().is_some() {
        return false;
    }
    let ssrc = stream.ssrc();
    // The stream has sent nothing yet (this runs as the answer is accepted), so nothing is
    // lost by starting it again; str0m takes an RTX SSRC only when a stream is declared.
    api.remove_stream_tx(ssrc);
    api.declare_stream_tx(ssrc, Some(rtx), mid, None)
        .set_rtx_cache(SEND_BUFFER, MAX_AGE, Some(RATIO_CAP));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::format::CodecConfig;

    #[test]
    fn a_publisher_asking_nack_on_opus_is_recognised() {
        assert!(offers_nack(OFFER, "0"));
        // No rtpmap for Opus in mid 2, and mid 1 is video.
        assert!(!offers_nack(OFFER, "2"));
        assert!(!offers_nack(OFFER, "1"));
        assert!(!offers_nack(OFFER, "9"));
    }

    #[test]
    fn opus_gets_rtx_and_nack_and_keeps_red() {
        let mut c = CodecConfig::empty();
        c.enable_opus(true, true);
        let opus = c.params()[0];
        assert_eq!(opus.resend(), None);
        let patched = codec(&opus).unwrap();
        assert_eq!(patched.resend().map(|p| *p), Some(PT_OPUS_RTX));
        assert!(patched.fb_nack());
        assert_eq!(patched.red(), opus.red());
        assert!(patched.red().is_some());
        assert_eq!(patched.spec(), opus.spec());
    }

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 63 111 112\r\na=mid:0\r\na=sendonly\r\n\
        a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 nack\r\na=rtpmap:63 red/48000/2\r\n\
        a=ssrc:11 cname:c\r\na=ssrc:11 msid:s t\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\na=ssrc-group:FID 21 22\r\n\
        a=ssrc:21 cname:c\r\na=ssrc:22 cname:c\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=ssrc:31 cname:d\r\n";

    #[test]
    fn new_audio_sections_get_an_rtx_ssrc_group_and_nack_on_red() {
        let out = add_rtx_ssrcs(
            OFFER,
            &[(Mid::from("0"), 99.into()), (Mid::from("1"), 98.into())],
        );
        let want = "a=ssrc:11 msid:s t\r\na=rtcp-fb:63 nack\r\na=ssrc-group:FID 11 99\r\n\
                    a=ssrc:99 cname:c\r\na=ssrc:99 msid:s t\r\nm=video";
        assert!(out.contains(want), "{out}");
        // Video already has its group; mid 2 was not asked for.
        assert_eq!(out.matches("ssrc-group").count(), 2, "{out}");
        assert!(!out.contains("FID 31"), "{out}");
        assert_eq!(
            out.len(),
            OFFER.len() + want.len() - "a=ssrc:11 msid:s t\r\nm=video".len()
        );
        // Nothing asked: unchanged.
        assert_eq!(add_rtx_ssrcs(OFFER, &[]), OFFER);
    }
}
