//! Voice: WebRTC signalling between the console of the operator holding a call and the tablet
//! of that call. Nothing is stored; each signal is checked against the call and relayed through
//! `pg_notify` to whichever node holds the other side.

use uuid::Uuid;

use crate::{notify, Notification, Result, Store, StoreError};

/// The signals relayed.
pub const RTC_KINDS: &[&str] = &["offer", "answer", "candidate", "hangup"];

/// Largest payload (an SDP or an ICE candidate); PostgreSQL's notifications hold 8000 bytes.
pub const MAX_RTC_PAYLOAD_BYTES: usize = 6000;

fn check(kind: &str, payload: &str) -> Result<()> {
    if !RTC_KINDS.contains(&kind) {
        return Err(StoreError::Invalid(format!(
            "unknown signal kind '{}': use offer, answer, candidate or hangup",
            kind.chars().take(20).collect::<String>()
        )));
    }
    if payload.len() > MAX_RTC_PAYLOAD_BYTES {
        return Err(StoreError::Invalid(format!(
            "a signal's payload is at most {MAX_RTC_PAYLOAD_BYTES} bytes"
        )));
    }
    Ok(())
}

impl Store {
    /// From the operator's console to the tablet: only for an answered call this operator holds.
    pub async fn rtc_from_operator(
        &self,
        operator_id: Uuid,
        call_id: Uuid,
        kind: &str,
        payload: &str,
    ) -> Result<()> {
        check(kind, payload)?;
        let mut tx = self.pool.begin().await?;
        let device_id: Option<String> = sqlx::query_scalar(
            "SELECT device_id FROM calls WHERE id = $1 AND answered_by = $2 AND state = 'answered'",
        )
        .bind(call_id)
        .bind(operator_id)
        .fetch_optional(&mut *tx)
        .await?;
        let device_id = device_id.ok_or_else(|| {
            StoreError::Refused("voice needs an answered call that you hold".to_owned())
        })?;
        notify(
            &mut tx,
            &Notification::RtcToDevice {
                device_id,
                call_id,
                kind: kind.to_owned(),
                payload: payload.to_owned(),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// From the tablet to the console of the operator holding its answered call.
    pub async fn rtc_from_device(
        &self,
        device_id: &str,
        call_id: Uuid,
        kind: &str,
        payload: &str,
    ) -> Result<()> {
        check(kind, payload)?;
        let mut tx = self.pool.begin().await?;
        let operator_id: Option<Uuid> = sqlx::query_scalar(
            "SELECT answered_by FROM calls WHERE id = $1 AND device_id = $2 AND state = 'answered'",
        )
        .bind(call_id)
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await?
        .flatten();
        let operator_id = operator_id.ok_or_else(|| {
            StoreError::Refused("no answered call of this tablet with that id".to_owned())
        })?;
        notify(
            &mut tx,
            &Notification::RtcToOperator {
                operator_id,
                call_id,
                kind: kind.to_owned(),
                payload: payload.to_owned(),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
