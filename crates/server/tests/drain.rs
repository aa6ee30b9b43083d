//! The real `carebell serve` under SIGTERM, with JSON logs: it logs one JSON object per line,
//! says not-ready at once while still serving its tablet, then tells the tablet to go away with
//! a delay inside the window, and exits with status 0 within the grace period.

use std::process::Stdio;
use std::time::Duration;

use carebell_server::devcert::DevCertificates;
use carebell_store::{NewResident, Store};
use carebell_tests::{http_get, TempDir};
use firmware_sim::{Tablet, TabletConfig, TabletEvent, TransportKind};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_within_the_grace_period_and_logs_are_json() {
    let database_url = carebell_tests::fresh_database().await;
    let store = Store::connect(&database_url, 2).await.unwrap();
    store.migrate().await.unwrap();
    let station = store.add_station("drain").await.unwrap();
    let resident = store
        .add_resident(&NewResident {
            station_id: station,
            full_name: "排空测试".to_owned(),
            ..NewResident::default()
        })
        .await
        .unwrap();
    let dir = TempDir::new();
    let certificates = DevCertificates::generate().unwrap();
    certificates.write(&dir.0).unwrap();
    let (websocket_port, grpc_port, metrics_port) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let mut node = Command::new(env!("CARGO_BIN_EXE_carebell"))
        .arg("serve")
        .env("CAREBELL_DATABASE_URL", &database_url)
        .env("CAREBELL_NODE_ID", "drain-node")
        .env(
            "CAREBELL_LISTEN__WEBSOCKET",
            format!("127.0.0.1:{websocket_port}"),
        )
        .env("CAREBELL_LISTEN__GRPC", format!("127.0.0.1:{grpc_port}"))
        .env("CAREBELL_LISTEN__WEB", "127.0.0.1:0")
        .env(
            "CAREBELL_LISTEN__METRICS",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("CAREBELL_TLS__CERT_PATH", dir.0.join("server.pem"))
        .env("CAREBELL_TLS__KEY_PATH", dir.0.join("server.key"))
        .env("CAREBELL_SHUTDOWN_GRACE_MS", "5000")
        .env("CAREBELL_SHUTDOWN_NOTICE_MS", "1000")
        .env("CAREBELL_DEVICE__GO_AWAY_WINDOW_MS", "3000")
        .env("CAREBELL_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("carebell serve starts");
    let mut lines = BufReader::new(node.stderr.take().unwrap()).lines();
    // Every line is a JSON object with a level and a message; the node says it serves.
    let mut logged = Vec::new();
    let serving = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let object: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
            assert!(object["level"].is_string(), "{line}");
            let message = object["message"].as_str().unwrap_or_default().to_owned();
            logged.push(object);
            if message == "carebell is serving" {
                return;
            }
        }
        panic!("the node ended before serving");
    })
    .await;
    assert!(serving.is_ok(), "the node never said it was serving");
    let ready = |expected: u16| async move {
        for _ in 0..200 {
            if matches!(
                http_get(&format!("http://127.0.0.1:{metrics_port}/readyz")).await,
                Ok((status, _)) if status == expected
            ) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(ready(200).await, "ready once serving");

    let mut credentials = carebell_server::admin::provision_device(
        &store,
        resident,
        None,
        &format!("wss://localhost:{websocket_port}/"),
        &format!("https://localhost:{grpc_port}"),
        None,
    )
    .await
    .unwrap();
    credentials.ca_certificate_pem = Some(certificates.ca_pem.clone());
    let mut tablet = Tablet::connect(&TabletConfig::new(credentials, TransportKind::WebSocket))
        .await
        .unwrap();

    // SIGTERM: not-ready at once, the tablet still served during the notice.
    let signalled = tokio::time::Instant::now();
    let pid = node.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(ready(503).await, "not ready after SIGTERM");
    tablet.press().await.expect("served during the notice");
    let go_away = loop {
        match tablet.next_event(Duration::from_secs(10)).await {
            Some(TabletEvent::GoAway(go_away)) => break go_away,
            Some(_) => continue,
            None => panic!("no GoAway"),
        }
    };
    assert!(
        go_away.reconnect_after_ms < 3000,
        "the delay is inside the window: {go_away:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), node.wait())
        .await
        .expect("the node exits")
        .unwrap();
    assert!(status.success(), "a clean exit: {status:?}");
    // Within the grace period (with room for process start-up and scheduling).
    assert!(
        signalled.elapsed() < Duration::from_secs(5) + Duration::from_secs(5),
        "exited after {:?}",
        signalled.elapsed()
    );
    // The drain was logged, as JSON too.
    while let Ok(Some(line)) = lines.next_line().await {
        let object: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        logged.push(object);
    }
    let messages: Vec<&str> = logged
        .iter()
        .filter_map(|object| object["message"].as_str())
        .collect();
    for expected in [
        "draining: reporting not-ready before telling devices to go away",
        "draining: telling devices to go away and finishing work in flight",
        "stopped",
    ] {
        assert!(
            messages.contains(&expected),
            "{expected:?} not in {messages:?}"
        );
    }
    assert!(
        logged
            .iter()
            .all(|object| !object.to_string().contains("排空测试")),
        "no names in the logs"
    );
}
