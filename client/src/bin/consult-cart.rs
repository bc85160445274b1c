//! `consult-cart`: the teleconsultation cart. Joins a consultation with the companion's token and
//! publishes the stethoscope (a WAV file, or the synthetic heart sound) with the stethoscope
//! Opus profile, and the room camera and otoscope as real VP8 (from V4L2 devices through
//! ffmpeg when present, else an ffmpeg test pattern). Follows the physician's device commands,
//! and rejoins by itself after a dropped link.
//!
//! `consult-cart --self-test` lists the devices and their state before a session.

use anyhow::{bail, Context};
use clap::Parser;
use consult_client::audio::{AudioEncoder, FRAME_SAMPLES, SAMPLE_RATE};
use consult_client::heart::{generate, HeartSoundConfig};
use consult_client::{Client, ClientEvent, ClientOptions, LocalTrack};
use consult_protocol::{DeviceCommand, ServerMsg, TrackLabel};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use webrtc::rtp::codecs::vp8::Vp8Payloader;
use webrtc::rtp::packetizer::{new_packetizer, Packetizer};
use webrtc::rtp::sequence::new_random_sequencer;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Teleconsultation cart: stethoscope, camera and otoscope"
)]
struct Args {
    /// Signaling WebSocket, e.g. ws://127.0.0.1:8443/ws (wss:// with a trusted certificate).
    #[arg(long, env = "CONSULT_WS_URL")]
    server: Option<String>,
    /// The companion's access token (from the consultation's join link).
    #[arg(long, env = "CONSULT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Stethoscope input: a mono or stereo WAV file (any rate is refused but 48 kHz). Without
    /// it, the synthetic heart sound.
    #[arg(long)]
    stethoscope_wav: Option<PathBuf>,
    /// Stethoscope Opus bitrate, bits per second.
    #[arg(long, default_value_t = 64_000)]
    stethoscope_bitrate: i32,
    /// Room camera: a V4L2 device; without it (or without ffmpeg), no camera track.
    #[arg(long)]
    camera: Option<PathBuf>,
    /// Otoscope / dermatoscope: a V4L2 device.
    #[arg(long)]
    otoscope: Option<PathBuf>,
    /// Publish ffmpeg test patterns for the devices that are missing.
    #[arg(long)]
    test_pattern: bool,
    /// Stop after this many seconds (default: until the consultation ends).
    #[arg(long)]
    duration: Option<u64>,
    /// List devices and their state, then exit.
    #[arg(long)]
    self_test: bool,
}

fn ffmpeg_available() -> bool {
    std::process::Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn video_devices() -> Vec<PathBuf> {
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

fn self_test(args: &Args) -> bool {
    let mut ok = true;
    let mut line = |good: bool, what: &str, detail: String| {
        println!("[{}] {what}: {detail}", if good { " ok " } else { "FAIL" });
        ok &= good;
    };
    line(true, "libopus", opus::version().to_owned());
    let cards = std::fs::read_to_string("/proc/asound/cards").unwrap_or_default();
    let cards = cards.trim();
    line(
        true,
        "audio inputs (ALSA)",
        if cards.is_empty() || cards.contains("no soundcards") {
            "none (stethoscope from WAV or synthetic)".into()
        } else {
            cards.lines().next().unwrap_or_default().to_owned()
        },
    );
    let videos = video_devices();
    line(
        true,
        "video devices (V4L2)",
        if videos.is_empty() {
            "none".into()
        } else {
            format!("{videos:?}")
        },
    );
    let ff = ffmpeg_available();
    line(
        ff || !(args.camera.is_some() || args.otoscope.is_some() || args.test_pattern),
        "ffmpeg (VP8 encoding)",
        if ff {
            "present".into()
        } else {
            "missing".into()
        },
    );
    for (what, dev) in [("camera", &args.camera), ("otoscope", &args.otoscope)] {
        if let Some(d) = dev {
            line(d.exists(), what, d.display().to_string());
        }
    }
    if let Some(wav) = &args.stethoscope_wav {
        match read_wav(wav) {
            Ok(s) => line(
                true,
                "stethoscope WAV",
                format!("{:.1} s", s.len() as f32 / SAMPLE_RATE as f32),
            ),
            Err(e) => line(false, "stethoscope WAV", format!("{e:#}")),
        }
    }
    ok
}

/// A 48 kHz WAV as mono f32 (channels averaged).
fn read_wav(path: &Path) -> anyhow::Result<Vec<f32>> {
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

/// Stream the stethoscope in real time, looping the source, until `stop`.
fn stream_stethoscope(track: Arc<LocalTrack>, pcm: Vec<f32>, bitrate: i32, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let Ok(mut enc) = AudioEncoder::stethoscope(bitrate) else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let (mut seq, mut ts, mut pos) = (0u16, 0u32, 0usize);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            if pos + FRAME_SAMPLES > pcm.len() {
                pos = 0;
            }
            if let Ok(Some(payload)) = enc.encode(&pcm[pos..pos + FRAME_SAMPLES]) {
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
            pos += FRAME_SAMPLES;
            ts = ts.wrapping_add(FRAME_SAMPLES as u32);
        }
    });
}

/// VP8 from ffmpeg (a V4L2 device or a test pattern) as IVF on a pipe, packetized to RTP.
/// `paused` holds the stream (device switched off by the physician).
fn stream_video(
    track: Arc<LocalTrack>,
    source: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut cmd = std::process::Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "fatal"]);
    match &source {
        Some(dev) => cmd.args(["-f", "v4l2", "-i"]).arg(dev),
        None => cmd.args(["-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=15"]),
    };
    cmd.args([
        "-c:v",
        "libvpx",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-b:v",
        "1000k",
        // A keyframe every 2 s: this pipe cannot honour PLIs, so a new subscriber waits at
        // most that long for a picture.
        "-g",
        "30",
        "-f",
        "ivf",
        "pipe:1",
    ]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting ffmpeg")?;
    let stdout = child.stdout.take().context("ffmpeg stdout")?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(bytes::Bytes, u64)>(30);
    // IVF frames are read on a blocking thread and packetized on the runtime.
    std::thread::spawn(move || {
        let Ok((mut ivf, header)) =
            webrtc::media::io::ivf_reader::IVFReader::new(std::io::BufReader::new(stdout))
        else {
            return;
        };
        let tick = u64::from(header.timebase_numerator) * 90_000
            / u64::from(header.timebase_denominator.max(1));
        while let Ok((frame, fh)) = ivf.parse_next_frame() {
            if tx
                .blocking_send((frame.freeze(), fh.timestamp * tick))
                .is_err()
            {
                break;
            }
        }
        let _ = child.kill();
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
        while let Some((frame, ts)) = rx.recv().await {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let samples = last
                .map(|l: u64| (ts.saturating_sub(l)) as u32)
                .unwrap_or(6000);
            last = Some(ts);
            if paused.load(Ordering::Relaxed) {
                p.skip_samples(samples);
                continue;
            }
            if let Ok(packets) = p.packetize(&frame, samples) {
                for pkt in packets {
                    let _ = track.write(&pkt).await;
                }
            }
        }
    });
    Ok(())
}

/// One session: join, publish, follow commands. Returns `Ok(true)` when the consultation is
/// over, `Ok(false)` when the link dropped.
async fn session(
    args: &Args,
    url: &str,
    token: &str,
    steth: &[f32],
    deadline: Option<Instant>,
) -> anyhow::Result<bool> {
    let mut client = Client::connect(url, token, ClientOptions::default()).await?;
    println!("joined as {} ({:?})", client.participant_id, client.state);
    client.wait_admitted(Duration::from_secs(24 * 3600)).await?;
    println!("admitted");
    let ff = ffmpeg_available();
    let mut labels = vec![TrackLabel::Stethoscope];
    let camera = args.camera.clone().or(None);
    let otoscope = args.otoscope.clone();
    let with_camera = ff && (camera.is_some() || args.test_pattern);
    let with_otoscope = ff && (otoscope.is_some() || args.test_pattern);
    if with_camera {
        labels.push(TrackLabel::Camera);
    }
    if with_otoscope {
        labels.push(TrackLabel::Otoscope);
    }
    let tracks: Vec<Arc<LocalTrack>> = client
        .publish(&labels)
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let otoscope_paused = Arc::new(AtomicBool::new(false));
    for t in &tracks {
        match t.label {
            TrackLabel::Stethoscope => stream_stethoscope(
                t.clone(),
                steth.to_vec(),
                args.stethoscope_bitrate,
                stop.clone(),
            ),
            TrackLabel::Camera => stream_video(
                t.clone(),
                camera.clone(),
                stop.clone(),
                Arc::new(AtomicBool::new(false)),
            )?,
            TrackLabel::Otoscope => stream_video(
                t.clone(),
                otoscope.clone(),
                stop.clone(),
                otoscope_paused.clone(),
            )?,
            _ => {}
        }
    }
    println!("publishing {labels:?}");
    let over = loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            break true;
        }
        let ev = client
            .next_event(left.unwrap_or(Duration::from_secs(3600)))
            .await;
        match ev {
            Some(ClientEvent::Server(ServerMsg::DeviceControl { from, command })) => {
                println!("device control from {from}: {command:?}");
                match command {
                    DeviceCommand::Disable {
                        label: TrackLabel::Otoscope,
                    } => otoscope_paused.store(true, Ordering::Relaxed),
                    DeviceCommand::Enable {
                        label: TrackLabel::Otoscope,
                    } => otoscope_paused.store(false, Ordering::Relaxed),
                    other => println!("  not supported by this cart's devices: {other:?}"),
                }
            }
            Some(ClientEvent::Server(ServerMsg::ConsultationEnded { .. }))
            | Some(ClientEvent::Server(ServerMsg::Removed)) => break true,
            Some(ClientEvent::Closed) => break false,
            Some(_) => {}
            None if deadline.is_some() => {}
            None => {}
        }
    };
    stop.store(true, Ordering::Relaxed);
    if over {
        client.leave().await;
    }
    Ok(over)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    if args.self_test {
        let ok = self_test(&args);
        std::process::exit(if ok { 0 } else { 1 });
    }
    let (Some(url), Some(token)) = (args.server.clone(), args.token.clone()) else {
        bail!("--server and --token are required (or --self-test)");
    };
    let steth = match &args.stethoscope_wav {
        Some(p) => read_wav(p)?,
        None => generate(&HeartSoundConfig::default(), 30.0).samples,
    };
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    // A dropped link: rejoin (the server keeps the admission for a grace period).
    let mut backoff = Duration::from_millis(500);
    loop {
        match session(&args, &url, &token, &steth, deadline).await {
            Ok(true) => return Ok(()),
            Ok(false) => println!("link dropped: rejoining"),
            Err(e) => println!("session failed: {e:#}; retrying in {backoff:?}"),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
