//! Trust: a revoked tablet is cut off on whichever node holds it and cannot come back; the
//! application's database role cannot alter the audit log; a resident's export holds
//! everything about them and erasure leaves no personal data outside what must be kept;
//! hostile text (SQL, a NUL, invalid UTF-8 in every field of every API, the admin commands and
//! the transports) is stored as text or refused clearly, never executed.

use std::time::Duration;

use carebell_proto::console::v1::Disposition;
use carebell_proto::device::v1::envelope::Body;
use carebell_proto::device::v1::{Alarm, AlarmKind};
use carebell_store::{NewContact, NewResident};
use carebell_tests::{Answer, Bridge, NodeOptions, TestNode, PASSWORD};
use firmware_sim::{SimError, Tablet, TabletEvent, TransportKind};
use uuid::Uuid;

/// Waits for the tablet's link to close; returns what it heard on the way.
async fn closed(tablet: &mut Tablet, within: Duration) -> Option<TabletEvent> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tablet.next_event(left).await? {
            event @ TabletEvent::Closed { .. } => return Some(event),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_tablet_is_cut_off_on_the_other_node_and_cannot_come_back() {
    let database_url = carebell_tests::fresh_database().await;
    let certificates = carebell_server::devcert::DevCertificates::generate().unwrap();
    let options = |node_id: &str| NodeOptions {
        database_url: Some(database_url.clone()),
        certificates: Some(certificates.clone()),
        node_id: node_id.to_owned(),
        ..NodeOptions::default()
    };
    let a = TestNode::start(options("node-a")).await;
    let b = TestNode::start(options("node-b")).await;
    // Two tablets on node B; only one is revoked, through node A.
    let (_, config) = b.tablet_config("吊销 测试", TransportKind::WebSocket).await;
    let (_, bystander_config) = b.tablet_config("旁观 测试", TransportKind::WebSocket).await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    let bystander = Tablet::connect(&bystander_config).await.unwrap();
    tablet.press().await.unwrap();
    let device_id = config.credentials.device_id.clone();
    a.store
        .revoke_device(&device_id, "admin:test", "lost in a move")
        .await
        .unwrap();
    match closed(&mut tablet, Duration::from_secs(5)).await {
        Some(TabletEvent::Closed { code, reason, .. }) => {
            assert_eq!(
                code,
                Some(carebell_proto::CLOSE_AUTH_REJECTED),
                "closed as rejected: {reason}"
            );
            assert!(reason.contains("revoked"), "{reason}");
        }
        other => panic!("the revoked tablet was not cut off: {other:?}"),
    }
    // It cannot come back, on either node.
    for node in [&a, &b] {
        let mut again = config.clone();
        again.credentials.websocket_url = node.websocket_url.clone();
        match Tablet::connect(&again).await {
            Err(SimError::Rejected { .. }) => {}
            other => panic!("a revoked tablet connected again: {:?}", other.map(|_| ())),
        }
    }
    // The other tablet on the same node is untouched.
    bystander.press().await.unwrap();
    // Revoking twice, or an unknown device, is a clear error.
    let twice = a.store.revoke_device(&device_id, "admin:test", "").await;
    assert!(
        matches!(twice, Err(carebell_store::StoreError::Refused(_))),
        "{twice:?}"
    );
    let unknown = a
        .store
        .revoke_device("tab-000000000000", "admin:test", "")
        .await;
    assert!(
        matches!(unknown, Err(carebell_store::StoreError::NotFound { .. })),
        "{unknown:?}"
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'device.revoke' AND detail->>'device_id' = $1",
    )
    .bind(&device_id)
    .fetch_one(a.store.pool())
    .await
    .unwrap();
    assert_eq!(audited, 1);
    bystander.close().await;
    a.stop().await;
    b.stop().await;
}

/// Statements that would alter the audit log (or the event log, or the ledger).
const ALTERATIONS: &[&str] = &[
    "UPDATE audit_log SET actor = 'someone else'",
    "DELETE FROM audit_log",
    "TRUNCATE audit_log",
    "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
    "DROP TRIGGER audit_log_append_only ON audit_log",
    "DROP TABLE audit_log",
    "ALTER TABLE audit_log OWNER TO carebell_app",
    "UPDATE events SET kind = 'x'",
    "DELETE FROM events",
    "TRUNCATE events",
    "DELETE FROM ledger_entries",
    "CREATE OR REPLACE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
];

async fn assert_cannot_alter(pool: &sqlx::PgPool, who: &str) {
    for statement in ALTERATIONS {
        let outcome = sqlx::query(statement).execute(pool).await;
        let error = match outcome {
            Ok(_) => panic!("{who} could run: {statement}"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.contains("permission denied") || error.contains("must be owner"),
            "{who}: {statement}: unexpected error {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_role_cannot_alter_the_audit_log() {
    let node = TestNode::start(NodeOptions::default()).await;
    let resident = node.resident("审计 测试").await;
    let mut operator = node
        .sign_in(&node.operator_account("auditor", "Auditor").await)
        .await;
    operator.get_resident(&resident.to_string()).await.unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_log")
            .fetch_one(node.store.pool())
            .await
            .unwrap()
    };
    let before = count().await;
    assert!(before >= 1, "the read was audited");
    // The node's own pool works as carebell_app.
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(node.store.pool())
        .await
        .unwrap();
    assert_eq!(role, "carebell_app");
    assert_cannot_alter(node.store.pool(), "the node's pool").await;
    // And a direct login as the role (how production connects) can do no more.
    let database = sqlx::query_scalar::<_, String>("SELECT current_database()::text")
        .fetch_one(node.store.pool())
        .await
        .unwrap();
    let login = sqlx::PgPool::connect(&format!(
        "postgres://carebell_app:carebell_app@127.0.0.1:5432/{database}"
    ))
    .await
    .unwrap();
    assert_cannot_alter(&login, "a carebell_app login").await;
    // A GRANT on a table the role does not own is a no-op with a warning: no right appears.
    let _ = sqlx::query("GRANT UPDATE, DELETE ON audit_log TO carebell_app")
        .execute(&login)
        .await;
    let rights: (bool, bool, bool) = sqlx::query_as(
        "SELECT has_table_privilege('carebell_app', 'audit_log', 'UPDATE'),
                has_table_privilege('carebell_app', 'audit_log', 'DELETE'),
                has_table_privilege('carebell_app', 'audit_log', 'INSERT')",
    )
    .fetch_one(&login)
    .await
    .unwrap();
    assert_eq!(rights, (false, false, true));
    // It can still append (the application's every read is audited).
    sqlx::query("INSERT INTO audit_log (actor, action) VALUES ('test', 'test.append')")
        .execute(&login)
        .await
        .unwrap();
    assert_eq!(count().await, before + 1);
    login.close().await;
    // Even the schema's owner (the migration role) is refused by the triggers, and told why.
    node.store
        .top_up_card(resident, 1000, "opening balance")
        .await
        .unwrap();
    let owner = sqlx::PgPool::connect(&format!(
        "postgres://carebell:carebell@127.0.0.1:5432/{database}"
    ))
    .await
    .unwrap();
    for statement in [
        "UPDATE audit_log SET action = 'changed'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "UPDATE events SET kind = 'changed'",
        "UPDATE ledger_transactions SET memo = 'changed'",
        "DELETE FROM ledger_entries",
        "TRUNCATE ledger_entries CASCADE",
        "TRUNCATE ledger_transactions CASCADE",
    ] {
        // Every table holds rows (the read's audit, its events, the top-up's ledger lines):
        // the triggers run per row for UPDATE and DELETE, per statement for TRUNCATE.
        let message = sqlx::query(statement)
            .execute(&owner)
            .await
            .expect_err(statement)
            .to_string();
        let table = statement
            .split_whitespace()
            .find(|word| {
                [
                    "audit_log",
                    "events",
                    "ledger_transactions",
                    "ledger_entries",
                ]
                .contains(word)
            })
            .unwrap();
        assert!(
            message.contains(&format!("{table} is append-only")),
            "{statement}: {message}"
        );
    }
    assert_eq!(count().await, before + 1, "nothing changed");
    owner.close().await;
    node.stop().await;
}

/// Every text, JSON and array column in the database that mentions `needle`.
async fn mentions(pool: &sqlx::PgPool, needle: &str) -> Vec<String> {
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema()
           AND data_type IN ('text', 'jsonb', 'json', 'character varying', 'ARRAY')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut found = Vec::new();
    for (table, column) in columns {
        let hits: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{table}\" WHERE \"{column}\"::text LIKE '%' || $1 || '%'"
        ))
        .bind(needle)
        .fetch_one(pool)
        .await
        .unwrap();
        if hits > 0 {
            found.push(format!("{table}.{column}"));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_holds_everything_and_erasure_leaves_no_personal_data() {
    let node = TestNode::start(NodeOptions::default()).await;
    let station = node.station().await;
    // Every personal field carries the marker, so that any copy of it can be found.
    let resident = node
        .store
        .add_resident(&NewResident {
            station_id: station,
            full_name: "ZQX 王秀兰".to_owned(),
            address: "ZQX 深圳市盐田区海山街道 8 号".to_owned(),
            phone: "ZQX +86 138 0000 0000".to_owned(),
            // (A dialect would route the call to an operator who speaks it.)
            dialect: String::new(),
            medical_notes: "ZQX 糖尿病, insulin".to_owned(),
            risk_warnings: "ZQX lives alone".to_owned(),
            key_safe: "ZQX key safe 4711".to_owned(),
        })
        .await
        .unwrap();
    let family = node
        .store
        .add_family_account("zqx-son", "Son", "not-a-real-hash")
        .await
        .unwrap();
    node.store
        .add_contact(&NewContact {
            resident_id: resident,
            name: "ZQX 李明".to_owned(),
            relationship: "ZQX son".to_owned(),
            phone: "ZQX 139 0000 0000".to_owned(),
            holds_keys: true,
            position: Some(1),
            family_account_id: Some(family),
            channels: vec!["app".to_owned()],
        })
        .await
        .unwrap();
    let credentials = node.provision(resident).await;
    let config = firmware_sim::TabletConfig::new(credentials, TransportKind::WebSocket);
    let mut tablet = Tablet::connect(&config).await.unwrap();
    // A call with the operator's note, a technical alarm with the device's detail, and a
    // message from the family waiting for the tablet.
    let mut console = node.available_operator("privacy-op", "Privacy").await;
    tablet.press().await.unwrap();
    let offer = console.next_offer(Duration::from_secs(10)).await.unwrap();
    console.client.accept(&offer.offer_id).await.unwrap();
    console
        .client
        .end_call(
            &offer.call_id,
            Disposition::HealthConcern,
            "ZQX 说头晕, 明天复查",
        )
        .await
        .unwrap();
    tablet
        .send(Body::Alarm(Alarm {
            alarm_id: Uuid::new_v4().simple().to_string(),
            kind: AlarmKind::LowBattery as i32,
            raised_at_ms: chrono::Utc::now().timestamp_millis(),
            detail: "ZQX battery 5%".to_owned(),
        }))
        .await
        .unwrap();
    node.store
        .send_family_message(family, resident, "ZQX 妈, 周日来看您")
        .await
        .unwrap();
    // The console read the record (audited).
    console
        .client
        .get_resident(&resident.to_string())
        .await
        .unwrap();

    let export = node
        .store
        .export_resident(resident, "admin:test")
        .await
        .unwrap();
    let text = export.to_string();
    for expected in [
        "ZQX 王秀兰",
        "ZQX 深圳市盐田区海山街道 8 号",
        "ZQX +86 138 0000 0000",
        "ZQX 糖尿病, insulin",
        "ZQX lives alone",
        "ZQX key safe 4711",
        "ZQX 李明",
        "ZQX 139 0000 0000",
        "ZQX 说头晕, 明天复查",
        "ZQX battery 5%",
        "ZQX 妈, 周日来看您",
        &config.credentials.device_id,
        &offer.call_id,
    ] {
        assert!(text.contains(expected), "the export lacks {expected}");
    }
    for table in [
        "residents",
        "contacts",
        "devices",
        "calls",
        "offers",
        "alarms",
        "events",
        "audit_log",
        "device_outbox",
    ] {
        assert!(
            export["tables"][table]
                .as_array()
                .is_some_and(|rows| !rows.is_empty()),
            "the export has no {table} rows"
        );
    }
    assert!(!text.contains("password_hash") && !text.contains("not-a-real-hash"));
    let calls_before: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE resident_id = $1")
        .bind(resident)
        .fetch_one(node.store.pool())
        .await
        .unwrap();

    // An event carrying free text about the resident (as an order's call-back note does).
    sqlx::query("INSERT INTO events (kind, call_id, detail) VALUES ('test.note', $1::uuid, $2)")
        .bind(&offer.call_id)
        .bind(serde_json::json!({ "note": "ZQX 回访: 已好转" }))
        .execute(node.store.pool())
        .await
        .unwrap();
    let before = mentions(node.store.pool(), "ZQX").await;
    for place in [
        "residents.full_name",
        "contacts.phone",
        "calls.note",
        "alarms.detail",
        "device_outbox.payload",
        "events.detail",
    ] {
        assert!(
            before.iter().any(|found| found == place),
            "{place} not in {before:?}"
        );
    }
    let erasure = node
        .store
        .erase_resident(resident, "admin:test")
        .await
        .unwrap();
    assert_eq!(erasure.devices_revoked, 1);
    assert_eq!(erasure.contacts_anonymised, 1);
    assert_eq!(
        mentions(node.store.pool(), "ZQX").await,
        Vec::<String>::new(),
        "personal data left after erasure"
    );
    // The care record stays, under the resident's id; the tablet is cut off.
    let calls_after: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE resident_id = $1")
        .bind(resident)
        .fetch_one(node.store.pool())
        .await
        .unwrap();
    assert_eq!(calls_after, calls_before);
    assert!(closed(&mut tablet, Duration::from_secs(5)).await.is_some());
    let again = node.store.erase_resident(resident, "admin:test").await;
    assert!(
        matches!(again, Err(carebell_store::StoreError::Refused(_))),
        "{again:?}"
    );
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE resident_id = $1 AND action LIKE 'resident.%' ORDER BY id",
    )
    .bind(resident)
    .fetch_all(node.store.pool())
    .await
    .unwrap();
    assert!(actions.ends_with(&["resident.export".to_owned(), "resident.erase".to_owned()]));
    node.stop().await;
}

/// SQL in every kind of text field: stored exactly as text where text is wanted, refused where
/// it is not valid, and never executed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_in_text_fields_is_only_ever_text() {
    const INJECTIONS: &[&str] = &[
        "'; DROP TABLE calls; --",
        "x' OR '1'='1",
        "\\\"); DELETE FROM residents; --",
        "1; UPDATE operators SET skills = '{supervisor}'",
    ];
    let node = TestNode::start(NodeOptions::default()).await;
    let station = node.station().await;
    let channel = carebell_server::console_client::channel(&node.grpc_url, Some(&node.ca_pem))
        .await
        .unwrap();
    let mut console = node.available_operator("injection-op", "Injection").await;
    for (n, injection) in INJECTIONS.iter().enumerate() {
        // Sign-in with SQL as the user name or the password: refused like any wrong password.
        for (username, password) in [(*injection, "x"), ("injection-op", *injection)] {
            let outcome = carebell_server::console_client::OperatorClient::sign_in(
                channel.clone(),
                username,
                password,
            )
            .await;
            assert!(outcome.is_err(), "sign-in with {injection:?} succeeded");
        }
        // As a resident's name, address and notes: kept exactly.
        let resident = node
            .store
            .add_resident(&NewResident {
                station_id: station,
                full_name: format!("{injection}{n}"),
                address: injection.to_string(),
                medical_notes: injection.to_string(),
                ..NewResident::default()
            })
            .await
            .unwrap();
        let record = console
            .client
            .get_resident(&resident.to_string())
            .await
            .unwrap();
        assert_eq!(record.full_name, format!("{injection}{n}"));
        assert_eq!(record.medical_notes, *injection);
        // As an id in an RPC: refused as a malformed id.
        let refused = console.client.get_resident(injection).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        // As the operator's note on a call: kept exactly.
        let config = firmware_sim::TabletConfig::new(
            node.provision(resident).await,
            TransportKind::WebSocket,
        );
        let tablet = Tablet::connect(&config).await.unwrap();
        tablet.press().await.unwrap();
        let offer = console.next_offer(Duration::from_secs(10)).await.unwrap();
        console.client.accept(&offer.offer_id).await.unwrap();
        console
            .client
            .end_call(&offer.call_id, Disposition::Information, injection)
            .await
            .unwrap();
        let note: String = sqlx::query_scalar("SELECT note FROM calls WHERE id = $1::uuid")
            .bind(&offer.call_id)
            .fetch_one(node.store.pool())
            .await
            .unwrap();
        assert_eq!(note, *injection);
        tablet.close().await;
    }
    // Nothing was executed: every table and every resident is still there, and nobody became
    // a supervisor.
    let residents: i64 = sqlx::query_scalar("SELECT count(*) FROM residents")
        .fetch_one(node.store.pool())
        .await
        .unwrap();
    assert_eq!(residents as usize, INJECTIONS.len());
    let calls: i64 = sqlx::query_scalar("SELECT count(*) FROM calls")
        .fetch_one(node.store.pool())
        .await
        .unwrap();
    assert_eq!(calls as usize, INJECTIONS.len());
    let supervisors: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operators WHERE 'supervisor' = ANY(skills)")
            .fetch_one(node.store.pool())
            .await
            .unwrap();
    assert_eq!(supervisors, 0);
    // And an operator who is not a supervisor cannot do a supervisor's work.
    let denied = console
        .client
        .reclaim_call(&Uuid::new_v4().to_string())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    node.stop().await;
}

/// The status code a console sign-in gets (`Ok` when it works).
async fn sign_in_code(
    channel: &tonic::transport::Channel,
    username: &str,
    password: &str,
) -> tonic::Code {
    use carebell_server::console_client::{ClientError, OperatorClient};
    match OperatorClient::sign_in(channel.clone(), username, password).await {
        Ok(_) => tonic::Code::Ok,
        Err(ClientError::Status(status)) => status.code(),
        Err(error) => panic!("{error}"),
    }
}

/// Failed sign-ins lock the name (known or not) after five in a row, before any password is
/// checked, and only that name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_sign_ins_lock_the_name_and_only_that_name() {
    let node = TestNode::start(NodeOptions::default()).await;
    node.operator_account("target", "Target").await;
    node.operator_account("neighbour", "Neighbour").await;
    let channel = carebell_server::console_client::channel(&node.grpc_url, Some(&node.ca_pem))
        .await
        .unwrap();
    for (name, exists) in [("target", true), ("nobody-by-this-name", false)] {
        for attempt in 1..=carebell_store::MAX_SIGN_IN_FAILURES {
            let outcome = sign_in_code(&channel, name, "wrong password").await;
            let expected = if attempt < carebell_store::MAX_SIGN_IN_FAILURES {
                tonic::Code::Unauthenticated
            } else {
                tonic::Code::ResourceExhausted
            };
            assert_eq!(outcome, expected, "{name} attempt {attempt}");
        }
        // Locked: even the right password is refused, the same way for a name that exists and
        // one that does not.
        let outcome = sign_in_code(&channel, name, carebell_tests::PASSWORD).await;
        assert_eq!(outcome, tonic::Code::ResourceExhausted, "{name} ({exists})");
    }
    // Another name is not affected, and its success clears its own count.
    let outcome = sign_in_code(&channel, "neighbour", carebell_tests::PASSWORD).await;
    assert_eq!(outcome, tonic::Code::Ok);
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sign_in_failures WHERE username = 'neighbour'")
            .fetch_one(node.store.pool())
            .await
            .unwrap();
    assert_eq!(rows, 0);
    node.stop().await;
}

/// A tablet enrols with the installer's one-time code and a key it made itself; the code works
/// once and not after it expires; a replacement's enrolment cuts the old tablet off for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablet_enrols_once_with_its_own_key_and_a_replacement_retires_the_old_one() {
    use carebell_proto::device::v1::device_enrolment_client::DeviceEnrolmentClient;
    use carebell_proto::device::v1::EnrolRequest;
    let node = TestNode::start(NodeOptions::default()).await;
    let resident = node.resident("入网 测试").await;
    let enrol = |code: String| {
        let (grpc, ws, ca) = (
            node.grpc_url.clone(),
            node.websocket_url.clone(),
            node.ca_pem.clone(),
        );
        async move { firmware_sim::enrol(&grpc, &ws, Some(&ca), "localhost", &code).await }
    };
    let refused_code =
        |outcome: Result<firmware_sim::Credentials, firmware_sim::EnrolError>| match outcome {
            Err(firmware_sim::EnrolError::Refused(status)) => status.code(),
            Err(error) => panic!("{error}"),
            Ok(credentials) => panic!("enrolled as {}", credentials.device_id),
        };
    let day = Duration::from_secs(86_400);
    let code = node
        .store
        .create_enrolment_code(resident, None, day, "admin:test")
        .await
        .unwrap();
    // Typed by hand: lower case works too.
    let first = enrol(code.to_lowercase()).await.unwrap();
    let mut tablet = Tablet::connect(&firmware_sim::TabletConfig::new(
        first.clone(),
        TransportKind::WebSocket,
    ))
    .await
    .unwrap();
    tablet.press().await.unwrap();
    let owner: Uuid = sqlx::query_scalar("SELECT resident_id FROM devices WHERE id = $1")
        .bind(&first.device_id)
        .fetch_one(node.store.pool())
        .await
        .unwrap();
    assert_eq!(owner, resident);
    // Once only.
    assert_eq!(
        refused_code(enrol(code.clone()).await),
        tonic::Code::PermissionDenied
    );
    // Not after it expires (the same answer as an unknown code).
    let late = node
        .store
        .create_enrolment_code(resident, None, day, "admin:test")
        .await
        .unwrap();
    sqlx::query(
        "UPDATE enrolment_codes SET expires_at = now() - interval '1 second' WHERE used_at IS NULL",
    )
    .execute(node.store.pool())
    .await
    .unwrap();
    assert_eq!(
        refused_code(enrol(late).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        refused_code(enrol("ZZZZ-ZZZZ-ZZZZ".to_owned()).await),
        tonic::Code::PermissionDenied
    );
    // Malformed requests: clear errors.
    assert_eq!(
        refused_code(enrol("'; DROP TABLE devices; --".to_owned()).await),
        tonic::Code::InvalidArgument
    );
    let channel = carebell_server::console_client::channel(&node.grpc_url, Some(&node.ca_pem))
        .await
        .unwrap();
    let valid = node
        .store
        .create_enrolment_code(resident, Some(&first.device_id), day, "admin:test")
        .await
        .unwrap();
    let short_key = DeviceEnrolmentClient::new(channel.clone())
        .enrol(EnrolRequest {
            code: valid.clone(),
            public_key: vec![7; 31],
            firmware_version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        short_key.code(),
        tonic::Code::InvalidArgument,
        "{short_key:?}"
    );
    // A code for another resident's device is refused when it is made.
    let stranger = node.resident("陌生 测试").await;
    let wrong = node
        .store
        .create_enrolment_code(stranger, Some(&first.device_id), day, "admin:test")
        .await;
    assert!(
        matches!(wrong, Err(carebell_store::StoreError::Refused(_))),
        "{wrong:?}"
    );

    // The replacement enrols (the malformed attempt did not use the code up): the old tablet
    // is cut off and cannot come back; the new one works.
    let second = enrol(valid).await.unwrap();
    assert_ne!(second.device_id, first.device_id);
    assert!(matches!(
        closed(&mut tablet, Duration::from_secs(5)).await,
        Some(TabletEvent::Closed { .. })
    ));
    let old = Tablet::connect(&firmware_sim::TabletConfig::new(
        first,
        TransportKind::WebSocket,
    ))
    .await;
    assert!(
        matches!(old, Err(SimError::Rejected { .. })),
        "the old tablet came back"
    );
    let replacement = Tablet::connect(&firmware_sim::TabletConfig::new(
        second,
        TransportKind::WebSocket,
    ))
    .await
    .unwrap();
    replacement.press().await.unwrap();
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE resident_id = $1 AND action LIKE 'device.%' ORDER BY id",
    )
    .bind(resident)
    .fetch_all(node.store.pool())
    .await
    .unwrap();
    assert_eq!(
        audited,
        [
            "device.enrolment_code",
            "device.enrol",
            "device.enrolment_code",
            "device.enrolment_code",
            "device.enrol"
        ]
    );
    replacement.close().await;
    node.stop().await;
}

/// A renewed certificate is used by new connections on the device and gRPC listeners without
/// a restart; connected tablets stay; a renewal that does not parse leaves the one in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_used_without_a_restart() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (_, connected_config) = node
        .tablet_config("续期 测试", TransportKind::WebSocket)
        .await;
    let connected = Tablet::connect(&connected_config).await.unwrap();
    // Another tablet makes the new connections (one device, one session).
    let (_, mut config) = node
        .tablet_config("续期 新连接", TransportKind::WebSocket)
        .await;
    // The renewal: a certificate from another CA, written the way renewal tools do (a new file
    // moved into place).
    let renewed = carebell_server::devcert::DevCertificates::generate().unwrap();
    let staging = carebell_tests::TempDir::new();
    let (new_cert, new_key) = renewed.write(&staging.0).unwrap();
    let (cert_path, key_path) = node.certificate_paths.clone();
    let (next_key, next_cert) = (
        key_path.with_extension("key.next"),
        cert_path.with_extension("pem.next"),
    );
    std::fs::copy(&new_key, &next_key).unwrap();
    std::fs::copy(&new_cert, &next_cert).unwrap();
    std::fs::rename(&next_key, &key_path).unwrap();
    std::fs::rename(&next_cert, &cert_path).unwrap();
    // New connections now see the renewed certificate (trusted through the new CA only).
    config.credentials.ca_certificate_pem = Some(renewed.ca_pem.clone());
    let mut renewed_tablet = None;
    for _ in 0..50 {
        if let Ok(tablet) = Tablet::connect(&config).await {
            renewed_tablet = Some(tablet);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed_tablet = renewed_tablet.expect("the renewed certificate was never served");
    renewed_tablet.press().await.unwrap();
    let grpc =
        carebell_server::console_client::channel(&node.grpc_url, Some(&renewed.ca_pem)).await;
    assert!(grpc.is_ok(), "gRPC still serves the old certificate");
    // The old CA no longer verifies new connections; the tablet connected before is untouched.
    config.credentials.ca_certificate_pem = Some(node.ca_pem.clone());
    assert!(Tablet::connect(&config).await.is_err());
    connected.press().await.unwrap();
    // A broken renewal is refused and the renewed certificate stays in use.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    config.credentials.ca_certificate_pem = Some(renewed.ca_pem.clone());
    let still = Tablet::connect(&config).await.unwrap();
    still.close().await;
    renewed_tablet.close().await;
    connected.close().await;
    node.stop().await;
}

/// Logs carry ids, never the personal data they are about: a whole call (the record read, a
/// note, a family message, an alarm's detail) logged at debug level leaves no name, phone
/// number, address or note in the output.
#[tokio::test]
async fn logs_carry_no_names_phone_numbers_or_notes() {
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    // This runtime has one thread, so everything the node logs goes through this subscriber.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing_subscriber::util::SubscriberInitExt::set_default(subscriber);

    let node = TestNode::start(NodeOptions::default()).await;
    let station = node.station().await;
    let resident = node
        .store
        .add_resident(&NewResident {
            station_id: station,
            full_name: "ZQXLOG 陈桂芳".to_owned(),
            address: "ZQXLOG 福田区".to_owned(),
            phone: "ZQXLOG-13800000000".to_owned(),
            dialect: String::new(),
            medical_notes: "ZQXLOG 心脏起搏器".to_owned(),
            risk_warnings: "ZQXLOG 独居".to_owned(),
            key_safe: "ZQXLOG 1234".to_owned(),
        })
        .await
        .unwrap();
    let family = node
        .store
        .add_family_account("zqxlog-daughter", "ZQXLOG 女儿", "unused")
        .await
        .unwrap();
    node.store
        .add_contact(&NewContact {
            resident_id: resident,
            name: "ZQXLOG 陈女士".to_owned(),
            relationship: "daughter".to_owned(),
            phone: "ZQXLOG-13900000000".to_owned(),
            holds_keys: false,
            position: Some(1),
            family_account_id: Some(family),
            channels: vec!["app".to_owned()],
        })
        .await
        .unwrap();
    let config =
        firmware_sim::TabletConfig::new(node.provision(resident).await, TransportKind::WebSocket);
    let tablet = Tablet::connect(&config).await.unwrap();
    let mut console = node.available_operator("zqxlog-op", "Log").await;
    tablet.press().await.unwrap();
    let offer = console.next_offer(Duration::from_secs(10)).await.unwrap();
    console.client.accept(&offer.offer_id).await.unwrap();
    console
        .client
        .get_resident(&resident.to_string())
        .await
        .unwrap();
    console
        .client
        .end_call(&offer.call_id, Disposition::HealthConcern, "ZQXLOG 胸闷")
        .await
        .unwrap();
    tablet
        .send(Body::Alarm(Alarm {
            alarm_id: Uuid::new_v4().simple().to_string(),
            kind: AlarmKind::Fall as i32,
            raised_at_ms: chrono::Utc::now().timestamp_millis(),
            detail: "ZQXLOG fell in the kitchen".to_owned(),
        }))
        .await
        .unwrap();
    node.store
        .send_family_message(family, resident, "ZQXLOG 妈妈晚上好")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tablet.close().await;
    node.stop().await;
    let logged = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    // The run was logged (ids are there), and no personal data is.
    assert!(
        logged.contains(&offer.call_id),
        "the call was not logged at all"
    );
    assert!(logged.contains("device session ended"));
    let leaks: Vec<&str> = logged
        .lines()
        .filter(|line| line.contains("ZQXLOG"))
        .collect();
    assert!(
        leaks.is_empty(),
        "personal data in the logs:\n{}",
        leaks.join("\n")
    );
}

/// A connected tablet rotates to a key it proves it holds; from then on only the new key
/// authenticates. A rotation the new key did not sign is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablet_rotates_its_key_and_the_old_one_stops_working() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (_, config) = node
        .tablet_config("换钥 测试", TransportKind::WebSocket)
        .await;
    let mut tablet = Tablet::connect(&config).await.unwrap();
    // A forged rotation: a key, but signed by another one.
    let forged = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let other = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
    let message = carebell_proto::rotation_message(
        &config.credentials.device_id,
        &forged.verifying_key().to_bytes(),
    );
    tablet
        .send(Body::KeyRotation(carebell_proto::device::v1::KeyRotation {
            new_public_key: forged.verifying_key().to_bytes().to_vec(),
            signature: ed25519_dalek::Signer::sign(&other, &message)
                .to_bytes()
                .to_vec(),
        }))
        .await
        .unwrap();
    let refused =
        crate::supervision::next_error(&mut tablet, "the forged rotation got no answer").await;
    assert_eq!(
        refused.code,
        carebell_proto::device::v1::ErrorCode::InvalidArgument as i32
    );
    // The real rotation.
    let new_key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    tablet.rotate_key(&new_key).await.unwrap();
    tablet.close().await;
    let old = Tablet::connect(&config).await;
    assert!(
        matches!(old, Err(SimError::Rejected { .. })),
        "the old key still works"
    );
    let mut rotated = config.clone();
    rotated.credentials = firmware_sim::Credentials::new(
        &config.credentials.device_id,
        &new_key,
        &config.credentials.websocket_url,
        &config.credentials.grpc_url,
    );
    rotated.credentials.ca_certificate_pem = config.credentials.ca_certificate_pem.clone();
    let tablet = Tablet::connect(&rotated).await.unwrap();
    tablet.press().await.unwrap();
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM events WHERE device_id = $1 AND kind LIKE 'device.%' ORDER BY id",
    )
    .bind(&config.credentials.device_id)
    .fetch_all(node.store.pool())
    .await
    .unwrap();
    assert_eq!(events, ["device.key_rotated"]);
    tablet.close().await;
    node.stop().await;
}

/// One signed-in session cannot flood the APIs: past its burst its calls are refused with
/// `RESOURCE_EXHAUSTED`, another session is unaffected, and the bucket refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_making_too_many_requests_is_slowed_down() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut busy = node
        .sign_in(&node.operator_account("busy-op", "Busy").await)
        .await;
    let mut calm = node
        .sign_in(&node.operator_account("calm-op", "Calm").await)
        .await;
    let (mut answered, mut refused) = (0, 0);
    for _ in 0..250 {
        match busy.get_resident(&Uuid::new_v4().to_string()).await {
            Err(status) if status.code() == tonic::Code::ResourceExhausted => refused += 1,
            // An unknown resident: answered (past the limit check).
            Err(status) if status.code() == tonic::Code::NotFound => answered += 1,
            other => panic!("unexpected answer: {other:?}"),
        }
    }
    assert!(refused > 0, "250 calls in a row were never slowed down");
    assert!(
        answered >= 100,
        "the burst of 100 was not granted ({answered})"
    );
    // Another session is not affected.
    let other = calm
        .get_resident(&Uuid::new_v4().to_string())
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::NotFound);
    // And the bucket refills.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = busy
        .get_resident(&Uuid::new_v4().to_string())
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::NotFound);
    node.stop().await;
}

/// Mutual TLS: a tablet bound to its client certificate gets in only with it; a certificate
/// is good for its own tablet only; one from another CA fails the handshake; and when
/// certificates are required, a tablet without one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_bind_tablets_when_mutual_tls_is_on() {
    use carebell_server::devcert::ProvisioningCa;
    let ca = ProvisioningCa::generate().unwrap();
    let database_url = carebell_tests::fresh_database().await;
    let certificates = carebell_server::devcert::DevCertificates::generate().unwrap();
    let options = |required: bool| NodeOptions {
        database_url: Some(database_url.clone()),
        certificates: Some(certificates.clone()),
        client_ca_pem: Some(ca.ca_pem.clone()),
        require_client_certificate: required,
        ..NodeOptions::default()
    };
    let node = TestNode::start(options(false)).await;
    let (_, bound) = node
        .tablet_config("证书 绑定", TransportKind::WebSocket)
        .await;
    let (_, unbound) = node
        .tablet_config("证书 未绑定", TransportKind::WebSocket)
        .await;
    let issued = ca.issue(&bound.credentials.device_id).unwrap();
    node.store
        .bind_client_certificate(&bound.credentials.device_id, &issued.sha256)
        .await
        .unwrap();
    let with = |config: &firmware_sim::TabletConfig, cert: &str, key: &str| {
        let mut config = config.clone();
        config.credentials.client_certificate_pem = Some(cert.to_owned());
        config.credentials.client_key_pem = Some(key.to_owned());
        config
    };
    let rejected = |outcome: Result<Tablet, SimError>| match outcome {
        Err(SimError::Rejected { .. }) => true,
        Err(_) => false,
        Ok(_) => panic!("connected"),
    };
    // The bound tablet with its certificate, over both transports.
    let tablet = Tablet::connect(&with(&bound, &issued.cert_pem, &issued.key_pem))
        .await
        .unwrap();
    tablet.press().await.unwrap();
    tablet.close().await;
    let mut over_grpc = with(&bound, &issued.cert_pem, &issued.key_pem);
    over_grpc.transport = TransportKind::Grpc;
    Tablet::connect(&over_grpc).await.unwrap().close().await;
    // Without it: refused, though the key is right.
    assert!(rejected(Tablet::connect(&bound).await));
    // Its certificate on another tablet: refused.
    assert!(rejected(
        Tablet::connect(&with(&unbound, &issued.cert_pem, &issued.key_pem)).await
    ));
    // A certificate from another CA: the TLS handshake fails.
    let stranger = ProvisioningCa::generate()
        .unwrap()
        .issue(&bound.credentials.device_id)
        .unwrap();
    let outcome = Tablet::connect(&with(&bound, &stranger.cert_pem, &stranger.key_pem)).await;
    assert!(
        matches!(
            outcome,
            Err(SimError::Link(_)) | Err(SimError::Closed { .. })
        ),
        "{:?}",
        outcome.map(|_| ())
    );
    // Not required: an unbound tablet without a certificate still gets in.
    Tablet::connect(&unbound).await.unwrap().close().await;
    node.stop().await;
    // Required: now it does not.
    let strict = TestNode::start(options(true)).await;
    let mut unbound_here = unbound.clone();
    unbound_here.credentials.websocket_url = strict.websocket_url.clone();
    assert!(rejected(Tablet::connect(&unbound_here).await));
    let mut bound_here = with(&bound, &issued.cert_pem, &issued.key_pem);
    bound_here.credentials.websocket_url = strict.websocket_url.clone();
    Tablet::connect(&bound_here).await.unwrap().close().await;
    strict.stop().await;
}

/// A password spray (one wrong try at each of many names) from one address is stopped at the
/// address, though no single name reaches its own lockout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_spray_from_one_address_is_stopped() {
    let node = TestNode::start(NodeOptions::default()).await;
    node.operator_account("sprayed", "Sprayed").await;
    let channel = carebell_server::console_client::channel(&node.grpc_url, Some(&node.ca_pem))
        .await
        .unwrap();
    let limit = carebell_gateway::MAX_FAILED_SIGN_INS_PER_ADDRESS;
    for n in 0..limit {
        let outcome = sign_in_code(&channel, &format!("name-{n}"), "guess").await;
        assert_eq!(outcome, tonic::Code::Unauthenticated, "try {n}");
    }
    // Now even a real account with its right password is refused from this address.
    let outcome = sign_in_code(&channel, "sprayed", carebell_tests::PASSWORD).await;
    assert_eq!(outcome, tonic::Code::ResourceExhausted);
    node.stop().await;
}

// =============================================================================================
// Hostile text in every field a client or an administrator can send.
//
// Each field gets the SQL in `HOSTILE` and the NUL in `NUL`. A free-text field must store the
// SQL exactly (read back from its table and compared) and refuse the NUL with
// INVALID_ARGUMENT: PostgreSQL text cannot hold a NUL. An id, code or name that must match
// something refuses both as malformed or unknown; a sign-in refuses both like any wrong name.
// Nothing else may change: each test ends by checking that the tables, their columns, triggers
// and functions, the supervisors and the rows of a `Bystander` (which no request names) are as
// they were, and that the append-only logs only grew.
//
// Console, family and provider requests go through the browser bridge (`POST /api/...`), which
// decodes the JSON into the gRPC request message and calls the same service in process (same
// validation, same store calls); JSON can also carry a NUL, a lone surrogate or raw invalid
// UTF-8. Over gRPC itself: `sql_in_text_fields_is_only_ever_text` (sign-in, the record read,
// the call note) and the NUL and invalid UTF-8 cases below.
//
// | Field | Expected | Test (`hostile_text_in_…`) |
// |---|---|---|
// | **Console API** | | |
// | `SignIn.username`, `SignIn.password` | refused like a wrong password | `…_console_…`; gRPC: `sql_in_text_fields_…` |
// | `SetStatus.reason` | stored: `operators.status_reason` | `…_console_…` |
// | `EndCall.note` | stored: `calls.note` | `sql_in_text_fields_…` (gRPC); NUL over gRPC and the bridge in `…_console_…` |
// | `RecordAlarmAction.note` | stored: `alarm_actions.note` | `…_console_…` |
// | `ResolveAlarm.note` | stored: `calls.note` | `…_console_…` |
// | `Transfer.operator_username` | refused: no such operator | `…_console_…` |
// | `Transfer.queue_id` | stored: `calls.queue_id` (queues named with the SQL exist); NUL refused | `…_console_…` |
// | `SendRtcSignal.kind` | refused: unknown kind | `…_console_…` |
// | `SendRtcSignal.payload` | relayed verbatim to the tablet (never stored) | `…_console_…` |
// | `SuggestProviders.service_code`, `CreateOrder.service_code` | refused: unknown category | `…_console_…` |
// | `CreateOrder.note` | stored: `orders.note` | `…_console_…` |
// | `CancelOrder.reason` | stored: `orders.cancel_reason` | `…_console_…` |
// | `RecordOrderCallBack.note` | stored: `orders.callback_note` | `…_console_…` |
// | `ServiceReport.from`, `ServiceReport.to` | refused: not a date | `…_console_…` |
// | every id: `Accept.offer_id`, `Decline.offer_id`, `EndCall.call_id`, `GetResident.resident_id`, `Transfer.call_id`, `RecordAlarmAction.call_id`, `ResolveAlarm.call_id`, `ReclaimCall.call_id`, `SuggestProviders.resident_id`, `CreateOrder.resident_id`, `CreateOrder.call_id`, `CancelOrder.order_id`, `RecordOrderCallBack.order_id`, `ListOrders.resident_id`, `ReinstateProvider.provider_id`, `ServiceReport.station_id`, `FamilyCascade.call_id`, `SendRtcSignal.call_id` | refused: malformed id | `…_console_…` |
// | `Statistics`, `SetStatus.status`, dispositions, actions, outcomes | numbers: text is refused as invalid JSON for the call | `…_the_transports_…` |
// | **Family API** | | |
// | `SignIn.username`, `SignIn.password` | refused like a wrong password | `…_family_and_provider_…` |
// | `SendMessage.text` | stored: `device_outbox.payload->>'text'`, and shown on the tablet exactly | `…_family_and_provider_…` |
// | `SendMessage.resident_id`, `Relative.resident_id` | refused: malformed id | `…_family_and_provider_…` |
// | `Acknowledge.alert_id`, `Alerts` stream `after_id` | numbers: text refused | `…_family_and_provider_…`, `…_the_transports_…` |
// | **Provider API** | | |
// | `SignIn.username`, `SignIn.password` | refused like a wrong password | `…_family_and_provider_…` |
// | `Decline.reason` | stored: `order_offers.reason` | `…_family_and_provider_…` |
// | `UpdateStatus.notes` | stored: `orders.completion_notes` | `…_family_and_provider_…` |
// | `Accept.order_id`, `Accept.staff_id`, `Decline.order_id`, `AssignStaff.order_id`, `AssignStaff.staff_id`, `UpdateStatus.order_id` | refused: malformed id | `…_family_and_provider_…` |
// | **Devices** | | |
// | `Alarm.detail` | stored: `alarms.detail`; a NUL is stored as U+FFFD (the alarm itself must not be lost) | `…_device_…` |
// | `Alarm.alarm_id`, `CallRequest.request_id`, `CallCancel.request_id`, `ReminderConfirm.occurrence_id`, `ContentOpened.content_id`, `OrderRating.order_id`, `RtcSignal.call_id`, `RtcSignal.kind` | refused: `ERROR_CODE_INVALID_ARGUMENT`, acknowledged | `…_device_…` |
// | `RtcSignal.payload` | relayed verbatim to the console (never stored) | `…_device_…` |
// | `Hello.device_id` | refused: `BAD_CREDENTIALS` | `…_device_…` |
// | `Hello.firmware_version`, `EnrolRequest.firmware_version` | never stored (a log field): the session or enrolment goes ahead | `…_device_…` |
// | `EnrolRequest.code` | refused: `INVALID_ARGUMENT` | `…_device_…` |
// | `Error.message` | never stored (logged, cut to 200 characters) | — |
// | **`carebell admin`** (NUL cannot be passed in a process's arguments; files can hold one) | | |
// | `add-station --name`; `fleet-provision --station-name` | stored: `stations.name` | `…_admin_…` |
// | `add-resident --name --address --phone --dialect --medical-notes --risk-warnings --key-safe` | stored: `residents.*` | `…_admin_…` |
// | `add-operator --display-name`, `add-family-account --display-name`, `services add-provider-account --display-name` | stored: `*.display_name` | `…_admin_…` |
// | `add-operator --username`, `add-family-account --username`, `services add-provider-account --username` | refused: not a valid username | `…_admin_…` |
// | `set-skills --skills` | stored lower-cased (skills compare so): `operators.skills` | `…_admin_…` |
// | `set-skills --username`, `add-contact --family-account` | refused: no such account | `…_admin_…` |
// | `add-contact --name --relationship --phone` | stored: `contacts.*` | `…_admin_…` |
// | `add-contact --channels`, `services set-resident --tier`, `services add-provider --kind --services --hours`, `services statement --month` | refused: not one of the known values | `…_admin_…` |
// | `revoke-device --device-id`, `enrolment-code --replaces`, `provision-device --device-id`, `issue-client-cert --device-id`, `fleet-provision --prefix` | refused: malformed or unknown device | `…_admin_…` |
// | `revoke-device --reason` | stored: `devices.revoked_reason` | `…_admin_…` |
// | `audit --actor` | a filter: matches nothing, changes nothing | `…_admin_…` |
// | `services add-centre --name`, `services add-community --name` | stored: `centres.name`, `communities.name` | `…_admin_…` |
// | `services add-provider --name --licence` | stored: `providers.name`, `providers.licence_no` | `…_admin_…` |
// | `services add-staff --name --phone` | stored: `provider_staff.*` | `…_admin_…` |
// | `services top-up --memo` | stored: `ledger_transactions.memo` | `…_admin_…` |
// | `routing load --file` (queue ids) | stored: `routing_rules.body`; a NUL (`\u0000` in the JSON or TOML) or a file that is not UTF-8 refused, the rules in force kept | `…_admin_…` |
// | `services policy --load` | refused: not a policy | `…_admin_…` |
// | `care add-schedule --title` | stored: `schedules.title` | `…_admin_…` |
// | `care add-schedule --kind --rule --time-zone`, `care set-profile --language`, `care add-content --kind --language` | refused: not a known kind, an RRULE, a time zone or a language tag | `…_admin_…` |
// | `care set-profile --interests` | stored: `residents.interests` | `…_admin_…` |
// | `care add-content --title --body --media-url --tags` | stored: `content_items.*` | `…_admin_…` |
// | any argument that is not UTF-8 | refused by the argument parser | `…_admin_…` |
// | `fleet-provision --seed`, `provision-device`/`enrolment-code --grpc-url`, `--websocket-url`, every `--password` | never stored (key derivation, the credentials file, the QR code, an argon2 hash) | `--seed`: `…_admin_…` |
// | ids, dates and numbers (`--station`, `--resident`, `--provider`, `--from`, `--fen`, ...) | typed by the argument parser (UUID, date, integer) before anything runs | — |
// | **Transports** | | |
// | invalid UTF-8 or a lone surrogate in a bridge body | `invalid_argument` | `…_the_transports_…` |
// | the bridge's `/api/{service}/{method}` path | compared with fixed names, never stored | — |
// | invalid UTF-8 in a gRPC string | `INTERNAL` from the protobuf decoder, as gRPC prescribes for a request that does not parse; never reaches the service | `…_the_transports_…` |
// | stream query parameters (`token`, `after_id`): SQL, NUL, percent-encoding that is not UTF-8 (decoded as U+FFFD) | an error frame: `unauthenticated`, `invalid_argument` | `…_the_transports_…` |
// | invalid UTF-8 in a device frame | `ERROR_CODE_MALFORMED_FRAME` | `bad_input.rs` (garbage frames) |

/// SQL that would drop a table, widen a condition or stall the database if it were ever spliced
/// into a statement.
const HOSTILE: &[&str] = &[
    "'); DROP TABLE audit_log; --",
    "' OR '1'='1",
    "\\'; SELECT pg_sleep(5); --",
];

/// A NUL character followed by SQL: PostgreSQL text cannot hold it, and C code stops at it.
const NUL: &str = "nul\0'); DROP TABLE events; --";

/// Every hostile text: the SQL, then the NUL.
fn hostile_and_nul() -> impl Iterator<Item = &'static str> {
    HOSTILE.iter().copied().chain([NUL])
}

/// Panics unless the request succeeded.
fn accepted(field: &str, sent: &str, answer: Answer) -> serde_json::Value {
    answer.unwrap_or_else(|refusal| panic!("{field} = {sent:?} was refused: {refusal:?}"))
}

/// Panics unless the request was refused with one of `codes` (never a server error).
fn refused(field: &str, sent: &str, answer: Answer, codes: &[&str]) {
    match answer {
        Err(refusal) if codes.contains(&refusal.code.as_str()) => {
            assert!(
                !refusal.message.is_empty(),
                "{field}: refused without a reason"
            );
        }
        other => panic!("{field} = {sent:?}: expected a refusal {codes:?}, got {other:?}"),
    }
}

/// A signed-in user of a bridge service. A field is named `Method.field` and sent with `Method`.
struct Caller<'a> {
    bridge: &'a Bridge,
    pool: &'a sqlx::PgPool,
    service: &'a str,
    token: &'a str,
}

impl<'a> Caller<'a> {
    fn new(bridge: &'a Bridge, pool: &'a sqlx::PgPool, service: &'a str, token: &'a str) -> Self {
        Self {
            bridge,
            pool,
            service,
            token,
        }
    }

    /// `request` sent to the method `field` belongs to.
    async fn call(&self, field: &str, request: serde_json::Value) -> Answer {
        let method = field.split('.').next().unwrap();
        self.bridge
            .call(self.service, method, Some(self.token), request)
            .await
    }

    /// Panics unless `request` (with `text` in `field`) is accepted; returns the answer.
    async fn accepts(
        &self,
        field: &str,
        text: &str,
        request: serde_json::Value,
    ) -> serde_json::Value {
        accepted(field, text, self.call(field, request).await)
    }

    /// Accepted, and `text` read back exactly by `sql` with `$1` bound to `key`.
    async fn keeps(
        &self,
        field: &str,
        text: &str,
        request: serde_json::Value,
        sql: &str,
        key: &str,
    ) {
        self.accepts(field, text, request).await;
        assert_eq!(stored(self.pool, sql, key).await, text);
    }

    /// Panics unless `request` (with `text` in `field`) is refused with one of `codes`.
    async fn refuses(&self, field: &str, text: &str, request: serde_json::Value, codes: &[&str]) {
        refused(field, text, self.call(field, request).await, codes);
    }

    /// Panics unless `request` (with `text` in `field`) is refused as `invalid_argument`.
    async fn refuses_invalid(&self, field: &str, text: &str, request: serde_json::Value) {
        self.refuses(field, text, request, &["invalid_argument"])
            .await;
    }
}

/// One text value read back: `sql` with `$1` bound to `key`.
async fn stored(pool: &sqlx::PgPool, sql: &str, key: &str) -> String {
    sqlx::query_scalar(sql)
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|error| panic!("{sql} ({key}): {error}"))
}

/// Every text value read back: `sql` with `$1` bound to `key`.
async fn stored_all(pool: &sqlx::PgPool, sql: &str, key: &str) -> Vec<String> {
    sqlx::query_scalar(sql)
        .bind(key)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|error| panic!("{sql} ({key}): {error}"))
}

/// A count: `sql` with `$1` bound to `key`.
async fn counted(pool: &sqlx::PgPool, sql: &str, key: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|error| panic!("{sql} ({key}): {error}"))
}

/// Rows that no request in these tests names: a resident with a contact and its family account,
/// an operator, and a provider (far from every other resident) with staff and an account.
struct Bystander {
    resident: Uuid,
    family: Uuid,
    operator: Uuid,
    provider: Uuid,
}

/// What SQL that escaped into a statement would change.
#[derive(Debug, PartialEq, Eq)]
struct Untouched {
    /// Tables and columns, triggers (and whether they are enabled), functions (and their code).
    schema: Vec<String>,
    supervisors: Vec<String>,
    bystander: Vec<String>,
}

impl Bystander {
    async fn add(store: &carebell_store::Store) -> Self {
        let station = store.add_station("旁观站").await.unwrap();
        let resident = store
            .add_resident(&NewResident {
                station_id: station,
                full_name: "旁观者".to_owned(),
                address: "旁观路 1 号".to_owned(),
                phone: "+86 138 1111 2222".to_owned(),
                medical_notes: "none".to_owned(),
                ..NewResident::default()
            })
            .await
            .unwrap();
        let hash = carebell_gateway::console::hash_password(PASSWORD).unwrap();
        let family = store
            .add_family_account("bystander-family", "旁观家属", &hash)
            .await
            .unwrap();
        store
            .add_contact(&NewContact {
                resident_id: resident,
                name: "旁观家属".to_owned(),
                relationship: "女儿".to_owned(),
                phone: "139 0000 1111".to_owned(),
                holds_keys: true,
                position: Some(1),
                family_account_id: Some(family),
                channels: vec!["app".to_owned()],
            })
            .await
            .unwrap();
        let operator = store
            .add_operator("bystander-op", "旁观接线员", &hash)
            .await
            .unwrap();
        let provider = crate::orders::provider(
            store,
            "旁观家政",
            (40.0, 116.0),
            1000,
            vec![],
            &[("housekeeping", 1000)],
        )
        .await;
        store.add_staff(provider, "旁观师傅", "137").await.unwrap();
        store
            .add_provider_account(provider, "bystander-provider", "旁观调度", &hash)
            .await
            .unwrap();
        Self {
            resident,
            family,
            operator,
            provider,
        }
    }

    async fn untouched(&self, pool: &sqlx::PgPool) -> Untouched {
        let schema: Vec<String> = sqlx::query_scalar(
            "SELECT table_name || '.' || column_name || ' ' || data_type
               FROM information_schema.columns WHERE table_schema = current_schema()
             UNION ALL
             SELECT 'trigger ' || tgrelid::regclass::text || '.' || tgname || ' ' || tgenabled::text
               FROM pg_trigger WHERE NOT tgisinternal
             UNION ALL
             SELECT 'function ' || proname || ' ' || md5(prosrc)
               FROM pg_proc WHERE pronamespace = current_schema()::regnamespace
             ORDER BY 1",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let supervisors: Vec<String> = sqlx::query_scalar(
            "SELECT username FROM operators WHERE 'supervisor' = ANY(skills) ORDER BY 1",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let mut bystander: Vec<String> = sqlx::query_scalar(
            "SELECT to_jsonb(t)::text FROM residents t WHERE id = $1
             UNION ALL SELECT to_jsonb(t)::text FROM stations t
                 WHERE id = (SELECT station_id FROM residents WHERE id = $1)
             UNION ALL SELECT to_jsonb(t)::text FROM contacts t WHERE resident_id = $1
             UNION ALL SELECT to_jsonb(t)::text FROM family_accounts t WHERE id = $2
             UNION ALL SELECT to_jsonb(t)::text FROM operators t WHERE id = $3
             UNION ALL SELECT to_jsonb(t)::text FROM providers t WHERE id = $4
             UNION ALL SELECT to_jsonb(t)::text FROM provider_staff t WHERE provider_id = $4
             UNION ALL SELECT to_jsonb(t)::text FROM provider_accounts t WHERE provider_id = $4
             UNION ALL SELECT to_jsonb(t)::text FROM provider_services t WHERE provider_id = $4",
        )
        .bind(self.resident)
        .bind(self.family)
        .bind(self.operator)
        .bind(self.provider)
        .fetch_all(pool)
        .await
        .unwrap();
        bystander.sort();
        assert_eq!(bystander.len(), 9, "{bystander:?}");
        Untouched {
            schema,
            supervisors,
            bystander,
        }
    }

    /// The rows of the append-only logs (audit log, event log).
    async fn log_rows(pool: &sqlx::PgPool) -> (i64, i64) {
        sqlx::query_as("SELECT (SELECT count(*) FROM audit_log), (SELECT count(*) FROM events)")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    /// Nothing changed since `before` but what the requests were meant to change.
    async fn assert_untouched(&self, pool: &sqlx::PgPool, before: &Untouched, logs: (i64, i64)) {
        assert_eq!(&self.untouched(pool).await, before);
        let now = Self::log_rows(pool).await;
        assert!(
            now.0 >= logs.0 && now.1 >= logs.1,
            "{logs:?} became {now:?}"
        );
    }
}

/// An alarm of `kind` with `detail` from `tablet`, raised now; returns its id.
async fn raise(tablet: &Tablet, kind: AlarmKind, detail: &str) -> String {
    let alarm_id = Uuid::new_v4().simple().to_string();
    tablet
        .send(Body::Alarm(Alarm {
            alarm_id: alarm_id.clone(),
            kind: kind as i32,
            raised_at_ms: chrono::Utc::now().timestamp_millis(),
            detail: detail.to_owned(),
        }))
        .await
        .unwrap();
    alarm_id
}

/// An SOS from `tablet`, accepted by `console`'s operator; returns the call id.
async fn held_alarm(tablet: &Tablet, console: &mut carebell_tests::Console) -> String {
    raise(tablet, AlarmKind::Sos, "").await;
    let offer = console
        .next_offer(Duration::from_secs(10))
        .await
        .expect("the alarm is offered");
    console.client.accept(&offer.offer_id).await.unwrap();
    offer.call_id
}

/// The next event of `tablet` that `pick` takes.
async fn next_tablet<T>(tablet: &mut Tablet, mut pick: impl FnMut(TabletEvent) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = tablet
            .next_event(left)
            .await
            .expect("the tablet heard nothing");
        if let Some(picked) = pick(event) {
            return picked;
        }
    }
}

/// The payload of the next voice signal the tablet hears.
async fn tablet_rtc_payload(tablet: &mut Tablet) -> String {
    next_tablet(tablet, |event| match event {
        TabletEvent::RtcSignal(signal) => Some(signal.payload),
        _ => None,
    })
    .await
}

/// An order for `resident` that `provider` has accepted, gone to and completed.
async fn completed_order(
    store: &carebell_store::Store,
    resident: Uuid,
    provider: Uuid,
    staff: Uuid,
) -> Uuid {
    let order_id = offered_order(store, resident).await;
    crate::orders::serve(store, order_id, provider, staff, 30).await;
    order_id
}

/// A housekeeping order for `resident`, offered to the provider that covers them.
async fn offered_order(store: &carebell_store::Store, resident: Uuid) -> Uuid {
    store
        .create_order(&carebell_store::NewOrder {
            resident_id: resident,
            service_code: "housekeeping".to_owned(),
            call_id: None,
            note: String::new(),
            operator_id: None,
        })
        .await
        .unwrap()
        .order_id
}

/// Refuses hostile text in each of `fields` (name, method, request with `ID` where the text
/// goes) as a malformed id.
async fn ids_refused(bridge: &Bridge, service: &str, token: &str, fields: &[(&str, &str, String)]) {
    for (field, method, template) in fields {
        for text in hostile_and_nul() {
            let request = template.replace("ID", &serde_json::to_string(text).unwrap());
            let request: serde_json::Value = serde_json::from_str(&request).unwrap();
            refused(
                field,
                text,
                bridge.call(service, method, Some(token), request).await,
                &["invalid_argument"],
            );
        }
    }
}

/// Sign-in with hostile text as the name or the password: refused like a wrong password (or,
/// once the address has failed too often, like a locked one); a NUL as malformed.
async fn sign_ins_refused(bridge: &Bridge, service: &str, username: &str) {
    for text in hostile_and_nul() {
        for (field, request) in [
            (
                "SignIn.username",
                serde_json::json!({ "username": text, "password": PASSWORD }),
            ),
            (
                "SignIn.password",
                serde_json::json!({ "username": username, "password": text }),
            ),
        ] {
            refused(
                &format!("{service} {field}"),
                text,
                bridge.call(service, "SignIn", None, request).await,
                &["unauthenticated", "resource_exhausted", "invalid_argument"],
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_in_every_console_field_is_stored_verbatim_or_refused() {
    use serde_json::json;
    let node = TestNode::start(NodeOptions::default()).await;
    let (store, pool) = (&node.store, node.store.pool());
    let bridge = Bridge::new(&node);
    let bystander = Bystander::add(store).await;
    let station = node.station().await;
    let resident = crate::orders::resident_at(
        store,
        station,
        "敌意文本",
        Some(crate::orders::HOME),
        carebell_domain::orders::EntitlementTier::Market,
    )
    .await;
    let provider = crate::orders::provider(
        store,
        "近邻家政",
        (22.551, 114.25),
        3000,
        vec![],
        &[("housekeeping", 5000)],
    )
    .await;
    let staff = store.add_staff(provider, "李师傅", "").await.unwrap();
    // Queues named with the SQL, for transfers to them.
    let mut rules = serde_json::to_value(store.routing_rules().await.unwrap().rules()).unwrap();
    for id in HOSTILE {
        rules["queues"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "id": id, "steps": [{ "after_secs": 0 }] }));
    }
    store
        .load_routing_rules(&rules.to_string(), "test")
        .await
        .unwrap();
    let mut console = node.available_operator("hostile-op", "敌意接线员").await;
    let op = bridge.sign_in("console", "hostile-op").await;
    node.operator_account("hostile-supervisor", "主管").await;
    store
        .set_operator_skills("hostile-supervisor", &["supervisor".to_owned()])
        .await
        .unwrap();
    let supervisor = bridge.sign_in("console", "hostile-supervisor").await;
    node.operator_account("status-op", "状态").await;
    let status_op = bridge.sign_in("console", "status-op").await;
    let mut tablet = Tablet::connect(&firmware_sim::TabletConfig::new(
        node.provision(resident).await,
        TransportKind::WebSocket,
    ))
    .await
    .unwrap();
    let before = bystander.untouched(pool).await;
    let logs = Bystander::log_rows(pool).await;

    // SetStatus.reason, kept with the change (an unchanged status keeps its old reason, so the
    // status alternates: away, available, away).
    let status_caller = Caller::new(&bridge, pool, "console", &status_op);
    for (n, text) in HOSTILE.iter().enumerate() {
        let status = if n % 2 == 0 { 3 } else { 2 };
        let request = json!({ "status": status, "reason": text });
        let sql = "SELECT status_reason FROM operators WHERE username = $1";
        status_caller
            .keeps("SetStatus.reason", text, request, sql, "status-op")
            .await;
    }
    let request = json!({ "status": 2, "reason": NUL });
    status_caller
        .refuses_invalid("SetStatus.reason", NUL, request)
        .await;
    let status = stored(
        pool,
        "SELECT status FROM operators WHERE username = $1",
        "status-op",
    )
    .await;
    assert_eq!(status, "away", "the refused change changed the status");

    // Handling an alarm: an action's note, a voice signal, transfers, the resolution's note.
    let caller = Caller::new(&bridge, pool, "console", &op);
    for text in HOSTILE {
        let call_id = held_alarm(&tablet, &mut console).await;
        let request = json!({ "call_id": call_id, "action": 1, "note": text });
        let sql =
            "SELECT note FROM alarm_actions WHERE call_id = $1::uuid ORDER BY id DESC LIMIT 1";
        caller
            .keeps("RecordAlarmAction.note", text, request, sql, &call_id)
            .await;
        let request = json!({ "call_id": call_id, "kind": text, "payload": "" });
        caller
            .refuses_invalid("SendRtcSignal.kind", text, request)
            .await;
        let request = json!({ "call_id": call_id, "kind": "candidate", "payload": text });
        caller.accepts("SendRtcSignal.payload", text, request).await;
        assert_eq!(tablet_rtc_payload(&mut tablet).await, *text);
        let request = json!({ "call_id": call_id, "target": { "operator_username": text } });
        caller
            .refuses("Transfer.operator_username", text, request, &["not_found"])
            .await;
        let request = json!({ "call_id": call_id, "target": { "queue_id": text } });
        let sql = "SELECT queue_id FROM calls WHERE id = $1::uuid";
        caller
            .keeps("Transfer.queue_id", text, request, sql, &call_id)
            .await;
        // Offered again from that queue.
        let offer = console
            .next_offer(Duration::from_secs(10))
            .await
            .expect("the transferred call is offered again");
        assert_eq!(offer.call_id, call_id);
        console.client.accept(&offer.offer_id).await.unwrap();
        let request = json!({ "call_id": call_id, "outcome": 1, "note": text });
        let sql = "SELECT note FROM calls WHERE id = $1::uuid";
        caller
            .keeps("ResolveAlarm.note", text, request, sql, &call_id)
            .await;
    }
    // A NUL in each: refused, the call still held and unchanged.
    let call_id = held_alarm(&tablet, &mut console).await;
    for (field, request, codes) in [
        (
            "RecordAlarmAction.note",
            json!({ "call_id": call_id, "action": 1, "note": NUL }),
            &["invalid_argument"][..],
        ),
        (
            "ResolveAlarm.note",
            json!({ "call_id": call_id, "outcome": 1, "note": NUL }),
            &["invalid_argument"],
        ),
        (
            "EndCall.note",
            json!({ "call_id": call_id, "disposition": 3, "note": NUL }),
            &["invalid_argument"],
        ),
        (
            "Transfer.operator_username",
            json!({ "call_id": call_id, "target": { "operator_username": NUL } }),
            &["invalid_argument", "not_found"],
        ),
        (
            "Transfer.queue_id",
            json!({ "call_id": call_id, "target": { "queue_id": NUL } }),
            &["invalid_argument", "failed_precondition"],
        ),
        (
            "SendRtcSignal.kind",
            json!({ "call_id": call_id, "kind": NUL, "payload": "" }),
            &["invalid_argument"],
        ),
    ] {
        caller.refuses(field, NUL, request, codes).await;
    }
    // Over gRPC too.
    let refusal = console
        .client
        .end_call(&call_id, Disposition::Information, NUL)
        .await
        .unwrap_err();
    assert_eq!(refusal.code(), tonic::Code::InvalidArgument, "{refusal:?}");
    let (state, queue, actions): (String, String, i64) = sqlx::query_as(
        "SELECT state, queue_id, (SELECT count(*) FROM alarm_actions WHERE call_id = calls.id)
         FROM calls WHERE id = $1::uuid",
    )
    .bind(&call_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), queue.as_str(), actions),
        ("answered", "emergency", 0)
    );
    // A voice signal's payload is relayed, not stored: a NUL arrives as sent.
    let request = json!({ "call_id": call_id, "kind": "candidate", "payload": NUL });
    caller.accepts("SendRtcSignal.payload", NUL, request).await;
    assert_eq!(tablet_rtc_payload(&mut tablet).await, NUL);
    console
        .client
        .resolve_alarm(
            &call_id,
            carebell_proto::console::v1::AlarmOutcome::FalseAlarm,
            "",
        )
        .await
        .unwrap();
    // No more offers for this operator: the orders' call-backs must wait.
    console
        .client
        .set_status(carebell_proto::console::v1::OperatorStatus::Away)
        .await
        .unwrap();

    // Orders: the note of a new one, the reason for cancelling it, the call-back's note.
    for text in HOSTILE {
        let request = json!({
            "resident_id": resident, "service_code": "housekeeping", "note": text
        });
        let order_id = caller.accepts("CreateOrder.note", text, request).await["order_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let sql = "SELECT note FROM orders WHERE id = $1::uuid";
        assert_eq!(stored(pool, sql, &order_id).await, *text);
        let request = json!({ "order_id": order_id, "reason": text });
        let sql = "SELECT cancel_reason FROM orders WHERE id = $1::uuid";
        caller
            .keeps("CancelOrder.reason", text, request, sql, &order_id)
            .await;
        let order_id = completed_order(store, resident, provider, staff)
            .await
            .to_string();
        let request = json!({ "order_id": order_id, "note": text });
        let sql = "SELECT callback_note FROM orders WHERE id = $1::uuid";
        caller
            .keeps("RecordOrderCallBack.note", text, request, sql, &order_id)
            .await;
    }
    let count_orders = "SELECT count(*) FROM orders WHERE resident_id = $1::uuid";
    let orders_before = counted(pool, count_orders, &resident.to_string()).await;
    let request = json!({ "resident_id": resident, "service_code": "housekeeping", "note": NUL });
    caller
        .refuses_invalid("CreateOrder.note", NUL, request)
        .await;
    assert_eq!(
        counted(pool, count_orders, &resident.to_string()).await,
        orders_before
    );
    let open = offered_order(store, resident).await.to_string();
    let request = json!({ "order_id": open, "reason": NUL });
    caller
        .refuses_invalid("CancelOrder.reason", NUL, request)
        .await;
    let state = stored(pool, "SELECT state FROM orders WHERE id = $1::uuid", &open).await;
    assert_eq!(state, "offered");
    let done = completed_order(store, resident, provider, staff)
        .await
        .to_string();
    let request = json!({ "order_id": done, "note": NUL });
    caller
        .refuses_invalid("RecordOrderCallBack.note", NUL, request)
        .await;
    let state = stored(pool, "SELECT state FROM orders WHERE id = $1::uuid", &done).await;
    assert_eq!(state, "completed");
    // Codes and dates that must match something.
    let reporter = Caller::new(&bridge, pool, "console", &supervisor);
    for text in hostile_and_nul() {
        let request = json!({ "resident_id": resident, "service_code": text });
        caller
            .refuses_invalid("CreateOrder.service_code", text, request)
            .await;
        let request = json!({ "resident_id": resident, "service_code": text });
        caller
            .refuses_invalid("SuggestProviders.service_code", text, request)
            .await;
        for (field, request) in [
            (
                "ServiceReport.from",
                json!({ "from": text, "to": "2026-01-02" }),
            ),
            (
                "ServiceReport.to",
                json!({ "from": "2026-01-01", "to": text }),
            ),
        ] {
            reporter.refuses_invalid(field, text, request).await;
        }
    }
    assert_eq!(
        counted(pool, count_orders, &resident.to_string()).await,
        orders_before + 2
    );
    // Every id: refused as malformed.
    let r = resident.to_string();
    ids_refused(
        &bridge,
        "console",
        &op,
        &[
            (
                "Accept.offer_id",
                "Accept",
                r#"{"offer_id": ID}"#.to_owned(),
            ),
            (
                "Decline.offer_id",
                "Decline",
                r#"{"offer_id": ID}"#.to_owned(),
            ),
            (
                "EndCall.call_id",
                "EndCall",
                r#"{"call_id": ID, "disposition": 3}"#.to_owned(),
            ),
            (
                "GetResident.resident_id",
                "GetResident",
                r#"{"resident_id": ID}"#.to_owned(),
            ),
            (
                "Transfer.call_id",
                "Transfer",
                r#"{"call_id": ID, "target": {"queue_id": "calls"}}"#.to_owned(),
            ),
            (
                "RecordAlarmAction.call_id",
                "RecordAlarmAction",
                r#"{"call_id": ID, "action": 1}"#.to_owned(),
            ),
            (
                "ResolveAlarm.call_id",
                "ResolveAlarm",
                r#"{"call_id": ID, "outcome": 1}"#.to_owned(),
            ),
            (
                "SuggestProviders.resident_id",
                "SuggestProviders",
                r#"{"resident_id": ID, "service_code": "housekeeping"}"#.to_owned(),
            ),
            (
                "CreateOrder.resident_id",
                "CreateOrder",
                r#"{"resident_id": ID, "service_code": "housekeeping"}"#.to_owned(),
            ),
            (
                "CreateOrder.call_id",
                "CreateOrder",
                format!(
                    r#"{{"resident_id": "{r}", "service_code": "housekeeping", "call_id": ID}}"#
                ),
            ),
            (
                "CancelOrder.order_id",
                "CancelOrder",
                r#"{"order_id": ID, "reason": "x"}"#.to_owned(),
            ),
            (
                "RecordOrderCallBack.order_id",
                "RecordOrderCallBack",
                r#"{"order_id": ID}"#.to_owned(),
            ),
            (
                "ListOrders.resident_id",
                "ListOrders",
                r#"{"resident_id": ID}"#.to_owned(),
            ),
            (
                "FamilyCascade.call_id",
                "FamilyCascade",
                r#"{"call_id": ID}"#.to_owned(),
            ),
            (
                "SendRtcSignal.call_id",
                "SendRtcSignal",
                r#"{"call_id": ID, "kind": "candidate"}"#.to_owned(),
            ),
        ],
    )
    .await;
    ids_refused(
        &bridge,
        "console",
        &supervisor,
        &[
            (
                "ReclaimCall.call_id",
                "ReclaimCall",
                r#"{"call_id": ID}"#.to_owned(),
            ),
            (
                "ReinstateProvider.provider_id",
                "ReinstateProvider",
                r#"{"provider_id": ID}"#.to_owned(),
            ),
            (
                "ServiceReport.station_id",
                "ServiceReport",
                r#"{"from": "2026-01-01", "to": "2026-01-02", "station_id": ID}"#.to_owned(),
            ),
        ],
    )
    .await;
    assert_eq!(
        counted(pool, count_orders, &resident.to_string()).await,
        orders_before + 2
    );

    sign_ins_refused(&bridge, "console", "hostile-op").await;
    bystander.assert_untouched(pool, &before, logs).await;
    tablet.close().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_in_every_family_and_provider_field_is_stored_verbatim_or_refused() {
    use serde_json::json;
    let node = TestNode::start(NodeOptions::default()).await;
    let (store, pool) = (&node.store, node.store.pool());
    let bridge = Bridge::new(&node);
    let bystander = Bystander::add(store).await;
    let station = node.station().await;
    let resident = crate::orders::resident_at(
        store,
        station,
        "敌意文本",
        Some(crate::orders::HOME),
        carebell_domain::orders::EntitlementTier::Market,
    )
    .await;
    node.family_contact(resident, "hostile-family", "家属", "儿子")
        .await;
    let hash = carebell_gateway::console::hash_password(PASSWORD).unwrap();
    let provider = crate::orders::provider(
        store,
        "近邻家政",
        (22.551, 114.25),
        3000,
        vec![],
        &[("housekeeping", 5000)],
    )
    .await;
    let staff = store.add_staff(provider, "李师傅", "").await.unwrap();
    store
        .add_provider_account(provider, "hostile-provider", "调度", &hash)
        .await
        .unwrap();
    let family = bridge.sign_in("family", "hostile-family").await;
    let dispatcher = bridge.sign_in("provider", "hostile-provider").await;
    let credentials = node.provision(resident).await;
    let device_id = credentials.device_id.clone();
    let mut tablet = Tablet::connect(&firmware_sim::TabletConfig::new(
        credentials,
        TransportKind::WebSocket,
    ))
    .await
    .unwrap();
    let before = bystander.untouched(pool).await;
    let logs = Bystander::log_rows(pool).await;

    // A family member's message: kept for the tablet and shown on it exactly.
    let last_notice =
        "SELECT payload->>'text' FROM device_outbox WHERE device_id = $1 AND kind = 'notice'
         ORDER BY id DESC LIMIT 1";
    let relative = Caller::new(&bridge, pool, "family", &family);
    for text in HOSTILE {
        let request = json!({ "resident_id": resident, "text": text });
        relative
            .keeps("SendMessage.text", text, request, last_notice, &device_id)
            .await;
        let shown = next_tablet(&mut tablet, |event| match event {
            TabletEvent::Notice(notice) => Some(notice.text),
            _ => None,
        })
        .await;
        assert_eq!(shown, *text);
    }
    let count_outbox = "SELECT count(*) FROM device_outbox WHERE device_id = $1";
    let outbox = counted(pool, count_outbox, &device_id).await;
    let request = json!({ "resident_id": resident, "text": NUL });
    relative
        .refuses_invalid("SendMessage.text", NUL, request)
        .await;
    assert_eq!(counted(pool, count_outbox, &device_id).await, outbox);
    ids_refused(
        &bridge,
        "family",
        &family,
        &[
            (
                "SendMessage.resident_id",
                "SendMessage",
                r#"{"resident_id": ID, "text": "hello"}"#.to_owned(),
            ),
            (
                "Relative.resident_id",
                "Relative",
                r#"{"resident_id": ID}"#.to_owned(),
            ),
            // A number: text is not valid JSON for the call.
            (
                "Acknowledge.alert_id",
                "Acknowledge",
                r#"{"alert_id": ID}"#.to_owned(),
            ),
        ],
    )
    .await;

    // A provider's reason for declining, and its notes on completing.
    let provider_caller = Caller::new(&bridge, pool, "provider", &dispatcher);
    for text in HOSTILE {
        let order_id = offered_order(store, resident).await.to_string();
        let request = json!({ "order_id": order_id, "reason": text });
        let sql =
            "SELECT reason FROM order_offers WHERE order_id = $1::uuid AND state = 'declined'";
        provider_caller
            .keeps("Decline.reason", text, request, sql, &order_id)
            .await;
        let order_id = offered_order(store, resident).await.to_string();
        for request in [
            json!({ "order_id": order_id, "staff_id": staff, "eta_minutes": 30 }),
            json!({ "order_id": order_id, "status": 1 }),
            json!({ "order_id": order_id, "status": 2 }),
        ] {
            let method = if request.get("staff_id").is_some() {
                "Accept"
            } else {
                "UpdateStatus"
            };
            let answer = bridge
                .call("provider", method, Some(&dispatcher), request)
                .await;
            accepted(method, "", answer);
        }
        let request = json!({
            "order_id": order_id, "status": 3, "notes": text, "duration_minutes": 30
        });
        let sql = "SELECT completion_notes FROM orders WHERE id = $1::uuid";
        provider_caller
            .keeps("UpdateStatus.notes", text, request, sql, &order_id)
            .await;
    }
    let order_id = offered_order(store, resident).await.to_string();
    let request = json!({ "order_id": order_id, "reason": NUL });
    provider_caller
        .refuses_invalid("Decline.reason", NUL, request)
        .await;
    let state = stored(
        pool,
        "SELECT state FROM orders WHERE id = $1::uuid",
        &order_id,
    )
    .await;
    assert_eq!(state, "offered");
    store
        .accept_order(provider, Uuid::parse_str(&order_id).unwrap(), staff, 30)
        .await
        .unwrap();
    for report in [
        carebell_store::ProgressReport::EnRoute,
        carebell_store::ProgressReport::Arrived { position: None },
    ] {
        store
            .report_progress(provider, Uuid::parse_str(&order_id).unwrap(), report)
            .await
            .unwrap();
    }
    let request = json!({
        "order_id": order_id, "status": 3, "notes": NUL, "duration_minutes": 30
    });
    provider_caller
        .refuses_invalid("UpdateStatus.notes", NUL, request)
        .await;
    let state = stored(
        pool,
        "SELECT state FROM orders WHERE id = $1::uuid",
        &order_id,
    )
    .await;
    assert_eq!(state, "arrived");
    let o = order_id;
    let s = staff;
    ids_refused(
        &bridge,
        "provider",
        &dispatcher,
        &[
            (
                "Accept.order_id",
                "Accept",
                format!(r#"{{"order_id": ID, "staff_id": "{s}", "eta_minutes": 30}}"#),
            ),
            (
                "Accept.staff_id",
                "Accept",
                format!(r#"{{"order_id": "{o}", "staff_id": ID, "eta_minutes": 30}}"#),
            ),
            (
                "Decline.order_id",
                "Decline",
                r#"{"order_id": ID, "reason": "x"}"#.to_owned(),
            ),
            (
                "AssignStaff.order_id",
                "AssignStaff",
                format!(r#"{{"order_id": ID, "staff_id": "{s}"}}"#),
            ),
            (
                "AssignStaff.staff_id",
                "AssignStaff",
                format!(r#"{{"order_id": "{o}", "staff_id": ID}}"#),
            ),
            (
                "UpdateStatus.order_id",
                "UpdateStatus",
                r#"{"order_id": ID, "status": 1}"#.to_owned(),
            ),
        ],
    )
    .await;

    sign_ins_refused(&bridge, "family", "hostile-family").await;
    sign_ins_refused(&bridge, "provider", "hostile-provider").await;
    bystander.assert_untouched(pool, &before, logs).await;
    tablet.close().await;
    node.stop().await;
}

/// The next error the tablet hears, as its code.
async fn tablet_error(tablet: &mut Tablet) -> carebell_proto::device::v1::ErrorCode {
    next_tablet(tablet, |event| match event {
        TabletEvent::Error(error) => Some(error.code()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_in_every_device_field_is_stored_verbatim_or_refused() {
    use carebell_proto::device::v1::{
        CallCancel, CallRequest, ContentOpened, ErrorCode, OrderRating, ReminderConfirm,
        RtcSignal as DeviceRtcSignal,
    };
    let node = TestNode::start(NodeOptions::default()).await;
    let (store, pool) = (&node.store, node.store.pool());
    let bystander = Bystander::add(store).await;
    let resident = node.resident("敌意设备").await;
    let mut config =
        firmware_sim::TabletConfig::new(node.provision(resident).await, TransportKind::WebSocket);
    let mut console = node.available_operator("device-op", "接线员").await;
    let before = bystander.untouched(pool).await;
    let logs = Bystander::log_rows(pool).await;

    // Hello.firmware_version is a log field, never stored: the session goes ahead.
    config.firmware_version = NUL.to_owned();
    let mut tablet = Tablet::connect(&config).await.unwrap();
    // An alarm's detail: stored exactly.
    for text in HOSTILE {
        let alarm_id = raise(&tablet, AlarmKind::LowBattery, text).await;
        let detail = stored(
            pool,
            "SELECT detail FROM alarms WHERE alarm_id = $1",
            &alarm_id,
        )
        .await;
        assert_eq!(detail, *text);
    }
    // A NUL cannot be stored; the alarm must not be lost over it, so it is raised with the NUL
    // shown as U+FFFD (and acknowledged).
    let alarm_id = raise(&tablet, AlarmKind::Sos, NUL).await;
    let detail = stored(
        pool,
        "SELECT detail FROM alarms WHERE alarm_id = $1",
        &alarm_id,
    )
    .await;
    assert_eq!(detail, NUL.replace('\0', "\u{fffd}"));
    let offer = console
        .next_offer(Duration::from_secs(10))
        .await
        .expect("the SOS is offered");
    console.client.accept(&offer.offer_id).await.unwrap();
    let call_id = offer.call_id.clone();

    // Ids and kinds: refused as invalid (and acknowledged, so the tablet stops resending them).
    let calls = "SELECT count(*) FROM calls WHERE device_id = $1";
    let alarms = "SELECT count(*) FROM alarms WHERE device_id = $1";
    let device_id = config.credentials.device_id.clone();
    let (calls_before, alarms_before) = (
        counted(pool, calls, &device_id).await,
        counted(pool, alarms, &device_id).await,
    );
    for text in hostile_and_nul() {
        for (field, body) in [
            (
                "Alarm.alarm_id",
                Body::Alarm(Alarm {
                    alarm_id: text.to_owned(),
                    kind: AlarmKind::Sos as i32,
                    raised_at_ms: 0,
                    detail: String::new(),
                }),
            ),
            (
                "CallRequest.request_id",
                Body::CallRequest(CallRequest {
                    request_id: text.to_owned(),
                    pressed_at_ms: 0,
                }),
            ),
            (
                "CallCancel.request_id",
                Body::CallCancel(CallCancel {
                    request_id: text.to_owned(),
                }),
            ),
            (
                "ReminderConfirm.occurrence_id",
                Body::ReminderConfirm(ReminderConfirm {
                    occurrence_id: text.to_owned(),
                }),
            ),
            (
                "ContentOpened.content_id",
                Body::ContentOpened(ContentOpened {
                    content_id: text.to_owned(),
                }),
            ),
            (
                "OrderRating.order_id",
                Body::OrderRating(OrderRating {
                    order_id: text.to_owned(),
                    stars: 5,
                }),
            ),
            (
                "RtcSignal.call_id",
                Body::RtcSignal(DeviceRtcSignal {
                    call_id: text.to_owned(),
                    kind: "candidate".to_owned(),
                    payload: String::new(),
                }),
            ),
            (
                "RtcSignal.kind",
                Body::RtcSignal(DeviceRtcSignal {
                    call_id: call_id.clone(),
                    kind: text.to_owned(),
                    payload: String::new(),
                }),
            ),
        ] {
            // Paced: a tablet may send 20 messages a second (its acknowledgements included).
            tokio::time::sleep(Duration::from_millis(100)).await;
            tablet.send(body).await.unwrap();
            assert_eq!(
                tablet_error(&mut tablet).await,
                ErrorCode::InvalidArgument,
                "{field} = {text:?}"
            );
        }
        // A voice signal's payload is relayed to the console, not stored: it arrives as sent.
        tablet
            .send(Body::RtcSignal(DeviceRtcSignal {
                call_id: call_id.clone(),
                kind: "candidate".to_owned(),
                payload: text.to_owned(),
            }))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let payload = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match console.next_event(left).await {
                Some(carebell_proto::console::v1::console_event::Event::RtcSignal(signal)) => {
                    break signal.payload
                }
                Some(_) => continue,
                None => panic!("the console heard no signal"),
            }
        };
        assert_eq!(payload, text, "RtcSignal.payload");
    }
    assert_eq!(
        (
            counted(pool, calls, &device_id).await,
            counted(pool, alarms, &device_id).await
        ),
        (calls_before, alarms_before)
    );
    tablet.close().await;

    // Hello.device_id: refused like any unknown device.
    for text in hostile_and_nul() {
        let mut stranger = config.clone();
        stranger.credentials.device_id = text.to_owned();
        let outcome = Tablet::connect(&stranger).await;
        assert!(
            matches!(
                outcome,
                Err(SimError::Rejected {
                    reason: carebell_proto::device::v1::RejectReason::BadCredentials,
                    ..
                })
            ),
            "Hello.device_id = {text:?}: {:?}",
            outcome.err()
        );
    }
    // Enrolment: a code is refused as malformed; the firmware version is a log field only.
    let channel = carebell_server::console_client::channel(&node.grpc_url, Some(&node.ca_pem))
        .await
        .unwrap();
    let mut enrolment =
        carebell_proto::device::v1::device_enrolment_client::DeviceEnrolmentClient::new(channel);
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32])
        .verifying_key()
        .to_bytes()
        .to_vec();
    for text in hostile_and_nul() {
        let refusal = enrolment
            .enrol(carebell_proto::device::v1::EnrolRequest {
                code: text.to_owned(),
                public_key: key.clone(),
                firmware_version: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            refusal.code(),
            tonic::Code::InvalidArgument,
            "EnrolRequest.code = {text:?}: {refusal:?}"
        );
    }
    let code = store
        .create_enrolment_code(resident, None, Duration::from_secs(600), "admin:test")
        .await
        .unwrap();
    let enrolled = enrolment
        .enrol(carebell_proto::device::v1::EnrolRequest {
            code,
            public_key: key,
            firmware_version: NUL.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(enrolled.device_id.starts_with("tab-"), "{enrolled:?}");

    bystander.assert_untouched(pool, &before, logs).await;
    node.stop().await;
}

/// Runs `carebell admin ARGS` against `database_url`; returns what it printed.
async fn admin(database_url: &str, args: &[&str]) -> anyhow::Result<String> {
    use clap::Parser;
    let mut settings = carebell_server::settings::Settings::defaults().unwrap();
    settings.database_url = carebell_server::settings::Secret::new(database_url);
    let cli = carebell_server::cli::Cli::try_parse_from(
        ["carebell", "admin"]
            .into_iter()
            .chain(args.iter().copied()),
    )?;
    match carebell_server::cli::run(cli, settings).await? {
        carebell_server::cli::Outcome::Printed(text) => Ok(text),
        _ => anyhow::bail!("admin printed nothing"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_in_every_admin_command_is_stored_verbatim_or_refused() {
    let database_url = carebell_tests::fresh_database().await;
    let store = carebell_store::Store::connect(&database_url, 5)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let pool = store.pool();
    let bystander = Bystander::add(&store).await;
    let station = store.add_station("管理站").await.unwrap().to_string();
    let resident = node_free_resident(&store, &station).await;
    let provider = crate::orders::provider(
        &store,
        "管理家政",
        (22.551, 114.25),
        3000,
        vec![],
        &[("housekeeping", 5000)],
    )
    .await
    .to_string();
    let hash = carebell_gateway::console::hash_password(PASSWORD).unwrap();
    store.add_operator("admin-op", "管理", &hash).await.unwrap();
    let device = format!("tab-{}", &Uuid::new_v4().simple().to_string()[..12]);
    store
        .add_device(&carebell_store::NewDevice {
            device_id: device.clone(),
            resident_id: Uuid::parse_str(&resident).unwrap(),
            public_key: ed25519_dalek::SigningKey::from_bytes(&[7; 32])
                .verifying_key()
                .to_bytes(),
        })
        .await
        .unwrap();
    let dir = carebell_tests::TempDir::new();
    let before = bystander.untouched(pool).await;
    let logs = Bystander::log_rows(pool).await;
    let run = |args: Vec<String>| {
        let database_url = database_url.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            admin(&database_url, &args).await
        }
    };
    let args = |args: &[&str]| args.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>();
    let ok = |what: &str, text: &str, outcome: anyhow::Result<String>| {
        outcome.unwrap_or_else(|error| panic!("{what} = {text:?} was refused: {error:#}"))
    };
    let no = |what: &str, text: &str, outcome: anyhow::Result<String>| {
        if let Ok(printed) = outcome {
            panic!("{what} = {text:?} was accepted: {printed}");
        }
    };

    for (n, &text) in HOSTILE.iter().enumerate() {
        // Stored exactly, each read back from its table.
        let id = ok(
            "add-station --name",
            text,
            run(args(&["add-station", "--name", text])).await,
        );
        assert_eq!(
            stored(pool, "SELECT name FROM stations WHERE id = $1::uuid", &id).await,
            text
        );
        let id = ok(
            "add-resident",
            text,
            run(args(&[
                "add-resident",
                "--station",
                &station,
                "--name",
                text,
                "--address",
                text,
                "--phone",
                text,
                "--dialect",
                text,
                "--medical-notes",
                text,
                "--risk-warnings",
                text,
                "--key-safe",
                text,
            ]))
            .await,
        );
        let row = stored_all(
            pool,
            "SELECT unnest(ARRAY[full_name, address, phone, dialect, medical_notes, risk_warnings,
                                 key_safe]) FROM residents WHERE id = $1::uuid",
            &id,
        )
        .await;
        assert_eq!(row, vec![text; 7], "add-resident");
        for (command, table) in [
            ("add-operator", "operators"),
            ("add-family-account", "family_accounts"),
        ] {
            let username = format!("admin-{command}-{n}");
            let id = ok(
                &format!("{command} --display-name"),
                text,
                run(args(&[
                    command,
                    "--username",
                    &username,
                    "--display-name",
                    text,
                    "--password",
                    PASSWORD,
                ]))
                .await,
            );
            let sql = format!("SELECT display_name FROM {table} WHERE id = $1::uuid");
            assert_eq!(stored(pool, &sql, &id).await, text, "{command}");
            no(
                &format!("{command} --username"),
                text,
                run(args(&[
                    command,
                    "--username",
                    text,
                    "--display-name",
                    "x",
                    "--password",
                    PASSWORD,
                ]))
                .await,
            );
        }
        let skill = format!("dialect:{text}");
        ok(
            "set-skills --skills",
            text,
            run(args(&[
                "set-skills",
                "--username",
                "admin-op",
                "--skills",
                &skill,
            ]))
            .await,
        );
        let skills: Vec<String> =
            sqlx::query_scalar("SELECT skills FROM operators WHERE username = 'admin-op'")
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(skills, [skill.to_lowercase()], "set-skills");
        no(
            "set-skills --username",
            text,
            run(args(&[
                "set-skills",
                "--username",
                text,
                "--skills",
                "nurse",
            ]))
            .await,
        );
        let id = ok(
            "add-contact",
            text,
            run(args(&[
                "add-contact",
                "--resident",
                &resident,
                "--name",
                text,
                "--relationship",
                text,
                "--phone",
                text,
            ]))
            .await,
        );
        let row = stored_all(
            pool,
            "SELECT unnest(ARRAY[name, relationship, phone]) FROM contacts WHERE id = $1::uuid",
            &id,
        )
        .await;
        assert_eq!(row, vec![text; 3], "add-contact");
        for extra in [["--family-account", text], ["--channels", text]] {
            no(
                &format!("add-contact {}", extra[0]),
                text,
                run(args(&[
                    "add-contact",
                    "--resident",
                    &resident,
                    "--name",
                    "x",
                    extra[0],
                    extra[1],
                ]))
                .await,
            );
        }
        for (what, command) in [
            (
                "revoke-device --device-id",
                args(&["revoke-device", "--device-id", text]),
            ),
            (
                "enrolment-code --replaces",
                args(&[
                    "enrolment-code",
                    "--resident",
                    &resident,
                    "--replaces",
                    text,
                ]),
            ),
            (
                "issue-client-cert --device-id",
                args(&[
                    "issue-client-cert",
                    "--device-id",
                    text,
                    "--ca-dir",
                    &dir.0.to_string_lossy(),
                    "--out",
                    &dir.0.to_string_lossy(),
                ]),
            ),
            (
                "provision-device --device-id",
                args(&[
                    "provision-device",
                    "--resident",
                    &resident,
                    "--device-id",
                    text,
                    "--out",
                    &dir.0.join(format!("tablet-{n}.json")).to_string_lossy(),
                ]),
            ),
            (
                "fleet-provision --prefix",
                args(&["fleet-provision", "--prefix", text, "--count", "1"]),
            ),
            (
                "services set-resident --tier",
                args(&[
                    "services",
                    "set-resident",
                    "--resident",
                    &resident,
                    "--tier",
                    text,
                ]),
            ),
            (
                "services add-provider --kind",
                args(&[
                    "services",
                    "add-provider",
                    "--name",
                    "x",
                    "--licence",
                    &format!("kind-{n}"),
                    "--kind",
                    text,
                    "--services",
                    "housekeeping",
                ]),
            ),
            (
                "services add-provider --services",
                args(&[
                    "services",
                    "add-provider",
                    "--name",
                    "x",
                    "--licence",
                    &format!("services-{n}"),
                    "--services",
                    text,
                ]),
            ),
            (
                "services add-provider --hours",
                args(&[
                    "services",
                    "add-provider",
                    "--name",
                    "x",
                    "--licence",
                    &format!("hours-{n}"),
                    "--services",
                    "housekeeping",
                    "--hours",
                    text,
                ]),
            ),
            (
                "services add-provider-account --username",
                args(&[
                    "services",
                    "add-provider-account",
                    "--provider",
                    &provider,
                    "--username",
                    text,
                    "--display-name",
                    "x",
                    "--password",
                    PASSWORD,
                ]),
            ),
            (
                "services statement --month",
                args(&[
                    "services",
                    "statement",
                    "--resident",
                    &resident,
                    "--month",
                    text,
                ]),
            ),
        ] {
            no(what, text, run(command).await);
        }
        assert!(
            !dir.0.join(format!("tablet-{n}.json")).exists(),
            "a refused provisioning left its credentials file"
        );
        // A filter: matches nothing, changes nothing.
        let found = ok(
            "audit --actor",
            text,
            run(args(&["audit", "--actor", text])).await,
        );
        assert_eq!(found, "", "audit --actor");
        let id = ok(
            "fleet-provision --station-name",
            text,
            run(args(&[
                "fleet-provision",
                "--seed",
                text,
                "--prefix",
                &format!("hostile{n}"),
                "--count",
                "1",
                "--station-name",
                text,
            ]))
            .await,
        );
        assert_eq!(id, "1 tablets registered (0 already were)");
        let names = counted(pool, "SELECT count(*) FROM stations WHERE name = $1", text).await;
        assert_eq!(names, 2, "add-station and fleet-provision");
        let id = ok(
            "services add-centre --name",
            text,
            run(args(&["services", "add-centre", "--name", text])).await,
        );
        assert_eq!(
            stored(pool, "SELECT name FROM centres WHERE id = $1::uuid", &id).await,
            text
        );
        let id = ok(
            "services add-community --name",
            text,
            run(args(&[
                "services",
                "add-community",
                "--station",
                &station,
                "--name",
                text,
            ]))
            .await,
        );
        assert_eq!(
            stored(
                pool,
                "SELECT name FROM communities WHERE id = $1::uuid",
                &id
            )
            .await,
            text
        );
        let id = ok(
            "services add-provider",
            text,
            run(args(&[
                "services",
                "add-provider",
                "--name",
                text,
                "--licence",
                text,
                "--services",
                "housekeeping",
            ]))
            .await,
        );
        let row = stored_all(
            pool,
            "SELECT unnest(ARRAY[name, licence_no]) FROM providers WHERE id = $1::uuid",
            &id,
        )
        .await;
        assert_eq!(row, vec![text; 2], "add-provider");
        let id = ok(
            "services add-staff",
            text,
            run(args(&[
                "services",
                "add-staff",
                "--provider",
                &provider,
                "--name",
                text,
                "--phone",
                text,
            ]))
            .await,
        );
        let row = stored_all(
            pool,
            "SELECT unnest(ARRAY[name, phone]) FROM provider_staff WHERE id = $1::uuid",
            &id,
        )
        .await;
        assert_eq!(row, vec![text; 2], "add-staff");
        let id = ok(
            "services add-provider-account --display-name",
            text,
            run(args(&[
                "services",
                "add-provider-account",
                "--provider",
                &provider,
                "--username",
                &format!("admin-provider-{n}"),
                "--display-name",
                text,
                "--password",
                PASSWORD,
            ]))
            .await,
        );
        let sql = "SELECT display_name FROM provider_accounts WHERE id = $1::uuid";
        assert_eq!(stored(pool, sql, &id).await, text);
        // Proactive care: a schedule's title, a resident's interests, a content item's text.
        let id = ok(
            "care add-schedule --title",
            text,
            run(args(&[
                "care",
                "add-schedule",
                "--resident",
                &resident,
                "--kind",
                "reminder",
                "--title",
                text,
                "--rule",
                "FREQ=DAILY",
                "--start",
                "2026-12-01T08:00",
            ]))
            .await,
        );
        assert_eq!(
            stored(pool, "SELECT title FROM schedules WHERE id = $1::uuid", &id).await,
            text
        );
        for (what, flag) in [
            ("care add-schedule --kind", "--kind"),
            ("care add-schedule --rule", "--rule"),
            ("care add-schedule --time-zone", "--time-zone"),
        ] {
            let mut command = args(&[
                "care",
                "add-schedule",
                "--resident",
                &resident,
                "--kind",
                "reminder",
                "--title",
                "x",
                "--rule",
                "FREQ=DAILY",
                "--start",
                "2026-12-01T08:00",
                "--time-zone",
                "Asia/Shanghai",
            ]);
            let at = command.iter().position(|arg| arg == flag).unwrap();
            command[at + 1] = text.to_owned();
            no(what, text, run(command).await);
        }
        ok(
            "care set-profile --interests",
            text,
            run(args(&[
                "care",
                "set-profile",
                "--resident",
                &resident,
                "--language",
                "zh",
                "--interests",
                text,
            ]))
            .await,
        );
        let interests: Vec<String> =
            sqlx::query_scalar("SELECT interests FROM residents WHERE id = $1::uuid")
                .bind(&resident)
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(interests, [text], "care set-profile --interests");
        no(
            "care set-profile --language",
            text,
            run(args(&[
                "care",
                "set-profile",
                "--resident",
                &resident,
                "--language",
                text,
            ]))
            .await,
        );
        let id = ok(
            "care add-content",
            text,
            run(args(&[
                "care",
                "add-content",
                "--kind",
                "health",
                "--title",
                text,
                "--body",
                text,
                "--media-url",
                text,
                "--tags",
                text,
            ]))
            .await,
        );
        let row = stored_all(
            pool,
            "SELECT unnest(ARRAY[title, body, media_url] || tags) FROM content_items
             WHERE id = $1::uuid",
            &id,
        )
        .await;
        assert_eq!(row, vec![text; 4], "care add-content");
        for (what, flag) in [
            ("care add-content --kind", "--kind"),
            ("care add-content --language", "--language"),
        ] {
            let mut command = args(&[
                "care",
                "add-content",
                "--kind",
                "health",
                "--title",
                "x",
                "--language",
                "zh",
            ]);
            let at = command.iter().position(|arg| arg == flag).unwrap();
            command[at + 1] = text.to_owned();
            no(what, text, run(command).await);
        }
        ok(
            "services top-up --memo",
            text,
            run(args(&[
                "services",
                "top-up",
                "--resident",
                &resident,
                "--fen",
                "100",
                "--memo",
                text,
            ]))
            .await,
        );
        let memo = stored(
            pool,
            "SELECT memo FROM ledger_transactions WHERE resident_id = $1::uuid
             ORDER BY at DESC LIMIT 1",
            &resident,
        )
        .await;
        assert_eq!(memo, text, "top-up --memo");
    }
    // A revocation's reason (once: a device is revoked once).
    let reason = HOSTILE[0];
    ok(
        "revoke-device --reason",
        reason,
        run(args(&[
            "revoke-device",
            "--device-id",
            &device,
            "--reason",
            reason,
        ]))
        .await,
    );
    assert_eq!(
        stored(
            pool,
            "SELECT revoked_reason FROM devices WHERE id = $1",
            &device
        )
        .await,
        reason
    );

    // Files: routing rules whose queues are named with the SQL are stored as they are; a NUL
    // (TOML's \u0000) is refused and the rules in force stay; a policy is numbers only.
    let mut rules = serde_json::to_value(store.routing_rules().await.unwrap().rules()).unwrap();
    for id in HOSTILE {
        rules["queues"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({ "id": id, "steps": [{ "after_secs": 0 }] }));
    }
    let file = dir.0.join("rules.json");
    std::fs::write(&file, rules.to_string()).unwrap();
    ok(
        "routing load",
        "queue ids",
        run(args(&[
            "routing",
            "load",
            "--file",
            &file.to_string_lossy(),
        ]))
        .await,
    );
    let queues = || async {
        let body: serde_json::Value =
            sqlx::query_scalar("SELECT body FROM routing_rules ORDER BY version DESC LIMIT 1")
                .fetch_one(pool)
                .await
                .unwrap();
        body["queues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|queue| queue["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let loaded = queues().await;
    assert_eq!(
        loaded[loaded.len() - HOSTILE.len()..],
        *HOSTILE,
        "routing load"
    );
    let mut with_nul = rules.clone();
    with_nul["queues"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({ "id": NUL, "steps": [{ "after_secs": 0 }] }));
    std::fs::write(&file, with_nul.to_string()).unwrap();
    no(
        "routing load",
        NUL,
        run(args(&[
            "routing",
            "load",
            "--file",
            &file.to_string_lossy(),
        ]))
        .await,
    );
    assert_eq!(
        queues().await,
        loaded,
        "a refused rule set changed the rules in force"
    );
    std::fs::write(&file, [b'{', 0xff, 0xfe, b'}']).unwrap();
    no(
        "routing load",
        "invalid UTF-8",
        run(args(&[
            "routing",
            "load",
            "--file",
            &file.to_string_lossy(),
        ]))
        .await,
    );
    for text in hostile_and_nul() {
        std::fs::write(
            &file,
            serde_json::json!({ "offer_timeout_secs": text }).to_string(),
        )
        .unwrap();
        no(
            "services policy --load",
            text,
            run(args(&[
                "services",
                "policy",
                "--load",
                &file.to_string_lossy(),
            ]))
            .await,
        );
    }

    // An argument that is not UTF-8 is refused by the parser.
    {
        use clap::Parser;
        use std::os::unix::ffi::OsStringExt;
        let outcome = carebell_server::cli::Cli::try_parse_from([
            std::ffi::OsString::from("carebell"),
            "admin".into(),
            "add-station".into(),
            "--name".into(),
            std::ffi::OsString::from_vec(vec![b'x', 0xff, 0xfe]),
        ]);
        assert!(outcome.is_err(), "a name that is not UTF-8 was accepted");
    }

    // The commands were audited, and nothing else changed.
    let audited = counted(
        pool,
        "SELECT count(*) FROM audit_log WHERE actor = $1",
        "admin:cli",
    )
    .await;
    assert!(audited > 10, "{audited} admin commands audited");
    bystander.assert_untouched(pool, &before, logs).await;
}

/// A resident of `station` for the admin commands (no node needed).
async fn node_free_resident(store: &carebell_store::Store, station: &str) -> String {
    store
        .add_resident(&NewResident {
            station_id: Uuid::parse_str(station).unwrap(),
            full_name: "管理居民".to_owned(),
            ..NewResident::default()
        })
        .await
        .unwrap()
        .to_string()
}

/// `text` percent-encoded for a query string (every byte but letters and digits).
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// The error code of the first frame of the family alerts stream opened with `query`.
async fn alerts_error(bridge: &Bridge, query: &str) -> serde_json::Value {
    bridge.first_frame("family", "Alerts", query).await["error"]["code"].clone()
}

/// Protobuf bytes sent as they are: the generated clients cannot send a string that is not
/// UTF-8, a hostile client can.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        destination: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(destination, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        source: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(source.copy_to_bytes(source.remaining()).to_vec()))
    }
}

/// What the transports do with text that is not text: invalid UTF-8, a lone surrogate, text
/// where a number belongs, hostile query parameters. Each is refused before any service sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_in_the_transports_is_refused_before_any_service() {
    use serde_json::json;
    let node = TestNode::start(NodeOptions::default()).await;
    let pool = node.store.pool();
    let bridge = Bridge::new(&node);
    let bystander = Bystander::add(&node.store).await;
    let (resident, config) = node
        .tablet_config("传输 测试", TransportKind::WebSocket)
        .await;
    node.family_contact(resident, "transport-family", "家属", "女儿")
        .await;
    let family = bridge.sign_in("family", "transport-family").await;
    let mut console = node.available_operator("transport-op", "接线员").await;
    let op = bridge.sign_in("console", "transport-op").await;
    let tablet = Tablet::connect(&config).await.unwrap();
    tablet.press().await.unwrap();
    let offer = console.next_offer(Duration::from_secs(10)).await.unwrap();
    console.client.accept(&offer.offer_id).await.unwrap();
    let call_id = offer.call_id;
    let before = bystander.untouched(pool).await;
    let logs = Bystander::log_rows(pool).await;

    // Bridge bodies that are not valid JSON text.
    let call = call_id.as_bytes();
    for (what, body) in [
        (
            "invalid UTF-8",
            [
                &br#"{"call_id": ""#[..],
                call,
                &b"\", \"disposition\": 3, \"note\": \"\xff\xfe\"}"[..],
            ]
            .concat(),
        ),
        (
            "a lone surrogate",
            [
                &br#"{"call_id": ""#[..],
                call,
                &br#"", "disposition": 3, "note": "\ud800"}"#[..],
            ]
            .concat(),
        ),
        (
            "text for a number",
            [
                &br#"{"call_id": ""#[..],
                call,
                &br#"", "disposition": "' OR '1'='1"}"#[..],
            ]
            .concat(),
        ),
    ] {
        let answer = bridge.post("console", "EndCall", Some(&op), &body).await;
        refused("EndCall", what, answer, &["invalid_argument"]);
    }
    for (method, request) in [
        ("SetStatus", json!({ "status": HOSTILE[1] })),
        ("Statistics", json!({ "from_ms": HOSTILE[1] })),
        (
            "RecordAlarmAction",
            json!({ "call_id": call_id, "action": HOSTILE[0] }),
        ),
        (
            "ResolveAlarm",
            json!({ "call_id": call_id, "outcome": HOSTILE[2] }),
        ),
    ] {
        let answer = bridge.call("console", method, Some(&op), request).await;
        refused(method, "text for a number", answer, &["invalid_argument"]);
    }
    let answer = bridge
        .post(
            "console",
            "SignIn",
            None,
            b"{\"username\": \"\xff\", \"password\": \"x\"}",
        )
        .await;
    refused(
        "SignIn.username",
        "invalid UTF-8",
        answer,
        &["invalid_argument"],
    );
    // The call is still held, its note untouched.
    let (state, note): (String, Option<String>) =
        sqlx::query_as("SELECT state, note FROM calls WHERE id = $1::uuid")
            .bind(&call_id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), note), ("answered", None));

    // gRPC: a string that is not UTF-8 does not decode. gRPC's status codes prescribe INTERNAL
    // for a request that does not parse, and tonic's decoder answers so, naming the field; the
    // service never runs.
    let channel = carebell_server::console_client::channel(&node.grpc_url, Some(&node.ca_pem))
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    // EndCallRequest: 1 call_id (string), 2 disposition (3), 3 note (bytes that are not UTF-8).
    let mut message = vec![0x0a, u8::try_from(call_id.len()).unwrap()];
    message.extend_from_slice(call_id.as_bytes());
    message.extend_from_slice(&[0x10, 0x03, 0x1a, 0x03, b'x', 0xff, 0xfe]);
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {op}").parse().unwrap());
    let refusal = grpc
        .unary(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/carebell.console.v1.Console/EndCall",
            ),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(refusal.code(), tonic::Code::Internal, "{refusal:?}");
    assert!(
        refusal
            .message()
            .contains("failed to decode Protobuf message")
            && refusal.message().contains("note"),
        "{refusal:?}"
    );
    let state = stored(
        pool,
        "SELECT state FROM calls WHERE id = $1::uuid",
        &call_id,
    )
    .await;
    assert_eq!(state, "answered");

    // The streams' query parameters: a number that is text, a token that is SQL or holds a NUL,
    // a parameter that is not UTF-8.
    for text in hostile_and_nul() {
        let query = format!("token={family}&after_id={}", percent_encoded(text));
        assert_eq!(
            alerts_error(&bridge, &query).await,
            "invalid_argument",
            "after_id = {text:?}"
        );
        let query = format!("token={}", percent_encoded(text));
        assert_eq!(
            alerts_error(&bridge, &query).await,
            "unauthenticated",
            "token = {text:?}"
        );
    }
    let frame = bridge
        .first_frame(
            "console",
            "Subscribe",
            &format!("token={op}&x={}", percent_encoded(NUL)),
        )
        .await;
    assert!(
        frame.get("error").is_none(),
        "an unknown parameter is ignored: {frame}"
    );
    // Percent-encoding that is not UTF-8 is decoded lossily (as U+FFFD), then refused.
    let query = format!("token={family}&after_id=%FF");
    assert_eq!(
        alerts_error(&bridge, &query).await,
        "invalid_argument",
        "after_id = %FF"
    );
    assert_eq!(
        alerts_error(&bridge, "token=%FF%FE").await,
        "unauthenticated",
        "token = %FF%FE"
    );

    bystander.assert_untouched(pool, &before, logs).await;
    tablet.close().await;
    node.stop().await;
}
