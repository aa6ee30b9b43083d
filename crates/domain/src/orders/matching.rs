//! Which provider is offered an order: coverage (the stations a provider serves, or a radius
//! around its base), the service, working hours, capacity, suspension, then a ranking by the
//! estimated travel time, the load and the rating. Pure: the store reads the candidates from
//! PostgreSQL inside the transaction that makes the offer and calls [`rank`].

use std::cmp::Reverse;

use uuid::Uuid;

use super::ServicePolicy;

/// A position in WGS-84 degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("not a position on Earth: latitude {lat}, longitude {lon}")]
pub struct BadPosition {
    pub lat: f64,
    pub lon: f64,
}

impl GeoPoint {
    pub fn new(lat: f64, lon: f64) -> Result<Self, BadPosition> {
        if lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0 {
            Ok(Self { lat, lon })
        } else {
            Err(BadPosition { lat, lon })
        }
    }

    /// Great-circle distance in metres (haversine), rounded to the metre.
    pub fn distance_m(self, other: GeoPoint) -> u32 {
        const EARTH_RADIUS_M: f64 = 6_371_000.0;
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = lat2 - lat1;
        let dlon = (other.lon - self.lon).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
        let metres = 2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin();
        // At most half the circumference (~20,000 km): always fits.
        metres.round() as u32
    }
}

/// Whether a provider is working at `minute_of_day` (local time, 0..1440). Hours that end
/// before they start run overnight; equal start and end mean around the clock.
pub fn open_at(opens_minute: u32, closes_minute: u32, minute_of_day: u32) -> bool {
    if opens_minute == closes_minute {
        true
    } else if opens_minute < closes_minute {
        (opens_minute..closes_minute).contains(&minute_of_day)
    } else {
        minute_of_day >= opens_minute || minute_of_day < closes_minute
    }
}

/// Estimated travel time for `distance_m` in whole minutes, rounded up: the straight line
/// times the policy's road factor, at the policy's speed.
pub fn travel_minutes(distance_m: u32, policy: &ServicePolicy) -> u32 {
    let road = u64::from(distance_m) * u64::from(policy.road_factor_percent) / 100;
    let speed = u64::from(policy.travel_metres_per_minute.max(1));
    u32::try_from(road.div_ceil(speed)).unwrap_or(u32::MAX)
}

/// A provider's average rating in hundredths of a star, if it has any ratings.
pub fn rating_centi(rating_sum: u32, rating_count: u32) -> Option<u32> {
    (rating_count > 0).then(|| {
        u32::try_from(u64::from(rating_sum) * 100 / u64::from(rating_count)).unwrap_or(u32::MAX)
    })
}

/// Whether a provider's ratings have fallen below the policy's threshold: it stops receiving
/// offers until a supervisor reinstates it. Too few ratings never suspend.
pub fn below_threshold(rating_sum: u32, rating_count: u32, policy: &ServicePolicy) -> bool {
    rating_count >= policy.min_ratings.max(1)
        && u64::from(rating_sum) * 100
            < u64::from(policy.min_rating_centi) * u64::from(rating_count)
}

/// One provider as matching sees it for one order.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub provider_id: Uuid,
    pub location: Option<GeoPoint>,
    /// Serves anyone within this many metres of `location` (0: no radius coverage).
    pub radius_m: u32,
    /// Serves the resident's station.
    pub covers_station: bool,
    pub offers_service: bool,
    pub suspended: bool,
    pub open_now: bool,
    pub active_orders: u32,
    pub capacity: u32,
    pub rating_sum: u32,
    pub rating_count: u32,
    /// Already offered this order (and declined or let it time out).
    pub tried: bool,
}

/// A provider that can be offered the order, with what the operator sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    pub provider_id: Uuid,
    pub distance_m: Option<u32>,
    pub travel_minutes: Option<u32>,
    /// Inside the "10-minute home-care service circle" (the policy's circle).
    pub in_circle: bool,
    pub active_orders: u32,
    pub capacity: u32,
    pub rating_centi: Option<u32>,
}

/// Why no provider can be offered the order. Each says what the operator can do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoMatch {
    #[error("no provider offers this service")]
    NoProviderOffersService,
    #[error(
        "the resident is outside every provider's coverage for this service ({offering} offer it elsewhere); arrange it by hand or extend a provider's coverage"
    )]
    OutsideCoverage { offering: usize },
    #[error(
        "no covering provider can take it now: {busy} at capacity, {closed} closed, {suspended} suspended, {tried} already asked"
    )]
    NoneAvailable {
        busy: usize,
        closed: usize,
        suspended: usize,
        tried: usize,
    },
}

impl NoMatch {
    /// The resident can never be served by the providers as they are: refuse the order. (When
    /// providers cover the resident but none is free now, the order waits instead.)
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            NoMatch::NoProviderOffersService | NoMatch::OutsideCoverage { .. }
        )
    }
}

/// Unrated providers rank as if they had this rating.
const UNRATED_CENTI: u32 = 400;

/// The providers that can be offered the order, best first, or why there are none.
///
/// Order: inside the service circle before outside; inside it (everyone arrives within the
/// promise) the less loaded first, then the better rated, then the nearer; outside it the
/// nearer first, then load, then rating; providers whose distance is unknown (covering by
/// station without a position) last. The provider id breaks the remaining ties, so the result
/// is a function of the input.
pub fn rank(
    candidates: &[Candidate],
    resident: Option<GeoPoint>,
    policy: &ServicePolicy,
) -> Result<Vec<Suggestion>, NoMatch> {
    let offering: Vec<&Candidate> = candidates.iter().filter(|c| c.offers_service).collect();
    if offering.is_empty() {
        return Err(NoMatch::NoProviderOffersService);
    }
    let distance = |candidate: &Candidate| match (candidate.location, resident) {
        (Some(from), Some(to)) => Some(from.distance_m(to)),
        _ => None,
    };
    let covering: Vec<(&Candidate, Option<u32>)> = offering
        .iter()
        .map(|candidate| (*candidate, distance(candidate)))
        .filter(|(candidate, distance)| {
            candidate.covers_station
                || (candidate.radius_m > 0 && distance.is_some_and(|d| d <= candidate.radius_m))
        })
        .collect();
    if covering.is_empty() {
        return Err(NoMatch::OutsideCoverage {
            offering: offering.len(),
        });
    }
    let (mut busy, mut closed, mut suspended, mut tried) = (0, 0, 0, 0);
    let mut suggestions = Vec::new();
    for (candidate, distance_m) in covering {
        if candidate.tried {
            tried += 1;
        } else if candidate.suspended {
            suspended += 1;
        } else if !candidate.open_now {
            closed += 1;
        } else if candidate.active_orders >= candidate.capacity {
            busy += 1;
        } else {
            let travel = distance_m.map(|d| travel_minutes(d, policy));
            suggestions.push(Suggestion {
                provider_id: candidate.provider_id,
                distance_m,
                travel_minutes: travel,
                in_circle: travel.is_some_and(|t| t <= policy.circle_minutes),
                active_orders: candidate.active_orders,
                capacity: candidate.capacity,
                rating_centi: rating_centi(candidate.rating_sum, candidate.rating_count),
            });
        }
    }
    if suggestions.is_empty() {
        return Err(NoMatch::NoneAvailable {
            busy,
            closed,
            suspended,
            tried,
        });
    }
    suggestions.sort_by_key(|s| {
        let load = u64::from(s.active_orders) * 1000 / u64::from(s.capacity.max(1));
        let rating = Reverse(s.rating_centi.unwrap_or(UNRATED_CENTI));
        let travel = s.travel_minutes.unwrap_or(u32::MAX);
        let group = match (s.in_circle, s.travel_minutes.is_some()) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => 2,
        };
        let (first, second) = if s.in_circle {
            (load, u64::from(travel))
        } else {
            (u64::from(travel), load)
        };
        (group, first, rating, second, s.provider_id)
    });
    Ok(suggestions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn point(lat: f64, lon: f64) -> GeoPoint {
        GeoPoint::new(lat, lon).unwrap()
    }

    fn candidate(id: u128, location: GeoPoint, radius_m: u32) -> Candidate {
        Candidate {
            provider_id: Uuid::from_u128(id),
            location: Some(location),
            radius_m,
            covers_station: false,
            offers_service: true,
            suspended: false,
            open_now: true,
            active_orders: 0,
            capacity: 5,
            rating_sum: 0,
            rating_count: 0,
            tried: false,
        }
    }

    // One degree of latitude is ~111.2 km; 0.01° ≈ 1,112 m.
    const HOME: GeoPoint = GeoPoint {
        lat: 22.55,
        lon: 114.25,
    };

    #[test]
    fn distances_on_a_hand_built_map() {
        assert_eq!(HOME.distance_m(HOME), 0);
        let north = point(22.56, 114.25);
        let d = HOME.distance_m(north);
        assert!((1110..=1113).contains(&d), "{d}");
        assert_eq!(HOME.distance_m(north), north.distance_m(HOME));
        assert!(GeoPoint::new(91.0, 0.0).is_err());
        assert!(GeoPoint::new(f64::NAN, 0.0).is_err());
    }

    #[test]
    fn travel_time_and_the_ten_minute_circle() {
        let policy = ServicePolicy::default();
        // 1,112 m × 1.3 road factor at 250 m/min: 1,445 m → 6 minutes.
        assert_eq!(travel_minutes(1112, &policy), 6);
        assert_eq!(travel_minutes(0, &policy), 0);
        // 10 minutes is 2,500 road metres ≈ 1,923 m straight.
        assert_eq!(travel_minutes(1923, &policy), 10);
        assert_eq!(travel_minutes(1924, &policy), 11);
    }

    #[test]
    fn radius_coverage_and_distance_decide() {
        let policy = ServicePolicy::default();
        let near = candidate(1, point(22.555, 114.25), 2000); // ~556 m
        let far = candidate(2, point(22.565, 114.25), 3000); // ~1,668 m
        let out_of_reach = candidate(3, point(22.60, 114.25), 3000); // ~5.6 km, radius 3 km
        let ranked = rank(
            &[far.clone(), out_of_reach, near.clone()],
            Some(HOME),
            &policy,
        )
        .unwrap();
        let ids: Vec<Uuid> = ranked.iter().map(|s| s.provider_id).collect();
        assert_eq!(ids, vec![near.provider_id, far.provider_id]);
        assert!(ranked.iter().all(|s| s.in_circle));
        assert_eq!(ranked[0].distance_m, Some(556));

        // The nearer one has declined: the other is next.
        let mut tried = near;
        tried.tried = true;
        let ranked = rank(&[tried, far.clone()], Some(HOME), &policy).unwrap();
        assert_eq!(ranked[0].provider_id, far.provider_id);
    }

    #[test]
    fn a_resident_outside_every_providers_coverage_is_a_clear_error() {
        let policy = ServicePolicy::default();
        let far_away = candidate(1, point(23.0, 114.25), 5000);
        let error = rank(std::slice::from_ref(&far_away), Some(HOME), &policy).unwrap_err();
        assert_eq!(error, NoMatch::OutsideCoverage { offering: 1 });
        assert!(error.is_permanent());
        assert!(error
            .to_string()
            .contains("outside every provider's coverage"));

        // A resident without a position is covered only by station.
        assert!(rank(std::slice::from_ref(&far_away), None, &policy).is_err());
        let mut by_station = far_away;
        by_station.covers_station = true;
        let ranked = rank(&[by_station], None, &policy).unwrap();
        assert_eq!(ranked[0].travel_minutes, None);
        assert!(!ranked[0].in_circle);

        let mut not_offering = candidate(1, HOME, 5000);
        not_offering.offers_service = false;
        assert_eq!(
            rank(&[not_offering], Some(HOME), &policy),
            Err(NoMatch::NoProviderOffersService)
        );
    }

    #[test]
    fn busy_closed_and_suspended_providers_wait_rather_than_refuse() {
        let policy = ServicePolicy::default();
        let mut busy = candidate(1, HOME, 1000);
        busy.active_orders = 5;
        let mut closed = candidate(2, HOME, 1000);
        closed.open_now = false;
        let mut suspended = candidate(3, HOME, 1000);
        suspended.suspended = true;
        let error = rank(&[busy, closed, suspended], Some(HOME), &policy).unwrap_err();
        assert_eq!(
            error,
            NoMatch::NoneAvailable {
                busy: 1,
                closed: 1,
                suspended: 1,
                tried: 0
            }
        );
        assert!(!error.is_permanent());
    }

    #[test]
    fn inside_the_circle_load_and_rating_come_before_a_few_metres() {
        let policy = ServicePolicy::default();
        let mut nearest_but_busy = candidate(1, HOME, 2000);
        nearest_but_busy.active_orders = 4;
        let mut a_bit_further = candidate(2, point(22.553, 114.25), 2000);
        a_bit_further.rating_sum = 45;
        a_bit_further.rating_count = 10;
        let ranked = rank(
            &[nearest_but_busy.clone(), a_bit_further.clone()],
            Some(HOME),
            &policy,
        )
        .unwrap();
        assert_eq!(ranked[0].provider_id, a_bit_further.provider_id);
        assert_eq!(ranked[0].rating_centi, Some(450));
    }

    #[test]
    fn working_hours_and_the_rating_threshold() {
        assert!(open_at(8 * 60, 20 * 60, 8 * 60));
        assert!(!open_at(8 * 60, 20 * 60, 20 * 60));
        assert!(open_at(22 * 60, 6 * 60, 23 * 60) && open_at(22 * 60, 6 * 60, 60));
        assert!(!open_at(22 * 60, 6 * 60, 12 * 60));
        assert!(open_at(0, 0, 719));
        let policy = ServicePolicy::default(); // 3.00 stars, at least 3 ratings
        assert!(!below_threshold(2, 2, &policy), "too few ratings");
        assert!(below_threshold(8, 3, &policy));
        assert!(!below_threshold(9, 3, &policy));
    }

    fn any_candidate() -> impl Strategy<Value = Candidate> {
        (
            (0u128..1, -0.05f64..0.05, -0.05f64..0.05, 0u32..6000),
            (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
            (any::<bool>(), 0u32..6, 1u32..6, 0u32..50, 0u32..10),
        )
            .prop_map(
                |(
                    (id, dlat, dlon, radius_m),
                    (covers_station, offers_service, suspended, open_now),
                    (tried, active_orders, capacity, rating_sum, rating_count),
                )| Candidate {
                    provider_id: Uuid::from_u128(id),
                    location: Some(point(HOME.lat + dlat, HOME.lon + dlon)),
                    radius_m,
                    covers_station,
                    offers_service,
                    suspended,
                    open_now,
                    active_orders,
                    capacity,
                    rating_sum,
                    rating_count,
                    tried,
                },
            )
    }

    proptest! {
        #[test]
        fn every_suggestion_covers_offers_and_can_take_it(
            candidates in proptest::collection::vec(any_candidate(), 0..12)
        ) {
            // One entry per provider.
            let candidates: Vec<Candidate> = candidates
                .into_iter()
                .enumerate()
                .map(|(i, c)| Candidate { provider_id: Uuid::from_u128(i as u128), ..c })
                .collect();
            let policy = ServicePolicy::default();
            match rank(&candidates, Some(HOME), &policy) {
                Ok(ranked) => {
                    prop_assert!(!ranked.is_empty());
                    for suggestion in &ranked {
                        let c = candidates.iter().find(|c| c.provider_id == suggestion.provider_id).unwrap();
                        let d = c.location.unwrap().distance_m(HOME);
                        prop_assert!(c.offers_service && !c.suspended && c.open_now && !c.tried);
                        prop_assert!(c.active_orders < c.capacity);
                        prop_assert!(c.covers_station || (c.radius_m > 0 && d <= c.radius_m));
                        prop_assert_eq!(suggestion.in_circle, travel_minutes(d, &policy) <= policy.circle_minutes);
                    }
                    // In-circle suggestions all come first.
                    let first_outside = ranked.iter().position(|s| !s.in_circle).unwrap_or(ranked.len());
                    prop_assert!(ranked[first_outside..].iter().all(|s| !s.in_circle));
                }
                Err(NoMatch::NoProviderOffersService) => {
                    prop_assert!(candidates.iter().all(|c| !c.offers_service));
                }
                Err(NoMatch::OutsideCoverage { .. }) => {
                    let uncovered = candidates.iter().filter(|c| c.offers_service).all(|c| {
                        !c.covers_station && (c.radius_m == 0 || c.location.unwrap().distance_m(HOME) > c.radius_m)
                    });
                    prop_assert!(uncovered);
                }
                Err(NoMatch::NoneAvailable { busy, closed, suspended, tried }) => {
                    prop_assert!(busy + closed + suspended + tried > 0);
                }
            }
        }
    }
}
