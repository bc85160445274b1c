//! Recording of consultation tracks to standard files, written incrementally so a crash loses
//! at most the last second and what is on disk stays readable:
//!
//! - [`ogg_opus::OggOpusRecorder`]: an Opus track (the stethoscope, the voices) to Ogg/Opus,
//!   losslessly from the RTP payloads (no decode, no re-encode); lost packets become Opus
//!   "lost frame" packets so the timeline keeps its length.
//! - [`vp8_ivf::Vp8IvfRecorder`]: a VP8 track to IVF, frames rebuilt from RTP.
//!
//! - [`sealed`]: encryption at rest, chunk by chunk as the file grows, and its reader.
//!
//! Both recorders take packets as the SFU forwards them (extended sequence number, RTP timestamp,
//! marker, payload) and put them back in order within a small window.

pub mod ogg_opus;
pub mod reorder;
pub mod sealed;
pub mod vp8_ivf;
