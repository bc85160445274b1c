//! Synthetic media payloads that prove what arrived: which stream, which packet, sent when, and
//! whether every byte is intact.
//!
//! Layout after an optional codec prefix (one VP8 payload descriptor byte for video):
//! `magic "CSYN" | stream tag u32 | counter u32 | sent µs u64 | filler … | FNV-1a 64 of all before`.
//!
//! For video the magic doubles as the first byte of a VP8 frame header, whose low bit is 0 on
//! a keyframe: "BSYN" marks a keyframe, "CSYN" an interframe, so the SFU finds the
//! keyframes it must resume at, as with real VP8.

use consult_protocol::TrackKind;
use std::time::{SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 4] = b"CSYN";
const MAGIC_KEY: &[u8; 4] = b"BSYN";
const HEADER: usize = 4 + 4 + 4 + 8;
const CHECKSUM: usize = 8;
/// VP8 payload descriptor: S=1 (start of partition), PID=0.
const VP8_DESCRIPTOR: u8 = 0x10;

/// What a valid synthetic payload says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticInfo {
    pub tag: u32,
    pub counter: u32,
    /// Microseconds since the Unix epoch when the packet was made.
    pub sent_us: u64,
}

/// Tag of simulcast layer `layer` (0 = lowest) of the stream tagged `tag`: the layer rides in
/// the top byte, so a receiver tells which layer it was forwarded.
pub fn layer_tag(tag: u32, layer: u8) -> u32 {
    (tag & 0x00ff_ffff) | (u32::from(layer) << 24)
}

/// The stream tag and simulcast layer of a received tag (layer 0 for a plain stream).
pub fn split_tag(tag: u32) -> (u32, u8) {
    (tag & 0x00ff_ffff, (tag >> 24) as u8)
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn prefix_len(kind: TrackKind) -> usize {
    match kind {
        TrackKind::Audio => 0,
        TrackKind::Video => 1,
    }
}

/// A payload of `size` bytes (at least the header and checksum) for packet `counter`. Video
/// packets made here each start a keyframe (any one is a place to resume).
pub fn make_payload(kind: TrackKind, tag: u32, counter: u32, sent_us: u64, size: usize) -> Vec<u8> {
    let prefix = (kind == TrackKind::Video).then_some(VP8_DESCRIPTOR);
    build(prefix, MAGIC_KEY, tag, counter, sent_us, size)
}

/// One packet of a synthetic video frame: only the first packet of a frame starts a VP8
/// partition, and only a keyframe's says so in its frame header.
pub fn make_video_payload(
    tag: u32,
    counter: u32,
    sent_us: u64,
    size: usize,
    first_of_frame: bool,
    keyframe: bool,
) -> Vec<u8> {
    let descriptor = if first_of_frame { VP8_DESCRIPTOR } else { 0 };
    let magic = if keyframe && first_of_frame {
        MAGIC_KEY
    } else {
        MAGIC
    };
    build(Some(descriptor), magic, tag, counter, sent_us, size)
}

fn build(
    prefix: Option<u8>,
    magic: &[u8; 4],
    tag: u32,
    counter: u32,
    sent_us: u64,
    size: usize,
) -> Vec<u8> {
    let pre = usize::from(prefix.is_some());
    let size = size.max(pre + HEADER + CHECKSUM);
    let mut p = Vec::with_capacity(size);
    p.extend(prefix);
    p.extend_from_slice(magic);
    p.extend_from_slice(&tag.to_be_bytes());
    p.extend_from_slice(&counter.to_be_bytes());
    p.extend_from_slice(&sent_us.to_be_bytes());
    let mut x = counter.wrapping_mul(2654435761) ^ tag;
    while p.len() < size - CHECKSUM {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p.push(x as u8);
    }
    let sum = fnv1a(&p[pre..]);
    p.extend_from_slice(&sum.to_be_bytes());
    p
}

/// Read a synthetic payload back; `None` if it is not one or any byte was changed.
pub fn check_payload(kind: TrackKind, payload: &[u8]) -> Option<SyntheticInfo> {
    let body = payload.get(prefix_len(kind)..)?;
    if body.len() < HEADER + CHECKSUM || (&body[..4] != MAGIC && &body[..4] != MAGIC_KEY) {
        return None;
    }
    let (data, sum) = body.split_at(body.len() - CHECKSUM);
    if fnv1a(data).to_be_bytes() != sum {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let mut sent = [0u8; 8];
    sent.copy_from_slice(&data[12..20]);
    Some(SyntheticInfo {
        tag: u32_at(4),
        counter: u32_at(8),
        sent_us: u64::from_be_bytes(sent),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_tags_split_back() {
        assert_eq!(split_tag(layer_tag(0x1234, 2)), (0x1234, 2));
        assert_eq!(split_tag(77), (77, 0));
    }

    #[test]
    fn round_trip_and_corruption_detected() {
        for kind in [TrackKind::Audio, TrackKind::Video] {
            let p = make_payload(kind, 7, 42, 123, 200);
            assert_eq!(p.len(), 200);
            assert_eq!(
                check_payload(kind, &p),
                Some(SyntheticInfo {
                    tag: 7,
                    counter: 42,
                    sent_us: 123
                })
            );
            for i in prefix_len(kind)..p.len() {
                let mut bad = p.clone();
                bad[i] ^= 0x01;
                assert_eq!(check_payload(kind, &bad), None, "flip at {i}");
            }
            assert_eq!(check_payload(kind, &p[..p.len() - 1]), None);
        }
    }
}
