//! Minimal dispatch: ring timeouts, re-offers, and the race between an acceptance and a timeout.

use std::time::Duration;

use carebell_domain::{CallKind, OperatorStatus};
use carebell_proto::console::v1::console_event::Event;
use carebell_proto::device::v1::CallState;
use carebell_tests::{fresh_store, NodeOptions, TestNode};
use firmware_sim::{Tablet, TransportKind};
use rand::Rng;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_unanswered_offer_times_out_and_goes_to_the_next_operator() {
    let node = TestNode::start(NodeOptions {
        ring_timeout: Duration::from_millis(1500),
        ..NodeOptions::default()
    })
    .await;
    // A becomes available first, so A has been idle longest and is offered the call first.
    let mut operator_a = node.available_operator("a", "Operator A").await;
    let mut operator_b = node.available_operator("b", "Operator B").await;
    let (_resident, config) = node.tablet_config("黄婆婆", TransportKind::WebSocket).await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    let request_id = tablet.press().await.unwrap();

    let offer_a = operator_a
        .next_offer(WAIT)
        .await
        .expect("A is offered the call first");
    // A does nothing; the ring timeout passes.
    match operator_a.next_event(WAIT).await {
        Some(Event::OfferWithdrawn(withdrawn)) => {
            assert_eq!(withdrawn.offer_id, offer_a.offer_id);
            assert_eq!(withdrawn.reason, "expired");
        }
        other => panic!("A's offer should be withdrawn, got {other:?}"),
    }
    let offer_b = operator_b
        .next_offer(WAIT)
        .await
        .expect("B is offered the call next");
    assert_eq!(offer_b.call_id, offer_a.call_id);

    let late = operator_a
        .client
        .accept(&offer_a.offer_id)
        .await
        .expect_err("A's late accept fails");
    assert_eq!(late.code(), tonic::Code::FailedPrecondition);
    assert!(
        late.message().contains("expired"),
        "clear reason: {}",
        late.message()
    );

    operator_b
        .client
        .accept(&offer_b.offer_id)
        .await
        .expect("B accepts");
    let answered = tablet
        .wait_for_call(&request_id, CallState::Answered, WAIT)
        .await
        .unwrap();
    assert_eq!(answered.operator_display_name, "Operator B");

    let offers = node
        .store
        .call_offers(Uuid::parse_str(&offer_a.call_id).unwrap())
        .await
        .unwrap();
    let states: Vec<&str> = offers.iter().map(|offer| offer.state.as_str()).collect();
    assert_eq!(states, ["expired", "accepted"]);
    tablet.close().await;
}

#[tokio::test]
async fn an_accept_racing_the_ring_timeout_has_exactly_one_outcome() {
    let store = fresh_store().await;
    let station = store.add_station("race").await.unwrap();
    let resident = store
        .add_resident(&carebell_store::NewResident {
            station_id: station,
            full_name: "race".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    store
        .add_device(&carebell_store::NewDevice {
            device_id: "tab-race".to_owned(),
            resident_id: resident,
            public_key: [1; 32],
        })
        .await
        .unwrap();
    let operator = store
        .add_operator("racer", "Racer", "unused")
        .await
        .unwrap();
    let ring = Duration::from_millis(60);
    let (mut n_accepted, mut n_expired) = (0, 0);
    for round in 0..40 {
        store
            .set_operator_status(operator, OperatorStatus::Available)
            .await
            .unwrap();
        let call = store
            .create_call("tab-race", &format!("race-{round}"), CallKind::Call)
            .await
            .unwrap();
        let offers = store.match_round(ring).await.unwrap();
        assert_eq!(offers.len(), 1, "one offer is made");
        let offer = offers[0].clone();
        assert_eq!(offer.call_id, call.call_id);
        // Land both right around the deadline.
        let jitter = rand::thread_rng().gen_range(50..70);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        let (accepted, expired) = tokio::join!(
            store.accept_offer(offer.offer_id, operator),
            store.expire_offers(10)
        );
        let expired = expired.unwrap();
        let offer_row = store.offer(offer.offer_id).await.unwrap();
        let call_row = store.call(call.call_id).await.unwrap();
        match accepted {
            Ok(_) => {
                n_accepted += 1;
                assert!(
                    expired.is_empty(),
                    "round {round}: accepted and expired both took effect"
                );
                assert_eq!(offer_row.state, "accepted");
                assert_eq!(call_row.state, "answered");
                store
                    .end_call(
                        call.call_id,
                        operator,
                        carebell_domain::Disposition::AccidentalPress,
                        "",
                    )
                    .await
                    .unwrap();
            }
            Err(error) => {
                n_expired += 1;
                assert!(
                    matches!(error, carebell_store::StoreError::OfferNotOpen { ref state } if state == "expired"),
                    "round {round}: {error}"
                );
                // The sweep may have run just before the deadline and found nothing; sweep again.
                if expired.is_empty() {
                    store.expire_offers(10).await.unwrap();
                }
                let offer_row = store.offer(offer.offer_id).await.unwrap();
                assert_eq!(offer_row.state, "expired");
                assert_eq!(store.call(call.call_id).await.unwrap().state, "queued");
                store
                    .cancel_call("tab-race", &format!("race-{round}"))
                    .await
                    .unwrap();
            }
        }
        let winners: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM offers WHERE call_id = $1 AND state = 'accepted'",
        )
        .bind(call.call_id)
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert!(winners <= 1);
    }
    assert_eq!(n_accepted + n_expired, 40);
}

#[tokio::test]
async fn an_operator_who_goes_away_is_not_offered_calls() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut away = node.available_operator("away", "Away").await;
    away.client
        .set_status(carebell_proto::console::v1::OperatorStatus::Away)
        .await
        .unwrap();
    let mut present = node.available_operator("present", "Present").await;
    let (_resident, config) = node.tablet_config("潘阿姨", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.press().await.unwrap();
    assert!(present.next_offer(WAIT).await.is_some());
    assert!(away.next_offer(Duration::from_millis(500)).await.is_none());
    tablet.close().await;
}

#[tokio::test]
async fn an_operator_cannot_put_themselves_on_call_or_end_a_call_they_do_not_hold() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut console = node.available_operator("solo", "Solo").await;
    let status = console
        .client
        .set_status(carebell_proto::console::v1::OperatorStatus::OnCall)
        .await
        .expect_err("on-call is set by the system");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = console
        .client
        .end_call(
            &Uuid::new_v4().to_string(),
            carebell_proto::console::v1::Disposition::Information,
            "",
        )
        .await
        .expect_err("no such call");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = console
        .client
        .end_call(
            "not-a-uuid",
            carebell_proto::console::v1::Disposition::Information,
            "",
        )
        .await
        .expect_err("bad id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}
