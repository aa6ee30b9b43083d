//! The picture of the database the metrics endpoint shows at each scrape: small, indexed
//! queries over what is open or waiting now, never over all history.

use sqlx::Row;

use crate::supervision::StatisticsCounts;
use crate::{Result, Store};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedState {
    /// (alarm kind as stored, state of its call or `none`, count) of unresolved alarms.
    pub open_alarms: Vec<(String, String, i64)>,
    /// (queue id, items waiting, longest wait in seconds).
    pub queues: Vec<(String, i64, f64)>,
    /// (state, count) of webhook deliveries not delivered.
    pub webhook_backlog: Vec<(String, i64)>,
    /// The live statistics counters (for the service level).
    pub statistics: StatisticsCounts,
}

impl Store {
    pub async fn observed_state(&self) -> Result<ObservedState> {
        let open_alarms = sqlx::query(
            "SELECT a.kind, coalesce(c.state, 'none') AS state, count(*) AS n
             FROM alarms a LEFT JOIN calls c ON c.id = a.call_id
             WHERE a.resolved_at IS NULL AND a.cleared_at IS NULL
             GROUP BY 1, 2",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get("kind")?,
                row.try_get("state")?,
                row.try_get("n")?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
        let queues = sqlx::query(
            "SELECT queue_id, count(*) AS n,
                    extract(epoch FROM clock_timestamp() - min(queued_at))::float8 AS longest
             FROM calls WHERE state IN ('queued', 'offered') GROUP BY queue_id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get("queue_id")?,
                row.try_get("n")?,
                row.try_get("longest")?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
        let webhook_backlog = sqlx::query(
            "SELECT state, count(*) AS n FROM webhook_deliveries
             WHERE state IN ('pending', 'dead') GROUP BY state",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("state")?, row.try_get("n")?)))
        .collect::<Result<Vec<_>>>()?;
        Ok(ObservedState {
            open_alarms,
            queues,
            webhook_backlog,
            statistics: self.live_statistics().await?,
        })
    }
}

impl Store {
    /// What in the database server's configuration an operator should hear about when a node
    /// starts, each as a sentence. Now one thing: autovacuum turned off (as some CI servers
    /// have it). Without it no table is ever analyzed, so statements planned while the alarm
    /// and call tables were small keep their plans as the tables grow: in a 100,000-tablet run
    /// one such plan took 20 s a statement and the fleet fell away.
    pub async fn server_configuration_warnings(&self) -> Result<Vec<String>> {
        let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
            .fetch_one(&self.pool)
            .await?;
        let mut warnings = Vec::new();
        if autovacuum == "off" {
            warnings.push(
                "PostgreSQL's autovacuum is off: tables are never vacuumed or analyzed, and \
                 statements keep plans made when the tables were small; turn it on \
                 (docs/operations.md)"
                    .to_owned(),
            );
        }
        Ok(warnings)
    }
}
