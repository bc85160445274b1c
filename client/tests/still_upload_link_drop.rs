//! A still taken on the cart reaches the physician intact although the link drops during its
//! upload and the cart restarts meanwhile: the still waits in the on-disk queue, and the upload
//! resumes where the server stopped instead of starting again.

mod common;

use common::*;
use consult_client::stills::{StillQueue, StillUploader};
use consult_client::ClientEvent;
use consult_protocol::{Role, ServerMsg, StillInfo, TrackLabel};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A TCP link to the server that can be cut after some bytes and restored.
struct Link {
    addr: SocketAddr,
    up: AtomicBool,
    /// Client → server bytes forwarded.
    sent: AtomicU64,
    /// Cut the link once this many bytes went through.
    cut_after: AtomicU64,
    cut: Notify,
}

impl Link {
    async fn start(upstream: SocketAddr) -> Arc<Link> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let link = Arc::new(Link {
            addr: listener.local_addr().unwrap(),
            up: AtomicBool::new(true),
            sent: AtomicU64::new(0),
            cut_after: AtomicU64::new(u64::MAX),
            cut: Notify::new(),
        });
        let l = link.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                if !l.up.load(Ordering::SeqCst) {
                    drop(down); // refused while the link is down
                    continue;
                }
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(l.clone().pump(down, up));
            }
        });
        link
    }

    async fn pump(self: Arc<Link>, down: TcpStream, up: TcpStream) {
        let (mut dr, mut dw) = down.into_split();
        let (mut ur, mut uw) = up.into_split();
        let me = self.clone();
        let to_server = async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match dr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if !me.up.load(Ordering::SeqCst) {
                    return;
                }
                let total = me.sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                if total >= me.cut_after.load(Ordering::SeqCst) {
                    me.up.store(false, Ordering::SeqCst);
                    me.cut.notify_waiters();
                    return;
                }
                if uw.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        let me = self.clone();
        let to_client = async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match ur.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if !me.up.load(Ordering::SeqCst) || dw.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        // Either direction ending, or the link being cut, closes both sockets.
        tokio::select! {
            _ = to_server => {}
            _ = to_client => {}
            _ = self.cut.notified() => {}
        }
    }
}

/// A JPEG-looking file: SOI marker, pseudo-random bytes, EOI marker.
fn jpeg(len: usize) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0];
    let mut x = 0x9E37_79B9u32;
    while v.len() < len - 2 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    v.extend_from_slice(&[0xFF, 0xD9]);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn still_uploaded_during_a_link_drop_arrives_intact() {
    let srv = start_server(false).await;
    let room = "room-still-drop";
    let mut doc = srv.join(room, "dr-still", Role::Physician).await;
    let token = srv.token(room, "cart-still", Role::Companion);
    let mut cart = consult_client::Client::connect(&srv.ws_url(), &token, Default::default())
        .await
        .unwrap();
    admit_first_waiting(&mut doc).await;
    cart.wait_admitted(WAIT).await.unwrap();

    let link = Link::start(srv.server.http_addr).await;
    let base = format!("http://{}", link.addr);
    let dir = temp_dir("still-queue");
    let image = jpeg(3 * 1024 * 1024);
    let queue = StillQueue::open(&dir).unwrap();
    queue
        .enqueue(
            &image,
            TrackLabel::Otoscope,
            1_790_000_000_000,
            Some("otoscope".into()),
        )
        .unwrap();

    // The link drops a third of the way through the upload.
    link.cut_after.store(1024 * 1024, Ordering::SeqCst);
    let wake = Arc::new(Notify::new());
    let uploader = StillUploader::new(queue.clone(), &base, &token, None)
        .unwrap()
        .spawn(wake.clone());
    tokio::time::timeout(Duration::from_secs(20), async {
        while link.up.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the link is cut during the upload");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(queue.pending().unwrap().len(), 1, "the still waits on disk");
    let early = doc
        .wait_for(Duration::from_millis(200), |ev| match ev {
            ClientEvent::Server(ServerMsg::StillAvailable { still }) => Some(still),
            _ => None,
        })
        .await;
    assert!(early.is_err(), "nothing arrived while the link was down");

    // The cart restarts during the outage: a new process opens the same queue.
    uploader.abort();
    let queue = StillQueue::open(&dir).unwrap();
    assert_eq!(queue.pending().unwrap().len(), 1);
    let sent_before = link.sent.load(Ordering::SeqCst);
    link.cut_after.store(u64::MAX, Ordering::SeqCst);
    link.up.store(true, Ordering::SeqCst);
    let restored = std::time::Instant::now();
    let uploader = StillUploader::new(queue.clone(), &base, &token, None)
        .unwrap()
        .spawn(wake.clone());

    let still: StillInfo = doc
        .wait_for(Duration::from_secs(30), |ev| match ev {
            ClientEvent::Server(ServerMsg::StillAvailable { still }) => Some(still),
            _ => None,
        })
        .await
        .expect("the still arrives once the link is back");
    let after = restored.elapsed();
    // The uploader removes the entry once it has read the server's answer.
    tokio::time::timeout(Duration::from_secs(5), async {
        while !queue.pending().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the queue empties once the still is stored");
    uploader.abort();
    let resent = link.sent.load(Ordering::SeqCst) - sent_before;
    eprintln!(
        "link cut after {sent_before} bytes; after restoring, {resent} more bytes and {after:?} \
         to complete a {} byte still",
        image.len()
    );
    assert_eq!(still.size, image.len() as u64);
    assert_eq!(still.sha256, hex::encode(Sha256::digest(&image)));
    assert_eq!(still.author_identity, "cart-still");
    assert_eq!(still.device.as_deref(), Some("otoscope"));
    assert!(
        resent < image.len() as u64 - 512 * 1024,
        "resumed from the server's offset, not from the start: {resent} bytes sent again"
    );

    // The stored file is the cart's, byte for byte.
    let stored = reqwest::Client::new()
        .get(format!(
            "{}/api/stills/{}?room={room}",
            srv.http_base(),
            still.still_id
        ))
        .header("authorization", srv.api_auth())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(stored[..] == image[..], "stored bytes differ");
    let _ = std::fs::remove_dir_all(dir);
}
