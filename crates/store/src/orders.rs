//! Service orders (工单): created by an operator from a call, matched to providers one at a
//! time, accepted with staff and a promised time, followed to the door, completed and charged,
//! called back, rated by the senior from the tablet, closed. Every step is one transaction that
//! checks the order's state machine ([`OrderState::apply`]) under the order's row lock and
//! writes one event; the tablet hears each step through its outbox.

use carebell_domain::orders::{
    below_threshold, open_at, rank, Candidate, GeoPoint, NoMatch, OrderEvent, OrderState,
    ServicePolicy, Suggestion,
};
use carebell_domain::CallKind;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgConnection, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::network::read_policy;
use crate::outbox::{push_order_update, OrderUpdatePayload};
use crate::{notify, Notification, Result, Store, StoreError};

/// Matching and offering take this transaction-scoped advisory lock, so that two nodes never
/// count the same provider's free capacity twice.
const MATCH_LOCK: i64 = 0x6361_7265_6f72_6472; // "careordr"

const MAX_NOTE_CHARS: usize = 2000;
const MAX_REASON_CHARS: usize = 500;

/// An order to create, from the operator's console.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub resident_id: Uuid,
    pub service_code: String,
    /// The call it came from.
    pub call_id: Option<Uuid>,
    pub note: String,
    pub operator_id: Option<Uuid>,
}

/// What creating an order did.
#[derive(Debug, Clone)]
pub struct CreatedOrder {
    pub order_id: Uuid,
    pub state: OrderState,
    /// The providers that could take it, best first, when it was created.
    pub suggestions: Vec<ProviderSuggestion>,
    /// Who it was offered to first (None: every covering provider is busy, closed or
    /// suspended; the order waits and its accept SLA runs).
    pub offered_to: Option<Uuid>,
}

/// A ranked provider with its name, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSuggestion {
    pub provider_name: String,
    pub price_fen: i64,
    pub suggestion: Suggestion,
}

/// A provider's report of progress.
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressReport {
    EnRoute,
    /// Check-in at the door, with the staff member's position if the phone has one.
    Arrived {
        position: Option<GeoPoint>,
    },
    Completed {
        notes: String,
        duration_minutes: u32,
    },
}

/// An order as the console, the provider and the tests read it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub resident_id: Uuid,
    pub resident_name: String,
    pub resident_address: String,
    pub station_id: Uuid,
    pub call_id: Option<Uuid>,
    pub service_code: String,
    pub service_name_zh: String,
    pub service_name_en: String,
    pub state: String,
    pub note: String,
    pub provider_id: Option<Uuid>,
    pub provider_name: Option<String>,
    pub staff_id: Option<Uuid>,
    pub staff_name: Option<String>,
    pub price_fen: Option<i64>,
    pub distance_m: Option<i32>,
    pub travel_minutes: Option<i32>,
    pub in_circle: Option<bool>,
    pub created_at: DateTime<Utc>,
    pub accept_due_at: DateTime<Utc>,
    pub eta_at: Option<DateTime<Utc>>,
    pub arrive_due_at: Option<DateTime<Utc>>,
    pub arrived_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_minutes: Option<i32>,
    pub completion_notes: String,
    pub callback_call_id: Option<Uuid>,
    pub called_back_at: Option<DateTime<Utc>>,
    pub rating: Option<i16>,
    pub closed_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: String,
    pub accept_escalated_at: Option<DateTime<Utc>>,
    pub arrival_escalated_at: Option<DateTime<Utc>>,
    /// The live offer's provider and deadline, while the order is offered.
    pub offered_to: Option<Uuid>,
    pub offer_expires_at: Option<DateTime<Utc>>,
}

pub(crate) const ORDER_SELECT: &str = "SELECT o.id, o.resident_id, r.full_name AS resident_name,
        r.address AS resident_address, o.station_id, o.call_id, o.service_code,
        si.name_zh AS service_name_zh, si.name_en AS service_name_en, o.state, o.note,
        o.provider_id, p.name AS provider_name, o.staff_id, st.name AS staff_name, o.price_fen,
        o.distance_m, o.travel_minutes, o.in_circle, o.created_at, o.accept_due_at, o.eta_at,
        o.arrive_due_at, o.arrived_at, o.completed_at, o.duration_minutes, o.completion_notes,
        o.callback_call_id, o.called_back_at, o.rating, o.closed_at, o.cancelled_at,
        o.cancel_reason, o.accept_escalated_at, o.arrival_escalated_at,
        oo.provider_id AS offered_to, oo.expires_at AS offer_expires_at
    FROM orders o
    JOIN residents r ON r.id = o.resident_id
    JOIN service_items si ON si.code = o.service_code
    LEFT JOIN providers p ON p.id = o.provider_id
    LEFT JOIN provider_staff st ON st.id = o.staff_id
    LEFT JOIN order_offers oo ON oo.order_id = o.id AND oo.state = 'offered'";

/// What the sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderSweep {
    pub offers_timed_out: usize,
    pub offered: usize,
    pub escalated: usize,
    pub closed_unrated: usize,
}

/// The order's row, locked for the rest of the transaction.
struct Locked {
    id: Uuid,
    state: OrderState,
    resident_id: Uuid,
    station_id: Uuid,
    service_code: String,
    provider_id: Option<Uuid>,
}

fn too_long(what: &str, text: &str, max: usize) -> Result<()> {
    if text.chars().count() > max {
        return Err(StoreError::Invalid(format!(
            "{what} is longer than {max} characters"
        )));
    }
    Ok(())
}

async fn lock_order(tx: &mut Transaction<'_, Postgres>, order_id: Uuid) -> Result<Locked> {
    let row = sqlx::query(
        "SELECT id, state, resident_id, station_id, service_code, provider_id
         FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| StoreError::NotFound {
        what: "order",
        id: order_id.to_string(),
    })?;
    let state: String = row.try_get("state")?;
    Ok(Locked {
        id: row.try_get("id")?,
        state: OrderState::parse(&state)
            .ok_or_else(|| StoreError::Refused(format!("unknown order state {state}")))?,
        resident_id: row.try_get("resident_id")?,
        station_id: row.try_get("station_id")?,
        service_code: row.try_get("service_code")?,
        provider_id: row.try_get("provider_id")?,
    })
}

/// Appends one order event inside the caller's transaction. The detail always carries the
/// station and (when there is one) the provider: the live figures are kept from them.
async fn order_event(
    tx: &mut Transaction<'_, Postgres>,
    kind: &str,
    order: &Locked,
    provider_id: Option<Uuid>,
    operator_id: Option<Uuid>,
    mut detail: serde_json::Value,
) -> Result<()> {
    if let Some(map) = detail.as_object_mut() {
        map.insert("station_id".into(), json!(order.station_id));
        map.insert("resident_id".into(), json!(order.resident_id));
        if let Some(provider_id) = provider_id {
            map.insert("provider_id".into(), json!(provider_id));
        }
    }
    sqlx::query("INSERT INTO events (kind, order_id, operator_id, detail) VALUES ($1, $2, $3, $4)")
        .bind(kind)
        .bind(order.id)
        .bind(operator_id)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Moves the order one step, or refuses with the state machine's reason; writes the event
/// `order.<event>`.
async fn step(
    tx: &mut Transaction<'_, Postgres>,
    order: &mut Locked,
    event: OrderEvent,
    provider_id: Option<Uuid>,
    operator_id: Option<Uuid>,
    mut detail: serde_json::Value,
) -> Result<()> {
    let next = order.state.apply(event)?;
    sqlx::query("UPDATE orders SET state = $2 WHERE id = $1")
        .bind(order.id)
        .bind(next.as_str())
        .execute(&mut **tx)
        .await?;
    if let Some(map) = detail.as_object_mut() {
        map.insert("from".into(), json!(order.state.as_str()));
        map.insert("to".into(), json!(next.as_str()));
    }
    order.state = next;
    let kind = format!("order.{}", event.as_str());
    order_event(tx, &kind, order, provider_id, operator_id, detail).await
}

/// The resident's position and station, for matching.
async fn resident_place(
    conn: &mut PgConnection,
    resident_id: Uuid,
) -> Result<(Uuid, Option<GeoPoint>)> {
    let row = sqlx::query("SELECT station_id, lat, lon FROM residents WHERE id = $1")
        .bind(resident_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "resident",
            id: resident_id.to_string(),
        })?;
    let lat: Option<f64> = row.try_get("lat")?;
    let lon: Option<f64> = row.try_get("lon")?;
    let location = match (lat, lon) {
        (Some(lat), Some(lon)) => GeoPoint::new(lat, lon).ok(),
        _ => None,
    };
    Ok((row.try_get("station_id")?, location))
}

/// Every provider as matching sees it for this resident and service (and order, if any).
async fn candidates(
    conn: &mut PgConnection,
    station_id: Uuid,
    service_code: &str,
    order_id: Option<Uuid>,
) -> Result<Vec<Candidate>> {
    let rows = sqlx::query(
        "SELECT p.id, p.lat, p.lon, p.radius_m, p.capacity, p.rating_sum, p.rating_count,
                p.suspended_at IS NOT NULL AS suspended, p.opens_minute, p.closes_minute,
                (extract(hour FROM now() AT TIME ZONE p.time_zone) * 60
                 + extract(minute FROM now() AT TIME ZONE p.time_zone))::int AS minute_of_day,
                EXISTS (SELECT 1 FROM provider_stations ps
                        WHERE ps.provider_id = p.id AND ps.station_id = $1) AS covers_station,
                EXISTS (SELECT 1 FROM provider_services sv
                        WHERE sv.provider_id = p.id AND sv.service_code = $2) AS offers_service,
                (SELECT count(*) FROM orders o WHERE o.provider_id = p.id
                   AND o.state IN ('accepted', 'en_route', 'arrived'))
                + (SELECT count(*) FROM order_offers oo
                   WHERE oo.provider_id = p.id AND oo.state = 'offered') AS active,
                EXISTS (SELECT 1 FROM order_offers oo
                        WHERE oo.order_id = $3 AND oo.provider_id = p.id) AS tried
         FROM providers p ORDER BY p.id",
    )
    .bind(station_id)
    .bind(service_code)
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    let to_u32 = |value: i64| u32::try_from(value.max(0)).unwrap_or(u32::MAX);
    rows.into_iter()
        .map(|row| {
            let lat: Option<f64> = row.try_get("lat")?;
            let lon: Option<f64> = row.try_get("lon")?;
            let location = match (lat, lon) {
                (Some(lat), Some(lon)) => GeoPoint::new(lat, lon).ok(),
                _ => None,
            };
            Ok(Candidate {
                provider_id: row.try_get("id")?,
                location,
                radius_m: to_u32(row.try_get::<i32, _>("radius_m")?.into()),
                covers_station: row.try_get("covers_station")?,
                offers_service: row.try_get("offers_service")?,
                suspended: row.try_get("suspended")?,
                open_now: open_at(
                    to_u32(row.try_get::<i32, _>("opens_minute")?.into()),
                    to_u32(row.try_get::<i32, _>("closes_minute")?.into()),
                    to_u32(row.try_get::<i32, _>("minute_of_day")?.into()),
                ),
                active_orders: to_u32(row.try_get("active")?),
                capacity: to_u32(row.try_get::<i32, _>("capacity")?.into()),
                rating_sum: to_u32(row.try_get("rating_sum")?),
                rating_count: to_u32(row.try_get("rating_count")?),
                tried: row.try_get("tried")?,
            })
        })
        .collect()
}

async fn with_names(
    conn: &mut PgConnection,
    service_code: &str,
    ranked: Vec<Suggestion>,
) -> Result<Vec<ProviderSuggestion>> {
    let mut named = Vec::with_capacity(ranked.len());
    for suggestion in ranked {
        let row = sqlx::query(
            "SELECT p.name, sv.price_fen FROM providers p
             JOIN provider_services sv ON sv.provider_id = p.id AND sv.service_code = $2
             WHERE p.id = $1",
        )
        .bind(suggestion.provider_id)
        .bind(service_code)
        .fetch_one(&mut *conn)
        .await?;
        named.push(ProviderSuggestion {
            provider_name: row.try_get("name")?,
            price_fen: row.try_get("price_fen")?,
            suggestion,
        });
    }
    Ok(named)
}

async fn check_service(conn: &mut PgConnection, service_code: &str) -> Result<()> {
    let known: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM service_items WHERE code = $1)")
            .bind(service_code)
            .fetch_one(&mut *conn)
            .await?;
    if !known {
        return Err(StoreError::Invalid(format!(
            "unknown service category '{}'",
            service_code.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

/// Offers a created order to the best provider not yet asked. Returns whom, or why nobody.
async fn offer_next(
    tx: &mut Transaction<'_, Postgres>,
    order: &mut Locked,
    policy: &ServicePolicy,
) -> Result<std::result::Result<Uuid, NoMatch>> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MATCH_LOCK)
        .execute(&mut **tx)
        .await?;
    let (_, location) = resident_place(tx, order.resident_id).await?;
    let found = candidates(tx, order.station_id, &order.service_code, Some(order.id)).await?;
    let best = match rank(&found, location, policy) {
        Ok(ranked) => ranked.into_iter().next(),
        Err(no_match) => return Ok(Err(no_match)),
    };
    let Some(best) = best else {
        return Ok(Err(NoMatch::NoProviderOffersService));
    };
    let offer_id = Uuid::new_v4();
    let to_i32 = |value: Option<u32>| value.map(|v| i32::try_from(v).unwrap_or(i32::MAX));
    sqlx::query(
        "INSERT INTO order_offers (id, order_id, provider_id, state, expires_at, distance_m,
                                   travel_minutes, in_circle)
         VALUES ($1, $2, $3, 'offered', clock_timestamp() + make_interval(secs => $4), $5, $6, $7)",
    )
    .bind(offer_id)
    .bind(order.id)
    .bind(best.provider_id)
    .bind(f64::from(policy.offer_timeout_secs))
    .bind(to_i32(best.distance_m))
    .bind(to_i32(best.travel_minutes))
    .bind(best.in_circle)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE orders SET distance_m = $2, travel_minutes = $3, in_circle = $4 WHERE id = $1",
    )
    .bind(order.id)
    .bind(to_i32(best.distance_m))
    .bind(to_i32(best.travel_minutes))
    .bind(best.in_circle)
    .execute(&mut **tx)
    .await?;
    step(
        tx,
        order,
        OrderEvent::Offer,
        Some(best.provider_id),
        None,
        json!({
            "offer_id": offer_id,
            "distance_m": best.distance_m,
            "travel_minutes": best.travel_minutes,
            "in_circle": best.in_circle,
        }),
    )
    .await?;
    notify(
        tx,
        &Notification::ProviderFeed {
            provider_id: best.provider_id,
        },
    )
    .await?;
    Ok(Ok(best.provider_id))
}

/// Closes the live offer of a provider on this order (accepted, declined, timed out,
/// withdrawn). Returns whether there was one.
async fn decide_offer(
    tx: &mut Transaction<'_, Postgres>,
    order_id: Uuid,
    provider_id: Option<Uuid>,
    state: &str,
    reason: &str,
) -> Result<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "UPDATE order_offers SET state = $3, decided_at = clock_timestamp(), reason = $4
         WHERE order_id = $1 AND state = 'offered' AND ($2::uuid IS NULL OR provider_id = $2)
         RETURNING provider_id",
    )
    .bind(order_id)
    .bind(provider_id)
    .bind(state)
    .bind(reason)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Refuses a provider acting on an order that is not theirs: offered to them (for accepting
/// or declining) or held by them (for everything after).
async fn check_offered_to(
    tx: &mut Transaction<'_, Postgres>,
    order: &Locked,
    provider_id: Uuid,
) -> Result<()> {
    let live: Option<Uuid> = sqlx::query_scalar(
        "SELECT provider_id FROM order_offers WHERE order_id = $1 AND state = 'offered'",
    )
    .bind(order.id)
    .fetch_optional(&mut **tx)
    .await?;
    if live == Some(provider_id) {
        return Ok(());
    }
    let earlier: Option<String> = sqlx::query_scalar(
        "SELECT state FROM order_offers WHERE order_id = $1 AND provider_id = $2
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(order.id)
    .bind(provider_id)
    .fetch_optional(&mut **tx)
    .await?;
    match earlier {
        Some(state) => Err(StoreError::Refused(format!(
            "the offer is no longer open: it was {state}"
        ))),
        None => Err(not_yours(order.id)),
    }
}

fn not_yours(order_id: Uuid) -> StoreError {
    StoreError::Forbidden(format!(
        "order {order_id} is not offered to or held by your organisation"
    ))
}

fn check_held_by(order: &Locked, provider_id: Uuid) -> Result<()> {
    if order.provider_id != Some(provider_id) {
        return Err(not_yours(order.id));
    }
    Ok(())
}

async fn check_staff(
    tx: &mut Transaction<'_, Postgres>,
    provider_id: Uuid,
    staff_id: Uuid,
) -> Result<String> {
    sqlx::query_scalar(
        "SELECT name FROM provider_staff WHERE id = $1 AND provider_id = $2 AND active",
    )
    .bind(staff_id)
    .bind(provider_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| {
        StoreError::Invalid(format!(
            "staff member {staff_id} is not on your organisation's active staff"
        ))
    })
}

/// Tells the resident's tablets where their order stands.
async fn tell_tablet(tx: &mut Transaction<'_, Postgres>, order_id: Uuid) -> Result<()> {
    let row = sqlx::query(
        "SELECT o.resident_id, o.state, si.name_zh, si.name_en, p.name AS provider_name,
                st.name AS staff_name, o.eta_at,
                to_char(o.eta_at AT TIME ZONE s.time_zone, 'HH24:MI') AS eta_local
         FROM orders o
         JOIN service_items si ON si.code = o.service_code
         JOIN stations s ON s.id = o.station_id
         LEFT JOIN providers p ON p.id = o.provider_id
         LEFT JOIN provider_staff st ON st.id = o.staff_id
         WHERE o.id = $1",
    )
    .bind(order_id)
    .fetch_one(&mut **tx)
    .await?;
    let state: String = row.try_get("state")?;
    let parsed = OrderState::parse(&state).unwrap_or(OrderState::Created);
    let name_zh: String = row.try_get("name_zh")?;
    let name_en: String = row.try_get("name_en")?;
    let staff_name: Option<String> = row.try_get("staff_name")?;
    let eta_local: Option<String> = row.try_get("eta_local")?;
    let (text_zh, text_en) = carebell_domain::orders::tablet_text(
        parsed,
        &name_zh,
        &name_en,
        eta_local.as_deref(),
        staff_name.as_deref(),
    );
    let payload = OrderUpdatePayload {
        order_id,
        state,
        service_name_zh: name_zh,
        service_name_en: name_en,
        provider_name: row
            .try_get::<Option<String>, _>("provider_name")?
            .unwrap_or_default(),
        staff_name: staff_name.unwrap_or_default(),
        eta_ms: row
            .try_get::<Option<DateTime<Utc>>, _>("eta_at")?
            .map(|at| at.timestamp_millis())
            .unwrap_or_default(),
        text_zh,
        text_en,
    };
    let devices: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM devices WHERE resident_id = $1 AND revoked_at IS NULL ORDER BY id",
    )
    .bind(row.try_get::<Uuid, _>("resident_id")?)
    .fetch_all(&mut **tx)
    .await?;
    for device_id in devices {
        push_order_update(tx, &device_id, &payload).await?;
    }
    Ok(())
}

async fn changed(tx: &mut Transaction<'_, Postgres>, order: &Locked) -> Result<()> {
    tell_tablet(tx, order.id).await?;
    if let Some(provider_id) = order.provider_id {
        notify(tx, &Notification::ProviderFeed { provider_id }).await?;
    }
    Ok(())
}

impl Store {
    /// The providers that could take `service_code` for this resident now, best first, or a
    /// clear reason why none can.
    pub async fn suggest_providers(
        &self,
        resident_id: Uuid,
        service_code: &str,
    ) -> Result<Vec<ProviderSuggestion>> {
        let mut conn = self.pool.acquire().await?;
        check_service(&mut conn, service_code).await?;
        let policy = read_policy(&mut conn).await?;
        let (station_id, location) = resident_place(&mut conn, resident_id).await?;
        let found = candidates(&mut conn, station_id, service_code, None).await?;
        let ranked = rank(&found, location, &policy).map_err(StoreError::NoProvider)?;
        with_names(&mut conn, service_code, ranked).await
    }

    /// Creates an order and offers it to the best provider. Refused, with nothing stored, when
    /// the category is unknown or no provider could ever serve this resident (outside every
    /// provider's coverage); when covering providers are only busy or closed, the order is
    /// created and waits.
    pub async fn create_order(&self, new: &NewOrder) -> Result<CreatedOrder> {
        too_long("the note", &new.note, MAX_NOTE_CHARS)?;
        let mut tx = self.pool.begin().await?;
        check_service(&mut tx, &new.service_code).await?;
        let policy = read_policy(&mut tx).await?;
        let (station_id, location) = resident_place(&mut tx, new.resident_id).await?;
        if let Some(call_id) = new.call_id {
            let resident: Option<Uuid> =
                sqlx::query_scalar("SELECT resident_id FROM calls WHERE id = $1")
                    .bind(call_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if resident != Some(new.resident_id) {
                return Err(StoreError::Invalid(format!(
                    "call {call_id} is not a call of this resident"
                )));
            }
        }
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MATCH_LOCK)
            .execute(&mut *tx)
            .await?;
        let found = candidates(&mut tx, station_id, &new.service_code, None).await?;
        let suggestions = match rank(&found, location, &policy) {
            Ok(ranked) => with_names(&mut tx, &new.service_code, ranked).await?,
            Err(no_match) if no_match.is_permanent() => {
                return Err(StoreError::NoProvider(no_match))
            }
            Err(_) => Vec::new(),
        };
        let order_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO orders (id, resident_id, station_id, call_id, service_code, state, note,
                                 created_by, created_at, accept_due_at)
             SELECT $1, $2, $3, $4, $5, 'created', $6, $7, now.t,
                    now.t + make_interval(secs => $8)
             FROM (SELECT clock_timestamp() AS t) now",
        )
        .bind(order_id)
        .bind(new.resident_id)
        .bind(station_id)
        .bind(new.call_id)
        .bind(&new.service_code)
        .bind(&new.note)
        .bind(new.operator_id)
        .bind(f64::from(policy.accept_sla_secs))
        .execute(&mut *tx)
        .await?;
        let mut order = Locked {
            id: order_id,
            state: OrderState::Created,
            resident_id: new.resident_id,
            station_id,
            service_code: new.service_code.clone(),
            provider_id: None,
        };
        order_event(
            &mut tx,
            "order.created",
            &order,
            None,
            new.operator_id,
            json!({ "service": new.service_code, "call_id": new.call_id, "to": "created" }),
        )
        .await?;
        let offered_to = offer_next(&mut tx, &mut order, &policy).await?.ok();
        tell_tablet(&mut tx, order_id).await?;
        tx.commit().await?;
        Ok(CreatedOrder {
            order_id,
            state: order.state,
            suggestions,
            offered_to,
        })
    }

    pub async fn order(&self, order_id: Uuid) -> Result<OrderRow> {
        sqlx::query_as::<_, OrderRow>(&format!("{ORDER_SELECT} WHERE o.id = $1"))
            .bind(order_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "order",
                id: order_id.to_string(),
            })
    }

    /// A resident's orders, newest first (at most `limit`).
    pub async fn resident_orders(&self, resident_id: Uuid, limit: i64) -> Result<Vec<OrderRow>> {
        Ok(sqlx::query_as::<_, OrderRow>(&format!(
            "{ORDER_SELECT} WHERE o.resident_id = $1 ORDER BY o.created_at DESC LIMIT $2"
        ))
        .bind(resident_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Orders not yet closed or cancelled, oldest first: the operators' work list (including
    /// completed orders waiting for their call-back).
    pub async fn open_orders(&self, limit: i64) -> Result<Vec<OrderRow>> {
        Ok(sqlx::query_as::<_, OrderRow>(&format!(
            "{ORDER_SELECT} WHERE o.state NOT IN ('closed', 'cancelled')
             ORDER BY o.created_at LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// What a provider sees: orders offered to it now, and orders it holds that are not yet
    /// closed, oldest first.
    pub async fn provider_orders(&self, provider_id: Uuid) -> Result<Vec<OrderRow>> {
        Ok(sqlx::query_as::<_, OrderRow>(&format!(
            "{ORDER_SELECT} WHERE oo.provider_id = $1
                OR (o.provider_id = $1 AND o.state NOT IN ('closed', 'cancelled'))
             ORDER BY o.created_at"
        ))
        .bind(provider_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The provider accepts an order offered to it, naming who goes and when they will be
    /// there (minutes from now).
    pub async fn accept_order(
        &self,
        provider_id: Uuid,
        order_id: Uuid,
        staff_id: Uuid,
        eta_minutes: u32,
    ) -> Result<()> {
        if !(1..=1440).contains(&eta_minutes) {
            return Err(StoreError::Invalid(format!(
                "the arrival estimate must be 1 to 1440 minutes, not {eta_minutes}"
            )));
        }
        let mut tx = self.pool.begin().await?;
        let policy = read_policy(&mut tx).await?;
        let mut order = lock_order(&mut tx, order_id).await?;
        check_offered_to(&mut tx, &order, provider_id).await?;
        order.state.apply(OrderEvent::Accept)?;
        let staff_name = check_staff(&mut tx, provider_id, staff_id).await?;
        decide_offer(&mut tx, order_id, Some(provider_id), "accepted", "").await?;
        sqlx::query(
            "UPDATE orders SET provider_id = $2, staff_id = $3, accepted_at = now.t,
                    eta_at = now.t + make_interval(mins => $4),
                    arrive_due_at = now.t + make_interval(mins => $4) + make_interval(secs => $5),
                    price_fen = (SELECT price_fen FROM provider_services
                                 WHERE provider_id = $2 AND service_code = orders.service_code)
             FROM (SELECT clock_timestamp() AS t) now
             WHERE id = $1",
        )
        .bind(order_id)
        .bind(provider_id)
        .bind(staff_id)
        .bind(i32::try_from(eta_minutes).unwrap_or(i32::MAX))
        .bind(f64::from(policy.arrival_grace_secs))
        .execute(&mut *tx)
        .await?;
        order.provider_id = Some(provider_id);
        step(
            &mut tx,
            &mut order,
            OrderEvent::Accept,
            Some(provider_id),
            None,
            json!({ "staff_id": staff_id, "staff_name": staff_name, "eta_minutes": eta_minutes }),
        )
        .await?;
        changed(&mut tx, &order).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The provider declines an order offered to it: the next provider is asked at once.
    pub async fn decline_order(
        &self,
        provider_id: Uuid,
        order_id: Uuid,
        reason: &str,
    ) -> Result<()> {
        too_long("the reason", reason, MAX_REASON_CHARS)?;
        let mut tx = self.pool.begin().await?;
        let policy = read_policy(&mut tx).await?;
        let mut order = lock_order(&mut tx, order_id).await?;
        check_offered_to(&mut tx, &order, provider_id).await?;
        decide_offer(&mut tx, order_id, Some(provider_id), "declined", reason).await?;
        step(
            &mut tx,
            &mut order,
            OrderEvent::Decline,
            Some(provider_id),
            None,
            json!({ "reason": "declined", "text": reason }),
        )
        .await?;
        notify(&mut tx, &Notification::ProviderFeed { provider_id }).await?;
        offer_next(&mut tx, &mut order, &policy).await?.ok();
        tell_tablet(&mut tx, order_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The provider sends someone else.
    pub async fn assign_staff(
        &self,
        provider_id: Uuid,
        order_id: Uuid,
        staff_id: Uuid,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let order = lock_order(&mut tx, order_id).await?;
        check_held_by(&order, provider_id)?;
        if !matches!(order.state, OrderState::Accepted | OrderState::EnRoute) {
            return Err(StoreError::Refused(format!(
                "staff can be changed only before arrival; the order is {}",
                order.state
            )));
        }
        let staff_name = check_staff(&mut tx, provider_id, staff_id).await?;
        sqlx::query("UPDATE orders SET staff_id = $2 WHERE id = $1")
            .bind(order_id)
            .bind(staff_id)
            .execute(&mut *tx)
            .await?;
        order_event(
            &mut tx,
            "order.staff_assigned",
            &order,
            Some(provider_id),
            None,
            json!({ "staff_id": staff_id, "staff_name": staff_name }),
        )
        .await?;
        changed(&mut tx, &order).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The provider reports progress on an order it holds: en route, arrived (check-in),
    /// completed. Completion charges the order to the ledger and puts a call-back to the senior
    /// in the operators' queue.
    pub async fn report_progress(
        &self,
        provider_id: Uuid,
        order_id: Uuid,
        report: ProgressReport,
    ) -> Result<()> {
        if let ProgressReport::Completed {
            notes,
            duration_minutes,
        } = &report
        {
            too_long("the completion notes", notes, MAX_NOTE_CHARS)?;
            if *duration_minutes > 1440 {
                return Err(StoreError::Invalid(format!(
                    "a visit lasts at most 1440 minutes, not {duration_minutes}"
                )));
            }
        }
        let mut tx = self.pool.begin().await?;
        let mut order = lock_order(&mut tx, order_id).await?;
        check_held_by(&order, provider_id)?;
        match report {
            ProgressReport::EnRoute => {
                step(
                    &mut tx,
                    &mut order,
                    OrderEvent::Depart,
                    Some(provider_id),
                    None,
                    json!({}),
                )
                .await?;
            }
            ProgressReport::Arrived { position } => {
                order.state.apply(OrderEvent::Arrive)?;
                let row = sqlx::query(
                    "UPDATE orders SET arrived_at = clock_timestamp(), arrived_lat = $2,
                            arrived_lon = $3
                     WHERE id = $1
                     RETURNING arrived_at <= arrive_due_at AS on_time,
                               (extract(epoch FROM arrived_at - accepted_at) * 1000)::bigint AS after_ms",
                )
                .bind(order_id)
                .bind(position.map(|p| p.lat))
                .bind(position.map(|p| p.lon))
                .fetch_one(&mut *tx)
                .await?;
                let (_, home) = resident_place(&mut tx, order.resident_id).await?;
                let from_home_m = match (position, home) {
                    (Some(at), Some(home)) => Some(at.distance_m(home)),
                    _ => None,
                };
                step(
                    &mut tx,
                    &mut order,
                    OrderEvent::Arrive,
                    Some(provider_id),
                    None,
                    json!({
                        "on_time": row.try_get::<Option<bool>, _>("on_time")?.unwrap_or(false),
                        "after_accept_ms": row.try_get::<Option<i64>, _>("after_ms")?,
                        "position": position.map(|p| [p.lat, p.lon]),
                        "from_home_m": from_home_m,
                    }),
                )
                .await?;
            }
            ProgressReport::Completed {
                notes,
                duration_minutes,
            } => {
                order.state.apply(OrderEvent::Complete)?;
                sqlx::query(
                    "UPDATE orders SET completed_at = clock_timestamp(), completion_notes = $2,
                            duration_minutes = $3
                     WHERE id = $1",
                )
                .bind(order_id)
                .bind(&notes)
                .bind(i32::try_from(duration_minutes).unwrap_or(i32::MAX))
                .execute(&mut *tx)
                .await?;
                let charge = crate::ledger::charge_order(&mut tx, order_id).await?;
                step(
                    &mut tx,
                    &mut order,
                    OrderEvent::Complete,
                    Some(provider_id),
                    None,
                    json!({
                        "duration_minutes": duration_minutes,
                        "price_fen": charge.price_fen,
                        "subsidy_fen": charge.subsidy_fen,
                        "resident_fen": charge.resident_fen,
                    }),
                )
                .await?;
                queue_callback(&mut tx, &order).await?;
            }
        }
        changed(&mut tx, &order).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An operator cancels an order (any time before completion) with a reason.
    pub async fn cancel_order(
        &self,
        order_id: Uuid,
        operator_id: Uuid,
        reason: &str,
    ) -> Result<()> {
        if reason.trim().is_empty() {
            return Err(StoreError::Invalid(
                "a cancellation needs a reason".to_owned(),
            ));
        }
        too_long("the reason", reason, MAX_REASON_CHARS)?;
        let mut tx = self.pool.begin().await?;
        let mut order = lock_order(&mut tx, order_id).await?;
        order.state.apply(OrderEvent::Cancel)?;
        let withdrawn_from =
            decide_offer(&mut tx, order_id, None, "withdrawn", "cancelled").await?;
        sqlx::query(
            "UPDATE orders SET cancelled_at = clock_timestamp(), cancel_reason = $2 WHERE id = $1",
        )
        .bind(order_id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        let provider = order.provider_id.or(withdrawn_from);
        step(
            &mut tx,
            &mut order,
            OrderEvent::Cancel,
            provider,
            Some(operator_id),
            json!({ "reason": reason }),
        )
        .await?;
        changed(&mut tx, &order).await?;
        if let Some(provider_id) = withdrawn_from {
            notify(&mut tx, &Notification::ProviderFeed { provider_id }).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// An operator records the call-back (回访) to the senior after the service. Also done when
    /// the operator ends the queued call-back call.
    pub async fn record_order_callback(
        &self,
        order_id: Uuid,
        operator_id: Uuid,
        note: &str,
    ) -> Result<()> {
        too_long("the note", note, MAX_NOTE_CHARS)?;
        let mut tx = self.pool.begin().await?;
        let mut order = lock_order(&mut tx, order_id).await?;
        called_back(&mut tx, &mut order, operator_id, note).await?;
        let queued: Option<(String, String)> = sqlx::query_as(
            "SELECT c.device_id, c.request_id FROM orders o JOIN calls c ON c.id = o.callback_call_id
             WHERE o.id = $1 AND c.state = 'queued'",
        )
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        // The queued call-back call is no longer needed.
        if let Some((device_id, request_id)) = queued {
            self.cancel_call(&device_id, &request_id).await?;
        }
        Ok(())
    }

    /// The senior rates the service from the tablet (1 to 5 stars); the order closes. A rating
    /// resent after a lost acknowledgement is accepted again without counting twice. A provider
    /// whose ratings fall below the policy's threshold is suspended.
    pub async fn rate_order(&self, device_id: &str, order_id: Uuid, stars: u32) -> Result<()> {
        if !(1..=5).contains(&stars) {
            return Err(StoreError::Invalid(format!(
                "a rating is 1 to 5 stars, not {stars}"
            )));
        }
        let mut tx = self.pool.begin().await?;
        let policy = read_policy(&mut tx).await?;
        let mut order = lock_order(&mut tx, order_id).await?;
        let owner: Option<Uuid> =
            sqlx::query_scalar("SELECT resident_id FROM devices WHERE id = $1")
                .bind(device_id)
                .fetch_optional(&mut *tx)
                .await?;
        if owner != Some(order.resident_id) {
            return Err(StoreError::NotFound {
                what: "order",
                id: order_id.to_string(),
            });
        }
        let previous: Option<i16> = sqlx::query_scalar("SELECT rating FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(&mut *tx)
            .await?;
        if let Some(previous) = previous {
            if i64::from(previous) == i64::from(stars) {
                return Ok(());
            }
            return Err(StoreError::Refused(format!(
                "this order was already rated {previous} stars"
            )));
        }
        let provider_id = order
            .provider_id
            .ok_or_else(|| StoreError::Refused("the order has no provider to rate".to_owned()))?;
        order.state.apply(OrderEvent::Rate)?;
        sqlx::query("UPDATE orders SET rating = $2, rated_at = clock_timestamp() WHERE id = $1")
            .bind(order_id)
            .bind(i16::try_from(stars).unwrap_or(5))
            .execute(&mut *tx)
            .await?;
        let figures = sqlx::query(
            "UPDATE providers SET rating_sum = rating_sum + $2, rating_count = rating_count + 1
             WHERE id = $1 RETURNING rating_sum, rating_count, suspended_at IS NOT NULL AS suspended",
        )
        .bind(provider_id)
        .bind(i64::from(stars))
        .fetch_one(&mut *tx)
        .await?;
        step(
            &mut tx,
            &mut order,
            OrderEvent::Rate,
            Some(provider_id),
            None,
            json!({ "stars": stars, "device_id": device_id }),
        )
        .await?;
        let sum = u32::try_from(figures.try_get::<i64, _>("rating_sum")?).unwrap_or(u32::MAX);
        let count = u32::try_from(figures.try_get::<i64, _>("rating_count")?).unwrap_or(u32::MAX);
        if !figures.try_get::<bool, _>("suspended")? && below_threshold(sum, count, &policy) {
            let reason = format!(
                "average rating {:.2} below {:.2} after {count} ratings",
                f64::from(sum) / f64::from(count.max(1)),
                f64::from(policy.min_rating_centi) / 100.0
            );
            suspend(&mut tx, provider_id, &reason, &order).await?;
        }
        close(&mut tx, &mut order, "rated").await?;
        tx.commit().await?;
        Ok(())
    }

    /// A supervisor reinstates a suspended provider: it receives offers again.
    pub async fn reinstate_provider(&self, provider_id: Uuid, operator_id: Uuid) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE providers SET suspended_at = NULL, suspended_reason = ''
             WHERE id = $1 AND suspended_at IS NOT NULL",
        )
        .bind(provider_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM providers WHERE id = $1)")
                    .bind(provider_id)
                    .fetch_one(&mut *tx)
                    .await?;
            return Err(if exists {
                StoreError::Refused("the provider is not suspended".to_owned())
            } else {
                StoreError::NotFound {
                    what: "provider",
                    id: provider_id.to_string(),
                }
            });
        }
        sqlx::query(
            "INSERT INTO events (kind, operator_id, detail) VALUES ('provider.reinstated', $1, $2)",
        )
        .bind(operator_id)
        .bind(json!({ "provider_id": provider_id }))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Times out unanswered offers (the next provider is asked), offers waiting orders again,
    /// escalates orders past their SLA to their station, closes orders the senior never rated.
    /// `at` is the instant to judge deadlines by (None: the database clock); tests pass a later
    /// one instead of waiting. Safe on every node at once.
    pub async fn sweep_orders(&self, at: Option<DateTime<Utc>>) -> Result<OrderSweep> {
        let mut report = OrderSweep::default();
        let policy = self.service_policy().await?;
        let expired: Vec<Uuid> = sqlx::query_scalar(
            "SELECT order_id FROM order_offers
             WHERE state = 'offered' AND expires_at <= coalesce($1, now()) LIMIT 100",
        )
        .bind(at)
        .fetch_all(&self.pool)
        .await?;
        for order_id in expired {
            let mut tx = self.pool.begin().await?;
            let mut order = lock_order(&mut tx, order_id).await?;
            let timed_out: Option<Uuid> = sqlx::query_scalar(
                "UPDATE order_offers SET state = 'timed_out', decided_at = clock_timestamp()
                 WHERE order_id = $1 AND state = 'offered' AND expires_at <= coalesce($2, now())
                 RETURNING provider_id",
            )
            .bind(order_id)
            .bind(at)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(provider_id) = timed_out else {
                continue;
            };
            step(
                &mut tx,
                &mut order,
                OrderEvent::Decline,
                Some(provider_id),
                None,
                json!({ "reason": "timed_out" }),
            )
            .await?;
            notify(&mut tx, &Notification::ProviderFeed { provider_id }).await?;
            if offer_next(&mut tx, &mut order, &policy).await?.is_ok() {
                report.offered += 1;
            }
            tx.commit().await?;
            report.offers_timed_out += 1;
        }

        // Orders waiting for a free provider: try again (each at most every 30 seconds once it
        // has been found waiting).
        let waiting: Vec<Uuid> = sqlx::query_scalar(
            "SELECT o.id FROM orders o WHERE o.state = 'created'
               AND NOT EXISTS (SELECT 1 FROM events e WHERE e.order_id = o.id
                               AND e.kind = 'order.waiting'
                               AND e.at > clock_timestamp() - interval '30 seconds')
             ORDER BY o.created_at LIMIT 20",
        )
        .fetch_all(&self.pool)
        .await?;
        for order_id in waiting {
            let mut tx = self.pool.begin().await?;
            let mut order = lock_order(&mut tx, order_id).await?;
            if order.state != OrderState::Created {
                continue;
            }
            match offer_next(&mut tx, &mut order, &policy).await? {
                Ok(_) => {
                    report.offered += 1;
                    tell_tablet(&mut tx, order_id).await?;
                }
                Err(no_match) => {
                    order_event(
                        &mut tx,
                        "order.waiting",
                        &order,
                        None,
                        None,
                        json!({ "why": no_match.to_string() }),
                    )
                    .await?;
                }
            }
            tx.commit().await?;
        }

        for (column, reason, states) in [
            (
                "accept_escalated_at",
                "not_accepted",
                "('created', 'offered')",
            ),
            (
                "arrival_escalated_at",
                "not_arrived",
                "('accepted', 'en_route')",
            ),
        ] {
            let due_column = if reason == "not_accepted" {
                "accept_due_at"
            } else {
                "arrive_due_at"
            };
            let due: Vec<Uuid> = sqlx::query_scalar(&format!(
                "SELECT id FROM orders WHERE state IN {states} AND {column} IS NULL
                   AND {due_column} <= coalesce($1, now()) LIMIT 100"
            ))
            .bind(at)
            .fetch_all(&self.pool)
            .await?;
            for order_id in due {
                let mut tx = self.pool.begin().await?;
                let order = lock_order(&mut tx, order_id).await?;
                let due_at: Option<DateTime<Utc>> = sqlx::query_scalar(&format!(
                    "UPDATE orders SET {column} = coalesce($2, now())
                     WHERE id = $1 AND state IN {states} AND {column} IS NULL
                       AND {due_column} <= coalesce($2, now())
                     RETURNING {due_column}"
                ))
                .bind(order_id)
                .bind(at)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(due_at) = due_at else {
                    continue;
                };
                order_event(
                    &mut tx,
                    "order.escalated",
                    &order,
                    order.provider_id,
                    None,
                    json!({ "reason": reason, "due_at": due_at, "judged_at": at }),
                )
                .await?;
                notify(
                    &mut tx,
                    &Notification::OrderEscalated {
                        order_id,
                        station_id: order.station_id,
                        reason: reason.to_owned(),
                    },
                )
                .await?;
                tx.commit().await?;
                report.escalated += 1;
            }
        }

        let unrated: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM orders WHERE state = 'called_back'
               AND called_back_at + make_interval(secs => $2) <= coalesce($1, now()) LIMIT 100",
        )
        .bind(at)
        .bind(f64::from(policy.rating_window_secs))
        .fetch_all(&self.pool)
        .await?;
        for order_id in unrated {
            let mut tx = self.pool.begin().await?;
            let mut order = lock_order(&mut tx, order_id).await?;
            if order.state != OrderState::CalledBack {
                continue;
            }
            close(&mut tx, &mut order, "not_rated").await?;
            tx.commit().await?;
            report.closed_unrated += 1;
        }
        Ok(report)
    }
}

/// Puts the call-back to the senior in the operators' queue (as a call-back item of the
/// resident's tablet), linked to the order.
async fn queue_callback(tx: &mut Transaction<'_, Postgres>, order: &Locked) -> Result<()> {
    let device: Option<String> = sqlx::query_scalar(
        "SELECT id FROM devices WHERE resident_id = $1 AND revoked_at IS NULL
         ORDER BY last_seen_at DESC NULLS LAST, id LIMIT 1",
    )
    .bind(order.resident_id)
    .fetch_optional(&mut **tx)
    .await?;
    // A resident without a tablet is called back by telephone: the order waits on its work
    // list (Store::open_orders) for the operator to record it.
    let Some(device_id) = device else {
        return Ok(());
    };
    let call_of: Option<Uuid> = sqlx::query_scalar("SELECT call_id FROM orders WHERE id = $1")
        .bind(order.id)
        .fetch_one(&mut **tx)
        .await?;
    let created = crate::calls::insert_call(
        tx,
        &device_id,
        &format!("order-callback:{}", order.id),
        CallKind::Callback,
        call_of,
        false,
    )
    .await?;
    sqlx::query("UPDATE orders SET callback_call_id = $2 WHERE id = $1")
        .bind(order.id)
        .bind(created.call_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn called_back(
    tx: &mut Transaction<'_, Postgres>,
    order: &mut Locked,
    operator_id: Uuid,
    note: &str,
) -> Result<()> {
    order.state.apply(OrderEvent::CallBack)?;
    sqlx::query(
        "UPDATE orders SET called_back_at = clock_timestamp(), callback_note = $2 WHERE id = $1",
    )
    .bind(order.id)
    .bind(note)
    .execute(&mut **tx)
    .await?;
    let provider_id = order.provider_id;
    step(
        tx,
        order,
        OrderEvent::CallBack,
        provider_id,
        Some(operator_id),
        json!({ "note": note }),
    )
    .await?;
    changed(tx, order).await
}

/// The operator ended the order's call-back call: the call-back is done.
pub(crate) async fn callback_call_ended(
    tx: &mut Transaction<'_, Postgres>,
    call_id: Uuid,
    operator_id: Uuid,
    note: &str,
) -> Result<()> {
    let order_id: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE callback_call_id = $1 AND state = 'completed'",
    )
    .bind(call_id)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(order_id) = order_id {
        let mut order = lock_order(tx, order_id).await?;
        if order.state == OrderState::Completed {
            called_back(tx, &mut order, operator_id, note).await?;
        }
    }
    Ok(())
}

async fn close(tx: &mut Transaction<'_, Postgres>, order: &mut Locked, why: &str) -> Result<()> {
    sqlx::query("UPDATE orders SET closed_at = clock_timestamp() WHERE id = $1")
        .bind(order.id)
        .execute(&mut **tx)
        .await?;
    let provider_id = order.provider_id;
    step(
        tx,
        order,
        OrderEvent::Close,
        provider_id,
        None,
        json!({ "why": why }),
    )
    .await?;
    changed(tx, order).await
}

async fn suspend(
    tx: &mut Transaction<'_, Postgres>,
    provider_id: Uuid,
    reason: &str,
    order: &Locked,
) -> Result<()> {
    sqlx::query(
        "UPDATE providers SET suspended_at = clock_timestamp(), suspended_reason = $2 WHERE id = $1",
    )
    .bind(provider_id)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    order_event(
        tx,
        "provider.suspended",
        order,
        Some(provider_id),
        None,
        json!({ "reason": reason }),
    )
    .await
}
