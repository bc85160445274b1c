//! The media plane of the consultation engine.
//!
//! One UDP socket carries every participant's ICE, DTLS and SRTP. Each participant has two
//! server-side peers (str0m `Rtc` in ICE-lite + RTP mode): a *publisher* peer on which the
//! client offers the tracks it sends, and a *subscriber* peer on which the server offers the
//! tracks of the other admitted participants of the same room.
//!
//! - [`engine::Engine`] is the core: it takes datagrams, commands and timeouts with an
//!   `Instant`, and hands datagrams to send to a [`engine::Transmit`] sink. No socket, no clock.
//! - [`runner`] is the thin I/O shell: a tokio task owning the socket and the timers.
//! - [`api`] is the narrow interface the signaling server uses ([`SfuHandle`]).

pub mod allocator;
pub mod api;
mod audio_rtx;
pub mod audio_shed;
pub mod congestion;
pub mod delay;
mod demux;
pub mod engine;
pub mod forwarder;
mod keyframe;
pub mod padding_throttle;
mod peer;
pub mod red;
pub mod resend;
pub mod router;
pub mod runner;
mod shard;
pub mod stats;
mod steering;
mod track;
pub mod uplink;

pub use api::{PeerReport, SfuError, SfuEvent, SfuHandle, SfuStats, TapPacket};
pub use runner::{start, SfuConfig};
