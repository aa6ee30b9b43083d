//! Proactive care through a real node: a reminder not confirmed twice tells the first ordered
//! contacts and then puts an operator task in the queue, each step no earlier than its wait;
//! a confirmation ends it; content targeted at one station reaches only its tablets, each
//! once, acknowledged and opened; tablets without a test call are flagged; bad input gets clear
//! errors. (Recurrence across daylight-saving changes and month ends is unit-tested in
//! `carebell_domain::schedule`.)

use std::time::Duration;

use carebell_proto::console::v1::CallKind;
use carebell_store::{NewContact, NewContent, NewSchedule, ScheduleKind, StoreError};
use carebell_tests::{NodeOptions, TestNode};
use chrono::{DateTime, Utc};
use firmware_sim::{Tablet, TabletEvent, TransportKind};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

/// Now, as a local time in Asia/Shanghai (UTC+8 all year), plus `ahead`.
fn shanghai_in(ahead: Duration) -> chrono::NaiveDateTime {
    (Utc::now() + chrono::Duration::hours(8) + chrono::Duration::from_std(ahead).unwrap())
        .naive_utc()
}

fn reminder(resident: Uuid, wait_seconds: u32) -> NewSchedule {
    NewSchedule {
        resident_id: resident,
        kind: ScheduleKind::Reminder,
        title: "降压药 (blood pressure tablets)".to_owned(),
        rule: "FREQ=DAILY".to_owned(),
        starts_local: shanghai_in(Duration::from_secs(1)),
        time_zone: "Asia/Shanghai".to_owned(),
        wait_seconds,
        created_by: "test".to_owned(),
    }
}

/// A contact of `resident` told by SMS (`position` in the ordered cascade, or `None`: in
/// parallel); `phone` may be empty.
async fn sms_contact(
    node: &TestNode,
    resident: Uuid,
    name: &str,
    phone: &str,
    position: Option<i32>,
) -> Uuid {
    node.store
        .add_contact(&NewContact {
            resident_id: resident,
            name: name.to_owned(),
            phone: phone.to_owned(),
            channels: vec!["sms".to_owned()],
            position,
            ..NewContact::default()
        })
        .await
        .unwrap()
}

/// A check-in for `resident` titled `title`, shown again after a second.
fn check_in(resident: Uuid, title: &str) -> NewSchedule {
    NewSchedule {
        kind: ScheduleKind::CheckIn,
        title: title.to_owned(),
        ..reminder(resident, 1)
    }
}

/// The database times of an occurrence's events of `kind`, in order.
async fn event_times(node: &TestNode, occurrence: &str, kind: &str) -> Vec<DateTime<Utc>> {
    sqlx::query_scalar(
        "SELECT at FROM events WHERE kind = $1 AND detail->>'occurrence_id' = $2 ORDER BY id",
    )
    .bind(kind)
    .bind(occurrence)
    .fetch_all(node.store.pool())
    .await
    .unwrap()
}

async fn wait_for_event(node: &TestNode, occurrence: &str, kind: &str) -> DateTime<Utc> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(at) = event_times(node, occurrence, kind).await.first() {
            return *at;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} event for {occurrence}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_missed_twice_tells_the_first_contacts_then_an_operator_calls() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (resident, config) = node
        .tablet_config("提醒 王奶奶", TransportKind::WebSocket)
        .await;
    // Four ordered contacts (only the first three are told) and one told in parallel for
    // alarms (not for reminders).
    let mut ordered = Vec::new();
    for position in 1..=4 {
        let name = format!("联系人{position}");
        let phone = format!("+86 139 0000 000{position}");
        ordered.push(sms_contact(&node, resident, &name, &phone, Some(position)).await);
    }
    sms_contact(&node, resident, "居委会", "", None).await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    let wait = 2;
    node.store
        .add_schedule(&reminder(resident, wait))
        .await
        .unwrap();

    // Attempt 1, not confirmed; attempt 2, not confirmed.
    let first = tablet
        .next_reminder(WAIT)
        .await
        .expect("the reminder is shown");
    assert_eq!(
        (first.kind.as_str(), first.attempt),
        ("reminder", 1),
        "{first:?}"
    );
    assert_eq!(first.title, "降压药 (blood pressure tablets)");
    let second = tablet.next_reminder(WAIT).await.expect("shown again");
    assert_eq!(
        (second.occurrence_id.as_str(), second.attempt),
        (first.occurrence_id.as_str(), 2)
    );
    let occurrence = first.occurrence_id.clone();

    // Missed twice: the first three ordered contacts are told, then an operator task is made.
    let told_at = wait_for_event(&node, &occurrence, "schedule.contact_notified").await;
    let task_at = wait_for_event(&node, &occurrence, "schedule.task_created").await;
    let sent = event_times(&node, &occurrence, "schedule.reminder_sent").await;
    assert_eq!(sent.len(), 2, "two attempts, each an event");
    assert_eq!(
        event_times(&node, &occurrence, "schedule.missed")
            .await
            .len(),
        2,
        "two misses, each an event"
    );
    // Each step comes no earlier than the wait after the one before.
    let wait = chrono::Duration::seconds(i64::from(wait));
    assert!(sent[1] - sent[0] >= wait, "{sent:?}");
    assert!(told_at - sent[1] >= wait, "{told_at} after {sent:?}");
    assert!(task_at - told_at >= wait, "{task_at} after {told_at}");
    let told: Vec<Uuid> = sqlx::query_scalar(
        "SELECT n.contact_id FROM family_notifications n JOIN contacts c ON c.id = n.contact_id
         WHERE n.occurrence_id = $1::uuid ORDER BY c.position",
    )
    .bind(&occurrence)
    .fetch_all(node.store.pool())
    .await
    .unwrap();
    assert_eq!(
        told,
        ordered[..3],
        "the first three ordered contacts, in order"
    );
    let texts: Vec<String> = sqlx::query_scalar(
        "SELECT body->>'phone' FROM webhook_deliveries WHERE body->>'occurrence_id' = $1
         ORDER BY id",
    )
    .bind(&occurrence)
    .fetch_all(node.store.pool())
    .await
    .unwrap();
    assert_eq!(
        texts,
        [
            "+86 139 0000 0001",
            "+86 139 0000 0002",
            "+86 139 0000 0003"
        ],
        "an SMS to each"
    );
    // The task is an outbound call in the call-backs queue, and an operator is offered it.
    let mut console = node.available_operator("proactive", "李秘书 小王").await;
    let offer = console.next_offer(WAIT).await.expect("the task is offered");
    assert_eq!(offer.kind, CallKind::Callback as i32);
    let (state, call): (String, Option<Uuid>) =
        sqlx::query_as("SELECT state, call_id FROM schedule_occurrences WHERE id = $1::uuid")
            .bind(&occurrence)
            .fetch_one(node.store.pool())
            .await
            .unwrap();
    assert_eq!(state, "task_created");
    assert_eq!(call.map(|id| id.to_string()), Some(offer.call_id));
    // A late "I'm OK" is recorded; the operator still calls.
    tablet.confirm(&occurrence).await.unwrap();
    assert_eq!(
        event_times(&node, &occurrence, "schedule.confirmed_late")
            .await
            .len(),
        1
    );
    tablet.close().await;
    node.stop().await;
}

/// A contact who follows the senior in the family app sees the missed check-in as an alert,
/// takes it on, and no operator call is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_family_member_takes_on_a_missed_check_in_in_the_app() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (resident, config) = node
        .tablet_config("签到 刘奶奶", TransportKind::WebSocket)
        .await;
    node.family_contact(resident, "checkin-daughter", "女儿", "")
        .await;
    let mut daughter = crate::family::FamilyMember::sign_in(&node, "checkin-daughter").await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    node.store
        .add_schedule(&check_in(resident, "今天好吗？"))
        .await
        .unwrap();
    let first = tablet.next_reminder(WAIT).await.expect("the check-in");
    tablet.next_reminder(WAIT).await.expect("shown again");
    let occurrence = first.occurrence_id;
    wait_for_event(&node, &occurrence, "schedule.contact_notified").await;
    let alert = daughter
        .next_alert(WAIT)
        .await
        .expect("the daughter is alerted in the app");
    assert_eq!(alert.kind, "missed_check_in");
    assert_eq!(alert.resident_id, resident.to_string());
    assert!(alert.call_id.is_empty(), "{alert:?}");
    daughter.acknowledge(alert.alert_id).await.unwrap();
    // Past the task's wait: no operator task, and the occurrence says who took it on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(event_times(&node, &occurrence, "schedule.task_created")
        .await
        .is_empty());
    let state: String =
        sqlx::query_scalar("SELECT state FROM schedule_occurrences WHERE id = $1::uuid")
            .bind(&occurrence)
            .fetch_one(node.store.pool())
            .await
            .unwrap();
    assert_eq!(state, "family_acknowledged");
    // Acknowledged once; again is refused.
    assert!(daughter.acknowledge(alert.alert_id).await.is_err());
    tablet.close().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welfare_call_is_an_outbound_task_offered_to_an_operator() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (resident, config) = node
        .tablet_config("关怀 陈奶奶", TransportKind::WebSocket)
        .await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    let mut console = node.available_operator("welfare", "李秘书 小陈").await;
    let schedule = node
        .store
        .add_schedule(&NewSchedule {
            kind: ScheduleKind::WelfareCall,
            title: "每周两次关怀电话".to_owned(),
            rule: "FREQ=WEEKLY;BYDAY=MO,TH".to_owned(),
            ..reminder(resident, 600)
        })
        .await
        .unwrap();
    // The first occurrence is the next Monday or Thursday: brought forward to now here.
    sqlx::query("UPDATE schedules SET next_due_at = now() WHERE id = $1")
        .bind(schedule)
        .execute(node.store.pool())
        .await
        .unwrap();
    let offer = console
        .next_offer(WAIT)
        .await
        .expect("the welfare call is offered");
    assert_eq!(offer.kind, CallKind::Callback as i32);
    assert_eq!(offer.resident_id, resident.to_string());
    let (state, next_due): (String, DateTime<Utc>) = sqlx::query_as(
        "SELECT o.state, s.next_due_at FROM schedule_occurrences o
         JOIN schedules s ON s.id = o.schedule_id WHERE o.call_id = $1::uuid",
    )
    .bind(&offer.call_id)
    .fetch_one(node.store.pool())
    .await
    .unwrap();
    assert_eq!(state, "placed");
    assert!(next_due > Utc::now(), "the next occurrence is ahead");
    // The tablet is not told about an outbound call being queued.
    assert!(
        !matches!(
            tablet.next_event(Duration::from_millis(300)).await,
            Some(TabletEvent::CallUpdate(_))
        ),
        "no call update on the tablet"
    );
    tablet.close().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_reminder_goes_no_further() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (resident, config) = node.tablet_config("提醒 李爷爷", TransportKind::Grpc).await;
    sms_contact(&node, resident, "女儿", "", Some(1)).await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    node.store
        .add_schedule(&check_in(resident, "今天好吗？ I'm OK"))
        .await
        .unwrap();
    let shown = tablet.next_reminder(WAIT).await.expect("the check-in");
    assert_eq!(shown.kind, "check_in");
    // A second attempt queued for the tablet (as for a tablet that was offline) is withdrawn
    // by the confirmation.
    let device: String = sqlx::query_scalar("SELECT id FROM devices WHERE resident_id = $1")
        .bind(resident)
        .fetch_one(node.store.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO device_outbox (device_id, kind, payload)
         SELECT device_id, kind, jsonb_set(payload, '{attempt}', '2') FROM device_outbox
         WHERE device_id = $1 AND kind = 'reminder'",
    )
    .bind(&device)
    .execute(node.store.pool())
    .await
    .unwrap();
    tablet.confirm(&shown.occurrence_id).await.unwrap();
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM device_outbox WHERE kind = 'reminder' AND acked_at IS NULL",
    )
    .fetch_one(node.store.pool())
    .await
    .unwrap();
    assert_eq!(queued, 0, "nothing left to show after the confirmation");
    // Well past two waits: nothing more was sent and nobody was told.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        tablet
            .next_reminder(Duration::from_millis(200))
            .await
            .is_none(),
        "no second attempt"
    );
    let (state, told): (String, i64) = sqlx::query_as(
        "SELECT o.state, (SELECT count(*) FROM family_notifications n WHERE n.occurrence_id = o.id)
         FROM schedule_occurrences o WHERE o.id = $1::uuid",
    )
    .bind(&shown.occurrence_id)
    .fetch_one(node.store.pool())
    .await
    .unwrap();
    assert_eq!((state.as_str(), told), ("confirmed", 0));
    assert_eq!(
        event_times(&node, &shown.occurrence_id, "schedule.confirmed")
            .await
            .len(),
        1
    );
    tablet.close().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_for_one_station_reaches_only_its_tablets_each_once_acknowledged() {
    let node = TestNode::start(NodeOptions::default()).await;
    let here = node.station().await;
    let elsewhere = node.store.add_station("别的站").await.unwrap();
    let mut tablets = Vec::new();
    let mut devices = Vec::new();
    for (name, station) in [("内容一", here), ("内容二", here), ("内容三", elsewhere)] {
        let resident = node
            .store
            .add_resident(&carebell_store::NewResident {
                station_id: station,
                full_name: name.to_owned(),
                ..carebell_store::NewResident::default()
            })
            .await
            .unwrap();
        let credentials = node.provision(resident).await;
        devices.push(credentials.device_id.clone());
        tablets.push(
            Tablet::connect(&firmware_sim::TabletConfig::new(
                credentials,
                TransportKind::WebSocket,
            ))
            .await
            .unwrap(),
        );
    }
    let item = node
        .store
        .add_content(
            &NewContent {
                kind: "health".to_owned(),
                title: "冬季防跌倒".to_owned(),
                body: "地面保持干燥，夜间开小灯。".to_owned(),
                language: "zh".to_owned(),
                station_id: Some(here),
                created_by: "test".to_owned(),
                ..NewContent::default()
            },
            65536,
        )
        .await
        .unwrap();
    assert_eq!(node.store.deliver_content(item).await.unwrap(), 2);
    assert_eq!(
        node.store.deliver_content(item).await.unwrap(),
        0,
        "each tablet once"
    );
    for tablet in &mut tablets[..2] {
        let received = tablet.next_content(WAIT).await.expect("the item arrives");
        assert_eq!(received.content_id, item.to_string());
        assert_eq!(received.title, "冬季防跌倒");
    }
    assert!(
        tablets[2]
            .next_content(Duration::from_millis(500))
            .await
            .is_none(),
        "the other station's tablet gets nothing"
    );
    tablets[0].open_content(&item.to_string()).await.unwrap();
    // The tablets acknowledge what they receive: both recorded as received, one opened.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let deliveries = node.store.content_deliveries(item).await.unwrap();
        let summary: Vec<(String, bool, bool)> = deliveries
            .into_iter()
            .map(|d| (d.device_id, d.received, d.opened))
            .collect();
        let mut expected = vec![
            (devices[0].clone(), true, true),
            (devices[1].clone(), true, false),
        ];
        expected.sort();
        if summary == expected {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{summary:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Opening an item never sent to this tablet is refused with a clear error.
    tablets[2].open_content(&item.to_string()).await.unwrap();
    let mut refused = None;
    while let Some(event) = tablets[2].next_event(Duration::from_secs(5)).await {
        if let TabletEvent::Error(error) = event {
            refused = Some(error);
            break;
        }
    }
    let refused = refused.expect("an error for the item it never had");
    assert!(
        refused.message.contains("never sent to this tablet"),
        "{refused:?}"
    );
    for tablet in tablets {
        tablet.close().await;
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablets_without_an_answered_call_in_the_period_are_flagged() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (_, tested) = node
        .tablet_config("测试 已测", TransportKind::WebSocket)
        .await;
    let (_, untested) = node
        .tablet_config("测试 未测", TransportKind::WebSocket)
        .await;
    // Both in service for 40 days.
    sqlx::query("UPDATE devices SET created_at = now() - interval '40 days'")
        .execute(node.store.pool())
        .await
        .unwrap();
    let tablet = Tablet::connect(&tested).await.unwrap();
    let mut console = node.available_operator("tester", "Tester").await;
    tablet.press().await.unwrap();
    let offer = console.next_offer(WAIT).await.expect("the test call");
    console.client.accept(&offer.offer_id).await.unwrap();
    let flagged: Vec<String> = node
        .store
        .untested_tablets(31)
        .await
        .unwrap()
        .into_iter()
        .map(|tablet| tablet.device_id)
        .collect();
    assert_eq!(
        flagged,
        std::slice::from_ref(&untested.credentials.device_id)
    );
    tablet.close().await;
    node.stop().await;
}

#[tokio::test]
async fn bad_schedules_and_content_get_clear_errors() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (resident, _) = node
        .tablet_config("错误 输入", TransportKind::WebSocket)
        .await;
    let refusal = |result: Result<Uuid, StoreError>| match result {
        Err(StoreError::Refused(message)) => message,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let message = refusal(
        node.store
            .add_schedule(&NewSchedule {
                rule: "FREQ=SOMETIMES".to_owned(),
                ..reminder(resident, 600)
            })
            .await,
    );
    assert!(message.contains("invalid recurrence"), "{message}");
    let message = refusal(
        node.store
            .add_schedule(&NewSchedule {
                time_zone: "Mars/Olympus_Mons".to_owned(),
                ..reminder(resident, 600)
            })
            .await,
    );
    assert!(message.contains("Mars/Olympus_Mons"), "{message}");
    // A resident with no tablet: nothing could show the reminder.
    let without = node.resident("没有平板").await;
    let message = refusal(node.store.add_schedule(&reminder(without, 600)).await);
    assert!(message.contains("has no tablet"), "{message}");
    // Content larger than a tablet takes in one message.
    let message = refusal(
        node.store
            .add_content(
                &NewContent {
                    kind: "story".to_owned(),
                    title: "很长的故事".to_owned(),
                    body: "从前有座山。".repeat(5000),
                    language: "zh".to_owned(),
                    ..NewContent::default()
                },
                65536,
            )
            .await,
    );
    assert!(message.contains("larger than a tablet takes"), "{message}");
    let message = refusal(
        node.store
            .add_content(
                &NewContent {
                    kind: "advert".to_owned(),
                    title: "x".to_owned(),
                    language: "zh".to_owned(),
                    ..NewContent::default()
                },
                65536,
            )
            .await,
    );
    assert!(message.contains("unknown content kind"), "{message}");
    // Nothing was stored by any of them.
    let (schedules, items): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM schedules), (SELECT count(*) FROM content_items)",
    )
    .fetch_one(node.store.pool())
    .await
    .unwrap();
    assert_eq!((schedules, items), (0, 0));
    node.stop().await;
}

/// Erasure covers what proactive care keeps: a resident who was sent content and whose missed
/// reminder was texted to a contact is erased (the content records go with the outbox), the
/// texts' bodies are cleared, and nothing more is sent or escalated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resident_with_content_and_a_missed_reminder_can_be_erased() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (resident, config) = node
        .tablet_config("擦除 赵奶奶", TransportKind::WebSocket)
        .await;
    sms_contact(&node, resident, "儿子", "+86 137 0000 0000", Some(1)).await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    let item = node
        .store
        .add_content(
            &NewContent {
                kind: "notice".to_owned(),
                title: "站点通知".to_owned(),
                language: "zh".to_owned(),
                ..NewContent::default()
            },
            65536,
        )
        .await
        .unwrap();
    assert_eq!(node.store.deliver_content(item).await.unwrap(), 1);
    tablet.next_content(WAIT).await.expect("the notice");
    node.store
        .add_schedule(&reminder(resident, 1))
        .await
        .unwrap();
    let first = tablet.next_reminder(WAIT).await.expect("the reminder");
    wait_for_event(&node, &first.occurrence_id, "schedule.contact_notified").await;
    tablet.close().await;

    // The export before the erasure holds the schedule, its occurrence (which has no call),
    // what the tablet was sent and the contact's alert.
    let export = node
        .store
        .export_resident(resident, "admin:cli")
        .await
        .unwrap();
    let tables = &export["tables"];
    for table in [
        "schedules",
        "schedule_occurrences",
        "content_deliveries",
        "family_notifications",
    ] {
        assert!(
            tables[table]
                .as_array()
                .is_some_and(|rows| !rows.is_empty()),
            "{table} is not in the export"
        );
    }
    assert_eq!(
        tables["schedule_occurrences"][0]["id"],
        serde_json::json!(first.occurrence_id)
    );

    node.store
        .erase_resident(resident, "admin:cli")
        .await
        .expect("erasure goes through");
    let (bodies_with_name, open_steps, deliveries): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhook_deliveries WHERE body::text LIKE '%擦除%'
                                                          OR body::text LIKE '%137 0000%'),
                (SELECT count(*) FROM schedule_occurrences WHERE next_step_at IS NOT NULL),
                (SELECT count(*) FROM content_deliveries)",
    )
    .fetch_one(node.store.pool())
    .await
    .unwrap();
    assert_eq!((bodies_with_name, open_steps, deliveries), (0, 0, 0));
    node.stop().await;
}
