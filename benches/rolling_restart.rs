//! A rolling restart measured: two `carebell serve` processes share the device port
//! (SO_REUSEPORT) under a fleet raising alarms; each in turn gets SIGTERM (notice, then `GoAway`
//! with a random delay inside the window), exits, and is started again. Measured: how the
//! reconnections spread (peak per second against an even spread over the window), the time
//! from SIGTERM until every tablet is back, alarm acknowledgement latency across the whole run,
//! and whether any alarm was lost or stored twice. Prints JSON and markdown; never fails a
//! build.
//!
//! ```text
//! cargo build --release --bins
//! cargo bench -p carebell-benches --bench rolling_restart
//! ```
//!
//! Settings (environment): CAREBELL_BENCH_TABLETS (4,000), CAREBELL_BENCH_RATE (alarms/s
//! across the fleet, 100), CAREBELL_BENCH_WINDOW_SECS (the go-away window, 10),
//! CAREBELL_BENCH_NOTICE_MS (1,000).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carebell_benches::harness::{env_u64, Setup};
use carebell_benches::{report, report_goals, Figure, Goal};
use firmware_sim::fleet::{run_fleet, FleetConfig, FleetStats};

/// (time since the bench started, connects so far, connected now), every 100 ms.
type Samples = Arc<Mutex<Vec<(Duration, u64, u64)>>>;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

fn terminate(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

/// Connections made per second in `[from, to)` (from the samples), the busiest second first.
fn peak_per_second(samples: &[(Duration, u64, u64)], from: Duration, to: Duration) -> u64 {
    let inside: Vec<_> = samples
        .iter()
        .filter(|(at, _, _)| *at >= from && *at <= to)
        .collect();
    let mut peak = 0;
    for (index, (at, connects, _)) in inside.iter().enumerate() {
        // The sample about one second later.
        if let Some((_, later, _)) = inside[index..]
            .iter()
            .find(|(later_at, _, _)| *later_at >= *at + Duration::from_secs(1))
        {
            peak = peak.max(later - connects);
        }
    }
    peak
}

#[tokio::main]
async fn main() {
    let tablets = env_u64("CAREBELL_BENCH_TABLETS", 4_000);
    let rate = env_u64("CAREBELL_BENCH_RATE", 100) as f64;
    let window = Duration::from_secs(env_u64("CAREBELL_BENCH_WINDOW_SECS", 10));
    let notice = Duration::from_millis(env_u64("CAREBELL_BENCH_NOTICE_MS", 1000));
    let setup = Setup::new("rolling", tablets);
    let ws_port = free_port();
    let settings = vec![
        (
            "CAREBELL_SHUTDOWN_NOTICE_MS",
            notice.as_millis().to_string(),
        ),
        (
            "CAREBELL_SHUTDOWN_GRACE_MS",
            (notice + Duration::from_secs(10)).as_millis().to_string(),
        ),
        (
            "CAREBELL_DEVICE__GO_AWAY_WINDOW_MS",
            window.as_millis().to_string(),
        ),
    ];
    let start_gateway = |index: u64| setup.gateway_with(index, ws_port, 0, 30_000, &settings);
    let mut gateways = vec![start_gateway(0), start_gateway(1)];
    setup.wait_for_gateways(ws_port, &mut gateways).await;

    let stats = Arc::new(FleetStats::default());
    // The ramp and some steady load, then two restarts with room to come back.
    let run_for = Duration::from_secs(15) + 2 * (notice + window + Duration::from_secs(15));
    let fleet = FleetConfig {
        server: ([127, 0, 0, 1], ws_port).into(),
        server_name: "localhost".to_owned(),
        ca_pem: Some(setup.ca_pem()),
        seed: "fleet".to_owned(),
        prefix: "fleet".to_owned(),
        first: 0,
        count: tablets,
        source_ips: vec!["127.0.0.4".parse().expect("address")],
        alarm_rate_per_tablet: rate / tablets as f64,
        connect_rate: 1000,
        run_for,
        backoff_base: Duration::from_millis(200),
        backoff_cap: Duration::from_secs(5),
        resumption: true,
        raw: false,
        brief_mix: false,
        heartbeat: None,
        alarms_after: Duration::ZERO,
        handshake_timeout: firmware_sim::fleet::HANDSHAKE_TIMEOUT,
    };
    let running = tokio::spawn(run_fleet(fleet, Arc::clone(&stats)));
    let started = Instant::now();
    let samples: Samples = Arc::default();
    {
        let (stats, samples) = (Arc::clone(&stats), Arc::clone(&samples));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                samples.lock().unwrap_or_else(|e| e.into_inner()).push((
                    started.elapsed(),
                    stats.connects.load(Ordering::Relaxed),
                    stats.connected.load(Ordering::Relaxed),
                ));
            }
        });
    }
    let all_back = |limit: Duration| {
        let stats = Arc::clone(&stats);
        async move {
            let until = Instant::now() + limit;
            while Instant::now() < until {
                if stats.connected.load(Ordering::Relaxed) >= tablets {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }
    };
    let ramped = all_back(Duration::from_secs(60)).await;
    println!(
        "fleet connected: {ramped} ({} tablets)",
        stats.connected.load(Ordering::Relaxed)
    );
    // Some steady load before the first restart.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let mut figures = Vec::new();
    let mut goals = Vec::new();
    for index in 0..2u64 {
        let gateway = &mut gateways[usize::try_from(index).expect("index")];
        let sigterm = started.elapsed();
        terminate(gateway);
        let exit = gateway.wait().await;
        let exited = started.elapsed() - sigterm;
        println!("gateway {index}: exited after {exited:?} ({exit:?})");
        gateways[usize::try_from(index).expect("index")] = start_gateway(index);
        let back = all_back(notice + window + Duration::from_secs(30)).await;
        let back_after = started.elapsed() - sigterm;
        // Let the samples catch up, then look at the restart's reconnections.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let connects_at = |at: Duration| {
            samples
                .iter()
                .rev()
                .find(|(sample_at, _, _)| *sample_at <= at)
                .map_or(0, |(_, connects, _)| *connects)
        };
        let moved = connects_at(started.elapsed()) - connects_at(sigterm);
        let peak = peak_per_second(&samples, sigterm, started.elapsed());
        let even = moved as f64 / window.as_secs_f64();
        figures.extend([
            Figure {
                name: format!("restart {index}: tablets that reconnected"),
                value: moved as f64,
                unit: "tablets",
            },
            Figure {
                name: format!("restart {index}: SIGTERM to exit"),
                value: exited.as_secs_f64(),
                unit: "s",
            },
            Figure {
                name: format!("restart {index}: SIGTERM to every tablet back"),
                value: back_after.as_secs_f64(),
                unit: "s",
            },
            Figure {
                name: format!("restart {index}: busiest second of reconnections"),
                value: peak as f64,
                unit: "connects/s",
            },
            Figure {
                name: format!("restart {index}: even spread over the window"),
                value: even,
                unit: "connects/s",
            },
        ]);
        goals.extend([
            Goal {
                name: format!("restart {index}: every tablet back"),
                measured: f64::from(u8::from(back)),
                target: 1.0,
                unit: "",
                higher_is_better: true,
            },
            Goal {
                name: format!("restart {index}: back within notice + window + 2 s"),
                measured: back_after.as_secs_f64(),
                target: (notice + window + Duration::from_secs(2)).as_secs_f64(),
                unit: "s",
                higher_is_better: false,
            },
            Goal {
                name: format!("restart {index}: busiest second within 2x an even spread"),
                measured: peak as f64,
                target: (2.0 * even).ceil(),
                unit: "connects/s",
                higher_is_better: false,
            },
        ]);
    }
    // The fleet runs to its end; stop the gateways after it.
    let fleet_report = running.await.expect("fleet task").expect("fleet ran");
    for gateway in &gateways {
        terminate(gateway);
    }
    for gateway in &mut gateways {
        let _ = gateway.wait().await;
    }
    let stored: u64 = setup
        .psql("select count(*) from alarms")
        .trim()
        .parse()
        .unwrap_or(0);
    let distinct: u64 = setup
        .psql("select count(distinct (device_id, alarm_id)) from alarms")
        .trim()
        .parse()
        .unwrap_or(0);
    let lost = fleet_report
        .alarms_sent
        .saturating_sub(fleet_report.alarms_acked + fleet_report.alarms_unacked_at_end);
    figures.extend([
        Figure {
            name: "alarms raised".to_owned(),
            value: fleet_report.alarms_sent as f64,
            unit: "alarms",
        },
        Figure {
            name: "alarms sent again on a new link".to_owned(),
            value: fleet_report.alarms_resent as f64,
            unit: "alarms",
        },
        Figure {
            name: "alarms stored".to_owned(),
            value: stored as f64,
            unit: "alarms",
        },
        Figure {
            name: "go-aways received".to_owned(),
            value: fleet_report.go_aways as f64,
            unit: "messages",
        },
        Figure {
            name: "alarm ack p50 (whole run)".to_owned(),
            value: fleet_report.alarm_ack_ms_p50.unwrap_or(f64::NAN),
            unit: "ms",
        },
        Figure {
            name: "alarm ack p99 (whole run)".to_owned(),
            value: fleet_report.alarm_ack_ms_p99.unwrap_or(f64::NAN),
            unit: "ms",
        },
        Figure {
            name: "alarm ack max (whole run)".to_owned(),
            value: fleet_report.alarm_ack_ms_max.unwrap_or(f64::NAN),
            unit: "ms",
        },
    ]);
    goals.extend([
        Goal {
            name: "alarms lost (neither acknowledged nor still in flight)".to_owned(),
            measured: lost as f64,
            target: 0.0,
            unit: "alarms",
            higher_is_better: false,
        },
        Goal {
            name: "alarms stored twice".to_owned(),
            measured: (stored - distinct.min(stored)) as f64,
            target: 0.0,
            unit: "alarms",
            higher_is_better: false,
        },
    ]);
    report(
        &format!(
            "Rolling restart, {tablets} tablets, {rate} alarms/s, window {} s",
            window.as_secs()
        ),
        &figures,
    );
    report_goals("Rolling restart goals", &goals);
}
