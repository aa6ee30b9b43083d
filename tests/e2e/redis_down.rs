//! Rule 2: Redis is never in the path that decides whether a call is stored or whom it is
//! offered to. With Redis unreachable or stalled, presses still reach operators.

use std::time::Duration;

use carebell_proto::device::v1::CallState;
use carebell_tests::{NodeOptions, TestNode};
use firmware_sim::{Tablet, TransportKind};

const WAIT: Duration = Duration::from_secs(10);

async fn press_reaches_an_operator(node: &TestNode) {
    let mut console = node.available_operator("op", "值班员").await;
    let (_resident, config) = node.tablet_config("潘阿姨", TransportKind::WebSocket).await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    let request_id = tablet.press().await.unwrap();
    let offer = console
        .next_offer(WAIT)
        .await
        .expect("the operator is offered the call");
    assert_eq!(offer.resident_name, "潘阿姨");
    console.client.accept(&offer.offer_id).await.unwrap();
    tablet
        .wait_for_call(&request_id, CallState::Answered, WAIT)
        .await
        .unwrap();
    // The record still shows, with presence degraded.
    let record = console
        .client
        .get_resident(&offer.resident_id)
        .await
        .unwrap();
    assert_eq!(record.full_name, "潘阿姨");
    tablet.close().await;
}

#[tokio::test]
async fn a_press_reaches_an_operator_when_redis_is_unreachable() {
    // Port 1 on loopback: connection refused at once.
    let node = TestNode::start(NodeOptions {
        redis_url: Some("redis://127.0.0.1:1/".to_owned()),
        ..NodeOptions::default()
    })
    .await;
    press_reaches_an_operator(&node).await;
}

#[tokio::test]
async fn a_press_reaches_an_operator_when_redis_stalls() {
    // A "Redis" that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stall = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            if held.len() > 100 {
                break;
            }
        }
    });
    let node = TestNode::start(NodeOptions {
        redis_url: Some(format!("redis://{address}/")),
        ..NodeOptions::default()
    })
    .await;
    press_reaches_an_operator(&node).await;
    stall.abort();
}

#[tokio::test]
async fn presence_in_redis_shows_which_node_holds_a_device() {
    // Entries live 30 s here, so their removal below is the node's doing, not expiry.
    let node = TestNode::start(NodeOptions {
        node_id: "node-a".to_owned(),
        presence_refresh: Duration::from_secs(10),
        ..NodeOptions::default()
    })
    .await;
    let (resident, config) = node.tablet_config("陈奶奶", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    let client = redis::Client::open(carebell_tests::redis_url()).unwrap();
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|error| {
            panic!(
                "tests need Redis at {}: {error}",
                carebell_tests::redis_url()
            )
        });
    let key = format!(
        "{}presence:device:{}",
        node.redis_prefix, config.credentials.device_id
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        if value.as_deref() == Some("node-a") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never appeared at {key}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl > 0, "presence entries expire by themselves");

    node.operator_account("viewer", "Viewer").await;
    let mut viewer = node.sign_in("viewer").await;
    let record = viewer.get_resident(&resident.to_string()).await.unwrap();
    assert!(
        record.devices[0].online,
        "the console shows the tablet online"
    );

    tablet.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let value: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        if value.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence was not removed when the tablet disconnected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
