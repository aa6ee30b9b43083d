//! Shared helpers for Carebell's benchmarks: timing and reporting. Benchmarks print figures
//! (JSON and a markdown table); they never fail a build because a machine was slow.

use std::time::{Duration, Instant};

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
}

/// Runs `operation` `iterations` times and returns operations per second.
pub fn rate(iterations: u64, mut operation: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        operation();
    }
    iterations as f64 / start.elapsed().as_secs_f64()
}

/// The `q` quantile (0..=1) of sorted durations, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Prints the figures as one JSON object and as a markdown table.
pub fn report(title: &str, figures: &[Figure]) {
    let json: serde_json::Map<String, serde_json::Value> = figures
        .iter()
        .map(|figure| {
            (
                figure.name.clone(),
                serde_json::json!({ "value": figure.value, "unit": figure.unit }),
            )
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({ "benchmark": title, "figures": json })
    );
    println!();
    println!("| {title} | value | unit |");
    println!("|---|---:|---|");
    for figure in figures {
        println!(
            "| {} | {:.3} | {} |",
            figure.name, figure.value, figure.unit
        );
    }
    println!();
}

/// A goal from an issue, checked against what a benchmark measured.
#[derive(Debug, Clone)]
pub struct Goal {
    pub name: String,
    pub measured: f64,
    pub target: f64,
    pub unit: &'static str,
    /// `true`: the measured value must reach the target (connections, rates); `false`: it must
    /// stay at or under it (latencies, memory, time).
    pub higher_is_better: bool,
}

impl Goal {
    pub fn met(&self) -> bool {
        if self.higher_is_better {
            self.measured >= self.target
        } else {
            self.measured <= self.target
        }
    }

    /// "met", or by how much it is missed, e.g. "short by 40% (0.60 x the goal)". A figure that
    /// could not be taken is NaN ("not measured"); one never reached in the run, such as a
    /// storm some of whose tablets were not back when the run stopped waiting, is infinite.
    pub fn verdict(&self) -> String {
        if self.measured.is_nan() {
            return "not measured".to_owned();
        }
        if self.measured.is_infinite() {
            return "not reached in the run".to_owned();
        }
        if self.met() {
            return "met".to_owned();
        }
        if self.target == 0.0 {
            // "None dropped": there is no ratio to a goal of nothing.
            return format!("over by {} {}", self.measured, self.unit);
        }
        let ratio = self.measured / self.target;
        if self.higher_is_better {
            format!(
                "short by {:.0}% ({ratio:.2} x the goal)",
                (1.0 - ratio) * 100.0
            )
        } else {
            format!(
                "over by {:.0}% ({ratio:.2} x the goal)",
                (ratio - 1.0) * 100.0
            )
        }
    }
}

/// Prints the goals as a markdown table (goal, measured, verdict) and one JSON line.
pub fn report_goals(title: &str, goals: &[Goal]) {
    let json: Vec<serde_json::Value> = goals
        .iter()
        .map(|goal| {
            serde_json::json!({
                "goal": goal.name,
                "measured": goal.measured,
                "target": goal.target,
                "unit": goal.unit,
                "met": goal.met(),
                "verdict": goal.verdict(),
            })
        })
        .collect();
    println!("{}", serde_json::json!({ "goals": title, "checks": json }));
    println!();
    println!("| {title} | measured | goal | verdict |");
    println!("|---|---:|---:|---|");
    for goal in goals {
        let bound = if goal.higher_is_better { "≥" } else { "≤" };
        println!(
            "| {} | {:.3} {} | {bound} {} {} | {} |",
            goal.name,
            goal.measured,
            goal.unit,
            goal.target,
            goal.unit,
            goal.verdict()
        );
    }
    println!();
}

/// Processes, files and databases the multi-process benchmarks share.
pub mod harness {
    use std::path::{Path, PathBuf};
    use std::process::Stdio;
    use std::time::Duration;

    use tokio::process::{Child, Command};

    /// `target/release`, where `cargo build --release --bins` put the programs.
    pub fn release_dir() -> PathBuf {
        let exe = std::env::current_exe().expect("own path");
        exe.parent()
            .and_then(Path::parent)
            .expect("target/release")
            .to_path_buf()
    }

    /// A program from `target/release`; says how to build it when it is missing.
    pub fn binary(name: &str) -> PathBuf {
        let path = release_dir().join(name);
        assert!(
            path.exists(),
            "{} is missing: run `cargo build --release --bins` first",
            path.display()
        );
        path
    }

    /// A whole number from the environment, or `default` when it is not set. A value that is
    /// not a whole number stops the benchmark with its name rather than running it at the
    /// default: `CAREBELL_BENCH_TABLETS=100k` must not quietly measure 20,000.
    pub fn env_u64(name: &str, default: u64) -> u64 {
        whole_number(name, std::env::var(name), default)
    }

    /// `env_u64`'s reading of what the environment held.
    pub(crate) fn whole_number(
        name: &str,
        value: Result<String, std::env::VarError>,
        default: u64,
    ) -> u64 {
        match value {
            Err(std::env::VarError::NotPresent) => default,
            Err(std::env::VarError::NotUnicode(value)) => {
                panic!("{name} is not valid text: {value:?}")
            }
            Ok(value) => value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name} must be a whole number, not {value:?}")),
        }
    }

    /// A process's resident memory (0 when it is gone).
    pub fn rss_bytes(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|line| line.starts_with("VmRSS:"))
                    .and_then(|line| line.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// User plus system CPU seconds a process has used.
    pub fn cpu_seconds(pid: u32) -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let after = stat.rsplit_once(')')?.1;
                let fields: Vec<&str> = after.split_whitespace().collect();
                let utime: f64 = fields.get(11)?.parse().ok()?;
                let stime: f64 = fields.get(12)?.parse().ok()?;
                Some((utime + stime) / 100.0)
            })
            .unwrap_or(0.0)
    }

    /// Memory added per connection between two readings.
    pub fn per_connection(baseline: u64, loaded: u64, connections: u64) -> f64 {
        if connections == 0 {
            return f64::NAN;
        }
        loaded.saturating_sub(baseline) as f64 / connections as f64
    }

    pub async fn wait_for_port(port: u16) {
        wait_for_port_unless(port, || None).await;
    }

    /// [`wait_for_port`], stopping the run at once with the reason `gone` gives when what was
    /// to listen has gone.
    async fn wait_for_port_unless(port: u16, mut gone: impl FnMut() -> Option<String>) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            if let Some(reason) = gone() {
                panic!("{reason}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("nothing listens on port {port}");
    }

    fn run(program: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut command = std::process::Command::new(program);
        command.args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("run a command");
        assert!(
            output.status.success(),
            "{} {args:?} failed: {}",
            program.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A fresh database with the schema, development certificates and `tablets` fleet tablets
    /// (`carebell admin fleet-provision`, seed and prefix "fleet"); dropped with the value.
    pub struct Setup {
        pub dir: PathBuf,
        pub admin_url: String,
        pub database: String,
        pub database_url: String,
        /// The superuser URL with which this run turned autovacuum on, to turn it back off.
        autovacuum_turned_on: Option<String>,
    }

    /// Makes PostgreSQL run autovacuum for the run, as a production server does, if it is off
    /// (a CI server's configuration may turn it off). Without it no table is ever analyzed:
    /// statements planned while the alarm and call tables were empty keep their plans as the
    /// tables grow, and at 100,000 tablets one such plan held the database's cores for 20 s a
    /// statement until the fleet fell away. Returns the URL to turn it back off with, when it
    /// was turned on; `CAREBELL_BENCH_AUTOVACUUM=as-is` leaves the server as it is.
    fn autovacuum_on() -> Option<String> {
        if std::env::var("CAREBELL_BENCH_AUTOVACUUM").is_ok_and(|value| value == "as-is") {
            return None;
        }
        let url = std::env::var("CAREBELL_BENCH_SUPERUSER_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let show = || {
            std::process::Command::new("psql")
                .args([&url, "-qAtc", "show autovacuum"])
                .output()
                .ok()
                .filter(|output| output.status.success())
                .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        };
        if show().as_deref() != Some("off") {
            return None;
        }
        let turned = std::process::Command::new("psql")
            .args([
                &url,
                "-qAt",
                "-c",
                "alter system set autovacuum = on",
                "-c",
                "select pg_reload_conf()",
            ])
            .output()
            .is_ok_and(|output| output.status.success());
        // The reload is asynchronous: wait (briefly) until a new session sees it.
        for _ in 0..50 {
            if turned && show().as_deref() == Some("on") {
                eprintln!(
                    "PostgreSQL's autovacuum was off; it is on for this run (ALTER SYSTEM, reset \
                     at the end; CAREBELL_BENCH_AUTOVACUUM=as-is leaves it)"
                );
                return Some(url);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "WARNING: PostgreSQL's autovacuum is off and could not be turned on with {url}: \
             no table will be analyzed during the run, and its figures are not a production \
             server's (set CAREBELL_BENCH_SUPERUSER_URL)"
        );
        None
    }

    impl Setup {
        pub fn new(name: &str, tablets: u64) -> Self {
            let admin_url =
                std::env::var("CAREBELL_BENCH_DATABASE_ADMIN_URL").unwrap_or_else(|_| {
                    "postgres://carebell:carebell@127.0.0.1:5432/postgres".to_owned()
                });
            let dir = std::env::temp_dir().join(format!("carebell-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("bench dir");
            let database = format!("carebell_{name}_{}", std::process::id());
            run(
                Path::new("psql"),
                &[&admin_url, "-qc", &format!("create database {database}")],
                &[],
            );
            let database_url = admin_url
                .rsplit_once('/')
                .map(|(base, _)| format!("{base}/{database}"))
                .expect("a database URL");
            let setup = Self {
                dir,
                admin_url,
                database,
                database_url,
                autovacuum_turned_on: autovacuum_on(),
            };
            setup.carebell(&[
                "dev-cert",
                "--out",
                &setup.dir.join("certs").to_string_lossy(),
            ]);
            // One ticket key file for every gateway process of the run, as a node's processes
            // share one (`tls.ticket_key_path`): a restarted process resumes the sessions of
            // the one it replaced.
            let mut bytes = [0u8; 32];
            std::io::Read::read_exact(
                &mut std::fs::File::open("/dev/urandom").expect("/dev/urandom"),
                &mut bytes,
            )
            .expect("32 random bytes for the ticket key");
            let key: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            std::fs::write(setup.dir.join("certs/ticket.keys"), format!("{key}\n"))
                .expect("write the ticket key");
            setup.carebell(&["migrate"]);
            setup.carebell(&["admin", "fleet-provision", "--count", &tablets.to_string()]);
            setup
        }

        /// Runs `carebell` against this database; returns its standard output.
        pub fn carebell(&self, args: &[&str]) -> String {
            run(
                &binary("carebell"),
                args,
                &[("CAREBELL_DATABASE_URL", self.database_url.as_str())],
            )
        }

        /// Runs SQL against this database.
        pub fn psql(&self, sql: &str) -> String {
            run(Path::new("psql"), &[&self.database_url, "-qAtc", sql], &[])
        }

        pub fn ca_pem(&self) -> String {
            std::fs::read_to_string(self.dir.join("certs/ca.pem")).expect("the CA certificate")
        }

        /// Starts `carebell serve` (node `bench-{index}`): devices over WebSocket on `ws_port`
        /// (several processes may share it) and over gRPC on `grpc_port` (0: any).
        pub fn gateway(
            &self,
            index: u64,
            ws_port: u16,
            grpc_port: u16,
            heartbeat_ms: u64,
        ) -> Child {
            self.gateway_with(index, ws_port, grpc_port, heartbeat_ms, &[])
        }

        /// [`Setup::gateway`] with more settings (`CAREBELL_*` variables).
        pub fn gateway_with(
            &self,
            index: u64,
            ws_port: u16,
            grpc_port: u16,
            heartbeat_ms: u64,
            settings: &[(&str, String)],
        ) -> Child {
            // Each process's warnings go to its own file (appended to by a restart of the same
            // index), kept after the run by `Drop`.
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("gateway-{index}.log")))
                .expect("a gateway log file");
            Command::new(binary("carebell"))
                .arg("serve")
                .env("CAREBELL_DATABASE_URL", &self.database_url)
                .env("CAREBELL_DATABASE_MAX_CONNECTIONS", "6")
                .env("CAREBELL_NODE_ID", format!("bench-{index}"))
                .env("CAREBELL_LISTEN__WEBSOCKET", format!("127.0.0.1:{ws_port}"))
                .env("CAREBELL_LISTEN__GRPC", format!("127.0.0.1:{grpc_port}"))
                .env("CAREBELL_LISTEN__WEB", "127.0.0.1:0")
                .env("CAREBELL_LISTEN__METRICS", "127.0.0.1:0")
                .env("CAREBELL_TLS__CERT_PATH", self.dir.join("certs/server.pem"))
                .env("CAREBELL_TLS__KEY_PATH", self.dir.join("certs/server.key"))
                .env(
                    "CAREBELL_TLS__TICKET_KEY_PATH",
                    self.dir.join("certs/ticket.keys"),
                )
                .env(
                    "CAREBELL_DEVICE__HEARTBEAT_INTERVAL_MS",
                    heartbeat_ms.to_string(),
                )
                .env("CAREBELL_RUN_MIGRATIONS", "false")
                // Each load-generator process speaks from one address.
                .env("CAREBELL_DEVICE__MAX_HANDSHAKES_PER_ADDRESS", "0")
                .env("CAREBELL_LOG_FORMAT", "json")
                .env("RUST_LOG", "warn")
                .envs(settings.iter().map(|(key, value)| (*key, value.as_str())))
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("start a gateway")
        }
    }

    impl Setup {
        /// [`wait_for_port`] for gateways this set-up started: a gateway that exits first (a
        /// setting it refuses, a database it cannot reach) stops the run with its status and
        /// the end of the gateways' logs, which hold its reason.
        pub async fn wait_for_gateways(&self, port: u16, gateways: &mut [Child]) {
            wait_for_port_unless(port, || {
                let status = gateways
                    .iter_mut()
                    .find_map(|gateway| gateway.try_wait().ok().flatten())?;
                Some(format!(
                    "a gateway exited ({status}) before listening on port {port}:\n{}",
                    self.gateway_log_tails()
                ))
            })
            .await;
        }

        /// The last lines of each gateway's log.
        fn gateway_log_tails(&self) -> String {
            let mut tails = String::new();
            for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("gateway-") && name.ends_with(".log") {
                    let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    tails.push_str(&format!(
                        "{name}:\n{}\n",
                        lines[lines.len().saturating_sub(5)..].join("\n")
                    ));
                }
            }
            tails
        }
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            // The gateways' logs outlive the run: `target/release/bench-logs/<database>/`.
            let logs = release_dir().join("bench-logs").join(&self.database);
            if let Ok(entries) = std::fs::read_dir(&self.dir) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if name.to_string_lossy().ends_with(".log")
                        && entry.metadata().is_ok_and(|meta| meta.len() > 0)
                        && std::fs::create_dir_all(&logs).is_ok()
                    {
                        let _ = std::fs::copy(entry.path(), logs.join(&name));
                    }
                }
            }
            let _ = std::process::Command::new("psql")
                .args([
                    &self.admin_url,
                    "-qc",
                    &format!("drop database if exists {} with (force)", self.database),
                ])
                .output();
            let _ = std::fs::remove_dir_all(&self.dir);
            if let Some(url) = &self.autovacuum_turned_on {
                let _ = std::process::Command::new("psql")
                    .args([
                        url,
                        "-qAt",
                        "-c",
                        "alter system reset autovacuum",
                        "-c",
                        "select pg_reload_conf()",
                    ])
                    .output();
            }
        }
    }
}

/// A histogram's cumulative buckets in a metrics scrape: `(upper bound, count)` in order, the
/// `+Inf` bucket last; empty when the series is absent.
pub fn histogram_buckets(scrape: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    scrape
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (bound, rest) = rest.split_once("\"}")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            let count = rest.split_whitespace().next()?.parse().ok()?;
            Some((bound, count))
        })
        .collect()
}

/// A counter's series in a metrics scrape, by the value of one label: `(value, count)`, summed
/// over the other labels (`carebell_device_sessions_ended_total` by `reason`, say).
pub fn counter_by_label(scrape: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}{{");
    let key = format!("{label}=\"");
    let mut counts: Vec<(String, f64)> = Vec::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, count)) = rest.rsplit_once("} ") else {
            continue;
        };
        let value = labels
            .split_once(&key)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(value, _)| value.to_owned());
        let (Some(value), Ok(count)) = (value, count.trim().parse::<f64>()) else {
            continue;
        };
        match counts.iter_mut().find(|(seen, _)| *seen == value) {
            Some((_, total)) => *total += count,
            None => counts.push((value, count)),
        }
    }
    counts
}

/// The device sessions ended in a metrics scrape, by reason: `(reason, count)`, summed over
/// transports.
pub fn sessions_ended(scrape: &str) -> Vec<(String, f64)> {
    counter_by_label(scrape, "carebell_device_sessions_ended_total", "reason")
}

/// Several processes' histograms (the same buckets) added together.
pub fn add_buckets(histograms: &[Vec<(f64, f64)>]) -> Vec<(f64, f64)> {
    let mut sum: Vec<(f64, f64)> = Vec::new();
    for histogram in histograms {
        if sum.is_empty() {
            sum = histogram.clone();
        } else if histogram.len() == sum.len() {
            for (total, (_, count)) in sum.iter_mut().zip(histogram) {
                total.1 += count;
            }
        }
    }
    sum
}

/// The upper bound of the bucket holding quantile `q` of what was observed between two readings
/// of the same cumulative buckets (`None` when nothing was): a histogram's quantile is only as
/// fine as its buckets.
pub fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let count = |buckets: &[(f64, f64)], index: usize| buckets.get(index).map_or(0.0, |b| b.1);
    let total = after.last()?.1 - before.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return None;
    }
    after
        .iter()
        .enumerate()
        .find(|&(index, &(_, cumulative))| cumulative - count(before, index) >= q * total)
        .map(|(_, &(bound, _))| bound)
}

/// A fresh, migrated database with one station and `devices` tablets `tab-1` … `tab-<n>`,
/// each with its own resident (`alarm_commit`, `offline_sweep`).
pub async fn district(devices: u64) -> carebell_store::Store {
    let store = carebell_store::Store::connect(&carebell_tests::fresh_database().await, 20)
        .await
        .expect("PostgreSQL (run ./deploy/ensure-services.sh)");
    store.migrate().await.expect("migrate");
    let station = store.add_station("bench").await.expect("station");
    sqlx::query(
        "WITH r AS (
            INSERT INTO residents (id, station_id, full_name, address, phone, dialect)
            SELECT gen_random_uuid(), $1, 'resident ' || n, '', '', 'cantonese'
            FROM generate_series(1, $2) AS n RETURNING id, full_name)
         INSERT INTO devices (id, resident_id, public_key)
         SELECT 'tab-' || split_part(full_name, ' ', 2), id, decode(repeat('00', 32), 'hex') FROM r",
    )
    .bind(station)
    .bind(i32::try_from(devices).expect("devices"))
    .execute(store.pool())
    .await
    .expect("devices");
    store
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bench_setting_is_a_whole_number_or_stops_the_run_with_its_name() {
        use harness::whole_number;
        use std::env::VarError;
        assert_eq!(whole_number("N", Err(VarError::NotPresent), 20_000), 20_000);
        assert_eq!(whole_number("N", Ok(" 100000 ".into()), 20_000), 100_000);
        let refused = std::panic::catch_unwind(|| whole_number("N", Ok("100k".into()), 20_000))
            .expect_err("100k is not a whole number");
        let message = refused
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert_eq!(message, "N must be a whole number, not \"100k\"");
    }

    #[test]
    fn a_goal_says_whether_it_was_met_missed_never_reached_or_not_measured() {
        let goal = |measured: f64, higher_is_better| Goal {
            name: "g".into(),
            measured,
            target: 100.0,
            unit: "s",
            higher_is_better,
        };
        assert_eq!(goal(80.0, true).verdict(), "short by 20% (0.80 x the goal)");
        assert_eq!(
            goal(150.0, false).verdict(),
            "over by 50% (1.50 x the goal)"
        );
        assert_eq!(goal(100.0, false).verdict(), "met");
        assert_eq!(goal(f64::NAN, false).verdict(), "not measured");
        assert_eq!(
            goal(f64::INFINITY, false).verdict(),
            "not reached in the run"
        );
        assert!(!goal(f64::INFINITY, false).met());
        // A goal of none ("none dropped"): met at zero, and missed by a count, not a ratio.
        let none = |measured: f64| Goal {
            name: "dropped".into(),
            measured,
            target: 0.0,
            unit: "links",
            higher_is_better: false,
        };
        assert_eq!(none(0.0).verdict(), "met");
        assert_eq!(none(25.0).verdict(), "over by 25 links");
    }

    #[test]
    fn sessions_ended_are_summed_by_reason_over_transports() {
        let scrape = "# TYPE carebell_device_sessions_ended_total counter
carebell_device_sessions_ended_total{transport=\"websocket\",reason=\"closed by the device\"} 7
carebell_device_sessions_ended_total{transport=\"grpc\",reason=\"closed by the device\"} 2
carebell_device_sessions_ended_total{transport=\"websocket\",reason=\"heartbeat supervision timed out\"} 3
carebell_device_handshakes_total{transport=\"websocket\",outcome=\"accepted\"} 12
";
        assert_eq!(
            sessions_ended(scrape),
            [
                ("closed by the device".to_owned(), 9.0),
                ("heartbeat supervision timed out".to_owned(), 3.0)
            ]
        );
        assert!(sessions_ended("carebell_draining 0").is_empty());
        assert_eq!(
            counter_by_label(scrape, "carebell_device_handshakes_total", "outcome"),
            [("accepted".to_owned(), 12.0)]
        );
    }

    #[test]
    fn a_histograms_quantiles_come_from_the_difference_between_two_scrapes() {
        let scrape = |counts: [u32; 3]| {
            format!(
                "# TYPE x histogram\nx_sum 1.0\nx_count {}\nx_bucket{{le=\"0.001\"}} {}\nx_bucket{{le=\"0.002\"}} {}\nx_bucket{{le=\"+Inf\"}} {}\nother_bucket{{le=\"0.001\"}} 99\n",
                counts[2], counts[0], counts[1], counts[2]
            )
        };
        let before = histogram_buckets(&scrape([10, 10, 10]), "x");
        assert_eq!(
            before,
            vec![(0.001, 10.0), (0.002, 10.0), (f64::INFINITY, 10.0)]
        );
        // Between the scrapes: 90 observations under 1 ms, 9 under 2 ms, 1 above.
        let after = histogram_buckets(&scrape([100, 109, 110]), "x");
        assert_eq!(bucket_quantile(&before, &after, 0.5), Some(0.001));
        assert_eq!(bucket_quantile(&before, &after, 0.95), Some(0.002));
        assert_eq!(bucket_quantile(&before, &after, 0.999), Some(f64::INFINITY));
        assert_eq!(bucket_quantile(&after, &after, 0.5), None);
        assert!(histogram_buckets(&scrape([1, 1, 1]), "y").is_empty());
        // Two processes' buckets add up.
        let both = add_buckets(&[before.clone(), after]);
        assert_eq!(
            both,
            vec![(0.001, 110.0), (0.002, 119.0), (f64::INFINITY, 120.0)]
        );
        assert_eq!(bucket_quantile(&[], &before, 0.5), Some(0.001));
    }
}
