//! What the browser pages rely on, over the gRPC APIs: family members see only their own
//! relatives and can send them a message that appears on the tablet; voice signalling is relayed
//! only for an answered call of the operator and the tablet concerned, within its limits.

use std::time::Duration;

use carebell_proto::console::v1::RtcSignal;
use carebell_proto::device::v1::envelope::Body;
use carebell_proto::family::v1::family_client::FamilyClient;
use carebell_proto::family::v1::{
    RelativeRequest, RelativesRequest, SendMessageRequest, SignInRequest,
};
use carebell_tests::{NodeOptions, TestNode, PASSWORD};
use firmware_sim::{Tablet, TabletEvent, TransportKind};
use tonic::transport::Channel;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

async fn family_member(node: &TestNode, username: &str) -> (FamilyClient<Channel>, String) {
    let channel = carebell_server::console_client::channel(&node.grpc_url, Some(&node.ca_pem))
        .await
        .unwrap();
    let mut client = FamilyClient::new(channel);
    let token = client
        .sign_in(SignInRequest {
            username: username.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    (client, token)
}

fn authorized<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_family_member_sees_only_their_relative_and_their_message_reaches_the_tablet() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (mother, config) = node.tablet_config("林妈妈", TransportKind::WebSocket).await;
    let stranger = node.resident("陌生人").await;
    let account = node
        .family_contact(mother, "lin-son", "林先生", "儿子")
        .await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    let (mut client, token) = family_member(&node, "lin-son").await;

    let relatives = client
        .relatives(authorized(&token, RelativesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .relatives;
    assert_eq!(relatives.len(), 1);
    assert_eq!(relatives[0].name, "林妈妈");

    let refused = client
        .relative(authorized(
            &token,
            RelativeRequest {
                resident_id: stranger.to_string(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(!refused.message().contains("陌生人"));
    let refused = client
        .send_message(authorized(
            &token,
            SendMessageRequest {
                resident_id: stranger.to_string(),
                text: "你好".to_owned(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = client
        .send_message(authorized(
            &token,
            SendMessageRequest {
                resident_id: mother.to_string(),
                text: "长".repeat(201),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    client
        .send_message(authorized(
            &token,
            SendMessageRequest {
                resident_id: mother.to_string(),
                text: "妈，我晚上七点到".to_owned(),
            },
        ))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let notice = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tablet.next_event(left).await {
            Some(TabletEvent::Notice(notice)) => break notice,
            Some(_) => continue,
            None => panic!("the message never reached the tablet"),
        }
    };
    assert_eq!(notice.text, "妈，我晚上七点到");
    assert_eq!(notice.from, "林先生");
    // The family's reads of their relative are audited; the refused look at a stranger is not
    // a read.
    let audited: Vec<(String, uuid::Uuid)> =
        sqlx::query_as("SELECT action, resident_id FROM audit_log WHERE actor = $1 ORDER BY id")
            .bind(format!("family:{account}"))
            .fetch_all(node.store.pool())
            .await
            .unwrap();
    assert!(!audited.is_empty());
    assert!(audited
        .iter()
        .all(|(action, resident)| action == "family.read_relative" && *resident == mother));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_signals_pass_only_for_an_answered_call_of_the_operator_and_the_tablet() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (_, config) = node.tablet_config("周伯", TransportKind::WebSocket).await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    let mut console = node.available_operator("voice-op", "小周").await;
    let mut other = node.available_operator("voice-other", "小吴").await;
    other
        .client
        .set_status(carebell_proto::console::v1::OperatorStatus::Away)
        .await
        .unwrap();

    tablet.press().await.unwrap();
    let offer = console.next_offer(WAIT).await.expect("offered");
    let signal = |kind: &str, payload: &str| RtcSignal {
        call_id: offer.call_id.clone(),
        kind: kind.to_owned(),
        payload: payload.to_owned(),
    };
    // Not answered yet: refused.
    let refused = console
        .client
        .send_rtc_signal(signal("offer", "v=0"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    console.client.accept(&offer.offer_id).await.unwrap();

    // Another operator, an unknown kind, an oversized payload: refused.
    let refused = other
        .client
        .send_rtc_signal(signal("offer", "v=0"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let refused = console
        .client
        .send_rtc_signal(signal("teleport", ""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let refused = console
        .client
        .send_rtc_signal(signal("offer", &"a".repeat(6001)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    // The operator's offer reaches the tablet; the tablet's answer reaches the console.
    console
        .client
        .send_rtc_signal(signal("offer", "v=0 offer"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let offered = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tablet.next_event(left).await {
            Some(TabletEvent::RtcSignal(signal)) => break signal,
            Some(_) => continue,
            None => panic!("the console's offer never reached the tablet"),
        }
    };
    assert_eq!(
        (offered.kind.as_str(), offered.payload.as_str()),
        ("offer", "v=0 offer")
    );
    tablet
        .send(Body::RtcSignal(carebell_proto::device::v1::RtcSignal {
            call_id: offer.call_id.clone(),
            kind: "answer".to_owned(),
            payload: "v=0 answer".to_owned(),
        }))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let heard = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match console.next_event(left).await {
            Some(carebell_proto::console::v1::console_event::Event::RtcSignal(signal)) => {
                break signal
            }
            Some(_) => continue,
            None => panic!("the tablet's answer never reached the console"),
        }
    };
    assert_eq!(
        (heard.kind.as_str(), heard.payload.as_str()),
        ("answer", "v=0 answer")
    );
    node.stop().await;
}
