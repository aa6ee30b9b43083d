//! A rolling restart of two nodes sharing one device port (SO_REUSEPORT), under a fleet raising
//! alarms: each node in turn drains (not-ready, then `GoAway` with a random delay inside the
//! window) and is replaced; every tablet comes back, and no alarm is lost or stored twice.
//! The reconnect spread is measured in `benches/rolling_restart.rs`, not asserted here.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use carebell_tests::{http_get, NodeOptions, TestNode};
use firmware_sim::fleet::{fleet_device_id, fleet_signing_key, run_fleet, FleetConfig, FleetStats};

const TABLETS: u64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_alarm_and_every_tablet_comes_back() {
    let database_url = carebell_tests::fresh_database().await;
    let listen: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let certificates = carebell_server::devcert::DevCertificates::generate().unwrap();
    let options = |node_id: &str| NodeOptions {
        database_url: Some(database_url.clone()),
        websocket_listen: Some(listen),
        certificates: Some(certificates.clone()),
        max_handshakes_per_address: 0,
        node_id: node_id.to_owned(),
        shutdown_notice: Duration::from_millis(300),
        go_away_window: Duration::from_secs(2),
        ..NodeOptions::default()
    };
    let a = TestNode::start(options("node-a")).await;
    let b = TestNode::start(options("node-b")).await;

    let station = a.station().await;
    let devices: Vec<(String, [u8; 32])> = (0..TABLETS)
        .map(|index| {
            (
                fleet_device_id("roll", index),
                fleet_signing_key("rolling", index)
                    .verifying_key()
                    .to_bytes(),
            )
        })
        .collect();
    a.store.add_fleet(station, &devices).await.unwrap();
    let stats = Arc::new(FleetStats::default());
    let fleet = FleetConfig {
        server: listen,
        server_name: "localhost".to_owned(),
        ca_pem: Some(a.ca_pem.clone()),
        seed: "rolling".to_owned(),
        prefix: "roll".to_owned(),
        first: 0,
        count: TABLETS,
        source_ips: vec!["127.0.0.3".parse().unwrap()],
        // About 20 alarms a second across the fleet, all through both restarts.
        alarm_rate_per_tablet: 20.0 / TABLETS as f64,
        connect_rate: 0,
        run_for: Duration::from_secs(30),
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_secs(1),
        resumption: true,
        raw: false,
        brief_mix: false,
        heartbeat: None,
        alarms_after: Duration::ZERO,
        handshake_timeout: firmware_sim::fleet::HANDSHAKE_TIMEOUT,
    };
    let running = tokio::spawn(run_fleet(fleet, Arc::clone(&stats)));
    let all_connected = || {
        let stats = Arc::clone(&stats);
        async move {
            for _ in 0..300 {
                if stats.connected.load(Ordering::Relaxed) == TABLETS {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }
    };
    assert!(all_connected().await, "the fleet connected");

    // Node A, then node B: drain, stop, start again on the same port.
    let mut replaced = Vec::new();
    for (old, name) in [(a, "node-a"), (b, "node-b")] {
        let go_aways_before = stats.go_aways.load(Ordering::Relaxed);
        let metrics_url = old.metrics_url.clone();
        old.begin_stop();
        // The stopping node reports not-ready first (load balancers and probes see it).
        let mut not_ready = false;
        for _ in 0..100 {
            if matches!(
                http_get(&format!("{metrics_url}/readyz")).await,
                Ok((503, _))
            ) {
                not_ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(not_ready, "{name} said it was draining");
        old.stop().await;
        assert!(
            stats.go_aways.load(Ordering::Relaxed) > go_aways_before,
            "{name} told its tablets to go away"
        );
        replaced.push(TestNode::start(options(name)).await);
        assert!(all_connected().await, "every tablet came back after {name}");
    }

    let report = running.await.unwrap().unwrap();
    assert!(
        report.go_aways >= TABLETS,
        "every tablet was on a node that restarted at least once: {report:?}"
    );
    assert!(report.alarms_sent > 0, "{report:?}");
    // Nothing lost on the way: every alarm raised was acknowledged, except those still in
    // flight when the run ended (at most one batch per tablet).
    assert_eq!(
        report.alarms_acked + report.alarms_unacked_at_end,
        report.alarms_sent,
        "{report:?}"
    );
    assert!(report.alarms_unacked_at_end <= TABLETS, "{report:?}");
    let store = &replaced[0].store;
    let (stored, distinct, calls): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (device_id, alarm_id)), count(DISTINCT call_id)
         FROM alarms WHERE device_id LIKE 'roll-%'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(stored, distinct, "no alarm stored twice");
    assert_eq!(
        calls, stored,
        "one emergency call per alarm, resends included"
    );
    assert!(
        stored as u64 >= report.alarms_acked && stored as u64 <= report.alarms_sent,
        "{stored} stored, {report:?}"
    );
    for node in replaced {
        node.stop().await;
    }
}
