//! Technical incidents of a consultation, for the physician's report: a participant's media
//! path lost and regained, ICE restarts, signaling drops and rejoins.
//!
//! Each incident is an audit record with action `incident` and `detail.kind`; the tracker
//! here turns one session's media events into incidents (a reconnection is reported with
//! how long the media was lost).

use consult_protocol::PeerTarget;
use serde_json::{json, Value};
use std::time::Instant;

/// Incident kinds as stored in `detail.kind`.
pub const MEDIA_LOST: &str = "media_lost";
pub const MEDIA_RESTORED: &str = "media_restored";
pub const ICE_RESTART: &str = "ice_restart";
/// Every video track the participant receives paused for lack of bandwidth (`phase`
/// `start`/`end`).
pub const AUDIO_ONLY: &str = "audio_only";
/// The participant's downlink estimate under the rate for video (`phase` `start`/`end`).
pub const LOW_ESTIMATE: &str = "low_estimate";

/// One session's media connectivity, turned into incidents.
#[derive(Debug, Default)]
pub struct MediaIncidents {
    lost_publisher: Option<Instant>,
    lost_subscriber: Option<Instant>,
    audio_only_since: Option<Instant>,
    low_since: Option<Instant>,
}

/// Start or end of a period (audio-only, low estimate): `None` when nothing changed.
fn period(
    slot: &mut Option<Instant>,
    on: bool,
    now: Instant,
    kind: &str,
    kbps: u64,
) -> Option<Value> {
    match (slot.is_some(), on) {
        (false, true) => {
            *slot = Some(now);
            Some(json!({"kind": kind, "phase": "start", "estimate_kbps": kbps}))
        }
        (true, false) => {
            let since = slot.take()?;
            let ms = now.saturating_duration_since(since).as_millis() as u64;
            Some(json!({"kind": kind, "phase": "end", "estimate_kbps": kbps, "duration_ms": ms}))
        }
        _ => None,
    }
}

fn connection(target: PeerTarget) -> &'static str {
    match target {
        PeerTarget::Publisher => "publisher",
        PeerTarget::Subscriber => "subscriber",
    }
}

/// The detail of an ICE restart of one connection.
pub fn ice_restart(target: PeerTarget) -> Value {
    json!({"kind": ICE_RESTART, "connection": connection(target)})
}

impl MediaIncidents {
    /// The downlink's mode changed: the incidents it starts or ends.
    pub fn bandwidth(
        &mut self,
        now: Instant,
        audio_only: bool,
        low: bool,
        estimate_bps: u64,
    ) -> Vec<Value> {
        let kbps = estimate_bps / 1000;
        [
            period(&mut self.low_since, low, now, LOW_ESTIMATE, kbps),
            period(
                &mut self.audio_only_since,
                audio_only,
                now,
                AUDIO_ONLY,
                kbps,
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn slot(&mut self, target: PeerTarget) -> &mut Option<Instant> {
        match target {
            PeerTarget::Publisher => &mut self.lost_publisher,
            PeerTarget::Subscriber => &mut self.lost_subscriber,
        }
    }

    /// The connection lost ICE connectivity: the incident's detail (once per loss).
    pub fn lost(&mut self, now: Instant, target: PeerTarget) -> Option<Value> {
        let slot = self.slot(target);
        if slot.is_some() {
            return None;
        }
        *slot = Some(now);
        Some(json!({"kind": MEDIA_LOST, "connection": connection(target)}))
    }

    /// The connection is up: an incident only if it had been lost.
    pub fn connected(&mut self, now: Instant, target: PeerTarget) -> Option<Value> {
        let since = self.slot(target).take()?;
        let lost_ms = now.saturating_duration_since(since).as_millis() as u64;
        Some(json!({"kind": MEDIA_RESTORED, "connection": connection(target), "lost_ms": lost_ms}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn audio_only_and_low_estimate_periods() {
        let t0 = Instant::now();
        let mut m = MediaIncidents::default();
        let start = m.bandwidth(t0, true, true, 90_000);
        assert_eq!(start.len(), 2);
        assert_eq!(start[0]["kind"], LOW_ESTIMATE);
        assert_eq!(start[1]["kind"], AUDIO_ONLY);
        assert_eq!(start[1]["phase"], "start");
        assert_eq!(start[1]["estimate_kbps"], 90);
        assert!(m.bandwidth(t0, true, true, 80_000).is_empty());
        let end = m.bandwidth(t0 + Duration::from_secs(7), false, true, 200_000);
        assert_eq!(end.len(), 1);
        assert_eq!(end[0]["kind"], AUDIO_ONLY);
        assert_eq!(end[0]["phase"], "end");
        assert_eq!(end[0]["duration_ms"], 7000);
    }

    #[test]
    fn a_loss_then_its_restoration_with_its_duration() {
        let t0 = Instant::now();
        let mut m = MediaIncidents::default();
        assert_eq!(
            m.connected(t0, PeerTarget::Publisher),
            None,
            "first connection"
        );
        let lost = m.lost(t0, PeerTarget::Publisher).unwrap();
        assert_eq!(lost["kind"], MEDIA_LOST);
        assert_eq!(lost["connection"], "publisher");
        assert_eq!(
            m.lost(t0 + Duration::from_secs(1), PeerTarget::Publisher),
            None
        );
        assert_eq!(m.connected(t0, PeerTarget::Subscriber), None);
        let back = m
            .connected(t0 + Duration::from_millis(1500), PeerTarget::Publisher)
            .unwrap();
        assert_eq!(back["kind"], MEDIA_RESTORED);
        assert_eq!(back["lost_ms"], 1500);
        assert_eq!(
            m.connected(t0 + Duration::from_secs(3), PeerTarget::Publisher),
            None
        );
    }
}
