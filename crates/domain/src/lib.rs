//! Carebell's domain: identifiers, entities and the state machines of calls and operators as
//! pure functions. No I/O, no tokio, no prost.

mod call;
mod ids;
mod operator;
pub mod orders;
pub mod routing;
pub mod schedule;

pub use call::{AlarmAction, AlarmOutcome, CallState, Disposition, OfferState, TransitionError};
pub use ids::{DeviceId, IdError, RequestId, Username};
pub use operator::{OperatorStatus, StatusError};
/// What a queued item is (emergency, technical alarm, call, call-back).
pub use routing::ItemKind as CallKind;
