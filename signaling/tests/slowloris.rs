//! One address holding hundreds of stalled connections (slowloris) does not keep a new
//! consultation from joining and getting media: connections beyond the per-address cap are
//! closed at once, idle ones (nothing sent, or a WebSocket that never joins) and slow ones
//! (headers never finished) are closed after their timeouts. And, with the default limits, a
//! WebSocket that has not sent `join` within 10 s is closed.

mod common;

use common::*;
use consult_protocol::{ClientMsg, Role, TrackLabel};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `server` from `127.0.0.2` (another address on the loopback).
async fn from_other_address(server: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind("127.0.0.2:0".parse().unwrap()).ok()?;
    socket.connect(server).await.ok()
}

/// Whether the server has closed `s` (end of stream or an error), waiting up to `limit`.
async fn closed(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An answer (a 101, a 408): keep reading until the close.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_from_one_address_do_not_stop_a_consultation() {
    let srv = start_server_with(|c| {
        c.max_connections_per_address = 64;
        c.idle_timeout_secs = 3;
        c.header_timeout_secs = 2;
    })
    .await;
    let addr = srv.server.http_addr;
    let mut stalled = Vec::new();
    for i in 0..300 {
        let Some(mut s) = from_other_address(addr).await else {
            continue;
        };
        match i % 3 {
            // Nothing at all (as after a TLS handshake).
            0 => {}
            // Headers never finished.
            1 => {
                let _ = s
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: ")
                    .await;
            }
            // A WebSocket that never joins.
            _ => {
                let upgrade = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                               Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
                let _ = s.write_all(upgrade.as_bytes()).await;
            }
        }
        stalled.push(s);
    }
    assert!(
        stalled.len() >= 250,
        "the attacker opened {}",
        stalled.len()
    );
    // Over the cap: closed at once.
    let mut refused = 0;
    for s in stalled.iter_mut() {
        if closed(s, Duration::from_millis(20)).await {
            refused += 1;
        }
    }
    assert!(
        refused >= stalled.len() - 64,
        "{refused} of {} closed at once",
        stalled.len()
    );

    // Meanwhile a consultation from another address joins and gets media.
    let started = Instant::now();
    let room = "room-slowloris";
    let mut doc = srv.join(room, "dr-sl", Role::Physician).await;
    let mut ide = srv.join(room, "ide-sl", Role::Companion).await;
    doc.send(ClientMsg::Admit {
        participant_id: ide.participant_id.clone(),
    })
    .unwrap();
    ide.wait_admitted(WAIT).await.unwrap();
    let t = ide.publish(&[TrackLabel::Stethoscope]).await.unwrap();
    let _sending = t[0].send_synthetic(
        tag(1, TrackLabel::Stethoscope),
        150,
        Duration::from_millis(20),
        100,
    );
    let steth = take_tracks(&mut doc, 1).await.remove(0);
    let (_, _) = tokio::time::timeout(WAIT, steth.track.read_rtp())
        .await
        .expect("media in time")
        .expect("a packet");
    eprintln!(
        "consultation up in {:?} beside the stalled connections",
        started.elapsed()
    );

    // The ones let in are closed by their timeouts.
    for s in stalled.iter_mut() {
        assert!(
            closed(s, Duration::from_secs(6)).await,
            "a stalled connection outlived its timeout"
        );
    }
    // The address can connect again (its slots were given back).
    let mut again = from_other_address(addr).await.expect("connects");
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    again.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The consultation is still up, past two idle timeouts: the physician's connection,
    // silent meanwhile, was pinged, not cut.
    tokio::time::sleep(Duration::from_secs(6)).await;
    doc.send(ClientMsg::Ping).unwrap();
    doc.wait_for(WAIT, |ev| match ev {
        consult_client::ClientEvent::Server(consult_protocol::ServerMsg::Pong) => Some(()),
        _ => None,
    })
    .await
    .expect("the physician's connection is still up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_never_joins_is_closed_after_10_s() {
    let srv = start_server().await;
    let mut s = TcpStream::connect(srv.server.http_addr).await.unwrap();
    let upgrade = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    s.write_all(upgrade.as_bytes()).await.unwrap();
    let opened = Instant::now();
    assert!(
        closed(&mut s, Duration::from_secs(13)).await,
        "still open after 13 s"
    );
    let after = opened.elapsed();
    eprintln!("closed after {after:?}");
    assert!(
        after >= Duration::from_secs(9),
        "closed too early: {after:?}"
    );
}
