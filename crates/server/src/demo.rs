//! `carebell demo`: a node with a development certificate, a seeded station with residents and
//! operators, simulated tablets pressing their buttons (mostly by mistake, as in real life) and
//! bot operators answering, all over the real protocol and printed as it happens.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use carebell_domain::orders::{EntitlementTier, GeoPoint};
use carebell_proto::console::v1::console_event::Event;
use carebell_proto::console::v1::{CallKind, Disposition, OperatorStatus};
use carebell_proto::device::v1::CallState;
use carebell_proto::device::v1::OrderUpdate;
use carebell_proto::provider::v1::OrderStatus;
use carebell_store::{NewProvider, NewResident};
use firmware_sim::{Tablet, TabletConfig, TabletEvent, TransportKind};
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::provision_device;
use crate::console_client::{self, OperatorClient};
use crate::devcert::DevCertificates;
use crate::provider_client::ProviderClient;
use crate::settings::Settings;
use crate::Application;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    pub n_operators: usize,
    /// Where the development certificates and tablet credentials go.
    pub state_dir: PathBuf,
}

/// What the demo saw, counted from the database at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DemoSummary {
    pub calls: i64,
    pub answered: i64,
    pub ended: i64,
    pub abandoned: i64,
    /// Service orders created by the bot operators, and how many the bot provider completed.
    pub orders: i64,
    pub orders_completed: i64,
}

/// The seed: residents of the Yantian "Li Secretary" programme (names and addresses invented).
const RESIDENTS: &[(&str, &str, &str, &str)] = &[
    (
        "潘阿姨",
        "广东省深圳市盐田区海山街道田东社区海涛路12号3栋502",
        "Cantonese",
        "高血压，每日服药",
    ),
    (
        "李伯",
        "广东省深圳市盐田区沙头角街道东和社区沙深路88号",
        "Hakka",
        "独居，行动不便",
    ),
    (
        "陈奶奶",
        "广东省深圳市盐田区梅沙街道东海岸社区环梅路5号",
        "Teochew",
        "糖尿病",
    ),
    (
        "王爷爷",
        "广东省深圳市盐田区盐田街道永安社区永安北路3号1单元",
        "Mandarin",
        "去年跌倒过一次",
    ),
    (
        "Mrs. Chan",
        "Flat 8, Haishan Road 21, Yantian, Shenzhen",
        "English",
        "hearing aid",
    ),
    (
        "黄婆婆",
        "广东省深圳市盐田区海山街道鹏湾社区鹏湾路9号",
        "Cantonese",
        "",
    ),
];

/// Operators and the dialects they speak (routing prefers a senior's dialect for 20 s, then
/// anyone at the senior's station, then anyone).
const OPERATORS: &[(&str, &[&str])] = &[
    ("李秘书 小张", &["dialect:cantonese", "dialect:mandarin"]),
    (
        "李秘书 小王",
        &["dialect:hakka", "dialect:teochew", "dialect:mandarin"],
    ),
    (
        "李秘书 小陈",
        &["dialect:english", "dialect:cantonese", "supervisor"],
    ),
    ("李秘书 小刘", &["dialect:mandarin", "dialect:teochew"]),
];
const DEMO_PASSWORD: &str = "demo-password";

/// Homes around Yantian, in the order of `RESIDENTS`, and each one's entitlement tier.
const HOMES: &[(f64, f64, EntitlementTier)] = &[
    (
        22.5560,
        114.2360,
        EntitlementTier::Subsidised {
            subsidy_percent: 50,
        },
    ),
    (22.5590, 114.2560, EntitlementTier::Free),
    (22.5920, 114.3050, EntitlementTier::Market),
    (
        22.5600,
        114.2420,
        EntitlementTier::Subsidised {
            subsidy_percent: 70,
        },
    ),
    (22.5570, 114.2380, EntitlementTier::Market),
    (22.5530, 114.2300, EntitlementTier::Free),
];

/// What the bot operators arrange when a call is a service request.
const DEMO_SERVICES: &[&str] = &[
    "housekeeping",
    "meal_delivery",
    "haircut",
    "hospital_escort",
];

fn stamp(start: Instant) -> String {
    format!("{:>6.1}s", start.elapsed().as_secs_f64())
}

/// Runs the demo; returns the counts once it stops.
pub async fn run(mut settings: Settings, options: DemoOptions) -> anyhow::Result<DemoSummary> {
    let certificates = DevCertificates::generate()?;
    let (cert_path, key_path) = certificates.write(&options.state_dir.join("certs"))?;
    settings.insecure = false;
    settings.tls.cert_path = Some(cert_path);
    settings.tls.key_path = Some(key_path);
    settings.dispatch.ring_timeout_ms = settings.dispatch.ring_timeout_ms.min(6000);
    settings.shutdown_grace_ms = settings.shutdown_grace_ms.min(3000);
    // One node and no load balancer: nobody to give notice to.
    settings.shutdown_notice_ms = 0;
    settings.validate().context("invalid demo settings")?;

    let application = Application::build(settings).await?;
    let store = application.store().clone();
    let websocket_url = format!("wss://localhost:{}/", application.websocket_addr().port());
    let grpc_url = format!("https://localhost:{}", application.grpc_addr().port());
    let web_url = format!("https://localhost:{}", application.web_addr().port());
    // The server outlives the simulated people: it is stopped only after the final count.
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(application.run_until_stopped(server_stop.clone().cancelled_owned()));
    let stop = CancellationToken::new();
    let start = Instant::now();

    // Seed.
    let run_tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let station = store
        .add_station(&format!("盐田区李秘书康养服务中心 ({run_tag})"))
        .await
        .context("failed to add the demo station")?;
    let credentials_dir = options.state_dir.join(format!("tablets-{run_tag}"));
    std::fs::create_dir_all(&credentials_dir).context("failed to create the tablets directory")?;
    let ca_path = options.state_dir.join("certs").join("ca.pem");
    let mut tablets = Vec::new();
    let mut first_resident = None;
    for ((name, address, dialect, notes), (lat, lon, tier)) in RESIDENTS.iter().zip(HOMES) {
        let resident = store
            .add_resident(&NewResident {
                station_id: station,
                full_name: (*name).to_owned(),
                address: (*address).to_owned(),
                phone: String::new(),
                dialect: (*dialect).to_owned(),
                medical_notes: (*notes).to_owned(),
                risk_warnings: if notes.contains("跌倒") || notes.contains("独居") {
                    (*notes).to_owned()
                } else {
                    String::new()
                },
                key_safe: "门口密码箱 / key safe by the door".to_owned(),
            })
            .await
            .context("failed to add a demo resident")?;
        store
            .set_resident_services(resident, None, GeoPoint::new(*lat, *lon).ok(), *tier)
            .await
            .context("failed to place a demo resident")?;
        first_resident.get_or_insert(resident);
        let credentials = provision_device(
            &store,
            resident,
            None,
            &websocket_url,
            &grpc_url,
            Some(ca_path.clone()),
        )
        .await?;
        credentials
            .save_new(&credentials_dir.join(format!("{}.json", credentials.device_id)))
            .context("failed to write tablet credentials")?;
        tablets.push(((*name).to_owned(), credentials));
    }
    let mut usernames = Vec::new();
    for (index, (display_name, dialects)) in OPERATORS
        .iter()
        .take(options.n_operators.max(1))
        .enumerate()
    {
        let username = format!("demo-{run_tag}-{}", index + 1);
        let hash =
            tokio::task::spawn_blocking(|| carebell_gateway::console::hash_password(DEMO_PASSWORD))
                .await
                .context("failed to hash a demo password")?
                .map_err(|error| anyhow::anyhow!("failed to hash a demo password: {error}"))?;
        store
            .add_operator(&username, display_name, &hash)
            .await
            .context("failed to add a demo operator")?;
        let mut skills: Vec<String> = dialects.iter().map(|skill| (*skill).to_owned()).collect();
        skills.push(format!("station:{station}"));
        store
            .set_operator_skills(&username, &skills)
            .await
            .context("failed to give a demo operator skills")?;
        usernames.push(username);
    }

    // One provider covering the station: a housekeeping and care social organisation.
    let mut provider = NewProvider::new(
        "海山家政服务社",
        &format!("52440308MJL{}", run_tag.to_uppercase()),
    );
    provider.location = GeoPoint::new(22.5580, 114.2400).ok();
    provider.radius_m = 5000;
    provider.stations = vec![station];
    provider.services = DEMO_SERVICES
        .iter()
        .map(|code| ((*code).to_owned(), None))
        .collect();
    let provider_id = store
        .add_provider(&provider)
        .await
        .context("failed to add the demo provider")?;
    for name in ["王阿姨", "刘师傅"] {
        store
            .add_staff(provider_id, name, "")
            .await
            .context("failed to add demo staff")?;
    }
    let provider_username = format!("demo-{run_tag}-provider");
    let hash =
        tokio::task::spawn_blocking(|| carebell_gateway::console::hash_password(DEMO_PASSWORD))
            .await
            .context("failed to hash a demo password")?
            .map_err(|error| anyhow::anyhow!("failed to hash a demo password: {error}"))?;
    store
        .add_provider_account(provider_id, &provider_username, "海山调度", &hash)
        .await
        .context("failed to add the demo provider account")?;

    println!("Carebell demo is running.");
    println!("  WebSocket devices: {websocket_url}   gRPC (devices and console): {grpc_url}");
    println!(
        "  operators (password {DEMO_PASSWORD}): {}",
        usernames.join(", ")
    );
    // Accounts for a person at the browser: an operator (no bot behind it), a family member
    // of the first resident, and the provider's portal (shared with the bot provider).
    let you = format!("demo-{run_tag}-you");
    let family_username = format!("family-{run_tag}");
    store
        .add_operator(&you, "值班员 (you)", &hash)
        .await
        .context("failed to add the demo's browser operator")?;
    store
        .set_operator_skills(
            &you,
            &[
                "supervisor".to_owned(),
                format!("station:{station}"),
                "dialect:cantonese".to_owned(),
                "dialect:mandarin".to_owned(),
                "dialect:hakka".to_owned(),
                "dialect:teochew".to_owned(),
                "dialect:english".to_owned(),
            ],
        )
        .await
        .context("failed to give the browser operator skills")?;
    let family_account = store
        .add_family_account(&family_username, "潘阿姨的女儿", &hash)
        .await
        .context("failed to add the demo family account")?;
    if let Some(first) = first_resident {
        store
            .add_contact(&carebell_store::NewContact {
                resident_id: first,
                name: "潘阿姨的女儿".to_owned(),
                relationship: "女儿".to_owned(),
                phone: String::new(),
                holds_keys: true,
                position: Some(1),
                family_account_id: Some(family_account),
                channels: vec!["app".to_owned()],
            })
            .await
            .context("failed to add the demo contact")?;
    }
    println!("  provider (password {DEMO_PASSWORD}): {provider_username}");
    println!("  in a browser (accept the development certificate; password {DEMO_PASSWORD}):");
    println!("    console  {web_url}/console   sign in as {you}");
    println!("    family   {web_url}/family    sign in as {family_username}");
    println!("    provider {web_url}/provider  sign in as {provider_username}");
    println!("    tablet   {web_url}/tablet    paste a credentials file from the folder below");
    println!(
        "  tablet credentials: {}  (try: tablet-sim --credentials <file>)",
        credentials_dir.display()
    );
    println!(
        "  {}",
        match options.duration {
            Some(duration) => format!("stopping after {}", humantime::format_duration(duration)),
            None => "press Ctrl-C to stop".to_owned(),
        }
    );

    let ca_pem = Arc::new(certificates.ca_pem.clone());
    let mut workers = tokio::task::JoinSet::new();
    for username in usernames {
        workers.spawn(bot_operator(
            username,
            grpc_url.clone(),
            Arc::clone(&ca_pem),
            stop.clone(),
            start,
        ));
    }
    workers.spawn(bot_provider(
        provider_username,
        grpc_url.clone(),
        Arc::clone(&ca_pem),
        stop.clone(),
        start,
    ));
    for (index, (name, mut credentials)) in tablets.into_iter().enumerate() {
        credentials.ca_certificate_pem = Some(certificates.ca_pem.clone());
        // Every third tablet uses the gRPC transport, to show both.
        let transport = if index % 3 == 2 {
            TransportKind::Grpc
        } else {
            TransportKind::WebSocket
        };
        workers.spawn(senior(
            name,
            TabletConfig::new(credentials, transport),
            stop.clone(),
            start,
        ));
    }

    match options.duration {
        Some(duration) => {
            tokio::select! {
                _ = tokio::time::sleep(duration) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    println!("{} stopping…", stamp(start));
    stop.cancel();
    while workers.join_next().await.is_some() {}
    let device_ids: Vec<String> = std::fs::read_dir(&credentials_dir)
        .context("failed to list the tablets")?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            entry
                .path()
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
        })
        .collect();
    let counts = store
        .call_state_counts(&device_ids)
        .await
        .context("failed to count calls")?;
    let mut summary = DemoSummary::default();
    for (state, count) in counts {
        summary.calls += count;
        match state.as_str() {
            "answered" => summary.answered += count,
            "ended" => summary.ended += count,
            "abandoned" => summary.abandoned += count,
            _ => {}
        }
    }
    for order in store
        .provider_orders(provider_id)
        .await
        .context("failed to count orders")?
    {
        summary.orders += 1;
        if order.completed_at.is_some() {
            summary.orders_completed += 1;
        }
    }
    // Orders closed or cancelled are not in the provider's open list: count them too.
    let closed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE provider_id = $1 AND state IN ('closed', 'cancelled')",
    )
    .bind(provider_id)
    .fetch_one(store.pool())
    .await
    .context("failed to count orders")?;
    summary.orders += closed;
    summary.orders_completed += closed;
    server_stop.cancel();
    server.await.context("the server task failed")??;
    println!(
        "demo summary: {} calls, {} answered and ended, {} still answered, {} abandoned; {} service orders, {} completed",
        summary.calls, summary.ended, summary.answered, summary.abandoned, summary.orders, summary.orders_completed
    );
    Ok(summary)
}

/// A senior with a tablet: presses now and then, sometimes cancels, rarely long-presses.
async fn senior(name: String, config: TabletConfig, stop: CancellationToken, start: Instant) {
    let mut tablet = match Tablet::connect(&config).await {
        Ok(tablet) => tablet,
        Err(error) => {
            println!(
                "{} [{name}] tablet could not connect: {error}",
                stamp(start)
            );
            return;
        }
    };
    loop {
        let pause = Duration::from_millis(rand::thread_rng().gen_range(500..5000));
        let until = Instant::now() + pause;
        // Between presses the tablet still shows what happens to the senior's orders.
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(until) => break,
                event = tablet.next_event(pause) => event,
            };
            match event {
                Some(TabletEvent::OrderUpdate(update)) => {
                    show_order(&tablet, &name, update, start).await
                }
                Some(TabletEvent::Closed { reason, .. }) => {
                    println!("{} [{name}] tablet disconnected: {reason}", stamp(start));
                    return;
                }
                _ => {}
            }
        }
        if stop.is_cancelled() {
            break;
        }
        let roll: f64 = rand::thread_rng().gen();
        let request_id = if roll < 0.04 {
            match tablet.long_press().await {
                Ok(alarm_id) => {
                    println!("{} [{name}] long press: SOS", stamp(start));
                    format!("alarm:{alarm_id}")
                }
                Err(_) => break,
            }
        } else {
            match tablet.press().await {
                Ok(request_id) => {
                    println!("{} [{name}] presses the button", stamp(start));
                    request_id
                }
                Err(_) => break,
            }
        };
        if roll > 0.90 {
            tokio::time::sleep(Duration::from_millis(800)).await;
            if tablet.cancel(&request_id).await.is_ok() {
                println!("{} [{name}] hangs up before an answer", stamp(start));
            }
        }
        // Follow this call to its end.
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => None,
                event = tablet.next_event(Duration::from_secs(60)) => event,
            };
            let Some(event) = event else { break };
            match event {
                TabletEvent::CallUpdate(update) if update.request_id == request_id => {
                    match CallState::try_from(update.state).unwrap_or(CallState::Unspecified) {
                        CallState::Answered => println!(
                            "{} [{name}] tablet shows: answered by {}",
                            stamp(start),
                            update.operator_display_name
                        ),
                        CallState::Ended => {
                            println!("{} [{name}] tablet shows: call ended", stamp(start));
                            break;
                        }
                        CallState::Abandoned => break,
                        _ => {}
                    }
                }
                TabletEvent::OrderUpdate(update) => show_order(&tablet, &name, update, start).await,
                TabletEvent::Closed { reason, .. } => {
                    println!("{} [{name}] tablet disconnected: {reason}", stamp(start));
                    return;
                }
                _ => {}
            }
        }
        if stop.is_cancelled() {
            break;
        }
    }
    tablet.close().await;
}

/// Prints what the tablet shows about an order; the senior rates it when asked.
async fn show_order(tablet: &Tablet, name: &str, update: OrderUpdate, start: Instant) {
    println!("{} [{name}] tablet shows: {}", stamp(start), update.text_zh);
    if update.state == "called_back" {
        let stars = rand::thread_rng().gen_range(3..=5);
        if tablet.rate(&update.order_id, stars).await.is_ok() {
            println!("{} [{name}] rates the service {stars} stars", stamp(start));
        }
    }
}

/// A provider's dispatcher: accepts what is offered, sends staff, reports the visit.
async fn bot_provider(
    username: String,
    grpc_url: String,
    ca_pem: Arc<String>,
    stop: CancellationToken,
    start: Instant,
) {
    let result: anyhow::Result<()> = async {
        let channel = console_client::channel(&grpc_url, Some(&ca_pem)).await?;
        let mut client = ProviderClient::sign_in(channel, &username, DEMO_PASSWORD).await?;
        let staff = client.staff().await?;
        let mut feed = client.feed().await?;
        let me = client.provider_name.clone();
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = feed.message() => next?,
            };
            let Some(view) = next else { break };
            if view.state != "offered" {
                continue;
            }
            let Some(member) = staff.get(rand::thread_rng().gen_range(0..staff.len().max(1)))
            else {
                break;
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Err(status) = client.accept(&view.order_id, &member.staff_id, 15).await {
                println!(
                    "{} [provider {me}] could not accept: {}",
                    stamp(start),
                    status.message()
                );
                continue;
            }
            println!(
                "{} [provider {me}] accepted {}: {} goes",
                stamp(start),
                view.service_name_zh,
                member.name
            );
            // The visit, compressed to seconds.
            let mut client = client.clone();
            let order_id = view.order_id.clone();
            let (me, stop) = (me.clone(), stop.clone());
            tokio::spawn(async move {
                for (status, said) in [
                    (OrderStatus::EnRoute, "on the way"),
                    (OrderStatus::Arrived, "arrived"),
                    (OrderStatus::Completed, "completed"),
                ] {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(1500)) => {}
                    }
                    let position = (status == OrderStatus::Arrived).then_some((22.5561, 114.2361));
                    if client
                        .update_status(&order_id, status, position, "服务完成", 45)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    println!("{} [provider {me}] {said}", stamp(start));
                }
            });
        }
        Ok(())
    }
    .await;
    if let Err(error) = result {
        if !stop.is_cancelled() {
            println!("{} [provider {username}] stopped: {error:#}", stamp(start));
        }
    }
}

/// An operator at a console: available, accepts offers after a moment (now and then too late,
/// so the call rings at the next operator), talks, and ends with a disposition.
async fn bot_operator(
    username: String,
    grpc_url: String,
    ca_pem: Arc<String>,
    stop: CancellationToken,
    start: Instant,
) {
    let result: anyhow::Result<()> = async {
        let channel = console_client::channel(&grpc_url, Some(&ca_pem)).await?;
        let mut client = OperatorClient::sign_in(channel, &username, DEMO_PASSWORD).await?;
        let mut events = client.subscribe().await?;
        client.set_status(OperatorStatus::Available).await?;
        let me = client.display_name.clone();
        // Each operator's first ordinary call is a service request, so the demo shows the
        // on-site loop early.
        let mut first_call = true;
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = events.message() => next?,
            };
            let Some(event) = next else { break };
            let Some(Event::Offer(offer)) = event.event else {
                continue;
            };
            let emergency = offer.kind == CallKind::Emergency as i32;
            println!(
                "{} [console {me}] ringing: {}{}",
                stamp(start),
                offer.resident_name,
                if emergency { " — EMERGENCY" } else { "" }
            );
            let slow = rand::thread_rng().gen_bool(0.12);
            let think = Duration::from_millis(if slow {
                7000
            } else {
                rand::thread_rng().gen_range(300..2000)
            });
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(think) => {}
            }
            let accepted = match client.accept(&offer.offer_id).await {
                Ok(accepted) => accepted,
                Err(status) => {
                    println!(
                        "{} [console {me}] too late: {}",
                        stamp(start),
                        status.message()
                    );
                    continue;
                }
            };
            let address = accepted
                .resident
                .as_ref()
                .map(|record| record.address.clone())
                .unwrap_or_default();
            println!(
                "{} [console {me}] answered {} ({address})",
                stamp(start),
                offer.resident_name
            );
            let talk = Duration::from_millis(rand::thread_rng().gen_range(500..2500));
            tokio::time::sleep(talk).await;
            let callback = offer.kind == CallKind::Callback as i32;
            let disposition = if emergency {
                Disposition::Emergency
            } else if callback {
                Disposition::Companionship
            } else if std::mem::take(&mut first_call) {
                Disposition::ServiceRequest
            } else {
                match rand::thread_rng().gen_range(0..100) {
                    0..55 => Disposition::AccidentalPress,
                    55..70 => Disposition::Companionship,
                    70..82 => Disposition::Information,
                    82..95 => Disposition::ServiceRequest,
                    _ => Disposition::HealthConcern,
                }
            };
            if disposition == Disposition::ServiceRequest {
                let service = DEMO_SERVICES[rand::thread_rng().gen_range(0..DEMO_SERVICES.len())];
                match client
                    .create_order(&offer.resident_id, service, &accepted.call_id, "")
                    .await
                {
                    Ok(order) => println!(
                        "{} [console {me}] service order for {}: {service} ({})",
                        stamp(start),
                        offer.resident_name,
                        order.state
                    ),
                    Err(status) => println!(
                        "{} [console {me}] no order for {}: {}",
                        stamp(start),
                        offer.resident_name,
                        status.message()
                    ),
                }
            }
            client.end_call(&accepted.call_id, disposition, "").await?;
            println!(
                "{} [console {me}] ended the call with {}: {}",
                stamp(start),
                offer.resident_name,
                disposition
                    .as_str_name()
                    .trim_start_matches("DISPOSITION_")
                    .to_lowercase()
            );
        }
        Ok(())
    }
    .await;
    if let Err(error) = result {
        if !stop.is_cancelled() {
            println!("{} [console {username}] stopped: {error:#}", stamp(start));
        }
    }
}
