//! Dispatch figures through a real node (in process, with PostgreSQL): the time from a call
//! being created to the console's offer at a steady 50 calls per second, and the re-offer delay
//! after a ring timeout (from the first offer's deadline to the second offer reaching a
//! console). Prints JSON and a markdown table; never fails a build.
//!
//! ```text
//! cargo bench -p carebell-benches --bench dispatch
//! ```
//!
//! Settings (environment): CAREBELL_BENCH_CALL_RATE (50 calls/s), CAREBELL_BENCH_CALL_SECS
//! (20), CAREBELL_BENCH_REOFFERS (50), CAREBELL_BENCH_OPERATORS (20).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carebell_benches::harness::env_u64;
use carebell_benches::{quantile_ms, report, Figure};
use carebell_proto::console::v1::console_event::Event;
use carebell_proto::console::v1::{Disposition, OperatorStatus};
use carebell_tests::{Console, NodeOptions, TestNode};
use firmware_sim::{Tablet, TransportKind};
use tokio_util::sync::CancellationToken;

/// The ring timeout used for the re-offer figure (production default: 20 s).
const RING_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Shared {
    /// Call created → offer received.
    dispatch: Mutex<Vec<Duration>>,
    /// First offer's deadline → second offer received.
    reoffer: Mutex<Vec<Duration>>,
    /// In the re-offer phase: each call's first offer is left to ring out.
    let_first_ring_out: AtomicBool,
    first_deadline: Mutex<HashMap<String, i64>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn since(from_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_ms() - from_ms).unwrap_or(0))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// An operator who takes every offer at once (accept, then end the call), except that in the
/// re-offer phase the first offer of each call is left to ring out.
async fn operator(mut console: Console, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = console.events.message() => event,
        };
        let Ok(Some(event)) = event else { return };
        match event.event {
            Some(Event::Offer(offer)) => {
                if shared.let_first_ring_out.load(Ordering::Relaxed) {
                    let first = {
                        let mut firsts = lock(&shared.first_deadline);
                        let first = firsts.get(&offer.call_id).copied();
                        if first.is_none() {
                            firsts.insert(offer.call_id.clone(), offer.expires_at_ms);
                        }
                        first
                    };
                    match first {
                        None => continue,
                        Some(deadline) => lock(&shared.reoffer).push(since(deadline)),
                    }
                } else {
                    lock(&shared.dispatch).push(since(offer.call_created_at_ms));
                }
                if console.client.accept(&offer.offer_id).await.is_ok() {
                    let _ = console
                        .client
                        .end_call(&offer.call_id, Disposition::Information, "")
                        .await;
                }
            }
            // Missed offers in a row pause an operator; this one comes straight back.
            Some(Event::StatusChanged(changed))
                if changed.status == OperatorStatus::Paused as i32 =>
            {
                let _ = console.client.set_status(OperatorStatus::Available).await;
            }
            _ => {}
        }
    }
}

/// Presses at `rate` per second for `total` presses, spread round-robin over the tablets (a
/// tablet whose call is still open would only repeat it, so there are many tablets).
async fn presses(tablets: &[Tablet], rate: f64, total: usize) -> usize {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0;
    for index in 0..total {
        ticker.tick().await;
        // Each press waits for its durable acknowledgement (a few milliseconds); a late tick
        // is made up at once.
        let press = tablets[index % tablets.len()].press();
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(10), press).await {
            sent += 1;
        }
    }
    sent
}

async fn run() -> Vec<Figure> {
    let rate = env_u64("CAREBELL_BENCH_CALL_RATE", 50) as f64;
    let seconds = env_u64("CAREBELL_BENCH_CALL_SECS", 20);
    let reoffers = usize::try_from(env_u64("CAREBELL_BENCH_REOFFERS", 50)).unwrap_or(50);
    let operators = env_u64("CAREBELL_BENCH_OPERATORS", 20);
    let node = TestNode::start(NodeOptions {
        ring_timeout: RING_TIMEOUT,
        // The production sweep interval, which bounds how late an expiry is noticed.
        sweep_interval: Duration::from_millis(250),
        ..NodeOptions::default()
    })
    .await;
    let shared = Arc::new(Shared::default());
    let stop = CancellationToken::new();
    for n in 0..operators {
        let console = node
            .available_operator(&format!("op{n}"), &format!("Operator {n}"))
            .await;
        tokio::spawn(operator(console, Arc::clone(&shared), stop.clone()));
    }
    // Enough tablets that each presses only every few seconds.
    let n_tablets = usize::try_from((rate as u64 * 5).max(20)).unwrap_or(250);
    let mut tablets = Vec::with_capacity(n_tablets);
    for n in 0..n_tablets {
        let (_, config) = node
            .tablet_config(&format!("Senior {n}"), TransportKind::WebSocket)
            .await;
        tablets.push(Tablet::connect(&config).await.expect("a tablet connects"));
    }

    // 1. 50 calls per second.
    let total = usize::try_from(rate as u64 * seconds).unwrap_or(1000);
    let sent = presses(&tablets, rate, total).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut dispatch = std::mem::take(&mut *lock(&shared.dispatch));
    dispatch.sort();

    // 2. Each call's first offer rings out; the second is taken.
    shared.let_first_ring_out.store(true, Ordering::Relaxed);
    let reoffer_rate = 5.0;
    let _ = presses(&tablets, reoffer_rate, reoffers).await;
    tokio::time::sleep(RING_TIMEOUT + Duration::from_secs(3)).await;
    let mut reoffer = std::mem::take(&mut *lock(&shared.reoffer));
    reoffer.sort();
    stop.cancel();
    for tablet in tablets {
        tablet.close().await;
    }
    node.stop().await;

    let figures = vec![
        Figure {
            name: format!("calls pressed at {rate}/s (acknowledged)"),
            value: sent as f64,
            unit: "calls",
        },
        Figure {
            name: "calls offered".to_owned(),
            value: dispatch.len() as f64,
            unit: "calls",
        },
        Figure {
            name: "call created → offer received p50".to_owned(),
            value: quantile_ms(&dispatch, 0.5),
            unit: "ms",
        },
        Figure {
            name: "call created → offer received p99".to_owned(),
            value: quantile_ms(&dispatch, 0.99),
            unit: "ms",
        },
        Figure {
            name: "call created → offer received max".to_owned(),
            value: quantile_ms(&dispatch, 1.0),
            unit: "ms",
        },
        Figure {
            name: "re-offers measured".to_owned(),
            value: reoffer.len() as f64,
            unit: "calls",
        },
        Figure {
            name: "ring timeout → next offer received p50 (sweep every 250 ms)".to_owned(),
            value: quantile_ms(&reoffer, 0.5),
            unit: "ms",
        },
        Figure {
            name: "ring timeout → next offer received p99".to_owned(),
            value: quantile_ms(&reoffer, 0.99),
            unit: "ms",
        },
    ];
    figures
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let figures = runtime.block_on(run());
    report(
        "dispatch through a real node (PostgreSQL, in process)",
        &figures,
    );
}
