//! A programme's service policy: the timers, the service circle, the travel estimate and the
//! rating threshold. Stored in the database (one row) so every node applies the same one.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicePolicy {
    /// How long a provider has to accept an offer before it goes to the next one.
    pub offer_timeout_secs: u32,
    /// An order not accepted this long after it was created escalates to its station.
    pub accept_sla_secs: u32,
    /// An accepted order whose staff have not arrived this long after the promised time
    /// escalates to its station.
    pub arrival_grace_secs: u32,
    /// A called-back order the senior has not rated in this time is closed unrated.
    pub rating_window_secs: u32,
    /// The "10-minute home-care service circle".
    pub circle_minutes: u32,
    /// Travel speed for the estimate (250 m/min is 15 km/h, an electric bicycle in town).
    pub travel_metres_per_minute: u32,
    /// Streets are longer than the straight line: road distance as a percentage of it.
    pub road_factor_percent: u32,
    /// Below this average rating (hundredths of a star) a provider stops receiving offers...
    pub min_rating_centi: u32,
    /// ...once it has at least this many ratings.
    pub min_ratings: u32,
}

impl Default for ServicePolicy {
    fn default() -> Self {
        Self {
            offer_timeout_secs: 300,
            accept_sla_secs: 900,
            arrival_grace_secs: 900,
            rating_window_secs: 3 * 24 * 3600,
            circle_minutes: 10,
            travel_metres_per_minute: 250,
            road_factor_percent: 130,
            min_rating_centi: 300,
            min_ratings: 3,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid service policy: {0}")]
pub struct PolicyError(pub String);

impl ServicePolicy {
    /// Checks every field; a policy is applied only whole.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let positive = [
            ("offer_timeout_secs", self.offer_timeout_secs),
            ("accept_sla_secs", self.accept_sla_secs),
            ("arrival_grace_secs", self.arrival_grace_secs),
            ("rating_window_secs", self.rating_window_secs),
            ("circle_minutes", self.circle_minutes),
            ("travel_metres_per_minute", self.travel_metres_per_minute),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(PolicyError(format!("{name} must be above 0")));
            }
        }
        if !(100..=300).contains(&self.road_factor_percent) {
            return Err(PolicyError(
                "road_factor_percent must be between 100 and 300".to_owned(),
            ));
        }
        if !(100..=500).contains(&self.min_rating_centi) {
            return Err(PolicyError(
                "min_rating_centi must be between 100 (1 star) and 500 (5 stars)".to_owned(),
            ));
        }
        if self.min_ratings == 0 {
            return Err(PolicyError("min_ratings must be above 0".to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_is_valid_and_bad_ones_are_refused() {
        ServicePolicy::default().validate().unwrap();
        let bad = ServicePolicy {
            offer_timeout_secs: 0,
            ..ServicePolicy::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("offer_timeout_secs"));
        let bad = ServicePolicy {
            min_rating_centi: 600,
            ..ServicePolicy::default()
        };
        assert!(bad.validate().is_err());
        let parsed: Result<ServicePolicy, _> = serde_json::from_str(r#"{"circle_minute": 5}"#);
        assert!(parsed.is_err(), "unknown fields are refused");
    }
}
