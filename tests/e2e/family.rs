//! The family cascade and the family API: parallel contacts at once, ordered contacts in turn
//! until one acknowledges, supervisors alerted when nobody does; each family sees only its own.

use std::time::Duration;

use carebell_proto::family::v1::family_client::FamilyClient;
use carebell_proto::family::v1::{
    AcknowledgeRequest, Alert, AlertsRequest, HistoryRequest, SignInRequest,
};
use carebell_store::NewContact;
use carebell_tests::{NodeOptions, TestNode, PASSWORD};
use firmware_sim::{Tablet, TransportKind};
use tonic::transport::Channel;
use uuid::Uuid;

pub(crate) struct FamilyMember {
    client: FamilyClient<Channel>,
    token: String,
}

impl FamilyMember {
    pub(crate) async fn sign_in(node: &TestNode, username: &str) -> Self {
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
        Self { client, token }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        request
    }

    pub(crate) async fn next_alert(&mut self, timeout: Duration) -> Option<Alert> {
        let request = self.request(AlertsRequest { after_id: 0 });
        let mut stream = self.client.alerts(request).await.unwrap().into_inner();
        tokio::time::timeout(timeout, stream.message())
            .await
            .ok()?
            .ok()?
    }

    pub(crate) async fn acknowledge(&mut self, alert_id: i64) -> Result<(), tonic::Status> {
        let request = self.request(AcknowledgeRequest { alert_id });
        self.client.acknowledge(request).await.map(|_| ())
    }

    async fn history(&mut self) -> Vec<Alert> {
        let request = self.request(HistoryRequest {});
        self.client
            .history(request)
            .await
            .unwrap()
            .into_inner()
            .alerts
    }
}

async fn family_account(node: &TestNode, username: &str) -> Uuid {
    let hash = carebell_gateway::console::hash_password(PASSWORD).unwrap();
    node.store
        .add_family_account(username, username, &hash)
        .await
        .unwrap()
}

async fn call_kinds(node: &TestNode, call_id: Uuid) -> Vec<String> {
    node.store
        .call_events(call_id)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.kind)
        .filter(|kind| kind.starts_with("family.") || kind == "supervisor.alert")
        .collect()
}

#[tokio::test]
async fn the_cascade_asks_in_turn_until_one_acknowledges_and_families_see_only_their_own() {
    let node = TestNode::start(NodeOptions::default()).await;
    let rules = carebell_domain::routing::DEFAULT_RULES
        .replace("family_after_secs = 60", "family_after_secs = 1")
        .replace("cascade_step_secs = 120", "cascade_step_secs = 1");
    node.store.load_routing_rules(&rules, "test").await.unwrap();
    // Resident X: a station in parallel, then son, then daughter. Resident Y: one neighbour.
    let (resident_x, config_x) = node.tablet_config("潘阿姨", TransportKind::WebSocket).await;
    let (resident_y, config_y) = node.tablet_config("李伯", TransportKind::WebSocket).await;
    let son = family_account(&node, "son").await;
    let daughter = family_account(&node, "daughter").await;
    let neighbour = family_account(&node, "neighbour").await;
    let contact = |resident_id, name: &str, position, account| NewContact {
        resident_id,
        name: name.to_owned(),
        position,
        family_account_id: account,
        ..NewContact::default()
    };
    node.store
        .add_contact(&contact(resident_x, "社区站", None, None))
        .await
        .unwrap();
    node.store
        .add_contact(&contact(resident_x, "儿子", Some(1), Some(son)))
        .await
        .unwrap();
    node.store
        .add_contact(&contact(resident_x, "女儿", Some(2), Some(daughter)))
        .await
        .unwrap();
    node.store
        .add_contact(&contact(resident_y, "邻居", Some(1), Some(neighbour)))
        .await
        .unwrap();
    let duplicate = node
        .store
        .add_contact(&contact(resident_x, "又一个", Some(1), None))
        .await
        .unwrap_err();
    assert!(duplicate.to_string().contains("position"), "{duplicate}");

    // Nobody answers the SOSes (the only operator is away, but watching the console).
    let mut watcher = node.available_operator("watcher", "Watcher").await;
    watcher
        .client
        .set_status(carebell_proto::console::v1::OperatorStatus::Away)
        .await
        .unwrap();
    let tablet_x = Tablet::connect(&config_x).await.unwrap();
    let tablet_y = Tablet::connect(&config_y).await.unwrap();
    tablet_x.long_press().await.unwrap();
    tablet_y.long_press().await.unwrap();

    let mut son_member = FamilyMember::sign_in(&node, "son").await;
    let son_alert = son_member
        .next_alert(Duration::from_secs(10))
        .await
        .expect("the son is asked first");
    assert_eq!(son_alert.resident_name, "潘阿姨");
    // The son does not answer in time; the daughter is asked and answers.
    let mut daughter_member = FamilyMember::sign_in(&node, "daughter").await;
    let daughter_alert = daughter_member
        .next_alert(Duration::from_secs(10))
        .await
        .expect("then the daughter");
    assert_eq!(daughter_alert.call_id, son_alert.call_id);
    daughter_member
        .acknowledge(daughter_alert.alert_id)
        .await
        .expect("the daughter acknowledges");
    let late = son_member
        .acknowledge(son_alert.alert_id)
        .await
        .unwrap_err();
    assert_eq!(
        late.code(),
        tonic::Code::FailedPrecondition,
        "the son's turn has passed"
    );

    // One family cannot see or acknowledge another's alerts.
    let mut neighbour_member = FamilyMember::sign_in(&node, "neighbour").await;
    let neighbours = neighbour_member.history().await;
    assert!(
        neighbours.iter().all(|alert| alert.resident_name == "李伯"),
        "{neighbours:?}"
    );
    let stolen = neighbour_member
        .acknowledge(daughter_alert.alert_id)
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), tonic::Code::NotFound);
    assert!(son_member
        .history()
        .await
        .iter()
        .all(|alert| alert.resident_name == "潘阿姨"));

    // Every console, not only the supervisors', shows the unanswered emergency.
    let shown = loop {
        match watcher.next_event(Duration::from_secs(5)).await {
            Some(carebell_proto::console::v1::console_event::Event::Alert(alert)) => break alert,
            Some(_) => continue,
            None => panic!("the console was not shown the unanswered emergency"),
        }
    };
    assert!(shown.reason.contains("unanswered"), "{}", shown.reason);

    let call_x = Uuid::parse_str(&son_alert.call_id).unwrap();
    assert_eq!(
        call_kinds(&node, call_x).await,
        [
            "family.notified",
            "family.cascade_started",
            "family.notified",
            "family.expired",
            "family.notified",
            "family.acknowledged"
        ]
    );
    // Y's only contact never answers: the supervisors are alerted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let call_y: Uuid = sqlx::query_scalar("SELECT id FROM calls WHERE resident_id = $1")
        .bind(resident_y)
        .fetch_one(node.store.pool())
        .await
        .unwrap();
    loop {
        let kinds = call_kinds(&node, call_y).await;
        if kinds.iter().any(|kind| kind == "supervisor.alert") {
            assert!(kinds.contains(&"family.expired".to_owned()), "{kinds:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no supervisor alert: {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tablet_x.close().await;
    tablet_y.close().await;
}

#[tokio::test]
async fn a_device_offline_for_long_tells_the_family() {
    let node = TestNode::start(NodeOptions {
        heartbeat_interval: Duration::from_secs(1),
        offline_grace: Duration::from_millis(500),
        ..NodeOptions::default()
    })
    .await;
    let rules = carebell_domain::routing::DEFAULT_RULES.replace(
        "offline_family_after_secs = 1800",
        "offline_family_after_secs = 1",
    );
    node.store.load_routing_rules(&rules, "test").await.unwrap();
    let (resident, mut config) = node.tablet_config("王爷爷", TransportKind::WebSocket).await;
    let son = family_account(&node, "son").await;
    node.store
        .add_contact(&NewContact {
            resident_id: resident,
            name: "儿子".to_owned(),
            position: Some(1),
            family_account_id: Some(son),
            ..NewContact::default()
        })
        .await
        .unwrap();
    config.heartbeat_override = Some(Duration::from_secs(3600));
    let silent = Tablet::connect(&config).await.unwrap();
    let mut member = FamilyMember::sign_in(&node, "son").await;
    let alert = member
        .next_alert(Duration::from_secs(15))
        .await
        .expect("the family hears the tablet is offline");
    assert_eq!(alert.kind, "technical");
    assert_eq!(alert.resident_name, "王爷爷");
    drop(silent);
}

#[tokio::test]
async fn an_emergency_unanswered_past_its_limit_escalates_and_keeps_ringing() {
    let node = TestNode::start(NodeOptions {
        ring_timeout: Duration::from_secs(30),
        ..NodeOptions::default()
    })
    .await;
    // The built-in escalation, with 1 s instead of 15 s.
    let rules = carebell_domain::routing::DEFAULT_RULES.replacen(
        "max_wait_secs = 15",
        "max_wait_secs = 1",
        1,
    );
    assert_ne!(rules, carebell_domain::routing::DEFAULT_RULES);
    node.store.load_routing_rules(&rules, "test").await.unwrap();
    let mut boss = node.available_operator("boss", "Boss").await;
    node.store
        .set_operator_skills("boss", &["supervisor".to_owned()])
        .await
        .unwrap();
    boss.client
        .set_status(carebell_proto::console::v1::OperatorStatus::Away)
        .await
        .unwrap();
    boss.events = boss.client.subscribe().await.unwrap();
    let mut ringing = node.available_operator("slow", "Slow").await;
    let (_resident, config) = node.tablet_config("陈奶奶", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config).await.unwrap();
    let created = tokio::time::Instant::now();
    tablet.long_press().await.unwrap();
    let offer = ringing
        .next_offer(Duration::from_secs(5))
        .await
        .expect("it rings");
    let alert = loop {
        match boss.next_event(Duration::from_secs(10)).await {
            Some(carebell_proto::console::v1::console_event::Event::Alert(alert)) => break alert,
            Some(_) => continue,
            None => panic!("no escalation"),
        }
    };
    assert!(created.elapsed() >= Duration::from_secs(1));
    assert!(
        alert.reason.contains("emergency_escalated"),
        "{}",
        alert.reason
    );
    // Still ringing at the same operator, who can still take it.
    ringing
        .client
        .accept(&offer.offer_id)
        .await
        .expect("the ring goes on through the escalation");
    let call_id = Uuid::parse_str(&offer.call_id).unwrap();
    let kinds: Vec<String> = node
        .store
        .call_events(call_id)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.kind)
        .collect();
    let overflowed = kinds
        .iter()
        .position(|kind| kind == "call.overflowed")
        .expect("overflowed");
    let accepted = kinds
        .iter()
        .position(|kind| kind == "offer.accepted")
        .expect("accepted");
    assert!(overflowed < accepted, "{kinds:?}");
    tablet.close().await;
}

#[tokio::test]
async fn an_operator_who_notifies_the_family_starts_the_cascade_at_once() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut nurse = node.available_operator("nurse", "Nurse").await;
    let (resident, config) = node.tablet_config("黄婆婆", TransportKind::WebSocket).await;
    let daughter = family_account(&node, "daughter").await;
    node.store
        .add_contact(&NewContact {
            resident_id: resident,
            name: "女儿".to_owned(),
            position: Some(1),
            family_account_id: Some(daughter),
            holds_keys: true,
            ..NewContact::default()
        })
        .await
        .unwrap();
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.long_press().await.unwrap();
    let offer = nurse.next_offer(Duration::from_secs(5)).await.unwrap();
    let accepted = nurse.client.accept(&offer.offer_id).await.unwrap();
    nurse
        .client
        .record_alarm_action(
            &accepted.call_id,
            carebell_proto::console::v1::AlarmAction::NotifiedFamily,
            "",
        )
        .await
        .unwrap();
    let mut member = FamilyMember::sign_in(&node, "daughter").await;
    let alert = member
        .next_alert(Duration::from_secs(5))
        .await
        .expect("told at once, not after 60 s");
    assert_eq!(alert.call_id, accepted.call_id);
    member.acknowledge(alert.alert_id).await.unwrap();
    tablet.close().await;
}

/// Emergencies that reach their family step together start their cascades in one sweep pass
/// (a few statements, whatever their number): each call's events in the order one call's
/// cascade has, each contact's notification in its right state, deliveries for the contacts
/// reached by SMS or webhook only.
#[tokio::test]
async fn emergencies_unanswered_together_start_each_cascade_in_its_own_order() {
    let node = TestNode::start(NodeOptions::default()).await;
    let rules = carebell_domain::routing::DEFAULT_RULES
        .replace("family_after_secs = 60", "family_after_secs = 1");
    node.store.load_routing_rules(&rules, "test").await.unwrap();
    // A: a parallel contact and two ordered ones, by SMS but the last; B: one parallel contact
    // on the app; C: nobody.
    let (resident_a, config_a) = node.tablet_config("周奶奶", TransportKind::WebSocket).await;
    let (resident_b, config_b) = node.tablet_config("吴爷爷", TransportKind::WebSocket).await;
    let (resident_c, config_c) = node.tablet_config("郑婆婆", TransportKind::WebSocket).await;
    let contact = |resident_id, name: &str, position, channel: &str| NewContact {
        resident_id,
        name: name.to_owned(),
        phone: "+8613800000000".to_owned(),
        position,
        channels: vec![channel.to_owned()],
        ..NewContact::default()
    };
    let station = node
        .store
        .add_contact(&contact(resident_a, "社区站", None, "sms"))
        .await
        .unwrap();
    let son = node
        .store
        .add_contact(&contact(resident_a, "儿子", Some(1), "sms"))
        .await
        .unwrap();
    let daughter = node
        .store
        .add_contact(&contact(resident_a, "女儿", Some(2), "app"))
        .await
        .unwrap();
    let neighbour = node
        .store
        .add_contact(&contact(resident_b, "邻居", None, "app"))
        .await
        .unwrap();
    // Nobody answers: no operator is on duty.
    let mut tablets = Vec::new();
    for config in [&config_a, &config_b, &config_c] {
        let tablet = Tablet::connect(config).await.unwrap();
        tablet.long_press().await.unwrap();
        tablets.push(tablet);
    }
    let call_of = |resident: Uuid| {
        let pool = node.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, Uuid>("SELECT id FROM calls WHERE resident_id = $1")
                .bind(resident)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let calls = [
        call_of(resident_a).await,
        call_of(resident_b).await,
        call_of(resident_c).await,
    ];
    let steps = |call_id: Uuid| {
        let node = &node;
        async move {
            node.store
                .call_events(call_id)
                .await
                .unwrap()
                .into_iter()
                .filter(|event| {
                    event.kind.starts_with("family.")
                        || event.kind == "supervisor.alert"
                        || event.kind == "emergency.unanswered"
                })
                .map(|event| (event.kind, event.detail))
                .collect::<Vec<_>>()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut started = 0;
        for call_id in calls {
            if steps(call_id)
                .await
                .iter()
                .any(|(kind, _)| kind == "family.cascade_started")
            {
                started += 1;
            }
        }
        if started == calls.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{started} of 3 cascades started"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kinds = |steps: &[(String, serde_json::Value)]| {
        steps
            .iter()
            .map(|(kind, _)| kind.clone())
            .collect::<Vec<_>>()
    };
    let a = steps(calls[0]).await;
    assert_eq!(
        kinds(&a),
        [
            "emergency.unanswered",
            "family.notified",
            "family.cascade_started",
            "family.notified"
        ]
    );
    assert_eq!(a[1].1["contact_id"], station.to_string());
    assert_eq!(a[1].1["parallel"], true);
    assert_eq!(a[2].1["contacts"], 3);
    assert_eq!(a[3].1["contact_id"], son.to_string(), "the first in turn");
    assert_eq!(a[3].1["parallel"], false);
    assert_eq!(
        kinds(&steps(calls[1]).await),
        [
            "emergency.unanswered",
            "family.notified",
            "family.cascade_started",
            "supervisor.alert"
        ]
    );
    assert_eq!(
        kinds(&steps(calls[2]).await),
        [
            "emergency.unanswered",
            "family.cascade_started",
            "supervisor.alert"
        ]
    );
    // Each notification's state: the parallel ones and the first in turn sent (only the one in
    // turn with a deadline), the next in turn waiting.
    let notifications: Vec<(Uuid, String, bool, bool)> = sqlx::query_as(
        "SELECT contact_id, state, sent_at IS NOT NULL, deadline_at IS NOT NULL
         FROM family_notifications WHERE call_id = ANY($1) ORDER BY id",
    )
    .bind(&calls[..])
    .fetch_all(node.store.pool())
    .await
    .unwrap();
    let state_of = |contact: Uuid| {
        notifications
            .iter()
            .find(|(id, ..)| *id == contact)
            .map(|(_, state, sent, deadline)| (state.as_str(), *sent, *deadline))
    };
    assert_eq!(notifications.len(), 4, "{notifications:?}");
    assert_eq!(state_of(station), Some(("sent", true, false)));
    assert_eq!(state_of(son), Some(("sent", true, true)));
    assert_eq!(state_of(daughter), Some(("waiting", false, false)));
    assert_eq!(state_of(neighbour), Some(("sent", true, false)));
    // Deliveries for the SMS contacts told now: the station and the son, not the daughter
    // (not yet asked) nor the neighbour (on the app).
    let delivered: Vec<String> = sqlx::query_scalar(
        "SELECT w.body->>'contact' FROM webhook_deliveries w
         JOIN family_notifications n ON n.id = w.notification_id
         WHERE n.call_id = ANY($1) ORDER BY w.notification_id",
    )
    .bind(&calls[..])
    .fetch_all(node.store.pool())
    .await
    .unwrap();
    assert_eq!(delivered, ["社区站", "儿子"]);
    for tablet in tablets {
        tablet.close().await;
    }
}
