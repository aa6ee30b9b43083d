//! `tablet-fleet`: many simulated tablets in one process (`run`), or several such processes
//! with their figures summed (`launch`). Tablets use keys derived from a fleet seed, registered
//! with `carebell admin fleet-provision --seed ... --count ...`.
//!
//! `run` prints one JSON line of figures per second on stdout and a last line with
//! `"final": true`; `launch` reads its children's lines, shows their sum on stderr as it goes,
//! and prints the combined final figures as JSON on stdout.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand};
use firmware_sim::fleet::{run_fleet, FleetConfig, FleetReport, FleetStats};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser, Debug)]
#[command(name = "tablet-fleet")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run `--count` tablets in this process.
    Run(RunArgs),
    /// Run `--processes` processes of `--per-process` tablets each, from NET.2, NET.3, ...
    /// (each process from enough addresses of its own for 4,000 tablets an address)
    Launch {
        #[arg(long)]
        processes: u64,
        #[arg(long)]
        per_process: u64,
        /// The first three parts of the source addresses (each process connects from
        /// addresses of its own, each with its own ephemeral ports; a separate net per run
        /// avoids the ports still in TIME_WAIT from an earlier one).
        #[arg(long, default_value = "127.0.0")]
        source_net: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Args, Debug, Clone)]
struct CommonArgs {
    /// The gateway's address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    server: SocketAddr,
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// PEM of the CA that signed the gateway's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    #[arg(long, default_value = "fleet")]
    seed: String,
    #[arg(long, default_value = "fleet")]
    prefix: String,
    /// The first tablet's index.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Alarms (or presses, with --brief-mix) per second over all tablets.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Presses drawn from the brief's call mix instead of SOS alarms only.
    #[arg(long)]
    brief_mix: bool,
    /// New connections per second per process while ramping up (0: all at once).
    #[arg(long, default_value_t = 2000)]
    connect_rate: u32,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    backoff_base: Duration,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    backoff_cap: Duration,
    /// Offer TLS session resumption.
    #[arg(long)]
    resumption: bool,
    /// Hold bare TLS WebSocket links without the device protocol (for other servers).
    #[arg(long)]
    raw: bool,
    /// Heartbeat this often instead of at the interval the server asks for (at least 100ms).
    #[arg(long, value_parser = parse_heartbeat)]
    heartbeat: Option<Duration>,
    /// No alarm before this long after the start, so that the measured alarms come from a
    /// fleet that has finished connecting.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    alarms_after: Duration,
    /// How long a tablet waits for its TLS handshake, then its WebSocket upgrade, then each of
    /// the server's answers (Challenge, Welcome: at least 15 s), before giving up on the
    /// attempt (the default is `fleet::HANDSHAKE_TIMEOUT`).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
}

fn parse_heartbeat(text: &str) -> Result<Duration, String> {
    let every = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if every < Duration::from_millis(100) {
        return Err(format!("{text} is too short: at least 100ms"));
    }
    Ok(every)
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    #[arg(long)]
    count: u64,
    /// Local address to connect from; repeated, the tablets take them in turn.
    #[arg(long = "source-ip")]
    source_ips: Vec<IpAddr>,
    /// Alarms per second for all tablets of the whole fleet (this process's share is
    /// `--count / --fleet-size`).
    #[arg(long)]
    fleet_size: Option<u64>,
    /// Exit when the parent process is gone (set by `launch`, so that killing the launcher
    /// never leaves fleets behind).
    #[arg(long)]
    exit_with_parent: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(rename = "final", default)]
    last: bool,
    #[serde(flatten)]
    report: FleetReport,
}

#[tokio::main]
async fn main() {
    // One file per simulated tablet: take the whole allowance the system grants.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    if let Err(error) = match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Launch {
            processes,
            per_process,
            source_net,
            common,
        } => launch(processes, per_process, &source_net, common).await,
    } {
        eprintln!("tablet-fleet: {error:#}");
        std::process::exit(1);
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let common = args.common;
    let ca_pem = common
        .ca
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
        })
        .transpose()?;
    let fleet_size = args.fleet_size.unwrap_or(args.count).max(1);
    let config = FleetConfig {
        server: common.server,
        server_name: common.server_name,
        ca_pem,
        seed: common.seed,
        prefix: common.prefix,
        first: common.first,
        count: args.count,
        source_ips: args.source_ips,
        alarm_rate_per_tablet: common.rate / fleet_size as f64,
        connect_rate: common.connect_rate,
        run_for: common.duration,
        backoff_base: common.backoff_base,
        backoff_cap: common.backoff_cap,
        resumption: common.resumption,
        raw: common.raw,
        brief_mix: common.brief_mix,
        heartbeat: common.heartbeat,
        alarms_after: common.alarms_after,
        handshake_timeout: common.handshake_timeout,
    };
    if args.exit_with_parent {
        let parent = std::os::unix::process::parent_id();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if std::os::unix::process::parent_id() != parent {
                    std::process::exit(2);
                }
            }
        });
    }
    let stats = Arc::new(FleetStats::default());
    let reporter_stats = Arc::clone(&stats);
    let reporter = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticker.tick().await;
            let line = Line {
                last: false,
                report: reporter_stats.report(),
            };
            if let Ok(text) = serde_json::to_string(&line) {
                println!("{text}");
            }
        }
    });
    let report = run_fleet(config, stats).await?;
    reporter.abort();
    println!("{}", serde_json::to_string(&Line { last: true, report })?);
    Ok(())
}

async fn launch(
    processes: u64,
    per_process: u64,
    source_net: &str,
    common: CommonArgs,
) -> anyhow::Result<()> {
    let addresses =
        firmware_sim::fleet::launch_source_addresses(source_net, processes, per_process)
            .map_err(|problem| anyhow!("--source-net and --processes: {problem}"))?;
    let exe = std::env::current_exe().context("cannot find this program")?;
    let fleet_size = processes * per_process;
    let latest: Arc<std::sync::Mutex<Vec<(FleetReport, bool)>>> =
        Arc::new(std::sync::Mutex::new(vec![
            (FleetReport::default(), false);
            usize::try_from(processes)
                .unwrap_or(0)
        ]));
    let mut children = Vec::new();
    for (process, sources) in (0..processes).zip(&addresses) {
        let mut command = tokio::process::Command::new(&exe);
        command
            .arg("run")
            .arg("--exit-with-parent")
            .arg("--count")
            .arg(per_process.to_string())
            .arg("--fleet-size")
            .arg(fleet_size.to_string())
            .args(
                sources
                    .iter()
                    .flat_map(|ip| ["--source-ip".to_owned(), ip.to_string()]),
            )
            .arg("--server")
            .arg(common.server.to_string())
            .arg("--server-name")
            .arg(&common.server_name)
            .arg("--seed")
            .arg(&common.seed)
            .arg("--prefix")
            .arg(&common.prefix)
            .arg("--first")
            .arg((common.first + process * per_process).to_string())
            .arg("--rate")
            .arg(common.rate.to_string())
            .arg("--connect-rate")
            .arg(common.connect_rate.to_string())
            .arg("--duration")
            .arg(humantime::format_duration(common.duration).to_string())
            .arg("--backoff-base")
            .arg(humantime::format_duration(common.backoff_base).to_string())
            .arg("--backoff-cap")
            .arg(humantime::format_duration(common.backoff_cap).to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(ca) = &common.ca {
            command.arg("--ca").arg(ca);
        }
        command
            .arg("--alarms-after")
            .arg(humantime::format_duration(common.alarms_after).to_string())
            .arg("--handshake-timeout")
            .arg(humantime::format_duration(common.handshake_timeout).to_string());
        if let Some(every) = common.heartbeat {
            command
                .arg("--heartbeat")
                .arg(humantime::format_duration(every).to_string());
        }
        for (flag, on) in [
            ("--resumption", common.resumption),
            ("--raw", common.raw),
            ("--brief-mix", common.brief_mix),
        ] {
            if on {
                command.arg(flag);
            }
        }
        let mut child = command.spawn().context("cannot start a fleet process")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let latest = Arc::clone(&latest);
        let slot = usize::try_from(process).unwrap_or(0);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(line) = serde_json::from_str::<Line>(&line) {
                    let mut latest = latest.lock().unwrap_or_else(|e| e.into_inner());
                    latest[slot] = (line.report, line.last);
                }
            }
        });
        children.push(child);
    }
    let progress_latest = Arc::clone(&latest);
    let progress = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(2));
        loop {
            ticker.tick().await;
            let reports: Vec<FleetReport> = progress_latest
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(report, _)| report.clone())
                .collect();
            let sum = FleetReport::combine(&reports);
            // The drops by how they ended and the failures by where, as "2 drops:read-error"
            // and "5 failures:tls", only those that happened.
            let by_name = |counts: &std::collections::BTreeMap<String, u64>, what: &str| {
                counts
                    .iter()
                    .map(|(name, n)| format!(", {n} {what}:{name}"))
                    .collect::<String>()
            };
            let drop_kinds = by_name(&sum.drop_kinds, "drops");
            let fail_stages = by_name(&sum.fail_stages, "failures");
            eprintln!(
                "fleet: {} connected, {} connects, {} failures, {} drops, {} heartbeats, {}/{} acknowledged, {} resumed, {} late (heartbeats 5 s or more behind), {} ms-latest{drop_kinds}{fail_stages}",
                sum.connected, sum.connects, sum.failures, sum.drops, sum.heartbeats, sum.alarms_acked, sum.alarms_sent, sum.resumed, sum.late_heartbeats, sum.latest_heartbeat_ms
            );
        }
    });
    for mut child in children {
        let status = child.wait().await.context("a fleet process failed")?;
        if !status.success() {
            eprintln!("tablet-fleet: a fleet process exited with {status}");
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    progress.abort();
    let reports: Vec<FleetReport> = latest
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(report, _)| report.clone())
        .collect();
    println!(
        "{}",
        serde_json::to_string(&FleetReport::combine(&reports))?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_period_below_100ms_or_unreadable_is_refused_with_the_reason() {
        assert_eq!(parse_heartbeat("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_heartbeat("2s"), Ok(Duration::from_secs(2)));
        let short = parse_heartbeat("10ms").unwrap_err();
        assert!(short.contains("at least 100ms"), "{short}");
        assert!(parse_heartbeat("often").is_err());
        let parsed =
            Cli::try_parse_from(["tablet-fleet", "run", "--count", "1", "--heartbeat", "5ms"]);
        assert!(parsed.is_err());
    }

    #[test]
    fn alarms_after_takes_a_duration_and_refuses_anything_else() {
        let parse = |after: &str| {
            Cli::try_parse_from([
                "tablet-fleet",
                "run",
                "--count",
                "1",
                "--alarms-after",
                after,
            ])
        };
        assert!(parse("5s").is_ok());
        let error = parse("soon")
            .expect_err("an unreadable duration is refused")
            .to_string();
        assert!(error.contains("--alarms-after"), "{error}");
    }

    #[test]
    fn the_handshake_timeout_defaults_to_the_firmwares_and_refuses_nonsense() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["tablet-fleet", "run", "--count", "1"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args).map(|cli| match cli.command {
                Command::Run(run) => run.common.handshake_timeout,
                Command::Launch { .. } => unreachable!("parsed as run"),
            })
        };
        assert_eq!(parse(&[]).unwrap(), firmware_sim::fleet::HANDSHAKE_TIMEOUT);
        assert_eq!(
            parse(&["--handshake-timeout", "10s"]).unwrap(),
            Duration::from_secs(10)
        );
        let error = parse(&["--handshake-timeout", "patiently"])
            .expect_err("an unreadable duration is refused")
            .to_string();
        assert!(error.contains("--handshake-timeout"), "{error}");
    }
}
