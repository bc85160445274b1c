//! Starting the whole engine in one process: SFU, hub, HTTP(S) + WebSocket.

use crate::audit::AuditLog;
use crate::config::Config;
use crate::conn_guard::GuardAcceptor;
use crate::hub::Hub;
use crate::rate_limit::Limiter;
use crate::token::TokenService;
use axum_server::accept::NoDelayAcceptor;
use consult_sfu::{SfuConfig, SfuHandle};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// What every request handler and session shares.
pub struct AppState {
    pub config: Config,
    pub tokens: TokenService,
    pub audit: AuditLog,
    pub hub: Hub,
    pub stills: crate::stills::StillStore,
    pub metrics: crate::metrics::Metrics,
    /// Base URL of the web client, for join links.
    pub base_url: String,
    pub limits: std::sync::Mutex<RateLimits>,
    pub revocations: std::sync::RwLock<crate::revocation::Revocations>,
}

/// The server's rate limits (see `rate_limit`).
pub struct RateLimits {
    pub auth_by_address: Limiter<IpAddr>,
    pub auth_by_key: Limiter<String>,
    /// Joins per (room, identity).
    pub joins: Limiter<(String, String)>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            auth_by_address: Limiter::new(crate::rate_limit::AUTH_FAILURES),
            auth_by_key: Limiter::new(crate::rate_limit::AUTH_FAILURES),
            joins: Limiter::new(crate::rate_limit::JOINS),
        }
    }
}

impl AppState {
    /// Whether the token with these claims was revoked.
    pub fn is_revoked(&self, claims: &consult_protocol::TokenClaims) -> bool {
        self.revocations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_revoked(claims)
    }

    /// Revoke, and end the live sessions holding a token so revoked.
    pub fn revoke(&self, r: crate::revocation::Revoke) {
        self.revocations
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(r);
        self.hub
            .close_sessions_where(|claims| self.is_revoked(claims));
    }

    /// Run `f` on the rate limits (never held across an await).
    pub fn with_limits<T>(&self, f: impl FnOnce(&mut RateLimits) -> T) -> T {
        let mut l = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut l)
    }

    /// Audit a burst of refusals, once, with its count.
    pub fn audit_burst(&self, room: &str, what: &str, key: &str, refused: u32) {
        self.audit.record(
            room,
            None,
            "rate_limited",
            None,
            serde_json::json!({"what": what, "key": key, "refused": refused}),
        );
    }

    /// Audit the bursts of refusals that are over by `now` and forget quiet keys (called every
    /// minute by the server, and by tests).
    pub fn report_rate_limits(&self, now: std::time::Instant) {
        let (by_address, by_key, joins) = self.with_limits(|l| {
            (
                l.auth_by_address.sweep(now),
                l.auth_by_key.sweep(now),
                l.joins.sweep(now),
            )
        });
        for b in by_address {
            self.audit_burst(
                "",
                "auth_failures_by_address",
                &b.key.to_string(),
                b.refused,
            );
        }
        for b in by_key {
            self.audit_burst("", "auth_failures_by_key", &b.key, b.refused);
        }
        for b in joins {
            self.audit_burst(&b.key.0, "joins", &b.key.1, b.refused);
        }
    }
}

/// A started server. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub http_addr: SocketAddr,
    pub udp_addr: SocketAddr,
    pub base_url: String,
    pub state: Arc<AppState>,
    handle: axum_server::Handle<SocketAddr>,
}

impl RunningServer {
    pub fn sfu(&self) -> &SfuHandle {
        self.state.hub.sfu()
    }

    pub fn shutdown(&self) {
        self.handle.shutdown();
    }

    /// Stop as a deploy or a restart wants it (SIGTERM, SIGINT), within about `limit`: no new
    /// joins, every participant told (`server_shutdown`: join again after `RETRY_AFTER`) and
    /// disconnected, recordings stopped and their files closed, the audit trail written out,
    /// then the listener closed. What does not finish in time is cut (and logged).
    pub async fn shutdown_gracefully(&self, limit: Duration) -> ShutdownReport {
        let started = tokio::time::Instant::now();
        let deadline = started + limit;
        let rooms = self.state.hub.shutdown(RETRY_AFTER.as_millis() as u32);
        // The sessions send what they were told and close.
        while self.state.hub.sessions() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let sessions_left = self.state.hub.sessions();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let recordings_closed = self.state.hub.recordings.wait_closed(left).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let audit_flushed = tokio::time::timeout(left, self.state.audit.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        self.handle
            .graceful_shutdown(Some(Duration::from_millis(500)));
        let report = ShutdownReport {
            rooms,
            sessions_left,
            recordings_closed,
            audit_flushed,
            took: started.elapsed(),
        };
        if report.sessions_left > 0 || !recordings_closed || !audit_flushed {
            warn!(?report, "shutdown cut short");
        } else {
            info!(?report, "shut down");
        }
        report
    }
}

/// How far back a restart looks in the trail for who was admitted (every end is read).
const RESTORE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// When clients are told to join again after a shutdown (a restart takes a few seconds).
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What a graceful shutdown got done.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    pub rooms: usize,
    /// Sessions still open when the time was up.
    pub sessions_left: usize,
    pub recordings_closed: bool,
    pub audit_flushed: bool,
    pub took: Duration,
}

pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    config.validate()?;
    // rustls needs one process-wide crypto provider; several crates in the tree enable one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let sfu = consult_sfu::start(SfuConfig {
        bind: config.udp_bind,
        public_addr: config.public_ip.map(|ip| SocketAddr::new(ip, 0)),
        downlink_estimation: config.downlink_estimation,
        threads: Some(config.sfu_threads).filter(|n| *n > 0),
    })
    .await?;
    // The trail is the source of truth a restart takes rooms back from (see `restore`).
    let since = crate::audit::now_ms() - RESTORE_WINDOW.as_millis() as i64;
    let restored_records = crate::audit::read_for_restore(&config.audit_db(), since)?;
    let restored = crate::restore::replay(&restored_records);
    let audit = AuditLog::open(&config.audit_db())?;
    let tls = if config.insecure_http {
        None
    } else {
        Some(crate::tls::load_or_generate(&config)?)
    };

    let handle = axum_server::Handle::new();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = std::net::TcpListener::bind(config.http_bind)?;
    listener.set_nonblocking(true)?;
    let http_addr = listener.local_addr()?;
    let base_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{http_addr}"))
        .trim_end_matches('/')
        .to_owned();
    let state = Arc::new(AppState {
        tokens: TokenService::new(&config.api_key, &config.api_secret)
            .with_max_lifetime(config.max_token_lifetime_secs),
        hub: Hub::new(
            sfu.clone(),
            audit.clone(),
            &config.data_dir,
            config.recording_key()?,
        ),
        audit,
        stills: crate::stills::StillStore::new(&config.data_dir),
        metrics: crate::metrics::Metrics::new(),
        base_url: base_url.clone(),
        config,
        limits: Default::default(),
        revocations: Default::default(),
    });
    {
        let mut revoked = state.revocations.write().unwrap_or_else(|p| p.into_inner());
        for r in restored_records
            .iter()
            .filter_map(crate::revocation::Revocations::from_record)
        {
            revoked.apply(r);
        }
    }
    let weak = Arc::downgrade(&state);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            let Some(state) = weak.upgrade() else { break };
            state.report_rate_limits(std::time::Instant::now());
        }
    });
    state.hub.restore(&restored);
    let ended = restored.values().filter(|r| r.ended).count();
    let admitted: usize = restored.values().map(|r| r.admitted.len()).sum();
    if !restored.is_empty() {
        info!(
            ended,
            admitted, "consultations taken back from the audit trail"
        );
    }
    let app =
        crate::http::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    // Signaling messages are small and latency-bound: no Nagle delay (it cost ~40 ms per round
    // trip against delayed ACKs). Connections are capped per address and cut when idle or
    // slow (see `conn_guard`).
    let limits = state.config.conn_limits();
    let guarded = GuardAcceptor::new(NoDelayAcceptor::new(), limits);
    match tls {
        Some(pair) => {
            let rustls =
                axum_server::tls_rustls::RustlsConfig::from_pem(pair.cert_pem, pair.key_pem)
                    .await?;
            let mut server = axum_server::from_tcp_rustls(listener, rustls)?
                .map(|tls| tls.handshake_timeout(limits.header_read).acceptor(guarded))
                .handle(handle.clone());
            server
                .http_builder()
                .http1()
                .header_read_timeout(limits.header_read);
            tokio::spawn(server.serve(app));
        }
        None => {
            let mut server = axum_server::from_tcp(listener)?
                .acceptor(guarded)
                .handle(handle.clone());
            server
                .http_builder()
                .http1()
                .header_read_timeout(limits.header_read);
            tokio::spawn(server.serve(app));
        }
    }
    info!(%http_addr, udp = %sfu.local_addr(), "consultation server started");
    Ok(RunningServer {
        http_addr,
        udp_addr: sfu.local_addr(),
        base_url,
        state,
        handle,
    })
}
