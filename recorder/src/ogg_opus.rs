//! Ogg/Opus (RFC 7845) from RTP payloads: each RTP payload is one Opus packet, stored as is.
//!
//! The granule position follows the RTP timestamps (48 kHz), so the file keeps the call's
//! timeline: a gap (lost packets, a paused sender) is filled with 1-byte Opus packets that
//! carry no frame, which decoders treat as lost frames (RFC 6716 §3.2.1: packet loss
//! concealment, then silence). A page ends every second, and is written out at once: a crash
//! loses at most that second, and the file on disk stays readable.

use crate::reorder::{Packet, Reorder};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use std::io::Write;

/// Packets per page: 50 × 20 ms = 1 s.
const PACKETS_PER_PAGE: usize = 50;
/// Longest gap filled with lost-frame packets (longer ones are cut, the timeline shifts).
const MAX_FILL_SAMPLES: u64 = 48_000 * 60;
/// Packets held to put reordered ones back in place (about 160 ms of 20 ms packets).
const REORDER_WINDOW: usize = 8;

/// Samples at 48 kHz in one Opus packet, from its TOC byte (RFC 6716 §3.1).
pub fn opus_packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame duration in units of 2.5 ms.
    let frame_units: u32 = match config {
        0..=11 => [4, 8, 16, 24][usize::from(config % 4)],
        12..=15 => [4, 8][usize::from(config % 2)],
        _ => [1, 2, 4, 8][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3F),
    };
    Some(frame_units * frames * 120)
}

/// What a finished audio recording holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioStats {
    pub packets_written: u64,
    pub lost_frames_filled: u64,
    /// Timeline length at 48 kHz.
    pub duration_samples: u64,
}

pub struct OggOpusRecorder<W: Write> {
    out: PacketWriter<'static, W>,
    serial: u32,
    reorder: Reorder<Vec<u8>>,
    due: Vec<Packet<Vec<u8>>>,
    /// Extended RTP timestamp of the first packet, and of the last one written.
    first_ts: Option<u64>,
    last_rtp: u32,
    last_ext: u64,
    /// Samples written so far (the granule position).
    granule: u64,
    last_toc: u8,
    in_page: usize,
    pub packets_written: u64,
    pub lost_frames_filled: u64,
}

fn opus_head(channels: u8) -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.push(1); // version
    h.push(channels);
    h.extend_from_slice(&0u16.to_le_bytes()); // pre-skip: none, samples match an RTP decode
    h.extend_from_slice(&48_000u32.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes()); // output gain
    h.push(0); // channel mapping family 0
    h
}

fn opus_tags(comments: &[(&str, &str)]) -> Vec<u8> {
    let vendor = b"consult-recorder";
    let mut t = b"OpusTags".to_vec();
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(vendor);
    t.extend_from_slice(&(comments.len() as u32).to_le_bytes());
    for (k, v) in comments {
        let c = format!("{k}={v}");
        t.extend_from_slice(&(c.len() as u32).to_le_bytes());
        t.extend_from_slice(c.as_bytes());
    }
    t
}

impl<W: Write> OggOpusRecorder<W> {
    /// Start a file: identification and comment headers, written at once. `comments` are
    /// Vorbis comments such as `("TITLE", "stethoscope")`.
    pub fn new(
        out: W,
        serial: u32,
        channels: u8,
        comments: &[(&str, &str)],
    ) -> std::io::Result<OggOpusRecorder<W>> {
        let mut out = PacketWriter::new(out);
        out.write_packet(opus_head(channels), serial, PacketWriteEndInfo::EndPage, 0)?;
        out.write_packet(opus_tags(comments), serial, PacketWriteEndInfo::EndPage, 0)?;
        out.inner_mut().flush()?;
        Ok(OggOpusRecorder {
            out,
            serial,
            reorder: Reorder::new(REORDER_WINDOW),
            due: Vec::new(),
            first_ts: None,
            last_rtp: 0,
            last_ext: 0,
            granule: 0,
            last_toc: 0xF8, // CELT fullband 20 ms, until a real packet is seen
            in_page: 0,
            packets_written: 0,
            lost_frames_filled: 0,
        })
    }

    /// One RTP packet of the track.
    pub fn push(&mut self, seq: u64, timestamp: u32, payload: &[u8]) -> std::io::Result<()> {
        let mut due = std::mem::take(&mut self.due);
        self.reorder.push(
            Packet {
                seq,
                timestamp,
                marker: false,
                payload: payload.to_vec(),
            },
            &mut due,
        );
        let r = due
            .drain(..)
            .try_for_each(|p| self.write(p.timestamp, &p.payload));
        self.due = due;
        r
    }

    fn write(&mut self, timestamp: u32, payload: &[u8]) -> std::io::Result<()> {
        let Some(samples) = opus_packet_samples(payload) else {
            return Ok(()); // empty payload: nothing to store
        };
        let ext = match self.first_ts {
            None => {
                self.first_ts = Some(u64::from(timestamp));
                u64::from(timestamp)
            }
            Some(_) => {
                let delta = timestamp.wrapping_sub(self.last_rtp) as i32;
                if delta <= 0 {
                    return Ok(()); // not after the last written packet
                }
                self.last_ext + delta as u64
            }
        };
        // Where this packet belongs on the timeline vs what is written: fill a gap.
        let position = ext - self.first_ts.unwrap_or(ext);
        if position > self.granule {
            let frame = u64::from(opus_packet_samples(&[self.last_toc & 0xFC]).unwrap_or(960));
            let missing = (position - self.granule).min(MAX_FILL_SAMPLES);
            for _ in 0..missing / frame {
                self.granule += frame;
                self.lost_frames_filled += 1;
                self.emit(vec![self.last_toc & 0xFC])?;
            }
        }
        self.last_rtp = timestamp;
        self.last_ext = ext;
        self.last_toc = payload[0];
        self.granule += u64::from(samples);
        self.packets_written += 1;
        self.emit(payload.to_vec())
    }

    fn emit(&mut self, packet: Vec<u8>) -> std::io::Result<()> {
        self.in_page += 1;
        let end = if self.in_page >= PACKETS_PER_PAGE {
            self.in_page = 0;
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        self.out
            .write_packet(packet, self.serial, end, self.granule)?;
        if end == PacketWriteEndInfo::EndPage {
            self.out.inner_mut().flush()?;
        }
        Ok(())
    }

    /// Samples on the timeline so far (48 kHz).
    pub fn duration_samples(&self) -> u64 {
        self.granule
    }

    /// Write what is held and close the stream (last page marked end-of-stream).
    pub fn finish(mut self) -> std::io::Result<(W, AudioStats)> {
        let mut due = std::mem::take(&mut self.due);
        self.reorder.drain(&mut due);
        for p in due.drain(..) {
            self.write(p.timestamp, &p.payload)?;
        }
        // An empty end-of-stream packet is not allowed in Ogg Opus: close with a lost frame.
        self.granule += u64::from(opus_packet_samples(&[self.last_toc & 0xFC]).unwrap_or(960));
        self.out.write_packet(
            vec![self.last_toc & 0xFC],
            self.serial,
            PacketWriteEndInfo::EndStream,
            self.granule,
        )?;
        let stats = AudioStats {
            packets_written: self.packets_written,
            lost_frames_filled: self.lost_frames_filled,
            duration_samples: self.granule,
        };
        let mut w = self.out.into_inner();
        w.flush()?;
        Ok((w, stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_durations_from_the_toc() {
        assert_eq!(opus_packet_samples(&[0xF8]), Some(960)); // CELT FB 20 ms
        assert_eq!(opus_packet_samples(&[0x78]), Some(960)); // hybrid FB 20 ms
        assert_eq!(opus_packet_samples(&[0x08]), Some(960)); // SILK NB 20 ms
        assert_eq!(opus_packet_samples(&[0xF9]), Some(1920)); // two 20 ms frames
        assert_eq!(opus_packet_samples(&[0xFB, 0x03]), Some(2880)); // code 3, three frames
        assert_eq!(opus_packet_samples(&[0xE0]), Some(120)); // CELT 2.5 ms
        assert_eq!(opus_packet_samples(&[]), None);
    }
}
