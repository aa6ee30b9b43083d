//! The webhook channel: posts each queued delivery to the configured gateway (an SMS or
//! messaging provider), signed with HMAC-SHA256 over the timestamp and the body; retries with
//! exponential backoff and full jitter; dead-letters after `max_attempts`.
//!
//! Signature: header `x-carebell-timestamp: <unix seconds>` and
//! `x-carebell-signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.

use std::sync::Arc;
use std::time::Duration;

use carebell_store::Store;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rand::Rng;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct WebhookConfig {
    /// `http://host:port/path` or `https://...`.
    pub url: hyper::Uri,
    pub secret: Vec<u8>,
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub timeout: Duration,
    /// For `https`: the roots to trust (the gateway's CA).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never printed.
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The signature header value for `body` sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Full jitter: a random delay up to `min(max, base × 2^attempt)`.
fn backoff(config: &WebhookConfig, attempt: u32) -> Duration {
    let ceiling = config
        .base_backoff
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(config.max_backoff);
    ceiling.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
}

async fn post(config: &WebhookConfig, body: Vec<u8>) -> Result<(), String> {
    let host = config
        .url
        .host()
        .ok_or("the webhook URL has no host")?
        .to_owned();
    let https = config.url.scheme_str() == Some("https");
    let port = config
        .url
        .port_u16()
        .unwrap_or(if https { 443 } else { 80 });
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|error| format!("cannot connect: {error}"))?;
    let timestamp = chrono::Utc::now().timestamp();
    let request = hyper::Request::post(config.url.clone())
        .header("host", &host)
        .header("content-type", "application/json")
        .header("x-carebell-timestamp", timestamp.to_string())
        .header(
            "x-carebell-signature",
            signature(&config.secret, timestamp, &body),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|error| format!("bad request: {error}"))?;
    let status = if https {
        let tls = config
            .tls
            .clone()
            .ok_or("an https webhook needs webhook.ca_path")?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|error| error.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, stream)
            .await
            .map_err(|error| format!("TLS failed: {error}"))?;
        send(TokioIo::new(stream), request).await?
    } else {
        send(TokioIo::new(stream), request).await?
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the gateway answered {status}"))
    }
}

async fn send<I>(io: I, request: hyper::Request<Full<Bytes>>) -> Result<hyper::StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|error| format!("HTTP handshake failed: {error}"))?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("request failed: {error}"))?;
    let status = response.status();
    // Drain the body so the connection closes cleanly.
    let _ = response.into_body().collect().await;
    Ok(status)
}

/// Delivers until `shutdown`. Safe on every node at once (deliveries are leased).
pub async fn run_webhook_worker(store: Store, config: WebhookConfig, shutdown: CancellationToken) {
    let lease = config.timeout * 2;
    loop {
        // One at a time, each with its own lease: a batch could outlive its lease while the
        // first deliveries are slow, and another node would send the rest as well.
        let due = match store.claim_webhook_deliveries(1, lease).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot claim webhook deliveries");
                Vec::new()
            }
        };
        let idle = due.is_empty();
        for delivery in due {
            let body = serde_json::to_vec(&delivery.body).unwrap_or_default();
            let outcome = match tokio::time::timeout(config.timeout, post(&config, body)).await {
                Ok(outcome) => outcome,
                Err(_) => Err("timed out".to_owned()),
            };
            let outcome_ok = outcome.is_ok();
            let settled = match outcome {
                Ok(()) => store
                    .webhook_delivered(delivery.id, delivery.claim_token)
                    .await
                    .map(|()| false),
                Err(error) => {
                    let attempt = u32::try_from(delivery.attempts).unwrap_or(0);
                    let retry_after = backoff(&config, attempt);
                    store
                        .webhook_failed(
                            delivery.id,
                            delivery.claim_token,
                            &error,
                            retry_after,
                            config.max_attempts,
                        )
                        .await
                }
            };
            let counted = match &settled {
                Ok(true) => "dead",
                Ok(false) if outcome_ok => "delivered",
                _ => "failed",
            };
            carebell_metrics::metrics()
                .webhook_deliveries
                .get_or_create(&carebell_metrics::label("outcome", counted))
                .inc();
            match settled {
                Ok(true) => {
                    tracing::warn!(delivery_id = delivery.id, "webhook delivery dead-lettered")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, delivery_id = delivery.id, "cannot record a webhook delivery")
                }
            }
        }
        if idle {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        } else if shutdown.is_cancelled() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_timestamp_and_body() {
        let a = signature(b"secret", 1, b"{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64);
        assert_ne!(a, signature(b"secret", 2, b"{}"));
        assert_ne!(a, signature(b"secret", 1, b"{ }"));
        assert_ne!(a, signature(b"other", 1, b"{}"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let config = WebhookConfig {
            url: "http://127.0.0.1:1/".parse().unwrap(),
            secret: Vec::new(),
            max_attempts: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            tls: None,
        };
        for attempt in 0..20 {
            assert!(backoff(&config, attempt) <= Duration::from_secs(1));
        }
        assert!(backoff(&config, 0) <= Duration::from_millis(100));
    }
}
