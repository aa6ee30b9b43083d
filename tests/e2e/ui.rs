//! The browser pages in Debian's Chromium, driven by Playwright (`tests/ui/*.mjs`): this side
//! starts a real node, enrols the people and devices, and runs one script per scenario with
//! what it needs; a script fails on any failed step and on any error the browser logs. The
//! screenshots land in `tests/ui/screenshots/<scenario>/`. `./deploy/test.sh` installs Chromium
//! and playwright-core when they are missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use carebell_domain::orders::{EntitlementTier, GeoPoint};
use carebell_store::{NewContact, NewProvider, NewResident};
use carebell_tests::{NodeOptions, TempDir, TestNode, PASSWORD};
use serde_json::{json, Value};
use uuid::Uuid;

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ui")
}

/// The `tablet-sim` binary built beside this test.
fn tablet_sim() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let debug_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the target directory");
    let path = debug_dir.join("tablet-sim");
    assert!(
        path.exists(),
        "{} is missing: build the workspace (cargo build --workspace) first",
        path.display()
    );
    path
}

/// Runs `tests/ui/<script>.mjs` with `config`; fails with the script's output if it fails.
async fn run_script(script: &str, mut config: Value) {
    let playwright = ui_dir().join("node_modules/playwright-core/package.json");
    assert!(
        playwright.exists(),
        "playwright-core is not installed: run ./deploy/ensure-browser.sh (./deploy/test.sh does)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(),
        "Chromium is not installed: run ./deploy/ensure-browser.sh (./deploy/test.sh does)"
    );
    let screenshots = ui_dir().join("screenshots").join(script);
    config["screenshots_dir"] = json!(screenshots);
    config["password"] = json!(PASSWORD);
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg(ui_dir().join(format!("{script}.mjs")))
            .current_dir(ui_dir())
            .env("CAREBELL_UI_CONFIG", config.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{script} did not finish within 3 minutes"))
    .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(output.status.success(), "{script} failed:\n{text}");
    assert!(
        screenshots.read_dir().map(|dir| dir.count()).unwrap_or(0) > 0,
        "{script} saved no screenshots"
    );
}

struct World {
    node: TestNode,
    _dir: TempDir,
    station: Uuid,
    resident: Uuid,
    credentials_path: PathBuf,
    credentials_json: String,
}

const RESIDENT: &str = "潘秀英";
const RISK: &str = "对青霉素过敏";

async fn world(options: NodeOptions) -> World {
    let node = TestNode::start(options).await;
    let station = node.station().await;
    let resident = node
        .store
        .add_resident(&NewResident {
            station_id: station,
            full_name: RESIDENT.to_owned(),
            address: "广东省深圳市盐田区海山街道田东社区海涛路12号".to_owned(),
            dialect: "Cantonese".to_owned(),
            medical_notes: "高血压，每日服药".to_owned(),
            risk_warnings: RISK.to_owned(),
            key_safe: "门口密码箱 2580".to_owned(),
            ..NewResident::default()
        })
        .await
        .unwrap();
    node.store
        .set_resident_services(
            resident,
            None,
            GeoPoint::new(22.55, 114.25).ok(),
            EntitlementTier::Free,
        )
        .await
        .unwrap();
    let credentials = node.provision(resident).await;
    let dir = TempDir::new();
    let credentials_path = dir.0.join("tablet.json");
    credentials.save_new(&credentials_path).unwrap();
    let credentials_json = std::fs::read_to_string(&credentials_path).unwrap();
    World {
        node,
        _dir: dir,
        station,
        resident,
        credentials_path,
        credentials_json,
    }
}

impl World {
    async fn operator(&self, username: &str, skills: &[&str]) {
        self.node.operator_account(username, "李秘书 小张").await;
        let skills: Vec<String> = skills.iter().map(|skill| (*skill).to_owned()).collect();
        self.node
            .store
            .set_operator_skills(username, &skills)
            .await
            .unwrap();
    }

    async fn family(&self, username: &str, contact_name: &str) {
        let hash = carebell_gateway::console::hash_password(PASSWORD).unwrap();
        let account = self
            .node
            .store
            .add_family_account(username, contact_name, &hash)
            .await
            .unwrap();
        self.node
            .store
            .add_contact(&NewContact {
                resident_id: self.resident,
                name: contact_name.to_owned(),
                relationship: "女儿".to_owned(),
                phone: String::new(),
                holds_keys: true,
                position: Some(1),
                family_account_id: Some(account),
                channels: vec!["app".to_owned()],
            })
            .await
            .unwrap();
    }

    fn config(&self, operator: &str) -> Value {
        json!({
            "web_url": self.node.web_url,
            "operator": operator,
            "resident_name": RESIDENT,
            "risk_warning": RISK,
            "credentials_path": self.credentials_path,
            "credentials_json": self.credentials_json,
            "tablet_sim": tablet_sim(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_call_card_order_and_provider_portal_in_chromium() {
    let world = world(NodeOptions::default()).await;
    world.operator("ui-op", &["dialect:cantonese"]).await;
    let mut provider = NewProvider::new("海山家政服务社", "52440308MJL000001X");
    provider.location = GeoPoint::new(22.552, 114.25).ok();
    provider.radius_m = 3000;
    provider.stations = vec![world.station];
    provider.services = vec![("housekeeping".to_owned(), Some(5000))];
    let provider_id = world.node.store.add_provider(&provider).await.unwrap();
    world
        .node
        .store
        .add_staff(provider_id, "王阿姨", "")
        .await
        .unwrap();
    let hash = carebell_gateway::console::hash_password(PASSWORD).unwrap();
    world
        .node
        .store
        .add_provider_account(provider_id, "haishan", "调度员", &hash)
        .await
        .unwrap();
    let mut config = world.config("ui-op");
    config["service_code"] = json!("housekeeping");
    config["provider_name"] = json!("海山家政服务社");
    config["provider_user"] = json!("haishan");
    run_script("console_call_order", config).await;

    // What the browser did, as the database has it: one answered call, one accepted order.
    let orders = world
        .node
        .store
        .resident_orders(world.resident, 10)
        .await
        .unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].state, "accepted");
    assert_eq!(orders[0].staff_name.as_deref(), Some("王阿姨"));
    assert!(orders[0].call_id.is_some(), "the order came from the call");
    let accepted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM offers o JOIN calls c ON c.id = o.call_id
         WHERE c.resident_id = $1 AND o.state = 'accepted'",
    )
    .bind(world.resident)
    .fetch_one(world.node.store.pool())
    .await
    .unwrap();
    assert_eq!(accepted, 1, "the double click answered the call once");
    world.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_sos_escalates_and_the_family_acknowledges_in_chromium() {
    let world = world(NodeOptions {
        ring_timeout: Duration::from_secs(4),
        ..NodeOptions::default()
    })
    .await;
    let rules = carebell_domain::routing::DEFAULT_RULES
        .replace("max_wait_secs = 15", "max_wait_secs = 5")
        .replace("family_after_secs = 60", "family_after_secs = 8");
    world
        .node
        .store
        .load_routing_rules(&rules, "test")
        .await
        .unwrap();
    world.operator("ui-sup", &["supervisor"]).await;
    world.family("ui-family", "张伟").await;
    let mut config = world.config("ui-sup");
    config["family_user"] = json!("ui-family");
    config["contact_name"] = json!("张伟");
    run_script("sos_family", config).await;
    world.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_connects_between_the_console_and_the_tablet_emulator_in_chromium() {
    let world = world(NodeOptions::default()).await;
    world.operator("ui-voice", &["dialect:cantonese"]).await;
    run_script("voice", world.config("ui-voice")).await;
    world.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_and_other_peoples_pages_get_clear_messages_in_chromium() {
    let database_url = carebell_tests::fresh_database().await;
    let world = world(NodeOptions {
        database_url: Some(database_url.clone()),
        ..NodeOptions::default()
    })
    .await;
    // A second node on the same database whose sessions last three seconds: the console signs
    // in there and sees its session expire.
    let session_ttl = Duration::from_secs(3);
    let short_lived = TestNode::start(NodeOptions {
        database_url: Some(database_url),
        session_ttl,
        node_id: "short-sessions".to_owned(),
        ..NodeOptions::default()
    })
    .await;
    world.operator("ui-bad", &[]).await;
    world.family("ui-family-bad", "张伟").await;
    let other = world.node.resident("另一位老人").await;
    let mut config = world.config("ui-bad");
    config["short_session_web_url"] = json!(short_lived.web_url);
    config["family_user"] = json!("ui-family-bad");
    config["other_resident_id"] = json!(other);
    config["other_resident_name"] = json!("另一位老人");
    config["session_ttl_ms"] = json!(session_ttl.as_millis());
    run_script("bad_input", config).await;
    short_lived.stop().await;
    world.node.stop().await;
}

/// Proactive care in the tablet emulator: content sent before the tablet connects is received
/// and opened; a reminder falling due is shown and confirmed; the database records both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_is_confirmed_and_content_opened_on_the_tablet_emulator_in_chromium() {
    let world = world(NodeOptions::default()).await;
    let content = world
        .node
        .store
        .add_content(
            &carebell_store::NewContent {
                kind: "health".to_owned(),
                title: "冬季防跌倒".to_owned(),
                body: "地面保持干燥，夜间开小灯。".to_owned(),
                language: "zh".to_owned(),
                station_id: Some(world.station),
                ..carebell_store::NewContent::default()
            },
            65536,
        )
        .await
        .unwrap();
    assert_eq!(world.node.store.deliver_content(content).await.unwrap(), 1);
    // Due in a few seconds, Shanghai time (UTC+8 all year).
    let due = (chrono::Utc::now() + chrono::Duration::hours(8) + chrono::Duration::seconds(6))
        .naive_utc();
    let schedule = world
        .node
        .store
        .add_schedule(&carebell_store::NewSchedule {
            resident_id: world.resident,
            kind: carebell_store::ScheduleKind::Reminder,
            title: "降压药".to_owned(),
            rule: "FREQ=DAILY".to_owned(),
            starts_local: due,
            time_zone: "Asia/Shanghai".to_owned(),
            wait_seconds: 600,
            created_by: "test".to_owned(),
        })
        .await
        .unwrap();
    let mut config = world.config("nobody");
    config["content_title"] = json!("冬季防跌倒");
    config["content_body"] = json!("地面保持干燥");
    config["reminder_title"] = json!("降压药");
    run_script("care", config).await;

    // The browser's confirmation and opening, as the database has them.
    let store = &world.node.store;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let confirmed: Option<String> =
            sqlx::query_scalar("SELECT state FROM schedule_occurrences WHERE schedule_id = $1")
                .bind(schedule)
                .fetch_optional(store.pool())
                .await
                .unwrap();
        let deliveries = store.content_deliveries(content).await.unwrap();
        if confirmed.as_deref() == Some("confirmed")
            && deliveries.len() == 1
            && deliveries[0].received
            && deliveries[0].opened
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{confirmed:?} {deliveries:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.node.stop().await;
}
