//! Heartbeats per CPU-second at load, and memory per held TLS link, on one gateway process:
//! `CAREBELL_BENCH_HB_TABLETS` tablets (default 10,000, one fleet process) heartbeating every
//! second, first with one runtime worker thread (the issue's "on one core"), then with two;
//! then the goal's own rate, 30,000 heartbeats a second on one worker thread (15,000 tablets
//! heartbeating every 500 ms, more often than the server asks, since one process may not hold
//! 30,000 links here). The heartbeat rate is the fleet's count over the window, and the CPU is
//! the gateway's. The district benchmark (`fleet`) measures heartbeats at its 10 s interval,
//! where a process's fixed costs per wake-up dominate; this one measures the capacity.
//!
//! ```text
//! cargo build --release --bins
//! cargo bench -p carebell-benches --bench heartbeats
//! ```

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carebell_benches::harness::{binary, cpu_seconds, env_u64, per_connection, rss_bytes, Setup};
use carebell_benches::{report, Figure};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const METRICS: &str = "127.0.0.1:19464";

/// Device links the gateway holds, from its metrics endpoint.
async fn held() -> u64 {
    let Ok((_, scrape)) = carebell_tests::http_get(&format!("http://{METRICS}/metrics")).await
    else {
        return 0;
    };
    carebell_tests::metric_value(
        &scrape,
        "carebell_device_connections{transport=\"websocket\"}",
    )
    .unwrap_or(0.0) as u64
}

/// One measured configuration: runtime worker threads, tablets, heartbeat period.
struct Run {
    workers: u64,
    tablets: u64,
    every_ms: u64,
}

#[tokio::main]
async fn main() {
    let tablets = env_u64("CAREBELL_BENCH_HB_TABLETS", 10_000).min(18_000);
    let setup = Setup::new("heartbeats", tablets.max(15_000));
    let port = 18743;
    let runs = [
        Run {
            workers: 1,
            tablets,
            every_ms: 1000,
        },
        Run {
            workers: 2,
            tablets,
            every_ms: 1000,
        },
        Run {
            workers: 1,
            tablets: 15_000,
            every_ms: 500,
        },
    ];
    let mut figures = Vec::new();
    for run in runs {
        let mut gateway = setup.gateway_with(
            0,
            port,
            0,
            1000,
            &[
                ("TOKIO_WORKER_THREADS", run.workers.to_string()),
                ("CAREBELL_LISTEN__METRICS", METRICS.to_owned()),
            ],
        );
        setup
            .wait_for_gateways(port, std::slice::from_mut(&mut gateway))
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = gateway.id().expect("gateway pid");
        let baseline = rss_bytes(pid);
        let mut fleet = Command::new(binary("tablet-fleet"))
            .args(["run", "--count", &run.tablets.to_string()])
            .args(["--server", &format!("127.0.0.1:{port}")])
            .arg("--ca")
            .arg(setup.dir.join("certs/ca.pem"))
            .args(["--connect-rate", "2000", "--duration", "600s"])
            .args(["--heartbeat", &format!("{}ms", run.every_ms)])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start a fleet");
        // The fleet's heartbeat count, from the figures it prints every second.
        let sent = Arc::new(AtomicU64::new(0));
        let lines = fleet.stdout.take().expect("the fleet's stdout");
        let counter = Arc::clone(&sent);
        tokio::spawn(async move {
            let mut lines = BufReader::new(lines).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(count) = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|line| line["heartbeats"].as_u64())
                {
                    counter.store(count, Ordering::Relaxed);
                }
            }
        });
        let ramp = Instant::now();
        while held().await < run.tablets && ramp.elapsed() < Duration::from_secs(180) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let connect_time = ramp.elapsed();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let connections = held().await;
        let memory = per_connection(baseline, rss_bytes(pid), connections);
        let window = Duration::from_secs(20);
        let cpu_before = cpu_seconds(pid);
        let sent_before = sent.load(Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(window).await;
        let cpu = cpu_seconds(pid) - cpu_before;
        let rate = sent.load(Ordering::Relaxed).saturating_sub(sent_before) as f64
            / started.elapsed().as_secs_f64();
        let still_held = held().await;
        let label = format!(
            "{} worker thread{}, {} tablets every {} ms",
            run.workers,
            if run.workers > 1 { "s" } else { "" },
            run.tablets,
            run.every_ms
        );
        figures.push(Figure {
            name: format!("{label}: links held"),
            value: connections as f64,
            unit: "connections",
        });
        figures.push(Figure {
            name: format!("{label}: links still held after the window"),
            value: still_held as f64,
            unit: "connections",
        });
        figures.push(Figure {
            name: format!("{label}: handshakes per second while connecting (fleet asks 2,000)"),
            value: connections as f64 / connect_time.as_secs_f64(),
            unit: "/s",
        });
        figures.push(Figure {
            name: format!("{label}: gateway memory per held TLS link"),
            value: memory,
            unit: "bytes",
        });
        figures.push(Figure {
            name: format!("{label}: heartbeats per second (the fleet's count)"),
            value: rate,
            unit: "/s",
        });
        figures.push(Figure {
            name: format!("{label}: gateway CPU"),
            value: cpu / window.as_secs_f64(),
            unit: "cores",
        });
        figures.push(Figure {
            name: format!("{label}: heartbeats per CPU-second"),
            value: rate * window.as_secs_f64() / cpu.max(f64::MIN_POSITIVE),
            unit: "/cpu-s",
        });
        let _ = fleet.kill().await;
        let _ = gateway.kill().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    report("heartbeats at load (one gateway process)", &figures);
}
