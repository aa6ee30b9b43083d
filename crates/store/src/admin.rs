//! Administration: stations, residents, operators and devices.

use uuid::Uuid;

use crate::{Result, Store, StoreError};

/// A resident to enrol. Text is stored exactly as given (Chinese names and addresses included).
#[derive(Debug, Clone, Default)]
pub struct NewResident {
    pub station_id: Uuid,
    pub full_name: String,
    pub address: String,
    pub phone: String,
    pub dialect: String,
    pub medical_notes: String,
}

/// A device to register: only its public key is kept.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub device_id: String,
    pub resident_id: Uuid,
    pub public_key: [u8; 32],
}

fn refuse_constraint(error: sqlx::Error, what: &str) -> StoreError {
    match error.as_database_error() {
        Some(db) if db.is_unique_violation() => {
            StoreError::Refused(format!("{what} already exists"))
        }
        Some(db) if db.is_check_violation() => {
            StoreError::Refused(format!("{what} has a field that is empty or too long"))
        }
        Some(db) if db.is_foreign_key_violation() => {
            StoreError::Refused(format!("{what} refers to something that does not exist"))
        }
        _ => StoreError::Database(error),
    }
}

impl Store {
    pub async fn add_station(&self, name: &str) -> Result<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO stations (id, name) VALUES ($1, $2)")
            .bind(id)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(|error| refuse_constraint(error, "station"))?;
        Ok(id)
    }

    pub async fn add_resident(&self, resident: &NewResident) -> Result<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO residents (id, station_id, full_name, address, phone, dialect, medical_notes)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(resident.station_id)
        .bind(&resident.full_name)
        .bind(&resident.address)
        .bind(&resident.phone)
        .bind(&resident.dialect)
        .bind(&resident.medical_notes)
        .execute(&self.pool)
        .await
        .map_err(|error| refuse_constraint(error, "resident"))?;
        Ok(id)
    }

    /// `password_hash` is a PHC string (argon2id); this crate never sees a password.
    pub async fn add_operator(
        &self,
        username: &str,
        display_name: &str,
        password_hash: &str,
    ) -> Result<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO operators (id, username, display_name, password_hash) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(username)
        .bind(display_name)
        .bind(password_hash)
        .execute(&self.pool)
        .await
        .map_err(|error| refuse_constraint(error, "operator"))?;
        Ok(id)
    }

    pub async fn add_device(&self, device: &NewDevice) -> Result<()> {
        sqlx::query("INSERT INTO devices (id, resident_id, public_key) VALUES ($1, $2, $3)")
            .bind(&device.device_id)
            .bind(device.resident_id)
            .bind(device.public_key.as_slice())
            .execute(&self.pool)
            .await
            .map_err(|error| refuse_constraint(error, "device"))?;
        Ok(())
    }

    /// The public key of a device that may connect (known and not revoked).
    pub async fn device_public_key(&self, device_id: &str) -> Result<Option<[u8; 32]>> {
        let key: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT public_key FROM devices WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(key.and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok()))
    }

    /// Records that a device was heard from now (database clock).
    pub async fn touch_device(&self, device_id: &str) -> Result<()> {
        sqlx::query("UPDATE devices SET last_seen_at = now() WHERE id = $1")
            .bind(device_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
