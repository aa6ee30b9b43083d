//! The node's Prometheus metrics, in one registry per process.
//!
//! The gateway and the dispatcher record what happens as it happens (connections, handshakes,
//! alarms received, offers, waits, webhook attempts); the server fills the gauges that are a
//! picture of the database (open alarms, waiting items, service level, pool) just before each
//! scrape and serves [`render`]'s text on `/metrics`. `docs/operations.md` lists every series.
//!
//! Labels are short fixed words (a transport, an outcome, an alarm kind, a queue id from the
//! routing rules): never a device id, a name or anything a caller chose freely, so a series
//! count stays bounded.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A label set: fixed keys, values from a small known set.
pub type Labels = Vec<(&'static str, String)>;

/// One label.
pub fn label(key: &'static str, value: impl Into<String>) -> Labels {
    vec![(key, value.into())]
}

/// Seconds from 1 ms to about 2 min: offers and acknowledgements are milliseconds when well,
/// queue waits are seconds, and a bad night is minutes.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
        60.0, 120.0,
    ])
}

/// Seconds from 0.5 ms to about 4 min in doublings: the alarm path's goal is counted in
/// milliseconds, so its buckets must be finer than [`latency_histogram`]'s.
fn fine_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 20))
}

pub struct Metrics {
    registry: Registry,
    /// Device links held now, by transport (`websocket`, `grpc`).
    pub device_connections: Family<Labels, Gauge>,
    /// Device handshakes finished, by transport and outcome (`accepted`, `refused`).
    pub device_handshakes: Family<Labels, Counter>,
    /// Device sessions ended, by transport and reason (a fixed phrase such as `heartbeat
    /// supervision timed out` or `closed by the device`): who ends links when tablets churn.
    pub device_sessions_ended: Family<Labels, Counter>,
    /// Device connections closed before their session began, by stage: `at_capacity` and
    /// `per_address` (refused at accept by admission control, on the gRPC listener too), `slot`
    /// (no handshake slot within the queue's wait), `tls`, `tls_timeout`, `upgrade`. Why
    /// tablets are not coming back.
    pub device_connections_abandoned: Family<Labels, Counter>,
    /// From a device connection's accept to its handshake slot (admission control's queue).
    pub device_handshake_wait_seconds: Histogram,
    /// Alarms received from devices, by kind and whether they were new or a resend.
    pub alarms_received: Family<Labels, Counter>,
    /// Alarms not yet resolved or cleared, by kind and the state of their call (set at scrape).
    pub alarms_open: Family<Labels, Gauge>,
    /// Items waiting in each queue (set at scrape).
    pub queue_waiting: Family<Labels, Gauge>,
    /// The longest wait now in each queue, seconds (set at scrape).
    pub queue_longest_wait_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    /// From a call's creation to its acceptance by an operator, by call kind.
    pub queue_wait_seconds: Family<Labels, Histogram>,
    /// From a call's creation to an offer of it reaching an operator's console, by call kind.
    pub offer_latency_seconds: Family<Labels, Histogram>,
    /// Share of calls answered within 60 s and 180 s (short abandons left out; set at scrape).
    pub service_level_ratio: Family<Labels, Gauge<f64, AtomicU64>>,
    /// The node's database pool, by state (`idle`, `in_use`) and its maximum (set at scrape).
    pub database_pool_connections: Family<Labels, Gauge>,
    /// Webhook attempts, by outcome (`delivered`, `failed`, `dead`).
    pub webhook_deliveries: Family<Labels, Counter>,
    /// Webhook deliveries in the database by state (`pending`, `dead`; set at scrape).
    pub webhook_backlog: Family<Labels, Gauge>,
    /// 1 while the node drains (after SIGTERM), else 0.
    pub draining: Gauge,
    /// Device alarms stored per transaction by the alarm batcher (group commit).
    pub alarm_batch_size: Histogram,
    /// From a device alarm reaching the alarm batcher to its transaction's commit: the node's
    /// share of the wait before the device is acknowledged.
    pub alarm_store_seconds: Histogram,
    /// How long each alarm batch's transaction took (group commit).
    pub alarm_batch_seconds: Histogram,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("carebell");
        let metrics = Metrics {
            device_connections: Family::default(),
            device_handshakes: Family::default(),
            device_sessions_ended: Family::default(),
            device_connections_abandoned: Family::default(),
            device_handshake_wait_seconds: latency_histogram(),
            alarms_received: Family::default(),
            alarms_open: Family::default(),
            queue_waiting: Family::default(),
            queue_longest_wait_seconds: Family::default(),
            queue_wait_seconds: Family::new_with_constructor(latency_histogram),
            offer_latency_seconds: Family::new_with_constructor(latency_histogram),
            service_level_ratio: Family::default(),
            database_pool_connections: Family::default(),
            webhook_deliveries: Family::default(),
            webhook_backlog: Family::default(),
            draining: Gauge::default(),
            alarm_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            alarm_store_seconds: fine_latency_histogram(),
            alarm_batch_seconds: fine_latency_histogram(),
            registry: Registry::default(),
        };
        registry.register(
            "device_connections",
            "Device links held now, by transport",
            metrics.device_connections.clone(),
        );
        registry.register(
            "device_handshakes",
            "Device handshakes finished, by transport and outcome",
            metrics.device_handshakes.clone(),
        );
        registry.register(
            "device_sessions_ended",
            "Device sessions ended, by transport and reason",
            metrics.device_sessions_ended.clone(),
        );
        registry.register(
            "device_connections_abandoned",
            "Device connections closed before their session began, by stage",
            metrics.device_connections_abandoned.clone(),
        );
        registry.register(
            "device_handshake_wait_seconds",
            "From a device connection's accept to its handshake slot",
            metrics.device_handshake_wait_seconds.clone(),
        );
        registry.register(
            "alarms_received",
            "Alarms received from devices, by kind and outcome (new or resent)",
            metrics.alarms_received.clone(),
        );
        registry.register(
            "alarms_open",
            "Alarms not yet resolved or cleared, by kind and the state of their call",
            metrics.alarms_open.clone(),
        );
        registry.register(
            "queue_waiting",
            "Items waiting in each queue",
            metrics.queue_waiting.clone(),
        );
        registry.register(
            "queue_longest_wait_seconds",
            "The longest wait now in each queue",
            metrics.queue_longest_wait_seconds.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "From a call's creation to its acceptance, by call kind",
            metrics.queue_wait_seconds.clone(),
        );
        registry.register(
            "offer_latency_seconds",
            "From a call's creation to an offer of it reaching a console, by call kind",
            metrics.offer_latency_seconds.clone(),
        );
        registry.register(
            "service_level_ratio",
            "Share of calls answered within the window (short abandons left out)",
            metrics.service_level_ratio.clone(),
        );
        registry.register(
            "database_pool_connections",
            "The node's database pool by state, and its maximum",
            metrics.database_pool_connections.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by outcome",
            metrics.webhook_deliveries.clone(),
        );
        registry.register(
            "webhook_backlog",
            "Webhook deliveries in the database, by state",
            metrics.webhook_backlog.clone(),
        );
        registry.register(
            "draining",
            "1 while the node drains after SIGTERM",
            metrics.draining.clone(),
        );
        registry.register(
            "alarm_batch_size",
            "Device alarms stored per transaction by the alarm batcher (group commit)",
            metrics.alarm_batch_size.clone(),
        );
        registry.register(
            "alarm_store_seconds",
            "From a device alarm reaching the alarm batcher to its transaction's commit",
            metrics.alarm_store_seconds.clone(),
        );
        registry.register(
            "alarm_batch_seconds",
            "How long each alarm batch's transaction took",
            metrics.alarm_batch_seconds.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The registry in the OpenMetrics text format (what Prometheus scrapes).
pub fn render() -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &METRICS.registry);
    text
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An alarm kind as a label: `ALARM_KIND_SOS` (the protocol's name, as stored) is `sos`.
pub fn alarm_kind(stored: &str) -> String {
    stored
        .strip_prefix("ALARM_KIND_")
        .unwrap_or(stored)
        .to_ascii_lowercase()
}

/// Records a duration in a histogram of seconds.
pub fn observe(histogram: &Family<Labels, Histogram>, labels: &Labels, elapsed: Duration) {
    histogram
        .get_or_create(labels)
        .observe(elapsed.as_secs_f64());
}

/// Counts a device connection closed before its session began, at `stage`.
pub fn connection_abandoned(stage: &'static str) {
    metrics()
        .device_connections_abandoned
        .get_or_create(&label("stage", stage))
        .inc();
}

/// Counts a device link for as long as it lives.
pub struct ConnectionGuard {
    labels: Labels,
}

impl ConnectionGuard {
    pub fn new(transport: &'static str) -> Self {
        let labels = label("transport", transport);
        metrics().device_connections.get_or_create(&labels).inc();
        ConnectionGuard { labels }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        metrics()
            .device_connections
            .get_or_create(&self.labels)
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_rendered_with_its_labels() {
        let _connection = ConnectionGuard::new("websocket");
        metrics()
            .device_handshakes
            .get_or_create(&vec![
                ("transport", "grpc".to_owned()),
                ("outcome", "refused".to_owned()),
            ])
            .inc();
        observe(
            &metrics().offer_latency_seconds,
            &label("kind", "emergency"),
            Duration::from_millis(30),
        );
        let text = render();
        assert!(text.contains("carebell_device_connections{transport=\"websocket\"} 1"));
        assert!(text.contains(
            "carebell_device_handshakes_total{transport=\"grpc\",outcome=\"refused\"} 1"
        ));
        assert!(
            text.contains(
                "carebell_offer_latency_seconds_bucket{le=\"0.05\",kind=\"emergency\"} 1"
            ) || text.contains(
                "carebell_offer_latency_seconds_bucket{kind=\"emergency\",le=\"0.05\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "carebell_offer_latency_seconds_bucket{le=\"0.025\",kind=\"emergency\"} 0"
            ) || text.contains(
                "carebell_offer_latency_seconds_bucket{kind=\"emergency\",le=\"0.025\"} 0"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE carebell_draining gauge"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_connection_is_counted_while_its_guard_lives() {
        let before = metrics()
            .device_connections
            .get_or_create(&label("transport", "grpc"))
            .get();
        let guard = ConnectionGuard::new("grpc");
        let gauge = || {
            metrics()
                .device_connections
                .get_or_create(&label("transport", "grpc"))
                .get()
        };
        assert_eq!(gauge(), before + 1);
        drop(guard);
        assert_eq!(gauge(), before);
    }
}
