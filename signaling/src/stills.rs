//! Still images (téléexpertise store-and-forward): resumable uploads, checked and stored on disk.
//!
//! An upload is announced with its size and SHA-256, then sent in chunks at explicit offsets,
//! so a client whose link dropped asks where it stopped and goes on from there. On the last
//! chunk the file's type (by its magic bytes) and hash are checked before it becomes a still.
//! Each still is `<id>.<ext>` beside `<id>.json` (its metadata) under `stills/<room>/`.

use consult_protocol::{
    ErrorCode, Role, StillInfo, StillUploadRequest, StillUploadStatus, TokenClaims,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Largest still accepted (a full-resolution dermatoscope JPEG is a few MiB).
pub const MAX_STILL_BYTES: u64 = 25 * 1024 * 1024;

/// A refused request, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StillError {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
}

fn refuse(status: u16, code: ErrorCode, message: impl Into<String>) -> StillError {
    StillError {
        status,
        code,
        message: message.into(),
    }
}

struct Upload {
    meta: StillInfo,
    part: PathBuf,
    offset: u64,
}

pub struct StillStore {
    dir: PathBuf,
    uploads: Mutex<HashMap<String, Upload>>,
}

fn extension(content_type: &str) -> Option<&'static str> {
    match content_type {
        "image/jpeg" => Some("jpg"),
        "image/png" => Some("png"),
        _ => None,
    }
}

fn safe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl StillStore {
    pub fn new(data_dir: &Path) -> StillStore {
        StillStore {
            dir: data_dir.join("stills"),
            uploads: Mutex::new(HashMap::new()),
        }
    }

    /// A room's folder: its name made path-safe, then a hash of the name itself, so that two
    /// rooms whose names differ only in characters the cleaning replaces (`ward.1`, `ward_1`)
    /// never share a folder.
    fn room_dir(&self, room: &str) -> PathBuf {
        let hash = hex::encode(&Sha256::digest(room.as_bytes())[..16]);
        let name: String = clean_room_name(room).chars().take(64).collect();
        self.dir.join(format!("{name}-{hash}"))
    }

    /// The folder earlier versions kept a room's stills in (its cleaned name alone, shared by
    /// rooms whose names clean alike): still read, each still checked against its room.
    fn legacy_room_dir(&self, room: &str) -> PathBuf {
        self.dir.join(clean_room_name(room))
    }

    /// Announce an upload. Only professionals (physician, companion) take stills.
    pub fn begin(
        &self,
        who: &TokenClaims,
        req: StillUploadRequest,
    ) -> Result<StillUploadStatus, StillError> {
        if who.role == Role::Patient {
            return Err(refuse(
                403,
                ErrorCode::Forbidden,
                "stills are taken by the physician or the accompanying professional",
            ));
        }
        let ext = extension(&req.content_type).ok_or_else(|| {
            refuse(
                415,
                ErrorCode::UnsupportedType,
                "only image/jpeg and image/png are accepted",
            )
        })?;
        if req.size == 0 || req.size > MAX_STILL_BYTES {
            return Err(refuse(
                413,
                ErrorCode::TooLarge,
                format!("a still is 1 to {MAX_STILL_BYTES} bytes"),
            ));
        }
        let sha = req.sha256.to_ascii_lowercase();
        if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(refuse(
                400,
                ErrorCode::BadRequest,
                "sha256 must be 64 hex digits",
            ));
        }
        if req.label.kind() != consult_protocol::TrackKind::Video {
            return Err(refuse(
                400,
                ErrorCode::BadRequest,
                "a still comes from a video track",
            ));
        }
        let id = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let dir = self.room_dir(&who.room);
        std::fs::create_dir_all(&dir).map_err(internal)?;
        let part = dir.join(format!("{id}.{ext}.part"));
        std::fs::File::create(&part).map_err(internal)?;
        let meta = StillInfo {
            still_id: id.clone(),
            room: who.room.clone(),
            author_identity: who.sub.clone(),
            author_name: who.name.clone(),
            author_role: who.role,
            label: req.label,
            content_type: req.content_type,
            size: req.size,
            sha256: sha,
            taken_at_ms: req.taken_at_ms,
            uploaded_at_ms: 0,
            device: req.device.map(|d| d.chars().take(200).collect()),
        };
        let status = StillUploadStatus {
            upload_id: id.clone(),
            offset: 0,
            size: meta.size,
            still: None,
        };
        self.lock().insert(
            id,
            Upload {
                meta,
                part,
                offset: 0,
            },
        );
        Ok(status)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Upload>> {
        self.uploads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where an upload stands, for the uploader (same room and identity) to resume.
    pub fn status(&self, who: &TokenClaims, id: &str) -> Result<StillUploadStatus, StillError> {
        let uploads = self.lock();
        let u = uploads
            .get(id)
            .ok_or_else(|| refuse(404, ErrorCode::NotFound, "no such upload"))?;
        check_owner(who, &u.meta)?;
        Ok(StillUploadStatus {
            upload_id: id.to_owned(),
            offset: u.offset,
            size: u.meta.size,
            still: None,
        })
    }

    /// Append a chunk at `offset`. Completing the file checks and stores it.
    pub fn append(
        &self,
        who: &TokenClaims,
        id: &str,
        offset: u64,
        chunk: &[u8],
    ) -> Result<StillUploadStatus, StillError> {
        let mut uploads = self.lock();
        let u = uploads
            .get_mut(id)
            .ok_or_else(|| refuse(404, ErrorCode::NotFound, "no such upload"))?;
        check_owner(who, &u.meta)?;
        if offset != u.offset {
            return Err(refuse(
                409,
                ErrorCode::Conflict,
                format!("upload is at offset {}, not {offset}", u.offset),
            ));
        }
        if u.offset + chunk.len() as u64 > u.meta.size {
            return Err(refuse(
                413,
                ErrorCode::TooLarge,
                "chunk goes past the announced size",
            ));
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&u.part)
            .map_err(internal)?;
        f.write_all(chunk).map_err(internal)?;
        u.offset += chunk.len() as u64;
        let mut status = StillUploadStatus {
            upload_id: id.to_owned(),
            offset: u.offset,
            size: u.meta.size,
            still: None,
        };
        if u.offset < u.meta.size {
            return Ok(status);
        }
        // Complete: the upload ends here whether it checks out or not.
        let u = uploads.remove(id).expect("present above");
        drop(uploads);
        let bytes = std::fs::read(&u.part).map_err(internal)?;
        let fail = |e: StillError| {
            let _ = std::fs::remove_file(&u.part);
            e
        };
        if consult_protocol::still_content_type(&bytes) != Some(u.meta.content_type.as_str()) {
            return Err(fail(refuse(
                415,
                ErrorCode::UnsupportedType,
                format!("the file is not {}", u.meta.content_type),
            )));
        }
        let sha = hex::encode(Sha256::digest(&bytes));
        if sha != u.meta.sha256 {
            return Err(fail(refuse(
                422,
                ErrorCode::BadRequest,
                "sha256 does not match the file: upload again",
            )));
        }
        let mut meta = u.meta;
        meta.uploaded_at_ms = now_ms();
        let ext = extension(&meta.content_type).unwrap_or("bin");
        let dir = self.room_dir(&meta.room);
        std::fs::rename(&u.part, dir.join(format!("{}.{ext}", meta.still_id))).map_err(internal)?;
        let json = serde_json::to_vec_pretty(&meta).map_err(internal)?;
        std::fs::write(dir.join(format!("{}.json", meta.still_id)), json).map_err(internal)?;
        status.still = Some(meta);
        Ok(status)
    }

    /// Stills of a room, oldest first (only those recorded as taken in that room).
    pub fn list(&self, room: &str) -> Vec<StillInfo> {
        let mut out: Vec<StillInfo> = [self.room_dir(room), self.legacy_room_dir(room)]
            .iter()
            .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<StillInfo>(&b).ok())
            .filter(|s| s.room == room)
            .collect();
        out.sort_by_key(|s: &StillInfo| (s.uploaded_at_ms, s.still_id.clone()));
        out.dedup_by(|a, b| a.still_id == b.still_id);
        out
    }

    /// A still's metadata and bytes.
    pub fn get(&self, room: &str, id: &str) -> Result<(StillInfo, Vec<u8>), StillError> {
        let not_found = || refuse(404, ErrorCode::NotFound, "no such still");
        if !safe_id(id) {
            return Err(not_found());
        }
        // Only a still recorded as taken in this very room.
        let (dir, meta) = [self.room_dir(room), self.legacy_room_dir(room)]
            .into_iter()
            .find_map(|dir| {
                let meta: StillInfo = std::fs::read(dir.join(format!("{id}.json")))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())?;
                (meta.room == room).then_some((dir, meta))
            })
            .ok_or_else(not_found)?;
        let ext = extension(&meta.content_type).unwrap_or("bin");
        let bytes = std::fs::read(dir.join(format!("{id}.{ext}"))).map_err(|_| not_found())?;
        Ok((meta, bytes))
    }
}

/// A room name made path-safe (room names come from signed tokens, but all the same).
fn clean_room_name(room: &str) -> String {
    room.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn check_owner(who: &TokenClaims, meta: &StillInfo) -> Result<(), StillError> {
    if who.room != meta.room {
        return Err(refuse(
            403,
            ErrorCode::WrongRoom,
            "upload of another consultation",
        ));
    }
    if who.sub != meta.author_identity {
        return Err(refuse(
            403,
            ErrorCode::Forbidden,
            "upload of another participant",
        ));
    }
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> StillError {
    refuse(500, ErrorCode::Internal, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use consult_protocol::TrackLabel;

    fn still(id: &str, room: &str) -> StillInfo {
        StillInfo {
            still_id: id.into(),
            room: room.into(),
            author_identity: "ide".into(),
            author_name: "IDE".into(),
            author_role: Role::Companion,
            label: TrackLabel::Otoscope,
            content_type: "image/jpeg".into(),
            size: 3,
            sha256: String::new(),
            taken_at_ms: 1,
            uploaded_at_ms: 2,
            device: None,
        }
    }

    /// A still left by an earlier version in a folder two rooms shared is read by its own room
    /// only.
    #[test]
    fn a_shared_legacy_folder_serves_each_still_to_its_own_room() {
        let data = std::env::temp_dir().join(format!("stills-legacy-{}", std::process::id()));
        let store = StillStore::new(&data);
        let legacy = store.legacy_room_dir("ward.1");
        assert_eq!(
            legacy,
            store.legacy_room_dir("ward_1"),
            "the old folders collide"
        );
        assert_ne!(store.room_dir("ward.1"), store.room_dir("ward_1"));
        std::fs::create_dir_all(&legacy).unwrap();
        let meta = serde_json::to_vec(&still("abc123", "ward.1")).unwrap();
        std::fs::write(legacy.join("abc123.json"), meta).unwrap();
        std::fs::write(legacy.join("abc123.jpg"), b"jpg").unwrap();

        assert_eq!(store.list("ward.1").len(), 1);
        assert!(store.list("ward_1").is_empty());
        assert_eq!(store.get("ward.1", "abc123").unwrap().1, b"jpg");
        assert!(store.get("ward_1", "abc123").is_err());
        std::fs::remove_dir_all(&data).ok();
    }
}
