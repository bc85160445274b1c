//! VP8 from RTP (RFC 7741) to IVF: payload descriptors stripped, a frame per marker bit, the
//! RTP timestamp (90 kHz) as its time. Writing starts at the first keyframe (its header gives
//! the size); after a lost packet the recorder waits for the next keyframe rather than store
//! a damaged frame. Each frame is written out at once, so the file is readable after a crash.

use crate::reorder::{Packet, Reorder};
use std::io::{Seek, SeekFrom, Write};

const REORDER_WINDOW: usize = 16;

pub use consult_protocol::vp8::vp8_payload;

/// Width and height of a VP8 keyframe (RFC 6386 §9.1), `None` for an interframe.
pub fn keyframe_size(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.len() < 10 || frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([frame[6], frame[7]]) & 0x3FFF;
    let h = u16::from_le_bytes([frame[8], frame[9]]) & 0x3FFF;
    Some((w, h))
}

/// What a finished video recording holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoStats {
    pub frames_written: u32,
    pub frames_dropped: u32,
    pub duration_secs: f64,
}

pub struct Vp8IvfRecorder<W: Write + Seek> {
    out: W,
    reorder: Reorder<Vec<u8>>,
    due: Vec<Packet<Vec<u8>>>,
    /// The frame being assembled, and whether it is whole so far.
    frame: Vec<u8>,
    frame_ok: bool,
    in_frame: bool,
    last_seq: Option<u64>,
    started: bool,
    wait_keyframe: bool,
    first_ts: u32,
    last_ts: u32,
    ext_ts: u64,
    pub frames_written: u32,
    pub frames_dropped: u32,
}

impl<W: Write + Seek> Vp8IvfRecorder<W> {
    pub fn new(out: W) -> Vp8IvfRecorder<W> {
        Vp8IvfRecorder {
            out,
            reorder: Reorder::new(REORDER_WINDOW),
            due: Vec::new(),
            frame: Vec::new(),
            frame_ok: false,
            in_frame: false,
            last_seq: None,
            started: false,
            wait_keyframe: true,
            first_ts: 0,
            last_ts: 0,
            ext_ts: 0,
            frames_written: 0,
            frames_dropped: 0,
        }
    }

    pub fn push(
        &mut self,
        seq: u64,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut due = std::mem::take(&mut self.due);
        self.reorder.push(
            Packet {
                seq,
                timestamp,
                marker,
                payload: payload.to_vec(),
            },
            &mut due,
        );
        let r = due.drain(..).try_for_each(|p| self.take(&p));
        self.due = due;
        r
    }

    fn take(&mut self, p: &Packet<Vec<u8>>) -> std::io::Result<()> {
        let contiguous = self.last_seq.is_none_or(|l| p.seq == l + 1);
        self.last_seq = Some(p.seq);
        let Some((data, start)) = vp8_payload(&p.payload) else {
            self.frame_ok = false;
            return Ok(());
        };
        if start {
            if self.in_frame {
                // The previous frame lost its last packet.
                self.frames_dropped += 1;
                self.wait_keyframe = true;
            }
            self.frame.clear();
            self.frame_ok = true;
            self.in_frame = true;
        } else if !contiguous || !self.in_frame {
            self.frame_ok = false;
        }
        if self.in_frame {
            self.frame.extend_from_slice(data);
        }
        if p.marker && self.in_frame {
            self.in_frame = false;
            if self.frame_ok {
                let frame = std::mem::take(&mut self.frame);
                self.write_frame(&frame, p.timestamp)?;
                self.frame = frame;
            } else {
                self.frames_dropped += 1;
                self.wait_keyframe = true;
            }
        }
        Ok(())
    }

    fn write_frame(&mut self, frame: &[u8], timestamp: u32) -> std::io::Result<()> {
        let key = keyframe_size(frame);
        if self.wait_keyframe {
            if key.is_none() {
                self.frames_dropped += 1;
                return Ok(());
            }
            self.wait_keyframe = false;
        }
        if !self.started {
            let (w, h) = key.expect("a keyframe starts the file");
            self.out.write_all(&ivf_header(w, h, 0))?;
            self.started = true;
            self.first_ts = timestamp;
            self.last_ts = timestamp;
            self.ext_ts = 0;
        }
        let delta = timestamp.wrapping_sub(self.last_ts) as i32;
        if delta > 0 {
            self.ext_ts += delta as u64;
            self.last_ts = timestamp;
        }
        self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
        self.out.write_all(&self.ext_ts.to_le_bytes())?;
        self.out.write_all(frame)?;
        self.frames_written += 1;
        // Keep the header's length current (once a second at 30 fps), so a file cut short by
        // a crash still says how long it is.
        if self.frames_written.is_multiple_of(30) {
            self.write_length_if_seekable()?;
        }
        self.out.flush()?;
        Ok(())
    }

    /// As [`Self::write_length`], skipped on an append-only output (a sealed file: the export
    /// command fixes the length, see [`fix_ivf_length`]).
    fn write_length_if_seekable(&mut self) -> std::io::Result<()> {
        match self.write_length() {
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => Ok(()),
            other => other,
        }
    }

    /// The header's length field: as ffmpeg reads it, the duration in time-base units
    /// (90 kHz ticks), the last frame counted for the average frame interval.
    fn write_length(&mut self) -> std::io::Result<()> {
        let frames = u64::from(self.frames_written.max(1));
        let per_frame = if frames > 1 {
            self.ext_ts / (frames - 1)
        } else {
            0
        };
        let length = (self.ext_ts + per_frame).min(u64::from(u32::MAX)) as u32;
        self.out.seek(SeekFrom::Start(24))?;
        self.out.write_all(&length.to_le_bytes())?;
        self.out.seek(SeekFrom::End(0))?;
        Ok(())
    }

    /// Seconds of video written so far.
    pub fn duration_secs(&self) -> f64 {
        self.ext_ts as f64 / 90_000.0
    }

    /// Write what is held and put the length in the header.
    pub fn finish(mut self) -> std::io::Result<(W, VideoStats)> {
        let mut due = std::mem::take(&mut self.due);
        self.reorder.drain(&mut due);
        for p in &due {
            self.take(p)?;
        }
        if self.started {
            self.write_length_if_seekable()?;
            self.out.flush()?;
        }
        let stats = VideoStats {
            frames_written: self.frames_written,
            frames_dropped: self.frames_dropped,
            duration_secs: self.duration_secs(),
        };
        Ok((self.out, stats))
    }
}

/// Set an IVF file's length field from its frames (first to last timestamp, plus one average
/// frame interval), as the recorder does on a seekable file. Returns the number of frames.
pub fn fix_ivf_length(ivf: &mut [u8]) -> Option<u32> {
    if ivf.len() < 32 || &ivf[0..4] != b"DKIF" {
        return None;
    }
    let (mut i, mut frames, mut first, mut last) = (32usize, 0u64, None, 0u64);
    while i + 12 <= ivf.len() {
        let size = u32::from_le_bytes(ivf[i..i + 4].try_into().ok()?) as usize;
        let pts = u64::from_le_bytes(ivf[i + 4..i + 12].try_into().ok()?);
        if i + 12 + size > ivf.len() {
            break;
        }
        first.get_or_insert(pts);
        last = pts;
        frames += 1;
        i += 12 + size;
    }
    let span = last - first.unwrap_or(0);
    let per = if frames > 1 { span / (frames - 1) } else { 0 };
    let length = (span + per).min(u64::from(u32::MAX)) as u32;
    ivf[24..28].copy_from_slice(&length.to_le_bytes());
    Some(frames as u32)
}

/// The 32-byte IVF file header; time base 1/90000 (RTP clock).
fn ivf_header(width: u16, height: u16, frames: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[0..4].copy_from_slice(b"DKIF");
    h[4..6].copy_from_slice(&0u16.to_le_bytes());
    h[6..8].copy_from_slice(&32u16.to_le_bytes());
    h[8..12].copy_from_slice(b"VP80");
    h[12..14].copy_from_slice(&width.to_le_bytes());
    h[14..16].copy_from_slice(&height.to_le_bytes());
    h[16..20].copy_from_slice(&90_000u32.to_le_bytes()); // time base denominator
    h[20..24].copy_from_slice(&1u32.to_le_bytes()); // numerator
    h[24..28].copy_from_slice(&frames.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_is_stripped() {
        // X=1, S=1, PID=0; I=1 with a 2-byte picture id.
        let p = [0x90, 0x80, 0x81, 0x23, 0xAA, 0xBB];
        assert_eq!(vp8_payload(&p), Some((&[0xAA, 0xBB][..], true)));
        // No extension, not a start.
        assert_eq!(vp8_payload(&[0x00, 0x01]), Some((&[0x01][..], false)));
        assert_eq!(vp8_payload(&[0x80]), None);
    }

    #[test]
    fn keyframe_header_gives_the_size() {
        let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        f.extend_from_slice(&640u16.to_le_bytes());
        f.extend_from_slice(&360u16.to_le_bytes());
        assert_eq!(keyframe_size(&f), Some((640, 360)));
        f[0] |= 1;
        assert_eq!(keyframe_size(&f), None);
    }

    #[test]
    fn frames_wait_for_a_keyframe_and_damaged_ones_are_dropped() {
        let key = {
            let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
            f.extend_from_slice(&64u16.to_le_bytes());
            f.extend_from_slice(&48u16.to_le_bytes());
            f.extend_from_slice(&[7; 20]);
            f
        };
        let inter = vec![0x01u8; 30];
        let mut r = Vp8IvfRecorder::new(std::io::Cursor::new(Vec::new()));
        let mut seq = 0u64;
        let mut send = |r: &mut Vp8IvfRecorder<_>, frame: &[u8], ts: u32, lose_second: bool| {
            let (a, b) = frame.split_at(frame.len() / 2);
            seq += 1;
            let mut p1 = vec![0x10];
            p1.extend_from_slice(a);
            r.push(seq, ts, false, &p1).unwrap();
            seq += 1;
            if !lose_second {
                let mut p2 = vec![0x00];
                p2.extend_from_slice(b);
                r.push(seq, ts, true, &p2).unwrap();
            }
        };
        send(&mut r, &inter, 0, false); // before any keyframe: dropped
        send(&mut r, &key, 3000, false);
        send(&mut r, &inter, 6000, false);
        send(&mut r, &inter, 9000, true); // loses its last packet
        send(&mut r, &inter, 12000, false); // waits for a keyframe
        send(&mut r, &key, 15000, false);
        let (file, stats) = r.finish().unwrap();
        let file = file.into_inner();
        assert_eq!((stats.frames_written, stats.frames_dropped), (3, 3));
        assert_eq!(&file[0..4], b"DKIF");
        assert_eq!(u16::from_le_bytes([file[12], file[13]]), 64);
        // Length: 12000 ticks from the first to the last frame, plus one frame interval.
        assert_eq!(
            u32::from_le_bytes([file[24], file[25], file[26], file[27]]),
            18000
        );
        // First frame at 0, last at 12000 ticks after the first keyframe.
        let first_pts = u64::from_le_bytes(file[36..44].try_into().unwrap());
        assert_eq!(first_pts, 0);
    }
}
