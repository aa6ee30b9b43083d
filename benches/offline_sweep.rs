//! A district's network outage at the database: every tablet silent at once, and the offline
//! sweep raising one "device offline" alarm (and technical item) each, pass after pass, as fast
//! as it can (the dispatcher runs a pass every tick; this measures what a pass costs). Meanwhile
//! tablets come back in arrival batches, as a gateway's are, and each batch's wait is measured:
//! an arrival writes the same device rows the sweep locks. The district has a week's history
//! (one closed item and alarm per tablet), analyzed, so that plans are made for tables of a
//! realistic size.
//!
//! Then the district comes back: every tablet's offline alarm is cleared (with its item, and a
//! "device back" alarm), the first tenth one device per transaction as before, the rest in
//! batches as a gateway's returning sessions are (`Store::devices_back`), two at a time in each
//! case as the gateway's batchers run; the figure is returning tablets cleared a second.
//!
//! `cargo bench -p carebell-benches --bench offline_sweep`; `CAREBELL_BENCH_DEVICES` (default
//! 20000) tablets, `CAREBELL_BENCH_PASS` (default 100, as the dispatcher) devices a pass and a
//! batch of returning tablets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carebell_benches::{quantile_ms, report, Figure};
use carebell_store::Store;

async fn district(devices: u64) -> Store {
    let store = carebell_benches::district(devices).await;
    sqlx::query("UPDATE devices SET last_seen_at = clock_timestamp() - interval '10 min'")
        .execute(store.pool())
        .await
        .expect("silent");
    // A district has a history: a week of items and alarms, all closed, one per tablet. The
    // tables' statistics then describe tables of that size, as autovacuum would have.
    sqlx::query(
        "WITH c AS (
            INSERT INTO calls (id, device_id, resident_id, request_id, kind, priority, state,
                               queue_id, queued_at, created_at, deadline_at, dialect, station,
                               announce, ended_at)
            SELECT gen_random_uuid(), d.id, d.resident_id, 'history.' || d.id, 'technical', 5,
                   'cleared', 'technical', t, t, t, r.dialect, r.station_id::text, false, t
            FROM devices d JOIN residents r ON r.id = d.resident_id,
                 LATERAL (SELECT clock_timestamp() - interval '7 days' AS t) AS at
            RETURNING id, device_id, created_at)
         INSERT INTO alarms (id, device_id, alarm_id, kind, detail, call_id, received_at, cleared_at)
         SELECT gen_random_uuid(), device_id, 'history.' || device_id, 'DEVICE_OFFLINE', '', id,
                created_at, created_at
         FROM c",
    )
    .execute(store.pool())
    .await
    .expect("history");
    sqlx::query("ANALYZE")
        .execute(store.pool())
        .await
        .expect("analyze");
    store
}

fn main() {
    let devices = carebell_benches::harness::env_u64("CAREBELL_BENCH_DEVICES", 20_000);
    let pass = carebell_benches::harness::env_u64("CAREBELL_BENCH_PASS", 100) as i64;
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let store = district(devices).await;
        // Arrivals: a batch of 20 tablets every 20 ms (1,000 a second), from the far end of the
        // id range, so that they meet the sweep's rows as the outage is reported.
        let done = Arc::new(AtomicBool::new(false));
        let arrivals = {
            let (store, done) = (store.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let mut waits = Vec::new();
                let mut next = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let batch: Vec<String> = (0..20)
                        .map(|i| format!("tab-{}", (next + i) % devices + 1))
                        .collect();
                    next += 20;
                    let start = Instant::now();
                    store.devices_arrived(&batch).await.expect("arrivals");
                    waits.push(start.elapsed());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                waits
            })
        };
        let mut passes = Vec::new();
        let mut raised = 0usize;
        let start = Instant::now();
        loop {
            let began = Instant::now();
            let n = store
                .sweep_offline_devices(Duration::from_secs(35), pass)
                .await
                .expect("sweep");
            passes.push(began.elapsed());
            raised += n;
            if n == 0 {
                break;
            }
        }
        let elapsed = start.elapsed();
        done.store(true, Ordering::Relaxed);
        let mut waits = arrivals.await.expect("arrivals");
        let last: Vec<Duration> = passes.iter().rev().skip(1).take(10).copied().collect();
        let last_ms =
            last.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / last.len().max(1) as f64;
        passes.sort();
        waits.sort();
        let figures = vec![
            Figure {
                name: format!("outage of {devices}: offline alarms raised"),
                value: raised as f64,
                unit: "alarms",
            },
            Figure {
                name: format!("outage of {devices}: until the sweep found no more"),
                value: elapsed.as_secs_f64(),
                unit: "s",
            },
            Figure {
                name: "offline alarms raised per second".into(),
                value: raised as f64 / elapsed.as_secs_f64(),
                unit: "1/s",
            },
            Figure {
                name: format!("sweep pass of up to {pass}: p50"),
                value: quantile_ms(&passes, 0.5),
                unit: "ms",
            },
            Figure {
                name: format!("sweep pass of up to {pass}: p99"),
                value: quantile_ms(&passes, 0.99),
                unit: "ms",
            },
            Figure {
                name: "sweep pass, the last ten full ones (most devices reported)".into(),
                value: last_ms,
                unit: "ms",
            },
            Figure {
                name: "arrival batch of 20 meanwhile: p50".into(),
                value: quantile_ms(&waits, 0.5),
                unit: "ms",
            },
            Figure {
                name: "arrival batch of 20 meanwhile: p99".into(),
                value: quantile_ms(&waits, 0.99),
                unit: "ms",
            },
            Figure {
                name: "arrival batch of 20 meanwhile: max".into(),
                value: waits.last().map_or(0.0, |wait| wait.as_secs_f64() * 1000.0),
                unit: "ms",
            },
        ];
        let mut figures = figures;
        figures.extend(district_back(&store, devices, pass as usize).await);
        store.pool().close().await;
        report("a district's outage: the offline sweep", &figures);
    });
}

/// Every tablet returns: the first tenth cleared one device per transaction, the rest in batches
/// of `batch`, two transactions at a time in both cases.
async fn district_back(store: &Store, devices: u64, batch: usize) -> Vec<Figure> {
    let ids: Vec<String> = (1..=devices).map(|i| format!("tab-{i}")).collect();
    let (alone, together) = ids.split_at(ids.len() / 10);
    let clear = |chunks: Vec<Vec<String>>| {
        let store = store.clone();
        async move {
            let chunks = Arc::new(std::sync::Mutex::new(chunks));
            let start = Instant::now();
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let (store, chunks) = (store.clone(), Arc::clone(&chunks));
                    tokio::spawn(async move {
                        let mut cleared = 0;
                        loop {
                            let next = chunks.lock().expect("chunks").pop();
                            let Some(chunk) = next else { break cleared };
                            cleared += if chunk.len() == 1 {
                                usize::from(store.device_back(&chunk[0]).await.expect("back"))
                            } else {
                                store.devices_back(&chunk).await.expect("back").len()
                            };
                        }
                    })
                })
                .collect();
            let mut cleared = 0;
            for worker in workers {
                cleared += worker.await.expect("worker");
            }
            (cleared, start.elapsed())
        }
    };
    let (n_alone, alone_took) = clear(alone.iter().map(|id| vec![id.clone()]).collect()).await;
    let (n_together, together_took) = clear(
        together
            .chunks(batch.max(2))
            .map(<[String]>::to_vec)
            .collect(),
    )
    .await;
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alarms WHERE kind = 'DEVICE_OFFLINE' AND cleared_at IS NULL",
    )
    .fetch_one(store.pool())
    .await
    .expect("open");
    vec![
        Figure {
            name: "district back: offline alarms still open after".into(),
            value: open as f64,
            unit: "alarms",
        },
        Figure {
            name: format!("district back: {n_alone} cleared one per transaction"),
            value: n_alone as f64 / alone_took.as_secs_f64(),
            unit: "1/s",
        },
        Figure {
            name: format!("district back: {n_together} cleared in batches of up to {batch}"),
            value: n_together as f64 / together_took.as_secs_f64(),
            unit: "1/s",
        },
    ]
}
