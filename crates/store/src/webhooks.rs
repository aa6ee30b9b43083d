//! The webhook outbox: claim due deliveries (with a lease, so two nodes never send the same one
//! at once), and settle them as delivered, to be retried, or dead.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::Row;

use crate::{append_event, Result, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    pub id: i64,
    /// The claim this attempt holds; settle with it.
    pub claim_token: Option<uuid::Uuid>,
    pub body: serde_json::Value,
    pub attempts: i32,
    pub last_error: String,
    pub created_at: DateTime<Utc>,
}

fn delivery(row: sqlx::postgres::PgRow) -> Result<WebhookDelivery> {
    Ok(WebhookDelivery {
        id: row.try_get("id")?,
        claim_token: row.try_get("claim_token")?,
        body: row.try_get("body")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Takes up to `limit` due deliveries for `lease` (they are not due again before then).
    pub async fn claim_webhook_deliveries(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<WebhookDelivery>> {
        sqlx::query(
            "UPDATE webhook_deliveries SET next_attempt_at = clock_timestamp() + make_interval(secs => $2),
                    claim_token = gen_random_uuid()
             WHERE id IN (SELECT id FROM webhook_deliveries
                          WHERE state = 'pending' AND next_attempt_at <= now()
                          ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, claim_token, body, attempts, last_error, created_at",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(delivery)
        .collect()
    }

    pub async fn webhook_delivered(&self, id: i64, claim_token: Option<uuid::Uuid>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET state = 'delivered', attempts = attempts + 1,
                    delivered_at = clock_timestamp()
             WHERE id = $1 AND state = 'pending' AND claim_token IS NOT DISTINCT FROM $2",
        )
        .bind(id)
        .bind(claim_token)
        .execute(&mut *tx)
        .await?;
        append_event(
            &mut tx,
            "webhook.delivered",
            None,
            None,
            None,
            None,
            json!({ "delivery_id": id }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A failed attempt: retried after `retry_after`, or dead once `max_attempts` are spent.
    /// Returns whether it is now dead.
    pub async fn webhook_failed(
        &self,
        id: i64,
        claim_token: Option<uuid::Uuid>,
        error: &str,
        retry_after: Duration,
        max_attempts: u32,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let dead: Option<bool> = sqlx::query_scalar(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = $2,
                    state = CASE WHEN attempts + 1 >= $4 THEN 'dead' ELSE 'pending' END,
                    next_attempt_at = clock_timestamp() + make_interval(secs => $3)
             WHERE id = $1 AND state = 'pending' AND claim_token IS NOT DISTINCT FROM $5
             RETURNING state = 'dead'",
        )
        .bind(id)
        .bind(error.chars().take(500).collect::<String>())
        .bind(retry_after.as_secs_f64())
        .bind(i32::try_from(max_attempts).unwrap_or(i32::MAX))
        .bind(claim_token)
        .fetch_optional(&mut *tx)
        .await?;
        let dead = dead == Some(true);
        append_event(
            &mut tx,
            if dead {
                "webhook.dead_lettered"
            } else {
                "webhook.failed"
            },
            None,
            None,
            None,
            None,
            json!({ "delivery_id": id, "error": error.chars().take(200).collect::<String>() }),
        )
        .await?;
        tx.commit().await?;
        Ok(dead)
    }

    /// Deliveries given up on, newest first: for the operators to follow up by hand.
    pub async fn dead_webhook_deliveries(&self, limit: i64) -> Result<Vec<WebhookDelivery>> {
        sqlx::query(
            "SELECT id, claim_token, body, attempts, last_error, created_at FROM webhook_deliveries
             WHERE state = 'dead' ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(delivery)
        .collect()
    }
}
