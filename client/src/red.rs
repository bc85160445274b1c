//! Reading RFC 2198 RED payloads, as a receiver does: webrtc-rs hands them to the application
//! as they come, and the blocks older than the primary are what repairs a lost packet.

/// The blocks of a RED payload, oldest first, the primary last; `None` if it is not valid RED.
pub fn blocks(payload: &[u8]) -> Option<Vec<&[u8]>> {
    // Headers: 4 bytes per redundant block (F=1, PT, 14-bit timestamp offset, 10-bit length),
    // then 1 byte for the primary (F=0, PT).
    let mut lengths = Vec::new();
    let mut i = 0;
    loop {
        let first = *payload.get(i)?;
        if first & 0x80 == 0 {
            i += 1;
            break;
        }
        let b2 = *payload.get(i + 2)?;
        let b3 = *payload.get(i + 3)?;
        lengths.push((usize::from(b2 & 0x03) << 8) | usize::from(b3));
        i += 4;
        if lengths.len() > 32 {
            return None;
        }
    }
    let mut out = Vec::with_capacity(lengths.len() + 1);
    for len in lengths {
        out.push(payload.get(i..i + len)?);
        i += len;
    }
    out.push(payload.get(i..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redundant_and_primary_blocks() {
        // One redundant block of 3 bytes (PT 111, offset 960), then the primary of 2 bytes.
        let offset = 960u32;
        let red = [
            0x80 | 111,
            (offset >> 6) as u8,
            ((offset & 0x3f) << 2) as u8, // and the length's top 2 bits: 0
            3,
            111,
            1,
            2,
            3,
            9,
            9,
        ];
        assert_eq!(blocks(&red), Some(vec![&[1u8, 2, 3][..], &[9u8, 9][..]]));
        assert_eq!(blocks(&[111, 5]), Some(vec![&[5u8][..]]));
        assert_eq!(blocks(&red[..6]), None);
        assert_eq!(blocks(&[]), None);
    }
}
