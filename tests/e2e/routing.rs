//! The dispatch engine end to end: skills and widening steps, ring-all, auto-pause, call-backs,
//! decline, transfers, supervisors' views, and bad input.

use std::collections::BTreeSet;
use std::time::Duration;

use carebell_domain::CallKind as CallKindDomain;
use carebell_proto::console::v1::console_event::Event;
use carebell_proto::console::v1::{CallKind, Disposition, OperatorStatus};
use carebell_proto::device::v1::CallState;
use carebell_server::console_client::Target;
use carebell_tests::{NodeOptions, TestNode};
use firmware_sim::{Tablet, TransportKind};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

/// Calls look for the senior's dialect for 2 s, then take anyone; emergencies ring everyone.
const FAST_RULES: &str = r#"
skills = ["nurse", "supervisor"]
wrap_up_secs = 0
max_consecutive_misses = 2

[[queues]]
id = "emergency"
kinds = ["emergency"]
ring_all = true
steps = [{ after_secs = 0 }]

[[queues]]
id = "technical"
kinds = ["technical"]
steps = [{ after_secs = 0 }]

[[queues]]
id = "calls"
kinds = ["call"]
steps = [{ after_secs = 0, require = ["dialect:{dialect}"] }, { after_secs = 2 }]

[[queues]]
id = "callbacks"
kinds = ["callback"]
steps = [{ after_secs = 0 }]
"#;

async fn cantonese_resident(node: &TestNode) -> (Uuid, firmware_sim::TabletConfig) {
    let station = node.station().await;
    let resident = node
        .store
        .add_resident(&carebell_store::NewResident {
            station_id: station,
            full_name: "陈伯".to_owned(),
            dialect: "Cantonese".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let credentials = node.provision(resident).await;
    (
        resident,
        firmware_sim::TabletConfig::new(credentials, TransportKind::WebSocket),
    )
}

/// An available operator who speaks `dialect`.
async fn speaker(
    node: &TestNode,
    username: &str,
    display_name: &str,
    dialect: &str,
) -> carebell_tests::Console {
    let console = node.available_operator(username, display_name).await;
    node.store
        .set_operator_skills(username, &[format!("dialect:{dialect}")])
        .await
        .unwrap();
    console
}

#[tokio::test]
async fn a_cantonese_call_goes_to_a_cantonese_operator_when_one_is_free() {
    let node = TestNode::start(NodeOptions::default()).await;
    node.store
        .load_routing_rules(FAST_RULES, "test")
        .await
        .unwrap();
    // The Mandarin speaker has been idle longer; the Cantonese speaker still gets the call.
    let mut mandarin = speaker(&node, "mandarin", "普通话", "mandarin").await;
    let mut cantonese = speaker(&node, "cantonese", "粤语", "cantonese").await;
    let (_resident, config) = cantonese_resident(&node).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.press().await.unwrap();
    let offer = cantonese
        .next_offer(WAIT)
        .await
        .expect("the Cantonese speaker is offered the call");
    assert_eq!(offer.resident_name, "陈伯");
    assert!(mandarin
        .next_offer(Duration::from_millis(300))
        .await
        .is_none());
    tablet.close().await;
}

#[tokio::test]
async fn a_cantonese_call_goes_to_anyone_after_the_step_times_out() {
    let node = TestNode::start(NodeOptions::default()).await;
    node.store
        .load_routing_rules(FAST_RULES, "test")
        .await
        .unwrap();
    let mut mandarin = speaker(&node, "mandarin", "普通话", "mandarin").await;
    let (_resident, config) = cantonese_resident(&node).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    let pressed = tokio::time::Instant::now();
    tablet.press().await.unwrap();
    assert!(
        mandarin
            .next_offer(Duration::from_millis(1500))
            .await
            .is_none(),
        "nobody but a Cantonese speaker during the first step"
    );
    let offer = mandarin
        .next_offer(WAIT)
        .await
        .expect("anyone after the step's 2 s");
    assert!(pressed.elapsed() >= Duration::from_secs(2));
    let call = node
        .store
        .call(Uuid::parse_str(&offer.call_id).unwrap())
        .await
        .unwrap();
    assert_eq!(call.state, "offered");
    tablet.close().await;
}

#[tokio::test]
async fn an_operator_who_misses_two_offers_is_paused_until_back() {
    let node = TestNode::start(NodeOptions {
        ring_timeout: Duration::from_secs(1),
        ..NodeOptions::default()
    })
    .await;
    let mut sleepy = node.available_operator("sleepy", "Sleepy").await;
    let (_resident, config) = node.tablet_config("潘阿姨", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.press().await.unwrap();
    // Two offers ring out unanswered.
    let mut paused = false;
    let mut n_offers = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !paused && tokio::time::Instant::now() < deadline {
        match sleepy.next_event(WAIT).await {
            Some(Event::Offer(_)) => n_offers += 1,
            // (The operator's own change to available is announced too.)
            Some(Event::StatusChanged(change))
                if change.status == OperatorStatus::Paused as i32 =>
            {
                assert!(change.reason.contains("not answered"), "{}", change.reason);
                paused = true;
            }
            _ => {}
        }
    }
    assert!(paused, "paused after missed offers");
    assert_eq!(n_offers, 2);
    assert!(
        sleepy.next_offer(Duration::from_secs(2)).await.is_none(),
        "no offers while paused"
    );
    // Back: offers resume.
    sleepy
        .client
        .set_status_because(OperatorStatus::Available, "back from the kitchen")
        .await
        .unwrap();
    assert!(
        sleepy.next_offer(WAIT).await.is_some(),
        "offers again once available"
    );
    tablet.close().await;
}

#[tokio::test]
async fn an_emergency_rings_everyone_and_the_first_acceptance_withdraws_the_rest() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut first = node.available_operator("first", "First").await;
    let mut second = node.available_operator("second", "Second").await;
    let mut third = node.available_operator("third", "Third").await;
    let (_resident, config) = node.tablet_config("王爷爷", TransportKind::WebSocket).await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    let alarm_id = tablet.long_press().await.unwrap();
    let offer_1 = first.next_offer(WAIT).await.expect("first rings");
    let offer_2 = second.next_offer(WAIT).await.expect("second rings");
    let offer_3 = third.next_offer(WAIT).await.expect("third rings");
    assert_eq!(offer_1.call_id, offer_2.call_id);
    assert_eq!(offer_2.call_id, offer_3.call_id);
    assert_eq!(offer_1.kind, CallKind::Emergency as i32);
    second
        .client
        .accept(&offer_2.offer_id)
        .await
        .expect("the first acceptance wins");
    for (console, offer) in [(&mut first, &offer_1), (&mut third, &offer_3)] {
        match console.next_event(WAIT).await {
            Some(Event::OfferWithdrawn(withdrawn)) => {
                assert_eq!(withdrawn.offer_id, offer.offer_id);
                assert_eq!(withdrawn.reason, "taken");
            }
            other => panic!("expected the offer to be withdrawn, got {other:?}"),
        }
        let late = console
            .client
            .accept(&offer.offer_id)
            .await
            .expect_err("too late");
        assert_eq!(late.code(), tonic::Code::FailedPrecondition);
    }
    let answered = tablet
        .wait_for_call(&format!("alarm:{alarm_id}"), CallState::Answered, WAIT)
        .await
        .unwrap();
    assert_eq!(answered.operator_display_name, "Second");
    tablet.close().await;
}

#[tokio::test]
async fn a_senior_who_hangs_up_before_an_answer_is_called_back() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (_resident, config) = node.tablet_config("黄婆婆", TransportKind::WebSocket).await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    let request_id = tablet.press().await.unwrap();
    tablet.cancel(&request_id).await.unwrap();
    tablet
        .wait_for_call(&request_id, CallState::Abandoned, WAIT)
        .await
        .unwrap();

    let mut console = node.available_operator("callback", "回访员").await;
    let offer = console
        .next_offer(WAIT)
        .await
        .expect("the call-back is offered");
    assert_eq!(offer.kind, CallKind::Callback as i32);
    assert_eq!(offer.queue_id, "callbacks");
    let accepted = console.client.accept(&offer.offer_id).await.unwrap();
    let callback = node
        .store
        .call(Uuid::parse_str(&accepted.call_id).unwrap())
        .await
        .unwrap();
    assert!(callback.request_id.starts_with("callback:"));
    // The operator places the call back to the tablet.
    let answered = tablet
        .wait_for_call(&callback.request_id, CallState::Answered, WAIT)
        .await
        .unwrap();
    assert_eq!(answered.operator_display_name, "回访员");
    console
        .client
        .end_call(&accepted.call_id, Disposition::Companionship, "")
        .await
        .unwrap();
    tablet.close().await;
}

#[tokio::test]
async fn a_declined_offer_goes_to_someone_else_at_once() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut busy = node.available_operator("busy", "Busy").await;
    let mut free = node.available_operator("free", "Free").await;
    let (_resident, config) = node.tablet_config("李伯", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.press().await.unwrap();
    let offer = busy.next_offer(WAIT).await.unwrap();
    busy.client.decline(&offer.offer_id).await.unwrap();
    let next = free
        .next_offer(Duration::from_secs(3))
        .await
        .expect("re-offered without waiting for the ring timeout");
    assert_eq!(next.call_id, offer.call_id);
    let again = busy
        .client
        .decline(&offer.offer_id)
        .await
        .expect_err("declining twice");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    tablet.close().await;
}

#[tokio::test]
async fn a_call_can_be_transferred_to_an_operator_or_a_queue() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut first = node.available_operator("first", "First").await;
    let (_resident, config) = node.tablet_config("陈奶奶", TransportKind::WebSocket).await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    let request_id = tablet.press().await.unwrap();
    let offer = first.next_offer(WAIT).await.unwrap();
    let accepted = first.client.accept(&offer.offer_id).await.unwrap();

    // To a missing operator: a clear error, and the call stays with the first operator.
    let missing = first
        .client
        .transfer(
            &accepted.call_id,
            Target::OperatorUsername("nobody".to_owned()),
        )
        .await
        .expect_err("no such operator");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let missing_queue = first
        .client
        .transfer(&accepted.call_id, Target::QueueId("nowhere".to_owned()))
        .await
        .expect_err("no such queue");
    assert_eq!(missing_queue.code(), tonic::Code::FailedPrecondition);

    let mut nurse = node.available_operator("nurse", "Nurse").await;
    first
        .client
        .transfer(
            &accepted.call_id,
            Target::OperatorUsername("nurse".to_owned()),
        )
        .await
        .unwrap();
    let transferred = nurse
        .next_offer(WAIT)
        .await
        .expect("the nurse is offered the call");
    assert_eq!(transferred.call_id, accepted.call_id);
    nurse.client.accept(&transferred.offer_id).await.unwrap();
    let answered = tablet
        .wait_for_call(&request_id, CallState::Answered, WAIT)
        .await;
    assert!(answered.is_ok());

    // The nurse sends it to a queue; the first operator, free again, picks it up.
    nurse
        .client
        .transfer(&accepted.call_id, Target::QueueId("calls".to_owned()))
        .await
        .unwrap();
    let back = first
        .next_offer(WAIT)
        .await
        .expect("offered from the queue");
    assert_eq!(back.call_id, accepted.call_id);
    first.client.accept(&back.offer_id).await.unwrap();
    first
        .client
        .end_call(&accepted.call_id, Disposition::HealthConcern, "")
        .await
        .unwrap();
    let kinds: Vec<String> = node
        .store
        .call_events(Uuid::parse_str(&accepted.call_id).unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.kind)
        .filter(|kind| kind.starts_with("call."))
        .collect();
    assert_eq!(
        kinds,
        [
            "call.created",
            "call.answered",
            "call.transferred",
            "call.answered_after_transfer",
            "call.transferred",
            "call.answered_after_transfer",
            "call.ended"
        ]
    );
    tablet.close().await;
}

#[tokio::test]
async fn accepting_someone_elses_offer_or_twice_is_refused() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut owner = node.available_operator("owner", "Owner").await;
    let (_resident, config) = node.tablet_config("潘阿姨", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.press().await.unwrap();
    let offer = owner.next_offer(WAIT).await.unwrap();
    node.operator_account("thief", "Thief").await;
    let mut thief = node.sign_in("thief").await;
    let stolen = thief.accept(&offer.offer_id).await.expect_err("not yours");
    assert_eq!(stolen.code(), tonic::Code::PermissionDenied);
    owner.client.accept(&offer.offer_id).await.unwrap();
    let twice = owner
        .client
        .accept(&offer.offer_id)
        .await
        .expect_err("accepting twice");
    assert_eq!(twice.code(), tonic::Code::FailedPrecondition);
    assert!(twice.message().contains("accepted"), "{}", twice.message());
    tablet.close().await;
}

#[tokio::test]
async fn an_invalid_rule_set_is_refused_whole_and_the_old_one_stays() {
    let node = TestNode::start(NodeOptions::default()).await;
    node.store
        .load_routing_rules(FAST_RULES, "test")
        .await
        .unwrap();
    let before = node.store.routing_rules().await.unwrap();
    let missing_skill = FAST_RULES.replace(
        r#"require = ["dialect:{dialect}"]"#,
        r#"require = ["sign-language"]"#,
    );
    let error = node
        .store
        .load_routing_rules(&missing_skill, "test")
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("unknown skill 'sign-language'"),
        "{error}"
    );
    let missing_queue = FAST_RULES.replace(
        "ring_all = true",
        "ring_all = true\nmax_wait_secs = 10\noverflow_to = \"nowhere\"",
    );
    let error = node
        .store
        .load_routing_rules(&missing_queue, "test")
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("unknown queue 'nowhere'"),
        "{error}"
    );
    let error = node
        .store
        .load_routing_rules("this is not toml [", "test")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not valid"), "{error}");
    assert_eq!(
        node.store.routing_rules().await.unwrap(),
        before,
        "the rules in force did not change"
    );

    let error = node
        .store
        .set_operator_skills("nobody", &["nurse".to_owned()])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not found"), "{error}");
    node.operator_account("someone", "Someone").await;
    let error = node
        .store
        .set_operator_skills("someone", &["juggling".to_owned()])
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("unknown skill 'juggling'"),
        "{error}"
    );
}

#[tokio::test]
async fn supervisors_see_the_queue_and_others_may_not() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (_resident, config) = node.tablet_config("潘阿姨", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.press().await.unwrap();
    node.operator_account("boss", "Boss").await;
    node.store
        .set_operator_skills("boss", &["supervisor".to_owned()])
        .await
        .unwrap();
    let mut boss = node.sign_in("boss").await;
    let status = boss.queue_status().await.unwrap();
    assert_eq!(status.waiting.len(), 1);
    assert_eq!(status.waiting[0].resident_name, "潘阿姨");
    let calls = status
        .queues
        .iter()
        .find(|queue| queue.queue_id == "calls")
        .unwrap();
    assert_eq!(calls.waiting, 1);
    node.operator_account("clerk", "Clerk").await;
    let mut clerk = node.sign_in("clerk").await;
    assert_eq!(
        clerk.queue_status().await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        clerk.statistics(0, 0).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    let statistics = boss.statistics(0, 0).await.unwrap();
    assert_eq!(statistics.offered, 1);
    assert_eq!(statistics.short_abandon_threshold_secs, 15);
    let reversed = boss.statistics(2_000, 1_000).await.unwrap_err();
    assert_eq!(reversed.code(), tonic::Code::InvalidArgument);
    tablet.close().await;
}

#[tokio::test]
async fn an_item_that_waits_too_long_overflows_and_the_supervisors_are_alerted() {
    let node = TestNode::start(NodeOptions::default()).await;
    // Calls need a nurse; after 1 s they overflow to a queue anyone may take.
    let rules = FAST_RULES
        .replace(
            "[[queues]]\nid = \"calls\"\nkinds = [\"call\"]\nsteps = [{ after_secs = 0, require = [\"dialect:{dialect}\"] }, { after_secs = 2 }]",
            "[[queues]]\nid = \"calls\"\nkinds = [\"call\"]\nmax_wait_secs = 1\noverflow_to = \"overflow\"\nsteps = [{ after_secs = 0, require = [\"nurse\"] }]\n\n[[queues]]\nid = \"overflow\"\nsteps = [{ after_secs = 0 }]",
        );
    assert!(
        rules.contains("overflow_to"),
        "the test's rule edit applied"
    );
    node.store.load_routing_rules(&rules, "test").await.unwrap();
    let mut boss = node.available_operator("boss", "Boss").await;
    node.store
        .set_operator_skills("boss", &["supervisor".to_owned()])
        .await
        .unwrap();
    boss.client.set_status(OperatorStatus::Away).await.unwrap();
    // Resubscribe so the console knows it is a supervisor's.
    boss.events = boss.client.subscribe().await.unwrap();
    let mut watcher = boss.client.watch_queues().await.unwrap();
    let mut clerk = node.available_operator("clerk", "Clerk").await;
    let (_resident, config) = node.tablet_config("潘阿姨", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.press().await.unwrap();

    let snapshot = tokio::time::timeout(WAIT, watcher.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(snapshot.last_24_hours.is_some());
    let offer = clerk
        .next_offer(WAIT)
        .await
        .expect("after overflowing, the clerk may take it");
    assert_eq!(offer.queue_id, "overflow");
    let alert = loop {
        match boss.next_event(WAIT).await {
            Some(Event::Alert(alert)) => break alert,
            Some(_) => continue,
            None => panic!("the supervisor was not alerted"),
        }
    };
    assert_eq!(alert.call_id, offer.call_id);
    assert!(
        alert.reason.contains("overflowed to overflow"),
        "{}",
        alert.reason
    );
    let kinds: Vec<String> = node
        .store
        .call_events(Uuid::parse_str(&offer.call_id).unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.kind)
        .collect();
    assert!(
        kinds.contains(&"call.overflowed".to_owned())
            && kinds.contains(&"supervisor.alert".to_owned()),
        "{kinds:?}"
    );
    tablet.close().await;
}

#[tokio::test]
async fn after_a_call_the_operator_wraps_up_before_the_next_offer() {
    let node = TestNode::start(NodeOptions::default()).await;
    node.store
        .load_routing_rules(
            &FAST_RULES.replace("wrap_up_secs = 0", "wrap_up_secs = 2"),
            "test",
        )
        .await
        .unwrap();
    let mut console = node.available_operator("wrap", "Wrap").await;
    let (_resident, config) = node.tablet_config("李伯", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.press().await.unwrap();
    let offer = console.next_offer(WAIT).await.unwrap();
    let accepted = console.client.accept(&offer.offer_id).await.unwrap();
    tablet.press().await.unwrap();
    console
        .client
        .end_call(&accepted.call_id, Disposition::Information, "")
        .await
        .unwrap();
    let ended = tokio::time::Instant::now();
    let operator_id = Uuid::parse_str(&console.client.operator_id).unwrap();
    assert_eq!(
        node.store.operator_status(operator_id).await.unwrap(),
        carebell_domain::OperatorStatus::WrapUp
    );
    let next = console
        .next_offer(WAIT)
        .await
        .expect("offered again after wrap-up");
    assert!(
        ended.elapsed() >= Duration::from_millis(1500),
        "no offer during wrap-up ({:?})",
        ended.elapsed()
    );
    assert_ne!(next.call_id, offer.call_id);
    tablet.close().await;
}

#[tokio::test]
async fn a_low_battery_alarm_is_served_after_an_emergency_and_before_a_call() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (_resident, config) = node.tablet_config("王爷爷", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.press().await.unwrap();
    let alarm = |id: &str, kind: carebell_proto::device::v1::AlarmKind| {
        carebell_proto::device::v1::envelope::Body::Alarm(carebell_proto::device::v1::Alarm {
            alarm_id: id.to_owned(),
            kind: kind as i32,
            raised_at_ms: 0,
            detail: String::new(),
        })
    };
    tablet
        .send(alarm(
            "battery-1",
            carebell_proto::device::v1::AlarmKind::LowBattery,
        ))
        .await
        .unwrap();
    tablet
        .send(alarm("fall-1", carebell_proto::device::v1::AlarmKind::Fall))
        .await
        .unwrap();
    let mut console = node.available_operator("solo", "Solo").await;
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let offer = console.next_offer(WAIT).await.expect("an offer");
        kinds.push(CallKind::try_from(offer.kind).unwrap());
        let accepted = console.client.accept(&offer.offer_id).await.unwrap();
        console
            .client
            .end_call(&accepted.call_id, Disposition::Information, "")
            .await
            .unwrap();
    }
    assert_eq!(
        kinds,
        [CallKind::Emergency, CallKind::Technical, CallKind::Call]
    );
    tablet.close().await;
}

#[tokio::test]
async fn one_operator_going_away_leaves_an_emergency_ringing_at_the_others() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut stays = node.available_operator("stays", "Stays").await;
    let mut leaves = node.available_operator("leaves", "Leaves").await;
    let (_resident, config) = node.tablet_config("陈奶奶", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.long_press().await.unwrap();
    let offer = stays.next_offer(WAIT).await.expect("rings at the first");
    leaves.next_offer(WAIT).await.expect("rings at the second");
    leaves
        .client
        .set_status(OperatorStatus::Away)
        .await
        .unwrap();
    assert!(
        stays.next_event(Duration::from_millis(500)).await.is_none(),
        "the other operator's offer keeps ringing"
    );
    stays
        .client
        .accept(&offer.offer_id)
        .await
        .expect("still open");
    tablet.close().await;
}

#[tokio::test]
async fn three_simultaneous_accepts_of_one_sos_have_exactly_one_winner() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut a = node.available_operator("a", "A").await;
    let mut b = node.available_operator("b", "B").await;
    let mut c = node.available_operator("c", "C").await;
    let (_resident, config) = node.tablet_config("潘阿姨", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.long_press().await.unwrap();
    let (offer_a, offer_b, offer_c) = (
        a.next_offer(WAIT).await.unwrap(),
        b.next_offer(WAIT).await.unwrap(),
        c.next_offer(WAIT).await.unwrap(),
    );
    let (client_a, client_b, client_c) = (&mut a.client, &mut b.client, &mut c.client);
    let (result_a, result_b, result_c) = tokio::join!(
        client_a.accept(&offer_a.offer_id),
        client_b.accept(&offer_b.offer_id),
        client_c.accept(&offer_c.offer_id)
    );
    let results = [result_a, result_b, result_c];
    let winners = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(winners, 1, "{results:?}");
    for result in results.iter().filter_map(|result| result.as_ref().err()) {
        assert_eq!(result.code(), tonic::Code::FailedPrecondition);
    }
    let call_id = Uuid::parse_str(&offer_a.call_id).unwrap();
    let states: Vec<String> = node
        .store
        .call_offers(call_id)
        .await
        .unwrap()
        .into_iter()
        .map(|offer| offer.state)
        .collect();
    assert_eq!(
        states.iter().filter(|state| *state == "accepted").count(),
        1
    );
    assert_eq!(
        states.iter().filter(|state| *state == "withdrawn").count(),
        2,
        "{states:?}"
    );
    tablet.close().await;
}

#[tokio::test]
async fn a_supervisor_reclaims_a_call_whose_operator_is_gone() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut gone = node.available_operator("gone", "Gone").await;
    let (_resident, config) = node.tablet_config("潘阿姨", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.press().await.unwrap();
    let offer = gone.next_offer(WAIT).await.unwrap();
    let accepted = gone.client.accept(&offer.offer_id).await.unwrap();
    drop(gone); // the console vanishes with the call in hand
    node.operator_account("boss", "Boss").await;
    node.store
        .set_operator_skills("boss", &["supervisor".to_owned()])
        .await
        .unwrap();
    let mut boss = node.sign_in("boss").await;
    node.operator_account("clerk", "Clerk").await;
    let mut clerk = node.sign_in("clerk").await;
    assert_eq!(
        clerk
            .reclaim_call(&accepted.call_id)
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    boss.reclaim_call(&accepted.call_id).await.unwrap();
    let mut next = node.available_operator("next", "Next").await;
    let again = next
        .next_offer(WAIT)
        .await
        .expect("offered again from its queue");
    assert_eq!(again.call_id, accepted.call_id);
    let gone_id = node.store.operator_id("gone").await.unwrap().unwrap();
    assert_eq!(
        node.store.operator_status(gone_id).await.unwrap(),
        carebell_domain::OperatorStatus::Offline
    );
    let missing = boss
        .reclaim_call(&Uuid::new_v4().to_string())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    tablet.close().await;
}

#[tokio::test]
async fn one_sweep_acts_on_many_due_items_each_as_its_rule_says() {
    use carebell_store::{Heard, NewAlarm, Notification};
    let store = carebell_tests::fresh_store().await;
    // Emergencies overflow after 1 s; technical items have nowhere to go and are re-alerted.
    let rules = FAST_RULES
        .replace(
            "id = \"emergency\"\nkinds = [\"emergency\"]\nring_all = true\n",
            "id = \"emergency\"\nkinds = [\"emergency\"]\nring_all = true\nmax_wait_secs = 1\noverflow_to = \"escalated\"\n",
        )
        .replace(
            "id = \"technical\"\nkinds = [\"technical\"]\n",
            "id = \"technical\"\nkinds = [\"technical\"]\nmax_wait_secs = 1\n",
        )
        + "\n[[queues]]\nid = \"escalated\"\nsteps = [{ after_secs = 0 }]\n";
    assert!(rules.matches("max_wait_secs = 1").count() == 2);
    store.load_routing_rules(&rules, "test").await.unwrap();
    let devices = carebell_tests::register_tablets(&store, "sweep", "tab-sweep", 6).await;
    let alarms: Vec<NewAlarm> = devices
        .iter()
        .enumerate()
        .map(|(index, device)| NewAlarm {
            device_id: device.clone(),
            alarm_id: format!("a{index}"),
            kind: if index % 2 == 0 {
                "ALARM_KIND_SOS"
            } else {
                "ALARM_KIND_LOW_BATTERY"
            }
            .to_owned(),
            raised_at: None,
            detail: String::new(),
            raise: Some(if index % 2 == 0 {
                CallKindDomain::Emergency
            } else {
                CallKindDomain::Technical
            }),
        })
        .collect();
    let calls: Vec<Uuid> = store
        .record_alarms(&alarms)
        .await
        .into_iter()
        .map(|outcome| outcome.unwrap().call_id.unwrap())
        .collect();
    // Nothing is due yet.
    assert_eq!(store.sweep_deadlines(100).await.unwrap(), 0);
    // All six have waited 5 s and are due.
    sqlx::query(
        "UPDATE calls SET queued_at = clock_timestamp() - interval '5 seconds',
                          deadline_at = clock_timestamp() - interval '1 second'",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let mut listener = store.listen().await.unwrap();
    // A limit below the number due: the rest wait for the next sweep.
    assert_eq!(store.sweep_deadlines(4).await.unwrap(), 4);
    assert_eq!(store.sweep_deadlines(100).await.unwrap(), 2);
    assert_eq!(store.sweep_deadlines(100).await.unwrap(), 0);

    let mut alerted = BTreeSet::new();
    while let Ok(Ok(Heard::Notification(notification))) =
        tokio::time::timeout(Duration::from_millis(500), listener.recv()).await
    {
        if let Notification::SupervisorAlert { call_id, .. } = notification {
            alerted.insert(call_id);
        }
    }
    assert_eq!(alerted, calls.iter().copied().collect::<BTreeSet<_>>());
    for (index, call) in calls.iter().enumerate() {
        let (queue, overflowed, deadline_ahead): (String, bool, bool) = sqlx::query_as(
            "SELECT queue_id, overflowed, deadline_at > clock_timestamp() FROM calls WHERE id = $1",
        )
        .bind(call)
        .fetch_one(store.pool())
        .await
        .unwrap();
        let events: Vec<(String, serde_json::Value)> = store
            .call_events(*call)
            .await
            .unwrap()
            .into_iter()
            .filter(|event| event.kind == "call.overflowed" || event.kind == "supervisor.alert")
            .map(|event| (event.kind, event.detail))
            .collect();
        assert!(deadline_ahead, "call {index}: its next deadline is set");
        if index % 2 == 0 {
            assert_eq!(
                (queue.as_str(), overflowed),
                ("escalated", true),
                "call {index}"
            );
            assert_eq!(events.len(), 2, "call {index}: {events:?}");
            assert_eq!(events[0].0, "call.overflowed");
            assert_eq!(events[0].1["from"], "emergency");
            assert_eq!(events[0].1["to"], "escalated");
            assert_eq!(events[1].0, "supervisor.alert");
            assert!(
                events[1].1["reason"]
                    .as_str()
                    .is_some_and(|reason| reason.ends_with("overflowed to escalated")),
                "{events:?}"
            );
        } else {
            assert_eq!(
                (queue.as_str(), overflowed),
                ("technical", false),
                "call {index}"
            );
            assert_eq!(events.len(), 1, "call {index}: {events:?}");
            assert_eq!(events[0].0, "supervisor.alert");
            assert!(
                events[0].1["reason"]
                    .as_str()
                    .is_some_and(|reason| reason.starts_with("waiting 5 s in technical")
                        || reason.starts_with("waiting 6 s in technical")),
                "{events:?}"
            );
        }
    }
}
