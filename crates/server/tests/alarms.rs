//! The crash test: 200 tablets raise alarms continuously against a `carebell serve` process
//! that is SIGKILLed mid-stream and restarted. Every alarm any tablet raised must end up in
//! PostgreSQL exactly once, and every acknowledgement a tablet received must be for an alarm
//! that is there (an acknowledgement for something uncommitted would show up as a missing
//! alarm: the tablet forgets what was acknowledged). Both sides are counted.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carebell_proto::device::v1::envelope::Body;
use carebell_proto::device::v1::{Alarm, AlarmKind};
use carebell_store::Store;
use carebell_tests::TempDir;
use common::{jitter, Cluster};
use firmware_sim::{Carryover, PendingStore, Tablet, TabletConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const N_TABLETS: usize = 200;
const ACTIVE: Duration = Duration::from_secs(12);

type Ledger = Arc<Mutex<HashSet<(String, String)>>>;

async fn raise_alarms(
    config: TabletConfig,
    stop: CancellationToken,
    raised: Ledger,
    acknowledged: Ledger,
) {
    let device_id = config.credentials.device_id.clone();
    let mut carryover = Carryover::default();
    let mut n: u64 = 0;
    loop {
        let tablet = match Tablet::resume(&config, std::mem::take(&mut carryover)).await {
            Ok(tablet) => tablet,
            Err(_) => {
                tokio::time::sleep(jitter(100, 500)).await;
                continue;
            }
        };
        while !stop.is_cancelled() {
            let alarm_id = format!("a{n}");
            n += 1;
            raised
                .lock()
                .expect("lock")
                .insert((device_id.clone(), alarm_id.clone()));
            let body = Body::Alarm(Alarm {
                alarm_id: alarm_id.clone(),
                kind: AlarmKind::Fall as i32,
                raised_at_ms: 0,
                detail: String::new(),
            });
            match tablet.send(body).await {
                Ok(()) => {
                    acknowledged
                        .lock()
                        .expect("lock")
                        .insert((device_id.clone(), alarm_id));
                }
                Err(_) => break,
            }
            tokio::time::sleep(jitter(200, 800)).await;
        }
        // Done raising: stay until everything written down has been acknowledged.
        let pending = config.pending.as_ref().expect("a pending file");
        let deadline = Instant::now() + Duration::from_secs(5);
        while stop.is_cancelled() && !pending.bodies().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        carryover = tablet.close().await;
        if stop.is_cancelled() && pending.bodies().is_empty() {
            return;
        }
    }
}

/// A fleet of tablets raising alarms, each keeping its unacknowledged alarms in its own file.
struct AlarmStream {
    stop: CancellationToken,
    raised: Ledger,
    acknowledged: Ledger,
    tablets: tokio::task::JoinSet<()>,
    configs: Vec<TabletConfig>,
    _dir: TempDir,
}

/// What both sides counted once the stream was drained.
struct Counts {
    raised: usize,
    acknowledged: usize,
    stored: usize,
}

impl AlarmStream {
    async fn start(cluster: &Cluster, store: &Store, n_tablets: usize) -> Self {
        let dir = TempDir::new();
        let mut configs = cluster.tablets(store, n_tablets).await;
        for config in &mut configs {
            let path = dir
                .0
                .join(format!("{}.pending.json", config.credentials.device_id));
            config.pending = Some(PendingStore::open(&path).unwrap());
        }
        let stop = CancellationToken::new();
        let raised: Ledger = Arc::default();
        let acknowledged: Ledger = Arc::default();
        let mut tablets = tokio::task::JoinSet::new();
        for config in configs.clone() {
            tablets.spawn(raise_alarms(
                config,
                stop.clone(),
                Arc::clone(&raised),
                Arc::clone(&acknowledged),
            ));
        }
        Self {
            stop,
            raised,
            acknowledged,
            tablets,
            configs,
            _dir: dir,
        }
    }

    /// Stops raising, waits until every tablet has had everything acknowledged, and checks
    /// both sides: every raised alarm stored exactly once, nothing else stored, and no
    /// acknowledgement for an alarm that is not stored.
    async fn finish(mut self, store: &Store) -> Counts {
        self.stop.cancel();
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.tablets.join_next().await.is_some() {
            assert!(Instant::now() < deadline, "tablets did not drain");
        }
        for config in &self.configs {
            assert!(
                config.pending.as_ref().unwrap().bodies().is_empty(),
                "{} still has unacknowledged alarms",
                config.credentials.device_id
            );
        }
        let stored: Vec<(String, String)> =
            sqlx::query_as("SELECT device_id, alarm_id FROM alarms")
                .fetch_all(store.pool())
                .await
                .unwrap();
        let stored_set: HashSet<(String, String)> = stored.iter().cloned().collect();
        let raised = self.raised.lock().unwrap().clone();
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        assert_eq!(stored.len(), stored_set.len(), "no alarm stored twice");
        assert_eq!(
            stored_set, raised,
            "every raised alarm stored, nothing else"
        );
        assert!(
            acknowledged.is_subset(&stored_set),
            "no acknowledgement without a commit"
        );
        Counts {
            raised: raised.len(),
            acknowledged: acknowledged.len(),
            stored: stored.len(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_survive_a_killed_server_exactly_once() {
    let database_url = carebell_tests::fresh_database().await;
    let mut cluster = Cluster::start(&database_url, &carebell_tests::redis_url(), 1).await;
    let store = Store::connect(&database_url, 5).await.unwrap();
    let stream = AlarmStream::start(&cluster, &store, N_TABLETS).await;
    // Mid-stream, twice: SIGKILL, a moment down, restart.
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < ACTIVE {
        tokio::time::sleep(Duration::from_secs(4)).await;
        if started.elapsed() < ACTIVE {
            cluster
                .kill_and_restart(0, Duration::from_millis(700))
                .await;
            kills += 1;
        }
    }
    let counts = stream.finish(&store).await;
    eprintln!(
        "{} alarms raised, {} acknowledged while the tablets waited, {} stored, {kills} kills",
        counts.raised, counts.acknowledged, counts.stored
    );
    assert!(kills >= 2);
    assert!(
        counts.raised >= 1000,
        "a stream of alarms: {}",
        counts.raised
    );
}

/// An operator who answers and ends whatever rings, reconnecting whenever anything fails.
async fn answering_operator(grpc_url: String, ca_pem: String, stop: CancellationToken) {
    use carebell_proto::console::v1::console_event::Event;
    use carebell_proto::console::v1::{Disposition, OperatorStatus};
    use carebell_server::console_client::{channel, OperatorClient};
    while !stop.is_cancelled() {
        let session: anyhow::Result<()> = async {
            let mut client = OperatorClient::sign_in(
                channel(&grpc_url, Some(&ca_pem)).await?,
                "nurse",
                "correct horse",
            )
            .await?;
            let mut events = client.subscribe().await?;
            let _ = client.set_status(OperatorStatus::Available).await;
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    next = events.message() => next?,
                };
                let call_id = match next.and_then(|event| event.event) {
                    Some(Event::Offer(offer)) => match client.accept(&offer.offer_id).await {
                        Ok(accepted) => accepted.call_id,
                        Err(_) => continue,
                    },
                    Some(Event::CallChanged(changed)) if changed.state == "answered" => {
                        changed.call_id
                    }
                    Some(Event::StatusChanged(_)) => {
                        let _ = client.set_status(OperatorStatus::Available).await;
                        continue;
                    }
                    Some(_) => continue,
                    None => anyhow::bail!("stream ended"),
                };
                let _ = client.end_call(&call_id, Disposition::Emergency, "").await;
            }
        }
        .await;
        if session.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_survive_a_database_crash_and_a_dead_redis() {
    let postgres = common::PrivatePostgres::start();
    {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&postgres.url("postgres"))
            .await
            .unwrap();
        sqlx::query("CREATE DATABASE carebell")
            .execute(&mut connection)
            .await
            .unwrap();
        // The application's own role, as deploy/ensure-services.sh makes it.
        sqlx::query("CREATE ROLE carebell_app LOGIN")
            .execute(&mut connection)
            .await
            .unwrap();
    }
    let mut redis = common::PrivateRedis::start().await;
    let database_url = postgres.url("carebell");
    let cluster = Cluster::start(&database_url, &redis.url(), 1).await;
    let store = Store::connect(&database_url, 5).await.unwrap();
    let hash = carebell_gateway::console::hash_password("correct horse").unwrap();
    store.add_operator("nurse", "Nurse", &hash).await.unwrap();
    let stop_operator = CancellationToken::new();
    let operator = tokio::spawn(answering_operator(
        cluster.grpc_url(),
        cluster.certificates.ca_pem.clone(),
        stop_operator.clone(),
    ));
    let stream = AlarmStream::start(&cluster, &store, 50).await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.kill();
    let redis_died: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // PostgreSQL crashes (no checkpoint) and comes back.
    postgres.crash_and_restart();
    let restarted: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT pg_postmaster_start_time()")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert!(
        restarted > redis_died,
        "PostgreSQL really restarted mid-stream"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let counts = stream.finish(&store).await;
    // Stored, offered and answered while Redis was dead (answers come oldest first, so under
    // load they may all be alarms from before it died: what counts is that answering went on).
    let answered_without_redis: i64 =
        sqlx::query_scalar("SELECT count(*) FROM calls WHERE answered_at > $1")
            .bind(redis_died)
            .fetch_one(store.pool())
            .await
            .unwrap();
    let stored_without_redis: i64 =
        sqlx::query_scalar("SELECT count(*) FROM alarms WHERE received_at > $1")
            .bind(redis_died)
            .fetch_one(store.pool())
            .await
            .unwrap();
    let offered_without_redis: i64 =
        sqlx::query_scalar("SELECT count(*) FROM offers WHERE created_at > $1")
            .bind(redis_died)
            .fetch_one(store.pool())
            .await
            .unwrap();
    eprintln!(
        "{} raised, {} acknowledged while waiting, {} stored, {answered_without_redis} answered after Redis died",
        counts.raised, counts.acknowledged, counts.stored
    );
    stop_operator.cancel();
    let _ = operator.await;
    assert!(
        stored_without_redis > 0,
        "alarms were still stored without Redis"
    );
    assert!(
        offered_without_redis > 0,
        "alarms were still offered without Redis"
    );
    assert!(
        answered_without_redis > 0,
        "alarms were still answered without Redis"
    );
    drop(cluster);
}
