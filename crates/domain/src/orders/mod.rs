//! Service orders (工单), the on-site half of the hotline: the order state machine, money in
//! integer fen with the split between subsidy and resident, and the default service catalogue.
//! Pure functions; the store and the provider API build on them.

mod catalogue;
mod matching;
mod money;
mod policy;
mod state;
mod tablet;

pub use catalogue::{CatalogueItem, DEFAULT_CATALOGUE};
pub use matching::{
    below_threshold, open_at, rank, rating_centi, travel_minutes, BadPosition, Candidate, GeoPoint,
    NoMatch, Suggestion,
};
pub use money::{split_charge, Charge, EntitlementTier, Fen, MoneyError};
pub use policy::{PolicyError, ServicePolicy};
pub use state::{OrderEvent, OrderState, OrderTransitionError};
pub use tablet::tablet_text;
