//! Device supervision: silence is itself an alarm. A device not heard for longer than the
//! supervision time (by its durable last-seen time, so across nodes and without Redis) raises
//! exactly one "device offline" technical alarm; its return clears it.

use std::time::Duration;

use carebell_domain::CallKind;
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use crate::alarm_batch::{insert_alarm_rows, BatchRows};
use crate::calls::{insert_alarm, Raise};
use crate::NewAlarm;
use crate::{append_event, notify, Notification, Result, Store, StoreError};

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
        let mut tx = self.pool.begin().await?;
        let cleared = sqlx::query(
            "UPDATE alarms SET cleared_at = clock_timestamp()
             WHERE device_id = $1 AND kind = 'DEVICE_OFFLINE' AND cleared_at IS NULL
             RETURNING call_id",
        )
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(cleared) = cleared else {
            tx.commit().await?;
            return Ok(false);
        };
        let call_id: Option<Uuid> = cleared.try_get("call_id")?;
        insert_alarm(
            &mut tx,
            device_id,
            &format!("back.{}", Uuid::new_v4().simple()),
            DEVICE_BACK,
            None,
            "the device is connected again",
            Raise::Nothing,
        )
        .await?;
        if let Some(call_id) = call_id {
            let waiting: Option<String> = sqlx::query_scalar(
                "SELECT state FROM calls WHERE id = $1 AND state IN ('queued', 'offered') FOR UPDATE",
            )
            .bind(call_id)
            .fetch_optional(&mut *tx)
            .await?;
            if waiting.is_some() {
                crate::calls::withdraw_offers(&mut tx, call_id, None, "cleared").await?;
                crate::family::stop_cascade(&mut tx, call_id).await?;
                sqlx::query("UPDATE calls SET state = 'cleared', ended_at = clock_timestamp() WHERE id = $1")
                    .bind(call_id)
                    .execute(&mut *tx)
                    .await?;
                append_event(
                    &mut tx,
                    "call.cleared",
                    Some(call_id),
                    None,
                    None,
                    Some(device_id),
                    json!({ "reason": "device back" }),
                )
                .await?;
                notify(
                    &mut tx,
                    &Notification::CallChanged {
                        call_id,
                        operator_id: None,
                        state: "cleared".to_owned(),
                        disposition: None,
                    },
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }
}
