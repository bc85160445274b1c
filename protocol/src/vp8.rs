//! The VP8 RTP payload descriptor (RFC 7741), read the same way by the media plane (where may
//! a paused stream resume?) and the recorder (where does a frame start?).

/// The VP8 payload after the RTP payload descriptor, and whether it starts a frame (start of
/// partition 0). `None` for a payload too short for its descriptor.
pub fn vp8_payload(p: &[u8]) -> Option<(&[u8], bool)> {
    let b0 = *p.first()?;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let x = *p.get(1)?;
        i += 1;
        if x & 0x80 != 0 {
            // Picture id: 7 or 15 bits.
            i += if p.get(i)? & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID / KEYIDX
        }
    }
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    Some((p.get(i..)?, start))
}

/// Whether an RTP payload starts a VP8 keyframe (frame header P bit 0, RFC 6386 §9.1).
pub fn vp8_starts_keyframe(p: &[u8]) -> bool {
    vp8_payload(p).is_some_and(|(frame, start)| start && frame.first().is_some_and(|h| h & 1 == 0))
}
