//! Trust and privacy: revoking a device everywhere at once, and a resident's data exported or
//! erased on request (keeping what must legally be kept: the care and money records, without
//! the free text that could name or describe the person).

use serde_json::{json, Value};
use sqlx::Row;
use uuid::Uuid;

use crate::{append_event, notify, Notification, Result, Store, StoreError};

/// Columns never exported: secrets that are not "data about" anyone.
const SECRET_COLUMNS: &[&str] = &["password_hash", "token_hash"];

/// What an erasure changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erasure {
    pub devices_revoked: u64,
    pub contacts_anonymised: u64,
    pub events_scrubbed: i64,
    pub webhook_bodies_cleared: u64,
}

async fn audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    actor: &str,
    action: &str,
    resident_id: Option<Uuid>,
    detail: Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, resident_id, detail) VALUES ($1, $2, $3, $4)",
    )
    .bind(actor)
    .bind(action)
    .bind(resident_id)
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revokes those of `device_ids` not revoked yet: each is marked, gets a `device.revoked` event
/// with `detail`, and a `DeviceRevoked` notification, so that whichever node holds its session
/// ends it. Returns the devices revoked now.
async fn revoke_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    device_ids: &[String],
    reason: &str,
    detail: Value,
) -> Result<Vec<String>> {
    let revoked: Vec<String> = sqlx::query_scalar(
        "UPDATE devices SET revoked_at = clock_timestamp(), revoked_reason = $2
         WHERE id = ANY($1) AND revoked_at IS NULL RETURNING id",
    )
    .bind(device_ids)
    .bind(reason)
    .fetch_all(&mut **tx)
    .await?;
    for device_id in &revoked {
        append_event(
            tx,
            "device.revoked",
            None,
            None,
            None,
            Some(device_id),
            detail.clone(),
        )
        .await?;
        notify(
            tx,
            &Notification::DeviceRevoked {
                device_id: device_id.clone(),
            },
        )
        .await?;
    }
    Ok(revoked)
}

impl Store {
    /// Revokes a device: it can no longer authenticate, and whichever node holds its session
    /// ends it as soon as the notification arrives. Revoking twice is refused.
    pub async fn revoke_device(&self, device_id: &str, actor: &str, reason: &str) -> Result<()> {
        if reason.chars().count() > 500 {
            return Err(StoreError::Invalid(
                "the reason is longer than 500 characters".to_owned(),
            ));
        }
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT resident_id, revoked_at IS NOT NULL AS revoked FROM devices WHERE id = $1 FOR UPDATE",
        )
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "device",
            id: device_id.to_owned(),
        })?;
        if row.try_get::<bool, _>("revoked")? {
            return Err(StoreError::Refused(format!(
                "device {device_id} is already revoked"
            )));
        }
        let resident_id: Uuid = row.try_get("resident_id")?;
        revoke_in(
            &mut tx,
            &[device_id.to_owned()],
            reason,
            json!({ "by": actor }),
        )
        .await?;
        audit(
            &mut tx,
            actor,
            "device.revoke",
            Some(resident_id),
            json!({ "device_id": device_id }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Everything stored about a resident, table by table, as JSON: every row that refers to
    /// the resident, their devices, calls, orders, contacts, money and notifications (found
    /// through the schema's own columns, so a new table is included without changing this).
    /// The export is itself audited.
    pub async fn export_resident(&self, resident_id: Uuid, actor: &str) -> Result<Value> {
        let mut tx = self.pool.begin().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM residents WHERE id = $1)")
                .bind(resident_id)
                .fetch_one(&mut *tx)
                .await?;
        if !exists {
            return Err(StoreError::NotFound {
                what: "resident",
                id: resident_id.to_string(),
            });
        }
        let devices: Vec<String> =
            sqlx::query_scalar("SELECT id FROM devices WHERE resident_id = $1")
                .bind(resident_id)
                .fetch_all(&mut *tx)
                .await?;
        let calls: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM calls WHERE resident_id = $1 OR device_id = ANY($2)",
        )
        .bind(resident_id)
        .bind(&devices)
        .fetch_all(&mut *tx)
        .await?;
        let orders: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM orders WHERE resident_id = $1")
            .bind(resident_id)
            .fetch_all(&mut *tx)
            .await?;
        let contacts: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM contacts WHERE resident_id = $1")
                .bind(resident_id)
                .fetch_all(&mut *tx)
                .await?;
        let transactions: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM ledger_transactions WHERE resident_id = $1 OR order_id = ANY($2)",
        )
        .bind(resident_id)
        .bind(&orders)
        .fetch_all(&mut *tx)
        .await?;
        let notifications: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM family_notifications WHERE call_id = ANY($1) OR contact_id = ANY($2)",
        )
        .bind(&calls)
        .bind(&contacts)
        .fetch_all(&mut *tx)
        .await?;
        let schedules: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM schedules WHERE resident_id = $1")
                .bind(resident_id)
                .fetch_all(&mut *tx)
                .await?;
        // Which tables have which of the linking columns.
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema()
               AND column_name IN ('resident_id', 'device_id', 'call_id', 'order_id',
                                   'contact_id', 'transaction_id', 'notification_id',
                                   'schedule_id')
             ORDER BY table_name, column_name",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut links: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (table, column) in columns {
            links.entry(table).or_default().push(column);
        }
        links.insert("residents".to_owned(), vec!["id".to_owned()]);
        let mut tables = serde_json::Map::new();
        for (table, columns) in links {
            let mut conditions: Vec<String> = columns
                .iter()
                .map(|column| {
                    let parameter = match column.as_str() {
                        "id" | "resident_id" => "$1",
                        "device_id" => "$2",
                        "call_id" => "$3",
                        "order_id" => "$4",
                        "contact_id" => "$5",
                        "transaction_id" => "$6",
                        "notification_id" => "$7",
                        _ => "$8",
                    };
                    if parameter == "$1" {
                        format!("t.\"{column}\" = {parameter}")
                    } else {
                        format!("t.\"{column}\" = ANY({parameter})")
                    }
                })
                .collect();
            // The device table's own key is `id`.
            if table == "devices" {
                conditions.push("t.id = ANY($2)".to_owned());
            }
            let hidden: String = SECRET_COLUMNS
                .iter()
                .map(|column| format!(" - '{column}'"))
                .collect();
            let sql = format!(
                "SELECT coalesce(json_agg(to_jsonb(t){hidden}), '[]'::json) FROM \"{table}\" t
                 WHERE {}",
                conditions.join(" OR ")
            );
            let rows: Value = sqlx::query_scalar(&sql)
                .bind(resident_id)
                .bind(&devices)
                .bind(&calls)
                .bind(&orders)
                .bind(&contacts)
                .bind(&transactions)
                .bind(&notifications)
                .bind(&schedules)
                .fetch_one(&mut *tx)
                .await?;
            if rows.as_array().is_some_and(|rows| !rows.is_empty()) {
                tables.insert(table, rows);
            }
        }
        audit(
            &mut tx,
            actor,
            "resident.export",
            Some(resident_id),
            json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(json!({
            "resident_id": resident_id,
            "exported_by": actor,
            "tables": tables,
        }))
    }

    /// Erases a resident's personal data on request. What is kept, because care and money
    /// records must be: calls, alarms, offers, orders and the ledger, with their times, kinds
    /// and outcomes, under the resident's id. What goes: name, address, phone, position,
    /// medical notes, risk warnings, key safe, contacts' names and phones, free-text notes on
    /// calls, alarms and orders, messages waiting for the tablet, webhook bodies that carried
    /// personal data, and free text in the event log. The resident's tablets are revoked.
    pub async fn erase_resident(&self, resident_id: Uuid, actor: &str) -> Result<Erasure> {
        let mut tx = self.pool.begin().await?;
        let erased: Option<Option<chrono::DateTime<chrono::Utc>>> =
            sqlx::query_scalar("SELECT erased_at FROM residents WHERE id = $1 FOR UPDATE")
                .bind(resident_id)
                .fetch_optional(&mut *tx)
                .await?;
        match erased {
            None => {
                return Err(StoreError::NotFound {
                    what: "resident",
                    id: resident_id.to_string(),
                })
            }
            Some(Some(_)) => {
                return Err(StoreError::Refused(format!(
                    "resident {resident_id} is already erased"
                )))
            }
            Some(None) => {}
        }
        let devices: Vec<String> =
            sqlx::query_scalar("SELECT id FROM devices WHERE resident_id = $1")
                .bind(resident_id)
                .fetch_all(&mut *tx)
                .await?;
        let revoked = revoke_in(&mut tx, &devices, "erased", json!({ "by": actor })).await?;
        sqlx::query(
            "UPDATE residents SET full_name = '(erased)', address = '', phone = '', dialect = '',
                    medical_notes = '', risk_warnings = '', key_safe = '', lat = NULL, lon = NULL,
                    erased_at = clock_timestamp()
             WHERE id = $1",
        )
        .bind(resident_id)
        .execute(&mut *tx)
        .await?;
        let contacts = sqlx::query(
            "UPDATE contacts SET name = '(erased)', relationship = '', phone = '',
                    family_account_id = NULL, channels = '{}'
             WHERE resident_id = $1",
        )
        .bind(resident_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("UPDATE calls SET note = '' WHERE resident_id = $1 AND note <> ''")
            .bind(resident_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE alarms SET detail = '' WHERE device_id = ANY($1) AND detail <> ''")
            .bind(&devices)
            .execute(&mut *tx)
            .await?;
        // A reminder's title can be a medicine or an appointment: gone, and nothing more sent.
        sqlx::query(
            "UPDATE schedules SET title = '(erased)', active = false, next_due_at = NULL
             WHERE resident_id = $1",
        )
        .bind(resident_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE residents SET interests = '{}' WHERE id = $1")
            .bind(resident_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE alarm_actions SET note = '' WHERE note <> ''
               AND call_id IN (SELECT id FROM calls WHERE resident_id = $1)",
        )
        .bind(resident_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE orders SET note = '', completion_notes = '', callback_note = '',
                    cancel_reason = '',
                    arrived_lat = NULL, arrived_lon = NULL
             WHERE resident_id = $1",
        )
        .bind(resident_id)
        .execute(&mut *tx)
        .await?;
        // An enrolment code not yet used must not bring a tablet back.
        sqlx::query(
            "UPDATE enrolment_codes SET expires_at = clock_timestamp()
             WHERE resident_id = $1 AND used_at IS NULL AND expires_at > clock_timestamp()",
        )
        .bind(resident_id)
        .execute(&mut *tx)
        .await?;
        // What the tablets were sent, content records with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM device_outbox WHERE device_id = ANY($1)")
            .bind(&devices)
            .execute(&mut *tx)
            .await?;
        // Nothing more is sent, told or queued for an erased resident's schedules.
        sqlx::query(
            "UPDATE schedule_occurrences SET next_step_at = NULL
             WHERE next_step_at IS NOT NULL
               AND schedule_id IN (SELECT id FROM schedules WHERE resident_id = $1)",
        )
        .bind(resident_id)
        .execute(&mut *tx)
        .await?;
        // Every message about the resident to a contact: alarms' and missed reminders'.
        let webhook_bodies_cleared = sqlx::query(
            "UPDATE webhook_deliveries SET body = jsonb_build_object('erased', true)
             WHERE notification_id IN (
                 SELECT n.id FROM family_notifications n
                 JOIN contacts c ON c.id = n.contact_id
                 WHERE c.resident_id = $1)",
        )
        .bind(resident_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let events_scrubbed: i64 = sqlx::query_scalar("SELECT scrub_resident_events($1)")
            .bind(resident_id)
            .fetch_one(&mut *tx)
            .await?;
        append_event(
            &mut tx,
            "resident.erased",
            None,
            None,
            None,
            None,
            json!({ "resident_id": resident_id, "by": actor }),
        )
        .await?;
        audit(
            &mut tx,
            actor,
            "resident.erase",
            Some(resident_id),
            json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(Erasure {
            devices_revoked: revoked.len() as u64,
            contacts_anonymised: contacts,
            events_scrubbed,
            webhook_bodies_cleared,
        })
    }
}

/// Failed sign-ins in a row (per API and account name) before the name is locked.
pub const MAX_SIGN_IN_FAILURES: i32 = 5;
/// How long a locked name stays locked.
pub const SIGN_IN_LOCKOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl Store {
    /// How long `username` (for the `kind` API: operator, family, provider) is still locked
    /// after too many failed sign-ins, if it is.
    pub async fn sign_in_locked(
        &self,
        kind: &str,
        username: &str,
    ) -> Result<Option<std::time::Duration>> {
        let left_ms: Option<i64> = sqlx::query_scalar(
            "SELECT (extract(epoch FROM locked_until - clock_timestamp()) * 1000)::bigint
             FROM sign_in_failures
             WHERE kind = $1 AND username = $2 AND locked_until > clock_timestamp()",
        )
        .bind(kind)
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        Ok(left_ms.map(|ms| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
    }

    /// Counts a failed sign-in; the [`MAX_SIGN_IN_FAILURES`]th in a row locks the name for
    /// [`SIGN_IN_LOCKOUT`] (and starts the count again). Returns whether it is locked now.
    pub async fn sign_in_failed(&self, kind: &str, username: &str) -> Result<bool> {
        let locked: bool = sqlx::query_scalar(
            "INSERT INTO sign_in_failures AS f (kind, username, failures) VALUES ($1, $2, 1)
             ON CONFLICT (kind, username) DO UPDATE SET
                 failures = CASE WHEN f.failures + 1 >= $3 THEN 0 ELSE f.failures + 1 END,
                 locked_until = CASE WHEN f.failures + 1 >= $3
                                     THEN clock_timestamp() + make_interval(secs => $4)
                                     ELSE f.locked_until END,
                 last_failure_at = clock_timestamp()
             RETURNING coalesce(locked_until > clock_timestamp(), false)",
        )
        .bind(kind)
        .bind(username)
        .bind(MAX_SIGN_IN_FAILURES)
        .bind(SIGN_IN_LOCKOUT.as_secs_f64())
        .fetch_one(&self.pool)
        .await?;
        Ok(locked)
    }

    /// A successful sign-in clears the name's failures.
    pub async fn sign_in_succeeded(&self, kind: &str, username: &str) -> Result<()> {
        sqlx::query("DELETE FROM sign_in_failures WHERE kind = $1 AND username = $2")
            .bind(kind)
            .bind(username)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// The alphabet of enrolment codes (Crockford's base 32: no I, L, O or U to misread).
const CODE_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in an enrolment code: 60 random bits, far beyond guessing within its lifetime.
const CODE_LENGTH: usize = 12;

/// A code as typed, in its canonical form (upper case, without separators, I/L → 1, O → 0);
/// `None` when it cannot be a code.
fn canonical_code(code: &str) -> Option<String> {
    let canonical: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| match c.to_ascii_uppercase() {
            'I' | 'L' => '1',
            'O' => '0',
            other => other,
        })
        .collect();
    (canonical.len() == CODE_LENGTH && canonical.bytes().all(|b| CODE_ALPHABET.contains(&b)))
        .then_some(canonical)
}

fn code_hash(canonical: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(canonical.as_bytes()).to_vec()
}

impl Store {
    /// A one-time enrolment code for a new tablet of `resident_id` (replacing `replaces`, which
    /// is revoked when the new tablet enrols), valid for `valid_for`. Returns the code as
    /// printed (`XXXX-XXXX-XXXX`); only its hash is stored.
    pub async fn create_enrolment_code(
        &self,
        resident_id: Uuid,
        replaces: Option<&str>,
        valid_for: std::time::Duration,
        actor: &str,
    ) -> Result<String> {
        if valid_for.is_zero() || valid_for > std::time::Duration::from_secs(30 * 86_400) {
            return Err(StoreError::Invalid(
                "an enrolment code is valid for between a second and 30 days".to_owned(),
            ));
        }
        let code: String = {
            use rand::Rng;
            let mut rng = rand::thread_rng();
            (0..CODE_LENGTH)
                .map(|_| char::from(CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())]))
                .collect()
        };
        let mut tx = self.pool.begin().await?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM residents WHERE id = $1 AND erased_at IS NULL)",
        )
        .bind(resident_id)
        .fetch_one(&mut *tx)
        .await?;
        if !exists {
            return Err(StoreError::NotFound {
                what: "resident",
                id: resident_id.to_string(),
            });
        }
        if let Some(old) = replaces {
            let same_resident: Option<bool> =
                sqlx::query_scalar("SELECT resident_id = $2 FROM devices WHERE id = $1")
                    .bind(old)
                    .bind(resident_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            match same_resident {
                None => {
                    return Err(StoreError::NotFound {
                        what: "device",
                        id: old.to_owned(),
                    })
                }
                Some(false) => {
                    return Err(StoreError::Refused(format!(
                        "device {old} belongs to another resident"
                    )))
                }
                Some(true) => {}
            }
        }
        sqlx::query(
            "INSERT INTO enrolment_codes (code_hash, resident_id, replaces, created_by, expires_at)
             VALUES ($1, $2, $3, $4, clock_timestamp() + make_interval(secs => $5))",
        )
        .bind(code_hash(&code))
        .bind(resident_id)
        .bind(replaces)
        .bind(actor)
        .bind(valid_for.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            actor,
            "device.enrolment_code",
            Some(resident_id),
            json!({ "replaces": replaces }),
        )
        .await?;
        tx.commit().await?;
        Ok(format!("{}-{}-{}", &code[0..4], &code[4..8], &code[8..12]))
    }

    /// Enrols a tablet: the code (once, before it expires) registers `public_key` as a new
    /// device of the code's resident and revokes the device it replaces. Every failure of the
    /// code itself (unknown, used, expired) is the same `Refused`, so that guessing learns
    /// nothing. Returns the new device's id.
    pub async fn enrol_device(&self, code: &str, public_key: &[u8; 32]) -> Result<String> {
        const REFUSED: &str = "unknown, used or expired enrolment code";
        let Some(canonical) = canonical_code(code) else {
            return Err(StoreError::Invalid(format!(
                "an enrolment code is {CODE_LENGTH} letters and digits, e.g. 7K3D-9QXM-2HFA"
            )));
        };
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT resident_id, replaces FROM enrolment_codes
             WHERE code_hash = $1 AND used_at IS NULL AND expires_at > clock_timestamp()
             FOR UPDATE",
        )
        .bind(code_hash(&canonical))
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Refused(REFUSED.to_owned()))?;
        let resident_id: Uuid = row.try_get("resident_id")?;
        let replaces: Option<String> = row.try_get("replaces")?;
        let device_id = format!("tab-{}", &Uuid::new_v4().simple().to_string()[..12]);
        sqlx::query("INSERT INTO devices (id, resident_id, public_key) VALUES ($1, $2, $3)")
            .bind(&device_id)
            .bind(resident_id)
            .bind(public_key.as_slice())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE enrolment_codes SET used_at = clock_timestamp(), device_id = $2
             WHERE code_hash = $1",
        )
        .bind(code_hash(&canonical))
        .bind(&device_id)
        .execute(&mut *tx)
        .await?;
        append_event(
            &mut tx,
            "device.enrolled",
            None,
            None,
            None,
            Some(&device_id),
            json!({ "replaces": replaces }),
        )
        .await?;
        if let Some(old) = &replaces {
            revoke_in(
                &mut tx,
                std::slice::from_ref(old),
                "replaced",
                json!({ "by": "enrolment", "replaced_by": device_id }),
            )
            .await?;
        }
        audit(
            &mut tx,
            "enrolment",
            "device.enrol",
            Some(resident_id),
            json!({ "device_id": device_id, "replaces": replaces }),
        )
        .await?;
        tx.commit().await?;
        Ok(device_id)
    }
}

#[cfg(test)]
mod tests {
    use super::canonical_code;

    #[test]
    fn codes_are_read_as_people_type_them() {
        assert_eq!(
            canonical_code("7k3d-9qxm-2hfa").as_deref(),
            Some("7K3D9QXM2HFA")
        );
        assert_eq!(
            canonical_code("7K3D 9QXM 2HFA").as_deref(),
            Some("7K3D9QXM2HFA")
        );
        assert_eq!(
            canonical_code("ILO0-0000-0000").as_deref(),
            Some("110000000000")
        );
        assert_eq!(canonical_code("7K3D-9QXM"), None);
        assert_eq!(canonical_code("7K3D-9QXM-2HFU"), None);
        assert_eq!(canonical_code("'; DROP TABLE--"), None);
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub action: String,
    pub resident_id: Option<Uuid>,
    pub detail: Value,
}

impl Store {
    /// The audit log, newest first: optionally one resident's entries, one actor's, at most
    /// `limit` (1 to 10,000).
    pub async fn audit_entries(
        &self,
        resident_id: Option<Uuid>,
        actor: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        if !(1..=10_000).contains(&limit) {
            return Err(StoreError::Invalid(
                "the limit is between 1 and 10000 entries".to_owned(),
            ));
        }
        let rows = sqlx::query(
            "SELECT at, actor, action, resident_id, detail FROM audit_log
             WHERE ($1::uuid IS NULL OR resident_id = $1) AND ($2::text IS NULL OR actor = $2)
             ORDER BY id DESC LIMIT $3",
        )
        .bind(resident_id)
        .bind(actor)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(AuditEntry {
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    resident_id: row.try_get("resident_id")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }
}

impl Store {
    /// A connected device's new key (it proved holding it): every later handshake must use it.
    /// Rotating to the key in use changes nothing; a revoked or unknown device is refused.
    pub async fn rotate_device_key(&self, device_id: &str, public_key: &[u8; 32]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT resident_id, public_key = $2 AS same FROM devices
             WHERE id = $1 AND revoked_at IS NULL FOR UPDATE",
        )
        .bind(device_id)
        .bind(public_key.as_slice())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "device",
            id: device_id.to_owned(),
        })?;
        if row.try_get::<bool, _>("same")? {
            return Ok(());
        }
        let resident_id: Uuid = row.try_get("resident_id")?;
        sqlx::query("UPDATE devices SET public_key = $2 WHERE id = $1")
            .bind(device_id)
            .bind(public_key.as_slice())
            .execute(&mut *tx)
            .await?;
        append_event(
            &mut tx,
            "device.key_rotated",
            None,
            None,
            None,
            Some(device_id),
            json!({}),
        )
        .await?;
        audit(
            &mut tx,
            &format!("device:{device_id}"),
            "device.rotate_key",
            Some(resident_id),
            json!({ "device_id": device_id }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Records an administration command the administrator ran (`admin:cli`): its name and
    /// the resident it concerns, never its arguments (they may hold personal data).
    pub async fn audit_admin(&self, action: &str, resident_id: Option<Uuid>) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (actor, action, resident_id) VALUES ('admin:cli', $1, $2)",
        )
        .bind(action)
        .bind(resident_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl Store {
    /// Audits a provider being shown residents' names and addresses (the orders it holds).
    pub async fn audit_provider_reads(&self, provider_id: Uuid, residents: &[Uuid]) -> Result<()> {
        if residents.is_empty() {
            return Ok(());
        }
        self.audit_reads(
            &format!("provider:{provider_id}"),
            "provider.read_order",
            residents,
        )
        .await
    }

    /// Audits reads of several residents' data by `actor` in one statement.
    pub(crate) async fn audit_reads(
        &self,
        actor: &str,
        action: &str,
        residents: &[Uuid],
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (actor, action, resident_id)
             SELECT $1, $2, unnest($3::uuid[])",
        )
        .bind(actor)
        .bind(action)
        .bind(residents)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
