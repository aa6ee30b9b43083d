//! Heartbeats per CPU-second at load, and memory per held TLS link, on one gateway process:
//! `CAREBELL_BENCH_HB_TABLETS` tablets (default 10,000, one fleet process) heartbeating every
//! second, first with one runtime worker thread (the issue's "on one core"), then with two.
//! The district benchmark (`fleet`) measures heartbeats at its 10 s interval, where a
//! process's fixed costs per wake-up dominate; this one measures the capacity.
//!
//! ```text
//! cargo build --release --bins
//! cargo bench -p carebell-benches --bench heartbeats
//! ```

use std::time::{Duration, Instant};

use carebell_benches::harness::{
    binary, cpu_seconds, env_u64, per_connection, rss_bytes, wait_for_port, Setup,
};
use carebell_benches::{report, Figure};
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

#[tokio::main]
async fn main() {
    let tablets = env_u64("CAREBELL_BENCH_HB_TABLETS", 10_000).min(18_000);
    let setup = Setup::new("heartbeats", tablets);
    let port = 18743;
    let interval_ms = 1000;
    let mut figures = Vec::new();
    for workers in [1u64, 2] {
        let mut gateway = setup.gateway_with(
            0,
            port,
            0,
            interval_ms,
            &[
                ("TOKIO_WORKER_THREADS", workers.to_string()),
                ("CAREBELL_LISTEN__METRICS", METRICS.to_owned()),
            ],
        );
        wait_for_port(port).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = gateway.id().expect("gateway pid");
        let baseline = rss_bytes(pid);
        let mut fleet = Command::new(binary("tablet-fleet"))
            .args(["run", "--count", &tablets.to_string()])
            .args(["--server", &format!("127.0.0.1:{port}")])
            .arg("--ca")
            .arg(setup.dir.join("certs/ca.pem"))
            .args(["--connect-rate", "2000", "--duration", "600s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start a fleet");
        let ramp = Instant::now();
        while held().await < tablets && ramp.elapsed() < Duration::from_secs(180) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let connect_time = ramp.elapsed();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let connections = held().await;
        let memory = per_connection(baseline, rss_bytes(pid), connections);
        let window = Duration::from_secs(20);
        let cpu_before = cpu_seconds(pid);
        tokio::time::sleep(window).await;
        let cpu = cpu_seconds(pid) - cpu_before;
        let rate = connections as f64 * 1000.0 / interval_ms as f64;
        let label = format!(
            "{workers} worker thread{}",
            if workers > 1 { "s" } else { "" }
        );
        figures.push(Figure {
            name: format!("{label}: links held"),
            value: connections as f64,
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
            name: format!("{label}: heartbeats per second"),
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
