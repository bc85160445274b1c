//! Camera and otoscope: VP8 from ffmpeg (a V4L2 device or a test pattern) as IVF on a pipe,
//! packetized to RTP. The same ffmpeg also keeps the device's latest full-resolution frame as a
//! JPEG (twice a second, written atomically), from which stills are taken: the device is busy
//! with the stream and cannot be opened a second time.

use anyhow::Context;
use consult_client::LocalTrack;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use webrtc::rtp::codecs::vp8::Vp8Payloader;
use webrtc::rtp::packetizer::{new_packetizer, Packetizer};
use webrtc::rtp::sequence::new_random_sequencer;

pub fn ffmpeg_available() -> bool {
    std::process::Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn video_devices() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("video"))
        })
        .collect();
    v.sort();
    v
}

/// Control of one running video device.
#[derive(Default)]
pub struct VideoControl {
    /// Device switched off by the physician: nothing is sent.
    pub paused: AtomicBool,
    /// Frame held by the physician: the last keyframe stands in for live video.
    pub frozen: AtomicBool,
}

/// Start streaming `source` (None: a test pattern) on `track` until `stop`; the latest full
/// frame is kept in `latest_jpeg`.
pub fn stream_video(
    track: Arc<LocalTrack>,
    source: Option<PathBuf>,
    latest_jpeg: &Path,
    stop: Arc<AtomicBool>,
    control: Arc<VideoControl>,
) -> anyhow::Result<()> {
    let mut cmd = std::process::Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "fatal"]);
    match &source {
        Some(dev) => cmd.args(["-f", "v4l2", "-i"]).arg(dev),
        None => cmd.args(["-re", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=15"]),
    };
    cmd.args([
        "-filter_complex",
        // The stream at most 640 pixels wide; stills at the device's full resolution.
        "[0:v]split=2[s][p];[s]scale='min(640,iw)':-2[v];[p]fps=2[j]",
        "-map",
        "[v]",
        "-c:v",
        "libvpx",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-b:v",
        "800k",
        // A keyframe every 2 s: this pipe cannot honour PLIs, so a new subscriber waits at
        // most that long for a picture.
        "-g",
        "30",
        "-f",
        "ivf",
        "pipe:1",
        "-map",
        "[j]",
        "-c:v",
        "mjpeg",
        "-q:v",
        "2",
        "-f",
        "image2",
        "-update",
        "1",
        "-atomic_writing",
        "1",
        "-y",
    ])
    .arg(latest_jpeg);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting ffmpeg")?;
    let stdout = child.stdout.take().context("ffmpeg stdout")?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(bytes::Bytes, u64)>(30);
    // IVF frames are read on a blocking thread and packetized on the runtime.
    let reader_stop = stop.clone();
    std::thread::spawn(move || {
        let Ok((mut ivf, header)) =
            webrtc::media::io::ivf_reader::IVFReader::new(std::io::BufReader::new(stdout))
        else {
            let _ = child.kill();
            return;
        };
        let tick = u64::from(header.timebase_numerator) * 90_000
            / u64::from(header.timebase_denominator.max(1));
        while let Ok((frame, fh)) = ivf.parse_next_frame() {
            if reader_stop.load(Ordering::Relaxed)
                || tx
                    .blocking_send((frame.freeze(), fh.timestamp * tick))
                    .is_err()
            {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    });
    tokio::spawn(async move {
        let mut p = new_packetizer(
            1200,
            96,
            0,
            Box::new(Vp8Payloader::default()),
            Box::new(new_random_sequencer()),
            90_000,
        );
        let mut last = None;
        let mut held: Option<bytes::Bytes> = None;
        let mut frozen_ticks = 0u32;
        while let Some((frame, ts)) = rx.recv().await {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let samples = last
                .map(|l: u64| (ts.saturating_sub(l)) as u32)
                .unwrap_or(6000);
            last = Some(ts);
            if control.paused.load(Ordering::Relaxed) {
                p.skip_samples(samples);
                continue;
            }
            let keyframe = frame.first().is_some_and(|b| b & 0x01 == 0);
            let frame = if control.frozen.load(Ordering::Relaxed) {
                // Hold the last keyframe: sent once, then every 2 s for late subscribers;
                // between them nothing, and decoders keep showing the held picture.
                let due = frozen_ticks.is_multiple_of(30);
                frozen_ticks += 1;
                match &held {
                    Some(h) if due => h.clone(),
                    _ => {
                        p.skip_samples(samples);
                        continue;
                    }
                }
            } else {
                frozen_ticks = 0;
                if keyframe {
                    held = Some(frame.clone());
                }
                frame
            };
            if let Ok(packets) = p.packetize(&frame, samples) {
                for pkt in packets {
                    let _ = track.write(&pkt).await;
                }
            }
        }
    });
    Ok(())
}

/// The device's latest full-resolution frame as JPEG bytes.
pub fn latest_still(latest_jpeg: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(latest_jpeg)
        .with_context(|| format!("no frame from the device yet ({})", latest_jpeg.display()))?;
    anyhow::ensure!(
        bytes.starts_with(&[0xFF, 0xD8]) && bytes.ends_with(&[0xFF, 0xD9]),
        "incomplete frame"
    );
    Ok(bytes)
}
