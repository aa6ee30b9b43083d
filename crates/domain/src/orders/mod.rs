//! Service orders (工单), the on-site half of the hotline: the order state machine, money in
//! integer fen with the split between subsidy and resident, and the default service catalogue.
//! Pure functions; the store and the provider API build on them.

mod catalogue;
mod money;
mod state;

pub use catalogue::{CatalogueItem, DEFAULT_CATALOGUE};
pub use money::{split_charge, Charge, EntitlementTier, Fen, MoneyError};
pub use state::{OrderEvent, OrderState, OrderTransitionError};
