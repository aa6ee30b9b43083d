//! Alarm durable-acknowledgement latency at the database, one transaction per alarm against
//! group commit (`AlarmBatcher`), at fixed offered rates. Latency is measured from the moment an
//! alarm was due to be sent (so a stall is not hidden by sending later), to its commit.
//!
//! `cargo bench -p carebell-benches --bench alarm_commit`; `CAREBELL_BENCH_SECS` (default 10)
//! and `CAREBELL_BENCH_RATES` (default "300,1000,2000") change the run;
//! `CAREBELL_BENCH_IN_FLIGHT` (default 2, as `device.batches_in_flight`) the batcher's
//! transactions at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use carebell_benches::{quantile_ms, report, Figure};
use carebell_domain::CallKind;
use carebell_gateway::AlarmBatcher;
use carebell_store::{NewAlarm, Store};
use tokio::sync::Mutex;

const DEVICES: usize = 2000;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    OneByOne,
    Batched,
}

async fn run(store: &Store, mode: Mode, rate: u64, secs: u64, round: &str) -> Vec<Figure> {
    let in_flight = carebell_benches::harness::env_u64("CAREBELL_BENCH_IN_FLIGHT", 2) as usize;
    let batcher = AlarmBatcher::spawn(store.clone(), 256, in_flight);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = rate * secs;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let alarm = NewAlarm {
            device_id: format!("tab-{}", n as usize % DEVICES + 1),
            alarm_id: format!("{round}-{n}"),
            kind: "SOS".to_owned(),
            raised_at: None,
            detail: String::new(),
            raise: Some(CallKind::Emergency),
        };
        let (store, batcher, latencies, failures) = (
            store.clone(),
            batcher.clone(),
            Arc::clone(&latencies),
            Arc::clone(&failures),
        );
        tasks.push(tokio::spawn(async move {
            let outcome = match mode {
                Mode::OneByOne => store.record_new_alarm(&alarm).await,
                Mode::Batched => batcher.record(alarm).await,
            };
            match outcome {
                Ok(_) => latencies.lock().await.push(due.elapsed()),
                Err(_) => {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed();
    let mut latencies = std::mem::take(&mut *latencies.lock().await);
    latencies.sort();
    let name = match mode {
        Mode::OneByOne => "one transaction per alarm",
        Mode::Batched => "group commit",
    };
    let stored = latencies.len() as f64;
    let mut figures: Vec<Figure> = [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)]
        .into_iter()
        .map(|(label, q)| Figure {
            name: format!("{name} at {rate}/s: {label}"),
            value: quantile_ms(&latencies, q),
            unit: "ms",
        })
        .collect();
    figures.extend([
        Figure {
            name: format!("{name} at {rate}/s: stored per second"),
            value: stored / elapsed.as_secs_f64(),
            unit: "1/s",
        },
        Figure {
            name: format!("{name} at {rate}/s: failed"),
            value: failures.load(std::sync::atomic::Ordering::Relaxed) as f64,
            unit: "alarms",
        },
    ]);
    figures
}

fn main() {
    let secs = carebell_benches::harness::env_u64("CAREBELL_BENCH_SECS", 10);
    let rates: Vec<u64> = std::env::var("CAREBELL_BENCH_RATES")
        .unwrap_or_else(|_| "300,1000,2000".to_owned())
        .split(',')
        .filter_map(|rate| rate.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let mut figures = Vec::new();
        for &rate in &rates {
            for mode in [Mode::OneByOne, Mode::Batched] {
                // A fresh database each time, so that neither mode runs on the other's rows.
                let store = carebell_benches::district(DEVICES as u64).await;
                let round = format!("r{rate}");
                figures.extend(run(&store, mode, rate, secs, &round).await);
                store.pool().close().await;
            }
        }
        report("alarm durable acknowledgement at the database", &figures);
    });
}
