//! The only crate that knows tonic and tungstenite: device links over WebSocket and gRPC, the
//! operator console API, TLS and listening sockets.
//!
//! Both device transports feed the same transport-agnostic session (`device::session`), so a
//! tablet behaves the same whichever it uses.

pub mod admission;
mod bucket;
pub mod console;
mod credentials;
pub mod device;
mod errors;
pub mod family;
pub mod net;
pub mod permissions;
pub mod provider;
pub mod tickets;
pub mod tls;
pub mod web;

pub use console::{ConsoleService, ConsoleSettings};
pub use credentials::{configure_request_limit, ClientAddress, MAX_FAILED_SIGN_INS_PER_ADDRESS};
pub use device::{AlarmBatcher, DeviceContext, DeviceSettings, SessionBatchers};
pub use errors::status_from_store;
pub use family::FamilyService;
pub use provider::ProviderService;
