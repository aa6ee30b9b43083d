//! The node's metrics and probes, in plain HTTP on `listen.metrics`: `/metrics` (Prometheus),
//! `/livez` (the process answers) and `/readyz` (serving: not while starting or draining).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use carebell_metrics::{label, metrics, Labels};
use carebell_store::Store;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone)]
pub struct Probe {
    store: Store,
    max_connections: u32,
    ready: Arc<AtomicBool>,
    /// The label sets each database gauge has shown: one that empties shows 0 rather than
    /// vanishing (a vanished series is a gap to Prometheus, not a zero).
    shown: Arc<Mutex<BTreeSet<(&'static str, Labels)>>>,
}

impl Probe {
    pub fn new(store: Store, max_connections: u32) -> Self {
        Probe {
            store,
            max_connections,
            ready: Arc::new(AtomicBool::new(false)),
            shown: Arc::default(),
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
    set("in_use", (size - idle).max(0));
    set("max", i64::from(probe.max_connections));
    let state = match probe.store.observed_state().await {
        Ok(state) => state,
        Err(error) => {
            tracing::warn!(%error, "metrics: cannot read the database's state");
            return;
        }
    };
    let mut shown = probe.shown.lock().unwrap_or_else(|e| e.into_inner());
    let open_alarms = state
        .open_alarms
        .into_iter()
        .map(|(kind, call_state, count)| {
            (
                vec![
                    ("kind", carebell_metrics::alarm_kind(&kind)),
                    ("state", call_state),
                ],
                count,
            )
        })
        .collect();
    set_gauges(&mut shown, "alarms_open", &metrics.alarms_open, open_alarms);
    let mut waiting = Vec::new();
    let mut longest = Vec::new();
    for (queue, count, seconds) in state.queues {
        waiting.push((label("queue", queue.clone()), count));
        longest.push((label("queue", queue), seconds));
    }
    set_gauges(&mut shown, "queue_waiting", &metrics.queue_waiting, waiting);
    set_gauges(
        &mut shown,
        "queue_longest_wait_seconds",
        &metrics.queue_longest_wait_seconds,
        longest,
    );
    let backlog = ["pending", "dead"]
        .into_iter()
        .map(|webhook_state| {
            let count = state
                .webhook_backlog
                .iter()
                .find(|(state, _)| state == webhook_state)
                .map_or(0, |(_, count)| *count);
            (label("state", webhook_state), count)
        })
        .collect();
    set_gauges(
        &mut shown,
        "webhook_backlog",
        &metrics.webhook_backlog,
        backlog,
    );
    drop(shown);
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

/// Sets a database gauge's series to `values`; a series shown before and absent now is 0.
fn set_gauges<N, A>(
    shown: &mut BTreeSet<(&'static str, Labels)>,
    name: &'static str,
    family: &Family<Labels, Gauge<N, A>>,
    values: Vec<(Labels, N)>,
) where
    N: Default + Copy,
    A: prometheus_client::metrics::gauge::Atomic<N> + Default,
{
    for (seen_name, labels) in shown.iter() {
        if *seen_name == name && !values.iter().any(|(now, _)| now == labels) {
            family.get_or_create(labels).set(N::default());
        }
    }
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
        shown.insert((name, labels));
    }
}
