//! The device outbox: messages that must reach a tablet, kept until it acknowledges them, so
//! they survive a dropped connection, a reconnect to another node and a node crash.

use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::{notify, Notification, Result, Store, StoreError, UNFLUSHED};

/// A call update for the tablet, as stored in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CallUpdatePayload {
    pub request_id: String,
    pub call_id: Uuid,
    pub state: String,
    pub operator_display_name: String,
    pub reason: String,
}

impl CallUpdatePayload {
    /// An update putting the device's call `request_id` into `state`.
    pub fn new(
        request_id: impl Into<String>,
        call_id: Uuid,
        state: carebell_domain::CallState,
    ) -> Self {
        Self {
            request_id: request_id.into(),
            call_id,
            state: state.as_str().to_owned(),
            operator_display_name: String::new(),
            reason: String::new(),
        }
    }

    /// Why (a disposition, "cancelled", "transferred").
    pub fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Who answered.
    pub fn answered_by(mut self, operator_display_name: impl Into<String>) -> Self {
        self.operator_display_name = operator_display_name.into();
        self
    }
}

/// Where a service order stands, for the senior's tablet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderUpdatePayload {
    pub order_id: Uuid,
    pub state: String,
    pub service_name_zh: String,
    pub service_name_en: String,
    pub provider_name: String,
    pub staff_name: String,
    /// Promised arrival (0: none yet).
    pub eta_ms: i64,
    pub text_zh: String,
    pub text_en: String,
}

/// Text for the tablet's screen (a family member's message).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NoticePayload {
    pub text: String,
    /// Who sent it.
    pub from: String,
}

/// A message for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxPayload {
    CallUpdate(CallUpdatePayload),
    OrderUpdate(OrderUpdatePayload),
    Notice(NoticePayload),
    Reminder(crate::proactive::ReminderPayload),
    Content(crate::proactive::ContentPayload),
}

/// One message waiting for a device's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub id: i64,
    pub payload: OutboxPayload,
}

pub(crate) async fn push_order_update(
    tx: &mut Transaction<'_, Postgres>,
    device_id: &str,
    payload: &OrderUpdatePayload,
) -> Result<()> {
    push_kind(tx, device_id, "order_update", payload).await
}

pub(crate) async fn push_reminder(
    tx: &mut Transaction<'_, Postgres>,
    device_id: &str,
    payload: &crate::proactive::ReminderPayload,
) -> Result<()> {
    push_kind(tx, device_id, "reminder", payload).await
}

pub(crate) async fn push_notice(
    tx: &mut Transaction<'_, Postgres>,
    device_id: &str,
    payload: &NoticePayload,
) -> Result<()> {
    push_kind(tx, device_id, "notice", payload).await
}

async fn push_kind<T: Serialize>(
    tx: &mut Transaction<'_, Postgres>,
    device_id: &str,
    kind: &str,
    payload: &T,
) -> Result<()> {
    let payload = serde_json::to_value(payload)
        .map_err(|error| StoreError::Refused(format!("unserializable {kind}: {error}")))?;
    sqlx::query("INSERT INTO device_outbox (device_id, kind, payload) VALUES ($1, $2, $3)")
        .bind(device_id)
        .bind(kind)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    notify(
        tx,
        &Notification::DeviceOutbox {
            device_id: device_id.to_owned(),
        },
    )
    .await
}

pub(crate) async fn push_outbox(
    tx: &mut Transaction<'_, Postgres>,
    device_id: &str,
    payload: &CallUpdatePayload,
) -> Result<()> {
    let payload = serde_json::to_value(payload)
        .map_err(|error| StoreError::Refused(format!("unserializable call update: {error}")))?;
    // Items the server raised about the device itself (it went offline) are not shown on it.
    let queued = sqlx::query(
        "INSERT INTO device_outbox (device_id, kind, payload)
         SELECT $1, 'call_update', $2
         WHERE coalesce((SELECT announce FROM calls WHERE id = ($2->>'call_id')::uuid), true)",
    )
    .bind(device_id)
    .bind(payload)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if queued == 0 {
        return Ok(());
    }
    notify(
        tx,
        &Notification::DeviceOutbox {
            device_id: device_id.to_owned(),
        },
    )
    .await
}

/// One device's read of its outbox: the messages not yet acknowledged, except `in_flight`
/// (sent on this connection and not yet acknowledged), oldest first, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRead {
    pub device_id: String,
    pub in_flight: Vec<i64>,
    pub limit: i64,
}

/// One device's acknowledgement of messages it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxAck {
    pub device_id: String,
    pub ids: Vec<i64>,
}

fn outbox_item(row: &sqlx::postgres::PgRow) -> Result<OutboxItem> {
    let payload: serde_json::Value = row.try_get("payload")?;
    let kind: String = row.try_get("kind")?;
    let unreadable = |error| StoreError::Refused(format!("unreadable outbox payload: {error}"));
    let payload = match kind.as_str() {
        "order_update" => {
            OutboxPayload::OrderUpdate(serde_json::from_value(payload).map_err(unreadable)?)
        }
        "notice" => OutboxPayload::Notice(serde_json::from_value(payload).map_err(unreadable)?),
        "reminder" => OutboxPayload::Reminder(serde_json::from_value(payload).map_err(unreadable)?),
        "content" => OutboxPayload::Content(serde_json::from_value(payload).map_err(unreadable)?),
        _ => OutboxPayload::CallUpdate(serde_json::from_value(payload).map_err(unreadable)?),
    };
    Ok(OutboxItem {
        id: row.try_get("id")?,
        payload,
    })
}

impl Store {
    /// Unacknowledged messages for a device, except those in `in_flight`, oldest first.
    pub async fn pending_outbox(
        &self,
        device_id: &str,
        in_flight: &[i64],
        limit: i64,
    ) -> Result<Vec<OutboxItem>> {
        let read = OutboxRead {
            device_id: device_id.to_owned(),
            in_flight: in_flight.to_vec(),
            limit,
        };
        let mut answers = self.pending_outboxes(std::slice::from_ref(&read)).await?;
        answers.pop().unwrap_or_else(|| Ok(Vec::new()))
    }

    /// [`Store::pending_outbox`] for many devices in one statement (a device may appear more
    /// than once), one answer per read in order. A message that cannot be decoded fails only
    /// its own device's answer.
    pub async fn pending_outboxes(
        &self,
        reads: &[OutboxRead],
    ) -> Result<Vec<Result<Vec<OutboxItem>>>> {
        let devices: Vec<&str> = reads.iter().map(|read| read.device_id.as_str()).collect();
        // Each device's window covers what is in flight, which is dropped here, not in SQL:
        // a two-dimensional array of unequal in-flight lists cannot be passed as one parameter.
        let windows: Vec<i64> = reads
            .iter()
            .map(|read| {
                read.limit
                    .max(0)
                    .saturating_add(i64::try_from(read.in_flight.len()).unwrap_or(i64::MAX))
            })
            .collect();
        let rows = sqlx::query(
            "SELECT r.n, o.id, o.kind, o.payload
             FROM unnest($1::text[], $2::int8[]) WITH ORDINALITY AS r(device_id, window_size, n)
             CROSS JOIN LATERAL (
                 SELECT id, kind, payload FROM device_outbox
                 WHERE device_id = r.device_id AND acked_at IS NULL
                 ORDER BY id LIMIT r.window_size
             ) o
             ORDER BY r.n, o.id",
        )
        .bind(&devices)
        .bind(&windows)
        .fetch_all(&self.pool)
        .await?;
        let mut answers: Vec<Result<Vec<OutboxItem>>> =
            reads.iter().map(|_| Ok(Vec::new())).collect();
        for row in &rows {
            let n: i64 = row.try_get("n")?;
            let Some(index) = usize::try_from(n - 1).ok().filter(|i| *i < reads.len()) else {
                continue;
            };
            let read = &reads[index];
            let Ok(items) = &mut answers[index] else {
                continue;
            };
            let id: i64 = row.try_get("id")?;
            if read.in_flight.contains(&id)
                || i64::try_from(items.len()).unwrap_or(i64::MAX) >= read.limit
            {
                continue;
            }
            match outbox_item(row) {
                Ok(item) => items.push(item),
                Err(error) => answers[index] = Err(error),
            }
        }
        Ok(answers)
    }

    /// Marks messages as acknowledged by the device that owns them.
    pub async fn ack_outbox(&self, device_id: &str, ids: &[i64]) -> Result<u64> {
        let ack = OutboxAck {
            device_id: device_id.to_owned(),
            ids: ids.to_vec(),
        };
        let counts = self.ack_outboxes(std::slice::from_ref(&ack)).await?;
        Ok(counts.first().copied().unwrap_or(0))
    }

    /// [`Store::ack_outbox`] for many devices in one statement: how many messages each
    /// acknowledgement marked, in order. A message is marked once, so a second acknowledgement
    /// of it (in this batch or later) counts nothing; a device cannot acknowledge another's.
    pub async fn ack_outboxes(&self, acks: &[OutboxAck]) -> Result<Vec<u64>> {
        let mut devices: Vec<&str> = Vec::new();
        let mut ids: Vec<i64> = Vec::new();
        for ack in acks {
            for id in &ack.ids {
                devices.push(ack.device_id.as_str());
                ids.push(*id);
            }
        }
        if ids.is_empty() {
            return Ok(vec![0; acks.len()]);
        }
        // The commit does not wait for the disk ([`crate::UNFLUSHED`]): an acknowledgement
        // lost in a database crash delivers its message again.
        let rows = sqlx::query(&format!(
            "UPDATE device_outbox o SET acked_at = now()
             FROM (SELECT DISTINCT device_id, id FROM unnest($1::text[], $2::int8[]) AS a(device_id, id)) a,
                  {UNFLUSHED}
             WHERE o.device_id = a.device_id AND o.id = a.id AND o.acked_at IS NULL
             RETURNING o.device_id, o.id"
        ))
        .bind(&devices)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut marked: std::collections::HashSet<(String, i64)> = std::collections::HashSet::new();
        for row in rows {
            marked.insert((row.try_get("device_id")?, row.try_get("id")?));
        }
        Ok(acks
            .iter()
            .map(|ack| {
                let mut count = 0;
                for id in &ack.ids {
                    // Counted for the first acknowledgement that names it.
                    if marked.remove(&(ack.device_id.clone(), *id)) {
                        count += 1;
                    }
                }
                count
            })
            .collect())
    }
}
