//! Small versions of the benchmarks' scenarios, to keep the harnesses working: a fleet holds
//! its links and has every alarm acknowledged and stored once; the floor program holds raw
//! links; a fleet told to wait before its alarms raises none before then; a fleet comes back after its gateway is replaced, resuming its TLS sessions when the
//! gateways share a ticket key; calls at a steady rate are each
//! taken once and a rung-out offer is made again (`benches/dispatch.rs`); tablets over gRPC hold
//! their links (`benches/grpc_memory.rs`). Counts and correctness only, never timings (those
//! are in `benches/`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use carebell_tests::{free_port, workspace_binary, NodeOptions, TestNode};
use firmware_sim::fleet::{fleet_device_id, fleet_signing_key, run_fleet, FleetConfig, FleetStats};

/// A node for a fleet connecting all at once from one address (no per-address handshake
/// limit, as in the benchmark).
fn fleet_node() -> NodeOptions {
    NodeOptions {
        max_handshakes_per_address: 0,
        ..NodeOptions::default()
    }
}

fn config(node: &TestNode, server: SocketAddr, count: u64, alarms_per_second: f64) -> FleetConfig {
    FleetConfig {
        server,
        server_name: "localhost".to_owned(),
        ca_pem: Some(node.ca_pem.clone()),
        seed: "suite".to_owned(),
        prefix: "fleet".to_owned(),
        first: 0,
        count,
        source_ips: vec!["127.0.0.2".parse().expect("address")],
        alarm_rate_per_tablet: alarms_per_second / count as f64,
        connect_rate: 0,
        run_for: Duration::from_secs(6),
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_secs(1),
        resumption: true,
        raw: false,
        brief_mix: false,
        heartbeat: None,
        alarms_after: Duration::ZERO,
        handshake_timeout: firmware_sim::fleet::HANDSHAKE_TIMEOUT,
    }
}

async fn provision(node: &TestNode, count: u64) {
    let station = node.station().await;
    let devices: Vec<(String, [u8; 32])> = (0..count)
        .map(|index| {
            (
                fleet_device_id("fleet", index),
                fleet_signing_key("suite", index).verifying_key().to_bytes(),
            )
        })
        .collect();
    assert_eq!(
        node.store.add_fleet(station, &devices).await.unwrap(),
        count
    );
    // Registering again adds nothing.
    assert_eq!(node.store.add_fleet(station, &devices).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_told_to_wait_raises_no_alarm_before_then_and_holds_its_links() {
    let node = TestNode::start(fleet_node()).await;
    provision(&node, 10).await;
    let stats = Arc::new(FleetStats::default());
    // Ten alarms a second asked, none allowed before the run is over.
    let report = run_fleet(
        FleetConfig {
            run_for: Duration::from_secs(3),
            alarms_after: Duration::from_secs(60),
            ..config(&node, node.websocket_addr(), 10, 10.0)
        },
        Arc::clone(&stats),
    )
    .await
    .unwrap();
    assert_eq!(report.connects, 10, "{report:?}");
    assert_eq!((report.failures, report.drops), (0, 0), "{report:?}");
    assert_eq!(report.alarms_sent, 0, "{report:?}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM alarms")
        .fetch_one(node.store.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_holds_its_links_and_every_alarm_is_acknowledged_and_stored_once() {
    let node = TestNode::start(fleet_node()).await;
    provision(&node, 40).await;
    let stats = Arc::new(FleetStats::default());
    let report = run_fleet(
        config(&node, node.websocket_addr(), 40, 10.0),
        Arc::clone(&stats),
    )
    .await
    .unwrap();
    assert_eq!(report.connects, 40, "{report:?}");
    assert_eq!((report.failures, report.drops), (0, 0), "{report:?}");
    assert!(report.alarms_sent > 0, "{report:?}");
    // Alarms in flight when the run ended may be unacknowledged; an acknowledged one is stored.
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM alarms WHERE device_id LIKE 'fleet-%'")
            .fetch_one(node.store.pool())
            .await
            .unwrap();
    assert!(
        stored as u64 >= report.alarms_acked,
        "{stored} stored, {report:?}"
    );
    assert!(
        stored as u64 <= report.alarms_sent,
        "{stored} stored, {report:?}"
    );
    assert!(report.alarm_ack_ms_p99.is_some());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_program_holds_raw_links() {
    let node = TestNode::start(NodeOptions::default()).await;
    let dir = carebell_tests::TempDir::new();
    let (cert, key) = carebell_server::devcert::DevCertificates::generate()
        .unwrap()
        .write(&dir.0)
        .unwrap();
    let ca = std::fs::read_to_string(dir.0.join("ca.pem")).unwrap();
    let addr = free_port();
    let mut floor = tokio::process::Command::new(workspace_binary("carebell-floor"))
        .arg(addr.to_string())
        .arg(cert)
        .arg(key)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut fleet = config(&node, addr, 25, 0.0);
    fleet.ca_pem = Some(ca);
    fleet.raw = true;
    fleet.run_for = Duration::from_secs(3);
    let report = run_fleet(fleet, Arc::new(FleetStats::default()))
        .await
        .unwrap();
    assert_eq!(
        (report.connects, report.failures, report.drops),
        (25, 0, 0),
        "{report:?}"
    );
    let _ = floor.kill().await;
    node.stop().await;
}

/// Runs 30 tablets against a gateway, replaces the gateway (same database, port and
/// certificate: the storm, in small) and waits for every tablet to come back; the fleet's
/// figures. The two gateways seal TLS tickets with `ticket_keys` (`None`: each its own key).
async fn replace_the_gateway(
    ticket_keys: [Option<String>; 2],
    resumption: bool,
) -> firmware_sim::fleet::FleetReport {
    let database_url = carebell_tests::fresh_database().await;
    let listen = free_port();
    let certificates = carebell_server::devcert::DevCertificates::generate().unwrap();
    let options = |ticket_keys: Option<String>| NodeOptions {
        database_url: Some(database_url.clone()),
        websocket_listen: Some(listen),
        certificates: Some(certificates.clone()),
        go_away_window: Duration::from_millis(500),
        ticket_keys,
        ..fleet_node()
    };
    let [first_keys, second_keys] = ticket_keys;
    let first = TestNode::start(options(first_keys)).await;
    provision(&first, 30).await;
    let stats = Arc::new(FleetStats::default());
    let mut fleet = config(&first, listen, 30, 0.0);
    fleet.run_for = Duration::from_secs(30);
    fleet.resumption = resumption;
    let running = tokio::spawn(run_fleet(fleet, Arc::clone(&stats)));
    let wait_for = |target: u64| {
        let stats = Arc::clone(&stats);
        async move {
            for _ in 0..200 {
                if stats.connected.load(Ordering::Relaxed) == target {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };
    assert!(wait_for(30).await, "the fleet connected");
    let before = stats.report();
    first.stop().await;
    assert!(wait_for(0).await, "the fleet saw its gateway go");
    let second = TestNode::start(options(second_keys)).await;
    assert!(wait_for(30).await, "every tablet came back");
    let report = stats.report();
    running.abort();
    second.stop().await;
    assert_eq!(
        report.connects, 60,
        "each tablet connected twice: {report:?}"
    );
    // Told to go away by the stopping gateway (or, for a tablet caught mid-handshake, dropped).
    assert!(report.go_aways + report.drops >= 30, "{report:?}");
    // Every drop says how it ended, and every failed attempt where it failed.
    assert_eq!(
        report.drop_kinds.values().sum::<u64>(),
        report.drops,
        "{report:?}"
    );
    assert_eq!(
        report.fail_stages.values().sum::<u64>(),
        report.failures,
        "{report:?}"
    );
    // The first connections had no ticket to offer.
    assert_eq!(before.resumed, 0, "{before:?}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_comes_back_after_its_gateway_is_replaced() {
    let report = replace_the_gateway([None, None], false).await;
    assert_eq!(report.resumed, 0, "{report:?}");
}

const TICKET_KEY: &str = "6b1f0c2e9a7d4e3f8a5b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f";
const OTHER_TICKET_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_ticket_key_a_replaced_gateway_resumes_every_tablets_session() {
    // The node's processes share the key file: every tablet resumes with the new process.
    let shared = Some(format!("# shared by the node\n{TICKET_KEY}\n"));
    let report = replace_the_gateway([shared.clone(), shared], true).await;
    assert_eq!(report.resumed, 30, "{report:?}");

    // After a rotation (a new key first, the old one kept), the old tickets still open.
    let rotated = Some(format!("{OTHER_TICKET_KEY}\n{TICKET_KEY}\n"));
    let report = replace_the_gateway([Some(TICKET_KEY.to_owned()), rotated], true).await;
    assert_eq!(report.resumed, 30, "{report:?}");

    // Each process with its own key (the default), or a key the tickets were not sealed with:
    // the tablets offer their tickets, and every one makes a full handshake instead.
    let report = replace_the_gateway([None, None], true).await;
    assert_eq!(report.resumed, 0, "{report:?}");
    let report = replace_the_gateway(
        [
            Some(TICKET_KEY.to_owned()),
            Some(OTHER_TICKET_KEY.to_owned()),
        ],
        true,
    )
    .await;
    assert_eq!(report.resumed, 0, "{report:?}");
}

/// Takes offers until stopped: every offer is accepted and its call ended at once, except that
/// the first offer from each device in `ring_out` is left to ring out. Returns the call ids
/// taken.
async fn taking_operator(
    mut console: carebell_tests::Console,
    ring_out: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<String> {
    use carebell_proto::console::v1::console_event::Event;
    let mut taken = Vec::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return taken,
            event = console.next_event(Duration::from_secs(30)) => event,
        };
        let Some(Event::Offer(offer)) = event else {
            continue;
        };
        // `remove` is true once per marked device: its next call's first offer.
        if ring_out.lock().unwrap().remove(&offer.device_id) {
            continue;
        }
        console.client.accept(&offer.offer_id).await.unwrap();
        console
            .client
            .end_call(
                &offer.call_id,
                carebell_proto::console::v1::Disposition::Information,
                "",
            )
            .await
            .unwrap();
        taken.push(offer.call_id);
    }
}

/// The dispatch benchmark in small: calls pressed at a steady rate are each offered and taken
/// exactly once; a call whose offer rings out is offered again after the deadline and taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_at_a_steady_rate_are_each_taken_once_and_a_rung_out_offer_is_made_again() {
    let node = TestNode::start(NodeOptions {
        ring_timeout: Duration::from_secs(1),
        ..NodeOptions::default()
    })
    .await;
    let ring_out = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut operators = Vec::new();
    for n in 0..3 {
        let console = node
            .available_operator(&format!("rate{n}"), &format!("Rate {n}"))
            .await;
        operators.push(tokio::spawn(taking_operator(
            console,
            Arc::clone(&ring_out),
            stop.clone(),
        )));
    }
    let mut tablets = Vec::new();
    let mut device_ids = Vec::new();
    for n in 0..12 {
        let (_, config) = node
            .tablet_config(
                &format!("Rate senior {n}"),
                firmware_sim::TransportKind::WebSocket,
            )
            .await;
        device_ids.push(config.credentials.device_id.clone());
        tablets.push(firmware_sim::Tablet::connect(&config).await.unwrap());
    }
    let calls = |state: &'static str| {
        let pool = node.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM calls WHERE state = $1")
                .bind(state)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let wait_until_ended = |target: i64| async move {
        for _ in 0..200 {
            if calls("ended").await == target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("not every call ended");
    };
    // 24 calls at 20 per second.
    for n in 0..24 {
        tablets[n % tablets.len()].press().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until_ended(24).await;
    let one_winner: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT call_id FROM offers WHERE state = 'accepted'
                               GROUP BY call_id HAVING count(*) = 1) won",
    )
    .fetch_one(node.store.pool())
    .await
    .unwrap();
    assert_eq!(one_winner, 24);

    // Three more calls whose first offers ring out. The devices are marked before they press,
    // so that no operator can see the offer before the mark.
    ring_out
        .lock()
        .unwrap()
        .extend(device_ids[..3].iter().cloned());
    let mut rung_out = Vec::new();
    for tablet in &tablets[..3] {
        let request_id = tablet.press().await.unwrap();
        let call_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM calls WHERE request_id = $1")
            .bind(&request_id)
            .fetch_one(node.store.pool())
            .await
            .unwrap();
        rung_out.push(call_id);
    }
    wait_until_ended(27).await;
    for call_id in &rung_out {
        let offers: Vec<(String, bool)> = sqlx::query_as(
            "SELECT state, created_at >= (SELECT min(expires_at) FROM offers WHERE call_id = $1)
             FROM offers WHERE call_id = $1 ORDER BY created_at",
        )
        .bind(call_id)
        .fetch_all(node.store.pool())
        .await
        .unwrap();
        assert_eq!(
            offers,
            vec![("expired".to_owned(), false), ("accepted".to_owned(), true)],
            "call {call_id}: offered again only after the first offer's deadline"
        );
    }
    stop.cancel();
    let mut taken = Vec::new();
    for operator in operators {
        taken.extend(operator.await.unwrap());
    }
    taken.sort();
    let before = taken.len();
    taken.dedup();
    assert_eq!((before, taken.len()), (27, 27), "each call taken once");
    for tablet in tablets {
        tablet.close().await;
    }
    node.stop().await;
}

/// The gRPC transport benchmark in small: tablets over `DeviceLink.Link` each hold a link and
/// have a press stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablets_over_grpc_hold_their_links_and_are_heard() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut tablets = Vec::new();
    for n in 0..25 {
        let (_, config) = node
            .tablet_config(
                &format!("gRPC senior {n}"),
                firmware_sim::TransportKind::Grpc,
            )
            .await;
        tablets.push(firmware_sim::Tablet::connect(&config).await.unwrap());
    }
    for tablet in &tablets {
        tablet.press().await.unwrap();
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(DISTINCT device_id) FROM calls")
        .fetch_one(node.store.pool())
        .await
        .unwrap();
    assert_eq!(stored, 25);
    for tablet in tablets {
        tablet.close().await;
    }
    node.stop().await;
}

/// A tablet's connection attempts that send their ClientHello and go no further (the gateway
/// saturated, the tablet's timeout first) each spend one TLS ticket. The gateway sends eight
/// after every handshake, so a tablet still resumes after seven such attempts; with rustls's
/// default of two, the third attempt made a full handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablet_resumes_its_session_after_seven_attempts_that_went_unserved() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let node = TestNode::start(fleet_node()).await;
    let address = node.websocket_addr();
    let mut config = node.tls_client_config();
    // As a tablet keeps them: tickets for this one server.
    config.resumption = rustls::client::Resumption::store(Arc::new(
        rustls::client::ClientSessionMemoryCache::new(8),
    ));
    let config = Arc::new(config);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::clone(&config))
            .connect(name.clone(), tcp)
            .await
            .unwrap()
    };

    // A full handshake; the tickets come after it, read with what the gateway does with a
    // request that is not a WebSocket upgrade (it closes the link).
    let mut first = connect().await;
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    first
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), first.read_to_end(&mut answer)).await;
    drop(first);

    // Seven attempts whose ClientHello reaches the gateway, and nothing more.
    for _ in 0..7 {
        let mut attempt = rustls::ClientConnection::new(Arc::clone(&config), name.clone()).unwrap();
        let mut hello = Vec::new();
        attempt.write_tls(&mut hello).unwrap();
        let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        tcp.write_all(&hello).await.unwrap();
    }

    let resumed = connect().await;
    assert_eq!(
        resumed.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the eighth attempt still had a ticket"
    );
    drop(resumed);
    node.stop().await;
}
