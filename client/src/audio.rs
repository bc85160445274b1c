//! Opus encoding profiles (libopus from Debian's `libopus-dev`) and decoding with loss
//! concealment.
//!
//! - [`AudioEncoder::stethoscope`]: the *audio* application (no speech high-pass filter, only
//!   libopus's 3 Hz DC reject), fullband 48 kHz mono, no DTX, a fixed high bitrate. Heart and
//!   lung sounds live at 20–2000 Hz and must reach the physician untouched.
//! - [`AudioEncoder::speech`]: what a generic video tool does for a microphone (VoIP
//!   application, DTX on, 32 kbps): kept to measure the difference our settings make.

use anyhow::{bail, Context};
use std::ptr::NonNull;

pub const SAMPLE_RATE: u32 = 48_000;
/// 20 ms at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
const MAX_PACKET: usize = 1500;

/// The speech profile needs `OPUS_SET_DTX`, which the `opus` crate does not expose: a minimal
/// owner of a raw libopus encoder.
struct RawEncoder(NonNull<audiopus_sys::OpusEncoder>);

// SAFETY: a libopus encoder has no thread affinity; it is only used through `&mut self`.
unsafe impl Send for RawEncoder {}

impl RawEncoder {
    fn voip_with_dtx(bitrate: i32) -> anyhow::Result<RawEncoder> {
        let mut err = 0;
        // SAFETY: valid arguments; the result is checked for null and error.
        let ptr = unsafe {
            audiopus_sys::opus_encoder_create(
                SAMPLE_RATE as i32,
                1,
                audiopus_sys::OPUS_APPLICATION_VOIP,
                &mut err,
            )
        };
        let Some(ptr) = NonNull::new(ptr).filter(|_| err == audiopus_sys::OPUS_OK) else {
            bail!("opus_encoder_create failed ({err})");
        };
        let enc = RawEncoder(ptr);
        // SAFETY: ctl requests with one int argument, on a live encoder.
        unsafe {
            if audiopus_sys::opus_encoder_ctl(enc.0.as_ptr(), audiopus_sys::OPUS_SET_DTX_REQUEST, 1)
                != audiopus_sys::OPUS_OK
                || audiopus_sys::opus_encoder_ctl(
                    enc.0.as_ptr(),
                    audiopus_sys::OPUS_SET_INBAND_FEC_REQUEST,
                    1,
                ) != audiopus_sys::OPUS_OK
                || audiopus_sys::opus_encoder_ctl(
                    enc.0.as_ptr(),
                    audiopus_sys::OPUS_SET_BITRATE_REQUEST,
                    bitrate,
                ) != audiopus_sys::OPUS_OK
            {
                bail!("opus_encoder_ctl failed");
            }
        }
        Ok(enc)
    }

    fn set_packet_loss_perc(&mut self, pct: i32) -> anyhow::Result<()> {
        // SAFETY: a ctl request with one int argument, on a live encoder.
        let r = unsafe {
            audiopus_sys::opus_encoder_ctl(
                self.0.as_ptr(),
                audiopus_sys::OPUS_SET_PACKET_LOSS_PERC_REQUEST,
                pct,
            )
        };
        if r != audiopus_sys::OPUS_OK {
            bail!("OPUS_SET_PACKET_LOSS_PERC failed ({r})");
        }
        Ok(())
    }

    fn encode(&mut self, pcm: &[f32], out: &mut [u8]) -> anyhow::Result<usize> {
        // SAFETY: `pcm` holds one frame of mono samples, `out` is writable for its length.
        let n = unsafe {
            audiopus_sys::opus_encode_float(
                self.0.as_ptr(),
                pcm.as_ptr(),
                pcm.len() as i32,
                out.as_mut_ptr(),
                out.len() as i32,
            )
        };
        if n < 0 {
            bail!("opus_encode_float failed ({n})");
        }
        Ok(n as usize)
    }
}

impl Drop for RawEncoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_encoder_create, destroyed once.
        unsafe { audiopus_sys::opus_encoder_destroy(self.0.as_ptr()) }
    }
}

enum Inner {
    Crate(opus::Encoder),
    Raw(RawEncoder),
}

pub struct AudioEncoder {
    inner: Inner,
    buf: Vec<u8>,
}

impl AudioEncoder {
    /// The stethoscope profile at `bitrate` bits per second.
    pub fn stethoscope(bitrate: i32) -> anyhow::Result<AudioEncoder> {
        let mut e = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Audio)
            .context("opus encoder")?;
        e.set_bitrate(opus::Bitrate::Bits(bitrate))?;
        // Constant bitrate: quiet diastole gets as many bits as loud S1.
        e.set_vbr(false)?;
        // In-band FEC (used by the decoder after a loss) costs nothing until loss is reported.
        e.set_inband_fec(true)?;
        Ok(AudioEncoder {
            inner: Inner::Crate(e),
            buf: vec![0; MAX_PACKET],
        })
    }

    /// A generic speech profile: VoIP application, DTX, 32 kbps.
    pub fn speech() -> anyhow::Result<AudioEncoder> {
        Ok(AudioEncoder {
            inner: Inner::Raw(RawEncoder::voip_with_dtx(32_000)?),
            buf: vec![0; MAX_PACKET],
        })
    }

    /// The loss the receivers' links show (percent, 0–100): libopus adds in-band FEC (a
    /// low-rate copy of the previous frame, in SILK and hybrid modes) only when told to expect
    /// loss. The SFU sends this as `publisher_audio`.
    pub fn set_expected_loss(&mut self, pct: u8) -> anyhow::Result<()> {
        let pct = i32::from(pct.min(100));
        match &mut self.inner {
            Inner::Crate(e) => e.set_packet_loss_perc(pct)?,
            Inner::Raw(e) => e.set_packet_loss_perc(pct)?,
        }
        Ok(())
    }

    /// Encode one 20 ms frame; `None` when DTX decided not to send anything.
    pub fn encode(&mut self, frame: &[f32]) -> anyhow::Result<Option<Vec<u8>>> {
        if frame.len() != FRAME_SAMPLES {
            bail!("a frame is {FRAME_SAMPLES} samples, got {}", frame.len());
        }
        let n = match &mut self.inner {
            Inner::Crate(e) => e.encode_float(frame, &mut self.buf)?,
            Inner::Raw(e) => e.encode(frame, &mut self.buf)?,
        };
        // Packets of two bytes or less are DTX: nothing to transmit.
        Ok((n > 2).then(|| self.buf[..n].to_vec()))
    }

    /// Encode a whole signal into packets of `frame_ms` (20, 40 or 60 ms: what `publisher_audio`
    /// may ask for); the stethoscope profile only.
    pub fn encode_all_frames(
        &mut self,
        pcm: &[f32],
        frame_ms: u16,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
        let Inner::Crate(e) = &mut self.inner else {
            bail!("frames other than 20 ms are for the stethoscope profile");
        };
        let samples = SAMPLE_RATE as usize / 1000 * usize::from(frame_ms);
        pcm.chunks_exact(samples)
            .map(|f| {
                let n = e.encode_float(f, &mut self.buf)?;
                Ok(self.buf[..n].to_vec())
            })
            .collect()
    }

    /// Encode a whole signal into 20 ms packets (the tail shorter than a frame is dropped).
    pub fn encode_all(&mut self, pcm: &[f32]) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        pcm.chunks_exact(FRAME_SAMPLES)
            .map(|f| self.encode(f))
            .collect()
    }
}

/// Decode packets placed by RTP timestamp; missing frames are concealed (PLC).
/// `packets` are (RTP timestamp, payload) in any order; the result starts at the first one.
pub fn decode_timeline(packets: &[(u32, Vec<u8>)]) -> anyhow::Result<Vec<f32>> {
    let mut sorted: Vec<&(u32, Vec<u8>)> = packets.iter().collect();
    sorted.sort_by_key(|(ts, _)| *ts);
    sorted.dedup_by_key(|(ts, _)| *ts);
    let Some(first) = sorted.first().map(|(ts, _)| *ts) else {
        return Ok(Vec::new());
    };
    let mut dec = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?;
    let mut out = Vec::new();
    let mut frame = vec![0f32; FRAME_SAMPLES * 6];
    // Samples placed so far: packets may carry 20 to 120 ms each; a gap is concealed 20 ms at
    // a time.
    let mut at = 0u64;
    for (ts, payload) in sorted {
        let offset = u64::from(ts.wrapping_sub(first));
        while at + FRAME_SAMPLES as u64 <= offset {
            let n = dec.decode_float(&[], &mut frame[..FRAME_SAMPLES], false)?;
            out.extend_from_slice(&frame[..n]);
            at += n as u64;
        }
        let n = dec.decode_float(payload, &mut frame, false)?;
        out.extend_from_slice(&frame[..n]);
        at = offset + n as u64;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every encoding the SFU may ask of the stethoscope (`publisher_audio`) keeps the heart
    /// and lung sound bands (third octaves, 20–2000 Hz) within ±1 dB of the source.
    #[test]
    fn every_stethoscope_step_keeps_the_clinical_bands_within_one_db() {
        use crate::fidelity::compare;
        use crate::heart::{generate, HeartSoundConfig};
        let heart = generate(&HeartSoundConfig::default(), 6.0);
        let onsets: Vec<usize> = heart
            .s1_onsets
            .iter()
            .chain(&heart.s2_onsets)
            .copied()
            .collect();
        for step in consult_protocol::audio_steps::STETHOSCOPE_STEPS {
            let mut enc = AudioEncoder::stethoscope(step.max_bitrate_bps as i32).unwrap();
            let packets = enc
                .encode_all_frames(&heart.samples, step.ptime_ms)
                .unwrap();
            let samples = SAMPLE_RATE / 1000 * u32::from(step.ptime_ms);
            let timed: Vec<(u32, Vec<u8>)> = packets
                .into_iter()
                .enumerate()
                .map(|(i, p)| (i as u32 * samples, p))
                .collect();
            let pcm = decode_timeline(&timed).unwrap();
            let r = compare(&heart.samples, &pcm, &onsets, SAMPLE_RATE);
            let worst = r.max_band_error_db();
            println!(
                "{step:?}: max band error {worst:.2} dB, corr {:.3}",
                r.correlation
            );
            assert!(worst <= 1.0, "{step:?}: a band is off by {worst:.2} dB");
            assert!(r.seconds > 5.0);
        }
    }

    #[test]
    fn both_profiles_round_trip() {
        let tone: Vec<f32> = (0..FRAME_SAMPLES * 50)
            .map(|i| 0.3 * (i as f32 * 2.0 * std::f32::consts::PI * 100.0 / 48000.0).sin())
            .collect();
        for mut enc in [
            AudioEncoder::stethoscope(64_000).unwrap(),
            AudioEncoder::speech().unwrap(),
        ] {
            let packets = enc.encode_all(&tone).unwrap();
            let timed: Vec<(u32, Vec<u8>)> = packets
                .into_iter()
                .enumerate()
                .filter_map(|(i, p)| p.map(|p| ((i * FRAME_SAMPLES) as u32, p)))
                .collect();
            let pcm = decode_timeline(&timed).unwrap();
            assert!(pcm.len() >= FRAME_SAMPLES * 45);
            let rms = (pcm.iter().map(|s| s * s).sum::<f32>() / pcm.len() as f32).sqrt();
            assert!(rms > 0.1, "decoded tone has energy ({rms})");
        }
    }

    /// A frame whose packet is lost, rebuilt from the next packet (in-band FEC if present,
    /// concealment otherwise): its energy against the frame's own decode. The loud part
    /// starts in the lost frame, so concealment (which extends the quiet past) cannot fake it.
    fn rebuilt_energy_ratio(expected_loss: u8) -> f32 {
        let lost = 30;
        let pcm: Vec<f32> = (0..FRAME_SAMPLES * 40)
            .map(|i| {
                let t = i as f32 / 48000.0;
                let level = if i < lost * FRAME_SAMPLES { 0.01 } else { 0.3 };
                level
                    * (1..6)
                        .map(|h| {
                            (t * 2.0 * std::f32::consts::PI * 150.0 * h as f32).sin() / h as f32
                        })
                        .sum::<f32>()
            })
            .collect();
        let mut enc = AudioEncoder::speech().unwrap();
        enc.set_expected_loss(expected_loss).unwrap();
        let packets: Vec<Option<Vec<u8>>> = enc.encode_all(&pcm).unwrap();
        let decode = |rebuild: bool| {
            let mut dec = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono).unwrap();
            let mut frame = vec![0f32; FRAME_SAMPLES];
            for p in &packets[..lost] {
                let p: &[u8] = p.as_deref().unwrap_or(&[]);
                dec.decode_float(p, &mut frame, false).unwrap();
            }
            let next = packets[lost + 1].as_deref().expect("loud: sent");
            let own = packets[lost].as_deref().expect("loud: sent");
            if rebuild {
                dec.decode_float(next, &mut frame, true).unwrap();
            } else {
                dec.decode_float(own, &mut frame, false).unwrap();
            }
            frame
        };
        let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        rms(&decode(true)) / rms(&decode(false)).max(1e-9)
    }

    #[test]
    fn in_band_fec_needs_expected_loss() {
        let without = rebuilt_energy_ratio(0);
        let with = rebuilt_energy_ratio(10);
        eprintln!("lost frame rebuilt at {with:.2} of its energy with FEC, {without:.2} without");
        assert!(with > 0.3, "{with}");
        assert!(without < 0.2, "{without}");
    }

    #[test]
    fn the_speech_profile_goes_quiet_on_silence() {
        let silence = vec![0f32; FRAME_SAMPLES * 100];
        let sent = |mut e: AudioEncoder| {
            e.encode_all(&silence)
                .unwrap()
                .iter()
                .filter(|p| p.is_some())
                .count()
        };
        assert_eq!(
            sent(AudioEncoder::stethoscope(64_000).unwrap()),
            100,
            "no DTX"
        );
        assert!(sent(AudioEncoder::speech().unwrap()) < 50, "DTX");
    }
}
