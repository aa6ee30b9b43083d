//! Real `carebell serve` processes for the multi-process tests: a development certificate,
//! shared ports (SO_REUSEPORT), SIGKILL and restart.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::process::Stdio;
use std::time::Duration;

use carebell_server::devcert::DevCertificates;
use carebell_store::{NewResident, Store};
use carebell_tests::TempDir;
use firmware_sim::{Credentials, TabletConfig, TransportKind};
use rand::Rng;
use tokio::process::{Child, Command};
use tokio::time::Instant;

pub struct Cluster {
    pub database_url: String,
    pub redis_url: String,
    pub certificates: DevCertificates,
    cert_dir: TempDir,
    pub websocket_port: u16,
    pub grpc_port: u16,
    redis_prefix: String,
    nodes: Vec<Option<Child>>,
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("address").port()
}

/// A random pause in `[low_ms, high_ms)`, drawn before any await (the thread RNG is not Send).
pub fn jitter(low_ms: u64, high_ms: u64) -> Duration {
    Duration::from_millis(rand::thread_rng().gen_range(low_ms..high_ms))
}

pub async fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "no node listens on {port}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Cluster {
    /// `n_nodes` processes on one database (migrated here) and one pair of ports.
    pub async fn start(database_url: &str, redis_url: &str, n_nodes: usize) -> Self {
        carebell_tests::init_tracing();
        let store = Store::connect(database_url, 2).await.expect("database");
        store.migrate().await.expect("migrations");
        let cert_dir = TempDir::new();
        let certificates = DevCertificates::generate().expect("certificates");
        certificates
            .write(&cert_dir.0)
            .expect("certificates written");
        let mut cluster = Cluster {
            database_url: database_url.to_owned(),
            redis_url: redis_url.to_owned(),
            certificates,
            cert_dir,
            websocket_port: free_port(),
            grpc_port: free_port(),
            redis_prefix: format!("cluster-{}:", uuid::Uuid::new_v4().simple()),
            nodes: Vec::new(),
        };
        for index in 0..n_nodes {
            let node = cluster.spawn_node(index);
            cluster.nodes.push(Some(node));
        }
        wait_for_port(cluster.websocket_port).await;
        wait_for_port(cluster.grpc_port).await;
        cluster
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    fn spawn_node(&self, index: usize) -> Child {
        let dir = &self.cert_dir.0;
        Command::new(env!("CARGO_BIN_EXE_carebell"))
            .arg("serve")
            .env("CAREBELL_DATABASE_URL", &self.database_url)
            .env("CAREBELL_DATABASE_MAX_CONNECTIONS", "8")
            .env("CAREBELL_REDIS_URL", &self.redis_url)
            .env("CAREBELL_REDIS_KEY_PREFIX", &self.redis_prefix)
            .env("CAREBELL_NODE_ID", format!("node-{index}"))
            .env(
                "CAREBELL_LISTEN__WEBSOCKET",
                format!("127.0.0.1:{}", self.websocket_port),
            )
            .env(
                "CAREBELL_LISTEN__GRPC",
                format!("127.0.0.1:{}", self.grpc_port),
            )
            .env("CAREBELL_TLS__CERT_PATH", dir.join("server.pem"))
            .env("CAREBELL_TLS__KEY_PATH", dir.join("server.key"))
            .env("CAREBELL_DISPATCH__RING_TIMEOUT_MS", "2000")
            .env("CAREBELL_DISPATCH__SWEEP_INTERVAL_MS", "100")
            .env("CAREBELL_DEVICE__HEARTBEAT_INTERVAL_MS", "2000")
            .env("CAREBELL_SHUTDOWN_GRACE_MS", "1000")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("carebell serve starts")
    }

    /// SIGKILL node `index` (no goodbye to anyone), wait `down`, start it again.
    pub async fn kill_and_restart(&mut self, index: usize, down: Duration) {
        if let Some(mut node) = self.nodes[index].take() {
            node.start_kill().expect("SIGKILL");
            let _ = node.wait().await;
        }
        tokio::time::sleep(down).await;
        let node = self.spawn_node(index);
        self.nodes[index] = Some(node);
    }

    pub fn websocket_url(&self) -> String {
        format!("wss://localhost:{}/", self.websocket_port)
    }

    pub fn grpc_url(&self) -> String {
        format!("https://localhost:{}", self.grpc_port)
    }

    /// `n` residents with a tablet each; every third uses gRPC.
    pub async fn tablets(&self, store: &Store, n: usize) -> Vec<TabletConfig> {
        let station = store.add_station("cluster").await.expect("station");
        let mut configs = Vec::with_capacity(n);
        for index in 0..n {
            let resident = store
                .add_resident(&NewResident {
                    station_id: station,
                    full_name: format!("senior {index}"),
                    ..Default::default()
                })
                .await
                .expect("resident");
            let mut credentials: Credentials = carebell_server::admin::provision_device(
                store,
                resident,
                None,
                &self.websocket_url(),
                &self.grpc_url(),
                None,
            )
            .await
            .expect("device");
            credentials.ca_certificate_pem = Some(self.certificates.ca_pem.clone());
            let transport = if index % 3 == 0 {
                TransportKind::Grpc
            } else {
                TransportKind::WebSocket
            };
            configs.push(TabletConfig::new(credentials, transport));
        }
        configs
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.iter_mut().flatten() {
            let _ = node.start_kill();
        }
    }
}
