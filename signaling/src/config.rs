//! Server configuration: embedded defaults, an optional TOML file, then flags and environment.

use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// The development API secret. Fine on loopback; the server refuses it on a public address.
pub const DEV_API_SECRET: &str = "dev-secret-change-me";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTPS (and WebSocket) listen address.
    pub http_bind: SocketAddr,
    /// The media plane's one UDP port.
    pub udp_bind: SocketAddr,
    /// Address advertised to clients for media when `udp_bind` is `0.0.0.0` or behind NAT.
    pub public_ip: Option<IpAddr>,
    /// Base URL put in join links (default: derived from `http_bind`).
    pub public_url: Option<String>,
    pub api_key: String,
    pub api_secret: String,
    /// PEM certificate chain and key for HTTPS. Without them a self-signed development
    /// certificate is generated in `data_dir` on first start.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP: allowed only when `http_bind` is a loopback address.
    pub insecure_http: bool,
    /// Where the audit trail and generated certificates live.
    pub data_dir: PathBuf,
    /// Default lifetime of minted tokens.
    pub token_ttl_secs: u64,
    /// A token issued longer ago than this is refused whatever its `exp`; the API mints none
    /// longer.
    pub max_token_lifetime_secs: u64,
    /// Key encrypting recordings at rest: 64 hex digits (XChaCha20-Poly1305). Without it a
    /// key is generated once in `data_dir/recording.key`; keep it apart from the recordings
    /// in production.
    pub recording_key: Option<String>,
    /// Estimate each subscriber's downlink (str0m's TWCC send-side estimator and pacer) and
    /// allocate it by clinical priority: the stethoscope first, then speech, then video;
    /// video paused below what the link carries. On by default; a client whose `join` says
    /// its TWCC feedback omits probes (webrtc-rs 0.17: the cart and the load tester unless
    /// told otherwise) gets every track at its best layer.
    pub downlink_estimation: bool,
    /// Media-plane threads, each owning whole rooms (0: one per core).
    pub sfu_threads: usize,
    /// Open HTTP(S) and WebSocket connections one remote address may hold (more are closed
    /// at once; several carts behind one EHPAD's address use a few each).
    pub max_connections_per_address: usize,
    /// A connection that sends nothing for this long is closed (WebSockets are pinged).
    pub idle_timeout_secs: u64,
    /// A request's headers must arrive within this.
    pub header_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_bind: SocketAddr::from(([127, 0, 0, 1], 8443)),
            udp_bind: SocketAddr::from(([127, 0, 0, 1], 50000)),
            public_ip: None,
            public_url: None,
            api_key: "devkey".into(),
            api_secret: DEV_API_SECRET.into(),
            tls_cert: None,
            tls_key: None,
            insecure_http: false,
            data_dir: PathBuf::from("data"),
            token_ttl_secs: 4 * 3600,
            max_token_lifetime_secs: crate::token::DEFAULT_MAX_LIFETIME_SECS,
            recording_key: None,
            downlink_estimation: true,
            sfu_threads: 0,
            max_connections_per_address: crate::conn_guard::ConnLimits::default().per_address,
            idle_timeout_secs: crate::conn_guard::ConnLimits::default().idle_read.as_secs(),
            header_timeout_secs: crate::conn_guard::ConnLimits::default()
                .header_read
                .as_secs(),
        }
    }
}

impl Config {
    /// The recording key: configured, else read (or created once) in the data directory.
    pub fn recording_key(&self) -> anyhow::Result<consult_recorder::sealed::Key> {
        use consult_recorder::sealed::key_from_hex;
        if let Some(hex) = &self.recording_key {
            return key_from_hex(hex)
                .ok_or_else(|| anyhow::anyhow!("recording_key must be 64 hex digits"));
        }
        let path = self.data_dir.join("recording.key");
        if let Ok(text) = std::fs::read_to_string(&path) {
            return key_from_hex(&text)
                .ok_or_else(|| anyhow::anyhow!("{}: not 64 hex digits", path.display()));
        }
        std::fs::create_dir_all(&self.data_dir)?;
        let key: [u8; 32] = rand::random();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode_owner_only()
                .open(&path)?;
            f.write_all(hex.as_bytes())?;
        }
        tracing::warn!(path = %path.display(), "generated a recording key");
        Ok(key)
    }

    /// A configuration for tests: loopback, ephemeral ports, plain HTTP, its own data dir.
    pub fn for_tests(data_dir: PathBuf) -> Config {
        Config {
            http_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            udp_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            insecure_http: true,
            data_dir,
            ..Config::default()
        }
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// Refuse configurations that would expose an insecure server.
    pub fn validate(&self) -> anyhow::Result<()> {
        let loopback = self.http_bind.ip().is_loopback();
        if self.insecure_http && !loopback {
            anyhow::bail!("plain HTTP is only allowed on a loopback address");
        }
        if self.api_secret == DEV_API_SECRET && !loopback {
            anyhow::bail!("set a real api_secret before binding a non-loopback address");
        }
        if self.api_secret.len() < 16 {
            anyhow::bail!("api_secret must be at least 16 characters");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            anyhow::bail!("tls_cert and tls_key go together");
        }
        if self.udp_bind.ip().is_unspecified() && self.public_ip.is_none() {
            anyhow::bail!("udp_bind is unspecified: set public_ip to the address clients reach");
        }
        Ok(())
    }

    pub fn conn_limits(&self) -> crate::conn_guard::ConnLimits {
        crate::conn_guard::ConnLimits {
            per_address: self.max_connections_per_address.max(1),
            idle_read: std::time::Duration::from_secs(self.idle_timeout_secs.max(1)),
            header_read: std::time::Duration::from_secs(self.header_timeout_secs.max(1)),
        }
    }

    pub fn audit_db(&self) -> PathBuf {
        self.data_dir.join("audit.db")
    }
}

/// Owner-only permissions for key files (on Unix).
trait OwnerOnly {
    fn mode_owner_only(&mut self) -> &mut Self;
}

impl OwnerOnly for std::fs::OpenOptions {
    fn mode_owner_only(&mut self) -> &mut Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            self.mode(0o600);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c = Config::from_toml("api_key = \"k\"\ntoken_ttl_secs = 60\n").unwrap();
        assert_eq!(c.api_key, "k");
        assert_eq!(c.token_ttl_secs, 60);
        assert_eq!(c.http_bind, Config::default().http_bind);
        assert!(Config::from_toml("nope = 1").is_err());
    }

    #[test]
    fn insecure_settings_are_refused_off_loopback() {
        let mut c = Config::default();
        c.validate().unwrap();
        c.http_bind = "0.0.0.0:8443".parse().unwrap();
        assert!(c.validate().is_err(), "dev secret on a public address");
        c.api_secret = "a-long-production-secret".into();
        c.validate().unwrap();
        c.insecure_http = true;
        assert!(c.validate().is_err(), "plain HTTP on a public address");
    }
}
