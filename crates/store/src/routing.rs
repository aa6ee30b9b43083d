//! Routing in PostgreSQL: the rule set in force, the matching round (the decision core's
//! `plan`, run under one global advisory lock so that strict priority and first-in-first-out
//! order hold across every node), and the sweeps that give every waiting item and every timed
//! operator status a live deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use carebell_domain::routing::{
    self, Attributes, FreeOperator, RuleSet, ValidRuleSet, WaitingItem,
};
use carebell_domain::{CallKind, CallState};
use serde_json::json;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::calls::NewOffer;
use crate::outbox::{push_outbox, CallUpdatePayload};
use crate::{
    append_event, append_events, notify, notify_all, Notification, Result, Store, StoreError,
};

/// The advisory lock every matching round takes: one matcher at a time across all nodes.
const MATCHING_LOCK: i64 = 0x0ca2_eb11;
/// Most waiting items one round looks at, the most urgent kinds first and then the oldest (so
/// a backlog of technical alarms or call-backs never hides an emergency); the next round sees
/// the rest.
const MAX_ITEMS_PER_ROUND: i64 = 500;

/// Database "now" in Unix milliseconds.
pub(crate) async fn now_ms(tx: &mut Transaction<'_, Postgres>) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
            .fetch_one(&mut **tx)
            .await?,
    )
}

/// The rules in force, parsed once per version and process: every call and alarm reads them,
/// and parsing on each would cost more than the insert itself. The version is `None` while no
/// rule set has been loaded (the built-in rules are in force).
static RULES_CACHE: std::sync::Mutex<Option<(Option<i64>, ValidRuleSet)>> =
    std::sync::Mutex::new(None);

fn default_rules() -> ValidRuleSet {
    static DEFAULT: std::sync::OnceLock<ValidRuleSet> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(ValidRuleSet::default_rules).clone()
}

/// The rule set in force (the newest loaded), or the built-in one.
pub(crate) async fn active_rules(tx: &mut Transaction<'_, Postgres>) -> Result<ValidRuleSet> {
    Ok(versioned_rules(tx).await?.1)
}

/// The rule set in force with its version, read in the transaction.
pub(crate) async fn versioned_rules(
    tx: &mut Transaction<'_, Postgres>,
) -> Result<(Option<i64>, ValidRuleSet)> {
    let version: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM routing_rules")
        .fetch_one(&mut **tx)
        .await?;
    if let Some(cached) = cached_rules().filter(|(cached, _)| *cached == version) {
        return Ok(cached);
    }
    let Some(stored) = version else {
        let rules = default_rules();
        cache_rules(None, &rules);
        return Ok((None, rules));
    };
    let body: serde_json::Value =
        sqlx::query_scalar("SELECT body FROM routing_rules WHERE version = $1")
            .bind(stored)
            .fetch_one(&mut **tx)
            .await?;
    // Rules are validated before they are stored, so this only fails if someone edited the
    // table by hand. Calls must still flow: fall back to the built-in rules, loudly.
    let parsed = serde_json::from_value::<RuleSet>(body)
        .map_err(|error| error.to_string())
        .and_then(|rules| ValidRuleSet::validate(rules).map_err(|error| error.to_string()));
    let rules = parsed.unwrap_or_else(|error| {
        tracing::error!(%error, "the stored routing rules are unusable; routing by the built-in rules");
        default_rules()
    });
    cache_rules(version, &rules);
    Ok((version, rules))
}

/// The rules this process last read, with their version, without asking the database: a
/// statement that uses them must check the version itself (the alarm batch does).
pub(crate) fn cached_rules() -> Option<(Option<i64>, ValidRuleSet)> {
    RULES_CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

fn cache_rules(version: Option<i64>, rules: &ValidRuleSet) {
    *RULES_CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((version, rules.clone()));
}

/// The seconds from `queued_at` to the item's next deadline.
/// A supervisor alert about a call: its event and its notification, for a batch.
fn alert(
    events: &mut Vec<(&str, Option<Uuid>, Option<String>, serde_json::Value)>,
    notifications: &mut Vec<Notification>,
    call_id: Uuid,
    reason: String,
) {
    events.push((
        "supervisor.alert",
        Some(call_id),
        None,
        json!({ "reason": reason }),
    ));
    notifications.push(Notification::SupervisorAlert { call_id, reason });
}

pub(crate) fn deadline_secs(rules: &ValidRuleSet, queue: &str, waited_secs: u64) -> f64 {
    routing::next_deadline_secs(rules, queue, waited_secs) as f64
}

impl Store {
    /// The rule set in force.
    pub async fn routing_rules(&self) -> Result<ValidRuleSet> {
        Ok(self.versioned_routing_rules().await?.1)
    }

    /// The rule set in force with its version (`None`: the built-in rules).
    pub(crate) async fn versioned_routing_rules(&self) -> Result<(Option<i64>, ValidRuleSet)> {
        let mut tx = self.pool.begin().await?;
        let rules = versioned_rules(&mut tx).await?;
        tx.commit().await?;
        Ok(rules)
    }

    /// Validates and puts a new rule set in force. An invalid one is refused whole and the
    /// rules in force stay as they are. Returns the new version.
    pub async fn load_routing_rules(&self, text: &str, loaded_by: &str) -> Result<i64> {
        let rules =
            ValidRuleSet::parse(text).map_err(|error| StoreError::Refused(error.to_string()))?;
        let body: serde_json::Value = serde_json::to_value(rules.rules())
            .map_err(|error| StoreError::Refused(format!("cannot store the rules: {error}")))?;
        let mut tx = self.pool.begin().await?;
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO routing_rules (body, loaded_by) VALUES ($1, $2) RETURNING version",
        )
        .bind(body)
        .bind(loaded_by)
        .fetch_one(&mut *tx)
        .await?;
        append_event(
            &mut tx,
            "routing.rules_loaded",
            None,
            None,
            None,
            None,
            json!({ "version": version, "by": loaded_by }),
        )
        .await?;
        notify(&mut tx, &Notification::Dispatch).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// One matching round: the decision core decides, this writes the offers. Runs under a
    /// global advisory lock, so concurrent rounds on several nodes serialize.
    pub async fn match_round(&self, ring_timeout: Duration) -> Result<Vec<NewOffer>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MATCHING_LOCK)
            .execute(&mut *tx)
            .await?;
        // Nobody free: nothing to decide (and no need to lock a backlog of waiting items).
        let anyone_free: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM operators op WHERE op.status = 'available'
                AND NOT EXISTS (SELECT 1 FROM offers o WHERE o.operator_id = op.id AND o.state = 'offered'))",
        )
        .fetch_one(&mut *tx)
        .await?;
        if !anyone_free {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let rules = active_rules(&mut tx).await?;
        let now = now_ms(&mut tx).await?;

        // The waiting items' rows are locked: every path that changes an offer locks its call
        // first, so the offers read next cannot change under this round (an acceptance that
        // commits first is seen, and its call is no longer waiting).
        let rows = sqlx::query(
            "SELECT id, kind, queue_id, dialect, station,
                    (extract(epoch FROM queued_at) * 1000)::bigint AS queued_ms,
                    (extract(epoch FROM created_at) * 1000)::bigint AS created_ms
             FROM calls WHERE state IN ('queued', 'offered')
             ORDER BY priority DESC, created_at LIMIT $1
             FOR UPDATE",
        )
        .bind(MAX_ITEMS_PER_ROUND)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = rows
            .iter()
            .map(|row| row.try_get("id"))
            .collect::<std::result::Result<_, _>>()?;
        let mut ringing: BTreeMap<Uuid, BTreeSet<Uuid>> = BTreeMap::new();
        let mut offered_before: BTreeMap<Uuid, BTreeMap<Uuid, u32>> = BTreeMap::new();
        for offer in
            sqlx::query("SELECT call_id, operator_id, state FROM offers WHERE call_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?
        {
            let call_id: Uuid = offer.try_get("call_id")?;
            let operator_id: Uuid = offer.try_get("operator_id")?;
            if offer.try_get::<String, _>("state")? == "offered" {
                ringing.entry(call_id).or_default().insert(operator_id);
            }
            *offered_before
                .entry(call_id)
                .or_default()
                .entry(operator_id)
                .or_default() += 1;
        }
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let id: Uuid = row.try_get("id")?;
            let kind: String = row.try_get("kind")?;
            let queued_ms: i64 = row.try_get("queued_ms")?;
            let dialect: String = row.try_get("dialect")?;
            let station: String = row.try_get("station")?;
            items.push(WaitingItem {
                id,
                kind: CallKind::parse(&kind).unwrap_or(CallKind::Call),
                queue: row.try_get("queue_id")?,
                waited_ms: now - queued_ms,
                created_ms: row.try_get("created_ms")?,
                attributes: Attributes {
                    dialect: Some(dialect).filter(|value| !value.is_empty()),
                    station: Some(station).filter(|value| !value.is_empty()),
                },
                ringing: ringing.remove(&id).unwrap_or_default(),
                offered_before: offered_before.remove(&id).unwrap_or_default(),
            });
        }
        // The free operators' rows are locked, so a concurrent status change waits for this
        // round (and this round never offers to someone who just went away).
        let operators = sqlx::query(
            "SELECT op.id, op.skills, (extract(epoch FROM op.status_since) * 1000)::bigint AS idle_ms
             FROM operators op
             WHERE op.status = 'available'
               AND NOT EXISTS (SELECT 1 FROM offers o WHERE o.operator_id = op.id AND o.state = 'offered')
             ORDER BY op.id
             FOR UPDATE",
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|row| {
            Ok(FreeOperator {
                id: row.try_get("id")?,
                skills: row.try_get::<Vec<String>, _>("skills")?.into_iter().collect(),
                idle_since_ms: row.try_get("idle_ms")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;

        // A lock wait re-checks the operator row but not the offers subquery (it keeps the
        // statement's snapshot): look again, now that the rows are ours.
        let free_ids: Vec<Uuid> = operators.iter().map(|operator| operator.id).collect();
        let ringing_now: Vec<Uuid> = sqlx::query_scalar(
            "SELECT operator_id FROM offers WHERE state = 'offered' AND operator_id = ANY($1)",
        )
        .bind(&free_ids)
        .fetch_all(&mut *tx)
        .await?;
        let operators: Vec<FreeOperator> = operators
            .into_iter()
            .filter(|operator| !ringing_now.contains(&operator.id))
            .collect();
        let planned = routing::plan(&rules, &items, &operators);
        let ring_ms = i64::try_from(ring_timeout.as_millis()).unwrap_or(i64::MAX);
        let mut offers = Vec::with_capacity(planned.len());
        for offer in planned {
            let offer_id = Uuid::new_v4();
            sqlx::query(
                "INSERT INTO offers (id, call_id, operator_id, state, created_at, expires_at)
                 VALUES ($1, $2, $3, 'offered', clock_timestamp(),
                         clock_timestamp() + make_interval(secs => $4::double precision / 1000.0))",
            )
            .bind(offer_id)
            .bind(offer.item)
            .bind(offer.operator)
            .bind(ring_ms)
            .execute(&mut *tx)
            .await?;
            let call = sqlx::query(
                "UPDATE calls SET state = 'offered' WHERE id = $1
                 RETURNING device_id, request_id, (SELECT count(*) FROM offers WHERE call_id = $1) AS n_offers",
            )
            .bind(offer.item)
            .fetch_one(&mut *tx)
            .await?;
            append_event(
                &mut tx,
                "offer.created",
                Some(offer.item),
                Some(offer_id),
                Some(offer.operator),
                None,
                json!({ "ring_timeout_ms": ring_ms }),
            )
            .await?;
            if call.try_get::<i64, _>("n_offers")? == 1 {
                let device_id: String = call.try_get("device_id")?;
                push_outbox(
                    &mut tx,
                    &device_id,
                    &CallUpdatePayload::new(
                        call.try_get::<String, _>("request_id")?,
                        offer.item,
                        CallState::Offered,
                    ),
                )
                .await?;
            }
            notify(
                &mut tx,
                &Notification::Offer {
                    offer_id,
                    operator_id: offer.operator,
                },
            )
            .await?;
            offers.push(NewOffer {
                offer_id,
                call_id: offer.item,
                operator_id: offer.operator,
            });
        }
        tx.commit().await?;
        Ok(offers)
    }

    /// Items whose deadline has come: widen (a new matching round will see it), overflow to
    /// the next queue, or alert the supervisors; then set the next deadline. Operators whose
    /// wrap-up is over become available. Safe on every node at once.
    pub async fn sweep_deadlines(&self, limit: i64) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let rules = active_rules(&mut tx).await?;
        let wrapped_up = sqlx::query(
            "UPDATE operators SET status = 'available', status_since = clock_timestamp(), status_until = NULL,
                    status_reason = ''
             WHERE status = 'wrap_up' AND status_until <= clock_timestamp()
             RETURNING id",
        )
        .fetch_all(&mut *tx)
        .await?;
        for row in &wrapped_up {
            let operator_id: Uuid = row.try_get("id")?;
            append_event(
                &mut tx,
                "operator.status",
                None,
                None,
                Some(operator_id),
                None,
                json!({ "from": "wrap_up", "to": "available", "reason": "wrap-up over" }),
            )
            .await?;
            notify(
                &mut tx,
                &Notification::OperatorStatus {
                    operator_id,
                    status: "available".to_owned(),
                    reason: "wrap-up over".to_owned(),
                },
            )
            .await?;
        }
        // `now()` (this transaction's start) rather than `clock_timestamp()`: a stable value
        // bounds the deadline index, a volatile one is a filter over every waiting call. A
        // deadline that falls during this transaction waits for the next round.
        let due = sqlx::query(
            "SELECT id, queue_id, overflowed,
                    extract(epoch FROM clock_timestamp() - queued_at)::bigint AS waited_secs
             FROM calls
             WHERE state IN ('queued', 'offered') AND deadline_at <= now()
             ORDER BY deadline_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let n_due = due.len();
        // Decided here, written in a few set-based statements whatever the number due: during
        // a flood of unanswered alarms every round finds a hundred due, and one statement per
        // call each round was the database's largest load after the alarms themselves.
        let mut overflows: (Vec<Uuid>, Vec<String>, Vec<f64>) = Default::default();
        let mut waits: (Vec<Uuid>, Vec<f64>) = Default::default();
        let mut events = Vec::new();
        let mut notifications = Vec::new();
        for row in due {
            let call_id: Uuid = row.try_get("id")?;
            let queue: String = row.try_get("queue_id")?;
            let waited_secs = u64::try_from(row.try_get::<i64, _>("waited_secs")?).unwrap_or(0);
            let rule = rules.queue(&queue).cloned();
            let max_wait = rule
                .as_ref()
                .and_then(|rule| rule.max_wait_secs)
                .map(u64::from);
            let reached_max_wait = max_wait.is_some_and(|max_wait| waited_secs >= max_wait);
            let overflow_to = rule
                .as_ref()
                .and_then(|rule| rule.overflow_to.clone())
                .filter(|_| reached_max_wait);
            if let Some(target) = overflow_to {
                overflows.0.push(call_id);
                overflows.2.push(deadline_secs(&rules, &target, 0));
                events.push((
                    "call.overflowed",
                    Some(call_id),
                    None,
                    json!({ "from": queue, "to": target, "waited_secs": waited_secs }),
                ));
                alert(
                    &mut events,
                    &mut notifications,
                    call_id,
                    format!("waited {waited_secs} s in {queue}; overflowed to {target}"),
                );
                overflows.1.push(target);
            } else {
                // Past its queue's maximum wait with nowhere to overflow: tell the supervisors,
                // and again every `REALERT_SECS` while it waits.
                if reached_max_wait {
                    alert(
                        &mut events,
                        &mut notifications,
                        call_id,
                        format!("waiting {waited_secs} s in {queue}"),
                    );
                }
                waits.0.push(call_id);
                waits.1.push(deadline_secs(&rules, &queue, waited_secs));
            }
        }
        if !overflows.0.is_empty() {
            sqlx::query(
                "UPDATE calls c SET queue_id = u.target, queued_at = clock_timestamp(), overflowed = true,
                        deadline_at = clock_timestamp() + make_interval(secs => u.deadline)
                 FROM unnest($1::uuid[], $2::text[], $3::float8[]) AS u(id, target, deadline)
                 WHERE c.id = u.id",
            )
            .bind(&overflows.0)
            .bind(&overflows.1)
            .bind(&overflows.2)
            .execute(&mut *tx)
            .await?;
        }
        if !waits.0.is_empty() {
            sqlx::query(
                "UPDATE calls c SET deadline_at = c.queued_at + make_interval(secs => u.secs)
                 FROM unnest($1::uuid[], $2::float8[]) AS u(id, secs) WHERE c.id = u.id",
            )
            .bind(&waits.0)
            .bind(&waits.1)
            .execute(&mut *tx)
            .await?;
        }
        append_events(&mut tx, &events).await?;
        if n_due > 0 || !wrapped_up.is_empty() {
            notifications.push(Notification::Dispatch);
        }
        notify_all(&mut tx, &notifications).await?;
        tx.commit().await?;
        Ok(n_due)
    }
}
