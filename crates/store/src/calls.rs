//! Calls, alarms and offers: the transactions that decide who is offered what and who wins.
//!
//! Lock order, everywhere: the call row first, then its offers, then operator rows. Every path
//! that changes an offer locks its call first, so an acceptance and a ring timeout for the same
//! offer are serialized by PostgreSQL and exactly one of them takes effect.

use carebell_domain::{CallKind, CallState, Disposition};
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{Postgres, Row, Transaction};
use std::time::Duration;
use uuid::Uuid;

use crate::outbox::{push_outbox, CallUpdatePayload};
use crate::{append_event, notify, Notification, Result, Store, StoreError};

/// The result of a (possibly repeated) call request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedCall {
    pub call_id: Uuid,
    pub state: CallState,
    /// False when the request was a resend of one already stored.
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOutcome {
    pub call_id: Uuid,
    /// The call's state after the cancel: `abandoned`, or what it already was when too late.
    pub state: CallState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmOutcome {
    pub alarm_row_id: Uuid,
    pub created: bool,
    pub call_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedCall {
    pub call_id: Uuid,
    pub device_id: String,
    pub resident_id: Uuid,
    /// `call`, `emergency`, `technical` or `callback`.
    pub kind: String,
    /// From the call's creation to this acceptance (by the database's clock).
    pub waited_ms: i64,
    /// Whether the call had been answered before (a transfer).
    pub answered_before: bool,
}

/// One offer made during a dispatch round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOffer {
    pub offer_id: Uuid,
    pub call_id: Uuid,
    pub operator_id: Uuid,
}

/// What one dispatch round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchRound {
    pub expired: Vec<Uuid>,
    pub offered: Vec<NewOffer>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallRow {
    pub id: Uuid,
    pub device_id: String,
    pub resident_id: Uuid,
    pub request_id: String,
    pub kind: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    pub answered_by: Option<Uuid>,
    pub ended_at: Option<DateTime<Utc>>,
    pub disposition: Option<String>,
}

/// An offer with what a console needs to show it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OfferRow {
    pub offer_id: Uuid,
    pub call_id: Uuid,
    pub operator_id: Uuid,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub resident_id: Uuid,
    pub resident_name: String,
    pub device_id: String,
    pub kind: String,
    pub call_created_at: DateTime<Utc>,
    pub queue_id: String,
    /// The call's next routing deadline (for an emergency not yet escalated: its escalation).
    pub deadline_at: Option<DateTime<Utc>>,
    pub overflowed: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub call_id: Option<Uuid>,
    pub offer_id: Option<Uuid>,
    pub operator_id: Option<Uuid>,
    pub device_id: Option<String>,
    pub detail: serde_json::Value,
}

const OFFER_COLUMNS: &str = "o.id AS offer_id, o.call_id, o.operator_id, o.state, o.created_at,
     o.expires_at, o.decided_at, c.resident_id, r.full_name AS resident_name, c.device_id,
     c.kind, c.created_at AS call_created_at, c.queue_id, c.deadline_at, c.overflowed
     FROM offers o JOIN calls c ON c.id = o.call_id JOIN residents r ON r.id = c.resident_id";

fn parse_state(raw: &str) -> Result<CallState> {
    Ok(raw.parse::<CallState>()?)
}

/// Inserts a call unless the device already made this request; returns the call either way.
/// The call enters the queue the rules in force give its kind, with its first deadline.
pub(crate) async fn insert_call(
    tx: &mut Transaction<'_, Postgres>,
    device_id: &str,
    request_id: &str,
    kind: CallKind,
    callback_of: Option<Uuid>,
    announce: bool,
) -> Result<CreatedCall> {
    let resident = sqlx::query(
        "SELECT d.resident_id, r.dialect, r.station_id::text AS station
         FROM devices d JOIN residents r ON r.id = d.resident_id WHERE d.id = $1",
    )
    .bind(device_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| StoreError::NotFound {
        what: "device",
        id: device_id.to_owned(),
    })?;
    let resident_id: Uuid = resident.try_get("resident_id")?;
    let rules = crate::routing::active_rules(tx).await?;
    let queue = rules.queue_for(kind).id.clone();
    let inserted: Option<Uuid> = sqlx::query(
        "INSERT INTO calls (id, device_id, resident_id, request_id, kind, priority, state, queue_id,
                            queued_at, created_at, deadline_at, dialect, station, callback_of, announce)
         VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, clock_timestamp(), clock_timestamp(),
                 clock_timestamp() + make_interval(secs => $8), $9, $10, $11, $12)
         ON CONFLICT (device_id, request_id) DO NOTHING
         RETURNING id",
    )
    .bind(Uuid::new_v4())
    .bind(device_id)
    .bind(resident_id)
    .bind(request_id)
    .bind(kind.as_str())
    .bind(i16::try_from(kind.base_priority() / 10).unwrap_or(i16::MAX))
    .bind(&queue)
    .bind(crate::routing::deadline_secs(&rules, &queue, 0))
    .bind(resident.try_get::<String, _>("dialect")?)
    .bind(resident.try_get::<String, _>("station")?)
    .bind(callback_of)
    .bind(announce)
    .fetch_optional(&mut **tx)
    .await?
    .map(|row| row.try_get("id"))
    .transpose()?;

    let Some(call_id) = inserted else {
        let row =
            sqlx::query("SELECT id, state FROM calls WHERE device_id = $1 AND request_id = $2")
                .bind(device_id)
                .bind(request_id)
                .fetch_one(&mut **tx)
                .await?;
        return Ok(CreatedCall {
            call_id: row.try_get("id")?,
            state: parse_state(row.try_get("state")?)?,
            created: false,
        });
    };

    append_event(
        tx,
        "call.created",
        Some(call_id),
        None,
        None,
        Some(device_id),
        json!({ "kind": kind.as_str(), "queue": queue, "request_id": request_id, "resident_id": resident_id, "callback_of": callback_of }),
    )
    .await?;
    push_outbox(
        tx,
        device_id,
        &CallUpdatePayload::new(request_id, call_id, CallState::Queued),
    )
    .await?;
    notify(tx, &Notification::Dispatch).await?;
    Ok(CreatedCall {
        call_id,
        state: CallState::Queued,
        created: true,
    })
}

/// Counts an offer that rang out; pauses the operator after `max_misses` in a row.
async fn record_miss(
    tx: &mut Transaction<'_, Postgres>,
    operator_id: Uuid,
    max_misses: i32,
) -> Result<()> {
    let Some(row) =
        sqlx::query("SELECT status, missed_offers FROM operators WHERE id = $1 FOR UPDATE")
            .bind(operator_id)
            .fetch_optional(&mut **tx)
            .await?
    else {
        return Ok(());
    };
    let status: String = row.try_get("status")?;
    let misses = row.try_get::<i32, _>("missed_offers")?.saturating_add(1);
    // Only an available operator is paused (one who went away or is on a call is not).
    let paused = misses >= max_misses && status == "available";
    sqlx::query(
        "UPDATE operators SET missed_offers = $2,
                status = CASE WHEN $3 THEN 'paused' ELSE status END,
                status_reason = CASE WHEN $3 THEN 'missed offers' ELSE status_reason END,
                status_since = CASE WHEN $3 THEN clock_timestamp() ELSE status_since END
         WHERE id = $1",
    )
    .bind(operator_id)
    .bind(misses)
    .bind(paused)
    .execute(&mut **tx)
    .await?;
    if paused {
        append_event(
            tx,
            "operator.status",
            None,
            None,
            Some(operator_id),
            None,
            json!({ "from": "available", "to": "paused", "reason": "missed offers" }),
        )
        .await?;
        notify(
            tx,
            &Notification::OperatorStatus {
                operator_id,
                status: "paused".to_owned(),
                reason: format!("{max_misses} offers in a row were not answered"),
            },
        )
        .await?;
    }
    Ok(())
}

/// What an alarm puts in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Raise {
    Nothing,
    /// An item the device is told about (its own alarms).
    Item(CallKind),
}

/// Inserts an alarm unless the device already raised this id (then returns the stored one,
/// provided the content matches).
pub(crate) async fn insert_alarm(
    tx: &mut Transaction<'_, Postgres>,
    device_id: &str,
    alarm_id: &str,
    kind: &str,
    raised_at: Option<DateTime<Utc>>,
    detail: &str,
    raise: Raise,
) -> Result<AlarmOutcome> {
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO alarms (id, device_id, alarm_id, kind, raised_at, detail)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (device_id, alarm_id) DO NOTHING
         RETURNING id",
    )
    .bind(Uuid::new_v4())
    .bind(device_id)
    .bind(alarm_id)
    .bind(kind)
    .bind(raised_at)
    .bind(detail)
    .fetch_optional(&mut **tx)
    .await
    .map_err(|error| match error.as_database_error() {
        Some(db) if db.is_foreign_key_violation() => StoreError::NotFound {
            what: "device",
            id: device_id.to_owned(),
        },
        _ => StoreError::Database(error),
    })?;

    let Some(alarm_row_id) = inserted else {
        let row = sqlx::query(
            "SELECT id, call_id, kind, detail, raised_at FROM alarms WHERE device_id = $1 AND alarm_id = $2",
        )
        .bind(device_id)
        .bind(alarm_id)
        .fetch_one(&mut **tx)
        .await?;
        let same = row.try_get::<String, _>("kind")? == kind
            && row.try_get::<String, _>("detail")? == detail
            && row.try_get::<Option<DateTime<Utc>>, _>("raised_at")? == raised_at;
        if !same {
            return Err(StoreError::Refused(format!(
                "alarm id '{alarm_id}' was already used for a different alarm; the first one stands"
            )));
        }
        return Ok(AlarmOutcome {
            alarm_row_id: row.try_get("id")?,
            created: false,
            call_id: row.try_get("call_id")?,
        });
    };

    append_event(
        tx,
        "alarm.raised",
        None,
        None,
        None,
        Some(device_id),
        json!({ "alarm_id": alarm_id, "kind": kind, "raised_at": raised_at }),
    )
    .await?;
    let mut call_id = None;
    if let Raise::Item(kind) = raise {
        // ':' is outside the device's request id alphabet, so an alarm's call can never
        // collide with a call the device requested.
        let request_id = format!("alarm:{alarm_id}");
        let call = insert_call(tx, device_id, &request_id, kind, None, true).await?;
        sqlx::query("UPDATE alarms SET call_id = $1 WHERE id = $2")
            .bind(call.call_id)
            .bind(alarm_row_id)
            .execute(&mut **tx)
            .await?;
        call_id = Some(call.call_id);
    }
    Ok(AlarmOutcome {
        alarm_row_id,
        created: true,
        call_id,
    })
}

/// Records the end of one live offer (whose call the caller has locked) and tells its operator.
async fn offer_closed(
    tx: &mut Transaction<'_, Postgres>,
    event_kind: &str,
    offer_id: Uuid,
    call_id: Uuid,
    operator_id: Uuid,
    reason: &str,
) -> Result<()> {
    append_event(
        tx,
        event_kind,
        Some(call_id),
        Some(offer_id),
        Some(operator_id),
        None,
        json!({ "reason": reason }),
    )
    .await?;
    notify(
        tx,
        &Notification::OfferWithdrawn {
            offer_id,
            operator_id,
            call_id,
            reason: reason.to_owned(),
        },
    )
    .await
}

/// Puts a locked call back in the queue once nothing rings for it any more (with ring-all,
/// other offers may still ring).
async fn requeue_if_silent(tx: &mut Transaction<'_, Postgres>, call_id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE calls SET state = 'queued' WHERE id = $1 AND state = 'offered'
         AND NOT EXISTS (SELECT 1 FROM offers WHERE call_id = $1 AND state = 'offered')",
    )
    .bind(call_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Withdraws the live offers of locked calls (all of them, or only `only_operator`'s),
/// telling each operator why.
pub(crate) async fn withdraw_offers(
    tx: &mut Transaction<'_, Postgres>,
    call_ids: &[Uuid],
    only_operator: Option<Uuid>,
    reason: &str,
) -> Result<()> {
    let withdrawn = sqlx::query(
        "UPDATE offers SET state = 'withdrawn', reason = $3, decided_at = clock_timestamp()
         WHERE call_id = ANY($1) AND state = 'offered' AND ($2::uuid IS NULL OR operator_id = $2)
         RETURNING id, operator_id, call_id",
    )
    .bind(call_ids)
    .bind(only_operator)
    .bind(reason)
    .fetch_all(&mut **tx)
    .await?;
    for row in withdrawn {
        let offer_id: Uuid = row.try_get("id")?;
        let operator_id: Uuid = row.try_get("operator_id")?;
        let call_id: Uuid = row.try_get("call_id")?;
        offer_closed(
            tx,
            "offer.withdrawn",
            offer_id,
            call_id,
            operator_id,
            reason,
        )
        .await?;
    }
    Ok(())
}

impl Store {
    /// Stores a call request idempotently; the caller acknowledges the device only after this
    /// returns.
    pub async fn create_call(
        &self,
        device_id: &str,
        request_id: &str,
        kind: CallKind,
    ) -> Result<CreatedCall> {
        let mut tx = self.pool.begin().await?;
        let created = insert_call(&mut tx, device_id, request_id, kind, None, true).await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Stores an alarm idempotently by the device's own alarm id. When `raise` names a kind, the
    /// alarm also queues an item of that kind, in the same transaction. The same id resent with
    /// different content is refused, not silently taken for the first.
    pub async fn record_alarm(
        &self,
        device_id: &str,
        alarm_id: &str,
        kind: &str,
        raised_at: Option<DateTime<Utc>>,
        detail: &str,
        raise: Option<CallKind>,
    ) -> Result<AlarmOutcome> {
        let mut tx = self.pool.begin().await?;
        let raise = raise.map_or(Raise::Nothing, Raise::Item);
        let outcome =
            insert_alarm(&mut tx, device_id, alarm_id, kind, raised_at, detail, raise).await;
        match outcome {
            Ok(outcome) => {
                tx.commit().await?;
                Ok(outcome)
            }
            Err(error) => {
                tx.rollback().await?;
                Err(error)
            }
        }
    }

    /// The senior cancelled before an answer: the call is abandoned and its offers withdrawn.
    /// Too late (already answered or finished) leaves the call as it is.
    pub async fn cancel_call(&self, device_id: &str, request_id: &str) -> Result<CancelOutcome> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT id, state, kind, answered_at IS NOT NULL AS answered_before,
                    (extract(epoch FROM clock_timestamp() - created_at) * 1000)::bigint AS wait_ms
             FROM calls WHERE device_id = $1 AND request_id = $2 FOR UPDATE",
        )
        .bind(device_id)
        .bind(request_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "call request",
            id: request_id.to_owned(),
        })?;
        let call_id: Uuid = row.try_get("id")?;
        let state = parse_state(row.try_get("state")?)?;
        let kind: String = row.try_get("kind")?;
        // A call that was answered once (and is now being transferred) is not abandoned: the
        // senior has spoken to someone, and the operators finish it.
        let answered_before: bool = row.try_get("answered_before")?;
        if answered_before || state.transition(CallState::Abandoned).is_err() {
            tx.commit().await?;
            return Ok(CancelOutcome { call_id, state });
        }
        withdraw_offers(&mut tx, &[call_id], None, "cancelled").await?;
        sqlx::query(
            "UPDATE calls SET state = 'abandoned', ended_at = clock_timestamp() WHERE id = $1",
        )
        .bind(call_id)
        .execute(&mut *tx)
        .await?;
        crate::family::stop_cascade(&mut tx, &[call_id]).await?;
        append_event(
            &mut tx,
            "call.abandoned",
            Some(call_id),
            None,
            None,
            Some(device_id),
            json!({ "previous_state": state.as_str(), "kind": kind, "wait_ms": row.try_get::<i64, _>("wait_ms")? }),
        )
        .await?;
        // A senior who hung up before an answer is called back (回访), unless this was itself
        // a call-back.
        if kind != CallKind::Callback.as_str() {
            insert_call(
                &mut tx,
                device_id,
                &format!("callback:{call_id}"),
                CallKind::Callback,
                Some(call_id),
                true,
            )
            .await?;
        }
        push_outbox(
            &mut tx,
            device_id,
            &CallUpdatePayload::new(request_id, call_id, CallState::Abandoned).because("cancelled"),
        )
        .await?;
        notify(
            &mut tx,
            &Notification::CallChanged {
                call_id,
                operator_id: None,
                state: CallState::Abandoned.as_str().to_owned(),
                disposition: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(CancelOutcome {
            call_id,
            state: CallState::Abandoned,
        })
    }

    /// Expires offers whose ring timeout has passed (database clock), putting their calls back in
    /// the queue. Safe to run on every node at once.
    pub async fn expire_offers(&self, limit: i64) -> Result<Vec<Uuid>> {
        let mut tx = self.pool.begin().await?;
        let max_misses = i32::try_from(
            crate::routing::active_rules(&mut tx)
                .await?
                .rules()
                .max_consecutive_misses,
        )
        .unwrap_or(i32::MAX);
        let due = sqlx::query(
            "SELECT o.id, o.call_id, o.operator_id
             FROM offers o JOIN calls c ON c.id = o.call_id
             WHERE o.state = 'offered' AND o.expires_at <= clock_timestamp()
             ORDER BY o.expires_at
             LIMIT $1
             FOR UPDATE OF c SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut expired = Vec::with_capacity(due.len());
        for row in due {
            let offer_id: Uuid = row.try_get("id")?;
            let call_id: Uuid = row.try_get("call_id")?;
            let operator_id: Uuid = row.try_get("operator_id")?;
            // The call is locked now; re-check the offer so that an acceptance that committed
            // first keeps its win.
            let changed = sqlx::query(
                "UPDATE offers SET state = 'expired', decided_at = clock_timestamp()
                 WHERE id = $1 AND state = 'offered' AND expires_at <= clock_timestamp()",
            )
            .bind(offer_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                continue;
            }
            requeue_if_silent(&mut tx, call_id).await?;
            record_miss(&mut tx, operator_id, max_misses).await?;
            offer_closed(
                &mut tx,
                "offer.expired",
                offer_id,
                call_id,
                operator_id,
                "expired",
            )
            .await?;
            expired.push(offer_id);
        }
        if !expired.is_empty() {
            notify(&mut tx, &Notification::Dispatch).await?;
        }
        tx.commit().await?;
        Ok(expired)
    }

    /// One dispatch round: expire what has rung out, act on deadlines (widening, overflow,
    /// alerts, end of wrap-up), then match waiting items to free operators.
    pub async fn dispatch_round(&self, ring_timeout: Duration) -> Result<DispatchRound> {
        let expired = self.expire_offers(100).await?;
        self.sweep_deadlines(100).await?;
        let offered = self.match_round(ring_timeout).await?;
        Ok(DispatchRound { expired, offered })
    }

    /// An operator accepts an offer. Exactly one of this and the offer's ring timeout wins: the
    /// acceptance holds only if the offer is still open by the database clock.
    pub async fn accept_offer(&self, offer_id: Uuid, operator_id: Uuid) -> Result<AcceptedCall> {
        let mut tx = self.pool.begin().await?;
        let offer = sqlx::query("SELECT call_id, operator_id FROM offers WHERE id = $1")
            .bind(offer_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "offer",
                id: offer_id.to_string(),
            })?;
        let call_id: Uuid = offer.try_get("call_id")?;
        if offer.try_get::<Uuid, _>("operator_id")? != operator_id {
            return Err(StoreError::NotYourOffer);
        }
        let call = sqlx::query(
            "SELECT device_id, resident_id, request_id, kind, answered_at IS NOT NULL AS answered_before,
                    (extract(epoch FROM clock_timestamp() - created_at) * 1000)::bigint AS wait_ms
             FROM calls WHERE id = $1 FOR UPDATE",
        )
        .bind(call_id)
        .fetch_one(&mut *tx)
        .await?;
        let won = sqlx::query(
            "UPDATE offers SET state = 'accepted', decided_at = clock_timestamp()
             WHERE id = $1 AND state = 'offered' AND expires_at > clock_timestamp()",
        )
        .bind(offer_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if won == 0 {
            let state: String = sqlx::query_scalar("SELECT state FROM offers WHERE id = $1")
                .bind(offer_id)
                .fetch_one(&mut *tx)
                .await?;
            // An offer past its deadline that the dispatcher has not swept yet is expired all
            // the same.
            let state = if state == "offered" {
                "expired".to_owned()
            } else {
                state
            };
            // Release the call's lock now rather than when the pool gets round to it.
            tx.rollback().await?;
            return Err(StoreError::OfferNotOpen { state });
        }
        let device_id: String = call.try_get("device_id")?;
        let resident_id: Uuid = call.try_get("resident_id")?;
        let request_id: String = call.try_get("request_id")?;
        sqlx::query(
            "UPDATE calls SET state = 'answered', answered_by = $2,
                    answered_at = coalesce(answered_at, clock_timestamp())
             WHERE id = $1",
        )
        .bind(call_id)
        .bind(operator_id)
        .execute(&mut *tx)
        .await?;
        // Ring-all: the other operators' offers for this call are withdrawn in the same
        // transaction as the win.
        withdraw_offers(&mut tx, &[call_id], None, "taken").await?;
        let display_name: String = sqlx::query_scalar(
            "UPDATE operators SET status = 'on_call', status_since = clock_timestamp(), missed_offers = 0,
                    status_reason = ''
             WHERE id = $1 RETURNING display_name",
        )
        .bind(operator_id)
        .fetch_one(&mut *tx)
        .await?;
        append_event(
            &mut tx,
            "offer.accepted",
            Some(call_id),
            Some(offer_id),
            Some(operator_id),
            None,
            json!({}),
        )
        .await?;
        // The first answer counts for the statistics; an answer after a transfer does not.
        let answered_before: bool = call.try_get("answered_before")?;
        append_event(
            &mut tx,
            if answered_before { "call.answered_after_transfer" } else { "call.answered" },
            Some(call_id),
            None,
            Some(operator_id),
            Some(&device_id),
            json!({ "wait_ms": call.try_get::<i64, _>("wait_ms")?, "kind": call.try_get::<String, _>("kind")? }),
        )
        .await?;
        append_event(
            &mut tx,
            "operator.status",
            None,
            None,
            Some(operator_id),
            None,
            json!({ "to": "on_call", "reason": "accepted an offer" }),
        )
        .await?;
        push_outbox(
            &mut tx,
            &device_id,
            &CallUpdatePayload::new(request_id, call_id, CallState::Answered)
                .answered_by(display_name),
        )
        .await?;
        notify(
            &mut tx,
            &Notification::CallChanged {
                call_id,
                operator_id: Some(operator_id),
                state: CallState::Answered.as_str().to_owned(),
                disposition: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(AcceptedCall {
            call_id,
            device_id,
            resident_id,
            kind: call.try_get("kind")?,
            waited_ms: call.try_get("wait_ms")?,
            answered_before,
        })
    }

    /// The operator holding a call ends it with a disposition and becomes available again.
    pub async fn end_call(
        &self,
        call_id: Uuid,
        operator_id: Uuid,
        disposition: Disposition,
        note: &str,
    ) -> Result<()> {
        self.finish_call(call_id, operator_id, disposition, note, None)
            .await
    }

    /// The operator holding an alarm's item resolves it with an outcome: the call ends (as an
    /// emergency) and the alarm records how it ended.
    pub async fn resolve_alarm(
        &self,
        call_id: Uuid,
        operator_id: Uuid,
        outcome: carebell_domain::AlarmOutcome,
        note: &str,
    ) -> Result<()> {
        self.finish_call(
            call_id,
            operator_id,
            Disposition::Emergency,
            note,
            Some(outcome),
        )
        .await
    }

    async fn finish_call(
        &self,
        call_id: Uuid,
        operator_id: Uuid,
        disposition: Disposition,
        note: &str,
        outcome: Option<carebell_domain::AlarmOutcome>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let call = sqlx::query(
            "SELECT state, answered_by, device_id, request_id, kind,
                    (extract(epoch FROM clock_timestamp() - answered_at) * 1000)::bigint AS handle_ms
             FROM calls WHERE id = $1 FOR UPDATE",
        )
        .bind(call_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "call",
            id: call_id.to_string(),
        })?;
        let state: String = call.try_get("state")?;
        let answered_by: Option<Uuid> = call.try_get("answered_by")?;
        if answered_by != Some(operator_id)
            || parse_state(&state)?.transition(CallState::Ended).is_err()
        {
            tx.rollback().await?;
            return Err(StoreError::CallNotHeld { state });
        }
        if let Some(outcome) = outcome {
            let kind: String = call.try_get("kind")?;
            if !matches!(kind.as_str(), "emergency" | "technical") {
                tx.rollback().await?;
                return Err(StoreError::Refused(format!(
                    "only alarms are resolved with an outcome; this is a {kind}"
                )));
            }
            sqlx::query("UPDATE calls SET outcome = $2 WHERE id = $1")
                .bind(call_id)
                .bind(outcome.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE alarms SET resolved_at = clock_timestamp(), outcome = $2 WHERE call_id = $1",
            )
            .bind(call_id)
            .bind(outcome.as_str())
            .execute(&mut *tx)
            .await?;
            append_event(
                &mut tx,
                "alarm.resolved",
                Some(call_id),
                None,
                Some(operator_id),
                None,
                json!({ "outcome": outcome.as_str() }),
            )
            .await?;
        }
        let device_id: String = call.try_get("device_id")?;
        let request_id: String = call.try_get("request_id")?;
        crate::family::stop_cascade(&mut tx, &[call_id]).await?;
        // Ending a service order's call-back call is the order's call-back.
        crate::orders::callback_call_ended(&mut tx, call_id, operator_id, note).await?;
        sqlx::query(
            "UPDATE calls SET state = 'ended', ended_at = clock_timestamp(), disposition = $2,
             note = $3 WHERE id = $1",
        )
        .bind(call_id)
        .bind(disposition.as_str())
        .bind(note)
        .execute(&mut *tx)
        .await?;
        let wrap_up_secs = crate::routing::active_rules(&mut tx)
            .await?
            .rules()
            .wrap_up_secs;
        sqlx::query(
            "UPDATE operators SET
                status = CASE WHEN $2 > 0 THEN 'wrap_up' ELSE 'available' END,
                status_until = CASE WHEN $2 > 0 THEN clock_timestamp() + make_interval(secs => $2) END,
                status_since = clock_timestamp()
             WHERE id = $1 AND status = 'on_call'",
        )
        .bind(operator_id)
        .bind(f64::from(wrap_up_secs))
        .execute(&mut *tx)
        .await?;
        append_event(
            &mut tx,
            "call.ended",
            Some(call_id),
            None,
            Some(operator_id),
            Some(&device_id),
            json!({
                "disposition": disposition.as_str(),
                "kind": call.try_get::<String, _>("kind")?,
                "handle_ms": call.try_get::<Option<i64>, _>("handle_ms")?.unwrap_or(0),
            }),
        )
        .await?;
        push_outbox(
            &mut tx,
            &device_id,
            &CallUpdatePayload::new(request_id, call_id, CallState::Ended)
                .because(disposition.as_str()),
        )
        .await?;
        notify(
            &mut tx,
            &Notification::CallChanged {
                call_id,
                operator_id: Some(operator_id),
                state: CallState::Ended.as_str().to_owned(),
                disposition: Some(disposition.as_str().to_owned()),
            },
        )
        .await?;
        notify(&mut tx, &Notification::Dispatch).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Withdraws an operator's live offer (the operator went away or offline); its call goes
    /// back to the queue. Call this before taking the operator's row, to keep the lock order
    /// (call, then offers, then operator) that prevents deadlocks with an acceptance.
    pub(crate) async fn withdraw_operator_offer(
        tx: &mut Transaction<'_, Postgres>,
        operator_id: Uuid,
    ) -> Result<()> {
        let live: Option<Uuid> = sqlx::query_scalar(
            "SELECT call_id FROM offers WHERE operator_id = $1 AND state = 'offered'",
        )
        .bind(operator_id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(call_id) = live else {
            return Ok(());
        };
        sqlx::query("SELECT 1 FROM calls WHERE id = $1 FOR UPDATE")
            .bind(call_id)
            .execute(&mut **tx)
            .await?;
        // Only this operator's offer: with ring-all, the others keep ringing.
        withdraw_offers(tx, &[call_id], Some(operator_id), "operator unavailable").await?;
        requeue_if_silent(tx, call_id).await?;
        notify(tx, &Notification::Dispatch).await?;
        Ok(())
    }

    pub async fn call(&self, call_id: Uuid) -> Result<CallRow> {
        sqlx::query_as::<_, CallRow>(
            "SELECT id, device_id, resident_id, request_id, kind, state, created_at, answered_at,
                    answered_by, ended_at, disposition
             FROM calls WHERE id = $1",
        )
        .bind(call_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "call",
            id: call_id.to_string(),
        })
    }

    /// One offer with the details a console shows.
    pub async fn offer(&self, offer_id: Uuid) -> Result<OfferRow> {
        sqlx::query_as::<_, OfferRow>(&format!("SELECT {OFFER_COLUMNS} WHERE o.id = $1"))
            .bind(offer_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "offer",
                id: offer_id.to_string(),
            })
    }

    /// The live offer of an operator, if any (for a console that (re)subscribes).
    pub async fn live_offer_for(&self, operator_id: Uuid) -> Result<Option<OfferRow>> {
        Ok(sqlx::query_as::<_, OfferRow>(&format!(
            "SELECT {OFFER_COLUMNS} WHERE o.operator_id = $1 AND o.state = 'offered'"
        ))
        .bind(operator_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The call an operator holds (answered and not yet ended or transferred), if any.
    pub async fn held_call(&self, operator_id: Uuid) -> Result<Option<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM calls WHERE answered_by = $1 AND state = 'answered' ORDER BY answered_at LIMIT 1",
        )
        .bind(operator_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Every offer of a call, oldest first.
    pub async fn call_offers(&self, call_id: Uuid) -> Result<Vec<OfferRow>> {
        Ok(sqlx::query_as::<_, OfferRow>(&format!(
            "SELECT {OFFER_COLUMNS} WHERE o.call_id = $1 ORDER BY o.created_at, o.id"
        ))
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many calls of these devices are in each state.
    pub async fn call_state_counts(&self, device_ids: &[String]) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT state, count(*) AS n FROM calls WHERE device_id = ANY($1) GROUP BY state ORDER BY state",
        )
        .bind(device_ids)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| Ok((row.try_get("state")?, row.try_get("n")?)))
            .collect()
    }

    /// The operator refuses a ringing offer: it is withdrawn and the call goes back to the
    /// queue at once. Not counted as a missed offer.
    pub async fn decline_offer(&self, offer_id: Uuid, operator_id: Uuid) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let offer = sqlx::query("SELECT call_id, operator_id FROM offers WHERE id = $1")
            .bind(offer_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "offer",
                id: offer_id.to_string(),
            })?;
        let call_id: Uuid = offer.try_get("call_id")?;
        if offer.try_get::<Uuid, _>("operator_id")? != operator_id {
            return Err(StoreError::NotYourOffer);
        }
        sqlx::query("SELECT 1 FROM calls WHERE id = $1 FOR UPDATE")
            .bind(call_id)
            .execute(&mut *tx)
            .await?;
        let state: Option<String> = sqlx::query_scalar(
            "UPDATE offers SET state = 'withdrawn', reason = 'declined', decided_at = clock_timestamp()
             WHERE id = $1 AND state = 'offered' RETURNING state",
        )
        .bind(offer_id)
        .fetch_optional(&mut *tx)
        .await?;
        if state.is_none() {
            let state: String = sqlx::query_scalar("SELECT state FROM offers WHERE id = $1")
                .bind(offer_id)
                .fetch_one(&mut *tx)
                .await?;
            tx.rollback().await?;
            return Err(StoreError::OfferNotOpen { state });
        }
        requeue_if_silent(&mut tx, call_id).await?;
        offer_closed(
            &mut tx,
            "offer.declined",
            offer_id,
            call_id,
            operator_id,
            "declined",
        )
        .await?;
        notify(&mut tx, &Notification::Dispatch).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The operator holding a call hands it on: to a named operator (who is offered it, with
    /// the ring timeout) or to a queue (where it waits like a new item of its kind). The
    /// transferring operator is free at once.
    pub async fn transfer_call(
        &self,
        call_id: Uuid,
        operator_id: Uuid,
        target: &TransferTarget,
        ring_timeout: Duration,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let call = sqlx::query(
            "SELECT state, answered_by, device_id, request_id FROM calls WHERE id = $1 FOR UPDATE",
        )
        .bind(call_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "call",
            id: call_id.to_string(),
        })?;
        let state: String = call.try_get("state")?;
        if call.try_get::<Option<Uuid>, _>("answered_by")? != Some(operator_id)
            || state != "answered"
        {
            return Err(StoreError::CallNotHeld { state });
        }
        let device_id: String = call.try_get("device_id")?;
        let request_id: String = call.try_get("request_id")?;
        let rules = crate::routing::active_rules(&mut tx).await?;
        // The current holder's acceptance is closed; the next acceptance is the only live one.
        sqlx::query(
            "UPDATE offers SET state = 'transferred' WHERE call_id = $1 AND state = 'accepted'",
        )
        .bind(call_id)
        .execute(&mut *tx)
        .await?;
        let detail = match target {
            TransferTarget::Queue(queue) => {
                if rules.queue(queue).is_none() {
                    tx.rollback().await?;
                    return Err(StoreError::Refused(format!("there is no queue '{queue}'")));
                }
                sqlx::query(
                    "UPDATE calls SET state = 'queued', answered_by = NULL, queue_id = $2,
                            queued_at = clock_timestamp(),
                            deadline_at = clock_timestamp() + make_interval(secs => $3)
                     WHERE id = $1",
                )
                .bind(call_id)
                .bind(queue)
                .bind(crate::routing::deadline_secs(&rules, queue, 0))
                .execute(&mut *tx)
                .await?;
                notify(&mut tx, &Notification::Dispatch).await?;
                json!({ "to_queue": queue })
            }
            TransferTarget::Operator(username) => {
                let target_row = sqlx::query(
                    "SELECT id, status,
                            EXISTS (SELECT 1 FROM offers o WHERE o.operator_id = op.id AND o.state = 'offered') AS ringing
                     FROM operators op WHERE username = $1 FOR UPDATE",
                )
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?;
                let refusal = match &target_row {
                    None => Some(StoreError::NotFound {
                        what: "operator",
                        id: username.clone(),
                    }),
                    Some(row) if row.try_get::<Uuid, _>("id")? == operator_id => {
                        Some(StoreError::Refused(
                            "a call cannot be transferred to its own operator".to_owned(),
                        ))
                    }
                    Some(row)
                        if row.try_get::<String, _>("status")? != "available"
                            || row.try_get::<bool, _>("ringing")? =>
                    {
                        Some(StoreError::Refused(format!(
                            "operator '{username}' is not available"
                        )))
                    }
                    Some(_) => None,
                };
                let (Some(target_row), None) = (target_row, &refusal) else {
                    // Release the locks at once rather than when the pool gets round to it.
                    tx.rollback().await?;
                    return Err(refusal.unwrap_or(StoreError::NotFound {
                        what: "operator",
                        id: username.clone(),
                    }));
                };
                let target_id: Uuid = target_row.try_get("id")?;
                let offer_id = Uuid::new_v4();
                sqlx::query(
                    "INSERT INTO offers (id, call_id, operator_id, state, created_at, expires_at, reason)
                     VALUES ($1, $2, $3, 'offered', clock_timestamp(),
                             clock_timestamp() + make_interval(secs => $4::double precision / 1000.0), 'transfer')",
                )
                .bind(offer_id)
                .bind(call_id)
                .bind(target_id)
                .bind(i64::try_from(ring_timeout.as_millis()).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await
                .map_err(|error| match error.as_database_error() {
                    // Something else began ringing at the colleague after the check above.
                    Some(db) if db.is_unique_violation() => {
                        StoreError::Refused(format!("operator '{username}' is not available"))
                    }
                    _ => StoreError::Database(error),
                })?;
                // Its waiting starts again from now (no stale overflow or alert while it rings).
                let queue: String = sqlx::query_scalar(
                    "UPDATE calls SET state = 'offered', answered_by = NULL, queued_at = clock_timestamp()
                     WHERE id = $1 RETURNING queue_id",
                )
                .bind(call_id)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE calls SET deadline_at = clock_timestamp() + make_interval(secs => $2) WHERE id = $1",
                )
                .bind(call_id)
                .bind(crate::routing::deadline_secs(&rules, &queue, 0))
                .execute(&mut *tx)
                .await?;
                append_event(
                    &mut tx,
                    "offer.created",
                    Some(call_id),
                    Some(offer_id),
                    Some(target_id),
                    None,
                    json!({ "transfer": true }),
                )
                .await?;
                notify(
                    &mut tx,
                    &Notification::Offer {
                        offer_id,
                        operator_id: target_id,
                    },
                )
                .await?;
                json!({ "to_operator": target_id })
            }
        };
        sqlx::query(
            "UPDATE operators SET status = 'available', status_since = clock_timestamp(), status_reason = ''
             WHERE id = $1 AND status = 'on_call'",
        )
        .bind(operator_id)
        .execute(&mut *tx)
        .await?;
        append_event(
            &mut tx,
            "operator.status",
            None,
            None,
            Some(operator_id),
            None,
            json!({ "from": "on_call", "to": "available", "reason": "transferred a call" }),
        )
        .await?;
        append_event(
            &mut tx,
            "call.transferred",
            Some(call_id),
            None,
            Some(operator_id),
            Some(&device_id),
            detail,
        )
        .await?;
        push_outbox(
            &mut tx,
            &device_id,
            &CallUpdatePayload::new(request_id, call_id, CallState::Queued).because("transferred"),
        )
        .await?;
        notify(
            &mut tx,
            &Notification::CallChanged {
                call_id,
                operator_id: Some(operator_id),
                state: "transferred".to_owned(),
                disposition: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Where a transferred call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferTarget {
    Operator(String),
    Queue(String),
}

impl Store {
    /// The operator handling an alarm records what they did (called the senior, called 120,
    /// notified the family, sent a responder).
    pub async fn record_alarm_action(
        &self,
        call_id: Uuid,
        operator_id: Uuid,
        action: carebell_domain::AlarmAction,
        note: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let call =
            sqlx::query("SELECT state, answered_by, kind FROM calls WHERE id = $1 FOR UPDATE")
                .bind(call_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: "call",
                    id: call_id.to_string(),
                })?;
        let state: String = call.try_get("state")?;
        let kind: String = call.try_get("kind")?;
        let refusal = if call.try_get::<Option<Uuid>, _>("answered_by")? != Some(operator_id)
            || state != "answered"
        {
            Some(StoreError::CallNotHeld { state })
        } else if !matches!(kind.as_str(), "emergency" | "technical") {
            Some(StoreError::Refused(format!(
                "only alarms have handling actions; this is a {kind}"
            )))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            tx.rollback().await?;
            return Err(refusal);
        }
        sqlx::query("INSERT INTO alarm_actions (call_id, operator_id, action, note) VALUES ($1, $2, $3, $4)")
            .bind(call_id)
            .bind(operator_id)
            .bind(action.as_str())
            .bind(note)
            .execute(&mut *tx)
            .await?;
        // "Notified the family" by the operator starts the cascade now, if it has not started.
        if action == carebell_domain::AlarmAction::NotifiedFamily {
            let not_started: bool =
                sqlx::query_scalar("SELECT cascade_started_at IS NULL FROM calls WHERE id = $1")
                    .bind(call_id)
                    .fetch_one(&mut *tx)
                    .await?;
            if not_started {
                let step_secs = f64::from(
                    crate::routing::active_rules(&mut tx)
                        .await?
                        .rules()
                        .cascade_step_secs,
                );
                crate::family::start_cascades(
                    &mut tx,
                    &[crate::family::CascadeStart {
                        call_id,
                        unanswered: None,
                    }],
                    step_secs,
                )
                .await?;
            }
        }
        append_event(
            &mut tx,
            "alarm.action",
            Some(call_id),
            None,
            Some(operator_id),
            None,
            json!({ "action": action.as_str() }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The actions recorded on an alarm's item, oldest first.
    pub async fn alarm_actions(&self, call_id: Uuid) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT action FROM alarm_actions WHERE call_id = $1 ORDER BY id")
                .bind(call_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

impl Store {
    /// A supervisor takes back a call whose operator is gone (the console vanished, the
    /// operator left): the call returns to its queue, like a transfer by its holder, and the
    /// holder is taken offline so nothing more is offered to them.
    pub async fn reclaim_call(
        &self,
        call_id: Uuid,
        supervisor_id: Uuid,
        ring_timeout: Duration,
    ) -> Result<()> {
        let row = sqlx::query("SELECT answered_by, queue_id, state FROM calls WHERE id = $1")
            .bind(call_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "call",
                id: call_id.to_string(),
            })?;
        let state: String = row.try_get("state")?;
        let Some(holder) = row.try_get::<Option<Uuid>, _>("answered_by")? else {
            return Err(StoreError::CallNotHeld { state });
        };
        let queue: String = row.try_get("queue_id")?;
        // The transfer re-checks, under the call's lock, that the holder still holds it.
        self.transfer_call(call_id, holder, &TransferTarget::Queue(queue), ring_timeout)
            .await?;
        self.set_operator_status_because(
            holder,
            carebell_domain::OperatorStatus::Offline,
            "call reclaimed by a supervisor",
        )
        .await?;
        let mut tx = self.pool.begin().await?;
        append_event(
            &mut tx,
            "call.reclaimed",
            Some(call_id),
            None,
            Some(supervisor_id),
            None,
            json!({ "from_operator": holder }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
