//! The control plane: access tokens, consultation rooms with their waiting room, the
//! WebSocket protocol (`docs/protocol.md`), the audit trail, and the server that runs it all
//! together with the SFU.

pub mod audit;
pub mod audit_chain;
pub mod config;
pub mod conn_guard;
pub mod consent;
pub mod http;
pub mod hub;
pub mod incidents;
pub mod metrics;
pub mod rate_limit;
pub mod recording;
pub mod restore;
pub mod revocation;
pub mod room;
pub mod security_headers;
pub mod server;
pub mod stills;
pub mod summary;
pub mod tls;
pub mod token;
pub mod ws;

pub use config::Config;
pub use server::{start, RunningServer};
