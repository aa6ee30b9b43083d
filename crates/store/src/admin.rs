//! Administration: stations, residents, operators and devices.

use sqlx::Row;
use uuid::Uuid;

use crate::{Result, Store, StoreError, UNFLUSHED};

/// A resident to enrol. Text is stored exactly as given (Chinese names and addresses included).
#[derive(Debug, Clone, Default)]
pub struct NewResident {
    pub station_id: Uuid,
    pub full_name: String,
    pub address: String,
    pub phone: String,
    pub dialect: String,
    pub medical_notes: String,
    /// Allergies, falls, living alone...: shown first on the operator's card.
    pub risk_warnings: String,
    /// How responders get in (key safe, neighbour with keys).
    pub key_safe: String,
}

/// What [`Store::device_arrived`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// A "device offline" alarm is open: `device_back` clears it.
    pub offline_alarm_open: bool,
    /// Messages wait for the device's acknowledgement: the session resends them.
    pub outbox_pending: bool,
}

/// A device to register: only its public key is kept.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub device_id: String,
    pub resident_id: Uuid,
    pub public_key: [u8; 32],
}

pub(crate) fn refuse_constraint(error: sqlx::Error, what: &str) -> StoreError {
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
            "INSERT INTO residents (id, station_id, full_name, address, phone, dialect, medical_notes,
                                    risk_warnings, key_safe)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(resident.station_id)
        .bind(&resident.full_name)
        .bind(&resident.address)
        .bind(&resident.phone)
        .bind(&resident.dialect)
        .bind(&resident.medical_notes)
        .bind(&resident.risk_warnings)
        .bind(&resident.key_safe)
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

    /// The public key of a device that may connect (known and not revoked), and the SHA-256 of
    /// the client certificate it is bound to, if any.
    pub async fn device_credentials(
        &self,
        device_id: &str,
    ) -> Result<Option<([u8; 32], Option<[u8; 32]>)>> {
        Ok(self
            .devices_credentials(&[device_id.to_owned()])
            .await?
            .remove(device_id))
    }

    /// [`Store::device_credentials`] for many devices in one statement: the ones found.
    pub async fn devices_credentials(
        &self,
        device_ids: &[String],
    ) -> Result<std::collections::HashMap<String, ([u8; 32], Option<[u8; 32]>)>> {
        let rows: Vec<(String, Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT id, public_key, client_cert_sha256 FROM devices
             WHERE id = ANY($1) AND revoked_at IS NULL",
        )
        .bind(device_ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, key, certificate)| {
                let key = <[u8; 32]>::try_from(key.as_slice()).ok()?;
                let certificate =
                    certificate.and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok());
                Some((id, (key, certificate)))
            })
            .collect())
    }

    /// Binds a device to its client certificate (the SHA-256 of its DER): from then on it must
    /// present it, and the certificate is good for this device only.
    pub async fn bind_client_certificate(&self, device_id: &str, sha256: &[u8; 32]) -> Result<()> {
        let changed = sqlx::query(
            "UPDATE devices SET client_cert_sha256 = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(device_id)
        .bind(sha256.as_slice())
        .execute(&self.pool)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(StoreError::NotFound {
                what: "device",
                id: device_id.to_owned(),
            });
        }
        Ok(())
    }

    /// Records when a device was last heard: `silent_for` ago, by the database clock.
    pub async fn device_seen(
        &self,
        device_id: &str,
        silent_for: std::time::Duration,
    ) -> Result<()> {
        self.devices_seen(&[(device_id.to_owned(), silent_for)])
            .await
    }

    /// A device's new session, in one round trip: records it as heard now and says what the
    /// session must do about it (clear a "device offline" alarm, resend its outbox). A
    /// reconnect storm makes this once per tablet, so it is one statement, not four.
    pub async fn device_arrived(&self, device_id: &str) -> Result<Arrival> {
        self.devices_arrived(&[device_id.to_owned()])
            .await?
            .remove(device_id)
            .ok_or_else(|| StoreError::NotFound {
                what: "device",
                id: device_id.to_owned(),
            })
    }

    /// [`Store::device_arrived`] for many devices in one statement (repeats allowed); a device
    /// that does not exist is left out of the answer.
    ///
    /// This and [`Store::devices_seen`] lock their rows in device id order. Two batches that
    /// share devices then queue behind each other instead of deadlocking: under a thousand
    /// alarms a second an arrival batch and a last-seen batch, each locking in its own order,
    /// deadlocked, and each deadlock held both for the second PostgreSQL takes to notice.
    pub async fn devices_arrived(
        &self,
        device_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Arrival>> {
        // Only the last-seen time is written: its commit need not wait for the disk.
        let rows = sqlx::query(&format!(
            "WITH ids AS (SELECT DISTINCT unnest($1::text[]) AS id),
             seen AS (
                 UPDATE devices d SET last_seen_at = greatest(coalesce(d.last_seen_at, '-infinity'),
                                                              clock_timestamp())
                 FROM (SELECT l.id FROM devices l JOIN ids ON ids.id = l.id
                       ORDER BY l.id FOR NO KEY UPDATE OF l) AS ordered, {UNFLUSHED}
                 WHERE d.id = ordered.id RETURNING d.id)
             SELECT seen.id,
                    EXISTS (SELECT 1 FROM alarms a WHERE a.device_id = seen.id
                            AND a.kind = 'DEVICE_OFFLINE' AND a.cleared_at IS NULL) AS offline,
                    EXISTS (SELECT 1 FROM device_outbox o WHERE o.device_id = seen.id
                            AND o.acked_at IS NULL) AS pending
             FROM seen"
        ))
        .bind(device_ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("id")?,
                    Arrival {
                        offline_alarm_open: row.try_get("offline")?,
                        outbox_pending: row.try_get("pending")?,
                    },
                ))
            })
            .collect()
    }

    /// As [`Store::devices_seen`], but a device whose row another transaction holds (a new
    /// session's arrival, another node's refresher) is skipped rather than waited for: those
    /// are returned, to be written again soon. A node's periodic refresher uses this, so that
    /// it never queues behind arrivals, and arrivals queue behind it only for as long as its
    /// own statement takes.
    pub async fn devices_seen_unless_busy(
        &self,
        silences: &[(String, std::time::Duration)],
    ) -> Result<Vec<String>> {
        let written: std::collections::HashSet<String> = self
            .write_last_seen(silences, true)
            .await?
            .into_iter()
            .collect();
        let not_written: Vec<&str> = silences
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| !written.contains(*id))
            .collect();
        if not_written.is_empty() {
            return Ok(Vec::new());
        }
        // A device that has gone (erased) is not written either, and never will be: only the
        // busy ones come back.
        Ok(
            sqlx::query_scalar("SELECT id FROM devices WHERE id = ANY($1::text[]) ORDER BY id")
                .bind(&not_written)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// As [`Store::device_seen`], for many devices in one statement. A last-seen time never
    /// moves backwards (another node may have heard the device more recently).
    pub async fn devices_seen(&self, silences: &[(String, std::time::Duration)]) -> Result<()> {
        self.write_last_seen(silences, false).await.map(drop)
    }

    /// Writes last-seen times, locking the rows in id order (waiting for busy ones, or skipping
    /// them); returns the ids written. A device named twice (two sessions that ended together)
    /// is written once, with its latest time. The commit does not wait for the disk
    /// ([`crate::UNFLUSHED`]).
    async fn write_last_seen(
        &self,
        silences: &[(String, std::time::Duration)],
        skip_busy: bool,
    ) -> Result<Vec<String>> {
        let ids: Vec<&str> = silences.iter().map(|(id, _)| id.as_str()).collect();
        let silent_ms: Vec<i64> = silences
            .iter()
            .map(|(_, silent)| i64::try_from(silent.as_millis()).unwrap_or(i64::MAX))
            .collect();
        let written = sqlx::query_scalar(&format!(
            "UPDATE devices d
             SET last_seen_at = greatest(coalesce(d.last_seen_at, '-infinity'),
                                         clock_timestamp() - make_interval(secs => v.silent_ms / 1000.0))
             FROM (SELECT l.id, v.silent_ms
                   FROM devices l
                   JOIN (SELECT u.id, min(u.silent_ms) AS silent_ms
                         FROM unnest($1::text[], $2::bigint[]) AS u(id, silent_ms)
                         GROUP BY u.id) AS v ON v.id = l.id
                   ORDER BY l.id FOR NO KEY UPDATE OF l{}) AS v, {UNFLUSHED}
             WHERE d.id = v.id
             RETURNING d.id",
            if skip_busy { " SKIP LOCKED" } else { "" }
        ))
        .bind(&ids)
        .bind(&silent_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(written)
    }
}

impl Store {
    /// Replaces an operator's skills. Each must be a skill the rules in force name, or a
    /// `dialect:` / `station:` skill that templates expand to.
    pub async fn set_operator_skills(&self, username: &str, skills: &[String]) -> Result<Uuid> {
        let rules = self.routing_rules().await?;
        let known: std::collections::BTreeSet<&str> =
            rules.rules().skills.iter().map(String::as_str).collect();
        for skill in skills {
            let templated = ["dialect:", "station:"]
                .iter()
                .any(|prefix| skill.len() > prefix.len() && skill.starts_with(prefix));
            if !templated && !known.contains(skill.as_str()) {
                return Err(StoreError::Refused(format!(
                    "unknown skill '{skill}': the rules in force know {}, plus dialect:<name> and station:<id>",
                    rules.rules().skills.join(", ")
                )));
            }
        }
        let normalized: Vec<String> = skills.iter().map(|skill| skill.to_lowercase()).collect();
        let id: Option<Uuid> =
            sqlx::query_scalar("UPDATE operators SET skills = $2 WHERE username = $1 RETURNING id")
                .bind(username)
                .bind(&normalized)
                .fetch_optional(&self.pool)
                .await?;
        id.ok_or_else(|| StoreError::NotFound {
            what: "operator",
            id: username.to_owned(),
        })
    }

    pub async fn operator_id(&self, username: &str) -> Result<Option<Uuid>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM operators WHERE username = $1")
                .bind(username)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn operator_skills(&self, operator_id: Uuid) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT skills FROM operators WHERE id = $1")
                .bind(operator_id)
                .fetch_optional(&self.pool)
                .await?
                .unwrap_or_default(),
        )
    }
}

impl Store {
    /// Registers a fleet of simulated tablets at once (for load tests): one resident per new
    /// device at `station_id`; devices already registered are left alone. Returns how many
    /// were added.
    pub async fn add_fleet(&self, station_id: Uuid, devices: &[(String, [u8; 32])]) -> Result<u64> {
        let mut added = 0;
        for chunk in devices.chunks(5000) {
            let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
            let keys: Vec<&[u8]> = chunk.iter().map(|(_, key)| &key[..]).collect();
            added += sqlx::query(
                "WITH input AS (
                     SELECT * FROM unnest($2::text[], $3::bytea[]) AS t(device_id, public_key)),
                 fresh AS (
                     SELECT i.device_id, i.public_key, gen_random_uuid() AS resident_id
                     FROM input i
                     WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = i.device_id)),
                 residents_added AS (
                     INSERT INTO residents (id, station_id, full_name)
                     SELECT resident_id, $1, 'Fleet ' || device_id FROM fresh)
                 INSERT INTO devices (id, resident_id, public_key)
                 SELECT device_id, resident_id, public_key FROM fresh",
            )
            .bind(station_id)
            .bind(&ids)
            .bind(&keys)
            .execute(&self.pool)
            .await
            .map_err(|error| refuse_constraint(error, "fleet device"))?
            .rows_affected();
        }
        Ok(added)
    }
}
