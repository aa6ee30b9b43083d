//! `tablet-sim`: one simulated tablet from a credentials file, driven by a short script, printing
//! what the tablet would show.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use carebell_proto::device::v1::CallState;
use clap::Parser;
use firmware_sim::{Credentials, Tablet, TabletConfig, TabletEvent, TransportKind};

/// One simulated Carebell tablet.
///
/// Steps run in order:
///   press            short press (asks for a call)
///   long-press       long press (SOS alarm)
///   cancel           cancel the last call request
///   wait:STATE       wait until the last call is queued|ringing|answered|ended|abandoned
///   sleep:DURATION   stay connected (heartbeating) for a while, e.g. sleep:5s
///   idle             stay connected until Ctrl-C, printing what arrives
#[derive(Parser, Debug)]
#[command(name = "tablet-sim", verbatim_doc_comment)]
struct Args {
    /// The credentials file written by `carebell admin provision-device` (or by `--enrol`).
    #[arg(long, short)]
    credentials: PathBuf,
    /// Enrol first, with the installer's one-time code (`carebell admin enrolment-code`): a key
    /// is generated here, registered, and written with the device id to `--credentials` (which
    /// must not exist yet).
    #[arg(long, value_name = "CODE")]
    enrol: Option<String>,
    /// With --enrol: the gateway's gRPC address.
    #[arg(long, default_value = "https://localhost:8444")]
    grpc_url: String,
    /// With --enrol: the gateway's WebSocket address.
    #[arg(long, default_value = "wss://localhost:8443/")]
    websocket_url: String,
    /// With --enrol: PEM of the CA to trust (a private or development CA).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Use the gRPC transport instead of WebSocket.
    #[arg(long)]
    grpc: bool,
    /// Where unacknowledged alarms and requests are kept across restarts of this simulator
    /// (default: the credentials file's name with `.pending.json`).
    #[arg(long)]
    pending: Option<PathBuf>,
    /// How long `wait:` steps wait before giving up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    wait_timeout: Duration,
    /// The script.
    #[arg(default_values_t = ["press".to_owned(), "wait:ended".to_owned()])]
    steps: Vec<String>,
}

fn parse_state(name: &str) -> anyhow::Result<CallState> {
    Ok(match name {
        "queued" => CallState::Queued,
        "ringing" => CallState::Ringing,
        "answered" => CallState::Answered,
        "ended" => CallState::Ended,
        "abandoned" => CallState::Abandoned,
        other => bail!("unknown call state '{other}'"),
    })
}

fn show(event: &TabletEvent) {
    match event {
        TabletEvent::CallUpdate(update) => {
            let state = CallState::try_from(update.state).unwrap_or(CallState::Unspecified);
            match state {
                CallState::Answered => {
                    println!("[tablet] answered by {}", update.operator_display_name)
                }
                CallState::Ended => println!("[tablet] call ended ({})", update.reason),
                other => println!(
                    "[tablet] call {}",
                    other
                        .as_str_name()
                        .trim_start_matches("CALL_STATE_")
                        .to_lowercase()
                ),
            }
        }
        TabletEvent::OrderUpdate(update) => println!(
            "[tablet] order {}: {} / {}",
            update.state, update.text_zh, update.text_en
        ),
        TabletEvent::Notice(notice) => {
            println!("[tablet] notice from {}: {}", notice.from, notice.text)
        }
        TabletEvent::Reminder(reminder) => println!(
            "[tablet] {} (attempt {}): {} [confirm: {}]",
            reminder.kind, reminder.attempt, reminder.title, reminder.occurrence_id
        ),
        TabletEvent::Content(item) => {
            println!("[tablet] {} from the station: {}", item.kind, item.title)
        }
        TabletEvent::RtcSignal(signal) => println!("[tablet] voice signal: {}", signal.kind),
        TabletEvent::Error(error) => {
            println!("[tablet] server error {}: {}", error.code, error.message)
        }
        TabletEvent::GoAway(go_away) => println!(
            "[tablet] server going away; reconnect in {} ms",
            go_away.reconnect_after_ms
        ),
        TabletEvent::Closed { reason, .. } => println!("[tablet] disconnected: {reason}"),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(error) = run(args).await {
        eprintln!("tablet-sim: {error:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(code) = &args.enrol {
        let ca = match &args.ca {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("failed to read the CA {}", path.display()))?,
            ),
            None => None,
        };
        let credentials = firmware_sim::enrol(
            &args.grpc_url,
            &args.websocket_url,
            ca.as_deref(),
            "localhost",
            code,
        )
        .await
        .context("enrolment failed")?;
        credentials
            .save_new(&args.credentials)
            .context("failed to write the credentials")?;
        println!(
            "[tablet] enrolled as {}; credentials in {}",
            credentials.device_id,
            args.credentials.display()
        );
    }
    let credentials =
        Credentials::load(&args.credentials).context("failed to load the credentials")?;
    let transport = if args.grpc {
        TransportKind::Grpc
    } else {
        TransportKind::WebSocket
    };
    let mut config = TabletConfig::new(credentials, transport);
    let pending_path = args
        .pending
        .clone()
        .unwrap_or_else(|| args.credentials.with_extension("pending.json"));
    let pending = firmware_sim::PendingStore::open(&pending_path)
        .with_context(|| format!("failed to open the pending file {}", pending_path.display()))?;
    let n_pending = pending.bodies().len();
    if n_pending > 0 {
        println!(
            "[tablet] resending {n_pending} unacknowledged message(s) from {}",
            pending_path.display()
        );
    }
    config.pending = Some(pending);
    let mut tablet = Tablet::connect(&config)
        .await
        .context("failed to connect")?;
    println!(
        "[tablet] connected as {} (heartbeat every {} ms)",
        config.credentials.device_id,
        tablet.welcome().heartbeat_interval_ms
    );
    let mut last_request: Option<String> = None;
    for step in &args.steps {
        match step.split_once(':') {
            None if step == "press" => {
                let request_id = tablet.press().await.context("failed to press")?;
                println!("[tablet] pressed (request {request_id})");
                last_request = Some(request_id);
            }
            None if step == "long-press" => {
                let alarm_id = tablet
                    .long_press()
                    .await
                    .context("failed to raise the alarm")?;
                println!("[tablet] SOS raised (alarm {alarm_id})");
                last_request = Some(format!("alarm:{alarm_id}"));
            }
            None if step == "cancel" => {
                let Some(request_id) = &last_request else {
                    bail!("cancel: nothing was pressed")
                };
                tablet
                    .cancel(request_id)
                    .await
                    .context("failed to cancel")?;
                println!("[tablet] cancelled");
            }
            None if step == "idle" => loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    event = tablet.next_event(Duration::from_secs(3600)) => match event {
                        Some(event) => show(&event),
                        None => break,
                    },
                }
            },
            Some(("wait", state)) => {
                let Some(request_id) = &last_request else {
                    bail!("wait: nothing was pressed")
                };
                let state = parse_state(state)?;
                let deadline = tokio::time::Instant::now() + args.wait_timeout;
                loop {
                    let Some(event) = tablet
                        .next_event(deadline.saturating_duration_since(tokio::time::Instant::now()))
                        .await
                    else {
                        bail!(
                            "timed out waiting for the call to become {}",
                            state.as_str_name()
                        );
                    };
                    show(&event);
                    if let TabletEvent::Closed { .. } = event {
                        bail!("disconnected while waiting");
                    }
                    if matches!(&event, TabletEvent::CallUpdate(update) if &update.request_id == request_id && update.state == state as i32)
                    {
                        break;
                    }
                }
            }
            Some(("sleep", duration)) => {
                let duration = humantime::parse_duration(duration)
                    .with_context(|| format!("bad duration in '{step}'"))?;
                let deadline = tokio::time::Instant::now() + duration;
                while let Some(event) = tablet
                    .next_event(deadline.saturating_duration_since(tokio::time::Instant::now()))
                    .await
                {
                    show(&event);
                }
            }
            _ => bail!("unknown step '{step}' (see --help)"),
        }
    }
    tablet.close().await;
    Ok(())
}
