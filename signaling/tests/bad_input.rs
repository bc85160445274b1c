//! Bad input gets a clear error and never disturbs a running consultation: malformed JSON,
//! unknown types, oversized frames, bad or expired tokens, the wrong room, a patient trying to
//! admit, and garbage UDP at the SFU port — all while a call in another room goes on.

mod common;

use common::*;
use consult_client::ClientEvent;
use consult_protocol::{ClientMsg, ErrorCode, Role, ServerMsg, TrackKind, TrackLabel};
use consult_signaling::token::{unix_now, Grant, TokenService};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(srv: &TestServer) -> Ws {
    tokio_tungstenite::connect_async(srv.ws_url())
        .await
        .expect("ws connects")
        .0
}

/// The next server message, skipping nothing; panics on close or timeout.
async fn recv(ws: &mut Ws) -> ServerMsg {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("server answers in time")
            .expect("connection open")
            .expect("readable frame");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("server JSON"),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

async fn expect_error(ws: &mut Ws, code: ErrorCode) {
    match recv(ws).await {
        ServerMsg::Error { code: got, message } => {
            assert_eq!(got, code, "error message: {message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected error {code}, got {other:?}"),
    }
}

/// The connection closes (a close frame or the end of the stream), with its close code.
async fn expect_closed(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closes in time")
        {
            Some(Ok(Message::Close(c))) => return c.map(|c| c.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_owned())).await.expect("send");
}

fn join_msg(token: &str) -> String {
    serde_json::to_string(&ClientMsg::Join {
        version: 1,
        token: token.into(),
        room: None,
        audio_rtx: false,
        twcc_omits_probes: false,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_clear_errors() {
    let srv = start_server().await;

    // Before join: malformed JSON is an error and the end of the connection.
    let mut ws = raw(&srv).await;
    send(&mut ws, "{oops").await;
    expect_error(&mut ws, ErrorCode::BadJson).await;
    expect_closed(&mut ws).await;

    // The first message must be a join.
    let mut ws = raw(&srv).await;
    send(&mut ws, r#"{"type":"ping"}"#).await;
    expect_error(&mut ws, ErrorCode::NotJoined).await;
    expect_closed(&mut ws).await;

    // After join, bad messages get errors and the session goes on.
    let mut ws = raw(&srv).await;
    send(
        &mut ws,
        &join_msg(&srv.token("room-b", "pat-b", Role::Patient)),
    )
    .await;
    assert!(matches!(recv(&mut ws).await, ServerMsg::Joined { .. }));
    send(&mut ws, "{oops").await;
    expect_error(&mut ws, ErrorCode::BadJson).await;
    send(&mut ws, r#"{"no_type":1}"#).await;
    expect_error(&mut ws, ErrorCode::BadJson).await;
    send(&mut ws, r#"{"type":"teleport"}"#).await;
    expect_error(&mut ws, ErrorCode::UnknownType).await;
    send(&mut ws, r#"{"type":"admit"}"#).await;
    expect_error(&mut ws, ErrorCode::BadRequest).await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    expect_error(&mut ws, ErrorCode::BadJson).await;
    send(&mut ws, r#"{"type":"join","version":1,"token":"x"}"#).await;
    expect_error(&mut ws, ErrorCode::AlreadyJoined).await;
    // A patient may not admit, remove or end.
    send(&mut ws, r#"{"type":"admit","participant_id":"p1"}"#).await;
    expect_error(&mut ws, ErrorCode::Forbidden).await;
    send(&mut ws, r#"{"type":"end_consultation"}"#).await;
    expect_error(&mut ws, ErrorCode::Forbidden).await;
    // Not admitted: no media.
    send(
        &mut ws,
        r#"{"type":"publish_offer","sdp":"v=0","tracks":[]}"#,
    )
    .await;
    expect_error(&mut ws, ErrorCode::NotAdmitted).await;
    send(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(recv(&mut ws).await, ServerMsg::Pong);

    // An oversized message: clear error, then close with 1009.
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(100_000));
    send(&mut ws, &big).await;
    expect_error(&mut ws, ErrorCode::MessageTooLarge).await;
    assert_eq!(expect_closed(&mut ws).await, Some(CloseCode::Size));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_wrong_room_are_refused() {
    let srv = start_server().await;
    let cases: Vec<(String, ErrorCode)> = vec![
        // Signed with another secret.
        (
            TokenService::new("devkey", "another-secret-of-16+")
                .mint(
                    &Grant {
                        room: "r",
                        identity: "x",
                        name: "x",
                        role: Role::Physician,
                        companion_kind: None,
                    },
                    unix_now(),
                    600,
                )
                .0,
            ErrorCode::BadToken,
        ),
        ("garbage".into(), ErrorCode::BadToken),
        (
            srv.token_at("r", "late", Role::Physician, unix_now() - 7200, 60),
            ErrorCode::TokenExpired,
        ),
    ];
    for (token, code) in cases {
        let mut ws = raw(&srv).await;
        send(&mut ws, &join_msg(&token)).await;
        expect_error(&mut ws, code).await;
        expect_closed(&mut ws).await;
    }

    // A token for room A used to join room B.
    let mut ws = raw(&srv).await;
    let msg = serde_json::to_string(&ClientMsg::Join {
        version: 1,
        token: srv.token("room-a", "pat", Role::Patient),
        room: Some("room-b".into()),
        audio_rtx: false,
        twcc_omits_probes: false,
    })
    .unwrap();
    send(&mut ws, &msg).await;
    expect_error(&mut ws, ErrorCode::WrongRoom).await;

    // A protocol version the server does not speak.
    let mut ws = raw(&srv).await;
    let msg = format!(
        r#"{{"type":"join","version":99,"token":"{}"}}"#,
        srv.token("room-a", "pat", Role::Patient)
    );
    send(&mut ws, &msg).await;
    expect_error(&mut ws, ErrorCode::UnsupportedVersion).await;
}

/// Datagrams that look like each protocol on the port, and do not parse or authenticate.
fn garbage(i: u32) -> Vec<u8> {
    let mut x = 0x9e3779b9u32.wrapping_mul(i + 1);
    let mut rnd = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    match i % 8 {
        0 => rnd(200),
        // STUN header with magic cookie, then garbage attributes.
        1 => {
            let mut v = vec![0x00, 0x01, 0x00, 0x10, 0x21, 0x12, 0xa4, 0x42];
            v.extend(rnd(28));
            v
        }
        // Truncated STUN.
        2 => vec![0x00, 0x01, 0x00, 0x50, 0x21, 0x12],
        // DTLS record header with garbage.
        3 => {
            let mut v = vec![22, 254, 253, 0, 0];
            v.extend(rnd(60));
            v
        }
        // RTP-looking.
        4 => {
            let mut v = vec![0x80, 111];
            v.extend(rnd(100));
            v
        }
        // RTCP-looking.
        5 => {
            let mut v = vec![0x80, 200, 0, 6];
            v.extend(rnd(24));
            v
        }
        // Truncated RTP.
        6 => vec![0x80, 96, 0],
        _ => vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_udp_and_bad_messages_do_not_disturb_a_running_call() {
    let srv = start_server().await;
    // Room A: a call in progress.
    let mut doc = srv.join("room-a", "dr-a", Role::Physician).await;
    let mut nurse = srv.join("room-a", "ide-a", Role::Companion).await;
    doc.send(ClientMsg::Admit {
        participant_id: nurse.participant_id.clone(),
    })
    .unwrap();
    nurse.wait_admitted(WAIT).await.unwrap();
    // Room B: another call, whose media room A must never see.
    let mut doc_b = srv.join("room-b", "dr-b", Role::Physician).await;
    let mut pub_b = doc_b.publish(&[TrackLabel::Camera]).await.unwrap();
    let b_sender = pub_b.remove(0).send_synthetic(
        tag(9, TrackLabel::Camera),
        300,
        Duration::from_millis(10),
        300,
    );

    let packets = 400;
    let tracks = nurse
        .publish(&[TrackLabel::Stethoscope, TrackLabel::Camera])
        .await
        .unwrap();
    let senders: Vec<_> = tracks
        .iter()
        .map(|t| t.send_synthetic(tag(1, t.label), packets, Duration::from_millis(10), 200))
        .collect();
    let received: Vec<_> = take_tracks(&mut doc, 2)
        .await
        .into_iter()
        .map(|t| {
            assert_eq!(t.info.participant_id, nurse.participant_id);
            let kind = t.info.kind;
            (t.info.label, collect(t, kind))
        })
        .collect();

    // Meanwhile: garbage datagrams at the SFU port…
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sfu = srv.server.udp_addr;
    let before = srv.server.sfu().stats().await.unwrap();
    let n_garbage = 4000u32;
    for i in 0..n_garbage {
        let _ = udp.send_to(&garbage(i), sfu).await;
        if i % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // …and bad messages in room B.
    let mut ws = raw(&srv).await;
    send(
        &mut ws,
        &join_msg(&srv.token("room-b", "pat-b", Role::Patient)),
    )
    .await;
    let _ = recv(&mut ws).await;
    for bad in [
        "{",
        r#"{"type":"nope"}"#,
        r#"{"type":"remove","participant_id":"x"}"#,
    ] {
        send(&mut ws, bad).await;
        let _ = recv(&mut ws).await;
    }
    send(&mut ws, &"y".repeat(200_000)).await;

    for s in senders {
        assert_eq!(s.await.unwrap(), packets);
    }
    b_sender.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    for (label, rx) in &received {
        let r = rx.lock().unwrap();
        let (got, expected) = r.coverage(packets - 1);
        eprintln!(
            "room A {label}: {got}/{expected} packets during the garbage, {} corrupt",
            r.corrupt
        );
        assert_eq!(r.corrupt, 0);
        assert!(
            r.tags.iter().all(|t| *t == tag(1, *label)),
            "only room A's media"
        );
        assert!(expected >= (packets as usize) / 2, "media started late");
        let kind = label.kind();
        if kind == TrackKind::Video {
            assert_eq!(
                got, expected,
                "{label}: video is NACK-protected on loopback"
            );
        } else {
            assert!(got * 100 >= expected * 99, "{label}: {got}/{expected}");
        }
    }
    let after = srv.server.sfu().stats().await.unwrap();
    let dropped = after.datagrams_dropped - before.datagrams_dropped;
    // Each drop has one reason.
    assert_eq!(
        after.dropped_malformed + after.dropped_unknown_sender,
        after.datagrams_dropped
    );
    eprintln!("SFU dropped {dropped} datagrams (sent {n_garbage} garbage)");
    assert!(
        dropped >= u64::from(n_garbage) * 9 / 10,
        "garbage is dropped ({dropped})"
    );

    // Room A never heard of room B.
    while let Some(ev) = doc.next_event(Duration::from_millis(100)).await {
        match ev {
            ClientEvent::Track(t) => panic!("unexpected track {:?}", t.info),
            ClientEvent::Server(ServerMsg::ParticipantJoined { participant }) => {
                assert_eq!(participant.participant_id, nurse.participant_id)
            }
            ClientEvent::Server(ServerMsg::TrackPublished { participant_id, .. }) => {
                assert_eq!(participant_id, nurse.participant_id)
            }
            _ => {}
        }
    }
    let health = reqwest::get(srv.http_url("/healthz")).await.unwrap();
    assert_eq!(health.text().await.unwrap(), "ok");
}

fn hand_written_offer() -> String {
    let fp: Vec<String> = (0..32).map(|i| format!("{:02X}", i * 7 % 256)).collect();
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic: WMS",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        &format!("a=fingerprint:sha-256 {}", fp.join(":")),
        "a=setup:actpass",
        "a=mid:0",
        "a=sendonly",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=ssrc:1234 cname:cart",
        "",
    ]
    .join("\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sdp_is_refused_and_the_sfu_keeps_serving() {
    let srv = start_server().await;
    let mut ws = raw(&srv).await;
    send(
        &mut ws,
        &join_msg(&srv.token("room-sdp", "dr-sdp", Role::Physician)),
    )
    .await;
    assert!(matches!(recv(&mut ws).await, ServerMsg::Joined { .. }));
    // Let the media session be created.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let publish = |sdp: &str, label: &str| {
        serde_json::json!({"type": "publish_offer", "sdp": sdp,
                           "tracks": [{"mid": "0", "label": label}]})
        .to_string()
    };

    let offer = hand_written_offer();
    // An audio m-line declared as a camera.
    send(&mut ws, &publish(&offer, "camera")).await;
    let mut answered = false;
    loop {
        match recv(&mut ws).await {
            ServerMsg::PublishAnswer { .. } => answered = true,
            ServerMsg::Error { code, message } => {
                assert_eq!(code, ErrorCode::BadSdp);
                eprintln!("kind mismatch: {message} (answered first: {answered})");
                break;
            }
            _ => {}
        }
    }
    // Truncated offers and garbage: each an error, none fatal.
    for cut in [0, 3, 10, 40, 80, 150, 300, 450, offer.len() - 20] {
        send(&mut ws, &publish(&offer[..cut], "microphone")).await;
        match recv(&mut ws).await {
            ServerMsg::Error { code, .. } => assert_eq!(code, ErrorCode::BadSdp, "cut {cut}"),
            ServerMsg::PublishAnswer { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    send(
        &mut ws,
        &publish("m=video 0 x\r\na=mid:::\r\n\u{0}\u{1}", "camera"),
    )
    .await;
    assert!(matches!(
        recv(&mut ws).await,
        ServerMsg::Error {
            code: ErrorCode::BadSdp,
            ..
        }
    ));
    // An answer nobody asked for.
    send(&mut ws, r#"{"type":"subscriber_answer","sdp":"v=0"}"#).await;
    assert!(matches!(
        recv(&mut ws).await,
        ServerMsg::Error {
            code: ErrorCode::BadSdp,
            ..
        }
    ));

    // The media plane still serves a real call.
    let mut doc = srv.join("room-ok", "dr-ok", Role::Physician).await;
    let mut nurse = srv.join("room-ok", "ide-ok", Role::Companion).await;
    doc.send(ClientMsg::Admit {
        participant_id: nurse.participant_id.clone(),
    })
    .unwrap();
    nurse.wait_admitted(WAIT).await.unwrap();
    let t = nurse.publish(&[TrackLabel::Stethoscope]).await.unwrap();
    let sender = t[0].send_synthetic(
        tag(4, TrackLabel::Stethoscope),
        100,
        Duration::from_millis(20),
        200,
    );
    let remote = take_tracks(&mut doc, 1).await.remove(0);
    assert_eq!(remote.info.label, TrackLabel::Stethoscope);
    let rx = collect(remote, TrackKind::Audio);
    sender.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (got, expected) = rx.lock().unwrap().coverage(99);
    assert!(
        expected >= 50 && got * 100 >= expected * 99,
        "{got}/{expected}"
    );
}
