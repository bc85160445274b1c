//! Consent to recording, as a state machine without I/O.
//!
//! A physician asks to record chosen tracks; every admitted participant must consent (the
//! requester by asking). Recording starts only when all have; any refusal, or a withdrawal at
//! any time, stops it for good (a new request starts a new round). A participant admitted
//! while it runs has not consented: the recording stops. Someone leaving is no longer asked.

use consult_protocol::{ParticipantId, RecordedTrack, RecordingPhase};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do on the media side.
    Unchanged,
    /// Everyone consented: start writing.
    Start,
    /// Stop (if running) with this reason; the round is over.
    Stop(String),
}

#[derive(Debug, Clone)]
pub struct ConsentRound {
    pub id: String,
    pub requested_by: ParticipantId,
    pub tracks: Vec<RecordedTrack>,
    /// Participants asked, and whether they consented.
    consents: Vec<(ParticipantId, bool)>,
    pub phase: RecordingPhase,
    pub reason: Option<String>,
}

impl ConsentRound {
    /// A new round; `participants` are those admitted now (the requester included).
    pub fn new(
        id: String,
        requested_by: &str,
        tracks: Vec<RecordedTrack>,
        participants: &[ParticipantId],
    ) -> (ConsentRound, Outcome) {
        let mut round = ConsentRound {
            id,
            requested_by: requested_by.to_owned(),
            tracks,
            consents: participants
                .iter()
                .map(|p| (p.clone(), p == requested_by))
                .collect(),
            phase: RecordingPhase::Pending,
            reason: None,
        };
        let outcome = round.check();
        (round, outcome)
    }

    pub fn is_over(&self) -> bool {
        self.phase == RecordingPhase::Stopped
    }

    /// Who must still answer.
    pub fn waiting_for(&self) -> Vec<ParticipantId> {
        if self.phase != RecordingPhase::Pending {
            return Vec::new();
        }
        self.consents
            .iter()
            .filter(|(_, c)| !c)
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn check(&mut self) -> Outcome {
        if self.phase == RecordingPhase::Pending && self.consents.iter().all(|(_, c)| *c) {
            self.phase = RecordingPhase::Recording;
            return Outcome::Start;
        }
        Outcome::Unchanged
    }

    fn stop(&mut self, reason: String) -> Outcome {
        self.phase = RecordingPhase::Stopped;
        self.reason = Some(reason.clone());
        Outcome::Stop(reason)
    }

    /// An answer (or a withdrawal) from `who`. `Err` if `who` was not asked.
    pub fn answer(&mut self, who: &str, accept: bool) -> Result<Outcome, &'static str> {
        if self.is_over() {
            return Err("this recording is over");
        }
        let Some(slot) = self.consents.iter_mut().find(|(p, _)| p == who) else {
            return Err("not asked for this recording");
        };
        if !accept {
            return Ok(self.stop(format!("consent refused or withdrawn by {who}")));
        }
        slot.1 = true;
        Ok(self.check())
    }

    /// The server stops (its files are closed and kept).
    pub fn server_shutdown(&mut self) -> Outcome {
        if self.is_over() {
            return Outcome::Unchanged;
        }
        self.stop("server shutdown".into())
    }

    /// The physician stops it.
    pub fn stop_by(&mut self, who: &str) -> Outcome {
        self.stop(format!("stopped by {who}"))
    }

    /// A participant was admitted: it has not consented.
    pub fn admitted(&mut self, who: &str) -> Outcome {
        match self.phase {
            RecordingPhase::Recording => {
                self.stop(format!("{who} joined without having consented"))
            }
            RecordingPhase::Pending => {
                if !self.consents.iter().any(|(p, _)| p == who) {
                    self.consents.push((who.to_owned(), false));
                }
                Outcome::Unchanged
            }
            RecordingPhase::Stopped => Outcome::Unchanged,
        }
    }

    /// A participant left: no longer asked; its tracks stop being recorded.
    pub fn left(&mut self, who: &str) -> Outcome {
        self.consents.retain(|(p, _)| p != who);
        self.tracks.retain(|t| t.participant_id != who);
        if self.tracks.is_empty() && !self.is_over() {
            return self.stop("no recorded track left".into());
        }
        self.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consult_protocol::{TrackKind, TrackLabel};

    fn steth() -> Vec<RecordedTrack> {
        vec![RecordedTrack {
            track_id: "ide/0".into(),
            participant_id: "ide".into(),
            label: TrackLabel::Stethoscope,
            kind: TrackKind::Audio,
        }]
    }

    fn all() -> Vec<String> {
        vec!["doc".into(), "ide".into(), "pat".into()]
    }

    #[test]
    fn starts_only_when_everyone_consented() {
        let (mut r, o) = ConsentRound::new("r1".into(), "doc", steth(), &all());
        assert_eq!(o, Outcome::Unchanged);
        assert_eq!(r.waiting_for(), ["ide", "pat"]);
        assert_eq!(r.answer("ide", true), Ok(Outcome::Unchanged));
        assert_eq!(r.phase, RecordingPhase::Pending);
        assert_eq!(r.answer("pat", true), Ok(Outcome::Start));
        assert_eq!(r.phase, RecordingPhase::Recording);
        assert!(r.waiting_for().is_empty());
        assert_eq!(
            r.answer("stranger", true),
            Err("not asked for this recording")
        );
    }

    #[test]
    fn a_refusal_or_a_withdrawal_stops_it_for_good() {
        let (mut r, _) = ConsentRound::new("r1".into(), "doc", steth(), &all());
        assert!(matches!(r.answer("pat", false), Ok(Outcome::Stop(_))));
        assert!(r.is_over());
        assert!(r.answer("ide", true).is_err(), "a new request is needed");

        let (mut r, _) = ConsentRound::new("r2".into(), "doc", steth(), &all());
        r.answer("ide", true).unwrap();
        assert_eq!(r.answer("pat", true), Ok(Outcome::Start));
        let o = r.answer("ide", false).unwrap();
        assert!(matches!(o, Outcome::Stop(ref why) if why.contains("withdrawn")));
        assert_eq!(r.phase, RecordingPhase::Stopped);
    }

    #[test]
    fn newcomers_must_consent_and_leavers_are_not_waited_for() {
        let (mut r, _) = ConsentRound::new("r1".into(), "doc", steth(), &all());
        r.answer("ide", true).unwrap();
        assert_eq!(r.admitted("dr2"), Outcome::Unchanged);
        assert_eq!(r.waiting_for(), ["pat", "dr2"]);
        assert_eq!(r.left("pat"), Outcome::Unchanged);
        assert_eq!(r.answer("dr2", true), Ok(Outcome::Start));
        // Admitted while recording: stops.
        assert!(matches!(r.admitted("late"), Outcome::Stop(_)));

        // The recorded participant leaves: nothing left to record.
        let (mut r, _) = ConsentRound::new("r3".into(), "doc", steth(), &all());
        assert!(matches!(r.left("ide"), Outcome::Stop(_)));
    }

    #[test]
    fn alone_with_the_requester_it_starts_at_once() {
        let (r, o) = ConsentRound::new("r1".into(), "doc", steth(), &["doc".into()]);
        assert_eq!(o, Outcome::Start);
        assert_eq!(r.phase, RecordingPhase::Recording);
    }
}
