//! A resident's record as the console shows it; every read is written to the audit log in the
//! same transaction.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use crate::{Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSummaryRow {
    pub device_id: String,
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// A contact as the operator's card shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ContactRow {
    pub name: String,
    pub relationship: String,
    pub phone: String,
    pub holds_keys: bool,
    pub position: Option<i32>,
}

/// One of the resident's recent calls.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct InteractionRow {
    pub call_id: Uuid,
    pub kind: String,
    pub state: String,
    pub disposition: Option<String>,
    pub note: Option<String>,
    pub operator_name: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResidentRecord {
    pub resident_id: Uuid,
    pub full_name: String,
    pub address: String,
    pub phone: String,
    pub station_name: String,
    pub dialect: String,
    pub medical_notes: String,
    pub risk_warnings: String,
    pub key_safe: String,
    pub devices: Vec<DeviceSummaryRow>,
    pub contacts: Vec<ContactRow>,
    /// The last ten calls, newest first.
    pub recent: Vec<InteractionRow>,
    pub open_orders: Vec<crate::OrderRow>,
}

impl Store {
    /// Reads a resident's record on behalf of `actor` and audits the read. The audit row and the
    /// read commit together: there is no read without its audit entry.
    pub async fn read_resident(&self, resident_id: Uuid, actor: &str) -> Result<ResidentRecord> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT r.full_name, r.address, r.phone, r.dialect, r.medical_notes, r.risk_warnings,
                    r.key_safe, s.name AS station_name
             FROM residents r JOIN stations s ON s.id = r.station_id
             WHERE r.id = $1",
        )
        .bind(resident_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "resident",
            id: resident_id.to_string(),
        })?;
        let devices = sqlx::query(
            "SELECT id, last_seen_at FROM devices
             WHERE resident_id = $1 AND revoked_at IS NULL ORDER BY id",
        )
        .bind(resident_id)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|device| {
            Ok(DeviceSummaryRow {
                device_id: device.try_get("id")?,
                last_seen_at: device.try_get("last_seen_at")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let contacts: Vec<ContactRow> = sqlx::query_as(
            "SELECT name, relationship, phone, holds_keys, position FROM contacts
             WHERE resident_id = $1 ORDER BY position NULLS FIRST, name",
        )
        .bind(resident_id)
        .fetch_all(&mut *tx)
        .await?;
        let recent: Vec<InteractionRow> = sqlx::query_as(
            "SELECT c.id AS call_id, c.kind, c.state, c.disposition, c.note,
                    o.display_name AS operator_name, c.created_at
             FROM calls c LEFT JOIN operators o ON o.id = c.answered_by
             WHERE c.resident_id = $1 ORDER BY c.created_at DESC LIMIT 10",
        )
        .bind(resident_id)
        .fetch_all(&mut *tx)
        .await?;
        let open_orders: Vec<crate::OrderRow> = sqlx::query_as(&format!(
            "{} WHERE o.resident_id = $1 AND o.state NOT IN ('closed', 'cancelled')
             ORDER BY o.created_at DESC LIMIT 20",
            crate::orders::ORDER_SELECT
        ))
        .bind(resident_id)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO audit_log (actor, action, resident_id, detail) VALUES ($1, 'resident.read', $2, $3)",
        )
        .bind(actor)
        .bind(resident_id)
        .bind(json!({}))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ResidentRecord {
            resident_id,
            full_name: row.try_get("full_name")?,
            address: row.try_get("address")?,
            phone: row.try_get("phone")?,
            station_name: row.try_get("station_name")?,
            dialect: row.try_get("dialect")?,
            medical_notes: row.try_get("medical_notes")?,
            risk_warnings: row.try_get("risk_warnings")?,
            key_safe: row.try_get("key_safe")?,
            devices,
            contacts,
            recent,
            open_orders,
        })
    }

    /// How many audited reads of a resident's record `actor` has made.
    pub async fn audited_reads(&self, resident_id: Uuid, actor: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM audit_log WHERE resident_id = $1 AND actor = $2 AND action = 'resident.read'",
        )
        .bind(resident_id)
        .bind(actor)
        .fetch_one(&self.pool)
        .await?)
    }
}
