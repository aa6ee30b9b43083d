//! Service orders and the provider network: the closed loop over the provider API, matching on
//! a hand-built map, SLA escalation, and bad input refused with nothing changed.

use std::time::Duration;

use carebell_domain::orders::{EntitlementTier, GeoPoint, NoMatch, ServicePolicy};
use carebell_proto::console::v1::console_event::Event;
use carebell_proto::console::v1::{CallKind, Disposition};
use carebell_proto::provider::v1::{OrderStatus, OrderView};
use carebell_server::provider_client::ProviderClient;
use carebell_store::{
    NewOrder, NewProvider, NewResident, ProgressReport, StatementOf, Store, StoreError,
};
use carebell_tests::{fresh_store, NodeOptions, TestNode, PASSWORD};
use firmware_sim::{Tablet, TabletConfig, TransportKind};
use tonic::Code;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

/// The senior's home on the hand-built map. 0.001° of latitude is ~111 m.
pub const HOME: (f64, f64) = (22.55, 114.25);

pub fn at(lat: f64, lon: f64) -> Option<GeoPoint> {
    Some(GeoPoint::new(lat, lon).expect("a position"))
}

/// A provider with a base and a coverage radius, offering `services` at the given prices.
pub async fn provider(
    store: &Store,
    name: &str,
    base: (f64, f64),
    radius_m: u32,
    stations: Vec<Uuid>,
    services: &[(&str, i64)],
) -> Uuid {
    let mut new = NewProvider::new(name, &format!("LIC-{}", Uuid::new_v4().simple()));
    new.location = at(base.0, base.1);
    new.radius_m = radius_m;
    new.stations = stations;
    new.services = services
        .iter()
        .map(|(code, price)| ((*code).to_owned(), Some(*price)))
        .collect();
    store.add_provider(&new).await.expect("add a provider")
}

pub async fn resident_at(
    store: &Store,
    station: Uuid,
    name: &str,
    home: Option<(f64, f64)>,
    tier: EntitlementTier,
) -> Uuid {
    let resident = store
        .add_resident(&NewResident {
            station_id: station,
            full_name: name.to_owned(),
            address: "盐田区海山街道1号".to_owned(),
            ..NewResident::default()
        })
        .await
        .expect("add a resident");
    store
        .set_resident_services(
            resident,
            None,
            home.and_then(|(lat, lon)| at(lat, lon)),
            tier,
        )
        .await
        .expect("set the resident's place and tier");
    resident
}

async fn provider_login(node: &TestNode, provider_id: Uuid, username: &str) -> ProviderClient {
    let hash = carebell_gateway::console::hash_password(PASSWORD).expect("hash");
    node.store
        .add_provider_account(provider_id, username, username, &hash)
        .await
        .expect("add a provider account");
    let channel = carebell_server::console_client::channel(&node.grpc_url, Some(&node.ca_pem))
        .await
        .expect("connect");
    ProviderClient::sign_in(channel, username, PASSWORD)
        .await
        .expect("provider sign-in")
}

async fn next_view(
    feed: &mut tonic::Streaming<OrderView>,
    order_id: &str,
    state: &str,
) -> OrderView {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let view = tokio::time::timeout_at(deadline, feed.message())
            .await
            .unwrap_or_else(|_| panic!("order {order_id} never became {state} in the feed"))
            .expect("feed failed")
            .expect("feed ended");
        if view.order_id == order_id && view.state == state {
            return view;
        }
    }
}

fn kinds(events: &[(String, serde_json::Value)]) -> Vec<&str> {
    events.iter().map(|(kind, _)| kind.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_closed_loop_over_the_provider_api_with_two_providers() {
    let node = TestNode::start(NodeOptions::default()).await;
    let store = &node.store;
    let station = node.station().await;
    let resident = resident_at(
        store,
        station,
        "李秀英",
        Some(HOME),
        EntitlementTier::Subsidised {
            subsidy_percent: 50,
        },
    )
    .await;
    store
        .top_up_card(resident, 1000, "opening balance")
        .await
        .unwrap();
    let mut tablet = Tablet::connect(&TabletConfig::new(
        node.provision(resident).await,
        TransportKind::WebSocket,
    ))
    .await
    .unwrap();

    // ~556 m and ~1,668 m north of the home, both covering 3 km; a third 16 km away.
    let near = provider(
        store,
        "近邻家政",
        (22.555, 114.25),
        3000,
        vec![],
        &[("housekeeping", 5000)],
    )
    .await;
    let far = provider(
        store,
        "远方家政",
        (22.565, 114.25),
        3000,
        vec![],
        &[("housekeeping", 6000)],
    )
    .await;
    provider(
        store,
        "城外家政",
        (22.70, 114.25),
        3000,
        vec![],
        &[("housekeeping", 4000)],
    )
    .await;
    store.add_staff(near, "李师傅", "").await.unwrap();
    store.add_staff(far, "张师傅", "").await.unwrap();
    let mut near_client = provider_login(&node, near, "near-dispatch").await;
    let mut far_client = provider_login(&node, far, "far-dispatch").await;
    let mut near_feed = near_client.feed().await.unwrap();
    let mut far_feed = far_client.feed().await.unwrap();

    // The senior presses; the operator answers and records the need from the call.
    let mut console = node.available_operator("op-orders", "王接线员").await;
    tablet.press().await.unwrap();
    let offer = console.next_offer(WAIT).await.expect("the call is offered");
    console.client.accept(&offer.offer_id).await.unwrap();
    let suggestions = console
        .client
        .suggest_providers(&resident.to_string(), "housekeeping")
        .await
        .unwrap();
    let suggested: Vec<&str> = suggestions.iter().map(|s| s.provider_id.as_str()).collect();
    assert_eq!(suggested, [near.to_string(), far.to_string()]);
    assert!(suggestions.iter().all(|s| s.in_circle));
    assert_eq!(suggestions[0].distance_m, 556);
    let created = console
        .client
        .create_order(
            &resident.to_string(),
            "housekeeping",
            &offer.call_id,
            "每周保洁",
        )
        .await
        .unwrap();
    assert_eq!(created.state, "offered");
    assert_eq!(created.offered_to, near.to_string());
    let order_id = created.order_id.clone();
    console
        .client
        .end_call(
            &offer.call_id,
            Disposition::ServiceRequest,
            "housekeeping arranged",
        )
        .await
        .unwrap();

    // The nearer provider is offered it first (without the senior's name or address) and
    // declines; the other is offered it at once and accepts with a staff member.
    let view = next_view(&mut near_feed, &order_id, "offered").await;
    assert!(view.resident_name.is_empty() && view.resident_address.is_empty());
    assert!(view.in_circle && view.offer_expires_at_ms > 0);
    near_client
        .decline(&order_id, "nobody free this afternoon")
        .await
        .unwrap();
    next_view(&mut near_feed, &order_id, "withdrawn").await;
    next_view(&mut far_feed, &order_id, "offered").await;
    let staff = far_client.staff().await.unwrap();
    far_client
        .accept(&order_id, &staff[0].staff_id, 30)
        .await
        .unwrap();
    let held = next_view(&mut far_feed, &order_id, "accepted").await;
    assert_eq!(held.resident_name, "李秀英");
    assert_eq!(held.staff_name, "张师傅");
    // Being shown the senior's name and address is a read, audited per provider: the feed's
    // view and a listing each count; the provider who was only offered it read nothing.
    let provider_reads = |provider: Uuid| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM audit_log
             WHERE actor = $1 AND action = 'provider.read_order' AND resident_id = $2",
        )
        .bind(format!("provider:{provider}"))
        .bind(resident)
        .fetch_one(store.pool())
        .await
        .unwrap()
    };
    let after_feed = provider_reads(far).await;
    assert!(after_feed >= 1, "the feed's view was audited");
    let listed = far_client.list_orders().await.unwrap();
    assert!(listed.iter().any(|view| view.resident_name == "李秀英"));
    assert_eq!(provider_reads(far).await, after_feed + 1);
    near_client.list_orders().await.unwrap();
    assert_eq!(provider_reads(near).await, 0);

    // The tablet tells the senior who is coming and when.
    let update = tablet
        .wait_for_order(&order_id, "accepted", WAIT)
        .await
        .unwrap();
    assert!(update.eta_ms > 0);
    assert!(
        update.text_zh.contains("张师傅") && update.text_zh.contains("预计"),
        "{}",
        update.text_zh
    );
    assert!(update.text_en.contains("arrives at"), "{}", update.text_en);

    far_client
        .update_status(&order_id, OrderStatus::EnRoute, None, "", 0)
        .await
        .unwrap();
    far_client
        .update_status(
            &order_id,
            OrderStatus::Arrived,
            Some((22.5501, 114.2501)),
            "",
            0,
        )
        .await
        .unwrap();
    let arrived = tablet
        .wait_for_order(&order_id, "arrived", WAIT)
        .await
        .unwrap();
    assert!(arrived.text_zh.contains("已到达"));
    far_client
        .update_status(
            &order_id,
            OrderStatus::Completed,
            None,
            "打扫客厅和厨房",
            95,
        )
        .await
        .unwrap();

    // Completion puts the call-back in the queue; ending that call records it.
    let callback = console
        .next_offer(WAIT)
        .await
        .expect("the call-back is offered");
    assert_eq!(callback.kind, CallKind::Callback as i32);
    console.client.accept(&callback.offer_id).await.unwrap();
    console
        .client
        .end_call(&callback.call_id, Disposition::Companionship, "很满意")
        .await
        .unwrap();

    // The tablet asks for a rating; the senior gives four stars; the order closes.
    tablet
        .wait_for_order(&order_id, "called_back", WAIT)
        .await
        .unwrap();
    tablet.rate(&order_id, 4).await.unwrap();
    tablet
        .wait_for_order(&order_id, "closed", WAIT)
        .await
        .unwrap();
    let order = store
        .order(Uuid::parse_str(&order_id).unwrap())
        .await
        .unwrap();
    assert_eq!(order.state, "closed");
    assert_eq!(order.rating, Some(4));
    assert_eq!(
        order.call_id.map(|id| id.to_string()),
        Some(offer.call_id.clone())
    );

    // Every transition is an event, in order.
    let events = store.order_events(order.id).await.unwrap();
    assert_eq!(
        kinds(&events),
        [
            "order.created",
            "order.offered",
            "order.declined",
            "order.offered",
            "order.accepted",
            "order.en_route",
            "order.arrived",
            "order.completed",
            "order.called_back",
            "order.rated",
            "order.closed",
        ]
    );

    // The rating reaches the provider's own figures; the decline reaches the other's.
    let figures = far_client.figures().await.unwrap();
    assert_eq!(
        (
            figures.offers,
            figures.accepted,
            figures.arrivals,
            figures.on_time,
            figures.completed
        ),
        (1, 1, 1, 1, 1)
    );
    assert_eq!(
        (
            figures.ratings,
            figures.rating_sum,
            figures.average_rating_centi
        ),
        (1, 4, 400)
    );
    let figures = near_client.figures().await.unwrap();
    assert_eq!(
        (figures.offers, figures.declined, figures.accepted),
        (1, 1, 0)
    );

    // Charged at the accepting provider's price, half subsidised, the card paying what it can.
    let today = chrono::Utc::now().date_naive();
    let statement = store
        .statement(StatementOf::Resident(resident), today)
        .await
        .unwrap();
    assert_eq!(
        (
            statement.price_fen,
            statement.subsidy_fen,
            statement.resident_fen,
            statement.card_fen,
            statement.due_fen
        ),
        (6000, 3000, 3000, 1000, 2000)
    );
    assert_eq!(store.card_balance(resident).await.unwrap(), 0);

    // The station's figures count the remote services (the call and the call-back) and the
    // on-site one.
    let report = console
        .client
        .service_report(
            &(today - chrono::Days::new(1)).to_string(),
            &(today + chrono::Days::new(2)).to_string(),
            &station.to_string(),
        )
        .await;
    // The report is for supervisors only.
    assert_eq!(report.unwrap_err().code(), Code::PermissionDenied);
    let figures = store
        .service_report(
            today - chrono::Days::new(1),
            today + chrono::Days::new(2),
            Some(station),
            carebell_store::Source::Live,
        )
        .await
        .unwrap();
    assert_eq!(figures.len(), 1);
    assert_eq!(
        (figures[0].remote_services, figures[0].orders_completed),
        (2, 1)
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_on_a_hand_built_map() {
    let store = fresh_store().await;
    let east = store.add_station("东站").await.unwrap();
    let west = store.add_station("西站").await.unwrap();
    // A: covers the east station (wherever its residents live), base near HOME.
    let by_station = provider(
        &store,
        "A 站点覆盖",
        (22.552, 114.25),
        0,
        vec![east],
        &[("meal_delivery", 1500)],
    )
    .await;
    // B: a 1 km radius around a base ~1.1 km north of HOME: HOME is outside it.
    provider(
        &store,
        "B 小半径",
        (22.56, 114.25),
        1000,
        vec![],
        &[("meal_delivery", 1500)],
    )
    .await;
    // C: a 5 km radius ~3.3 km east of HOME: covers HOME, outside the 10-minute circle.
    let wide = provider(
        &store,
        "C 大半径",
        (22.55, 114.282),
        5000,
        vec![],
        &[("meal_delivery", 1200)],
    )
    .await;
    // D: covers everything but offers only haircuts.
    provider(
        &store,
        "D 理发",
        (22.55, 114.25),
        50000,
        vec![east, west],
        &[("haircut", 2000)],
    )
    .await;

    let tier = EntitlementTier::Market;
    let in_east = resident_at(&store, east, "东站老人", Some(HOME), tier).await;
    let ranked = store
        .suggest_providers(in_east, "meal_delivery")
        .await
        .unwrap();
    let ids: Vec<Uuid> = ranked.iter().map(|s| s.suggestion.provider_id).collect();
    assert_eq!(ids, [by_station, wide], "B's radius does not reach HOME");
    assert!(ranked[0].suggestion.in_circle);
    assert!(
        !ranked[1].suggestion.in_circle,
        "3.3 km is beyond the 10-minute circle"
    );
    assert_eq!(ranked[1].price_fen, 1200);

    // A west-station resident at HOME is reached only by C's radius.
    let in_west = resident_at(&store, west, "西站老人", Some(HOME), tier).await;
    let ranked = store
        .suggest_providers(in_west, "meal_delivery")
        .await
        .unwrap();
    assert_eq!(ranked.len(), 1);
    assert_eq!(ranked[0].suggestion.provider_id, wide);

    // A west-station resident 20 km away: outside every provider's coverage. A clear error,
    // and no order is stored.
    let remote = resident_at(&store, west, "远郊老人", Some((22.73, 114.25)), tier).await;
    let error = store
        .suggest_providers(remote, "meal_delivery")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::NoProvider(NoMatch::OutsideCoverage { offering: 3 })
        ),
        "{error}"
    );
    let error = store
        .create_order(&NewOrder {
            resident_id: remote,
            service_code: "meal_delivery".to_owned(),
            call_id: None,
            note: String::new(),
            operator_id: None,
        })
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("outside every provider's coverage"),
        "{error}"
    );
    assert!(store.resident_orders(remote, 10).await.unwrap().is_empty());
    // A resident without a position is reached by station coverage only.
    let unplaced = resident_at(&store, east, "无坐标老人", None, tier).await;
    let ranked = store
        .suggest_providers(unplaced, "meal_delivery")
        .await
        .unwrap();
    assert_eq!(ranked.len(), 1);
    assert_eq!(ranked[0].suggestion.provider_id, by_station);
    assert_eq!(ranked[0].suggestion.distance_m, None);

    // Nobody offers bathing at all.
    let error = store
        .suggest_providers(in_east, "bathing")
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        StoreError::NoProvider(NoMatch::NoProviderOffersService)
    ));

    // A provider outside its working hours (local time) is not offered anything now: the order
    // waits instead of being refused.
    let local_now = (chrono::Utc::now() + chrono::Duration::hours(8)).time();
    let minute = chrono::Timelike::hour(&local_now) * 60 + chrono::Timelike::minute(&local_now);
    let mut night_shift = NewProvider::new("E 夜班助浴", "LIC-NIGHT");
    night_shift.stations = vec![east];
    night_shift.services = vec![("bathing".to_owned(), None)];
    night_shift.opens_minute = (minute + 60) % 1440;
    night_shift.closes_minute = (minute + 120) % 1440;
    store.add_provider(&night_shift).await.unwrap();
    let error = store
        .suggest_providers(in_east, "bathing")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::NoProvider(NoMatch::NoneAvailable { closed: 1, .. })
        ),
        "{error}"
    );
    let waiting = order_for(&store, in_east, "bathing").await;
    let order = store.order(waiting).await.unwrap();
    assert_eq!((order.state.as_str(), order.offered_to), ("created", None));
}

async fn order_for(store: &Store, resident: Uuid, service: &str) -> Uuid {
    store
        .create_order(&NewOrder {
            resident_id: resident,
            service_code: service.to_owned(),
            call_id: None,
            note: String::new(),
            operator_id: None,
        })
        .await
        .expect("create an order")
        .order_id
}

async fn escalations(store: &Store, order_id: Uuid) -> Vec<serde_json::Value> {
    store
        .order_events(order_id)
        .await
        .unwrap()
        .into_iter()
        .filter(|(kind, _)| kind == "order.escalated")
        .map(|(_, detail)| detail)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_timers_escalate_at_their_deadlines_and_are_recorded() {
    let store = fresh_store().await;
    let station = store.add_station("盐田站").await.unwrap();
    let provider_id = provider(
        &store,
        "一家",
        (22.551, 114.25),
        3000,
        vec![],
        &[("bathing", 8000)],
    )
    .await;
    let staff = store.add_staff(provider_id, "陈阿姨", "").await.unwrap();
    let resident = resident_at(&store, station, "赵大爷", Some(HOME), EntitlementTier::Free).await;
    let policy = ServicePolicy::default(); // offers time out after 300 s, accept SLA 900 s
    let order_id = order_for(&store, resident, "bathing").await;
    let order = store.order(order_id).await.unwrap();
    let created = order.created_at;

    // A paused clock: the sweep is told what time it is.
    let secs = |s: u32| chrono::Duration::seconds(i64::from(s));
    let report = store
        .sweep_orders(Some(created + secs(policy.offer_timeout_secs) - secs(1)))
        .await
        .unwrap();
    assert_eq!(report.offers_timed_out, 0);
    let report = store
        .sweep_orders(Some(created + secs(policy.offer_timeout_secs) + secs(1)))
        .await
        .unwrap();
    assert_eq!(
        report.offers_timed_out, 1,
        "the only provider let the offer time out"
    );
    assert_eq!(store.order(order_id).await.unwrap().state, "created");

    let due = order.accept_due_at;
    assert_eq!(due, created + secs(policy.accept_sla_secs));
    store.sweep_orders(Some(due - secs(1))).await.unwrap();
    assert!(
        escalations(&store, order_id).await.is_empty(),
        "not before its time"
    );
    let report = store.sweep_orders(Some(due)).await.unwrap();
    assert_eq!(report.escalated, 1);
    let recorded = escalations(&store, order_id).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["reason"], "not_accepted");
    assert_eq!(recorded[0]["station_id"], station.to_string());
    store.sweep_orders(Some(due + secs(3600))).await.unwrap();
    assert_eq!(
        escalations(&store, order_id).await.len(),
        1,
        "escalated once"
    );

    // Arrival: a second order, accepted with a 20-minute promise and the policy's grace.
    let second = order_for(&store, resident, "bathing").await;
    store
        .accept_order(provider_id, second, staff, 20)
        .await
        .unwrap();
    let accepted = store.order(second).await.unwrap();
    let arrive_due = accepted.arrive_due_at.unwrap();
    assert_eq!(
        arrive_due,
        accepted.eta_at.unwrap() + secs(policy.arrival_grace_secs)
    );
    store
        .sweep_orders(Some(arrive_due - secs(1)))
        .await
        .unwrap();
    assert!(escalations(&store, second).await.is_empty());
    store.sweep_orders(Some(arrive_due)).await.unwrap();
    let recorded = escalations(&store, second).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["reason"], "not_arrived");
    assert_eq!(recorded[0]["provider_id"], provider_id.to_string());
    // The staff still arrive: the escalation alerts the station, it does not stop the order.
    store
        .report_progress(provider_id, second, ProgressReport::EnRoute)
        .await
        .unwrap();
    store
        .report_progress(
            provider_id,
            second,
            ProgressReport::Arrived { position: None },
        )
        .await
        .unwrap();
    assert_eq!(store.order(second).await.unwrap().state, "arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_reaches_the_supervisors_console() {
    let node = TestNode::start(NodeOptions::default()).await;
    let store = &node.store;
    store
        .set_service_policy(&ServicePolicy {
            accept_sla_secs: 1,
            ..ServicePolicy::default()
        })
        .await
        .unwrap();
    let station = node.station().await;
    provider(
        store,
        "慢家政",
        (22.551, 114.25),
        3000,
        vec![],
        &[("laundry", 2000)],
    )
    .await;
    let resident = resident_at(
        store,
        station,
        "钱奶奶",
        Some(HOME),
        EntitlementTier::Market,
    )
    .await;
    node.operator_account("supervisor-1", "主管").await;
    store
        .set_operator_skills("supervisor-1", &["supervisor".to_owned()])
        .await
        .unwrap();
    let mut supervisor = node.sign_in("supervisor-1").await;
    let mut events = supervisor.subscribe().await.unwrap();
    let order_id = order_for(store, resident, "laundry").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let alert = loop {
        let event = tokio::time::timeout_at(deadline, events.message())
            .await
            .expect("no escalation reached the console")
            .unwrap()
            .unwrap();
        if let Some(Event::Alert(alert)) = event.event {
            if alert.order_id == order_id.to_string() {
                break alert;
            }
        }
    };
    assert_eq!(alert.reason, "not_accepted");
    let order = store.order(order_id).await.unwrap();
    assert!(order.accept_escalated_at.unwrap() >= order.accept_due_at);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_nothing_changed() {
    let store = fresh_store().await;
    let station = store.add_station("盐田站").await.unwrap();
    let first = provider(
        &store,
        "甲",
        (22.551, 114.25),
        3000,
        vec![],
        &[("shopping", 1500)],
    )
    .await;
    let second = provider(
        &store,
        "乙",
        (22.553, 114.25),
        3000,
        vec![],
        &[("shopping", 1500)],
    )
    .await;
    let first_staff = store.add_staff(first, "甲一", "").await.unwrap();
    let second_staff = store.add_staff(second, "乙一", "").await.unwrap();
    let resident = resident_at(
        &store,
        station,
        "孙爷爷",
        Some(HOME),
        EntitlementTier::Market,
    )
    .await;

    // An unknown category: refused, nothing stored.
    let error = store
        .create_order(&NewOrder {
            resident_id: resident,
            service_code: "teleportation".to_owned(),
            call_id: None,
            note: String::new(),
            operator_id: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Invalid(m) if m == "unknown service category 'teleportation'"),
        "{error}"
    );
    assert!(store
        .resident_orders(resident, 10)
        .await
        .unwrap()
        .is_empty());
    let mut bad = NewProvider::new("丙", "LIC-BAD");
    bad.services = vec![("teleportation".to_owned(), None)];
    assert!(matches!(
        store.add_provider(&bad).await,
        Err(StoreError::Invalid(_))
    ));

    // Negative and overflowing amounts.
    let error = store
        .set_provider_price(first, "shopping", Some(-1))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("cannot be negative"), "{error}");
    assert!(matches!(
        store.top_up_card(resident, -100, "").await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.top_up_card(resident, 0, "").await,
        Err(StoreError::Invalid(_))
    ));
    store.top_up_card(resident, 500, "").await.unwrap();
    let error = store.top_up_card(resident, i64::MAX, "").await.unwrap_err();
    assert!(error.to_string().contains("overflow"), "{error}");
    assert_eq!(store.card_balance(resident).await.unwrap(), 500);
    assert_eq!(store.account_total("card").await.unwrap(), -500);

    // The order goes to the nearer provider; the other cannot act on it.
    let order_id = order_for(&store, resident, "shopping").await;
    assert_eq!(store.order(order_id).await.unwrap().offered_to, Some(first));
    let before = store.order_events(order_id).await.unwrap().len();
    let error = store
        .accept_order(second, order_id, second_staff, 20)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Forbidden(_)), "{error}");
    let error = store.decline_order(second, order_id, "").await.unwrap_err();
    assert!(matches!(error, StoreError::Forbidden(_)), "{error}");
    // Nor send the other provider's staff.
    let error = store
        .accept_order(first, order_id, second_staff, 20)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Invalid(_)), "{error}");
    let error = store
        .accept_order(first, order_id, first_staff, 0)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Invalid(_)), "{error}");
    store
        .accept_order(first, order_id, first_staff, 20)
        .await
        .unwrap();
    let error = store
        .report_progress(second, order_id, ProgressReport::EnRoute)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Forbidden(_)), "{error}");
    let error = store
        .assign_staff(second, order_id, second_staff)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Forbidden(_)), "{error}");

    // Out of order: completing before arriving, rating before the call-back.
    let error = store
        .report_progress(
            first,
            order_id,
            ProgressReport::Completed {
                notes: String::new(),
                duration_minutes: 10,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "an order that is accepted cannot be completed"
    );
    let device = carebell_store::NewDevice {
        device_id: format!("tab-{}", Uuid::new_v4().simple()),
        resident_id: resident,
        public_key: [7; 32],
    };
    store.add_device(&device).await.unwrap();
    let error = store
        .rate_order(&device.device_id, order_id, 5)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("cannot be rated"), "{error}");
    let error = store
        .rate_order(&device.device_id, order_id, 9)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Invalid(_)), "{error}");
    // Accepting twice: the offer is gone.
    let error = store
        .accept_order(first, order_id, first_staff, 20)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no longer open"), "{error}");

    let order = store.order(order_id).await.unwrap();
    assert_eq!(order.state, "accepted");
    assert_eq!(order.staff_id, Some(first_staff));
    // Only the acceptance added events: one transition.
    let events = store.order_events(order_id).await.unwrap();
    assert_eq!(events.len(), before + 1);
    assert_eq!(events.last().unwrap().0, "order.accepted");
    assert_eq!(
        store.account_total("provider").await.unwrap(),
        0,
        "nothing charged"
    );

    // A cancellation needs a reason.
    assert!(matches!(
        store.cancel_order(order_id, Uuid::nil(), "  ").await,
        Err(StoreError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_the_apis_gets_clear_status_codes() {
    let node = TestNode::start(NodeOptions::default()).await;
    let store = &node.store;
    let station = node.station().await;
    let mine = provider(
        store,
        "我的",
        (22.551, 114.25),
        3000,
        vec![],
        &[("haircut", 2000)],
    )
    .await;
    let theirs = provider(
        store,
        "别人的",
        (22.56, 114.25),
        3000,
        vec![],
        &[("haircut", 2000)],
    )
    .await;
    store.add_staff(mine, "小王", "").await.unwrap();
    let mut mine_client = provider_login(&node, mine, "mine").await;
    let mut their_client = provider_login(&node, theirs, "theirs").await;
    let resident = resident_at(store, station, "周奶奶", Some(HOME), EntitlementTier::Free).await;
    let mut console = node.available_operator("op-bad-orders", "接线员").await;

    let error = console
        .client
        .create_order(&resident.to_string(), "time_travel", "", "")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("unknown service category"));
    let error = console
        .client
        .create_order("not-a-uuid", "haircut", "", "")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let far_away = resident_at(
        store,
        station,
        "远方老人",
        Some((23.5, 114.25)),
        EntitlementTier::Free,
    )
    .await;
    let error = console
        .client
        .create_order(&far_away.to_string(), "haircut", "", "")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        error
            .message()
            .contains("outside every provider's coverage"),
        "{}",
        error.message()
    );

    let created = console
        .client
        .create_order(&resident.to_string(), "haircut", "", "")
        .await
        .unwrap();
    assert_eq!(created.offered_to, mine.to_string());
    let staff = mine_client.staff().await.unwrap();
    let error = their_client
        .accept(&created.order_id, &staff[0].staff_id, 10)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    assert!(
        their_client.list_orders().await.unwrap().is_empty(),
        "nothing of ours leaks"
    );
    mine_client
        .accept(&created.order_id, &staff[0].staff_id, 10)
        .await
        .unwrap();
    let error = mine_client
        .update_status(&created.order_id, OrderStatus::Completed, None, "", 10)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(
        error.message(),
        "an order that is accepted cannot be completed"
    );
    let error = mine_client
        .update_status(
            &created.order_id,
            OrderStatus::Arrived,
            Some((123.0, 0.0)),
            "",
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let error = mine_client
        .update_status(&created.order_id, OrderStatus::Unspecified, None, "", 0)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        store
            .order(Uuid::parse_str(&created.order_id).unwrap())
            .await
            .unwrap()
            .state,
        "accepted"
    );

    // Cancel with a reason; the provider's feed and the order agree.
    console
        .client
        .cancel_order(&created.order_id, "家属已安排")
        .await
        .unwrap();
    let error = console
        .client
        .cancel_order(&created.order_id, "again")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    let orders = console
        .client
        .list_orders(&resident.to_string())
        .await
        .unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].state, "cancelled");
    node.stop().await;
}

/// `provider_id` accepts an order offered to it (arriving in `eta_minutes`), goes to it and
/// completes it (in 30 minutes, without notes).
pub(crate) async fn serve(
    store: &Store,
    order_id: Uuid,
    provider_id: Uuid,
    staff: Uuid,
    eta_minutes: u32,
) {
    store
        .accept_order(provider_id, order_id, staff, eta_minutes)
        .await
        .unwrap();
    for report in [
        ProgressReport::EnRoute,
        ProgressReport::Arrived { position: None },
        ProgressReport::Completed {
            notes: String::new(),
            duration_minutes: 30,
        },
    ] {
        store
            .report_progress(provider_id, order_id, report)
            .await
            .unwrap();
    }
}

/// Runs an order offered to `provider_id` through to the senior's rating.
async fn serve_and_rate(
    store: &Store,
    order_id: Uuid,
    provider_id: Uuid,
    staff: Uuid,
    device: &str,
    stars: u32,
) {
    serve(store, order_id, provider_id, staff, 15).await;
    store
        .record_order_callback(order_id, Uuid::nil(), "")
        .await
        .unwrap();
    store.rate_order(device, order_id, stars).await.unwrap();
    // A resent rating (the acknowledgement was lost) does not count twice.
    store.rate_order(device, order_id, stars).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poorly_rated_provider_stops_receiving_offers_until_reinstated() {
    let store = fresh_store().await;
    let station = store.add_station("盐田站").await.unwrap();
    let near = provider(
        &store,
        "近",
        (22.551, 114.25),
        3000,
        vec![],
        &[("companionship", 4000)],
    )
    .await;
    // The farther one takes companionship visits only later (unrated, it would rank first).
    let far = provider(
        &store,
        "远",
        (22.56, 114.25),
        3000,
        vec![],
        &[("shopping", 1000)],
    )
    .await;
    let near_staff = store.add_staff(near, "近一", "").await.unwrap();
    let resident = resident_at(&store, station, "吴奶奶", Some(HOME), EntitlementTier::Free).await;
    let device = format!("tab-{}", Uuid::new_v4().simple());
    store
        .add_device(&carebell_store::NewDevice {
            device_id: device.clone(),
            resident_id: resident,
            public_key: [3; 32],
        })
        .await
        .unwrap();

    // Three one-star ratings (the default policy: below 3.00 stars after at least 3 ratings).
    for n in 0..3 {
        let order_id = order_for(&store, resident, "companionship").await;
        assert_eq!(
            store.order(order_id).await.unwrap().offered_to,
            Some(near),
            "order {n}"
        );
        serve_and_rate(&store, order_id, near, near_staff, &device, 1).await;
    }
    let suspended = store.provider(near).await.unwrap();
    assert!(suspended.suspended_at.is_some());
    assert!(
        suspended.suspended_reason.contains("below 3.00"),
        "{}",
        suspended.suspended_reason
    );
    assert_eq!((suspended.rating_count, suspended.rating_sum), (3, 3));

    // Nobody else offers the service: the order waits rather than reach the suspended one.
    let order_id = order_for(&store, resident, "companionship").await;
    assert_eq!(store.order(order_id).await.unwrap().state, "created");
    store
        .cancel_order(order_id, Uuid::nil(), "test")
        .await
        .unwrap();
    // Once another provider offers it, the next order goes there.
    store
        .set_provider_price(far, "companionship", None)
        .await
        .unwrap();
    let order_id = order_for(&store, resident, "companionship").await;
    assert_eq!(store.order(order_id).await.unwrap().offered_to, Some(far));
    store
        .cancel_order(order_id, Uuid::nil(), "test")
        .await
        .unwrap();

    store.reinstate_provider(near, Uuid::nil()).await.unwrap();
    assert!(matches!(
        store.reinstate_provider(near, Uuid::nil()).await,
        Err(StoreError::Refused(_))
    ));
    // Reinstated, it is offered orders again (the farther one is busy with one).
    let busy = order_for(&store, resident, "companionship").await;
    let offered = store.order(busy).await.unwrap().offered_to.unwrap();
    let order_id = order_for(&store, resident, "companionship").await;
    let second = store.order(order_id).await.unwrap().offered_to.unwrap();
    let mut both = [offered, second];
    both.sort();
    let mut expected = [near, far];
    expected.sort();
    assert_eq!(both, expected, "both providers receive offers again");
}
