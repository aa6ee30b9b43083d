//! Which gateway session holds each device's link, and the nodes' leases.
//!
//! A device's row is written when a session takes its link (the arrival), when the link ends or
//! the device falls silent (a release, recording when it was last heard), and when a silent
//! device speaks again (a hold). While a node holds a link and the device keeps talking, the
//! database does nothing for it: the node renews one row, its lease, and a held device counts
//! as seen at the lease's last renewal. The offline sweep folds a node whose lease lapsed
//! ([`Store::sweep_offline_devices`]), so a crashed node's devices still raise their alarms.

use std::time::Duration;

use uuid::Uuid;

use crate::{Result, Store};

/// A link's release: `device_id`, as held by `session` of the releasing node, was last heard
/// `silent_for` ago.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub device_id: String,
    pub session: i64,
    pub silent_for: Duration,
}

/// How long ago, in milliseconds, saturating.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Renews `node`'s lease (creating it on the node's first call) and returns how many times
    /// the offline sweep has folded the node: when that grows, the node's links were released
    /// while its lease had lapsed, and it must take them again.
    pub async fn renew_node(&self, node: Uuid) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO gateway_nodes (id) VALUES ($1)
             ON CONFLICT (id) DO UPDATE SET heard_at = clock_timestamp()
             RETURNING folds",
        )
        .bind(node)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Releases links in one statement: each device's last-seen time becomes when it was last
    /// heard (never earlier than it was), and the device stops being held if `node` still
    /// holds it with that session (a newer session, here or on another node, keeps its hold).
    pub async fn release_devices(&self, node: Uuid, releases: &[Release]) -> Result<()> {
        if releases.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = releases.iter().map(|r| r.device_id.as_str()).collect();
        let sessions: Vec<i64> = releases.iter().map(|r| r.session).collect();
        let silent_ms: Vec<i64> = releases.iter().map(|r| millis(r.silent_for)).collect();
        sqlx::query(
            "UPDATE devices d
             SET last_seen_at = greatest(coalesce(d.last_seen_at, '-infinity'),
                                         clock_timestamp() - make_interval(secs => v.silent_ms / 1000.0)),
                 held_by = CASE WHEN d.held_by = $1 AND d.held_session = v.session THEN NULL ELSE d.held_by END,
                 held_session = CASE WHEN d.held_by = $1 AND d.held_session = v.session THEN NULL ELSE d.held_session END
             FROM (SELECT DISTINCT ON (id) id, session, silent_ms
                   FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS u(id, session, silent_ms)
                   ORDER BY id, silent_ms) AS v
             WHERE d.id = v.id",
        )
        .bind(node)
        .bind(&ids)
        .bind(&sessions)
        .bind(&silent_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes links again (a silent device spoke, or the node's lease had lapsed): each device
    /// becomes held by `node` with the given session, heard now, unless another node holds it.
    /// Returns the devices taken; the others are left to their holder.
    pub async fn hold_devices(&self, node: Uuid, holds: &[(String, i64)]) -> Result<Vec<String>> {
        if holds.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = holds.iter().map(|(id, _)| id.as_str()).collect();
        let sessions: Vec<i64> = holds.iter().map(|(_, session)| *session).collect();
        Ok(sqlx::query_scalar(
            "UPDATE devices d
             SET last_seen_at = greatest(coalesce(d.last_seen_at, '-infinity'), clock_timestamp()),
                 held_by = $1, held_session = v.session
             FROM (SELECT id, max(session) AS session
                   FROM unnest($2::text[], $3::bigint[]) AS u(id, session) GROUP BY id) AS v
             WHERE d.id = v.id
               AND (d.held_by IS NULL OR (d.held_by = $1 AND d.held_session <= v.session))
             RETURNING d.id",
        )
        .bind(node)
        .bind(&ids)
        .bind(&sessions)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The devices `node` holds that have an open "device offline" alarm, with the session
    /// holding each: raised while the node's lease had lapsed, they are cleared once the node
    /// has heard the device.
    pub async fn held_offline_alarms(&self, node: Uuid) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT d.id, d.held_session FROM alarms a JOIN devices d ON d.id = a.device_id
             WHERE a.kind = 'DEVICE_OFFLINE' AND a.cleared_at IS NULL AND d.held_by = $1",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?)
    }
}
