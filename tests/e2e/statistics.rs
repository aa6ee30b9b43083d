//! Statistics: after a randomized run, the live counters equal a recomputation from the log.

use std::time::Duration;

use carebell_domain::{CallKind, Disposition, OperatorStatus};
use carebell_tests::fresh_store;
use rand::{Rng, SeedableRng};

#[tokio::test]
async fn live_counters_equal_a_recomputation_from_the_event_log_after_a_randomized_run() {
    let store = fresh_store().await;
    let devices = carebell_tests::register_tablets(&store, "stats", "tab-stats", 6).await;
    let mut operators = Vec::new();
    for index in 0..3 {
        let id = store
            .add_operator(
                &format!("op{index}"),
                &format!("Operator {index}"),
                "unused",
            )
            .await
            .unwrap();
        store
            .set_operator_status(id, OperatorStatus::Available)
            .await
            .unwrap();
        operators.push(id);
    }
    let seed = rand::thread_rng().gen();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ring = Duration::from_millis(300);
    let mut requests: Vec<(String, String)> = Vec::new();
    for step in 0..400 {
        match rng.gen_range(0..10) {
            0..=2 => {
                let device = &devices[rng.gen_range(0..devices.len())];
                let request = format!("r{step}");
                let kind = if rng.gen_bool(0.1) {
                    CallKind::Emergency
                } else {
                    CallKind::Call
                };
                store.create_call(device, &request, kind).await.unwrap();
                requests.push((device.clone(), request));
            }
            3 => {
                if let Some((device, request)) =
                    requests.get(rng.gen_range(0..requests.len().max(1)))
                {
                    store.cancel_call(device, request).await.unwrap();
                }
            }
            4..=5 => {
                store.match_round(ring).await.unwrap();
            }
            6 => {
                store.expire_offers(100).await.unwrap();
            }
            _ => {
                // Each operator answers what rings for them, or ends what they hold.
                let operator = operators[rng.gen_range(0..operators.len())];
                if let Some(offer) = store.live_offer_for(operator).await.unwrap() {
                    if rng.gen_bool(0.8) {
                        let _ = store.accept_offer(offer.offer_id, operator).await;
                    } else {
                        let _ = store.decline_offer(offer.offer_id, operator).await;
                    }
                } else {
                    let held: Option<uuid::Uuid> = sqlx::query_scalar(
                        "SELECT id FROM calls WHERE answered_by = $1 AND state = 'answered' LIMIT 1",
                    )
                    .bind(operator)
                    .fetch_optional(store.pool())
                    .await
                    .unwrap();
                    if let Some(call_id) = held {
                        store
                            .end_call(call_id, operator, Disposition::Information, "")
                            .await
                            .unwrap();
                    }
                    if store.operator_status(operator).await.unwrap() == OperatorStatus::Paused {
                        store
                            .set_operator_status(operator, OperatorStatus::Available)
                            .await
                            .unwrap();
                    }
                }
            }
        }
        if rng.gen_bool(0.05) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
        }
    }
    let live = store.live_statistics().await.unwrap();
    let recomputed = store.recompute_statistics(None, None).await.unwrap();
    assert_eq!(live, recomputed, "seed {seed}");
    assert!(
        live.offered > 0 && live.answered > 0 && live.abandoned > 0,
        "the run exercised the counters: {live:?} (seed {seed})"
    );
    assert!(live.answered_within_60s <= live.answered && live.short_abandoned <= live.abandoned);
    assert!((0.0..=1.0).contains(&live.service_level_60s()));
    // Every unfinished item has a deadline.
    let without_deadline: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM calls WHERE state IN ('queued', 'offered') AND deadline_at IS NULL",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(without_deadline, 0);
    let unexpiring_offers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM offers WHERE state = 'offered' AND expires_at IS NULL",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(unexpiring_offers, 0);
    let occupancy = store.occupancy(None, None).await.unwrap();
    assert!((0.0..=1.0).contains(&occupancy));
}
