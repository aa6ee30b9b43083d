//! What supervisors see: the live queue picture, and statistics computed from the event log
//! (with the live counters the log's trigger keeps, which must always agree with a
//! recomputation).

use carebell_domain::routing::{self, Attributes, FreeOperator, WaitingItem as CoreItem};
use carebell_domain::CallKind;
use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use crate::{Result, Store};

/// An abandon this quick (the tablet's cancel window) is a "short abandon": counted, but left
/// out of the service level. Must match `stats_short_abandon_ms()` in the migrations.
pub const SHORT_ABANDON_SECS: u32 = 15;

/// Counts and sums over a period (or since the beginning, for the live counters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatisticsCounts {
    pub offered: i64,
    pub answered: i64,
    pub answered_within_60s: i64,
    pub answered_within_180s: i64,
    pub abandoned: i64,
    pub short_abandoned: i64,
    pub sum_answer_ms: i64,
    pub ended: i64,
    pub sum_handle_ms: i64,
}

impl StatisticsCounts {
    fn ratio(numerator: i64, denominator: i64) -> f64 {
        if denominator <= 0 {
            return 0.0;
        }
        numerator as f64 / denominator as f64
    }

    /// The calls that count for the service level: answered, plus abandoned after the short
    /// window.
    pub fn service_level_base(&self) -> i64 {
        self.answered + self.abandoned - self.short_abandoned
    }

    pub fn service_level_60s(&self) -> f64 {
        Self::ratio(self.answered_within_60s, self.service_level_base())
    }

    pub fn service_level_180s(&self) -> f64 {
        Self::ratio(self.answered_within_180s, self.service_level_base())
    }

    pub fn average_speed_of_answer_secs(&self) -> f64 {
        Self::ratio(self.sum_answer_ms, self.answered) / 1000.0
    }

    pub fn abandonment_rate(&self) -> f64 {
        Self::ratio(self.abandoned, self.answered + self.abandoned)
    }

    pub fn average_handling_secs(&self) -> f64 {
        Self::ratio(self.sum_handle_ms, self.ended) / 1000.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueFigures {
    pub queue_id: String,
    pub waiting: u32,
    pub longest_wait_secs: u32,
    pub eligible_available_operators: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingRow {
    pub call_id: Uuid,
    pub queue_id: String,
    pub kind: String,
    pub resident_name: String,
    pub waited_secs: u32,
    pub ringing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRow {
    pub operator_id: Uuid,
    pub display_name: String,
    pub status: String,
    pub reason: String,
    pub secs_in_status: u32,
    pub skills: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueStatus {
    pub queues: Vec<QueueFigures>,
    pub waiting: Vec<WaitingRow>,
    pub operators: Vec<OperatorRow>,
}

fn secs(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

impl Store {
    /// The counters kept live by the event log's trigger.
    pub async fn live_statistics(&self) -> Result<StatisticsCounts> {
        let row = sqlx::query(
            "SELECT sum(offered)::bigint AS offered, sum(answered)::bigint AS answered,
                    sum(answered_within_60s)::bigint AS answered_within_60s,
                    sum(answered_within_180s)::bigint AS answered_within_180s,
                    sum(abandoned)::bigint AS abandoned, sum(short_abandoned)::bigint AS short_abandoned,
                    sum(sum_answer_ms)::bigint AS sum_answer_ms, sum(ended)::bigint AS ended,
                    sum(sum_handle_ms)::bigint AS sum_handle_ms
             FROM stats_live",
        )
        .fetch_one(&self.pool)
        .await?;
        counts_from_row(&row)
    }

    /// The database's time `seconds` ago (for windows like "the last 24 hours").
    pub async fn database_time_ago(&self, seconds: i64) -> Result<DateTime<Utc>> {
        Ok(sqlx::query_scalar(
            "SELECT clock_timestamp() - make_interval(secs => $1::double precision)",
        )
        .bind(seconds)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The same counters recomputed from the event log, over `[from, to)` (unbounded where
    /// `None`).
    pub async fn recompute_statistics(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<StatisticsCounts> {
        let row = sqlx::query(
            "WITH e AS (
                SELECT kind, (detail->>'wait_ms')::bigint AS wait_ms, (detail->>'handle_ms')::bigint AS handle_ms
                FROM events
                WHERE kind IN ('call.created', 'call.answered', 'call.abandoned', 'call.ended')
                  AND coalesce(detail->>'kind', '') <> 'callback'
                  AND ($1::timestamptz IS NULL OR at >= $1) AND ($2::timestamptz IS NULL OR at < $2)
             )
             SELECT
                count(*) FILTER (WHERE kind = 'call.created') AS offered,
                count(*) FILTER (WHERE kind = 'call.answered') AS answered,
                count(*) FILTER (WHERE kind = 'call.answered' AND wait_ms <= 60000) AS answered_within_60s,
                count(*) FILTER (WHERE kind = 'call.answered' AND wait_ms <= 180000) AS answered_within_180s,
                count(*) FILTER (WHERE kind = 'call.abandoned') AS abandoned,
                count(*) FILTER (WHERE kind = 'call.abandoned' AND wait_ms < stats_short_abandon_ms()) AS short_abandoned,
                coalesce(sum(wait_ms) FILTER (WHERE kind = 'call.answered'), 0)::bigint AS sum_answer_ms,
                count(*) FILTER (WHERE kind = 'call.ended') AS ended,
                coalesce(sum(handle_ms) FILTER (WHERE kind = 'call.ended'), 0)::bigint AS sum_handle_ms
             FROM e",
        )
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await?;
        counts_from_row(&row)
    }

    /// Occupancy over status periods that began in `[from, to)`: time on calls and in wrap-up
    /// over time signed in and not away, from the `operator.status` events.
    pub async fn occupancy(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<f64> {
        let row = sqlx::query(
            "WITH s AS (
                SELECT at, detail->>'to' AS status,
                       lead(at) OVER (PARTITION BY operator_id ORDER BY id) AS next_at
                FROM events WHERE kind = 'operator.status' AND operator_id IS NOT NULL
             ), p AS (
                SELECT status, extract(epoch FROM coalesce(next_at, clock_timestamp()) - at) AS secs
                FROM s WHERE ($1::timestamptz IS NULL OR at >= $1) AND ($2::timestamptz IS NULL OR at < $2)
             )
             SELECT coalesce(sum(secs) FILTER (WHERE status IN ('on_call', 'wrap_up')), 0)::float8 AS busy,
                    coalesce(sum(secs) FILTER (WHERE status IN ('available', 'on_call', 'wrap_up', 'paused')), 0)::float8 AS staffed
             FROM p",
        )
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await?;
        let busy: f64 = row.try_get("busy")?;
        let staffed: f64 = row.try_get("staffed")?;
        Ok(if staffed > 0.0 {
            (busy / staffed).clamp(0.0, 1.0)
        } else {
            0.0
        })
    }

    /// The queues, waiting items and operators now.
    pub async fn queue_status(&self) -> Result<QueueStatus> {
        let rules = self.routing_rules().await?;
        let waiting_rows = sqlx::query(
            "SELECT c.id, c.queue_id, c.kind, c.dialect, c.station, r.full_name,
                    (extract(epoch FROM clock_timestamp() - c.queued_at) * 1000)::bigint AS waited_ms,
                    (extract(epoch FROM c.created_at) * 1000)::bigint AS created_ms,
                    EXISTS (SELECT 1 FROM offers o WHERE o.call_id = c.id AND o.state = 'offered') AS ringing
             FROM calls c JOIN residents r ON r.id = c.resident_id
             WHERE c.state IN ('queued', 'offered')
             ORDER BY c.queued_at",
        )
        .fetch_all(&self.pool)
        .await?;
        let operator_rows = sqlx::query(
            "SELECT op.id, op.display_name, op.status, op.status_reason, op.skills,
                    extract(epoch FROM clock_timestamp() - op.status_since)::bigint AS secs,
                    NOT EXISTS (SELECT 1 FROM offers o WHERE o.operator_id = op.id AND o.state = 'offered') AS free
             FROM operators op WHERE op.status <> 'offline' ORDER BY op.display_name",
        )
        .fetch_all(&self.pool)
        .await?;

        let mut waiting = Vec::with_capacity(waiting_rows.len());
        let mut core_items = Vec::with_capacity(waiting_rows.len());
        for row in &waiting_rows {
            let waited_ms: i64 = row.try_get("waited_ms")?;
            let kind: String = row.try_get("kind")?;
            let dialect: String = row.try_get("dialect")?;
            let station: String = row.try_get("station")?;
            waiting.push(WaitingRow {
                call_id: row.try_get("id")?,
                queue_id: row.try_get("queue_id")?,
                kind: kind.clone(),
                resident_name: row.try_get("full_name")?,
                waited_secs: secs(waited_ms / 1000),
                ringing: row.try_get("ringing")?,
            });
            core_items.push(CoreItem {
                id: row.try_get("id")?,
                kind: CallKind::parse(&kind).unwrap_or(CallKind::Call),
                queue: row.try_get("queue_id")?,
                waited_ms,
                created_ms: row.try_get("created_ms")?,
                attributes: Attributes {
                    dialect: Some(dialect).filter(|value| !value.is_empty()),
                    station: Some(station).filter(|value| !value.is_empty()),
                },
                ringing: Default::default(),
                offered_before: Default::default(),
            });
        }
        let mut operators = Vec::with_capacity(operator_rows.len());
        let mut free = Vec::new();
        for row in &operator_rows {
            let status: String = row.try_get("status")?;
            let skills: Vec<String> = row.try_get("skills")?;
            if status == "available" && row.try_get::<bool, _>("free")? {
                free.push(FreeOperator {
                    id: row.try_get("id")?,
                    skills: skills.iter().cloned().collect(),
                    idle_since_ms: 0,
                });
            }
            operators.push(OperatorRow {
                operator_id: row.try_get("id")?,
                display_name: row.try_get("display_name")?,
                status,
                reason: row.try_get("status_reason")?,
                secs_in_status: secs(row.try_get("secs")?),
                skills,
            });
        }
        let queues = rules
            .rules()
            .queues
            .iter()
            .map(|queue| {
                let items: Vec<&CoreItem> = core_items
                    .iter()
                    .filter(|item| item.queue == queue.id)
                    .collect();
                let eligible = free
                    .iter()
                    .filter(|operator| {
                        if items.is_empty() {
                            // Nobody waiting: count who could take an item at the widest step.
                            let probe = CoreItem {
                                id: Uuid::nil(),
                                kind: CallKind::Call,
                                queue: queue.id.clone(),
                                waited_ms: i64::MAX / 2,
                                created_ms: 0,
                                attributes: Attributes::default(),
                                ringing: Default::default(),
                                offered_before: Default::default(),
                            };
                            routing::eligible(&rules, &probe, operator)
                        } else {
                            items
                                .iter()
                                .any(|item| routing::eligible(&rules, item, operator))
                        }
                    })
                    .count();
                QueueFigures {
                    queue_id: queue.id.clone(),
                    waiting: u32::try_from(items.len()).unwrap_or(u32::MAX),
                    longest_wait_secs: items
                        .iter()
                        .map(|item| secs(item.waited_ms / 1000))
                        .max()
                        .unwrap_or(0),
                    eligible_available_operators: u32::try_from(eligible).unwrap_or(u32::MAX),
                }
            })
            .collect();
        Ok(QueueStatus {
            queues,
            waiting,
            operators,
        })
    }
}

fn counts_from_row(row: &sqlx::postgres::PgRow) -> Result<StatisticsCounts> {
    Ok(StatisticsCounts {
        offered: row.try_get("offered")?,
        answered: row.try_get("answered")?,
        answered_within_60s: row.try_get("answered_within_60s")?,
        answered_within_180s: row.try_get("answered_within_180s")?,
        abandoned: row.try_get("abandoned")?,
        short_abandoned: row.try_get("short_abandoned")?,
        sum_answer_ms: row.try_get("sum_answer_ms")?,
        ended: row.try_get("ended")?,
        sum_handle_ms: row.try_get("sum_handle_ms")?,
    })
}
