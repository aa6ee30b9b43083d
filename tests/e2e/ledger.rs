//! Money and figures after a randomized run: every ledger transaction balances under every
//! entitlement tier, the statements add up, and the report recomputed from the event log
//! equals the live one.

use carebell_domain::orders::{EntitlementTier, ServicePolicy};
use carebell_domain::CallKind;
use carebell_store::{NewDevice, NewOrder, ProgressReport, Source, StatementOf, Store};
use carebell_tests::fresh_store;
use chrono::{Days, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::orders::{provider, resident_at};

const SERVICES: [&str; 3] = ["meal_delivery", "bathing", "hospital_escort"];

struct Resident {
    id: Uuid,
    tier: EntitlementTier,
    device: String,
}

async fn card_entries(store: &Store, resident: Uuid) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(
        "SELECT sum(amount_fen)::bigint FROM ledger_entries WHERE account = 'card' AND party_id = $1",
    )
    .bind(resident)
    .fetch_one(store.pool())
    .await
    .unwrap()
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_balances_statements_add_up_and_reports_recompute_after_a_random_run() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let store = fresh_store().await;
    let operator = store
        .add_operator("ledger-op", "记账员", "x")
        .await
        .unwrap();
    // Random ratings must not suspend providers here (that has its own test).
    store
        .set_service_policy(&ServicePolicy {
            min_rating_centi: 100,
            ..ServicePolicy::default()
        })
        .await
        .unwrap();
    let stations = [
        store.add_station("东站").await.unwrap(),
        store.add_station("西站").await.unwrap(),
    ];

    // Three providers covering both stations, with awkward prices (zero, odd fen).
    let mut providers = Vec::new();
    for name in ["甲", "乙", "丙"] {
        let prices: Vec<(&str, i64)> = SERVICES
            .iter()
            .map(|code| (*code, [0, 1, 2999, 5000, 12345][rng.gen_range(0..5)]))
            .collect();
        let id = provider(&store, name, (22.55, 114.25), 0, stations.to_vec(), &prices).await;
        let staff = store
            .add_staff(id, &format!("{name}师傅"), "")
            .await
            .unwrap();
        providers.push((id, staff));
    }

    // Residents under every tier, some with money on their service card.
    let mut residents = Vec::new();
    for i in 0..12 {
        let tier = match i % 3 {
            0 => EntitlementTier::Free,
            1 => EntitlementTier::Market,
            _ => EntitlementTier::Subsidised {
                subsidy_percent: rng.gen_range(0..=100),
            },
        };
        let station = stations[i % 2];
        let id = resident_at(&store, station, &format!("老人{i}"), None, tier).await;
        if rng.gen_bool(0.5) {
            store
                .top_up_card(id, rng.gen_range(1..20_000), "top-up")
                .await
                .unwrap();
        }
        let device = format!("tab-ledger-{i}-{}", Uuid::new_v4().simple());
        store
            .add_device(&NewDevice {
                device_id: device.clone(),
                resident_id: id,
                public_key: [i as u8; 32],
            })
            .await
            .unwrap();
        residents.push(Resident { id, tier, device });
    }

    let (mut completed, mut cancelled) = (0, 0);
    for n in 0..36 {
        let resident = &residents[rng.gen_range(0..residents.len())];
        // Some remote services too: calls, emergencies, abandoned calls.
        let request = format!("req-{n}");
        let kind = if rng.gen_bool(0.2) {
            CallKind::Emergency
        } else {
            CallKind::Call
        };
        store
            .create_call(&resident.device, &request, kind)
            .await
            .unwrap();
        if rng.gen_bool(0.5) {
            store.cancel_call(&resident.device, &request).await.unwrap();
        }

        let created = store
            .create_order(&NewOrder {
                resident_id: resident.id,
                service_code: SERVICES[rng.gen_range(0..SERVICES.len())].to_owned(),
                call_id: None,
                note: String::new(),
                operator_id: Some(operator),
            })
            .await
            .unwrap();
        let mut offered = created.offered_to.expect("a provider is free");
        if rng.gen_bool(0.2) {
            store
                .decline_order(offered, created.order_id, "busy")
                .await
                .unwrap();
            let next = store.order(created.order_id).await.unwrap().offered_to;
            let events = store.order_events(created.order_id).await.unwrap();
            offered = next.unwrap_or_else(|| panic!("no next provider: {events:?}"));
        }
        if rng.gen_bool(0.15) {
            store
                .cancel_order(created.order_id, operator, "no longer needed")
                .await
                .unwrap();
            cancelled += 1;
            continue;
        }
        let staff = providers.iter().find(|(id, _)| *id == offered).unwrap().1;
        store
            .accept_order(offered, created.order_id, staff, rng.gen_range(5..60))
            .await
            .unwrap();
        for report in [
            ProgressReport::EnRoute,
            ProgressReport::Arrived { position: None },
            ProgressReport::Completed {
                notes: "done".to_owned(),
                duration_minutes: rng.gen_range(10..120),
            },
        ] {
            store
                .report_progress(offered, created.order_id, report)
                .await
                .unwrap();
        }
        completed += 1;
        store
            .record_order_callback(created.order_id, operator, "ok")
            .await
            .unwrap();
        if rng.gen_bool(0.7) {
            store
                .rate_order(&resident.device, created.order_id, rng.gen_range(1..=5))
                .await
                .unwrap();
        }
    }

    // Every transaction balances; all accounts together sum to zero.
    assert!(store.unbalanced_transactions().await.unwrap().is_empty());
    let mut total = 0;
    for account in ["subsidy", "resident", "card", "provider", "cash"] {
        total += store.account_total(account).await.unwrap();
    }
    assert_eq!(total, 0, "double entry: debits equal credits");

    // Statements, judged in the stations' time zone (Asia/Shanghai).
    let month = (Utc::now() + chrono::Duration::hours(8)).date_naive();
    let (mut resident_price, mut resident_lines) = (0, 0);
    for resident in &residents {
        assert_eq!(
            store.card_balance(resident.id).await.unwrap(),
            -card_entries(&store, resident.id).await,
            "the card balance is what its ledger entries say"
        );
        let statement = store
            .statement(StatementOf::Resident(resident.id), month)
            .await
            .unwrap();
        let sum = |f: fn(&carebell_store::StatementLine) -> i64| {
            statement.lines.iter().map(f).sum::<i64>()
        };
        assert_eq!(statement.price_fen, sum(|l| l.price_fen));
        assert_eq!(statement.subsidy_fen, sum(|l| l.subsidy_fen));
        assert_eq!(statement.resident_fen, sum(|l| l.resident_fen));
        assert_eq!(statement.card_fen, sum(|l| l.card_fen));
        assert_eq!(
            statement.due_fen,
            statement.resident_fen - statement.card_fen
        );
        for line in &statement.lines {
            assert_eq!(line.subsidy_fen + line.resident_fen, line.price_fen);
            assert!(line.card_fen <= line.resident_fen && line.card_fen >= 0);
            match resident.tier {
                EntitlementTier::Free => assert_eq!(line.resident_fen, 0),
                EntitlementTier::Market => assert_eq!(line.subsidy_fen, 0),
                EntitlementTier::Subsidised { subsidy_percent } => assert_eq!(
                    line.subsidy_fen,
                    line.price_fen * i64::from(subsidy_percent) / 100,
                    "the subsidy rounds down to the fen"
                ),
            }
        }
        resident_price += statement.price_fen;
        resident_lines += statement.lines.len();
    }
    let mut provider_price = 0;
    let mut provider_lines = 0;
    for (id, _) in &providers {
        let statement = store
            .statement(StatementOf::Provider(*id), month)
            .await
            .unwrap();
        provider_price += statement.price_fen;
        provider_lines += statement.lines.len();
    }
    assert_eq!(resident_lines, completed);
    assert_eq!(provider_lines, completed);
    assert_eq!(resident_price, provider_price);
    assert_eq!(
        -store.account_total("provider").await.unwrap(),
        provider_price
    );

    // The report recomputed from the event log equals the live one, per station and provider.
    let today = Utc::now().date_naive();
    let (from, to) = (today - Days::new(1), today + Days::new(2));
    let live = store
        .service_report(from, to, None, Source::Live)
        .await
        .unwrap();
    let recomputed = store
        .service_report(from, to, None, Source::Recomputed)
        .await
        .unwrap();
    assert_eq!(live, recomputed);
    assert_eq!(
        live.iter().map(|s| s.orders_completed).sum::<i64>(),
        completed as i64
    );
    assert_eq!(
        live.iter().map(|s| s.orders_cancelled).sum::<i64>(),
        cancelled
    );
    assert_eq!(live.iter().map(|s| s.calls_offered).sum::<i64>(), 36);
    let accepted: i64 = live
        .iter()
        .flat_map(|s| &s.providers)
        .map(|p| p.accepted)
        .sum();
    assert_eq!(accepted, completed as i64);
    for station in &stations {
        let one = store
            .service_report(from, to, Some(*station), Source::Recomputed)
            .await
            .unwrap();
        let live_one = store
            .service_report(from, to, Some(*station), Source::Live)
            .await
            .unwrap();
        assert_eq!(one, live_one);
    }
}
