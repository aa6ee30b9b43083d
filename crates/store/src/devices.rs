//! Device supervision: silence is itself an alarm. A device not heard for longer than the
//! supervision time (by its durable last-seen time, so across nodes and without Redis) raises
//! exactly one "device offline" technical alarm; its return clears it.

use std::time::Duration;

use carebell_domain::CallKind;
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use crate::alarm_batch::{insert_alarm_rows, BatchRows};
use crate::NewAlarm;
use crate::{append_events, notify_all, Notification, Result, Store, StoreError};

pub const DEVICE_OFFLINE: &str = "DEVICE_OFFLINE";
const OFFLINE_SWEEP_LOCK: i64 = 0x0ca2_eb12;
pub const DEVICE_BACK: &str = "DEVICE_BACK";

impl Store {
    /// Raises "device offline" for every device silent longer than `offline_after` that has no
    /// open one. Safe on every node at once (device rows locked with SKIP LOCKED, and a unique
    /// index allows one open offline alarm per device).
    pub async fn sweep_offline_devices(
        &self,
        offline_after: Duration,
        limit: i64,
    ) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        // One sweeper at a time across the nodes (the others skip this round): the NOT EXISTS
        // below is read from the statement's snapshot, so two concurrent sweeps could both
        // decide to raise the same device's alarm.
        let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(OFFLINE_SWEEP_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !ours {
            tx.commit().await?;
            return Ok(0);
        }
        // Silent by `now()` (this transaction's start): a stable bound is an index condition on
        // `devices_silence`; `clock_timestamp()` made every sweep read every device's entry
        // (6 ms at 22,000 devices against 0.05 ms, four times a second on every node). That
        // index holds only devices not yet reported (the flag a trigger keeps, migration 0019):
        // probing the alarms of every silent device made a pass read all those already
        // reported, tens of thousands in a 100,000 run's churn.
        let silent = sqlx::query(
            "SELECT d.id, extract(epoch FROM clock_timestamp() - d.last_seen_at)::bigint AS silent_secs
             FROM devices d
             WHERE d.revoked_at IS NULL AND NOT d.offline_alarm_open
               AND d.last_seen_at < now() - make_interval(secs => $1)
               -- The flag's check, per candidate, by the device's open offline alarm (a probe of
               -- `alarms_one_open_offline`): a scalar subquery, which the planner cannot turn into
               -- a join. As NOT EXISTS, planned on statistics from before an outage, it became a
               -- join reading every open offline alarm once per candidate (122 ms a pass with
               -- 20,000 open, `--bench offline_sweep`).
               AND (SELECT count(*) FROM alarms a
                    WHERE a.device_id = d.id AND a.kind = 'DEVICE_OFFLINE' AND a.cleared_at IS NULL) = 0
             ORDER BY d.last_seen_at
             LIMIT $2
             FOR UPDATE OF d SKIP LOCKED",
        )
        .bind(offline_after.as_secs_f64())
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        // Their alarms and items in one statement: the rows stay locked (arrivals of these
        // very tablets wait for them) for one statement, not for a few statements per device.
        // In a 100,000 run's churn a sweep found a hundred silent devices at a time, and their
        // arrivals queued behind a transaction of some six hundred statements.
        let alarms: Vec<NewAlarm> = silent
            .iter()
            .map(|row| {
                let silent_secs: i64 = row.try_get("silent_secs")?;
                Ok(NewAlarm {
                    device_id: row.try_get("id")?,
                    alarm_id: format!("offline.{}", Uuid::new_v4().simple()),
                    kind: DEVICE_OFFLINE.to_owned(),
                    raised_at: None,
                    detail: format!("no word from the device for {silent_secs} s"),
                    raise: Some(CallKind::Technical),
                })
            })
            .collect::<Result<_>>()?;
        if !alarms.is_empty() {
            let every: Vec<usize> = (0..alarms.len()).collect();
            let batch = BatchRows::new(&alarms, &every, false)?;
            let rules = crate::routing::versioned_rules(&mut tx).await?;
            let stored = insert_alarm_rows(&mut *tx, &batch, &rules)
                .await?
                .ok_or_else(|| {
                    StoreError::Refused(
                        "the routing rules changed during the offline sweep".to_owned(),
                    )
                })?;
            if stored.len() != alarms.len() {
                // Every device is locked and has no open offline alarm, and every alarm id is
                // new: a shortfall is a bug, and no half of it is committed.
                return Err(StoreError::Refused(format!(
                    "the offline sweep stored {} of {} alarms",
                    stored.len(),
                    alarms.len()
                )));
            }
        }
        tx.commit().await?;
        Ok(silent.len())
    }

    /// Which of these devices have an open "device offline" alarm.
    pub async fn open_offline_alarms(&self, device_ids: &[String]) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT device_id FROM alarms
             WHERE kind = 'DEVICE_OFFLINE' AND cleared_at IS NULL AND device_id = ANY($1)",
        )
        .bind(device_ids)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The device authenticated again: its open "device offline" alarm is cleared, a "device
    /// back" alarm is recorded, and the offline item is cleared if nobody has taken it yet.
    pub async fn device_back(&self, device_id: &str) -> Result<bool> {
        Ok(!self.devices_back(&[device_id.to_owned()]).await?.is_empty())
    }

    /// [`Store::device_back`] for many devices in one transaction of a few statements, however
    /// many there are; returns the devices whose offline alarm it cleared. A district's tablets
    /// back from an outage are tens of thousands of these at once, and one transaction of eight
    /// statements each was more work than the machine had.
    pub async fn devices_back(&self, device_ids: &[String]) -> Result<Vec<String>> {
        if device_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        // Locked in one order, so that two batches over the same devices (a session's and the
        // last-seen refresher's) wait for each other instead of deadlocking. An alarm another
        // transaction cleared meanwhile is skipped once that one commits.
        let cleared: Vec<(String, Option<Uuid>)> = sqlx::query_as(
            "WITH open AS (
                 SELECT id FROM alarms
                 WHERE device_id = ANY($1) AND kind = $2 AND cleared_at IS NULL
                 ORDER BY device_id
                 FOR UPDATE)
             UPDATE alarms a SET cleared_at = clock_timestamp()
             FROM open WHERE a.id = open.id
             RETURNING a.device_id, a.call_id",
        )
        .bind(device_ids)
        .bind(DEVICE_OFFLINE)
        .fetch_all(&mut *tx)
        .await?;
        if cleared.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let devices: Vec<String> = cleared.iter().map(|(device, _)| device.clone()).collect();
        let alarm_ids: Vec<String> = devices
            .iter()
            .map(|_| format!("back.{}", Uuid::new_v4().simple()))
            .collect();
        // Each one's "device back" alarm and its event, as `insert_alarm` writes them.
        sqlx::query(
            "WITH back AS (
                 INSERT INTO alarms (id, device_id, alarm_id, kind, detail)
                 SELECT gen_random_uuid(), b.device_id, b.alarm_id, $3, $4
                 FROM unnest($1::text[], $2::text[]) AS b(device_id, alarm_id)
                 RETURNING device_id, alarm_id)
             INSERT INTO events (kind, device_id, detail)
             SELECT 'alarm.raised', device_id,
                    jsonb_build_object('alarm_id', alarm_id, 'kind', $3::text, 'raised_at', NULL)
             FROM back",
        )
        .bind(&devices)
        .bind(&alarm_ids)
        .bind(DEVICE_BACK)
        .bind("the device is connected again")
        .execute(&mut *tx)
        .await?;
        // The offline items nobody has taken yet are cleared; one an operator holds stays theirs.
        let items: Vec<Uuid> = cleared.iter().filter_map(|(_, call)| *call).collect();
        let waiting: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM calls WHERE id = ANY($1) AND state IN ('queued', 'offered')
             ORDER BY id
             FOR UPDATE",
        )
        .bind(&items)
        .fetch_all(&mut *tx)
        .await?;
        if !waiting.is_empty() {
            crate::calls::withdraw_offers(&mut tx, &waiting, None, "cleared").await?;
            crate::family::stop_cascade(&mut tx, &waiting).await?;
            sqlx::query(
                "UPDATE calls SET state = 'cleared', ended_at = clock_timestamp() WHERE id = ANY($1)",
            )
            .bind(&waiting)
            .execute(&mut *tx)
            .await?;
            let device_of: std::collections::HashMap<Uuid, &str> = cleared
                .iter()
                .filter_map(|(device, call)| call.map(|call| (call, device.as_str())))
                .collect();
            let events: Vec<_> = waiting
                .iter()
                .map(|call_id| {
                    (
                        "call.cleared",
                        Some(*call_id),
                        device_of.get(call_id).map(|device| (*device).to_owned()),
                        json!({ "reason": "device back" }),
                    )
                })
                .collect();
            append_events(&mut tx, &events).await?;
            let changed: Vec<Notification> = waiting
                .iter()
                .map(|&call_id| Notification::CallChanged {
                    call_id,
                    operator_id: None,
                    state: "cleared".to_owned(),
                    disposition: None,
                })
                .collect();
            notify_all(&mut tx, &changed).await?;
        }
        tx.commit().await?;
        Ok(devices)
    }
}
