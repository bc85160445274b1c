//! A server on loopback for the client's integration tests.
#![allow(dead_code)]

use consult_client::{Client, ClientEvent, ClientOptions};
use consult_protocol::{ClientMsg, CompanionKind, Role, ServerMsg};
use consult_signaling::token::{unix_now, Grant};
use consult_signaling::{Config, RunningServer};
use std::path::PathBuf;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(10);

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

pub fn temp_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("consult-{what}-{:016x}", rand::random::<u64>()))
}

/// A server on loopback; `tls`: HTTPS with its self-signed development certificate.
pub async fn start_server(tls: bool) -> TestServer {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let dir = temp_dir("client-test");
    let mut config = Config::for_tests(dir.clone());
    config.insecure_http = !tls;
    let server = consult_signaling::start(config)
        .await
        .expect("server starts");
    TestServer { server, dir }
}

impl TestServer {
    pub fn ws_url(&self) -> String {
        let scheme = if self.server.base_url.starts_with("https") {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}/ws", self.server.http_addr)
    }

    pub fn http_base(&self) -> String {
        consult_client::tls::http_base(&self.ws_url()).unwrap()
    }

    pub fn token(&self, room: &str, identity: &str, role: Role) -> String {
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
                unix_now(),
                3600,
            )
            .0
    }

    pub async fn join(&self, room: &str, identity: &str, role: Role) -> Client {
        Client::connect(
            &self.ws_url(),
            &self.token(room, identity, role),
            ClientOptions::default(),
        )
        .await
        .expect("join")
    }

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
}

/// The physician admits whoever is first in the waiting room; returns their participant id.
pub async fn admit_first_waiting(doc: &mut Client) -> (String, String) {
    let waiting = doc
        .wait_for(WAIT, |ev| match ev {
            ClientEvent::Server(ServerMsg::WaitingRoom { waiting }) if !waiting.is_empty() => {
                Some(waiting)
            }
            _ => None,
        })
        .await
        .expect("someone waits");
    doc.send(ClientMsg::Admit {
        participant_id: waiting[0].participant_id.clone(),
    })
    .unwrap();
    (
        waiting[0].participant_id.clone(),
        waiting[0].identity.clone(),
    )
}

/// Wait until `n` remote tracks arrived at `client`, returning them.
pub async fn take_tracks(client: &mut Client, n: usize) -> Vec<consult_client::RemoteTrack> {
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
