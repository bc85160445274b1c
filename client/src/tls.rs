//! TLS trust for the client: the public web roots, plus an extra certificate (PEM) such as the
//! server's self-signed development certificate (`data/dev-cert.pem`).

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;

/// Make ring rustls's process-wide default. Several crates of the tree enable rustls with
/// different providers (webrtc-rs's DTLS asks for ring, the TLS WebSocket for aws-lc-rs); with
/// both compiled in and no default installed, rustls panics the first time a crate relies on
/// the default (webrtc-rs's DTLS certificate verifier does).
pub fn install_default_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: a default is already installed, which is all we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A rustls client configuration trusting the web roots and the certificates of `extra_ca_pem`.
pub fn client_config(extra_ca_pem: Option<&[u8]>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    install_default_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .context("reading the trusted certificate PEM")?;
        if certs.is_empty() {
            bail!("no certificate in the trusted certificate PEM");
        }
        for c in certs {
            roots.add(c).context("adding the trusted certificate")?;
        }
    }
    // Both ring and aws-lc-rs are compiled into the workspace: name the provider explicitly
    // rather than relying on a process-wide default.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An HTTP client for the server's API: the web roots plus the certificates of
/// `trusted_cert_pem`, 5 s to connect, `timeout` per request.
pub fn http_client(
    trusted_cert_pem: Option<&[u8]>,
    timeout: std::time::Duration,
) -> anyhow::Result<reqwest::Client> {
    install_default_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(timeout);
    if let Some(pem) = trusted_cert_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

/// The HTTP base URL of the server a signaling WebSocket URL points to:
/// `wss://host:port/ws` → `https://host:port`.
pub fn http_base(ws_url: &str) -> anyhow::Result<String> {
    let (scheme, rest) = if let Some(r) = ws_url.strip_prefix("wss://") {
        ("https://", r)
    } else if let Some(r) = ws_url.strip_prefix("ws://") {
        ("http://", r)
    } else {
        bail!("not a ws:// or wss:// URL: {ws_url}");
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        bail!("no host in {ws_url}");
    }
    Ok(format!("{scheme}{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_base_from_ws_url() {
        assert_eq!(
            http_base("wss://consult.example.org/ws").unwrap(),
            "https://consult.example.org"
        );
        assert_eq!(
            http_base("ws://127.0.0.1:8443/ws").unwrap(),
            "http://127.0.0.1:8443"
        );
        assert!(http_base("http://x/ws").is_err());
        assert!(http_base("ws:///ws").is_err());
    }

    #[test]
    fn refuses_a_pem_without_certificate() {
        assert!(client_config(Some(b"not a pem")).is_err());
        assert!(client_config(None).is_ok());
    }
}
