//! Fleet mode: many tablets in one process, each a lean task holding one TLS WebSocket link
//! (no channels, no driver task), with keys derived from a fleet seed so that no credentials
//! files are needed (`carebell admin fleet-provision` registers the same keys). Tablets
//! heartbeat, raise alarms at a Poisson rate drawn from the brief's call mix, acknowledge what
//! the server sends, and reconnect with full-jitter exponential backoff, or after the delay a
//! draining server's `GoAway` names. An alarm not yet acknowledged is kept and sent again on the
//! next link (same id: the server stores it once), as a real tablet does. Figures (connections,
//! heartbeats, alarm acknowledgement latency in an HDR histogram) are shared by all tablets.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carebell_proto::device::v1::{
    envelope::Body, Alarm, AlarmKind, CallRequest, Envelope, Heartbeat, Hello, Proof,
};
use carebell_proto::{auth_message, decode_envelope, encode_envelope, WS_SUBPROTOCOL};
use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// The key of fleet tablet `index`: SHA-256 of the seed and the index, as an Ed25519 seed.
pub fn fleet_signing_key(seed: &str, index: u64) -> SigningKey {
    let digest = Sha256::digest(format!("carebell-fleet/{seed}/{index}").as_bytes());
    SigningKey::from_bytes(&digest.into())
}

/// The device id of fleet tablet `index`.
pub fn fleet_device_id(prefix: &str, index: u64) -> String {
    format!("{prefix}-{index:07}")
}

/// Of all presses, the share that are SOS alarms (the brief's call mix: about 0.6%
/// emergencies; the rest are mostly accidental presses).
pub const EMERGENCY_SHARE: f64 = 0.006;

/// The firmware's wait for each phase of a connection the server has accepted (TLS, upgrade,
/// its answers), [`FleetConfig::handshake_timeout`]: longer than the gateway's queue for a
/// handshake slot (`device.handshake_queue_ms`, 50 s), so that a tablet in that queue is
/// served rather than retrying.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The gateway, e.g. 127.0.0.1:8443.
    pub server: SocketAddr,
    pub server_name: String,
    pub ca_pem: Option<String>,
    pub seed: String,
    pub prefix: String,
    pub first: u64,
    pub count: u64,
    /// Local addresses to connect from, tablet `k` from the `k % len`th (127.0.0.0/8 gives
    /// each address its own ephemeral ports); none: the system picks. See
    /// [`TABLETS_PER_SOURCE_ADDRESS`].
    pub source_ips: Vec<IpAddr>,
    /// Alarms per second per tablet (0: none).
    pub alarm_rate_per_tablet: f64,
    /// New connections per second while ramping up (0: all at once).
    pub connect_rate: u32,
    pub run_for: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Offer TLS session resumption: each tablet keeps its own tickets, as a real one does.
    pub resumption: bool,
    /// Only hold TLS WebSocket links, without the device protocol (for the floor program and
    /// other servers).
    pub raw: bool,
    /// Presses drawn from the brief's call mix (mostly calls, [`EMERGENCY_SHARE`] SOS) instead
    /// of SOS alarms only.
    pub brief_mix: bool,
    /// Heartbeat this often instead of at the interval the server asks for (the heartbeat
    /// benchmark loads one gateway process beyond what its file limit allows at 1 s).
    pub heartbeat: Option<Duration>,
    /// No alarm before this long after the fleet starts, so that the measured alarms come
    /// from a fleet that has finished connecting rather than from its own ramp.
    pub alarms_after: Duration,
    /// How long a tablet waits for its TLS handshake, then its WebSocket upgrade, then each of
    /// the server's answers (Challenge, Welcome; at least 15 s for those), before it gives up
    /// on the attempt. A server that has accepted the connection is up: a
    /// tablet that waits is served in turn, one that gives up early comes back as a new
    /// attempt, and in a reconnect storm those retries are most of the work.
    pub handshake_timeout: Duration,
}

fn next(
    ws_message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Option<Envelope> {
    received(ws_message).ok().flatten()
}

/// The envelope a WebSocket message holds (none for a ping or pong, which tungstenite
/// answers itself), or how the link ended instead.
fn received(
    ws_message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Option<Envelope>, DropKind> {
    if let Some(kind) = link_end(&ws_message) {
        return Err(kind);
    }
    match ws_message {
        Some(Ok(Message::Binary(bytes))) => decode_envelope(&bytes, 64 * 1024)
            .map(Some)
            .map_err(|_| DropKind::Undecodable),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(None),
        _ => Err(DropKind::Undecodable),
    }
}

/// How the link ended, if this is its end (a close, a failed read, the end of the stream).
fn link_end(
    ws_message: &Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Option<DropKind> {
    match ws_message {
        Some(Ok(Message::Close(_))) => Some(DropKind::ClosedByServer),
        Some(Ok(_)) => None,
        Some(Err(_)) => Some(DropKind::ReadError),
        None => Some(DropKind::EndedWithoutClose),
    }
}

/// How a link the tablet did not end came to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropKind {
    /// The server sent a WebSocket close.
    ClosedByServer,
    /// The stream ended with no close (the peer's socket closed, or a TLS close).
    EndedWithoutClose,
    /// Reading failed (a reset, a TLS or protocol error).
    ReadError,
    /// Sending failed.
    SendError,
    /// The server sent something that is not an envelope.
    Undecodable,
}

impl DropKind {
    pub const ALL: [DropKind; 5] = [
        DropKind::ClosedByServer,
        DropKind::EndedWithoutClose,
        DropKind::ReadError,
        DropKind::SendError,
        DropKind::Undecodable,
    ];

    /// Its name in reports and progress lines.
    pub fn name(self) -> &'static str {
        match self {
            DropKind::ClosedByServer => "closed-by-server",
            DropKind::EndedWithoutClose => "ended-without-close",
            DropKind::ReadError => "read-error",
            DropKind::SendError => "send-error",
            DropKind::Undecodable => "undecodable",
        }
    }
}

/// Where a connection attempt failed, before `Welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailStage {
    /// No socket, or the source address could not be bound.
    Socket,
    /// TCP `connect` failed (refused, reset) or took over 10 s.
    Connect,
    /// The TLS handshake failed or outlasted [`FleetConfig::handshake_timeout`].
    Tls,
    /// The WebSocket upgrade failed or outlasted the handshake timeout.
    Upgrade,
    /// No `Challenge` in time after `Hello` (the handshake timeout, at least 15 s), or
    /// something else instead.
    Challenge,
    /// No `Welcome` in time after `Proof`, or something else instead (a rejection).
    Welcome,
}

impl FailStage {
    pub const ALL: [FailStage; 6] = [
        FailStage::Socket,
        FailStage::Connect,
        FailStage::Tls,
        FailStage::Upgrade,
        FailStage::Challenge,
        FailStage::Welcome,
    ];

    /// Its name in reports and progress lines.
    pub fn name(self) -> &'static str {
        match self {
            FailStage::Socket => "socket",
            FailStage::Connect => "connect",
            FailStage::Tls => "tls",
            FailStage::Upgrade => "upgrade",
            FailStage::Challenge => "challenge",
            FailStage::Welcome => "welcome",
        }
    }
}

/// Live figures, shared by the fleet's tablets.
#[derive(Default)]
pub struct FleetStats {
    pub connected: AtomicU64,
    pub connects: AtomicU64,
    pub failures: AtomicU64,
    /// The failures by where they happened, in [`FailStage::ALL`]'s order.
    pub fail_stages: [AtomicU64; 6],
    pub drops: AtomicU64,
    /// The drops by how they ended, in [`DropKind::ALL`]'s order.
    pub drop_kinds: [AtomicU64; 5],
    pub heartbeats: AtomicU64,
    pub alarms_sent: AtomicU64,
    pub alarms_acked: AtomicU64,
    /// Alarms sent again on a new link because the old one ended before their acknowledgement.
    pub alarms_resent: AtomicU64,
    /// Alarms still unacknowledged when their tablet's run ended.
    pub alarms_unacked_at_end: AtomicU64,
    /// `GoAway`s received (a draining server).
    pub go_aways: AtomicU64,
    pub resumed: AtomicU64,
    /// Heartbeats sent [`LATE`] or more after their time: the fleet process itself was behind
    /// (a load generator short of CPU is late with every tablet it runs).
    pub late_heartbeats: AtomicU64,
    /// The most behind its time any heartbeat was sent, ms.
    pub latest_heartbeat_ms: AtomicU64,
    latency_us: Mutex<Option<Histogram<u64>>>,
}

/// A heartbeat sent this long after its time is counted as late.
pub const LATE: Duration = Duration::from_secs(5);

/// Tablets per source address at most, when a launcher spreads a process's tablets over
/// several (`tablet-fleet launch`).
///
/// Linux hands `connect` the even half of the ephemeral range first (14,116 ports of the
/// default 32768-60999) and, for each candidate, checks that the 4-tuple is unused. Past about
/// 14,000 links from one address to one server those checks walk the whole range for every
/// new link: a 100,000 ramp from six addresses put 16% of the machine's CPU in
/// `__inet_check_established` at 85,000, the fleet's heartbeats fell behind, and the gateways
/// cut 27,818 links for silence. At 4,000 an address, under a third of the even ports are in
/// use, TIME_WAIT included.
pub const TABLETS_PER_SOURCE_ADDRESS: u64 = 4_000;

/// The source addresses of each of `processes` processes of `per_process` tablets, in the
/// network `net` (the first three parts of a 127.0.0.0/8 address): process 0 from
/// `net.2`, `net.3`, ..., enough for [`TABLETS_PER_SOURCE_ADDRESS`] each, then process 1 from
/// the next ones. An error names what does not fit.
pub fn launch_source_addresses(
    net: &str,
    processes: u64,
    per_process: u64,
) -> Result<Vec<Vec<IpAddr>>, String> {
    let octets: Vec<Option<u8>> = net.split('.').map(|part| part.parse().ok()).collect();
    let [Some(127), Some(second), Some(third)] = octets[..] else {
        return Err(format!(
            "the source net must be three parts of a 127.0.0.0/8 address, like 127.0.3, not {net:?}"
        ));
    };
    let each = per_process.div_ceil(TABLETS_PER_SOURCE_ADDRESS).max(1);
    let needed = processes.saturating_mul(each);
    if processes == 0 || needed > 253 {
        return Err(format!(
            "{processes} processes of {per_process} tablets need {needed} source addresses \
             ({TABLETS_PER_SOURCE_ADDRESS} tablets each), and {net}.2 to {net}.254 has 253: \
             use 1 to {} processes",
            (253 / each).max(1)
        ));
    }
    // At most 253 addresses, so every last part is 2 to 254.
    let address = |n: u64| IpAddr::from([127, second, third, (2 + n) as u8]);
    Ok((0..processes)
        .map(|process| (0..each).map(|k| address(process * each + k)).collect())
        .collect())
}

impl FleetStats {
    fn record_heartbeat_lateness(&self, late: Duration) {
        if late >= LATE {
            self.late_heartbeats.fetch_add(1, Ordering::Relaxed);
        }
        let ms = u64::try_from(late.as_millis()).unwrap_or(u64::MAX);
        self.latest_heartbeat_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn record_latency(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut guard = self.latency_us.lock().unwrap_or_else(|e| e.into_inner());
        let histogram = guard.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
        });
        let _ = histogram.record(micros.min(60_000_000));
    }

    /// The figures now.
    pub fn report(&self) -> FleetReport {
        let guard = self.latency_us.lock().unwrap_or_else(|e| e.into_inner());
        let quantile = |q: f64| {
            guard
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        FleetReport {
            connected: self.connected.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            fail_stages: named_counts(FailStage::ALL.map(FailStage::name), &self.fail_stages),
            drops: self.drops.load(Ordering::Relaxed),
            drop_kinds: named_counts(DropKind::ALL.map(DropKind::name), &self.drop_kinds),
            heartbeats: self.heartbeats.load(Ordering::Relaxed),
            alarms_sent: self.alarms_sent.load(Ordering::Relaxed),
            alarms_acked: self.alarms_acked.load(Ordering::Relaxed),
            alarms_resent: self.alarms_resent.load(Ordering::Relaxed),
            alarms_unacked_at_end: self.alarms_unacked_at_end.load(Ordering::Relaxed),
            go_aways: self.go_aways.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
            late_heartbeats: self.late_heartbeats.load(Ordering::Relaxed),
            latest_heartbeat_ms: self.latest_heartbeat_ms.load(Ordering::Relaxed),
            alarm_ack_ms_p50: quantile(0.5),
            alarm_ack_ms_p99: quantile(0.99),
            alarm_ack_ms_p999: quantile(0.999),
            alarm_ack_ms_max: guard
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.max() as f64 / 1000.0),
        }
    }
}

/// What a fleet did, as JSON for the launcher and the benchmarks.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default, PartialEq)]
pub struct FleetReport {
    /// Links authenticated now.
    pub connected: u64,
    /// Successful authentications (first connections and reconnections).
    pub connects: u64,
    /// Connection attempts that failed before Welcome.
    pub failures: u64,
    /// The failures by where they happened ([`FailStage::name`]), those that happened.
    #[serde(default)]
    pub fail_stages: std::collections::BTreeMap<String, u64>,
    /// Links lost after Welcome.
    pub drops: u64,
    /// The drops by how they ended ([`DropKind::name`]), those that happened.
    #[serde(default)]
    pub drop_kinds: std::collections::BTreeMap<String, u64>,
    pub heartbeats: u64,
    /// Alarms raised (each counted once, however often it was sent).
    pub alarms_sent: u64,
    /// Alarms acknowledged (each once).
    pub alarms_acked: u64,
    #[serde(default)]
    pub alarms_resent: u64,
    #[serde(default)]
    pub alarms_unacked_at_end: u64,
    #[serde(default)]
    pub go_aways: u64,
    /// TLS handshakes that resumed a session.
    pub resumed: u64,
    /// Heartbeats sent [`LATE`] or more after their time.
    #[serde(default)]
    pub late_heartbeats: u64,
    /// The most behind its time any heartbeat was sent, ms.
    #[serde(default)]
    pub latest_heartbeat_ms: u64,
    pub alarm_ack_ms_p50: Option<f64>,
    pub alarm_ack_ms_p99: Option<f64>,
    pub alarm_ack_ms_p999: Option<f64>,
    pub alarm_ack_ms_max: Option<f64>,
}

/// The counts that are not zero, by name (`names[i]` names `counts[i]`).
fn named_counts<const N: usize>(
    names: [&str; N],
    counts: &[AtomicU64; N],
) -> std::collections::BTreeMap<String, u64> {
    names
        .iter()
        .zip(counts)
        .map(|(name, n)| ((*name).to_owned(), n.load(Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Counts by name, summed.
fn sum_by_name<'a>(
    counts: impl Iterator<Item = (&'a String, &'a u64)>,
) -> std::collections::BTreeMap<String, u64> {
    counts.fold(std::collections::BTreeMap::new(), |mut sum, (name, n)| {
        *sum.entry(name.clone()).or_insert(0) += n;
        sum
    })
}

impl FleetReport {
    /// Sums the counters of several fleets (latency quantiles cannot be summed: the launcher
    /// reports the worst of each).
    pub fn combine(reports: &[FleetReport]) -> FleetReport {
        let worst = |f: fn(&FleetReport) -> Option<f64>| {
            reports
                .iter()
                .filter_map(f)
                .fold(None, |acc: Option<f64>, v| {
                    Some(acc.map_or(v, |a| a.max(v)))
                })
        };
        FleetReport {
            connected: reports.iter().map(|r| r.connected).sum(),
            connects: reports.iter().map(|r| r.connects).sum(),
            failures: reports.iter().map(|r| r.failures).sum(),
            fail_stages: sum_by_name(reports.iter().flat_map(|r| &r.fail_stages)),
            drops: reports.iter().map(|r| r.drops).sum(),
            drop_kinds: sum_by_name(reports.iter().flat_map(|r| &r.drop_kinds)),
            heartbeats: reports.iter().map(|r| r.heartbeats).sum(),
            alarms_sent: reports.iter().map(|r| r.alarms_sent).sum(),
            alarms_acked: reports.iter().map(|r| r.alarms_acked).sum(),
            alarms_resent: reports.iter().map(|r| r.alarms_resent).sum(),
            alarms_unacked_at_end: reports.iter().map(|r| r.alarms_unacked_at_end).sum(),
            go_aways: reports.iter().map(|r| r.go_aways).sum(),
            resumed: reports.iter().map(|r| r.resumed).sum(),
            late_heartbeats: reports.iter().map(|r| r.late_heartbeats).sum(),
            latest_heartbeat_ms: reports
                .iter()
                .map(|r| r.latest_heartbeat_ms)
                .max()
                .unwrap_or(0),
            alarm_ack_ms_p50: worst(|r| r.alarm_ack_ms_p50),
            alarm_ack_ms_p99: worst(|r| r.alarm_ack_ms_p99),
            alarm_ack_ms_p999: worst(|r| r.alarm_ack_ms_p999),
            alarm_ack_ms_max: worst(|r| r.alarm_ack_ms_max),
        }
    }
}

struct Shared {
    config: FleetConfig,
    /// The fleet's TLS client configuration; with resumption, each tablet's copy has its own
    /// session cache.
    tls: Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
    stats: Arc<FleetStats>,
    deadline: Instant,
    /// The first alarm's earliest time (`FleetConfig::alarms_after`).
    alarms_from: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("bad fleet configuration: {0}")]
    Config(String),
}

/// The TLS client configuration of a fleet: trusting `ca_pem`, without resumption (each tablet
/// adds its own session cache when asked, see [`tablet_tls`]).
fn client_config(config: &FleetConfig) -> Result<rustls::ClientConfig, FleetError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = &config.ca_pem {
        for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let certificate = certificate.map_err(|e| FleetError::Config(e.to_string()))?;
            roots
                .add(certificate)
                .map_err(|e| FleetError::Config(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FleetError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    client.resumption = rustls::client::Resumption::disabled();
    Ok(client)
}

/// One tablet's TLS connector. With resumption, the tablet keeps its own tickets, as a real one
/// does: a fleet-wide cache would hold only a few tickets per server name (rustls keeps 8), so
/// most of a storm's reconnections would find none.
fn tablet_tls(shared: &Shared) -> tokio_rustls::TlsConnector {
    if !shared.config.resumption {
        return tokio_rustls::TlsConnector::from(Arc::clone(&shared.tls));
    }
    let mut config = (*shared.tls).clone();
    config.resumption = rustls::client::Resumption::store(Arc::new(
        rustls::client::ClientSessionMemoryCache::new(2),
    ));
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Runs the fleet until `config.run_for` has passed; returns the shared figures (live while it
/// runs, through `stats`).
pub async fn run_fleet(
    config: FleetConfig,
    stats: Arc<FleetStats>,
) -> Result<FleetReport, FleetError> {
    let client = client_config(&config)?;
    let server_name = rustls::pki_types::ServerName::try_from(config.server_name.clone())
        .map_err(|e| FleetError::Config(e.to_string()))?;
    let shared = Arc::new(Shared {
        tls: Arc::new(client),
        server_name,
        stats: Arc::clone(&stats),
        deadline: Instant::now() + config.run_for,
        alarms_from: Instant::now() + config.alarms_after,
        config,
    });
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for offset in 0..shared.config.count {
        if shared.config.connect_rate > 0 {
            let at = start
                + Duration::from_secs_f64(offset as f64 / f64::from(shared.config.connect_rate));
            tokio::time::sleep_until(at).await;
        }
        let shared = Arc::clone(&shared);
        tasks.spawn(async move {
            tablet(shared, offset).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(stats.report())
}

/// One tablet: connect, run, reconnect with full jitter until the deadline.
async fn tablet(shared: Arc<Shared>, offset: u64) {
    let index = shared.config.first + offset;
    let key = fleet_signing_key(&shared.config.seed, index);
    let device_id = fleet_device_id(&shared.config.prefix, index);
    let mut attempt: u32 = 0;
    let mut pending = VecDeque::new();
    let tls = tablet_tls(&shared);
    let sources = &shared.config.source_ips;
    let source = (!sources.is_empty())
        .then(|| sources[usize::try_from(offset).unwrap_or(0) % sources.len()]);
    while Instant::now() < shared.deadline {
        match session(&shared, &tls, source, &key, &device_id, &mut pending).await {
            Outcome::Done => break,
            Outcome::Failed(stage) => {
                shared.stats.failures.fetch_add(1, Ordering::Relaxed);
                shared.stats.fail_stages[stage as usize].fetch_add(1, Ordering::Relaxed);
                attempt = attempt.saturating_add(1);
            }
            Outcome::Dropped(kind) => {
                shared.stats.drops.fetch_add(1, Ordering::Relaxed);
                shared.stats.drop_kinds[kind as usize].fetch_add(1, Ordering::Relaxed);
                attempt = 1;
            }
            Outcome::GoAway(after) => {
                // The server chose when: a drain spreads its tablets over its window. An alarm
                // still unacknowledged does not wait for that: it goes to another node now.
                shared.stats.go_aways.fetch_add(1, Ordering::Relaxed);
                attempt = 0;
                let after = if pending.is_empty() {
                    after
                } else {
                    Duration::ZERO
                };
                tokio::time::sleep_until((Instant::now() + after).min(shared.deadline)).await;
                continue;
            }
        }
        // Full jitter: anywhere between 0 and the exponential ceiling.
        let ceiling = shared
            .config
            .backoff_base
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(shared.config.backoff_cap);
        let pause = rand::thread_rng().gen_range(Duration::ZERO..=ceiling);
        tokio::time::sleep_until((Instant::now() + pause).min(shared.deadline)).await;
    }
    shared
        .stats
        .alarms_unacked_at_end
        .fetch_add(pending.len() as u64, Ordering::Relaxed);
}

/// An alarm or call request raised and not yet acknowledged: sent again on every new link
/// until it is.
struct Pending {
    body: Body,
    raised: Instant,
}

enum Outcome {
    /// The run is over.
    Done,
    /// Could not connect or authenticate.
    Failed(FailStage),
    /// Was connected, then lost the link.
    Dropped(DropKind),
    /// The server is draining: come back after this.
    GoAway(Duration),
}

/// Binds `socket` to the source address `ip`, leaving its port to `connect`
/// (`IP_BIND_ADDRESS_NO_PORT`).
///
/// A plain `bind` to port 0 reserves a port at once, and to find a free one the kernel walks
/// the address's bound ports: with 18,000 links from one address, each new link's `bind` cost
/// more than its TLS handshake. A profile of a 100,000 ramp put two thirds of the fleet
/// processes' CPU in `inet_bhash2_conflict` and its neighbours, and the fleet took 1.35 of
/// the machine's 2 cores. With the option, `connect` picks the port by the whole 4-tuple.
/// The option is Linux's; elsewhere the fleet binds as before.
fn bind_source(socket: &TcpSocket, ip: IpAddr) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
        setsockopt(socket, IpBindAddressNoPort, &true)?;
    }
    socket.bind(SocketAddr::new(ip, 0))
}

fn envelope(seq: u64, ack: u64, body: Option<Body>) -> Message {
    Message::Binary(encode_envelope(&Envelope { seq, ack, body }).into())
}

async fn session(
    shared: &Shared,
    tls: &tokio_rustls::TlsConnector,
    source: Option<IpAddr>,
    key: &SigningKey,
    device_id: &str,
    pending: &mut VecDeque<Pending>,
) -> Outcome {
    let config = &shared.config;
    let socket = match TcpSocket::new_v4() {
        Ok(socket) => socket,
        Err(_) => return Outcome::Failed(FailStage::Socket),
    };
    if let Some(ip) = source {
        if bind_source(&socket, ip).is_err() {
            return Outcome::Failed(FailStage::Socket);
        }
    }
    let tcp =
        match tokio::time::timeout(Duration::from_secs(10), socket.connect(config.server)).await {
            Ok(Ok(tcp)) => tcp,
            _ => return Outcome::Failed(FailStage::Connect),
        };
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(
        config.handshake_timeout,
        tls.connect(shared.server_name.clone(), tcp),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        _ => return Outcome::Failed(FailStage::Tls),
    };
    if matches!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    ) {
        shared.stats.resumed.fetch_add(1, Ordering::Relaxed);
    }
    let Ok(mut request) = format!("wss://{}/", config.server_name).into_client_request() else {
        return Outcome::Failed(FailStage::Upgrade);
    };
    if !config.raw {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(WS_SUBPROTOCOL),
        );
    }
    // The same small buffers as the gateway: memory per link is the point of fleet mode.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(64 * 1024));
    let mut ws = match tokio::time::timeout(
        config.handshake_timeout,
        tokio_tungstenite::client_async_with_config(request, tls, Some(ws_config)),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        _ => return Outcome::Failed(FailStage::Upgrade),
    };

    if config.raw {
        shared.stats.connects.fetch_add(1, Ordering::Relaxed);
        shared.stats.connected.fetch_add(1, Ordering::Relaxed);
        let outcome = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(shared.deadline) => break Outcome::Done,
                incoming = ws.next() => if let Some(kind) = link_end(&incoming) {
                    break Outcome::Dropped(kind);
                },
            }
        };
        shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
        let _ = ws.close(None).await;
        return outcome;
    }

    // Hello → Challenge → Proof → Welcome.
    let hello = Body::Hello(Hello {
        device_id: device_id.to_owned(),
        protocol_versions: vec![1],
        firmware_version: "fleet".to_owned(),
    });
    if ws.send(envelope(1, 0, Some(hello))).await.is_err() {
        return Outcome::Failed(FailStage::Challenge);
    }
    let mut last_received = 0;
    // The answers to Hello and Proof wait on the server's database: at least 15 s each.
    let answer_timeout = config.handshake_timeout.max(Duration::from_secs(15));
    let challenge = match tokio::time::timeout(answer_timeout, ws.next()).await {
        Ok(message) => next(message),
        Err(_) => None,
    };
    let Some(Envelope {
        seq,
        body: Some(Body::Challenge(challenge)),
        ..
    }) = challenge
    else {
        return Outcome::Failed(FailStage::Challenge);
    };
    last_received = last_received.max(seq);
    let signature = key.sign(&auth_message(device_id, &challenge.nonce));
    let proof = Body::Proof(Proof {
        signature: signature.to_bytes().to_vec(),
    });
    if ws
        .send(envelope(2, last_received, Some(proof)))
        .await
        .is_err()
    {
        return Outcome::Failed(FailStage::Welcome);
    }
    let welcome = match tokio::time::timeout(answer_timeout, ws.next()).await {
        Ok(message) => next(message),
        Err(_) => None,
    };
    let Some(Envelope {
        seq,
        body: Some(Body::Welcome(welcome)),
        ..
    }) = welcome
    else {
        return Outcome::Failed(FailStage::Welcome);
    };
    last_received = last_received.max(seq);
    shared.stats.connects.fetch_add(1, Ordering::Relaxed);
    shared.stats.connected.fetch_add(1, Ordering::Relaxed);

    let heartbeat = config.heartbeat.unwrap_or_else(|| {
        Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(1000)))
    });
    // The first heartbeat at a random point of the interval, so a fleet does not beat in step.
    let mut next_heartbeat =
        Instant::now() + rand::thread_rng().gen_range(Duration::ZERO..heartbeat);
    let next_alarm = |rate: f64| -> Instant {
        if rate <= 0.0 {
            return shared.deadline + Duration::from_secs(3600);
        }
        let uniform: f64 = rand::thread_rng().gen_range(f64::EPSILON..1.0);
        Instant::now().max(shared.alarms_from)
            + Duration::from_secs_f64((-uniform.ln() / rate).min(86_400.0))
    };
    let mut alarm_at = next_alarm(config.alarm_rate_per_tablet);
    let mut seq: u64 = 2;
    // The sequence numbers this link gave `pending`'s entries, in the same order.
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    for entry in pending.iter() {
        seq += 1;
        if ws
            .send(envelope(seq, last_received, Some(entry.body.clone())))
            .await
            .is_err()
        {
            shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
            return Outcome::Dropped(DropKind::SendError);
        }
        in_flight.push_back(seq);
        shared.stats.alarms_resent.fetch_add(1, Ordering::Relaxed);
    }
    let outcome = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(shared.deadline) => break Outcome::Done,
            _ = tokio::time::sleep_until(next_heartbeat) => {
                shared
                    .stats
                    .record_heartbeat_lateness(Instant::now().saturating_duration_since(next_heartbeat));
                seq += 1;
                let body = Body::Heartbeat(Heartbeat { battery_percent: 90 });
                if ws.send(envelope(seq, last_received, Some(body))).await.is_err() {
                    break Outcome::Dropped(DropKind::SendError);
                }
                shared.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                next_heartbeat += heartbeat;
            }
            _ = tokio::time::sleep_until(alarm_at) => {
                seq += 1;
                let sos = !config.brief_mix || rand::thread_rng().gen_bool(EMERGENCY_SHARE);
                let id = uuid::Uuid::new_v4().simple().to_string();
                let body = if sos {
                    Body::Alarm(Alarm {
                        alarm_id: id,
                        kind: AlarmKind::Sos as i32,
                        raised_at_ms: 0,
                        detail: String::new(),
                    })
                } else {
                    Body::CallRequest(CallRequest { request_id: id, pressed_at_ms: 0 })
                };
                pending.push_back(Pending { body: body.clone(), raised: Instant::now() });
                shared.stats.alarms_sent.fetch_add(1, Ordering::Relaxed);
                alarm_at = next_alarm(config.alarm_rate_per_tablet);
                if ws.send(envelope(seq, last_received, Some(body))).await.is_err() {
                    break Outcome::Dropped(DropKind::SendError);
                }
                in_flight.push_back(seq);
            }
            incoming = ws.next() => {
                let envelope_in = match received(incoming) {
                    Ok(Some(envelope_in)) => envelope_in,
                    Ok(None) => continue,
                    Err(kind) => break Outcome::Dropped(kind),
                };
                while in_flight.front().is_some_and(|sent| *sent <= envelope_in.ack) {
                    in_flight.pop_front();
                    if let Some(entry) = pending.pop_front() {
                        shared.stats.record_latency(entry.raised.elapsed());
                        shared.stats.alarms_acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Some(Body::GoAway(go_away)) = &envelope_in.body {
                    break Outcome::GoAway(Duration::from_millis(u64::from(go_away.reconnect_after_ms)));
                }
                if envelope_in.seq > 0 {
                    last_received = last_received.max(envelope_in.seq);
                    // A pure acknowledgement of what the server sent (call updates).
                    if ws.send(envelope(0, last_received, None)).await.is_err() {
                        break Outcome::Dropped(DropKind::SendError);
                    }
                }
            }
        }
    };
    shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
    let _ = ws.close(None).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_later_than_five_seconds_are_counted_and_the_latest_kept() {
        let stats = FleetStats::default();
        for ms in [0, 4_999, 5_000, 12_345, 300] {
            stats.record_heartbeat_lateness(Duration::from_millis(ms));
        }
        let report = stats.report();
        assert_eq!(
            (report.late_heartbeats, report.latest_heartbeat_ms),
            (2, 12_345)
        );
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn a_source_address_is_bound_without_reserving_a_port_until_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        bind_source(&socket, "127.0.0.7".parse().unwrap()).unwrap();
        // A plain bind to port 0 would have reserved one already.
        assert_eq!(
            socket.local_addr().unwrap(),
            "127.0.0.7:0".parse::<SocketAddr>().unwrap()
        );
        let stream = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let local = stream.local_addr().unwrap();
        assert_eq!(local.ip(), "127.0.0.7".parse::<IpAddr>().unwrap());
        assert_ne!(local.port(), 0, "connect picked the port");
    }

    #[test]
    fn a_launch_gives_each_process_its_own_addresses_enough_for_its_tablets() {
        let ips =
            |text: &[&str]| -> Vec<IpAddr> { text.iter().map(|t| t.parse().unwrap()).collect() };
        let plan = launch_source_addresses("127.9.3", 3, 16_667).unwrap();
        assert_eq!(plan.len(), 3);
        assert_eq!(
            plan[0],
            ips(&[
                "127.9.3.2",
                "127.9.3.3",
                "127.9.3.4",
                "127.9.3.5",
                "127.9.3.6"
            ])
        );
        assert_eq!(plan[2][4], "127.9.3.16".parse::<IpAddr>().unwrap());
        assert_eq!(
            launch_source_addresses("127.0.0", 2, 10).unwrap(),
            vec![ips(&["127.0.0.2"]), ips(&["127.0.0.3"])]
        );
        // 51 processes of 16,667 need 255 addresses: more than a net has.
        let refused = launch_source_addresses("127.0.0", 51, 16_667).unwrap_err();
        assert!(refused.contains("need 255 source addresses"), "{refused}");
        assert!(refused.contains("use 1 to 50 processes"), "{refused}");
        for bad in ["10.0.0", "127.0", "127.0.300", "127.a.0"] {
            assert!(launch_source_addresses(bad, 1, 1).is_err(), "{bad}");
        }
        assert!(launch_source_addresses("127.0.0", 0, 1).is_err());
    }

    #[test]
    fn fleet_keys_and_ids_are_deterministic_and_distinct() {
        let a = fleet_signing_key("seed", 1);
        assert_eq!(a.to_bytes(), fleet_signing_key("seed", 1).to_bytes());
        assert_ne!(a.to_bytes(), fleet_signing_key("seed", 2).to_bytes());
        assert_ne!(a.to_bytes(), fleet_signing_key("other", 1).to_bytes());
        assert_eq!(fleet_device_id("fleet", 42), "fleet-0000042");
    }

    #[test]
    fn a_link_that_ends_says_how_and_a_ping_is_not_an_end() {
        use tokio_tungstenite::tungstenite::Error;
        let ended = |message| received(message).err();
        assert_eq!(received(Some(Ok(Message::Ping(vec![1].into())))), Ok(None));
        assert_eq!(
            ended(Some(Ok(Message::Close(None)))),
            Some(DropKind::ClosedByServer)
        );
        assert_eq!(ended(None), Some(DropKind::EndedWithoutClose));
        assert_eq!(
            ended(Some(Err(Error::ConnectionClosed))),
            Some(DropKind::ReadError)
        );
        assert_eq!(
            ended(Some(Ok(Message::Binary(vec![0xff, 0xff].into())))),
            Some(DropKind::Undecodable)
        );
        let stats = FleetStats::default();
        stats.drop_kinds[DropKind::ReadError as usize].fetch_add(2, Ordering::Relaxed);
        assert_eq!(
            stats.report().drop_kinds,
            [("read-error".to_owned(), 2)].into(),
            "only the kinds that happened are reported"
        );
        stats.fail_stages[FailStage::Tls as usize].fetch_add(3, Ordering::Relaxed);
        assert_eq!(
            stats.report().fail_stages,
            [("tls".to_owned(), 3)].into(),
            "only the stages that happened are reported"
        );
    }

    #[test]
    fn reports_combine_by_summing_counts_and_keeping_the_worst_latency() {
        let one = FleetReport {
            connected: 3,
            drops: 3,
            drop_kinds: [("read-error".to_owned(), 2), ("send-error".to_owned(), 1)].into(),
            failures: 2,
            fail_stages: [("tls".to_owned(), 2)].into(),
            alarms_acked: 5,
            late_heartbeats: 2,
            latest_heartbeat_ms: 7_000,
            alarm_ack_ms_p99: Some(4.0),
            ..FleetReport::default()
        };
        let two = FleetReport {
            connected: 4,
            drops: 1,
            drop_kinds: [("read-error".to_owned(), 1)].into(),
            failures: 4,
            fail_stages: [("tls".to_owned(), 1), ("welcome".to_owned(), 3)].into(),
            alarms_acked: 1,
            late_heartbeats: 1,
            latest_heartbeat_ms: 9_000,
            alarm_ack_ms_p99: Some(9.0),
            ..FleetReport::default()
        };
        let both = FleetReport::combine(&[one, two]);
        assert_eq!((both.connected, both.alarms_acked), (7, 6));
        assert_eq!(both.drops, 4);
        assert_eq!(
            both.drop_kinds,
            [("read-error".to_owned(), 3), ("send-error".to_owned(), 1)].into()
        );
        assert_eq!(both.failures, 6);
        assert_eq!(
            both.fail_stages,
            [("tls".to_owned(), 3), ("welcome".to_owned(), 3)].into()
        );
        assert_eq!((both.late_heartbeats, both.latest_heartbeat_ms), (3, 9_000));
        assert_eq!(both.alarm_ack_ms_p99, Some(9.0));
        assert_eq!(both.alarm_ack_ms_p50, None);
    }
}
