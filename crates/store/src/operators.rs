//! Operators: credentials, sessions and availability.

use carebell_domain::OperatorStatus;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::Row;
use std::time::Duration;
use uuid::Uuid;

use crate::{append_event, notify, Notification, Result, Store, StoreError};

/// What sign-in needs to check a password.
#[derive(Debug, Clone)]
pub struct OperatorCredentials {
    pub operator_id: Uuid,
    pub display_name: String,
    pub password_hash: String,
}

/// A live console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSession {
    pub operator_id: Uuid,
    pub display_name: String,
    pub expires_at: DateTime<Utc>,
}

impl Store {
    pub async fn operator_credentials(
        &self,
        username: &str,
    ) -> Result<Option<OperatorCredentials>> {
        let row = sqlx::query(
            "SELECT id, display_name, password_hash FROM operators WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(OperatorCredentials {
                operator_id: row.try_get("id")?,
                display_name: row.try_get("display_name")?,
                password_hash: row.try_get("password_hash")?,
            })
        })
        .transpose()
    }

    /// Stores a session under the hash of its token; returns when it expires (database clock).
    pub async fn create_session(
        &self,
        operator_id: Uuid,
        token_hash: &[u8],
        ttl: Duration,
    ) -> Result<DateTime<Utc>> {
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let expires_at: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO operator_sessions (token_hash, operator_id, expires_at)
             VALUES ($1, $2, now() + make_interval(secs => $3::double precision))
             RETURNING expires_at",
        )
        .bind(token_hash)
        .bind(operator_id)
        .bind(ttl_secs)
        .fetch_one(&self.pool)
        .await?;
        let mut tx = self.pool.begin().await?;
        append_event(
            &mut tx,
            "operator.signed_in",
            None,
            None,
            Some(operator_id),
            None,
            json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(expires_at)
    }

    /// The session a token hash stands for, if it exists and has not expired.
    pub async fn session(&self, token_hash: &[u8]) -> Result<Option<OperatorSession>> {
        let row = sqlx::query(
            "SELECT s.operator_id, o.display_name, s.expires_at
             FROM operator_sessions s JOIN operators o ON o.id = s.operator_id
             WHERE s.token_hash = $1 AND s.expires_at > now()",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(OperatorSession {
                operator_id: row.try_get("operator_id")?,
                display_name: row.try_get("display_name")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    pub async fn operator_status(&self, operator_id: Uuid) -> Result<OperatorStatus> {
        let status: String = sqlx::query_scalar("SELECT status FROM operators WHERE id = $1")
            .bind(operator_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "operator",
                id: operator_id.to_string(),
            })?;
        status
            .parse()
            .map_err(|error: carebell_domain::StatusError| StoreError::Refused(error.to_string()))
    }

    /// Changes an operator's availability. An operator on a call stays on it until the call is
    /// ended; going away or offline withdraws a ringing offer so the call goes to someone else.
    pub async fn set_operator_status(
        &self,
        operator_id: Uuid,
        status: OperatorStatus,
    ) -> Result<OperatorStatus> {
        self.set_operator_status_because(operator_id, status, "")
            .await
    }

    /// As [`Store::set_operator_status`], recording why (shown to supervisors and in the log).
    /// Going available also clears the count of missed offers (and so a pause).
    pub async fn set_operator_status_because(
        &self,
        operator_id: Uuid,
        status: OperatorStatus,
        reason: &str,
    ) -> Result<OperatorStatus> {
        // A matching round may offer this operator a call between the withdrawal (which must
        // lock the call before the operator) and the operator's row lock; then start over.
        for _ in 0..5 {
            if let Some(status) = self
                .try_set_operator_status(operator_id, status, reason)
                .await?
            {
                return Ok(status);
            }
        }
        Err(StoreError::Refused(
            "the operator keeps being offered calls; try again".to_owned(),
        ))
    }

    async fn try_set_operator_status(
        &self,
        operator_id: Uuid,
        status: OperatorStatus,
        reason: &str,
    ) -> Result<Option<OperatorStatus>> {
        let mut tx = self.pool.begin().await?;
        if status != OperatorStatus::Available {
            Store::withdraw_operator_offer(&mut tx, operator_id).await?;
        }
        let current: String =
            sqlx::query_scalar("SELECT status FROM operators WHERE id = $1 FOR UPDATE")
                .bind(operator_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: "operator",
                    id: operator_id.to_string(),
                })?;
        if current == OperatorStatus::OnCall.as_str() {
            tx.rollback().await?;
            return Err(StoreError::Refused(
                "the operator is on a call; end the call first".to_owned(),
            ));
        }
        if status != OperatorStatus::Available {
            let ringing: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM offers WHERE operator_id = $1 AND state = 'offered')",
            )
            .bind(operator_id)
            .fetch_one(&mut *tx)
            .await?;
            if ringing {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        if current == status.as_str() {
            tx.commit().await?;
            return Ok(Some(status));
        }
        // Going available also clears the count of missed offers (and so ends a pause).
        sqlx::query(
            "UPDATE operators SET status = $2, status_since = clock_timestamp(), status_until = NULL,
                    status_reason = $3,
                    missed_offers = CASE WHEN $2 = 'available' THEN 0 ELSE missed_offers END
             WHERE id = $1",
        )
        .bind(operator_id)
        .bind(status.as_str())
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        append_event(
            &mut tx,
            "operator.status",
            None,
            None,
            Some(operator_id),
            None,
            json!({ "from": current, "to": status.as_str(), "reason": reason }),
        )
        .await?;
        // Every console of this operator, on any node, hears it.
        notify(
            &mut tx,
            &Notification::OperatorStatus {
                operator_id,
                status: status.as_str().to_owned(),
                reason: reason.to_owned(),
            },
        )
        .await?;
        if status == OperatorStatus::Available {
            notify(&mut tx, &Notification::Dispatch).await?;
        }
        tx.commit().await?;
        Ok(Some(status))
    }

    /// A console of this operator attached (on any node); returns the stamp that identifies
    /// this attachment for [`Store::operator_disconnected`].
    pub async fn console_attached(&self, operator_id: Uuid) -> Result<DateTime<Utc>> {
        Ok(sqlx::query_scalar(
            "UPDATE operators SET console_attached_at = clock_timestamp() WHERE id = $1
             RETURNING console_attached_at",
        )
        .bind(operator_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The operator's console attached at `attached_at` went away: offline, unless on a call
    /// (the call is theirs until they end it, from this console or another), or unless a
    /// console of theirs attached since (perhaps on another node).
    pub async fn operator_disconnected(
        &self,
        operator_id: Uuid,
        attached_at: DateTime<Utc>,
    ) -> Result<()> {
        let reattached: bool = sqlx::query_scalar(
            "SELECT coalesce(console_attached_at > $2, false) FROM operators WHERE id = $1",
        )
        .bind(operator_id)
        .bind(attached_at)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or(true);
        if reattached {
            return Ok(());
        }
        match self
            .set_operator_status_because(
                operator_id,
                OperatorStatus::Offline,
                "console disconnected",
            )
            .await
        {
            Ok(_) | Err(StoreError::Refused(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }
}
