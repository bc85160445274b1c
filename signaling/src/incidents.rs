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

/// One session's media connectivity, turned into incidents.
#[derive(Debug, Default)]
pub struct MediaIncidents {
    lost_publisher: Option<Instant>,
    lost_subscriber: Option<Instant>,
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
