//! Three `carebell serve` processes sharing one PostgreSQL, one Redis and (SO_REUSEPORT) one
//! pair of ports; operators and tablets spread across them; hundreds of calls while nodes are
//! SIGKILLed and restarted at random. Afterwards PostgreSQL must show every call finished
//! (answered and ended, or abandoned with a call-back that was made), no call answered twice,
//! and every acknowledged press stored exactly once.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carebell_proto::console::v1::console_event::Event;
use carebell_proto::console::v1::{Disposition, OperatorStatus};
use carebell_proto::device::v1::CallState;
use carebell_server::console_client::{self, OperatorClient};
use carebell_store::Store;
use common::{jitter, Cluster};
use firmware_sim::{Carryover, Tablet, TabletConfig, TabletEvent};
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const N_NODES: usize = 3;
const N_TABLETS: usize = 20;
const N_OPERATORS: usize = 6;
const ACTIVE: Duration = Duration::from_secs(25);
/// Calls the seniors make before the chaos stops.
const MIN_CALLS: i64 = 200;
const PASSWORD: &str = "correct horse";

/// Goes available, unless on a call (then the call is ended first and the end makes the
/// operator available).
async fn available(client: &mut OperatorClient) -> Result<(), tonic::Status> {
    match client.set_status(OperatorStatus::Available).await {
        Err(status) if status.code() == tonic::Code::FailedPrecondition => Ok(()),
        other => other,
    }
}

/// An operator who keeps working whatever happens to the node it is connected to.
async fn operator_bot(
    username: String,
    grpc_url: String,
    ca_pem: String,
    stop: CancellationToken,
    answered: Arc<AtomicUsize>,
) {
    let mut held: Option<String> = None;
    while !stop.is_cancelled() {
        let session: anyhow::Result<()> = async {
            let channel = console_client::channel(&grpc_url, Some(&ca_pem)).await?;
            let mut client = OperatorClient::sign_in(channel, &username, PASSWORD).await?;
            let mut events = client.subscribe().await?;
            if let Some(call_id) = held.take() {
                client
                    .end_call(&call_id, Disposition::Information, "after reconnect")
                    .await
                    .or_else(|status| {
                        // Already ended before the node died.
                        if status.code() == tonic::Code::FailedPrecondition {
                            Ok(())
                        } else {
                            Err(status)
                        }
                    })?;
            }
            // Refused while this operator still holds a call (its end is announced first, below).
            available(&mut client).await?;
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    next = events.message() => next?,
                };
                let Some(event) = next.and_then(|event| event.event) else {
                    anyhow::bail!("stream ended")
                };
                let call_id = match event {
                    Event::Offer(offer) => {
                        tokio::time::sleep(jitter(0, 150)).await;
                        match client.accept(&offer.offer_id).await {
                            Ok(accepted) => accepted.call_id,
                            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                                continue
                            }
                            Err(status) => return Err(status.into()),
                        }
                    }
                    // A call this operator holds, announced on (re)subscribing.
                    Event::CallChanged(changed) if changed.state == "answered" => changed.call_id,
                    Event::StatusChanged(_) => {
                        available(&mut client).await?;
                        continue;
                    }
                    _ => continue,
                };
                held = Some(call_id.clone());
                answered.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(jitter(20, 150)).await;
                client
                    .end_call(&call_id, Disposition::AccidentalPress, "")
                    .await?;
                held = None;
            }
        }
        .await;
        if session.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A senior pressing (and sometimes cancelling), reconnecting whenever the link drops.
async fn senior(
    config: TabletConfig,
    stop: CancellationToken,
    acknowledged: Arc<Mutex<Vec<(String, String)>>>,
) {
    let mut carryover = Carryover::default();
    while !stop.is_cancelled() {
        let mut tablet = match Tablet::resume(&config, std::mem::take(&mut carryover)).await {
            Ok(tablet) => tablet,
            Err(_) => {
                tokio::time::sleep(jitter(100, 500)).await;
                continue;
            }
        };
        'presses: while !stop.is_cancelled() {
            let request_id = match tablet.press().await {
                Ok(request_id) => request_id,
                Err(_) => break,
            };
            acknowledged
                .lock()
                .expect("lock")
                .push((config.credentials.device_id.clone(), request_id.clone()));
            let cancel = rand::thread_rng().gen_bool(0.15);
            if cancel {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if tablet.cancel(&request_id).await.is_err() {
                    break;
                }
            }
            // Follow the call until it finishes (or the link drops; the outbox resends).
            loop {
                match tablet.next_event(Duration::from_secs(30)).await {
                    Some(TabletEvent::CallUpdate(update)) if update.request_id == request_id => {
                        let state =
                            CallState::try_from(update.state).unwrap_or(CallState::Unspecified);
                        if matches!(state, CallState::Ended | CallState::Abandoned) {
                            break;
                        }
                    }
                    Some(TabletEvent::Closed { .. }) | None => break 'presses,
                    Some(_) => {}
                }
            }
            tokio::time::sleep(jitter(100, 600)).await;
        }
        carryover = tablet.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_with_random_kills_finish_every_call_and_hold_none_twice() {
    let database_url = carebell_tests::fresh_database().await;
    let mut cluster = Cluster::start(&database_url, &carebell_tests::redis_url(), N_NODES).await;
    let store = Store::connect(&database_url, 5).await.unwrap();
    let hash = carebell_gateway::console::hash_password(PASSWORD).unwrap();
    let mut usernames = Vec::new();
    for index in 0..N_OPERATORS {
        let username = format!("op{index}");
        store
            .add_operator(&username, &format!("Operator {index}"), &hash)
            .await
            .unwrap();
        usernames.push(username);
    }
    let grpc_url = cluster.grpc_url();
    let configs = cluster.tablets(&store, N_TABLETS).await;
    let certificates = cluster.certificates.clone();

    let stop_people = CancellationToken::new();
    let stop_operators = CancellationToken::new();
    let answered = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut people = tokio::task::JoinSet::new();
    for username in usernames {
        people.spawn(operator_bot(
            username,
            grpc_url.clone(),
            certificates.ca_pem.clone(),
            stop_operators.clone(),
            Arc::clone(&answered),
        ));
    }
    let mut seniors = tokio::task::JoinSet::new();
    for config in configs {
        seniors.spawn(senior(
            config,
            stop_people.clone(),
            Arc::clone(&acknowledged),
        ));
    }

    // Chaos: kill a random node, bring it back, again and again: for `ACTIVE`, and on a slow
    // machine until the seniors have made hundreds of calls (the test is about what happens
    // to them, not how fast they come), within a bound.
    let started = Instant::now();
    let mut kills = 0;
    let calls_made = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM calls WHERE kind <> 'callback'")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    while started.elapsed() < ACTIVE
        || (calls_made().await < MIN_CALLS && started.elapsed() < ACTIVE * 4)
    {
        tokio::time::sleep(jitter(1500, 3000)).await;
        let victim = rand::thread_rng().gen_range(0..N_NODES);
        cluster
            .kill_and_restart(victim, Duration::from_millis(500))
            .await;
        kills += 1;
    }
    // Every node up; the seniors stop pressing; the operators finish the queue.
    stop_people.cancel();
    while seniors.join_next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM calls WHERE state IN ('queued', 'offered', 'answered')",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} calls still open 90 s after the last press"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop_operators.cancel();
    while people.join_next().await.is_some() {}

    let n_calls: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE kind <> 'callback'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let n_abandoned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM calls WHERE state = 'abandoned'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    eprintln!(
        "{n_calls} calls ({n_abandoned} abandoned), {kills} kills, {} answers by the bots",
        answered.load(Ordering::Relaxed)
    );
    assert!(
        n_calls >= MIN_CALLS,
        "hundreds of calls were made: {n_calls}"
    );
    assert!(kills >= 5, "nodes were killed: {kills}");
    // No call answered twice (a transfer-free run: exactly one first answer at most).
    let answered_twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT call_id FROM events WHERE kind = 'call.answered' GROUP BY call_id HAVING count(*) > 1) twice",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(answered_twice, 0);
    let winners: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT call_id FROM offers WHERE state = 'accepted' GROUP BY call_id HAVING count(*) > 1) many",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(winners, 0);
    // Every call finished: ended, or abandoned with a call-back that itself ended.
    let unfinished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM calls c
         WHERE c.kind <> 'callback' AND NOT (
            c.state = 'ended'
            OR (c.state = 'abandoned' AND EXISTS (
                SELECT 1 FROM calls b WHERE b.callback_of = c.id AND b.state = 'ended')))",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        unfinished, 0,
        "every call ended or was abandoned and called back"
    );
    // Every acknowledged press is stored exactly once.
    let acknowledged: HashSet<(String, String)> =
        acknowledged.lock().expect("lock").iter().cloned().collect();
    for (device_id, request_id) in &acknowledged {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM calls WHERE device_id = $1 AND request_id = $2",
        )
        .bind(device_id)
        .bind(request_id)
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(n, 1, "press {request_id} of {device_id}");
    }
    let live = store.live_statistics().await.unwrap();
    assert_eq!(live, store.recompute_statistics(None, None).await.unwrap());
    drop(cluster);
}
