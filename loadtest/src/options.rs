//! What a load test does: command-line options, and the participants and media they imply.

use clap::Parser;
use consult_protocol::{Role, TrackKind, TrackLabel};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Synthetic consultations against a running server: each room has one physician (who admits
/// the others), companions running a cart, and patients; every participant publishes
/// synthetic media at the configured rates and measures what it receives.
#[derive(Debug, Clone, Parser)]
#[command(name = "consult-loadtest", version)]
pub struct Options {
    /// The server's base URL (HTTP API and WebSocket).
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    pub url: String,
    #[arg(long, env = "CONSULT_API_KEY", default_value = "devkey")]
    pub api_key: String,
    #[arg(
        long,
        env = "CONSULT_API_SECRET",
        default_value = "dev-secret-change-me",
        hide_env_values = true
    )]
    pub api_secret: String,
    /// Extra certificate (PEM) to trust, e.g. the dev server's `data/dev-cert.pem`.
    #[arg(long)]
    pub trusted_cert: Option<PathBuf>,

    /// Consultation rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Companions (carts) per room.
    #[arg(long, default_value_t = 1)]
    pub companions: usize,
    /// Patients per room.
    #[arg(long, default_value_t = 1)]
    pub patients: usize,
    /// What the physician publishes: comma-separated labels, or `none`.
    #[arg(long, default_value = "microphone,camera", value_parser = parse_labels)]
    pub physician_tracks: Labels,
    /// What each companion's cart publishes.
    #[arg(long, default_value = "stethoscope,microphone,otoscope,camera", value_parser = parse_labels)]
    pub companion_tracks: Labels,
    /// What each patient publishes.
    #[arg(long, default_value = "microphone,camera", value_parser = parse_labels)]
    pub patient_tracks: Labels,
    /// Video labels published as three simulcast layers (q/h/f at 1/10, 1/3 and all of the
    /// label's rate), e.g. `camera`; `none` for plain tracks.
    #[arg(long, default_value = "none", value_parser = parse_labels)]
    pub simulcast: Labels,

    /// Speech (microphone) payload rate, kbit/s, in 20 ms packets.
    #[arg(long, default_value_t = 32)]
    pub microphone_kbps: u64,
    /// Stethoscope payload rate, kbit/s, in 20 ms packets (the cart's CBR profile is 64).
    #[arg(long, default_value_t = 64)]
    pub stethoscope_kbps: u64,
    #[arg(long, default_value_t = 600)]
    pub camera_kbps: u64,
    #[arg(long, default_value_t = 30)]
    pub camera_fps: u32,
    #[arg(long, default_value_t = 400)]
    pub otoscope_kbps: u64,
    #[arg(long, default_value_t = 15)]
    pub otoscope_fps: u32,
    #[arg(long, default_value_t = 800)]
    pub screen_kbps: u64,
    #[arg(long, default_value_t = 5)]
    pub screen_fps: u32,
    /// A keyframe at least this often, seconds (and on each request from the SFU).
    #[arg(long, default_value_t = 4.0)]
    pub keyframe_interval: f64,

    /// Seconds of media once every room has started.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Milliseconds between the start of one room and the next.
    #[arg(long, default_value_t = 200)]
    pub room_interval_ms: u64,
    /// Seconds after the last room started before latency and loss are counted.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// Put these participants behind an impaired link: physician, companion, patient or all.
    #[arg(long, value_parser = parse_role_filter)]
    pub impair: Option<RoleFilter>,
    /// The SFU's UDP address (impaired links relay to it).
    #[arg(long, default_value = "127.0.0.1:50000")]
    pub sfu_addr: SocketAddr,
    /// Impaired link: rate in kbit/s, each direction (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub impair_rate_kbps: u64,
    /// Impaired link: bottleneck queue, in milliseconds at that rate.
    #[arg(long, default_value_t = 200)]
    pub impair_queue_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub impair_delay_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub impair_jitter_ms: u64,
    /// Random loss, percent.
    #[arg(long, default_value_t = 0.0)]
    pub impair_loss_pct: f64,

    /// Have the SFU estimate the participants' downlinks (and allocate them by clinical
    /// priority) although webrtc-rs's TWCC feedback omits probe packets: for thin-link runs.
    #[arg(long)]
    pub downlink_estimation: bool,

    /// Run against Janus's VideoRoom plugin at this WebSocket URL (e.g. ws://127.0.0.1:8188)
    /// instead of our server, for a comparison on the same machine (see `janus.rs`).
    #[arg(long)]
    pub janus_ws: Option<String>,

    /// Server process to sample CPU and memory from (default: the process named `consult-server`).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A name for this run in the report.
    #[arg(long, default_value = "")]
    pub label: String,
    /// No progress lines on the terminal.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels(pub Vec<TrackLabel>);

fn parse_labels(s: &str) -> Result<Labels, String> {
    if s.trim() == "none" || s.trim().is_empty() {
        return Ok(Labels(Vec::new()));
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        let label = match part.trim() {
            "camera" => TrackLabel::Camera,
            "microphone" | "mic" => TrackLabel::Microphone,
            "stethoscope" => TrackLabel::Stethoscope,
            "otoscope" => TrackLabel::Otoscope,
            "screen" => TrackLabel::Screen,
            other => return Err(format!("unknown track label {other:?}")),
        };
        if out.contains(&label) {
            return Err(format!("{} listed twice", label.as_str()));
        }
        out.push(label);
    }
    Ok(Labels(out))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleFilter {
    One(Role),
    All,
}

impl RoleFilter {
    pub fn matches(self, role: Role) -> bool {
        match self {
            RoleFilter::All => true,
            RoleFilter::One(r) => r == role,
        }
    }
}

fn parse_role_filter(s: &str) -> Result<RoleFilter, String> {
    Ok(match s {
        "all" => RoleFilter::All,
        "physician" => RoleFilter::One(Role::Physician),
        "companion" => RoleFilter::One(Role::Companion),
        "patient" => RoleFilter::One(Role::Patient),
        other => return Err(format!("not a role: {other:?}")),
    })
}

/// How one published track is generated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MediaSpec {
    /// Fixed-size packets every 20 ms.
    Audio {
        payload_bytes: usize,
    },
    Video {
        bitrate_bps: u64,
        fps: u32,
    },
}

/// Audio packets every 20 ms, as Opus.
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);

impl Options {
    pub fn tracks_of(&self, role: Role) -> &[TrackLabel] {
        match role {
            Role::Physician => &self.physician_tracks.0,
            Role::Companion => &self.companion_tracks.0,
            Role::Patient => &self.patient_tracks.0,
        }
    }

    pub fn media(&self, label: TrackLabel) -> MediaSpec {
        let audio = |kbps: u64| MediaSpec::Audio {
            payload_bytes: (kbps * 1000 / 8 / 50).max(40) as usize,
        };
        let video = |kbps: u64, fps: u32| MediaSpec::Video {
            bitrate_bps: kbps * 1000,
            fps: fps.max(1),
        };
        match label {
            TrackLabel::Microphone => audio(self.microphone_kbps),
            TrackLabel::Stethoscope => audio(self.stethoscope_kbps),
            TrackLabel::Camera => video(self.camera_kbps, self.camera_fps),
            TrackLabel::Otoscope => video(self.otoscope_kbps, self.otoscope_fps),
            TrackLabel::Screen => video(self.screen_kbps, self.screen_fps),
        }
    }

    /// The participants of one room in join order: the physician first (it admits the
    /// others), then the carts, then the patients.
    pub fn room_roster(&self) -> Vec<Role> {
        let mut r = vec![Role::Physician];
        r.extend(std::iter::repeat_n(Role::Companion, self.companions));
        r.extend(std::iter::repeat_n(Role::Patient, self.patients));
        r
    }

    /// Streams the SFU forwards in one room: each published track to every other participant.
    pub fn forwarded_streams_per_room(&self) -> usize {
        let roster = self.room_roster();
        let n = roster.len();
        roster
            .iter()
            .map(|r| self.tracks_of(*r).len() * (n - 1))
            .sum()
    }

    pub fn ws_url(&self) -> String {
        let base = self.url.trim_end_matches('/');
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_owned()
        };
        format!("{ws}/ws")
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err("--url must start with http:// or https://".into());
        }
        if self.rooms == 0 {
            return Err("--rooms must be at least 1".into());
        }
        if !(self.duration > 0.0 && self.duration <= 3600.0) {
            return Err("--duration must be within (0, 3600] seconds".into());
        }
        if self.warmup < 0.0 || self.warmup >= self.duration {
            return Err("--warmup must be under --duration".into());
        }
        if !(0.0..=100.0).contains(&self.impair_loss_pct) {
            return Err("--impair-loss-pct must be within 0..100".into());
        }
        if self.keyframe_interval <= 0.0 {
            return Err("--keyframe-interval must be positive".into());
        }
        if let Some(l) = self
            .simulcast
            .0
            .iter()
            .find(|l| l.kind() != TrackKind::Video)
        {
            return Err(format!("--simulcast: {l} is not a video label"));
        }
        Ok(())
    }
}

/// The kind of media a label carries (for tables).
pub fn kind_name(label: TrackLabel) -> &'static str {
    match label.kind() {
        TrackKind::Audio => "audio",
        TrackKind::Video => "video",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_make_a_three_party_consultation() {
        let o = Options::parse_from(["consult-loadtest"]);
        assert_eq!(
            o.room_roster(),
            vec![Role::Physician, Role::Companion, Role::Patient]
        );
        // physician 2 tracks, cart 4, patient 2; each to the 2 others.
        assert_eq!(o.forwarded_streams_per_room(), 16);
        assert_eq!(o.ws_url(), "wss://127.0.0.1:8443/ws");
        assert_eq!(
            o.media(TrackLabel::Stethoscope),
            MediaSpec::Audio { payload_bytes: 160 }
        );
        assert!(o.validate().is_ok());
    }

    #[test]
    fn fan_out_layout_and_bad_values() {
        let o = Options::parse_from([
            "x",
            "--url",
            "http://127.0.0.1:9000/",
            "--patients",
            "9",
            "--physician-tracks",
            "none",
            "--patient-tracks",
            "none",
            "--companion-tracks",
            "stethoscope,camera",
            "--impair",
            "patient",
        ]);
        assert_eq!(o.forwarded_streams_per_room(), 2 * 10);
        assert_eq!(o.ws_url(), "ws://127.0.0.1:9000/ws");
        assert!(o.impair.unwrap().matches(Role::Patient));
        assert!(!o.impair.unwrap().matches(Role::Physician));
        assert!(Options::try_parse_from(["x", "--patient-tracks", "camera,camera"]).is_err());
        assert!(Options::try_parse_from(["x", "--companion-tracks", "xray"]).is_err());
        assert!(Options::try_parse_from(["x", "--impair", "nurse"]).is_err());
        let o = Options::parse_from(["x", "--duration", "0"]);
        assert!(o.validate().is_err());
        let o = Options::parse_from(["x", "--url", "ftp://x"]);
        assert!(o.validate().is_err());
    }
}
