//! Minimal reproduction of a str0m 0.25 behaviour the SFU works around
//! (`sfu/src/padding_throttle.rs`): with bandwidth estimation on and only audio flowing, str0m's
//! pacer pads toward its 50 kbit/s floor one blank RTX packet per wake-up, each sized for 5 ms at
//! the padding rate (~31 bytes of padding) but costing ~3x that in headers it does not count,
//! and asks to be woken again as soon as that small debt is paid. So the padding rate in bytes
//! sent follows how promptly its timeouts are fed, well above its own target when they are fed
//! as asked; fed at most every 100 ms, it falls to a fraction.
//!
//! If the first assertion starts failing, str0m counts its padding as sent and the throttle can
//! go. Two str0m peers talk in memory with virtual time: no sockets, no sleeps.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::bwe::Bitrate;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Input, Output, Rtc};

struct Side {
    rtc: Rtc,
    next_timeout: Instant,
}

impl Side {
    fn new(rtc: Rtc, port: u16, now: Instant) -> Side {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = Side {
            rtc,
            next_timeout: now,
        };
        s.rtc
            .add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        s
    }
}

/// What one side sent: all bytes, and the bytes of padding-only RTP packets (P bit set, RTP
/// version 2, a payload type outside RTCP's range), as IP/UDP datagrams (28 bytes of headers).
#[derive(Default, Debug)]
struct Sent {
    bytes: u64,
    padding_bytes: u64,
}

/// Deliver everything `from` wants to send to `to`; returns when `from` wants a timeout.
fn pump(now: Instant, from: &mut Side, to: &mut Side, sent: &mut Sent) {
    loop {
        match from.rtc.poll_output().expect("poll") {
            Output::Transmit(t) => {
                let wire = t.contents.len() as u64 + 28;
                sent.bytes += wire;
                let c = &t.contents;
                let rtp = c.len() > 12 && c[0] >> 6 == 2 && !(192..=223).contains(&c[1]);
                if rtp && c[0] & 0x20 != 0 {
                    sent.padding_bytes += wire;
                }
                let contents = (&*t.contents).try_into().expect("datagram");
                to.rtc
                    .handle_input(Input::Receive(
                        now,
                        Receive {
                            proto: Protocol::Udp,
                            source: t.source,
                            destination: t.destination,
                            contents,
                        },
                    ))
                    .expect("input");
            }
            Output::Event(_) => {}
            Output::Timeout(t) => {
                from.next_timeout = t;
                return;
            }
        }
    }
}

/// Run `secs` of virtual time with the sender writing a 60 ms Opus frame (120 bytes) every
/// 60 ms, and feeding the sender's timeouts when it asks, but no more often than `min_gap`.
/// Returns what the sender sent over that time.
fn run(min_gap: Duration) -> Sent {
    let mut now = Instant::now();
    let mut sender = Side::new(
        Rtc::builder()
            .set_rtp_mode(true)
            .enable_bwe(Some(Bitrate::kbps(300)))
            .build(now),
        40000,
        now,
    );
    let mut receiver = Side::new(
        Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .build(now),
        50000,
        now,
    );
    // Audio and a video m-line (which gets an RTX stream: str0m's padding source), as an SFU
    // has toward a subscriber whose video is paused.
    let mut api = sender.rtc.sdp_api();
    let audio: Mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().expect("offer");
    let answer = receiver.rtc.sdp_api().accept_offer(offer).expect("answer");
    sender
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .expect("accepted");
    let opus = sender
        .rtc
        .codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == Codec::Opus)
        .expect("opus")
        .pt();

    let mut ignored = Sent::default();
    let step = Duration::from_millis(1);
    let start = now;
    let measure_from = start + Duration::from_secs(5);
    let end = measure_from + Duration::from_secs(10);
    let mut sent = Sent::default();
    let mut last_fed = start;
    let mut next_frame = start;
    let mut seq = 0u64;
    while now < end {
        let counting = now >= measure_from;
        if now >= next_frame {
            next_frame += Duration::from_millis(60);
            if let Some(stream) = sender.rtc.direct_api().stream_tx_by_mid(audio, None) {
                seq += 1;
                stream.write_rtp(RtpWrite::new(
                    opus,
                    SeqNo::from(seq),
                    (seq * 2880) as u32,
                    now,
                    vec![0x55u8; 120],
                ));
                // As the engine does after a write: one feed to send it.
                sender
                    .rtc
                    .handle_input(Input::Timeout(now))
                    .expect("timeout");
                last_fed = now;
            }
        }
        if sender.next_timeout <= now && now.saturating_duration_since(last_fed) >= min_gap {
            sender
                .rtc
                .handle_input(Input::Timeout(now))
                .expect("timeout");
            last_fed = now;
        }
        if receiver.next_timeout <= now {
            receiver
                .rtc
                .handle_input(Input::Timeout(now))
                .expect("timeout");
        }
        let target = if counting { &mut sent } else { &mut ignored };
        pump(now, &mut sender, &mut receiver, target);
        pump(now, &mut receiver, &mut sender, &mut ignored);
        now += step;
    }
    sent
}

fn kbps(bytes: u64) -> u64 {
    bytes * 8 / 10 / 1000
}

#[test]
fn padding_on_the_wire_follows_how_often_timeouts_are_fed() {
    let prompt = run(Duration::ZERO);
    let throttled = run(Duration::from_millis(100));
    eprintln!(
        "padding on the wire: fed as asked {} kbit/s (of {} sent), fed every 100 ms at most {} kbit/s (of {})",
        kbps(prompt.padding_bytes),
        kbps(prompt.bytes),
        kbps(throttled.padding_bytes),
        kbps(throttled.bytes),
    );
    // str0m's own target is 50 kbit/s including the media it fills around.
    assert!(
        kbps(prompt.padding_bytes) > 60,
        "str0m's padding now stays within its target: padding_throttle.rs can go ({prompt:?})"
    );
    assert!(
        throttled.padding_bytes * 2 < prompt.padding_bytes,
        "feeding timeouts sparingly cuts the padding ({throttled:?} vs {prompt:?})"
    );
}
