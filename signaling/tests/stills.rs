//! Still image uploads: checked type and size, tokens and rooms enforced, and an upload cut
//! off mid-way resumes where it stopped and arrives intact, announced to the physician.

mod common;

use common::*;
use consult_client::ClientEvent;
use consult_protocol::{
    ApiError, AuditRecord, ErrorCode, Role, ServerMsg, StillInfo, StillUploadStatus,
};
use serde_json::json;
use sha2::{Digest, Sha256};

/// A small but real JPEG-looking file: SOI marker, then pseudo-random bytes.
fn jpeg(len: usize) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0];
    let mut x = 0x1234_5678u32;
    while v.len() < len - 2 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    v.extend_from_slice(&[0xFF, 0xD9]);
    v
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

struct Api<'a> {
    srv: &'a TestServer,
    http: reqwest::Client,
}

impl Api<'_> {
    async fn begin(&self, token: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.srv.http_url("/api/stills"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn put(&self, token: &str, id: &str, offset: u64, chunk: &[u8]) -> reqwest::Response {
        self.http
            .put(
                self.srv
                    .http_url(&format!("/api/stills/uploads/{id}?offset={offset}")),
            )
            .bearer_auth(token)
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap()
    }
}

async fn error_of(r: reqwest::Response, status: u16) -> ErrorCode {
    assert_eq!(r.status().as_u16(), status);
    r.json::<ApiError>().await.unwrap().code
}

fn announce(file: &[u8], content_type: &str) -> serde_json::Value {
    json!({"label": "otoscope", "content_type": content_type, "size": file.len(),
           "sha256": sha(file), "taken_at_ms": 1_790_000_000_000i64, "device": "otoscope USB"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_upload_resumes_and_reaches_the_physician() {
    let srv = start_server().await;
    let api = Api {
        srv: &srv,
        http: reqwest::Client::new(),
    };
    let room = "room-stills";
    let mut doc = srv.join(room, "dr-stills", Role::Physician).await;
    let nurse = srv.token(room, "ide-stills", Role::Companion);
    let file = jpeg(300_000);

    let st: StillUploadStatus = api
        .begin(&nurse, announce(&file, "image/jpeg"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(st.offset, 0);
    // The first 120 kB go through, then the link drops.
    let st: StillUploadStatus = api
        .put(&nurse, &st.upload_id, 0, &file[..120_000])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(st.offset, 120_000);
    // Back online: the client asks where it stopped…
    let resumed: StillUploadStatus = api
        .http
        .get(srv.http_url(&format!("/api/stills/uploads/{}", st.upload_id)))
        .bearer_auth(&nurse)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resumed.offset, 120_000);
    // …a chunk at a stale offset is refused with the right one…
    let r = api.put(&nurse, &st.upload_id, 0, &file[..1000]).await;
    assert_eq!(error_of(r, 409).await, ErrorCode::Conflict);
    // …and the rest completes it.
    let done: StillUploadStatus = api
        .put(&nurse, &st.upload_id, 120_000, &file[120_000..])
        .await
        .json()
        .await
        .unwrap();
    let still = done.still.expect("complete");
    assert_eq!(still.size, file.len() as u64);
    assert_eq!(still.sha256, sha(&file));
    assert_eq!(still.author_identity, "ide-stills");

    // The physician is told, sees it in the gallery, and downloads the same bytes.
    let announced = doc
        .wait_for(WAIT, |ev| match ev {
            ClientEvent::Server(ServerMsg::StillAvailable { still }) => Some(still),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(announced.still_id, still.still_id);
    let doc_token = srv.token(room, "dr-stills", Role::Physician);
    let gallery: Vec<StillInfo> = api
        .http
        .get(srv.http_url("/api/stills"))
        .bearer_auth(&doc_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(gallery.len(), 1);
    let bytes = api
        .http
        .get(srv.http_url(&format!("/api/stills/{}", still.still_id)))
        .bearer_auth(&doc_token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha(&bytes), sha(&file));
    let audit: Vec<AuditRecord> = srv.server.state.audit.read(Some(room)).await.unwrap();
    assert!(audit
        .iter()
        .any(|r| r.action == "still_uploaded" && r.detail["sha256"] == sha(&file)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused() {
    let srv = start_server().await;
    // A fresh connection per request: the server closes one whose body it refused early.
    let api = Api {
        srv: &srv,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
    };
    let nurse = srv.token("room-s1", "ide-1", Role::Companion);
    let file = jpeg(5000);

    // Wrong type, announced or actual.
    let r = api.begin(&nurse, announce(&file, "image/gif")).await;
    assert_eq!(error_of(r, 415).await, ErrorCode::UnsupportedType);
    let png_claimed: StillUploadStatus = api
        .begin(&nurse, announce(&file, "image/png"))
        .await
        .json()
        .await
        .unwrap();
    let r = api.put(&nurse, &png_claimed.upload_id, 0, &file).await;
    assert_eq!(error_of(r, 415).await, ErrorCode::UnsupportedType);

    // Oversized: announced, or a chunk past the announced size.
    let mut big = announce(&file, "image/jpeg");
    big["size"] = json!(26 * 1024 * 1024);
    let r = api.begin(&nurse, big).await;
    assert_eq!(error_of(r, 413).await, ErrorCode::TooLarge);
    let st: StillUploadStatus = api
        .begin(&nurse, announce(&file, "image/jpeg"))
        .await
        .json()
        .await
        .unwrap();
    let mut longer = file.clone();
    longer.extend_from_slice(&[0; 10]);
    let r = api.put(&nurse, &st.upload_id, 0, &longer).await;
    assert_eq!(error_of(r, 413).await, ErrorCode::TooLarge);
    // A body over the transport limit is refused before reaching the store: a 413, or the
    // server closing the connection while the body is still being sent.
    let r = api
        .http
        .put(srv.http_url(&format!("/api/stills/uploads/{}?offset=0", st.upload_id)))
        .bearer_auth(&nurse)
        .body(vec![0u8; 5 * 1024 * 1024])
        .send()
        .await;
    match r {
        Ok(resp) => assert_eq!(resp.status().as_u16(), 413),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    let status: StillUploadStatus = api
        .http
        .get(srv.http_url(&format!("/api/stills/uploads/{}", st.upload_id)))
        .bearer_auth(&nurse)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status.offset, 0, "nothing of it was stored");

    // Bytes that do not match the announced hash.
    let mut corrupted = file.clone();
    corrupted[100] ^= 1;
    let r = api.put(&nurse, &st.upload_id, 0, &corrupted).await;
    assert_eq!(error_of(r, 422).await, ErrorCode::BadRequest);

    // Bad token, patient, wrong room, someone else's upload.
    let r = api
        .begin("not-a-token", announce(&file, "image/jpeg"))
        .await;
    assert_eq!(error_of(r, 401).await, ErrorCode::BadToken);
    let patient = srv.token("room-s1", "pat-1", Role::Patient);
    let r = api.begin(&patient, announce(&file, "image/jpeg")).await;
    assert_eq!(error_of(r, 403).await, ErrorCode::Forbidden);
    let st: StillUploadStatus = api
        .begin(&nurse, announce(&file, "image/jpeg"))
        .await
        .json()
        .await
        .unwrap();
    let other_room = srv.token("room-s2", "ide-1", Role::Companion);
    let r = api.put(&other_room, &st.upload_id, 0, &file).await;
    assert_eq!(error_of(r, 403).await, ErrorCode::WrongRoom);
    let colleague = srv.token("room-s1", "ide-2", Role::Companion);
    let r = api.put(&colleague, &st.upload_id, 0, &file).await;
    assert_eq!(error_of(r, 403).await, ErrorCode::Forbidden);
    let doc_b = srv.token("room-s2", "dr-b", Role::Physician);
    let r = api
        .http
        .get(srv.http_url("/api/stills?room=room-s1"))
        .bearer_auth(&doc_b)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r, 403).await, ErrorCode::WrongRoom);
    let r = api
        .http
        .get(srv.http_url("/api/stills/..%2F..%2Faudit.db"))
        .bearer_auth(srv.token("room-s1", "dr-a", Role::Physician))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r, 404).await, ErrorCode::NotFound);
    // Nothing bad was stored.
    let list: Vec<StillInfo> = api
        .http
        .get(srv.http_url("/api/stills"))
        .bearer_auth(srv.token("room-s1", "dr-a", Role::Physician))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list.is_empty());
    // The upload that was fine still completes.
    let done: StillUploadStatus = api
        .put(&nurse, &st.upload_id, 0, &file)
        .await
        .json()
        .await
        .unwrap();
    assert!(done.still.is_some());
}

/// Rooms whose names differ only in punctuation (`ward.1`, `ward_1`) keep their stills apart:
/// the second room's physician neither lists nor downloads the first room's still.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stills_stay_in_their_room_whatever_its_name() {
    let srv = start_server().await;
    let api = Api {
        srv: &srv,
        http: reqwest::Client::new(),
    };
    let nurse = srv.token("ward.1", "ide-ward", Role::Companion);
    let file = jpeg(20_000);
    let st: StillUploadStatus = api
        .begin(&nurse, announce(&file, "image/jpeg"))
        .await
        .json()
        .await
        .unwrap();
    let done: StillUploadStatus = api
        .put(&nurse, &st.upload_id, 0, &file)
        .await
        .json()
        .await
        .unwrap();
    let still = done.still.expect("complete");

    let gallery = |token: String| {
        let http = api.http.clone();
        let url = srv.http_url("/api/stills");
        async move {
            let r = http.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.json::<Vec<StillInfo>>().await.unwrap()
        }
    };
    let own = srv.token("ward.1", "dr-ward", Role::Physician);
    assert_eq!(gallery(own.clone()).await.len(), 1, "its own room lists it");
    let other = srv.token("ward_1", "dr-other", Role::Physician);
    assert!(
        gallery(other.clone()).await.is_empty(),
        "another room lists nothing"
    );
    let r = api
        .http
        .get(srv.http_url(&format!("/api/stills/{}", still.still_id)))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r, 404).await, ErrorCode::NotFound);
    let r = api
        .http
        .get(srv.http_url(&format!("/api/stills/{}", still.still_id)))
        .bearer_auth(&own)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// A consultation that has ended takes no more stills (its companion's token lives on): neither
/// a new upload nor the rest of one begun before the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_consultation_takes_no_stills() {
    let srv = start_server().await;
    let api = Api {
        srv: &srv,
        http: reqwest::Client::new(),
    };
    let room = "room-ended-stills";
    let doc = srv.join(room, "dr-ended", Role::Physician).await;
    let nurse = srv.token(room, "ide-ended", Role::Companion);
    let file = jpeg(20_000);
    let st: StillUploadStatus = api
        .begin(&nurse, announce(&file, "image/jpeg"))
        .await
        .json()
        .await
        .unwrap();
    doc.send(consult_protocol::ClientMsg::EndConsultation)
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = api.put(&nurse, &st.upload_id, 0, &file).await;
    assert_eq!(error_of(r, 403).await, ErrorCode::ConsultationEnded);
    let r = api.begin(&nurse, announce(&file, "image/jpeg")).await;
    assert_eq!(error_of(r, 403).await, ErrorCode::ConsultationEnded);
}
