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

/// A RED payload: `primary` (payload type `pt`), after `previous` (its timestamp offset before
/// the primary, and its bytes) when there is one.
pub fn encode(pt: u8, primary: &[u8], previous: Option<(u32, &[u8])>) -> Vec<u8> {
    let mut out = Vec::with_capacity(primary.len() + 5 + previous.map_or(0, |p| p.1.len()));
    let previous = previous.filter(|(offset, block)| *offset <= 0x3fff && block.len() <= 0x3ff);
    if let Some((offset, block)) = previous {
        let len = block.len() as u32;
        out.push(0x80 | (pt & 0x7f));
        out.push((offset >> 6) as u8);
        out.push((((offset & 0x3f) << 2) | (len >> 8)) as u8);
        out.push((len & 0xff) as u8);
    }
    out.push(pt & 0x7f);
    if let Some((_, block)) = previous {
        out.extend_from_slice(block);
    }
    out.extend_from_slice(primary);
    out
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
        assert_eq!(encode(111, &[9, 9], Some((960, &[1, 2, 3]))), red);
        assert_eq!(encode(111, &[5], None), vec![111, 5]);
    }
}
