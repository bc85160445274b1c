//! The server's HTTP API as the load tester uses it: tokens, and `/metrics` counters.

use anyhow::{bail, Context};
use consult_protocol::{CompanionKind, Role, TokenRequest, TokenResponse};
use std::collections::HashMap;
use std::time::Duration;

pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
    secret: String,
}

impl Api {
    pub fn new(
        base: &str,
        key: &str,
        secret: &str,
        trusted_cert_pem: Option<&[u8]>,
    ) -> anyhow::Result<Api> {
        Ok(Api {
            http: consult_client::tls::http_client(trusted_cert_pem, Duration::from_secs(20))?,
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            secret: secret.to_owned(),
        })
    }

    pub async fn token(
        &self,
        room: &str,
        identity: &str,
        role: Role,
        ttl_secs: u64,
    ) -> anyhow::Result<String> {
        let req = TokenRequest {
            room: room.to_owned(),
            identity: identity.to_owned(),
            name: identity.to_owned(),
            role,
            companion_kind: (role == Role::Companion).then_some(CompanionKind::Nurse),
            ttl_secs: Some(ttl_secs),
        };
        let r = self
            .http
            .post(format!("{}/api/tokens", self.base))
            .basic_auth(&self.key, Some(&self.secret))
            .json(&req)
            .send()
            .await
            .context("POST /api/tokens")?;
        let status = r.status();
        if !status.is_success() {
            bail!(
                "POST /api/tokens: {status}: {}",
                r.text().await.unwrap_or_default()
            );
        }
        Ok(r.json::<TokenResponse>().await?.token)
    }

    /// The unlabelled samples of `/metrics` (counters and gauges), by name.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .basic_auth(&self.key, Some(&self.secret))
            .send()
            .await
            .context("GET /metrics")?;
        if !r.status().is_success() {
            bail!("GET /metrics: {}", r.status());
        }
        Ok(Metrics::parse(&r.text().await?))
    }
}

/// Prometheus text samples: name (with labels, as written) → value.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut m = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((name, value)) = line.rsplit_once(' ') {
                if let Ok(v) = value.parse::<f64>() {
                    m.insert(name.to_owned(), v);
                }
            }
        }
        Metrics(m)
    }

    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    /// `name` grew by this much from `before` to `self`.
    pub fn delta(&self, before: &Metrics, name: &str) -> f64 {
        self.get(name) - before.get(name)
    }

    /// A histogram's quantile from the growth of its cumulative buckets between two scrapes
    /// (the upper bound of the bucket the quantile falls in), in the histogram's unit.
    pub fn histogram_quantile(&self, before: &Metrics, name: &str, q: f64) -> Option<f64> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, v - before.get(k)))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        buckets
            .iter()
            .find(|(_, count)| *count >= q * total)
            .map(|(bound, _)| *bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_and_histogram_growth() {
        let before = Metrics::parse(
            "# HELP x y\nconsult_sfu_rtp_in_total 10\nd_bucket{le=\"0.0001\"} 5\nd_bucket{le=\"0.001\"} 5\nd_bucket{le=\"+Inf\"} 5\n",
        );
        let after = Metrics::parse(
            "consult_sfu_rtp_in_total 110\nd_bucket{le=\"0.0001\"} 85\nd_bucket{le=\"0.001\"} 104\nd_bucket{le=\"+Inf\"} 105\n",
        );
        assert_eq!(after.delta(&before, "consult_sfu_rtp_in_total"), 100.0);
        assert_eq!(after.histogram_quantile(&before, "d", 0.5), Some(0.0001));
        assert_eq!(after.histogram_quantile(&before, "d", 0.99), Some(0.001));
        assert_eq!(
            after.histogram_quantile(&before, "d", 1.0),
            Some(f64::INFINITY)
        );
        assert_eq!(before.histogram_quantile(&before, "d", 0.5), None);
    }
}
