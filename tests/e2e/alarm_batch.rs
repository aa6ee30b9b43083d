//! Group commit of device alarms: a batch writes exactly what one transaction per alarm writes,
//! answers every alarm as the one-by-one path would (resends, conflicts, unknown devices), and
//! the process's batcher stores concurrent alarms together, each once; new connections' reads
//! and the outbox's reads and acknowledgements, batched, answer as one query each would.

use std::collections::BTreeSet;
use std::time::Duration;

use carebell_domain::CallKind;
use carebell_gateway::AlarmBatcher;
use carebell_store::{
    AlarmOutcome, Heard, NewAlarm, Notification, OutboxAck, OutboxRead, Source, Store, StoreError,
};
use carebell_tests::{fresh_database, fresh_store, metric_value};
use chrono::{Days, TimeZone, Utc};

const DEVICES: usize = 4;

/// Two stations, each with half the tablets (even and odd), so that one batch's statistics fall
/// to both.
async fn district(store: &Store) {
    let stations = [
        store.add_station("batch").await.unwrap(),
        store.add_station("batch-odd").await.unwrap(),
    ];
    for index in 0..DEVICES {
        let resident = store
            .add_resident(&carebell_store::NewResident {
                station_id: stations[index % 2],
                full_name: format!("resident {index}"),
                dialect: if index % 2 == 0 {
                    "cantonese"
                } else {
                    "mandarin"
                }
                .to_owned(),
                ..Default::default()
            })
            .await
            .unwrap();
        store
            .add_device(&carebell_store::NewDevice {
                device_id: format!("tab-batch-{index}"),
                resident_id: resident,
                public_key: [index as u8; 32],
            })
            .await
            .unwrap();
    }
}

fn alarm(device: usize, id: &str, kind: &str, detail: &str, raise: Option<CallKind>) -> NewAlarm {
    NewAlarm {
        device_id: format!("tab-batch-{device}"),
        alarm_id: id.to_owned(),
        kind: kind.to_owned(),
        raised_at: Some(Utc.timestamp_millis_opt(1_790_000_000_123).unwrap()),
        detail: detail.to_owned(),
        raise,
    }
}

/// What the one-by-one path would answer, without the generated ids.
fn shape(result: &Result<AlarmOutcome, StoreError>) -> String {
    match result {
        Ok(outcome) => format!(
            "stored created={} call={}",
            outcome.created,
            outcome.call_id.is_some()
        ),
        Err(StoreError::Refused(message)) => format!("refused: {message}"),
        Err(StoreError::NotFound { what, id }) => format!("not found: {what} {id}"),
        Err(other) => format!("other error: {other}"),
    }
}

/// The rows of `sql` as JSON lines, each headed by `what` (in the query's order).
async fn lines(store: &Store, what: &str, sql: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT '{what} ' || row_to_json(t)::text FROM ({sql}) AS t"
    ))
    .fetch_all(store.pool())
    .await
    .unwrap()
}

/// Everything an alarm writes, with generated ids and clocks taken out (but checked to link up).
async fn snapshot(store: &Store) -> Vec<String> {
    let mut rows = lines(
        store,
        "alarm",
        "SELECT a.device_id, a.alarm_id, a.kind, a.detail, a.raised_at::text AS raised_at,
                c.request_id, c.kind AS call_kind, c.priority, c.state, c.queue_id, c.dialect,
                c.announce, c.callback_of IS NULL AS first,
                c.station = r.station_id::text AS station_ok, c.resident_id = d.resident_id AS resident_ok,
                round(extract(epoch FROM c.deadline_at - c.created_at))::int AS deadline_secs
         FROM alarms a JOIN devices d ON d.id = a.device_id
         LEFT JOIN calls c ON c.id = a.call_id LEFT JOIN residents r ON r.id = c.resident_id
         ORDER BY a.device_id, a.alarm_id",
    )
    .await;
    // Events: the detail with the generated ids replaced by whether they point at the right row.
    rows.extend(
        lines(
            store,
            "event",
            "SELECT e.kind, e.device_id, e.call_id IS NOT NULL AS has_call,
                    e.detail - 'resident_id' AS detail,
                    (e.detail->>'resident_id')::uuid IS NOT DISTINCT FROM c.resident_id AS resident_ok
             FROM events e LEFT JOIN calls c ON c.id = e.call_id
             ORDER BY e.device_id, e.kind, e.detail::text",
        )
        .await,
    );
    rows.extend(
        lines(
            store,
            "outbox",
            "SELECT o.device_id, o.kind, o.payload - 'call_id' AS payload,
                    c.device_id = o.device_id AND c.request_id = o.payload->>'request_id' AS call_ok
             FROM device_outbox o LEFT JOIN calls c ON c.id = (o.payload->>'call_id')::uuid
             ORDER BY o.device_id, (o.payload - 'call_id')::text",
        )
        .await,
    );
    // The live statistics the events' triggers keep, overall and per station.
    rows.extend(
        lines(
            store,
            "live",
            "SELECT sum(offered)::bigint AS offered FROM stats_live",
        )
        .await,
    );
    rows.extend(
        lines(
            store,
            "station",
            "SELECT s.name, sum(d.emergencies)::bigint AS emergencies,
                    sum(d.calls_offered)::bigint AS offered
             FROM station_day_stats d JOIN stations s ON s.id = d.station_id
             GROUP BY s.name ORDER BY s.name",
        )
        .await,
    );
    rows
}

/// The notifications heard within a short while: (dispatch heard, devices told).
async fn heard(listener: &mut carebell_store::Listener) -> (bool, BTreeSet<String>) {
    let mut dispatch = false;
    let mut devices = BTreeSet::new();
    while let Ok(Ok(Heard::Notification(notification))) =
        tokio::time::timeout(Duration::from_millis(500), listener.recv()).await
    {
        match notification {
            Notification::Dispatch => dispatch = true,
            Notification::DeviceOutbox { device_id } => {
                devices.insert(device_id);
            }
            _ => {}
        }
    }
    (dispatch, devices)
}

#[tokio::test]
async fn a_batch_writes_and_answers_exactly_what_one_transaction_per_alarm_does() {
    let batched = fresh_store().await;
    let single = fresh_store().await;
    for store in [&batched, &single] {
        district(store).await;
        // Stored before the batch: its resend must be answered from the stored row.
        store
            .record_new_alarm(&NewAlarm {
                raised_at: None,
                ..alarm(3, "earlier", "SOS", "", Some(CallKind::Emergency))
            })
            .await
            .unwrap();
    }
    let alarms = vec![
        alarm(
            0,
            "a-sos",
            "SOS",
            "pressed twice",
            Some(CallKind::Emergency),
        ),
        alarm(1, "a-fall", "FALL", "", Some(CallKind::Emergency)),
        alarm(
            2,
            "a-battery",
            "LOW_BATTERY",
            "12%",
            Some(CallKind::Technical),
        ),
        alarm(2, "a-note", "UNSPECIFIED", "", None),
        // The same alarm twice in one batch: stored once, the second answered as a resend.
        alarm(0, "a-twice", "SMOKE", "kitchen", Some(CallKind::Emergency)),
        alarm(0, "a-twice", "SMOKE", "kitchen", Some(CallKind::Emergency)),
        // The same id with different content in one batch: the first stands, the second refused.
        alarm(1, "a-clash", "SOS", "first", Some(CallKind::Emergency)),
        alarm(1, "a-clash", "SOS", "second", Some(CallKind::Emergency)),
        // A resend of one stored before, and one with different content.
        NewAlarm {
            raised_at: None,
            ..alarm(3, "earlier", "SOS", "", Some(CallKind::Emergency))
        },
        alarm(3, "earlier", "FALL", "", Some(CallKind::Emergency)),
        // A device that does not exist (erased while its session was open).
        alarm(9, "a-ghost", "SOS", "", Some(CallKind::Emergency)),
        // Two alarms of one device, both new.
        alarm(3, "a-first", "SOS", "", Some(CallKind::Emergency)),
        alarm(3, "a-second", "NO_ACTIVITY", "", Some(CallKind::Emergency)),
    ];

    let mut batched_listener = batched.listen().await.unwrap();
    let mut single_listener = single.listen().await.unwrap();
    let batch_results = batched.record_alarms(&alarms).await;
    let mut single_results = Vec::new();
    for alarm in &alarms {
        single_results.push(single.record_new_alarm(alarm).await);
    }

    let batch_shapes: Vec<String> = batch_results.iter().map(shape).collect();
    let single_shapes: Vec<String> = single_results.iter().map(shape).collect();
    assert_eq!(batch_shapes, single_shapes);
    // The answers are the ones a tablet needs (not merely equal).
    assert_eq!(batch_shapes[0], "stored created=true call=true");
    assert_eq!(batch_shapes[3], "stored created=true call=false");
    assert_eq!(batch_shapes[5], "stored created=false call=true");
    assert!(
        batch_shapes[7].starts_with("refused: "),
        "{}",
        batch_shapes[7]
    );
    assert_eq!(batch_shapes[8], "stored created=false call=true");
    assert!(
        batch_shapes[9].starts_with("refused: "),
        "{}",
        batch_shapes[9]
    );
    assert_eq!(batch_shapes[10], "not found: device tab-batch-9");
    // A resend is answered with the first one's call.
    let first = batch_results[4].as_ref().unwrap();
    let resent = batch_results[5].as_ref().unwrap();
    assert_eq!(
        (first.alarm_row_id, first.call_id),
        (resent.alarm_row_id, resent.call_id)
    );

    let batch_rows = snapshot(&batched).await;
    let single_rows = snapshot(&single).await;
    assert_eq!(batch_rows, single_rows);
    assert_eq!(
        batch_rows
            .iter()
            .filter(|row| row.starts_with("alarm "))
            .count(),
        9,
        "{batch_rows:#?}"
    );
    // Eight calls in all: the one stored before, and seven raised by the batch.
    assert_eq!(
        batch_rows
            .iter()
            .filter(|row| row.starts_with("alarm ") && !row.contains("\"request_id\":null"))
            .count(),
        8,
        "{batch_rows:#?}"
    );

    // The batch really went in as one transaction (the eight new alarms share one), where the
    // one-by-one path took eight.
    for (store, transactions) in [(&batched, 1), (&single, 8)] {
        let distinct: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT xmin::text) FROM alarms WHERE alarm_id LIKE 'a-%'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(distinct, transactions);
    }

    let batch_heard = heard(&mut batched_listener).await;
    let single_heard = heard(&mut single_listener).await;
    assert_eq!(batch_heard, single_heard);
    assert!(batch_heard.0, "dispatchers are woken");
    assert_eq!(batch_heard.1.len(), DEVICES, "every tablet is told");
}

/// A batch of one (what a quiet moment gives the batcher) goes through the batch statement as
/// well, and must answer and write what the one-by-one path does in every case it meets.
#[tokio::test]
async fn alarms_batched_alone_answer_and_write_what_one_transaction_each_does() {
    let batched = fresh_store().await;
    let single = fresh_store().await;
    let alone = [
        alarm(0, "l-sos", "SOS", "pressed", Some(CallKind::Emergency)),
        alarm(1, "l-note", "UNSPECIFIED", "", None),
        // Its resend, then the same id with different content.
        alarm(0, "l-sos", "SOS", "pressed", Some(CallKind::Emergency)),
        alarm(0, "l-sos", "FALL", "pressed", Some(CallKind::Emergency)),
        alarm(9, "l-ghost", "SOS", "", Some(CallKind::Emergency)),
        alarm(
            2,
            "l-battery",
            "LOW_BATTERY",
            "9%",
            Some(CallKind::Technical),
        ),
    ];
    for store in [&batched, &single] {
        district(store).await;
    }
    let mut batched_listener = batched.listen().await.unwrap();
    let mut single_listener = single.listen().await.unwrap();
    let mut batch_shapes = Vec::new();
    let mut single_shapes = Vec::new();
    for one in &alone {
        let answers = batched.record_alarms(std::slice::from_ref(one)).await;
        assert_eq!(answers.len(), 1);
        batch_shapes.push(shape(&answers[0]));
        single_shapes.push(shape(&single.record_new_alarm(one).await));
    }
    assert_eq!(batch_shapes, single_shapes);
    assert_eq!(batch_shapes[0], "stored created=true call=true");
    assert_eq!(batch_shapes[1], "stored created=true call=false");
    assert_eq!(batch_shapes[2], "stored created=false call=true");
    assert!(
        batch_shapes[3].starts_with("refused: "),
        "{}",
        batch_shapes[3]
    );
    assert_eq!(batch_shapes[4], "not found: device tab-batch-9");
    assert_eq!(batch_shapes[5], "stored created=true call=true");
    let batch_rows = snapshot(&batched).await;
    assert_eq!(batch_rows, snapshot(&single).await);
    assert_eq!(
        batch_rows
            .iter()
            .filter(|row| row.starts_with("alarm "))
            .count(),
        3,
        "{batch_rows:#?}"
    );
    let batch_heard = heard(&mut batched_listener).await;
    assert_eq!(batch_heard, heard(&mut single_listener).await);
    assert!(batch_heard.0, "dispatchers are woken");
    assert_eq!(
        batch_heard.1,
        BTreeSet::from(["tab-batch-0".to_owned(), "tab-batch-2".to_owned()]),
        "the tablets whose alarms raised an item are told"
    );
}

/// How the alarm batch statement was planned on the connection of a one-connection store:
/// (executions, generic plans, custom plans).
async fn batch_plans(store: &Store) -> (i64, i64, i64) {
    let (generic, custom): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(generic_plans), 0)::int8, coalesce(sum(custom_plans), 0)::int8
         FROM pg_prepared_statements WHERE statement LIKE 'WITH rules_in_force AS%'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    (generic + custom, generic, custom)
}

/// The batch connections plan the alarm batch once and keep the plan; the main pool's
/// connections leave it to PostgreSQL, which re-plans every execution of a small batch.
#[tokio::test]
async fn batch_connections_run_the_alarm_batch_on_one_generic_plan_and_store_alike() {
    let url = fresh_database().await;
    let main = Store::connect(&url, 1).await.unwrap();
    main.migrate().await.unwrap();
    district(&main).await;
    let batches = Store::connect_for_batches(&url, 1, None).await.unwrap();
    let mode = |store: Store| async move {
        sqlx::query_scalar::<_, String>("SHOW plan_cache_mode")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    assert_eq!(mode(batches.clone()).await, "force_generic_plan");
    assert_eq!(mode(main.clone()).await, "auto");

    // Eight batches on each, alone and in pairs, every one stored.
    for (store, prefix) in [(&batches, "g"), (&main, "m")] {
        for round in 0..8 {
            let size = 1 + round % 2;
            let alarms: Vec<NewAlarm> = (0..size)
                .map(|n| {
                    alarm(
                        n,
                        &format!("{prefix}-{round}-{n}"),
                        "SOS",
                        "",
                        Some(CallKind::Emergency),
                    )
                })
                .collect();
            for answer in store.record_alarms(&alarms).await {
                assert!(answer.unwrap().created);
            }
        }
    }
    assert_eq!(batch_plans(&batches).await, (8, 8, 0));
    let (executions, _, custom) = batch_plans(&main).await;
    assert_eq!(
        executions, 8,
        "alone or not, every alarm went through the batch statement"
    );
    assert!(
        custom >= 5,
        "PostgreSQL re-planned small batches: {custom} custom plans"
    );
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alarms a JOIN calls c ON c.id = a.call_id WHERE c.state = 'queued'",
    )
    .fetch_one(main.pool())
    .await
    .unwrap();
    assert_eq!(stored, 24);
}

/// Sessions that end together write their last-seen times together, each as "last heard so
/// long ago", never moving a time backwards; a device that has gone is no error.
#[tokio::test]
async fn ended_sessions_last_seen_times_are_written_together_and_never_backwards() {
    let store = fresh_store().await;
    district(&store).await;
    let batchers = carebell_gateway::SessionBatchers::spawn(store.clone(), 256, 1);
    let departures = [
        ("tab-batch-0", 60),
        ("tab-batch-1", 600),
        ("tab-batch-2", 5),
        // Heard 5 s ago by one session, then an older session ends: the later time stands.
        ("tab-batch-2", 900),
        ("tab-batch-9", 1),
    ];
    let answers = futures_util::future::join_all(
        departures
            .iter()
            .map(|(device, silent)| batchers.departed(device, Duration::from_secs(*silent))),
    )
    .await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let ages: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT id, extract(epoch FROM clock_timestamp() - last_seen_at)::int8 FROM devices ORDER BY id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let expected = [60, 600, 5];
    for ((device, age), want) in ages.iter().zip(expected) {
        let age = age.unwrap_or_else(|| panic!("{device} has no last-seen time"));
        assert!(
            (want..want + 5).contains(&age),
            "{device}: {age} s, want {want}"
        );
    }
    assert_eq!(ages[3], ("tab-batch-3".to_owned(), None), "untouched");
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM devices WHERE last_seen_at IS NOT NULL",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(
        transactions < 3,
        "{transactions} transactions for 3 devices"
    );
}

#[tokio::test]
async fn concurrent_alarms_through_the_batcher_are_stored_once_each_and_together() {
    let store = fresh_store().await;
    district(&store).await;
    // One transaction at a time, so that alarms arriving meanwhile must share the next one.
    let batcher = AlarmBatcher::spawn(store.clone(), 64, 1);
    let send_all = |round: &'static str| {
        let batcher = batcher.clone();
        async move {
            let tasks: Vec<_> = (0..200)
                .map(|index| {
                    let batcher = batcher.clone();
                    tokio::spawn(async move {
                        let outcome = batcher
                            .record(alarm(
                                index % DEVICES,
                                &format!("c-{index}"),
                                "SOS",
                                round,
                                Some(CallKind::Emergency),
                            ))
                            .await;
                        (index, outcome)
                    })
                })
                .collect();
            let mut outcomes = Vec::new();
            for task in tasks {
                outcomes.push(task.await.unwrap());
            }
            outcomes
        }
    };
    let first = send_all("same").await;
    assert!(first.iter().all(|(_, outcome)| outcome
        .as_ref()
        .is_ok_and(|o| o.created && o.call_id.is_some())));
    // Every tablet resends (it never saw the acknowledgement): nothing is stored twice, and each
    // resend is answered with its first call.
    let again = send_all("same").await;
    for ((index, first), (_, again)) in first.iter().zip(&again) {
        let (first, again) = (first.as_ref().unwrap(), again.as_ref().unwrap());
        assert!(!again.created, "alarm {index} stored twice");
        assert_eq!(first.call_id, again.call_id);
    }
    let counts: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM alarms), (SELECT count(*) FROM calls),
                (SELECT count(*) FROM events WHERE kind = 'alarm.raised')",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(counts, (200, 200, 200));
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM alarms")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(
        transactions < 200,
        "{transactions} transactions for 200 alarms"
    );
    // The statistics, kept once per statement for batches that span both stations, equal a
    // recomputation from the event log: 100 emergencies for each station.
    assert_eq!(
        store.live_statistics().await.unwrap(),
        store.recompute_statistics(None, None).await.unwrap()
    );
    let today = Utc::now().date_naive();
    let (from, to) = (today - Days::new(1), today + Days::new(2));
    let live = store
        .service_report(from, to, None, Source::Live)
        .await
        .unwrap();
    assert_eq!(
        live,
        store
            .service_report(from, to, None, Source::Recomputed)
            .await
            .unwrap()
    );
    assert_eq!(
        live.iter()
            .map(|station| (station.station_name.as_str(), station.emergencies))
            .collect::<Vec<_>>(),
        [("batch", 100), ("batch-odd", 100)]
    );

    // They went in together: fewer transactions than alarms (400 answered in all).
    let scrape = carebell_metrics::render();
    let batches = metric_value(&scrape, "carebell_alarm_batch_size_count").unwrap();
    let answered = metric_value(&scrape, "carebell_alarm_batch_size_sum").unwrap();
    assert_eq!(answered, 400.0, "{scrape}");
    assert!(batches < 400.0, "{batches} transactions for 400 alarms");
}

#[tokio::test]
async fn new_connections_key_lookups_and_arrivals_are_batched_and_answered_as_one_by_one() {
    let store = fresh_store().await;
    district(&store).await;
    store
        .revoke_device("tab-batch-2", "test", "lost")
        .await
        .unwrap();
    // tab-batch-1 has a message waiting for its acknowledgement (an alarm's call update), and
    // tab-batch-3 an open "device offline" alarm.
    store
        .record_new_alarm(&alarm(1, "w", "SOS", "", Some(CallKind::Emergency)))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO alarms (id, device_id, alarm_id, kind, detail)
         VALUES (gen_random_uuid(), 'tab-batch-3', 'offline.1', 'DEVICE_OFFLINE', '')",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE devices SET last_seen_at = now() - interval '1 hour'")
        .execute(store.pool())
        .await
        .unwrap();

    let batchers = carebell_gateway::SessionBatchers::spawn(store.clone(), 64, 1);
    let ids: Vec<String> = (0..DEVICES + 1)
        .map(|index| format!("tab-batch-{index}"))
        .collect();
    // Every device many times over, all at once: they share statements.
    let mut tasks = Vec::new();
    for round in 0..25 {
        for id in &ids {
            let (batchers, id) = (batchers.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let key = batchers.credentials(&id).await.unwrap();
                let arrival = batchers.arrived(&id).await;
                (round, id, key, arrival)
            }));
        }
    }
    for task in tasks {
        let (_, id, key, arrival) = task.await.unwrap();
        assert_eq!(key, store.device_credentials(&id).await.unwrap(), "{id}");
        match id.as_str() {
            // Unknown and revoked: no key. A revoked device still exists, so its arrival is
            // recorded (it is refused before that in a real session).
            "tab-batch-4" => assert!(
                matches!(arrival, Err(StoreError::NotFound { .. })),
                "{arrival:?}"
            ),
            "tab-batch-2" => assert!(key.is_none()),
            _ => assert!(key.is_some(), "{id}"),
        }
        if let Ok(arrival) = arrival {
            assert_eq!(arrival.outbox_pending, id == "tab-batch-1", "{id}");
            assert_eq!(arrival.offline_alarm_open, id == "tab-batch-3", "{id}");
        }
    }
    let stale: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM devices WHERE last_seen_at < now() - interval '1 minute'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(stale, 0, "every arrival is recorded as heard");
}

/// Puts a notice for `device` in its outbox (an unreadable payload with `readable: false`).
async fn notice(store: &Store, device: usize, text: &str, readable: bool) -> i64 {
    let payload = if readable {
        serde_json::json!({ "text": text, "from": "family" })
    } else {
        serde_json::json!({ "nothing": text })
    };
    sqlx::query_scalar(
        "INSERT INTO device_outbox (device_id, kind, payload) VALUES ($1, 'notice', $2) RETURNING id",
    )
    .bind(format!("tab-batch-{device}"))
    .bind(payload)
    .fetch_one(store.pool())
    .await
    .unwrap()
}

fn read(device: usize, in_flight: &[i64], limit: i64) -> OutboxRead {
    OutboxRead {
        device_id: format!("tab-batch-{device}"),
        in_flight: in_flight.to_vec(),
        limit,
    }
}

fn ids(answer: &Result<Vec<carebell_store::OutboxItem>, StoreError>) -> Vec<i64> {
    answer
        .as_ref()
        .map(|items| items.iter().map(|item| item.id).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn outbox_reads_and_acknowledgements_batched_answer_as_one_by_one() {
    let store = fresh_store().await;
    district(&store).await;
    // tab-batch-0: five notices; tab-batch-1: an alarm's call update; tab-batch-2: nothing;
    // tab-batch-3: a message this server cannot read.
    let mut notices = Vec::new();
    for index in 0..5 {
        notices.push(notice(&store, 0, &format!("notice {index}"), true).await);
    }
    store
        .record_new_alarm(&alarm(1, "w", "SOS", "", Some(CallKind::Emergency)))
        .await
        .unwrap();
    notice(&store, 3, "garbled", false).await;

    // The same device twice (two windows of one outbox), every kind of answer, and a device
    // that does not exist.
    let reads = vec![
        read(0, &[], 2),
        read(0, &notices[..2], 10),
        read(1, &[], 10),
        read(2, &[], 10),
        read(3, &[], 10),
        read(0, &[notices[0], notices[3]], 2),
        OutboxRead {
            device_id: "tab-nobody".to_owned(),
            in_flight: Vec::new(),
            limit: 10,
        },
    ];
    let batch = store.pending_outboxes(&reads).await.unwrap();
    assert_eq!(batch.len(), reads.len());
    for (read, answer) in reads.iter().zip(&batch) {
        let alone = store
            .pending_outbox(&read.device_id, &read.in_flight, read.limit)
            .await;
        match (&alone, answer) {
            (Ok(alone), Ok(batched)) => assert_eq!(alone, batched, "{read:?}"),
            (Err(StoreError::Refused(_)), Err(StoreError::Refused(_))) => {}
            other => panic!("{read:?}: {other:?}"),
        }
    }
    assert_eq!(ids(&batch[0]), notices[..2]);
    assert_eq!(ids(&batch[1]), notices[2..]);
    assert_eq!(batch[2].as_ref().map(Vec::len).ok(), Some(1));
    assert_eq!(ids(&batch[3]), Vec::<i64>::new());
    // The unreadable message fails its own device's read, not the batch.
    assert!(
        matches!(&batch[4], Err(StoreError::Refused(message)) if message.contains("unreadable")),
        "{:?}",
        batch[4]
    );
    assert_eq!(ids(&batch[5]), vec![notices[1], notices[2]]);
    assert_eq!(ids(&batch[6]), Vec::<i64>::new());

    // Acknowledgements: a device cannot acknowledge another's message, and a message named
    // twice in one batch is counted once.
    let acks = vec![
        OutboxAck {
            device_id: "tab-batch-0".to_owned(),
            ids: notices[..2].to_vec(),
        },
        OutboxAck {
            device_id: "tab-batch-1".to_owned(),
            ids: vec![notices[2]],
        },
        OutboxAck {
            device_id: "tab-batch-0".to_owned(),
            ids: vec![notices[1], notices[2]],
        },
        OutboxAck {
            device_id: "tab-batch-2".to_owned(),
            ids: Vec::new(),
        },
    ];
    assert_eq!(store.ack_outboxes(&acks).await.unwrap(), vec![2, 0, 1, 0]);
    assert_eq!(store.ack_outboxes(&acks).await.unwrap(), vec![0, 0, 0, 0]);
    assert_eq!(
        ids(&Ok(store
            .pending_outbox("tab-batch-0", &[], 10)
            .await
            .unwrap())),
        notices[3..]
    );

    // Through the process's batchers, many sessions at once: each read answers as its own
    // query would, and of two sessions acknowledging the same message, one counts it.
    let batchers = carebell_gateway::SessionBatchers::spawn(store.clone(), 64, 1);
    let mut tasks = Vec::new();
    for round in 0..30_usize {
        let batchers = batchers.clone();
        let read = read(round % 4, &[], 1 + (round % 3) as i64);
        tasks.push(tokio::spawn(async move {
            let answer = batchers
                .pending_outbox(&read.device_id, read.in_flight.clone(), read.limit)
                .await;
            (read, answer)
        }));
    }
    for task in tasks {
        let (read, answer) = task.await.unwrap();
        let alone = store
            .pending_outbox(&read.device_id, &read.in_flight, read.limit)
            .await;
        match (&alone, &answer) {
            (Ok(alone), Ok(batched)) => assert_eq!(alone, batched, "{read:?}"),
            (Err(StoreError::Refused(_)), Err(StoreError::Refused(_))) => {}
            other => panic!("{read:?}: {other:?}"),
        }
    }
    let (first, second) = tokio::join!(
        batchers.ack_outbox("tab-batch-0", vec![notices[3]]),
        batchers.ack_outbox("tab-batch-0", vec![notices[3], notices[4]]),
    );
    assert_eq!(first.unwrap() + second.unwrap(), 2);
    assert_eq!(
        batchers
            .ack_outbox("tab-batch-0", Vec::new())
            .await
            .unwrap(),
        0
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM device_outbox WHERE device_id = 'tab-batch-0' AND acked_at IS NULL",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn arrival_and_last_seen_batches_over_the_same_devices_never_deadlock() {
    let store = fresh_store().await;
    let mut devices = carebell_tests::register_tablets(&store, "locks", "tab-locks", 300).await;
    for round in 0..30 {
        // Each batch names the devices in its own order, as sessions happen to queue them.
        let arriving = devices.clone();
        devices.reverse();
        let silences: Vec<(String, Duration)> = devices
            .iter()
            .map(|device| (device.clone(), Duration::from_millis(round)))
            .collect();
        let mut shuffled = silences.clone();
        shuffled.rotate_left(137);
        let (arrived, seen, seen_again) = tokio::join!(
            store.devices_arrived(&arriving),
            store.devices_seen(&silences),
            store.devices_seen(&shuffled),
        );
        assert_eq!(arrived.expect("the arrivals are recorded").len(), 300);
        seen.expect("the last-seen times are recorded");
        seen_again.expect("the last-seen times are recorded");
    }
}

#[tokio::test]
async fn the_refresher_skips_a_device_row_another_transaction_holds_and_names_it_for_later() {
    let store = fresh_store().await;
    let devices = carebell_tests::register_tablets(&store, "busy", "tab-busy", 2).await;
    let (busy, free) = (&devices[0], &devices[1]);
    let last_seen = |device: &String| {
        let (store, device) = (store.clone(), device.clone());
        async move {
            sqlx::query_scalar::<_, Option<chrono::DateTime<Utc>>>(
                "SELECT last_seen_at FROM devices WHERE id = $1",
            )
            .bind(device)
            .fetch_one(store.pool())
            .await
            .unwrap()
        }
    };
    let before = (last_seen(busy).await, last_seen(free).await);
    // Another transaction (an arrival, another node's refresher) holds one device's row.
    let mut holder = store.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM devices WHERE id = $1 FOR NO KEY UPDATE")
        .bind(busy)
        .execute(&mut *holder)
        .await
        .unwrap();
    let silences: Vec<(String, Duration)> = [busy, free, &"tab-erased".to_owned()]
        .into_iter()
        .map(|device| (device.clone(), Duration::ZERO))
        .collect();
    // It does not wait for the holder (which never lets go while this runs).
    let skipped = tokio::time::timeout(
        Duration::from_secs(30),
        store.devices_seen_unless_busy(&silences),
    )
    .await
    .expect("the refresher does not wait for a busy row")
    .unwrap();
    assert_eq!(
        skipped,
        vec![busy.clone()],
        "a device that is gone is not named"
    );
    assert_eq!(last_seen(busy).await, before.0, "the busy row is untouched");
    assert!(last_seen(free).await > before.1, "the free row is written");
    holder.rollback().await.unwrap();
    // At the next pass it is written.
    assert!(store
        .devices_seen_unless_busy(&silences)
        .await
        .unwrap()
        .is_empty());
    assert!(last_seen(busy).await > before.0);
}

#[tokio::test]
async fn last_seen_writes_and_outbox_acks_commit_without_waiting_for_the_disk_and_leave_the_connection_as_it_was(
) {
    // One connection: what a statement sets is seen by whatever uses the pool after it.
    let store = Store::connect(&carebell_tests::fresh_database().await, 1)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let devices = carebell_tests::register_tablets(&store, "unflushed", "tab-unflushed", 2).await;
    let setting = "SELECT current_setting('synchronous_commit')";
    // In force for the statement (and so at its commit, which ends it), and gone after it.
    let inside: String = sqlx::query_scalar(&format!(
        "SELECT current_setting('synchronous_commit') FROM {}",
        carebell_store::UNFLUSHED
    ))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(inside, "off");
    let after: String = sqlx::query_scalar(setting)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(after, "on", "the setting ends with its statement");
    // The last-seen writes and an acknowledgement, through that one connection, still write
    // and leave it as it was.
    let arrived = store.devices_arrived(&devices).await.unwrap();
    assert_eq!(arrived.len(), 2);
    let silences: Vec<(String, Duration)> = devices
        .iter()
        .map(|device| (device.clone(), Duration::from_secs(3)))
        .collect();
    store.devices_seen(&silences).await.unwrap();
    assert!(store
        .devices_seen_unless_busy(&silences)
        .await
        .unwrap()
        .is_empty());
    let message: i64 = sqlx::query_scalar(
        "INSERT INTO device_outbox (device_id, kind, payload) VALUES ($1, 'call_update', '{}')
         RETURNING id",
    )
    .bind(&devices[0])
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(store.ack_outbox(&devices[0], &[message]).await.unwrap(), 1);
    assert_eq!(
        store.ack_outbox(&devices[1], &[message]).await.unwrap(),
        0,
        "not another device's"
    );
    let after: String = sqlx::query_scalar(setting)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(after, "on");
    let written: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM devices WHERE id = ANY($1) AND last_seen_at > now() - interval '1 minute'",
    )
    .bind(&devices)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(written, 2);
    let acked: bool =
        sqlx::query_scalar("SELECT acked_at IS NOT NULL FROM device_outbox WHERE id = $1")
            .bind(message)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert!(acked);
}

/// Rules that put emergencies in a queue the built-in rules do not have.
const URGENT_RULES: &str = r#"
skills = []
wrap_up_secs = 0
max_consecutive_misses = 2

[[queues]]
id = "urgent"
kinds = ["emergency"]
steps = [{ after_secs = 0 }]

[[queues]]
id = "everything-else"
kinds = ["technical", "call", "callback"]
steps = [{ after_secs = 0 }]
"#;

#[tokio::test]
async fn a_batch_routes_by_the_rules_in_force_even_when_they_changed_since_the_last_batch() {
    let store = fresh_store().await;
    district(&store).await;
    let queues = |prefix: &'static str| {
        let store = store.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT c.queue_id FROM alarms a JOIN calls c ON c.id = a.call_id
                 WHERE a.alarm_id LIKE $1 || '%' ORDER BY a.alarm_id",
            )
            .bind(prefix)
            .fetch_all(store.pool())
            .await
            .unwrap()
        }
    };
    let batch = |prefix: &'static str| {
        (0..DEVICES)
            .map(|device| {
                alarm(
                    device,
                    &format!("{prefix}{device}"),
                    "SOS",
                    "",
                    Some(CallKind::Emergency),
                )
            })
            .collect::<Vec<_>>()
    };
    // The first batch reads the built-in rules (and this process keeps them).
    for result in store.record_alarms(&batch("before-")).await {
        assert!(result.unwrap().created);
    }
    let built_in = store.routing_rules().await.unwrap();
    let before = queues("before-").await;
    assert_eq!(before.len(), DEVICES);
    assert!(before
        .iter()
        .all(|queue| *queue == built_in.queue_for(CallKind::Emergency).id));

    // New rules loaded elsewhere (another node, the CLI): the next batch must not route by the
    // rules this process kept.
    store
        .load_routing_rules(URGENT_RULES, "test")
        .await
        .unwrap();
    let results = store.record_alarms(&batch("after-")).await;
    for result in &results {
        assert!(result.as_ref().unwrap().created);
    }
    assert_eq!(queues("after-").await, vec!["urgent"; DEVICES]);
    // It went in as one batch, still (one transaction for its four alarms).
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM alarms WHERE alarm_id LIKE 'after-%'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(transactions, 1);
}

#[tokio::test]
async fn a_batch_whose_item_already_exists_fails_as_a_whole_and_every_alarm_is_stored_one_by_one() {
    let batched = fresh_store().await;
    let single = fresh_store().await;
    for store in [&batched, &single] {
        district(store).await;
        // An item already holds the request id alarm "taken" would give its call (written by
        // hand: no path of the hotline makes one).
        sqlx::query(
            "INSERT INTO calls (id, device_id, resident_id, request_id, kind, priority, state,
                                queue_id, deadline_at)
             SELECT gen_random_uuid(), d.id, d.resident_id, 'alarm:taken', 'emergency', 10,
                    'ended', 'emergency', now()
             FROM devices d WHERE d.id = 'tab-batch-0'",
        )
        .execute(store.pool())
        .await
        .unwrap();
    }
    let alarms = vec![
        alarm(1, "ordinary", "SOS", "", Some(CallKind::Emergency)),
        alarm(0, "taken", "SOS", "", Some(CallKind::Emergency)),
        alarm(2, "note", "UNSPECIFIED", "", None),
    ];
    let batch_results = batched.record_alarms(&alarms).await;
    let mut single_results = Vec::new();
    for alarm in &alarms {
        single_results.push(single.record_new_alarm(alarm).await);
    }
    assert_eq!(
        batch_results.iter().map(shape).collect::<Vec<_>>(),
        single_results.iter().map(shape).collect::<Vec<_>>()
    );
    // Nothing was lost: every alarm is stored, exactly as the one-by-one path stores it.
    assert_eq!(snapshot(&batched).await, snapshot(&single).await);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM alarms")
        .fetch_one(batched.pool())
        .await
        .unwrap();
    assert_eq!(stored, 3);
    // They went in one by one: the failed statement left nothing behind.
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM alarms")
        .fetch_one(batched.pool())
        .await
        .unwrap();
    assert_eq!(transactions, 3);
}

/// An offline alarm as the sweep wrote it: device, detail, item kind, announced, item state,
/// request id, its events, its outbox rows.
type OfflineWritten = (String, String, String, bool, String, String, i64, i64);

#[tokio::test]
async fn the_offline_sweep_raises_every_silent_devices_alarm_and_item_in_one_statement() {
    let store = fresh_store().await;
    district(&store).await;
    let mut listener = store.listen().await.unwrap();
    // Three tablets silent for two minutes, one heard just now.
    sqlx::query(
        "UPDATE devices SET last_seen_at = CASE WHEN id = 'tab-batch-3' THEN clock_timestamp()
                                               ELSE clock_timestamp() - interval '120 s' END",
    )
    .execute(store.pool())
    .await
    .unwrap();
    // An arrival of tab-batch-2 holds its row: the sweep leaves it for a later round.
    let mut arrival = store.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM devices WHERE id = 'tab-batch-2' FOR NO KEY UPDATE")
        .execute(&mut *arrival)
        .await
        .unwrap();
    let raised = tokio::time::timeout(
        Duration::from_secs(30),
        store.sweep_offline_devices(Duration::from_secs(60), 100),
    )
    .await
    .expect("the sweep does not wait for a held row")
    .unwrap();
    assert_eq!(raised, 2);
    let (dispatch, told) = heard(&mut listener).await;
    assert!(dispatch, "the dispatchers are told");
    assert!(told.is_empty(), "the tablets are not: {told:?}");
    // What the one-by-one path wrote for each: the alarm, a technical item the tablet is not
    // shown (nothing in its outbox), and both events.
    let written: Vec<OfflineWritten> = sqlx::query_as(
        "SELECT a.device_id, a.detail, c.kind, c.announce, c.state, c.request_id,
                (SELECT count(*) FROM events e WHERE e.device_id = a.device_id
                 AND ((e.kind = 'alarm.raised' AND e.detail->>'alarm_id' = a.alarm_id
                       AND e.detail->>'kind' = 'DEVICE_OFFLINE' AND e.call_id IS NULL)
                      OR (e.kind = 'call.created' AND e.call_id = c.id
                          AND e.detail->>'kind' = 'technical'))),
                (SELECT count(*) FROM device_outbox o WHERE o.device_id = a.device_id
                 AND (o.payload->>'call_id')::uuid = c.id)
         FROM alarms a JOIN calls c ON c.id = a.call_id
         WHERE a.kind = 'DEVICE_OFFLINE' AND a.cleared_at IS NULL AND a.raised_at IS NULL
         ORDER BY a.device_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(written.len(), 2, "{written:?}");
    for (row, device) in written.iter().zip(["tab-batch-0", "tab-batch-1"]) {
        assert_eq!(row.0, device);
        assert!(
            row.1.starts_with("no word from the device for 12"),
            "{row:?}"
        );
        assert_eq!(
            (row.2.as_str(), row.3, row.4.as_str()),
            ("technical", false, "queued")
        );
        assert!(row.5.starts_with("alarm:offline."), "{row:?}");
        assert_eq!((row.6, row.7), (2, 0), "events and outbox of {row:?}");
    }
    assert_eq!(
        store.live_statistics().await.unwrap(),
        store.recompute_statistics(None, None).await.unwrap()
    );
    // Once the arrival lets go (without writing), the next round raises the third; the round
    // after that finds nothing new.
    arrival.rollback().await.unwrap();
    assert_eq!(
        store
            .sweep_offline_devices(Duration::from_secs(60), 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .sweep_offline_devices(Duration::from_secs(60), 100)
            .await
            .unwrap(),
        0
    );
    let open: Vec<String> = sqlx::query_scalar(
        "SELECT device_id FROM alarms WHERE kind = 'DEVICE_OFFLINE' AND cleared_at IS NULL
         ORDER BY device_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(open, ["tab-batch-0", "tab-batch-1", "tab-batch-2"]);
    // The device rows say which have an open offline alarm (the sweep's search reads only the
    // others); clearing one, by whichever path, puts its device back in the search.
    let flagged = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT id FROM devices WHERE offline_alarm_open ORDER BY id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
    };
    assert_eq!(flagged().await, open);
    assert!(store.device_back("tab-batch-0").await.unwrap());
    sqlx::query("UPDATE alarms SET cleared_at = clock_timestamp() WHERE device_id = 'tab-batch-1'")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(flagged().await, ["tab-batch-2"]);
    assert_eq!(
        store
            .sweep_offline_devices(Duration::from_secs(60), 100)
            .await
            .unwrap(),
        2,
        "both are still silent, so both are reported again"
    );
    assert_eq!(flagged().await, open);
    sqlx::query("DELETE FROM alarms WHERE device_id = 'tab-batch-2' AND kind = 'DEVICE_OFFLINE'")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(flagged().await, ["tab-batch-0", "tab-batch-1"]);
}

#[tokio::test]
async fn returning_devices_are_cleared_together_as_one_by_one_would_clear_them() {
    let store = fresh_store().await;
    district(&store).await;
    sqlx::query("UPDATE devices SET last_seen_at = clock_timestamp() - interval '120 s'")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(
        store
            .sweep_offline_devices(Duration::from_secs(60), 100)
            .await
            .unwrap(),
        DEVICES
    );
    // Two operators are offered two of the four offline items; one of them takes theirs.
    let mut operators = Vec::new();
    for name in ["first", "second"] {
        let operator = store.add_operator(name, name, "unused").await.unwrap();
        store
            .set_operator_status(operator, carebell_domain::OperatorStatus::Available)
            .await
            .unwrap();
        operators.push(operator);
    }
    let offers = store.match_round(Duration::from_secs(60)).await.unwrap();
    assert_eq!(offers.len(), 2, "{offers:?}");
    let (ringing, taken) = (&offers[0], &offers[1]);
    store
        .accept_offer(taken.offer_id, taken.operator_id)
        .await
        .unwrap();
    let device_of = |call_id: uuid::Uuid| {
        let store = store.clone();
        async move { store.call(call_id).await.unwrap().device_id }
    };
    let ringing_device = device_of(ringing.call_id).await;
    let taken_device = device_of(taken.call_id).await;
    let left_out = (0..DEVICES)
        .map(|index| format!("tab-batch-{index}"))
        .find(|device| *device != ringing_device && *device != taken_device)
        .unwrap();
    let returning: Vec<String> = (0..DEVICES)
        .map(|index| format!("tab-batch-{index}"))
        .filter(|device| *device != left_out)
        .chain(["tab-never-registered".to_owned()])
        .collect();

    let mut listener = store.listen().await.unwrap();
    let mut cleared = store.devices_back(&returning).await.unwrap();
    cleared.sort();
    let mut expected: Vec<String> = returning[..DEVICES - 1].to_vec();
    expected.sort();
    assert_eq!(
        cleared, expected,
        "each returning device with an open alarm"
    );

    // Each returning device: its offline alarm cleared, one "device back" alarm and its event.
    let per_device: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT d.id,
                (SELECT count(*) FROM alarms a WHERE a.device_id = d.id
                 AND a.kind = 'DEVICE_OFFLINE' AND a.cleared_at IS NULL),
                (SELECT count(*) FROM alarms a WHERE a.device_id = d.id AND a.kind = 'DEVICE_BACK'
                 AND a.detail = 'the device is connected again' AND a.alarm_id LIKE 'back.%'
                 AND a.call_id IS NULL AND a.raised_at IS NULL),
                (SELECT count(*) FROM events e JOIN alarms a ON a.alarm_id = e.detail->>'alarm_id'
                 WHERE e.kind = 'alarm.raised' AND e.device_id = d.id AND a.device_id = d.id
                 AND a.kind = 'DEVICE_BACK' AND e.detail->>'kind' = 'DEVICE_BACK'
                 AND e.detail ? 'raised_at' AND e.call_id IS NULL)
         FROM devices d ORDER BY d.id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    for (device, open, back, events) in &per_device {
        if *device == left_out {
            assert_eq!(
                (*open, *back, *events),
                (1, 0, 0),
                "{device} did not return"
            );
        } else {
            assert_eq!((*open, *back, *events), (0, 1, 1), "{device}");
        }
    }
    let flagged: Vec<String> =
        sqlx::query_scalar("SELECT id FROM devices WHERE offline_alarm_open ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(flagged, std::slice::from_ref(&left_out));

    // Items: the one an operator holds stays theirs; the ringing one and the queued one are
    // cleared, the ringing offer withdrawn; the left-out device's item still waits.
    let items: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT c.device_id, c.state, c.ended_at IS NOT NULL AND c.state = 'cleared' AS ended,
                (SELECT count(*) FROM events e WHERE e.call_id = c.id AND e.kind = 'call.cleared'
                 AND e.device_id = c.device_id AND e.detail->>'reason' = 'device back')
         FROM alarms a JOIN calls c ON c.id = a.call_id
         WHERE a.kind = 'DEVICE_OFFLINE' ORDER BY c.device_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
    .into_iter()
    .map(
        |(device, state, ended, events): (String, String, bool, i64)| {
            (device, state, ended.then(|| "ended".to_owned()), events)
        },
    )
    .collect();
    for (device, state, ended, events) in &items {
        let want = if *device == taken_device {
            ("answered", None, 0)
        } else if *device == left_out {
            ("queued", None, 0)
        } else {
            ("cleared", Some("ended"), 1)
        };
        assert_eq!(
            (state.as_str(), ended.as_deref(), *events),
            want,
            "{device}'s item"
        );
    }
    let offer: (String, Option<String>, bool) =
        sqlx::query_as("SELECT state, reason, decided_at IS NOT NULL FROM offers WHERE id = $1")
            .bind(ringing.offer_id)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(
        offer,
        ("withdrawn".to_owned(), Some("cleared".to_owned()), true)
    );
    let withdrawn_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE kind = 'offer.withdrawn' AND offer_id = $1
         AND operator_id = $2 AND call_id = $3 AND detail->>'reason' = 'cleared'",
    )
    .bind(ringing.offer_id)
    .bind(ringing.operator_id)
    .bind(ringing.call_id)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(withdrawn_events, 1);
    // The ringing operator and the consoles hear of it.
    let mut withdrawn = Vec::new();
    let mut changed = BTreeSet::new();
    while let Ok(Ok(Heard::Notification(notification))) =
        tokio::time::timeout(Duration::from_millis(500), listener.recv()).await
    {
        match notification {
            Notification::OfferWithdrawn {
                offer_id,
                operator_id,
                reason,
                ..
            } => withdrawn.push((offer_id, operator_id, reason)),
            Notification::CallChanged { call_id, state, .. } if state == "cleared" => {
                changed.insert(device_of(call_id).await);
            }
            _ => {}
        }
    }
    assert_eq!(
        withdrawn,
        [(ringing.offer_id, ringing.operator_id, "cleared".to_owned())]
    );
    let cleared_items: BTreeSet<String> = items
        .iter()
        .filter(|item| item.1 == "cleared")
        .map(|item| item.0.clone())
        .collect();
    assert_eq!(changed, cleared_items);
    assert_eq!(cleared_items.len(), 2);
    assert_eq!(
        store.live_statistics().await.unwrap(),
        store.recompute_statistics(None, None).await.unwrap()
    );

    // Again: nothing is open for them any more. The one left out returns on its own.
    assert!(store.devices_back(&returning).await.unwrap().is_empty());
    assert!(store.device_back(&left_out).await.unwrap());
    assert!(!store.device_back(&left_out).await.unwrap());
    assert!(store.devices_back(&[]).await.unwrap().is_empty());
}
