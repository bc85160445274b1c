//! The client and the cart over HTTPS/WSS: the server's self-signed development certificate is
//! refused unless trusted explicitly, and then signaling and still uploads work.

mod common;

use common::*;
use consult_client::stills::{StillQueue, StillUploader};
use consult_client::{Client, ClientOptions};
use consult_protocol::{Role, TrackLabel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_the_trusted_development_certificate() {
    let srv = start_server(true).await;
    let url = srv.ws_url();
    assert!(url.starts_with("wss://"), "{url}");
    let token = srv.token("room-tls", "cart-tls", Role::Companion);

    let refused = Client::connect(&url, &token, ClientOptions::default()).await;
    let err = format!(
        "{:#}",
        refused.err().expect("an untrusted certificate is refused")
    );
    eprintln!("without trust: {err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    let pem = std::fs::read(srv.dir.join("dev-cert.pem")).unwrap();
    let options = ClientOptions {
        trusted_cert_pem: Some(pem.clone()),
        ..ClientOptions::default()
    };
    let client = Client::connect(&url, &token, options)
        .await
        .expect("joins over wss with the certificate trusted");
    eprintln!("joined over wss as {}", client.participant_id);

    let dir = temp_dir("tls-stills");
    let queue = StillQueue::open(&dir).unwrap();
    let image = [0xFF, 0xD8, 0xFF, 0xE0, 0, 1, 2, 3, 4, 5, 0xFF, 0xD9];
    queue
        .enqueue(&image, TrackLabel::Otoscope, 1, None)
        .unwrap();
    let base = srv.http_base();
    assert!(base.starts_with("https://"));
    let untrusted = StillUploader::new(queue.clone(), &base, &token, None).unwrap();
    assert!(untrusted.upload_pending().await.is_err());
    assert_eq!(queue.pending().unwrap().len(), 1, "kept for a later try");
    let uploader = StillUploader::new(queue.clone(), &base, &token, Some(&pem)).unwrap();
    let done = uploader.upload_pending().await.expect("uploads over https");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].size, image.len() as u64);
    assert!(queue.pending().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(dir);
}
