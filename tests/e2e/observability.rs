//! The metrics and probe endpoint, scraped during a run: every listed series is there with the
//! values the run produced, and the probes follow the node from serving to draining.

use std::time::Duration;

use carebell_tests::{http_get, metric_value, NodeOptions, TestNode};
use firmware_sim::{Tablet, TransportKind};

use crate::webhooks::{gateway, unanswered_sos_with_an_sms_contact};

async fn scrape(node: &TestNode) -> String {
    let (status, body) = http_get(&format!("{}/metrics", node.metrics_url))
        .await
        .expect("the metrics endpoint answers");
    assert_eq!(status, 200, "{body}");
    body
}

/// Scrapes until `series` has reached `at_least` (values are recorded as things happen).
async fn scrape_until(node: &TestNode, series: &str, at_least: f64) -> String {
    for _ in 0..150 {
        let body = scrape(node).await;
        if metric_value(&body, series).is_some_and(|value| value >= at_least) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{series} never reached {at_least}:\n{}", scrape(node).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_during_a_run_shows_every_listed_series() {
    // A webhook gateway that always fails: attempts are counted, then dead-lettered.
    let (webhook_url, _seen) = gateway(vec![500]).await;
    let node = TestNode::start(NodeOptions {
        webhook_url: Some(webhook_url),
        shutdown_notice: Duration::from_millis(1500),
        ..NodeOptions::default()
    })
    .await;
    let (status, _) = http_get(&format!("{}/livez", node.metrics_url))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = http_get(&format!("{}/readyz", node.metrics_url))
        .await
        .unwrap();
    assert_eq!(status, 200, "a serving node is ready");

    // One tablet on each transport, and an SOS nobody answers yet.
    let (_, grpc_config) = node
        .tablet_config("Metrics gRPC", TransportKind::Grpc)
        .await;
    let grpc_tablet = Tablet::connect(&grpc_config).await.unwrap();
    let sos_tablet = unanswered_sos_with_an_sms_contact(&node).await;
    // A device that cannot authenticate (another tablet's key).
    let (_, mut stranger) = node
        .tablet_config("Metrics stranger", TransportKind::WebSocket)
        .await;
    stranger.credentials.private_key = grpc_config.credentials.private_key.clone();
    assert!(Tablet::connect(&stranger).await.is_err());

    let body = scrape_until(
        &node,
        "carebell_alarms_open{kind=\"sos\",state=\"queued\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric_value(
            &body,
            "carebell_device_connections{transport=\"websocket\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric_value(&body, "carebell_device_connections{transport=\"grpc\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric_value(
            &body,
            "carebell_device_handshakes_total{transport=\"websocket\",outcome=\"accepted\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric_value(
            &body,
            "carebell_device_handshakes_total{transport=\"websocket\",outcome=\"refused\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric_value(
            &body,
            "carebell_alarms_received_total{kind=\"sos\",outcome=\"new\"}"
        ),
        Some(1.0),
        "{body}"
    );
    // The SOS went through the alarm batcher: one alarm in one transaction.
    assert_eq!(
        (
            metric_value(&body, "carebell_alarm_batch_size_count"),
            metric_value(&body, "carebell_alarm_batch_size_sum"),
        ),
        (Some(1.0), Some(1.0)),
        "{body}"
    );
    // Its wait was timed once: the whole wait at the node, and its batch's transaction within it.
    let store_wait = metric_value(&body, "carebell_alarm_store_seconds_sum").unwrap_or(0.0);
    let transaction = metric_value(&body, "carebell_alarm_batch_seconds_sum").unwrap_or(0.0);
    assert_eq!(
        (
            metric_value(&body, "carebell_alarm_store_seconds_count"),
            metric_value(&body, "carebell_alarm_batch_seconds_count"),
        ),
        (Some(1.0), Some(1.0)),
        "{body}"
    );
    assert!(
        transaction > 0.0 && store_wait >= transaction,
        "store wait {store_wait} s, transaction {transaction} s"
    );
    let queue_waiting = body
        .lines()
        .find(|line| line.starts_with("carebell_queue_waiting{"))
        .expect("a waiting queue is shown");
    assert!(queue_waiting.ends_with(" 1"), "{queue_waiting}");
    assert!(
        body.contains("carebell_queue_longest_wait_seconds{"),
        "{body}"
    );
    let in_use = metric_value(
        &body,
        "carebell_database_pool_connections{state=\"in_use\"}",
    );
    let idle = metric_value(&body, "carebell_database_pool_connections{state=\"idle\"}");
    assert!(
        in_use.is_some() && idle.is_some(),
        "pool figures: {in_use:?} {idle:?}"
    );
    assert_eq!(
        metric_value(&body, "carebell_database_pool_connections{state=\"max\"}"),
        Some(10.0)
    );

    // A tablet that says goodbye: its session's end is counted with its reason, and no other
    // session has ended.
    let (_, leaving) = node
        .tablet_config("Metrics leaving", TransportKind::WebSocket)
        .await;
    Tablet::connect(&leaving).await.unwrap().close().await;
    let body = scrape_until(
        &node,
        "carebell_device_sessions_ended_total{transport=\"websocket\",reason=\"closed by the device\"}",
        1.0,
    )
    .await;
    let ended: Vec<&str> = body
        .lines()
        .filter(|line| line.starts_with("carebell_device_sessions_ended_total{"))
        .collect();
    assert_eq!(
        ended,
        ["carebell_device_sessions_ended_total{transport=\"websocket\",reason=\"closed by the device\"} 1"],
        "{body}"
    );

    // A connection that does not speak TLS is closed before any session, counted by stage.
    let mut plain = tokio::net::TcpStream::connect(node.websocket_addr())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut answer),
    )
    .await;
    let body = scrape_until(
        &node,
        "carebell_device_connections_abandoned_total{stage=\"tls\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric_value(
            &body,
            "carebell_device_connections_abandoned_total{stage=\"slot\"}"
        ),
        None,
        "nobody waited past the queue: {body}"
    );

    // The family cascade's SMS goes to the failing webhook: three attempts, then dead.
    let body = scrape_until(
        &node,
        "carebell_webhook_deliveries_total{outcome=\"dead\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric_value(
            &body,
            "carebell_webhook_deliveries_total{outcome=\"failed\"}"
        ),
        Some(2.0),
        "{body}"
    );
    // The backlog gauge is read from the database at the start of a scrape, the counters when
    // it is written out: a scrape taken as the delivery died can count it dead and still show
    // it pending (seen in CI). The gauge follows by the next scrape.
    let body = scrape_until(&node, "carebell_webhook_backlog{state=\"dead\"}", 1.0).await;
    assert_eq!(
        metric_value(&body, "carebell_webhook_backlog{state=\"dead\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric_value(&body, "carebell_webhook_backlog{state=\"pending\"}"),
        Some(0.0),
        "the one delivery, no longer pending: {body}"
    );

    // An operator takes the SOS: an offer reaches the console, the wait ends.
    let mut console = node.available_operator("metrics", "Metrics").await;
    let offer = console
        .next_offer(Duration::from_secs(10))
        .await
        .expect("the SOS is offered");
    console.client.accept(&offer.offer_id).await.unwrap();
    let body = scrape_until(
        &node,
        "carebell_queue_wait_seconds_count{kind=\"emergency\"}",
        1.0,
    )
    .await;
    assert!(
        metric_value(
            &body,
            "carebell_offer_latency_seconds_count{kind=\"emergency\"}"
        )
        .is_some_and(|count| count >= 1.0),
        "{body}"
    );
    assert!(
        metric_value(
            &body,
            "carebell_offer_latency_seconds_bucket{le=\"+Inf\",kind=\"emergency\"}"
        )
        .is_some_and(|count| count >= 1.0)
            || metric_value(
                &body,
                "carebell_offer_latency_seconds_bucket{kind=\"emergency\",le=\"+Inf\"}"
            )
            .is_some_and(|count| count >= 1.0),
        "histogram buckets: {body}"
    );
    assert_eq!(
        metric_value(
            &body,
            "carebell_alarms_open{kind=\"sos\",state=\"answered\"}"
        ),
        Some(1.0),
        "{body}"
    );
    // A series that emptied shows 0 rather than vanishing (a gap is not a zero).
    assert_eq!(
        metric_value(&body, "carebell_alarms_open{kind=\"sos\",state=\"queued\"}"),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        metric_value(&body, "carebell_service_level_ratio{within=\"180s\"}"),
        Some(1.0),
        "the one answered call was answered within 180 s: {body}"
    );
    assert!(body.contains("carebell_service_level_ratio{within=\"60s\"}"));
    assert_eq!(metric_value(&body, "carebell_draining"), Some(0.0));
    // The Grafana dashboard asks only for series the node serves.
    let missing: Vec<String> = dashboard_series()
        .into_iter()
        .filter(|series| !body.contains(&format!("# TYPE {series} ")))
        .collect();
    assert!(missing.is_empty(), "the dashboard asks for {missing:?}");

    // Draining: the node says not-ready (and draining) while it still serves the tablets.
    node.begin_stop();
    let mut seen_draining = false;
    for _ in 0..100 {
        let (status, _) = http_get(&format!("{}/readyz", node.metrics_url))
            .await
            .unwrap();
        if status == 503 {
            seen_draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_draining, "/readyz turns 503 on stop");
    let body = scrape(&node).await;
    assert_eq!(metric_value(&body, "carebell_draining"), Some(1.0));
    assert_eq!(
        metric_value(&body, "carebell_device_connections{transport=\"grpc\"}"),
        Some(1.0),
        "tablets are still served during the notice: {body}"
    );
    grpc_tablet.close().await;
    sos_tablet.close().await;
    node.stop().await;
}

/// The `carebell_*` series the Grafana dashboard's queries use, by their base names (without
/// `_bucket`, `_count`, `_sum` or `_total`).
fn dashboard_series() -> std::collections::BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/carebell-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard"))
            .expect("the dashboard is JSON");
    let mut series = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expression");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("carebell_") {
                    let base = ["_bucket", "_count", "_sum", "_total"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix))
                        .unwrap_or(name);
                    series.insert(format!("carebell_{base}"));
                }
            }
        }
    }
    assert!(
        series.len() >= 10,
        "the dashboard shows the listed series: {series:?}"
    );
    series
}

#[tokio::test]
async fn a_database_server_without_autovacuum_is_reported_and_one_with_it_is_not() {
    let store = carebell_tests::fresh_store().await;
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let warnings = store.server_configuration_warnings().await.unwrap();
    let about_autovacuum: Vec<_> = warnings
        .iter()
        .filter(|warning| warning.contains("autovacuum is off"))
        .collect();
    assert_eq!(
        about_autovacuum.len(),
        usize::from(autovacuum == "off"),
        "autovacuum = {autovacuum}: {warnings:?}"
    );
}
