//! How faithfully a decoded stethoscope signal matches its source: energy per third-octave band
//! from 20 Hz to 2 kHz, and whether S1/S2 keep their timing.

use rustfft::num_complex::Complex;
use rustfft::FftPlanner;
use serde_json::json;

/// Third-octave bands (IEC 61260 base-ten centres 10^(n/10)) from 20 Hz to 2 kHz:
/// (centre, lower edge, upper edge) in Hz.
pub fn third_octave_bands() -> Vec<(f32, f32, f32)> {
    (13..=33)
        .map(|n| {
            let c = 10f32.powf(n as f32 / 10.0);
            let k = 10f32.powf(1.0 / 20.0);
            (c, c / k, c * k)
        })
        .collect()
}

/// Welch power spectrum (Hann window, 50 % overlap) with `size`-point segments.
fn power_spectrum(x: &[f32], size: usize) -> Vec<f64> {
    let mut planner = FftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(size);
    let window: Vec<f64> = (0..size)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / size as f64).cos())
        .collect();
    let mut acc = vec![0f64; size / 2 + 1];
    let mut buf = vec![Complex::new(0.0, 0.0); size];
    let mut segments = 0;
    let mut start = 0;
    while start + size <= x.len() {
        for i in 0..size {
            buf[i] = Complex::new(f64::from(x[start + i]) * window[i], 0.0);
        }
        fft.process(&mut buf);
        for (a, c) in acc.iter_mut().zip(&buf) {
            *a += c.norm_sqr();
        }
        segments += 1;
        start += size / 2;
    }
    acc.iter_mut().for_each(|a| *a /= segments.max(1) as f64);
    acc
}

/// Energy in each band, in dB (relative, same scale for every signal).
pub fn band_levels_db(x: &[f32], sample_rate: u32) -> Vec<f32> {
    // 32768 points at 48 kHz: 1.46 Hz bins, three or more in the 20 Hz band.
    let size = 32768;
    let p = power_spectrum(x, size);
    let bin = sample_rate as f32 / size as f32;
    third_octave_bands()
        .iter()
        .map(|(_, lo, hi)| {
            let a = (lo / bin).ceil() as usize;
            let b = ((hi / bin).floor() as usize).min(p.len() - 1);
            let e: f64 = p[a..=b].iter().sum();
            (10.0 * (e + 1e-20).log10()) as f32
        })
        .collect()
}

/// Cross-correlation of `b` against `a` over lags `0..max_lag` (b delayed): (best lag,
/// normalised correlation at that lag).
pub fn best_lag(a: &[f32], b: &[f32], max_lag: usize) -> (usize, f32) {
    let n = (a.len() + b.len()).next_power_of_two();
    let mut planner = FftPlanner::<f64>::new();
    let fwd = planner.plan_fft_forward(n);
    let inv = planner.plan_fft_inverse(n);
    let mut fa: Vec<Complex<f64>> = a.iter().map(|v| Complex::new(f64::from(*v), 0.0)).collect();
    fa.resize(n, Complex::new(0.0, 0.0));
    let mut fb: Vec<Complex<f64>> = b.iter().map(|v| Complex::new(f64::from(*v), 0.0)).collect();
    fb.resize(n, Complex::new(0.0, 0.0));
    fwd.process(&mut fa);
    fwd.process(&mut fb);
    let mut prod: Vec<Complex<f64>> = fa.iter().zip(&fb).map(|(x, y)| x.conj() * y).collect();
    inv.process(&mut prod);
    let (lag, _) = prod
        .iter()
        .take(max_lag.min(n))
        .enumerate()
        .max_by(|x, y| x.1.re.total_cmp(&y.1.re))
        .unwrap_or((0, &Complex::new(0.0, 0.0)));
    (lag, normalised_correlation(a, &b[lag.min(b.len())..]))
}

fn normalised_correlation(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for i in 0..n {
        let (x, y) = (f64::from(a[i]), f64::from(b[i]));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    (ab / (aa.sqrt() * bb.sqrt() + 1e-20)) as f32
}

/// RMS envelope over `win` samples, one value per `hop`.
pub fn envelope(x: &[f32], win: usize, hop: usize) -> Vec<f32> {
    (0..x.len().saturating_sub(win))
        .step_by(hop)
        .map(|i| (x[i..i + win].iter().map(|s| s * s).sum::<f32>() / win as f32).sqrt())
        .collect()
}

/// The comparison of a decoded signal with its source.
#[derive(Debug, Clone)]
pub struct FidelityReport {
    /// (band centre Hz, source dB, decoded dB).
    pub bands: Vec<(f32, f32, f32)>,
    /// Delay of the decoded signal, in samples.
    pub lag: usize,
    /// Waveform correlation once aligned.
    pub correlation: f32,
    /// Correlation of the 5 ms envelopes: do S1 and S2 fall where they should?
    pub envelope_correlation: f32,
    /// Largest shift of an S1/S2 onset, in milliseconds.
    pub max_onset_shift_ms: f32,
    /// Seconds compared.
    pub seconds: f32,
}

impl FidelityReport {
    pub fn max_band_error_db(&self) -> f32 {
        self.bands
            .iter()
            .map(|(_, s, d)| (d - s).abs())
            .fold(0.0, f32::max)
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "bands": self.bands.iter().map(|(c, s, d)| json!({"centre_hz": c, "source_db": s, "decoded_db": d, "diff_db": d - s})).collect::<Vec<_>>(),
            "max_band_error_db": self.max_band_error_db(),
            "lag_samples": self.lag,
            "correlation": self.correlation,
            "envelope_correlation": self.envelope_correlation,
            "max_onset_shift_ms": self.max_onset_shift_ms,
            "seconds": self.seconds,
        })
    }
}

/// Compare `decoded` (which holds a delayed excerpt of `source`) with the source. `onsets` are
/// the S1/S2 start samples in the source.
pub fn compare(
    source: &[f32],
    decoded: &[f32],
    onsets: &[usize],
    sample_rate: u32,
) -> FidelityReport {
    // Where in the source does the decoded excerpt start? Align on the envelope first (robust
    // to phase), then refine on the waveform around it.
    let hop = 48;
    let env_s = envelope(source, 240, hop);
    let env_d = envelope(decoded, 240, hop);
    let (coarse, _) = best_lag(&env_d, &env_s, env_s.len());
    let coarse = coarse * hop;
    let from = coarse.saturating_sub(hop * 2);
    let (fine, _) = best_lag(decoded, &source[from..], hop * 4);
    let offset = from + fine;
    let n = decoded.len().min(source.len() - offset);
    let src = &source[offset..offset + n];
    let dec = &decoded[..n];
    let correlation = normalised_correlation(src, dec);
    let envelope_correlation =
        normalised_correlation(&envelope(src, 240, hop), &envelope(dec, 240, hop));
    // Each onset inside the compared span: where is the envelope's rise in the decoded signal?
    let rise = |x: &[f32], at: usize| -> Option<usize> {
        let seg = x.get(at.saturating_sub(2400)..(at + 4800).min(x.len()))?;
        let env = envelope(seg, 96, 24);
        let peak = env.iter().copied().fold(0.0f32, f32::max);
        env.iter()
            .position(|v| *v >= 0.3 * peak)
            .map(|i| at.saturating_sub(2400) + i * 24)
    };
    let mut max_shift = 0f32;
    for &o in onsets {
        if o < offset + 2400 || o + 4800 > offset + n {
            continue;
        }
        if let (Some(a), Some(b)) = (rise(source, o), rise(dec, o - offset)) {
            let shift = (b as f32 - (a - offset) as f32).abs() * 1000.0 / sample_rate as f32;
            max_shift = max_shift.max(shift);
        }
    }
    let s = band_levels_db(src, sample_rate);
    let d = band_levels_db(dec, sample_rate);
    FidelityReport {
        bands: third_octave_bands()
            .iter()
            .zip(s.iter().zip(&d))
            .map(|((c, _, _), (s, d))| (*c, *s, *d))
            .collect(),
        lag: offset,
        correlation,
        envelope_correlation,
        max_onset_shift_ms: max_shift,
        seconds: n as f32 / sample_rate as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heart::{generate, HeartSoundConfig};

    #[test]
    fn bands_cover_20_hz_to_2_khz() {
        let b = third_octave_bands();
        assert_eq!(b.len(), 21);
        assert!((b[0].0 - 20.0).abs() < 0.1 && (b[20].0 - 1995.0).abs() < 1.0);
    }

    #[test]
    fn an_identical_excerpt_matches_and_a_filtered_one_does_not() {
        let h = generate(&HeartSoundConfig::default(), 8.0);
        let onsets: Vec<usize> = h.s1_onsets.iter().chain(&h.s2_onsets).copied().collect();
        let excerpt = h.samples[12_345..].to_vec();
        let r = compare(&h.samples, &excerpt, &onsets, 48_000);
        assert_eq!(r.lag, 12_345);
        assert!(r.max_band_error_db() < 0.01, "{r:?}");
        assert!(r.correlation > 0.999);
        assert!(r.max_onset_shift_ms < 1.0);
        // A crude first-difference high-pass removes low bands: the comparison must see it.
        let hp: Vec<f32> = excerpt.windows(2).map(|w| w[1] - w[0]).collect();
        let r = compare(&h.samples, &hp, &onsets, 48_000);
        assert!(r.max_band_error_db() > 3.0);
    }
}
