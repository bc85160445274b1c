//! Roles of a consultation and the grants they carry.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Who a participant is in the consultation. Grants derive from the role only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Patient,
    /// The accompanying professional or carer sitting with the patient (runs the cart).
    Companion,
    Physician,
}

/// What kind of companion sits with the patient (only meaningful for [`Role::Companion`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompanionKind {
    /// IDE (infirmier diplômé d'État).
    Nurse,
    Pharmacist,
    Carer,
}

/// Rights derived from a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    pub publish: bool,
    pub subscribe: bool,
    /// Admit or refuse waiting participants, remove participants.
    pub admit: bool,
    /// End the consultation for everyone.
    pub end: bool,
    /// Ask for a recording (which still needs everyone's consent).
    pub record: bool,
    /// Joins without waiting for admission.
    pub bypass_waiting_room: bool,
}

impl Role {
    pub fn grants(self) -> Grants {
        match self {
            Role::Physician => Grants {
                publish: true,
                subscribe: true,
                admit: true,
                end: true,
                record: true,
                bypass_waiting_room: true,
            },
            Role::Patient | Role::Companion => Grants {
                publish: true,
                subscribe: true,
                admit: false,
                end: false,
                record: false,
                bypass_waiting_room: false,
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Companion => "companion",
            Role::Physician => "physician",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a published track carries; the SFU's allocator ranks tracks by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackLabel {
    Camera,
    Microphone,
    Stethoscope,
    Otoscope,
    Screen,
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    Video,
}

impl TrackLabel {
    /// The media kind a label must have.
    pub fn kind(self) -> TrackKind {
        match self {
            TrackLabel::Microphone | TrackLabel::Stethoscope => TrackKind::Audio,
            TrackLabel::Camera | TrackLabel::Otoscope | TrackLabel::Screen => TrackKind::Video,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TrackLabel::Camera => "camera",
            TrackLabel::Microphone => "microphone",
            TrackLabel::Stethoscope => "stethoscope",
            TrackLabel::Otoscope => "otoscope",
            TrackLabel::Screen => "screen",
        }
    }
}

impl fmt::Display for TrackLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Claims carried by an access token (a JWT signed with the server's API secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The API key that signed the token.
    pub iss: String,
    /// Stable identity of the participant (e.g. an RPPS number for a professional).
    pub sub: String,
    /// Display name.
    pub name: String,
    /// The one consultation room this token opens.
    pub room: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub companion_kind: Option<CompanionKind>,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// The token's own id, for revoking this token alone (tokens minted before it existed
    /// have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_physicians_admit_end_and_skip_the_waiting_room() {
        for role in [Role::Patient, Role::Companion] {
            let g = role.grants();
            assert!(g.publish && g.subscribe);
            assert!(!g.admit && !g.end && !g.record && !g.bypass_waiting_room);
        }
        let g = Role::Physician.grants();
        assert!(g.admit && g.end && g.record && g.bypass_waiting_room);
    }

    #[test]
    fn labels_have_fixed_kinds_and_names() {
        assert_eq!(TrackLabel::Stethoscope.kind(), TrackKind::Audio);
        assert_eq!(TrackLabel::Otoscope.kind(), TrackKind::Video);
        let json = serde_json::to_string(&TrackLabel::Stethoscope).unwrap();
        assert_eq!(json, "\"stethoscope\"");
    }
}
