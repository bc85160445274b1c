//! Minimal reproduction of a str0m 0.25 behaviour the SFU works around: a keyframe request
//! (PLI) made on a `StreamRx` before DTLS-SRTP is up is silently lost. str0m drains its RTCP
//! feedback queue into a buffer, then finds no SRTP context and drops the buffer
//! (`Session::poll_feedback`: `let srtp = self.srtp_tx.as_mut()?;`).
//!
//! `engine.rs` therefore holds keyframe requests until the publisher's peer is connected. If
//! this test starts failing on its first assertion, str0m delivers early requests and that
//! hold can go. Two str0m peers talk in memory with virtual time: no sockets, no sleeps.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

struct Side {
    rtc: Rtc,
    keyframe_requests: usize,
    connected: bool,
}

impl Side {
    fn new(rtc: Rtc, port: u16) -> Side {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = Side {
            rtc,
            keyframe_requests: 0,
            connected: false,
        };
        s.rtc
            .add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        s
    }
}

/// Deliver everything `from` wants to send to `to`, and note `from`'s events.
fn pump(now: Instant, from: &mut Side, to: &mut Side) {
    loop {
        match from.rtc.poll_output().expect("poll") {
            Output::Transmit(t) => {
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
            Output::Event(Event::KeyframeRequest(_)) => from.keyframe_requests += 1,
            Output::Event(Event::Connected) => from.connected = true,
            Output::Event(_) => {}
            Output::Timeout(_) => return,
        }
    }
}

fn progress(now: &mut Instant, a: &mut Side, b: &mut Side, steps: usize) {
    for _ in 0..steps {
        pump(*now, a, b);
        pump(*now, b, a);
        *now += Duration::from_millis(10);
        a.rtc.handle_input(Input::Timeout(*now)).expect("timeout");
        b.rtc.handle_input(Input::Timeout(*now)).expect("timeout");
    }
}

fn request_pli(server: &mut Side, mid: Mid) {
    server
        .rtc
        .direct_api()
        .stream_rx_by_mid(mid, None)
        .expect("stream announced in the SDP")
        .request_keyframe(KeyframeRequestKind::Pli);
}

#[test]
fn keyframe_request_before_srtp_is_lost_after_is_delivered() {
    let mut now = Instant::now();
    let mut client = Side::new(Rtc::builder().set_rtp_mode(true).build(now), 40000);
    let mut server = Side::new(
        Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .build(now),
        50000,
    );
    let mut api = client.rtc.sdp_api();
    let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().expect("offer");
    let answer = server.rtc.sdp_api().accept_offer(offer).expect("answer");
    client
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .expect("accepted");

    // Requested before ICE/DTLS: never arrives.
    request_pli(&mut server, mid);
    progress(&mut now, &mut client, &mut server, 300);
    assert!(client.connected && server.connected, "peers connect");
    assert_eq!(
        client.keyframe_requests, 0,
        "str0m now delivers RTCP queued before SRTP: the hold in engine.rs can go"
    );

    // Requested once connected: arrives.
    request_pli(&mut server, mid);
    progress(&mut now, &mut client, &mut server, 20);
    assert_eq!(client.keyframe_requests, 1);
}
