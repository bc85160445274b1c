//! Writing consented recordings: one file per recorded track under
//! `recordings/<room>/<recording id>-<label>-<participant>.{ogg,ivf}.sealed` in the data
//! directory, encrypted at rest (`consult_recorder::sealed`) as it is written;
//! [`export`] (and `consult-server export-recording`) gives back the standard file.
//!
//! Each track gets a tap on the SFU (a bounded channel: a slow disk loses packets, never
//! slows forwarding) and a writer thread (file I/O stays off the async runtime). Stopping sets
//! a flag; the writer drains what it has, closes the file, and the tap ends with its receiver.

use crate::audit::AuditLog;
use consult_protocol::{RecordedTrack, TrackKind};
use consult_recorder::ogg_opus::OggOpusRecorder;
use consult_recorder::sealed::{Key, SealedWriter};
use consult_recorder::vp8_ivf::Vp8IvfRecorder;
use consult_sfu::{SfuHandle, TapPacket};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Packets a tap buffers before dropping (several seconds of video).
const TAP_DEPTH: usize = 2048;

pub struct Recordings {
    dir: PathBuf,
    key: Key,
    /// Stop flags of running recordings, by recording id.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Writer threads not finished yet (a file still open).
    writers: Arc<AtomicUsize>,
}

/// Counts a writer thread as live until it ends (a panic included).
struct LiveWriter(Arc<AtomicUsize>);

impl Drop for LiveWriter {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Recordings {
    pub fn new(data_dir: &Path, key: Key) -> Recordings {
        Recordings {
            dir: data_dir.join("recordings"),
            key,
            running: Mutex::new(HashMap::new()),
            writers: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Recordings being written now.
    pub fn active(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Whether recording `id` is being written.
    pub fn is_running(&self, id: &str) -> bool {
        self.running.lock().is_ok_and(|r| r.contains_key(id))
    }

    pub fn start(
        &self,
        sfu: &SfuHandle,
        audit: &AuditLog,
        room: &str,
        id: &str,
        tracks: &[RecordedTrack],
    ) {
        let stop = Arc::new(AtomicBool::new(false));
        if let Ok(mut r) = self.running.lock() {
            r.insert(id.to_owned(), stop.clone());
        }
        let dir = self.dir.join(crate::summary::file_stem(room));
        for t in tracks {
            let Some((participant, mid)) = t.track_id.split_once('/') else {
                continue;
            };
            let ext = match t.kind {
                TrackKind::Audio => "ogg.sealed",
                TrackKind::Video => "ivf.sealed",
            };
            let path = dir.join(format!("{id}-{}-{participant}.{ext}", t.label));
            let (tx, rx) = mpsc::channel(TAP_DEPTH);
            let writer = spawn_writer(
                path.clone(),
                &self.key,
                t.clone(),
                rx,
                stop.clone(),
                audit.clone(),
                room,
                &self.writers,
            );
            if let Err(e) = writer {
                warn!(room, "recording not started: {e:#}");
                recorder_error(audit, room, id, &format!("{e:#}"));
                continue;
            }
            let tap = sfu.tap(participant, mid, tx);
            let (a, r, i) = (audit.clone(), room.to_owned(), id.to_owned());
            tokio::spawn(async move {
                if let Err(e) = tap.await {
                    recorder_error(&a, &r, &i, &e.to_string());
                }
            });
            info!(room, path = %path.display(), "recording track");
        }
    }

    pub fn stop(&self, id: &str) {
        let stop = self.running.lock().ok().and_then(|mut r| r.remove(id));
        if let Some(s) = stop {
            s.store(true, Ordering::Relaxed);
        }
    }

    /// Wait (at most `limit`) until every writer has closed its file and recorded it in the
    /// audit trail; false if some are still writing. For a shutdown, after the rooms stopped
    /// their recordings.
    pub async fn wait_closed(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.writers.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

fn recorder_error(audit: &AuditLog, room: &str, id: &str, error: &str) {
    audit.record(
        room,
        None,
        "incident",
        None,
        json!({"kind": "recorder_error", "recording_id": id, "error": error}),
    );
}

#[allow(clippy::too_many_arguments)]
fn spawn_writer(
    path: PathBuf,
    key: &Key,
    track: RecordedTrack,
    mut rx: mpsc::Receiver<TapPacket>,
    stop: Arc<AtomicBool>,
    audit: AuditLog,
    room: &str,
    writers: &Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = SealedWriter::new(std::fs::File::create(&path)?, key)?;
    let room = room.to_owned();
    writers.fetch_add(1, Ordering::SeqCst);
    let live = LiveWriter(writers.clone());
    std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || {
            let _live = live;
            let label = track.label.to_string();
            let result = match track.kind {
                TrackKind::Audio => {
                    let serial = rand::random::<u32>();
                    OggOpusRecorder::new(file, serial, 1, &[("TITLE", label.as_str())]).and_then(
                        |mut w| {
                            pump(&mut rx, &stop, |p| w.push(p.seq, p.timestamp, &p.payload))?;
                            let (sealed, s) = w.finish()?;
                            sealed.finish()?;
                            Ok(json!({"packets": s.packets_written, "lost_frames": s.lost_frames_filled,
                                      "seconds": s.duration_samples as f64 / 48_000.0}))
                        },
                    )
                }
                TrackKind::Video => {
                    let mut w = Vp8IvfRecorder::new(file);
                    pump(&mut rx, &stop, |p| {
                        w.push(p.seq, p.timestamp, p.marker, &p.payload)
                    })
                    .and_then(|()| w.finish())
                    .and_then(|(sealed, s)| {
                        sealed.finish()?;
                        Ok(json!({"frames": s.frames_written, "frames_dropped": s.frames_dropped,
                                  "seconds": s.duration_secs}))
                    })
                }
            };
            match result {
                Ok(detail) => {
                    info!(path = %path.display(), %detail, "recording closed");
                    audit.record(
                        &room,
                        None,
                        "recording_file",
                        None,
                        json!({"file": path.file_name().map(|f| f.to_string_lossy().to_string()),
                               "track_id": track.track_id, "label": track.label, "stats": detail}),
                    );
                }
                Err(e) => {
                    warn!(path = %path.display(), "recording failed: {e}");
                    audit.record(
                        &room,
                        None,
                        "incident",
                        None,
                        json!({"kind": "recorder_error", "track_id": track.track_id,
                               "error": e.to_string()}),
                    );
                }
            }
        })?;
    Ok(())
}

/// Feed packets to `push` until stopped (or the tap is gone), then what is left.
fn pump(
    rx: &mut mpsc::Receiver<TapPacket>,
    stop: &AtomicBool,
    mut push: impl FnMut(&TapPacket) -> std::io::Result<()>,
) -> std::io::Result<()> {
    loop {
        match rx.try_recv() {
            Ok(p) => push(&p)?,
            Err(mpsc::error::TryRecvError::Empty) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
        }
    }
}

/// Decrypt a sealed recording into its standard file (Ogg/Opus or IVF, the IVF length set).
/// Returns whether the file had been closed properly (false: cut short by a crash; what was
/// written up to the last second is there).
pub fn export(sealed: &Path, out: &Path, key: &Key) -> anyhow::Result<bool> {
    let opened = consult_recorder::sealed::open(std::fs::File::open(sealed)?, key)?;
    let mut data = opened.plaintext;
    if data.starts_with(b"DKIF") {
        consult_recorder::vp8_ivf::fix_ivf_length(&mut data);
    }
    std::fs::write(out, data)?;
    Ok(opened.complete)
}
