//! Bad input: each gets a clear error or close code, and a tablet connected at the same moment
//! is unaffected.

use std::time::Duration;

use carebell_proto::device::v1::envelope::Body;
use carebell_proto::device::v1::{CallRequest, CallState, Envelope, ErrorCode, Heartbeat};
use carebell_tests::{NodeOptions, TestNode};
use firmware_sim::{authenticate, Link, LinkEvent, Tablet, TabletConfig, TransportKind};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// Reads until the link closes; returns the error codes seen and the close code.
async fn errors_then_close(link: &mut Link) -> (Vec<i32>, Option<u16>, Option<tonic::Code>) {
    let mut codes = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, link.recv())
            .await
            .expect("the server answers")
        {
            Ok(LinkEvent::Envelope(Envelope {
                body: Some(Body::Error(error)),
                ..
            })) => codes.push(error.code),
            Ok(LinkEvent::Envelope(_)) => continue,
            Ok(LinkEvent::Closed {
                code, grpc_code, ..
            }) => return (codes, code, grpc_code),
            Err(_) => return (codes, None, None),
        }
    }
}

/// Runs `attack` on one connection while a well-behaved tablet is connected, then checks that
/// the well-behaved tablet's call still goes through on its original connection.
async fn bystander_is_unaffected<F, Fut>(attack: F)
where
    F: FnOnce(TestNode, TabletConfig) -> Fut,
    Fut: std::future::Future<Output = TestNode>,
{
    let node = TestNode::start(NodeOptions::default()).await;
    let (_resident, bystander_config) = node.tablet_config("旁人", TransportKind::WebSocket).await;
    let mut bystander = Tablet::connect(&bystander_config).await.unwrap();
    let (_other, attacker_config) = node.tablet_config("攻击者", TransportKind::WebSocket).await;
    let node = attack(node, attacker_config).await;
    let request_id = bystander
        .press()
        .await
        .expect("the bystander's press still goes through");
    bystander
        .wait_for_call(&request_id, CallState::Queued, WAIT)
        .await
        .unwrap();
    assert!(
        bystander
            .next_event(Duration::from_millis(100))
            .await
            .is_none(),
        "no disconnect for the bystander"
    );
    bystander.close().await;
    drop(node);
}

#[tokio::test]
async fn a_binary_frame_that_is_not_protobuf_is_refused() {
    bystander_is_unaffected(|node, config| async move {
        let mut link = config.open_link().await.unwrap();
        link.send_raw(Message::Binary(vec![0xff, 0xff, 0xff, 0xff, 0x0f].into()))
            .await
            .unwrap();
        let (codes, close, _) = errors_then_close(&mut link).await;
        assert_eq!(codes, [ErrorCode::MalformedFrame as i32]);
        assert_eq!(close, Some(1002));
        node
    })
    .await;
}

#[tokio::test]
async fn a_text_frame_is_refused() {
    bystander_is_unaffected(|node, config| async move {
        let mut link = config.open_link().await.unwrap();
        authenticate(&mut link, &config.credentials, "test")
            .await
            .unwrap();
        link.send_raw(Message::Text("{\"press\": true}".into()))
            .await
            .unwrap();
        let (codes, close, _) = errors_then_close(&mut link).await;
        assert_eq!(codes, [ErrorCode::TextFrame as i32]);
        assert_eq!(close, Some(1003));
        node
    })
    .await;
}

#[tokio::test]
async fn an_oversized_frame_is_refused() {
    bystander_is_unaffected(|node, config| async move {
        let mut link = config.open_link().await.unwrap();
        authenticate(&mut link, &config.credentials, "test")
            .await
            .unwrap();
        link.send_raw(Message::Binary(vec![0u8; 100 * 1024].into()))
            .await
            .unwrap();
        let (_codes, close, _) = errors_then_close(&mut link).await;
        assert_eq!(close, Some(1009));
        node
    })
    .await;
}

#[tokio::test]
async fn an_oversized_message_over_grpc_is_refused() {
    bystander_is_unaffected(|node, mut config| async move {
        config.transport = TransportKind::Grpc;
        let mut link = config.open_link().await.unwrap();
        authenticate(&mut link, &config.credentials, "test")
            .await
            .unwrap();
        let huge = Envelope {
            seq: 3,
            ack: 0,
            body: Some(Body::CallRequest(CallRequest {
                request_id: "x".repeat(100 * 1024),
                pressed_at_ms: 0,
            })),
        };
        link.send(huge).await.unwrap();
        let (_codes, _close, grpc_code) = errors_then_close(&mut link).await;
        assert!(
            matches!(
                grpc_code,
                Some(tonic::Code::ResourceExhausted) | Some(tonic::Code::OutOfRange)
            ),
            "{grpc_code:?}"
        );
        node
    })
    .await;
}

#[tokio::test]
async fn a_message_before_authentication_is_refused() {
    bystander_is_unaffected(|node, config| async move {
        let mut link = config.open_link().await.unwrap();
        link.send(Envelope {
            seq: 1,
            ack: 0,
            body: Some(Body::CallRequest(CallRequest {
                request_id: "sneaky".to_owned(),
                pressed_at_ms: 0,
            })),
        })
        .await
        .unwrap();
        let (codes, close, _) = errors_then_close(&mut link).await;
        assert_eq!(codes, [ErrorCode::NotAuthenticated as i32]);
        assert_eq!(close, Some(4401));
        let counts = node
            .store
            .call_state_counts(std::slice::from_ref(&config.credentials.device_id))
            .await
            .unwrap();
        assert!(counts.is_empty(), "nothing was stored");
        node
    })
    .await;
}

#[tokio::test]
async fn an_unknown_message_gets_an_error_and_the_session_goes_on() {
    bystander_is_unaffected(|node, config| async move {
        let mut link = config.open_link().await.unwrap();
        authenticate(&mut link, &config.credentials, "test")
            .await
            .unwrap();
        // An envelope from a newer firmware: seq 3 and a body field this server does not know
        // (field 99, length-delimited).
        let mut bytes = Envelope {
            seq: 3,
            ack: 0,
            body: None,
        }
        .encode_to_vec();
        bytes.extend_from_slice(&[0x9a, 0x06, 3, b'n', b'e', b'w']);
        link.send_raw(Message::Binary(bytes.into())).await.unwrap();
        let mut saw_error = false;
        let mut acked = 0;
        while !(saw_error && acked >= 3) {
            match tokio::time::timeout(WAIT, link.recv())
                .await
                .expect("answer")
                .unwrap()
            {
                LinkEvent::Envelope(envelope) => {
                    acked = acked.max(envelope.ack);
                    if let Some(Body::Error(error)) = envelope.body {
                        assert_eq!(error.code, ErrorCode::UnknownMessage as i32);
                        assert_eq!(error.ref_seq, 3);
                        saw_error = true;
                    }
                }
                LinkEvent::Closed { .. } => panic!("an unknown message must not close the session"),
            }
        }
        // The same session still works.
        link.send(Envelope {
            seq: 4,
            ack: 0,
            body: Some(Body::Heartbeat(Heartbeat {
                battery_percent: 80,
            })),
        })
        .await
        .unwrap();
        loop {
            match tokio::time::timeout(WAIT, link.recv())
                .await
                .expect("answer")
                .unwrap()
            {
                LinkEvent::Envelope(envelope) if envelope.ack >= 4 => break,
                LinkEvent::Envelope(_) => continue,
                LinkEvent::Closed { .. } => panic!("closed"),
            }
        }
        node
    })
    .await;
}

#[tokio::test]
async fn a_call_request_with_an_invalid_id_gets_a_clear_error_and_the_session_goes_on() {
    bystander_is_unaffected(|node, config| async move {
        let mut link = config.open_link().await.unwrap();
        authenticate(&mut link, &config.credentials, "test")
            .await
            .unwrap();
        link.send(Envelope {
            seq: 3,
            ack: 0,
            body: Some(Body::CallRequest(CallRequest {
                request_id: "x'; DROP TABLE calls; --".to_owned(),
                pressed_at_ms: 0,
            })),
        })
        .await
        .unwrap();
        loop {
            match tokio::time::timeout(WAIT, link.recv())
                .await
                .expect("answer")
                .unwrap()
            {
                LinkEvent::Envelope(Envelope {
                    body: Some(Body::Error(error)),
                    ..
                }) => {
                    assert_eq!(error.code, ErrorCode::InvalidArgument as i32);
                    assert!(error.message.contains("request id"), "{}", error.message);
                    break;
                }
                LinkEvent::Envelope(_) => continue,
                LinkEvent::Closed { .. } => {
                    panic!("an invalid argument must not close the session")
                }
            }
        }
        node
    })
    .await;
}

#[tokio::test]
async fn a_websocket_without_the_subprotocol_is_refused_at_the_upgrade() {
    bystander_is_unaffected(|node, config| async move {
        let result = Link::connect_websocket_with_subprotocol(
            &config.credentials.websocket_url,
            config.credentials.ca_certificate_pem.as_deref(),
            None,
        )
        .await;
        let error = result.err().expect("the upgrade is refused").to_string();
        assert!(error.contains("400"), "{error}");
        node
    })
    .await;
}

#[tokio::test]
async fn a_slow_handshake_is_cut_off() {
    let node = TestNode::start(NodeOptions {
        handshake_timeout: Duration::from_secs(1),
        ..NodeOptions::default()
    })
    .await;
    let (_resident, config) = node.tablet_config("慢", TransportKind::WebSocket).await;
    let mut link = config.open_link().await.unwrap();
    // Say nothing: the server's handshake timeout closes the link.
    let (codes, close, _) = errors_then_close(&mut link).await;
    assert!(codes.is_empty());
    assert_eq!(close, Some(carebell_proto::CLOSE_TIMEOUT));
}

/// A device sending far more than any tablet would is told so and cut off; what it sent past
/// the limit was neither stored nor acknowledged (a reconnecting device resends it), and what
/// was acknowledged is stored. A tablet connected at the same time is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_is_cut_off_and_nothing_acknowledged_is_lost() {
    bystander_is_unaffected(|node, config| async move {
        let mut link = config.open_link().await.unwrap();
        authenticate(&mut link, &config.credentials, "flood")
            .await
            .unwrap();
        let sent = 300u64;
        for seq in 3..3 + sent {
            let alarm = carebell_proto::device::v1::Alarm {
                alarm_id: format!("{:032x}", seq),
                kind: carebell_proto::device::v1::AlarmKind::LowBattery as i32,
                raised_at_ms: 0,
                detail: String::new(),
            };
            let envelope = Envelope {
                seq,
                ack: 0,
                body: Some(Body::Alarm(alarm)),
            };
            if link.send(envelope).await.is_err() {
                break;
            }
        }
        let mut acknowledged = 0;
        let mut codes = Vec::new();
        let close = loop {
            match tokio::time::timeout(WAIT, link.recv())
                .await
                .expect("answers")
            {
                Ok(LinkEvent::Envelope(envelope)) => {
                    acknowledged = acknowledged.max(envelope.ack);
                    if let Some(Body::Error(error)) = envelope.body {
                        codes.push(error.code);
                    }
                }
                Ok(LinkEvent::Closed { code, .. }) => break code,
                Err(_) => break None,
            }
        };
        assert_eq!(codes, vec![ErrorCode::RateLimited as i32]);
        assert_eq!(close, Some(carebell_proto::CLOSE_RATE_LIMITED));
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM alarms WHERE device_id = $1 AND alarm_id LIKE '0000%'",
        )
        .bind(&config.credentials.device_id)
        .fetch_one(node.store.pool())
        .await
        .unwrap();
        // Sequence numbers 3.. carried the alarms: every acknowledged one is stored, and the
        // flood was stopped well short of its end.
        let acknowledged_alarms = acknowledged.saturating_sub(2) as i64;
        assert!(
            acknowledged_alarms > 0 && stored >= acknowledged_alarms,
            "{stored} stored, {acknowledged_alarms} acknowledged"
        );
        assert!(
            (stored as u64) < sent,
            "{stored} of {sent} stored: the flood was not cut off"
        );
        node
    })
    .await;
}

/// One address cannot hold every handshake slot: past its share, its new connections are closed
/// at once, while another address still gets a slot.
/// The port of a `scheme://host:port[/]` URL.
fn port_of(url: &str) -> u16 {
    url.trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("a port")
}

/// Silent connections (a slow-loris) from one address fill its share of handshakes on the
/// listener at `port`; one more is closed at once, another address is still let in, and a real
/// tablet over `transport` connects once the silent ones are gone.
async fn one_address_gets_its_share_of_handshakes(listener: &str, transport: TransportKind) {
    use tokio::io::AsyncReadExt;
    let node = TestNode::start(NodeOptions {
        handshake_timeout: Duration::from_secs(30),
        ..NodeOptions::default()
    })
    .await;
    let port = match listener {
        "websocket" => port_of(&node.websocket_url),
        _ => port_of(&node.grpc_url),
    };
    let connect_from = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(std::net::SocketAddr::new(ip, 0)).unwrap();
            socket
                .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                .await
                .unwrap()
        }
    };
    let share = carebell_gateway::device::DeviceSettings::default().max_handshakes_per_address;
    let mut silent = Vec::new();
    for _ in 0..share {
        silent.push(connect_from("127.0.0.7").await);
    }
    // Give the gateway time to accept them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut one_more = connect_from("127.0.0.7").await;
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), one_more.read(&mut buffer))
        .await
        .expect("closed well before the handshake timeout");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "{listener}: the extra connection was closed: {read:?}"
    );
    // Another address is still let in (its connection waits for a TLS hello, open).
    let mut other = connect_from("127.0.0.8").await;
    let waiting = tokio::time::timeout(Duration::from_millis(500), other.read(&mut buffer)).await;
    assert!(
        waiting.is_err(),
        "{listener}: another address was refused: {waiting:?}"
    );
    drop(silent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, config) = node.tablet_config("慢后", transport).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.close().await;
}

/// A node with one handshake slot, held by silent connections for `timeout` each: the first
/// silent one holds it, `waiting` more queue behind it, and then a tablet asks. Returns whether
/// the tablet got through and the node's count of connections closed for want of a slot.
async fn a_tablet_behind_silent_connections(
    queue: Duration,
    timeout: Duration,
    waiting: usize,
) -> (bool, f64) {
    let node = TestNode::start(NodeOptions {
        max_concurrent_handshakes: 1,
        handshake_queue: queue,
        handshake_timeout: timeout,
        max_handshakes_per_address: 0,
        ..NodeOptions::default()
    })
    .await;
    let (_, config) = node.tablet_config("排队", TransportKind::WebSocket).await;
    let mut silent = Vec::new();
    for _ in 0..=waiting {
        silent.push(
            tokio::net::TcpStream::connect(node.websocket_addr())
                .await
                .unwrap(),
        );
        // Accepted in this order: the queue is first come, first served.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let served = tokio::time::timeout(queue + timeout * 2, Tablet::connect(&config))
        .await
        .is_ok_and(|tablet| tablet.is_ok());
    let (_, scrape) = carebell_tests::http_get(&format!("{}/metrics", node.metrics_url))
        .await
        .unwrap();
    let closed = carebell_tests::metric_value(
        &scrape,
        "carebell_device_connections_abandoned_total{stage=\"slot\"}",
    )
    .unwrap_or(0.0);
    drop(silent);
    (served, closed)
}

/// Admission control queues: a tablet that finds every handshake slot taken waits its turn,
/// longer than the handshake timeout if need be (two silent connections ahead of it hold the
/// one slot for 1.5 s each), as long as the queue's wait allows; past that wait it is closed
/// unserved and counted, and never while it could still be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_waits_its_turn_for_a_handshake_slot_within_the_queues_wait() {
    let timeout = Duration::from_millis(1500);
    let (served, closed) =
        a_tablet_behind_silent_connections(Duration::from_secs(8), timeout, 1).await;
    assert!(served, "the tablet was served after about 3 s in the queue");
    assert_eq!(closed, 0.0, "nobody was closed for want of a slot");
    let (served, closed) =
        a_tablet_behind_silent_connections(Duration::from_millis(700), timeout, 0).await;
    assert!(
        !served,
        "past the queue's wait the tablet is closed unserved"
    );
    assert!(closed >= 1.0, "and counted: {closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_handshake_slot() {
    one_address_gets_its_share_of_handshakes("websocket", TransportKind::WebSocket).await;
}

/// The gRPC listener (devices, consoles, family and provider apps) has the same per-address
/// share of TLS handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_grpc_handshake_slot() {
    one_address_gets_its_share_of_handshakes("grpc", TransportKind::Grpc).await;
}

/// A process holds at most its cap of device connections: past it a new connection is closed
/// at once, and a place freed is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_a_new_connection_is_closed() {
    let node = TestNode::start(NodeOptions {
        max_connections: 2,
        ..NodeOptions::default()
    })
    .await;
    let mut configs = Vec::new();
    for name in ["上限一", "上限二", "上限三"] {
        configs.push(node.tablet_config(name, TransportKind::WebSocket).await.1);
    }
    let first = Tablet::connect(&configs[0]).await.unwrap();
    let second = Tablet::connect(&configs[1]).await.unwrap();
    assert!(
        Tablet::connect(&configs[2]).await.is_err(),
        "a third connection past the cap of two"
    );
    // The connected ones are unaffected.
    first.press().await.unwrap();
    second.close().await;
    let mut third = None;
    for _ in 0..50 {
        if let Ok(tablet) = Tablet::connect(&configs[2]).await {
            third = Some(tablet);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    third.expect("a freed place is taken again").close().await;
    first.close().await;
}

/// The cap is the process's, across both device listeners: a WebSocket and a gRPC tablet fill
/// a cap of two, a third over gRPC is refused, and takes the place once one is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_counts_grpc_connections_too() {
    let node = TestNode::start(NodeOptions {
        max_connections: 2,
        ..NodeOptions::default()
    })
    .await;
    let websocket = node
        .tablet_config("上限网", TransportKind::WebSocket)
        .await
        .1;
    let grpc = node.tablet_config("上限远", TransportKind::Grpc).await.1;
    let third = node.tablet_config("上限三远", TransportKind::Grpc).await.1;
    let first = Tablet::connect(&websocket).await.unwrap();
    let second = Tablet::connect(&grpc).await.unwrap();
    assert!(
        Tablet::connect(&third).await.is_err(),
        "a third connection past the cap of two"
    );
    second.press().await.unwrap();
    first.close().await;
    let mut again = None;
    for _ in 0..50 {
        if let Ok(tablet) = Tablet::connect(&third).await {
            again = Some(tablet);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    again.expect("a freed place is taken again").close().await;
    second.close().await;
}
