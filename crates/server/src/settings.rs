//! Configuration: defaults, then an optional TOML file, then `CAREBELL_` environment variables
//! (`__` between nested keys, e.g. `CAREBELL_DISPATCH__RING_TIMEOUT_MS`). Validated before any
//! port is bound; `main` exits with 64 (EX_USAGE) when it is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A secret string: usable, never printed.
#[derive(Clone, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// This node's name in presence and logs.
    pub node_id: String,
    /// `postgres://...`; may contain a password, so it is a secret.
    pub database_url: Secret,
    pub database_max_connections: u32,
    /// The role the application works as (`SET ROLE` on every connection): it owns nothing and
    /// cannot alter the audit log. Empty: work as the user in `database_url` (for a login role
    /// that is itself the application's role).
    pub database_app_role: String,
    /// Where migrations run, as the schema's owner (default: `database_url`).
    pub database_migrate_url: Option<Secret>,
    /// Without it, presence is kept in memory and only one node may run.
    pub redis_url: Option<Secret>,
    pub redis_key_prefix: String,
    /// Plaintext WebSocket and gRPC. Only for development behind a trusted proxy.
    pub insecure: bool,
    /// Apply migrations when `serve` starts.
    pub run_migrations: bool,
    pub log_format: LogFormat,
    pub shutdown_grace_ms: u64,
    /// After SIGTERM, how long the node still serves while reporting not-ready, so that load
    /// balancers take it out before its devices are told to go away. Part of the grace.
    pub shutdown_notice_ms: u64,
    pub listen: ListenSettings,
    pub tls: TlsSettings,
    pub device: DeviceSection,
    pub dispatch: DispatchSection,
    pub console: ConsoleSection,
    pub presence: PresenceSection,
    pub webhook: WebhookSection,
    pub webrtc: WebRtcSection,
}

/// Voice between the browser console and the tablet.
#[derive(Debug, Clone, Deserialize)]
pub struct WebRtcSection {
    /// STUN and TURN servers handed to the browsers (`deploy/turnserver.conf` is an example
    /// TURN server). Empty: direct connections only (enough on one network).
    #[serde(default)]
    pub ice_servers: Vec<carebell_gateway::web::IceServer>,
}

/// The outbound webhook for SMS or messaging gateways (off without a URL).
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSection {
    pub url: Option<String>,
    /// The HMAC-SHA256 key the gateway checks signatures with.
    pub secret: Option<Secret>,
    /// PEM roots to trust for an https URL.
    pub ca_path: Option<PathBuf>,
    pub max_attempts: u32,
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListenSettings {
    pub websocket: SocketAddr,
    pub grpc: SocketAddr,
    /// The browser pages (/console, /family, /provider, /tablet) and their JSON API.
    pub web: SocketAddr,
    /// Plain HTTP: `/metrics` (Prometheus), `/livez` and `/readyz` (probes).
    pub metrics: SocketAddr,
    pub backlog: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TlsSettings {
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    /// How often the certificate files are checked for a renewal (picked up without a
    /// restart).
    pub reload_interval_ms: u64,
    /// The provisioning CA (PEM) whose client certificates devices may present (mutual TLS on
    /// the device listeners). Unset: devices present none.
    pub client_ca_path: Option<PathBuf>,
    /// TLS 1.3 session ticket keys shared by the node's processes (one 64-hex-character key
    /// per line, the first seals): a tablet resumes its session with a restarted process.
    /// Unset: each process makes its own key.
    pub ticket_key_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeviceSection {
    pub heartbeat_interval_ms: u64,
    pub max_frame_bytes: usize,
    pub handshake_timeout_ms: u64,
    pub go_away_window_ms: u64,
    /// A device not heard for two heartbeat intervals plus this raises "device offline", and
    /// its link is closed.
    pub offline_grace_ms: u64,
    /// TLS handshakes and WebSocket upgrades in progress at once (admission control).
    pub max_concurrent_handshakes: usize,
    /// How long an accepted connection may wait for one of those slots.
    pub handshake_queue_ms: u64,
    /// Of those, at most this many from one source address (0: no limit).
    pub max_handshakes_per_address: usize,
    /// A device's message rate (average per second, and burst) before it is cut off.
    pub max_messages_per_second: f64,
    pub message_burst: f64,
    /// Device connections one process holds at most; 0: the open-file limit less 1,000 (for
    /// the database pool, listeners, consoles and logs).
    pub max_connections: usize,
    /// Every device must present a client certificate from `tls.client_ca_path`.
    pub require_client_certificate: bool,
    /// Device work done in one statement or transaction at most (group commit of alarms, key
    /// lookups and arrivals), and such batches in flight at once per process and kind.
    pub batch_max: usize,
    pub batches_in_flight: usize,
    /// PostgreSQL connections kept for device alarms alone, beside `database_max_connections`,
    /// so an alarm never queues for a connection behind a reconnect storm's arrivals (0:
    /// alarms share the pool).
    pub alarm_connections: u32,
    /// PostgreSQL connections kept for the device sessions' batches (key lookups, arrivals,
    /// outbox reads and acknowledgements) and the last-seen writes, beside the others (0: they
    /// share the pool).
    pub session_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DispatchSection {
    pub ring_timeout_ms: u64,
    pub sweep_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConsoleSection {
    pub session_ttl_secs: u64,
    /// Requests one signed-in session (console, family, provider) may make per second on
    /// average and at once, per node.
    pub max_requests_per_second: f64,
    pub request_burst: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PresenceSection {
    pub refresh_interval_ms: u64,
    pub redis_timeout_ms: u64,
}

/// The settings that have no default (unset unless configured), dotted.
pub const OPTIONAL_SETTINGS: &[&str] = &[
    "database_migrate_url",
    "redis_url",
    "tls.cert_path",
    "tls.key_path",
    "tls.client_ca_path",
    "tls.ticket_key_path",
    "webhook.url",
    "webhook.secret",
    "webhook.ca_path",
];

/// Every default, as TOML (docs/configuration.md describes each key).
pub const DEFAULTS: &str = r#"
node_id = "carebell-1"
database_url = "postgres://postgres@127.0.0.1:5432/carebell"
database_max_connections = 20
database_app_role = "carebell_app"
redis_key_prefix = "carebell:"
insecure = false
run_migrations = true
log_format = "pretty"
shutdown_grace_ms = 10000
shutdown_notice_ms = 2000

[listen]
websocket = "0.0.0.0:8443"
grpc = "0.0.0.0:8444"
web = "0.0.0.0:8445"
metrics = "0.0.0.0:9464"
backlog = 4096

[tls]
reload_interval_ms = 10000

[device]
heartbeat_interval_ms = 30000
max_frame_bytes = 65536
handshake_timeout_ms = 10000
go_away_window_ms = 30000
offline_grace_ms = 15000
max_concurrent_handshakes = 256
handshake_queue_ms = 50000
max_handshakes_per_address = 32
max_messages_per_second = 20.0
message_burst = 60.0
max_connections = 0
require_client_certificate = false
batch_max = 256
batches_in_flight = 2
alarm_connections = 2
session_connections = 4

[dispatch]
ring_timeout_ms = 20000
sweep_interval_ms = 250

[console]
session_ttl_secs = 43200
max_requests_per_second = 20.0
request_burst = 100.0

[presence]
refresh_interval_ms = 10000
redis_timeout_ms = 500

[webrtc]
ice_servers = []

[webhook]
max_attempts = 5
base_backoff_ms = 1000
max_backoff_ms = 60000
timeout_ms = 5000
"#;

impl Settings {
    /// Defaults, then `file` (if given), then the environment; validated.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let settings = Self::load_unvalidated(file)?;
        settings.validate()?;
        Ok(settings)
    }

    /// As [`Settings::load`], without validation (the caller validates).
    pub fn load_unvalidated(file: Option<&Path>) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(file) = file {
            builder = builder.add_source(
                config::File::from(file)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let settings: Settings = builder
            .add_source(
                config::Environment::with_prefix("CAREBELL")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        Ok(settings)
    }

    /// The defaults alone (for tests and the demo, which then adjust fields).
    pub fn defaults() -> Result<Self, SettingsError> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |message: String| Err(SettingsError::Invalid(message));
        if self.node_id.is_empty() || self.node_id.len() > 64 {
            return invalid("node_id must be 1 to 64 characters".to_owned());
        }
        if !self.database_url.expose().starts_with("postgres://")
            && !self.database_url.expose().starts_with("postgresql://")
        {
            return invalid("database_url must be a postgres:// URL".to_owned());
        }
        for server in &self.webrtc.ice_servers {
            if server.urls.is_empty()
                || !server.urls.iter().all(|url| {
                    ["stun:", "stuns:", "turn:", "turns:"]
                        .iter()
                        .any(|scheme| url.starts_with(scheme))
                })
            {
                return invalid(
                    "webrtc.ice_servers: every server needs urls starting with stun:, stuns:, turn: or turns:"
                        .to_owned(),
                );
            }
        }
        if let Some(redis_url) = &self.redis_url {
            if !redis_url.expose().starts_with("redis://")
                && !redis_url.expose().starts_with("rediss://")
            {
                return invalid("redis_url must be a redis:// URL".to_owned());
            }
        }
        if !self.insecure {
            match (&self.tls.cert_path, &self.tls.key_path) {
                (Some(cert), Some(key)) => {
                    for path in [cert, key] {
                        if !path.is_file() {
                            return invalid(format!("TLS file {} does not exist", path.display()));
                        }
                    }
                }
                _ => {
                    return invalid(
                        "tls.cert_path and tls.key_path are required (or set insecure = true for plaintext development)"
                            .to_owned(),
                    )
                }
            }
        }
        if !(1024..=1024 * 1024).contains(&self.device.max_frame_bytes) {
            return invalid("device.max_frame_bytes must be between 1024 and 1048576".to_owned());
        }
        if !(100..=600_000).contains(&self.device.handshake_queue_ms) {
            return invalid("device.handshake_queue_ms must be between 100 and 600000".to_owned());
        }
        if self.device.heartbeat_interval_ms < 1000 {
            return invalid("device.heartbeat_interval_ms must be at least 1000".to_owned());
        }
        if self.device.require_client_certificate && self.tls.client_ca_path.is_none() {
            return invalid(
                "device.require_client_certificate needs tls.client_ca_path (the provisioning CA)"
                    .to_owned(),
            );
        }
        if !(self.console.max_requests_per_second >= 1.0
            && self.console.request_burst >= self.console.max_requests_per_second)
        {
            return invalid(
                "console.max_requests_per_second must be at least 1, and console.request_burst \
                 at least that"
                    .to_owned(),
            );
        }
        // A tablet sends a heartbeat per interval and now and then a press: it must never come
        // near the limit.
        if !(self.device.max_messages_per_second >= 1.0
            && self.device.message_burst >= self.device.max_messages_per_second)
        {
            return invalid(
                "device.max_messages_per_second must be at least 1, and device.message_burst at \
                 least that"
                    .to_owned(),
            );
        }
        if !(1..=4096).contains(&self.device.batch_max) {
            return invalid("device.batch_max must be between 1 and 4096".to_owned());
        }
        if self.device.batches_in_flight == 0
            || self.device.batches_in_flight as u64 >= u64::from(self.database_max_connections)
        {
            return invalid(
                "device.batches_in_flight must be at least 1 and below database_max_connections"
                    .to_owned(),
            );
        }
        if self.device.alarm_connections > 64 {
            return invalid("device.alarm_connections must be at most 64".to_owned());
        }
        if self.device.session_connections > 64 {
            return invalid("device.session_connections must be at most 64".to_owned());
        }
        if self.dispatch.ring_timeout_ms < 500 {
            return invalid("dispatch.ring_timeout_ms must be at least 500".to_owned());
        }
        if self.dispatch.sweep_interval_ms == 0
            || self.dispatch.sweep_interval_ms > self.dispatch.ring_timeout_ms
        {
            return invalid(
                "dispatch.sweep_interval_ms must be between 1 and ring_timeout_ms".to_owned(),
            );
        }
        let role = &self.database_app_role;
        let valid_role = role.len() <= 63
            && role
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !role.starts_with(|c: char| c.is_ascii_digit());
        if !valid_role {
            return invalid(
                "database_app_role must be a lower-case role name (letters, digits, _) or empty"
                    .to_owned(),
            );
        }
        if self.shutdown_notice_ms >= self.shutdown_grace_ms {
            return invalid(
                "shutdown_notice_ms must be shorter than shutdown_grace_ms (the notice is part \
                 of the grace)"
                    .to_owned(),
            );
        }
        if self.database_max_connections < 2 {
            return invalid("database_max_connections must be at least 2".to_owned());
        }
        if let Some(url) = &self.webhook.url {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return invalid("webhook.url must be an http:// or https:// URL".to_owned());
            }
            if self
                .webhook
                .secret
                .as_ref()
                .is_none_or(|secret| secret.expose().len() < 16)
            {
                return invalid(
                    "webhook.secret of at least 16 characters is required with webhook.url"
                        .to_owned(),
                );
            }
            if url.starts_with("https://")
                && self
                    .webhook
                    .ca_path
                    .as_ref()
                    .is_none_or(|path| !path.is_file())
            {
                return invalid(
                    "an https webhook.url needs webhook.ca_path (the roots to trust)".to_owned(),
                );
            }
            if self.webhook.max_attempts == 0 {
                return invalid("webhook.max_attempts must be at least 1".to_owned());
            }
        }
        if self.presence.refresh_interval_ms < 100 {
            return invalid("presence.refresh_interval_ms must be at least 100".to_owned());
        }
        Ok(())
    }

    /// How long a device may be silent before it is reported offline.
    pub fn offline_after(&self) -> Duration {
        Duration::from_millis(
            self.device
                .heartbeat_interval_ms
                .saturating_mul(2)
                .saturating_add(self.device.offline_grace_ms),
        )
    }

    pub fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_parse_and_demand_tls() {
        let settings = Settings::defaults().unwrap();
        assert_eq!(settings.device.heartbeat_interval_ms, 30_000);
        assert!(
            matches!(settings.validate(), Err(SettingsError::Invalid(message)) if message.contains("tls"))
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut settings = Settings::defaults().unwrap();
        settings.database_url = Secret::new("postgres://u:hunter2@db/x");
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn nonsense_is_refused() {
        let mut settings = Settings::defaults().unwrap();
        settings.insecure = true;
        settings.validate().unwrap();
        settings.device.max_frame_bytes = 10;
        assert!(settings.validate().is_err());
    }

    #[test]
    fn device_batching_and_batch_connections_out_of_range_are_refused_by_name() {
        let valid = || {
            let mut settings = Settings::defaults().unwrap();
            settings.insecure = true;
            settings
        };
        let refused = |settings: Settings| settings.validate().unwrap_err().to_string();
        let mut settings = valid();
        settings.device.alarm_connections = 65;
        assert!(refused(settings).contains("device.alarm_connections"));
        let mut settings = valid();
        settings.device.session_connections = 65;
        assert!(refused(settings).contains("device.session_connections"));
        let mut settings = valid();
        settings.device.batch_max = 0;
        assert!(refused(settings).contains("device.batch_max"));
        let mut settings = valid();
        settings.device.batches_in_flight = settings.database_max_connections as usize;
        let message = refused(settings);
        assert!(
            message.contains("below database_max_connections"),
            "{message}"
        );
        for queue in [0, 600_001] {
            let mut settings = valid();
            settings.device.handshake_queue_ms = queue;
            assert!(refused(settings).contains("device.handshake_queue_ms"));
        }
        // No connections of their own: alarms share the pool.
        let mut settings = valid();
        settings.device.alarm_connections = 0;
        settings.device.session_connections = 0;
        settings.validate().unwrap();
    }
}
