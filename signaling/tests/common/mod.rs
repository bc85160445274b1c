//! Shared helpers of the integration tests: a server on loopback, tokens, media checks.
#![allow(dead_code)]

use consult_client::synthetic::check_payload;
use consult_client::{Client, ClientEvent, ClientOptions, RemoteTrack};
use consult_protocol::{CompanionKind, Role, TrackKind};
use consult_signaling::token::{unix_now, Grant};
use consult_signaling::{Config, RunningServer};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct TestServer {
    pub server: RunningServer,
    pub dir: PathBuf,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub async fn start_server() -> TestServer {
    start_server_with(|_| {}).await
}

/// A test server with some of its configuration changed.
pub async fn start_server_with(change: impl FnOnce(&mut Config)) -> TestServer {
    init_tracing();
    let dir = std::env::temp_dir().join(format!("consult-test-{:016x}", rand::random::<u64>()));
    let mut config = Config::for_tests(dir.clone());
    change(&mut config);
    let server = consult_signaling::start(config)
        .await
        .expect("server starts");
    TestServer { server, dir }
}

impl TestServer {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.server.http_addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.http_addr)
    }

    pub fn token(&self, room: &str, identity: &str, role: Role) -> String {
        self.token_at(room, identity, role, unix_now(), 3600)
    }

    pub fn token_at(&self, room: &str, identity: &str, role: Role, iat: u64, ttl: u64) -> String {
        self.server
            .state
            .tokens
            .mint(
                &Grant {
                    room,
                    identity,
                    name: identity,
                    role,
                    companion_kind: (role == Role::Companion).then_some(CompanionKind::Nurse),
                },
                iat,
                ttl,
            )
            .0
    }

    pub async fn join(&self, room: &str, identity: &str, role: Role) -> Client {
        self.join_with(room, identity, role, ClientOptions::default())
            .await
    }

    pub async fn join_with(
        &self,
        room: &str,
        identity: &str,
        role: Role,
        options: ClientOptions,
    ) -> Client {
        Client::connect(&self.ws_url(), &self.token(room, identity, role), options)
            .await
            .expect("join")
    }
}

pub const WAIT: Duration = Duration::from_secs(10);

/// What one receiver saw on one remote track.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub counters: Vec<u32>,
    pub tags: Vec<u32>,
    pub corrupt: usize,
    /// RTP sequence numbers as delivered to the application.
    pub seqs: Vec<u16>,
}

impl Received {
    /// Distinct counters received at or after the first one, against `last_sent`.
    pub fn coverage(&self, last_sent: u32) -> (usize, usize) {
        let Some(first) = self.counters.iter().min().copied() else {
            return (0, 0);
        };
        let mut seen: Vec<u32> = self.counters.clone();
        seen.sort_unstable();
        seen.dedup();
        (seen.len(), (last_sent - first + 1) as usize)
    }
}

/// Read a remote track until it closes, collecting what arrives.
pub fn collect(track: RemoteTrack, kind: TrackKind) -> Arc<Mutex<Received>> {
    let out = Arc::new(Mutex::new(Received::default()));
    let o = out.clone();
    tokio::spawn(async move {
        while let Ok((pkt, _)) = track.track.read_rtp().await {
            let mut r = o.lock().unwrap();
            r.seqs.push(pkt.header.sequence_number);
            match check_payload(kind, &pkt.payload) {
                Some(info) => {
                    r.counters.push(info.counter);
                    r.tags.push(info.tag);
                }
                None => r.corrupt += 1,
            }
        }
    });
    out
}

/// Wait until `n` remote tracks arrived at `client`, returning them.
pub async fn take_tracks(client: &mut Client, n: usize) -> Vec<RemoteTrack> {
    let mut tracks = Vec::new();
    while tracks.len() < n {
        let t = client
            .wait_for(WAIT, |ev| match ev {
                ClientEvent::Track(t) => Some(t),
                _ => None,
            })
            .await
            .unwrap_or_else(|e| panic!("expected {n} tracks, got {}: {e}", tracks.len()));
        tracks.push(t);
    }
    tracks
}

/// Tag of a synthetic stream: which sender, which label.
pub fn tag(sender: u32, label: consult_protocol::TrackLabel) -> u32 {
    sender * 16 + label as u32
}

impl TestServer {
    /// `Authorization` header value with the API key and secret.
    pub fn api_auth(&self) -> String {
        use base64::Engine as _;
        let c = &self.server.state.config;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", c.api_key, c.api_secret))
        )
    }

    /// GET `path` with the API key; the status and body.
    pub async fn api_get(&self, path: &str) -> (u16, String) {
        let r = reqwest::Client::new()
            .get(self.http_url(path))
            .header("authorization", self.api_auth())
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.text().await.expect("body"))
    }
}

/// The value of an unlabelled (or first matching) sample of `name` in Prometheus text.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with([' ', '{'])
                && (labels.is_empty() || l.contains(labels))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The real `consult-server` binary on loopback (plain HTTP, ephemeral ports, data in `dir`)
/// with `args`; killed when dropped (a failed assertion must not leave it running: it would
/// hold the test runner's output open).
pub struct BinaryServer {
    pub child: std::process::Child,
    pub ws_url: String,
    /// Kept open: the server prints to it until it exits.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_binary(dir: &std::path::Path, args: &[&str]) -> BinaryServer {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_consult-server"))
        .args(["--insecure-http", "--http-bind", "127.0.0.1:0"])
        .args(["--udp-bind", "127.0.0.1:0"])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("server starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    while !line.starts_with("Consultation server: ") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "server exited");
    }
    let base = line["Consultation server: ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    BinaryServer {
        child,
        ws_url: format!("{}/ws", base.replacen("http", "ws", 1)),
        _stdout: stdout,
    }
}
