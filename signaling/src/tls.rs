//! HTTPS certificates: from configuration, or a self-signed development certificate.

use crate::config::Config;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use tracing::{info, warn};

/// PEM certificate chain and private key.
pub struct CertPair {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Load the configured certificate, or create (once) and reuse a self-signed one in `data_dir`.
pub fn load_or_generate(config: &Config) -> anyhow::Result<CertPair> {
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        return Ok(CertPair {
            cert_pem: std::fs::read(cert)?,
            key_pem: std::fs::read(key)?,
        });
    }
    let cert_path: PathBuf = config.data_dir.join("dev-cert.pem");
    let key_path: PathBuf = config.data_dir.join("dev-key.pem");
    if !cert_path.exists() || !key_path.exists() {
        std::fs::create_dir_all(&config.data_dir)?;
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.push(config.http_bind.ip().to_string());
        if let Some(ip) = config.public_ip {
            names.push(ip.to_string());
        }
        names.dedup();
        let generated = rcgen::generate_simple_self_signed(names)?;
        std::fs::write(&cert_path, generated.cert.pem())?;
        std::fs::write(&key_path, generated.signing_key.serialize_pem())?;
        warn!(path = %cert_path.display(), "generated a self-signed development certificate");
    }
    let cert_pem = std::fs::read(&cert_path)?;
    let key_pem = std::fs::read(&key_path)?;
    if let Some(fp) = fingerprint(&cert_pem) {
        info!("development certificate SHA-256 fingerprint: {fp}");
        println!("HTTPS certificate (self-signed) SHA-256 fingerprint: {fp}");
    }
    Ok(CertPair { cert_pem, key_pem })
}

/// SHA-256 fingerprint of the first certificate of a PEM chain, as colon-separated hex.
pub fn fingerprint(cert_pem: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(cert_pem).ok()?;
    let b64: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let digest = Sha256::digest(der);
    Some(
        digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}
