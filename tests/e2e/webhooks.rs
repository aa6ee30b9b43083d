//! The webhook channel: signed deliveries, retried until the gateway takes them, dead-lettered
//! (and shown to operators) when it never does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use carebell_dispatch::webhook::signature;
use carebell_store::NewContact;
use carebell_tests::{NodeOptions, TestNode, WEBHOOK_SECRET};
use firmware_sim::{Tablet, TransportKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the fake gateway saw: (timestamp, signature, body) per request.
pub(crate) type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A minimal HTTP/1.1 gateway that answers each request with the next status of `script`
/// (the last one repeats).
pub(crate) async fn gateway(script: Vec<u16>) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/sms",
        listener.local_addr().unwrap().port()
    );
    let seen: Seen = Arc::default();
    let recorded = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers, then the body by its length.
            let (head_end, content_length) = loop {
                let read = socket.read(&mut chunk).await.unwrap_or(0);
                if read == 0 {
                    break (None, 0);
                }
                buffer.extend_from_slice(&chunk[..read]);
                if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|line| {
                            line.strip_prefix("content-length:")
                                .map(|value| value.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    break (Some(end + 4), length);
                }
            };
            let Some(head_end) = head_end else { continue };
            while buffer.len() < head_end + content_length {
                let read = socket.read(&mut chunk).await.unwrap_or(0);
                if read == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..read]);
            }
            let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
            let header = |name: &str| {
                head.lines()
                    .find_map(|line| {
                        line.strip_prefix(&format!("{name}:"))
                            .map(|value| value.trim().to_owned())
                    })
                    .unwrap_or_default()
            };
            recorded.lock().unwrap().push((
                header("x-carebell-timestamp"),
                header("x-carebell-signature"),
                buffer[head_end..].to_vec(),
            ));
            let status = script[n.min(script.len() - 1)];
            n += 1;
            let response =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    (url, seen)
}

/// A resident whose neighbour is reached by SMS, and an SOS nobody answers, so the cascade
/// (family_after_secs = 1) tells the neighbour at once.
pub(crate) async fn unanswered_sos_with_an_sms_contact(node: &TestNode) -> Tablet {
    let rules = carebell_domain::routing::DEFAULT_RULES
        .replace("family_after_secs = 60", "family_after_secs = 1");
    node.store.load_routing_rules(&rules, "test").await.unwrap();
    let (resident, config) = node.tablet_config("潘阿姨", TransportKind::WebSocket).await;
    node.store
        .add_contact(&NewContact {
            resident_id: resident,
            name: "邻居".to_owned(),
            phone: "+86 138 0000 0000".to_owned(),
            channels: vec!["sms".to_owned()],
            ..NewContact::default()
        })
        .await
        .unwrap();
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.long_press().await.unwrap();
    tablet
}

async fn delivery_state(node: &TestNode) -> Option<(String, i32)> {
    sqlx::query_as("SELECT state, attempts FROM webhook_deliveries")
        .fetch_optional(node.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_gateway_failing_twice_then_succeeding_gets_the_message_once_signed() {
    let (url, seen) = gateway(vec![500, 503, 200]).await;
    let node = TestNode::start(NodeOptions {
        webhook_url: Some(url),
        ..NodeOptions::default()
    })
    .await;
    let tablet = unanswered_sos_with_an_sms_contact(&node).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while delivery_state(&node).await.map(|(state, _)| state) != Some("delivered".to_owned()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered: {:?}",
            delivery_state(&node).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        delivery_state(&node).await,
        Some(("delivered".to_owned(), 3))
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "two failures and one success");
    for (timestamp, given, body) in &seen {
        let expected = signature(WEBHOOK_SECRET.as_bytes(), timestamp.parse().unwrap(), body);
        assert_eq!(given, &expected, "a valid signature on every attempt");
    }
    let message: serde_json::Value = serde_json::from_slice(&seen[2].2).unwrap();
    assert_eq!(message["resident"], "潘阿姨");
    assert_eq!(message["phone"], "+86 138 0000 0000");
    tablet.close().await;
}

#[tokio::test]
async fn a_gateway_that_never_succeeds_dead_letters_the_message_for_the_operators() {
    let (url, seen) = gateway(vec![500]).await;
    let node = TestNode::start(NodeOptions {
        webhook_url: Some(url),
        ..NodeOptions::default()
    })
    .await;
    let tablet = unanswered_sos_with_an_sms_contact(&node).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while delivery_state(&node).await.map(|(state, _)| state) != Some("dead".to_owned()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not dead-lettered: {:?}",
            delivery_state(&node).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "exactly the configured attempts"
    );
    node.operator_account("desk", "Desk").await;
    let mut desk = node.sign_in("desk").await;
    let failed = desk.failed_deliveries().await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].attempts, 3);
    assert!(
        failed[0].last_error.contains("500"),
        "{}",
        failed[0].last_error
    );
    assert!(failed[0].body_json.contains("潘阿姨"));
    tablet.close().await;
}
