//! The node's metrics and probes, in plain HTTP on `listen.metrics`: `/metrics` (Prometheus),
//! `/livez` (the process answers) and `/readyz` (serving: not while starting or draining).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use carebell_metrics::{label, metrics};
use carebell_store::Store;

#[derive(Clone)]
pub struct Probe {
    store: Store,
    max_connections: u32,
    ready: Arc<AtomicBool>,
}

impl Probe {
    pub fn new(store: Store, max_connections: u32) -> Self {
        Probe {
            store,
            max_connections,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Serving: `/readyz` answers 200.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
        metrics().draining.set(0);
    }

    /// Draining: `/readyz` answers 503 so load balancers send nothing new here.
    pub fn set_draining(&self) {
        self.ready.store(false, Ordering::SeqCst);
        metrics().draining.set(1);
    }
}

pub fn router(probe: Probe) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/livez", get(|| async { "live\n" }))
        .route("/readyz", get(ready))
        .with_state(probe)
}

async fn ready(State(probe): State<Probe>) -> impl IntoResponse {
    if probe.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or draining\n",
        )
    }
}

async fn scrape(State(probe): State<Probe>) -> impl IntoResponse {
    refresh(&probe).await;
    (
        [(header::CONTENT_TYPE, carebell_metrics::CONTENT_TYPE)],
        carebell_metrics::render(),
    )
}

/// Fills the gauges that picture the database now. A database that does not answer leaves
/// them as they were (and says so in the log); the counters are served regardless.
async fn refresh(probe: &Probe) {
    let metrics = metrics();
    let pool = probe.store.pool();
    let size = i64::from(pool.size());
    let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
    let set = |state: &str, value: i64| {
        metrics
            .database_pool_connections
            .get_or_create(&label("state", state))
            .set(value);
    };
    set("idle", idle);
    set("in_use", size - idle);
    set("max", i64::from(probe.max_connections));
    let state = match probe.store.observed_state().await {
        Ok(state) => state,
        Err(error) => {
            tracing::warn!(%error, "metrics: cannot read the database's state");
            return;
        }
    };
    // Series that went to zero disappear rather than linger at their last value.
    metrics.alarms_open.clear();
    for (kind, call_state, count) in state.open_alarms {
        metrics
            .alarms_open
            .get_or_create(&vec![
                ("kind", carebell_metrics::alarm_kind(&kind)),
                ("state", call_state),
            ])
            .set(count);
    }
    metrics.queue_waiting.clear();
    metrics.queue_longest_wait_seconds.clear();
    for (queue, waiting, longest) in state.queues {
        let labels = label("queue", queue);
        metrics.queue_waiting.get_or_create(&labels).set(waiting);
        metrics
            .queue_longest_wait_seconds
            .get_or_create(&labels)
            .set(longest);
    }
    metrics.webhook_backlog.clear();
    for (webhook_state, count) in state.webhook_backlog {
        metrics
            .webhook_backlog
            .get_or_create(&label("state", webhook_state))
            .set(count);
    }
    let statistics = state.statistics;
    metrics
        .service_level_ratio
        .get_or_create(&label("within", "60s"))
        .set(statistics.service_level_60s());
    metrics
        .service_level_ratio
        .get_or_create(&label("within", "180s"))
        .set(statistics.service_level_180s());
}
