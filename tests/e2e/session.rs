//! Session supervision: heartbeats keep a tablet connected, silence does not, and a node that
//! shuts down tells its tablets to go away and come back later.

use std::time::Duration;

use carebell_tests::{NodeOptions, TestNode};
use firmware_sim::{Tablet, TabletEvent, TransportKind};

#[tokio::test]
async fn a_silent_tablet_is_disconnected_after_missed_heartbeats() {
    // Closed at the silence that reports it offline, two intervals and the grace (5 s here),
    // and not before: 3.5 intervals pass with the link held.
    let node = TestNode::start(NodeOptions {
        heartbeat_interval: Duration::from_secs(1),
        offline_grace: Duration::from_secs(3),
        ..NodeOptions::default()
    })
    .await;
    let (_resident, mut config) = node.tablet_config("沉默", TransportKind::WebSocket).await;
    config.heartbeat_override = Some(Duration::from_secs(3600));
    let mut tablet = Tablet::connect(&config).await.unwrap();
    assert_eq!(tablet.welcome().heartbeat_interval_ms, 1000);
    let still = tablet.next_event(Duration::from_millis(3500)).await;
    assert!(still.is_none(), "held until the offline limit: {still:?}");
    match tablet.next_event(Duration::from_secs(10)).await {
        Some(TabletEvent::Closed { code, .. }) => {
            assert_eq!(code, Some(carebell_proto::CLOSE_TIMEOUT))
        }
        other => panic!("a silent tablet must be cut off, got {other:?}"),
    }
}

#[tokio::test]
async fn a_heartbeating_tablet_stays_connected() {
    let node = TestNode::start(NodeOptions {
        heartbeat_interval: Duration::from_secs(1),
        ..NodeOptions::default()
    })
    .await;
    let (_resident, config) = node.tablet_config("心跳", TransportKind::Grpc).await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    // Five intervals: twice the silence the server tolerates.
    assert!(
        tablet.next_event(Duration::from_secs(5)).await.is_none(),
        "no disconnect while heartbeating"
    );
    tablet.press().await.expect("the session is still alive");
}

#[tokio::test]
async fn a_node_that_shuts_down_tells_its_tablets_to_go_away() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (_resident, config) = node.tablet_config("告别", TransportKind::WebSocket).await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    node.stop().await;
    let mut saw_go_away = false;
    loop {
        match tablet.next_event(Duration::from_secs(10)).await {
            Some(TabletEvent::GoAway(go_away)) => {
                assert!(
                    go_away.reconnect_after_ms < 30_000,
                    "within the go-away window"
                );
                saw_go_away = true;
            }
            Some(TabletEvent::Closed { code, .. }) => {
                assert_eq!(code, Some(carebell_proto::CLOSE_GOING_AWAY));
                break;
            }
            Some(_) => continue,
            None => panic!("the tablet was not disconnected"),
        }
    }
    assert!(saw_go_away, "GoAway comes before the close");
}
