//! `carebell admin`: what goes in through the command line comes out identical on the console.

use carebell_server::cli::{self, Cli, Outcome};
use carebell_server::settings::{Secret, Settings};
use carebell_tests::{NodeOptions, TempDir, TestNode};
use clap::Parser;

async fn admin(database_url: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut settings = Settings::defaults().unwrap();
    settings.database_url = Secret::new(database_url);
    let cli = Cli::try_parse_from(
        std::iter::once("carebell")
            .chain(std::iter::once("admin"))
            .chain(args.iter().copied()),
    )?;
    match cli::run(cli, settings).await? {
        Outcome::Printed(text) => Ok(text),
        _ => anyhow::bail!("admin printed nothing"),
    }
}

#[tokio::test]
async fn a_resident_with_a_chinese_name_and_address_round_trips_through_admin_and_console() {
    let database_url = carebell_tests::fresh_database().await;
    let node = TestNode::start(NodeOptions {
        database_url: Some(database_url.clone()),
        ..NodeOptions::default()
    })
    .await;
    let address = "广东省深圳市盐田区海山街道田东社区海涛路12号3栋502室（近福田小学）";
    let notes = "高血压；对青霉素过敏";

    let station = admin(
        &database_url,
        &["add-station", "--name", "盐田区李秘书康养服务中心"],
    )
    .await
    .unwrap();
    let resident = admin(
        &database_url,
        &[
            "add-resident",
            "--station",
            &station,
            "--name",
            "潘阿姨",
            "--address",
            address,
            "--dialect",
            "粤语",
            "--medical-notes",
            notes,
        ],
    )
    .await
    .unwrap();
    let dir = TempDir::new();
    let credentials_path = dir.0.join("tablet.json");
    let credentials_arg = credentials_path.to_string_lossy().into_owned();
    let provisioned = admin(
        &database_url,
        &[
            "provision-device",
            "--resident",
            &resident,
            "--out",
            &credentials_arg,
        ],
    )
    .await
    .unwrap();
    assert!(provisioned.starts_with("tab-"), "{provisioned}");
    let again = admin(
        &database_url,
        &[
            "provision-device",
            "--resident",
            &resident,
            "--out",
            &credentials_arg,
        ],
    )
    .await;
    assert!(
        again.is_err(),
        "an existing credentials file is never overwritten"
    );
    let kept = firmware_sim::Credentials::load(&credentials_path)
        .expect("the first credentials file is intact");
    assert!(provisioned.starts_with(&kept.device_id));

    admin(
        &database_url,
        &[
            "add-operator",
            "--username",
            "pan-desk",
            "--display-name",
            "李秘书 小潘",
            "--password",
            carebell_tests::PASSWORD,
        ],
    )
    .await
    .unwrap();
    let short = admin(
        &database_url,
        &[
            "add-operator",
            "--username",
            "weak",
            "--display-name",
            "Weak",
            "--password",
            "1234",
        ],
    )
    .await;
    assert!(
        short.unwrap_err().to_string().contains("at least"),
        "short passwords are refused"
    );

    let mut client = node.sign_in("pan-desk").await;
    let record = client.get_resident(&resident).await.unwrap();
    assert_eq!(record.full_name, "潘阿姨");
    assert_eq!(record.address, address);
    assert_eq!(record.medical_notes, notes);
    assert_eq!(record.dialect, "粤语");
    assert_eq!(record.station_name, "盐田区李秘书康养服务中心");
    assert_eq!(record.devices.len(), 1);

    let resident_id = uuid::Uuid::parse_str(&resident).unwrap();
    let reads = node
        .store
        .audited_reads(resident_id, &format!("operator:{}", client.operator_id))
        .await
        .unwrap();
    assert_eq!(reads, 1, "the console's read of the record is audited");
}

#[tokio::test]
async fn bad_admin_input_gets_a_clear_error() {
    let database_url = carebell_tests::fresh_database().await;
    let error = admin(
        &database_url,
        &["add-resident", "--station", "not-a-uuid", "--name", "x"],
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("invalid"), "{error}");
    let unknown_station = uuid::Uuid::new_v4().to_string();
    let error = admin(
        &database_url,
        &["add-resident", "--station", &unknown_station, "--name", "x"],
    )
    .await
    .unwrap_err();
    assert!(format!("{error:#}").contains("does not exist"), "{error:#}");
    let error = admin(&database_url, &["add-station", "--name", ""])
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("empty or too long"),
        "{error:#}"
    );
    let dir = TempDir::new();
    let out = dir.0.join("x.json").to_string_lossy().into_owned();
    let error = admin(
        &database_url,
        &[
            "provision-device",
            "--resident",
            &unknown_station,
            "--out",
            &out,
        ],
    )
    .await
    .unwrap_err();
    assert!(format!("{error:#}").contains("does not exist"), "{error:#}");
    assert!(
        !dir.0.join("x.json").exists(),
        "no credentials for a device that was not registered"
    );
}

#[tokio::test]
async fn sign_in_with_a_wrong_password_or_unknown_user_is_refused_alike() {
    let node = TestNode::start(NodeOptions::default()).await;
    node.operator_account("real", "Real").await;
    let channel = carebell_server::console_client::channel(&node.grpc_url, Some(&node.ca_pem))
        .await
        .unwrap();
    for (username, password) in [("real", "wrong password"), ("ghost", "whatever")] {
        let error = carebell_server::console_client::OperatorClient::sign_in(
            channel.clone(),
            username,
            password,
        )
        .await
        .err()
        .expect("refused");
        assert!(
            error.to_string().contains("invalid username or password"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn console_calls_without_a_valid_session_are_refused() {
    let node = TestNode::start(NodeOptions::default()).await;
    let channel = carebell_server::console_client::channel(&node.grpc_url, Some(&node.ca_pem))
        .await
        .unwrap();
    let mut client = carebell_proto::console::v1::console_client::ConsoleClient::new(channel);
    let mut request = tonic::Request::new(carebell_proto::console::v1::GetResidentRequest {
        resident_id: uuid::Uuid::new_v4().to_string(),
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer forged-token".parse().unwrap());
    let status = client.get_resident(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = client
        .subscribe(carebell_proto::console::v1::SubscribeRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn contacts_and_family_accounts_go_in_through_admin() {
    let database_url = carebell_tests::fresh_database().await;
    let station = admin(&database_url, &["add-station", "--name", "站"])
        .await
        .unwrap();
    let resident = admin(
        &database_url,
        &["add-resident", "--station", &station, "--name", "潘阿姨"],
    )
    .await
    .unwrap();
    admin(
        &database_url,
        &[
            "add-family-account",
            "--username",
            "son",
            "--display-name",
            "儿子",
            "--password",
            carebell_tests::PASSWORD,
        ],
    )
    .await
    .unwrap();
    admin(
        &database_url,
        &[
            "add-contact",
            "--resident",
            &resident,
            "--name",
            "儿子",
            "--position",
            "1",
            "--holds-keys",
            "--family-account",
            "son",
        ],
    )
    .await
    .unwrap();
    admin(
        &database_url,
        &["add-contact", "--resident", &resident, "--name", "社区站"],
    )
    .await
    .unwrap();
    let taken = admin(
        &database_url,
        &[
            "add-contact",
            "--resident",
            &resident,
            "--name",
            "又一个",
            "--position",
            "1",
        ],
    )
    .await
    .unwrap_err();
    assert!(format!("{taken:#}").contains("position"), "{taken:#}");
    let unknown = admin(
        &database_url,
        &[
            "add-contact",
            "--resident",
            &resident,
            "--name",
            "x",
            "--family-account",
            "ghost",
        ],
    )
    .await
    .unwrap_err();
    assert!(
        format!("{unknown:#}").contains("no family account 'ghost'"),
        "{unknown:#}"
    );
}

#[tokio::test]
async fn the_provider_network_cards_statements_and_reports_through_admin() {
    let database_url = carebell_tests::fresh_database().await;
    let run = |args: Vec<String>| {
        let database_url = database_url.clone();
        async move {
            let mut full = vec!["services".to_owned()];
            full.extend(args);
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            admin(&database_url, &refs).await
        }
    };
    let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let catalogue = run(args(&["catalogue"])).await.unwrap();
    assert!(catalogue.lines().count() >= 20);
    assert!(catalogue.contains("hospice_care") && catalogue.contains("临终关怀"));

    let station = admin(&database_url, &["add-station", "--name", "海山站"])
        .await
        .unwrap();
    let centre = run(args(&["add-centre", "--name", "盐田区居家养老服务中心"]))
        .await
        .unwrap();
    run(args(&[
        "lead-station",
        "--centre",
        &centre,
        "--station",
        &station,
    ]))
    .await
    .unwrap();
    let community = run(args(&[
        "add-community",
        "--station",
        &station,
        "--name",
        "田东社区",
    ]))
    .await
    .unwrap();
    let resident = admin(
        &database_url,
        &["add-resident", "--station", &station, "--name", "黄伯"],
    )
    .await
    .unwrap();
    run(args(&[
        "set-resident",
        "--resident",
        &resident,
        "--lat",
        "22.55",
        "--lon",
        "114.25",
        "--tier",
        "subsidised:70",
        "--community",
        &community,
    ]))
    .await
    .unwrap();
    let error = run(args(&[
        "set-resident",
        "--resident",
        &resident,
        "--tier",
        "subsidised:170",
    ]))
    .await
    .unwrap_err();
    assert!(format!("{error:#}").contains("percentage"), "{error:#}");

    // Bad input: an unknown category and a negative price are refused; nothing is stored.
    let error = run(args(&[
        "add-provider",
        "--name",
        "坏",
        "--licence",
        "L-1",
        "--services",
        "flying",
    ]))
    .await
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("unknown service category 'flying'"),
        "{error:#}"
    );
    let error = run(args(&[
        "add-provider",
        "--name",
        "坏",
        "--licence",
        "L-1",
        "--services",
        "haircut=-5",
    ]))
    .await
    .unwrap_err();
    assert!(format!("{error:#}").contains("negative"), "{error:#}");
    let provider = run(args(&[
        "add-provider",
        "--name",
        "乐龄理发",
        "--licence",
        "L-1",
        "--lat",
        "22.551",
        "--lon",
        "114.25",
        "--radius-m",
        "2000",
        "--services",
        "haircut=2500,meal_delivery",
        "--hours",
        "07:30-21:00",
        "--stations",
        &station,
    ]))
    .await
    .unwrap();
    assert!(uuid::Uuid::parse_str(&provider).is_ok());
    run(args(&[
        "add-staff",
        "--provider",
        &provider,
        "--name",
        "刘师傅",
    ]))
    .await
    .unwrap();

    let error = run(args(&["top-up", "--resident", &resident, "--fen", "-100"]))
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("negative"), "{error:#}");
    let balance = run(args(&["top-up", "--resident", &resident, "--fen", "5000"]))
        .await
        .unwrap();
    assert_eq!(balance, "card balance ¥50.00");

    let policy = run(args(&["policy"])).await.unwrap();
    assert!(policy.contains("\"circle_minutes\": 10"), "{policy}");

    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let statement = run(args(&[
        "statement",
        "--resident",
        &resident,
        "--month",
        &month,
    ]))
    .await
    .unwrap();
    assert!(
        statement
            .ends_with("total: price ¥0.00, subsidy ¥0.00, resident ¥0.00 (card ¥0.00, due ¥0.00)"),
        "{statement}"
    );
    let csv = run(args(&[
        "report",
        "--from",
        "2026-01-01",
        "--to",
        "2027-01-01",
        "--csv",
        "--recomputed",
    ]))
    .await
    .unwrap();
    assert!(csv.starts_with("scope,from,to,station_id"), "{csv}");
    let error = run(args(&[
        "report",
        "--from",
        "2026-02-01",
        "--to",
        "2026-01-01",
    ]))
    .await
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("ends after it starts"),
        "{error:#}"
    );
}

/// An administrator reads the audit log: every read of a resident's record, by whom.
#[tokio::test]
async fn the_audit_log_is_queried_by_resident_and_actor() {
    let database_url = carebell_tests::fresh_database().await;
    let node = TestNode::start(NodeOptions {
        database_url: Some(database_url.clone()),
        ..NodeOptions::default()
    })
    .await;
    let watched = node.resident("审计 对象").await;
    let other = node.resident("审计 其他").await;
    let mut operator = node
        .sign_in(&node.operator_account("auditee", "Auditee").await)
        .await;
    operator.get_resident(&watched.to_string()).await.unwrap();
    operator.get_resident(&watched.to_string()).await.unwrap();
    operator.get_resident(&other.to_string()).await.unwrap();
    let watched_text = watched.to_string();
    let lines = admin(&database_url, &["audit", "--resident", &watched_text])
        .await
        .unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines
        .iter()
        .all(|line| line.contains("resident.read") && line.contains(&watched_text)));
    // The three reads, and the administrator's own look at the log (audited too).
    let everything = admin(&database_url, &["audit", "--limit", "10"])
        .await
        .unwrap();
    let everything: Vec<&str> = everything.lines().collect();
    assert_eq!(everything.len(), 4, "{everything:?}");
    assert!(everything[0].contains("admin:cli") && everything[0].contains("admin.audit"));
    let refused = admin(&database_url, &["audit", "--limit", "0"]).await;
    assert!(refused.is_err());
    node.stop().await;
}

/// Mutual TLS from the command line: `dev-cert` makes a provisioning CA beside the server's,
/// and `issue-client-cert` writes a tablet's certificate and key and binds the tablet to it;
/// an unknown device is refused and nothing is written.
#[tokio::test]
async fn a_client_certificate_is_issued_and_bound_from_the_command_line() {
    let database_url = carebell_tests::fresh_database().await;
    let node = TestNode::start(NodeOptions {
        database_url: Some(database_url.clone()),
        ..NodeOptions::default()
    })
    .await;
    let resident = node.resident("命令行 证书").await;
    let credentials = node.provision(resident).await;
    let dir = TempDir::new();
    let certs = dir.0.join("certs");
    let certs_text = certs.to_string_lossy().into_owned();
    let mut settings = Settings::defaults().unwrap();
    settings.database_url = Secret::new(database_url.as_str());
    let cli = Cli::try_parse_from(["carebell", "dev-cert", "--out", &certs_text]).unwrap();
    assert!(matches!(
        cli::run(cli, settings).await.unwrap(),
        Outcome::Printed(_)
    ));
    assert!(certs.join("client-ca.pem").exists() && certs.join("client-ca.key").exists());
    let out = dir.0.join("tablets");
    let out_text = out.to_string_lossy().into_owned();
    admin(
        &database_url,
        &[
            "issue-client-cert",
            "--device-id",
            &credentials.device_id,
            "--ca-dir",
            &certs_text,
            "--out",
            &out_text,
        ],
    )
    .await
    .unwrap();
    let pem = std::fs::read(out.join(format!("{}.pem", credentials.device_id))).unwrap();
    assert!(out.join(format!("{}.key", credentials.device_id)).exists());
    let der = rustls_pemfile_der(&pem);
    let bound: Vec<u8> = sqlx::query_scalar("SELECT client_cert_sha256 FROM devices WHERE id = $1")
        .bind(&credentials.device_id)
        .fetch_one(node.store.pool())
        .await
        .unwrap();
    assert_eq!(bound, <sha2::Sha256 as sha2::Digest>::digest(&der).to_vec());
    let refused = admin(
        &database_url,
        &[
            "issue-client-cert",
            "--device-id",
            "tab-000000000000",
            "--ca-dir",
            &certs_text,
            "--out",
            &out_text,
        ],
    )
    .await;
    assert!(refused.is_err());
    assert!(!out.join("tab-000000000000.pem").exists());
    node.stop().await;
}

/// The DER of the first certificate in a PEM file.
fn rustls_pemfile_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// The installer's enrolment code from the command line: printed as text and as a QR code, and
/// it enrols a tablet once; a resident that does not exist gets a clear error.
#[tokio::test]
async fn an_enrolment_code_from_the_command_line_enrols_a_tablet() {
    let database_url = carebell_tests::fresh_database().await;
    let node = TestNode::start(NodeOptions {
        database_url: Some(database_url.clone()),
        ..NodeOptions::default()
    })
    .await;
    let resident = node.resident("命令行 入网").await.to_string();
    let printed = admin(
        &database_url,
        &[
            "enrolment-code",
            "--resident",
            &resident,
            "--valid-for",
            "1h",
        ],
    )
    .await
    .unwrap();
    let code = printed
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("enrolment code: "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the code on the first line")
        .to_owned();
    assert!(printed.contains(&format!("carebell:enrol?code={code}&server=")));
    // The QR code: rows of dark and light modules.
    assert!(
        printed.lines().filter(|line| line.contains('█')).count() > 20,
        "{printed}"
    );
    let credentials = firmware_sim::enrol(
        &node.grpc_url,
        &node.websocket_url,
        Some(&node.ca_pem),
        "localhost",
        &code,
    )
    .await
    .unwrap();
    let tablet = firmware_sim::Tablet::connect(&firmware_sim::TabletConfig::new(
        credentials,
        firmware_sim::TransportKind::WebSocket,
    ))
    .await
    .unwrap();
    tablet.close().await;
    let unknown = admin(
        &database_url,
        &[
            "enrolment-code",
            "--resident",
            &uuid::Uuid::new_v4().to_string(),
        ],
    )
    .await
    .unwrap_err();
    assert!(format!("{unknown:#}").contains("not found"), "{unknown:#}");
    node.stop().await;
}

/// `carebell admin care`: a schedule, a profile, content and its report, the untested tablets,
/// and clear errors for a bad rule, a resident without a tablet and content too large.
#[tokio::test]
async fn proactive_care_goes_in_through_admin() {
    let database_url = carebell_tests::fresh_database().await;
    let station = admin(&database_url, &["add-station", "--name", "关怀站"])
        .await
        .unwrap();
    let resident = admin(
        &database_url,
        &["add-resident", "--station", &station, "--name", "周阿姨"],
    )
    .await
    .unwrap();
    let schedule = [
        "care",
        "add-schedule",
        "--resident",
        &resident,
        "--kind",
        "reminder",
        "--title",
        "降压药",
        "--rule",
        "FREQ=DAILY",
        "--start",
        "2026-12-01T08:00",
    ];
    // No tablet yet: a reminder could not be shown.
    let error = admin(&database_url, &schedule).await.unwrap_err();
    assert!(format!("{error:#}").contains("has no tablet"), "{error:#}");
    let dir = TempDir::new();
    let credentials = dir.0.join("tablet.json");
    admin(
        &database_url,
        &[
            "provision-device",
            "--resident",
            &resident,
            "--out",
            &credentials.to_string_lossy(),
        ],
    )
    .await
    .unwrap();
    let id = admin(&database_url, &schedule).await.unwrap();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let mut bad_rule = schedule;
    bad_rule[9] = "FREQ=HOURLY";
    let error = admin(&database_url, &bad_rule).await.unwrap_err();
    assert!(format!("{error:#}").contains("too frequent"), "{error:#}");
    admin(
        &database_url,
        &[
            "care",
            "set-profile",
            "--resident",
            &resident,
            "--language",
            "zh",
            "--interests",
            "opera",
        ],
    )
    .await
    .unwrap();
    let added = admin(
        &database_url,
        &[
            "care",
            "add-content",
            "--kind",
            "song",
            "--title",
            "粤剧选段",
            "--tags",
            "opera",
            "--station",
            &station,
            "--deliver",
        ],
    )
    .await
    .unwrap();
    assert!(added.ends_with("sent to 1 tablets"), "{added}");
    let content = added.lines().next().unwrap();
    let report = admin(&database_url, &["care", "content-report", "--id", content])
        .await
        .unwrap();
    assert!(
        report.contains("\tfalse\tfalse"),
        "sent, not yet received: {report}"
    );
    let long = "长".repeat(30_000);
    let error = admin(
        &database_url,
        &[
            "care",
            "add-content",
            "--kind",
            "story",
            "--title",
            "太长",
            "--body",
            &long,
        ],
    )
    .await
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("larger than a tablet takes"),
        "{error:#}"
    );
    // A new tablet is not yet due a test call.
    let untested = admin(&database_url, &["care", "untested-tablets"])
        .await
        .unwrap();
    assert_eq!(untested.lines().count(), 1, "only the heading: {untested}");
}
