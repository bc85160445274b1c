//! Encryption at rest of recording files: XChaCha20-Poly1305 in the STREAM construction
//! (nonce prefix + chunk counter + last-chunk flag), chunk by chunk as the file grows.
//!
//! Every `flush` seals what was written since the last one as a chunk, so a crash loses only
//! the unflushed tail; `finish` seals the last chunk with the last-chunk flag, so a reader can
//! tell a closed file from one cut short. Layout: `CSEAL\x01`, the 19-byte nonce prefix, then
//! chunks of `u32 length (big-endian, top bit = last)` + ciphertext and tag.

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use std::io::{Read, Seek, SeekFrom, Write};

const MAGIC: &[u8; 6] = b"CSEAL\x01";
const PREFIX: usize = 19;
const LAST: u32 = 0x8000_0000;
/// Largest plaintext chunk (a flush seals at most this much at a time).
const MAX_CHUNK: usize = 1 << 20;

pub type Key = [u8; 32];

pub struct SealedWriter<W: Write> {
    inner: W,
    enc: Option<EncryptorBE32<XChaCha20Poly1305>>,
    buf: Vec<u8>,
}

impl<W: Write> SealedWriter<W> {
    pub fn new(mut inner: W, key: &Key) -> std::io::Result<SealedWriter<W>> {
        let prefix: [u8; PREFIX] = rand::random();
        inner.write_all(MAGIC)?;
        inner.write_all(&prefix)?;
        let aead = XChaCha20Poly1305::new(key.into());
        Ok(SealedWriter {
            inner,
            enc: Some(EncryptorBE32::from_aead(aead, (&prefix).into())),
            buf: Vec::new(),
        })
    }

    fn seal(&mut self, data: &[u8], last: bool) -> std::io::Result<()> {
        let err = |_| std::io::Error::other("encryption failed");
        let ct = if last {
            let enc = self
                .enc
                .take()
                .ok_or_else(|| std::io::Error::other("closed"))?;
            enc.encrypt_last(data).map_err(err)?
        } else {
            let enc = self
                .enc
                .as_mut()
                .ok_or_else(|| std::io::Error::other("closed"))?;
            enc.encrypt_next(data).map_err(err)?
        };
        let len = ct.len() as u32 | if last { LAST } else { 0 };
        self.inner.write_all(&len.to_be_bytes())?;
        self.inner.write_all(&ct)
    }

    /// Seal the rest as the last chunk.
    pub fn finish(mut self) -> std::io::Result<W> {
        let rest = std::mem::take(&mut self.buf);
        self.seal(&rest, true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.enc.is_none() {
            return Err(std::io::Error::other("closed"));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= MAX_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let data = std::mem::take(&mut self.buf);
            self.seal(&data, false)?;
        }
        self.inner.flush()
    }
}

/// A sealed stream cannot go back: writers that patch headers skip it (see `vp8_ivf`).
impl<W: Write> Seek for SealedWriter<W> {
    fn seek(&mut self, _: SeekFrom) -> std::io::Result<u64> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "sealed files are append-only",
        ))
    }
}

/// What [`open`] recovered.
#[derive(Debug)]
pub struct Opened {
    pub plaintext: Vec<u8>,
    /// The last chunk was found: the file was closed properly.
    pub complete: bool,
    pub chunks: usize,
}

/// Decrypt a sealed file. A file cut short (a crash) gives every whole chunk before the cut
/// with `complete: false`; a wrong key or altered data is an error.
pub fn open(mut r: impl Read, key: &Key) -> std::io::Result<Opened> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut head = [0u8; 6 + PREFIX];
    r.read_exact(&mut head)
        .map_err(|_| bad("not a sealed recording"))?;
    if &head[..6] != MAGIC {
        return Err(bad("not a sealed recording"));
    }
    let aead = XChaCha20Poly1305::new(key.into());
    let prefix: [u8; PREFIX] = head[6..].try_into().expect("sized");
    let mut dec = Some(DecryptorBE32::from_aead(aead, (&prefix).into()));
    let mut out = Opened {
        plaintext: Vec::new(),
        complete: false,
        chunks: 0,
    };
    loop {
        let mut len = [0u8; 4];
        if r.read_exact(&mut len).is_err() {
            return Ok(out); // cut between chunks
        }
        let len = u32::from_be_bytes(len);
        let last = len & LAST != 0;
        let mut ct = vec![0u8; (len & !LAST) as usize];
        if r.read_exact(&mut ct).is_err() {
            return Ok(out); // cut inside the last chunk written
        }
        let pt = if last {
            dec.take()
                .ok_or_else(|| bad("data after the last chunk"))?
                .decrypt_last(ct.as_slice())
        } else {
            dec.as_mut()
                .ok_or_else(|| bad("data after the last chunk"))?
                .decrypt_next(ct.as_slice())
        }
        .map_err(|_| bad("wrong key, or the file was altered"))?;
        out.plaintext.extend_from_slice(&pt);
        out.chunks += 1;
        if last {
            out.complete = true;
            return Ok(out);
        }
    }
}

/// A key from 64 hex digits.
pub fn key_from_hex(hex: &str) -> Option<Key> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Key = [7; 32];

    #[test]
    fn round_trip_and_truncation() {
        let mut w = SealedWriter::new(Vec::new(), &KEY).unwrap();
        w.write_all(b"hello ").unwrap();
        w.flush().unwrap();
        w.write_all(b"world").unwrap();
        w.flush().unwrap();
        w.write_all(b"!").unwrap();
        let file = w.finish().unwrap();
        assert!(!file.windows(5).any(|x| x == b"hello"), "encrypted");
        let o = open(file.as_slice(), &KEY).unwrap();
        assert_eq!(o.plaintext, b"hello world!");
        assert!(o.complete);
        assert_eq!(o.chunks, 3);

        // Cut inside the last chunk: what was flushed before survives.
        let o = open(&file[..file.len() - 3], &KEY).unwrap();
        assert_eq!(o.plaintext, b"hello world");
        assert!(!o.complete);

        let mut wrong = KEY;
        wrong[0] ^= 1;
        assert!(open(file.as_slice(), &wrong).is_err());
        let mut altered = file.clone();
        let n = altered.len();
        altered[n - 5] ^= 1; // inside the last chunk's ciphertext and tag
        assert!(open(altered.as_slice(), &KEY).is_err());
        // A damaged length reads as a cut: never as a complete file.
        let mut altered = file.clone();
        altered[n - 20] ^= 1;
        assert!(!open(altered.as_slice(), &KEY).unwrap().complete);
        assert!(open(&b"plain ogg"[..], &KEY).is_err());
    }

    #[test]
    fn hex_keys() {
        assert_eq!(key_from_hex(&"07".repeat(32)), Some(KEY));
        assert_eq!(key_from_hex("07"), None);
        assert_eq!(key_from_hex(&"zz".repeat(32)), None);
    }
}
