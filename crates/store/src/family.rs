//! Contacts, family accounts and the family cascade: for an emergency still unanswered after
//! `family_after_secs`, the parallel contacts are told at once and the ordered ones in turn
//! (each with `cascade_step_secs` to acknowledge) until one acknowledges; if nobody does, the
//! supervisors are alerted. A family member sees and acknowledges only their own relatives'
//! alerts. Every step is an event.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{Postgres, Row, Transaction};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

use crate::{
    append_event, append_events, notify, notify_all, Notification, Result, Store, StoreError,
};

/// A contact to add to a resident.
#[derive(Debug, Clone, Default)]
pub struct NewContact {
    pub resident_id: Uuid,
    pub name: String,
    pub relationship: String,
    pub phone: String,
    pub holds_keys: bool,
    /// `Some(n)`: n-th in the ordered cascade; `None`: told at once, in parallel.
    pub position: Option<i32>,
    pub family_account_id: Option<Uuid>,
    /// `app` (the family API), `sms` or `webhook` (through the webhook channel). Empty: `app`.
    pub channels: Vec<String>,
}

/// An alert as a family member sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyAlert {
    pub notification_id: i64,
    /// The alarm's call (`None`: a missed reminder or check-in, kind `missed_reminder` or
    /// `missed_check_in`).
    pub call_id: Option<Uuid>,
    pub resident_id: Uuid,
    pub resident_name: String,
    pub kind: String,
    pub state: String,
    pub sent_at: Option<DateTime<Utc>>,
    pub acknowledged_at: Option<DateTime<Utc>>,
}

impl Store {
    pub async fn add_family_account(
        &self,
        username: &str,
        display_name: &str,
        password_hash: &str,
    ) -> Result<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO family_accounts (id, username, display_name, password_hash) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(username)
            .bind(display_name)
            .bind(password_hash)
            .execute(&self.pool)
            .await
            .map_err(|error| match error.as_database_error() {
                Some(db) if db.is_unique_violation() => StoreError::Refused("family account already exists".to_owned()),
                _ => StoreError::Database(error),
            })?;
        Ok(id)
    }

    pub async fn add_contact(&self, contact: &NewContact) -> Result<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO contacts (id, resident_id, name, relationship, phone, holds_keys, position,
                                   family_account_id, channels)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(contact.resident_id)
        .bind(&contact.name)
        .bind(&contact.relationship)
        .bind(&contact.phone)
        .bind(contact.holds_keys)
        .bind(contact.position)
        .bind(contact.family_account_id)
        .bind(if contact.channels.is_empty() { vec!["app".to_owned()] } else { contact.channels.clone() })
        .execute(&self.pool)
        .await
        .map_err(|error| match error.as_database_error() {
            Some(db) if db.is_unique_violation() => {
                StoreError::Refused("another contact already has that position".to_owned())
            }
            Some(db) if db.is_foreign_key_violation() => {
                StoreError::Refused("the resident or family account does not exist".to_owned())
            }
            Some(db) if db.is_check_violation() => {
                StoreError::Refused("a contact field is empty, too long or out of range".to_owned())
            }
            _ => StoreError::Database(error),
        })?;
        Ok(id)
    }

    /// The family account's credentials by username: (id, display name, password hash).
    pub async fn family_credentials(
        &self,
        username: &str,
    ) -> Result<Option<(Uuid, String, String)>> {
        let row = sqlx::query(
            "SELECT id, display_name, password_hash FROM family_accounts WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok((
                row.try_get("id")?,
                row.try_get("display_name")?,
                row.try_get("password_hash")?,
            ))
        })
        .transpose()
    }

    pub async fn create_family_session(
        &self,
        account_id: Uuid,
        token_hash: &[u8],
        ttl: Duration,
    ) -> Result<DateTime<Utc>> {
        Ok(sqlx::query_scalar(
            "INSERT INTO family_sessions (token_hash, family_account_id, expires_at)
             VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING expires_at",
        )
        .bind(token_hash)
        .bind(account_id)
        .bind(ttl.as_secs_f64())
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn family_session(&self, token_hash: &[u8]) -> Result<Option<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT family_account_id FROM family_sessions WHERE token_hash = $1 AND expires_at > now()",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Starts cascades for emergencies unanswered past `family_after_secs`, and moves running
    /// cascades on past their step deadlines. Safe on every node at once.
    pub async fn sweep_cascades(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let rules = crate::routing::active_rules(&mut tx).await?;
        let step_secs = f64::from(rules.rules().cascade_step_secs);
        // `now()`, stable, so that `calls_cascade_due` is bounded by it (`clock_timestamp()`
        // would be a filter over every waiting emergency). Oldest first, in the index's order:
        // without the order, once a flood's statistics said thousands were waiting, the plan
        // was a sequential scan of `calls` that stopped at its hundredth match, past every
        // call whose cascade had already started (18-77 ms a pass at 60,000 calls, four times
        // a second on every node).
        let due = sqlx::query(
            "SELECT id FROM calls
             WHERE kind = 'emergency' AND state IN ('queued', 'offered') AND cascade_started_at IS NULL
               AND created_at <= now() - make_interval(secs => $1)
             ORDER BY created_at
             LIMIT 100
             FOR UPDATE SKIP LOCKED",
        )
        .bind(f64::from(rules.rules().family_after_secs))
        .fetch_all(&mut *tx)
        .await?;
        let reason = format!(
            "emergency unanswered for {} s: the family is being told",
            rules.rules().family_after_secs
        );
        let mut starts = due
            .iter()
            .map(|row| {
                Ok(CascadeStart {
                    call_id: row.try_get("id")?,
                    unanswered: Some(reason.clone()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // A device offline for long: its technical item's cascade tells the family. The open
        // offline alarms are read by age from `alarms_offline_due` (its condition includes
        // `call_id IS NOT NULL`), the due ones only: a district outage leaves tens of thousands
        // open, none due for half an hour. Their calls are then found by `= ANY (ARRAY(...))`,
        // an index condition on the calls' key whatever the planner guesses. As a join, in one
        // 100,000-tablet reconnect storm (tens of thousands of offline items opened within a
        // minute, on statistics from before), this statement took from 1 s to 20 s a pass,
        // returning nothing, on every node four times a second; its plan then was not caught
        // (on the statistics after, the join's plan was the right one).
        let offline = sqlx::query(
            "SELECT k.id FROM calls k
             WHERE k.id = ANY (ARRAY(
                     SELECT a.call_id FROM alarms a
                     WHERE a.kind = 'DEVICE_OFFLINE' AND a.cleared_at IS NULL
                       AND a.call_id IS NOT NULL
                       AND a.received_at <= now() - make_interval(secs => $1)
                     ORDER BY a.received_at
                     LIMIT 1000))
               AND k.cascade_started_at IS NULL
               AND k.state IN ('queued', 'offered', 'answered')
             LIMIT 100
             FOR UPDATE OF k SKIP LOCKED",
        )
        .bind(f64::from(rules.rules().offline_family_after_secs))
        .fetch_all(&mut *tx)
        .await?;
        for row in offline {
            let call_id: Uuid = row.try_get("id")?;
            // A call this pass already starts (as an unanswered emergency) starts once.
            if !starts.iter().any(|start| start.call_id == call_id) {
                starts.push(CascadeStart {
                    call_id,
                    unanswered: None,
                });
            }
        }
        start_cascades(&mut tx, &starts, step_secs).await?;
        // Ordered contacts who did not acknowledge in time: the next one is asked.
        let lapsed = sqlx::query(
            "SELECT n.id, n.call_id FROM family_notifications n JOIN calls c ON c.id = n.call_id
             WHERE n.state = 'sent' AND NOT n.parallel AND n.deadline_at <= now()
               AND c.state IN ('queued', 'offered', 'answered')
             ORDER BY n.deadline_at
             LIMIT 100
             FOR UPDATE OF c SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        for row in lapsed {
            let notification_id: i64 = row.try_get("id")?;
            let call_id: Uuid = row.try_get("call_id")?;
            // Another node's sweep (or an acknowledgement) may have settled it while this one
            // waited for the call's lock: then there is nothing to do.
            let expired = sqlx::query(
                "UPDATE family_notifications SET state = 'expired' WHERE id = $1 AND state = 'sent'",
            )
            .bind(notification_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if expired == 0 {
                continue;
            }
            append_event(
                &mut tx,
                "family.expired",
                Some(call_id),
                None,
                None,
                None,
                json!({ "notification_id": notification_id }),
            )
            .await?;
            ask_next(&mut tx, call_id, step_secs).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A family member acknowledges ("I'm on my way"). Only their own relative's alerts; the
    /// first acknowledgement stops the cascade.
    pub async fn acknowledge_alert(&self, account_id: Uuid, notification_id: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT n.call_id, n.occurrence_id, n.state, c.family_account_id
             FROM family_notifications n
             JOIN contacts c ON c.id = n.contact_id WHERE n.id = $1",
        )
        .bind(notification_id)
        .fetch_optional(&mut *tx)
        .await?;
        // Someone else's alert looks exactly like a missing one.
        let Some(row) = row.filter(|row| {
            row.try_get::<Option<Uuid>, _>("family_account_id")
                .ok()
                .flatten()
                == Some(account_id)
        }) else {
            tx.rollback().await?;
            return Err(StoreError::NotFound {
                what: "alert",
                id: notification_id.to_string(),
            });
        };
        let Some(call_id) = row.try_get::<Option<Uuid>, _>("call_id")? else {
            // A missed reminder's alert: the family member takes it on.
            let occurrence_id: Uuid = row.try_get("occurrence_id")?;
            if row.try_get::<String, _>("state")? != "sent" {
                tx.rollback().await?;
                return Err(StoreError::Refused(format!(
                    "this alert can no longer be acknowledged: it is {}",
                    row.try_get::<String, _>("state")?
                )));
            }
            Store::family_acknowledged_occurrence(&mut tx, occurrence_id, notification_id).await?;
            tx.commit().await?;
            return Ok(());
        };
        sqlx::query("SELECT 1 FROM calls WHERE id = $1 FOR UPDATE")
            .bind(call_id)
            .execute(&mut *tx)
            .await?;
        let state: String =
            sqlx::query_scalar("SELECT state FROM family_notifications WHERE id = $1")
                .bind(notification_id)
                .fetch_one(&mut *tx)
                .await?;
        if state != "sent" {
            tx.rollback().await?;
            return Err(StoreError::Refused(format!(
                "this alert can no longer be acknowledged: it is {state}"
            )));
        }
        sqlx::query("UPDATE family_notifications SET state = 'acknowledged', acknowledged_at = clock_timestamp() WHERE id = $1")
            .bind(notification_id)
            .execute(&mut *tx)
            .await?;
        // The cascade stops: nobody else is asked.
        sqlx::query(
            "UPDATE family_notifications SET state = 'cancelled'
             WHERE call_id = $1 AND NOT parallel AND state IN ('waiting', 'sent')",
        )
        .bind(call_id)
        .execute(&mut *tx)
        .await?;
        append_event(
            &mut tx,
            "family.acknowledged",
            Some(call_id),
            None,
            None,
            None,
            json!({ "notification_id": notification_id, "account": account_id }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The alerts of this family member's relatives, newest first (sent or settled; never those
    /// not yet sent).
    pub async fn family_alerts(&self, account_id: Uuid, after_id: i64) -> Result<Vec<FamilyAlert>> {
        let rows = sqlx::query(
            "SELECT n.id, n.call_id, n.state, n.sent_at, n.acknowledged_at, r.id AS resident_id,
                    r.full_name, coalesce(k.kind, 'missed_' || s.kind) AS kind
             FROM family_notifications n
             JOIN contacts c ON c.id = n.contact_id
             LEFT JOIN calls k ON k.id = n.call_id
             LEFT JOIN schedule_occurrences o ON o.id = n.occurrence_id
             LEFT JOIN schedules s ON s.id = o.schedule_id
             JOIN residents r ON r.id = coalesce(k.resident_id, s.resident_id)
             WHERE c.family_account_id = $1 AND n.state <> 'waiting' AND n.id > $2
             ORDER BY n.id",
        )
        .bind(account_id)
        .bind(after_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(FamilyAlert {
                    notification_id: row.try_get("id")?,
                    call_id: row.try_get("call_id")?,
                    resident_id: row.try_get("resident_id")?,
                    resident_name: row.try_get("full_name")?,
                    kind: row.try_get("kind")?,
                    state: row.try_get("state")?,
                    sent_at: row.try_get("sent_at")?,
                    acknowledged_at: row.try_get("acknowledged_at")?,
                })
            })
            .collect()
    }
}

/// Why the supervisors are alerted when a cascade has nobody left to ask.
const NOBODY_ACKNOWLEDGED: &str = "nobody in the family cascade acknowledged";

/// A cascade to start: its call, and why the emergency counts as unanswered (an event and a
/// notification first), if that is why it starts.
pub(crate) struct CascadeStart {
    pub(crate) call_id: Uuid,
    pub(crate) unanswered: Option<String>,
}

/// Starts these calls' cascades: tells every parallel contact at once and asks the first
/// ordered one; a call with no ordered contact alerts the
/// supervisors. A few statements whatever the number of calls: a flood of unanswered
/// emergencies reaches its family step together, 60 s after the flood, and one by one that was
/// about ten statements a call (three single-row event inserts, each running the statistics
/// triggers), competing with the alarms still arriving. The events and notifications are
/// each call's in turn, in the order one call's cascade has always had.
pub(crate) async fn start_cascades(
    tx: &mut Transaction<'_, Postgres>,
    starts: &[CascadeStart],
    step_secs: f64,
) -> Result<()> {
    if starts.is_empty() {
        return Ok(());
    }
    let call_ids: Vec<Uuid> = starts.iter().map(|start| start.call_id).collect();
    sqlx::query("UPDATE calls SET cascade_started_at = clock_timestamp() WHERE id = ANY($1)")
        .bind(&call_ids)
        .execute(&mut **tx)
        .await?;
    // Each call's contacts: the parallel ones first, then the ordered ones in turn.
    let mut contacts: HashMap<Uuid, Vec<(Uuid, bool)>> = HashMap::new();
    for row in sqlx::query(
        "SELECT k.id AS call_id, c.id, c.position FROM calls k
         JOIN contacts c ON c.resident_id = k.resident_id
         WHERE k.id = ANY($1) ORDER BY k.id, c.position NULLS FIRST, c.created_at",
    )
    .bind(&call_ids)
    .fetch_all(&mut **tx)
    .await?
    {
        contacts.entry(row.try_get("call_id")?).or_default().push((
            row.try_get("id")?,
            row.try_get::<Option<i32>, _>("position")?.is_none(),
        ));
    }
    // Each call's first ordered contact, asked now. (Nobody can have acknowledged yet: a
    // call's notifications are made only here, once, as its cascade starts.)
    let first_in_turn = |call_id: &Uuid| {
        contacts
            .get(call_id)
            .and_then(|contacts| contacts.iter().find(|(_, parallel)| !*parallel))
            .map(|&(contact_id, _)| contact_id)
    };
    // Every contact's notification: the parallel ones and each call's first ordered one sent
    // now, the other ordered ones waiting their turn.
    let (mut rows_call, mut rows_contact, mut rows_parallel, mut rows_sent) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for start in starts {
        let asked = first_in_turn(&start.call_id);
        for &(contact_id, parallel) in contacts.get(&start.call_id).into_iter().flatten() {
            rows_call.push(start.call_id);
            rows_contact.push(contact_id);
            rows_parallel.push(parallel);
            rows_sent.push(parallel || asked == Some(contact_id));
        }
    }
    let mut notification_ids: HashMap<(Uuid, Uuid), i64> = HashMap::new();
    for row in sqlx::query(
        "INSERT INTO family_notifications (call_id, contact_id, state, parallel, sent_at, deadline_at)
         SELECT r.call_id, r.contact_id, CASE WHEN r.sent THEN 'sent' ELSE 'waiting' END,
                r.parallel, CASE WHEN r.sent THEN clock_timestamp() END,
                CASE WHEN r.sent AND NOT r.parallel
                     THEN clock_timestamp() + make_interval(secs => $5) END
         FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::bool[])
              WITH ORDINALITY AS r(call_id, contact_id, parallel, sent, n)
         ORDER BY r.n
         RETURNING id, call_id, contact_id",
    )
    .bind(&rows_call)
    .bind(&rows_contact)
    .bind(&rows_parallel)
    .bind(&rows_sent)
    .bind(step_secs)
    .fetch_all(&mut **tx)
    .await?
    {
        notification_ids.insert(
            (row.try_get("call_id")?, row.try_get("contact_id")?),
            row.try_get("id")?,
        );
    }
    let notification_of = |call_id: Uuid, contact_id: Uuid| -> Result<i64> {
        notification_ids
            .get(&(call_id, contact_id))
            .copied()
            .ok_or_else(|| {
                StoreError::Refused(format!(
                    "no family notification was made for contact {contact_id} of call {call_id}"
                ))
            })
    };
    let (mut events, mut notifications, mut deliveries) = (Vec::new(), Vec::new(), Vec::new());
    for start in starts {
        let call_id = start.call_id;
        if let Some(reason) = &start.unanswered {
            events.push((
                "emergency.unanswered",
                Some(call_id),
                None,
                json!({ "reason": reason }),
            ));
            notifications.push(Notification::EmergencyUnanswered {
                call_id,
                reason: reason.clone(),
            });
        }
        let call_contacts = contacts
            .get(&call_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for &(contact_id, _) in call_contacts.iter().filter(|(_, parallel)| *parallel) {
            events.push((
                "family.notified",
                Some(call_id),
                None,
                json!({ "contact_id": contact_id, "parallel": true }),
            ));
            deliveries.push(notification_of(call_id, contact_id)?);
        }
        events.push((
            "family.cascade_started",
            Some(call_id),
            None,
            json!({ "contacts": call_contacts.len() }),
        ));
        match first_in_turn(&call_id) {
            Some(contact_id) => {
                events.push((
                    "family.notified",
                    Some(call_id),
                    None,
                    json!({ "contact_id": contact_id, "parallel": false }),
                ));
                deliveries.push(notification_of(call_id, contact_id)?);
            }
            None => {
                events.push((
                    "supervisor.alert",
                    Some(call_id),
                    None,
                    json!({ "reason": NOBODY_ACKNOWLEDGED }),
                ));
                notifications.push(Notification::SupervisorAlert {
                    call_id,
                    reason: NOBODY_ACKNOWLEDGED.to_owned(),
                });
            }
        }
    }
    append_events(tx, &events).await?;
    enqueue_deliveries(tx, &deliveries).await?;
    notify_all(tx, &notifications).await
}

/// Asks the next waiting ordered contact; with none left (and nobody acknowledged), alerts
/// the supervisors.
async fn ask_next(tx: &mut Transaction<'_, Postgres>, call_id: Uuid, step_secs: f64) -> Result<()> {
    let next: Option<(i64, Uuid)> = sqlx::query_as(
        "SELECT n.id, n.contact_id FROM family_notifications n JOIN contacts c ON c.id = n.contact_id
         WHERE n.call_id = $1 AND n.state = 'waiting' ORDER BY c.position LIMIT 1",
    )
    .bind(call_id)
    .fetch_optional(&mut **tx)
    .await?;
    match next {
        Some((notification_id, contact_id)) => {
            sqlx::query(
                "UPDATE family_notifications SET state = 'sent', sent_at = clock_timestamp(),
                        deadline_at = clock_timestamp() + make_interval(secs => $2)
                 WHERE id = $1",
            )
            .bind(notification_id)
            .bind(step_secs)
            .execute(&mut **tx)
            .await?;
            append_event(
                tx,
                "family.notified",
                Some(call_id),
                None,
                None,
                None,
                json!({ "contact_id": contact_id, "parallel": false }),
            )
            .await?;
            enqueue_delivery(tx, notification_id).await
        }
        None => {
            let acknowledged: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM family_notifications WHERE call_id = $1 AND state = 'acknowledged')",
            )
            .bind(call_id)
            .fetch_one(&mut **tx)
            .await?;
            if acknowledged {
                return Ok(());
            }
            let reason = NOBODY_ACKNOWLEDGED;
            append_event(
                tx,
                "supervisor.alert",
                Some(call_id),
                None,
                None,
                None,
                json!({ "reason": reason }),
            )
            .await?;
            notify(
                tx,
                &Notification::SupervisorAlert {
                    call_id,
                    reason: reason.to_owned(),
                },
            )
            .await
        }
    }
}

/// For a contact reached by SMS or webhook, queues the outbound delivery in the same
/// transaction as the notification (so neither exists without the other).
async fn enqueue_delivery(tx: &mut Transaction<'_, Postgres>, notification_id: i64) -> Result<()> {
    enqueue_deliveries(tx, &[notification_id]).await
}

/// [`enqueue_delivery`] for several notifications, in one statement, in their order.
async fn enqueue_deliveries(
    tx: &mut Transaction<'_, Postgres>,
    notification_ids: &[i64],
) -> Result<()> {
    if notification_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO webhook_deliveries (notification_id, body)
         SELECT n.id, jsonb_build_object(
                    'notification_id', n.id, 'call_id', n.call_id, 'kind', k.kind,
                    'resident', r.full_name, 'address', r.address,
                    'contact', c.name, 'relationship', c.relationship, 'phone', c.phone,
                    'holds_keys', c.holds_keys,
                    'text', r.full_name || ': ' || k.kind || ' alarm, please respond')
         FROM unnest($1::bigint[]) WITH ORDINALITY AS w(id, n)
         JOIN family_notifications n ON n.id = w.id
         JOIN contacts c ON c.id = n.contact_id
         JOIN calls k ON k.id = n.call_id
         JOIN residents r ON r.id = k.resident_id
         WHERE c.channels && ARRAY['sms', 'webhook']
         ORDER BY w.n",
    )
    .bind(notification_ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// These alarms are over (resolved, cleared, abandoned): nobody more is asked.
pub(crate) async fn stop_cascade(
    tx: &mut Transaction<'_, Postgres>,
    call_ids: &[Uuid],
) -> Result<()> {
    sqlx::query(
        "UPDATE family_notifications SET state = 'cancelled'
         WHERE call_id = ANY($1) AND NOT parallel AND state IN ('waiting', 'sent')",
    )
    .bind(call_ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A relative as a family member sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct RelativeRow {
    pub resident_id: Uuid,
    pub name: String,
    pub device_ids: Vec<String>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub last_call_at: Option<DateTime<Utc>>,
    pub last_call_state: Option<String>,
    pub open_orders: Vec<crate::OrderRow>,
}

/// One contact's part in an alarm's family cascade.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CascadeRow {
    pub contact_id: Uuid,
    pub name: String,
    pub relationship: String,
    pub position: Option<i32>,
    pub state: String,
    pub sent_at: Option<DateTime<Utc>>,
    pub acknowledged_at: Option<DateTime<Utc>>,
}

/// Longest family message shown on a tablet, in characters.
pub const MAX_FAMILY_MESSAGE_CHARS: usize = 200;

impl Store {
    /// The residents this family account is a contact of, with how they are.
    pub async fn relatives(&self, account_id: Uuid) -> Result<Vec<RelativeRow>> {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT resident_id FROM contacts WHERE family_account_id = $1",
        )
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?;
        let mut relatives = Vec::with_capacity(ids.len());
        for resident_id in &ids {
            relatives.push(self.relative_row(*resident_id).await?);
        }
        self.audit_reads(
            &format!("family:{account_id}"),
            "family.read_relative",
            &ids,
        )
        .await?;
        relatives.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(relatives)
    }

    /// One relative, if this account is their contact; anyone else's is refused.
    pub async fn relative(&self, account_id: Uuid, resident_id: Uuid) -> Result<RelativeRow> {
        self.check_relative(account_id, resident_id).await?;
        let row = self.relative_row(resident_id).await?;
        self.audit_reads(
            &format!("family:{account_id}"),
            "family.read_relative",
            &[resident_id],
        )
        .await?;
        Ok(row)
    }

    async fn check_relative(&self, account_id: Uuid, resident_id: Uuid) -> Result<()> {
        let linked: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM contacts WHERE family_account_id = $1 AND resident_id = $2)",
        )
        .bind(account_id)
        .bind(resident_id)
        .fetch_one(&self.pool)
        .await?;
        if !linked {
            return Err(StoreError::Forbidden(
                "this person is not one of your relatives".to_owned(),
            ));
        }
        Ok(())
    }

    async fn relative_row(&self, resident_id: Uuid) -> Result<RelativeRow> {
        let row = sqlx::query(
            "SELECT r.full_name,
                    (SELECT max(last_seen_at) FROM devices d
                     WHERE d.resident_id = r.id AND d.revoked_at IS NULL) AS last_seen_at,
                    (SELECT array_agg(id ORDER BY id) FROM devices d
                     WHERE d.resident_id = r.id AND d.revoked_at IS NULL) AS device_ids,
                    lc.created_at AS last_call_at, lc.state AS last_call_state
             FROM residents r
             LEFT JOIN LATERAL (SELECT created_at, state FROM calls c WHERE c.resident_id = r.id
                                ORDER BY created_at DESC LIMIT 1) lc ON true
             WHERE r.id = $1",
        )
        .bind(resident_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "resident",
            id: resident_id.to_string(),
        })?;
        let open_orders: Vec<crate::OrderRow> = sqlx::query_as(&format!(
            "{} WHERE o.resident_id = $1 AND o.state NOT IN ('closed', 'cancelled')
             ORDER BY o.created_at DESC LIMIT 20",
            crate::orders::ORDER_SELECT
        ))
        .bind(resident_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(RelativeRow {
            resident_id,
            name: row.try_get("full_name")?,
            device_ids: row
                .try_get::<Option<Vec<String>>, _>("device_ids")?
                .unwrap_or_default(),
            last_seen_at: row.try_get("last_seen_at")?,
            last_call_at: row.try_get("last_call_at")?,
            last_call_state: row.try_get("last_call_state")?,
            open_orders,
        })
    }

    /// A short message from a family member, shown on the relative's tablets (through the
    /// outbox, so it arrives after a reconnect too).
    pub async fn send_family_message(
        &self,
        account_id: Uuid,
        resident_id: Uuid,
        text: &str,
    ) -> Result<()> {
        let text = text.trim();
        if text.is_empty() {
            return Err(StoreError::Invalid("the message is empty".to_owned()));
        }
        if text.chars().count() > MAX_FAMILY_MESSAGE_CHARS {
            return Err(StoreError::Invalid(format!(
                "a message is at most {MAX_FAMILY_MESSAGE_CHARS} characters"
            )));
        }
        self.check_relative(account_id, resident_id).await?;
        let mut tx = self.pool.begin().await?;
        let from: String =
            sqlx::query_scalar("SELECT display_name FROM family_accounts WHERE id = $1")
                .bind(account_id)
                .fetch_one(&mut *tx)
                .await?;
        let devices: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM devices WHERE resident_id = $1 AND revoked_at IS NULL ORDER BY id",
        )
        .bind(resident_id)
        .fetch_all(&mut *tx)
        .await?;
        if devices.is_empty() {
            return Err(StoreError::Refused(
                "this relative has no tablet to show the message on".to_owned(),
            ));
        }
        for device_id in devices {
            crate::outbox::push_notice(
                &mut tx,
                &device_id,
                &crate::outbox::NoticePayload {
                    text: text.to_owned(),
                    from: from.clone(),
                },
            )
            .await?;
        }
        sqlx::query("INSERT INTO events (kind, detail) VALUES ('family.message', $1)")
            .bind(serde_json::json!({ "account_id": account_id, "resident_id": resident_id }))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The family cascade of a call: when it started and each contact's part.
    pub async fn family_cascade(
        &self,
        call_id: Uuid,
    ) -> Result<(Option<DateTime<Utc>>, Vec<CascadeRow>)> {
        let started: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT cascade_started_at FROM calls WHERE id = $1")
                .bind(call_id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(started) = started else {
            return Err(StoreError::NotFound {
                what: "call",
                id: call_id.to_string(),
            });
        };
        let contacts: Vec<CascadeRow> = sqlx::query_as(
            "SELECT c.id AS contact_id, c.name, c.relationship, c.position, n.state, n.sent_at,
                    n.acknowledged_at
             FROM family_notifications n JOIN contacts c ON c.id = n.contact_id
             WHERE n.call_id = $1 ORDER BY c.position NULLS FIRST, c.name",
        )
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?;
        Ok((started, contacts))
    }
}
