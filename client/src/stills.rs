//! Still images from the cart: an on-disk queue and a resumable uploader.
//!
//! A still is written to the queue directory before any network use (`<stem>.img`, then
//! `<stem>.json` with its metadata: the JSON is written last, atomically, and marks the entry
//! complete), so a dropped link, a server restart or a cart reboot loses nothing. The uploader
//! sends queued stills oldest first through the resumable upload API (`docs/protocol.md`):
//! announce, then chunks at explicit offsets; after a failure it asks the server where the
//! upload stopped and goes on from there. An entry leaves the queue only once the server has
//! checked its SHA-256 and stored it.

use anyhow::{anyhow, Context};
use consult_protocol::{ApiError, StillInfo, StillUploadRequest, StillUploadStatus, TrackLabel};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{info, warn};

/// Bytes per upload request: small enough that a poor link makes steady progress.
pub const DEFAULT_CHUNK_BYTES: usize = 256 * 1024;

/// One queued still, as stored in `<stem>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    request: StillUploadRequest,
    /// The server's upload, once announced (reused after a drop).
    #[serde(default)]
    upload_id: Option<String>,
}

/// The on-disk queue of stills waiting for upload.
#[derive(Debug, Clone)]
pub struct StillQueue {
    dir: PathBuf,
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl StillQueue {
    /// Open (creating if needed) the queue in `dir`. Half-written entries left by a crash
    /// (an image without its JSON) are removed.
    pub fn open(dir: impl Into<PathBuf>) -> anyhow::Result<StillQueue> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        let q = StillQueue { dir };
        for entry in std::fs::read_dir(&q.dir)?.flatten() {
            let p = entry.path();
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
            let orphan = ext == "img" && !p.with_extension("json").exists();
            if ext == "tmp" || orphan {
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(q)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Put a still in the queue; returns its stem. The type comes from the image's bytes.
    pub fn enqueue(
        &self,
        image: &[u8],
        label: TrackLabel,
        taken_at_ms: i64,
        device: Option<String>,
    ) -> anyhow::Result<String> {
        let content_type = consult_protocol::still_content_type(image)
            .ok_or_else(|| anyhow!("not a JPEG or PNG image"))?
            .to_owned();
        // Stems sort in capture order: time, then a random part against collisions.
        let stem = format!("{:016}-{:08x}", now_ms(), rand_u32());
        let entry = Entry {
            request: StillUploadRequest {
                label,
                content_type,
                size: image.len() as u64,
                sha256: hex::encode(Sha256::digest(image)),
                taken_at_ms,
                device,
            },
            upload_id: None,
        };
        write_atomically(&self.dir.join(format!("{stem}.img")), image)?;
        write_atomically(
            &self.dir.join(format!("{stem}.json")),
            &serde_json::to_vec_pretty(&entry)?,
        )?;
        Ok(stem)
    }

    /// Stems of the complete entries, oldest first.
    pub fn pending(&self) -> anyhow::Result<Vec<String>> {
        let mut stems: Vec<String> = std::fs::read_dir(&self.dir)?
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "json").then(|| p.file_stem()?.to_str().map(str::to_owned))?
            })
            .collect();
        stems.sort();
        Ok(stems)
    }

    fn load(&self, stem: &str) -> anyhow::Result<(Entry, Vec<u8>)> {
        let entry: Entry =
            serde_json::from_slice(&std::fs::read(self.dir.join(format!("{stem}.json")))?)?;
        let image = std::fs::read(self.dir.join(format!("{stem}.img")))?;
        Ok((entry, image))
    }

    fn save(&self, stem: &str, entry: &Entry) -> anyhow::Result<()> {
        write_atomically(
            &self.dir.join(format!("{stem}.json")),
            &serde_json::to_vec_pretty(entry)?,
        )?;
        Ok(())
    }

    fn remove(&self, stem: &str) {
        let _ = std::fs::remove_file(self.dir.join(format!("{stem}.json")));
        let _ = std::fs::remove_file(self.dir.join(format!("{stem}.img")));
    }

    /// Set aside an entry the server refuses for good (kept for the operator, not retried).
    fn reject(&self, stem: &str, why: &str) {
        let rejected = self.dir.join("rejected");
        let _ = std::fs::create_dir_all(&rejected);
        for ext in ["img", "json"] {
            let _ = std::fs::rename(
                self.dir.join(format!("{stem}.{ext}")),
                rejected.join(format!("{stem}.{ext}")),
            );
        }
        let _ = std::fs::write(rejected.join(format!("{stem}.reason")), why);
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::Instant::now().elapsed().as_nanos());
    h.finish() as u32
}

/// Why an upload attempt stopped.
#[derive(Debug)]
enum Failure {
    /// Network or server trouble: retry later.
    Transient(anyhow::Error),
    /// The server refuses this still for good (type, size, hash…).
    Refused(String),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Transient(e.into())
    }
}

/// Sends the queue's stills to the server.
pub struct StillUploader {
    queue: StillQueue,
    http: reqwest::Client,
    base: String,
    token: String,
    chunk_bytes: usize,
}

impl StillUploader {
    /// `base` is the server's HTTP base URL (see [`crate::tls::http_base`]).
    pub fn new(
        queue: StillQueue,
        base: &str,
        token: &str,
        trusted_cert_pem: Option<&[u8]>,
    ) -> anyhow::Result<StillUploader> {
        Ok(StillUploader {
            queue,
            http: crate::tls::http_client(trusted_cert_pem, Duration::from_secs(30))?,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
        })
    }

    pub fn with_chunk_bytes(mut self, n: usize) -> StillUploader {
        self.chunk_bytes = n.max(1);
        self
    }

    /// Upload every queued still, oldest first. Returns the stills stored, or the first
    /// transient error (what is left stays queued).
    pub async fn upload_pending(&self) -> anyhow::Result<Vec<StillInfo>> {
        let mut done = Vec::new();
        for stem in self.queue.pending()? {
            match self.upload_one(&stem).await {
                Ok(info) => {
                    info!(still = %info.still_id, size = info.size, "still uploaded");
                    self.queue.remove(&stem);
                    done.push(info);
                }
                Err(Failure::Refused(why)) => {
                    warn!(%stem, %why, "still refused by the server; set aside");
                    self.queue.reject(&stem, &why);
                }
                Err(Failure::Transient(e)) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Upload in the background: at start, when `wake` is notified (a new still), and after a
    /// failure with backoff (0.5 s doubling to 10 s), until the task is aborted.
    pub fn spawn(self, wake: Arc<Notify>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                match self.upload_pending().await {
                    Ok(_) => {
                        backoff = Duration::from_millis(500);
                        wake.notified().await;
                    }
                    Err(e) => {
                        warn!("still upload interrupted ({e:#}); retrying in {backoff:?}");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = wake.notified() => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        })
    }

    async fn upload_one(&self, stem: &str) -> Result<StillInfo, Failure> {
        let (mut entry, image) = self.queue.load(stem)?;
        if image.len() as u64 != entry.request.size {
            return Err(Failure::Refused("queued image changed size".into()));
        }
        let mut status = match &entry.upload_id {
            Some(id) => match self.status(id).await? {
                Some(s) => s,
                // The server forgot it (restart, expiry): announce again.
                None => self.begin(stem, &mut entry).await?,
            },
            None => self.begin(stem, &mut entry).await?,
        };
        loop {
            if let Some(still) = status.still {
                return Ok(still);
            }
            let start = usize::try_from(status.offset).unwrap_or(usize::MAX);
            if start >= image.len() {
                return Err(Failure::Transient(anyhow!(
                    "server at offset {start} of {} without a still",
                    image.len()
                )));
            }
            let end = (start + self.chunk_bytes).min(image.len());
            let resp = self
                .http
                .put(format!(
                    "{}/api/stills/uploads/{}?offset={start}",
                    self.base, status.upload_id
                ))
                .bearer_auth(&self.token)
                .body(image[start..end].to_vec())
                .send()
                .await?;
            status = match resp.status().as_u16() {
                200 => resp.json().await?,
                // A chunk sent before the drop did arrive: ask where to go on.
                409 => self
                    .status(&status.upload_id)
                    .await?
                    .ok_or_else(|| anyhow!("upload vanished"))?,
                404 => self.begin(stem, &mut entry).await?,
                _ => return Err(refusal(resp).await),
            };
        }
    }

    async fn begin(&self, stem: &str, entry: &mut Entry) -> Result<StillUploadStatus, Failure> {
        let resp = self
            .http
            .post(format!("{}/api/stills", self.base))
            .bearer_auth(&self.token)
            .json(&entry.request)
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(refusal(resp).await);
        }
        let status: StillUploadStatus = resp.json().await?;
        entry.upload_id = Some(status.upload_id.clone());
        self.queue.save(stem, entry)?;
        Ok(status)
    }

    /// Where the server is with upload `id`; `None` if it does not know it.
    async fn status(&self, id: &str) -> Result<Option<StillUploadStatus>, Failure> {
        let resp = self
            .http
            .get(format!("{}/api/stills/uploads/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        match resp.status().as_u16() {
            200 => Ok(Some(resp.json().await?)),
            404 => Ok(None),
            _ => Err(refusal(resp).await),
        }
    }
}

/// A non-success answer: refused for good on 4xx about the still itself, else transient
/// (server errors; an expired or wrong token may be replaced by a rejoin).
async fn refusal(resp: reqwest::Response) -> Failure {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<ApiError>(&body)
        .map(|e| format!("{:?}: {}", e.code, e.message))
        .unwrap_or(body);
    match status {
        400 | 413 | 415 | 422 => Failure::Refused(format!("HTTP {status} {message}")),
        _ => Failure::Transient(anyhow!("HTTP {status} {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        std::env::temp_dir().join(format!("still-queue-{:08x}", rand_u32()))
    }

    #[test]
    fn queue_keeps_entries_in_capture_order_and_drops_half_written_ones() {
        let dir = tmp();
        let q = StillQueue::open(&dir).unwrap();
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 0xFF, 0xD9];
        let a = q.enqueue(&jpeg, TrackLabel::Otoscope, 1, None).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let b = q.enqueue(&jpeg, TrackLabel::Otoscope, 2, None).unwrap();
        assert!(q.enqueue(b"GIF89a", TrackLabel::Otoscope, 3, None).is_err());
        // A crash between the image and its JSON.
        std::fs::write(dir.join("0000000000000000-deadbeef.img"), jpeg).unwrap();
        let q = StillQueue::open(&dir).unwrap();
        assert_eq!(q.pending().unwrap(), vec![a.clone(), b]);
        assert!(!dir.join("0000000000000000-deadbeef.img").exists());
        let (entry, image) = q.load(&a).unwrap();
        assert_eq!(image, jpeg);
        assert_eq!(entry.request.content_type, "image/jpeg");
        assert_eq!(entry.request.sha256, hex::encode(Sha256::digest(jpeg)));
        let _ = std::fs::remove_dir_all(dir);
    }
}
