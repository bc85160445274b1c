//! Types shared by the signaling server and Rust clients.
//!
//! The JSON protocol spoken over the WebSocket is documented in `docs/protocol.md`; every
//! message there is one variant of [`ClientMsg`] or [`ServerMsg`].

pub mod audio_steps;
mod messages;
mod roles;
pub mod vp8;

pub use messages::*;
pub use roles::*;

/// Version of the WebSocket protocol. A client sends it in `join`; the server refuses others.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest WebSocket message the server accepts (an SDP offer with many m-lines fits easily).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
