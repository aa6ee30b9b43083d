//! Group commit for device alarms: many tablets' alarms stored in one transaction of a few
//! set-based statements, instead of a dozen statements and a commit each.
//!
//! The rows are exactly those [`Store::record_alarm`] writes (alarm, `alarm.raised` event, the
//! item it raises, `call.created` event, the tablet's call update, the notifications), so
//! nothing downstream can tell a batched alarm from a single one. Anything out of the ordinary
//! (a resend, the same id twice in one batch, a device that has gone) is left out of the batch
//! and goes through `record_alarm` on its own afterwards, which already knows how to answer it.
//! If the batch transaction fails as a whole, every alarm in it goes that way too: a batch never
//! loses an alarm that `record_alarm` would have stored.

use std::collections::{BTreeSet, HashMap};

use carebell_domain::{CallKind, CallState};
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use crate::outbox::CallUpdatePayload;
use crate::{append_events, notify_all, AlarmOutcome, Notification, Result, Store, StoreError};

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
        if alarms.len() > 1 {
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

    /// The batch transaction: returns the outcome of every alarm it stored, by index. The ones it
    /// left out are new to nobody but need `record_alarm`'s care.
    async fn insert_batch(&self, alarms: &[NewAlarm]) -> Result<Vec<(usize, AlarmOutcome)>> {
        // The same (device, alarm id) twice in one batch: only the first is tried here.
        let mut seen = BTreeSet::new();
        let candidates: Vec<usize> = (0..alarms.len())
            .filter(|&index| {
                let alarm = &alarms[index];
                seen.insert((alarm.device_id.as_str(), alarm.alarm_id.as_str()))
            })
            .collect();

        let mut tx = self.pool.begin().await?;
        let row_ids: Vec<Uuid> = candidates.iter().map(|_| Uuid::new_v4()).collect();
        let column = |field: fn(&NewAlarm) -> String| -> Vec<String> {
            candidates
                .iter()
                .map(|&index| field(&alarms[index]))
                .collect()
        };
        let raised_at: Vec<Option<DateTime<Utc>>> = candidates
            .iter()
            .map(|&index| alarms[index].raised_at)
            .collect();
        // A device that has gone is skipped rather than failing the batch on its foreign key.
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO alarms (id, device_id, alarm_id, kind, raised_at, detail)
             SELECT a.id, a.device_id, a.alarm_id, a.kind, a.raised_at, a.detail
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
                  WITH ORDINALITY AS a(id, device_id, alarm_id, kind, raised_at, detail, n)
             WHERE EXISTS (SELECT 1 FROM devices d WHERE d.id = a.device_id)
             ORDER BY a.n
             ON CONFLICT (device_id, alarm_id) DO NOTHING
             RETURNING id",
        )
        .bind(&row_ids)
        .bind(column(|alarm| alarm.device_id.clone()))
        .bind(column(|alarm| alarm.alarm_id.clone()))
        .bind(column(|alarm| alarm.kind.clone()))
        .bind(&raised_at)
        .bind(column(|alarm| alarm.detail.clone()))
        .fetch_all(&mut *tx)
        .await?;
        let inserted: BTreeSet<Uuid> = inserted.into_iter().collect();
        // (index into `alarms`, alarm row id) of what this batch stored, in the batch's order.
        let stored: Vec<(usize, Uuid)> = candidates
            .iter()
            .zip(&row_ids)
            .filter(|(_, row_id)| inserted.contains(row_id))
            .map(|(&index, &row_id)| (index, row_id))
            .collect();
        if stored.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }

        insert_events(
            &mut tx,
            "alarm.raised",
            &stored
                .iter()
                .map(|&(index, _)| {
                    let alarm = &alarms[index];
                    (
                        None,
                        alarm.device_id.clone(),
                        json!({ "alarm_id": alarm.alarm_id, "kind": alarm.kind, "raised_at": alarm.raised_at }),
                    )
                })
                .collect::<Vec<_>>(),
        )
        .await?;

        // The items the alarms raise: one call each, in the queue the rules give its kind.
        let rules = crate::routing::active_rules(&mut tx).await?;
        let raising: Vec<(usize, Uuid, CallKind)> = stored
            .iter()
            .filter_map(|&(index, row_id)| alarms[index].raise.map(|kind| (index, row_id, kind)))
            .collect();
        let call_ids: Vec<Uuid> = raising.iter().map(|_| Uuid::new_v4()).collect();
        let queues: Vec<String> = raising
            .iter()
            .map(|&(_, _, kind)| rules.queue_for(kind).id.clone())
            .collect();
        let created_calls = sqlx::query(
            "INSERT INTO calls (id, device_id, resident_id, request_id, kind, priority, state, queue_id,
                                queued_at, created_at, deadline_at, dialect, station, callback_of, announce)
             SELECT c.id, c.device_id, d.resident_id, c.request_id, c.kind, c.priority, 'queued', c.queue_id,
                    clock_timestamp(), clock_timestamp(), clock_timestamp() + make_interval(secs => c.deadline),
                    r.dialect, r.station_id::text, NULL, true
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::text[], $7::float8[])
                  WITH ORDINALITY AS c(id, device_id, request_id, kind, priority, queue_id, deadline, n)
             JOIN devices d ON d.id = c.device_id JOIN residents r ON r.id = d.resident_id
             ORDER BY c.n
             ON CONFLICT (device_id, request_id) DO NOTHING
             RETURNING id, resident_id",
        )
        .bind(&call_ids)
        .bind(raising.iter().map(|&(index, _, _)| alarms[index].device_id.clone()).collect::<Vec<_>>())
        // ':' is outside the device's request id alphabet, so an alarm's call can never collide
        // with a call the device requested.
        .bind(raising.iter().map(|&(index, _, _)| format!("alarm:{}", alarms[index].alarm_id)).collect::<Vec<_>>())
        .bind(raising.iter().map(|&(_, _, kind)| kind.as_str().to_owned()).collect::<Vec<_>>())
        .bind(
            raising
                .iter()
                .map(|&(_, _, kind)| i16::try_from(kind.base_priority() / 10).unwrap_or(i16::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(&queues)
        .bind(
            queues
                .iter()
                .map(|queue| crate::routing::deadline_secs(&rules, queue, 0))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        let residents: HashMap<Uuid, Uuid> = created_calls
            .iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("resident_id")?)))
            .collect::<std::result::Result<_, sqlx::Error>>()?;
        if residents.len() != raising.len() {
            // An alarm's item already existed (or its resident is missing): not the ordinary
            // case, so the whole batch goes the careful way.
            return Err(StoreError::Refused(
                "an alarm's item already exists; storing the batch one by one".to_owned(),
            ));
        }

        let mut created = Vec::with_capacity(raising.len());
        let mut updates = Vec::with_capacity(raising.len());
        for ((&(index, _, kind), &call_id), queue) in raising.iter().zip(&call_ids).zip(&queues) {
            let alarm = &alarms[index];
            let request_id = format!("alarm:{}", alarm.alarm_id);
            created.push((
                Some(call_id),
                alarm.device_id.clone(),
                json!({ "kind": kind.as_str(), "queue": queue, "request_id": request_id, "resident_id": residents[&call_id], "callback_of": null }),
            ));
            updates.push(
                serde_json::to_value(CallUpdatePayload::new(
                    request_id,
                    call_id,
                    CallState::Queued,
                ))
                .map_err(|error| {
                    StoreError::Refused(format!("unserializable call update: {error}"))
                })?,
            );
        }
        insert_events(&mut tx, "call.created", &created).await?;
        let devices: Vec<String> = raising
            .iter()
            .map(|&(index, _, _)| alarms[index].device_id.clone())
            .collect();
        sqlx::query(
            "INSERT INTO device_outbox (device_id, kind, payload)
             SELECT o.device_id, 'call_update', o.payload
             FROM unnest($1::text[], $2::jsonb[]) WITH ORDINALITY AS o(device_id, payload, n)
             ORDER BY o.n",
        )
        .bind(&devices)
        .bind(&updates)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE alarms a SET call_id = l.call_id
             FROM unnest($1::uuid[], $2::uuid[]) AS l(alarm, call_id) WHERE a.id = l.alarm",
        )
        .bind(
            raising
                .iter()
                .map(|&(_, row_id, _)| row_id)
                .collect::<Vec<_>>(),
        )
        .bind(&call_ids)
        .execute(&mut *tx)
        .await?;

        // The same notifications the one-by-one path sends (PostgreSQL folds repeats within a
        // transaction into one), in one statement.
        let mut notifications = vec![Notification::Dispatch];
        notifications.extend(devices.iter().collect::<BTreeSet<_>>().into_iter().map(
            |device_id| Notification::DeviceOutbox {
                device_id: device_id.clone(),
            },
        ));
        notify_all(&mut tx, &notifications).await?;
        tx.commit().await?;

        let calls: HashMap<Uuid, Uuid> = raising
            .iter()
            .zip(&call_ids)
            .map(|(&(_, row_id, _), &call_id)| (row_id, call_id))
            .collect();
        Ok(stored
            .into_iter()
            .map(|(index, alarm_row_id)| {
                (
                    index,
                    AlarmOutcome {
                        alarm_row_id,
                        created: true,
                        call_id: calls.get(&alarm_row_id).copied(),
                    },
                )
            })
            .collect())
    }
}

/// Appends events of one kind, in order, in one statement: (call, device, detail) each.
async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    kind: &str,
    events: &[(Option<Uuid>, String, serde_json::Value)],
) -> Result<()> {
    let events: Vec<_> = events
        .iter()
        .map(|(call, device, detail)| (kind, *call, Some(device.clone()), detail.clone()))
        .collect();
    append_events(tx, &events).await
}
