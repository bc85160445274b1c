//! Synthetic heart and lung sounds for tests and benches: S1/S2 bursts in 20–150 Hz, an optional
//! systolic murmur in 100–600 Hz, and breath noise, at 48 kHz. Deterministic for a given seed.

use std::f32::consts::PI;

pub const SAMPLE_RATE: u32 = 48_000;

#[derive(Debug, Clone)]
pub struct HeartSoundConfig {
    pub beats_per_minute: f32,
    /// Systolic murmur between S1 and S2 (e.g. a valve disease).
    pub murmur: bool,
    /// Breath noise, modulated at `breaths_per_minute`.
    pub breath: bool,
    pub breaths_per_minute: f32,
    pub seed: u64,
}

impl Default for HeartSoundConfig {
    fn default() -> Self {
        HeartSoundConfig {
            beats_per_minute: 72.0,
            murmur: true,
            breath: true,
            breaths_per_minute: 15.0,
            seed: 7,
        }
    }
}

/// Generated samples and where the heart sounds start, in samples.
pub struct HeartSound {
    pub samples: Vec<f32>,
    pub s1_onsets: Vec<usize>,
    pub s2_onsets: Vec<usize>,
}

struct Rng(u64);

impl Rng {
    /// Uniform in [-1, 1).
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A burst of damped sinusoids at `freqs` under a raised-cosine envelope of `dur` seconds.
fn add_burst(out: &mut [f32], start: usize, dur: f32, freqs: &[(f32, f32)], amp: f32) {
    let n = (dur * SAMPLE_RATE as f32) as usize;
    for i in 0..n {
        let Some(slot) = out.get_mut(start + i) else {
            break;
        };
        let t = i as f32 / SAMPLE_RATE as f32;
        let env = 0.5 - 0.5 * (2.0 * PI * i as f32 / n as f32).cos();
        let v: f32 = freqs
            .iter()
            .map(|(f, phase)| (2.0 * PI * f * t + phase).sin())
            .sum::<f32>()
            / freqs.len() as f32;
        *slot += amp * env * v;
    }
}

/// Band-limited noise as a sum of random-phase sinusoids every `step` Hz in `[lo, hi]`.
fn band_noise(len: usize, lo: f32, hi: f32, step: f32, rng: &mut Rng) -> Vec<f32> {
    let mut out = vec![0.0f32; len];
    let mut f = lo;
    let mut count = 0.0f32;
    while f <= hi {
        let phase = f64::from(rng.next()) * std::f64::consts::PI;
        let w = 2.0 * std::f64::consts::PI * f64::from(f) / f64::from(SAMPLE_RATE);
        // sin(w·i + φ) by the recurrence s[i] = 2cos(w)·s[i−1] − s[i−2]: no sin() per sample.
        let k = 2.0 * w.cos();
        let (mut prev, mut cur) = ((phase - w).sin(), phase.sin());
        for s in out.iter_mut() {
            *s += cur as f32;
            let next = k * cur - prev;
            prev = cur;
            cur = next;
        }
        count += 1.0;
        f += step;
    }
    let norm = 1.0 / count.sqrt().max(1.0);
    out.iter_mut().for_each(|s| *s *= norm);
    out
}

pub fn generate(cfg: &HeartSoundConfig, seconds: f32) -> HeartSound {
    let len = (seconds * SAMPLE_RATE as f32) as usize;
    let mut rng = Rng(cfg.seed | 1);
    let mut samples = vec![0.0f32; len];
    let period = 60.0 / cfg.beats_per_minute;
    // Systole lasts about a third of the cycle at rest.
    let systole = 0.3 * (period / 0.833).sqrt();
    let mut s1_onsets = Vec::new();
    let mut s2_onsets = Vec::new();
    let murmur = cfg
        .murmur
        .then(|| band_noise(len, 100.0, 600.0, 7.0, &mut rng));
    let mut t = 0.1f32;
    while t + period < seconds {
        let s1 = (t * SAMPLE_RATE as f32) as usize;
        let s2 = ((t + systole) * SAMPLE_RATE as f32) as usize;
        let jitter = rng.next() * 0.3;
        add_burst(
            &mut samples,
            s1,
            0.10,
            &[(28.0, 0.0), (45.0, 1.0 + jitter), (70.0, 2.0), (110.0, 0.5)],
            0.6,
        );
        add_burst(
            &mut samples,
            s2,
            0.08,
            &[(55.0, 0.3), (85.0, jitter), (120.0, 1.5), (150.0, 2.5)],
            0.45,
        );
        if let Some(m) = &murmur {
            // Crescendo–decrescendo between the end of S1 and the start of S2.
            let a = s1 + (0.1 * SAMPLE_RATE as f32) as usize;
            let b = s2.saturating_sub((0.02 * SAMPLE_RATE as f32) as usize);
            for i in a..b.min(len) {
                let x = (i - a) as f32 / (b - a) as f32;
                let env = 1.0 - (2.0 * x - 1.0).abs();
                samples[i] += 0.12 * env * m[i];
            }
        }
        s1_onsets.push(s1);
        s2_onsets.push(s2);
        t += period;
    }
    if cfg.breath {
        let noise = band_noise(len, 150.0, 1800.0, 11.0, &mut rng);
        let rate = cfg.breaths_per_minute / 60.0;
        for (i, s) in samples.iter_mut().enumerate() {
            let phase = (i as f32 / SAMPLE_RATE as f32 * rate).fract();
            // Inspiration louder than expiration.
            let env = if phase < 0.4 {
                (PI * phase / 0.4).sin()
            } else {
                0.5 * (PI * (phase - 0.4) / 0.6).sin()
            };
            *s += 0.05 * env * noise[i];
        }
    }
    HeartSound {
        samples,
        s1_onsets,
        s2_onsets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_are_where_they_should_be_and_loud_enough() {
        let h = generate(&HeartSoundConfig::default(), 5.0);
        assert_eq!(h.samples.len(), 5 * SAMPLE_RATE as usize);
        assert!(h.s1_onsets.len() >= 5);
        assert!(h.samples.iter().all(|s| s.abs() < 1.0));
        let rms = |a: usize, n: usize| {
            (h.samples[a..a + n].iter().map(|s| s * s).sum::<f32>() / n as f32).sqrt()
        };
        let s1 = h.s1_onsets[1];
        // S1 is much louder than the diastolic pause before it.
        assert!(rms(s1 + 1000, 2000) > 5.0 * rms(s1 - 8000, 2000));
        let again = generate(&HeartSoundConfig::default(), 5.0);
        assert_eq!(h.samples, again.samples, "deterministic");
    }
}
