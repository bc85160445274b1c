//! Far-end camera control: the physician steers the cart's otoscope; nobody else may.

mod common;

use common::*;
use consult_client::ClientEvent;
use consult_protocol::{ClientMsg, DeviceCommand, ErrorCode, Role, ServerMsg, TrackLabel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physician_steers_the_cart_otoscope() {
    let srv = start_server().await;
    let room = "room-ptz";
    let doc = srv.join(room, "dr-ptz", Role::Physician).await;
    let mut cart = srv.join(room, "cart-ptz", Role::Companion).await;
    let mut pat = srv.join(room, "pat-ptz", Role::Patient).await;
    for id in [&cart.participant_id, &pat.participant_id] {
        doc.send(ClientMsg::Admit {
            participant_id: id.clone(),
        })
        .unwrap();
    }
    cart.wait_admitted(WAIT).await.unwrap();
    pat.wait_admitted(WAIT).await.unwrap();

    let commands = [
        DeviceCommand::Zoom {
            label: TrackLabel::Otoscope,
            level: 2.5,
        },
        DeviceCommand::Freeze {
            label: TrackLabel::Otoscope,
        },
        DeviceCommand::Disable {
            label: TrackLabel::Otoscope,
        },
    ];
    for c in &commands {
        doc.send(ClientMsg::DeviceControl {
            participant_id: cart.participant_id.clone(),
            command: c.clone(),
        })
        .unwrap();
        let (from, got) = cart
            .wait_for(WAIT, |ev| match ev {
                ClientEvent::Server(ServerMsg::DeviceControl { from, command }) => {
                    Some((from, command))
                }
                _ => None,
            })
            .await
            .unwrap();
        assert_eq!(from, doc.participant_id);
        assert_eq!(&got, c);
    }

    // A patient cannot steer the cart.
    pat.send(ClientMsg::DeviceControl {
        participant_id: cart.participant_id.clone(),
        command: commands[0].clone(),
    })
    .unwrap();
    let code = pat
        .wait_for(WAIT, |ev| match ev {
            ClientEvent::Server(ServerMsg::Error { code, .. }) => Some(code),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(code, ErrorCode::Forbidden);

    let audit = srv.server.state.audit.read(Some(room)).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.action == "device_control")
            .count(),
        3
    );
}
