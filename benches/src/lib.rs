//! A call held entirely in memory for benchmarks: the SFU's [`Engine`] with one publisher
//! and N subscribers, each a str0m client, connected through ICE, DTLS-SRTP and SDP with
//! virtual time. Once connected, [`InMemoryCall::feed`] times the forwarding path alone:
//! SRTP unprotect → route → SRTP protect for every subscriber → datagrams out.

use consult_protocol::{PublishedTrack, TrackLabel};
use consult_sfu::api::Command;
use consult_sfu::engine::Engine;
use consult_sfu::SfuEvent;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::sync::{mpsc, oneshot};

struct Peer {
    rtc: Rtc,
    addr: SocketAddr,
    connected: bool,
    rtp_received: u64,
    events: Option<mpsc::UnboundedReceiver<SfuEvent>>,
    id: String,
}

impl Peer {
    fn new(now: Instant, port: u16, id: &str) -> Peer {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut rtc = Rtc::builder().set_rtp_mode(true).build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        Peer {
            rtc,
            addr,
            connected: false,
            rtp_received: 0,
            events: None,
            id: id.to_owned(),
        }
    }
}

pub struct InMemoryCall {
    pub engine: Engine,
    pub now: Instant,
    server: SocketAddr,
    publisher: Peer,
    mid: Mid,
    pt: Pt,
    subscribers: Vec<Peer>,
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    seq: u64,
}

fn join(
    engine: &mut Engine,
    now: Instant,
    id: &str,
    out: &mut Vec<(SocketAddr, Vec<u8>)>,
) -> mpsc::UnboundedReceiver<SfuEvent> {
    let (events, rx) = mpsc::unbounded_channel();
    let (reply, mut answer) = oneshot::channel();
    engine.handle_command(
        now,
        Command::Join {
            room: "bench".into(),
            participant: id.into(),
            caps: Default::default(),
            events,
            reply,
        },
        &mut |to: SocketAddr, d: &[u8]| out.push((to, d.to_vec())),
    );
    answer.try_recv().expect("join answered").expect("joined");
    rx
}

impl InMemoryCall {
    /// A connected call: one publisher sending an audio track (Opus) to `subscribers`.
    pub fn new(subscribers: usize) -> InMemoryCall {
        let server = SocketAddr::from(([127, 0, 0, 1], 50000));
        let now = Instant::now();
        let mut engine = Engine::new(server, false);
        let mut outbox = Vec::new();
        let mut publisher = Peer::new(now, 40000, "publisher");
        let _ = join(&mut engine, now, "publisher", &mut outbox);
        let mut change = publisher.rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, pending) = change.apply().expect("offer");
        let (reply, mut answer) = oneshot::channel();
        engine.handle_command(
            now,
            Command::PublishOffer {
                participant: "publisher".into(),
                sdp: offer.to_sdp_string(),
                tracks: vec![PublishedTrack {
                    mid: mid.to_string(),
                    label: TrackLabel::Microphone,
                    muted: false,
                }],
                reply,
            },
            &mut |to: SocketAddr, d: &[u8]| outbox.push((to, d.to_vec())),
        );
        let sdp = answer
            .try_recv()
            .expect("answered")
            .expect("publish accepted");
        publisher
            .rtc
            .sdp_api()
            .accept_answer(
                pending,
                SdpAnswer::from_sdp_string(&sdp).expect("answer SDP"),
            )
            .expect("answer accepted");
        let subs = (0..subscribers)
            .map(|i| {
                let id = format!("subscriber-{i}");
                let mut p = Peer::new(now, 40001 + i as u16, &id);
                p.events = Some(join(&mut engine, now, &id, &mut outbox));
                p
            })
            .collect();
        let mut call = InMemoryCall {
            engine,
            now,
            server,
            publisher,
            mid,
            pt: Pt::new_with_value(111),
            subscribers: subs,
            outbox,
            seq: 0,
        };
        for _ in 0..2000 {
            call.step();
            if call.publisher.connected && call.subscribers.iter().all(|s| s.connected) {
                break;
            }
        }
        assert!(
            call.publisher.connected && call.subscribers.iter().all(|s| s.connected),
            "the in-memory call did not connect"
        );
        if let Some(pt) = call
            .publisher
            .rtc
            .media(call.mid)
            .and_then(|m| m.remote_pts().first().copied())
        {
            call.pt = pt;
        }
        // Let the first packets and their feedback settle.
        for _ in 0..20 {
            let d = call.publisher_datagrams(1);
            for x in d {
                call.feed(&x);
            }
            call.step();
        }
        call
    }

    fn handle_client_output(
        engine: &mut Engine,
        now: Instant,
        p: &mut Peer,
        outbox: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) {
        loop {
            match p.rtc.poll_output().expect("client poll") {
                Output::Transmit(t) => engine.handle_datagram(
                    now,
                    t.source,
                    &t.contents,
                    &mut |to: SocketAddr, d: &[u8]| outbox.push((to, d.to_vec())),
                ),
                Output::Event(Event::Connected) => p.connected = true,
                Output::Event(Event::RtpPacket(_)) => p.rtp_received += 1,
                Output::Event(_) => {}
                Output::Timeout(_) => break,
            }
        }
    }

    /// One step of virtual time: every client's output to the engine, the engine's output to
    /// the clients, signaling events answered, timers.
    fn step(&mut self) {
        let now = self.now;
        Self::handle_client_output(&mut self.engine, now, &mut self.publisher, &mut self.outbox);
        for s in self.subscribers.iter_mut() {
            Self::handle_client_output(&mut self.engine, now, s, &mut self.outbox);
        }
        if self.engine.next_timeout(now) <= now {
            let outbox = &mut self.outbox;
            self.engine
                .handle_timeout(now, &mut |to: SocketAddr, d: &[u8]| {
                    outbox.push((to, d.to_vec()))
                });
        }
        for (to, data) in std::mem::take(&mut self.outbox) {
            let peer = if to == self.publisher.addr {
                Some(&mut self.publisher)
            } else {
                self.subscribers.iter_mut().find(|s| s.addr == to)
            };
            if let (Some(p), Ok(contents)) = (peer, data.as_slice().try_into()) {
                let _ = p.rtc.handle_input(Input::Receive(
                    now,
                    Receive {
                        proto: Protocol::Udp,
                        source: self.server,
                        destination: to,
                        contents,
                    },
                ));
            }
        }
        for s in self.subscribers.iter_mut() {
            let Some(rx) = s.events.as_mut() else {
                continue;
            };
            while let Ok(ev) = rx.try_recv() {
                if let SfuEvent::SubscriberOffer { sdp, .. } = ev {
                    let offer = SdpOffer::from_sdp_string(&sdp).expect("offer SDP");
                    let answer = s.rtc.sdp_api().accept_offer(offer).expect("offer accepted");
                    let (reply, _) = oneshot::channel();
                    let outbox = &mut self.outbox;
                    self.engine.handle_command(
                        now,
                        Command::SubscriberAnswer {
                            participant: s.id.clone(),
                            sdp: answer.to_sdp_string(),
                            reply,
                        },
                        &mut |to: SocketAddr, d: &[u8]| outbox.push((to, d.to_vec())),
                    );
                }
            }
        }
        self.now += Duration::from_millis(5);
        let now = self.now;
        for p in std::iter::once(&mut self.publisher).chain(self.subscribers.iter_mut()) {
            let _ = p.rtc.handle_input(Input::Timeout(now));
        }
    }

    /// `n` SRTP datagrams from the publisher (20 ms of Opus each, 160-byte payloads), made by
    /// its str0m client: the client's work is not part of what is measured.
    pub fn publisher_datagrams(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        let payload = vec![0x5au8; 160];
        for _ in 0..n {
            self.seq += 1;
            let mut api = self.publisher.rtc.direct_api();
            let stream = api
                .stream_tx_by_mid(self.mid, None)
                .expect("publisher stream");
            stream.write_rtp(RtpWrite::new(
                self.pt,
                SeqNo::from(self.seq),
                (self.seq * 960) as u32,
                self.now,
                payload.clone(),
            ));
            let _ = self.publisher.rtc.handle_input(Input::Timeout(self.now));
            while let Ok(o) = self.publisher.rtc.poll_output() {
                match o {
                    // Its RTCP (sender reports) is left out: only media is fed.
                    Output::Transmit(t) if is_rtp(&t.contents) => out.push(t.contents.to_vec()),
                    Output::Transmit(_) => {}
                    Output::Timeout(_) => break,
                    Output::Event(_) => {}
                }
            }
        }
        out
    }

    /// Hand one publisher datagram to the SFU, as its socket would; returns how many RTP
    /// datagrams the SFU sent because of it (sent nowhere; RTCP it sends too is not counted).
    pub fn feed(&mut self, datagram: &[u8]) -> usize {
        let mut sent = 0usize;
        self.engine.handle_datagram(
            self.now,
            self.publisher.addr,
            datagram,
            &mut |_: SocketAddr, d: &[u8]| {
                sent += usize::from(is_rtp(d));
                std::hint::black_box(d);
            },
        );
        sent
    }

    /// Advance virtual time by `d` without traffic (timers only), for long runs; returns the
    /// RTP datagrams the timers released.
    pub fn idle(&mut self, d: Duration) -> usize {
        self.now += d;
        let now = self.now;
        let mut sent = 0;
        if self.engine.next_timeout(now) <= now {
            self.engine
                .handle_timeout(now, &mut |_: SocketAddr, d: &[u8]| {
                    sent += usize::from(is_rtp(d))
                });
        }
        sent
    }

    /// Packets each subscriber's client decrypted so far (through [`Self::step`]).
    pub fn received_per_subscriber(&self) -> Vec<u64> {
        self.subscribers.iter().map(|s| s.rtp_received).collect()
    }

    /// Feed datagrams and deliver what the SFU sends to the subscribers' clients.
    pub fn deliver(&mut self, datagrams: &[Vec<u8>]) {
        for d in datagrams {
            let outbox = &mut self.outbox;
            self.engine.handle_datagram(
                self.now,
                self.publisher.addr,
                d,
                &mut |to: SocketAddr, x: &[u8]| outbox.push((to, x.to_vec())),
            );
            self.step();
        }
        // Events of the last delivery are polled in the next step.
        self.step();
    }
}

/// RTP rather than RTCP (RFC 5761: RTCP packet types 192–223 in the second byte).
fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && (128..192).contains(&d[0]) && !(192..224).contains(&d[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subscriber_decrypts_what_is_fed() {
        let mut call = InMemoryCall::new(3);
        let before = call.received_per_subscriber();
        // Each fed packet leaves once per subscriber, in the same turn.
        let one = call.publisher_datagrams(1);
        assert_eq!(call.feed(&one[0]), 3);
        let d = call.publisher_datagrams(10);
        call.deliver(&d);
        for (b, a) in before.iter().zip(call.received_per_subscriber()) {
            assert!(a >= b + 10, "subscriber got {} new packets", a - b);
        }
    }
}
