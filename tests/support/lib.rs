//! Test support: a fresh PostgreSQL database per test, a random Redis key prefix per test, a
//! real `carebell` node on port 0 with a development certificate, and helpers to enrol people
//! and devices. A test that cannot reach PostgreSQL or Redis fails loudly; it never skips.

use std::path::PathBuf;
use std::time::Duration;

use carebell_proto::console::v1::console_event::Event;
use carebell_proto::console::v1::{ConsoleEvent, OperatorStatus};
use carebell_server::console_client::{self, OperatorClient};
use carebell_server::devcert::DevCertificates;
use carebell_server::settings::{Secret, Settings};
use carebell_server::Application;
use carebell_store::{NewResident, Store};
use firmware_sim::{Credentials, TabletConfig, TransportKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use carebell_server;

/// The server PostgreSQL databases are created on.
pub fn admin_database_url() -> String {
    std::env::var("CAREBELL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://carebell:carebell@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("CAREBELL_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
}

/// Creates an empty database with a random name and returns its URL.
pub async fn fresh_database() -> String {
    use sqlx::Connection;
    let admin_url = admin_database_url();
    let mut connection = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|error| panic!("tests need PostgreSQL at {admin_url}: {error}"));
    let name = format!("carebell_test_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut connection)
        .await
        .expect("failed to create a test database");
    let base = admin_url
        .rsplit_once('/')
        .map(|(base, _)| base)
        .unwrap_or(&admin_url);
    format!("{base}/{name}")
}

/// A migrated store on a fresh database.
pub async fn fresh_store() -> Store {
    let store = Store::connect(&fresh_database().await, 10)
        .await
        .expect("failed to connect to the test database");
    store
        .migrate()
        .await
        .expect("failed to migrate the test database");
    store
}

/// How a test node should be set up.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub ring_timeout: Duration,
    /// How often the dispatcher sweeps (expiries, deadlines); tests use 50 ms, production 250.
    pub sweep_interval: Duration,
    /// Handshakes at once from one source address (0: no limit; a load generator on one
    /// address needs that).
    pub max_handshakes_per_address: usize,
    /// Device connections the node holds at most (0: the open-file limit less 1,000).
    pub max_connections: usize,
    /// Mutual TLS: the provisioning CA (PEM) whose client certificates devices may present,
    /// and whether every device must.
    pub client_ca_pem: Option<String>,
    pub require_client_certificate: bool,
    pub heartbeat_interval: Duration,
    pub handshake_timeout: Duration,
    /// Device handshakes at once, and how long an accepted connection may wait for one.
    pub max_concurrent_handshakes: usize,
    pub handshake_queue: Duration,
    /// Presence entries live three times this.
    pub presence_refresh: Duration,
    /// Added to two heartbeat intervals before a silent device is reported offline.
    pub offline_grace: Duration,
    /// How long console, family and provider sessions last.
    pub session_ttl: Duration,
    /// Where webhook deliveries go (signed with [`WEBHOOK_SECRET`], 3 attempts, fast backoff).
    pub webhook_url: Option<String>,
    /// `None`: in-memory presence. `Some(url)`: that Redis (reachable or not).
    pub redis_url: Option<String>,
    pub database_url: Option<String>,
    pub node_id: String,
    /// The device WebSocket address (default: any free port on 127.0.0.1).
    pub websocket_listen: Option<std::net::SocketAddr>,
    /// The CA and certificate to serve with (default: freshly made for this node).
    pub certificates: Option<DevCertificates>,
    /// The text of a TLS ticket key file (`tls.ticket_key_path`); `None`: the node's own key.
    pub ticket_keys: Option<String>,
    /// On stop: how long the node reports not-ready while still serving.
    pub shutdown_notice: Duration,
    /// On stop: devices are told to reconnect after a random delay within this window.
    pub go_away_window: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            ring_timeout: Duration::from_secs(15),
            sweep_interval: Duration::from_millis(50),
            max_handshakes_per_address: 32,
            max_connections: 0,
            client_ca_pem: None,
            require_client_certificate: false,
            heartbeat_interval: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_handshakes: 256,
            handshake_queue: Duration::from_secs(50),
            presence_refresh: Duration::from_millis(200),
            offline_grace: Duration::from_secs(15),
            session_ttl: Duration::from_secs(3600),
            webhook_url: None,
            redis_url: Some(redis_url()),
            database_url: None,
            node_id: "test-node".to_owned(),
            websocket_listen: None,
            certificates: None,
            ticket_keys: None,
            shutdown_notice: Duration::ZERO,
            go_away_window: Duration::from_secs(30),
        }
    }
}

/// A free local port (nothing listens on it once this returns).
pub fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

/// One of the workspace's programs, built beside the test binary (`cargo build --workspace
/// --bins` first).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first",
        path.display()
    );
    path
}

/// Registers `count` tablets, `{prefix}-0`…, each for its own resident of a new station
/// `station`; returns their ids.
pub async fn register_tablets(
    store: &Store,
    station: &str,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    let station = store.add_station(station).await.expect("a station");
    let mut devices = Vec::new();
    for index in 0..count {
        let resident = store
            .add_resident(&carebell_store::NewResident {
                station_id: station,
                full_name: format!("resident {index}"),
                ..Default::default()
            })
            .await
            .expect("a resident");
        let device_id = format!("{prefix}-{index}");
        store
            .add_device(&carebell_store::NewDevice {
                device_id: device_id.clone(),
                resident_id: resident,
                public_key: [u8::try_from(index % 256).expect("a byte"); 32],
            })
            .await
            .expect("a device");
        devices.push(device_id);
    }
    devices
}

/// A running node; stopped when dropped (or explicitly with [`TestNode::stop`]).
pub struct TestNode {
    pub store: Store,
    pub websocket_url: String,
    pub grpc_url: String,
    /// `https://localhost:<port>`: the browser pages and their JSON API.
    pub web_url: String,
    /// `http://127.0.0.1:<port>`: `/metrics`, `/livez`, `/readyz`.
    pub metrics_url: String,
    pub ca_pem: String,
    pub redis_prefix: String,
    pub node_id: String,
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: TempDir,
    /// Where the node reads its certificate and key (replace them to test a renewal).
    pub certificate_paths: (PathBuf, PathBuf),
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("carebell-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("failed to create a temporary directory");
        Self(path)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()))
        .with_test_writer()
        .try_init();
}

impl TestNode {
    pub async fn start(options: NodeOptions) -> Self {
        init_tracing();
        let dir = TempDir::new();
        let certificates = match options.certificates.clone() {
            Some(certificates) => certificates,
            None => DevCertificates::generate().expect("failed to make certificates"),
        };
        let (cert_path, key_path) = certificates
            .write(&dir.0)
            .expect("failed to write certificates");
        let database_url = match options.database_url {
            Some(url) => url,
            None => fresh_database().await,
        };
        let redis_prefix = format!("test-{}:", Uuid::new_v4().simple());
        let mut settings = Settings::defaults().expect("defaults parse");
        settings.node_id = options.node_id.clone();
        settings.database_url = Secret::new(database_url);
        settings.database_max_connections = 10;
        settings.redis_url = options.redis_url.map(Secret::new);
        settings.redis_key_prefix = redis_prefix.clone();
        settings.tls.cert_path = Some(cert_path.clone());
        settings.tls.key_path = Some(key_path.clone());
        settings.tls.reload_interval_ms = 200;
        if let Some(pem) = &options.client_ca_pem {
            let path = dir.0.join("client-ca.pem");
            std::fs::write(&path, pem).expect("failed to write the client CA");
            settings.tls.client_ca_path = Some(path);
        }
        if let Some(keys) = &options.ticket_keys {
            let path = dir.0.join("ticket.keys");
            std::fs::write(&path, keys).expect("failed to write the ticket keys");
            settings.tls.ticket_key_path = Some(path);
        }
        settings.device.require_client_certificate = options.require_client_certificate;
        settings.listen.websocket = options
            .websocket_listen
            .unwrap_or_else(|| "127.0.0.1:0".parse().expect("address"));
        settings.listen.grpc = "127.0.0.1:0".parse().expect("address");
        settings.listen.web = "127.0.0.1:0".parse().expect("address");
        settings.listen.metrics = "127.0.0.1:0".parse().expect("address");
        settings.dispatch.ring_timeout_ms =
            u64::try_from(options.ring_timeout.as_millis()).expect("ring timeout");
        settings.dispatch.sweep_interval_ms =
            u64::try_from(options.sweep_interval.as_millis()).expect("sweep interval");
        settings.device.heartbeat_interval_ms =
            u64::try_from(options.heartbeat_interval.as_millis()).expect("heartbeat");
        settings.device.max_handshakes_per_address = options.max_handshakes_per_address;
        settings.device.max_connections = options.max_connections;
        settings.device.handshake_timeout_ms =
            u64::try_from(options.handshake_timeout.as_millis()).expect("handshake timeout");
        settings.device.max_concurrent_handshakes = options.max_concurrent_handshakes;
        settings.device.handshake_queue_ms =
            u64::try_from(options.handshake_queue.as_millis()).expect("handshake queue");
        if let Some(url) = &options.webhook_url {
            settings.webhook.url = Some(url.clone());
            settings.webhook.secret = Some(Secret::new(WEBHOOK_SECRET));
            settings.webhook.max_attempts = 3;
            settings.webhook.base_backoff_ms = 100;
            settings.webhook.max_backoff_ms = 300;
            settings.webhook.timeout_ms = 2000;
        }
        settings.console.session_ttl_secs = options.session_ttl.as_secs().max(1);
        settings.device.offline_grace_ms =
            u64::try_from(options.offline_grace.as_millis()).expect("grace");
        settings.presence.refresh_interval_ms =
            u64::try_from(options.presence_refresh.as_millis()).expect("refresh");
        settings.shutdown_grace_ms = 3000;
        settings.device.go_away_window_ms =
            u64::try_from(options.go_away_window.as_millis()).expect("go-away window");
        settings.shutdown_notice_ms =
            u64::try_from(options.shutdown_notice.as_millis()).expect("shutdown notice");
        settings.validate().expect("test settings are valid");
        let application = Application::build(settings)
            .await
            .expect("failed to build the application");
        let store = application.store().clone();
        let websocket_url = format!("wss://localhost:{}/", application.websocket_addr().port());
        let grpc_url = format!("https://localhost:{}", application.grpc_addr().port());
        let web_url = format!("https://localhost:{}", application.web_addr().port());
        let metrics_url = format!("http://{}", application.metrics_addr());
        let stop = CancellationToken::new();
        let handle = tokio::spawn(application.run_until_stopped(stop.clone().cancelled_owned()));
        // Started is when the node says it is ready (as a load balancer would see it).
        let mut ready = false;
        for _ in 0..500 {
            if matches!(
                http_get(&format!("{metrics_url}/readyz")).await,
                Ok((200, _))
            ) {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ready, "the node never reported ready");
        Self {
            store,
            websocket_url,
            grpc_url,
            web_url,
            metrics_url,
            ca_pem: certificates.ca_pem,
            redis_prefix,
            node_id: options.node_id,
            stop,
            handle: Some(handle),
            _dir: dir,
            certificate_paths: (cert_path, key_path),
        }
    }

    /// Starts stopping the node (as SIGTERM does) without waiting: the drain can be watched.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Stops the node through its shutdown future and waits for it.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("server task panicked")
                .expect("server failed");
        }
    }

    pub async fn station(&self) -> Uuid {
        self.store
            .add_station("测试站")
            .await
            .expect("failed to add a station")
    }

    pub async fn resident(&self, name: &str) -> Uuid {
        let station = self.station().await;
        self.store
            .add_resident(&NewResident {
                station_id: station,
                full_name: name.to_owned(),
                address: "广东省深圳市盐田区".to_owned(),
                ..NewResident::default()
            })
            .await
            .expect("failed to add a resident")
    }

    /// Provisions a tablet for `resident_id`; the credentials trust this node's CA.
    pub async fn provision(&self, resident_id: Uuid) -> Credentials {
        let mut credentials = carebell_server::admin::provision_device(
            &self.store,
            resident_id,
            None,
            &self.websocket_url,
            &self.grpc_url,
            None,
        )
        .await
        .expect("failed to provision a device");
        credentials.ca_certificate_pem = Some(self.ca_pem.clone());
        credentials
    }

    /// A resident with a provisioned tablet.
    pub async fn tablet_config(
        &self,
        name: &str,
        transport: TransportKind,
    ) -> (Uuid, TabletConfig) {
        let resident = self.resident(name).await;
        let credentials = self.provision(resident).await;
        (resident, TabletConfig::new(credentials, transport))
    }

    /// An operator account; returns the username (password "correct horse").
    pub async fn operator_account(&self, username: &str, display_name: &str) -> String {
        let hash = carebell_gateway::console::hash_password(PASSWORD).expect("hash");
        self.store
            .add_operator(username, display_name, &hash)
            .await
            .expect("failed to add an operator");
        username.to_owned()
    }

    pub async fn sign_in(&self, username: &str) -> OperatorClient {
        let channel = console_client::channel(&self.grpc_url, Some(&self.ca_pem))
            .await
            .expect("failed to connect to the console API");
        OperatorClient::sign_in(channel, username, PASSWORD)
            .await
            .expect("sign-in failed")
    }

    /// A family account `username` (password "correct horse") that is the first contact of
    /// `resident`, told in the app; returns the account.
    pub async fn family_contact(
        &self,
        resident: Uuid,
        username: &str,
        name: &str,
        relationship: &str,
    ) -> Uuid {
        let hash = carebell_gateway::console::hash_password(PASSWORD).expect("hash");
        let account = self
            .store
            .add_family_account(username, name, &hash)
            .await
            .expect("failed to add a family account");
        self.store
            .add_contact(&carebell_store::NewContact {
                resident_id: resident,
                name: name.to_owned(),
                relationship: relationship.to_owned(),
                phone: String::new(),
                holds_keys: false,
                position: Some(1),
                family_account_id: Some(account),
                channels: vec!["app".to_owned()],
            })
            .await
            .expect("failed to add a contact");
        account
    }

    /// A TLS client configuration trusting this node's CA (no client certificate; rustls's
    /// default session cache).
    pub fn tls_client_config(&self) -> rustls::ClientConfig {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes())
        {
            roots.add(certificate.unwrap()).unwrap();
        }
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }

    /// The address the device WebSocket listens on.
    pub fn websocket_addr(&self) -> std::net::SocketAddr {
        let port: u16 = self
            .websocket_url
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("a port");
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A signed-in operator, subscribed, and available.
    pub async fn available_operator(&self, username: &str, display_name: &str) -> Console {
        self.operator_account(username, display_name).await;
        let mut client = self.sign_in(username).await;
        let events = client.subscribe().await.expect("subscribe failed");
        client
            .set_status(OperatorStatus::Available)
            .await
            .expect("set status failed");
        Console { client, events }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub const PASSWORD: &str = "correct horse";
pub const WEBHOOK_SECRET: &str = "webhook-secret-for-tests";

/// A signed-in operator with the live event stream.
pub struct Console {
    pub client: OperatorClient,
    pub events: tonic::Streaming<ConsoleEvent>,
}

impl Console {
    /// The next console event within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        match tokio::time::timeout(timeout, self.events.message()).await {
            Ok(Ok(Some(event))) => event.event,
            _ => None,
        }
    }

    /// Waits for an offer, skipping other events.
    pub async fn next_offer(
        &mut self,
        timeout: Duration,
    ) -> Option<carebell_proto::console::v1::Offer> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Event::Offer(offer) => return Some(offer),
                _ => continue,
            }
        }
    }
}

/// A plain-HTTP GET (the metrics and probe endpoint): the status and the body.
pub async fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other(format!("not an http:// URL: {url}")))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let mut body = response[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The value of one series in a metrics scrape: `name{labels}` exactly as rendered (labels in
/// the order they were recorded), or `None` when it is absent.
pub fn metric_value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|value| value.parse().ok())
    })
}

/// A client of the browser bridge (`POST /api/{service}/{Method}` with JSON): one TLS connection
/// per request, HTTP/1.1 by hand.
pub struct Bridge {
    config: std::sync::Arc<rustls::ClientConfig>,
    tls: tokio_rustls::TlsConnector,
    port: u16,
}

/// A request the service refused: the code's name (`invalid_argument`, ...) and the message.
#[derive(Debug)]
pub struct Refusal {
    pub code: String,
    pub message: String,
}

pub type Answer = Result<serde_json::Value, Refusal>;

impl Bridge {
    pub fn new(node: &TestNode) -> Self {
        let config = node.tls_client_config();
        let port = node
            .web_url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .unwrap();
        let config = std::sync::Arc::new(config);
        Self {
            tls: tokio_rustls::TlsConnector::from(config.clone()),
            config,
            port,
        }
    }

    /// Sends `head` and `body`; returns the status code and the response's body.
    pub async fn exchange(&self, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = self.tls.connect(name, tcp).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        stream.flush().await.unwrap();
        let mut response = Vec::new();
        // The server may close without a TLS close_notify: what arrived is kept.
        let _ = stream.read_to_end(&mut response).await;
        let split = response
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP response: {response:?}"));
        let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|status| status.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head}"));
        let mut body = response[split + 4..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        (status, body)
    }

    /// Posts `body` (any bytes) to `/api/{service}/{method}`.
    pub async fn post(
        &self,
        service: &str,
        method: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let authorization = token
            .map(|token| format!("authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST /api/{service}/{method} HTTP/1.1\r\nhost: localhost\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n{authorization}\
             connection: close\r\n\r\n",
            body.len()
        );
        let (status, response) = self.exchange(&head, body).await;
        assert_eq!(
            status,
            200,
            "{service}/{method}: {}",
            String::from_utf8_lossy(&response)
        );
        let answer: serde_json::Value = serde_json::from_slice(&response).unwrap();
        match answer.get("error") {
            None => Ok(answer),
            Some(error) => Err(Refusal {
                code: error["code"].as_str().unwrap_or_default().to_owned(),
                message: error["message"].as_str().unwrap_or_default().to_owned(),
            }),
        }
    }

    /// Calls `service`/`method` with `request`, as a signed-in session (waiting out its rate
    /// limit: these tests make more requests than its burst) or anonymously.
    pub async fn call(
        &self,
        service: &str,
        method: &str,
        token: Option<&str>,
        request: serde_json::Value,
    ) -> Answer {
        let body = request.to_string();
        loop {
            match self.post(service, method, token, body.as_bytes()).await {
                Err(refusal) if refusal.code == "resource_exhausted" && token.is_some() => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                answer => return answer,
            }
        }
    }

    /// Opens `/api/{service}/{method}/stream?{query}` and returns its first text frame as JSON.
    pub async fn first_frame(&self, service: &str, method: &str, query: &str) -> serde_json::Value {
        self.stream_answer(service, method, query, Duration::from_secs(10))
            .await
            .expect("the stream said nothing")
    }

    /// Opens `/api/{service}/{method}/stream?{query}`; its first text frame as JSON, or `None`
    /// when it says nothing within `wait` (a stream open and quiet).
    pub async fn stream_answer(
        &self,
        service: &str,
        method: &str,
        query: &str,
        wait: Duration,
    ) -> Option<serde_json::Value> {
        use futures_util::StreamExt;
        let url = format!(
            "wss://localhost:{}/api/{service}/{method}/stream?{query}",
            self.port
        );
        let connector = tokio_tungstenite::Connector::Rustls(self.config.clone());
        let (mut socket, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
                .await
                .unwrap();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, socket.next())
                .await
                .ok()?
                .expect("the stream ended")
                .unwrap();
            if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                return Some(serde_json::from_str(&text).unwrap());
            }
        }
    }

    /// Signs in to `service` (password [`PASSWORD`]); returns the token.
    pub async fn sign_in(&self, service: &str, username: &str) -> String {
        let answer = self
            .call(
                service,
                "SignIn",
                None,
                serde_json::json!({ "username": username, "password": PASSWORD }),
            )
            .await
            .unwrap_or_else(|refusal| panic!("{service} sign-in as {username}: {refusal:?}"));
        answer["token"].as_str().unwrap().to_owned()
    }
}

/// The body of a chunked HTTP response.
pub fn dechunk(mut chunked: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = chunked.windows(2).position(|window| window == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&chunked[..end])
                .split(';')
                .next()
                .unwrap_or_default()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        body.extend_from_slice(&chunked[start..start + size]);
        chunked = &chunked[(start + size + 2).min(chunked.len())..];
    }
    body
}
