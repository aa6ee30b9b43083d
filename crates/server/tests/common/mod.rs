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
            .env("CAREBELL_LISTEN__WEB", "127.0.0.1:0")
            .env("CAREBELL_LISTEN__METRICS", "127.0.0.1:0")
            .env("CAREBELL_TLS__CERT_PATH", dir.join("server.pem"))
            .env("CAREBELL_TLS__KEY_PATH", dir.join("server.key"))
            .env("CAREBELL_DISPATCH__RING_TIMEOUT_MS", "2000")
            .env("CAREBELL_DISPATCH__SWEEP_INTERVAL_MS", "100")
            .env("CAREBELL_DEVICE__HEARTBEAT_INTERVAL_MS", "2000")
            .env("CAREBELL_SHUTDOWN_GRACE_MS", "1000")
            .env("CAREBELL_SHUTDOWN_NOTICE_MS", "0")
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

/// A PostgreSQL server of this test's own (in a temporary directory, on its own port), so it
/// can be crashed and restarted without touching anyone else's databases.
pub struct PrivatePostgres {
    dir: TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
}

fn postgres_bin() -> std::path::PathBuf {
    let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's binaries under /usr/lib/postgresql (deploy/ensure-services.sh installs them)")
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an initdb")
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (PostgreSQL refuses root).
fn postgres_tool(bin: &std::path::Path, tool: &str, args: &[&str]) {
    let program = bin.join(tool);
    let status = if is_root() {
        std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&program)
            .args(args)
            .stdout(Stdio::null())
            .status()
    } else {
        std::process::Command::new(&program)
            .args(args)
            .stdout(Stdio::null())
            .status()
    }
    .unwrap_or_else(|error| panic!("cannot run {tool}: {error}"));
    assert!(status.success(), "{tool} {args:?} failed");
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let dir = TempDir::new();
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir.0)
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let bin = postgres_bin();
        let data = dir.0.join("data");
        let data = data.to_string_lossy().into_owned();
        postgres_tool(
            &bin,
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        );
        let server = PrivatePostgres {
            dir,
            bin,
            port: free_port(),
        };
        server.pg_ctl(&["start"]);
        server
    }

    fn pg_ctl(&self, action: &[&str]) {
        let data = self.dir.0.join("data").to_string_lossy().into_owned();
        let log = self
            .dir
            .0
            .join("postgres.log")
            .to_string_lossy()
            .into_owned();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.0.to_string_lossy()
        );
        let mut args = vec![
            "-D",
            &data,
            "-l",
            &log,
            "-o",
            &options,
            "-w",
            "-m",
            "immediate",
        ];
        args.extend_from_slice(action);
        postgres_tool(&self.bin, "pg_ctl", &args);
    }

    /// A crash and a restart: `immediate` mode kills the server without a checkpoint, so
    /// start-up replays the WAL as after a power cut.
    pub fn crash_and_restart(&self) {
        self.pg_ctl(&["restart"]);
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.0.join("data").to_string_lossy().into_owned();
        if is_root() {
            let _ = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["-D", &data, "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .status();
        } else {
            let _ = std::process::Command::new(self.bin.join("pg_ctl"))
                .args(["-D", &data, "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// A Redis of this test's own, to kill.
pub struct PrivateRedis {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        wait_for_port(port).await;
        PrivateRedis {
            child: Some(child),
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
