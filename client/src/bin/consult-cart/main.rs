//! `consult-cart`: the teleconsultation cart. Joins a consultation with the companion's token and
//! publishes the stethoscope (an ALSA device, a WAV file, or the synthetic heart sound) with the
//! stethoscope Opus profile, and the room camera and otoscope as real VP8 (from V4L2 devices
//! through ffmpeg, else an ffmpeg test pattern). Follows the physician's device commands, takes
//! full-resolution stills (asked by the physician, or `still` typed on the cart's terminal) into
//! an on-disk queue uploaded in the background, and rejoins by itself after a dropped link.
//!
//! `consult-cart --self-test` lists the devices and their state before a session.

mod stethoscope;
mod video;

use anyhow::{bail, Context};
use clap::Parser;
use consult_client::audio::SAMPLE_RATE;
use consult_client::heart::{generate, HeartSoundConfig};
use consult_client::stills::{StillQueue, StillUploader};
use consult_client::{Client, ClientEvent, ClientOptions, LocalTrack};
use consult_protocol::{DeviceCommand, ServerMsg, TrackLabel};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;
use video::{ffmpeg_available, video_devices, VideoControl};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Teleconsultation cart: stethoscope, camera and otoscope"
)]
struct Args {
    /// Signaling WebSocket, e.g. wss://consult.example.org/ws (ws:// on loopback only).
    #[arg(long, env = "CONSULT_WS_URL")]
    server: Option<String>,
    /// The companion's access token (from the consultation's join link).
    #[arg(long, env = "CONSULT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An extra certificate (PEM) to trust, e.g. the server's development certificate
    /// `data/dev-cert.pem`.
    #[arg(long)]
    trusted_cert: Option<PathBuf>,
    /// Stethoscope from an ALSA capture device, e.g. `hw:1,0` (see --self-test).
    #[arg(long, conflicts_with = "stethoscope_wav")]
    stethoscope_alsa: Option<String>,
    /// ffmpeg input format of --stethoscope-alsa (for tests: `lavfi` with a filter as device).
    #[arg(long, default_value = "alsa", hide = true)]
    stethoscope_input_format: String,
    /// Stethoscope from a 48 kHz WAV file (looped). Without it or an ALSA device, the
    /// synthetic heart sound.
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
    /// Where stills wait for upload (kept across restarts: nothing is lost on a drop).
    #[arg(long, default_value = "cart-stills")]
    stills_dir: PathBuf,
    /// Stop after this many seconds (default: until the consultation ends).
    #[arg(long)]
    duration: Option<u64>,
    /// List devices and their state, then exit.
    #[arg(long)]
    self_test: bool,
}

fn self_test(args: &Args) -> bool {
    let mut ok = true;
    let mut line = |good: bool, what: &str, detail: String| {
        println!("[{}] {what}: {detail}", if good { " ok " } else { "FAIL" });
        ok &= good;
    };
    line(true, "libopus", opus::version().to_owned());
    let captures = stethoscope::alsa_capture_devices();
    line(
        true,
        "audio capture devices (ALSA)",
        if captures.is_empty() {
            "none (stethoscope from WAV or synthetic)".into()
        } else {
            captures.join(", ")
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
    let needs_ff = args.camera.is_some()
        || args.otoscope.is_some()
        || args.test_pattern
        || args.stethoscope_alsa.is_some();
    line(
        ff || !needs_ff,
        "ffmpeg (VP8 encoding, capture)",
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
    if let Some(dev) = &args.stethoscope_alsa {
        let known = args.stethoscope_input_format != "alsa"
            || captures.iter().any(|c| c.starts_with(dev.as_str()));
        line(known, "stethoscope (ALSA)", dev.clone());
    }
    if let Some(wav) = &args.stethoscope_wav {
        match stethoscope::read_wav(wav) {
            Ok(s) => line(
                true,
                "stethoscope WAV",
                format!("{:.1} s", s.len() as f32 / SAMPLE_RATE as f32),
            ),
            Err(e) => line(false, "stethoscope WAV", format!("{e:#}")),
        }
    }
    match StillQueue::open(&args.stills_dir).and_then(|q| q.pending()) {
        Ok(p) => line(
            true,
            "stills queue",
            format!("{} ({} waiting)", args.stills_dir.display(), p.len()),
        ),
        Err(e) => line(false, "stills queue", format!("{e:#}")),
    }
    ok
}

/// What outlives a session: the still queue and the place the video devices keep their
/// latest frame.
struct Cart {
    queue: StillQueue,
    wake_uploader: Arc<Notify>,
    frames_dir: PathBuf,
    device_names: HashMap<TrackLabel, String>,
}

impl Cart {
    fn latest_frame(&self, label: TrackLabel) -> PathBuf {
        self.frames_dir.join(format!("latest-{label:?}.jpg"))
    }

    /// Queue a full-resolution still of `label` for upload.
    fn take_still(&self, label: TrackLabel) -> anyhow::Result<String> {
        let image = video::latest_still(&self.latest_frame(label))?;
        let taken_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let stem = self.queue.enqueue(
            &image,
            label,
            taken_at,
            self.device_names.get(&label).cloned(),
        )?;
        self.wake_uploader.notify_one();
        println!("still of {label:?} queued ({} bytes)", image.len());
        Ok(stem)
    }
}

/// One session: join, publish, follow commands. Returns `Ok(true)` when the consultation is
/// over, `Ok(false)` when the link dropped.
async fn session(
    args: &Args,
    cart: &Cart,
    options: &ClientOptions,
    steth: &stethoscope::Source,
    deadline: Option<Instant>,
    stills_asked: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<bool> {
    let url = args.server.as_deref().unwrap_or_default();
    let token = args.token.as_deref().unwrap_or_default();
    let mut client = Client::connect(url, token, options.clone()).await?;
    println!("joined as {} ({:?})", client.participant_id, client.state);
    client.wait_admitted(Duration::from_secs(24 * 3600)).await?;
    println!("admitted");
    let ff = ffmpeg_available();
    let mut labels = vec![TrackLabel::Stethoscope];
    let with_camera = ff && (args.camera.is_some() || args.test_pattern);
    let with_otoscope = ff && (args.otoscope.is_some() || args.test_pattern);
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
    let mut controls: HashMap<TrackLabel, Arc<VideoControl>> = HashMap::new();
    for t in &tracks {
        let device = match t.label {
            TrackLabel::Stethoscope => {
                stethoscope::stream(
                    t.clone(),
                    steth.clone(),
                    args.stethoscope_bitrate,
                    stop.clone(),
                )?;
                continue;
            }
            TrackLabel::Camera => args.camera.clone(),
            TrackLabel::Otoscope => args.otoscope.clone(),
            _ => continue,
        };
        let control = Arc::new(VideoControl::default());
        video::stream_video(
            t.clone(),
            device,
            &cart.latest_frame(t.label),
            stop.clone(),
            control.clone(),
        )?;
        controls.insert(t.label, control);
    }
    println!("publishing {labels:?}");
    let still_label = if with_otoscope {
        TrackLabel::Otoscope
    } else {
        TrackLabel::Camera
    };
    let over = loop {
        let left = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        if deadline.is_some() && left.is_zero() {
            break true;
        }
        let ev = tokio::select! {
            ev = client.next_event(left) => ev,
            Some(()) = stills_asked.recv() => {
                if let Err(e) = cart.take_still(still_label) {
                    println!("still not taken: {e:#}");
                }
                continue;
            }
        };
        match ev {
            Some(ClientEvent::Server(ServerMsg::DeviceControl { from, command })) => {
                println!("device control from {from}: {command:?}");
                let Some(control) = controls.get(&command.label()) else {
                    println!("  no such device on this cart");
                    continue;
                };
                match command {
                    DeviceCommand::Disable { .. } => control.paused.store(true, Ordering::Relaxed),
                    DeviceCommand::Enable { .. } => control.paused.store(false, Ordering::Relaxed),
                    DeviceCommand::Freeze { .. } => control.frozen.store(true, Ordering::Relaxed),
                    DeviceCommand::Unfreeze { .. } => {
                        control.frozen.store(false, Ordering::Relaxed)
                    }
                    DeviceCommand::Capture { label } => {
                        if let Err(e) = cart.take_still(label) {
                            println!("  still not taken: {e:#}");
                        }
                    }
                    DeviceCommand::Zoom { .. } => {
                        println!("  zoom: not supported by this cart's devices")
                    }
                }
            }
            Some(ClientEvent::Server(ServerMsg::ConsultationEnded { .. }))
            | Some(ClientEvent::Server(ServerMsg::Removed)) => break true,
            Some(ClientEvent::Closed) => break false,
            Some(_) | None => {}
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
    let steth = match (&args.stethoscope_alsa, &args.stethoscope_wav) {
        (Some(dev), _) => stethoscope::Source::Live {
            format: args.stethoscope_input_format.clone(),
            device: dev.clone(),
        },
        (None, Some(p)) => stethoscope::Source::Looped(Arc::new(stethoscope::read_wav(p)?)),
        (None, None) => stethoscope::Source::Looped(Arc::new(
            generate(&HeartSoundConfig::default(), 30.0).samples,
        )),
    };
    let trusted = match &args.trusted_cert {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("{}", p.display()))?),
        None => None,
    };
    let options = ClientOptions {
        trusted_cert_pem: trusted.clone(),
        // A media path silent this long is restarted (ICE restart) without leaving the room.
        ice_failed_after: Some(Duration::from_secs(6)),
        ..ClientOptions::default()
    };
    let frames_dir = std::env::temp_dir().join(format!("consult-cart-{}", std::process::id()));
    std::fs::create_dir_all(&frames_dir)?;
    let mut device_names = HashMap::new();
    for (label, dev) in [
        (TrackLabel::Camera, &args.camera),
        (TrackLabel::Otoscope, &args.otoscope),
    ] {
        let name = dev
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "test pattern".into());
        device_names.insert(label, name);
    }
    let cart = Cart {
        queue: StillQueue::open(&args.stills_dir)?,
        wake_uploader: Arc::new(Notify::new()),
        frames_dir,
        device_names,
    };
    // Stills go up in the background, across rejoins, until the queue is empty.
    let uploader = StillUploader::new(
        cart.queue.clone(),
        &consult_client::tls::http_base(&url)?,
        &token,
        trusted.as_deref(),
    )?
    .spawn(cart.wake_uploader.clone());
    // `still` typed on the cart's terminal takes one.
    let (ask_tx, mut stills_asked) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if matches!(line.trim(), "still" | "s") && ask_tx.send(()).is_err() {
                break;
            }
        }
    });
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    // A dropped link: rejoin (the server keeps the admission for a grace period).
    let mut backoff = Duration::from_millis(500);
    let result = loop {
        match session(&args, &cart, &options, &steth, deadline, &mut stills_asked).await {
            Ok(true) => break Ok(()),
            Ok(false) => println!("link dropped: rejoining"),
            Err(e) => println!("session failed: {e:#}; retrying in {backoff:?}"),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break Ok(());
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    };
    // Give queued stills up to 30 s to go up before leaving; what is left stays on disk for
    // the next run.
    let drain_until = Instant::now() + Duration::from_secs(30);
    let mut left = cart.queue.pending().map(|p| p.len()).unwrap_or(0);
    while left > 0 && Instant::now() < drain_until {
        cart.wake_uploader.notify_one();
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = cart.queue.pending().map(|p| p.len()).unwrap_or(0);
    }
    if left > 0 {
        println!(
            "{left} still(s) still queued in {}",
            args.stills_dir.display()
        );
    }
    uploader.abort();
    let _ = std::fs::remove_dir_all(&cart.frames_dir);
    result
}
