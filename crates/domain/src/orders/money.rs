//! Money in integer fen (分), never floats: amounts, entitlement tiers and the split of a charge
//! between the subsidy and the resident, which always adds up to the price exactly.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("an amount cannot be negative: {0} fen")]
    Negative(i64),
    #[error("the amount overflows")]
    Overflow,
    #[error("a subsidy share must be between 0 and 100 percent, not {0}")]
    BadShare(u32),
}

/// An amount of money in fen (1 yuan = 100 fen). Never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Fen(i64);

impl Fen {
    pub const ZERO: Fen = Fen(0);

    pub fn new(fen: i64) -> Result<Self, MoneyError> {
        if fen < 0 {
            return Err(MoneyError::Negative(fen));
        }
        Ok(Fen(fen))
    }

    pub fn get(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Fen) -> Result<Fen, MoneyError> {
        self.0
            .checked_add(other.0)
            .map(Fen)
            .ok_or(MoneyError::Overflow)
    }

    pub fn checked_sub(self, other: Fen) -> Result<Fen, MoneyError> {
        let difference = self.0.checked_sub(other.0).ok_or(MoneyError::Overflow)?;
        Fen::new(difference)
    }
}

impl fmt::Display for Fen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "¥{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// What a resident pays of a service's price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntitlementTier {
    /// The programme pays everything.
    Free,
    /// The programme pays this percentage; the resident the rest.
    Subsidised { subsidy_percent: u32 },
    /// The resident pays everything.
    Market,
}

/// The two shares of one charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub subsidy: Fen,
    pub resident: Fen,
}

/// Splits `price` per `tier`. The subsidy share rounds down to the fen, so the programme never
/// pays more than its percentage; the resident pays the remainder; the two always add up to the
/// price exactly.
pub fn split_charge(price: Fen, tier: EntitlementTier) -> Result<Charge, MoneyError> {
    let subsidy = match tier {
        EntitlementTier::Free => price,
        EntitlementTier::Market => Fen::ZERO,
        EntitlementTier::Subsidised { subsidy_percent } => {
            if subsidy_percent > 100 {
                return Err(MoneyError::BadShare(subsidy_percent));
            }
            let product = i128::from(price.get()) * i128::from(subsidy_percent) / 100;
            Fen::new(i64::try_from(product).map_err(|_| MoneyError::Overflow)?)?
        }
    };
    Ok(Charge {
        subsidy,
        resident: price.checked_sub(subsidy)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn negative_and_overflowing_amounts_are_refused() {
        assert_eq!(Fen::new(-1), Err(MoneyError::Negative(-1)));
        assert_eq!(
            Fen::new(i64::MAX)
                .unwrap()
                .checked_add(Fen::new(1).unwrap()),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            split_charge(
                Fen::new(100).unwrap(),
                EntitlementTier::Subsidised {
                    subsidy_percent: 150
                }
            ),
            Err(MoneyError::BadShare(150))
        );
    }

    #[test]
    fn a_half_subsidy_of_an_odd_price_rounds_in_the_residents_direction() {
        let charge = split_charge(
            Fen::new(2999).unwrap(),
            EntitlementTier::Subsidised {
                subsidy_percent: 50,
            },
        )
        .unwrap();
        assert_eq!(
            charge,
            Charge {
                subsidy: Fen::new(1499).unwrap(),
                resident: Fen::new(1500).unwrap()
            }
        );
        assert_eq!(Fen::new(2999).unwrap().to_string(), "¥29.99");
    }

    proptest! {
        #[test]
        fn shares_always_add_up_to_the_price(price in 0i64..=i64::MAX, percent in 0u32..=100, tier in 0u8..3) {
            let price = Fen::new(price).unwrap();
            let tier = match tier {
                0 => EntitlementTier::Free,
                1 => EntitlementTier::Market,
                _ => EntitlementTier::Subsidised { subsidy_percent: percent },
            };
            let charge = split_charge(price, tier).unwrap();
            prop_assert_eq!(charge.subsidy.checked_add(charge.resident).unwrap(), price);
        }
    }
}
