//! Proactive care: schedules per resident (welfare calls, reminders, check-ins) and the
//! escalation of a missed one, content for the tablets, and tablets due a test call.
//!
//! An occurrence of a reminder or check-in goes: attempt 1 on the tablet → (not confirmed
//! within the schedule's wait, 10 minutes for a reminder) attempt 2 → (again not confirmed) the
//! first three ordered contacts told → (still not confirmed after another wait) an operator task
//! in the call-backs queue. A confirmation from the tablet ends it at any step. Every step is an
//! event; events carry ids only, never a reminder's title (it can name a medicine).

use carebell_domain::schedule::Recurrence;
use carebell_domain::CallKind;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::calls::insert_call;
use crate::{append_event, notify, Notification, Result, Store, StoreError};

/// The default wait before an unconfirmed reminder is tried again.
pub const REMINDER_RETRY_SECS: u32 = 600;

/// At most this many occurrences are started, and this many steps taken, per sweep.
const SWEEP_BATCH: u32 = 100;

/// At most this many ordered contacts are told about a missed reminder.
pub const MAX_CONTACTS_TOLD: i64 = 3;

/// What a schedule makes happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// An outbound call by an operator, placed in the call-backs queue.
    WelfareCall,
    /// Shown on the tablet with a confirm button (medication, an appointment).
    Reminder,
    /// The daily "I'm OK" window.
    CheckIn,
}

impl ScheduleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleKind::WelfareCall => "welfare_call",
            ScheduleKind::Reminder => "reminder",
            ScheduleKind::CheckIn => "check_in",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "welfare_call" => Some(ScheduleKind::WelfareCall),
            "reminder" => Some(ScheduleKind::Reminder),
            "check_in" => Some(ScheduleKind::CheckIn),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub resident_id: Uuid,
    pub kind: ScheduleKind,
    pub title: String,
    /// An RFC 5545 RRULE (`FREQ=DAILY;BYHOUR=8;BYMINUTE=0`, ...).
    pub rule: String,
    /// The first occurrence's local date and time (DTSTART), in `time_zone`.
    pub starts_local: NaiveDateTime,
    /// An IANA time zone name (`Asia/Shanghai`).
    pub time_zone: String,
    /// How long an attempt waits for the confirm button before it counts as missed.
    pub wait_seconds: u32,
    pub created_by: String,
}

/// A reminder or check-in for the tablet, as stored in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReminderPayload {
    pub occurrence_id: Uuid,
    pub kind: String,
    pub title: String,
    pub due_at_ms: i64,
    pub respond_by_ms: i64,
    pub attempt: u32,
}

/// An item of the catalogue for the tablet, as stored in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContentPayload {
    pub content_id: Uuid,
    pub kind: String,
    pub title: String,
    pub body: String,
    pub media_url: String,
    pub language: String,
    pub tags: Vec<String>,
}

/// What one sweep of the schedules did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleSweep {
    /// Occurrences started (a first attempt, or a welfare call placed).
    pub started: u32,
    /// Later steps taken (a second attempt, contacts told, an operator task).
    pub escalated: u32,
}

pub const CONTENT_KINDS: [&str; 5] = ["health", "programme", "story", "song", "notice"];

#[derive(Debug, Clone, Default)]
pub struct NewContent {
    pub kind: String,
    pub title: String,
    pub body: String,
    pub media_url: String,
    /// A language tag (`zh`, `en`, `zh-yue`); only residents with this language get it.
    pub language: String,
    /// Only residents with one of these interests get it (empty: everyone).
    pub tags: Vec<String>,
    /// Only this station's residents get it (`None`: every station).
    pub station_id: Option<Uuid>,
    pub created_by: String,
}

/// One tablet's copy of a content item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentDelivery {
    pub device_id: String,
    pub received: bool,
    pub opened: bool,
}

/// A tablet with no answered call in the period (its monthly test call is missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UntestedTablet {
    pub device_id: String,
    pub resident_id: Uuid,
    pub station_id: Uuid,
    pub station_name: String,
    pub last_answered_at: Option<DateTime<Utc>>,
}

/// `zh`, `en`, `zh-yue`: what the database's check on languages accepts.
fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.splitn(2, '-');
    let primary = parts.next().unwrap_or_default();
    (2..=3).contains(&primary.len())
        && primary.chars().all(|c| c.is_ascii_lowercase())
        && parts.next().is_none_or(|rest| {
            (2..=8).contains(&rest.len()) && rest.chars().all(|c| c.is_ascii_alphanumeric())
        })
}

fn refused(message: impl Into<String>) -> StoreError {
    StoreError::Refused(message.into())
}

fn recurrence(rule: &str, starts_local: NaiveDateTime, time_zone: &str) -> Result<Recurrence> {
    Recurrence::parse(rule, starts_local, time_zone)
        .map_err(|error| refused(format!("invalid recurrence: {error}")))
}

/// The resident's tablets that can be reached (not revoked).
async fn tablets_of(tx: &mut Transaction<'_, Postgres>, resident_id: Uuid) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM devices WHERE resident_id = $1 AND revoked_at IS NULL ORDER BY created_at",
    )
    .bind(resident_id)
    .fetch_all(&mut **tx)
    .await?)
}

/// Appends a proactive-care event (no call, offer or operator) about a tablet.
async fn schedule_event(
    tx: &mut Transaction<'_, Postgres>,
    kind: &str,
    device_id: Option<&str>,
    detail: serde_json::Value,
) -> Result<()> {
    append_event(tx, kind, None, None, None, device_id, detail).await
}

/// Shows an attempt on every tablet of the resident (through the outbox), and records it.
async fn send_attempt(
    tx: &mut Transaction<'_, Postgres>,
    tablets: &[String],
    schedule_id: Uuid,
    payload: &ReminderPayload,
) -> Result<()> {
    for tablet in tablets {
        crate::outbox::push_reminder(tx, tablet, payload).await?;
    }
    schedule_event(
        tx,
        "schedule.reminder_sent",
        tablets.first().map(String::as_str),
        json!({ "schedule_id": schedule_id, "occurrence_id": payload.occurrence_id,
                "attempt": payload.attempt, "kind": payload.kind }),
    )
    .await
}

/// An outbound call for an operator (a welfare call, a task after missed reminders): in the
/// call-backs queue, not announced on the tablet.
async fn queue_outbound_call(
    tx: &mut Transaction<'_, Postgres>,
    tablet: &str,
    request_id: &str,
) -> Result<Uuid> {
    let call = insert_call(tx, tablet, request_id, CallKind::Callback, None, false).await?;
    notify(tx, &Notification::Dispatch).await?;
    Ok(call.call_id)
}

/// Closes the contacts' alerts about an occurrence still open (`sent`) as `state`: `cancelled`
/// (confirmed, or another contact took it on) or `expired` (an operator took over).
async fn close_alerts(
    tx: &mut Transaction<'_, Postgres>,
    occurrence_id: Uuid,
    state: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE family_notifications SET state = $2 WHERE occurrence_id = $1 AND state = 'sent'",
    )
    .bind(occurrence_id)
    .bind(state)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A step's next one was set for `started` plus the wait; it moves by however long the step
/// took, so that the next step is never sooner than the wait after this step's last event.
async fn wait_from_the_end(
    tx: &mut Transaction<'_, Postgres>,
    occurrence_id: Uuid,
    started: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "UPDATE schedule_occurrences SET next_step_at = next_step_at + (clock_timestamp() - $2)
         WHERE id = $1 AND next_step_at IS NOT NULL",
    )
    .bind(occurrence_id)
    .bind(started)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn now(tx: &mut Transaction<'_, Postgres>) -> Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut **tx)
        .await?)
}

impl Store {
    /// Adds a schedule. Refused with a clear message: an invalid rule or time zone, a rule
    /// with no occurrence from now on, a resident with no tablet (nothing could be shown or
    /// called back on), a title out of bounds.
    pub async fn add_schedule(&self, schedule: &NewSchedule) -> Result<Uuid> {
        let title = schedule.title.trim();
        if title.is_empty() || title.chars().count() > 200 {
            return Err(refused("a schedule's title must be 1 to 200 characters"));
        }
        if !(1..=86_400).contains(&schedule.wait_seconds) {
            return Err(refused("wait_seconds must be between 1 and 86400"));
        }
        let rule = recurrence(&schedule.rule, schedule.starts_local, &schedule.time_zone)?;
        let mut tx = self.pool.begin().await?;
        let resident: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT erased_at FROM residents WHERE id = $1")
                .bind(schedule.resident_id)
                .fetch_optional(&mut *tx)
                .await?;
        match resident {
            None => {
                return Err(StoreError::NotFound {
                    what: "resident",
                    id: schedule.resident_id.to_string(),
                })
            }
            Some(Some(_)) => return Err(refused("this resident's data has been erased")),
            Some(None) => {}
        }
        let tablets = tablets_of(&mut tx, schedule.resident_id).await?;
        if tablets.is_empty() {
            return Err(refused(format!(
                "resident {} has no tablet: a {} needs one to be shown on (or called back from)",
                schedule.resident_id,
                schedule.kind.as_str().replace('_', " ")
            )));
        }
        let from = now(&mut tx).await? - chrono::Duration::seconds(1);
        let Some(first) = rule.next_after(from) else {
            return Err(refused(
                "invalid recurrence: the rule has no occurrence from now on",
            ));
        };
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO schedules (id, resident_id, kind, title, rule, starts_local, time_zone,
                                    wait_seconds, next_due_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(id)
        .bind(schedule.resident_id)
        .bind(schedule.kind.as_str())
        .bind(title)
        .bind(&schedule.rule)
        .bind(schedule.starts_local)
        .bind(&schedule.time_zone)
        .bind(i32::try_from(schedule.wait_seconds).unwrap_or(i32::MAX))
        .bind(first)
        .bind(&schedule.created_by)
        .execute(&mut *tx)
        .await?;
        schedule_event(
            &mut tx,
            "schedule.created",
            tablets.first().map(String::as_str),
            json!({ "schedule_id": id, "kind": schedule.kind.as_str(), "first_due_at": first }),
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Starts the occurrences that are due and takes the escalation steps that are due, each
    /// in its own transaction (rows locked with SKIP LOCKED, so every node may sweep).
    pub async fn sweep_schedules(&self) -> Result<ScheduleSweep> {
        // Bounded like the other sweeps, so that a morning's thousands of 08:00 reminders never
        // hold up a dispatch round (which takes alarms): the rest are taken on the next sweeps.
        let mut sweep = ScheduleSweep::default();
        while sweep.started < SWEEP_BATCH && self.start_one_occurrence().await? {
            sweep.started += 1;
        }
        while sweep.escalated < SWEEP_BATCH && self.take_one_step().await? {
            sweep.escalated += 1;
        }
        Ok(sweep)
    }

    async fn start_one_occurrence(&self) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(
            "SELECT id, resident_id, kind, title, rule, starts_local, time_zone, wait_seconds,
                    next_due_at
             FROM schedules
             WHERE active AND next_due_at IS NOT NULL AND next_due_at <= now()
             ORDER BY next_due_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(false);
        };
        let schedule_id: Uuid = row.try_get("id")?;
        let resident_id: Uuid = row.try_get("resident_id")?;
        let kind = ScheduleKind::parse(&row.try_get::<String, _>("kind")?)
            .ok_or_else(|| refused("a schedule of an unknown kind"))?;
        let due: DateTime<Utc> = row.try_get("next_due_at")?;
        let wait = chrono::Duration::seconds(i64::from(row.try_get::<i32, _>("wait_seconds")?));
        let now = now(&mut tx).await?;
        // The next one after now: a node that was down for days does not replay them all.
        let next = recurrence(
            &row.try_get::<String, _>("rule")?,
            row.try_get("starts_local")?,
            &row.try_get::<String, _>("time_zone")?,
        )
        .map(|rule| rule.next_after(due.max(now)))
        .unwrap_or(None);
        sqlx::query("UPDATE schedules SET next_due_at = $2 WHERE id = $1")
            .bind(schedule_id)
            .bind(next)
            .execute(&mut *tx)
            .await?;
        let tablets = tablets_of(&mut tx, resident_id).await?;
        let occurrence_id = Uuid::new_v4();
        let Some(tablet) = tablets.first().cloned() else {
            // The tablet was revoked since: nothing can be shown; the station must see it.
            schedule_event(
                &mut tx,
                "schedule.skipped",
                None,
                json!({ "schedule_id": schedule_id, "due_at": due, "reason": "no tablet" }),
            )
            .await?;
            tx.commit().await?;
            return Ok(true);
        };
        match kind {
            ScheduleKind::WelfareCall => {
                let call_id =
                    queue_outbound_call(&mut tx, &tablet, &format!("welfare:{occurrence_id}"))
                        .await?;
                sqlx::query(
                    "INSERT INTO schedule_occurrences (id, schedule_id, due_at, state, attempts, call_id)
                     VALUES ($1, $2, $3, 'placed', 1, $4)",
                )
                .bind(occurrence_id)
                .bind(schedule_id)
                .bind(due)
                .bind(call_id)
                .execute(&mut *tx)
                .await?;
                append_event(
                    &mut tx,
                    "schedule.welfare_call_placed",
                    Some(call_id),
                    None,
                    None,
                    Some(&tablet),
                    json!({ "schedule_id": schedule_id, "occurrence_id": occurrence_id }),
                )
                .await?;
            }
            ScheduleKind::Reminder | ScheduleKind::CheckIn => {
                sqlx::query(
                    "INSERT INTO schedule_occurrences (id, schedule_id, due_at, state, attempts,
                                                       next_step_at)
                     VALUES ($1, $2, $3, 'waiting', 1, $4)",
                )
                .bind(occurrence_id)
                .bind(schedule_id)
                .bind(due)
                .bind(now + wait)
                .execute(&mut *tx)
                .await?;
                let payload = ReminderPayload {
                    occurrence_id,
                    kind: kind.as_str().to_owned(),
                    title: row.try_get("title")?,
                    due_at_ms: due.timestamp_millis(),
                    respond_by_ms: (now + wait).timestamp_millis(),
                    attempt: 1,
                };
                send_attempt(&mut tx, &tablets, schedule_id, &payload).await?;
            }
        }
        wait_from_the_end(&mut tx, occurrence_id, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn take_one_step(&self) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(
            "SELECT o.id, o.state, o.attempts, o.due_at, s.id AS schedule_id, s.resident_id,
                    s.kind, s.title, s.wait_seconds
             FROM schedule_occurrences o JOIN schedules s ON s.id = o.schedule_id
             WHERE o.next_step_at IS NOT NULL AND o.next_step_at <= now()
             ORDER BY o.next_step_at LIMIT 1 FOR UPDATE OF o SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(false);
        };
        let occurrence_id: Uuid = row.try_get("id")?;
        let schedule_id: Uuid = row.try_get("schedule_id")?;
        let resident_id: Uuid = row.try_get("resident_id")?;
        let state: String = row.try_get("state")?;
        let attempts: i32 = row.try_get("attempts")?;
        let kind: String = row.try_get("kind")?;
        let wait = chrono::Duration::seconds(i64::from(row.try_get::<i32, _>("wait_seconds")?));
        let now = now(&mut tx).await?;
        let tablets = tablets_of(&mut tx, resident_id).await?;
        let tablet = tablets.first().cloned();
        if state == "waiting" {
            // The attempt on the tablet went unconfirmed for its whole wait.
            schedule_event(
                &mut tx,
                "schedule.missed",
                tablet.as_deref(),
                json!({ "schedule_id": schedule_id, "occurrence_id": occurrence_id, "attempt": attempts }),
            )
            .await?;
        }
        match (state.as_str(), attempts) {
            ("waiting", 1) => {
                // Missed once: shown again.
                sqlx::query(
                    "UPDATE schedule_occurrences SET attempts = 2, next_step_at = $2 WHERE id = $1",
                )
                .bind(occurrence_id)
                .bind(now + wait)
                .execute(&mut *tx)
                .await?;
                let payload = ReminderPayload {
                    occurrence_id,
                    kind: kind.clone(),
                    title: row.try_get("title")?,
                    due_at_ms: row
                        .try_get::<DateTime<Utc>, _>("due_at")?
                        .timestamp_millis(),
                    respond_by_ms: (now + wait).timestamp_millis(),
                    attempt: 2,
                };
                send_attempt(&mut tx, &tablets, schedule_id, &payload).await?;
            }
            ("waiting", _) => {
                // Missed twice: the ordered contacts are told (at most three).
                let contacts: Vec<(Uuid, Vec<String>)> = sqlx::query_as(
                    "SELECT id, channels FROM contacts
                     WHERE resident_id = $1 AND position IS NOT NULL
                     ORDER BY position LIMIT $2",
                )
                .bind(resident_id)
                .bind(MAX_CONTACTS_TOLD)
                .fetch_all(&mut *tx)
                .await?;
                for (contact_id, channels) in &contacts {
                    // Shown to a family account through the family API (and acknowledged
                    // there), like an alarm's alert.
                    let notification_id: i64 = sqlx::query_scalar(
                        "INSERT INTO family_notifications (occurrence_id, contact_id, state,
                                                           parallel, sent_at)
                         VALUES ($1, $2, 'sent', true, clock_timestamp())
                         RETURNING id",
                    )
                    .bind(occurrence_id)
                    .bind(contact_id)
                    .fetch_one(&mut *tx)
                    .await?;
                    if channels
                        .iter()
                        .any(|channel| channel == "sms" || channel == "webhook")
                    {
                        sqlx::query(
                            "INSERT INTO webhook_deliveries (notification_id, body)
                             SELECT $3, jsonb_build_object(
                                        'notification_id', $3::bigint,
                                        'kind', 'missed_' || s.kind, 'occurrence_id', o.id,
                                        'resident', r.full_name, 'contact', c.name,
                                        'relationship', c.relationship, 'phone', c.phone,
                                        'text', r.full_name || ': ' || s.title
                                                || ' not confirmed, please check on them')
                             FROM schedule_occurrences o
                             JOIN schedules s ON s.id = o.schedule_id
                             JOIN residents r ON r.id = s.resident_id
                             JOIN contacts c ON c.id = $2
                             WHERE o.id = $1",
                        )
                        .bind(occurrence_id)
                        .bind(contact_id)
                        .bind(notification_id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    schedule_event(
                        &mut tx,
                        "schedule.contact_notified",
                        tablet.as_deref(),
                        json!({ "schedule_id": schedule_id, "occurrence_id": occurrence_id,
                                "contact_id": contact_id, "notification_id": notification_id }),
                    )
                    .await?;
                }
                sqlx::query(
                    "UPDATE schedule_occurrences SET state = 'contacts_notified', next_step_at = $2
                     WHERE id = $1",
                )
                .bind(occurrence_id)
                .bind(now + wait)
                .execute(&mut *tx)
                .await?;
            }
            ("contacts_notified", _) => {
                // Still nobody confirmed: an operator calls.
                let call_id = match &tablet {
                    Some(tablet) => Some(
                        queue_outbound_call(&mut tx, tablet, &format!("task:{occurrence_id}"))
                            .await?,
                    ),
                    None => None,
                };
                // The operator takes over: the contacts' alerts are no longer open.
                close_alerts(&mut tx, occurrence_id, "expired").await?;
                sqlx::query(
                    "UPDATE schedule_occurrences SET state = 'task_created', next_step_at = NULL,
                            call_id = $2
                     WHERE id = $1",
                )
                .bind(occurrence_id)
                .bind(call_id)
                .execute(&mut *tx)
                .await?;
                append_event(
                    &mut tx,
                    "schedule.task_created",
                    call_id,
                    None,
                    None,
                    tablet.as_deref(),
                    json!({ "schedule_id": schedule_id, "occurrence_id": occurrence_id }),
                )
                .await?;
            }
            _ => {
                sqlx::query("UPDATE schedule_occurrences SET next_step_at = NULL WHERE id = $1")
                    .bind(occurrence_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        wait_from_the_end(&mut tx, occurrence_id, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The senior pressed confirm on `device_id`. Ends the occurrence's escalation wherever it
    /// is; a repeated confirmation changes nothing. Refused: an occurrence that is not this
    /// device's resident's.
    pub async fn confirm_occurrence(&self, device_id: &str, occurrence_id: Uuid) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let state: Option<String> = sqlx::query_scalar(
            "SELECT o.state FROM schedule_occurrences o
             JOIN schedules s ON s.id = o.schedule_id
             JOIN devices d ON d.resident_id = s.resident_id
             WHERE o.id = $1 AND d.id = $2
             FOR UPDATE OF o",
        )
        .bind(occurrence_id)
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(state) = state else {
            return Err(refused(format!(
                "occurrence {occurrence_id} is not one of this tablet's reminders"
            )));
        };
        if !matches!(state.as_str(), "waiting" | "contacts_notified") {
            // After the operator task (or a family member took it on): recorded, and the
            // operator still calls.
            if state == "task_created" || state == "family_acknowledged" {
                schedule_event(
                    &mut tx,
                    "schedule.confirmed_late",
                    Some(device_id),
                    json!({ "occurrence_id": occurrence_id, "after": state }),
                )
                .await?;
                tx.commit().await?;
            }
            return Ok(false);
        }
        // Attempts still queued for the resident's tablets are not shown any more.
        sqlx::query(
            "UPDATE device_outbox SET acked_at = clock_timestamp()
             WHERE kind = 'reminder' AND acked_at IS NULL
               AND payload->>'occurrence_id' = $1::text
               AND device_id IN (SELECT id FROM devices
                                 WHERE resident_id = (SELECT resident_id FROM devices
                                                      WHERE id = $2))",
        )
        .bind(occurrence_id)
        .bind(device_id)
        .execute(&mut *tx)
        .await?;
        // The contacts told need do nothing more.
        close_alerts(&mut tx, occurrence_id, "cancelled").await?;
        sqlx::query(
            "UPDATE schedule_occurrences SET state = 'confirmed', confirmed_at = clock_timestamp(),
                    next_step_at = NULL
             WHERE id = $1",
        )
        .bind(occurrence_id)
        .execute(&mut *tx)
        .await?;
        schedule_event(
            &mut tx,
            "schedule.confirmed",
            Some(device_id),
            json!({ "occurrence_id": occurrence_id, "after": state }),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A family member took on a missed reminder (acknowledged its alert): the escalation
    /// stops before the operator task, and the other contacts' alerts are withdrawn.
    pub(crate) async fn family_acknowledged_occurrence(
        tx: &mut Transaction<'_, Postgres>,
        occurrence_id: Uuid,
        notification_id: i64,
    ) -> Result<()> {
        let state: String =
            sqlx::query_scalar("SELECT state FROM schedule_occurrences WHERE id = $1 FOR UPDATE")
                .bind(occurrence_id)
                .fetch_one(&mut **tx)
                .await?;
        if state != "contacts_notified" {
            return Err(refused(format!(
                "this alert can no longer be acknowledged: the reminder is {}",
                state.replace('_', " ")
            )));
        }
        sqlx::query(
            "UPDATE family_notifications SET state = 'acknowledged',
                    acknowledged_at = clock_timestamp()
             WHERE id = $1 AND state = 'sent'",
        )
        .bind(notification_id)
        .execute(&mut **tx)
        .await?;
        close_alerts(tx, occurrence_id, "cancelled").await?;
        sqlx::query(
            "UPDATE schedule_occurrences SET state = 'family_acknowledged', next_step_at = NULL
             WHERE id = $1",
        )
        .bind(occurrence_id)
        .execute(&mut **tx)
        .await?;
        schedule_event(
            tx,
            "schedule.family_acknowledged",
            None,
            json!({ "occurrence_id": occurrence_id, "notification_id": notification_id }),
        )
        .await
    }

    /// Adds an item to the catalogue. Refused: an unknown kind, a bad language tag, a title out
    /// of bounds, or an item larger than a tablet takes in one message (`max_bytes`, the
    /// device frame limit).
    pub async fn add_content(&self, content: &NewContent, max_bytes: usize) -> Result<Uuid> {
        if !CONTENT_KINDS.contains(&content.kind.as_str()) {
            return Err(refused(format!(
                "unknown content kind {:?}: one of {}",
                content.kind,
                CONTENT_KINDS.join(", ")
            )));
        }
        let title = content.title.trim();
        if title.is_empty() || title.chars().count() > 200 {
            return Err(refused(
                "a content item's title must be 1 to 200 characters",
            ));
        }
        if !is_language_tag(&content.language) {
            return Err(refused(format!(
                "{:?} is not a language tag (zh, en, zh-yue, ...)",
                content.language
            )));
        }
        // What the tablet receives, with room for the envelope around it.
        let size = title.len()
            + content.body.len()
            + content.media_url.len()
            + content.tags.iter().map(|tag| tag.len() + 2).sum::<usize>()
            + 256;
        if size > max_bytes {
            return Err(refused(format!(
                "content of {size} bytes is larger than a tablet takes in one message \
                 ({max_bytes} bytes): shorten the text or link to the media"
            )));
        }
        if let Some(station) = content.station_id {
            let known: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM stations WHERE id = $1)")
                    .bind(station)
                    .fetch_one(&self.pool)
                    .await?;
            if !known {
                return Err(StoreError::NotFound {
                    what: "station",
                    id: station.to_string(),
                });
            }
        }
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO content_items (id, kind, title, body, media_url, language, tags,
                                        station_id, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(&content.kind)
        .bind(title)
        .bind(&content.body)
        .bind(&content.media_url)
        .bind(&content.language)
        .bind(&content.tags)
        .bind(content.station_id)
        .bind(&content.created_by)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// Sends a content item to every tablet it targets (station, language, interests) that
    /// has not had it: each tablet once, however often this runs. Returns how many were queued.
    pub async fn deliver_content(&self, content_id: Uuid) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(
            "SELECT kind, title, body, media_url, language, tags FROM content_items
             WHERE id = $1 FOR UPDATE",
        )
        .bind(content_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Err(StoreError::NotFound {
                what: "content item",
                id: content_id.to_string(),
            });
        };
        let payload = ContentPayload {
            content_id,
            kind: row.try_get("kind")?,
            title: row.try_get("title")?,
            body: row.try_get("body")?,
            media_url: row.try_get("media_url")?,
            language: row.try_get("language")?,
            tags: row.try_get("tags")?,
        };
        let payload = serde_json::to_value(&payload)
            .map_err(|error| refused(format!("unserializable content: {error}")))?;
        let devices: Vec<String> = sqlx::query_scalar(
            "WITH item AS (SELECT * FROM content_items WHERE id = $1),
             targets AS (
                 SELECT d.id FROM devices d
                 JOIN residents r ON r.id = d.resident_id, item
                 WHERE d.revoked_at IS NULL AND r.erased_at IS NULL
                   AND (item.station_id IS NULL OR r.station_id = item.station_id)
                   AND r.language = item.language
                   AND (cardinality(item.tags) = 0 OR r.interests && item.tags)
                   AND NOT EXISTS (SELECT 1 FROM content_deliveries cd
                                   WHERE cd.content_id = item.id AND cd.device_id = d.id)),
             queued AS (
                 INSERT INTO device_outbox (device_id, kind, payload)
                 SELECT id, 'content', $2 FROM targets
                 RETURNING id, device_id)
             INSERT INTO content_deliveries (content_id, device_id, outbox_id)
             SELECT $1, device_id, id FROM queued
             RETURNING device_id",
        )
        .bind(content_id)
        .bind(payload)
        .fetch_all(&mut *tx)
        .await?;
        for device_id in &devices {
            notify(
                &mut tx,
                &Notification::DeviceOutbox {
                    device_id: device_id.clone(),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(devices.len() as u64)
    }

    /// The senior opened an item on `device_id` (the first opening counts). Refused: an item
    /// never sent to this tablet.
    pub async fn content_opened(&self, device_id: &str, content_id: Uuid) -> Result<()> {
        let updated = sqlx::query(
            "UPDATE content_deliveries SET opened_at = coalesce(opened_at, clock_timestamp())
             WHERE content_id = $1 AND device_id = $2",
        )
        .bind(content_id)
        .bind(device_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(refused(format!(
                "content {content_id} was never sent to this tablet"
            )));
        }
        Ok(())
    }

    /// Who got an item: each tablet it was sent to, whether it acknowledged it, opened it.
    pub async fn content_deliveries(&self, content_id: Uuid) -> Result<Vec<ContentDelivery>> {
        let rows: Vec<(String, bool, bool)> = sqlx::query_as(
            "SELECT cd.device_id, o.acked_at IS NOT NULL, cd.opened_at IS NOT NULL
             FROM content_deliveries cd JOIN device_outbox o ON o.id = cd.outbox_id
             WHERE cd.content_id = $1 ORDER BY cd.device_id",
        )
        .bind(content_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(device_id, received, opened)| ContentDelivery {
                device_id,
                received,
                opened,
            })
            .collect())
    }

    /// A resident's language (content is sent in it) and interests (content tags).
    pub async fn set_resident_profile(
        &self,
        resident_id: Uuid,
        language: &str,
        interests: &[String],
    ) -> Result<()> {
        if !is_language_tag(language) {
            return Err(refused(format!(
                "{language:?} is not a language tag (zh, en, zh-yue, ...)"
            )));
        }
        let updated =
            sqlx::query("UPDATE residents SET language = $2, interests = $3 WHERE id = $1")
                .bind(resident_id)
                .bind(language)
                .bind(interests)
                .execute(&self.pool)
                .await?
                .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound {
                what: "resident",
                id: resident_id.to_string(),
            });
        }
        Ok(())
    }

    /// Tablets in service longer than `period_days` with no answered call in that time: their
    /// monthly test call is missing, and their station should arrange one.
    pub async fn untested_tablets(&self, period_days: u32) -> Result<Vec<UntestedTablet>> {
        let rows = sqlx::query(
            "SELECT d.id, d.resident_id, r.station_id, s.name,
                    (SELECT max(c.answered_at) FROM calls c WHERE c.device_id = d.id) AS last
             FROM devices d
             JOIN residents r ON r.id = d.resident_id
             JOIN stations s ON s.id = r.station_id
             WHERE d.revoked_at IS NULL AND r.erased_at IS NULL
               AND d.created_at < clock_timestamp() - make_interval(days => $1)
               AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.device_id = d.id
                                 AND c.answered_at > clock_timestamp() - make_interval(days => $1))
             ORDER BY s.name, d.id",
        )
        .bind(i32::try_from(period_days).unwrap_or(i32::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(UntestedTablet {
                    device_id: row.try_get("id")?,
                    resident_id: row.try_get("resident_id")?,
                    station_id: row.try_get("station_id")?,
                    station_name: row.try_get("name")?,
                    last_answered_at: row.try_get("last")?,
                })
            })
            .collect()
    }
}
