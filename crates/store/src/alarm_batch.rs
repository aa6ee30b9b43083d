//! Group commit for device alarms: many tablets' alarms stored in one statement, committed on
//! its own, instead of a dozen statements and a commit each.
//!
//! The rows are exactly those [`Store::record_alarm`] writes (alarm, `alarm.raised` event, the
//! item it raises, `call.created` event, the tablet's call update, the notifications), so
//! nothing downstream can tell a batched alarm from a single one. Anything out of the ordinary
//! (a resend, the same id twice in one batch, a device that has gone) is left out of the batch
//! and goes through `record_alarm` on its own afterwards, which already knows how to answer it.
//! If the batch transaction fails as a whole, every alarm in it goes that way too: a batch never
//! loses an alarm that `record_alarm` would have stored.

use std::collections::BTreeSet;

use carebell_domain::routing::ValidRuleSet;
use carebell_domain::{CallKind, CallState};
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::outbox::CallUpdatePayload;
use crate::{AlarmOutcome, Notification, Result, Store, StoreError, NOTIFY_CHANNEL};

/// One alarm as a tablet sent it, for [`Store::record_alarms`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlarm {
    pub device_id: String,
    pub alarm_id: String,
    pub kind: String,
    pub raised_at: Option<DateTime<Utc>>,
    pub detail: String,
    /// The item the alarm puts in the queue, if any (told to the tablet).
    pub raise: Option<CallKind>,
}

impl Store {
    /// Stores many alarms, each idempotently by its device's alarm id, and answers each one as
    /// [`Store::record_alarm`] would have: the results are in the order of `alarms`.
    pub async fn record_alarms(&self, alarms: &[NewAlarm]) -> Vec<Result<AlarmOutcome>> {
        let mut results: Vec<Option<Result<AlarmOutcome>>> = alarms.iter().map(|_| None).collect();
        // A batch of one goes through the statement too: the one-by-one transaction is about
        // ten round trips, and on busy cores each waits to be scheduled.
        if !alarms.is_empty() {
            match self.insert_batch(alarms).await {
                Ok(stored) => {
                    for (index, outcome) in stored {
                        results[index] = Some(Ok(outcome));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, alarms = alarms.len(), "an alarm batch failed; storing its alarms one by one");
                }
            }
        }
        let mut answered = Vec::with_capacity(alarms.len());
        for (alarm, result) in alarms.iter().zip(results) {
            let result = match result {
                Some(result) => result,
                None => self.record_new_alarm(alarm).await,
            };
            answered.push(result);
        }
        answered
    }

    /// [`Store::record_alarm`] for one [`NewAlarm`], in its own transaction.
    pub async fn record_new_alarm(&self, alarm: &NewAlarm) -> Result<AlarmOutcome> {
        self.record_alarm(
            &alarm.device_id,
            &alarm.alarm_id,
            &alarm.kind,
            alarm.raised_at,
            &alarm.detail,
            alarm.raise,
        )
        .await
    }

    /// The batch: returns the outcome of every alarm it stored, by index. The ones it left out
    /// are new to nobody but need `record_alarm`'s care.
    ///
    /// It is one statement, committed on its own: on a machine whose cores are busy every round
    /// trip to the database waits to be scheduled twice, and the ten of a transaction of
    /// separate statements were most of an alarm's wait. The rules come from this process's
    /// cache; the statement writes nothing unless the database's rule version is the cached
    /// one, and is then made again with the rules read afresh.
    async fn insert_batch(&self, alarms: &[NewAlarm]) -> Result<Vec<(usize, AlarmOutcome)>> {
        // The same (device, alarm id) twice in one batch: only the first is tried here.
        let mut seen = BTreeSet::new();
        let candidates: Vec<usize> = (0..alarms.len())
            .filter(|&index| {
                let alarm = &alarms[index];
                seen.insert((alarm.device_id.as_str(), alarm.alarm_id.as_str()))
            })
            .collect();
        let batch = BatchRows::new(alarms, &candidates, true)?;
        let rules = match crate::routing::cached_rules() {
            Some(rules) => rules,
            None => self.versioned_routing_rules().await?,
        };
        let stored = match insert_alarm_rows(&self.pool, &batch, &rules).await? {
            Some(stored) => stored,
            // The rules changed since this process read them.
            None => {
                let rules = self.versioned_routing_rules().await?;
                insert_alarm_rows(&self.pool, &batch, &rules)
                    .await?
                    .ok_or_else(|| {
                        StoreError::Refused(
                            "the routing rules changed during an alarm batch".to_owned(),
                        )
                    })?
            }
        };
        let stored: BTreeSet<Uuid> = stored.into_iter().collect();
        Ok(candidates
            .iter()
            .zip(&batch.row_ids)
            .zip(&batch.call_ids)
            .filter(|((_, row_id), _)| stored.contains(row_id))
            .map(|((&index, &alarm_row_id), &call_id)| {
                (
                    index,
                    AlarmOutcome {
                        alarm_row_id,
                        created: true,
                        call_id,
                    },
                )
            })
            .collect())
    }
}

/// The batch's one statement under `rules`, on `executor` (the pool, for a statement committed
/// on its own; a transaction, for the offline sweep's): the alarm rows it stored, or `None`
/// (nothing written) if the database's rules are not `rules`' version.
///
/// A device that has gone is skipped rather than failing the batch on its foreign key; a
/// stored alarm is not stored again. An alarm's item that already exists (or a resident
/// that is missing) leaves its alarm pointing at no call, which the foreign key refuses:
/// the statement fails as a whole.
pub(crate) async fn insert_alarm_rows<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    batch: &BatchRows,
    (version, rules): &(Option<i64>, ValidRuleSet),
) -> Result<Option<Vec<Uuid>>> {
    let queues: Vec<Option<String>> = batch
        .raise
        .iter()
        .map(|kind| kind.map(|kind| rules.queue_for(kind).id.clone()))
        .collect();
    let deadlines: Vec<Option<f64>> = queues
        .iter()
        .map(|queue| {
            queue
                .as_ref()
                .map(|queue| crate::routing::deadline_secs(rules, queue, 0))
        })
        .collect();
    let row: (bool, Vec<Uuid>) = sqlx::query_as(
        "WITH rules_in_force AS (
                 SELECT 1 WHERE (SELECT max(version) FROM routing_rules) IS NOT DISTINCT FROM $1
             ), batch AS (
                 SELECT b.* FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[],
                                        $6::timestamptz[], $7::text[], $8::jsonb[], $9::uuid[],
                                        $10::text[], $11::int2[], $12::text[], $13::float8[],
                                        $14::jsonb[], $15::text[])
                      WITH ORDINALITY AS b(id, device_id, alarm_id, kind, raised_at, detail,
                                           raised_event, call_id, call_kind, priority, queue_id,
                                           deadline, call_update, told, n)
                 WHERE EXISTS (SELECT 1 FROM rules_in_force)
             ), alarms_in AS (
                 INSERT INTO alarms (id, device_id, alarm_id, kind, raised_at, detail, call_id)
                 SELECT b.id, b.device_id, b.alarm_id, b.kind, b.raised_at, b.detail, b.call_id
                 FROM batch b
                 WHERE EXISTS (SELECT 1 FROM devices d WHERE d.id = b.device_id)
                 ORDER BY b.n
                 ON CONFLICT (device_id, alarm_id) DO NOTHING
                 RETURNING id
             ), stored AS (
                 SELECT b.* FROM batch b JOIN alarms_in a ON a.id = b.id
             ), calls_in AS (
                 -- ':' is outside the device's request id alphabet, so an alarm's call can
                 -- never collide with a call the device requested.
                 INSERT INTO calls (id, device_id, resident_id, request_id, kind, priority, state,
                                    queue_id, queued_at, created_at, deadline_at, dialect, station,
                                    callback_of, announce)
                 SELECT s.call_id, s.device_id, d.resident_id, 'alarm:' || s.alarm_id, s.call_kind,
                        s.priority, 'queued', s.queue_id, clock_timestamp(), clock_timestamp(),
                        clock_timestamp() + make_interval(secs => s.deadline), r.dialect,
                        r.station_id::text, NULL, $18
                 FROM stored s JOIN devices d ON d.id = s.device_id
                 JOIN residents r ON r.id = d.resident_id
                 WHERE s.call_id IS NOT NULL
                 ORDER BY s.n
                 ON CONFLICT (device_id, request_id) DO NOTHING
                 RETURNING id, resident_id
             ), events_in AS (
                 -- Every alarm's event, then every item's, each in the batch's order.
                 INSERT INTO events (kind, call_id, device_id, detail)
                 SELECT e.kind, e.call_id, e.device_id, e.detail
                 FROM (
                     SELECT 'alarm.raised' AS kind, NULL::uuid AS call_id, s.device_id,
                            s.raised_event AS detail, 0 AS part, s.n
                     FROM stored s
                     UNION ALL
                     SELECT 'call.created', s.call_id, s.device_id,
                            jsonb_build_object('kind', s.call_kind, 'queue', s.queue_id,
                                               'request_id', 'alarm:' || s.alarm_id,
                                               'resident_id', c.resident_id, 'callback_of', NULL),
                            1, s.n
                     FROM stored s JOIN calls_in c ON c.id = s.call_id
                 ) e
                 ORDER BY e.part, e.n
             ), outbox_in AS (
                 INSERT INTO device_outbox (device_id, kind, payload)
                 SELECT s.device_id, 'call_update', s.call_update
                 FROM stored s JOIN calls_in c ON c.id = s.call_id
                 WHERE $18
                 ORDER BY s.n
             ), told AS (
                 -- The same notifications the one-by-one path sends (PostgreSQL folds repeats
                 -- within a transaction into one): the dispatchers, then each tablet told.
                 SELECT pg_notify($16, t.payload)
                 FROM (
                     SELECT $17::text AS payload, 0 AS part WHERE EXISTS (SELECT 1 FROM stored)
                     UNION
                     SELECT s.told, 1 FROM stored s JOIN calls_in c ON c.id = s.call_id WHERE $18
                 ) t
                 ORDER BY t.part, t.payload
             )
             SELECT EXISTS (SELECT 1 FROM rules_in_force),
                    coalesce((SELECT array_agg(id) FROM alarms_in), '{}'::uuid[])
             FROM (SELECT count(*) FROM told) AS all_told",
    )
    .bind(version)
    .bind(&batch.row_ids)
    .bind(&batch.device_ids)
    .bind(&batch.alarm_ids)
    .bind(&batch.kinds)
    .bind(&batch.raised_at)
    .bind(&batch.details)
    .bind(&batch.raised_events)
    .bind(&batch.call_ids)
    .bind(
        batch
            .raise
            .iter()
            .map(|kind| kind.map(|kind| kind.as_str().to_owned()))
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .raise
            .iter()
            .map(|kind| {
                kind.map(|kind| i16::try_from(kind.base_priority() / 10).unwrap_or(i16::MAX))
            })
            .collect::<Vec<_>>(),
    )
    .bind(&queues)
    .bind(&deadlines)
    .bind(&batch.call_updates)
    .bind(&batch.told)
    .bind(NOTIFY_CHANNEL)
    .bind(&batch.dispatch)
    .bind(batch.announce)
    .fetch_one(executor)
    .await?;
    Ok(row.0.then_some(row.1))
}

/// A batch's candidate alarms as the statement's columns, in the batch's order, with the ids
/// of the rows they would make and what their items would tell.
pub(crate) struct BatchRows {
    /// Whether the items are the tablet's to show (its own alarms: each item's call update goes
    /// to its tablet's outbox, and the tablet is told) or not (the server's "device offline").
    announce: bool,
    row_ids: Vec<Uuid>,
    device_ids: Vec<String>,
    alarm_ids: Vec<String>,
    kinds: Vec<String>,
    raised_at: Vec<Option<DateTime<Utc>>>,
    details: Vec<String>,
    raised_events: Vec<serde_json::Value>,
    raise: Vec<Option<CallKind>>,
    /// The item's id, for an alarm that raises one.
    call_ids: Vec<Option<Uuid>>,
    /// The tablet's call update and the notification that tells it, for each item.
    call_updates: Vec<Option<serde_json::Value>>,
    told: Vec<Option<String>>,
    dispatch: String,
}

impl BatchRows {
    pub(crate) fn new(alarms: &[NewAlarm], candidates: &[usize], announce: bool) -> Result<Self> {
        let unserializable =
            |error: serde_json::Error| StoreError::Refused(format!("unserializable: {error}"));
        let chosen = || candidates.iter().map(|&index| &alarms[index]);
        let call_ids: Vec<Option<Uuid>> = chosen()
            .map(|alarm| alarm.raise.map(|_| Uuid::new_v4()))
            .collect();
        let mut call_updates = Vec::with_capacity(candidates.len());
        let mut told = Vec::with_capacity(candidates.len());
        for (alarm, call_id) in chosen().zip(&call_ids) {
            // An item not announced tells its tablet nothing.
            let Some(call_id) = call_id.filter(|_| announce) else {
                call_updates.push(None);
                told.push(None);
                continue;
            };
            call_updates.push(Some(
                serde_json::to_value(CallUpdatePayload::new(
                    format!("alarm:{}", alarm.alarm_id),
                    call_id,
                    CallState::Queued,
                ))
                .map_err(unserializable)?,
            ));
            told.push(Some(
                serde_json::to_string(&Notification::DeviceOutbox {
                    device_id: alarm.device_id.clone(),
                })
                .map_err(unserializable)?,
            ));
        }
        Ok(Self {
            announce,
            row_ids: chosen().map(|_| Uuid::new_v4()).collect(),
            device_ids: chosen().map(|alarm| alarm.device_id.clone()).collect(),
            alarm_ids: chosen().map(|alarm| alarm.alarm_id.clone()).collect(),
            kinds: chosen().map(|alarm| alarm.kind.clone()).collect(),
            raised_at: chosen().map(|alarm| alarm.raised_at).collect(),
            details: chosen().map(|alarm| alarm.detail.clone()).collect(),
            raised_events: chosen()
                .map(|alarm| json!({ "alarm_id": alarm.alarm_id, "kind": alarm.kind, "raised_at": alarm.raised_at }))
                .collect(),
            raise: chosen().map(|alarm| alarm.raise).collect(),
            call_ids,
            call_updates,
            told,
            dispatch: serde_json::to_string(&Notification::Dispatch).map_err(unserializable)?,
        })
    }
}
