//! A cart whose link drops comes back with the same token: it is in the room again without the
//! physician admitting it twice, and its stethoscope reaches the physician again. The time from
//! the drop to the first packet of the new stream is printed (a figure, not a timed assertion).

mod common;

use common::*;
use consult_client::{ClientEvent, ClientOptions};
use consult_protocol::{
    AdmissionState, ClientMsg, LeaveReason, Role, ServerMsg, TrackKind, TrackLabel,
};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_cart_rejoins_without_readmission() {
    let srv = start_server().await;
    let room = "room-reconnect";
    let mut doc = srv.join(room, "dr-rc", Role::Physician).await;
    let token = srv.token(room, "cart-rc", Role::Companion);
    let mut cart = consult_client::Client::connect(&srv.ws_url(), &token, ClientOptions::default())
        .await
        .unwrap();
    doc.send(ClientMsg::Admit {
        participant_id: cart.participant_id.clone(),
    })
    .unwrap();
    cart.wait_admitted(WAIT).await.unwrap();
    let t = cart.publish(&[TrackLabel::Stethoscope]).await.unwrap();
    let _first = t[0].send_synthetic(
        tag(1, TrackLabel::Stethoscope),
        200,
        Duration::from_millis(20),
        200,
    );
    take_tracks(&mut doc, 1).await;

    // The link drops.
    let dropped_at = Instant::now();
    cart.disconnect().await;
    let reason = doc
        .wait_for(WAIT, |ev| match ev {
            ClientEvent::Server(ServerMsg::ParticipantLeft { reason, .. }) => Some(reason),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(reason, LeaveReason::Disconnected);

    // Back with the same token: admitted at once, publishing again.
    let mut cart = consult_client::Client::connect(&srv.ws_url(), &token, ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(
        cart.state,
        AdmissionState::Admitted,
        "no second admission needed"
    );
    let t = cart.publish(&[TrackLabel::Stethoscope]).await.unwrap();
    let sender = t[0].send_synthetic(
        tag(2, TrackLabel::Stethoscope),
        150,
        Duration::from_millis(20),
        200,
    );
    let back = take_tracks(&mut doc, 1).await.remove(0);
    assert_eq!(back.info.participant_id, cart.participant_id);
    let (pkt, _) = back.track.read_rtp().await.unwrap();
    let reconnect = dropped_at.elapsed();
    eprintln!("reconnect: link drop → first stethoscope packet at the physician in {reconnect:?}");
    let rx = collect(back, TrackKind::Audio);
    sender.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = rx.lock().unwrap().clone();
    assert!(consult_client::synthetic::check_payload(TrackKind::Audio, &pkt.payload).is_some());
    assert!(r.tags.iter().all(|t| *t == tag(2, TrackLabel::Stethoscope)));
    let (got, expected) = r.coverage(149);
    assert!(
        got * 100 >= expected * 99 && expected > 100,
        "{got}/{expected}"
    );

    // The trail shows the rejoin.
    let audit = srv.server.state.audit.read(Some(room)).await.unwrap();
    assert!(audit
        .iter()
        .any(|r| r.action == "disconnect" && r.actor.as_deref() == Some("cart-rc")));
    assert!(audit
        .iter()
        .any(|r| r.action == "join" && r.detail["rejoin"] == true));
}

/// A participant admitted at once when it comes back has an offer waiting for it as soon as it
/// joins (the physician's tracks): `joined` must still be the first message it gets, since a
/// client ignores everything before it (a Chromium page that came back received no media when
/// the offer overtook `joined`). Many rejoins, as the race depends on thread scheduling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_comes_before_the_offer_of_a_participant_back() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    async fn first_message(ws: &mut Ws) -> ServerMsg {
        loop {
            let m = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("server answers in time")
                .expect("connection open")
                .expect("readable frame");
            if let Message::Text(t) = m {
                return serde_json::from_str(t.as_str()).expect("server JSON");
            }
        }
    }
    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;
    async fn join(srv: &TestServer, token: &str) -> (Ws, ServerMsg) {
        let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url())
            .await
            .expect("ws connects");
        let join = ClientMsg::Join {
            version: 1,
            token: token.into(),
            room: None,
            audio_rtx: false,
            twcc_omits_probes: false,
        };
        let text = serde_json::to_string(&join).unwrap();
        ws.send(Message::text(text)).await.expect("send");
        let first = first_message(&mut ws).await;
        (ws, first)
    }

    let srv = start_server().await;
    let room = "room-joined-first";
    let mut doc = srv.join(room, "dr-jf", Role::Physician).await;
    let _tracks = doc.publish(&[TrackLabel::Microphone]).await.unwrap();
    let token = srv.token(room, "patient-jf", Role::Patient);
    let (mut ws, first) = join(&srv, &token).await;
    let ServerMsg::Joined { participant_id, .. } = first else {
        panic!("expected joined, got {first:?}");
    };
    doc.send(ClientMsg::Admit { participant_id }).unwrap();
    loop {
        if let ServerMsg::Admitted { .. } = first_message(&mut ws).await {
            break;
        }
    }
    // Fewer than the joins an identity may make in a burst (`rate_limit::JOINS`).
    for round in 0..15 {
        ws.close(None).await.ok();
        drop(ws);
        let (next, first) = join(&srv, &token).await;
        match first {
            ServerMsg::Joined { state, .. } => {
                assert_eq!(state, AdmissionState::Admitted, "round {round}")
            }
            other => panic!("round {round}: first message {other:?}, not joined"),
        }
        ws = next;
        // The offer the race is about does come (after `joined`).
        while !matches!(
            first_message(&mut ws).await,
            ServerMsg::SubscriberOffer { .. }
        ) {}
    }
}
