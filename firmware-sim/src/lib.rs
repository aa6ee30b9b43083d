//! A simulated Carebell tablet, written only against the `.proto` files and
//! `docs/protocol.md` (through the `carebell-proto` crate): it stands in for a firmware team.
//!
//! [`Link`] is the raw transport (WebSocket or gRPC), usable by tests to send anything at all;
//! [`Tablet`] is a well-behaved device: it authenticates, heartbeats, resends what the server
//! has not acknowledged and acknowledges what it receives.

mod credentials;
pub mod fleet;
mod link;
mod pending;
mod tablet;

pub use credentials::{Credentials, CredentialsError};
pub use link::{enrol, EnrolError, Link, LinkError, LinkEvent, TransportKind};
pub use pending::PendingStore;
pub use tablet::{authenticate, Carryover, SimError, Tablet, TabletConfig, TabletEvent};
