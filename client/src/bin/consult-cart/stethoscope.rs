//! The stethoscope: 48 kHz mono PCM from an ALSA capture device (through ffmpeg, raw: no
//! filter, no gain, no processing of any kind), a WAV file or the synthetic heart sound,
//! encoded with the stethoscope Opus profile and sent in real time.

use anyhow::{bail, Context};
use consult_client::audio::{AudioEncoder, FRAME_SAMPLES, SAMPLE_RATE};
use consult_client::LocalTrack;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Where the stethoscope's sound comes from.
#[derive(Clone)]
pub enum Source {
    /// Samples looped in real time (a recording, or the synthetic heart sound).
    Looped(Arc<Vec<f32>>),
    /// Live capture: an ffmpeg input format and device, e.g. `alsa` and `hw:1,0`.
    Live { format: String, device: String },
}

/// A 48 kHz WAV as mono f32 (channels averaged).
pub fn read_wav(path: &Path) -> anyhow::Result<Vec<f32>> {
    let mut r = hound::WavReader::open(path).with_context(|| format!("{}", path.display()))?;
    let spec = r.spec();
    if spec.sample_rate != SAMPLE_RATE {
        bail!("{} Hz: the stethoscope path takes 48 kHz", spec.sample_rate);
    }
    let ch = usize::from(spec.channels.max(1));
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1i64 << (spec.bits_per_sample - 1)) as f32;
            r.samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()?
        }
    };
    Ok(samples
        .chunks(ch)
        .map(|c| c.iter().sum::<f32>() / ch as f32)
        .collect())
}

/// ALSA capture devices, from `/proc/asound/pcm` (`card-device: name : capture`).
pub fn alsa_capture_devices() -> Vec<String> {
    std::fs::read_to_string("/proc/asound/pcm")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("capture"))
        .map(|l| {
            let id = l.split(':').next().unwrap_or_default();
            let (card, dev) = id.split_once('-').unwrap_or((id, "0"));
            let name = l.split(':').nth(1).unwrap_or_default().trim();
            format!(
                "hw:{},{} ({name})",
                card.trim_start_matches('0').parse::<u32>().unwrap_or(0),
                dev.trim_start_matches('0').parse::<u32>().unwrap_or(0)
            )
        })
        .collect()
}

/// 20 ms frames of live capture: ffmpeg converts the device's format to 48 kHz mono f32
/// (channel average, resampled only if the device cannot run at 48 kHz).
fn live_frames(format: &str, device: &str) -> anyhow::Result<mpsc::Receiver<Vec<f32>>> {
    let mut cmd = std::process::Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error"]);
    if format != "alsa" {
        // Not a capture device: read at the real-time pace a device would have.
        cmd.arg("-re");
    }
    let mut child = cmd
        .args(["-f", format, "-i", device])
        .args(["-ac", "1", "-ar", "48000", "-f", "f32le", "pipe:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting ffmpeg for the stethoscope")?;
    let mut out = child.stdout.take().context("ffmpeg stdout")?;
    let (tx, rx) = mpsc::channel(50);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; FRAME_SAMPLES * 4];
        while out.read_exact(&mut buf).is_ok() {
            let frame: Vec<f32> = buf
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if tx.blocking_send(frame).is_err() {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    });
    Ok(rx)
}

/// Stream the stethoscope until `stop`. A live device sets the pace; a looped source is sent
/// on a 20 ms clock.
pub fn stream(
    track: Arc<LocalTrack>,
    source: Source,
    bitrate: i32,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut enc = AudioEncoder::stethoscope(bitrate)?;
    let mut live = match &source {
        Source::Live { format, device } => Some(live_frames(format, device)?),
        Source::Looped(_) => None,
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let (mut seq, mut ts, mut pos) = (0u16, 0u32, 0usize);
        let mut expected_loss = 0u8;
        let mut frame = vec![0f32; FRAME_SAMPLES];
        while !stop.load(Ordering::Relaxed) {
            match (&source, live.as_mut()) {
                (_, Some(rx)) => match rx.recv().await {
                    Some(f) => frame = f,
                    None => {
                        tracing::warn!("stethoscope capture ended");
                        break;
                    }
                },
                (Source::Looped(pcm), None) => {
                    tick.tick().await;
                    if pcm.len() < FRAME_SAMPLES {
                        break;
                    }
                    if pos + FRAME_SAMPLES > pcm.len() {
                        pos = 0;
                    }
                    frame.copy_from_slice(&pcm[pos..pos + FRAME_SAMPLES]);
                    pos += FRAME_SAMPLES;
                }
                (Source::Live { .. }, None) => break,
            }
            // In-band FEC sized to the loss the receivers see (the SFU's publisher_audio).
            let loss = track.expected_loss_pct.load(Ordering::Relaxed);
            if loss != expected_loss {
                expected_loss = loss;
                if let Err(e) = enc.set_expected_loss(loss) {
                    tracing::warn!("stethoscope encoder: {e:#}");
                }
            }
            if let Ok(Some(payload)) = enc.encode(&frame) {
                let pkt = webrtc::rtp::packet::Packet {
                    header: webrtc::rtp::header::Header {
                        version: 2,
                        sequence_number: seq,
                        timestamp: ts,
                        ..Default::default()
                    },
                    payload: payload.into(),
                };
                let _ = track.write(&pkt).await;
                seq = seq.wrapping_add(1);
            }
            ts = ts.wrapping_add(FRAME_SAMPLES as u32);
        }
    });
    Ok(())
}
