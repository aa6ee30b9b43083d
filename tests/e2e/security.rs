//! Trust: a revoked tablet is cut off on whichever node holds it and cannot come back; the
//! application's database role cannot alter the audit log; a resident's export holds
//! everything about them and erasure leaves no personal data outside what must be kept;
//! hostile text (SQL in every field) is stored as text or refused, never executed.

use std::time::Duration;

use carebell_proto::console::v1::Disposition;
use carebell_proto::device::v1::envelope::Body;
use carebell_proto::device::v1::{Alarm, AlarmKind};
use carebell_store::{NewContact, NewResident};
use carebell_tests::{NodeOptions, TestNode};
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
    let refused = loop {
        match tablet.next_event(Duration::from_secs(5)).await {
            Some(TabletEvent::Error(error)) => break error,
            Some(_) => continue,
            None => panic!("the forged rotation got no answer"),
        }
    };
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
