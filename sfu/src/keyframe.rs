//! Is this RTP packet the start of a keyframe? A subscriber whose video was paused (or that
//! switches layer) may only resume at one, or its decoder shows garbage until the next.

use consult_protocol::vp8::vp8_starts_keyframe;
use str0m::format::Codec;

/// Whether `payload` (an RTP payload of `codec`) starts a keyframe.
pub fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8_starts_keyframe(payload),
        Codec::H264 => h264_has_keyframe(payload),
        _ => false,
    }
}

/// RFC 6184: an IDR slice or SPS, alone, in a STAP-A, or at the start of an FU-A.
fn h264_has_keyframe(p: &[u8]) -> bool {
    let is_key = |nal_type: u8| nal_type == 5 || nal_type == 7;
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        24 => {
            let mut i = 1;
            while i + 2 < p.len() {
                let size = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                if is_key(p[i + 2] & 0x1f) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 => p.get(1).is_some_and(|h| h & 0x80 != 0 && is_key(h & 0x1f)),
        t => is_key(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_with_and_without_extensions() {
        // S=1, PID=0, no extension; frame header P=0.
        assert!(starts_keyframe(Codec::Vp8, &[0x10, 0x50, 0x2a]));
        // Interframe: P=1.
        assert!(!starts_keyframe(Codec::Vp8, &[0x10, 0x51, 0x2a]));
        // Not the start of a partition.
        assert!(!starts_keyframe(Codec::Vp8, &[0x00, 0x50]));
        // X=1, I=1 with a 15-bit picture id, L=1, T=1; keyframe header after 5 bytes.
        assert!(starts_keyframe(
            Codec::Vp8,
            &[0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x50]
        ));
        assert!(!starts_keyframe(
            Codec::Vp8,
            &[0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x51]
        ));
        // Truncated garbage is not a keyframe and does not panic.
        assert!(!starts_keyframe(Codec::Vp8, &[0x90, 0xe0, 0x81]));
        assert!(!starts_keyframe(Codec::Vp8, &[]));
    }

    #[test]
    fn h264_idr_sps_stap_a_fu_a() {
        assert!(starts_keyframe(Codec::H264, &[0x65, 0x00])); // IDR
        assert!(starts_keyframe(Codec::H264, &[0x67, 0x42])); // SPS
        assert!(!starts_keyframe(Codec::H264, &[0x41, 0x00])); // non-IDR slice
                                                               // STAP-A with SPS inside.
        assert!(starts_keyframe(
            Codec::H264,
            &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]
        ));
        // FU-A, start bit, IDR.
        assert!(starts_keyframe(Codec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c, 0x05, 0x00]));
        assert!(!starts_keyframe(Codec::H264, &[0x78, 0xff]));
    }
}
