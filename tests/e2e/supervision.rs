//! Silence is an alarm: a device not heard for two heartbeat intervals plus a grace raises one
//! "device offline" technical alarm, from durable last-seen times; its return clears it, and a
//! gateway process killed outright has its tablets reported by another node.
//! And the alarm edge cases: a device clock far off, an alarm id reused for other content.

use std::time::Duration;

use carebell_proto::device::v1::envelope::Body;
use carebell_proto::device::v1::{Alarm, AlarmKind};
use carebell_store::Store;
use carebell_tests::{NodeOptions, TestNode};
use firmware_sim::{Tablet, TabletEvent, TransportKind};

fn supervised() -> NodeOptions {
    NodeOptions {
        heartbeat_interval: Duration::from_secs(1),
        offline_grace: Duration::from_millis(500),
        ..NodeOptions::default()
    }
}

async fn offline_alarms(
    store: &Store,
    device_id: &str,
) -> Vec<(Option<chrono::DateTime<chrono::Utc>>, Option<uuid::Uuid>)> {
    sqlx::query_as("SELECT cleared_at, call_id FROM alarms WHERE device_id = $1 AND kind = 'DEVICE_OFFLINE' ORDER BY received_at")
        .bind(device_id)
        .fetch_all(store.pool())
        .await
        .unwrap()
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next error `tablet` hears within five seconds; panics with `missing` if none comes.
pub(crate) async fn next_error(
    tablet: &mut Tablet,
    missing: &str,
) -> carebell_proto::device::v1::Error {
    loop {
        match tablet.next_event(Duration::from_secs(5)).await {
            Some(TabletEvent::Error(error)) => break error,
            Some(_) => continue,
            None => panic!("{missing}"),
        }
    }
}

#[tokio::test]
async fn a_silent_tablet_raises_one_offline_alarm_and_its_return_clears_it() {
    let node = TestNode::start(supervised()).await;
    let (_resident, mut config) = node
        .tablet_config("沉默的王爷爷", TransportKind::WebSocket)
        .await;
    let device_id = config.credentials.device_id.clone();
    // A link that goes quiet without a close frame: the tablet simply stops talking.
    config.heartbeat_override = Some(Duration::from_secs(3600));
    let silent = Tablet::connect(&config).await.unwrap();
    let connected = tokio::time::Instant::now();
    wait_until("the offline alarm", Duration::from_secs(10), || async {
        !offline_alarms(&node.store, &device_id).await.is_empty()
    })
    .await;
    // Two intervals plus the grace (2.5 s), then within one sweep.
    assert!(
        connected.elapsed() < Duration::from_secs(6),
        "raised within one supervision interval: {:?}",
        connected.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alarms = offline_alarms(&node.store, &device_id).await;
    assert_eq!(alarms.len(), 1, "exactly one offline alarm");
    let item = node
        .store
        .call(alarms[0].1.expect("a technical item"))
        .await
        .unwrap();
    assert_eq!(item.kind, "technical");
    assert_eq!(item.state, "queued");
    drop(silent);

    config.heartbeat_override = None;
    let back = Tablet::connect(&config).await.unwrap();
    wait_until("the alarm to clear", Duration::from_secs(5), || async {
        offline_alarms(&node.store, &device_id)
            .await
            .first()
            .is_some_and(|(cleared, _)| cleared.is_some())
    })
    .await;
    assert_eq!(node.store.call(item.id).await.unwrap().state, "cleared");
    let n_back: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alarms WHERE device_id = $1 AND kind = 'DEVICE_BACK'",
    )
    .bind(&device_id)
    .fetch_one(node.store.pool())
    .await
    .unwrap();
    assert_eq!(n_back, 1);
    // The tablet is never shown the server's own "offline" item.
    let mut back = back;
    while let Some(event) = back.next_event(Duration::from_millis(500)).await {
        if let firmware_sim::TabletEvent::CallUpdate(update) = event {
            assert!(
                !update.request_id.starts_with("alarm:offline."),
                "{update:?}"
            );
        }
    }
    back.close().await;
}

#[tokio::test]
async fn a_heartbeating_tablet_on_another_node_is_not_offline() {
    let database_url = carebell_tests::fresh_database().await;
    let first = TestNode::start(NodeOptions {
        database_url: Some(database_url.clone()),
        node_id: "a".to_owned(),
        ..supervised()
    })
    .await;
    let second = TestNode::start(NodeOptions {
        database_url: Some(database_url),
        node_id: "b".to_owned(),
        ..supervised()
    })
    .await;
    let (_resident, config) = first
        .tablet_config("潘阿姨", TransportKind::WebSocket)
        .await;
    // Connected to the second node; the first node's sweeper reads the shared last-seen time.
    let mut on_second = config.clone();
    on_second.credentials.websocket_url = second.websocket_url.clone();
    on_second.credentials.ca_certificate_pem = Some(second.ca_pem.clone());
    let mut tablet = Tablet::connect(&on_second).await.unwrap();
    assert!(
        tablet.next_event(Duration::from_secs(6)).await.is_none(),
        "stays connected"
    );
    assert!(offline_alarms(&first.store, &config.credentials.device_id)
        .await
        .is_empty());
    tablet.close().await;
}

fn alarm(alarm_id: &str, kind: AlarmKind, raised_at_ms: i64, detail: &str) -> Body {
    Body::Alarm(Alarm {
        alarm_id: alarm_id.to_owned(),
        kind: kind as i32,
        raised_at_ms,
        detail: detail.to_owned(),
    })
}

#[tokio::test]
async fn alarm_edge_cases_are_handled_explicitly() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (_resident, config) = node.tablet_config("陈奶奶", TransportKind::WebSocket).await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    let device_id = config.credentials.device_id.clone();

    // A device clock a year behind: its time is kept, the server orders by its own.
    let a_year_ago = chrono::Utc::now().timestamp_millis() - 365 * 24 * 3600 * 1000;
    tablet
        .send(alarm("fall-a", AlarmKind::Fall, a_year_ago, "kitchen"))
        .await
        .unwrap();
    tablet
        .send(alarm("fall-b", AlarmKind::Fall, 0, "bathroom"))
        .await
        .unwrap();
    let rows: Vec<(String, Option<chrono::DateTime<chrono::Utc>>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT alarm_id, raised_at, received_at FROM alarms WHERE device_id = $1 ORDER BY received_at, id",
    )
    .bind(&device_id)
    .fetch_all(node.store.pool())
    .await
    .unwrap();
    assert_eq!(rows[0].0, "fall-a");
    assert_eq!(
        rows[0].1.map(|at| at.timestamp_millis()),
        Some(a_year_ago),
        "the device's time is kept"
    );
    assert!(
        rows[0].2 > rows[0].1.unwrap() + chrono::Duration::days(300),
        "the server's own time is recorded beside it"
    );
    assert!(rows[1].1.is_none(), "no device time given");

    // The same id with different content: refused explicitly, the first one stands.
    tablet
        .send(alarm("fall-a", AlarmKind::Smoke, a_year_ago, "kitchen"))
        .await
        .unwrap();
    let refused = next_error(&mut tablet, "no error for a reused alarm id").await;
    assert_eq!(
        refused.code,
        carebell_proto::device::v1::ErrorCode::InvalidArgument as i32
    );
    assert!(
        refused.message.contains("already used"),
        "{}",
        refused.message
    );
    let kind: String =
        sqlx::query_scalar("SELECT kind FROM alarms WHERE device_id = $1 AND alarm_id = 'fall-a'")
            .bind(&device_id)
            .fetch_one(node.store.pool())
            .await
            .unwrap();
    assert_eq!(kind, "ALARM_KIND_FALL");

    // An unknown alarm kind: a clear error, nothing stored.
    tablet
        .send(Body::Alarm(Alarm {
            alarm_id: "odd".to_owned(),
            kind: 99,
            raised_at_ms: 0,
            detail: String::new(),
        }))
        .await
        .unwrap();
    let unknown = next_error(&mut tablet, "no error for an unknown alarm kind").await;
    assert!(
        unknown.message.contains("unknown alarm kind"),
        "{}",
        unknown.message
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM alarms WHERE device_id = $1")
        .bind(&device_id)
        .fetch_one(node.store.pool())
        .await
        .unwrap();
    assert_eq!(n, 2);
    tablet.close().await;
}

#[tokio::test]
async fn an_alarm_raised_while_the_server_is_down_survives_the_tablets_restart() {
    let database_url = carebell_tests::fresh_database().await;
    let first = TestNode::start(NodeOptions {
        database_url: Some(database_url.clone()),
        ..NodeOptions::default()
    })
    .await;
    let (_resident, mut config) = first.tablet_config("李伯", TransportKind::WebSocket).await;
    let dir = carebell_tests::TempDir::new();
    let pending_path = dir.0.join("pending.json");
    config.pending = Some(firmware_sim::PendingStore::open(&pending_path).unwrap());
    let tablet = Tablet::connect(&config).await.unwrap();
    first.stop().await;
    // The server is gone: the alarm is written down, but nobody acknowledges it.
    let fall = alarm("fall-while-down", AlarmKind::Fall, 0, "");
    assert!(tablet.send(fall.clone()).await.is_err());
    drop(tablet);
    // The tablet restarts (a new process: only the file remains) and a server is back.
    let second = TestNode::start(NodeOptions {
        database_url: Some(database_url),
        ..NodeOptions::default()
    })
    .await;
    config.credentials.websocket_url = second.websocket_url.clone();
    config.credentials.ca_certificate_pem = Some(second.ca_pem.clone());
    config.pending = Some(firmware_sim::PendingStore::open(&pending_path).unwrap());
    assert_eq!(config.pending.as_ref().unwrap().bodies(), vec![fall]);
    let restarted = Tablet::connect(&config).await.unwrap();
    wait_until(
        "the resent alarm to be stored and acknowledged",
        Duration::from_secs(10),
        || async { config.pending.as_ref().unwrap().bodies().is_empty() },
    )
    .await;
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM alarms WHERE alarm_id = 'fall-while-down'")
            .fetch_one(second.store.pool())
            .await
            .unwrap();
    assert_eq!(n, 1);
    restarted.close().await;
}

#[tokio::test]
async fn an_alarm_is_handled_step_by_step_and_resolved_with_an_outcome() {
    use carebell_proto::console::v1::{AlarmAction as Action, AlarmOutcome as Outcome};
    let node = TestNode::start(NodeOptions::default()).await;
    let mut console = node.available_operator("nurse", "Nurse").await;
    let (_resident, config) = node.tablet_config("王爷爷", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.long_press().await.unwrap();
    let offer = console.next_offer(Duration::from_secs(10)).await.unwrap();
    let accepted = console.client.accept(&offer.offer_id).await.unwrap();
    console
        .client
        .record_alarm_action(&accepted.call_id, Action::CalledSenior, "no answer")
        .await
        .unwrap();
    console
        .client
        .record_alarm_action(&accepted.call_id, Action::Called120, "")
        .await
        .unwrap();
    let missing = console
        .client
        .record_alarm_action(&accepted.call_id, Action::Unspecified, "")
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    console
        .client
        .resolve_alarm(&accepted.call_id, Outcome::Ambulance, "taken to hospital")
        .await
        .unwrap();

    let call_id = uuid::Uuid::parse_str(&accepted.call_id).unwrap();
    assert_eq!(
        node.store.alarm_actions(call_id).await.unwrap(),
        ["called_senior", "called_120"]
    );
    let (state, outcome): (String, Option<String>) =
        sqlx::query_as("SELECT state, outcome FROM calls WHERE id = $1")
            .bind(call_id)
            .fetch_one(node.store.pool())
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), outcome.as_deref()),
        ("ended", Some("ambulance"))
    );
    let resolved: Option<String> =
        sqlx::query_scalar("SELECT outcome FROM alarms WHERE call_id = $1")
            .bind(call_id)
            .fetch_one(node.store.pool())
            .await
            .unwrap();
    assert_eq!(resolved.as_deref(), Some("ambulance"));
    let kinds: Vec<String> = node
        .store
        .call_events(call_id)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "call.created",
            "offer.created",
            "offer.accepted",
            "call.answered",
            "alarm.action",
            "alarm.action",
            "alarm.resolved",
            "call.ended"
        ]
    );
    let too_late = console
        .client
        .record_alarm_action(&accepted.call_id, Action::SentResponder, "")
        .await
        .unwrap_err();
    assert_eq!(too_late.code(), tonic::Code::FailedPrecondition);

    // An ordinary call has no alarm handling.
    tablet.press().await.unwrap();
    let offer = console.next_offer(Duration::from_secs(10)).await.unwrap();
    let call = console.client.accept(&offer.offer_id).await.unwrap();
    let refused = console
        .client
        .resolve_alarm(&call.call_id, Outcome::FalseAlarm, "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("only alarms"),
        "{}",
        refused.message()
    );
    tablet.close().await;
}

#[tokio::test]
async fn a_tablet_whose_gateway_process_is_killed_is_reported_offline() {
    // The sweeping node: it holds nothing, the tablet is on a separate gateway process.
    let database_url = carebell_tests::fresh_database().await;
    let observer = TestNode::start(NodeOptions {
        database_url: Some(database_url.clone()),
        ..supervised()
    })
    .await;
    let (_resident, mut config) = observer
        .tablet_config("赵奶奶", TransportKind::WebSocket)
        .await;
    let device_id = config.credentials.device_id.clone();
    let dir = carebell_tests::TempDir::new();
    let certificates = carebell_server::devcert::DevCertificates::generate().unwrap();
    let (cert, key) = certificates.write(&dir.0).unwrap();
    let listen = carebell_tests::free_port();
    let mut gateway = tokio::process::Command::new(carebell_tests::workspace_binary("carebell"))
        .arg("serve")
        .env("CAREBELL_DATABASE_URL", &database_url)
        .env("CAREBELL_RUN_MIGRATIONS", "false")
        .env("CAREBELL_NODE_ID", "doomed")
        .env("CAREBELL_LISTEN__WEBSOCKET", listen.to_string())
        .env("CAREBELL_LISTEN__GRPC", "127.0.0.1:0")
        .env("CAREBELL_LISTEN__WEB", "127.0.0.1:0")
        .env("CAREBELL_LISTEN__METRICS", "127.0.0.1:0")
        .env("CAREBELL_TLS__CERT_PATH", &cert)
        .env("CAREBELL_TLS__KEY_PATH", &key)
        .env("CAREBELL_DEVICE__HEARTBEAT_INTERVAL_MS", "1000")
        .env("CAREBELL_DEVICE__OFFLINE_GRACE_MS", "500")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    config.credentials.websocket_url = format!("wss://localhost:{}/", listen.port());
    config.credentials.ca_certificate_pem =
        Some(std::fs::read_to_string(dir.0.join("ca.pem")).unwrap());
    let mut tablet = None;
    for _ in 0..100 {
        if let Ok(connected) = Tablet::connect(&config).await {
            tablet = Some(connected);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut tablet = tablet.expect("the tablet connected to the gateway process");
    // Heartbeating through several offline thresholds (2.5 s): held, not offline.
    assert!(tablet.next_event(Duration::from_secs(6)).await.is_none());
    assert!(offline_alarms(&observer.store, &device_id).await.is_empty());

    // The process dies without a word: no last-seen write at the end of the session. The
    // observer's sweep reports the tablet from the last time the dead process wrote.
    gateway.kill().await.unwrap();
    wait_until("the offline alarm", Duration::from_secs(15), || async {
        !offline_alarms(&observer.store, &device_id).await.is_empty()
    })
    .await;
    assert_eq!(offline_alarms(&observer.store, &device_id).await.len(), 1);
    // Not before the threshold (2.5 s) from when it was last heard.
    let detail: String = sqlx::query_scalar(
        "SELECT detail FROM alarms WHERE device_id = $1 AND kind = 'DEVICE_OFFLINE'",
    )
    .bind(&device_id)
    .fetch_one(observer.store.pool())
    .await
    .unwrap();
    let silent: u64 = detail
        .trim_start_matches("no word from the device for ")
        .trim_end_matches(" s")
        .parse()
        .unwrap_or_else(|_| panic!("{detail}"));
    assert!(silent >= 2, "{detail}");
    drop(tablet);
}
