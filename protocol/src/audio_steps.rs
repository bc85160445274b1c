//! The encodings an audio publisher may be asked for (`publisher_audio`), chosen by the
//! downlink of its thinnest receiver. On a thin link the per-packet overhead (IP, UDP, SRTP,
//! RTP and its extensions: ~70 bytes) costs more than the audio: a 20 ms Opus stream pays
//! ~28 kbit/s in headers, a 60 ms one ~9 kbit/s. So the frame duration grows before the
//! bitrate falls. Every stethoscope step keeps the 20–2000 Hz third-octave bands within
//! ±1 dB (`consult_client::fidelity`, tested at each step).

use crate::TrackLabel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioStep {
    /// The thinnest receiver's downlink (bits/s) from which this step applies.
    pub min_link_bps: u64,
    pub max_bitrate_bps: u32,
    /// Opus frame duration (ms): 20, 40 or 60.
    pub ptime_ms: u16,
}

const fn step(min_link_bps: u64, max_bitrate_bps: u32, ptime_ms: u16) -> AudioStep {
    AudioStep {
        min_link_bps,
        max_bitrate_bps,
        ptime_ms,
    }
}

/// The stethoscope, best first: fullband, constant bitrate (the cart's default is the top).
pub const STETHOSCOPE_STEPS: [AudioStep; 3] = [
    step(400_000, 64_000, 20),
    step(150_000, 48_000, 40),
    step(0, 32_000, 60),
];

/// Speech, best first.
pub const SPEECH_STEPS: [AudioStep; 3] = [
    step(400_000, 32_000, 20),
    step(150_000, 24_000, 40),
    step(0, 16_000, 60),
];

/// The steps of an audio track with `label` (speech for anything but the stethoscope).
pub fn audio_steps(label: TrackLabel) -> &'static [AudioStep] {
    match label {
        TrackLabel::Stethoscope => &STETHOSCOPE_STEPS,
        _ => &SPEECH_STEPS,
    }
}

/// Index of the step for a thinnest receiver's downlink of `link_bps`.
pub fn step_for(steps: &[AudioStep], link_bps: u64) -> usize {
    steps
        .iter()
        .position(|s| link_bps >= s.min_link_bps)
        .unwrap_or(steps.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinner_links_get_longer_frames_then_lower_bitrates() {
        for steps in [&STETHOSCOPE_STEPS, &SPEECH_STEPS] {
            assert_eq!(step_for(steps, 2_000_000), 0);
            assert_eq!(step_for(steps, 200_000), 1);
            assert_eq!(step_for(steps, 100_000), 2);
            assert_eq!(step_for(steps, 0), 2);
            for w in steps.windows(2) {
                assert!(w[0].min_link_bps > w[1].min_link_bps);
                assert!(w[0].ptime_ms <= w[1].ptime_ms);
                assert!(w[0].max_bitrate_bps >= w[1].max_bitrate_bps);
            }
        }
    }
}
