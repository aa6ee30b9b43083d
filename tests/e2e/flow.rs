//! The walking skeleton's path: tablet → gateway → dispatch → operator → PostgreSQL.

use std::time::Duration;

use carebell_proto::console::v1::console_event::Event;
use carebell_proto::console::v1::Disposition;
use carebell_proto::device::v1::envelope::Body;
use carebell_proto::device::v1::{CallRequest, CallState};
use carebell_tests::{NodeOptions, TestNode};
use firmware_sim::{Tablet, TransportKind};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

async fn press_answer_and_end(transport: TransportKind) {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut console = node.available_operator("zhang", "李秘书 小张").await;
    let (_resident, config) = node.tablet_config("潘阿姨", transport).await;
    let mut tablet = Tablet::connect(&config).await.expect("tablet connects");

    let request_id = tablet.press().await.expect("press is acknowledged");
    tablet
        .wait_for_call(&request_id, CallState::Queued, WAIT)
        .await
        .expect("tablet shows queued");

    let offer = console
        .next_offer(WAIT)
        .await
        .expect("operator is offered the call");
    assert_eq!(offer.resident_name, "潘阿姨");
    assert_eq!(offer.device_id, config.credentials.device_id);
    let accepted = console
        .client
        .accept(&offer.offer_id)
        .await
        .expect("accept");
    assert_eq!(accepted.call_id, offer.call_id);
    assert_eq!(
        accepted
            .resident
            .expect("record with the acceptance")
            .full_name,
        "潘阿姨"
    );

    let answered = tablet
        .wait_for_call(&request_id, CallState::Answered, WAIT)
        .await
        .expect("tablet hears the answer");
    assert_eq!(answered.operator_display_name, "李秘书 小张");

    console
        .client
        .end_call(
            &offer.call_id,
            Disposition::AccidentalPress,
            "pressed while dusting",
        )
        .await
        .expect("end call");
    let ended = tablet
        .wait_for_call(&request_id, CallState::Ended, WAIT)
        .await
        .expect("tablet hears the end");
    assert_eq!(ended.reason, "accidental_press");

    let call_id = Uuid::parse_str(&offer.call_id).unwrap();
    let call = node.store.call(call_id).await.unwrap();
    assert_eq!(call.state, "ended");
    assert_eq!(call.disposition.as_deref(), Some("accidental_press"));
    assert_eq!(call.request_id, request_id);
    let answered_at = call.answered_at.expect("answered_at recorded");
    let ended_at = call.ended_at.expect("ended_at recorded");
    assert!(call.created_at <= answered_at && answered_at <= ended_at);

    let offers = node.store.call_offers(call_id).await.unwrap();
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].state, "accepted");
    assert!(offers[0].decided_at.is_some());

    let events = node.store.call_events(call_id).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|event| event.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "call.created",
            "offer.created",
            "offer.accepted",
            "call.answered",
            "call.ended"
        ]
    );
    assert!(
        events.windows(2).all(|pair| pair[0].at <= pair[1].at),
        "event timestamps are ordered"
    );
    tablet.close().await;
    node.stop().await;
}

#[tokio::test]
async fn button_press_over_websocket_reaches_an_operator_and_is_recorded() {
    press_answer_and_end(TransportKind::WebSocket).await;
}

#[tokio::test]
async fn button_press_over_grpc_reaches_an_operator_and_is_recorded() {
    press_answer_and_end(TransportKind::Grpc).await;
}

#[tokio::test]
async fn a_cancel_before_an_answer_abandons_the_call_and_withdraws_the_offer() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut console = node.available_operator("wang", "小王").await;
    let (_resident, config) = node.tablet_config("李伯", TransportKind::WebSocket).await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    let request_id = tablet.press().await.unwrap();
    let offer = console.next_offer(WAIT).await.expect("offer");
    tablet.cancel(&request_id).await.unwrap();
    let abandoned = tablet
        .wait_for_call(&request_id, CallState::Abandoned, WAIT)
        .await
        .unwrap();
    assert_eq!(abandoned.reason, "cancelled");
    match console.next_event(WAIT).await {
        Some(Event::OfferWithdrawn(withdrawn)) => {
            assert_eq!(withdrawn.offer_id, offer.offer_id);
            assert_eq!(withdrawn.reason, "cancelled");
        }
        other => panic!("expected the offer to be withdrawn, got {other:?}"),
    }
    let status = console
        .client
        .accept(&offer.offer_id)
        .await
        .expect_err("a withdrawn offer cannot be accepted");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let call = node
        .store
        .call(Uuid::parse_str(&offer.call_id).unwrap())
        .await
        .unwrap();
    assert_eq!(call.state, "abandoned");
    let kinds: Vec<String> = node
        .store
        .call_events(call.id)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.kind)
        .collect();
    assert!(kinds.contains(&"call.abandoned".to_owned()), "{kinds:?}");
}

#[tokio::test]
async fn a_resent_call_request_is_stored_once() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (_resident, config) = node.tablet_config("陈奶奶", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    let request = Body::CallRequest(CallRequest {
        request_id: "press-0001".to_owned(),
        pressed_at_ms: 0,
    });
    tablet.send(request.clone()).await.unwrap();
    tablet.close().await;
    // The device did not hear the acknowledgement (as far as it knows) and resends after a
    // reconnect.
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.send(request).await.unwrap();
    let counts = node
        .store
        .call_state_counts(std::slice::from_ref(&config.credentials.device_id))
        .await
        .unwrap();
    assert_eq!(counts, vec![("queued".to_owned(), 1)]);
    tablet.close().await;
}

#[tokio::test]
async fn updates_missed_while_disconnected_are_delivered_after_reconnecting() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut console = node.available_operator("chen", "小陈").await;
    let (_resident, config) = node.tablet_config("王爷爷", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    let request_id = tablet.press().await.unwrap();
    let carryover = tablet.close().await;
    assert!(
        carryover.unacknowledged.is_empty(),
        "the press was acknowledged before closing"
    );

    let offer = console.next_offer(WAIT).await.unwrap();
    console.client.accept(&offer.offer_id).await.unwrap();

    // Reconnect over the other transport: resumption does not depend on the transport.
    let mut config = config;
    config.transport = TransportKind::Grpc;
    let mut tablet = Tablet::resume(&config, carryover).await.unwrap();
    let answered = tablet
        .wait_for_call(&request_id, CallState::Answered, WAIT)
        .await
        .unwrap();
    assert_eq!(answered.operator_display_name, "小陈");
    tablet.close().await;
}

#[tokio::test]
async fn a_long_press_is_stored_once_and_its_emergency_is_offered_before_waiting_calls() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (_resident, config) = node.tablet_config("王爷爷", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    // Nobody is available yet: an ordinary call waits, then the SOS arrives (twice, as a
    // device resends when it misses the acknowledgement).
    tablet.press().await.unwrap();
    let alarm = Body::Alarm(carebell_proto::device::v1::Alarm {
        alarm_id: "sos-0001".to_owned(),
        kind: carebell_proto::device::v1::AlarmKind::Sos as i32,
        raised_at_ms: 1_700_000_000_000,
        detail: String::new(),
    });
    tablet.send(alarm.clone()).await.unwrap();
    tablet.send(alarm).await.unwrap();
    let n_alarms: i64 = sqlx::query_scalar("SELECT count(*) FROM alarms WHERE device_id = $1")
        .bind(&config.credentials.device_id)
        .fetch_one(node.store.pool())
        .await
        .unwrap();
    assert_eq!(
        n_alarms, 1,
        "an alarm resent with the same id is stored once"
    );

    let mut console = node.available_operator("nurse", "值班护士").await;
    let offer = console.next_offer(WAIT).await.expect("an offer");
    assert_eq!(
        offer.kind,
        carebell_proto::console::v1::CallKind::Emergency as i32,
        "the emergency is offered before the ordinary call that waited longer"
    );
    tablet.close().await;
}
