//! The device outbox: messages that must reach a tablet, kept until it acknowledges them, so
//! they survive a dropped connection, a reconnect to another node and a node crash.

use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::{notify, Notification, Result, Store, StoreError};

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

impl Store {
    /// Unacknowledged messages for a device, except those in `in_flight`, oldest first.
    pub async fn pending_outbox(
        &self,
        device_id: &str,
        in_flight: &[i64],
        limit: i64,
    ) -> Result<Vec<OutboxItem>> {
        let rows = sqlx::query(
            "SELECT id, kind, payload FROM device_outbox
             WHERE device_id = $1 AND acked_at IS NULL AND NOT (id = ANY($2))
             ORDER BY id LIMIT $3",
        )
        .bind(device_id)
        .bind(in_flight)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let payload: serde_json::Value = row.try_get("payload")?;
                let kind: String = row.try_get("kind")?;
                let unreadable =
                    |error| StoreError::Refused(format!("unreadable outbox payload: {error}"));
                let payload = match kind.as_str() {
                    "order_update" => OutboxPayload::OrderUpdate(
                        serde_json::from_value(payload).map_err(unreadable)?,
                    ),
                    "notice" => {
                        OutboxPayload::Notice(serde_json::from_value(payload).map_err(unreadable)?)
                    }
                    "reminder" => OutboxPayload::Reminder(
                        serde_json::from_value(payload).map_err(unreadable)?,
                    ),
                    "content" => {
                        OutboxPayload::Content(serde_json::from_value(payload).map_err(unreadable)?)
                    }
                    _ => OutboxPayload::CallUpdate(
                        serde_json::from_value(payload).map_err(unreadable)?,
                    ),
                };
                Ok(OutboxItem {
                    id: row.try_get("id")?,
                    payload,
                })
            })
            .collect()
    }

    /// Marks messages as acknowledged by the device that owns them.
    pub async fn ack_outbox(&self, device_id: &str, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(sqlx::query(
            "UPDATE device_outbox SET acked_at = now()
             WHERE device_id = $1 AND id = ANY($2) AND acked_at IS NULL",
        )
        .bind(device_id)
        .bind(ids)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
