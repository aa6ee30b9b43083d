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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResidentRecord {
    pub resident_id: Uuid,
    pub full_name: String,
    pub address: String,
    pub phone: String,
    pub station_name: String,
    pub dialect: String,
    pub medical_notes: String,
    pub devices: Vec<DeviceSummaryRow>,
}

impl Store {
    /// Reads a resident's record on behalf of `actor` and audits the read. The audit row and the
    /// read commit together: there is no read without its audit entry.
    pub async fn read_resident(&self, resident_id: Uuid, actor: &str) -> Result<ResidentRecord> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT r.full_name, r.address, r.phone, r.dialect, r.medical_notes, s.name AS station_name
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
            devices,
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
