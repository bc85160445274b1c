//! Whether a publisher's uplink carries its video (sans-I/O).
//!
//! A physician (or a cart) behind a thin access link sends its camera up the same link as its
//! voice, its receiver feedback and its WebSocket: at 100 kbit/s the browser's own estimator
//! keeps the lowest simulcast layer going (~30-50 kbit/s) and the uplink overflows, taking the
//! audio and the signaling with it. The SFU then asks the publisher to send no video at all
//! (`publisher_layers` with `uplink_paused`), on either of two pieces of evidence:
//! - the participant's *downlink* is reported low: access links are rarely wider up than down,
//!   so a downlink under the low-link threshold means an uplink that cannot carry video;
//! - its uplink loses: loss on what it sends, smoothed, at [`PAUSE_LOSS`] or more for
//!   [`LOSSY_FOR`].
//!
//! Video comes back on a trial: when the downlink is fine again (at once) or, when only loss
//! paused it, after a back-off that doubles on each failed trial ([`FIRST_RETRY`] up to
//! [`LAST_RETRY`]). A trial fails when the uplink loses again within [`TRIAL`].

use std::time::{Duration, Instant};

/// Smoothed uplink loss at which video is paused: well above the random loss a link with room
/// shows (NACK, RTX and FEC repair that), what an overflowing queue drops.
pub const PAUSE_LOSS: f32 = 0.20;
/// How long the loss must stay at [`PAUSE_LOSS`] or more.
pub const LOSSY_FOR: Duration = Duration::from_secs(2);
/// A trial of video after a loss pause lasts this long.
pub const TRIAL: Duration = Duration::from_secs(5);
/// First wait before a trial after a loss pause; doubled on each failed trial.
pub const FIRST_RETRY: Duration = Duration::from_secs(10);
pub const LAST_RETRY: Duration = Duration::from_secs(80);

/// What the engine knows of one participant's access link.
#[derive(Debug, Clone, Copy, Default)]
pub struct UplinkView {
    /// Loss on what the publisher sends us (0..1), from its stream's sequence numbers.
    pub loss: Option<f32>,
    /// Its subscriber connection (the same access link, the other way) has shown it is thin,
    /// or is not up yet.
    pub downlink_thin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Sending,
    /// Video tried again since `since`; paused again if the uplink loses before the trial ends.
    Trial {
        since: Instant,
    },
    /// Paused; tried again once the downlink is fine if a low downlink paused it, else at
    /// `retry_at`.
    Paused {
        retry_at: Instant,
        by_downlink: bool,
    },
}

#[derive(Debug)]
pub struct UplinkVideoGate {
    state: State,
    loss_ewma: f32,
    lossy_since: Option<Instant>,
    backoff: Duration,
}

impl Default for UplinkVideoGate {
    fn default() -> Self {
        Self {
            state: State::Sending,
            loss_ewma: 0.0,
            lossy_since: None,
            backoff: FIRST_RETRY,
        }
    }
}

impl UplinkVideoGate {
    /// Whether the publisher is to send no video now. Call about every 250 ms.
    pub fn update(&mut self, now: Instant, view: UplinkView) -> bool {
        let sample = view.loss.unwrap_or(0.0).clamp(0.0, 1.0);
        self.loss_ewma = self.loss_ewma * 0.7 + sample * 0.3;
        let lossy_now = self.loss_ewma >= PAUSE_LOSS;
        if !lossy_now {
            self.lossy_since = None;
        } else if self.lossy_since.is_none() {
            self.lossy_since = Some(now);
        }
        let lossy = self
            .lossy_since
            .is_some_and(|t| now.saturating_duration_since(t) >= LOSSY_FOR);
        self.state = match self.state {
            State::Sending if view.downlink_thin => self.pause(now, true, false),
            State::Sending if lossy => self.pause(now, false, false),
            State::Sending => State::Sending,
            State::Trial { .. } if view.downlink_thin => self.pause(now, true, false),
            // Loss while trying: the uplink cannot carry video yet.
            State::Trial { .. } if lossy_now => self.pause(now, false, true),
            State::Trial { since } if now.saturating_duration_since(since) >= TRIAL => {
                self.backoff = FIRST_RETRY;
                State::Sending
            }
            s @ State::Trial { .. } => s,
            s @ State::Paused { .. } if view.downlink_thin => s,
            State::Paused {
                retry_at,
                by_downlink,
            } if by_downlink || now >= retry_at => {
                self.lossy_since = None;
                State::Trial { since: now }
            }
            s @ State::Paused { .. } => s,
        };
        !matches!(self.state, State::Sending | State::Trial { .. })
    }

    /// Whether the publisher is asked to send no video.
    pub fn paused(&self) -> bool {
        matches!(self.state, State::Paused { .. })
    }

    fn pause(&mut self, now: Instant, by_downlink: bool, failed_trial: bool) -> State {
        if failed_trial {
            self.backoff = (self.backoff * 2).min(LAST_RETRY);
        }
        State::Paused {
            retry_at: now + self.backoff,
            by_downlink,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(250);

    fn run(g: &mut UplinkVideoGate, t: &mut Instant, secs: f32, view: UplinkView) -> bool {
        let end = *t + Duration::from_secs_f32(secs);
        let mut paused = g.paused();
        while *t < end {
            *t += TICK;
            paused = g.update(*t, view);
        }
        paused
    }

    fn view(loss: f32, downlink_thin: bool) -> UplinkView {
        UplinkView {
            loss: Some(loss),
            downlink_thin,
        }
    }

    #[test]
    fn a_low_downlink_pauses_video_at_once_and_its_end_resumes_it() {
        let mut g = UplinkVideoGate::default();
        let mut t = Instant::now();
        assert!(!run(&mut g, &mut t, 5.0, view(0.0, false)));
        t += TICK;
        assert!(
            g.update(t, view(0.0, true)),
            "paused on the first low report"
        );
        assert!(run(&mut g, &mut t, 30.0, view(0.0, true)), "held while low");
        t += TICK;
        assert!(
            !g.update(t, view(0.0, false)),
            "tried again once the downlink is fine"
        );
        assert!(!run(&mut g, &mut t, 10.0, view(0.0, false)));
    }

    #[test]
    fn brief_or_light_loss_keeps_video() {
        let mut g = UplinkVideoGate::default();
        let mut t = Instant::now();
        assert!(!run(&mut g, &mut t, 10.0, view(0.04, false)));
        assert!(!run(&mut g, &mut t, 0.5, view(0.5, false)));
        assert!(!run(&mut g, &mut t, 10.0, view(0.0, false)));
    }

    #[test]
    fn sustained_loss_pauses_and_failed_trials_back_off() {
        let mut g = UplinkVideoGate::default();
        let mut t = Instant::now();
        assert!(
            run(&mut g, &mut t, 3.0, view(0.3, false)),
            "paused after 2 s of loss"
        );
        // Audio alone fits: no loss while paused, yet no trial before the back-off.
        assert!(run(&mut g, &mut t, 9.0, view(0.0, false)));
        assert!(
            !run(&mut g, &mut t, 1.5, view(0.0, false)),
            "first trial after 10 s"
        );
        // The trial loses: paused again, next trial after 20 s.
        assert!(run(&mut g, &mut t, 1.0, view(0.3, false)));
        assert!(run(&mut g, &mut t, 19.0, view(0.0, false)));
        assert!(
            !run(&mut g, &mut t, 1.5, view(0.0, false)),
            "second trial after 20 s"
        );
        // This one holds for the whole trial: sending again, back-off reset.
        assert!(!run(&mut g, &mut t, 6.0, view(0.0, false)));
        assert_eq!(g.backoff, FIRST_RETRY);
    }

    #[test]
    fn no_loss_report_counts_as_no_loss() {
        let mut g = UplinkVideoGate::default();
        let mut t = Instant::now();
        assert!(!run(&mut g, &mut t, 10.0, UplinkView::default()));
    }
}
