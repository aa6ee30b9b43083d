//! Backup and restore (`docs/backup.md`): a backup taken with `deploy/backup.sh` while a fleet
//! of tablets keeps pressing SOS is restored by `deploy/restore-drill.sh` into a fresh
//! database, which holds every alarm committed before the backup began (and nothing committed
//! after its snapshot), with its append-only protections intact. Bad input is refused with a
//! clear error and overwrites nothing: a corrupt archive, a missing checksum, an existing
//! target database, a database that does not exist, a directory that cannot be written. And
//! the drill's append-only check is not a formality: a backup that lost the protections fails
//! it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use carebell_tests::{NodeOptions, TempDir, TestNode};
use firmware_sim::fleet::{fleet_device_id, fleet_signing_key, run_fleet, FleetConfig, FleetStats};
use sqlx::{Connection, PgPool};

const N_TABLETS: u64 = 40;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// A name for a database this test creates (the test command drops stale `carebell_test_%`).
fn database_name() -> String {
    format!("carebell_test_{}", uuid::Uuid::new_v4().simple())
}

/// The URL of database `name` on the test server, as the test's (owner) user.
fn database_url(name: &str) -> String {
    let admin_url = carebell_tests::admin_database_url();
    let base = admin_url
        .rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .unwrap_or(admin_url);
    format!("{base}/{name}")
}

fn name_of(url: &str) -> String {
    url.rsplit('/').next().expect("a database name").to_owned()
}

async fn admin() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&carebell_tests::admin_database_url())
        .await
        .expect("tests need PostgreSQL")
}

async fn database_exists(name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin().await)
        .await
        .unwrap()
}

async fn drop_database(name: &str) {
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin().await)
        .await
        .unwrap();
}

/// What one of the scripts did.
#[derive(Debug)]
struct ScriptRun {
    status: i32,
    stdout: String,
    stderr: String,
}

async fn run_script(name: &str, args: &[&str], database_url: Option<&str>) -> ScriptRun {
    let mut command = tokio::process::Command::new(script(name));
    command.args(args).env_remove("CAREBELL_DATABASE_URL");
    if let Some(url) = database_url {
        command.env("CAREBELL_DATABASE_URL", url);
    }
    let output = command
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|error| panic!("failed to run deploy/{name}: {error}"));
    ScriptRun {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `deploy/backup.sh DIRECTORY` against `url`; returns the archive's path.
async fn backup(url: &str, directory: &Path) -> PathBuf {
    let run = run_script("backup.sh", &[directory.to_str().unwrap()], Some(url)).await;
    assert_eq!(run.status, 0, "the backup failed: {run:?}");
    backup_path(&run)
}

fn backup_path(run: &ScriptRun) -> PathBuf {
    let path = PathBuf::from(run.stdout.trim());
    assert!(path.is_file(), "backup.sh printed no archive: {run:?}");
    assert!(
        Path::new(&format!("{}.sha256", path.display())).is_file(),
        "no checksum beside the archive: {run:?}"
    );
    path
}

async fn drill(backup: &Path, target_url: &str, extra: &[&str]) -> ScriptRun {
    let mut args: Vec<&str> = extra.to_vec();
    args.push(backup.to_str().unwrap());
    args.push(target_url);
    run_script("restore-drill.sh", &args, None).await
}

/// Every alarm in the database: (device, the device's own alarm id) -> (row id, kind, call,
/// received at), the columns that never change once written.
type AlarmRows = HashMap<(String, String), (uuid::Uuid, String, Option<uuid::Uuid>, String)>;

async fn alarms(pool: &PgPool) -> AlarmRows {
    let rows: Vec<(
        String,
        String,
        uuid::Uuid,
        String,
        Option<uuid::Uuid>,
        String,
    )> = sqlx::query_as(
        "SELECT device_id, alarm_id, id, kind, call_id, received_at::text FROM alarms",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(device, alarm, id, kind, call, at)| ((device, alarm), (id, kind, call, at)))
        .collect()
}

/// Tablets pressing SOS continuously (two a second each) until the task is aborted.
fn fleet_config(node: &TestNode) -> FleetConfig {
    FleetConfig {
        server: node.websocket_addr(),
        server_name: "localhost".to_owned(),
        ca_pem: Some(node.ca_pem.clone()),
        seed: "restore".to_owned(),
        prefix: "restore".to_owned(),
        first: 0,
        count: N_TABLETS,
        source_ips: Vec::new(),
        alarm_rate_per_tablet: 2.0,
        connect_rate: 0,
        run_for: Duration::from_secs(600),
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_secs(1),
        resumption: true,
        raw: false,
        brief_mix: false,
        heartbeat: None,
        alarms_after: Duration::ZERO,
        handshake_timeout: firmware_sim::fleet::HANDSHAKE_TIMEOUT,
    }
}

async fn provision_fleet(node: &TestNode) {
    let station = node.station().await;
    let devices: Vec<(String, [u8; 32])> = (0..N_TABLETS)
        .map(|index| {
            (
                fleet_device_id("restore", index),
                fleet_signing_key("restore", index)
                    .verifying_key()
                    .to_bytes(),
            )
        })
        .collect();
    node.store.add_fleet(station, &devices).await.unwrap();
}

/// Polls `condition` every 50 ms for up to a minute.
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1200 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_into_a_fresh_database_with_every_committed_alarm() {
    // Arrange: a node and a fleet pressing SOS continuously.
    let source_url = carebell_tests::fresh_database().await;
    let node = TestNode::start(NodeOptions {
        database_url: Some(source_url.clone()),
        max_handshakes_per_address: 0,
        ..NodeOptions::default()
    })
    .await;
    provision_fleet(&node).await;
    // The test looks at the database as its owner (the node's pool is the application's role,
    // which may not see pg_dump's session).
    let owner = PgPool::connect(&source_url).await.unwrap();
    let stats = Arc::new(FleetStats::default());
    let fleet = tokio::spawn(run_fleet(fleet_config(&node), Arc::clone(&stats)));
    eventually(
        "the fleet connected and alarms are being stored",
        || async {
            stats.connected.load(Ordering::Relaxed) == N_TABLETS
                && alarms(&owner).await.len() >= 200
        },
    )
    .await;

    // pg_dump is held in the middle of its run (after it has taken its snapshot, waiting to
    // lock `_sqlx_migrations`, which nothing else touches while a node runs) until alarms
    // have been committed during the dump. However fast the machine, the dump and the load
    // overlap.
    let mut holder = sqlx::PgConnection::connect(&source_url).await.unwrap();
    let mut hold = holder.begin().await.unwrap();
    sqlx::query("LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();

    // Every alarm committed before the backup starts, and the acknowledgements the tablets had
    // received by then (each one after its commit).
    let acknowledged_before = stats.alarms_acked.load(Ordering::Relaxed);
    let committed_before = alarms(&owner).await;
    assert!(committed_before.len() as u64 >= acknowledged_before);

    // Act: the backup, under load.
    let directory = TempDir::new();
    let backup_run = {
        let url = source_url.clone();
        let directory = directory.0.clone();
        tokio::spawn(async move {
            run_script("backup.sh", &[directory.to_str().unwrap()], Some(&url)).await
        })
    };
    let source_name = name_of(&source_url);
    eventually(
        "pg_dump took its snapshot and waits for its locks",
        || async {
            assert!(!backup_run.is_finished(), "backup.sh ended early");
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = $1
                             AND application_name = 'pg_dump' AND wait_event_type = 'Lock')",
            )
            .bind(&source_name)
            .fetch_one(&owner)
            .await
            .unwrap()
        },
    )
    .await;
    // Everything the dump's snapshot can hold was committed before this query.
    let snapshot_bound = alarms(&owner).await;
    let mut committed_during = HashSet::new();
    for _ in 0..1200 {
        committed_during = alarms(&owner)
            .await
            .into_keys()
            .filter(|key| !snapshot_bound.contains_key(key))
            .collect();
        if committed_during.len() >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        committed_during.len() >= 50,
        "alarms are committed while pg_dump runs"
    );
    hold.commit().await.unwrap();
    let backup_run = backup_run.await.unwrap();
    assert_eq!(backup_run.status, 0, "the backup failed: {backup_run:?}");
    let backup_file = backup_path(&backup_run);
    assert_eq!(
        stats.connected.load(Ordering::Relaxed),
        N_TABLETS,
        "the fleet held its links through the backup"
    );
    fleet.abort();
    let _ = fleet.await;
    node.stop().await;

    // The drill, into a database that did not exist.
    let target = database_name();
    let target_url = database_url(&target);
    let run = drill(&backup_file, &target_url, &[]).await;
    println!("{}", run.stdout);
    assert_eq!(run.status, 0, "the drill failed: {run:?}");
    for line in [
        "checksum:     ok",
        "restore:      ok",
        "migrations:   ok",
        "append-only:  ok",
        "restore drill PASSED",
    ] {
        assert!(run.stdout.contains(line), "no '{line}' in: {}", run.stdout);
    }

    // Assert: every alarm committed before the backup began is there, as it was; nothing
    // committed after the dump's snapshot is.
    let restored_pool = PgPool::connect(&target_url).await.unwrap();
    let restored = alarms(&restored_pool).await;
    let missing: Vec<_> = committed_before
        .keys()
        .filter(|key| !restored.contains_key(*key))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} committed alarms are missing from the restored database: {missing:?}",
        missing.len(),
        committed_before.len()
    );
    assert!(restored.len() >= committed_before.len());
    for (key, row) in &committed_before {
        assert_eq!(&restored[key], row, "alarm {key:?} restored as it was");
    }
    assert!(
        restored.keys().all(|key| snapshot_bound.contains_key(key)),
        "the restored database holds only what the snapshot could see"
    );
    assert!(
        committed_during
            .iter()
            .all(|key| !restored.contains_key(key)),
        "alarms committed while the dump ran are not in it (a consistent snapshot)"
    );
    // And the restored audit log is append-only for the application, checked here too.
    let mut connection = restored_pool.acquire().await.unwrap();
    sqlx::query("SET ROLE carebell_app")
        .execute(&mut *connection)
        .await
        .unwrap();
    let refused = sqlx::query("UPDATE audit_log SET actor = actor")
        .execute(&mut *connection)
        .await
        .expect_err("carebell_app may not update the restored audit log");
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );
    drop(connection);
    restored_pool.close().await;
    owner.close().await;
    drop_database(&target).await;
    drop_database(&source_name).await;
}

/// A migrated database with one resident and an audit row; returns its URL.
async fn small_database() -> String {
    let url = carebell_tests::fresh_database().await;
    let store = carebell_store::Store::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    let station = store.add_station("备份站").await.unwrap();
    store
        .add_resident(&carebell_store::NewResident {
            station_id: station,
            full_name: "备份 测试".to_owned(),
            ..carebell_store::NewResident::default()
        })
        .await
        .unwrap();
    sqlx::query("INSERT INTO audit_log (actor, action) VALUES ('test', 'test.backup')")
        .execute(store.pool())
        .await
        .unwrap();
    store.pool().close().await;
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_refuses_a_corrupt_backup_and_an_existing_database_and_overwrites_nothing() {
    let source_url = small_database().await;
    let directory = TempDir::new();
    let good = backup(&source_url, &directory.0).await;

    // A corrupt copy (one byte changed) with the original's checksum file.
    let corrupt = directory.0.join("corrupt.dump");
    let mut bytes = std::fs::read(&good).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&corrupt, &bytes).unwrap();
    std::fs::copy(
        format!("{}.sha256", good.display()),
        format!("{}.sha256", corrupt.display()),
    )
    .unwrap();
    let target = database_name();
    let run = drill(&corrupt, &database_url(&target), &[]).await;
    assert_eq!(run.status, 65, "{run:?}");
    assert!(run.stderr.contains("checksum mismatch"), "{run:?}");
    assert!(run.stdout.contains("checksum:     FAILED"), "{run:?}");
    assert!(!database_exists(&target).await, "nothing was created");

    // No checksum file: not trusted.
    let unchecked = directory.0.join("unchecked.dump");
    std::fs::copy(&good, &unchecked).unwrap();
    let run = drill(&unchecked, &database_url(&target), &[]).await;
    assert_eq!(run.status, 66, "{run:?}");
    assert!(run.stderr.contains("no checksum file"), "{run:?}");
    assert!(!database_exists(&target).await, "nothing was created");

    // An existing database is left as it was.
    let existing = database_name();
    sqlx::query(&format!("CREATE DATABASE {existing}"))
        .execute(&mut admin().await)
        .await
        .unwrap();
    let existing_pool = PgPool::connect(&database_url(&existing)).await.unwrap();
    sqlx::raw_sql("CREATE TABLE precious (note text); INSERT INTO precious VALUES ('keep me')")
        .execute(&existing_pool)
        .await
        .unwrap();
    let run = drill(&good, &database_url(&existing), &[]).await;
    assert_eq!(run.status, 73, "{run:?}");
    assert!(run.stderr.contains("already exists"), "{run:?}");
    let untouched: (Vec<String>, bool) = sqlx::query_as(
        "SELECT (SELECT array_agg(note) FROM precious), to_regclass('alarms') IS NULL",
    )
    .fetch_one(&existing_pool)
    .await
    .unwrap();
    assert_eq!(untouched, (vec!["keep me".to_owned()], true));
    existing_pool.close().await;

    // The good backup passes, and --drop leaves nothing behind.
    let run = drill(&good, &database_url(&target), &["--drop"]).await;
    assert_eq!(run.status, 0, "{run:?}");
    assert!(run.stdout.contains("restore drill PASSED"), "{run:?}");
    assert!(run.stdout.contains("residents=1"), "{run:?}");
    assert!(
        run.stdout.contains(&format!("dropped:      {target}")),
        "{run:?}"
    );
    assert!(!database_exists(&target).await, "--drop dropped it");

    drop_database(&existing).await;
    drop_database(&name_of(&source_url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_refuses_a_missing_database_and_a_directory_it_cannot_write() {
    let directory = TempDir::new();
    let never_created = database_url(&database_name());
    let run = run_script(
        "backup.sh",
        &[directory.0.to_str().unwrap()],
        Some(&never_created),
    )
    .await;
    assert_eq!(run.status, 66, "{run:?}");
    assert!(run.stderr.contains("does not exist"), "{run:?}");
    assert!(
        !run.stderr.contains(":carebell@"),
        "the password is redacted: {run:?}"
    );

    let source_url = small_database().await;
    let not_a_directory = directory.0.join("a-file");
    std::fs::write(&not_a_directory, "").unwrap();
    let missing = directory.0.join("missing");
    // /proc refuses new files even to root, whom permission bits do not stop.
    for (path, message) in [
        (not_a_directory.as_path(), "is not a directory"),
        (missing.as_path(), "does not exist"),
        (Path::new("/proc"), "is not writable"),
    ] {
        let run = run_script("backup.sh", &[path.to_str().unwrap()], Some(&source_url)).await;
        assert_eq!(run.status, 73, "{run:?}");
        assert!(run.stderr.contains(message), "{run:?}");
        assert!(run.stdout.is_empty(), "{run:?}");
    }
    // Nothing was written anywhere but the file the test made.
    let entries: Vec<_> = std::fs::read_dir(&directory.0)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("a-file")]);
    drop_database(&name_of(&source_url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_fails_a_backup_whose_audit_log_lost_its_protection() {
    let source_url = small_database().await;
    // The harm a careless restore (or a hand-made grant) does: the application may now
    // rewrite the audit log.
    let mut owner = sqlx::PgConnection::connect(&source_url).await.unwrap();
    sqlx::query("GRANT UPDATE ON audit_log TO carebell_app")
        .execute(&mut owner)
        .await
        .unwrap();
    owner.close().await.unwrap();
    let directory = TempDir::new();
    let backup_file = backup(&source_url, &directory.0).await;
    let target = database_name();
    let run = drill(&backup_file, &database_url(&target), &["--drop"]).await;
    assert_eq!(run.status, 1, "{run:?}");
    assert!(run.stdout.contains("append-only:  FAILED"), "{run:?}");
    assert!(
        run.stdout.contains("carebell_app may UPDATE audit_log"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("restore drill FAILED: append-only"),
        "{run:?}"
    );
    assert!(!database_exists(&target).await, "--drop dropped it");
    drop_database(&name_of(&source_url)).await;
}
